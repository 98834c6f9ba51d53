//! `gantry deploy render|apply`: Kubernetes objects for the game server (Deployment or
//! Agones Fleet) and the node agent (DaemonSet), pinned by digest, applied server-side.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use gantry_deploy::render::{self, AgentSpec, FleetOptions, GameSpec, Manifest};
use gantry_deploy::{Cluster, DeployImage, KubeTarget};

use super::transfer::{runtime, Location, RegistryArgs};

/// Arguments of `gantry deploy`.
#[derive(Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub command: DeployCommand,
}

/// `gantry deploy` subcommands.
#[derive(Subcommand)]
pub enum DeployCommand {
    /// Print the Kubernetes objects as YAML (documents separated by `---`).
    Render(RenderArgs),
    /// Apply the objects server-side and follow the rollout until every pod runs the image.
    Apply(ApplyArgs),
}

/// What to deploy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// A plain Deployment (host network, node selector, resources, grace period).
    #[default]
    Deployment,
    /// An Agones Fleet of GameServers with the same pod.
    Fleet,
    /// The node agent: DaemonSet plus containerd hosts.toml (ConfigMap + init container).
    Agent,
}

/// The objects' flags, shared by `render` and `apply`.
#[derive(Args, Clone, Debug)]
pub struct ObjectArgs {
    /// What to render.
    #[arg(long, value_enum, default_value_t = Kind::Deployment)]
    pub kind: Kind,
    /// The game-server image, `host/repo:tag` or `…@sha256:…` (`http://` for a plain-HTTP
    /// registry when resolving with --digest-pin).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Resolve the tag to its manifest digest now and deploy `repo@sha256:…`, so every pod of
    /// the rollout runs the same bytes.
    #[arg(long)]
    pub digest_pin: bool,
    /// Object name (default: the repository's last component; `gantry-agent` for --kind agent).
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Pods (Deployment) or GameServers (Fleet).
    #[arg(long, default_value_t = 1)]
    pub replicas: i32,
    /// Node selector `KEY=VALUE` (repeatable), e.g. a spot-capacity label.
    #[arg(long = "node-selector", value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,
    /// CPU request (and limit unless --cpu-limit).
    #[arg(long, default_value = "500m")]
    pub cpu: String,
    /// Memory request (and limit unless --memory-limit).
    #[arg(long, default_value = "512Mi")]
    pub memory: String,
    /// CPU limit.
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// Memory limit.
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// terminationGracePeriodSeconds (`30`, `30s`, `2m`).
    #[arg(long, default_value = "30s")]
    pub grace_period: String,
    /// Environment variable `KEY=VALUE` for the game container (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// imagePullPolicy: IfNotPresent, Always or Never.
    #[arg(long, default_value = "IfNotPresent")]
    pub pull_policy: String,
    /// The game's container port (Fleet default: 7777).
    #[arg(long)]
    pub port: Option<u16>,
    /// udp or tcp.
    #[arg(long, default_value = "udp")]
    pub protocol: String,
    /// GANTRY_REPORT_URL: where `gantry supervise` POSTs status events (e.g.
    /// `https://registry.example/gantry/v1/fleet/events`).
    #[arg(long, value_name = "URL")]
    pub report_url: Option<String>,
    /// Secret whose key `token` becomes GANTRY_REPORT_TOKEN.
    #[arg(long, value_name = "NAME")]
    pub report_secret: Option<String>,
    /// Fleet: Agones port policy (Dynamic, Static, Passthrough).
    #[arg(long, default_value = "Dynamic")]
    pub port_policy: String,
    /// Fleet: Packed or Distributed.
    #[arg(long, default_value = "Packed")]
    pub scheduling: String,
    /// Fleet: Agones health periodSeconds.
    #[arg(long, default_value_t = 5)]
    pub health_period: i32,
    /// Fleet: Agones health failureThreshold.
    #[arg(long, default_value_t = 3)]
    pub health_failure_threshold: i32,
    /// Fleet: Agones health initialDelaySeconds.
    #[arg(long, default_value_t = 30)]
    pub health_initial_delay: i32,
    /// Agent: a registry the agent mirrors, `HOST` or `HOST=URL` (repeatable).
    #[arg(long = "upstream", value_name = "HOST[=URL]")]
    pub upstreams: Vec<String>,
    /// Agent: an image containing the gantry binary (and /bin/sh).
    #[arg(long, value_name = "REF")]
    pub agent_image: Option<String>,
    /// Agent: also run `gantry snapshotter` in the DaemonSet (privileged).
    #[arg(long)]
    pub snapshotter: bool,
    /// Agent: the pod's runtimeClassName (a handler keeping containerd's own snapshotter,
    /// so the DaemonSet starts while the snapshotter is down; containerd 1.7+).
    #[arg(long, value_name = "NAME")]
    pub runtime_class: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The container command, after `--` (e.g. `-- gantry supervise -- ./Launcher_Server`);
    /// default: the image's entrypoint.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Arguments of `gantry deploy render`.
#[derive(Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub objects: ObjectArgs,
}

/// Arguments of `gantry deploy apply`.
#[derive(Args)]
pub struct ApplyArgs {
    /// Apply this file of rendered YAML instead of rendering from flags.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub objects: ObjectArgs,
    /// kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// How long to wait for the rollout (`10m`, `90s`).
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    /// Apply only; do not follow the rollout.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `gantry deploy …`.
pub fn run(args: DeployArgs) -> anyhow::Result<()> {
    match args.command {
        DeployCommand::Render(a) => {
            let objects = build_objects(&a.objects)?;
            print!("{}", render::to_yaml(&objects)?);
            Ok(())
        }
        DeployCommand::Apply(a) => apply(a),
    }
}

/// `30`, `30s`, `5m`, `1h` → a duration.
fn parse_duration(what: &str, s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("{what} {s:?}: expected seconds, or a number with s, m or h"))?;
    Ok(Duration::from_secs(n * mult))
}

