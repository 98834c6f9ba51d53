//! `apply` without a cluster: no real kube-apiserver runs on this machine (see README,
//! `gantry deploy`), so these tests cover what can be checked honestly: a missing
//! kubeconfig, an API server that is not listening (the error names its URL, over HTTPS, so
//! rustls' crypto provider is selected without a panic), and — with a TCP socket that
//! records one request and answers 403, not an API server — that apply reaches the HTTP
//! layer as a server-side apply PATCH.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use gantry_deploy::render::{self, GameSpec};
use gantry_deploy::{Cluster, DeployError, DeployImage, KubeTarget};
use gantry_test_support::{free_port, tempdir};

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

/// Not an API server: a socket that records the first request and answers 403 with a
/// Kubernetes Status body, to show the apply is a real HTTP request of the right shape.
#[tokio::test]
async fn apply_reaches_http_as_server_side_apply() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        // Headers, then the body by Content-Length.
        loop {
            let n = conn.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let l = l.to_ascii_lowercase();
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len || n == 0 {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"deployments.apps \"game\" is forbidden: User \"test\" cannot patch resource","reason":"Forbidden","code":403}"#;
        let resp = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(resp.as_bytes()).unwrap();
        String::from_utf8_lossy(&buf).to_string()
    });
    let dir = tempdir();
    let server = format!("http://{addr}");
    let cluster = Cluster::connect(&KubeTarget {
        kubeconfig: Some(kubeconfig(dir.path(), &server)),
        context: None,
    })
    .await
    .unwrap();
    let err = cluster.apply(&deployment()).await.unwrap_err();
    let request = recorder.join().unwrap();
    let first = request.lines().next().unwrap_or("");
    assert!(
        first.starts_with("PATCH /apis/apps/v1/namespaces/games/deployments/game?"),
        "{request}"
    );
    assert!(first.contains("fieldManager=gantry"), "{first}");
    assert!(first.contains("force=true"), "{first}");
    let lower = request.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/apply-patch+yaml"),
        "{request}"
    );
    assert!(
        lower.contains("authorization: bearer not-a-real-token"),
        "{request}"
    );
    assert!(
        request.contains(&format!(
            "registry.example.com/studio/game@sha256:{}",
            "ab".repeat(32)
        )),
        "{request}"
    );
    assert!(
        matches!(err, DeployError::Forbidden { code: 403, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("forbidden"),
        "{text}"
    );
}
