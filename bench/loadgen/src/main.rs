//! Load client for `bench/registry.sh`.
//!
//! ```text
//! loadgen get URL --concurrency N --duration SECS [--warmup SECS] --expect-size BYTES [--accept TYPE] [--rate PER_CLIENT_PER_SEC]
//! loadgen push BASE_URL REPO --size BYTES [--seed N]
//! loadgen hammer URL --concurrency N --duration SECS [--header 'Name: value']... [--sources IP/COUNT]
//! loadgen slow URL --connections N --duration SECS [--sources IP/COUNT]
//! ```
//!
//! `--sources IP/COUNT` (get, hammer, slow): client i connects from the loopback address IP + (i
//! mod COUNT), so a server that limits per client address sees COUNT clients (a fleet of nodes,
//! or an attacker with several addresses) instead of one.
//!
//! `get`: N clients, each on its own keep-alive HTTP/1.1 connection, send GET URL back to back
//! for the warm-up and then for the duration (the window). Throughput counts what happens
//! inside the window only: requests/s = requests answered OK that completed in the window /
//! duration; MB/s = body bytes received in the window (by whichever request) / duration, so
//! large blobs in flight at either edge count for the part inside. Latency (send to last body
//! byte, reconnect included) is taken over the requests that started in the window; those in
//! flight at the end finish before the client stops. Every response, warm-up and tail
//! included, is checked: status 200 and a body of exactly `--expect-size` bytes, else it is an
//! error (a transport error reconnects). With `--rate R` each client sends R requests a
//! second on a fixed schedule instead of back to back (an open workload, such as a fleet's
//! steady pulls: a slow answer delays the next send but not the schedule), and latency is
//! still send to last byte. Prints one JSON object.
//!
//! `push`: makes a deterministic incompressible blob of BYTES (from `--seed`), hashes it (not
//! timed), then times a monolithic upload: `POST /v2/REPO/blobs/uploads/` then
//! `PUT <Location>&digest=sha256:…` with the whole body, expecting 202 then 201; then checks
//! `HEAD /v2/REPO/blobs/<digest>` answers 200 with the right Content-Length. Prints one JSON
//! object with the digest, the seconds and MB/s (1 MB = 10^6 bytes).
//!
//! `hammer`: N clients send GET URL with the given headers back to back for the duration, on
//! keep-alive connections, and count the answers by status, the body bytes and the largest
//! body: an abusive client (overlapping ranges, wrong passwords) whose cost the server must
//! bound. Prints one JSON object.
//!
//! `slow`: N connections that each send the start of a request's headers and then one more
//! header byte every second, never finishing (slowloris); when the server closes one, it is
//! counted with how long it was held, and a new one takes its place. Prints one JSON object:
//! connections opened, closed by the server, and the longest and mean time held.
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen get URL --concurrency N --duration SECS [--warmup SECS] --expect-size BYTES [--accept TYPE] [--rate R] [--sources IP/COUNT]\n  loadgen push BASE_URL REPO --size BYTES [--seed N]\n  loadgen hammer URL --concurrency N --duration SECS [--header 'Name: value']... [--sources IP/COUNT]\n  loadgen slow URL --connections N --duration SECS [--sources IP/COUNT]"
    );
    std::process::exit(2)
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("only http:// URLs: {url}"));
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

struct Args {
    positional: Vec<String>,
    flags: Vec<(String, String)>,
}

impl Args {
    fn parse() -> Args {
        let mut positional = Vec::new();
        let mut flags = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let v = it.next().unwrap_or_else(|| usage());
                flags.push((name.to_string(), v));
            } else {
                positional.push(a);
            }
        }
        Args { positional, flags }
    }
    fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> T {
        match self.flag(name) {
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{name}: not a number: {v}");
                usage()
            }),
            None => default.unwrap_or_else(|| {
                eprintln!("--{name} is required");
                usage()
            }),
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let result = match args.positional.first().map(String::as_str) {
        Some("get") => get(&args).await,
        Some("push") => push(&args).await,
        Some("hammer") => hammer(&args).await,
        Some("slow") => slow(&args).await,
        _ => usage(),
    };
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1)
        }
    }
}

