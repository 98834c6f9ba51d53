//! The supervision loop: port, metadata, `starting`, the game, health, signals, `exited`.

use crate::agones::AgonesSdk;
use crate::config::{Config, HealthCheck, PortSpec, DEFAULT_AGONES_HTTP_PORT};
use crate::error::Error;
use crate::event::{Event, Status};
use crate::health::{self, HealthChange, Probe};
use crate::metadata::{self, Metadata};
use crate::port::{free_port, substitute};
use crate::process::{self, ChildExit, Reaper};
use crate::report::{HttpSinkConfig, Reporter};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant, MissedTickBehavior};

/// How a supervised run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// How the game ended.
    pub exit: ChildExit,
    /// The port the game listened on.
    pub port: u16,
    /// The port reported to players (`public_port`): Agones' host port under Agones.
    pub public_port: u16,
    /// Orphaned processes (not the game) that the supervisor reaped.
    pub orphans_reaped: u64,
}

impl Outcome {
    /// The code the supervisor exits with: the game's, 128 + signal when a signal killed it.
    pub fn exit_code(&self) -> i32 {
        self.exit.exit_code()
    }
}

/// Runs `config`'s game under supervision on a new single-threaded tokio runtime and returns
/// when it has exited. The calling process becomes the game's reaper (PID 1 or a child
/// subreaper) and handles SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGCHLD:
/// call it from a process that does nothing else (the `gantry supervise` command), then
/// exit with [`Outcome::exit_code`].
pub fn run(config: Config) -> Result<Outcome, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(supervise(config))
}

/// The report token in `path`, without surrounding whitespace (a trailing newline).
async fn read_token_file(path: &std::path::Path) -> Result<String, Error> {
    let err = |source| Error::ReportTokenFile {
        path: path.to_path_buf(),
        source,
    };
    let text = tokio::fs::read_to_string(path).await.map_err(err)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        )));
    }
    Ok(token.to_string())
}

