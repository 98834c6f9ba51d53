//! Kubernetes objects for a game server (a plain Deployment, or an Agones Fleet) and for
//! the node agent (a DaemonSet plus the containerd `hosts.toml` it needs), built with
//! k8s-openapi's types and written as YAML documents separated by `---`.

use std::collections::BTreeMap;

use gantry_agent::UpstreamSpec;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HostPathVolumeSource, ObjectFieldSelector, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Serialize;

use crate::agones::{
    Fleet, FleetSpec, FleetStrategy, GameServerPort, GameServerSpec, GameServerTemplateSpec,
    Health, RollingUpdate, AGONES_API_VERSION,
};
use crate::error::{DeployError, DeployResult};
use crate::image::DeployImage;

/// Label naming the workload (selector of its pods).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label saying who manages the object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Annotation with the image as tagged (`repo:tag`) when the pod spec names the digest.
pub const IMAGE_ANNOTATION: &str = "dev.gantry/image";
/// Annotation with the manifest digest the pods run.
pub const DIGEST_ANNOTATION: &str = "dev.gantry/image-digest";
/// Name of the game container.
pub const GAME_CONTAINER: &str = "game";
/// Environment variable telling `gantry supervise` the container port under Agones.
pub const CONTAINER_PORT_ENV: &str = "GANTRY_CONTAINER_PORT";
/// Key of the report token in the `--report-secret` Secret.
pub const REPORT_SECRET_KEY: &str = "token";

/// Where the agent listens on each node (loopback: only the node's containerd uses it).
pub const AGENT_ADDR: &str = "127.0.0.1:5050";
/// The agent's store on each node (a hostPath, so it survives pod restarts).
pub const AGENT_ROOT: &str = "/var/lib/gantry-agent";
/// containerd's registry host configuration directory on each node.
pub const CONTAINERD_HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// A game-server workload: what the original sample's Deployment said, made configurable.
#[derive(Clone, Debug)]
pub struct GameSpec {
    /// Object name (DNS label).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The image.
    pub image: DeployImage,
    /// Pods (Deployment) or GameServers (Fleet).
    pub replicas: i32,
    /// `nodeSelector` (the original sample's Deployment picked spot capacity this way).
    pub node_selector: BTreeMap<String, String>,
    /// CPU request (`500m`).
    pub cpu: String,
    /// Memory request (`512Mi`).
    pub memory: String,
    /// CPU limit; `None`: the request.
    pub cpu_limit: Option<String>,
    /// Memory limit; `None`: the request.
    pub memory_limit: Option<String>,
    /// `terminationGracePeriodSeconds`.
    pub grace_period_seconds: i64,
    /// Extra environment, in order.
    pub env: Vec<(String, String)>,
    /// `imagePullPolicy`: `IfNotPresent`, `Always` or `Never`.
    pub pull_policy: String,
    /// The game's container port, if fixed.
    pub port: Option<u16>,
    /// `UDP` or `TCP`.
    pub protocol: String,
    /// The container command (e.g. `gantry supervise -- ./Launcher_Server …`); empty: the
    /// image's entrypoint.
    pub command: Vec<String>,
    /// `GANTRY_REPORT_URL` for the supervisor's status events.
    pub report_url: Option<String>,
    /// Secret holding the report bearer token under key `token` (`GANTRY_REPORT_TOKEN`).
    pub report_secret: Option<String>,
}

impl GameSpec {
    /// The original sample's values for `image` named `name`: 1 replica, 500m CPU, 512Mi, 30 s
    /// grace.
    pub fn new(name: &str, image: DeployImage) -> GameSpec {
        GameSpec {
            name: name.to_string(),
            namespace: "default".into(),
            image,
            replicas: 1,
            node_selector: BTreeMap::new(),
            cpu: "500m".into(),
            memory: "512Mi".into(),
            cpu_limit: None,
            memory_limit: None,
            grace_period_seconds: 30,
            env: Vec::new(),
            pull_policy: "IfNotPresent".into(),
            port: None,
            protocol: "UDP".into(),
            command: Vec::new(),
            report_url: None,
            report_secret: None,
        }
    }
}

