//! One registry, spoken to over the OCI Distribution API: authenticated requests with
//! retries, manifests, blob existence, downloads verified against their digest and resumed
//! after a dropped connection, Range reads, uploads (monolithic, chunked and resumable,
//! cross-repository mount, Gantry's delta push), tags and referrers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gantry_oci::{delta_push, media_types, Digest, DigestHasher};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::auth::{repository_scope, Authenticator};
use crate::credentials::{Credential, DockerConfig};
use crate::error::{describe, ClientError, ClientResult};

/// Manifest media types a pull accepts, most specific first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
/// Header by which a registry advertises Gantry's delta push (see `docs/delta-push.md`).
pub use gantry_oci::delta_push::HEADER as DELTA_PUSH_HEADER;
/// Content type of a delta-push ranges request.
pub use gantry_oci::delta_push::RANGES_MEDIA_TYPE as BLOB_RANGES_CONTENT_TYPE;
/// Header carrying the upload offset a delta-push ranges request expects.
pub use gantry_oci::delta_push::UPLOAD_OFFSET_HEADER;
/// Largest manifest accepted (as registries limit them).
pub use gantry_oci::MAX_MANIFEST_BYTES;
/// Blobs up to this size are uploaded in one request.
pub const MONOLITHIC_LIMIT: u64 = 16 * 1024 * 1024;
/// Size of each PATCH of a chunked upload.
pub const UPLOAD_CHUNK: u64 = 32 * 1024 * 1024;
/// Most ranges in one delta-push request (the registry limits the body to 1 MiB).
pub const MAX_RANGES_PER_REQUEST: usize = 4_000;
/// Most bytes one delta-push request asks the registry to copy (`gantry serve` refuses more
/// than `[limits] max_ranges_patch_bytes`, 4 GiB by default, in one request).
pub const MAX_COPY_BYTES_PER_REQUEST: u64 = 1 << 30;

/// How to reach and authenticate to registries.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Plain HTTP instead of HTTPS (only for hosts the user named as insecure).
    pub insecure: bool,
    /// Extra CA certificates (PEM files) trusted besides the system roots.
    pub ca_certs: Vec<PathBuf>,
    /// Credentials to use instead of those stored in Docker's config.
    pub credential: Option<Credential>,
    /// Do not look up stored credentials (anonymous unless `credential` is set).
    pub no_stored_credentials: bool,
    /// Retries after a dropped connection or a 5xx/429 answer (default 4 when 0).
    pub retries: u32,
}

/// What a registry's `/v2/` answer says it supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Gantry's delta push (`Gantry-Delta-Push: v1`).
    pub delta_push: bool,
    /// Its chunk lookup (`Gantry-Delta-Push: v2`): where the repository holds chunks.
    pub chunk_lookup: bool,
}

/// A manifest (or index) as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Its digest (computed from the bytes, checked against the registry's header).
    pub digest: Digest,
    /// Media type (from the document, else the `Content-Type` answer).
    pub media_type: String,
    /// The exact bytes.
    pub bytes: Bytes,
}

/// How an upload started.
#[derive(Debug)]
pub enum UploadStart {
    /// The blob was mounted from another repository; nothing to send.
    Mounted,
    /// An upload session at this location.
    Session(String),
}

/// Blobs of an image source other than a layout or a registry reached over HTTP: a
/// registry's own storage, when `gantry serve` replicates what was pushed to it.
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync {
    /// `len` bytes of blob `digest` from `start`.
    async fn read(&self, digest: &Digest, start: u64, len: u64) -> ClientResult<Bytes>;
    /// A whole blob of at most `max` bytes (a manifest, a chunk index).
    async fn read_small(&self, digest: &Digest, max: u64) -> ClientResult<Bytes>;
    /// What the source is, for error messages.
    fn describe(&self) -> String;
}

/// Where the bytes of an upload come from.
#[derive(Clone)]
pub enum UploadSource<'a> {
    /// A local file (a layout's blob).
    File(PathBuf),
    /// A blob of a registry (the source of a copy), read by range requests: the
    /// destination verifies the finished upload against its digest.
    Remote {
        /// The source registry.
        client: &'a RegistryClient,
        /// Its repository.
        repo: &'a str,
        /// The blob.
        digest: Digest,
    },
    /// A blob of a [`BlobSource`]; the destination verifies the finished upload.
    Source {
        /// Where the blob is read.
        source: &'a dyn BlobSource,
        /// The blob.
        digest: Digest,
    },
}

impl UploadSource<'_> {
    /// `len` bytes from `start`.
    pub async fn read(&self, start: u64, len: u64) -> ClientResult<Bytes> {
        match self {
            UploadSource::File(path) => {
                let mut file = tokio::fs::File::open(path)
                    .await
                    .map_err(ClientError::io(path))?;
                file.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(ClientError::io(path))?;
                let want = usize::try_from(len).map_err(|_| ClientError::Invalid {
                    what: path.display().to_string(),
                    message: format!("{len} bytes do not fit in memory"),
                })?;
                let mut buf = vec![0u8; want];
                file.read_exact(&mut buf)
                    .await
                    .map_err(ClientError::io(path))?;
                Ok(Bytes::from(buf))
            }
            UploadSource::Remote {
                client,
                repo,
                digest,
            } => client.read_range(repo, digest, start, len).await,
            UploadSource::Source { source, digest } => source.read(digest, start, len).await,
        }
    }
}

