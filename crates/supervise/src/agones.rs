//! Client of the Agones SDK's local HTTP API (the SDK sidecar in a GameServer pod): the
//! assigned port and address (`GET /gameserver`), and `POST /ready`, `/health`, `/shutdown`.

use crate::error::Error;
use serde::Deserialize;
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Time one SDK request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The Agones SDK HTTP API at a base URL (`http://localhost:9358`).
#[derive(Clone, Debug)]
pub struct AgonesSdk {
    base: String,
    client: reqwest::Client,
}

/// The parts of the SDK's `GameServer` the supervisor uses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GameServer {
    /// `status` of the GameServer resource.
    #[serde(default)]
    pub status: Option<GameServerStatus>,
}

/// `status` of a GameServer.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GameServerStatus {
    /// `Scheduled`, `RequestReady`, `Ready`, `Allocated`, …
    #[serde(default)]
    pub state: Option<String>,
    /// The address players connect to (the node's).
    #[serde(default)]
    pub address: Option<String>,
    /// The ports Agones assigned.
    #[serde(default)]
    pub ports: Vec<GameServerPort>,
}

/// What Agones assigned: the port players connect to and the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignedPort {
    /// The GameServer status port (on the node).
    pub host_port: u16,
    /// The GameServer's address, when set.
    pub address: Option<String>,
}

/// One assigned port.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GameServerPort {
    /// Port name from the GameServer spec.
    #[serde(default)]
    pub name: Option<String>,
    /// Host port.
    pub port: u16,
}

impl AgonesSdk {
    /// A client for the SDK at `base` (no proxy: the SDK is on localhost).
    pub fn new(base: &str) -> Self {
        let client = crate::dns::client_builder()
            .no_proxy()
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        AgonesSdk {
            base: base.trim_end_matches('/').to_string(),
            client,
        }
    }

    /// The SDK's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /gameserver`.
    pub async fn game_server(&self) -> Result<GameServer, String> {
        let url = format!("{}/gameserver", self.base);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: bad GameServer JSON: {e}"))
    }

    /// Waits (retrying, up to `wait`) until the SDK answers with a GameServer that has ports;
    /// returns the host port named `name` (else the first) and the GameServer's address.
    /// That host port is what players connect to; the game listens on it only under the
    /// `Passthrough` policy (under `Dynamic` and `Static` Agones maps it to the container port).
    pub async fn assigned_port(
        &self,
        name: Option<&str>,
        wait: Duration,
    ) -> Result<AssignedPort, Error> {
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(100);
        loop {
            let reason = match self.game_server().await {
                Ok(gs) => {
                    let status = gs.status.unwrap_or_default();
                    let port = match name {
                        Some(n) => status.ports.iter().find(|p| p.name.as_deref() == Some(n)),
                        None => status.ports.first(),
                    };
                    match port {
                        Some(p) if p.port != 0 => {
                            return Ok(AssignedPort {
                                host_port: p.port,
                                address: status.address.filter(|a| !a.is_empty()),
                            });
                        }
                        _ => match name {
                            Some(n) => format!("no port named `{n}` in the GameServer status"),
                            None => "the GameServer status has no ports yet".to_string(),
                        },
                    }
                }
                Err(e) => e,
            };
            if Instant::now() + pause > deadline {
                return Err(Error::AgonesPort {
                    url: format!("{}/gameserver", self.base),
                    reason,
                });
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// `POST <path>` with an empty JSON body, once.
    pub async fn post(&self, path: &str) -> Result<(), String> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("POST {url}: HTTP {}", resp.status()))
        }
    }

    /// `POST <path>`, retried with backoff up to `attempts` times (the sidecar may be late).
    pub async fn post_retrying(&self, path: &str, attempts: u32) -> Result<(), String> {
        let mut pause = Duration::from_millis(100);
        let mut last = String::new();
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            match self.post(path).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
