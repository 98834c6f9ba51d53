//! Delta push (`docs/delta-push.md`): uploads assembled from ranges of blobs the repository
//! holds plus uploaded bytes, on the filesystem and on S3 (moto), with the refusals the
//! contract lists and the access it needs.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use gantry_oci::Digest;
use gantry_registry::config::StorageConfig;
use gantry_registry::storage::S3Config;
use gantry_registry::{add_user, AccessRule, AuthConfig, TokenAuth};
use gantry_test_support::{MotoServer, MOTO_ACCESS_KEY_ID, MOTO_REGION, MOTO_SECRET_ACCESS_KEY};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const RANGES: &str = "application/vnd.gantry.blob-ranges.v1+json";

fn ranges_body(ranges: &[(Digest, u64, u64)]) -> String {
    json!({
        "ranges": ranges
            .iter()
            .map(|(d, o, l)| json!({"digest": d.to_string(), "offset": o, "length": l}))
            .collect::<Vec<Value>>()
    })
    .to_string()
}

/// Starts an upload; returns its location.
async fn start_upload(client: &Client, base: &str, repo: &str) -> String {
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "POST upload");
    r.headers()["location"].to_str().unwrap().to_string()
}

async fn patch_ranges(
    client: &Client,
    base: &str,
    location: &str,
    offset: Option<u64>,
    body: String,
) -> reqwest::Response {
    let mut rb = client
        .patch(format!("{base}{location}"))
        .header("content-type", RANGES)
        .body(body);
    if let Some(o) = offset {
        rb = rb.header("gantry-upload-offset", o.to_string());
    }
    rb.send().await.unwrap()
}