/// A source range of an existing blob, appended by delta push.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobRange {
    /// The source blob (linked into the destination repository).
    pub digest: Digest,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// One step of a delta upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOp {
    /// Append a range of a blob the registry holds.
    Copy(BlobRange),
    /// Send `len` bytes of the local file from `offset`.
    Send {
        /// First byte in the local file.
        offset: u64,
        /// Length.
        len: u64,
    },
}

/// A connection to one registry host.
pub struct RegistryClient {
    host: String,
    base: String,
    http: reqwest::Client,
    auth: Arc<Authenticator>,
    retries: u32,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl RegistryClient {
    /// A client for `host` (`host[:port]`). Credentials come from `options`, else from
    /// Docker's config (`$DOCKER_CONFIG/config.json`, helpers included).
    pub fn new(host: &str, options: &ClientOptions) -> ClientResult<Self> {
        let credential = match &options.credential {
            Some(c) => Some(c.clone()),
            None if options.no_stored_credentials => None,
            None => DockerConfig::load()?.get(host)?,
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::limited(10))
            .pool_max_idle_per_host(16);
        for path in &options.ca_certs {
            let pem = std::fs::read(path).map_err(ClientError::io(path))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ClientError::Invalid {
                what: path.display().to_string(),
                message: format!("not a PEM certificate: {}", describe(&e)),
            })?;
            builder = builder.tls_certs_merge([cert]);
        }
        let http = builder.build().map_err(|e| ClientError::Http {
            method: "-".into(),
            url: host.into(),
            message: format!("building the HTTP client: {}", describe(&e)),
        })?;
        let scheme = if options.insecure { "http" } else { "https" };
        Ok(RegistryClient {
            host: host.to_string(),
            base: format!("{scheme}://{host}"),
            http,
            auth: Arc::new(Authenticator::new(host, credential)),
            retries: if options.retries == 0 {
                4
            } else {
                options.retries
            },
        })
    }

