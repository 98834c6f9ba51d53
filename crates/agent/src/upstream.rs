//! The registries behind the agent. Requests to them carry the client's own
//! `Authorization`, so the registry — not the agent — decides who may read what.

use std::str::FromStr;
use std::time::Duration;

use http::HeaderValue;
use reqwest::{Method, Response};

use crate::error::AgentError;

/// An upstream registry: the host containerd names (the `ns` query parameter of mirror
/// requests) and the URL the agent reaches it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// `host[:port]` as in image references.
    pub host: String,
    /// Base URL, e.g. `https://registry.example.com` or `http://127.0.0.1:5000`.
    pub url: String,
}

impl FromStr for UpstreamSpec {
    type Err = String;

    /// `HOST` (reached over HTTPS) or `HOST=URL`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, url) = match s.split_once('=') {
            Some((h, u)) => (h.trim(), u.trim().trim_end_matches('/').to_string()),
            None => (s.trim(), format!("https://{}", s.trim())),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("upstream {s:?}: expected HOST or HOST=URL"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "upstream {s:?}: the URL must start with http:// or https://"
            ));
        }
        Ok(UpstreamSpec {
            host: host.to_string(),
            url,
        })
    }
}

/// How long the agent waits on an upstream before it gives up. An upstream that answers
/// one byte a second would otherwise hold a fetch, and every request waiting on it, for as
/// long as it likes (a read timeout alone resets on every byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// Time an upstream has to answer a request with its status and headers.
    pub answer_within: Duration,
    /// The slowest body accepted, in bytes per second, averaged over every
    /// [`Self::rate_window`] (0: no floor).
    pub min_bytes_per_second: u64,
    /// The window [`Self::min_bytes_per_second`] is averaged over.
    pub rate_window: Duration,
}

impl Default for UpstreamLimits {
    /// An answer within 60 s, and at least 16 KiB/s over every 30 s: far below any link a
    /// node pulls images over, far above a trickle meant to hold the agent.
    fn default() -> Self {
        UpstreamLimits {
            answer_within: Duration::from_secs(60),
            min_bytes_per_second: 16 * 1024,
            rate_window: Duration::from_secs(30),
        }
    }
}

/// The body of an upstream answer, read piece by piece under the rate floor of
/// [`UpstreamLimits`]: a body slower than the floor ends with [`AgentError::Upstream`].
pub struct UpstreamBody {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    url: String,
    limits: UpstreamLimits,
    window_start: tokio::time::Instant,
    window_bytes: u64,
}

impl UpstreamBody {
    /// The body of `resp`, fetched from `url` (named in errors).
    pub fn new(resp: Response, url: &str, limits: UpstreamLimits) -> Self {
        use futures::StreamExt;
        UpstreamBody {
            stream: resp.bytes_stream().boxed(),
            url: url.to_string(),
            limits,
            window_start: tokio::time::Instant::now(),
            window_bytes: 0,
        }
    }