/// The async body of [`run`], for callers that own a runtime (same process-wide effects).
pub async fn supervise(config: Config) -> Result<Outcome, Error> {
    let program = config.command.first().ok_or(Error::NoCommand)?.clone();
    let token = match &config.report_token_file {
        Some(path) => Some(read_token_file(path).await?),
        None => config.report_token.clone().or_else(|| {
            std::env::var(crate::REPORT_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty())
        }),
    };
    if !process::become_subreaper() {
        tracing::warn!("cannot become a child subreaper: orphans of the game will not be reaped");
    }
    let reaper = Arc::new(Reaper::default());
    // Handlers first: a signal that arrives while we start is forwarded once the game runs.
    let mut signals = Signals::install()?;

    let agones_url = config.agones_base_url().or_else(|| {
        (config.port == PortSpec::Agones)
            .then(|| format!("http://localhost:{DEFAULT_AGONES_HTTP_PORT}"))
    });
    let agones = agones_url.as_deref().map(AgonesSdk::new);
    let ports = pick_port(&config, agones.as_ref()).await?;
    let port = ports.listen;
    let metadata = metadata::gather(&config, ports.address.clone()).await;

    let mut reporter = Reporter::start(
        config.stdout_events,
        HttpSinkConfig {
            urls: config.report_urls.clone(),
            token,
            queue: config.report_queue,
            interval: Some(config.report_interval),
        },
        agones
            .clone()
            .map(|sdk| (sdk, config.agones_health_interval)),
        config.report_flush_timeout,
    );
    let mut events = Events {
        kind: config.server_type.clone(),
        port: ports.public,
        metadata,
        seq: 0,
    };
    reporter.emit(&events.next(Status::Starting));

    let port_value = port.to_string();
    let public_value = ports.public.to_string();
    let argv: Vec<String> = config
        .command
        .iter()
        .map(|arg| {
            let arg = substitute(arg, &config.port_env, &port_value);
            substitute(&arg, crate::PUBLIC_PORT_ENV, &public_value)
        })
        .collect();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env(&config.port_env, &port_value)
        .env(crate::PUBLIC_PORT_ENV, &public_value)
        .env_remove(crate::REPORT_TOKEN_ENV)
        .env_remove(crate::REPORT_TOKEN_FILE_ENV);
    process::own_process_group(&mut cmd);
    let (pid, mut exit_rx) = match reaper.spawn(&mut cmd) {
        Ok(started) => started,
        Err(source) => {
            let err = Error::Spawn { program, source };
            let mut event = events.next(Status::Exited);
            event.exit_code = Some(err.exit_code());
            event.reason = Some(err.to_string());
            reporter.emit(&event);
            reporter.finish().await;
            return Err(err);
        }
    };

    let check = config.effective_health();
    if check == HealthCheck::None {
        // Nothing to wait for: ready as soon as the game runs, before anything else happens.
        reporter.emit(&events.next(Status::Ready));
    }
    let (health_tx, mut health_rx) = mpsc::channel(4);
    let probe = Probe {
        check,
        host: config.health_host.clone(),
        port,
        port_env: config.port_env.clone(),
        timeout: config.health_timeout,
        reaper: reaper.clone(),
    };
    let health_task = tokio::spawn(health::watch(
        probe,
        config.health_interval,
        config.health_failures,
        health_tx,
    ));
    let mut health_open = true;

    let mut terminating = false;
    let grace = sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(grace);
    let mut grace_armed = false;
    // SIGCHLD is the trigger; the sweep only guards against a lost notification.
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let exit = loop {
        let forward = tokio::select! {
            biased;
            status = &mut exit_rx => match status {
                Ok(exit) => break exit,
                // Cannot happen: the reaper keeps the waiter until it collected the game.
                Err(_) => {
                    tracing::error!("lost the game's exit status");
                    break ChildExit::Code(1);
                }
            },
            _ = signals.child.recv() => { reaper.reap(); continue; }
            _ = sweep.tick() => { reaper.reap(); continue; }
            _ = signals.term.recv() => libc::SIGTERM,
            _ = signals.int.recv() => libc::SIGINT,
            _ = signals.hup.recv() => libc::SIGHUP,
            _ = signals.quit.recv() => libc::SIGQUIT,
            _ = signals.usr1.recv() => libc::SIGUSR1,
            _ = signals.usr2.recv() => libc::SIGUSR2,
            () = &mut grace, if grace_armed => {
                grace_armed = false;
                tracing::warn!(
                    "the game did not exit within the {:?} grace period: SIGKILL to its process group",
                    config.grace_period
                );
                if let Err(e) = process::signal_group(pid, libc::SIGKILL) {
                    tracing::warn!("SIGKILL to process group {pid}: {e}");
                }
                continue;
            }
            change = health_rx.recv(), if health_open => {
                match change {
                    Some(HealthChange::Ready) => reporter.emit(&events.next(Status::Ready)),
                    Some(HealthChange::Unhealthy(reason)) => {
                        let mut event = events.next(Status::Unhealthy);
                        event.reason = Some(reason);
                        reporter.emit(&event);
                    }
                    None => health_open = false,
                }
                continue;
            }
        };
        if let Err(e) = process::signal_group(pid, forward) {
            tracing::warn!(
                "forwarding {} to process group {pid}: {e}",
                process::signal_name(forward)
            );
        }
        if (forward == libc::SIGTERM || forward == libc::SIGINT) && !terminating {
            terminating = true;
            // No `ready`/`unhealthy` after `terminating`.
            health_task.abort();
            health_open = false;
            reporter.emit(&events.next(Status::Terminating));
            grace.as_mut().reset(Instant::now() + config.grace_period);
            grace_armed = true;
        }
    };

    health_task.abort();
    // Nothing of the game outlives it: kill what is left of its process group (as PID 1 the
    // kernel would do so when we exit), then collect them.
    let _ = process::signal_group(pid, libc::SIGKILL);
    drain(&reaper, &mut signals.child, Duration::from_millis(500)).await;

    let mut event = events.next(Status::Exited);
    event.exit_code = Some(exit.exit_code());
    event.signal = exit.signal();
    reporter.emit(&event);
    reporter.finish().await;
    Ok(Outcome {
        exit,
        port,
        public_port: ports.public,
        orphans_reaped: reaper.orphans_reaped(),
    })
}

