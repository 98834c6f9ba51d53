//! Real registry clients against `gantry serve`: skopeo (push, pull, registry-to-registry
//! copy), buildah push, and containerd pulling and running the image.

mod common;

use std::time::Duration;

use common::*;
use gantry_oci::Digest;
use gantry_test_support::{
    assert_success, command, output_with_timeout, require_tool, tempdir, write_busybox_oci_layout,
    BusyboxImage, Containerd,
};
use serde_json::Value;

const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Fetches `repo:tag` through the API and checks that the manifest and every blob it
/// references are served and hash to their digests. Returns the manifest digest.
async fn verify_image(reg: &TestRegistry, repo: &str, tag: &str) -> Digest {
    let r = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "manifest {repo}:{tag}");
    let digest: Digest = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(Digest::of(&bytes), digest);
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    let mut blobs = vec![m["config"].clone()];
    blobs.extend(m["layers"].as_array().unwrap().iter().cloned());
    for b in blobs {
        let d: Digest = b["digest"].as_str().unwrap().parse().unwrap();
        let data = reg
            .client
            .get(reg.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(Digest::of(&data), d, "blob of {repo}:{tag}");
        assert_eq!(data.len() as u64, b["size"].as_u64().unwrap());
    }
    digest
}

fn skopeo_push(layout: &std::path::Path, dest: &str) {
    let src = format!("oci:{}:latest", layout.display());
    let out = output_with_timeout(
        &mut command(
            require_tool("skopeo"),
            &["copy", "--dest-tls-verify=false", &src, dest],
        ),
        TOOL_TIMEOUT,
    );
    assert_success(format!("skopeo copy {src} {dest}"), &out);
}

fn busybox_layout() -> (tempfile::TempDir, BusyboxImage) {
    let layout = tempdir();
    let img = write_busybox_oci_layout(layout.path(), "latest");
    (layout, img)
}

#[test]
fn skopeo_push_pull_and_copy_between_repositories() {
    let rt = runtime();
    let reg = rt.block_on(TestRegistry::start());
    let (layout, img) = busybox_layout();
    let host = reg.host();
    skopeo_push(layout.path(), &format!("docker://{host}/test/busybox:v1"));
    let pushed = rt.block_on(verify_image(&reg, "test/busybox", "v1"));
    assert_eq!(
        pushed.to_string(),
        img.manifest_digest,
        "manifest stored byte for byte"
    );

    // Pull back into a fresh layout: skopeo verifies every digest.
    let pulled = tempdir();
    let dest = format!("oci:{}:v1", pulled.path().display());
    let out = output_with_timeout(
        &mut command(
            require_tool("skopeo"),
            &[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{host}/test/busybox:v1"),
                &dest,
            ],
        ),
        TOOL_TIMEOUT,
    );
    assert_success("skopeo copy from the registry", &out);
    let out = output_with_timeout(
        &mut command(require_tool("skopeo"), &["inspect", "--raw", &dest]),
        TOOL_TIMEOUT,
    );
    assert_success("skopeo inspect --raw", &out);
    assert_eq!(Digest::of(&out.stdout).to_string(), img.manifest_digest);

    // Registry to registry, another repository of the same registry (skopeo mounts or
    // re-uploads; either way the image must arrive intact).
    let out = output_with_timeout(
        &mut command(
            require_tool("skopeo"),
            &[
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &format!("docker://{host}/test/busybox:v1"),
                &format!("docker://{host}/copies/busybox:v2"),
            ],
        ),
        TOOL_TIMEOUT,
    );
    assert_success("skopeo copy between repositories", &out);
    let copied = rt.block_on(verify_image(&reg, "copies/busybox", "v2"));
    assert_eq!(copied, pushed);

    // skopeo lists tags through the tags API.
    let out = output_with_timeout(
        &mut command(
            require_tool("skopeo"),
            &[
                "list-tags",
                "--tls-verify=false",
                &format!("docker://{host}/test/busybox"),
            ],
        ),
        TOOL_TIMEOUT,
    );
    assert_success("skopeo list-tags", &out);
    let tags: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
    // skopeo delete uses DELETE by digest.
    let out = output_with_timeout(
        &mut command(
            require_tool("skopeo"),
            &[
                "delete",
                "--tls-verify=false",
                &format!("docker://{host}/copies/busybox:v2"),
            ],
        ),
        TOOL_TIMEOUT,
    );
    assert_success("skopeo delete", &out);
    let status = rt.block_on(async {
        reg.client
            .get(reg.url("/v2/copies/busybox/manifests/v2"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 404);
}

#[test]
fn buildah_push() {
    let rt = runtime();
    let reg = rt.block_on(TestRegistry::start());
    // buildah names an image pulled from `oci:PATH` after PATH, which must be lowercase.
    let parent =
        std::path::Path::new("/tmp").join(format!("gantry-buildah-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let store = tempfile::Builder::new()
        .prefix("store")
        .rand_bytes(0)
        .tempdir_in(&parent)
        .unwrap();
    let layout = store.path().join("layout");
    write_busybox_oci_layout(&layout, "latest");
    let buildah = require_tool("buildah");
    let root = store.path().join("root");
    let runroot = store.path().join("runroot");
    let base_args = |rest: &[&str]| -> Vec<String> {
        let mut v = vec![
            "--root".to_string(),
            root.display().to_string(),
            "--runroot".to_string(),
            runroot.display().to_string(),
            "--storage-driver".to_string(),
            "vfs".to_string(),
        ];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let src = format!("oci:{}:latest", layout.display());
    let out = output_with_timeout(
        &mut command(&buildah, &base_args(&["pull", "--quiet", &src])),
        TOOL_TIMEOUT,
    );
    assert_success("buildah pull", &out);
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(!id.is_empty(), "buildah pull printed no image id");
    let dest = format!("docker://{}/buildah/busybox:v1", reg.host());
    let out = output_with_timeout(
        &mut command(
            &buildah,
            &base_args(&["push", "--tls-verify=false", &id, &dest]),
        ),
        TOOL_TIMEOUT,
    );
    assert_success("buildah push", &out);
    rt.block_on(verify_image(&reg, "buildah/busybox", "v1"));
    // Clean buildah's vfs storage (layers are plain directories; some are read-only).
    let _ = output_with_timeout(
        &mut command(&buildah, &base_args(&["rmi", "--all", "--force"])),
        TOOL_TIMEOUT,
    );
    drop(store);
    let _ = std::fs::remove_dir(parent);
}

#[test]
fn containerd_pulls_and_runs_the_image() {
    let rt = runtime();
    let reg = rt.block_on(TestRegistry::start());
    let (layout, img) = busybox_layout();
    let host = reg.host();
    let reference = format!("{host}/game/busybox:v1");
    skopeo_push(layout.path(), &format!("docker://{reference}"));

    let ctd = Containerd::start();
    let out = ctd.pull(&reference, None, true, None);
    assert_success("ctr images pull --plain-http", &out);
    assert_eq!(ctd.image_digest(&reference), img.manifest_digest);
    let out = ctd.run_sh(&reference, &[], "echo hello-from-gantry-registry");
    assert_success("ctr run", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-gantry-registry\n"
    );
    // The egress metric counted containerd's download.
    let text = rt.block_on(async {
        reg.client
            .get(reg.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let sent: u64 = text
        .lines()
        .find(|l| {
            l.starts_with("gantry_registry_bytes_sent_total{repository=\"game/busybox\",client=\"127.0.0.1\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no egress series in:\n{text}"));
    assert!(sent > 100_000, "sent {sent} bytes");
}
