//! Helpers shared by the registry's integration tests: a server on a free port over a temp
//! dir, and a small OCI client on reqwest.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use gantry_oci::{media_types, Digest};
use gantry_registry::{Config, Registry, RunningServer};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

/// A registry on 127.0.0.1:<free port> over a temporary directory.
pub struct TestRegistry {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

pub fn test_config(dir: &Path) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        root: dir.to_path_buf(),
        ..Config::default()
    }
}

impl TestRegistry {
    pub async fn start() -> Self {
        Self::with_config(|_| {}).await
    }

    pub async fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gantry-registry-test-")
            .tempdir()
            .unwrap();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let server = gantry_registry::bind(&config).await.unwrap();
        TestRegistry {
            server,
            dir,
            client: client(),
        }
    }

    pub async fn with_registry(registry: Registry, dir: tempfile::TempDir) -> Self {
        let config = test_config(dir.path());
        let server = gantry_registry::server::bind_registry(&config, Arc::new(registry))
            .await
            .unwrap();
        TestRegistry {
            server,
            dir,
            client: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// The `/metrics` page (OpenMetrics text).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        self.server.registry()
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        push_blob(&self.client, &self.server.url(), repo, data).await
    }

    /// Pushes a config and layers, then a manifest tagged `tag`; returns the manifest
    /// digest and bytes.
    pub async fn push_image(&self, repo: &str, tag: &str, layers: &[&[u8]]) -> (Digest, Vec<u8>) {
        push_image(&self.client, &self.server.url(), repo, tag, layers).await
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": Digest::of(data).to_string(),
        "size": data.len(),
    })
}

/// An OCI image manifest over a config and layers.
pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": descriptor(media_types::OCI_CONFIG, config),
        "layers": layers.iter().map(|l| descriptor(media_types::OCI_LAYER_GZIP, l)).collect::<Vec<_>>(),
    }))
    .unwrap()
}

pub async fn push_blob(client: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "POST upload");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = client
        .put(format!("{base}{location}?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "PUT upload: {:?}",
        r.text().await
    );
    digest
}

pub async fn push_image(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    layers: &[&[u8]],
) -> (Digest, Vec<u8>) {
    let config =
        format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"tag\":\"{repo}:{tag}\"}}");
    push_blob(client, base, repo, config.as_bytes()).await;
    for l in layers {
        push_blob(client, base, repo, l).await;
    }
    let manifest = image_manifest(config.as_bytes(), layers);
    let r = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", media_types::OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "PUT manifest: {:?}",
        r.text().await
    );
    (Digest::of(&manifest), manifest)
}

/// Status and first error code of an error response.
pub async fn error_of(r: Response) -> (StatusCode, String) {
    let status = r.status();
    let body = json_of(r).await;
    let code = body["errors"][0]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

/// The JSON body of a response (reqwest is built without its `json` feature).
pub async fn json_of(r: Response) -> Value {
    let bytes = r.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sets a blob file's modification time `secs` seconds into the past.
pub fn age_blob(root: &Path, digest: &Digest, secs: u64) {
    let hex = digest.hex();
    let path = root.join("blobs/sha256").join(&hex[..2]).join(&hex);
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .set_modified(t)
        .unwrap();
}

/// Configures the upload session limits [`check_upload_session_limits`] expects: two
/// sessions per repository, three per client, 100,000 bytes held per repository.
pub fn small_session_limits(c: &mut Config) {
    c.uploads.max_sessions_per_repository = 2;
    c.uploads.max_sessions_per_client = 3;
    c.uploads.max_open_bytes_per_repository = 100_000;
}

/// POST of a new upload session.
pub async fn post_upload(reg: &TestRegistry, repo: &str) -> Response {
    reg.client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap()
}

/// Opens an upload session that must be admitted; returns its location.
pub async fn open_upload(reg: &TestRegistry, repo: &str) -> String {
    let r = post_upload(reg, repo).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "POST upload to {repo}");
    r.headers()["location"].to_str().unwrap().to_string()
}

/// Asserts that `r` is a 429 `TOOMANYREQUESTS` with `Retry-After` whose message names
/// every string of `names`.
pub async fn assert_limited(r: Response, names: &[&str]) {
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "expected a 429 naming {names:?}"
    );
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0, "Retry-After {wait}");
    let body = json_of(r).await;
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    for n in names {
        assert!(message.contains(n), "{n:?} not in {message:?}");
    }
}

/// With [`small_session_limits`]: a POST beyond the per-repository and per-client session
/// limits, or while a repository's sessions hold its byte limit, gets 429; an append that
/// would pass the byte limit gets 429 and appends nothing; a completed or cancelled
/// session frees its place.
pub async fn check_upload_session_limits(reg: &TestRegistry) {
    let a = open_upload(reg, "one").await;
    let b = open_upload(reg, "one").await;
    assert_limited(
        post_upload(reg, "one").await,
        &["repository one", "max_sessions_per_repository"],
    )
    .await;
    let c = open_upload(reg, "two").await;
    assert_limited(
        post_upload(reg, "three").await,
        &["client 127.0.0.1", "max_sessions_per_client"],
    )
    .await;
    // A cancelled session frees its client's place.
    let r = reg.client.delete(reg.url(&c)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let d = open_upload(reg, "three").await;
    // A completed one frees its repository's place.
    let data = bytes(1, 1000);
    let r = reg
        .client
        .put(format!(
            "{}{a}?digest={}",
            reg.server.url(),
            Digest::of(&data)
        ))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let _e = open_upload(reg, "one").await;
    assert_limited(
        post_upload(reg, "one").await,
        &["max_sessions_per_repository"],
    )
    .await;
    // Bytes: 60,000 fit, 50,000 more do not (refused whole), 40,000 do; then the
    // repository's sessions hold its limit and a new session is refused.
    let patch = |loc: &str, len: usize| {
        reg.client
            .patch(reg.url(loc))
            .header("content-type", "application/octet-stream")
            .body(bytes(2, len))
            .send()
    };
    let r = patch(&d, 60_000).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_limited(
        patch(&d, 50_000).await.unwrap(),
        &["repository three", "max_open_bytes_per_repository"],
    )
    .await;
    let r = reg.client.get(reg.url(&d)).send().await.unwrap();
    assert_eq!(r.headers()["gantry-upload-offset"], "60000");
    let r = patch(&d, 40_000).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Client places: b, d, e. Free one so that the byte limit is what refuses.
    let r = reg.client.delete(reg.url(&b)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_limited(
        post_upload(reg, "three").await,
        &["repository three", "max_open_bytes_per_repository"],
    )
    .await;
    let r = reg.client.delete(reg.url(&d)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    open_upload(reg, "three").await;
}
