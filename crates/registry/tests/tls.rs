//! HTTPS with rustls from PEM files: skopeo pushes and lists tags, trusting the CA; and the
//! limits on client connections, over HTTP and HTTPS.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use gantry_registry::{ServeError, TlsConfig};
use gantry_test_support::{
    assert_success, command, output_with_timeout, require_tool, stall_connections, tempdir,
    write_busybox_oci_layout,
};

/// A self-signed certificate for 127.0.0.1 (and its key) made with openssl.
fn self_signed(dir: &Path) -> TlsConfig {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = output_with_timeout(
        &mut command(
            require_tool("openssl"),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        ),
        Duration::from_secs(60),
    );
    assert_success("openssl req -x509", &out);
    TlsConfig { cert, key }
}

fn skopeo(args: &[&str]) -> std::process::Output {
    output_with_timeout(
        &mut command(require_tool("skopeo"), args),
        Duration::from_secs(300),
    )
}

#[test]
fn https_push_and_list_with_skopeo() {
    let certs = tempdir();
    let tls = self_signed(certs.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reg = rt.block_on(TestRegistry::with_config(|c| c.tls = Some(tls.clone())));
    let url = reg.server.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    // skopeo trusts the CA from a certs directory (`*.crt` files).
    let cert_dir = tempdir();
    std::fs::copy(&tls.cert, cert_dir.path().join("ca.crt")).unwrap();
    let cert_dir = cert_dir.path().to_str().unwrap().to_string();

    let layout = tempdir();
    write_busybox_oci_layout(layout.path(), "latest");
    let repo = format!("docker://{}/tls/busybox", reg.host());
    let out = skopeo(&[
        "copy",
        "--dest-cert-dir",
        &cert_dir,
        &format!("oci:{}:latest", layout.path().display()),
        &format!("{repo}:v1"),
    ]);
    assert_success("skopeo copy over https", &out);
    let out = skopeo(&["list-tags", "--cert-dir", &cert_dir, &repo]);
    assert_success("skopeo list-tags over https", &out);
    let tags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
    // Without the CA the certificate is refused.
    let out = skopeo(&["list-tags", &repo]);
    assert!(!out.status.success(), "an unknown CA must be refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(reg.server.shutdown()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_are_clear_errors() {
    let dir = tempdir();
    let mut config = test_config(dir.path());
    config.tls = Some(TlsConfig {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing.key"),
    });
    let err = gantry_registry::bind(&config)
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, ServeError::Tls(_)), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    config.tls = Some(TlsConfig {
        cert: dir.path().join("junk.pem"),
        key: dir.path().join("junk.pem"),
    });
    let err = gantry_registry::bind(&config)
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("junk.pem"), "{err}");
}

/// Finding: a connection that never finished its headers (or a TLS handshake, or an
/// upload body) was kept for ever, and a few hundred of them exhausted the registry's
/// file descriptors. Now at most `max_connections` are held, headers and handshakes must
/// come within `header_timeout`, a body must keep moving within `idle_timeout`, and the
/// registry serves others once the stalled ones are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_capped_and_dropped_on_http_and_https() {
    const CAP: usize = 8;
    let limits = gantry_registry::ConnectionLimits {
        max_connections: CAP,
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
    };
    let reg = TestRegistry::with_config(|c| c.connections = limits.clone()).await;
    let open = reg.registry().metrics().open_connections();
    let addr = reg.server.addr();

    // Headers that never end: three rounds of CAP, a round per header timeout.
    let (most, _) = stall_connections(
        addr,
        3 * CAP,
        b"GET /v2/ HTTP/1.1\r\nhost: x\r\n",
        || open.get(),
        Duration::from_secs(15),
    )
    .await;
    assert!(most <= CAP, "{most} connections held, the cap is {CAP}");

    // An upload whose body stops after a few bytes.
    let r = client()
        .post(reg.url("/v2/stall/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let patch = format!(
        "PATCH {location} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\nonly-this"
    );
    let (_, took) = stall_connections(
        addr,
        1,
        patch.as_bytes(),
        || open.get(),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        took >= Duration::from_secs(1),
        "closed before the idle timeout: {took:?}"
    );

    // The registry answers again.
    let r = client().get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    reg.server.shutdown().await.unwrap();

    // TLS: connections that never send a ClientHello.
    let certs = tempdir();
    let tls = self_signed(certs.path());
    let reg = TestRegistry::with_config(|c| {
        c.tls = Some(tls.clone());
        c.connections = limits.clone();
    })
    .await;
    let open = reg.registry().metrics().open_connections();
    let (most, _) = stall_connections(
        reg.server.addr(),
        2 * CAP,
        b"",
        || open.get(),
        Duration::from_secs(12),
    )
    .await;
    assert!(most <= CAP, "{most} TLS connections held, the cap is {CAP}");
    reg.server.shutdown().await.unwrap();
}
