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
    assert!(
        delivery["node"]
            .as_str()
            .unwrap_or("")
            .starts_with("containerd"),
        "the node should be containerd when it is installed and we are root: {context}"
    );
    let n = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a number: {v}\n{context}"))
    };
    let image = n(&report["cost"]["image_bytes"]);
    let changed_layers = n(&report["cost"]["layer_level_bytes"]);
    assert!(image > 5_000_000, "{context}");
    // v1 moves about the whole image; v2 much less than the changed layers the seed moves.
    assert!(
        n(&delivery["push_v1"]["bytes"]) >= image * 9 / 10,
        "{context}"
    );
    assert!(
        n(&delivery["pull_v1"]["bytes"]) >= image * 9 / 10,
        "{context}"
    );
    assert!(n(&delivery["push_v2"]["bytes"]) > 0, "{context}");
    assert!(
        n(&delivery["push_v2"]["bytes"]) < changed_layers / 2,
        "{context}"
    );
    assert!(
        n(&delivery["pull_v2"]["bytes"]) < changed_layers / 2,
        "{context}"
    );
    assert_eq!(
        report["v1"]["manifest_digest"], report["noop_rebuild"]["manifest_digest"],
        "{context}"
    );
    let html = std::fs::read_to_string(work.join("gantry-demo.html")).expect("the HTML report");
    assert!(html.contains("<svg") && html.contains("pull v2"), "{html}");
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