/// Agones-specific parts of a Fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// `Dynamic` (default), `Static` or `Passthrough`.
    pub port_policy: String,
    /// The container port when `--port` is not given.
    pub default_port: u16,
    /// `spec.health.periodSeconds`.
    pub health_period_seconds: i32,
    /// `spec.health.failureThreshold`.
    pub health_failure_threshold: i32,
    /// `spec.health.initialDelaySeconds`.
    pub health_initial_delay_seconds: i32,
    /// `Packed` or `Distributed`.
    pub scheduling: String,
}

impl Default for FleetOptions {
    /// Consistent with `gantry supervise`: it pings `/health` every 2 s while the game is
    /// healthy, and stops after 3 failed probes 5 s apart; Agones checks every 5 s (two
    /// pings per period, so one lost ping is not a failure) and marks the GameServer
    /// `Unhealthy` after 3 silent periods — about when the supervisor itself gives up.
    /// The first 30 s are left to the game to start (pings begin once it is `ready`).
    fn default() -> Self {
        FleetOptions {
            port_policy: "Dynamic".into(),
            default_port: 7777,
            health_period_seconds: 5,
            health_failure_threshold: 3,
            health_initial_delay_seconds: 30,
            scheduling: "Packed".into(),
        }
    }
}

/// The node agent's DaemonSet.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// DaemonSet name (`gantry-agent`); the ConfigMap is `<name>-hosts`.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// An image containing the `gantry` binary (and `/bin/sh` for the hosts.toml copy).
    pub image: String,
    /// `imagePullPolicy` of the agent image.
    pub pull_policy: String,
    /// The registries the agent mirrors.
    pub upstreams: Vec<UpstreamSpec>,
    /// `nodeSelector` (empty: every node).
    pub node_selector: BTreeMap<String, String>,
    /// Also run `gantry snapshotter` (privileged, its root and socket on the node's paths).
    pub snapshotter: bool,
    /// `runtimeClassName` of the pod: with the snapshotter as CRI's snapshotter, a runtime
    /// handler that keeps containerd's own snapshotter (containerd 1.7+) lets this pod start
    /// while the snapshotter is not running yet.
    pub runtime_class: Option<String>,
}

/// One rendered object.
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    /// apps/v1 Deployment.
    Deployment(Box<Deployment>),
    /// agones.dev/v1 Fleet.
    Fleet(Box<Fleet>),
    /// apps/v1 DaemonSet.
    DaemonSet(Box<DaemonSet>),
    /// v1 ConfigMap.
    ConfigMap(Box<ConfigMap>),
}

impl Manifest {
    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        let (kind, meta) = match self {
            Manifest::Deployment(o) => ("Deployment", &o.metadata),
            Manifest::Fleet(o) => ("Fleet", &o.metadata),
            Manifest::DaemonSet(o) => ("DaemonSet", &o.metadata),
            Manifest::ConfigMap(o) => ("ConfigMap", &o.metadata),
        };
        format!(
            "{kind} {}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        )
    }

