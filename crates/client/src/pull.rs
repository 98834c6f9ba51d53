//! `gantry pull`: an image from a registry into an OCI layout, every blob verified against
//! its digest, with the platform picked from an image index and the chunk-index referrers
//! brought along. Blobs already present in the layout being replaced are reused after
//! verification instead of downloaded again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use gantry_oci::spec::{
    Descriptor, DescriptorBuilder, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType,
};
use gantry_oci::{media_types, Digest, Reference};
use serde::Serialize;

use crate::error::{ClientError, ClientResult};
use crate::layout::{LayoutWriter, OciLayout};
use crate::progress::{BlobOutcome, TransferProgress};
use crate::push::layout_referrers;
use crate::registry::{FetchedManifest, RegistryClient};

/// Largest referrer blob (chunk index) fetched.
const MAX_REFERRER_BLOB: u64 = 64 << 20;

/// Options of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Platform OS picked from an image index.
    pub os: String,
    /// Platform architecture picked from an image index (OCI names: amd64, arm64).
    pub arch: String,
    /// Blobs downloaded at once.
    pub jobs: usize,
    /// Bring the chunk-index referrers along.
    pub referrers: bool,
    /// Name of the image in the layout (default: the reference's tag).
    pub tag: Option<String>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            os: "linux".into(),
            arch: host_arch().into(),
            jobs: 4,
            referrers: true,
            tag: None,
        }
    }
}

pub use gantry_oci::platform::host_arch;

/// One blob of a pull or copy.
#[derive(Debug, Clone, Serialize)]
pub struct PulledBlob {
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// What it is.
    pub label: String,
    /// Downloaded, or taken from the earlier layout.
    pub outcome: BlobOutcome,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The source pinned to the image manifest pulled.
    pub reference: String,
    /// The image manifest's digest (the platform manifest when the source is an index).
    pub manifest_digest: Digest,
    /// The index digest the reference resolved to, when it was an index.
    pub index_digest: Option<Digest>,
    /// The layout written.
    pub layout: PathBuf,
    /// Every blob of the image.
    pub blobs: Vec<PulledBlob>,
    /// Referrer manifests brought along.
    pub referrers: Vec<Digest>,
    /// Bytes downloaded (image blobs).
    pub bytes_downloaded: u64,
}

/// Picks the manifest for `os`/`arch` from an index document.
pub fn select_platform(
    index_bytes: &[u8],
    what: &str,
    os: &str,
    arch: &str,
) -> ClientResult<Descriptor> {
    let index: ImageIndex =
        serde_json::from_slice(index_bytes).map_err(|e| ClientError::Invalid {
            what: what.to_string(),
            message: format!("malformed image index: {e}"),
        })?;
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
        })
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect();
            ClientError::Invalid {
                what: what.to_string(),
                message: format!(
                    "no image for platform {os}/{arch} (the index has {})",
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                ),
            }
        })
}

/// An image manifest resolved from a registry reference.
#[derive(Debug, Clone)]
pub struct RemoteImage {
    /// The platform manifest.
    pub manifest: FetchedManifest,
    /// Parsed.
    pub parsed: ImageManifest,
    /// The index the reference pointed at, if it was one.
    pub index: Option<FetchedManifest>,
}

/// Resolves `reference` to an image manifest for `os`/`arch`.
pub async fn resolve_image(
    client: &RegistryClient,
    reference: &Reference,
    os: &str,
    arch: &str,
) -> ClientResult<RemoteImage> {
    let repo = &reference.repository;
    let what = format!(
        "{}/{}:{}",
        reference.registry,
        repo,
        reference.manifest_key()
    );
    let first = client.get_manifest(repo, &reference.manifest_key()).await?;
    let (manifest, index) = if media_types::is_index(&first.media_type) {
        let desc = select_platform(&first.bytes, &what, os, arch)?;
        let digest = Digest::from_oci(desc.digest()).map_err(|e| ClientError::Invalid {
            what: what.clone(),
            message: e.to_string(),
        })?;
        (
            client.get_manifest(repo, &digest.to_string()).await?,
            Some(first),
        )
    } else {
        (first, None)
    };
    if !media_types::is_image_manifest(&manifest.media_type) {
        return Err(ClientError::Invalid {
            what,
            message: format!("unsupported manifest media type {}", manifest.media_type),
        });
    }
    let parsed: ImageManifest =
        serde_json::from_slice(&manifest.bytes).map_err(|e| ClientError::Invalid {
            what: what.clone(),
            message: format!("malformed image manifest: {e}"),
        })?;
    Ok(RemoteImage {
        manifest,
        parsed,
        index,
    })
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> ClientResult<Descriptor> {
    DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest.to_oci())
        .size(size)
        .build()
        .map_err(|e| ClientError::Invalid {
            what: "descriptor".into(),
            message: e.to_string(),
        })
}