/// The session's offset, from GET on the upload location.
async fn upload_offset(client: &Client, base: &str, location: &str) -> u64 {
    let r = client
        .get(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    r.headers()["gantry-upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The value of a metric line starting with `prefix` (0 when absent).
async fn metric(reg: &TestRegistry, prefix: &str) -> u64 {
    let text = reg.metrics_text().await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0)
}

/// Two blobs in `repo`, then a blob assembled from ranges of both, new bytes, and more
/// ranges; checks offsets along the way, the stored bytes, and the reuse metric.
async fn assemble_from_two_blobs(reg: &TestRegistry, repo: &str) {
    let base = reg.server.url();
    let c = &reg.client;
    let a = bytes(1, 300_000);
    let b = bytes(2, 120_000);
    let da = reg.push_blob(repo, &a).await;
    let db = reg.push_blob(repo, &b).await;

    let r = c.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(header(&r, "gantry-delta-push"), "v1, v2");

    let reused_before = metric(
        reg,
        &format!("gantry_registry_delta_reused_bytes_total{{repository=\"{repo}\"}}"),
    )
    .await;
    let received_before = metric(
        reg,
        &format!("gantry_registry_bytes_received_total{{repository=\"{repo}\"}}"),
    )
    .await;

    let loc = start_upload(c, &base, repo).await;
    let mut expected = Vec::new();
    // Ranges of both blobs, adjacent ranges of one blob included.
    let first = [(da, 1_000, 5_000), (da, 6_000, 4_000), (db, 0, 3_000)];
    let r = patch_ranges(c, &base, &loc, Some(0), ranges_body(&first)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    assert_eq!(header(&r, "range"), "0-11999");
    assert_eq!(header(&r, "gantry-upload-offset"), "12000");
    assert_eq!(header(&r, "location"), loc);
    assert!(!header(&r, "docker-upload-uuid").is_empty());
    expected.extend_from_slice(&a[1_000..10_000]);
    expected.extend_from_slice(&b[..3_000]);
    assert_eq!(upload_offset(c, &base, &loc).await, 12_000);

    // Ordinary bytes in between.
    let fresh = bytes(3, 7_777);
    let r = c
        .patch(format!("{base}{loc}"))
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("12000-{}", 12_000 + fresh.len() - 1),
        )
        .body(fresh.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    expected.extend_from_slice(&fresh);
    let at = expected.len() as u64;

    // More ranges: the end of a blob, and a whole blob.
    let second = [(da, 299_000, 1_000), (db, 0, 120_000)];
    let r = patch_ranges(c, &base, &loc, Some(at), ranges_body(&second)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    expected.extend_from_slice(&a[299_000..]);
    expected.extend_from_slice(&b);
    assert_eq!(
        header(&r, "gantry-upload-offset"),
        expected.len().to_string()
    );

    let digest = Digest::of(&expected);
    let r = c
        .put(format!("{base}{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    let got = c
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let got = got.bytes().await.unwrap();
    assert!(got[..] == expected[..], "stored bytes differ");

    let reused = 9_000 + 3_000 + 1_000 + 120_000;
    let reused_after = metric(
        reg,
        &format!("gantry_registry_delta_reused_bytes_total{{repository=\"{repo}\"}}"),
    )
    .await;
    assert_eq!(reused_after - reused_before, reused);
    // The received counter has the new bytes and the two small JSON bodies, not the
    // reused ones.
    let received = metric(
        reg,
        &format!("gantry_registry_bytes_received_total{{repository=\"{repo}\"}}"),
    )
    .await
        - received_before;
    assert!(
        received >= fresh.len() as u64 && received < fresh.len() as u64 + 2_000,
        "received {received}"
    );
}

#[tokio::test]
async fn assembles_a_blob_from_ranges_of_two_blobs_and_new_bytes() {
    let reg = TestRegistry::start().await;
    assemble_from_two_blobs(&reg, "game/server").await;
}

#[test]
fn assembles_a_blob_on_the_s3_backend() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("delta");
    let storage = StorageConfig::S3(S3Config {
        bucket: "delta".to_string(),
        endpoint: Some(moto.endpoint()),
        region: Some(MOTO_REGION.to_string()),
        access_key_id: Some(MOTO_ACCESS_KEY_ID.to_string()),
        secret_access_key: Some(MOTO_SECRET_ACCESS_KEY.to_string()),
        session_token: None,
        allow_http: true,
        prefix: "registry".to_string(),
    });
    rt.block_on(async {
        let reg = TestRegistry::with_config(move |c| c.storage = storage).await;
        assemble_from_two_blobs(&reg, "game/server").await;
        // A blob of another repository is refused here too.
        let other = reg.push_blob("other", &bytes(9, 1000)).await;
        let base = reg.server.url();
        let loc = start_upload(&reg.client, &base, "game/server").await;
        let r = patch_ranges(
            &reg.client,
            &base,
            &loc,
            Some(0),
            ranges_body(&[(other, 0, 10)]),
        )
        .await;
        assert_eq!(
            error_of(r).await,
            (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
        );
    });
}

#[tokio::test]
async fn wrong_digest_is_refused_and_stores_nothing() {
    let reg = TestRegistry::start().await;
    let base = reg.server.url();
    let a = bytes(4, 50_000);
    let da = reg.push_blob("r", &a).await;
    let loc = start_upload(&reg.client, &base, "r").await;
    let r = patch_ranges(
        &reg.client,
        &base,
        &loc,
        Some(0),
        ranges_body(&[(da, 10, 20_000)]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let actual = Digest::of(&a[10..20_010]);
    let claimed = Digest::of(b"something else");
    let r = reg
        .client
        .put(format!("{base}{loc}?digest={claimed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    for d in [claimed, actual] {
        let r = reg
            .client
            .head(reg.url(&format!("/v2/r/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{d}");
        let hex = d.hex();
        assert!(!reg
            .root()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .exists());
    }
}

#[tokio::test]
async fn refusals_append_nothing() {
    let reg = TestRegistry::start().await;
    let base = reg.server.url();
    let c = &reg.client;
    let mine = reg.push_blob("mine", &bytes(5, 10_000)).await;
    let theirs = reg.push_blob("theirs", &bytes(6, 10_000)).await;
    let loc = start_upload(c, &base, "mine").await;
    let r = patch_ranges(c, &base, &loc, Some(0), ranges_body(&[(mine, 0, 100)])).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // A blob stored, but linked into another repository only; a good range before it
    // must not be appended either.
    let r = patch_ranges(
        c,
        &base,
        &loc,
        Some(100),
        ranges_body(&[(mine, 0, 10), (theirs, 0, 10)]),
    )
    .await;
    let body = json_of(r).await;
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
    assert_eq!(body["errors"][0]["detail"]["digest"], theirs.to_string());
    // A digest stored nowhere.
    let nowhere = Digest::of(b"never pushed");
    let r = patch_ranges(c, &base, &loc, Some(100), ranges_body(&[(nowhere, 0, 1)])).await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );

    // Ranges outside the blob, including one whose end overflows.
    for (o, l) in [(9_990, 11), (10_001, 0), (1, u64::MAX)] {
        let r = patch_ranges(
            c,
            &base,
            &loc,
            Some(100),
            ranges_body(&[(mine, 0, 10), (mine, o, l)]),
        )
        .await;
        assert_eq!(
            error_of(r).await,
            (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID".into()
            ),
            "{o}+{l}"
        );
    }

    // Wrong offset: 416 with the current offset in Range; a retried request is safe.
    let r = patch_ranges(c, &base, &loc, Some(0), ranges_body(&[(mine, 0, 100)])).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-99");
    assert_eq!(header(&r, "gantry-upload-offset"), "100");
    assert_eq!(error_of(r).await.1, "BLOB_UPLOAD_INVALID");
    let r = patch_ranges(c, &base, &loc, Some(5_000), ranges_body(&[(mine, 0, 1)])).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-99");

    // Missing offset header, and bodies that are not the JSON.
    let r = patch_ranges(c, &base, &loc, None, ranges_body(&[(mine, 0, 1)])).await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID".into())
    );
    for bad in [
        "".to_string(),
        "not json".to_string(),
        "{\"ranges\":{}}".to_string(),
        format!("{{\"ranges\":[{{\"digest\":\"{mine}\",\"offset\":-1,\"length\":1}}]}}"),
        format!("{{\"ranges\":[{{\"digest\":\"{mine}\",\"offset\":0}}]}}"),
        "{\"ranges\":[{\"digest\":\"sha256:00\",\"offset\":0,\"length\":1}]}".to_string(),
    ] {
        let r = patch_ranges(c, &base, &loc, Some(100), bad.clone()).await;
        assert_eq!(
            error_of(r).await,
            (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID".into()),
            "{bad}"
        );
    }
    // Too large a body.
    let huge = format!("{{\"ranges\":[], \"pad\":\"{}\"}}", "x".repeat(1024 * 1024));
    let r = patch_ranges(c, &base, &loc, Some(100), huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing was appended by any of these.
    assert_eq!(upload_offset(c, &base, &loc).await, 100);
    // An unknown session.
    let r = patch_ranges(
        c,
        &base,
        "/v2/mine/blobs/uploads/00000000-0000-4000-8000-000000000000",
        Some(0),
        ranges_body(&[(mine, 0, 1)]),
    )
    .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
    // Mounting the other blob first makes it usable.
    let r = c
        .post(format!(
            "{base}/v2/mine/blobs/uploads/?mount={theirs}&from=theirs"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = patch_ranges(c, &base, &loc, Some(100), ranges_body(&[(theirs, 0, 10)])).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "gantry-upload-offset"), "110");
}

#[tokio::test]
async fn the_blob_size_limit_counts_the_ranges() {
    let reg = TestRegistry::with_config(|c| c.limits.max_blob_bytes = 15_000).await;
    let base = reg.server.url();
    let a = reg.push_blob("r", &bytes(7, 10_000)).await;
    let loc = start_upload(&reg.client, &base, "r").await;
    let r = patch_ranges(
        &reg.client,
        &base,
        &loc,
        Some(0),
        ranges_body(&[(a, 0, 10_000), (a, 0, 6_000)]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(upload_offset(&reg.client, &base, &loc).await, 0);
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap())
        .map(|e| match e.file_type().unwrap().is_dir() {
            true => bytes_under(&e.path()),
            false => e.metadata().unwrap().len(),
        })
        .sum()
}

#[tokio::test]
async fn one_ranges_patch_may_not_append_more_than_the_cap() {
    let reg = TestRegistry::with_config(|c| c.limits.max_ranges_patch_bytes = 1 << 20).await;
    let base = reg.server.url();
    let data = bytes(5, 65_536);
    let a = reg.push_blob("r", &data).await;
    let loc = start_upload(&reg.client, &base, "r").await;
    // 2,000 ranges of 64 KiB: a body of about 220 KB asking for 131 MB.
    let body = ranges_body(&vec![(a, 0, 65_536); 2_000]);
    assert!(body.len() < 250_000, "{}", body.len());
    let r = patch_ranges(&reg.client, &base, &loc, Some(0), body).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let err = json_of(r).await;
    assert_eq!(err["errors"][0]["code"], "SIZE_INVALID", "{err}");
    let message = err["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("131072000 bytes") && message.contains("max_ranges_patch_bytes"),
        "{message}"
    );
    assert_eq!(err["errors"][0]["detail"]["limit"], 1 << 20, "{err}");
    // Nothing was appended: not to the session, not to the disk.
    assert_eq!(upload_offset(&reg.client, &base, &loc).await, 0);
    let on_disk = bytes_under(&reg.root().join("uploads"));
    assert!(on_disk < 4096, "{on_disk} bytes under uploads/");
    // The session stays usable: 16 ranges (the cap exactly) pass, and the blob completes.
    let r = patch_ranges(
        &reg.client,
        &base,
        &loc,
        Some(0),
        ranges_body(&vec![(a, 0, 65_536); 16]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "gantry-upload-offset"), (1u64 << 20).to_string());
    let whole = data.repeat(16);
    let r = reg
        .client
        .put(format!("{base}{loc}?digest={}", Digest::of(&whole)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

fn rule(repository: &str, users: &[&str], actions: &[&str]) -> AccessRule {
    AccessRule {
        repository: repository.into(),
        users: users.iter().map(|s| s.to_string()).collect(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        anonymous_pull: false,
    }
}

fn client_as(user: &str, password: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let basic = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
    headers.insert("authorization", basic.parse().unwrap());
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test]
async fn ranges_need_pull_as_well_as_push() {
    let reg = TestRegistry::with_config(|c| {
        let users = TokenAuth::default_users_path(&c.root);
        add_user(&users, "dropper", "droppw").unwrap();
        add_user(&users, "ci", "cipw").unwrap();
        c.auth = Some(AuthConfig {
            access: vec![
                rule("drop/*", &["dropper"], &["push"]),
                rule("drop/*", &["ci"], &["pull", "push"]),
            ],
            ..AuthConfig::default()
        });
    })
    .await;
    let base = reg.server.url();
    // /v2/ advertises the extension even before login.
    let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&r, "gantry-delta-push"), "v1, v2");

    let ci = client_as("ci", "cipw");
    let dropper = client_as("dropper", "droppw");
    let secret = bytes(8, 5_000);
    let d = push_blob(&ci, &base, "drop/box", &secret).await;

    // The push-only user may upload, but not assemble from what is there.
    let loc = start_upload(&dropper, &base, "drop/box").await;
    let r = patch_ranges(
        &dropper,
        &base,
        &loc,
        Some(0),
        ranges_body(&[(d, 0, 5_000)]),
    )
    .await;
    assert_eq!(error_of(r).await, (StatusCode::FORBIDDEN, "DENIED".into()));
    // Nor with a token that has push only.
    let r = reg
        .client
        .get(format!(
            "{}?service=gantry&scope=repository:drop/box:pull,push",
            reg.url("/token")
        ))
        .header(
            "authorization",
            format!("Basic {}", STANDARD.encode("dropper:droppw")),
        )
        .send()
        .await
        .unwrap();
    let token = json_of(r).await["token"].as_str().unwrap().to_string();
    let r = reg
        .client
        .patch(format!("{base}{loc}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", RANGES)
        .header("gantry-upload-offset", "0")
        .body(ranges_body(&[(d, 0, 5_000)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        header(&r, "www-authenticate").contains("scope=\"repository:drop/box:pull,push\""),
        "{}",
        header(&r, "www-authenticate")
    );
    // Ordinary bytes are still fine for the push-only user.
    let r = dropper
        .patch(format!("{base}{loc}"))
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Nor ask where the repository holds chunks: the chunk lookup needs pull.
    let lookup = |who: &Client| {
        who.post(format!("{base}/v2/drop/box/chunks/lookup"))
            .header(
                "content-type",
                "application/vnd.gantry.chunk-lookup.v1+json",
            )
            .body(format!("{{\"chunks\":[\"{d}\"]}}"))
            .send()
    };
    let r = lookup(&dropper).await.unwrap();
    assert_eq!(error_of(r).await, (StatusCode::FORBIDDEN, "DENIED".into()));
    let r = lookup(&ci).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await, json!({"found": []}));
    // A body that is not a lookup is refused with a reason.
    let r = ci
        .post(format!("{base}/v2/drop/box/chunks/lookup"))
        .body("{\"chunk\":[]}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A user with pull and push may.
    let loc = start_upload(&ci, &base, "drop/box").await;
    let r = patch_ranges(&ci, &base, &loc, Some(0), ranges_body(&[(d, 100, 200)])).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let want = Digest::of(&secret[100..300]);
    let r = ci
        .put(format!("{base}{loc}?digest={want}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}
