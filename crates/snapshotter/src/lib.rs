//! `gantry snapshotter`: a containerd proxy snapshotter with the semantics of containerd's
//! own overlayfs snapshotter, served over containerd's snapshots gRPC API on a unix socket.
//!
//! Stock containerd uses it through a `proxy_plugins` entry (see [`proxy_plugin_config`])
//! and `--snapshotter gantry` (ctr) or `snapshotter = "gantry"` (CRI). Today every layer
//! takes the normal path: containerd fetches it, prepares an empty active snapshot here,
//! applies the layer into the returned mounts and commits it. [`fastpath`] is where the
//! remote-snapshot fast path (layers assembled from Gantry chunk indexes by the node agent)
//! will plug in.
//!
//! ```no_run
//! # async fn run() -> gantry_snapshotter::Result<()> {
//! let config = gantry_snapshotter::Config::default();
//! println!("{}", gantry_snapshotter::proxy_plugin_config("gantry", &config.address));
//! gantry_snapshotter::serve(config).await
//! # }
//! ```

#![warn(missing_docs)]

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

pub mod containerd_config;
mod error;
pub mod fastpath;
mod filter;
mod metrics;
pub mod remote;
mod service;
pub mod store;
pub mod unpack;

pub use error::{Error, Result};
pub use fastpath::{FastPath, FastPathOutcome, NormalPathOnly, RemoteLayer};
pub use metrics::{Metrics, MetricsSnapshot};
pub use remote::{FastPathTotals, GantryFastPath};
pub use service::Snapshotter;
pub use store::Store;
pub use url::Url;

/// Default state directory.
pub const DEFAULT_ROOT: &str = "/var/lib/gantry/snapshotter";
/// Default gRPC unix socket.
pub const DEFAULT_ADDRESS: &str = "/run/gantry/snapshotter.sock";
/// The plugin name that [`proxy_plugin_config`] is usually given, and `ctr --snapshotter`.
pub const DEFAULT_PLUGIN_NAME: &str = "gantry";

/// Where the snapshotter keeps its state and listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// State directory (metadata and snapshot directories). Must be on a filesystem that
    /// can be an overlayfs upper directory (ext4, xfs, …; not overlayfs itself).
    pub root: PathBuf,
    /// The unix socket to serve containerd's snapshots API on.
    pub address: PathBuf,
    /// The node agent (`gantry agent`): with it, layers with a Gantry chunk index take the
    /// fast path; without it, every layer takes the normal path.
    pub agent: Option<Url>,
    /// Where to serve `/metrics` (Prometheus text); none to serve no metrics.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            address: PathBuf::from(DEFAULT_ADDRESS),
            agent: None,
            metrics_addr: None,
        }
    }
}

/// The `config.toml` (version 2) snippet that makes containerd use the snapshotter at
/// `address` under the name `name`:
///
/// ```toml
/// [proxy_plugins.gantry]
///   type = "snapshot"
///   address = "/run/gantry/snapshotter.sock"
/// ```
pub fn proxy_plugin_config(name: &str, address: &Path) -> String {
    format!(
        "[proxy_plugins.{}]\n  type = \"snapshot\"\n  address = {}\n",
        toml_key(name),
        toml_string(&address.to_string_lossy())
    )
}

fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        toml_string(name)
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Serves until SIGINT or SIGTERM (see [`serve_with_shutdown`]).
pub async fn serve(config: Config) -> Result<()> {
    serve_with_shutdown(config, shutdown_signal()).await
}

/// Serves until `shutdown` completes: with Gantry's fast path through `config.agent` when
/// one is given, else with the normal path only.
pub async fn serve_with_shutdown(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let fast_path: Arc<dyn FastPath> = match &config.agent {
        Some(agent) => Arc::new(GantryFastPath::new(agent.as_str())),
        None => Arc::new(NormalPathOnly),
    };
    serve_with(config, fast_path, shutdown).await.map(|_| ())
}

/// Opens the store at `config.root` (cleaning up after a crash), listens on
/// `config.address` (replacing a stale socket; refusing one a live server answers on) and
/// serves containerd's snapshots API with `fast_path` until `shutdown` completes. Returns
/// the counters at the end. The socket file is removed on the way out.
pub async fn serve_with(
    config: Config,
    fast_path: Arc<dyn FastPath>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<MetricsSnapshot> {
    let root = config.root.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&root)).await??;
    tracing::info!(
        root = %config.root.display(),
        agent = config.agent.as_ref().map(|u| u.as_str()).unwrap_or("none"),
        options = ?store.mount_options(),
        "gantry snapshotter store opened"
    );
    let snapshotter = Arc::new(Snapshotter::new(Arc::new(store), fast_path.clone()));
    let metrics_server = match config.metrics_addr {
        Some(addr) => Some(metrics::serve(addr, snapshotter.metrics(), fast_path).await?),
        None => None,
    };
    let result = serve_snapshotter(snapshotter, &config.address, shutdown).await;
    if let Some(server) = metrics_server {
        server.abort();
    }
    result
}

/// Serves `snapshotter` (built by the caller, who may keep its [`Snapshotter::store`] and
/// [`Snapshotter::metrics`]) on the unix socket `address` until `shutdown` completes, and
/// returns the counters at the end. A stale socket file is replaced, one a live server
/// answers on is refused; the socket file is removed on the way out.
pub async fn serve_snapshotter(
    snapshotter: Arc<Snapshotter>,
    address: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<MetricsSnapshot> {
    let listener = bind(address).await?;
    tracing::info!(address = %address.display(), "gantry snapshotter serving");
    let metrics = snapshotter.metrics();
    let result = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(snapshotter))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(address);
    result.map_err(|source| Error::Serve {
        address: address.to_path_buf(),
        source,
    })?;
    let counts = metrics.snapshot();
    tracing::info!(?counts, "gantry snapshotter stopped");
    Ok(counts)
}

async fn bind(address: &Path) -> Result<UnixListener> {
    let io = |what: &str, e| Error::io(format!("{what} {}", address.display()), e);
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io("creating the directory of", e))?;
            tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .await
                .map_err(|e| io("chmod the directory of", e))?;
        }
    }
    match tokio::fs::symlink_metadata(address).await {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(address).await.is_ok() {
                return Err(io(
                    "binding",
                    std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another server is listening on this socket",
                    ),
                ));
            }
            tokio::fs::remove_file(address)
                .await
                .map_err(|e| io("removing the stale socket", e))?;
        }
        Ok(_) => {
            return Err(io(
                "binding",
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat", e)),
    }
    let listener = UnixListener::bind(address).map_err(|e| io("binding", e))?;
    tokio::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .await
        .map_err(|e| io("chmod", e))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stopping only when killed");
            std::future::pending::<()>().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_plugin_snippet() {
        assert_eq!(
            proxy_plugin_config("gantry", Path::new("/run/gantry/snapshotter.sock")),
            "[proxy_plugins.gantry]\n  type = \"snapshot\"\n  address = \"/run/gantry/snapshotter.sock\"\n"
        );
        assert!(proxy_plugin_config("a.b", Path::new("/x\"y")).starts_with(
            "[proxy_plugins.\"a.b\"]\n  type = \"snapshot\"\n  address = \"/x\\\"y\"\n"
        ));
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.root, Path::new("/var/lib/gantry/snapshotter"));
        assert_eq!(c.address, Path::new("/run/gantry/snapshotter.sock"));
        assert_eq!(c.agent, None);
    }
}