    /// The registry host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `scheme://host`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Resolves an upload `Location` (absolute, or relative to the registry).
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            self.url(location)
        } else {
            format!("{}/{}", self.base, location)
        }
    }

    /// Sends a request built by `build`, authorising it for `scopes`, answering one auth
    /// challenge, and retrying dropped connections, 5xx and 429 answers with backoff.
    /// Returns whatever status the registry finally answered.
    pub async fn send(
        &self,
        scopes: &[String],
        method: Method,
        url: &str,
        build: &(dyn Fn(RequestBuilder) -> ClientResult<RequestBuilder> + Sync),
    ) -> ClientResult<Response> {
        let mut auth_header = self.auth.header_for(scopes).await;
        let mut answered_challenge = false;
        let mut attempt = 0u32;
        loop {
            let mut req = self.http.request(method.clone(), url);
            if let Some(h) = &auth_header {
                req = req.header("authorization", h);
            }
            let req = build(req)?;
            match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !answered_challenge => {
                    answered_challenge = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match self
                        .auth
                        .respond(&self.http, challenge.as_deref(), scopes)
                        .await?
                    {
                        Some(h) => auth_header = Some(h),
                        None => return Ok(resp),
                    }
                }
                Ok(resp) if retryable(resp.status()) && attempt < self.retries => {
                    let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                    tracing::debug!(%url, status = %resp.status(), ?wait, "retrying");
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if attempt < self.retries && !e.is_builder() => {
                    tracing::debug!(%url, error = %describe(&e), "retrying after a failed request");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(ClientError::Http {
                        method: method.to_string(),
                        url: url.to_string(),
                        message: describe(&e),
                    })
                }
            }
        }
    }

    /// Turns a non-success answer into [`ClientError::Status`], naming `what`.
    pub async fn check(&self, resp: Response, what: &str) -> ClientResult<Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.status_error(resp, what).await)
    }

    async fn status_error(&self, resp: Response, what: &str) -> ClientError {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let detail = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) if !body.errors.is_empty() => {
                let parts: Vec<String> = body
                    .errors
                    .iter()
                    .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
                    .collect();
                format!(" ({})", parts.join("; "))
            }
            _ if !text.trim().is_empty() && text.len() < 300 => format!(" ({})", text.trim()),
            _ => String::new(),
        };
        let hint = match status {
            401 => " — log in with `gantry login` or check the credentials",
            403 => " — the credentials lack access to this repository",
            _ => "",
        };
        ClientError::Status {
            registry: self.host.clone(),
            what: what.to_string(),
            status,
            detail: format!("{detail}{hint}"),
        }
    }

    /// `GET /v2/`: checks the registry answers (authenticating when it asks) and reports
    /// its capabilities.
    pub async fn ping(&self) -> ClientResult<Capabilities> {
        let url = self.url("/v2/");
        let resp = self.send(&[], Method::GET, &url, &Ok).await?;
        let resp = self.check(resp, "GET /v2/").await?;
        let advertised = resp
            .headers()
            .get(DELTA_PUSH_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Ok(Capabilities {
            delta_push: delta_push::speaks(advertised, delta_push::V1),
            chunk_lookup: delta_push::speaks(advertised, delta_push::V2),
        })
    }

    /// Where `repo` holds each of `chunks` it has (delta push v2's chunk lookup, in
    /// batches of at most [`delta_push::MAX_LOOKUP_CHUNKS`]): chunk id → range of a blob
    /// linked into `repo`. Chunks it lacks are absent from the map.
    pub async fn lookup_chunks(
        &self,
        repo: &str,
        chunks: &[Digest],
    ) -> ClientResult<HashMap<Digest, BlobRange>> {
        let url = self.url(&format!("/v2/{repo}{}", delta_push::LOOKUP_PATH_SUFFIX));
        let scopes = [repository_scope(repo, &["pull"])];
        let what = format!("chunk lookup in {repo}");
        let mut out = HashMap::new();
        for batch in chunks.chunks(delta_push::MAX_LOOKUP_CHUNKS) {
            let body = serde_json::to_vec(&delta_push::ChunkLookup {
                chunks: batch.to_vec(),
            })
            .map_err(|e| ClientError::Invalid {
                what: what.clone(),
                message: e.to_string(),
            })?;
            let body = Bytes::from(body);
            let build = move |r: RequestBuilder| {
                Ok(r.header(CONTENT_TYPE, delta_push::LOOKUP_MEDIA_TYPE)
                    .body(body.clone()))
            };
            let resp = self.send(&scopes, Method::POST, &url, &build).await?;
            let resp = self.check(resp, &what).await?;
            let bytes = read_limited(resp, 32 << 20, &what, &url).await?;
            let answer: delta_push::ChunkLookupAnswer =
                serde_json::from_slice(&bytes).map_err(|e| ClientError::Invalid {
                    what: what.clone(),
                    message: format!("not a chunk lookup answer: {e}"),
                })?;
            for l in answer.found {
                out.insert(
                    l.chunk,
                    BlobRange {
                        digest: l.digest,
                        offset: l.offset,
                        length: l.length,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Checks that the credentials are accepted: `/v2/` must answer 200 once the
    /// registry's challenge is answered with them (a token endpoint that refuses them
    /// fails here).
    pub async fn login_check(&self) -> ClientResult<()> {
        let url = self.url("/v2/");
        let resp = self.send(&[], Method::GET, &url, &Ok).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Auth {
                registry: self.host.clone(),
                message: "the registry refused the credentials".into(),
            });
        }
        self.check(resp, "GET /v2/").await?;
        Ok(())
    }

    /// Whether credentials are configured for this registry.
    pub fn has_credential(&self) -> bool {
        self.auth.has_credential()
    }

    /// Size of a blob in `repo`, `None` when the registry does not have it there.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> ClientResult<Option<u64>> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let scopes = [repository_scope(repo, &["pull"])];
        let resp = self.send(&scopes, Method::HEAD, &url, &Ok).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(content_length(resp.headers()).unwrap_or(0))),
            _ => Err(self
                .status_error(resp, &format!("check blob {digest} in {repo}"))
                .await),
        }
    }

    /// Fetches a manifest or index by tag or digest, verifying it against the digest it
    /// was asked by or the registry's `Docker-Content-Digest`.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> ClientResult<FetchedManifest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let scopes = [repository_scope(repo, &["pull"])];
        let what = format!("manifest {repo}:{reference}");
        let build = |r: RequestBuilder| Ok(r.header("accept", MANIFEST_ACCEPT));
        let resp = self.send(&scopes, Method::GET, &url, &build).await?;
        let resp = self.check(resp, &format!("pull {what}")).await?;
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        if content_length(resp.headers()).is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
            return Err(ClientError::Invalid {
                what,
                message: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, &what, &url).await?;
        let digest = Digest::of(&bytes);
        let expected = reference.parse::<Digest>().ok().or(header_digest);
        if let Some(expected) = expected {
            if expected != digest {
                return Err(ClientError::DigestMismatch {
                    what,
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = document_media_type(&bytes)
            .or(content_type)
            .ok_or_else(|| ClientError::Invalid {
                what: what.clone(),
                message: "no mediaType in the document and no Content-Type".into(),
            })?;
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// The digest a tag or digest resolves to, by HEAD; `None` when unknown.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> ClientResult<Option<Digest>> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let scopes = [repository_scope(repo, &["pull"])];
        let build = |r: RequestBuilder| Ok(r.header("accept", MANIFEST_ACCEPT));
        let resp = self.send(&scopes, Method::HEAD, &url, &build).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                match resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Digest>().ok())
                {
                    Some(d) => Ok(Some(d)),
                    // Some registries omit the header on HEAD: fetch to know.
                    None => Ok(Some(self.get_manifest(repo, reference).await?.digest)),
                }
            }
            _ => Err(self
                .status_error(resp, &format!("resolve {repo}:{reference}"))
                .await),
        }
    }

    /// Uploads a manifest under `reference` (a tag or its digest). Returns its digest and
    /// whether the registry acknowledged a `subject` (referrers API support).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> ClientResult<(Digest, bool)> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let scopes = [repository_scope(repo, &["pull", "push"])];
        let media_type = media_type.to_string();
        let body = bytes.clone();
        let build = move |r: RequestBuilder| {
            Ok(r.header(CONTENT_TYPE, media_type.clone())
                .body(body.clone()))
        };
        let resp = self.send(&scopes, Method::PUT, &url, &build).await?;
        let resp = self
            .check(resp, &format!("push manifest {repo}:{reference}"))
            .await?;
        let subject = resp.headers().contains_key("oci-subject");
        Ok((Digest::of(&bytes), subject))
    }

    /// Downloads a blob into `path`, verifying size and digest, resuming with a Range
    /// request after a dropped connection (and coping with a registry that answers the
    /// Range with the whole blob). `on_bytes` is told of progress.
    pub async fn download_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: Option<u64>,
        path: &Path,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> ClientResult<u64> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let scopes = [repository_scope(repo, &["pull"])];
        let what = format!("blob {digest} of {repo}");
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(ClientError::io(path))?;
        let mut hasher = DigestHasher::new();
        let mut have: u64 = 0;
        let mut resumes = 0u32;
        loop {
            let start = have;
            let build = move |r: RequestBuilder| {
                Ok(if start > 0 {
                    r.header("range", format!("bytes={start}-"))
                } else {
                    r
                })
            };
            let resp = self.send(&scopes, Method::GET, &url, &build).await?;
            let resp = self.check(resp, &format!("pull {what}")).await?;
            // Bytes of this answer to drop before `have`: all of them when a Range
            // request was answered with the whole blob.
            let mut skip = if start > 0 && resp.status() == StatusCode::OK {
                start
            } else {
                0
            };
            let mut stream = resp.bytes_stream();
            let mut failed = None;
            while let Some(item) = stream.next().await {
                let mut chunk = match item {
                    Ok(c) => c,
                    Err(e) => {
                        failed = Some(describe(&e));
                        break;
                    }
                };
                if skip > 0 {
                    let n = skip.min(chunk.len() as u64) as usize;
                    skip -= n as u64;
                    chunk = chunk.slice(n..);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                if let Some(size) = size {
                    if have + chunk.len() as u64 > size {
                        return Err(ClientError::SizeMismatch {
                            what,
                            expected: size,
                            actual: have + chunk.len() as u64,
                        });
                    }
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(ClientError::io(path))?;
                have += chunk.len() as u64;
                on_bytes(chunk.len() as u64);
            }
            let complete = size.is_none_or(|s| have == s);
            match failed {
                None if complete => break,
                None if size.is_some() => {
                    // The answer ended early without an error: resume like a drop.
                    if resumes >= self.retries {
                        return Err(ClientError::SizeMismatch {
                            what,
                            expected: size.unwrap_or(0),
                            actual: have,
                        });
                    }
                }
                None => break,
                Some(message) => {
                    if resumes >= self.retries {
                        return Err(ClientError::Http {
                            method: "GET".into(),
                            url,
                            message: format!("{message} (after {have} bytes)"),
                        });
                    }
                    tracing::debug!(%url, have, %message, "resuming the download");
                }
            }
            resumes += 1;
            tokio::time::sleep(backoff(resumes - 1)).await;
        }
        file.sync_all().await.map_err(ClientError::io(path))?;
        let actual = hasher.finish();
        if actual != *digest {
            return Err(ClientError::DigestMismatch {
                what,
                expected: *digest,
                actual,
            });
        }
        Ok(have)
    }

    /// Fetches a small blob (a config or chunk index) into memory and verifies it.
    pub async fn read_blob_bytes(
        &self,
        repo: &str,
        digest: &Digest,
        max: u64,
    ) -> ClientResult<Bytes> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let scopes = [repository_scope(repo, &["pull"])];
        let what = format!("blob {digest} of {repo}");
        let resp = self.send(&scopes, Method::GET, &url, &Ok).await?;
        let resp = self.check(resp, &format!("pull {what}")).await?;
        let bytes = read_limited(resp, max as usize, &what, &url).await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(ClientError::DigestMismatch {
                what,
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Reads `len` bytes of a blob from `start` with a single-range request. A registry
    /// that ignores the Range and answers 200 with the whole blob is handled by skipping
    /// to the range. The bytes are not verified here (the caller knows their digest).
    pub async fn read_range(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> ClientResult<Bytes> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let scopes = [repository_scope(repo, &["pull"])];
        let what = format!("bytes {start}+{len} of blob {digest} in {repo}");
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = start + len - 1;
        let build = move |r: RequestBuilder| Ok(r.header("range", format!("bytes={start}-{end}")));
        let resp = self.send(&scopes, Method::GET, &url, &build).await?;
        let resp = self.check(resp, &format!("read {what}")).await?;
        let mut skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range_start);
                if range != Some(start) {
                    return Err(ClientError::Invalid {
                        what,
                        message: format!(
                            "the registry answered a different range (Content-Range start {range:?})"
                        ),
                    });
                }
                0
            }
            _ => start,
        };
        let mut out = bytes::BytesMut::with_capacity(len as usize);
        let mut stream = resp.bytes_stream();
        while let Some(item) = stream.next().await {
            let mut chunk = item.map_err(|e| ClientError::Http {
                method: "GET".into(),
                url: url.clone(),
                message: describe(&e),
            })?;
            if skip > 0 {
                let n = skip.min(chunk.len() as u64) as usize;
                skip -= n as u64;
                chunk = chunk.slice(n..);
            }
            let want = len as usize - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(want)]);
            if out.len() == len as usize {
                break;
            }
        }
        if out.len() as u64 != len {
            return Err(ClientError::SizeMismatch {
                what,
                expected: len,
                actual: out.len() as u64,
            });
        }
        Ok(out.freeze())
    }

    /// Opens an upload session in `repo`, or mounts `digest` from repository `from` when
    /// given and the registry agrees.
    pub async fn start_upload(
        &self,
        repo: &str,
        mount: Option<(&Digest, &str)>,
    ) -> ClientResult<UploadStart> {
        let mut path = format!("/v2/{repo}/blobs/uploads/");
        let mut scopes = vec![repository_scope(repo, &["pull", "push"])];
        if let Some((digest, from)) = mount {
            path.push_str(&format!("?mount={digest}&from={from}"));
            scopes.push(repository_scope(from, &["pull"]));
        }
        let url = self.url(&path);
        let build = |r: RequestBuilder| Ok(r.header(CONTENT_LENGTH, "0"));
        let resp = self.send(&scopes, Method::POST, &url, &build).await?;
        let resp = self
            .check(resp, &format!("start an upload to {repo}"))
            .await?;
        if resp.status() == StatusCode::CREATED && mount.is_some() {
            return Ok(UploadStart::Mounted);
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Invalid {
                what: format!("upload to {repo}"),
                message: "the registry answered without a Location".into(),
            })?;
        Ok(UploadStart::Session(self.absolute(location)))
    }

    /// The offset of an upload session (`GET` on its location), after a failure.
    pub async fn upload_offset(&self, repo: &str, location: &str) -> ClientResult<u64> {
        let scopes = [repository_scope(repo, &["pull", "push"])];
        let resp = self.send(&scopes, Method::GET, location, &Ok).await?;
        let resp = self
            .check(resp, &format!("upload status in {repo}"))
            .await?;
        Ok(range_end(resp.headers()))
    }

    fn next_location(&self, resp: &Response, current: &str) -> String {
        resp.headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| self.absolute(l))
            .unwrap_or_else(|| current.to_string())
    }

    /// Completes an upload session with its last bytes (may be empty).
    async fn finish_upload(
        &self,
        repo: &str,
        location: &str,
        digest: &Digest,
        last: Bytes,
    ) -> ClientResult<()> {
        let scopes = [repository_scope(repo, &["pull", "push"])];
        let url = with_query(location, "digest", &digest.to_string());
        let build = move |r: RequestBuilder| {
            Ok(r.header(CONTENT_TYPE, "application/octet-stream")
                .body(last.clone()))
        };
        let resp = self.send(&scopes, Method::PUT, &url, &build).await?;
        self.check(resp, &format!("complete the upload of {digest} to {repo}"))
            .await?;
        Ok(())
    }

    /// Uploads bytes held in memory as blob `digest`.
    pub async fn upload_bytes(
        &self,
        repo: &str,
        digest: &Digest,
        bytes: Bytes,
    ) -> ClientResult<()> {
        match self.start_upload(repo, None).await? {
            UploadStart::Mounted => Ok(()),
            UploadStart::Session(location) => {
                self.finish_upload(repo, &location, digest, bytes).await
            }
        }
    }

    /// Uploads the file `path` as blob `digest` into session `location`: in one request
    /// when small, else in [`UPLOAD_CHUNK`] PATCHes. After a dropped connection it asks
    /// the registry for the session's offset and continues from there, so completed
    /// chunks are never sent twice. Returns the bytes sent.
    pub async fn upload_file(
        &self,
        repo: &str,
        location: String,
        digest: &Digest,
        path: &Path,
        size: u64,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> ClientResult<u64> {
        let source = UploadSource::File(path.to_path_buf());
        self.upload_from(repo, location, digest, &source, size, on_bytes)
            .await
    }

    /// Uploads blob `digest` (`size` bytes) from `source` into session `location`, as
    /// [`RegistryClient::upload_file`] does: one request when small, else resumable
    /// PATCHes. A remote source is streamed by range requests, never held whole.
    pub async fn upload_from(
        &self,
        repo: &str,
        location: String,
        digest: &Digest,
        source: &UploadSource<'_>,
        size: u64,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> ClientResult<u64> {
        if size <= MONOLITHIC_LIMIT {
            let bytes = source.read(0, size).await?;
            let n = bytes.len() as u64;
            self.finish_upload(repo, &location, digest, bytes).await?;
            on_bytes(n);
            return Ok(n);
        }
        let ops = [DeltaOp::Send {
            offset: 0,
            len: size,
        }];
        self.upload_ops(repo, location, digest, source, &ops, on_bytes)
            .await
            .map(|(sent, _)| sent)
    }

    /// Runs a delta upload: each op either appends ranges of blobs the registry holds (a
    /// ranges request, see `docs/delta-push.md`) or sends bytes of `source` (at most
    /// [`UPLOAD_CHUNK`] per request); then completes the session with `digest`. Resumes
    /// after failures from the offset the registry reports. Returns (bytes sent, bytes
    /// reused).
    pub async fn upload_ops(
        &self,
        repo: &str,
        mut location: String,
        digest: &Digest,
        source: &UploadSource<'_>,
        ops: &[DeltaOp],
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> ClientResult<(u64, u64)> {
        let scopes = [repository_scope(repo, &["pull", "push"])];
        // Flatten into (blob offset, op piece) steps so a resume can find its place.
        let steps = plan_steps(ops);
        let total: u64 = steps.iter().map(Step::len).sum();
        let mut offset = 0u64;
        let mut sent = 0u64;
        let mut reused = 0u64;
        let mut failures = 0u32;
        while offset < total {
            // The step containing `offset`, and how far into it.
            let (index, step_start) = locate(&steps, offset);
            let step = &steps[index];
            let into = offset - step_start;
            let result = match step {
                Step::Copy(ranges) => {
                    let ranges = skip_ranges(ranges, into);
                    let n: u64 = ranges.iter().map(|r| r.length).sum();
                    self.append_ranges(repo, &location, offset, &ranges)
                        .await
                        .map(|loc| (loc, n, true))
                }
                Step::Send { offset: at, len } => 'send: {
                    let start = at + into;
                    let n = len - into;
                    // A failed read (a source registry's dropped connection) is a failed
                    // step: retried like a failed PATCH.
                    let body = match source.read(start, n).await {
                        Ok(b) => b,
                        Err(e) => break 'send Err(e),
                    };
                    let url = location.clone();
                    let end = offset + n - 1;
                    let build = move |r: RequestBuilder| {
                        Ok(r.header(CONTENT_TYPE, "application/octet-stream")
                            .header("content-range", format!("{offset}-{end}"))
                            .body(body.clone()))
                    };
                    match self.send(&scopes, Method::PATCH, &url, &build).await {
                        Ok(resp) if resp.status().is_success() => {
                            Ok((self.next_location(&resp, &location), n, false))
                        }
                        Ok(resp) => Err(self
                            .status_error(resp, &format!("upload {digest} to {repo}"))
                            .await),
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok((next, n, copied)) => {
                    location = next;
                    offset += n;
                    if copied {
                        reused += n;
                    } else {
                        sent += n;
                        on_bytes(n);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures > self.retries
                        || matches!(e.status(), Some(s) if s != 416 && s < 500)
                    {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "upload interrupted; asking for the offset");
                    tokio::time::sleep(backoff(failures - 1)).await;
                    offset = self.upload_offset(repo, &location).await?;
                }
            }
        }
        self.finish_upload(repo, &location, digest, Bytes::new())
            .await?;
        Ok((sent, reused))
    }

    async fn append_ranges(
        &self,
        repo: &str,
        location: &str,
        offset: u64,
        ranges: &[BlobRange],
    ) -> ClientResult<String> {
        let scopes = [repository_scope(repo, &["pull", "push"])];
        let body = Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "ranges": ranges })).map_err(|e| {
                ClientError::Invalid {
                    what: "delta ranges".into(),
                    message: e.to_string(),
                }
            })?,
        );
        let build = move |r: RequestBuilder| {
            Ok(r.header(CONTENT_TYPE, BLOB_RANGES_CONTENT_TYPE)
                .header(UPLOAD_OFFSET_HEADER, offset.to_string())
                .body(body.clone()))
        };
        let resp = self.send(&scopes, Method::PATCH, location, &build).await?;
        let resp = self
            .check(resp, &format!("append existing blob ranges in {repo}"))
            .await?;
        Ok(self.next_location(&resp, location))
    }

    /// Referrers of `subject` in `repo` with `artifact_type`, through the referrers API or
    /// the fallback tag (`sha256-<hex>`) when the registry lacks the API. Each entry is
    /// the referrer manifest's descriptor as JSON.
    pub async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> ClientResult<Vec<gantry_oci::spec::Descriptor>> {
        let mut path = format!("/v2/{repo}/referrers/{subject}");
        if let Some(t) = artifact_type {
            path.push_str(&format!("?artifactType={}", t.replace('+', "%2B")));
        }
        let url = self.url(&path);
        let scopes = [repository_scope(repo, &["pull"])];
        let resp = self.send(&scopes, Method::GET, &url, &Ok).await?;
        let index_bytes = match resp.status() {
            s if s.is_success()
                && resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(media_types::OCI_INDEX)) =>
            {
                read_limited(resp, MAX_MANIFEST_BYTES, "referrers", &url).await?
            }
            StatusCode::NOT_FOUND | StatusCode::OK | StatusCode::METHOD_NOT_ALLOWED => {
                // No referrers API: the fallback tag.
                let tag = fallback_tag(subject);
                match self.get_manifest(repo, &tag).await {
                    Ok(m) => m.bytes,
                    Err(e) if e.status() == Some(404) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                }
            }
            _ => {
                return Err(self
                    .status_error(resp, &format!("referrers of {subject} in {repo}"))
                    .await)
            }
        };
        let index: gantry_oci::spec::ImageIndex =
            serde_json::from_slice(&index_bytes).map_err(|e| ClientError::Invalid {
                what: format!("referrers of {subject} in {repo}"),
                message: e.to_string(),
            })?;
        Ok(index
            .manifests()
            .iter()
            .filter(|d| {
                artifact_type.is_none_or(|t| {
                    d.artifact_type()
                        .as_ref()
                        .is_some_and(|a| a.to_string() == t)
                })
            })
            .cloned()
            .collect())
    }

    /// The tags of `repo`, following `Link` pagination.
    pub async fn tags(&self, repo: &str) -> ClientResult<Vec<String>> {
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let scopes = [repository_scope(repo, &["pull"])];
        let mut url = self.url(&format!("/v2/{repo}/tags/list"));
        let mut out = Vec::new();
        loop {
            let resp = self.send(&scopes, Method::GET, &url, &Ok).await?;
            let resp = self.check(resp, &format!("list tags of {repo}")).await?;
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split(';').next())
                .map(|l| {
                    l.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string()
                });
            let body = read_limited(resp, 16 << 20, "tags list", &url).await?;
            let page: Tags = serde_json::from_slice(&body).map_err(|e| ClientError::Invalid {
                what: format!("tags of {repo}"),
                message: e.to_string(),
            })?;
            out.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) if !n.is_empty() => url = self.absolute(&n),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// The tag under which registries without the referrers API keep an index of a
