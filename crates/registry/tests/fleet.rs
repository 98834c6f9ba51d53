//! The fleet view of a real `gantry serve`: status events from several servers through a
//! rollout (converged or not against the digest the tag points to), out-of-order and
//! repeated events, silent servers becoming `lost`, persistence across a restart, body
//! limits, metrics, and the authentication and access refusals (nothing recorded).

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{client, push_image};
use gantry_registry::{add_report_token, add_user, AccessRule, AuthConfig, Config, TokenAuth};
use gantry_test_support::GantryServe;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn event(host: &str, status: &str, seq: u64, image: &str, digest: &str) -> Value {
    json!({
        "status": status, "type": "gs", "seq": seq, "hostname": host, "node_name": "node-a",
        "public_hostname": "203.0.113.7", "public_port": 7777, "image": image,
        "image_digest": digest, "datetime": "2026-01-31T12:00:00.123Z",
    })
}

async fn post(base: &str, body: &Value, auth: Option<&str>) -> (StatusCode, Value) {
    let mut req = client()
        .post(format!("{base}/gantry/v1/fleet/events"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn view(base: &str, query: &str, auth: Option<&str>) -> (StatusCode, Value) {
    let mut req = client().get(format!("{base}/gantry/v1/fleet{query}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The view of one repository and tag (panics when absent).
fn tag_view<'a>(v: &'a Value, repo: &str, tag: &str) -> &'a Value {
    v["repositories"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["repository"] == repo))
        .and_then(|r| r["tags"].as_array()?.iter().find(|t| t["tag"] == tag))
        .unwrap_or_else(|| panic!("no {repo}:{tag} in {v:#}"))
}

fn server<'a>(t: &'a Value, host: &str) -> &'a Value {
    t["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["hostname"] == host))
        .unwrap_or_else(|| panic!("no server {host} in {t:#}"))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn rollout_converges_when_every_live_server_runs_the_tag_digest() {
    let serve = GantryServe::open().await;
    let base = serve.server.url();
    let image = format!("{}/team/game:v2", serve.host());
    let (d1, _) = push_image(&client(), &base, "team/game", "v2", &[b"layer one"]).await;
    let d1s = d1.to_string();

    for (i, host) in ["gs-0", "gs-1", "gs-2"].iter().enumerate() {
        let (s, body) = post(&base, &event(host, "starting", 0, &image, &d1s), None).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        // A batch: the next two events of the run at once.
        let batch = json!([
            event(host, "ready", 1, &image, &d1s),
            event(host, "unhealthy", 2, &image, &d1s)
        ]);
        let (s, body) = post(&base, &batch, None).await;
        assert_eq!(
            (s, body["recorded"].as_u64()),
            (StatusCode::ACCEPTED, Some(2))
        );
        let (s, _) = post(&base, &event(host, "ready", 3, &image, &d1s), None).await;
        assert_eq!(s, StatusCode::ACCEPTED, "server {i}");
    }
    let (s, v) = view(&base, "", None).await;
    assert_eq!(s, StatusCode::OK);
    let t = tag_view(&v, "team/game", "v2");
    assert_eq!(t["tag_digest"], d1s);
    assert_eq!(t["converged"], true, "{t:#}");
    assert_eq!(t["live"], 3);
    assert_eq!(t["by_status"]["ready"], 3);
    let gs0 = server(t, "gs-0");
    assert_eq!(gs0["public_port"], 7777);
    assert_eq!(gs0["node"], "node-a");
    assert_eq!(gs0["seq"], 3);

    // The tag moves to a new build: nobody runs it yet.
    let (d2, _) = push_image(&client(), &base, "team/game", "v2", &[b"layer two"]).await;
    let d2s = d2.to_string();
    assert_ne!(d1, d2);
    let (_, v) = view(&base, "?image=team/game:v2", None).await;
    let t = tag_view(&v, "team/game", "v2");
    assert_eq!(
        (t["tag_digest"].as_str(), &t["converged"]),
        (Some(d2s.as_str()), &json!(false))
    );
    assert_eq!(t["by_digest"][&d1s], 3);

    // Two servers restart on the new build (a new run: starting, seq 0): still mixed.
    for host in ["gs-0", "gs-1"] {
        post(&base, &event(host, "starting", 0, &image, &d2s), None).await;
        post(&base, &event(host, "ready", 1, &image, &d2s), None).await;
    }
    let (_, v) = view(&base, "?image=team/game", None).await;
    let t = tag_view(&v, "team/game", "v2");
    assert_eq!(t["converged"], false);
    assert_eq!(
        (&t["by_digest"][&d1s], &t["by_digest"][&d2s]),
        (&json!(1), &json!(2))
    );
    assert!(
        serve.metric("gantry_fleet_servers").await >= 3.0,
        "gauge missing"
    );

    // The last old server terminates and exits: exited servers do not count, so converged.
    post(&base, &event("gs-2", "terminating", 4, &image, &d1s), None).await;
    let (_, v) = view(&base, "", None).await;
    assert_eq!(tag_view(&v, "team/game", "v2")["converged"], false);
    post(&base, &event("gs-2", "exited", 5, &image, &d1s), None).await;
    let (_, v) = view(&base, "", None).await;
    let t = tag_view(&v, "team/game", "v2");
    assert_eq!(t["converged"], true, "{t:#}");
    assert_eq!(
        (&t["live"], &t["by_status"]["exited"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(server(t, "gs-2")["status"], "exited");

    // The gauge by digest and status.
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("gantry_fleet_servers{") && l.contains(&d2s))
        .unwrap_or_else(|| panic!("no gauge for {d2s}:\n{text}"));
    assert!(line.contains("repository=\"team/game\"") && line.contains("status=\"ready\""));
    assert!(line.ends_with(" 2"), "{line}");

    // A filter on another image shows nothing of this one.
    let (_, v) = view(&base, "?image=other/game", None).await;
    assert_eq!(v["repositories"], json!([]));
}

#[tokio::test]
async fn late_events_are_ignored_and_heartbeats_refresh() {
    let serve = GantryServe::open().await;
    let base = serve.server.url();
    let image = "reg.example/team/game:v1";
    let d = format!("sha256:{}", "ab".repeat(32));
    post(&base, &event("gs-0", "starting", 0, image, &d), None).await;
    post(&base, &event("gs-0", "terminating", 3, image, &d), None).await;
    // Retries delivered late: older than what is known.
    let (s, body) = post(&base, &event("gs-0", "ready", 1, image, &d), None).await;
    assert_eq!((s, &body["ignored"]), (StatusCode::ACCEPTED, &json!(1)));
    post(&base, &event("gs-0", "unhealthy", 2, image, &d), None).await;
    let (_, v) = view(&base, "", None).await;
    let t = tag_view(&v, "team/game", "v1");
    assert_eq!(server(t, "gs-0")["status"], "terminating");
    // The same seq again is a heartbeat.
    let (_, body) = post(&base, &event("gs-0", "terminating", 3, image, &d), None).await;
    assert_eq!(body["refreshed"], 1);
    // The tag does not exist here: never converged.
    assert_eq!(t["tag_digest"], Value::Null);
    assert_eq!(t["converged"], false);
    // Invalid events are refused as a whole.
    let mut bad = event("gs-1", "ready", 1, image, &d);
    bad["status"] = json!("dancing");
    let (s, _) = post(
        &base,
        &json!([event("gs-1", "ready", 1, image, &d), bad]),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let mut no_image = event("gs-1", "ready", 1, image, &d);
    no_image["image"] = Value::Null;
    assert_eq!(
        post(&base, &no_image, None).await.0,
        StatusCode::BAD_REQUEST
    );
    let (_, v) = view(&base, "", None).await;
    assert_eq!(
        tag_view(&v, "team/game", "v1")["servers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_silent_server_becomes_lost_then_comes_back() {
    let serve = GantryServe::with(|c| c.fleet.stale_after = Duration::from_secs(1)).await;
    let base = serve.server.url();
    let image = format!("{}/team/game:v1", serve.host());
    let (d, _) = push_image(&client(), &base, "team/game", "v1", &[b"l"]).await;
    let d = d.to_string();
    post(&base, &event("gs-0", "ready", 1, &image, &d), None).await;
    let (_, v) = view(&base, "", None).await;
    assert_eq!(tag_view(&v, "team/game", "v1")["converged"], true);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_, v) = view(&base, "", None).await;
    let t = tag_view(&v, "team/game", "v1");
    assert_eq!(server(t, "gs-0")["status"], "lost");
    assert_eq!((&t["live"], &t["converged"]), (&json!(0), &json!(false)));
    // The heartbeat (same event again) brings it back.
    post(&base, &event("gs-0", "ready", 1, &image, &d), None).await;
    let (_, v) = view(&base, "", None).await;
    let t = tag_view(&v, "team/game", "v1");
    assert_eq!(
        (&server(t, "gs-0")["status"], &t["converged"]),
        (&json!("ready"), &json!(true))
    );
}

#[tokio::test]
async fn oversized_bodies_get_413_and_nothing_is_recorded() {
    let serve = GantryServe::with(|c| c.fleet.max_body_bytes = 2048).await;
    let base = serve.server.url();
    let d = format!("sha256:{}", "cd".repeat(32));
    let big: Vec<Value> = (0..40)
        .map(|i| event(&format!("gs-{i}"), "ready", 1, "team/game:v1", &d))
        .collect();
    let (s, _) = post(&base, &json!(big), None).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Also without a Content-Length (chunked body).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(json!(big).to_string().into_bytes())];
    let r = client()
        .post(format!("{base}/gantry/v1/fleet/events"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, v) = view(&base, "", None).await;
    assert_eq!(v["repositories"], json!([]));
}

#[tokio::test]
async fn the_view_survives_a_restart() {
    let dir = gantry_test_support::tempdir();
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        root: dir.path().to_path_buf(),
        ..Config::default()
    };
    let d = format!("sha256:{}", "ef".repeat(32));
    let srv = gantry_registry::bind(&config).await.unwrap();
    post(
        &srv.url(),
        &event("gs-0", "ready", 4, "team/game:v1", &d),
        None,
    )
    .await;
    let state = dir.path().join("fleet/state.json");
    for _ in 0..50 {
        if state.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.shutdown().await.unwrap();
    let srv = gantry_registry::bind(&config).await.unwrap();
    let (_, v) = view(&srv.url(), "", None).await;
    let t = tag_view(&v, "team/game", "v1");
    assert_eq!(
        (&server(t, "gs-0")["seq"], &server(t, "gs-0")["digest"]),
        (&json!(4), &json!(d))
    );
    srv.shutdown().await.unwrap();
}

/// alice may pull and push `team/**` (but not report); report token `fleet-team` may report
/// for `team/**`, `fleet-other` for `other/**`.
async fn with_auth() -> (GantryServe, String, String) {
    let mut secrets = (String::new(), String::new());
    let serve = GantryServe::with(|c| {
        add_user(&TokenAuth::default_users_path(&c.root), "alice", "alicepw").unwrap();
        let tokens = TokenAuth::default_report_tokens_path(&c.root);
        secrets.0 = add_report_token(&tokens, "fleet-team").unwrap();
        secrets.1 = add_report_token(&tokens, "fleet-other").unwrap();
        let rule = |repository: &str, user: &str, actions: &[&str]| AccessRule {
            repository: repository.into(),
            users: vec![user.into()],
            actions: actions.iter().map(|s| s.to_string()).collect(),
            anonymous_pull: false,
        };
        c.auth = Some(AuthConfig {
            access: vec![
                rule("team/**", "alice", &["pull", "push"]),
                rule("team/**", "fleet-team", &["report"]),
                rule("other/**", "fleet-other", &["report"]),
            ],
            ..AuthConfig::default()
        });
    })
    .await;
    (serve, secrets.0, secrets.1)
}

#[tokio::test]
async fn reporting_needs_a_report_token_or_user_allowed_for_the_repository() {
    let (serve, team, other) = with_auth().await;
    let base = serve.server.url();
    let d = format!("sha256:{}", "12".repeat(32));
    let ev = event("gs-0", "ready", 1, "team/game:v1", &d);
    let alice = basic("alice", "alicepw");
    let refusals = [
        (None, StatusCode::UNAUTHORIZED),
        (
            Some("Bearer gantry_rt_wrong".to_string()),
            StatusCode::UNAUTHORIZED,
        ),
        (Some(format!("Bearer {team}x")), StatusCode::UNAUTHORIZED),
        (Some(basic("alice", "wrong")), StatusCode::UNAUTHORIZED),
        (Some(format!("Bearer {other}")), StatusCode::FORBIDDEN),
        // alice may push the image but not report for it.
        (Some(alice.clone()), StatusCode::FORBIDDEN),
    ];
    for (auth, want) in &refusals {
        let (s, body) = post(&base, &ev, auth.as_deref()).await;
        assert_eq!(s, *want, "{auth:?}: {body}");
    }
    // A batch reaching into a repository the token may not report for: all refused.
    let mixed = json!([ev.clone(), event("gs-9", "ready", 1, "other/game:v1", &d)]);
    assert_eq!(
        post(&base, &mixed, Some(&format!("Bearer {team}"))).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, v) = view(&base, "", Some(&alice)).await;
    assert_eq!(
        (s, &v["repositories"]),
        (StatusCode::OK, &json!([])),
        "recorded: {v:#}"
    );

    let (s, _) = post(&base, &ev, Some(&format!("Bearer {team}"))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    post(
        &base,
        &event("gs-9", "ready", 1, "other/game:v1", &d),
        Some(&format!("Bearer {other}")),
    )
    .await;

    // Reading: credentials needed; alice sees team/** only; report tokens cannot read.
    let (s, _) = view(&base, "", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = view(&base, "?image=team/game", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = view(&base, "", Some(&format!("Bearer {team}"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = view(&base, "?image=other/game", Some(&alice)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = view(&base, "", Some(&alice)).await;
    assert_eq!(s, StatusCode::OK);
    let repos: Vec<&str> = v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["repository"].as_str())
        .collect();
    assert_eq!(repos, ["team/game"]);
    let t = tag_view(&v, "team/game", "v1");
    assert_eq!(server(t, "gs-0")["reporter"], "fleet-team");
    let (s, v) = view(&base, "?image=team/game:v1", Some(&alice)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(tag_view(&v, "team/game", "v1")["live"], 1);
}
