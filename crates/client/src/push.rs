//! `gantry push`: an image from an OCI layout to a registry, sending only what the
//! registry lacks — existing blobs are skipped (HEAD first), blobs of a base image living
//! in another repository of the same registry are mounted, and against a registry that
//! advertises delta push a changed layer is assembled from the chunks the repository
//! already holds plus only the new chunks: found by asking the registry (its chunk lookup,
//! delta push v2) whatever tag they came with, or through the indexes of a named image.
//! Referrers (the chunk indexes) follow, then the manifest by digest, then the tag.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use gantry_layer::ChunkIndex;
use gantry_oci::spec::{Descriptor, ImageIndex, ImageManifest};
use gantry_oci::{media_types, Digest, Reference};
use serde::Serialize;

use crate::error::{ClientError, ClientResult};
use crate::layout::OciLayout;
use crate::progress::{BlobOutcome, TransferProgress};
use crate::pull::resolve_image;
use crate::registry::{
    fallback_tag, BlobRange, BlobSource, DeltaOp, RegistryClient, UploadSource, UploadStart,
};

/// Largest chunk index read while planning a delta push.
const MAX_INDEX_BYTES: u64 = gantry_layer::MAX_INDEX_BLOB_BYTES;

/// Options of a push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs transferred at once.
    pub jobs: usize,
    /// Use delta push when the registry offers it.
    pub delta: bool,
    /// Image in the destination repository whose chunks a delta push reuses first (a tag
    /// or digest). Without it, a registry with the chunk lookup is asked about each
    /// layer's chunks; one without it is read through the image the destination tag
    /// points at before the push, else `latest`.
    pub delta_from: Option<String>,
    /// A repository of the same registry to mount missing blobs from (a copy between
    /// repositories); by default the base image's repository, when it is on this registry.
    pub mount_from: Option<String>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            jobs: 4,
            delta: true,
            delta_from: None,
            mount_from: None,
        }
    }
}

/// One blob of a push.
#[derive(Debug, Clone, Serialize)]
pub struct PushedBlob {
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// What it is (`config`, a layer name, `chunk index`).
    pub label: String,
    /// How it got there.
    pub outcome: BlobOutcome,
    /// Bytes sent for it.
    pub bytes_sent: u64,
    /// Bytes the registry copied from blobs it held (delta push).
    pub bytes_reused: u64,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The destination, pinned to the pushed manifest.
    pub reference: String,
    /// The image manifest's digest.
    pub manifest_digest: Digest,
    /// Every blob.
    pub blobs: Vec<PushedBlob>,
    /// Referrer manifests pushed (chunk indexes).
    pub referrers: Vec<Digest>,
    /// Whether the registry supports the referrers API (else the fallback tag was used).
    pub referrers_api: bool,
    /// Whether delta push was used for at least one blob.
    pub delta_push: bool,
    /// Sum of blob bytes sent (manifests excluded).
    pub bytes_sent: u64,
    /// Sum of blob bytes reused by the registry.
    pub bytes_reused: u64,
    /// Size of the image's blobs (config and layers).
    pub image_bytes: u64,
}

struct BlobJob {
    desc: Descriptor,
    digest: Digest,
    label: String,
    /// The layer's chunk index in the layout, for delta push.
    index: Option<Digest>,
}

