//! `apply` without a cluster: no real kube-apiserver runs on this machine (see README,
//! `gantry deploy`), so these tests cover what can be checked honestly: a missing
//! kubeconfig, an API server that is not listening (the error names its URL, over HTTPS, so
//! rustls' crypto provider is selected without a panic), and — with HTTP stubs that are not
//! API servers, named so — that apply reaches the HTTP layer as a server-side apply PATCH and
//! that the rollout loop reads Deployments, Fleets, GameServers and pods the way an API
//! server serves them and stops only when every pod (every Ready GameServer) runs the digest.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_deploy::render::{self, GameSpec};
use gantry_deploy::{Cluster, DeployError, DeployImage, KubeTarget};
use gantry_test_support::{free_port, tempdir, HttpStub};

fn kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: test\n  cluster:\n    server: {server}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: games\n\
             users:\n- name: test\n  user:\n    token: not-a-real-token\n"
        ),
    )
    .unwrap();
    path
}

fn deployment() -> gantry_deploy::Manifest {
    let image = DeployImage::parse(&format!(
        "registry.example.com/studio/game:v2@sha256:{}",
        "ab".repeat(32)
    ))
    .unwrap();
    let mut spec = GameSpec::new("game", image);
    spec.namespace = "games".into();
    render::deployment(&spec).unwrap()
}

#[tokio::test]
async fn missing_kubeconfig_is_named() {
    let dir = tempdir();
    let target = KubeTarget {
        kubeconfig: Some(dir.path().join("absent")),
        context: None,
    };
    let err = Cluster::connect(&target).await.err().expect("must fail");
    assert!(matches!(err, DeployError::Kubeconfig { .. }), "{err}");
    assert!(err.to_string().contains("absent"), "{err}");
}

#[tokio::test]
async fn unknown_context_is_refused() {
    let dir = tempdir();
    let target = KubeTarget {
        kubeconfig: Some(kubeconfig(dir.path(), "https://127.0.0.1:1")),
        context: Some("elsewhere".into()),
    };
    let err = Cluster::connect(&target).await.err().expect("must fail");
    assert!(err.to_string().contains("elsewhere"), "{err}");
}