/// Writes `index.json` naming the image (tagged `tag`) and its referrers.
fn commit_layout(
    writer: LayoutWriter,
    image: Descriptor,
    tag: Option<&str>,
    referrers: Vec<Descriptor>,
) -> ClientResult<PathBuf> {
    let mut tagged = image;
    if let Some(t) = tag {
        let mut ann = HashMap::new();
        ann.insert(media_types::ANNOTATION_REF_NAME.to_string(), t.to_string());
        tagged.set_annotations(Some(ann));
    }
    let mut manifests = vec![tagged];
    manifests.extend(referrers);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| ClientError::Invalid {
            what: "index.json".into(),
            message: e.to_string(),
        })?;
    writer.commit(&index)
}

fn labels(manifest: &ImageManifest) -> Vec<(Descriptor, String)> {
    let mut out = vec![(manifest.config().clone(), "config".to_string())];
    for (i, d) in manifest.layers().iter().enumerate() {
        let label = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(media_types::ANNOTATION_LAYER_NAME))
            .cloned()
            .unwrap_or_else(|| format!("layer {}", i + 1));
        out.push((d.clone(), label));
    }
    out
}

/// Pulls `reference` into an OCI layout at `target` (replacing a layout there, reusing
/// its verified blobs).
pub async fn pull_to_layout(
    client: &RegistryClient,
    reference: &Reference,
    target: &Path,
    options: &PullOptions,
    progress: Arc<dyn TransferProgress>,
) -> ClientResult<PullReport> {
    let repo = reference.repository.as_str();
    let image = resolve_image(client, reference, &options.os, &options.arch).await?;
    let earlier = OciLayout::open(target).ok();
    let writer = LayoutWriter::create(target)?;
    let blobs: Vec<PulledBlob> =
        stream::iter(labels(&image.parsed).into_iter().map(|(d, label)| {
            let writer = &writer;
            let earlier = earlier.as_ref();
            let progress = progress.clone();
            async move {
                let digest = Digest::from_oci(d.digest()).map_err(|e| ClientError::Invalid {
                    what: format!("manifest {}", image.manifest.digest),
                    message: e.to_string(),
                })?;
                let size = d.size();
                progress.blob_started(&digest, size, &label);
                let outcome = match earlier.filter(|l| l.verify_blob(&digest, size).is_ok()) {
                    Some(l) => {
                        writer.put_file(&l.blob_path(&digest), &digest)?;
                        BlobOutcome::Local
                    }
                    None => {
                        let path = writer.blob_path(&digest);
                        let on_bytes = |n| progress.blob_bytes(&digest, n);
                        client
                            .download_blob(repo, &digest, Some(size), &path, &on_bytes)
                            .await?;
                        BlobOutcome::Downloaded
                    }
                };
                progress.blob_finished(&digest, outcome);
                Ok::<_, ClientError>(PulledBlob {
                    digest,
                    size,
                    label,
                    outcome,
                })
            }
        }))
        .buffer_unordered(options.jobs.max(1))
        .try_collect()
        .await?;
    writer.put_bytes(&image.manifest.bytes)?;

    let mut referrer_descs = Vec::new();
    if options.referrers {
        match pull_referrers(client, repo, &image.manifest.digest, &writer).await {
            Ok(descs) => referrer_descs = descs,
            Err(e) => {
                tracing::warn!(error = %e, "chunk indexes not pulled; the image is complete without them")
            }
        }
    }
    let referrers = referrer_descs
        .iter()
        .filter_map(|d| Digest::from_oci(d.digest()).ok())
        .collect();
    let image_desc = descriptor(
        &image.manifest.media_type,
        &image.manifest.digest,
        image.manifest.bytes.len() as u64,
    )?;
    let tag = options.tag.as_deref().or(reference.tag.as_deref());
    let layout = commit_layout(writer, image_desc, tag, referrer_descs)?;
    let mut pinned = reference.clone();
    pinned.digest = Some(image.manifest.digest);
    Ok(PullReport {
        reference: pinned.to_string(),
        manifest_digest: image.manifest.digest,
        index_digest: image.index.map(|i| i.digest),
        layout,
        bytes_downloaded: blobs
            .iter()
            .filter(|b| b.outcome == BlobOutcome::Downloaded)
            .map(|b| b.size)
            .sum(),
        blobs,
        referrers,
    })
}

