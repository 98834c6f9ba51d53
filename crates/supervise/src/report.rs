//! Event sinks: stdout (one JSON line per event), HTTP endpoints (a bounded queue per
//! endpoint drained by a background task with retries: a slow or dead endpoint never blocks
//! the game), and the Agones SDK (`/ready` once, `/health` pings while healthy, `/shutdown`).

use crate::agones::AgonesSdk;
use crate::event::{Event, Status};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant, MissedTickBehavior};

/// Attempts per event for an HTTP endpoint.
const HTTP_ATTEMPTS: u32 = 6;
/// Time one POST may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// Fans events out to the configured sinks.
pub struct Reporter {
    stdout: bool,
    http: Vec<HttpSink>,
    agones: Option<AgonesTask>,
    flush_timeout: Duration,
}

struct HttpSink {
    url: String,
    tx: Option<mpsc::Sender<Arc<Vec<u8>>>>,
    task: JoinHandle<()>,
    dropped: u64,
}

struct AgonesTask {
    tx: mpsc::UnboundedSender<Status>,
    task: JoinHandle<()>,
}

/// Settings of the HTTP sinks.
#[derive(Clone, Debug, Default)]
pub struct HttpSinkConfig {
    /// Endpoints each event is POSTed to.
    pub urls: Vec<String>,
    /// Bearer token sent with each POST.
    pub token: Option<String>,
    /// Events buffered per endpoint.
    pub queue: usize,
    /// After this long without a new event the last one is POSTed again (a heartbeat);
    /// `None` or zero: never.
    pub interval: Option<Duration>,
}

impl Reporter {
    /// Starts the sinks' background tasks (needs a tokio runtime).
    pub fn start(
        stdout: bool,
        http: HttpSinkConfig,
        agones: Option<(AgonesSdk, Duration)>,
        flush_timeout: Duration,
    ) -> Self {
        let client = crate::dns::client_builder()
            .connect_timeout(HTTP_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .build()
            .unwrap_or_default();
        let http = http
            .urls
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(http.queue.max(1));
                let task = tokio::spawn(http_sink(
                    client.clone(),
                    url.clone(),
                    http.token.clone(),
                    http.interval.filter(|i| !i.is_zero()),
                    rx,
                ));
                HttpSink {
                    url: url.clone(),
                    tx: Some(tx),
                    task,
                    dropped: 0,
                }
            })
            .collect();
        let agones = agones.map(|(sdk, interval)| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(agones_sink(sdk, interval, rx));
            AgonesTask { tx, task }
        });
        Reporter {
            stdout,
            http,
            agones,
            flush_timeout,
        }
    }

    /// Sends `event` to every sink without waiting for any of them (stdout is written now).
    pub fn emit(&mut self, event: &Event) {
        let line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!("cannot serialize event: {e}");
                return;
            }
        };
        if self.stdout {
            let mut buf = line.clone();
            buf.push(b'\n');
            // One write of the whole line, so it does not interleave with the game's output.
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                tracing::warn!("cannot write event to stdout: {e}");
            }
        }
        let body = Arc::new(line);
        for sink in &mut self.http {
            let Some(tx) = &sink.tx else { continue };
            if tx.try_send(body.clone()).is_err() {
                sink.dropped += 1;
                tracing::warn!(
                    "report endpoint {} is behind: dropped the {} event ({} dropped so far)",
                    sink.url,
                    event.status,
                    sink.dropped
                );
            }
        }
        if let Some(agones) = &self.agones {
            let _ = agones.tx.send(event.status);
        }
    }

    /// Lets the sinks deliver what they hold, for at most the flush timeout, then stops them.
    pub async fn finish(mut self) {
        let deadline = Instant::now() + self.flush_timeout;
        for sink in &mut self.http {
            sink.tx = None;
        }
        if let Some(agones) = self.agones.take() {
            drop(agones.tx);
            finish_task("the Agones SDK", agones.task, deadline).await;
        }
        for sink in self.http {
            finish_task(&sink.url, sink.task, deadline).await;
        }
    }
}

async fn finish_task(what: &str, mut task: JoinHandle<()>, deadline: Instant) {
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        task.abort();
        tracing::warn!("gave up delivering the last events to {what}");
    }
}

async fn http_sink(
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    heartbeat: Option<Duration>,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
) {
    let mut last: Option<Arc<Vec<u8>>> = None;
    loop {
        let next = match (heartbeat, &last) {
            (Some(every), Some(previous)) => match tokio::time::timeout(every, rx.recv()).await {
                Ok(next) => next,
                // Nothing new for a while: the current state again, so the endpoint knows
                // the server is still there.
                Err(_) => Some(previous.clone()),
            },
            _ => rx.recv().await,
        };
        let Some(body) = next else { return };
        last = Some(body.clone());
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=HTTP_ATTEMPTS {
            let mut req = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.as_ref().clone());
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let (retry, error) = match req.send().await {
                Ok(resp) if resp.status().is_success() => break,
                Ok(resp) => {
                    let s = resp.status();
                    let transient = s.is_server_error()
                        || s == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || s == reqwest::StatusCode::REQUEST_TIMEOUT;
                    (transient, format!("HTTP {s}"))
                }
                Err(e) => (true, e.to_string()),
            };
            if !retry || attempt == HTTP_ATTEMPTS {
                tracing::warn!("POST {url}: dropped an event after {attempt} attempt(s): {error}");
                break;
            }
            tracing::debug!("POST {url} (attempt {attempt}): {error}; retrying");
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

async fn agones_sink(sdk: AgonesSdk, interval: Duration, mut rx: mpsc::UnboundedReceiver<Status>) {
    let mut healthy = false;
    let mut readied = false;
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            status = rx.recv() => match status {
                Some(Status::Ready) => {
                    healthy = true;
                    // Ready once: on an Allocated GameServer, Ready would put it back up
                    // for allocation. Recovery after `unhealthy` only resumes the pings.
                    if !readied {
                        readied = true;
                        if let Err(e) = sdk.post_retrying("/ready", 5).await {
                            tracing::warn!("Agones SDK: {e}");
                        }
                    }
                    if let Err(e) = sdk.post("/health").await {
                        tracing::warn!("Agones SDK: {e}");
                    }
                    ticker.reset();
                }
                Some(Status::Starting) => {}
                Some(Status::Unhealthy) | Some(Status::Terminating) => healthy = false,
                Some(Status::Exited) => {
                    if let Err(e) = sdk.post_retrying("/shutdown", 3).await {
                        tracing::warn!("Agones SDK: {e}");
                    }
                    return;
                }
                None => return,
            },
            _ = ticker.tick(), if healthy => {
                if let Err(e) = sdk.post("/health").await {
                    tracing::warn!("Agones SDK health ping: {e}");
                }
            }
        }
    }
}