/// `--sources IP/COUNT`: the first loopback address and how many to use.
fn sources(args: &Args) -> Option<(std::net::Ipv4Addr, u32)> {
    let v = args.flag("sources")?;
    let (ip, n) = v.split_once('/').unwrap_or((v, "1"));
    match (ip.parse::<std::net::Ipv4Addr>(), n.parse::<u32>()) {
        (Ok(ip), Ok(n)) if n > 0 => Some((ip, n)),
        _ => {
            eprintln!("--sources: expected IPV4/COUNT, got {v}");
            usage()
        }
    }
}

/// The source address of client `i`, from `--sources`.
fn source_of(sources: Option<(std::net::Ipv4Addr, u32)>, i: usize) -> Option<std::net::IpAddr> {
    sources.map(|(ip, n)| {
        std::net::IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(ip).wrapping_add(i as u32 % n),
        ))
    })
}

/// A TCP connection to `host`, from `source` when given.
async fn tcp(host: &str, source: Option<std::net::IpAddr>) -> Result<TcpStream, Error> {
    let stream = match source {
        None => TcpStream::connect(host).await?,
        Some(ip) => {
            let addr = tokio::net::lookup_host(host)
                .await?
                .find(|a| a.is_ipv4())
                .ok_or_else(|| format!("{host}: no IPv4 address"))?;
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect(
    host: &str,
    source: Option<std::net::IpAddr>,
) -> Result<http1::SendRequest<Empty<Bytes>>, Error> {
    let stream = tcp(host, source).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[derive(Default)]
struct WorkerStats {
    /// Latencies of the requests that started in the window (ok or not), microseconds.
    latencies_us: Vec<u32>,
    /// Requests sent, over the whole run.
    requests: u64,
    /// Requests answered OK (status and size) that completed in the window.
    ok_in_window: u64,
    /// Failed requests (status, size or transport), over the whole run.
    errors: u64,
    /// Body bytes received in the window.
    window_bytes: u64,
    reconnects: u64,
    first_error: Option<String>,
    /// When this worker's last request finished.
    end: Option<Instant>,
}

struct GetParams {
    host: String,
    path: String,
    /// Extra request headers (name, value).
    headers: Vec<(String, String)>,
    accept: Option<String>,
    expect_size: u64,
    /// Requests per second per client; 0: back to back.
    rate: f64,
    start: Instant,
    deadline: Instant,
}

/// Reads the whole body, counting bytes, and adding those received within `window` to
/// `in_window`; Err on a transport error.
async fn drain(
    resp: Response<Incoming>,
    window: Option<(Instant, Instant)>,
    in_window: &mut u64,
) -> Result<(StatusCode, u64), Error> {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            n += d.len() as u64;
            if let Some((start, end)) = window {
                let now = Instant::now();
                if now >= start && now < end {
                    *in_window += d.len() as u64;
                }
            }
        }
    }
    Ok((status, n))
}

async fn get_worker(
    p: std::sync::Arc<GetParams>,
    source: Option<std::net::IpAddr>,
    offset: Duration,
) -> WorkerStats {
    let mut st = WorkerStats::default();
    let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
    // Clients on a schedule start spread over one period, not all at once.
    let mut next_send = Instant::now() + offset;
    loop {
        if p.rate > 0.0 {
            tokio::time::sleep_until(next_send.into()).await;
            next_send += Duration::from_secs_f64(1.0 / p.rate);
        }
        let t0 = Instant::now();
        if t0 >= p.deadline {
            break;
        }
        let counted = t0 >= p.start;
        let alive = match sender.as_mut() {
            Some(s) => s.is_ready() || s.ready().await.is_ok(),
            None => false,
        };
        let s = match sender.as_mut() {
            Some(s) if alive => s,
            _ => {
                if sender.is_some() {
                    st.reconnects += 1;
                }
                sender = None;
                match connect(&p.host, source).await {
                    Ok(s) => sender.insert(s),
                    Err(e) => {
                        st.errors += 1;
                        st.first_error.get_or_insert(format!("connect: {e}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
        };
        let mut req = Request::get(&p.path).header(hyper::header::HOST, &p.host);
        if let Some(a) = &p.accept {
            req = req.header(hyper::header::ACCEPT, a);
        }
        for (name, value) in &p.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req.body(Empty::new()).expect("request");
        // t0 was taken before any reconnect: a reconnect counts in this request's latency.
        st.requests += 1;
        let outcome = match s.send_request(req).await {
            Ok(resp) => drain(resp, Some((p.start, p.deadline)), &mut st.window_bytes).await,
            Err(e) => Err(e.into()),
        };
        let t1 = Instant::now();
        if counted {
            st.latencies_us
                .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
        }
        st.end = Some(t1);
        match outcome {
            Ok((status, n)) if status == StatusCode::OK && n == p.expect_size => {
                if t1 >= p.start && t1 < p.deadline {
                    st.ok_in_window += 1;
                }
            }
            Ok((status, n)) => {
                st.errors += 1;
                st.first_error.get_or_insert(format!(
                    "status {status}, {n} bytes (expected 200, {} bytes)",
                    p.expect_size
                ));
            }
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert(format!("transport: {e}"));
                sender = None;
            }
        }
    }
    st
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

async fn get(args: &Args) -> Result<serde_json::Value, Error> {
    let url = args.positional.get(1).unwrap_or_else(|| usage()).clone();
    let (host, path) = split_url(&url);
    let concurrency: usize = args.num("concurrency", None);
    let duration: f64 = args.num("duration", None);
    let warmup: f64 = args.num("warmup", Some(0.0));
    let expect_size: u64 = args.num("expect-size", None);
    let accept = args.flag("accept").map(str::to_string);
    let rate: f64 = args.num("rate", Some(0.0));

    let now = Instant::now();
    let start = now + Duration::from_secs_f64(warmup);
    let src = sources(args);
    let p = std::sync::Arc::new(GetParams {
        host,
        path,
        headers: Vec::new(),
        accept: accept.clone(),
        expect_size,
        rate,
        start,
        deadline: start + Duration::from_secs_f64(duration),
    });
    let handles: Vec<_> = (0..concurrency)
        .map(|i| {
            let offset = if rate > 0.0 {
                Duration::from_secs_f64(i as f64 / (rate * concurrency as f64))
            } else {
                Duration::ZERO
            };
            tokio::spawn(get_worker(p.clone(), source_of(src, i), offset))
        })
        .collect();
    let mut all = WorkerStats::default();
    for h in handles {
        let st = h.await?;
        all.latencies_us.extend(st.latencies_us);
        all.requests += st.requests;
        all.ok_in_window += st.ok_in_window;
        all.errors += st.errors;
        all.window_bytes += st.window_bytes;
        all.reconnects += st.reconnects;
        if all.first_error.is_none() {
            all.first_error = st.first_error;
        }
        all.end = all.end.max(st.end);
    }
    let tail = all
        .end
        .map_or(0.0, |e| (e.max(p.deadline) - p.deadline).as_secs_f64());
    all.latencies_us.sort_unstable();
    let l = &all.latencies_us;
    let mean_ms = if l.is_empty() {
        0.0
    } else {
        l.iter().map(|&x| x as f64).sum::<f64>() / l.len() as f64 / 1000.0
    };
    Ok(json!({
        "url": url,
        "accept": accept,
        "concurrency": concurrency,
        "rate_per_client": rate,
        "duration_s": duration,
        "warmup_s": warmup,
        "tail_s": tail,
        "expect_size": expect_size,
        "requests": all.requests,
        "ok_in_window": all.ok_in_window,
        "latency_samples": l.len(),
        "errors": all.errors,
        "first_error": all.first_error,
        "reconnects": all.reconnects,
        "window_bytes": all.window_bytes,
        "rps": all.ok_in_window as f64 / duration,
        "mb_s": all.window_bytes as f64 / duration / 1e6,
        "latency_ms": {
            "mean": mean_ms,
            "p50": percentile(l, 0.50),
            "p90": percentile(l, 0.90),
            "p99": percentile(l, 0.99),
            "max": percentile(l, 1.0),
        },
    }))
}

/// Deterministic incompressible bytes (xorshift64*), `size` long.
fn make_blob(size: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; size];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let w = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
    Bytes::from(v)
}

async fn send<B>(host: &str, req: Request<B>) -> Result<(StatusCode, hyper::HeaderMap, u64), Error>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = http1::handshake::<_, B>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    let headers = resp.headers().clone();
    let (status, n) = drain(resp, None, &mut 0).await?;
    Ok((status, headers, n))
}

async fn push(args: &Args) -> Result<serde_json::Value, Error> {
    let base = args.positional.get(1).unwrap_or_else(|| usage()).clone();
    let repo = args.positional.get(2).unwrap_or_else(|| usage()).clone();
    let size: usize = args.num("size", None);
    let seed: u64 = args.num("seed", Some(1));
    let (host, _) = split_url(&base);

    let blob = make_blob(size, seed);
    let digest = format!("sha256:{}", hex(&Sha256::digest(&blob)));

    let t0 = Instant::now();
    let req = Request::post(format!("/v2/{repo}/blobs/uploads/"))
        .header(hyper::header::HOST, &host)
        .header(hyper::header::CONTENT_LENGTH, "0")
        .body(Empty::<Bytes>::new())?;
    let (status, headers, _) = send(&host, req).await?;
    if status != StatusCode::ACCEPTED {
        return Err(format!("POST upload: status {status}").into());
    }
    let location = headers
        .get(hyper::header::LOCATION)
        .ok_or("POST upload: no Location")?
        .to_str()?
        .to_string();
    // Location may be absolute (distribution) or a path.
    let path = match location.strip_prefix("http://") {
        Some(rest) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
        None => location.clone(),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let put_path = format!("{path}{sep}digest={digest}");
    let req = Request::put(put_path)
        .header(hyper::header::HOST, &host)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header(hyper::header::CONTENT_LENGTH, size.to_string())
        .body(Full::new(blob.clone()))?;
    let (status, _, _) = send(&host, req).await?;
    let seconds = t0.elapsed().as_secs_f64();
    if status != StatusCode::CREATED {
        return Err(format!("PUT upload: status {status}").into());
    }

    let req = Request::head(format!("/v2/{repo}/blobs/{digest}"))
        .header(hyper::header::HOST, &host)
        .body(Empty::<Bytes>::new())?;
    let stream = TcpStream::connect(&host).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    let len = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if resp.status() != StatusCode::OK || len != Some(size as u64) {
        return Err(format!(
            "HEAD blob after push: status {}, Content-Length {len:?} (expected 200, {size})",
            resp.status()
        )
        .into());
    }

    Ok(json!({
        "base": base,
        "repo": repo,
        "digest": digest,
        "size": size,
        "seed": seed,
        "seconds": seconds,
        "mb_s": size as f64 / seconds / 1e6,
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `hammer`: see the module doc.
async fn hammer(args: &Args) -> Result<serde_json::Value, Error> {
    let url = args.positional.get(1).unwrap_or_else(|| usage()).clone();
    let (host, path) = split_url(&url);
    let concurrency: usize = args.num("concurrency", None);
    let duration: f64 = args.num("duration", None);
    let headers: Vec<(String, String)> = args
        .flags
        .iter()
        .filter(|(n, _)| n == "header")
        .map(|(_, v)| match v.split_once(':') {
            Some((n, v)) => (n.trim().to_string(), v.trim().to_string()),
            None => {
                eprintln!("--header: expected 'Name: value', got {v}");
                usage()
            }
        })
        .collect();
    let src = sources(args);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration);
    let p = std::sync::Arc::new((host, path, headers, deadline));
    let handles: Vec<_> = (0..concurrency)
        .map(|i| {
            let p = p.clone();
            let source = source_of(src, i);
            tokio::spawn(async move {
                let (host, path, headers, deadline) = &*p;
                let mut by_status = std::collections::BTreeMap::<String, u64>::new();
                let (mut bytes, mut max_body, mut errors) = (0u64, 0u64, 0u64);
                let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
                while Instant::now() < *deadline {
                    let alive = match sender.as_mut() {
                        Some(s) => s.ready().await.is_ok(),
                        None => false,
                    };
                    if !alive {
                        sender = match connect(host, source).await {
                            Ok(s) => Some(s),
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        };
                    }
                    let Some(s) = sender.as_mut() else { continue };
                    let mut req = Request::get(path.as_str()).header(hyper::header::HOST, host);
                    for (name, value) in headers {
                        req = req.header(name.as_str(), value.as_str());
                    }
                    let req = req.body(Empty::new()).expect("request");
                    let outcome = match s.send_request(req).await {
                        Ok(resp) => drain(resp, None, &mut 0).await,
                        Err(e) => Err(e.into()),
                    };
                    match outcome {
                        Ok((status, n)) => {
                            *by_status.entry(status.as_u16().to_string()).or_default() += 1;
                            bytes += n;
                            max_body = max_body.max(n);
                        }
                        Err(_) => {
                            errors += 1;
                            sender = None;
                        }
                    }
                }
                (by_status, bytes, max_body, errors)
            })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::<String, u64>::new();
    let (mut bytes, mut max_body, mut errors) = (0u64, 0u64, 0u64);
    for h in handles {
        let (s, b, m, e) = h.await?;
        for (k, v) in s {
            *by_status.entry(k).or_default() += v;
        }
        bytes += b;
        max_body = max_body.max(m);
        errors += e;
    }
    Ok(json!({
        "url": url,
        "concurrency": concurrency,
        "duration_s": duration,
        "requests": by_status.values().sum::<u64>(),
        "by_status": by_status,
        "body_bytes": bytes,
        "max_body_bytes": max_body,
        "errors": errors,
        "elapsed_s": start.elapsed().as_secs_f64(),
    }))
}

/// `slow`: see the module doc.
async fn slow(args: &Args) -> Result<serde_json::Value, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = args.positional.get(1).unwrap_or_else(|| usage()).clone();
    let (host, path) = split_url(&url);
    let connections: usize = args.num("connections", None);
    let duration: f64 = args.num("duration", None);
    let src = sources(args);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration);
    let p = std::sync::Arc::new((host, path, deadline));
    let handles: Vec<_> = (0..connections)
        .map(|i| {
            let p = p.clone();
            let source = source_of(src, i);
            tokio::spawn(async move {
                let (host, path, deadline) = &*p;
                let (mut opened, mut failed) = (0u64, 0u64);
                let mut held: Vec<f64> = Vec::new();
                while Instant::now() < *deadline {
                    let mut stream = match tcp(host, source).await {
                        Ok(s) => s,
                        Err(_) => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    opened += 1;
                    let t0 = Instant::now();
                    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
                    let mut closed = stream.write_all(head.as_bytes()).await.is_err();
                    let mut buf = [0u8; 512];
                    while !closed && Instant::now() < *deadline {
                        // One header byte a second; a read that ends (EOF or an answer
                        // such as 408) or a failed write means the server let go.
                        tokio::select! {
                            _ = stream.read(&mut buf) => closed = true,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                                closed = stream.write_all(b"a").await.is_err();
                            }
                        }
                    }
                    if closed {
                        held.push(t0.elapsed().as_secs_f64());
                    }
                }
                (opened, failed, held)
            })
        })
        .collect();
    let (mut opened, mut failed) = (0u64, 0u64);
    let mut held: Vec<f64> = Vec::new();
    for h in handles {
        let (o, f, h) = h.await?;
        opened += o;
        failed += f;
        held.extend(h);
    }
    let max_held = held.iter().cloned().fold(0.0, f64::max);
    let mean_held = if held.is_empty() {
        0.0
    } else {
        held.iter().sum::<f64>() / held.len() as f64
    };
    Ok(json!({
        "url": url,
        "connections": connections,
        "duration_s": duration,
        "opened": opened,
        "connect_failures": failed,
        "closed_by_server": held.len(),
        "max_held_s": max_held,
        "mean_held_s": mean_held,
    }))
}
