//! `gantry demo` through the real binary, as the README's first command runs it: a small
//! scale end to end with a real containerd as the node, the report's figures, the HTML page,
//! and no server left behind — after a normal end and after a SIGINT (Ctrl-C) mid-run.

use gantry_test_support::{output_with_timeout, require_tool, tempdir};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Processes whose command line mentions `dir` (the demo's private containerd does).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

fn wait_until_gone(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn demo_end_to_end_with_containerd_reports_both_methods_and_stops_everything() {
    require_tool("containerd");
    let tmp = tempdir();
    let work = tmp.path().join("work");
    let out = output_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gantry")).args([
            "demo",
            "--scale",
            "20MB",
            "--workdir",
            work.to_str().unwrap(),
            "--json",
        ]),
        Duration::from_secs(600),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{context}");
    let report: Value = serde_json::from_str(&stdout).expect("demo --json");
    let delivery = &report["delivery"];
    for node in ["node", "layer_level_node"] {
        assert!(
            delivery[node]
                .as_str()
                .unwrap_or("")
                .starts_with("containerd"),
            "{node} should be containerd when it is installed and we are root: {context}"
        );
    }
    let n = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a number: {v}\n{context}"))
    };
    let secs = |v: &Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("not a number: {v}\n{context}"))
    };
    let image = n(&report["cost"]["image_bytes"]);
    let changed_layers = n(&report["cost"]["layer_level_bytes"]);
    assert!(image > 5_000_000, "{context}");
    let (gantry, layer) = (&delivery["gantry"], &delivery["layer_level"]);
    // v1 moves about the whole image both ways.
    for way in [gantry, layer] {
        for step in ["push_v1", "pull_v1"] {
            assert!(
                n(&way[step]["bytes"]) >= image * 9 / 10,
                "{step}: {context}"
            );
        }
        for step in ["push_v1", "pull_v1", "push_v2", "pull_v2"] {
            assert!(secs(&way[step]["seconds"]) > 0.0, "{step}: {context}");
        }
    }
    // v2: the layer-level way moves the changed layers whole (measured, so about what the
    // manifests say); Gantry much less.
    for step in ["push_v2", "pull_v2"] {
        let l = n(&layer[step]["bytes"]);
        assert!(
            l >= changed_layers * 9 / 10 && l <= changed_layers * 11 / 10 + 100_000,
            "{step}: layer-level {l} vs changed layers {changed_layers}: {context}"
        );
        let g = n(&gantry[step]["bytes"]);
        assert!(g > 0 && g < changed_layers / 2, "{step}: {context}");
    }
    // The snapshotter node: containerd with gantry snapshotter, pulling through CRI and an
    // agent of its own; v2's changed layer built by the fast path, about Gantry's bytes.
    assert!(
        delivery["snapshotter_node"]
            .as_str()
            .is_some_and(|n| n.starts_with("containerd") && n.contains("gantry snapshotter")),
        "{context}"
    );
    let snap = &delivery["snapshotter"];
    assert!(
        n(&snap["pull_v1"]["bytes"]) >= image * 9 / 10,
        "a cold node fetches the image: {context}"
    );
    let s2 = n(&snap["pull_v2"]["bytes"]);
    assert!(s2 > 0 && s2 < changed_layers / 2, "{context}");
    assert!(secs(&snap["pull_v2"]["seconds"]) > 0.0, "{context}");
    assert!(
        n(&delivery["snapshotter_fast_layers_v2"]) >= 1,
        "v2's changed layer by the fast path: {context}"
    );
    assert_eq!(
        report["v1"]["manifest_digest"], report["noop_rebuild"]["manifest_digest"],
        "{context}"
    );
    let page = work.join("gantry-demo.html");
    let html = std::fs::read_to_string(&page).expect("the HTML report");
    assert!(html.contains("<svg") && html.contains("pull v2"), "{html}");
    assert!(!html.to_lowercase().contains("seed"), "{html}");
    // The same figures as the printed report: both ways' seconds beside their bytes.
    assert!(html.contains("Gantry + snapshotter"), "{html}");
    for way in ["gantry", "layer_level", "snapshotter"] {
        let s = format!("{:.2}", secs(&delivery[way]["pull_v2"]["seconds"]));
        assert!(
            html.contains(&format!("<td>{s}</td>")),
            "{way} pull v2 {s}s: {html}"
        );
    }
    // In a real browser at 1280 px, no chart text leaves its chart or overlaps another text.
    // The screenshot outlives the test's temp dir: target/tmp/gantry-demo.png.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gantry-demo.png");
    let check = gantry_test_support::check_page_layout(&page, 1280, &shot);
    assert_eq!(check.width, 1280, "{check:?}");
    assert!(
        check.texts >= 32,
        "two charts of 4 steps × 3 bars + names: {check:?}"
    );
    assert!(
        check.problems.is_empty(),
        "layout problems (screenshot in {}): {:#?}",
        shot.display(),
        check.problems
    );
    wait_until_gone(&work);
}

#[test]
fn demo_interrupted_by_sigint_leaves_no_server_running() {
    require_tool("containerd");
    let tmp = tempdir();
    let work = tmp.path().join("work");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "demo",
            "--scale",
            "20MB",
            "--workdir",
            work.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gantry demo");
    // Once the node is up and the first push starts, every server is running.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let started = line.contains("==> push v1");
        seen.push(line);
        if started {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("==> push v1")),
        "the demo ended before pushing: {seen:?}"
    );
    assert!(
        !processes_under(&work).is_empty(),
        "no containerd under the work dir while the demo runs: {seen:?}"
    );
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the demo finished before the signal: {seen:?}"
    );
    wait_until_gone(&work);
}
