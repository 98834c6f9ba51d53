//! HTTPS with rustls from PEM files: skopeo pushes and lists tags, trusting the CA.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use gantry_registry::{ServeError, TlsConfig};
use gantry_test_support::{
    assert_success, command, output_with_timeout, require_tool, tempdir, write_busybox_oci_layout,
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
