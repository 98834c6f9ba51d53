//! The delivery half of `gantry demo`: `gantry serve` and `gantry agent` started in this
//! process, v1 and v2 pushed, and pulled by a node — a private containerd pulling through
//! the agent when containerd is installed and we are root, else the agent alone answering
//! the requests containerd would make. Plus the HTML report with its chart.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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
    /// Bytes moved (registry received, or agent fetched upstream).
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// What the delivery steps measured.
#[derive(Serialize)]
pub struct Delivery {
    /// Which node pulled: `containerd <version> through gantry agent` or `gantry agent alone`.
    pub node: String,
    /// Push of v1 to an empty registry.
    pub push_v1: Measure,
    /// Pull of v1 by an empty node.
    pub pull_v1: Measure,
    /// Push of v2 (delta push).
    pub push_v2: Measure,
    /// Pull of v2 by the node holding v1.
    pub pull_v2: Measure,
    /// Bytes of v2's layers the agent took from what the node held.
    pub pull_v2_reused: u64,
}

/// One bar pair of the chart.
pub struct Row {
    /// Step name.
    pub step: &'static str,
    /// Bytes the seed's way.
    pub seed_bytes: u64,
    /// Bytes Gantry moved.
    pub gantry_bytes: u64,
    /// Gantry's time.
    pub seconds: f64,
}

impl Row {
    /// A row.
    pub fn new(step: &'static str, seed_bytes: u64, gantry_bytes: u64, seconds: f64) -> Row {
        Row {
            step,
            seed_bytes,
            gantry_bytes,
            seconds,
        }
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

/// Runs the delivery steps with everything under `workdir`.
pub fn run(workdir: &Path, v1: &Path, v2: &Path, say: &dyn Fn(String)) -> anyhow::Result<Delivery> {
    let registry_root = workdir.join("registry");
    let agent_root = workdir.join("agent");
    for d in [&registry_root, &agent_root] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
    }
    let node = Node::start(workdir)?;
    say(format!("node: {}", node.describe()));
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
        let agent = gantry_agent::bind(&gantry_agent::AgentConfig {
            addr: "127.0.0.1:0".parse()?,
            root: agent_root.clone(),
            upstreams: vec![gantry_agent::UpstreamSpec {
                host: host.clone(),
                url: format!("http://{host}"),
            }],
            max_bytes: 0,
            fetch_jobs: 4,
        })
        .await
        .context("starting gantry agent")?;
        let agent_metrics = format!("{}/metrics", agent.url());
        node.configure(&host, &agent.url())?;

        let push = |layout: PathBuf, tag: &'static str| {
            let client = &client;
            let host = host.clone();
            let reg_metrics = reg_metrics.clone();
            async move {
                let before = metric(&reg_metrics, "gantry_registry_bytes_received_total").await?;
                let t = Instant::now();
                let dest: Reference = format!("{host}/demo/game:{tag}").parse()?;
                push_layout(
                    client,
                    &OciLayout::open(&layout)?,
                    None,
                    &dest,
                    &PushOptions {
                        delta_from: Some("v1".into()),
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
        let pull = |tag: &'static str| {
            let node = &node;
            let host = host.clone();
            let agent_url = agent.url();
            let agent_metrics = agent_metrics.clone();
            async move {
                let before = metric(&agent_metrics, "gantry_agent_upstream_bytes_total").await?;
                let t = Instant::now();
                node.pull(&host, &agent_url, &format!("demo/game:{tag}"))
                    .await?;
                let seconds = t.elapsed().as_secs_f64();
                let after = metric(&agent_metrics, "gantry_agent_upstream_bytes_total").await?;
                anyhow::Ok(Measure {
                    bytes: after - before,
                    seconds,
                })
            }
        };
        say("push v1".into());
        let push_v1 = push(v1.to_path_buf(), "v1").await?;
        say("node pulls v1".into());
        let pull_v1 = pull("v1").await?;
        say("push v2 (delta push)".into());
        let push_v2 = push(v2.to_path_buf(), "v2").await?;
        let reused_before = metric(&agent_metrics, "gantry_agent_reused_bytes_total").await?;
        say("node pulls v2".into());
        let pull_v2 = pull("v2").await?;
        let reused_after = metric(&agent_metrics, "gantry_agent_reused_bytes_total").await?;
        agent.shutdown().await;
        serve.shutdown().await.context("stopping gantry serve")?;
        anyhow::Ok(Delivery {
            node: node.describe(),
            push_v1,
            pull_v1,
            push_v2,
            pull_v2,
            pull_v2_reused: reused_after - reused_before,
        })
    })
}

/// The node that pulls.
enum Node {
    /// A private containerd (killed on drop).
    Containerd(PrivateContainerd),
    /// The agent alone, asked for what containerd would ask.
    AgentAlone(reqwest::Client),
}

impl Node {
    fn start(workdir: &Path) -> anyhow::Result<Node> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let tools = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"];
        if root && tools.iter().all(|t| find_tool(t).is_some()) {
            match PrivateContainerd::start(&workdir.join("node")) {
                Ok(c) => return Ok(Node::Containerd(c)),
                Err(e) => {
                    eprintln!("warning: containerd did not start ({e:#}); using the agent alone")
                }
            }
        }
        Ok(Node::AgentAlone(reqwest::Client::new()))
    }

