//! `gantry supervise` through the real `gantry` binary: options reach the supervisor
//! (port substitution, probe, exit code) and SIGTERM is forwarded to the game.
//! The supervisor's behaviour in depth is tested in crates/supervise/tests.

use gantry_test_support::{output_with_timeout, HttpStub};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

fn gantry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    for var in [
        "AGONES_SDK_HTTP_PORT",
        "GANTRY_METADATA_URL",
        "GANTRY_REPORT_TOKEN",
        "GANTRY_REGION",
        "NODE_NAME",
        "GANTRY_CONTAINER_PORT",
        "GANTRY_PUBLIC_PORT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect()
}

#[test]
fn supervise_substitutes_the_port_and_exits_with_the_game_code() {
    let out = output_with_timeout(
        gantry().args([
            "supervise",
            "--port",
            "0",
            "--protocol",
            "tcp",
            "--health",
            "none",
            "--metadata-url",
            "none",
            "--node-name",
            "node-7",
            "--",
            "sh",
            "-c",
            r#"echo "arg=$1 env=$SERVER_PORT"; exit 5"#,
            "sh",
            "+sv_port=${SERVER_PORT}",
        ]),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&stdout);
    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["starting", "ready", "exited"], "{stdout}");
    let port = events[0]["public_port"].as_u64().unwrap();
    assert_ne!(port, 0);
    assert!(
        stdout.contains(&format!("arg=+sv_port={port} env={port}\n")),
        "{stdout}"
    );
    assert_eq!(events[2]["exit_code"], 5);
    assert_eq!(events[0]["node_name"], "node-7");
    assert_eq!(events[0]["type"], "gs");
}

#[test]
fn supervise_forwards_sigterm_to_the_game() {
    let mut child = gantry()
        .args([
            "supervise",
            "--protocol",
            "tcp",
            "--health",
            "none",
            "--metadata-url",
            "none",
            "--grace-period",
            "10s",
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 9' TERM; echo up; while :; do sleep 0.05; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start gantry supervise");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Events before the game's "up" (the supervisor's `ready` may come just after it: the
    // two processes write to the same pipe independently).
    let mut before = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        if line == "up" {
            break;
        }
        before.push(line);
    }
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let rest: Vec<String> = lines.map(|l| l.expect("stdout")).collect();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(9), "{rest:?}");
    assert!(rest.contains(&"got-term".to_string()), "{rest:?}");
    let all = [before, rest.clone()].concat();
    let statuses: Vec<String> = events(&all.join("\n"))
        .iter()
        .map(|e| e["status"].as_str().unwrap().to_string())
        .collect();
    assert!(
        statuses.ends_with(&["ready".to_string(), "terminating".into(), "exited".into()]),
        "{all:?}"
    );
}

#[test]
fn supervise_rejects_a_bad_probe_and_a_missing_command() {
    let out = output_with_timeout(
        gantry().args(["supervise", "--health", "http", "--", "true"]),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected tcp, udp, none or cmd:"));
    let out = output_with_timeout(gantry().args(["supervise"]), TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
}

/// The container port reaches the supervisor through `GANTRY_CONTAINER_PORT`, as the Fleet
/// `gantry deploy render` writes sets it: the game listens there and Agones' host port is
/// public. The Agones SDK sidecar cannot run here: an HTTP stub answers for it.
#[test]
fn container_port_from_the_environment_under_a_stub_agones_sdk() {
    let sdk = HttpStub::start(|req| {
        match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/gameserver") => (
            200,
            r#"{"status":{"state":"Scheduled","address":"192.0.2.4","ports":[{"name":"default","port":7301}]}}"#
                .into(),
        ),
        _ => (200, "{}".into()),
    }
    });
    let out = output_with_timeout(
        gantry()
            .args([
                "supervise",
                "--agones-url",
                &sdk.url(),
                "--health",
                "none",
                "--metadata-url",
                "none",
                "--",
                "/bin/sh",
                "-c",
                "echo listen=$SERVER_PORT public=$GANTRY_PUBLIC_PORT arg=$0",
                "${GANTRY_PUBLIC_PORT}",
            ])
            .env("GANTRY_CONTAINER_PORT", "7777"),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(
        stdout.contains("listen=7777 public=7301 arg=7301"),
        "{context}"
    );
    let events = events(&stdout);
    assert!(!events.is_empty(), "{context}");
    assert!(events.iter().all(|e| e["public_port"] == 7301), "{context}");
    assert_eq!(events[0]["public_hostname"], "192.0.2.4", "{context}");
    let calls: Vec<String> = sdk.requests().iter().map(|r| r.path.clone()).collect();
    assert!(calls.contains(&"/ready".to_string()), "{calls:?}");
}

/// `gantry build` with `supervise = true` takes `gantry-supervise` from beside the `gantry`
/// executable, as scripts/install.sh lays them out, and says where it looked when none is
/// there.
#[test]
fn build_takes_the_static_supervisor_from_beside_gantry_or_says_where_it_looked() {
    let tmp = gantry_test_support::tempdir();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let gantry_copy = bin.join("gantry");
    std::fs::copy(env!("CARGO_BIN_EXE_gantry"), &gantry_copy).unwrap();

    let repo = tmp.path().join("game");
    std::fs::create_dir_all(repo.join("base")).unwrap();
    gantry_test_support::busybox_rootfs_tar(&repo.join("base/rootfs.tar"));
    std::fs::write(repo.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(
        repo.join("gantry.toml"),
        r#"supervise = true

[image]
name = "supervised"
tag = "v1"

[base]
rootfs = "base/rootfs.tar"

[config]
entrypoint = ["/bin/cat", "/hello.txt"]

[[layers]]
name = "hello"
[[layers.sources]]
file = "hello.txt"
dest = "/hello.txt"
"#,
    )
    .unwrap();
    let build = |out: &str| {
        let mut cmd = Command::new(&gantry_copy);
        cmd.env_remove("GANTRY_SUPERVISE_BINARY")
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(tmp.path().join(out))
            .arg("--json");
        output_with_timeout(&mut cmd, Duration::from_secs(120))
    };

    let out = build("image-1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "built without a supervisor: {stderr}"
    );
    assert!(stderr.contains("no supervisor binary found"), "{stderr}");
    assert!(
        stderr.contains(&bin.join("gantry-supervise").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/build-supervisor.sh"), "{stderr}");

    std::fs::copy(
        gantry_test_support::static_supervisor(),
        bin.join("gantry-supervise"),
    )
    .unwrap();
    let out = build("image-2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("build --json");
    let layers = report["layers"].as_array().expect("layers");
    assert_eq!(
        layers.last().unwrap()["name"],
        "gantry-supervise",
        "{stdout}"
    );
}