/// Where the image being pushed comes from.
enum Origin<'a> {
    /// An OCI layout on disk (`gantry push`).
    Layout(&'a OciLayout),
    /// A repository of a registry (`gantry copy` between registries): blobs are streamed
    /// by range requests, no temporary layout.
    Registry {
        client: &'a RegistryClient,
        repo: &'a str,
    },
    /// Any other blob source (a registry's own storage, replicating).
    Source(&'a dyn BlobSource),
}

impl Origin<'_> {
    /// A small blob (a chunk index, a referrer manifest) whole.
    async fn read_small(&self, digest: &Digest) -> ClientResult<Vec<u8>> {
        match self {
            Origin::Layout(l) => l.read_blob(digest),
            Origin::Registry { client, repo } => client
                .read_blob_bytes(repo, digest, MAX_INDEX_BYTES)
                .await
                .map(|b| b.to_vec()),
            Origin::Source(source) => source
                .read_small(digest, MAX_INDEX_BYTES)
                .await
                .map(|b| b.to_vec()),
        }
    }

    /// Checks a blob about to be sent (a layout's file against its digest; a registry's
    /// blob is checked by the destination when the upload completes).
    fn verify(&self, digest: &Digest, size: u64) -> ClientResult<()> {
        match self {
            Origin::Layout(l) => l.verify_blob(digest, size),
            Origin::Registry { .. } | Origin::Source(_) => Ok(()),
        }
    }

    /// Where the bytes of `digest` are read from for an upload.
    fn source(&self, digest: &Digest) -> UploadSource<'_> {
        match self {
            Origin::Layout(l) => UploadSource::File(l.blob_path(digest)),
            Origin::Registry { client, repo } => UploadSource::Remote {
                client,
                repo,
                digest: *digest,
            },
            Origin::Source(source) => UploadSource::Source {
                source: *source,
                digest: *digest,
            },
        }
    }

    fn invalid(&self, e: impl std::fmt::Display) -> ClientError {
        match self {
            Origin::Layout(l) => invalid(l, e),
            Origin::Registry { client, repo } => ClientError::Invalid {
                what: format!("{}/{repo}", client.host()),
                message: e.to_string(),
            },
            Origin::Source(source) => ClientError::Invalid {
                what: source.describe(),
                message: e.to_string(),
            },
        }
    }
}

/// An image to push: its manifest and its chunk-index referrers.
struct Image {
    digest: Digest,
    bytes: Vec<u8>,
    manifest: ImageManifest,
    /// (descriptor, parsed manifest, raw bytes) of each referrer.
    referrers: Vec<(Descriptor, ImageManifest, Vec<u8>)>,
}

/// Pushes the image tagged `tag` (or the only image) of `layout` to `dest`.
pub async fn push_layout(
    client: &RegistryClient,
    layout: &OciLayout,
    tag: Option<&str>,
    dest: &Reference,
    options: &PushOptions,
    progress: Arc<dyn TransferProgress>,
) -> ClientResult<PushReport> {
    let image = layout.resolve_for_host(tag)?;
    let mut referrers = Vec::new();
    for (desc, manifest) in layout_referrers(layout, &image.digest)? {
        let digest = Digest::from_oci(desc.digest()).map_err(|e| invalid(layout, e))?;
        let bytes = layout.read_blob(&digest)?;
        referrers.push((desc, manifest, bytes));
    }
    let image = Image {
        digest: image.digest,
        bytes: image.bytes,
        manifest: image.manifest,
        referrers,
    };
    push_image(
        client,
        &Origin::Layout(layout),
        image,
        dest,
        options,
        progress,
    )
    .await
}

/// Copies the image `from` names (for `platform`, as (os, arch)) from one registry to
/// another, blob by blob without a temporary layout: what the destination holds is
/// skipped, a blob of the same registry is mounted, a layer with a chunk index sends only
/// the chunks the destination lacks (delta push, asking the destination where it holds
/// the rest), and every other blob is streamed from the source by range requests. The
/// chunk-index referrers follow, then the manifest and the tag. The destination verifies
/// every blob against its digest.
pub async fn copy_image(
    src: &RegistryClient,
    from: &Reference,
    platform: (&str, &str),
    dst: &RegistryClient,
    dest: &Reference,
    options: &PushOptions,
    progress: Arc<dyn TransferProgress>,
) -> ClientResult<PushReport> {
    let remote = resolve_image(src, from, platform.0, platform.1).await?;
    let repo = from.repository.as_str();
    let mut referrers = Vec::new();
    let descs = src
        .referrers(
            repo,
            &remote.manifest.digest,
            Some(media_types::CHUNK_INDEX_ARTIFACT),
        )
        .await?;
    for desc in descs {
        let fetched = src.get_manifest(repo, desc.digest().as_ref()).await?;
        let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&fetched.bytes) else {
            continue;
        };
        referrers.push((desc, manifest, fetched.bytes.to_vec()));
    }
    let image = Image {
        digest: remote.manifest.digest,
        bytes: remote.manifest.bytes.to_vec(),
        manifest: remote.parsed,
        referrers,
    };
    let origin = Origin::Registry { client: src, repo };
    push_image(dst, &origin, image, dest, options, progress).await
}

