//! Health probes of the game (TCP connect, UDP datagram, shell command) and the loop that
//! turns their results into `ready` / `unhealthy` transitions.

use crate::config::HealthCheck;
use crate::process::{self, Reaper};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{lookup_host, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A change of the game's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthChange {
    /// The probe passed for the first time, or again after `Unhealthy`.
    Ready,
    /// The probe failed too many times in a row after `Ready`; the last failure.
    Unhealthy(String),
}

/// One way of probing the game.
#[derive(Clone)]
pub struct Probe {
    /// What to probe.
    pub check: HealthCheck,
    /// Host of the TCP/UDP probes.
    pub host: String,
    /// The game port.
    pub port: u16,
    /// Environment variable name carrying the port, for command probes.
    pub port_env: String,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Reaper that collects command probes' processes.
    pub reaper: Arc<Reaper>,
}

impl Probe {
    /// Runs the probe once: `Ok` when the game is healthy, else why not.
    pub async fn check(&self) -> Result<(), String> {
        match &self.check {
            HealthCheck::None => Ok(()),
            HealthCheck::Tcp => {
                let addr = self.addr().await?;
                match timeout(self.timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("TCP connect to {addr}: {e}")),
                    Err(_) => Err(format!("TCP connect to {addr}: timed out")),
                }
            }
            HealthCheck::Udp => {
                let addr = self.addr().await?;
                udp_probe(addr, self.timeout)
                    .await
                    .map_err(|e| format!("UDP probe of {addr}: {e}"))
            }
            HealthCheck::Cmd(cmd) => self.command_probe(cmd).await,
        }
    }

    async fn addr(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("resolve {}: no address", self.host))
    }

    async fn command_probe(&self, cmd: &str) -> Result<(), String> {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(cmd)
            .env(&self.port_env, self.port.to_string())
            .env_remove(crate::REPORT_TOKEN_ENV)
            .env_remove(crate::REPORT_TOKEN_FILE_ENV)
            .stdin(Stdio::null())
            .process_group(0);
        let (pid, rx) = self
            .reaper
            .spawn(&mut command)
            .map_err(|e| format!("cannot run health command `{cmd}`: {e}"))?;
        let mut guard = KillGroupOnDrop(Some(pid));
        let waited = timeout(self.timeout, rx).await;
        if let Ok(Ok(_)) = waited {
            // Exited and reaped: its pid may be reused, do not signal it any more.
            guard.0 = None;
        }
        let result = match waited {
            Ok(Ok(exit)) if exit.exit_code() == 0 => Ok(()),
            Ok(Ok(exit)) => Err(format!(
                "health command `{cmd}` exited with {}",
                exit.exit_code()
            )),
            Ok(Err(_)) => Err(format!("health command `{cmd}`: status lost")),
            Err(_) => Err(format!(
                "health command `{cmd}` timed out after {:?}",
                self.timeout
            )),
        };
        drop(guard);
        result
    }
}

/// Kills a probe's process group when the probe is abandoned (timeout, shutdown).
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = process::signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// Sends a datagram and waits up to `wait`: a reply passes, a refusal (ICMP port
/// unreachable: nothing bound) fails, silence passes (a socket is bound; on the local host
/// a refusal would have arrived at once).
async fn udp_probe(addr: SocketAddr, wait: Duration) -> io::Result<()> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    socket.send(b"gantry-health\n").await?;
    let mut buf = [0u8; 1500];
    match timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(()),
    }
}

/// Probes every `interval` and reports transitions on `tx` until it is closed (at once for
/// [`HealthCheck::None`]): `Ready` at
/// the first pass (failures before it do not count: the game is still starting),
/// `Unhealthy` after `failures` consecutive failures, `Ready` again at the next pass.
pub async fn watch(
    probe: Probe,
    interval: Duration,
    failures: u32,
    tx: mpsc::Sender<HealthChange>,
) {
    if probe.check == HealthCheck::None {
        // No probe: the caller reports `ready` itself when the game starts.
        return;
    }
    let mut ready = false;
    let mut unhealthy = false;
    let mut failed = 0u32;
    loop {
        match probe.check().await {
            Ok(()) => {
                failed = 0;
                if !ready || unhealthy {
                    ready = true;
                    unhealthy = false;
                    if tx.send(HealthChange::Ready).await.is_err() {
                        return;
                    }
                }
            }
            Err(reason) => {
                tracing::debug!("health probe failed: {reason}");
                if ready && !unhealthy {
                    failed += 1;
                    if failed >= failures.max(1) {
                        unhealthy = true;
                        if tx.send(HealthChange::Unhealthy(reason)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(check: HealthCheck, port: u16) -> Probe {
        Probe {
            check,
            host: "127.0.0.1".into(),
            port,
            port_env: "SERVER_PORT".into(),
            timeout: Duration::from_millis(300),
            reaper: Arc::new(Reaper::default()),
        }
    }

    #[tokio::test]
    async fn tcp_probe_passes_only_with_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        probe(HealthCheck::Tcp, port).check().await.unwrap();
        drop(listener);
        assert!(probe(HealthCheck::Tcp, port).check().await.is_err());
    }

    #[tokio::test]
    async fn udp_probe_fails_when_nothing_is_bound() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        probe(HealthCheck::Udp, port).check().await.unwrap();
        drop(socket);
        let err = probe(HealthCheck::Udp, port).check().await.unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
}
