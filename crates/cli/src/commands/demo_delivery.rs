//! The delivery half of `gantry demo`: `gantry serve` and `gantry agent` started in this
//! process, v1 and v2 pushed and pulled both ways, each measured:
//! - Gantry: delta push, and a node pulling through the agent (chunk-level);
//! - the layer-level pipeline: a plain push of whole changed layers to another repository,
//!   and a second node pulling it straight from the registry.
//!
//! Each node is a private containerd (its own root) when containerd is installed and we are
//! root, else an HTTP client asking for what containerd would ask. With containerd, a third
//! node runs `gantry snapshotter` as CRI's snapshotter and pulls through CRI, as kubelet
//! does, via an agent of its own. Plus the HTML report.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gantry_client::{
    push_layout, ClientOptions, NoProgress, OciLayout, PushOptions, RegistryClient,
};
use gantry_oci::Reference;
use serde::Serialize;

use super::human_bytes;
use super::transfer::runtime;

/// Bytes and time of one step.
#[derive(Serialize, Clone, Copy, Default)]
pub struct Measure {
    /// Bytes moved (registry received, or the node fetched from the registry).
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// The four delivery steps of one way, each measured.
#[derive(Serialize, Clone, Copy, Default)]
pub struct Steps {
    /// Push of v1 to a repository that holds nothing.
    pub push_v1: Measure,
    /// Pull of v1 by an empty node (containerd: pull and unpack).
    pub pull_v1: Measure,
    /// Push of v2 after v1.
    pub push_v2: Measure,
    /// Pull of v2 by the node holding v1 (containerd: pull and unpack).
    pub pull_v2: Measure,
}

/// What the delivery steps measured, both ways.
#[derive(Serialize)]
pub struct Delivery {
    /// Gantry's node: `containerd <version> pulling through gantry agent` or the agent alone.
    pub node: String,
    /// The layer-level node: `containerd <version> pulling straight from the registry` or
    /// an HTTP client doing what containerd would.
    pub layer_level_node: String,
    /// Gantry: delta push to `demo/game`, pulls through `gantry agent`.
    pub gantry: Steps,
    /// The layer-level pipeline: plain push of whole changed layers to `demo/layer-level`,
    /// pulls straight from the registry.
    pub layer_level: Steps,
    /// Bytes of v2's layers the agent took from what the node held.
    pub pull_v2_reused: u64,
    /// The snapshotter node, when containerd runs here: `containerd <version> with gantry
    /// snapshotter, pulling through CRI and gantry agent`.
    pub snapshotter_node: Option<String>,
    /// Gantry with the snapshotter: the same pushes as [`Delivery::gantry`]; pulls by CRI
    /// into `gantry snapshotter` (v2 by its fast path) through an agent of its own.
    pub snapshotter: Option<Steps>,
    /// Layers of v2 the snapshotter built by its fast path (v1's files plus new chunks).
    pub snapshotter_fast_layers_v2: Option<u64>,
}

/// One step of the report, both ways.
pub struct Row {
    /// Step name.
    pub step: &'static str,
    /// The layer-level pipeline's bytes and time.
    pub layer_level: Measure,
    /// Gantry's bytes and time.
    pub gantry: Measure,
    /// Gantry with the snapshotter, when it ran.
    pub snapshotter: Option<Measure>,
}

impl Delivery {
    /// The report's rows, in the order the steps ran.
    pub fn rows(&self) -> Vec<Row> {
        let (l, g, s) = (&self.layer_level, &self.gantry, self.snapshotter.as_ref());
        vec![
            Row {
                step: "push v1",
                layer_level: l.push_v1,
                gantry: g.push_v1,
                snapshotter: s.map(|s| s.push_v1),
            },
            Row {
                step: "pull v1",
                layer_level: l.pull_v1,
                gantry: g.pull_v1,
                snapshotter: s.map(|s| s.pull_v1),
            },
            Row {
                step: "push v2",
                layer_level: l.push_v2,
                gantry: g.push_v2,
                snapshotter: s.map(|s| s.push_v2),
            },
            Row {
                step: "pull v2",
                layer_level: l.pull_v2,
                gantry: g.pull_v2,
                snapshotter: s.map(|s| s.pull_v2),
            },
        ]
    }
}

async fn metric(url: &str, name: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Where a node pulls from.
#[derive(Clone)]
enum Source {
    /// Through `gantry agent` (containerd's mirror for `host`).
    Agent { host: String, agent_url: String },
    /// Straight from the registry at `host`, over plain HTTP.
    Direct { host: String },
}

/// Runs the delivery steps with everything under `workdir`.
pub fn run(workdir: &Path, v1: &Path, v2: &Path, say: &dyn Fn(String)) -> anyhow::Result<Delivery> {
    let registry_root = workdir.join("registry");
    let agent_root = workdir.join("agent");
    let snap_agent_root = workdir.join("agent-snapshotter");
    for d in [&registry_root, &agent_root, &snap_agent_root] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
    }
    let node = Node::start(&workdir.join("node"))?;
    let layer_node = Node::start(&workdir.join("node-layer-level"))?;
    say(format!("Gantry's node: {}", node.describe(true)));
    say(format!("layer-level node: {}", layer_node.describe(false)));
    let rt = runtime()?;
    rt.block_on(async {
        let serve = gantry_registry::bind(&gantry_registry::Config {
            addr: "127.0.0.1:0".parse()?,
            root: registry_root.clone(),
            ..gantry_registry::Config::default()
        })
        .await
        .context("starting gantry serve")?;
        let host = serve.addr().to_string();
        let reg_metrics = format!("{}/metrics", serve.url());
        let client = RegistryClient::new(
            &host,
            &ClientOptions {
                insecure: true,
                no_stored_credentials: true,
                ..ClientOptions::default()
            },
        )?;
        let agent = gantry_agent::bind(&gantry_agent::AgentConfig::loopback(
            &agent_root,
            &host,
            &format!("http://{host}"),
        ))
        .await
        .context("starting gantry agent")?;
        let agent_metrics = format!("{}/metrics", agent.url());
        node.configure(&host, &agent.url())?;
        let snap = match &node {
            Node::Containerd(_) => {
                match SnapshotterNode::start(&workdir.join("node-snapshotter"), &snap_agent_root, &host)
                    .await
                {
                    Ok(n) => {
                        say(format!("snapshotter node: {}", n.describe()));
                        Some(n)
                    }
                    Err(e) => {
                        eprintln!("warning: the snapshotter node did not start ({e:#}); the demo goes on without it");
                        None
                    }
                }
            }
            Node::Http { .. } => None,
        };
        let via_agent = Source::Agent {
            host: host.clone(),
            agent_url: agent.url(),
        };
        let direct = Source::Direct { host: host.clone() };

        // Gantry pushes with delta push; the layer-level way uploads every layer the
        // repository lacks, whole, to a repository of its own.
        let push = |layout: PathBuf, repo: &'static str, tag: &'static str, delta: bool| {
            let client = &client;
            let host = host.clone();
            let reg_metrics = reg_metrics.clone();
            async move {
                let before = metric(&reg_metrics, "gantry_registry_bytes_received_total").await?;
                let t = Instant::now();
                let dest: Reference = format!("{host}/{repo}:{tag}").parse()?;
                push_layout(
                    client,
                    &OciLayout::open(&layout)?,
                    None,
                    &dest,
                    &PushOptions {
                        delta,
                        delta_from: delta.then(|| "v1".into()),
                        ..PushOptions::default()
                    },
                    Arc::new(NoProgress),
                )
                .await?;
                let seconds = t.elapsed().as_secs_f64();
                let after = metric(&reg_metrics, "gantry_registry_bytes_received_total").await?;
                anyhow::Ok(Measure {
                    bytes: after - before,
                    seconds,
                })
            }
        };
        let gantry_pull = |tag: &'static str| {
            measure_pull(
                &node,
                via_agent.clone(),
                format!("demo/game:{tag}"),
                agent_metrics.clone(),
                "gantry_agent_upstream_bytes_total",
            )
        };
        let layer_pull = |tag: &'static str| {
            measure_pull(
                &layer_node,
                direct.clone(),
                format!("demo/layer-level:{tag}"),
                reg_metrics.clone(),
                "gantry_registry_bytes_sent_total",
            )
        };
        let mut gantry = Steps::default();
        let mut layer_level = Steps::default();
        say("push v1: delta push to demo/game, and plain push to demo/layer-level".into());
        gantry.push_v1 = push(v1.to_path_buf(), "demo/game", "v1", true).await?;
        layer_level.push_v1 = push(v1.to_path_buf(), "demo/layer-level", "v1", false).await?;
        say("the nodes pull v1: through gantry agent, and straight from the registry".into());
        gantry.pull_v1 = gantry_pull("v1").await?;
        layer_level.pull_v1 = layer_pull("v1").await?;
        let mut snap_steps = Steps::default();
        if let Some(n) = &snap {
            say("the snapshotter node pulls v1 through CRI".into());
            snap_steps.pull_v1 = n.pull(&format!("{host}/demo/game:v1")).await?;
        }
        say("push v2 both ways".into());
        gantry.push_v2 = push(v2.to_path_buf(), "demo/game", "v2", true).await?;
        layer_level.push_v2 = push(v2.to_path_buf(), "demo/layer-level", "v2", false).await?;
        let reused_before = metric(&agent_metrics, "gantry_agent_reused_bytes_total").await?;
        say("the nodes pull v2 both ways".into());
        gantry.pull_v2 = gantry_pull("v2").await?;
        let reused_after = metric(&agent_metrics, "gantry_agent_reused_bytes_total").await?;
        layer_level.pull_v2 = layer_pull("v2").await?;
        let snapshotter_node = snap.as_ref().map(SnapshotterNode::describe);
        let mut snapshotter_fast_layers_v2 = None;
        let snapshotter = match snap {
            Some(n) => {
                say("the snapshotter node pulls v2 through CRI (the fast path)".into());
                let fast_before = n.fast_layers();
                snap_steps.pull_v2 = n.pull(&format!("{host}/demo/game:v2")).await?;
                snapshotter_fast_layers_v2 = Some(n.fast_layers() - fast_before);
                snap_steps.push_v1 = gantry.push_v1;
                snap_steps.push_v2 = gantry.push_v2;
                n.stop().await?;
                Some(snap_steps)
            }
            None => None,
        };
        agent.shutdown().await;
        serve.shutdown().await.context("stopping gantry serve")?;
        anyhow::Ok(Delivery {
            node: node.describe(true),
            layer_level_node: layer_node.describe(false),
            gantry,
            layer_level,
            pull_v2_reused: reused_after - reused_before,
            snapshotter_node,
            snapshotter,
            snapshotter_fast_layers_v2,
        })
    })
}