    fn describe(&self) -> String {
        match self {
            Node::Containerd(c) => format!("{} pulling through gantry agent", c.version),
            Node::AgentAlone(_) => {
                "gantry agent alone (containerd not installed or not root), asked for the manifest and every blob as containerd would".into()
            }
        }
    }

    fn configure(&self, host: &str, agent_url: &str) -> anyhow::Result<()> {
        if let Node::Containerd(c) = self {
            gantry_agent::hosts::install(&c.hosts(), host, &format!("http://{host}"), agent_url)?;
        }
        Ok(())
    }

    async fn pull(&self, host: &str, agent_url: &str, repo_tag: &str) -> anyhow::Result<()> {
        match self {
            Node::Containerd(c) => {
                let mut cmd = c.ctr(&["images", "pull", "--hosts-dir"]);
                cmd.arg(c.hosts()).arg(format!("{host}/{repo_tag}"));
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
            Node::AgentAlone(http) => {
                let (repo, tag) = repo_tag.split_once(':').unwrap_or((repo_tag, "latest"));
                let base = format!("{agent_url}/v2/{repo}");
                let manifest: serde_json::Value = http
                    .get(format!("{base}/manifests/{tag}?ns={host}"))
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
                    let bytes = http
                        .get(format!("{base}/blobs/{d}?ns={host}"))
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                    let got = gantry_oci::Digest::of(&bytes).to_string();
                    anyhow::ensure!(got == d, "agent served {got} for {d}");
                }
                Ok(())
            }
        }
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// containerd with its own root, state and socket under a directory; CRI disabled.
struct PrivateContainerd {
    child: Child,
    dir: PathBuf,
    ctr: PathBuf,
    version: String,
}

impl PrivateContainerd {
    fn start(dir: &Path) -> anyhow::Result<PrivateContainerd> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        for sub in ["root", "state", "opt", "hosts"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let config = format!(
            "version = 2\nroot = {}\nstate = {}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {}\n[ttrpc]\n  address = {}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
            q(dir.join("root")),
            q(dir.join("state")),
            q(dir.join("c.sock")),
            q(dir.join("c.sock.ttrpc")),
            q(dir.join("opt")),
        );
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

/// The HTML report: a table and an SVG bar chart of the bytes each step moved.
pub fn html(rows: &[Row], scale_bytes: u64, update_bytes: u64) -> String {
    let max = rows
        .iter()
        .map(|r| r.seed_bytes.max(r.gantry_bytes))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (bar_w, gap, height) = (38.0, 30.0, 260.0);
    let mut bars = String::new();
    for (i, r) in rows.iter().enumerate() {
        let x = 60.0 + i as f64 * (2.0 * bar_w + gap);
        for (j, (n, color)) in [(r.seed_bytes, "#b0b7c3"), (r.gantry_bytes, "#2a7de1")]
            .into_iter()
            .enumerate()
        {
            let h = (n as f64 / max * height).max(1.0);
            let bx = x + j as f64 * bar_w;
            bars.push_str(&format!(
                "<rect x=\"{bx:.0}\" y=\"{:.0}\" width=\"{:.0}\" height=\"{h:.0}\" fill=\"{color}\"><title>{}</title></rect>\n",
                20.0 + height - h,
                bar_w - 4.0,
                human_bytes(n)
            ));
            bars.push_str(&format!(
                "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"10\" text-anchor=\"middle\">{}</text>\n",
                bx + bar_w / 2.0 - 2.0,
                14.0 + height - h,
                human_bytes(n)
            ));
        }
        bars.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n",
            x + bar_w - 2.0,
            height + 38.0,
            r.step
        ));
    }
    let width = 60.0 + rows.len() as f64 * (2.0 * bar_w + gap) + 20.0;
    let mut table = String::new();
    for r in rows {
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.2}</td></tr>\n",
            r.step,
            human_bytes(r.seed_bytes),
            human_bytes(r.gantry_bytes),
            100.0 * r.gantry_bytes as f64 / r.seed_bytes.max(1) as f64,
            r.seconds
        ));
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Gantry demo</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}</style></head><body>\n\
         <h1>Gantry demo</h1>\n<p>Sample game of {}; the update's own size (gzip -6 of new and changed content) is {}.</p>\n\
         <svg width=\"{width:.0}\" height=\"{:.0}\" role=\"img\" aria-label=\"bytes moved per step\">\n\
         <text x=\"10\" y=\"12\" font-size=\"12\">bytes moved per step: grey = the seed's way (whole changed layers), blue = Gantry</text>\n\
         {bars}</svg>\n\
         <table><tr><th>step</th><th>the seed's way</th><th>Gantry</th><th>Gantry / seed</th><th>Gantry seconds</th></tr>\n{table}</table>\n\
         <p>The seed's way is computed from the manifests (every layer whose digest changed moves whole); \
         Gantry's bytes are measured: what <code>gantry serve</code> received and what <code>gantry agent</code> fetched upstream.</p>\n\
         </body></html>\n",
        human_bytes(scale_bytes),
        human_bytes(update_bytes),
        height + 50.0,
    )
}
