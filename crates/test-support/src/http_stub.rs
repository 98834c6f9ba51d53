//! A minimal HTTP/1.1 server on loopback that answers from a closure and records every
//! request: the stand-in for peers that cannot run here (a fleet's event endpoint, the Agones
//! SDK sidecar). Tests using it say so in their names or docs.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request the stub received.
#[derive(Clone, Debug)]
pub struct StubRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

impl StubRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A running stub; it serves until the test process ends.
pub struct HttpStub {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    requests: Arc<Mutex<Vec<StubRequest>>>,
}

type Handler = dyn Fn(&StubRequest) -> (u16, String) + Send + Sync;

impl HttpStub {
    /// Starts a stub answering each request with `handler`'s status and JSON body
    /// (keep-alive connections are served in turn).
    pub fn start(handler: impl Fn(&StubRequest) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP stub");
        let port = listener.local_addr().expect("stub address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let seen = seen.clone();
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let Ok(mut writer) = conn.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(conn);
                    while let Some(request) = read_request(&mut reader) {
                        let (status, body) = handler(&request);
                        seen.lock().expect("stub lock").push(request);
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HttpStub { port, requests }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<StubRequest> {
        self.requests.lock().expect("stub lock").clone()
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<StubRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                length = v.parse().ok()?;
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(StubRequest {
        method,
        path,
        headers,
        body,
    })
}
