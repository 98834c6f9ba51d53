//! Running the registry: listener (plain HTTP or TLS with rustls), background housekeeping
//! (stale upload purge, optional online garbage collection), graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::api::ClientAddr;
use crate::config::{Config, TlsConfig};
use crate::storage::StorageError;
use crate::{router, Registry, RegistryOptions};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The storage root cannot be opened.
    #[error("opening storage: {0}")]
    Storage(#[from] StorageError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server failed while running.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// A configuration file could not be used.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// The `[auth]` configuration could not be used.
    #[error("auth: {0}")]
    Auth(#[from] crate::AuthSetupError),
}

impl From<SocketAddr> for ClientAddr {
    fn from(addr: SocketAddr) -> Self {
        ClientAddr(addr)
    }
}

/// Builds a rustls server configuration from PEM certificate chain and key files.
pub fn load_tls(tls: &TlsConfig) -> Result<rustls::ServerConfig, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let shown = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| ServeError::Tls(format!("certificate {}: {e}", shown(&tls.cert))))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("certificate {}: {e}", shown(&tls.cert))))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "certificate {}: no PEM certificate found",
            shown(&tls.cert)
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| ServeError::Tls(format!("key {}: {e}", shown(&tls.key))))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A running server.
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    tls: bool,
    registry: Arc<Registry>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    housekeeping: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// The bound address (useful after binding port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the metrics listener, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://<addr>` or `https://<addr>`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// The registry being served.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Stops accepting, lets in-flight requests finish, stops housekeeping.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        for task in &self.housekeeping {
            task.abort();
        }
        // Wait for the tasks to be gone, so that the storage (and its lock) is released
        // when this returns and the caller drops the registry.
        for task in self.housekeeping {
            let _ = task.await;
        }
        self.server
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e)))
    }
}

/// Opens the storage of `config` and starts serving it; returns once the listener is bound
/// (`addr` may use port 0).
pub async fn bind(config: &Config) -> Result<RunningServer, ServeError> {
    let storage = crate::storage::open(config).await?;
    let registry = Registry::new(storage, RegistryOptions::from_config(config));
    let registry = with_configured_auth(registry, config)?;
    bind_registry(config, Arc::new(registry)).await
}

/// Applies the `[auth]` section of `config`, if any, to `registry` (without one, every
/// request stays allowed).
pub fn with_configured_auth(registry: Registry, config: &Config) -> Result<Registry, ServeError> {
    Ok(match &config.auth {
        Some(auth) => registry.with_token_auth(Arc::new(crate::TokenAuth::from_config(
            auth,
            &config.root,
            config.tls.is_some(),
        )?)),
        None => registry,
    })
}

/// Serves `registry` on the address (and TLS settings) of `config`.
pub async fn bind_registry(
    config: &Config,
    registry: Arc<Registry>,
) -> Result<RunningServer, ServeError> {
    let tls = match &config.tls {
        Some(t) => Some(TlsAcceptor::from(Arc::new(load_tls(t)?))),
        None => None,
    };
    let tcp = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = tcp.local_addr()?;
    let metrics_tcp = match config.metrics_address {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| ServeError::Bind { addr: a, source })?,
        ),
        None => None,
    };
    let (stop, mut stopped) = watch::channel(false);
    let app = router(registry.clone());
    let is_tls = tls.is_some();
    let limits = config.connections.serve_limits();
    let open = registry.metrics().open_connections();
    let stopping = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let server = match tls {
        Some(acceptor) => {
            let handshake = move |tcp: TcpStream| {
                let acceptor = acceptor.clone();
                async move { acceptor.accept(tcp).await }
            };
            tokio::spawn(gantry_net::serve(
                tcp,
                limits,
                handshake,
                ClientAddr::from,
                app,
                open,
                stopping,
            ))
        }
        None => tokio::spawn(gantry_net::serve(
            tcp,
            limits,
            gantry_net::plain,
            ClientAddr::from,
            app,
            open,
            stopping,
        )),
    };
    let mut housekeeping = Vec::new();
    let mut metrics_addr = None;
    if let Some(tcp) = metrics_tcp {
        metrics_addr = Some(tcp.local_addr()?);
        let mut stopped = stop.subscribe();
        housekeeping.push(tokio::spawn(gantry_net::serve(
            tcp,
            config.connections.serve_limits(),
            gantry_net::plain,
            ClientAddr::from,
            crate::api::metrics_router(registry.clone()),
            gantry_net::OpenConnections::default(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )));
        tracing::info!(addr = ?metrics_addr, "metrics listening");
    }
    let purge_every = config.uploads.purge_interval.max(Duration::from_secs(1));
    let reg = registry.clone();
    housekeeping.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(purge_every);
        loop {
            tick.tick().await;
            if let Err(e) = reg.purge_uploads().await {
                tracing::warn!(error = %e, "purging stale uploads");
            }
        }
    }));
    let reg = registry.clone();
    housekeeping.push(tokio::spawn(async move {
        // The fleet view: expire old servers, save the state file when it changed.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            reg.fleet().expire(crate::fleet::now_ms());
            let r = reg.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || r.fleet().save_if_dirty()).await
            {
                tracing::warn!(error = %e, "saving the fleet view");
            }
        }
    }));
    if let Some(every) = config.gc.interval {
        let reg = registry.clone();
        let every = every.max(Duration::from_secs(1));
        housekeeping.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let opts = reg.gc_options();
                if let Err(e) = reg.collect_garbage(&opts).await {
                    tracing::warn!(error = %e, "garbage collection");
                }
            }
        }));
    }
    tracing::info!(%addr, tls = is_tls, root = %config.root.display(), "registry listening");
    Ok(RunningServer {
        addr,
        metrics_addr,
        tls: is_tls,
        registry,
        stop,
        server,
        housekeeping,
    })
}

/// Offline garbage collection of the storage of `config` (for `gantry gc`): fails with
/// [`StorageError::Locked`] while a server has the storage open; run it online with
/// [`Registry::collect_garbage`] instead. On S3 storage nothing stops it while replicas
/// serve the bucket: only the grace period protects their pushes in progress.
pub fn gc_blocking(config: &Config, dry_run: bool) -> Result<crate::GcReport, ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let storage = crate::storage::open(config).await?;
        let registry = Registry::new(storage, RegistryOptions::from_config(config));
        let mut opts = registry.gc_options();
        opts.dry_run = dry_run;
        Ok(registry.collect_garbage(&opts).await?)
    })
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