    /// The manifest digest the game pods must run: the pod template's
    /// `dev.gantry/image-digest` annotation, else a digest in the game container's image.
    pub fn pinned_digest(&self) -> Option<String> {
        let template = match self {
            Manifest::Deployment(o) => o.spec.as_ref().map(|s| &s.template),
            Manifest::Fleet(o) => Some(&o.spec.template.spec.template),
            _ => None,
        }?;
        if let Some(d) = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(DIGEST_ANNOTATION))
        {
            return Some(d.clone());
        }
        template
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == GAME_CONTAINER)?
            .image
            .as_deref()?
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
    }

    /// The object as JSON (what is sent to the API server).
    pub fn to_json(&self) -> DeployResult<serde_json::Value> {
        let r = match self {
            Manifest::Deployment(o) => serde_json::to_value(o),
            Manifest::Fleet(o) => serde_json::to_value(o),
            Manifest::DaemonSet(o) => serde_json::to_value(o),
            Manifest::ConfigMap(o) => serde_json::to_value(o),
        };
        r.map_err(|e| DeployError::Format {
            what: self.describe(),
            message: e.to_string(),
        })
    }

    /// The object as one YAML document.
    pub fn to_yaml(&self) -> DeployResult<String> {
        fn y<T: Serialize>(what: String, v: &T) -> DeployResult<String> {
            yaml_serde::to_string(v).map_err(|e| DeployError::Format {
                what,
                message: e.to_string(),
            })
        }
        match self {
            Manifest::Deployment(o) => y(self.describe(), o),
            Manifest::Fleet(o) => y(self.describe(), o),
            Manifest::DaemonSet(o) => y(self.describe(), o),
            Manifest::ConfigMap(o) => y(self.describe(), o),
        }
    }

    /// Reads one object of a kind Gantry renders from its JSON/YAML value.
    pub fn from_value(value: serde_json::Value, what: &str) -> DeployResult<Manifest> {
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let err = |e: serde_json::Error| DeployError::Format {
            what: format!("{what} ({kind})"),
            message: e.to_string(),
        };
        Ok(match kind.as_str() {
            "Deployment" => {
                Manifest::Deployment(Box::new(serde_json::from_value(value).map_err(err)?))
            }
            "Fleet" => Manifest::Fleet(Box::new(serde_json::from_value(value).map_err(err)?)),
            "DaemonSet" => {
                Manifest::DaemonSet(Box::new(serde_json::from_value(value).map_err(err)?))
            }
            "ConfigMap" => {
                Manifest::ConfigMap(Box::new(serde_json::from_value(value).map_err(err)?))
            }
            other => {
                return Err(DeployError::invalid(
                    what,
                    format!("kind {other:?}: expected Deployment, Fleet, DaemonSet or ConfigMap"),
                ))
            }
        })
    }
}

/// Writes objects as YAML documents separated by `---`.
pub fn to_yaml(objects: &[Manifest]) -> DeployResult<String> {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&o.to_yaml()?);
    }
    Ok(out)
}

/// Reads a multi-document YAML file of objects (`what` names it in errors); empty
/// documents are skipped.
pub fn parse_yaml(text: &str, what: &str) -> DeployResult<Vec<Manifest>> {
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let where_ = format!("{what}: document {}", i + 1);
        let value: serde_json::Value =
            serde::Deserialize::deserialize(doc).map_err(|e: yaml_serde::Error| {
                DeployError::Format {
                    what: where_.clone(),
                    message: e.to_string(),
                }
            })?;
        if value.is_null() {
            continue;
        }
        out.push(Manifest::from_value(value, &where_)?);
    }
    Ok(out)
}

fn check_name(what: &str, name: &str) -> DeployResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(DeployError::invalid(
            format!("{what} {name:?}"),
            "expected a DNS label: up to 63 of a-z 0-9 -, not starting or ending with -",
        ))
    }
}

fn check_env_name(name: &str) -> DeployResult<()> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(DeployError::invalid(
            format!("--env {name:?}"),
            "expected a variable name of letters, digits, _ - . not starting with a digit",
        ))
    }
}

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), name.to_string()),
        (MANAGED_BY_LABEL.to_string(), "gantry".to_string()),
    ])
}

fn image_annotations(image: &DeployImage) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([(IMAGE_ANNOTATION.to_string(), image.tagged())]);
    if let Some(d) = &image.digest {
        a.insert(DIGEST_ANNOTATION.to_string(), d.to_string());
    }
    a
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn check_protocol(p: &str) -> DeployResult<String> {
    match p.to_ascii_uppercase().as_str() {
        p @ ("UDP" | "TCP") => Ok(p.to_string()),
        _ => Err(DeployError::invalid(
            format!("--protocol {p:?}"),
            "expected udp or tcp",
        )),
    }
}

fn check_pull_policy(p: &str) -> DeployResult<()> {
    match p {
        "IfNotPresent" | "Always" | "Never" => Ok(()),
        _ => Err(DeployError::invalid(
            format!("--pull-policy {p:?}"),
            "expected IfNotPresent, Always or Never",
        )),
    }
}

fn quantity(what: &str, q: &str) -> DeployResult<Quantity> {
    let ok = !q.is_empty()
        && q.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && q.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
    if ok {
        Ok(Quantity(q.to_string()))
    } else {
        Err(DeployError::invalid(
            format!("{what} {q:?}"),
            "expected a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi",
        ))
    }
}

