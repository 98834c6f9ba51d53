//! Harness of the supervisor tests: runs the supervisor as its own process (the crate's
//! `supervise-test-game supervise CONFIG.json` helper calls the library's `run`), collects
//! its stdout (status events and the game's own lines), and fake HTTP peers for the cloud
//! metadata service, the Agones SDK and report endpoints, which cannot run here.

#![allow(dead_code)]

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_supervise::{Config, Event, HealthCheck, PortSpec, Protocol, Status};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The helper binary: a tiny game server, and the supervisor library as a process.
pub const HELPER: &str = env!("CARGO_BIN_EXE_supervise-test-game");

/// Environment variables the supervisor reads; cleared so the host's values do not leak in.
const SCRUBBED_ENV: &[&str] = &[
    "AGONES_SDK_HTTP_PORT",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "NODE_NAME",
    "GANTRY_IMAGE_DIGEST",
    "GANTRY_IMAGE",
    "GANTRY_REPORT_TOKEN",
    "GANTRY_REPORT_URL",
    "SERVER_PORT",
    "GANTRY_CONTAINER_PORT",
    "GANTRY_PUBLIC_PORT",
];

/// A test config: no cloud metadata, no probe, TCP, free port, short timings.
pub fn config(command: &[&str]) -> Config {
    Config {
        command: command.iter().map(|s| s.to_string()).collect(),
        port: PortSpec::Free,
        protocol: Protocol::Tcp,
        health: Some(HealthCheck::None),
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(500),
        grace_period: Duration::from_secs(10),
        report_flush_timeout: Duration::from_secs(2),
        metadata_url: None,
        agones_health_interval: Duration::from_millis(100),
        agones_wait: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Writes an executable `/bin/sh` script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A running supervisor process.
pub struct Supervised {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// When the process was started.
    pub started: Instant,
    _dir: tempfile::TempDir,
}

impl Supervised {
    /// Starts the supervisor with `config` and extra environment variables.
    pub fn start(config: &Config, env: &[(&str, &str)]) -> Self {
        let dir = gantry_test_support::tempdir();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec(config).expect("config JSON"))
            .expect("write config");
        let mut cmd = Command::new(HELPER);
        cmd.arg("supervise").arg(&path);
        for name in SCRUBBED_ENV {
            cmd.env_remove(name);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the supervisor helper");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Supervised {
            child,
            stdout,
            stderr,
            started,
            _dir: dir,
        }
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The status events so far, in stdout order.
    pub fn events(&self) -> Vec<Event> {
        self.lines().iter().filter_map(|l| parse_event(l)).collect()
    }

    /// Statuses of the events so far.
    pub fn statuses(&self) -> Vec<Status> {
        self.events().iter().map(|e| e.status).collect()
    }

    /// Index in stdout of the first line (at or after `from`) matching `pred`, waiting for it.
    pub fn wait_line(&self, from: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.lines().iter().skip(from).position(|l| pred(l)) {
                return from + i;
            }
            if Instant::now() > deadline {
                panic!(
                    "no matching stdout line within {timeout:?}\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Index in stdout of the first event with `status` at or after line `from`.
    pub fn wait_event(&self, from: usize, status: Status, timeout: Duration) -> usize {
        self.wait_line(from, timeout, |l| {
            parse_event(l).is_some_and(|e| e.status == status)
        })
    }

    /// The event on stdout line `index`.
    pub fn event_at(&self, index: usize) -> Event {
        parse_event(&self.lines()[index]).expect("an event line")
    }

    /// Sends `signal` to the supervisor.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    /// Waits for the supervisor to exit (panics after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "the supervisor did not exit within {timeout:?}\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit and returns the exit code (panics if a signal killed the supervisor).
    pub fn exit_code(&mut self, timeout: Duration) -> i32 {
        let status = self.wait(timeout);
        status.code().unwrap_or_else(|| {
            panic!(
                "the supervisor was killed by signal {:?}\n{}",
                status.signal(),
                self.dump()
            )
        })
    }

    /// stdout and stderr so far, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.lines().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            match line {
                Ok(l) => sink.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
    lines
}

/// The event a stdout line carries, if it is one.
pub fn parse_event(line: &str) -> Option<Event> {
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str(line).ok()
}

/// One request a [`FakeHttp`] received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Recorded {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Responder = dyn Fn(&Recorded, usize) -> (u16, String) + Send + Sync;

struct Shared {
    log: Mutex<Vec<Recorded>>,
    respond: Box<Responder>,
}

/// An in-test HTTP server that records every request and answers with `respond(request,
/// index of the request)`: the stand-in for IMDS, the Agones SDK and report endpoints.
pub struct FakeHttp {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeHttp {
    pub fn start(
        respond: impl Fn(&Recorded, usize) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            respond: Box::new(respond),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind fake server");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(handle).with_state(state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("fake server");
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake server address");
        FakeHttp {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let rec = Recorded {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    };
    let (code, text) = {
        let mut log = shared.log.lock().unwrap();
        let index = log.len();
        log.push(rec.clone());
        (shared.respond)(&rec, index)
    };
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Body::from(text),
    )
        .into_response()
}

/// A TCP listener that accepts connections and never answers (a hanging peer); counts them.
pub struct Blackhole {
    pub addr: SocketAddr,
    pub accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl Blackhole {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind blackhole");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let keep = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap().push(stream);
            }
        });
        Blackhole { addr, accepted }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`, after the command name.
pub fn proc_stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(n - 3).map(str::to_string)
}

/// Children of `ppid` that are zombies, as (pid, command) pairs.
pub fn zombie_children(ppid: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let state = proc_stat_field(pid, 3);
        let parent = proc_stat_field(pid, 4);
        if parent.as_deref() == Some(ppid.to_string().as_str()) && state.as_deref() == Some("Z") {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
}
