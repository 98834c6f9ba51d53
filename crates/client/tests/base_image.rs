//! `[base] image = "…"` in gantry.toml: the builder resolves the reference through the
//! client against a real `gantry serve`, reuses the base layers unchanged, records the
//! base's reference and digest, and a push to the same registry mounts those layers
//! instead of sending them.

mod common;

use std::sync::Arc;

use common::*;
use gantry_client::{push_layout, BlobOutcome, NoProgress, OciLayout, PushOptions};
use gantry_oci::{media_types, Reference};
use gantry_test_support::write_busybox_oci_layout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_image_from_a_registry_is_pulled_recorded_and_mounted_on_push() {
    let dir = gantry_test_support::tempdir();
    let serve = Serve::open().await;
    let host = serve.host();
    let c = client(&host, None);

    // The base: busybox, pushed to the registry by the client.
    let busybox = dir.path().join("busybox");
    let bb = write_busybox_oci_layout(&busybox, "1");
    let base_ref: Reference = format!("{host}/base/busybox:1").parse().unwrap();
    let base = push_layout(
        &c,
        &OciLayout::open(&busybox).unwrap(),
        Some("1"),
        &base_ref,
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();

    // A game built on it.
    let game = dir.path().join("game");
    std::fs::create_dir_all(game.join("app")).unwrap();
    std::fs::write(game.join("app/server.cfg"), b"port=7777\n").unwrap();
    std::fs::write(
        game.join("gantry.toml"),
        format!(
            r#"[image]
name = "game"
tag = "v1"

[base]
image = "http://{host}/base/busybox:1"

[config]
entrypoint = ["/bin/sh"]

[[layers]]
name = "app"
[[layers.sources]]
dir = "app"
dest = "/app"
"#
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let opts = gantry_build::BuildOptions {
        context: game.clone(),
        spec_file: None,
        output: dir.path().join("out"),
        cache_dir: Some(cache.clone()),
        source_date_epoch: 0,
        threads: 2,
        tag: None,
        registry: Default::default(),
    };
    // Called straight from async code (this worker blocks; the registry runs on the
    // other): the pull of the base must not block on a second runtime inside this one.
    let built = gantry_build::build(&opts, &gantry_build::NoProgress).unwrap();
    assert_eq!(built.base_digest, Some(base.manifest_digest));
    let image = OciLayout::open(&built.layout)
        .unwrap()
        .resolve(None, "linux", "amd64")
        .unwrap();
    let ann = image.manifest.annotations().clone().unwrap();
    assert_eq!(
        ann[media_types::ANNOTATION_BASE_NAME],
        format!("{host}/base/busybox:1")
    );
    assert_eq!(
        ann[media_types::ANNOTATION_BASE_DIGEST],
        base.manifest_digest.to_string()
    );
    assert_eq!(
        image.manifest.layers()[0].digest().to_string(),
        bb.layer_digest,
        "the base layer is reused byte for byte"
    );

    // Pushed to another repository of the same registry, the base layer is mounted.
    let dest: Reference = format!("{host}/game/server:v1").parse().unwrap();
    let report = push_layout(
        &c,
        &OciLayout::open(&built.layout).unwrap(),
        None,
        &dest,
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let base_layer = report
        .blobs
        .iter()
        .find(|b| b.digest.to_string() == bb.layer_digest)
        .unwrap();
    assert_eq!(base_layer.outcome, BlobOutcome::Mounted);
    assert_eq!(base_layer.bytes_sent, 0);

    // A rebuild with the base pinned by digest needs no registry at all.
    drop(serve);
    std::fs::write(
        game.join("gantry.toml"),
        std::fs::read_to_string(game.join("gantry.toml"))
            .unwrap()
            .replace(
                "busybox:1\"",
                &format!("busybox:1@{}\"", base.manifest_digest),
            ),
    )
    .unwrap();
    let opts = gantry_build::BuildOptions {
        context: game.clone(),
        spec_file: None,
        output: dir.path().join("out2"),
        cache_dir: Some(cache),
        source_date_epoch: 0,
        threads: 2,
        tag: None,
        registry: Default::default(),
    };
    let rebuilt =
        tokio::task::spawn_blocking(move || gantry_build::build(&opts, &gantry_build::NoProgress))
            .await
            .unwrap()
            .expect("a base pinned by digest is served from the build cache");
    assert_eq!(rebuilt.base_digest, Some(base.manifest_digest));
}
