//! Garbage collection: what it deletes, what it keeps, and that concurrent pushes never
//! lose a blob to it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gantry_oci::{media_types, Digest};
use gantry_registry::GcOptions;
use reqwest::StatusCode;

async fn status(reg: &TestRegistry, method: &str, path: &str) -> StatusCode {
    reg.client
        .request(method.parse().unwrap(), reg.url(path))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_unreferenced_blobs_and_keeps_referenced_and_recent_ones() {
    let reg = TestRegistry::start().await;
    let shared = bytes(1, 10_000);
    let only_a = bytes(2, 10_000);
    let (a_digest, _) = reg.push_image("g/a", "v1", &[&shared, &only_a]).await;
    let (b_digest, _) = reg.push_image("g/b", "v1", &[&shared]).await;
    let orphan = reg.push_blob("g/a", b"never referenced").await;
    // Deleting A's manifest leaves its own blobs unreferenced.
    assert_eq!(
        status(&reg, "DELETE", &format!("/v2/g/a/manifests/{a_digest}")).await,
        StatusCode::ACCEPTED
    );
    let blobs = reg.registry().storage().list_blobs().await.unwrap();
    for (d, _) in &blobs {
        age_blob(reg.root(), d, 7200);
    }
    let fresh_orphan = reg.push_blob("g/a", b"fresh orphan").await;

    let opts = GcOptions {
        grace_period: Duration::from_secs(3600),
        dry_run: true,
    };
    let dry = reg.registry().collect_garbage(&opts).await.unwrap();
    let a_config = Digest::of(b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"tag\":\"g/a:v1\"}");
    let mut expected = vec![a_digest, orphan, Digest::of(&only_a), a_config];
    expected.sort();
    let mut got = dry.deleted_digests.clone();
    got.sort();
    assert_eq!(got, expected, "{dry:#?}");
    assert_eq!(dry.kept_recent, 1);
    assert_eq!(
        reg.registry().storage().list_blobs().await.unwrap().len(),
        blobs.len() + 1,
        "a dry run deletes nothing"
    );

    let report = reg
        .registry()
        .collect_garbage(&GcOptions {
            dry_run: false,
            ..opts
        })
        .await
        .unwrap();
    assert_eq!(report.deleted, 4, "{report:#?}");
    // The manifest blob was unlinked by the DELETE already.
    assert_eq!(report.links_removed, 3, "{report:#?}");
    assert!(report.deleted_bytes > 10_000);
    assert_eq!(report.manifests, 1);
    for d in &expected {
        assert!(reg
            .registry()
            .storage()
            .stat_blob(d)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            status(&reg, "HEAD", &format!("/v2/g/a/blobs/{d}")).await,
            StatusCode::NOT_FOUND
        );
    }
    // B is whole, the shared layer too (also still readable in g/a, where it is linked).
    for d in [Digest::of(&shared), b_digest] {
        assert_eq!(
            status(&reg, "GET", &format!("/v2/g/b/blobs/{d}")).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        status(
            &reg,
            "HEAD",
            &format!("/v2/g/a/blobs/{}", Digest::of(&shared))
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        status(&reg, "GET", "/v2/g/b/manifests/v1").await,
        StatusCode::OK
    );
    // Within the grace period.
    assert_eq!(
        status(&reg, "HEAD", &format!("/v2/g/a/blobs/{fresh_orphan}")).await,
        StatusCode::OK
    );
    // A blob deleted by GC can be pushed again.
    reg.push_blob("g/a", b"never referenced").await;
    assert_eq!(
        status(&reg, "GET", &format!("/v2/g/a/blobs/{orphan}")).await,
        StatusCode::OK
    );
    let text = reg.metrics_text().await;
    assert!(text.contains("gantry_registry_gc_runs_total 1"), "{text}");
    assert!(
        text.contains("gantry_registry_gc_blobs_deleted_total 4"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_and_referrers_keep_what_they_reference() {
    let reg = TestRegistry::start().await;
    let (child, child_bytes) = reg.push_image("idx", "child", &[b"child layer"]).await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": [descriptor(media_types::OCI_MANIFEST, &child_bytes)],
    }))
    .unwrap();
    let r = reg
        .put_manifest("idx", "multi", media_types::OCI_INDEX, &index)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Untag the child: it stays (manifests are only removed by DELETE), and so do its blobs.
    assert_eq!(
        status(&reg, "DELETE", "/v2/idx/manifests/child").await,
        StatusCode::ACCEPTED
    );
    reg.push_blob("idx", media_types::EMPTY_JSON).await;
    reg.push_blob("idx", b"chunk index").await;
    let artifact = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "artifactType": media_types::CHUNK_INDEX_ARTIFACT,
        "config": descriptor(media_types::OCI_EMPTY, media_types::EMPTY_JSON),
        "layers": [descriptor(media_types::CHUNK_INDEX_BLOB, b"chunk index")],
        "subject": descriptor(media_types::OCI_MANIFEST, &child_bytes),
    }))
    .unwrap();
    let r = reg
        .put_manifest(
            "idx",
            &Digest::of(&artifact).to_string(),
            media_types::OCI_MANIFEST,
            &artifact,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    for (d, _) in reg.registry().storage().list_blobs().await.unwrap() {
        age_blob(reg.root(), &d, 7200);
    }
    let report = reg
        .registry()
        .collect_garbage(&GcOptions {
            grace_period: Duration::from_secs(60),
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!(report.deleted, 0, "{report:#?}");
    assert_eq!(
        status(&reg, "GET", &format!("/v2/idx/manifests/{child}")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &reg,
            "GET",
            &format!("/v2/idx/blobs/{}", Digest::of(b"chunk index"))
        )
        .await,
        StatusCode::OK
    );
}

/// Pushers upload blobs (monolithic and chunked, some slowly), skip blobs that HEAD says
/// exist, and push manifests, while garbage collection runs in a loop with a short grace
/// period over a store full of old unreferenced blobs, some of which the pushers reuse.
/// Every push must succeed, every pushed image must be whole afterwards, and the garbage
/// must be gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_never_lose_blobs_to_gc() {
    let reg = TestRegistry::start().await;
    let base_url = reg.server.url();
    const PUSHERS: u64 = 8;
    const IMAGES: u64 = 12;
    let grace = Duration::from_secs(2);

    // Old unreferenced blobs: garbage, and shared bases the pushers will HEAD and reuse.
    let mut garbage = Vec::new();
    for i in 0..20 {
        garbage.push(reg.push_blob("junk", &bytes(50_000 + i, 4096)).await);
    }
    let base = bytes(7, 64 * 1024);
    for p in 0..PUSHERS {
        reg.push_blob(&format!("c/p{p}"), &base).await;
    }
    for (d, _) in reg.registry().storage().list_blobs().await.unwrap() {
        age_blob(reg.root(), &d, 3600);
    }

    let done = Arc::new(AtomicBool::new(false));
    let gc_runs = Arc::new(AtomicUsize::new(0));
    let gc_task = {
        let (registry, done, gc_runs) = (reg.registry().clone(), done.clone(), gc_runs.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                registry
                    .collect_garbage(&GcOptions {
                        grace_period: grace,
                        dry_run: false,
                    })
                    .await
                    .unwrap();
                gc_runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let (client, url, base) = (reg.client.clone(), base_url.clone(), base.clone());
        pushers.push(tokio::spawn(async move {
            let repo = format!("c/p{p}");
            let mut pushed = Vec::new();
            for i in 0..IMAGES {
                // Like every client: HEAD, and upload only what is missing.
                let base_digest = Digest::of(&base);
                let head = client
                    .head(format!("{url}/v2/{repo}/blobs/{base_digest}"))
                    .send()
                    .await
                    .unwrap();
                if head.status() == StatusCode::NOT_FOUND {
                    push_blob(&client, &url, &repo, &base).await;
                } else {
                    assert_eq!(head.status(), StatusCode::OK);
                }
                let layer = bytes(p * 1000 + i, 20_000 + (i as usize) * 1000);
                // A chunked upload that pauses between chunks.
                let r = client
                    .post(format!("{url}/v2/{repo}/blobs/uploads/"))
                    .send()
                    .await
                    .unwrap();
                let loc = r.headers()["location"].to_str().unwrap().to_string();
                let r = client
                    .patch(format!("{url}{loc}"))
                    .header("content-range", format!("0-{}", 9_999))
                    .body(layer[..10_000].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                tokio::time::sleep(Duration::from_millis(20 + (i % 4) * 30)).await;
                let r = client
                    .put(format!("{url}{loc}?digest={}", Digest::of(&layer)))
                    .body(layer[10_000..].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                let config = format!("{{\"pusher\":{p},\"image\":{i}}}");
                push_blob(&client, &url, &repo, config.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis((i % 3) * 40)).await;
                let manifest = image_manifest(config.as_bytes(), &[&base, &layer]);
                let r = client
                    .put(format!("{url}/v2/{repo}/manifests/t{i}"))
                    .header("content-type", media_types::OCI_MANIFEST)
                    .body(manifest.clone())
                    .send()
                    .await
                    .unwrap();
                let code = r.status();
                assert_eq!(
                    code,
                    StatusCode::CREATED,
                    "manifest push {repo}:t{i} failed: {:?}",
                    r.text().await
                );
                pushed.push((repo.clone(), format!("t{i}"), manifest));
            }
            pushed
        }));
    }
    let mut images = Vec::new();
    for p in pushers {
        images.extend(p.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    gc_task.await.unwrap();
    assert!(
        gc_runs.load(Ordering::SeqCst) >= 3,
        "GC ran {gc_runs:?} times"
    );

    // Once everything is older than the grace period, a final collection removes only garbage.
    for (d, _) in reg.registry().storage().list_blobs().await.unwrap() {
        age_blob(reg.root(), &d, 3600);
    }
    let report = reg
        .registry()
        .collect_garbage(&GcOptions {
            grace_period: grace,
            dry_run: false,
        })
        .await
        .unwrap();
    for d in &garbage {
        assert!(
            reg.registry()
                .storage()
                .stat_blob(d)
                .await
                .unwrap()
                .is_none(),
            "garbage {d} survived: {report:#?}"
        );
    }
    assert_eq!(images.len() as u64, PUSHERS * IMAGES);
    for (repo, tag, manifest) in &images {
        let r = reg
            .client
            .get(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
        let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        for l in m["layers"].as_array().unwrap() {
            blobs.push(l["digest"].as_str().unwrap().to_string());
        }
        for d in blobs {
            let data = reg
                .client
                .get(reg.url(&format!("/v2/{repo}/blobs/{d}")))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(Digest::of(&data).to_string(), d, "{repo}:{tag} blob {d}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_progress_survive_gc() {
    let reg = TestRegistry::start().await;
    let data = bytes(3, 50_000);
    let r = reg
        .client
        .post(reg.url("/v2/u/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    reg.client
        .patch(reg.url(&loc))
        .body(data[..25_000].to_vec())
        .send()
        .await
        .unwrap();
    let report = reg
        .registry()
        .collect_garbage(&GcOptions {
            grace_period: Duration::ZERO,
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!(report.deleted, 0);
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={}", Digest::of(&data))))
        .body(data[25_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[test]
fn offline_gc_refuses_storage_in_use_and_runs_when_free() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reg = rt.block_on(TestRegistry::start());
    let orphan = rt.block_on(reg.push_blob("off", b"offline orphan"));
    age_blob(reg.root(), &orphan, 7200);
    let config = test_config(reg.root());
    let err = gantry_registry::gc_blocking(&config, false).unwrap_err();
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    let TestRegistry { server, dir, .. } = reg;
    rt.block_on(server.shutdown()).unwrap();
    let report = gantry_registry::gc_blocking(&config, false).unwrap();
    assert_eq!(report.deleted_digests, vec![orphan]);
    drop(dir);
}