/// manifest's referrers (OCI distribution spec 1.1, "referrers tag schema").
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// A step of an upload: a batch of source ranges, or a piece of the local file.
#[derive(Debug)]
enum Step {
    Copy(Vec<BlobRange>),
    Send { offset: u64, len: u64 },
}

impl Step {
    fn len(&self) -> u64 {
        match self {
            Step::Copy(r) => r.iter().map(|r| r.length).sum(),
            Step::Send { len, .. } => *len,
        }
    }
}

/// Groups ops into requests: consecutive copies (adjacent source ranges merged) into
/// batches of at most [`MAX_RANGES_PER_REQUEST`] ranges and [`MAX_COPY_BYTES_PER_REQUEST`]
/// bytes, consecutive sends (adjacent file ranges merged) into pieces of at most
/// [`UPLOAD_CHUNK`].
fn plan_steps(ops: &[DeltaOp]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // Bytes of the last step when it is a copy batch.
    let mut batch_bytes: u64 = 0;
    for op in ops {
        match op {
            DeltaOp::Copy(r) if r.length > 0 => {
                let (mut offset, mut left) = (r.offset, r.length);
                while left > 0 {
                    let open = matches!(steps.last(), Some(Step::Copy(_)))
                        && batch_bytes < MAX_COPY_BYTES_PER_REQUEST;
                    if !open {
                        steps.push(Step::Copy(Vec::new()));
                        batch_bytes = 0;
                    }
                    let take = left.min(MAX_COPY_BYTES_PER_REQUEST - batch_bytes);
                    let piece = BlobRange {
                        digest: r.digest,
                        offset,
                        length: take,
                    };
                    if let Some(Step::Copy(batch)) = steps.last_mut() {
                        let full = batch.len() >= MAX_RANGES_PER_REQUEST;
                        match batch.last_mut() {
                            Some(last)
                                if last.digest == piece.digest
                                    && last.offset + last.length == piece.offset =>
                            {
                                last.length += take;
                            }
                            _ if !full => batch.push(piece),
                            _ => {
                                steps.push(Step::Copy(vec![piece]));
                                batch_bytes = 0;
                            }
                        }
                    }
                    batch_bytes += take;
                    offset += take;
                    left -= take;
                }
            }
            DeltaOp::Send { offset, len } if *len > 0 => {
                let (mut offset, mut len) = (*offset, *len);
                if let Some(Step::Send { offset: o, len: l }) = steps.last_mut() {
                    if *o + *l == offset && *l < UPLOAD_CHUNK {
                        let take = (UPLOAD_CHUNK - *l).min(len);
                        *l += take;
                        offset += take;
                        len -= take;
                    }
                }
                while len > 0 {
                    let take = UPLOAD_CHUNK.min(len);
                    steps.push(Step::Send { offset, len: take });
                    offset += take;
                    len -= take;
                }
            }
            _ => {}
        }
    }
    steps
}

