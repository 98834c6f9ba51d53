//! End to end: the real `gantry supervise` runs a game and reports to a real `gantry serve`
//! with auth (a report token made by `gantry fleet token add`, the report URL from
//! `GANTRY_REPORT_URL`), heartbeats keep it from going `lost`, `gantry fleet status` shows it
//! ready on the tag's digest (converged), and after SIGTERM shows it exited.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_oci::Digest;
use gantry_test_support::{output_with_timeout, tempdir, GantryServe};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);

fn gantry(docker_config: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    for var in [
        "AGONES_SDK_HTTP_PORT",
        "GANTRY_METADATA_URL",
        "GANTRY_REPORT_TOKEN",
        "GANTRY_REPORT_URL",
        "GANTRY_IMAGE",
        "GANTRY_IMAGE_DIGEST",
        "GANTRY_REGION",
        "NODE_NAME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("DOCKER_CONFIG", docker_config);
    cmd
}

/// Pushes a one-layer image as alice; returns the manifest digest.
async fn push_image(base: &str, repo: &str, tag: &str) -> Digest {
    let http = reqwest::Client::new();
    let auth = ("alice", "alicepw");
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"a layer".to_vec();
    for blob in [&config, &layer] {
        let d = Digest::of(blob);
        let r = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
            .basic_auth(auth.0, Some(auth.1))
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    }
    let desc = |mt: &str, b: &[u8]| json!({"mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len()});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .unwrap();
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .basic_auth(auth.0, Some(auth.1))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    Digest::of(&manifest)
}

/// `gantry fleet status … --json` as alice; the output and whether it succeeded.
fn fleet_status(docker_config: &std::path::Path, host: &str, extra: &[&str]) -> (bool, String) {
    let out = output_with_timeout(
        gantry(docker_config)
            .args(["fleet", "status", &format!("http://{host}"), "-u", "alice"])
            .args(extra)
            .env("GANTRY_PASSWORD", "alicepw"),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), format!("{stdout}{stderr}"))
}

fn server_status(json_text: &str) -> Option<(String, bool)> {
    let v: Value = serde_json::from_str(json_text).ok()?;
    let t = &v["repositories"][0]["tags"][0];
    let s = t["servers"][0]["status"].as_str()?.to_string();
    Some((s, t["converged"] == Value::Bool(true)))
}

#[test]
fn supervised_server_reports_to_gantry_serve_and_fleet_status_shows_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let serve = rt.block_on(GantryServe::with(|c| {
        gantry_registry::add_user(
            &gantry_registry::TokenAuth::default_users_path(&c.root),
            "alice",
            "alicepw",
        )
        .unwrap();
        let rule = |user: &str, actions: &[&str]| gantry_registry::AccessRule {
            repository: "team/**".into(),
            users: vec![user.into()],
            actions: actions.iter().map(|s| s.to_string()).collect(),
            anonymous_pull: false,
        };
        c.auth = Some(gantry_registry::AuthConfig {
            access: vec![
                rule("alice", &["pull", "push"]),
                rule("fleet-team", &["report"]),
            ],
            ..gantry_registry::AuthConfig::default()
        });
        c.fleet.stale_after = Duration::from_secs(2);
    }));
    let host = serve.host();
    let base = serve.server.url();
    let docker_config = tempdir();
    let digest = rt.block_on(push_image(&base, "team/game", "v1"));

    // The report token, made with the CLI; the server rereads the file.
    let tokens = gantry_registry::TokenAuth::default_report_tokens_path(serve.dir.path());
    let out = output_with_timeout(
        gantry(docker_config.path()).args([
            "fleet",
            "token",
            "add",
            "fleet-team",
            "--file",
            tokens.to_str().unwrap(),
        ]),
        TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(secret.starts_with("gantry_rt_"), "{secret}");

    let mut child = gantry(docker_config.path())
        .args([
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
            "node-a",
            "--report-interval",
            "500ms",
            "--no-stdout-events",
            "--",
            "sleep",
            "60",
        ])
        .env(
            "GANTRY_REPORT_URL",
            format!("http://{host}/gantry/v1/fleet/events"),
        )
        .env("GANTRY_REPORT_TOKEN", &secret)
        .env("GANTRY_IMAGE", format!("{host}/team/game:v1"))
        .env("GANTRY_IMAGE_DIGEST", digest.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start gantry supervise");

    let json_args = ["--image", "team/game:v1", "--json"];
    let deadline = Instant::now() + TIMEOUT;
    let last = loop {
        let (ok, out) = fleet_status(docker_config.path(), &host, &json_args);
        if ok && server_status(&out) == Some(("ready".into(), true)) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "never ready and converged: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let v: Value = serde_json::from_str(&last).unwrap();
    let t = &v["repositories"][0]["tags"][0];
    assert_eq!(t["tag_digest"], digest.to_string());
    let s = &t["servers"][0];
    assert_eq!(s["node"], "node-a");
    assert_eq!(s["reporter"], "fleet-team");
    assert_eq!(s["image"], format!("{host}/team/game:v1"));
    assert!(s["public_port"].as_u64().unwrap() > 0);

    // Silent for longer than stale_after (2 s) but for the heartbeats: still ready.
    std::thread::sleep(Duration::from_secs(3));
    let (ok, out) = fleet_status(docker_config.path(), &host, &json_args);
    assert!(ok, "{out}");
    assert_eq!(server_status(&out), Some(("ready".into(), true)), "{out}");
    let (ok, table) = fleet_status(docker_config.path(), &host, &["--expect-converged"]);
    assert!(ok, "{table}");
    assert!(
        table.contains("team/game") && table.contains("yes"),
        "{table}"
    );

    // SIGTERM: the game is stopped, the supervisor reports `exited` and exits.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "supervise did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out) = fleet_status(docker_config.path(), &host, &json_args);
    assert!(ok, "{out}");
    assert_eq!(server_status(&out), Some(("exited".into(), false)), "{out}");
    let (ok, out) = fleet_status(docker_config.path(), &host, &["--expect-converged"]);
    assert!(!ok, "converged with no live server: {out}");
}
