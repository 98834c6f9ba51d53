//! `gantry supervise` through the real `gantry` binary: options reach the supervisor
//! (port substitution, probe, exit code) and SIGTERM is forwarded to the game.
//! The supervisor's behaviour in depth is tested in crates/supervise/tests.

use gantry_test_support::output_with_timeout;
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