/// The index of the step holding blob offset `offset`, and that step's start.
fn locate(steps: &[Step], offset: u64) -> (usize, u64) {
    let mut start = 0;
    for (i, s) in steps.iter().enumerate() {
        let len = s.len();
        if offset < start + len {
            return (i, start);
        }
        start += len;
    }
    (steps.len().saturating_sub(1), start)
}

/// The ranges of a batch after its first `skip` bytes.
fn skip_ranges(ranges: &[BlobRange], mut skip: u64) -> Vec<BlobRange> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        if skip >= r.length {
            skip -= r.length;
            continue;
        }
        out.push(BlobRange {
            digest: r.digest,
            offset: r.offset + skip,
            length: r.length - skip,
        });
        skip = 0;
    }
    out
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(30)))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The offset of an upload session from its answer's headers: `Gantry-Upload-Offset` when
/// the registry sends it (gantry serve), else the `Range: 0-<end>` header. `Range: 0-0` is
/// ambiguous (nothing, or one byte, received); it is read as nothing, the safe side: a wrong
/// guess is refused with 416 rather than leaving a gap.
fn range_end(headers: &HeaderMap) -> u64 {
    if let Some(n) = headers
        .get(UPLOAD_OFFSET_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return n;
    }
    headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().trim_start_matches("bytes=").split_once('-'))
        .and_then(
            |(start, end)| match (start.trim(), end.trim().parse::<u64>().ok()) {
                ("0", Some(0)) => Some(0),
                (_, Some(end)) => Some(end + 1),
                _ => None,
            },
        )
        .unwrap_or(0)
}

