//! HTTP serving shared by `gantry serve` (the registry) and `gantry agent`.
//!
//! `axum::serve` accepts every connection and keeps it as long as the client likes: a
//! client that never finishes its request headers, or stops reading an answer, holds a
//! socket and a file descriptor for ever, and a few hundred of them exhaust the process's
//! descriptors so that nobody else is served. [`serve`] bounds all of that:
//! - at most [`ServeLimits::max_connections`] connections at once; beyond that the
//!   listener stops accepting (new clients wait in the kernel's backlog) instead of
//!   failing on `EMFILE`;
//! - request headers must arrive within [`ServeLimits::header_read_timeout`] (hyper's own
//!   timer), the TLS handshake too;
//! - a keep-alive connection waits at most that long for its next request;
//! - a request body that brings no byte for [`ServeLimits::idle_timeout`] fails, and so
//!   does an answer the client reads nothing of for as long; a server busy computing an
//!   answer is not idle;
//! - TCP_NODELAY on every connection (an answer goes out as headers then body, and with
//!   Nagle on the body waits for the client's delayed ACK);
//! - graceful shutdown: a stop lets requests in progress finish.
//!
//! [`raise_open_file_limit`] lifts the soft `RLIMIT_NOFILE` to the hard limit at start.

mod idle;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

pub use idle::IdleTimeout;

/// How much a server lets its clients hold. The defaults suit a registry or an agent on
/// one host: thousands of concurrent pulls, and a stalled client dropped within a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, to finish a TLS handshake, and that
    /// a keep-alive connection waits for the next request.
    pub header_read_timeout: Duration,
    /// Time a request body may bring no byte, and an answer may go unread.
    pub idle_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts the connections a [`serve`] loop holds open, for metrics and tests.
#[derive(Debug, Clone, Default)]
pub struct OpenConnections(Arc<AtomicUsize>);

impl OpenConnections {
    /// Connections open right now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Holds one count in [`OpenConnections`] while alive.
struct Counted(OpenConnections);

impl Counted {
    fn new(open: &OpenConnections) -> Self {
        open.0.fetch_add(1, Ordering::Relaxed);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then waits for the
/// requests in progress. Each accepted TCP stream goes through `handshake` first (TLS, or
/// [`plain`]); the handshake must finish within the header-read timeout. Every request
/// carries `peer_info(peer address)` as an `axum::extract::ConnectInfo` extension.
/// `open` counts the connections held.
pub async fn serve<H, F, Io, C>(
    listener: TcpListener,
    limits: ServeLimits,
    handshake: H,
    peer_info: fn(SocketAddr) -> C,
    app: Router,
    open: OpenConnections,
    shutdown: impl Future<Output = ()> + Send,
) where
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let handshake = Arc::new(handshake);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to come back rather than
                    // spinning; the connection stays in the backlog.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let counted = Counted::new(&open);
        let watcher = graceful.watcher();
        let (handshake, app) = (handshake.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _counted = counted;
            let io = match tokio::time::timeout(limits.header_read_timeout, handshake(tcp)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "handshake timed out");
                    return;
                }
            };
            let io = TokioIo::new(IdleTimeout::new(io, limits.idle_timeout));
            let idle = limits.idle_timeout;
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(|body| TimeoutBody::new(idle, body));
                req.extensions_mut().insert(ConnectInfo(peer_info(peer)));
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(io, service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The handshake of a plain-TCP server: the stream as it is.
pub fn plain(tcp: TcpStream) -> std::future::Ready<io::Result<TcpStream>> {
    std::future::ready(Ok(tcp))
}

/// Raises the soft open-file limit to the hard limit, so that the connection cap, not
/// `EMFILE`, is what bounds a server. Returns the soft limit in force afterwards.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let soft = raise_open_file_limit().expect("rlimit");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
