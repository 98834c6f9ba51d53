//! `gantry serve` on the S3 backend (`[storage] kind = "s3"`) against a real S3-compatible
//! server (moto): skopeo push and pull, and two replicas sharing one bucket.

mod common;

use std::time::Duration;

use common::*;
use gantry_oci::Digest;
use gantry_registry::config::StorageConfig;
use gantry_registry::storage::S3Config;
use gantry_test_support::{
    assert_success, command, output_with_timeout, require_tool, tempdir, write_busybox_oci_layout,
    MotoServer, MOTO_ACCESS_KEY_ID, MOTO_REGION, MOTO_SECRET_ACCESS_KEY,
};
use reqwest::StatusCode;
use serde_json::Value;

const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn moto_with_bucket(bucket: &str) -> MotoServer {
    let moto = MotoServer::start();
    moto.create_bucket(bucket);
    moto
}

fn s3_storage(moto: &MotoServer, bucket: &str) -> StorageConfig {
    StorageConfig::S3(S3Config {
        bucket: bucket.to_string(),
        endpoint: Some(moto.endpoint()),
        region: Some(MOTO_REGION.to_string()),
        access_key_id: Some(MOTO_ACCESS_KEY_ID.to_string()),
        secret_access_key: Some(MOTO_SECRET_ACCESS_KEY.to_string()),
        session_token: None,
        allow_http: true,
        prefix: "registry".to_string(),
    })
}

/// A registry whose storage is the bucket (its temp dir stays empty).
async fn start_on(moto: &MotoServer, bucket: &str) -> TestRegistry {
    let storage = s3_storage(moto, bucket);
    TestRegistry::with_config(move |c| c.storage = storage).await
}

/// Fetches `repo:tag` through the API and checks the manifest and every blob it
/// references against their digests. Returns the manifest digest.
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
    let bytes = r.bytes().await.unwrap();
    let digest = Digest::of(&bytes);
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
    }
    digest
}

fn skopeo(args: &[&str]) -> std::process::Output {
    let out = output_with_timeout(&mut command(require_tool("skopeo"), args), TOOL_TIMEOUT);
    assert_success(format!("skopeo {args:?}"), &out);
    out
}

/// Pulls `src` into a fresh OCI layout with skopeo (which verifies every digest) and
/// returns the digest of the manifest it stored.
fn skopeo_pull(src: &str) -> String {
    let pulled = tempdir();
    let dest = format!("oci:{}:pulled", pulled.path().display());
    skopeo(&["copy", "--src-tls-verify=false", src, &dest]);
    let out = skopeo(&["inspect", "--raw", &dest]);
    Digest::of(&out.stdout).to_string()
}

#[test]
fn skopeo_push_and_pull_on_the_s3_backend() {
    let rt = runtime();
    let moto = moto_with_bucket("gantry");
    let reg = rt.block_on(start_on(&moto, "gantry"));
    let layout = tempdir();
    let img = write_busybox_oci_layout(layout.path(), "latest");
    let host = reg.host();
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.path().display()),
        &format!("docker://{host}/games/busybox:v1"),
    ]);
    let pushed = rt.block_on(verify_image(&reg, "games/busybox", "v1"));
    assert_eq!(pushed.to_string(), img.manifest_digest);
    assert_eq!(
        skopeo_pull(&format!("docker://{host}/games/busybox:v1")),
        img.manifest_digest
    );
    // Nothing went to the local directory: it is all in the bucket.
    assert_eq!(std::fs::read_dir(reg.root()).unwrap().count(), 0);
    let storage = reg.registry().storage().clone();
    let repos = rt.block_on(storage.list_repositories()).unwrap();
    assert_eq!(repos, ["games/busybox"]);
    rt.block_on(reg.server.shutdown()).unwrap();
}

#[test]
fn two_replicas_on_one_bucket_see_each_others_pushes() {
    let rt = runtime();
    let moto = moto_with_bucket("shared");
    let a = rt.block_on(start_on(&moto, "shared"));
    let b = rt.block_on(start_on(&moto, "shared"));

    // skopeo pushes to A, pulls from B.
    let layout = tempdir();
    let img = write_busybox_oci_layout(layout.path(), "latest");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.path().display()),
        &format!("docker://{}/fleet/server:v1", a.host()),
    ]);
    assert_eq!(
        skopeo_pull(&format!("docker://{}/fleet/server:v1", b.host())),
        img.manifest_digest
    );

    rt.block_on(async {
        // An image pushed through B shows up in A's tags and catalog.
        let layer = bytes(1, 300_000);
        let (digest, _) = b.push_image("other/app", "v7", &[&layer]).await;
        assert_eq!(verify_image(&a, "other/app", "v7").await, digest);
        let r = a
            .client
            .get(a.url("/v2/other/app/tags/list"))
            .send()
            .await
            .unwrap();
        assert_eq!(json_of(r).await["tags"], serde_json::json!(["v7"]));
        let r = a.client.get(a.url("/v2/_catalog")).send().await.unwrap();
        assert_eq!(
            json_of(r).await["repositories"],
            serde_json::json!(["fleet/server", "other/app"])
        );

        // A chunked upload started on A is resumed and finished on B.
        let data = bytes(2, 100_000);
        let d = Digest::of(&data);
        let r = a
            .client
            .post(a.url("/v2/other/app/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let r = a
            .client
            .patch(a.url(&location))
            .header("content-type", "application/octet-stream")
            .header("content-range", "0-59999")
            .body(data[..60_000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let r = b.client.get(b.url(&location)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "B sees A's session");
        assert_eq!(r.headers()["range"], "0-59999");
        let r = b
            .client
            .patch(b.url(&location))
            .header("content-type", "application/octet-stream")
            .header("content-range", "60000-99999")
            .body(data[60_000..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = b
            .client
            .put(b.url(&format!("{location}{sep}digest={d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        let got = a
            .client
            .get(a.url(&format!("/v2/other/app/blobs/{d}")))
            .header("range", "bytes=99990-99999")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(got.bytes().await.unwrap(), &data[99_990..]);

        // A delete through A is seen by B.
        let r = a
            .client
            .delete(a.url(&format!("/v2/other/app/manifests/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let r = b
            .client
            .get(b.url("/v2/other/app/manifests/v7"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    });
    rt.block_on(a.server.shutdown()).unwrap();
    rt.block_on(b.server.shutdown()).unwrap();
}

#[test]
fn unreachable_bucket_fails_at_start() {
    let rt = runtime();
    let moto = MotoServer::start();
    let storage = s3_storage(&moto, "no-such-bucket");
    let dir = tempdir();
    let mut config = test_config(dir.path());
    config.storage = storage;
    let err = rt
        .block_on(gantry_registry::bind(&config))
        .err()
        .expect("a missing bucket must fail");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
}

#[test]
fn upload_session_limits_hold_on_the_s3_backend() {
    let rt = runtime();
    let moto = moto_with_bucket("limits");
    rt.block_on(async {
        let storage = s3_storage(&moto, "limits");
        let reg = TestRegistry::with_config(move |c| {
            c.storage = storage;
            small_session_limits(c);
        })
        .await;
        check_upload_session_limits(&reg).await;
    });
}