/// Pushes the image manifest `manifest` (its bytes, as stored) with its chunk-index
/// referrers (`referrers`: the descriptor and bytes of each) from `source` to `dest`, as
/// [`copy_image`] does between registries: what the destination holds is skipped, a layer
/// with a chunk index sends only the chunks the destination lacks, the rest is streamed
/// from `source`. `gantry serve` replicates with it, reading its own storage.
pub async fn push_from_source(
    dst: &RegistryClient,
    source: &dyn BlobSource,
    manifest: Bytes,
    referrers: Vec<(Descriptor, Bytes)>,
    dest: &Reference,
    options: &PushOptions,
    progress: Arc<dyn TransferProgress>,
) -> ClientResult<PushReport> {
    let bad = |what: String, e: serde_json::Error| ClientError::Invalid {
        what,
        message: e.to_string(),
    };
    let parsed = serde_json::from_slice::<ImageManifest>(&manifest)
        .map_err(|e| bad(format!("{} image manifest", source.describe()), e))?;
    let mut refs = Vec::new();
    for (desc, bytes) in referrers {
        let m = serde_json::from_slice::<ImageManifest>(&bytes).map_err(|e| {
            bad(
                format!("{} referrer {}", source.describe(), desc.digest()),
                e,
            )
        })?;
        refs.push((desc, m, bytes.to_vec()));
    }
    let image = Image {
        digest: Digest::of(&manifest),
        bytes: manifest.to_vec(),
        manifest: parsed,
        referrers: refs,
    };
    push_image(dst, &Origin::Source(source), image, dest, options, progress).await
}