/// First byte of a `Content-Range: bytes a-b/size` header.
fn parse_content_range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", value.replace(':', "%3A"))
}

/// The `mediaType` field of a manifest or index document.
fn document_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).ok()?.media_type
}

async fn read_limited(resp: Response, max: usize, what: &str, url: &str) -> ClientResult<Bytes> {
    let mut out = bytes::BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        let chunk = item.map_err(|e| ClientError::Http {
            method: "GET".into(),
            url: url.to_string(),
            message: describe(&e),
        })?;
        if out.len() + chunk.len() > max {
            return Err(ClientError::Invalid {
                what: what.to_string(),
                message: format!("larger than {max} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn steps_merge_adjacent_ranges_and_split_sends() {
        let ops = vec![
            DeltaOp::Copy(BlobRange {
                digest: d(1),
                offset: 0,
                length: 10,
            }),
            DeltaOp::Copy(BlobRange {
                digest: d(1),
                offset: 10,
                length: 5,
            }),
            DeltaOp::Copy(BlobRange {
                digest: d(2),
                offset: 0,
                length: 7,
            }),
            DeltaOp::Send { offset: 22, len: 3 },
            DeltaOp::Send {
                offset: 25,
                len: UPLOAD_CHUNK,
            },
        ];
        let steps = plan_steps(&ops);
        assert_eq!(steps.len(), 3);
        match &steps[0] {
            Step::Copy(r) => {
                assert_eq!(r.len(), 2);
                assert_eq!(r[0].length, 15);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(steps[1].len(), UPLOAD_CHUNK);
        assert_eq!(steps[2].len(), 3);
        assert_eq!(locate(&steps, 0), (0, 0));
        assert_eq!(locate(&steps, 22), (1, 22));
        assert_eq!(locate(&steps, 22 + UPLOAD_CHUNK), (2, 22 + UPLOAD_CHUNK));
    }

    #[test]
    fn copy_batches_stay_under_the_byte_cap() {
        let gib = MAX_COPY_BYTES_PER_REQUEST;
        let copy = |n: u8, offset: u64, length: u64| {
            DeltaOp::Copy(BlobRange {
                digest: d(n),
                offset,
                length,
            })
        };
        // 2.5 GiB of one blob in two adjacent ops, then 10 bytes of another.
        let ops = vec![copy(1, 0, gib), copy(1, gib, gib * 3 / 2), copy(2, 0, 10)];
        let steps = plan_steps(&ops);
        let sizes: Vec<u64> = steps.iter().map(Step::len).collect();
        assert_eq!(sizes, vec![gib, gib, gib / 2 + 10]);
        match &steps[1] {
            Step::Copy(r) => assert_eq!((r[0].offset, r[0].length), (gib, gib)),
            other => panic!("{other:?}"),
        }
        match &steps[2] {
            Step::Copy(r) => assert_eq!(r.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skipping_into_a_batch() {
        let r = vec![
            BlobRange {
                digest: d(1),
                offset: 100,
                length: 10,
            },
            BlobRange {
                digest: d(2),
                offset: 0,
                length: 10,
            },
        ];
        let s = skip_ranges(&r, 13);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].offset, 3);
        assert_eq!(s[0].length, 7);
        assert_eq!(skip_ranges(&r, 0), r);
    }

    #[test]
    fn header_helpers() {
        let mut h = HeaderMap::new();
        h.insert("range", "0-99".parse().unwrap());
        assert_eq!(range_end(&h), 100);
        assert_eq!(range_end(&HeaderMap::new()), 0);
        h.insert("range", "0-0".parse().unwrap());
        assert_eq!(range_end(&h), 0);
        h.insert(UPLOAD_OFFSET_HEADER, "1".parse().unwrap());
        assert_eq!(range_end(&h), 1, "the explicit offset wins");
        assert_eq!(parse_content_range_start("bytes 10-19/100"), Some(10));
        assert_eq!(
            with_query(
                "http://h/v2/x/blobs/uploads/u?_state=a",
                "digest",
                "sha256:ab"
            ),
            "http://h/v2/x/blobs/uploads/u?_state=a&digest=sha256%3Aab"
        );
        assert_eq!(fallback_tag(&d(1)).len(), 7 + 64);
    }
}