/// Fetches the chunk-index referrers of `subject` with their blobs into `writer`;
/// returns their descriptors for `index.json`.
async fn pull_referrers(
    client: &RegistryClient,
    repo: &str,
    subject: &Digest,
    writer: &LayoutWriter,
) -> ClientResult<Vec<Descriptor>> {
    let mut out = Vec::new();
    for desc in client
        .referrers(repo, subject, Some(media_types::CHUNK_INDEX_ARTIFACT))
        .await?
    {
        let digest = Digest::from_oci(desc.digest()).map_err(|e| ClientError::Invalid {
            what: format!("referrers of {subject}"),
            message: e.to_string(),
        })?;
        let m = client.get_manifest(repo, &digest.to_string()).await?;
        let manifest: ImageManifest =
            serde_json::from_slice(&m.bytes).map_err(|e| ClientError::Invalid {
                what: format!("referrer {digest}"),
                message: e.to_string(),
            })?;
        for d in std::iter::once(manifest.config()).chain(manifest.layers().iter()) {
            let blob_digest = Digest::from_oci(d.digest()).map_err(|e| ClientError::Invalid {
                what: format!("referrer {digest}"),
                message: e.to_string(),
            })?;
            if d.media_type().to_string() == media_types::OCI_EMPTY && d.size() == 2 {
                writer.put_bytes(media_types::EMPTY_JSON)?;
                continue;
            }
            let bytes: Bytes = client
                .read_blob_bytes(repo, &blob_digest, MAX_REFERRER_BLOB)
                .await?;
            writer.put_bytes(&bytes)?;
        }
        writer.put_bytes(&m.bytes)?;
        let mut entry = descriptor(media_types::OCI_MANIFEST, &digest, m.bytes.len() as u64)?;
        entry.set_artifact_type(desc.artifact_type().clone());
        out.push(entry);
    }
    Ok(out)
}

/// Copies the image tagged `tag` of layout `src` (with its referrers) into a layout at
/// `target` tagged `target_tag`, verifying every blob and hard-linking where possible.
pub fn copy_layout(
    src: &OciLayout,
    tag: Option<&str>,
    target: &Path,
    target_tag: Option<&str>,
) -> ClientResult<PullReport> {
    let image = src.resolve(tag, "linux", host_arch())?;
    let writer = LayoutWriter::create(target)?;
    let mut blobs = Vec::new();
    for (d, label) in labels(&image.manifest) {
        let digest = Digest::from_oci(d.digest()).map_err(|e| ClientError::Invalid {
            what: format!("manifest {}", image.digest),
            message: e.to_string(),
        })?;
        src.verify_blob(&digest, d.size())?;
        writer.put_file(&src.blob_path(&digest), &digest)?;
        blobs.push(PulledBlob {
            digest,
            size: d.size(),
            label,
            outcome: BlobOutcome::Local,
        });
    }
    writer.put_bytes(&image.bytes)?;
    let mut referrer_descs = Vec::new();
    for (desc, manifest) in layout_referrers(src, &image.digest)? {
        for d in std::iter::once(manifest.config()).chain(manifest.layers().iter()) {
            let digest = Digest::from_oci(d.digest()).map_err(|e| ClientError::Invalid {
                what: "referrer".into(),
                message: e.to_string(),
            })?;
            src.verify_blob(&digest, d.size())?;
            writer.put_file(&src.blob_path(&digest), &digest)?;
        }
        let digest = Digest::from_oci(desc.digest()).map_err(|e| ClientError::Invalid {
            what: "referrer".into(),
            message: e.to_string(),
        })?;
        writer.put_bytes(&src.read_blob(&digest)?)?;
        referrer_descs.push(desc);
    }
    let referrers = referrer_descs
        .iter()
        .filter_map(|d| Digest::from_oci(d.digest()).ok())
        .collect();
    let media_type = image
        .manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| media_types::OCI_MANIFEST.to_string());
    let image_desc = descriptor(&media_type, &image.digest, image.bytes.len() as u64)?;
    let layout = commit_layout(
        writer,
        image_desc,
        target_tag.or(image.tag.as_deref()),
        referrer_descs,
    )?;
    Ok(PullReport {
        reference: format!("oci:{}", layout.display()),
        manifest_digest: image.digest,
        index_digest: None,
        layout,
        blobs,
        referrers,
        bytes_downloaded: 0,
    })
}