#[tokio::test]
async fn unreachable_api_server_is_named() {
    let dir = tempdir();
    let port = free_port();
    let server = format!("https://127.0.0.1:{port}");
    let target = KubeTarget {
        kubeconfig: Some(kubeconfig(dir.path(), &server)),
        context: None,
    };
    let cluster = Cluster::connect(&target).await.unwrap();
    assert_eq!(cluster.default_namespace(), "games");
    let err = cluster.apply(&deployment()).await.unwrap_err();
    assert!(matches!(err, DeployError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("Deployment games/game"), "{text}");
}

/// Not an API server: an HTTP stub that answers 403 with a Kubernetes Status body, to show
/// the apply is a real HTTP request of the right shape.
#[tokio::test]
async fn apply_reaches_http_as_server_side_apply() {
    let stub = HttpStub::start(|_| {
        (
            403,
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"deployments.apps \"game\" is forbidden: User \"test\" cannot patch resource","reason":"Forbidden","code":403}"#
                .into(),
        )
    });
    let dir = tempdir();
    let cluster = connect_to(&stub, dir.path()).await;
    let err = cluster.apply(&deployment()).await.unwrap_err();
    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.method, "PATCH");
    assert!(
        request
            .path
            .starts_with("/apis/apps/v1/namespaces/games/deployments/game?"),
        "{request:?}"
    );
    assert!(request.path.contains("fieldManager=gantry"), "{request:?}");
    assert!(request.path.contains("force=true"), "{request:?}");
    assert_eq!(
        request.header("content-type"),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        request.header("authorization"),
        Some("Bearer not-a-real-token")
    );
    assert!(
        request.text().contains(&format!(
            "registry.example.com/studio/game@sha256:{}",
            "ab".repeat(32)
        )),
        "{request:?}"
    );
    assert!(
        matches!(err, DeployError::Forbidden { code: 403, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", stub.port)) && text.contains("forbidden"),
        "{text}"
    );
}

const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn new_digest() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

/// A PodList JSON of `(pod name, image digest or "" when not started)`.
fn pod_list(pods: &[(&str, &str)]) -> String {
    let items: Vec<serde_json::Value> = pods
        .iter()
        .map(|(name, digest)| {
            let statuses = if digest.is_empty() {
                serde_json::json!([])
            } else {
                serde_json::json!([{
                    "name": "game",
                    "image": "registry.example.com/studio/game:v2",
                    "imageID": format!("registry.example.com/studio/game@{digest}"),
                    "ready": true,
                    "restartCount": 0
                }])
            };
            serde_json::json!({
                "metadata": {"name": name, "namespace": "games"},
                "status": {"containerStatuses": statuses}
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        .to_string()
}

/// A Deployment as the API server reports it mid-rollout or done.
fn deployment_status(
    generation: i64,
    observed: i64,
    total: i32,
    updated: i32,
    ready: i32,
) -> String {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "game", "namespace": "games", "generation": generation},
        "spec": {"replicas": 2, "selector": {}, "template": {}},
        "status": {
            "observedGeneration": observed, "replicas": total,
            "updatedReplicas": updated, "readyReplicas": ready
        }
    })
    .to_string()
}

fn connect_to(stub: &HttpStub, dir: &Path) -> impl std::future::Future<Output = Cluster> {
    let target = KubeTarget {
        kubeconfig: Some(kubeconfig(dir, &stub.url())),
        context: None,
    };
    async move { Cluster::connect(&target).await.unwrap() }
}

/// Not an API server: an HTTP stub answering the requests `apply` and the rollout loop make,
/// with the Deployment moving from mid-rollout (an old pod still up) to done. The loop must
/// keep polling through the intermediate states and stop only when every pod runs the
/// pinned digest.
#[tokio::test]
async fn rollout_against_a_stub_api_server_waits_for_every_pod_on_the_digest() {
    let polls = Arc::new(AtomicUsize::new(0));
    let seen = polls.clone();
    let stub = HttpStub::start(move |req| {
        let new = new_digest();
        if req.method == "PATCH" {
            return (200, deployment_status(2, 1, 2, 0, 2));
        }
        if req
            .path
            .starts_with("/apis/apps/v1/namespaces/games/deployments/game")
        {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            return match n {
                0 => (200, deployment_status(2, 1, 2, 0, 2)),
                1 => (200, deployment_status(2, 2, 3, 1, 2)),
                _ => (200, deployment_status(2, 2, 2, 2, 2)),
            };
        }
        if req.path.starts_with("/api/v1/namespaces/games/pods?") {
            return match polls_seen(&seen) {
                0 | 1 => (200, pod_list(&[("game-a", OLD), ("game-b", OLD)])),
                2 => (
                    200,
                    pod_list(&[("game-a", OLD), ("game-c", &new), ("game-d", "")]),
                ),
                _ => (200, pod_list(&[("game-c", &new), ("game-d", &new)])),
            };
        }
        (404, r#"{"kind":"Status","code":404}"#.into())
    });
    let dir = tempdir();
    let cluster = connect_to(&stub, dir.path()).await;
    let manifest = deployment();
    cluster.apply(&manifest).await.unwrap();
    let progress = Mutex::new(Vec::new());
    let report = cluster
        .rollout(
            &manifest,
            Some(&new_digest()),
            Duration::from_secs(60),
            &|line: &str| progress.lock().unwrap().push(line.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(report.desired, 2);
    assert_eq!(report.ready, 2);
    assert_eq!(
        report.pods_by_digest,
        std::collections::BTreeMap::from([(new_digest(), 2)])
    );
    assert!(polls.load(Ordering::SeqCst) >= 3);
    let progress = progress.into_inner().unwrap();
    assert!(progress.len() >= 3, "{progress:?}");
    assert!(
        progress.iter().any(|l| l.contains("(not running)")),
        "{progress:?}"
    );
    assert!(progress
        .iter()
        .all(|l| l.starts_with("Deployment games/game: ")));
    let requests = stub.requests();
    assert!(requests[0].method == "PATCH", "{:?}", requests[0]);
    assert!(requests.iter().any(|r| r
        .path
        .contains("labelSelector=app.kubernetes.io%2Fname%3Dgame")));
}

fn polls_seen(polls: &AtomicUsize) -> usize {
    // The pod list is read after the Deployment in each poll: the Deployment's count is
    // already one ahead.
    polls.load(Ordering::SeqCst).saturating_sub(1)
}

/// The stub's pods never all reach the digest: the rollout times out and the error says how
/// many pods run which digest.
#[tokio::test]
async fn rollout_that_never_converges_times_out_naming_the_digests() {
    let stub = HttpStub::start(move |req| {
        if req
            .path
            .starts_with("/apis/apps/v1/namespaces/games/deployments/game")
        {
            return (200, deployment_status(2, 2, 2, 2, 2));
        }
        if req.path.starts_with("/api/v1/namespaces/games/pods?") {
            return (200, pod_list(&[("game-a", OLD), ("game-c", &new_digest())]));
        }
        (404, r#"{"kind":"Status","code":404}"#.into())
    });
    let dir = tempdir();
    let cluster = connect_to(&stub, dir.path()).await;
    let err = cluster
        .rollout(
            &deployment(),
            Some(&new_digest()),
            Duration::from_secs(3),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::Timeout { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("Deployment games/game"), "{text}");
    assert!(text.contains(OLD) && text.contains(&new_digest()), "{text}");
}

/// A GameServer list as Agones reports it: `(name, state)`.
fn game_servers(servers: &[(&str, &str)]) -> String {
    let items: Vec<serde_json::Value> = servers
        .iter()
        .map(|(name, state)| {
            serde_json::json!({
                "apiVersion": "agones.dev/v1", "kind": "GameServer",
                "metadata": {"name": name, "namespace": "games"},
                "status": {"state": state}
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "agones.dev/v1", "kind": "GameServerList", "metadata": {}, "items": items})
        .to_string()
}

/// Not Agones: an HTTP stub standing in for the API server with Agones' CRDs. A Ready
/// GameServer on the old digest holds the rollout; an Allocated one (a match in progress,
/// which Agones never replaces) does not.
#[tokio::test]
async fn fleet_rollout_against_a_stub_waits_for_ready_servers_not_allocated_ones() {
    let polls = Arc::new(AtomicUsize::new(0));
    let seen = polls.clone();
    let stub = HttpStub::start(move |req| {
        let new = new_digest();
        if req
            .path
            .starts_with("/apis/agones.dev/v1/namespaces/games/fleets/game")
        {
            seen.fetch_add(1, Ordering::SeqCst);
            return (
                200,
                serde_json::json!({
                    "apiVersion": "agones.dev/v1", "kind": "Fleet",
                    "metadata": {"name": "game", "namespace": "games"},
                    "spec": {"replicas": 3}
                })
                .to_string(),
            );
        }
        let first = seen.load(Ordering::SeqCst) <= 1;
        if req
            .path
            .starts_with("/apis/agones.dev/v1/namespaces/games/gameservers?")
        {
            return if first {
                (
                    200,
                    game_servers(&[
                        ("gs-old-1", "Ready"),
                        ("gs-old-2", "Allocated"),
                        ("gs-new-1", "Ready"),
                        ("gs-new-2", "Scheduled"),
                    ]),
                )
            } else {
                (
                    200,
                    game_servers(&[
                        ("gs-old-2", "Allocated"),
                        ("gs-new-1", "Ready"),
                        ("gs-new-2", "Ready"),
                    ]),
                )
            };
        }
        if req.path.starts_with("/api/v1/namespaces/games/pods?") {
            return (
                200,
                pod_list(&[
                    ("gs-old-1", OLD),
                    ("gs-old-2", OLD),
                    ("gs-new-1", &new),
                    ("gs-new-2", &new),
                ]),
            );
        }
        (404, r#"{"kind":"Status","code":404}"#.into())
    });
    let image = DeployImage::parse(&format!(
        "registry.example.com/studio/game:v2@{}",
        new_digest()
    ))
    .unwrap();
    let mut spec = GameSpec::new("game", image);
    spec.namespace = "games".into();
    let fleet = render::fleet(&spec, &render::FleetOptions::default()).unwrap();
    let dir = tempdir();
    let cluster = connect_to(&stub, dir.path()).await;
    let report = cluster
        .rollout(
            &fleet,
            Some(&new_digest()),
            Duration::from_secs(60),
            &|_| {},
        )
        .await
        .unwrap();
    assert!(polls.load(Ordering::SeqCst) >= 2, "done on the first poll");
    assert_eq!(report.desired, 3);
    assert_eq!(report.ready, 3);
    assert_eq!(report.pods_by_digest.get(OLD), Some(&1));
    assert_eq!(report.pods_by_digest.get(&new_digest()), Some(&2));
}