/// Pushes `image` from `origin` to `dest`: blobs (skipped, mounted, delta-pushed or
/// sent), the manifest by digest, its referrers, then the tag.
async fn push_image(
    client: &RegistryClient,
    origin: &Origin<'_>,
    image: Image,
    dest: &Reference,
    options: &PushOptions,
    progress: Arc<dyn TransferProgress>,
) -> ClientResult<PushReport> {
    let repo = dest.repository.as_str();
    let caps = client.ping().await?;
    let referrers = &image.referrers;

    let mut jobs = Vec::new();
    jobs.push(job(image.manifest.config(), "config".into(), origin)?);
    for (i, d) in image.manifest.layers().iter().enumerate() {
        let label = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(media_types::ANNOTATION_LAYER_NAME))
            .cloned()
            .unwrap_or_else(|| format!("layer {}", i + 1));
        jobs.push(job(d, label, origin)?);
    }
    let image_bytes: u64 = jobs.iter().map(|j| j.desc.size()).sum();
    for (_, manifest, _) in referrers {
        jobs.push(job(manifest.config(), "chunk index config".into(), origin)?);
        for d in manifest.layers() {
            let mut j = job(d, "chunk index".into(), origin)?;
            // There the annotation points back at the layer, not at an index.
            j.index = None;
            jobs.push(j);
        }
    }
    // One job per digest.
    let mut seen = std::collections::HashSet::new();
    jobs.retain(|j| seen.insert(j.digest));

    let mut old_chunks = HashMap::new();
    if caps.delta_push && options.delta {
        // The named image; else, from a registry without the chunk lookup, what the
        // destination tag points at, else `latest`. A registry with it answers per layer.
        let candidates = match &options.delta_from {
            Some(from) => vec![from.clone()],
            None if caps.chunk_lookup => Vec::new(),
            None => vec![dest.tag_or_latest().to_string(), "latest".to_string()],
        };
        for from in candidates {
            old_chunks = old_chunk_map(client, repo, &from).await?;
            if !old_chunks.is_empty() {
                break;
            }
        }
    }
    let mount_from = options
        .mount_from
        .clone()
        .filter(|from| from != repo)
        .or_else(|| base_repository(&image.manifest, client.host(), repo));

    let ctx = Ctx {
        client,
        origin,
        repo,
        old_chunks: &old_chunks,
        lookup: caps.delta_push && caps.chunk_lookup && options.delta,
        mount_from: mount_from.as_deref(),
        progress: progress.as_ref(),
    };
    // The futures are made up front: a lazy `map` over `jobs.iter()` would make this
    // future too general for the compiler to prove `Send` (replication spawns it).
    let pushes: Vec<_> = jobs.iter().map(|j| ctx.push_blob(j)).collect();
    let blobs: Vec<PushedBlob> = stream::iter(pushes)
        .buffer_unordered(options.jobs.max(1))
        .try_collect()
        .await?;

    // The manifest by digest, then its referrers, then the tag.
    let media_type = image
        .manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| media_types::OCI_MANIFEST.to_string());
    let manifest_bytes = Bytes::from(image.bytes.clone());
    client
        .put_manifest(
            repo,
            &image.digest.to_string(),
            &media_type,
            manifest_bytes.clone(),
        )
        .await?;
    let mut referrers_api = true;
    let mut pushed_referrers = Vec::new();
    for (desc, _, bytes) in referrers {
        let digest = Digest::from_oci(desc.digest()).map_err(|e| origin.invalid(e))?;
        let bytes = Bytes::from(bytes.clone());
        let (_, acknowledged) = client
            .put_manifest(repo, &digest.to_string(), media_types::OCI_MANIFEST, bytes)
            .await?;
        if !acknowledged {
            referrers_api = false;
            add_to_fallback_index(client, repo, &image.digest, desc).await?;
        }
        pushed_referrers.push(digest);
    }
    let tag_ref = dest
        .tag
        .clone()
        .or_else(|| dest.digest.is_none().then(|| "latest".to_string()));
    if let Some(t) = &tag_ref {
        client
            .put_manifest(repo, t, &media_type, manifest_bytes)
            .await?;
    }
    let mut pinned = dest.clone();
    pinned.digest = Some(image.digest);
    Ok(PushReport {
        reference: pinned.to_string(),
        manifest_digest: image.digest,
        bytes_sent: blobs.iter().map(|b| b.bytes_sent).sum(),
        bytes_reused: blobs.iter().map(|b| b.bytes_reused).sum(),
        delta_push: blobs.iter().any(|b| b.outcome == BlobOutcome::Delta),
        blobs,
        referrers: pushed_referrers,
        referrers_api,
        image_bytes,
    })
}

fn invalid(layout: &OciLayout, e: impl std::fmt::Display) -> ClientError {
    ClientError::Layout {
        path: layout.root().to_path_buf(),
        message: e.to_string(),
    }
}

fn job(desc: &Descriptor, label: String, origin: &Origin<'_>) -> ClientResult<BlobJob> {
    let digest = Digest::from_oci(desc.digest()).map_err(|e| origin.invalid(e))?;
    let index = desc
        .annotations()
        .as_ref()
        .and_then(|a| a.get(media_types::ANNOTATION_CHUNK_INDEX))
        .and_then(|s| s.parse::<Digest>().ok());
    Ok(BlobJob {
        desc: desc.clone(),
        digest,
        label,
        index,
    })
}

/// The referrer manifests of `subject` listed in the layout's `index.json`.
pub fn layout_referrers(
    layout: &OciLayout,
    subject: &Digest,
) -> ClientResult<Vec<(Descriptor, ImageManifest)>> {
    let mut out = Vec::new();
    for d in layout.index()?.manifests() {
        if d.artifact_type().is_none() {
            continue;
        }
        let digest = Digest::from_oci(d.digest()).map_err(|e| invalid(layout, e))?;
        let bytes = layout.read_blob(&digest)?;
        let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes) else {
            continue;
        };
        let about = manifest
            .subject()
            .as_ref()
            .and_then(|s| Digest::from_oci(s.digest()).ok());
        if about == Some(*subject) {
            out.push((d.clone(), manifest));
        }
    }
    Ok(out)
}