fn key_values(what: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{what} {kv:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// Resolves (or checks) the image's digest: with --digest-pin through the registry, else a
/// warning for a tag-only reference.
fn resolve(image: &str, pin: bool, registry: &RegistryArgs) -> anyhow::Result<DeployImage> {
    let parsed = DeployImage::parse(image)?;
    if parsed.is_pinned() {
        return Ok(parsed);
    }
    if !pin {
        eprintln!(
            "warning: {image} names a tag, not a digest: if the tag moves during the rollout, \
             pods of one rollout may run different bytes (pass --digest-pin, or REF@sha256:…)"
        );
        return Ok(parsed);
    }
    let (reference, plain_http) = Location::reference(image)?;
    let client = registry.client(&reference.registry, plain_http)?;
    let pinned = runtime()?
        .block_on(gantry_deploy::pin_image(&client, parsed))
        .with_context(|| format!("pinning {image} to its digest"))?;
    if let Some(d) = &pinned.digest {
        eprintln!("{image} is {d}");
    }
    Ok(pinned)
}

fn build_objects(a: &ObjectArgs) -> anyhow::Result<Vec<Manifest>> {
    let node_selector: BTreeMap<String, String> = key_values("--node-selector", &a.node_selector)?
        .into_iter()
        .collect();
    if a.kind == Kind::Agent {
        let Some(agent_image) = &a.agent_image else {
            bail!("--kind agent needs --agent-image REF (an image containing the gantry binary)");
        };
        let image = resolve(agent_image, a.digest_pin, &a.registry)?;
        let upstreams = a
            .upstreams
            .iter()
            .map(|s| {
                s.parse::<gantry_agent::UpstreamSpec>()
                    .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let spec = AgentSpec {
            name: a.name.clone().unwrap_or_else(|| "gantry-agent".into()),
            namespace: a.namespace.clone(),
            image: image.pod_image(),
            pull_policy: a.pull_policy.clone(),
            upstreams,
            node_selector,
            snapshotter: a.snapshotter,
            runtime_class: a.runtime_class.clone(),
        };
        return Ok(render::agent(&spec)?);
    }
    let Some(image) = &a.image else {
        bail!("--image REF is needed (the game-server image)");
    };
    let image = resolve(image, a.digest_pin, &a.registry)?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => image
            .repository
            .rsplit('/')
            .next()
            .unwrap_or("game")
            .to_string(),
    };
    let grace = parse_duration("--grace-period", &a.grace_period)?;
    let mut spec = GameSpec::new(&name, image);
    spec.namespace = a.namespace.clone();
    spec.replicas = a.replicas;
    spec.node_selector = node_selector;
    spec.cpu = a.cpu.clone();
    spec.memory = a.memory.clone();
    spec.cpu_limit = a.cpu_limit.clone();
    spec.memory_limit = a.memory_limit.clone();
    spec.grace_period_seconds = grace.as_secs() as i64;
    spec.env = key_values("--env", &a.env)?;
    spec.pull_policy = a.pull_policy.clone();
    spec.port = a.port;
    spec.protocol = a.protocol.clone();
    spec.command = a.command.clone();
    spec.report_url = a.report_url.clone();
    spec.report_secret = a.report_secret.clone();
    Ok(vec![match a.kind {
        Kind::Fleet => render::fleet(
            &spec,
            &FleetOptions {
                port_policy: a.port_policy.clone(),
                scheduling: a.scheduling.clone(),
                health_period_seconds: a.health_period,
                health_failure_threshold: a.health_failure_threshold,
                health_initial_delay_seconds: a.health_initial_delay,
                ..FleetOptions::default()
            },
        )?,
        _ => render::deployment(&spec)?,
    }])
}

fn apply(a: ApplyArgs) -> anyhow::Result<()> {
    let timeout = parse_duration("--timeout", &a.timeout)?;
    let objects = match &a.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let objects = render::parse_yaml(&text, &path.display().to_string())?;
            if objects.is_empty() {
                bail!("{}: no objects", path.display());
            }
            objects
        }
        None => build_objects(&a.objects)?,
    };
    let target = KubeTarget {
        kubeconfig: a.kubeconfig.clone(),
        context: a.context.clone(),
    };
    let quiet = a.json;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let result = runtime()?.block_on(async {
        let cluster = Cluster::connect(&target).await?;
        let mut applied = Vec::new();
        for m in &objects {
            cluster.apply(m).await?;
            progress(&format!("applied {} on {}", m.describe(), cluster.server()));
            applied.push(m.describe());
        }
        let mut rollouts = Vec::new();
        if !a.no_wait {
            for m in &objects {
                if matches!(m, Manifest::ConfigMap(_)) {
                    continue;
                }
                let digest = m.pinned_digest();
                rollouts.push(
                    cluster
                        .rollout(m, digest.as_deref(), timeout, &progress)
                        .await?,
                );
            }
        }
        anyhow::Ok(serde_json::json!({
            "server": cluster.server(),
            "applied": applied,
            "rollouts": rollouts,
        }))
    })?;
    if a.json {
        super::print_json(&result)?;
    } else if !a.no_wait {
        eprintln!("rollout complete");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("t", "30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("t", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("t", "10m").unwrap(),
            Duration::from_secs(600)
        );
        assert!(parse_duration("t", "ten").is_err());
    }
}