/// The game's pod template, shared by the Deployment and the Fleet.
fn game_pod(
    spec: &GameSpec,
    host_network: bool,
    port: Option<u16>,
) -> DeployResult<PodTemplateSpec> {
    check_pull_policy(&spec.pull_policy)?;
    let protocol = check_protocol(&spec.protocol)?;
    let mut vars = Vec::new();
    for (k, v) in &spec.env {
        check_env_name(k)?;
        vars.push(env(k, v));
    }
    vars.push(env("GANTRY_IMAGE", &spec.image.tagged()));
    if let Some(d) = &spec.image.digest {
        vars.push(env("GANTRY_IMAGE_DIGEST", &d.to_string()));
    }
    vars.push(env_field("NODE_NAME", "spec.nodeName"));
    vars.push(env_field("POD_NAME", "metadata.name"));
    if let Some(url) = &spec.report_url {
        vars.push(env("GANTRY_REPORT_URL", url));
    }
    if let Some(secret) = &spec.report_secret {
        check_name("--report-secret", secret)?;
        vars.push(EnvVar {
            name: "GANTRY_REPORT_TOKEN".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: REPORT_SECRET_KEY.into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        });
    }
    let requests = BTreeMap::from([
        ("cpu".to_string(), quantity("--cpu", &spec.cpu)?),
        ("memory".to_string(), quantity("--memory", &spec.memory)?),
    ]);
    let limits = BTreeMap::from([
        (
            "cpu".to_string(),
            quantity(
                "--cpu-limit",
                spec.cpu_limit.as_deref().unwrap_or(&spec.cpu),
            )?,
        ),
        (
            "memory".to_string(),
            quantity(
                "--memory-limit",
                spec.memory_limit.as_deref().unwrap_or(&spec.memory),
            )?,
        ),
    ]);
    let container = Container {
        name: GAME_CONTAINER.into(),
        image: Some(spec.image.pod_image()),
        image_pull_policy: Some(spec.pull_policy.clone()),
        command: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(vars),
        ports: port.map(|p| {
            vec![ContainerPort {
                name: Some("game".into()),
                container_port: i32::from(p),
                protocol: Some(protocol.clone()),
                ..Default::default()
            }]
        }),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }),
        ..Default::default()
    };
    let annotations = image_annotations(&spec.image);
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&spec.name)),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            host_network: host_network.then_some(true),
            dns_policy: host_network.then(|| "ClusterFirstWithHostNet".to_string()),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            termination_grace_period_seconds: Some(spec.grace_period_seconds),
            containers: vec![container],
            ..Default::default()
        }),
    })
}

fn object_meta(name: &str, namespace: &str, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels(name)),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..Default::default()
    }
}

/// A plain Deployment: host network, node selector, requests and limits, grace period,
/// environment — with the image pinned by digest when known, and the supervisor's env.
pub fn deployment(spec: &GameSpec) -> DeployResult<Manifest> {
    check_name("--name", &spec.name)?;
    check_name("--namespace", &spec.namespace)?;
    if spec.replicas < 0 {
        return Err(DeployError::invalid("--replicas", "must be 0 or more"));
    }
    let template = game_pod(spec, true, spec.port)?;
    Ok(Manifest::Deployment(Box::new(Deployment {
        metadata: object_meta(&spec.name, &spec.namespace, image_annotations(&spec.image)),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAME_LABEL.to_string(),
                    spec.name.clone(),
                )])),
                ..Default::default()
            },
            template,
            ..Default::default()
        }),
        status: None,
    })))
}