/// The repository of the image's base, when it lives on the same registry (so its
/// layers can be mounted rather than sent).
fn base_repository(manifest: &ImageManifest, host: &str, repo: &str) -> Option<String> {
    let name = manifest
        .annotations()
        .as_ref()?
        .get(media_types::ANNOTATION_BASE_NAME)?;
    let base: Reference = name.parse().ok()?;
    (base.registry == host && base.repository != repo).then_some(base.repository)
}

/// Chunk id → where its bytes are in the repository, from the chunk indexes of the
/// layers of image `from` (a tag or digest) in `repo`. Empty when there is no such image.
async fn old_chunk_map(
    client: &RegistryClient,
    repo: &str,
    from: &str,
) -> ClientResult<HashMap<Digest, BlobRange>> {
    let mut map = HashMap::new();
    let fetched = match client.get_manifest(repo, from).await {
        Ok(m) => m,
        Err(e) if matches!(e.status(), Some(404)) => return Ok(map),
        Err(e) => return Err(e),
    };
    let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&fetched.bytes) else {
        return Ok(map); // an index or something else: no delta source
    };
    for layer in manifest.layers() {
        let Some(index_digest) = layer
            .annotations()
            .as_ref()
            .and_then(|a| a.get(media_types::ANNOTATION_CHUNK_INDEX))
            .and_then(|s| s.parse::<Digest>().ok())
        else {
            continue;
        };
        let Ok(layer_digest) = Digest::from_oci(layer.digest()) else {
            continue;
        };
        let blob = match client
            .read_blob_bytes(repo, &index_digest, MAX_INDEX_BYTES)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%index_digest, error = %e, "chunk index unavailable; no delta from this layer");
                continue;
            }
        };
        let Ok(index) = ChunkIndex::from_blob(&blob) else {
            tracing::warn!(%index_digest, "unreadable chunk index; no delta from this layer");
            continue;
        };
        if index.layer_digest != layer_digest {
            continue;
        }
        for c in index.chunks_with_offsets() {
            map.entry(c.record.id).or_insert(BlobRange {
                digest: layer_digest,
                offset: c.compressed_offset,
                length: c.record.compressed_len,
            });
        }
    }
    Ok(map)
}

/// Adds a referrer descriptor to the fallback-tag index of `subject`.
async fn add_to_fallback_index(
    client: &RegistryClient,
    repo: &str,
    subject: &Digest,
    desc: &Descriptor,
) -> ClientResult<()> {
    let tag = fallback_tag(subject);
    let mut manifests: Vec<Descriptor> = match client.get_manifest(repo, &tag).await {
        Ok(m) => serde_json::from_slice::<ImageIndex>(&m.bytes)
            .map(|i| i.manifests().clone())
            .unwrap_or_default(),
        Err(e) if e.status() == Some(404) => Vec::new(),
        Err(e) => return Err(e),
    };
    if manifests.iter().any(|m| m.digest() == desc.digest()) {
        return Ok(());
    }
    manifests.push(desc.clone());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": manifests,
    });
    let bytes = gantry_oci::canonical_json("referrers index", &index).map_err(|e| {
        ClientError::Invalid {
            what: "referrers index".into(),
            message: e.to_string(),
        }
    })?;
    client
        .put_manifest(repo, &tag, media_types::OCI_INDEX, Bytes::from(bytes))
        .await?;
    Ok(())
}

struct Ctx<'a> {
    client: &'a RegistryClient,
    origin: &'a Origin<'a>,
    repo: &'a str,
    old_chunks: &'a HashMap<Digest, BlobRange>,
    /// Ask the registry where the repository holds each layer's chunks.
    lookup: bool,
    mount_from: Option<&'a str>,
    progress: &'a dyn TransferProgress,
}

