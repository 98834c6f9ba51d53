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

/// The configured upstreams and one HTTP client for all of them.
pub struct Upstreams {
    specs: Vec<UpstreamSpec>,
    http: reqwest::Client,
}

impl Upstreams {
    /// Upstreams reached with a shared connection pool.
    pub fn new(specs: Vec<UpstreamSpec>) -> Result<Self, AgentError> {
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
        Ok(Upstreams { specs, http })
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
            match req.send().await {
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