/// Pulls `repo_tag` onto `node` from `source`; the bytes are the change of the counter
/// `metric_name` at `metrics_url` (what the agent fetched upstream, or the registry sent).
async fn measure_pull(
    node: &Node,
    source: Source,
    repo_tag: String,
    metrics_url: String,
    metric_name: &'static str,
) -> anyhow::Result<Measure> {
    let before = metric(&metrics_url, metric_name).await?;
    let t = Instant::now();
    node.pull(&source, &repo_tag).await?;
    let seconds = t.elapsed().as_secs_f64();
    let after = metric(&metrics_url, metric_name).await?;
    Ok(Measure {
        bytes: after - before,
        seconds,
    })
}

/// A node that pulls.
enum Node {
    /// A private containerd (killed on drop).
    Containerd(PrivateContainerd),
    /// An HTTP client asking for the manifest and every blob it does not hold yet, as
    /// containerd would.
    Http {
        http: reqwest::Client,
        held: Mutex<HashSet<String>>,
    },
}

impl Node {
    fn start(dir: &Path) -> anyhow::Result<Node> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let tools = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"];
        if root && tools.iter().all(|t| find_tool(t).is_some()) {
            match PrivateContainerd::start(dir, None) {
                Ok(c) => return Ok(Node::Containerd(c)),
                Err(e) => {
                    eprintln!("warning: containerd did not start ({e:#}); using an HTTP client as the node")
                }
            }
        }
        Ok(Node::Http {
            http: reqwest::Client::new(),
            held: Mutex::new(HashSet::new()),
        })
    }

    fn describe(&self, through_agent: bool) -> String {
        match (self, through_agent) {
            (Node::Containerd(c), true) => format!("{} pulling through gantry agent", c.version),
            (Node::Containerd(c), false) => {
                format!("{} pulling straight from the registry", c.version)
            }
            (Node::Http { .. }, true) => {
                "gantry agent alone (containerd not installed or not root), asked for the manifest and every blob as containerd would".into()
            }
            (Node::Http { .. }, false) => {
                "an HTTP client (containerd not installed or not root) asking the registry for the manifest and every blob as containerd would".into()
            }
        }
    }

    fn configure(&self, host: &str, agent_url: &str) -> anyhow::Result<()> {
        if let Node::Containerd(c) = self {
            gantry_agent::hosts::install(&c.hosts(), host, &format!("http://{host}"), agent_url)?;
        }
        Ok(())
    }

    async fn pull(&self, source: &Source, repo_tag: &str) -> anyhow::Result<()> {
        match self {
            Node::Containerd(c) => {
                let (host, mut cmd) = match source {
                    Source::Agent { host, .. } => {
                        let mut cmd = c.ctr(&["images", "pull", "--hosts-dir"]);
                        cmd.arg(c.hosts());
                        (host, cmd)
                    }
                    Source::Direct { host } => (host, c.ctr(&["images", "pull", "--plain-http"])),
                };
                cmd.arg(format!("{host}/{repo_tag}"));
                let out = tokio::task::spawn_blocking(move || cmd.output())
                    .await?
                    .context("running ctr images pull")?;
                if !out.status.success() {
                    bail!(
                        "ctr images pull {host}/{repo_tag}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(())
            }
            Node::Http { http, held } => {
                let (repo, tag) = repo_tag.split_once(':').unwrap_or((repo_tag, "latest"));
                let (base, query) = match source {
                    Source::Agent { host, agent_url } => {
                        (format!("{agent_url}/v2/{repo}"), format!("?ns={host}"))
                    }
                    Source::Direct { host } => (format!("http://{host}/v2/{repo}"), String::new()),
                };
                let manifest: serde_json::Value = http
                    .get(format!("{base}/manifests/{tag}{query}"))
                    .header("accept", gantry_oci::media_types::OCI_MANIFEST)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let mut digests = vec![manifest["config"]["digest"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()];
                if let Some(layers) = manifest["layers"].as_array() {
                    digests.extend(
                        layers
                            .iter()
                            .filter_map(|l| l["digest"].as_str().map(String::from)),
                    );
                }
                for d in digests {
                    if held.lock().map(|h| h.contains(&d)).unwrap_or(false) {
                        continue;
                    }
                    let bytes = http
                        .get(format!("{base}/blobs/{d}{query}"))
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                    let got = gantry_oci::Digest::of(&bytes).to_string();
                    anyhow::ensure!(got == d, "{base} served {got} for {d}");
                    if let Ok(mut h) = held.lock() {
                        h.insert(d);
                    }
                }
                Ok(())
            }
        }
    }
}

/// The third node: containerd whose CRI uses `gantry snapshotter` (served in this process),
/// with an agent of its own, pulling through CRI's PullImage as kubelet does.
struct SnapshotterNode {
    ctd: PrivateContainerd,
    agent: gantry_agent::RunningAgent,
    agent_metrics: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<gantry_snapshotter::Result<()>>,
    socket: PathBuf,
    metrics: Arc<gantry_snapshotter::Metrics>,
}

impl SnapshotterNode {
    async fn start(dir: &Path, agent_root: &Path, host: &str) -> anyhow::Result<SnapshotterNode> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        let agent = gantry_agent::bind(&gantry_agent::AgentConfig::loopback(
            agent_root,
            host,
            &format!("http://{host}"),
        ))
        .await
        .context("starting the snapshotter node's gantry agent")?;
        let agent_metrics = format!("{}/metrics", agent.url());
        let socket = dir.join("gantry.sock");
        let root = dir.join("snapshots");
        let store =
            tokio::task::spawn_blocking(move || gantry_snapshotter::Store::open(&root)).await??;
        let snapshotter = Arc::new(gantry_snapshotter::Snapshotter::new(
            Arc::new(store),
            Arc::new(gantry_snapshotter::GantryFastPath::new(&agent.url())),
        ));
        let metrics = snapshotter.metrics();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let address = socket.clone();
        let served = tokio::spawn(async move {
            gantry_snapshotter::serve_snapshotter(snapshotter, &address, async {
                let _ = stopped.await;
            })
            .await
            .map(|_| ())
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            if served.is_finished() || Instant::now() > deadline {
                served.abort();
                bail!("gantry snapshotter did not listen on {}", socket.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ctd_dir = dir.join("containerd");
        let sock = socket.clone();
        let ctd =
            tokio::task::spawn_blocking(move || PrivateContainerd::start(&ctd_dir, Some(&sock)))
                .await??;
        gantry_agent::hosts::install(&ctd.hosts(), host, &format!("http://{host}"), &agent.url())?;
        Ok(SnapshotterNode {
            ctd,
            agent,
            agent_metrics,
            stop,
            served,
            socket,
            metrics,
        })
    }

    /// Layers the snapshotter has built by its fast path so far.
    fn fast_layers(&self) -> u64 {
        self.metrics.snapshot().layers_prepared_fast
    }

    fn describe(&self) -> String {
        format!(
            "{} with gantry snapshotter, pulling through CRI and its own gantry agent",
            self.ctd.version
        )
    }

    /// CRI PullImage of `image`; the bytes are what this node's agent fetched upstream.
    async fn pull(&self, image: &str) -> anyhow::Result<Measure> {
        let before = metric(&self.agent_metrics, "gantry_agent_upstream_bytes_total").await?;
        let t = Instant::now();
        cri_pull(&self.ctd.dir.join("c.sock"), image).await?;
        let seconds = t.elapsed().as_secs_f64();
        let after = metric(&self.agent_metrics, "gantry_agent_upstream_bytes_total").await?;
        Ok(Measure {
            bytes: after - before,
            seconds,
        })
    }

    /// Stops containerd, then the snapshotter (its snapshots stay in the work directory),
    /// then the agent.
    async fn stop(self) -> anyhow::Result<()> {
        let SnapshotterNode {
            ctd,
            agent,
            stop,
            served,
            socket,
            ..
        } = self;
        tokio::task::spawn_blocking(move || drop(ctd)).await?;
        let _ = stop.send(());
        served
            .await?
            .with_context(|| format!("gantry snapshotter on {}", socket.display()))?;
        agent.shutdown().await;
        Ok(())
    }
}

/// How long the demo waits for one CRI pull before it gives up.
const CRI_PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// CRI `ImageService.PullImage` of `image` on the containerd socket `socket`.
async fn cri_pull(socket: &Path, image: &str) -> anyhow::Result<()> {
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    use k8s_cri::v1::{ImageSpec, PullImageRequest};
    let path = socket.to_path_buf();
    // tonic needs a URI; the connector dials the unix socket whatever it says.
    let channel = tonic::transport::Endpoint::from_static("http://[::]:0")
        .timeout(CRI_PULL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            tokio::net::UnixStream::connect(path.clone())
        }))
        .await
        .with_context(|| format!("connecting to CRI on {}", socket.display()))?;
    ImageServiceClient::new(channel)
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|status| anyhow::anyhow!("CRI PullImage {image}: {}", status.message()))?;
    Ok(())
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// containerd with its own root, state and socket under a directory; CRI disabled, or
/// enabled with `gantry snapshotter` as its snapshotter.
struct PrivateContainerd {
    child: Child,
    dir: PathBuf,
    ctr: PathBuf,
    version: String,
}

impl PrivateContainerd {
    /// Starts containerd under `dir`; with `snapshotter` (the unix socket of `gantry
    /// snapshotter`), CRI is on and uses it through `proxy_plugins`, with snapshot labels.
    fn start(dir: &Path, snapshotter: Option<&Path>) -> anyhow::Result<PrivateContainerd> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        for sub in ["root", "state", "opt", "hosts", "cni/bin", "cni/net.d"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let mut config = format!(
            "version = 2\nroot = {}\nstate = {}\n{}\
             [grpc]\n  address = {}\n[ttrpc]\n  address = {}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
            q(dir.join("root")),
            q(dir.join("state")),
            if snapshotter.is_some() {
                ""
            } else {
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
            },
            q(dir.join("c.sock")),
            q(dir.join("c.sock.ttrpc")),
            q(dir.join("opt")),
        );
        if let Some(socket) = snapshotter {
            // CRI's streaming server on an ephemeral port, CNI and registry hosts under `dir`
            // (pulls only: no pod runs), then the settings `gantry agent
            // install-containerd-config --snapshotter` writes on a node.
            config.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  stream_server_address = \"127.0.0.1\"\n  \
                 stream_server_port = \"0\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = {}\n  conf_dir = {}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = {}\n",
                q(dir.join("cni/bin")),
                q(dir.join("cni/net.d")),
                q(dir.join("hosts")),
            ));
            config = gantry_snapshotter::containerd_config::enable(
                &config,
                gantry_snapshotter::DEFAULT_PLUGIN_NAME,
                socket,
            )?;
        }
        std::fs::write(dir.join("config.toml"), config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let containerd = find_tool("containerd").context("containerd not found")?;
        let mut cmd = Command::new(containerd);
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Drop stops containerd when the demo ends or fails; if the demo dies without
        // unwinding (Ctrl-C, SIGTERM, SIGKILL) the kernel sends containerd SIGTERM. The
        // parent is this (main) thread, which lives as long as the process.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting containerd")?;
        let mut me = PrivateContainerd {
            child,
            dir: dir.to_path_buf(),
            ctr: find_tool("ctr").context("ctr not found")?,
            version: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = me.ctr(&["version"]).output();
            if let Ok(out) = out {
                if out.status.success() {
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    me.version = text
                        .lines()
                        .filter(|l| l.trim_start().starts_with("Version:"))
                        .nth(1)
                        .map(|l| {
                            format!(
                                "containerd {}",
                                l.trim().trim_start_matches("Version:").trim()
                            )
                        })
                        .unwrap_or_else(|| "containerd".into());
                    return Ok(me);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 30 s (log in {})",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(self.dir.join("c.sock"))
            .args(["--namespace", "gantry-demo"])
            .args(args);
        cmd
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the HTML report says besides the rows.
pub struct ReportText<'a> {
    /// Size of the sample game.
    pub scale_bytes: u64,
    /// The update's own size (gzip -6 of new and changed content).
    pub update_bytes: u64,
    /// Gantry's node, as [`Delivery::node`].
    pub node: &'a str,
    /// The layer-level node, as [`Delivery::layer_level_node`].
    pub layer_level_node: &'a str,
    /// The snapshotter node, as [`Delivery::snapshotter_node`].
    pub snapshotter_node: Option<&'a str>,
}

const LAYER_COLOR: &str = "#9aa3b2";
const GANTRY_COLOR: &str = "#2a7de1";
const SNAPSHOTTER_COLOR: &str = "#0b3d91";

/// The measures of a row in bar order (layer-level, Gantry, then the snapshotter's if any),
/// each with its colour.
fn bars(r: &Row) -> Vec<(&Measure, &'static str)> {
    let mut v = vec![(&r.layer_level, LAYER_COLOR), (&r.gantry, GANTRY_COLOR)];
    if let Some(s) = &r.snapshotter {
        v.push((s, SNAPSHOTTER_COLOR));
    }
    v
}

/// One SVG bar chart: a group of bars per row (layer-level, Gantry, and the snapshotter
/// when it ran), each labelled with its value above it. Geometry leaves room for every
/// label: bars wider than the longest label, a top margin above the tallest bar, the step
/// names below the baseline, no legend inside (the page draws it above the charts in HTML).
fn chart(
    id: &str,
    label: &str,
    rows: &[Row],
    value: fn(&Measure) -> f64,
    text: fn(f64) -> String,
) -> String {
    let max = rows
        .iter()
        .flat_map(|r| bars(r).into_iter().map(|(m, _)| value(m)))
        .fold(0.0_f64, f64::max);
    let max = if max > 0.0 { max } else { 1.0 };
    let per_row = rows.iter().map(|r| bars(r).len()).max().unwrap_or(2) as f64;
    let (bar_w, pair_gap, left, top, height) = (70.0, 36.0, 16.0, 22.0, 200.0);
    let mut svg = String::new();
    for (i, r) in rows.iter().enumerate() {
        let x = left + i as f64 * (per_row * bar_w + pair_gap);
        for (j, (m, color)) in bars(r).into_iter().enumerate() {
            let v = value(m);
            let h = (v / max * height).max(1.0);
            let bx = x + j as f64 * bar_w;
            svg.push_str(&format!(
                "<rect x=\"{bx:.0}\" y=\"{:.0}\" width=\"{:.0}\" height=\"{h:.0}\" fill=\"{color}\"><title>{}</title></rect>\n",
                top + height - h,
                bar_w - 6.0,
                text(v)
            ));
            svg.push_str(&format!(
                "<text class=\"value\" x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
                bx + (bar_w - 6.0) / 2.0,
                top + height - h - 5.0,
                text(v)
            ));
        }
        svg.push_str(&format!(
            "<text class=\"step\" x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n",
            x + per_row * bar_w / 2.0 - 3.0,
            top + height + 18.0,
            r.step
        ));
    }
    let width = 2.0 * left + rows.len() as f64 * (per_row * bar_w + pair_gap) - pair_gap;
    format!(
        "<figure><figcaption>{label}</figcaption>\n\
         <svg id=\"{id}\" width=\"{width:.0}\" height=\"{:.0}\" role=\"img\" aria-label=\"{label}\">\n{svg}</svg></figure>\n",
        top + height + 28.0
    )
}

/// The HTML report: the nodes, a legend, a chart of bytes and a chart of seconds per step
/// both ways, and the same figures as a table.
pub fn html(rows: &[Row], t: &ReportText) -> String {
    let snap = rows.iter().any(|r| r.snapshotter.is_some());
    let mut table = String::new();
    for r in rows {
        let (l, g) = (&r.layer_level, &r.gantry);
        let s = match &r.snapshotter {
            Some(s) => format!(
                "<td>{}</td><td>{:.2}</td><td>{:.1}×</td>",
                human_bytes(s.bytes),
                s.seconds,
                l.seconds / s.seconds.max(1e-6)
            ),
            None if snap => "<td></td><td></td><td></td>".into(),
            None => String::new(),
        };
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{:.2}</td><td>{:.1}×</td><td>{:.1}×</td>{s}</tr>\n",
            r.step,
            human_bytes(l.bytes),
            l.seconds,
            human_bytes(g.bytes),
            g.seconds,
            l.bytes as f64 / g.bytes.max(1) as f64,
            l.seconds / g.seconds.max(1e-6),
        ));
    }
    let (snap_item, snap_legend, snap_head) = match t.snapshotter_node {
        Some(node) if snap => (
            format!(
                "<li><b>Gantry + snapshotter</b>: the same pushes; the node pulls through CRI, \
                 and <code>gantry snapshotter</code> builds v2's changed layer from v1's files plus \
                 the new chunks, with no unpack ({}).</li>\n",
                escape(node)
            ),
            format!(
                "<span style=\"background:{SNAPSHOTTER_COLOR}\"></span>Gantry + snapshotter"
            ),
            "<th>+ snapshotter bytes</th><th>+ snapshotter s</th><th>faster</th>",
        ),
        _ => (String::new(), String::new(), ""),
    };
    let bytes = chart(
        "bytes",
        "Bytes moved per step",
        rows,
        |m| m.bytes as f64,
        |v| human_bytes(v as u64),
    );
    let seconds = chart(
        "seconds",
        "Seconds per step (a pull ends when the node holds the image unpacked)",
        rows,
        |m| m.seconds,
        |v| format!("{v:.2} s"),
    );
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Gantry demo</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
         figure{{margin:1em 0}}figcaption{{font-weight:bold;margin-bottom:4px}}\
         .legend span{{display:inline-block;width:14px;height:14px;vertical-align:middle;margin:0 6px 0 16px}}</style></head><body>\n\
         <h1>Gantry demo</h1>\n\
         <p>Sample game of {}; the update's own size (gzip -6 of new and changed content) is {}.</p>\n\
         <p>Each way was measured in this run, on the same registry (<code>gantry serve</code> on loopback):</p>\n\
         <ul><li><b>layer-level</b>: every changed layer pushed whole; the node fetches whole layers ({});</li>\n\
         <li><b>Gantry</b>: delta push; the node fetches only the chunks it lacks ({}).</li>\n{snap_item}</ul>\n\
         <p class=\"legend\"><span style=\"background:{LAYER_COLOR}\"></span>layer-level<span style=\"background:{GANTRY_COLOR}\"></span>Gantry{snap_legend}</p>\n\
         {bytes}{seconds}\
         <table><tr><th>step</th><th>layer-level bytes</th><th>layer-level s</th><th>Gantry bytes</th><th>Gantry s</th><th>fewer bytes</th><th>faster</th>{snap_head}</tr>\n{table}</table>\n\
         <p>Bytes are measured: what <code>gantry serve</code> received for a push; for a pull, what \
         the registry sent to the layer-level node and what <code>gantry agent</code> fetched from the registry.</p>\n\
         </body></html>\n",
        human_bytes(t.scale_bytes),
        human_bytes(t.update_bytes),
        escape(t.layer_level_node),
        escape(t.node),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