/// Reaps until no child is left or `limit` passes (orphans outside the game's group, such as
/// daemons that called setsid, may live on; as PID 1 our exit ends them).
async fn drain(reaper: &Reaper, child: &mut Signal, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if reaper.reap().no_children || Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            _ = child.recv() => {}
            _ = sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// The ports a game runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ports {
    /// What the game binds (`SERVER_PORT`), and what the probes connect to.
    listen: u16,
    /// What players connect to (`public_port` in events, `GANTRY_PUBLIC_PORT`).
    public: u16,
    /// The Agones GameServer address, when Agones told it.
    address: Option<String>,
}

/// Picks the game port. Under Agones the port it assigned is on the node: the game listens on
/// it only without a container port (`Passthrough`); with one (`Dynamic`, `Static`) the game
/// listens on the container port, or on a fixed `--port`, and the assigned port is public.
async fn pick_port(config: &Config, agones: Option<&AgonesSdk>) -> Result<Ports, Error> {
    let name = config.agones_port_name.as_deref();
    let same = |port: u16, address: Option<String>| Ports {
        listen: port,
        public: port,
        address,
    };
    match (config.port, agones) {
        (PortSpec::Fixed(port), None) => Ok(same(port, None)),
        (PortSpec::Free, None) | (PortSpec::Auto, None) => {
            Ok(same(free_port(config.protocol)?, None))
        }
        (PortSpec::Agones, None) => Err(Error::AgonesPort {
            url: "(no Agones SDK)".into(),
            reason: "--port agones needs --agones or AGONES_SDK_HTTP_PORT".into(),
        }),
        (PortSpec::Auto | PortSpec::Agones, Some(sdk)) => {
            let assigned = sdk.assigned_port(name, config.agones_wait).await?;
            Ok(Ports {
                listen: config.container_port.unwrap_or(assigned.host_port),
                public: assigned.host_port,
                address: assigned.address,
            })
        }
        (PortSpec::Fixed(port), Some(sdk)) => {
            // The game listens where it was told; players still come through Agones' port.
            match sdk.assigned_port(name, config.agones_wait).await {
                Ok(assigned) => Ok(Ports {
                    listen: port,
                    public: assigned.host_port,
                    address: assigned.address,
                }),
                Err(e) => {
                    tracing::warn!("{e}; reporting the fixed port {port} as public");
                    Ok(same(port, None))
                }
            }
        }
        (PortSpec::Free, Some(sdk)) => {
            // A port Agones knows nothing of: ask it only for the address, without waiting long.
            let port = free_port(config.protocol)?;
            let address = tokio::time::timeout(Duration::from_secs(2), sdk.game_server())
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|gs| gs.status)
                .and_then(|s| s.address)
                .filter(|a| !a.is_empty());
            Ok(same(port, address))
        }
    }
}

/// Numbers events and fills in what every event carries.
struct Events {
    kind: String,
    port: u16,
    metadata: Metadata,
    seq: u64,
}

impl Events {
    fn next(&mut self, status: Status) -> Event {
        let event = Event::new(status, &self.kind, self.port, &self.metadata, self.seq);
        self.seq += 1;
        event
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    quit: Signal,
    usr1: Signal,
    usr2: Signal,
    child: Signal,
}

impl Signals {
    fn install() -> Result<Self, Error> {
        fn one(kind: SignalKind, name: &'static str) -> Result<Signal, Error> {
            signal(kind).map_err(|source| Error::Signal {
                signal: name,
                source,
            })
        }
        Ok(Signals {
            term: one(SignalKind::terminate(), "SIGTERM")?,
            int: one(SignalKind::interrupt(), "SIGINT")?,
            hup: one(SignalKind::hangup(), "SIGHUP")?,
            quit: one(SignalKind::quit(), "SIGQUIT")?,
            usr1: one(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: one(SignalKind::user_defined2(), "SIGUSR2")?,
            child: one(SignalKind::child(), "SIGCHLD")?,
        })
    }
}
