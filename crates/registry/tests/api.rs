//! Every endpoint of the Distribution API, with the spec's error cases, over real HTTP.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use gantry_oci::{media_types, Digest};
use gantry_registry::{
    Access, Action, AuthError, Authorizer, FsStorage, Principal, Registry, RegistryOptions,
};
use reqwest::StatusCode;
use serde_json::json;

fn h<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing: {:?}", r.headers()))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_and_common_headers() {
    let reg = TestRegistry::start().await;
    let r = reg
        .client
        .get(reg.url("/v2/"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(h(&r, "docker-distribution-api-version"), "registry/2.0");
    assert_eq!(h(&r, "x-request-id"), "req-42");
    // The delta-push extension (tests/delta_push.rs).
    assert_eq!(h(&r, "gantry-delta-push"), "v1, v2");
    assert_eq!(json_of(r).await, json!({}));
    // Without a trailing slash, HEAD, and a generated request id.
    let r = reg.client.head(reg.url("/v2")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(h(&r, "x-request-id").len(), 32);
    // Unknown endpoints and methods.
    let r = reg
        .client
        .get(reg.url("/v2/a/nothing/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(h(&r, "docker-distribution-api-version"), "registry/2.0");
    let r = reg.client.get(reg.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reg
        .client
        .post(reg.url("/v2/a/manifests/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED".into())
    );
    let r = reg
        .client
        .get(reg.url("/v2/Bad_Name/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "NAME_INVALID".into())
    );
    let r = reg
        .client
        .get(reg.url("/v2/a/../b/tags/list"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_upload_then_pull_by_digest() {
    let reg = TestRegistry::start().await;
    let data = bytes(1, 300_000);
    let digest = Digest::of(&data);
    let r = reg
        .client
        .post(reg.url("/v2/studio/game/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = h(&r, "location").to_string();
    assert!(
        location.starts_with("/v2/studio/game/blobs/uploads/"),
        "{location}"
    );
    assert_eq!(h(&r, "range"), "0-0");
    assert_eq!(
        location.rsplit('/').next().unwrap(),
        h(&r, "docker-upload-uuid")
    );
    let r = reg
        .client
        .put(reg.url(&format!("{location}?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(h(&r, "location"), format!("/v2/studio/game/blobs/{digest}"));
    assert_eq!(h(&r, "docker-content-digest"), digest.to_string());

    let r = reg
        .client
        .head(reg.url(&format!("/v2/studio/game/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(h(&r, "content-length"), "300000");
    assert_eq!(h(&r, "etag"), format!("\"{digest}\""));
    assert_eq!(h(&r, "accept-ranges"), "bytes");
    assert_eq!(h(&r, "docker-content-digest"), digest.to_string());
    let r = reg
        .client
        .get(reg.url(&format!("/v2/studio/game/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // Conditional GET.
    let r = reg
        .client
        .get(reg.url(&format!("/v2/studio/game/blobs/{digest}")))
        .header("if-none-match", format!("\"{digest}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    // The session is gone.
    let r = reg.client.get(reg.url(&location)).send().await.unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_post_upload_and_digest_mismatch() {
    let reg = TestRegistry::start().await;
    let data = b"single post".to_vec();
    let digest = Digest::of(&data);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/a/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(h(&r, "location"), format!("/v2/a/blobs/{digest}"));
    let wrong = Digest::of(b"other");
    let r = reg
        .client
        .post(reg.url(&format!("/v2/a/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    let r = reg
        .client
        .head(reg.url(&format!("/v2/a/blobs/{wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(reg
        .registry()
        .storage()
        .list_uploads()
        .await
        .unwrap()
        .is_empty());
    let r = reg
        .client
        .post(reg.url("/v2/a/blobs/uploads/?digest=sha256:nothex"))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_with_ranges_status_and_resume() {
    let reg = TestRegistry::start().await;
    let data = bytes(7, 100_000);
    let digest = Digest::of(&data);
    let r = reg
        .client
        .post(reg.url("/v2/c/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = h(&r, "location").to_string();

    let patch = |range: Option<String>, body: Vec<u8>| {
        let mut req = reg.client.patch(reg.url(&loc)).body(body);
        if let Some(range) = range {
            req = req.header("content-range", range);
        }
        req.send()
    };
    let r = patch(Some("0-39999".into()), data[..40_000].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(h(&r, "range"), "0-39999");
    assert_eq!(h(&r, "location"), loc);
    // Out of order: 416 with the current range.
    let r = patch(Some("50000-59999".into()), data[50_000..60_000].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h(&r, "range"), "0-39999");
    assert_eq!(error_of(r).await.1, "BLOB_UPLOAD_INVALID");
    // Overlapping a chunk already received: 416 too.
    let r = patch(Some("0-9".into()), data[..10].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Malformed Content-Range: 416.
    let r = patch(Some("garbage".into()), vec![1]).await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Length disagreeing with the range.
    let r = patch(Some("40000-40009".into()), vec![0; 5]).await.unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "SIZE_INVALID".into())
    );
    // Absurd ranges are refused, not overflowed.
    let r = patch(Some(format!("40000-{}", u64::MAX)), vec![0; 5])
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "SIZE_INVALID".into())
    );
    let r = patch(Some(format!("0-{}", u64::MAX)), vec![0; 5])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = reg
        .client
        .post(reg.url("/v2/c/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let r = reg
        .client
        .patch(reg.url(h(&r, "location")))
        .header("content-range", format!("0-{}", u64::MAX))
        .body(vec![0; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "SIZE_INVALID".into())
    );
    // GET reports the offset.
    let r = reg.client.get(reg.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(h(&r, "range"), "0-39999");
    assert_eq!(h(&r, "location"), loc);
    // A streamed chunk without Content-Range (Docker style) appends at the offset.
    let r = patch(None, data[40_000..90_000].to_vec()).await.unwrap();
    assert_eq!(h(&r, "range"), "0-89999");
    // The final chunk in the closing PUT.
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .header("content-range", "90000-99999")
        .body(data[90_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = reg
        .client
        .get(reg.url(&format!("/v2/c/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), data.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_session_errors_and_cancel() {
    let reg = TestRegistry::start().await;
    let unknown = "/v2/u/blobs/uploads/00000000-0000-4000-8000-000000000000";
    for method in ["GET", "PATCH", "PUT", "DELETE"] {
        let r = reg
            .client
            .request(
                method.parse().unwrap(),
                reg.url(&format!("{unknown}?digest={}", Digest::of(b""))),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(r).await,
            (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into()),
            "{method}"
        );
    }
    let r = reg
        .client
        .get(reg.url("/v2/u/blobs/uploads/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = reg
        .client
        .post(reg.url("/v2/u/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = h(&r, "location").to_string();
    let id = h(&r, "docker-upload-uuid").to_string();
    // Another repository cannot use the session.
    let r = reg
        .client
        .get(reg.url(&format!("/v2/other/blobs/uploads/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Closing PUT without or with a bad digest.
    let r = reg
        .client
        .put(reg.url(&loc))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest=md5:abc")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    // Cancel.
    let r = reg.client.delete(reg.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = reg.client.get(reg.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reg.client.delete(reg.url(&loc)).send().await.unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
    // A wrong digest at the closing PUT ends the session and stores nothing.
    let r = reg
        .client
        .post(reg.url("/v2/u/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = h(&r, "location").to_string();
    let wrong = Digest::of(b"not this");
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={wrong}")))
        .body("this")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    assert!(reg
        .registry()
        .storage()
        .stat_blob(&wrong)
        .await
        .unwrap()
        .is_none());
    let r = reg.client.get(reg.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_answer_413() {
    let reg = TestRegistry::with_config(|c| {
        c.limits.max_blob_bytes = 1000;
        c.limits.max_manifest_bytes = 600;
    })
    .await;
    let r = reg
        .client
        .post(reg.url("/v2/l/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = h(&r, "location").to_string();
    let r = reg
        .client
        .patch(reg.url(&loc))
        .body(vec![0u8; 800])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg
        .client
        .patch(reg.url(&loc))
        .body(vec![0u8; 300])
        .send()
        .await
        .unwrap();
    let (status, code) = error_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID")
    );
    // Streamed without Content-Length, the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![1u8; 150]), Ok(vec![2u8; 150])];
    let r = reg
        .client
        .patch(reg.url(&loc))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = reg.client.get(reg.url(&loc)).send().await.unwrap();
    assert_eq!(
        h(&r, "range"),
        "0-799",
        "refused chunks leave the session as it was"
    );
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/l/blobs/uploads/?digest={}",
            Digest::of(&[0; 2000])
        )))
        .body(vec![0u8; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let big = vec![b' '; 700];
    let r = reg
        .put_manifest("l", "t", media_types::OCI_MANIFEST, &big)
        .await;
    let (status, code) = error_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_per_repository_and_mountable() {
    let reg = TestRegistry::start().await;
    let data = b"layer in a".to_vec();
    let digest = reg.push_blob("team/a", &data).await;
    let r = reg
        .client
        .get(reg.url(&format!("/v2/team/b/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
    // Mount from a repository that does not hold it: a normal upload session starts.
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/team/b/blobs/uploads/?mount={digest}&from=team/c"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(h(&r, "location").contains("/blobs/uploads/"));
    // Mount from the repository that holds it.
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/team/b/blobs/uploads/?mount={digest}&from=team%2Fa"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(h(&r, "location"), format!("/v2/team/b/blobs/{digest}"));
    assert_eq!(h(&r, "docker-content-digest"), digest.to_string());
    let r = reg
        .client
        .get(reg.url(&format!("/v2/team/b/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    let r = reg
        .client
        .post(reg.url("/v2/team/b/blobs/uploads/?mount=sha256:zz&from=team/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    let r = reg
        .client
        .get(reg.url("/v2/team/b/blobs/sha256:1234"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
}

fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary parameter")
        .to_string();
    let delim = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut pos = 0;
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    while let Some(start) = find(text, delim.as_bytes(), pos) {
        let after = start + delim.len();
        if text[after..].starts_with(b"--") {
            break;
        }
        let headers_end = find(text, b"\r\n\r\n", after).unwrap();
        let headers = String::from_utf8_lossy(&text[after..headers_end]).to_string();
        let content_range = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .unwrap()
            .to_string();
        let data_start = headers_end + 4;
        let next = find(text, format!("\r\n{delim}").as_bytes(), data_start).unwrap();
        parts.push((content_range, text[data_start..next].to_vec()));
        pos = next + 2;
    }
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_single_multi_and_unsatisfiable() {
    let reg = TestRegistry::start().await;
    let data = bytes(3, 1_000_000);
    let digest = reg.push_blob("r", &data).await;
    let url = reg.url(&format!("/v2/r/blobs/{digest}"));
    let get = |range: &str| {
        reg.client
            .get(&url)
            .header("range", range.to_string())
            .send()
    };

    let r = get("bytes=100-199").await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(h(&r, "content-range"), "bytes 100-199/1000000");
    assert_eq!(h(&r, "content-length"), "100");
    assert_eq!(h(&r, "etag"), format!("\"{digest}\""));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[100..200]);
    let r = get("bytes=-10").await.unwrap();
    assert_eq!(h(&r, "content-range"), "bytes 999990-999999/1000000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[999_990..]);
    let r = get("bytes=999000-").await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    let r = get("bytes=999999-2000000").await.unwrap();
    assert_eq!(h(&r, "content-range"), "bytes 999999-999999/1000000");

    let r = get("bytes=0-9, 500000-500099,-5").await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let ct = h(&r, "content-type").to_string();
    assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
    let declared: usize = h(&r, "content-length").parse().unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), declared);
    let parts = parse_multipart(&ct, &body);
    assert_eq!(
        parts,
        vec![
            ("bytes 0-9/1000000".to_string(), data[..10].to_vec()),
            (
                "bytes 500000-500099/1000000".to_string(),
                data[500_000..500_100].to_vec()
            ),
            (
                "bytes 999995-999999/1000000".to_string(),
                data[999_995..].to_vec()
            ),
        ]
    );

    let r = get("bytes=1000000-").await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h(&r, "content-range"), "bytes */1000000");
    // A malformed Range is ignored: the whole blob.
    let r = get("bytes=9-1").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ranges_do_not_multiply_what_is_sent() {
    let reg = TestRegistry::start().await;
    let size = 1_000_000usize;
    let data = bytes(4, size);
    let digest = reg.push_blob("r", &data).await;
    let url = reg.url(&format!("/v2/r/blobs/{digest}"));
    let get = |range: String| reg.client.get(&url).header("range", range).send();
    let mut received = 0usize;

    // The whole blob 64 times over: sent once, whole.
    let r = get(format!("bytes={}", ["0-"; 64].join(",")))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.unwrap();
    received += body.len();
    assert_eq!(body.len(), size, "64 overlapping whole-blob ranges");
    assert_eq!(body.as_ref(), data.as_slice());
    // Ranges that overlap into the whole blob.
    let r = get("bytes=0-599999,400000-,-10".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    received += r.bytes().await.unwrap().len();
    // Overlapping parts are merged, in order; disjoint ones kept.
    let r = get("bytes=100-199,0-149,500000-500099,500050-500149,-5".into())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let ct = h(&r, "content-type").to_string();
    let body = r.bytes().await.unwrap();
    received += body.len();
    assert!(body.len() < 200 + 150 + 5 + 3 * 200, "{} bytes", body.len());
    assert_eq!(
        parse_multipart(&ct, &body),
        vec![
            ("bytes 0-199/1000000".to_string(), data[..200].to_vec()),
            (
                "bytes 500000-500149/1000000".to_string(),
                data[500_000..500_150].to_vec()
            ),
            (
                "bytes 999995-999999/1000000".to_string(),
                data[999_995..].to_vec()
            ),
        ]
    );
    // What the metrics count is what was sent (the push's own reads aside).
    let sent = gantry_test_support::metric(&reg.url("/metrics"), "gantry_registry_bytes_sent_total")
        .await as usize;
    assert!(
        sent <= received && received <= 2 * size + 2000,
        "sent {sent} B, received {received} B for a {size} B blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_unknown_uploads_leave_no_lock_behind() {
    let reg = TestRegistry::start().await;
    let digest = Digest::of(b"");
    for i in 0..1000 {
        let url = reg.url(&format!("/v2/r/blobs/uploads/{}", uuid::Uuid::new_v4()));
        let r = reg.client.delete(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "DELETE {i}");
        let r = reg
            .client
            .put(format!("{url}?digest={digest}"))
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "PUT {i}");
        let r = reg
            .client
            .patch(&url)
            .body(vec![1u8; 10])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "PATCH {i}");
    }
    let locks = reg.registry().storage().upload_locks();
    assert_eq!(
        locks, 0,
        "3000 requests on unknown uploads left {locks} locks"
    );
    // Nor does a completed push.
    reg.push_blob("r", b"pushed").await;
    assert_eq!(reg.registry().storage().upload_locks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_by_tag_and_digest_with_validation() {
    let reg = TestRegistry::start().await;
    let layer = bytes(11, 5000);
    let (digest, manifest) = reg.push_image("game/server", "v1", &[&layer]).await;

    for reference in ["v1".to_string(), digest.to_string()] {
        let r = reg
            .client
            .get(reg.url(&format!("/v2/game/server/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(h(&r, "content-type"), media_types::OCI_MANIFEST);
        assert_eq!(h(&r, "docker-content-digest"), digest.to_string());
        assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
        let r = reg
            .client
            .head(reg.url(&format!("/v2/game/server/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(h(&r, "content-length"), manifest.len().to_string());
    }
    // The manifest is also a blob of the repository.
    let r = reg
        .client
        .get(reg.url(&format!("/v2/game/server/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // PUT by digest: must match.
    let r = reg
        .put_manifest(
            "game/server",
            &digest.to_string(),
            media_types::OCI_MANIFEST,
            &manifest,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = reg
        .put_manifest(
            "game/server",
            &Digest::of(b"x").to_string(),
            media_types::OCI_MANIFEST,
            &manifest,
        )
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    // Unknown blobs.
    let missing = image_manifest(b"{}", &[b"not pushed"]);
    let r = reg
        .put_manifest("game/server", "v2", media_types::OCI_MANIFEST, &missing)
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
    );
    // A blob of another repository is not enough.
    let other = reg.push_blob("elsewhere", b"elsewhere layer").await;
    assert_eq!(other, Digest::of(b"elsewhere layer"));
    reg.push_blob("game/server", b"{}").await;
    let cross = image_manifest(b"{}", &[b"elsewhere layer"]);
    let r = reg
        .put_manifest("game/server", "v2", media_types::OCI_MANIFEST, &cross)
        .await;
    assert_eq!(error_of(r).await.1, "MANIFEST_BLOB_UNKNOWN");
    // Wrong size in a descriptor.
    let mut bad_size: serde_json::Value =
        serde_json::from_slice(&image_manifest(b"{}", &[])).unwrap();
    bad_size["config"]["size"] = json!(3);
    let r = reg
        .put_manifest(
            "game/server",
            "v2",
            media_types::OCI_MANIFEST,
            &serde_json::to_vec(&bad_size).unwrap(),
        )
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
    );
    // Invalid JSON, media type, tag.
    let r = reg
        .put_manifest("game/server", "v2", media_types::OCI_MANIFEST, b"{nope")
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
    );
    let r = reg
        .put_manifest("game/server", "v2", media_types::DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(
        error_of(r).await.1,
        "MANIFEST_INVALID",
        "Content-Type disagrees with mediaType"
    );
    let r = reg
        .put_manifest("game/server", "-bad", media_types::OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
    );
    // Unknown manifest, unknown repository.
    let r = reg
        .client
        .get(reg.url("/v2/game/server/manifests/v9"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    let r = reg
        .client
        .get(reg.url(&format!("/v2/game/server/manifests/{}", Digest::of(b"?"))))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    let r = reg
        .client
        .get(reg.url("/v2/no/such/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN".into())
    );
    let r = reg
        .client
        .head(reg.url("/v2/no/such/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_media_types_and_indexes() {
    let reg = TestRegistry::start().await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"docker layer";
    reg.push_blob("d", config).await;
    reg.push_blob("d", layer).await;
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_types::DOCKER_MANIFEST,
        "config": descriptor(media_types::DOCKER_CONFIG, config),
        "layers": [descriptor(media_types::DOCKER_LAYER_GZIP, layer)],
    }))
    .unwrap();
    let r = reg
        .put_manifest("d", "docker", media_types::DOCKER_MANIFEST, &docker)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let child = json!({
        "mediaType": media_types::DOCKER_MANIFEST,
        "digest": Digest::of(&docker).to_string(),
        "size": docker.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
    });
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_types::DOCKER_MANIFEST_LIST,
        "manifests": [child],
    }))
    .unwrap();
    let r = reg
        .put_manifest("d", "list", media_types::DOCKER_MANIFEST_LIST, &list)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = reg
        .client
        .get(reg.url("/v2/d/manifests/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(h(&r, "content-type"), media_types::DOCKER_MANIFEST_LIST);
    // An OCI index whose child is missing.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": [{"mediaType": media_types::OCI_MANIFEST, "digest": Digest::of(b"nope").to_string(), "size": 4}],
    }))
    .unwrap();
    let r = reg
        .put_manifest("d", "index", media_types::OCI_INDEX, &index)
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
    );
    // Schema 1 is refused.
    let r = reg
        .put_manifest(
            "d",
            "old",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion":1,"name":"d","tag":"old","fsLayers":[]}"#,
        )
        .await;
    assert_eq!(error_of(r).await.1, "MANIFEST_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_with_pagination_and_link() {
    let reg = TestRegistry::start().await;
    let (digest, manifest) = reg.push_image("p/q", "a", &[b"l"]).await;
    for tag in ["c", "b", "e", "d"] {
        let r = reg
            .put_manifest("p/q", tag, media_types::OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let _ = digest;
    let r = reg
        .client
        .get(reg.url("/v2/p/q/tags/list"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    assert_eq!(
        json_of(r).await,
        json!({"name": "p/q", "tags": ["a", "b", "c", "d", "e"]})
    );
    let r = reg
        .client
        .get(reg.url("/v2/p/q/tags/list?n=2"))
        .send()
        .await
        .unwrap();
    let link = h(&r, "link").to_string();
    assert_eq!(link, "</v2/p/q/tags/list?n=2&last=b>; rel=\"next\"");
    assert_eq!(json_of(r).await["tags"], json!(["a", "b"]));
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let r = reg.client.get(reg.url(next)).send().await.unwrap();
    assert_eq!(
        h(&r, "link"),
        "</v2/p/q/tags/list?n=2&last=d>; rel=\"next\""
    );
    assert_eq!(json_of(r).await["tags"], json!(["c", "d"]));
    let r = reg
        .client
        .get(reg.url("/v2/p/q/tags/list?n=2&last=d"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    assert_eq!(json_of(r).await["tags"], json!(["e"]));
    let r = reg
        .client
        .get(reg.url("/v2/p/q/tags/list?last=c"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r).await["tags"], json!(["d", "e"]));
    let r = reg
        .client
        .get(reg.url("/v2/p/q/tags/list?n=0"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    assert_eq!(json_of(r).await["tags"], json!([]));
    let r = reg
        .client
        .get(reg.url("/v2/p/q/tags/list?n=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = reg
        .client
        .get(reg.url("/v2/p/unknown/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_api_with_artifact_type_filter() {
    let reg = TestRegistry::start().await;
    let (subject, subject_bytes) = reg.push_image("ref", "v1", &[b"base layer"]).await;
    reg.push_blob("ref", media_types::EMPTY_JSON).await;
    let mut pushed = Vec::new();
    for (i, artifact_type) in [
        "application/vnd.gantry.chunk-index.v1+json",
        "application/x-sbom",
    ]
    .iter()
    .enumerate()
    {
        let payload = format!("payload {i}");
        reg.push_blob("ref", payload.as_bytes()).await;
        let artifact = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor(media_types::OCI_EMPTY, media_types::EMPTY_JSON),
            "layers": [descriptor("application/octet-stream", payload.as_bytes())],
            "subject": descriptor(media_types::OCI_MANIFEST, &subject_bytes),
            "annotations": {"n": i.to_string()},
        }))
        .unwrap();
        let d = Digest::of(&artifact);
        let r = reg
            .put_manifest("ref", &d.to_string(), media_types::OCI_MANIFEST, &artifact)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(h(&r, "oci-subject"), subject.to_string());
        pushed.push((d, artifact.len(), artifact_type.to_string()));
    }
    let r = reg
        .client
        .get(reg.url(&format!("/v2/ref/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(h(&r, "content-type"), media_types::OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let index = json_of(r).await;
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], media_types::OCI_INDEX);
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (d, size, at) in &pushed {
        let entry = listed
            .iter()
            .find(|m| m["digest"] == d.to_string())
            .unwrap();
        assert_eq!(entry["size"], *size);
        assert_eq!(entry["artifactType"], at.as_str());
        assert_eq!(entry["mediaType"], media_types::OCI_MANIFEST);
        assert!(entry["annotations"]["n"].is_string());
    }
    let r = reg
        .client
        .get(reg.url(&format!(
            "/v2/ref/referrers/{subject}?artifactType=application%2Fx-sbom"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(h(&r, "oci-filters-applied"), "artifactType");
    let index = json_of(r).await;
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["artifactType"], "application/x-sbom");
    // A subject without referrers, in an unknown repository too: an empty index, never 404.
    for path in [
        format!("/v2/ref/referrers/{}", Digest::of(b"none")),
        format!("/v2/nobody/referrers/{}", Digest::of(b"none")),
    ] {
        let r = reg.client.get(reg.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(json_of(r).await["manifests"], json!([]));
    }
    let r = reg
        .client
        .get(reg.url("/v2/ref/referrers/sha256:bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    // Deleting a referrer removes it from the list.
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/ref/manifests/{}", pushed[0].0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg
        .client
        .get(reg.url(&format!("/v2/ref/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r).await["manifests"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_of_manifests_tags_and_blobs() {
    let reg = TestRegistry::start().await;
    let (digest, manifest) = reg.push_image("del", "v1", &[b"del layer"]).await;
    reg.put_manifest("del", "v2", media_types::OCI_MANIFEST, &manifest)
        .await;
    reg.put_manifest("del", "keep", media_types::OCI_MANIFEST, &manifest)
        .await;
    // Tag delete.
    let r = reg
        .client
        .delete(reg.url("/v2/del/manifests/keep"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg
        .client
        .get(reg.url("/v2/del/manifests/keep"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reg
        .client
        .get(reg.url("/v2/del/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "other tags stay");
    let r = reg
        .client
        .delete(reg.url("/v2/del/manifests/keep"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    // Manifest delete takes its tags along.
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/del/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for reference in ["v1".to_string(), "v2".to_string(), digest.to_string()] {
        let r = reg
            .client
            .get(reg.url(&format!("/v2/del/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{reference}");
    }
    let r = reg
        .client
        .get(reg.url("/v2/del/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r).await["tags"], json!([]));
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/del/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/nothere/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN".into())
    );
    // Blob delete.
    let layer = Digest::of(b"del layer");
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/del/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg
        .client
        .head(reg.url(&format!("/v2/del/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/del/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_can_be_disabled() {
    let reg = TestRegistry::with_config(|c| c.delete_enabled = false).await;
    let (digest, _) = reg.push_image("nd", "v1", &[b"x"]).await;
    for path in [
        format!("/v2/nd/manifests/{digest}"),
        "/v2/nd/manifests/v1".to_string(),
        format!("/v2/nd/blobs/{}", Digest::of(b"x")),
    ] {
        let r = reg.client.delete(reg.url(&path)).send().await.unwrap();
        assert_eq!(
            error_of(r).await,
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED".into()),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_with_nested_names_and_pagination() {
    let reg = TestRegistry::start().await;
    for repo in ["zeta", "alpha/one", "alpha", "alpha/one/two", "mid"] {
        reg.push_blob(repo, repo.as_bytes()).await;
    }
    let r = reg
        .client
        .get(reg.url("/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(r).await,
        json!({"repositories": ["alpha", "alpha/one", "alpha/one/two", "mid", "zeta"]})
    );
    let r = reg
        .client
        .get(reg.url("/v2/_catalog?n=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        h(&r, "link"),
        "</v2/_catalog?n=2&last=alpha/one>; rel=\"next\""
    );
    assert_eq!(
        json_of(r).await["repositories"],
        json!(["alpha", "alpha/one"])
    );
    let r = reg
        .client
        .get(reg.url("/v2/_catalog?n=2&last=alpha/one"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(r).await["repositories"],
        json!(["alpha/one/two", "mid"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_egress_per_client() {
    let reg = TestRegistry::start().await;
    let data = bytes(5, 12_345);
    let digest = reg.push_blob("m/repo", &data).await;
    for _ in 0..3 {
        let r = reg
            .client
            .get(reg.url(&format!("/v2/m/repo/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    }
    let r = reg
        .client
        .get(reg.url(&format!("/v2/m/repo/blobs/{digest}")))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    r.bytes().await.unwrap();
    let r = reg.client.get(reg.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(h(&r, "content-type").starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    let expect = [
        format!(
            "gantry_registry_bytes_sent_total{{repository=\"m/repo\",client=\"127.0.0.1\"}} {}",
            3 * 12_345 + 100
        ),
        "gantry_registry_bytes_received_total{repository=\"m/repo\"} 12345".to_string(),
        "gantry_registry_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 3".to_string(),
        "gantry_registry_http_requests_total{route=\"blob\",method=\"GET\",status=\"206\"} 1".to_string(),
        "gantry_registry_http_requests_total{route=\"blob_upload\",method=\"PUT\",status=\"201\"} 1".to_string(),
        "gantry_registry_http_request_duration_seconds_count{route=\"blob\",method=\"GET\"} 4".to_string(),
    ];
    for e in expect {
        assert!(text.contains(&e), "missing {e} in:\n{text}");
    }
}

/// Denies push to `locked/*` and pull of `private/*` without a user header.
struct TestAuth;

#[async_trait]
impl Authorizer for TestAuth {
    async fn authorize(
        &self,
        request: &http::request::Parts,
        access: &[Access],
    ) -> Result<Principal, AuthError> {
        let user = request
            .headers
            .get("x-test-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        for a in access {
            if let Access::Repository { name, action } = a {
                if name.starts_with("locked/") && *action == Action::Push {
                    return Err(AuthError::Denied);
                }
                if name.starts_with("private/") && user.is_none() {
                    return Err(AuthError::Unauthorized {
                        challenge: Some(format!(
                            "Bearer realm=\"http://auth.invalid/token\",service=\"gantry\",scope=\"repository:{name}:{}\"",
                            action.as_str()
                        )),
                    });
                }
            }
        }
        Ok(Principal { user })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_hook_guards_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).unwrap();
    let registry = Registry::new(Arc::new(storage), RegistryOptions::default())
        .with_authorizer(Arc::new(TestAuth));
    let reg = TestRegistry::with_registry(registry, dir).await;
    let r = reg
        .client
        .post(reg.url("/v2/locked/x/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (StatusCode::FORBIDDEN, "DENIED".into()));
    let r = reg
        .client
        .get(reg.url("/v2/private/x/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(h(&r, "www-authenticate").contains("scope=\"repository:private/x:pull\""));
    assert_eq!(error_of(r).await.1, "UNAUTHORIZED");
    // With a user: allowed, and egress is counted for the user, not the IP.
    let data = b"private data".to_vec();
    let digest = Digest::of(&data);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/private/x/blobs/uploads/?digest={digest}")))
        .header("x-test-user", "alice")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = reg
        .client
        .get(reg.url(&format!("/v2/private/x/blobs/{digest}")))
        .header("x-test-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // A mount from a repository the caller may not read starts an upload instead.
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/public/blobs/uploads/?mount={digest}&from=private/x"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg
        .client
        .head(reg.url(&format!("/v2/public/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let text = reg.metrics_text().await;
    assert!(
        text.contains(
            "gantry_registry_bytes_sent_total{repository=\"private/x\",client=\"alice\"} 12"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_upload_sessions_are_purged() {
    let reg =
        TestRegistry::with_config(|c| c.uploads.max_age = std::time::Duration::from_millis(300))
            .await;
    let r = reg
        .client
        .post(reg.url("/v2/s/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let stale = h(&r, "location").to_string();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = reg
        .client
        .post(reg.url("/v2/s/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let fresh = h(&r, "location").to_string();
    assert_eq!(reg.registry().purge_uploads().await.unwrap(), 1);
    let r = reg.client.get(reg.url(&stale)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reg.client.get(reg.url(&fresh)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let text = reg.metrics_text().await;
    assert!(
        text.contains("gantry_registry_uploads_purged_total 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_the_same_blob_and_parallel_pushes() {
    let reg = TestRegistry::start().await;
    let base = reg.server.url();
    let data = bytes(99, 200_000);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (client, base, data) = (reg.client.clone(), base.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let repo = format!("par/r{}", i % 4);
            push_blob(&client, &base, &repo, &data).await;
            let own = bytes(1000 + i, 50_000);
            push_image(&client, &base, &repo, &format!("t{i}"), &[&data, &own]).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = reg
        .client
        .get(reg.url("/v2/par/r0/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r).await["tags"].as_array().unwrap().len(), 4);
}

/// Pseudo-random requests built from the API's vocabulary and junk: the server never
/// answers 5xx (a handler panic would too) and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_cause_server_errors() {
    let reg = TestRegistry::start().await;
    let (digest, manifest) = reg.push_image("fz/a", "latest", &[b"fuzz layer"]).await;
    let layer = Digest::of(b"fuzz layer").to_string();
    let words: Vec<String> = vec![
        "v2".into(),
        "_catalog".into(),
        "fz".into(),
        "a".into(),
        "b".into(),
        "manifests".into(),
        "blobs".into(),
        "uploads".into(),
        "tags".into(),
        "list".into(),
        "referrers".into(),
        "latest".into(),
        digest.to_string(),
        layer.clone(),
        "sha256:zz".into(),
        "md5:00".into(),
        "UPPER".into(),
        "".into(),
        "_layers".into(),
        "x".repeat(300),
        "00000000-0000-4000-8000-000000000000".into(),
        "%2F".into(),
        "%00".into(),
        "é".into(),
    ];
    let queries = [
        String::new(),
        format!("?digest={layer}"),
        "?digest=bad".into(),
        format!("?mount={layer}&from=fz/a"),
        "?mount=x&from=..".into(),
        "?n=1&last=a".into(),
        "?n=-1".into(),
        "?n=99999999999999999999999".into(),
        "?artifactType=%FF".into(),
        "?%%%".into(),
    ];
    let methods = [
        "GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "BREW",
    ];
    let header_values = [
        "bytes=0-1",
        "bytes=-1",
        "bytes=5-",
        "bytes=0-0,0-0,0-0",
        "0-0",
        "9-1",
        "bytes=x",
        "",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "\"sha256:zz\"",
        "*",
    ];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for i in 0..600 {
        let depth = 1 + next(6);
        let mut path = String::from("/v2");
        for _ in 0..depth {
            path.push('/');
            path.push_str(&words[next(words.len())]);
        }
        if next(4) == 0 {
            path.push('/');
        }
        let url = format!("{}{}", reg.url(&path), queries[next(queries.len())]);
        let method: reqwest::Method = methods[next(methods.len())].parse().unwrap();
        let mut req = reg.client.request(method.clone(), &url);
        for name in ["range", "content-range", "content-type", "if-none-match"] {
            if next(2) == 0 {
                req = req.header(name, header_values[next(header_values.len())]);
            }
        }
        req = match next(4) {
            0 => req.body(manifest.clone()),
            1 => req.body(bytes(i, next(5000))),
            2 => {
                let mut m = manifest.clone();
                let at = next(m.len());
                m[at] = next(256) as u8;
                req.body(m)
            }
            _ => req,
        };
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        assert!(
            !r.status().is_server_error(),
            "{method} {url} -> {}: {:?}",
            r.status(),
            r.text().await
        );
    }
    let r = reg
        .client
        .get(reg.url("/v2/fz/a/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert!(r.status() == StatusCode::OK || r.status() == StatusCode::NOT_FOUND);
    let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
