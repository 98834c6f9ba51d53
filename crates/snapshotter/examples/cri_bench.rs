//! The node side of `bench/snapshotter.sh`: one private containerd 1.6 with its CRI plugin
//! (root under `$TMPDIR`), driven as kubelet drives it. It pulls v1 (a cold pull), then
//! measures the time from `PullImage` of v2 to a started container of v2, and checks the
//! container sees v2's bytes in a file the update changed. Prints one JSON object.
//!
//! ```text
//! cri_bench --way layer|agent|snapshotter --registry HOST:PORT --v1 REF --v2 REF \
//!     --check PATH=SHA256 [--agent URL] [--snapshotter-socket SOCK] [--disk-stat FILE]
//! ```
//!
//! - `layer`: containerd's own overlayfs snapshotter pulls straight from the registry.
//! - `agent`: the same, with `gantry agent` as the registry's mirror (`hosts.toml`).
//! - `snapshotter`: CRI's snapshotter is the proxy plugin at `--snapshotter-socket`
//!   (`gantry snapshotter`), pulls go through the agent.
//!
//! `--metrics URL|NAME,URL|NAME…`: Prometheus counters whose growth during the v2 step is
//! reported (e.g. the agent's upstream bytes).
//!
//! `--disk-stat` names a block device's `stat` file (`/sys/block/loopN/stat`): the sectors
//! written during the v2 step (after `sync`) are reported as bytes written to the node's disk.
//! A bench tool, not part of the product: it uses the test CRI client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gantry_test_support::{Containerd, CriClient, CriOptions};

fn arg(args: &HashMap<String, String>, key: &str) -> String {
    args.get(key)
        .cloned()
        .unwrap_or_else(|| panic!("--{key} is required"))
}

fn sectors_written(stat: &Option<PathBuf>) -> Option<u64> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let text = std::fs::read_to_string(stat.as_ref()?).ok()?;
    text.split_whitespace().nth(6)?.parse().ok()
}

/// The sum of counter `name` (over its label sets) at `url`.
fn counter(rt: &tokio::runtime::Runtime, url: &str, name: &str) -> f64 {
    let text = rt
        .block_on(async { reqwest::get(url).await?.text().await })
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut args = HashMap::new();
    for pair in raw.chunks(2) {
        let key = pair[0]
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("expected --KEY VALUE, got {:?}", pair[0]));
        let value = pair.get(1).cloned().unwrap_or_default();
        args.insert(key.to_string(), value);
    }
    let way = arg(&args, "way");
    let registry = arg(&args, "registry");
    let (v1, v2) = (arg(&args, "v1"), arg(&args, "v2"));
    let check = arg(&args, "check");
    let (path, sha) = check.split_once('=').expect("--check PATH=SHA256");
    let disk = args.get("disk-stat").map(PathBuf::from);
    let metrics: Vec<(String, String)> = args
        .get("metrics")
        .map(|m| {
            m.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (u, n) = p.split_once('|').expect("--metrics URL|NAME,…");
                    (u.to_string(), n.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut options = CriOptions::default();
    if way == "snapshotter" {
        let socket = PathBuf::from(arg(&args, "snapshotter-socket"));
        options.snapshotter = Some("gantry".into());
        options.extra_toml = gantry_snapshotter::proxy_plugin_config("gantry", &socket);
    } else {
        options.snapshotter = Some("overlayfs".into());
    }
    let ctd = Containerd::start_cri(&options);
    if way == "layer" {
        // Plain HTTP to the registry, also when it is not on loopback (--rate runs).
        let url = format!("http://{registry}");
        gantry_test_support::write_mirror_hosts_toml(&ctd.hosts_dir(), &registry, &url, &url);
    } else {
        let agent = arg(&args, "agent");
        gantry_agent::hosts::install(
            &ctd.hosts_dir(),
            &registry,
            &format!("http://{registry}"),
            &agent,
        )
        .expect("hosts.toml for the agent");
    }
    let cri = CriClient::connect(ctd.address());

    let t = Instant::now();
    cri.pull_image(&v1, None);
    let v1_seconds = t.elapsed().as_secs_f64();

    let logs = tempfile::tempdir().expect("log dir");
    let before: Vec<f64> = metrics.iter().map(|(u, n)| counter(&rt, u, n)).collect();
    let written_before = sectors_written(&disk);
    let t = Instant::now();
    cri.pull_image(&v2, None);
    let pull_seconds = t.elapsed().as_secs_f64();
    let sandbox = cri.run_pod_sandbox("bench-v2", logs.path());
    let container = cri.create_container(
        &sandbox,
        "bench-v2",
        &v2,
        &["/bin/sh", "-c", &format!("sha256sum {path}")],
        &[],
        "bench-v2.log",
    );
    cri.start_container(&container);
    let started_seconds = t.elapsed().as_secs_f64();
    let code = cri.wait_exited(&container, Duration::from_secs(600));
    let out = cri.container_stdout(&container);
    let written_after = sectors_written(&disk);
    let grown: serde_json::Map<String, serde_json::Value> = metrics
        .iter()
        .zip(&before)
        .map(|((u, n), b)| (n.clone(), serde_json::json!(counter(&rt, u, n) - b)))
        .collect();
    assert_eq!(code, 0, "the check command failed: {out}");
    assert!(
        out.starts_with(sha),
        "the container's {path} is not v2's ({sha}): {out}"
    );
    cri.remove_container(&container);
    cri.stop_pod_sandbox(&sandbox.id);
    cri.remove_pod_sandbox(&sandbox.id);
    let written = match (written_before, written_after) {
        (Some(a), Some(b)) => Some((b - a) * 512),
        _ => None,
    };
    let report = serde_json::json!({
        "way": way,
        "v1_pull_seconds": v1_seconds,
        "v2_pull_seconds": pull_seconds,
        "v2_started_seconds": started_seconds,
        "v2_disk_written_bytes": written,
        "checked": format!("{path} = {sha}"),
        "v2_metrics": grown,
    });
    println!("{report}");
    drop(cri);
    drop(ctd);
}