/// An Agones Fleet of the same pod, with a `Dynamic` port and health settings consistent
/// with `gantry supervise`. The pod does not use the host network: Agones maps the
/// host port it picks to the container port, and Kubernetes rejects a host port that differs
/// from the container port on the host network. The game container gets
/// `GANTRY_CONTAINER_PORT` so the supervisor listens there and reports Agones' port.
pub fn fleet(spec: &GameSpec, options: &FleetOptions) -> DeployResult<Manifest> {
    check_name("--name", &spec.name)?;
    check_name("--namespace", &spec.namespace)?;
    match options.port_policy.as_str() {
        "Dynamic" | "Static" | "Passthrough" => {}
        other => {
            return Err(DeployError::invalid(
                format!("--port-policy {other:?}"),
                "expected Dynamic, Static or Passthrough",
            ))
        }
    }
    match options.scheduling.as_str() {
        "Packed" | "Distributed" => {}
        other => {
            return Err(DeployError::invalid(
                format!("--scheduling {other:?}"),
                "expected Packed or Distributed",
            ))
        }
    }
    let port = i32::from(spec.port.unwrap_or(options.default_port));
    let protocol = check_protocol(&spec.protocol)?;
    // Agones adds the port to the container itself.
    let mut template = game_pod(spec, false, None)?;
    // Under Dynamic and Static the game listens on the container port and Agones maps its
    // host port to it: tell the supervisor which port to listen on (it reports Agones' port
    // as public). Under Passthrough the container port is the host port Agones picks.
    let (container_port, host_port) = match options.port_policy.as_str() {
        "Passthrough" => (None, None),
        "Static" => (Some(port), Some(port)),
        _ => (Some(port), None),
    };
    if let (Some(p), Some(pod)) = (container_port, template.spec.as_mut()) {
        for c in pod
            .containers
            .iter_mut()
            .filter(|c| c.name == GAME_CONTAINER)
        {
            c.env
                .get_or_insert_with(Vec::new)
                .push(env(CONTAINER_PORT_ENV, &p.to_string()));
        }
    }
    Ok(Manifest::Fleet(Box::new(Fleet {
        api_version: AGONES_API_VERSION.into(),
        kind: "Fleet".into(),
        metadata: object_meta(&spec.name, &spec.namespace, image_annotations(&spec.image)),
        spec: FleetSpec {
            replicas: spec.replicas,
            scheduling: Some(options.scheduling.clone()),
            strategy: Some(FleetStrategy {
                type_: "RollingUpdate".into(),
                rolling_update: Some(RollingUpdate {
                    max_surge: Some("25%".into()),
                    max_unavailable: Some("25%".into()),
                }),
            }),
            template: GameServerTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&spec.name)),
                    ..Default::default()
                }),
                spec: GameServerSpec {
                    container: Some(GAME_CONTAINER.into()),
                    ports: vec![GameServerPort {
                        name: "default".into(),
                        port_policy: options.port_policy.clone(),
                        container_port,
                        host_port,
                        protocol: Some(protocol),
                    }],
                    health: Some(Health {
                        disabled: Some(false),
                        period_seconds: Some(options.health_period_seconds),
                        failure_threshold: Some(options.health_failure_threshold),
                        initial_delay_seconds: Some(options.health_initial_delay_seconds),
                    }),
                    template,
                },
            },
        },
    })))
}

/// ConfigMap key of a registry's hosts.toml (`host:port` → `host_port.hosts.toml`: keys
/// allow only `-._a-zA-Z0-9`).
pub fn hosts_key(host: &str) -> String {
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.hosts.toml")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Resource requests (no limits) of a node daemon's container.
fn requests(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        ..Default::default()
    }
}

