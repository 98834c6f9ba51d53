//! `gantry gc` against storage written by a real `gantry serve`: refused while the server
//! runs, then a dry run and a real run that remove only the unreferenced blob.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use gantry_oci::Digest;
use gantry_test_support::{free_port, output_with_timeout, tempdir, wait_for_tcp};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(120);

fn gantry(args: &[&str]) -> Output {
    output_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gantry")).args(args),
        TIMEOUT,
    )
}

/// One HTTP/1.1 request; returns the status and the response head.
fn request(addr: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

/// Pushes a blob with a single POST.
fn push_blob(addr: &str, repo: &str, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let (status, text) = request(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        "application/octet-stream",
        data,
    );
    assert_eq!(status, 201, "{text}");
    d
}

fn blob_path(root: &Path, d: &Digest) -> std::path::PathBuf {
    let hex = d.hex();
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gc_refuses_while_serving_then_removes_only_unreferenced_blobs() {
    let dir = tempdir();
    let root = dir.path().join("registry");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("gantry.toml");
    std::fs::write(
        &config,
        format!(
            "addr = \"{addr}\"\nroot = \"{}\"\n[gc]\ngrace_period = \"0s\"\n",
            root.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();

    // No storage there yet: refused, and nothing is created.
    let out = gantry(&["gc", "--config", cfg]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no registry storage"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.exists());

    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--config", cfg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_tcp(addr.as_str(), TIMEOUT);
    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = vec![7u8; 4096];
    let dc = push_blob(&addr, "game/server", config_blob);
    let dl = push_blob(&addr, "game/server", &layer);
    let garbage = vec![9u8; 1000];
    let dg = push_blob(&addr, "game/server", &garbage);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": dc.to_string(), "size": config_blob.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": dl.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let (status, text) = request(
        &addr,
        "PUT",
        "/v2/game/server/manifests/v1",
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    assert_eq!(status, 201, "{text}");
    let dm = Digest::of(&manifest);

    // The server holds the storage.
    let out = gantry(&["gc", "--config", cfg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use") && err.contains("gantry serve"),
        "{err}"
    );
    assert!(blob_path(&root, &dg).is_file());
    drop(server);

    // Dry run: reported, not removed.
    let out = gantry(&["gc", "--config", cfg, "--dry-run", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["deleted"], 1);
    assert_eq!(report["deleted_bytes"], 1000);
    assert_eq!(report["deleted_digests"], json!([dg.to_string()]));
    assert_eq!(report["referenced"], 3);
    assert_eq!(report["manifests"], 1);
    assert!(blob_path(&root, &dg).is_file());

    // The real run, with --root overriding the config's.
    let other = tempdir();
    std::fs::write(
        other.path().join("gc.toml"),
        "root = \"/nonexistent\"\n[gc]\ngrace_period = \"0s\"\n",
    )
    .unwrap();
    let out = gantry(&[
        "gc",
        "--config",
        other.path().join("gc.toml").to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("removed {dg}")), "{text}");
    assert!(text.contains("removed 1 blob (1.0 KB) of 4"), "{text}");
    assert!(!blob_path(&root, &dg).exists());
    for kept in [dc, dl, dm] {
        assert!(blob_path(&root, &kept).is_file(), "{kept} kept");
    }

    // Nothing left to do.
    let out = gantry(&["gc", "--root", root.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["deleted"], 0);
    assert_eq!(report["dry_run"], false);
}