impl Ctx<'_> {
    async fn push_blob(&self, job: &BlobJob) -> ClientResult<PushedBlob> {
        let size = job.desc.size();
        let digest = job.digest;
        let done = |outcome, sent, reused| {
            self.progress.blob_finished(&digest, outcome);
            PushedBlob {
                digest,
                size,
                label: job.label.clone(),
                outcome,
                bytes_sent: sent,
                bytes_reused: reused,
            }
        };
        self.progress.blob_started(&digest, size, &job.label);
        if self.client.blob_size(self.repo, &digest).await?.is_some() {
            return Ok(done(BlobOutcome::Existing, 0, 0));
        }
        self.origin.verify(&digest, size)?;
        let source = self.origin.source(&digest);
        let mount = self.mount_from.map(|from| (&digest, from));
        let location = match self.client.start_upload(self.repo, mount).await? {
            UploadStart::Mounted => return Ok(done(BlobOutcome::Mounted, 0, 0)),
            UploadStart::Session(location) => location,
        };
        let on_bytes = |n| self.progress.blob_bytes(&digest, n);
        if let Some(ops) = self.delta_ops(job).await? {
            let (sent, reused) = self
                .client
                .upload_ops(self.repo, location, &digest, &source, &ops, &on_bytes)
                .await?;
            return Ok(done(BlobOutcome::Delta, sent, reused));
        }
        let sent = self
            .client
            .upload_from(self.repo, location, &digest, &source, size, &on_bytes)
            .await?;
        Ok(done(BlobOutcome::Uploaded, sent, 0))
    }

    /// The delta plan of a layer: copies of chunks the repository holds, sends of the
    /// rest. The chunks come from the `--delta-from` image's indexes and, from a registry
    /// with the chunk lookup, from asking it about the others. `None` when there is
    /// nothing to reuse.
    async fn delta_ops(&self, job: &BlobJob) -> ClientResult<Option<Vec<DeltaOp>>> {
        if self.old_chunks.is_empty() && !self.lookup {
            return Ok(None);
        }
        let Some(index_digest) = job.index else {
            return Ok(None);
        };
        // An index that cannot be read (an image copied without its indexes keeps the
        // annotations) only means no delta for this layer.
        let index = match self.origin.read_small(&index_digest).await {
            Ok(blob) => ChunkIndex::from_blob(&blob).map_err(|e| self.origin.invalid(e)),
            Err(e) => Err(e),
        };
        let index = match index {
            Ok(index) if index.layer_digest == job.digest => index,
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::warn!(layer = %job.digest, index = %index_digest, error = %e, "chunk index unavailable; the layer goes up whole");
                return Ok(None);
            }
        };
        let mut located = HashMap::new();
        if self.lookup {
            let mut asked = std::collections::HashSet::new();
            let wanted: Vec<Digest> = index
                .chunks
                .iter()
                .map(|c| c.id)
                .filter(|id| !self.old_chunks.contains_key(id) && asked.insert(*id))
                .collect();
            match self.client.lookup_chunks(self.repo, &wanted).await {
                Ok(found) => located = found,
                // Not allowed to pull (a push-only credential), or the lookup failed:
                // the layer goes up whole (or from --delta-from's chunks).
                Err(e) => {
                    tracing::warn!(layer = %job.digest, error = %e, "chunk lookup failed; not reusing the registry's chunks")
                }
            }
        }
        let mut ops = Vec::with_capacity(index.chunks.len());
        let mut reused = 0u64;
        for c in index.chunks_with_offsets() {
            let len = c.record.compressed_len;
            let held = self
                .old_chunks
                .get(&c.record.id)
                .or_else(|| located.get(&c.record.id))
                .filter(|r| r.length == len);
            match held {
                Some(r) => {
                    reused += r.length;
                    ops.push(DeltaOp::Copy(r.clone()));
                }
                None => ops.push(DeltaOp::Send {
                    offset: c.compressed_offset,
                    len,
                }),
            }
        }
        Ok((reused > 0).then_some(ops))
    }
}