    /// The next piece of the body; `None` at its end.
    pub async fn next(&mut self) -> Option<Result<bytes::Bytes, AgentError>> {
        use futures::StreamExt;
        loop {
            let floor = self.limits.min_bytes_per_second;
            let deadline = self.window_start + self.limits.rate_window;
            let piece = if floor == 0 {
                Ok(self.stream.next().await)
            } else {
                tokio::time::timeout_at(deadline, self.stream.next()).await
            };
            match piece {
                Ok(Some(Ok(bytes))) => {
                    self.window_bytes += bytes.len() as u64;
                    if tokio::time::Instant::now() >= deadline {
                        if let Some(e) = self.too_slow() {
                            return Some(Err(e));
                        }
                    }
                    return Some(Ok(bytes));
                }
                Ok(Some(Err(e))) => {
                    return Some(Err(AgentError::Upstream {
                        url: self.url.clone(),
                        message: describe(&e),
                    }))
                }
                Ok(None) => return None,
                Err(_elapsed) => {
                    if let Some(e) = self.too_slow() {
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// At the end of a window: the error when it brought less than the floor, else `None`
    /// and a new window.
    fn too_slow(&mut self) -> Option<AgentError> {
        let window = self.limits.rate_window;
        let required = (self.limits.min_bytes_per_second as f64 * window.as_secs_f64()) as u64;
        if self.window_bytes < required {
            return Some(AgentError::Upstream {
                url: self.url.clone(),
                message: format!(
                    "too slow: {} bytes in {window:?}, less than the {required} bytes required \
                     ({} bytes/s); given up",
                    self.window_bytes, self.limits.min_bytes_per_second
                ),
            });
        }
        self.window_start = tokio::time::Instant::now();
        self.window_bytes = 0;
        None
    }
}

/// The configured upstreams and one HTTP client for all of them.
pub struct Upstreams {
    specs: Vec<UpstreamSpec>,
    http: reqwest::Client,
    limits: UpstreamLimits,
}

impl Upstreams {
    /// Upstreams reached with a shared connection pool, waited on within `limits`.
    pub fn new(specs: Vec<UpstreamSpec>, limits: UpstreamLimits) -> Result<Self, AgentError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("gantry-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| AgentError::Upstream {
                url: "-".into(),
                message: format!("building the HTTP client: {e}"),
            })?;
        Ok(Upstreams {
            specs,
            http,
            limits,
        })
    }

    /// The body of `resp` (an answer from `url`), read under the configured rate floor.
    pub fn body(&self, resp: Response, url: &str) -> UpstreamBody {
        UpstreamBody::new(resp, url, self.limits)
    }

    /// The configured upstreams.
    pub fn specs(&self) -> &[UpstreamSpec] {
        &self.specs
    }

    /// The upstream for containerd's `ns` parameter (the registry host); without one, the
    /// first configured upstream.
    pub fn pick(&self, ns: Option<&str>) -> Result<&UpstreamSpec, AgentError> {
        match ns {
            Some(ns) => self
                .specs
                .iter()
                .find(|u| u.host == ns)
                .ok_or_else(|| AgentError::UnknownUpstream(ns.to_string())),
            None => self
                .specs
                .first()
                .ok_or_else(|| AgentError::UnknownUpstream(String::new())),
        }
    }

    /// Sends `method path` to `up` with the client's `Authorization` and extra headers;
    /// retries twice when the connection fails. Any status is returned.
    pub async fn send(
        &self,
        up: &UpstreamSpec,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        headers: &[(&str, String)],
    ) -> Result<Response, AgentError> {
        let url = format!("{}{}", up.url, path);
        let mut attempt = 0;
        loop {
            let mut req = self.http.request(method.clone(), &url);
            if let Some(a) = auth {
                req = req.header("authorization", a.clone());
            }
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            let answer = match tokio::time::timeout(self.limits.answer_within, req.send()).await {
                Ok(a) => a,
                Err(_) => {
                    return Err(AgentError::Upstream {
                        url,
                        message: format!(
                            "no answer within {:?}; given up",
                            self.limits.answer_within
                        ),
                    })
                }
            };
            match answer {
                Ok(r) => return Ok(r),
                Err(e) if attempt < 2 && (e.is_connect() || e.is_request()) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    return Err(AgentError::Upstream {
                        url,
                        message: describe(&e),
                    })
                }
            }
        }
    }
}

/// A reqwest error with its causes.
pub fn describe(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstreams() {
        let u: UpstreamSpec = "registry.example.com".parse().unwrap();
        assert_eq!(u.url, "https://registry.example.com");
        let u: UpstreamSpec = "127.0.0.1:5000=http://127.0.0.1:5000/".parse().unwrap();
        assert_eq!(u.host, "127.0.0.1:5000");
        assert_eq!(u.url, "http://127.0.0.1:5000");
        assert!("a/b".parse::<UpstreamSpec>().is_err());
        assert!("h=ftp://x".parse::<UpstreamSpec>().is_err());
    }
}