/// The agent DaemonSet and the ConfigMap of containerd `hosts.toml` files (the same text
/// as `gantry agent install-containerd-config`), which an init container copies into
/// `/etc/containerd/certs.d/<host>/` on each node.
pub fn agent(spec: &AgentSpec) -> DeployResult<Vec<Manifest>> {
    check_name("--name", &spec.name)?;
    check_name("--namespace", &spec.namespace)?;
    check_pull_policy(&spec.pull_policy)?;
    if spec.upstreams.is_empty() {
        return Err(DeployError::invalid(
            "--upstream",
            "name at least one registry the agent mirrors (HOST or HOST=URL)",
        ));
    }
    if spec.image.is_empty() {
        return Err(DeployError::invalid(
            "--agent-image",
            "name an image that contains the gantry binary",
        ));
    }
    let agent_url = format!("http://{AGENT_ADDR}");
    let config_name = format!("{}-hosts", spec.name);
    let mut data = BTreeMap::new();
    let mut script = String::from("set -e\n");
    for up in &spec.upstreams {
        let key = hosts_key(&up.host);
        data.insert(
            key.clone(),
            gantry_agent::hosts::hosts_toml(&up.url, &agent_url),
        );
        let dir = format!("{CONTAINERD_HOSTS_DIR}/{}", up.host);
        script.push_str(&format!(
            "mkdir -p {d}\ncp /gantry-hosts/{key} {d}/.hosts.toml.tmp\nmv {d}/.hosts.toml.tmp {d}/hosts.toml\n",
            d = sh_quote(&dir),
            key = key
        ));
    }
    let config_map = ConfigMap {
        metadata: object_meta(&config_name, &spec.namespace, BTreeMap::new()),
        data: Some(data),
        ..Default::default()
    };
    let mut command = vec![
        "gantry".to_string(),
        "agent".into(),
        "--addr".into(),
        AGENT_ADDR.into(),
        "--root".into(),
        AGENT_ROOT.into(),
    ];
    for up in &spec.upstreams {
        command.push("--upstream".into());
        command.push(format!("{}={}", up.host, up.url));
    }
    let host_path = |name: &str, path: &str, kind: &str| Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Default::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    let agent_container = Container {
        name: "agent".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.pull_policy.clone()),
        command: Some(command),
        volume_mounts: Some(vec![mount("store", AGENT_ROOT)]),
        resources: Some(requests("100m", "128Mi")),
        ..Default::default()
    };
    let mut containers = vec![agent_container];
    let mut volumes = vec![
        host_path("store", AGENT_ROOT, "DirectoryOrCreate"),
        host_path(
            "containerd-hosts",
            CONTAINERD_HOSTS_DIR,
            "DirectoryOrCreate",
        ),
        Volume {
            name: "hosts-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if spec.snapshotter {
        // containerd reads the snapshot directories and dials the socket at the paths the
        // snapshotter names, so both are the node's own paths, mounted at the same place.
        let root = gantry_snapshotter::DEFAULT_ROOT;
        let run_dir = std::path::Path::new(gantry_snapshotter::DEFAULT_ADDRESS)
            .parent()
            .and_then(|p| p.to_str())
            .unwrap_or("/run/gantry");
        containers.push(Container {
            name: "snapshotter".into(),
            image: Some(spec.image.clone()),
            image_pull_policy: Some(spec.pull_policy.clone()),
            command: Some(vec![
                "gantry".into(),
                "snapshotter".into(),
                "--agent".into(),
                agent_url.clone(),
                "--root".into(),
                root.into(),
                "--address".into(),
                gantry_snapshotter::DEFAULT_ADDRESS.into(),
            ]),
            // Whiteouts are device nodes and opaque directories trusted.* xattrs: both need
            // CAP_SYS_ADMIN/CAP_MKNOD on the node's filesystem, as containerd itself has.
            security_context: Some(SecurityContext {
                privileged: Some(true),
                ..Default::default()
            }),
            volume_mounts: Some(vec![
                mount("snapshotter-root", root),
                mount("snapshotter-run", run_dir),
            ]),
            resources: Some(requests("100m", "256Mi")),
            ..Default::default()
        });
        volumes.push(host_path("snapshotter-root", root, "DirectoryOrCreate"));
        volumes.push(host_path("snapshotter-run", run_dir, "DirectoryOrCreate"));
    }
    let init = Container {
        name: "containerd-hosts".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.pull_policy.clone()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        volume_mounts: Some(vec![
            mount("hosts-config", "/gantry-hosts"),
            mount("containerd-hosts", CONTAINERD_HOSTS_DIR),
        ]),
        ..Default::default()
    };
    let daemon_set = DaemonSet {
        metadata: object_meta(&spec.name, &spec.namespace, BTreeMap::new()),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAME_LABEL.to_string(),
                    spec.name.clone(),
                )])),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&spec.name)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    // Every node pulls game images, tainted (spot) ones included.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    init_containers: Some(vec![init]),
                    containers,
                    volumes: Some(volumes),
                    runtime_class_name: spec.runtime_class.clone(),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    Ok(vec![
        Manifest::ConfigMap(Box::new(config_map)),
        Manifest::DaemonSet(Box::new(daemon_set)),
    ])
}
