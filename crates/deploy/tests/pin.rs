//! `--digest-pin` against a real `gantry serve` holding a pushed image: the tag resolves to
//! the registry's manifest digest, and the rendered pod runs `repo@digest`.

use std::sync::Arc;

use gantry_client::{push_layout, NoProgress, OciLayout, PushOptions};
use gantry_deploy::render::{self, GameSpec, Manifest};
use gantry_deploy::{pin_image, DeployImage};
use gantry_oci::Reference;
use gantry_test_support::{registry_client, tempdir, write_busybox_oci_layout, GantryServe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_pin_gives_the_registry_digest() {
    let serve = GantryServe::open().await;
    let host = serve.host();
    let layout = tempdir();
    let image = write_busybox_oci_layout(layout.path(), "latest");
    let client = registry_client(&host, None);
    let dest: Reference = format!("{host}/studio/game:v1").parse().unwrap();
    push_layout(
        &client,
        &OciLayout::open(layout.path()).unwrap(),
        None,
        &dest,
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();

    let parsed = DeployImage::parse(&format!("http://{host}/studio/game:v1")).unwrap();
    assert!(!parsed.is_pinned());
    let pinned = pin_image(&client, parsed).await.unwrap();
    assert_eq!(
        pinned.digest.map(|d| d.to_string()).as_deref(),
        Some(image.manifest_digest.as_str())
    );

    let m = render::deployment(&GameSpec::new("game", pinned)).unwrap();
    let Manifest::Deployment(d) = &m else {
        panic!()
    };
    let c = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(format!("{host}/studio/game@{}", image.manifest_digest).as_str())
    );
    let yaml = render::to_yaml(std::slice::from_ref(&m)).unwrap();
    assert!(
        yaml.contains(&format!("value: {host}/studio/game:v1")),
        "{yaml}"
    );
    assert_eq!(
        m.pinned_digest().as_deref(),
        Some(image.manifest_digest.as_str())
    );

    // A tag the registry lacks is an error naming it.
    let missing = DeployImage::parse(&format!("{host}/studio/game:v9")).unwrap();
    let err = pin_image(&client, missing).await.unwrap_err().to_string();
    assert!(err.contains("studio/game:v9"), "{err}");

    // A reference with a digest is pinned without a request (the registry is gone).
    drop(serve);
    let by_digest =
        DeployImage::parse(&format!("{host}/studio/game:v1@{}", image.manifest_digest)).unwrap();
    let kept = pin_image(&client, by_digest.clone()).await.unwrap();
    assert_eq!(kept, by_digest);
}
