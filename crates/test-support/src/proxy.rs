//! A TCP proxy in front of a real server (`gantry serve`) that records the request line of
//! every request passing through, counts the bytes it hands back, and can play a hostile
//! upstream by rewriting the `Content-Length` of answers to `HEAD` requests, or a slow one
//! by holding back range requests until told to let them through. Plus
//! [`raw_http`], which sends a request line byte for byte (HTTP clients normalise `..`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running proxy; it serves until the test process ends.
pub struct TcpProxy {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    bytes_down: Arc<AtomicU64>,
    /// While false, requests for a range that does not start at 0 are held back.
    gate: Arc<AtomicBool>,
}

impl TcpProxy {
    /// Forwards everything unchanged to `upstream`.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        Self::start_with(upstream, None)
    }

    /// Like [`TcpProxy::start`], but every request for a range that does not start at 0
    /// waits until [`TcpProxy::open_gate`] (a slow upstream, frozen at will).
    pub fn start_gated(upstream: SocketAddr) -> TcpProxy {
        let proxy = Self::start_with(upstream, None);
        proxy.gate.store(false, Ordering::SeqCst);
        proxy
    }

    /// Lets held-back range requests through (and later ones at once).
    pub fn open_gate(&self) {
        self.gate.store(true, Ordering::SeqCst);
    }

    /// Holds back later range requests again (see [`TcpProxy::start_gated`]).
    pub fn close_gate(&self) {
        self.gate.store(false, Ordering::SeqCst);
    }

    /// Like [`TcpProxy::start`], but every answer to a `HEAD` request claims
    /// `head_content_length` bytes (when given), whatever the server said.
    pub fn start_with(upstream: SocketAddr, head_content_length: Option<u64>) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let bytes_down = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(AtomicBool::new(true));
        let (seen, down, open) = (requests.clone(), bytes_down.clone(), gate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (seen, down, open) = (seen.clone(), down.clone(), open.clone());
                // Methods of the requests on this connection, oldest first.
                let methods = Arc::new(Mutex::new(std::collections::VecDeque::new()));
                let (mut c_read, mut s_write) = (
                    client.try_clone().expect("clone socket"),
                    server.try_clone().expect("clone socket"),
                );
                let up_methods = methods.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if let Some(line) = text.lines().next().filter(|l| l.ends_with(" HTTP/1.1"))
                        {
                            let method = line.split(' ').next().unwrap_or_default().to_string();
                            up_methods.lock().expect("lock").push_back(method);
                            seen.lock().expect("lock").push(line.to_string());
                        }
                        let later_range = text
                            .to_ascii_lowercase()
                            .split("\r\nrange: bytes=")
                            .nth(1)
                            .is_some_and(|r| !r.starts_with("0-"));
                        while later_range && !open.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_write.shutdown(Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut out = buf[..n].to_vec();
                        if out.starts_with(b"HTTP/1.1 ") {
                            let method = methods.lock().expect("lock").pop_front();
                            if let (Some("HEAD"), Some(len)) =
                                (method.as_deref(), head_content_length)
                            {
                                out = rewrite_content_length(&out, len);
                            }
                        }
                        if c_write.write_all(&out).is_err() {
                            break;
                        }
                        down.fetch_add(out.len() as u64, Ordering::SeqCst);
                    }
                    let _ = c_write.shutdown(Shutdown::Both);
                    let _ = s_read.shutdown(Shutdown::Both);
                });
            }
        });
        TcpProxy {
            addr,
            requests,
            bytes_down,
            gate,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request line of every request so far (`GET /v2/… HTTP/1.1`), in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }

    /// Bytes handed back to clients so far (headers and bodies).
    pub fn bytes_down(&self) -> u64 {
        self.bytes_down.load(Ordering::SeqCst)
    }
}

/// The response head `head` (which must hold the whole header block) with its
/// `Content-Length` set to `len`.
fn rewrite_content_length(head: &[u8], len: u64) -> Vec<u8> {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return head.to_vec();
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let lines: Vec<String> = text
        .split("\r\n")
        .map(|l| {
            if l.to_ascii_lowercase().starts_with("content-length:") {
                format!("content-length: {len}")
            } else {
                l.to_string()
            }
        })
        .collect();
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(&head[end..]);
    out
}

/// An answer read by [`raw_http`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The header block, as sent.
    pub head: String,
    /// The body (after the header block, up to the connection's end).
    pub body: String,
}

/// Sends `GET target` to `addr` with the request line exactly as given (no normalisation
/// of `.`, `..` or `%2e`), the extra `headers` and `Connection: close`, and reads the answer.
pub fn raw_http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set timeout");
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer from {addr} to {target}: {text:?}"));
    RawResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Opens `n` connections to `addr`, sends `payload` on each (the start of a request that
/// never ends), then waits for the server to close every one of them, failing when one is
/// still open after `limit`. Returns the most connections `open` reported during the wait
/// (the server's own count of held connections) and how long the wait took: a test of
/// connection caps and header or body timeouts.
pub async fn stall_connections(
    addr: std::net::SocketAddr,
    n: usize,
    payload: &[u8],
    open: impl Fn() -> usize,
    limit: Duration,
) -> (usize, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conns = Vec::new();
    for i in 0..n {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"));
        tcp.write_all(payload)
            .await
            .unwrap_or_else(|e| panic!("writing on connection {i} to {addr}: {e}"));
        conns.push(tcp);
    }
    let started = Instant::now();
    let mut most = 0;
    for tcp in &mut conns {
        loop {
            most = most.max(open());
            let mut b = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                // The server may answer a timed-out head with an error status first.
                Ok(Ok(_)) => continue,
                Err(_) => assert!(
                    started.elapsed() < limit,
                    "a stalled connection is still open after {:?}",
                    started.elapsed()
                ),
            }
        }
    }
    (most, started.elapsed())
}
