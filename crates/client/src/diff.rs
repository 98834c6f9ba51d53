//! `gantry diff`: what a node holding one image must download to run another, computed
//! three ways side by side — the whole image, layer-level (every layer whose digest is not
//! in the old image, as a stock runtime pulls) and chunk-level (only the chunks no old
//! layer holds, plus the chunk indexes, as Gantry's agent pulls) — next to the update's own
//! size as the benchmarks define it: the gzip -6 size of the files and archive entries that
//! are new or changed in the new image, concatenated.
//!
//! Either image may be an OCI layout or a registry image ([`ImageSource`]). The three
//! download figures need only manifests and chunk indexes; the update's own size reads
//! both images whole (registry layers are downloaded to a temporary directory first).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use gantry_layer::ChunkIndex;
use gantry_oci::spec::{Descriptor, ImageManifest};
use gantry_oci::{media_types, Digest, DigestHasher, Reference};
use serde::Serialize;

use crate::error::{ClientError, ClientResult};
use crate::layout::OciLayout;
use crate::pull::{host_arch, resolve_image};
use crate::registry::RegistryClient;

/// Largest chunk index blob read.
const MAX_INDEX_BYTES: u64 = gantry_layer::MAX_INDEX_BLOB_BYTES;
/// Archives up to this size are held in memory while their entries are read; larger ones
/// spill to a temporary file.
const SPOOL_IN_MEMORY: usize = 64 << 20;
/// The local file header signature that starts a zip archive.
const ZIP_MAGIC: [u8; 4] = *b"PK\x03\x04";

/// Where an image to compare lives.
pub enum ImageSource<'a> {
    /// An OCI image layout, with the tag of one image in it (or its only image).
    Layout {
        /// The layout.
        layout: OciLayout,
        /// The `org.opencontainers.image.ref.name` of the image.
        tag: Option<String>,
    },
    /// An image in a registry.
    Registry {
        /// A client for the reference's registry.
        client: &'a RegistryClient,
        /// The image.
        reference: Reference,
    },
}

impl fmt::Display for ImageSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Layout { layout, tag } => {
                write!(f, "oci:{}", layout.root().display())?;
                match tag {
                    Some(t) => write!(f, ":{t}"),
                    None => Ok(()),
                }
            }
            ImageSource::Registry { reference, .. } => write!(f, "{reference}"),
        }
    }
}

/// One layer of an image, from its manifest descriptor.
#[derive(Clone, Debug, Serialize)]
pub struct ImageLayer {
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// The `dev.gantry.layer` annotation (the layer's name in `gantry.toml`).
    pub name: Option<String>,
    /// The `dev.gantry.chunk-index` annotation: digest of the layer's chunk index blob.
    pub chunk_index: Option<Digest>,
}

impl ImageLayer {
    /// Reads a layer descriptor; `what` names the image in errors.
    pub fn from_descriptor(d: &Descriptor, what: &str) -> ClientResult<Self> {
        let invalid = |message: String| ClientError::Invalid {
            what: what.to_string(),
            message,
        };
        let digest = Digest::from_oci(d.digest()).map_err(|e| invalid(e.to_string()))?;
        let annotation = |key: &str| d.annotations().as_ref().and_then(|a| a.get(key));
        let chunk_index = annotation(media_types::ANNOTATION_CHUNK_INDEX)
            .map(|s| {
                s.parse::<Digest>().map_err(|e| {
                    invalid(format!(
                        "layer {digest}: {} annotation {s:?}: {e}",
                        media_types::ANNOTATION_CHUNK_INDEX
                    ))
                })
            })
            .transpose()?;
        Ok(ImageLayer {
            digest,
            size: d.size(),
            media_type: d.media_type().to_string(),
            name: annotation(media_types::ANNOTATION_LAYER_NAME).cloned(),
            chunk_index,
        })
    }
}

/// The layers of an image manifest, in order.
pub fn image_layers(manifest: &ImageManifest, what: &str) -> ClientResult<Vec<ImageLayer>> {
    manifest
        .layers()
        .iter()
        .map(|d| ImageLayer::from_descriptor(d, what))
        .collect()
}

/// A chunk index read from its blob.
#[derive(Clone, Debug)]
pub struct LayerIndex {
    /// The parsed index.
    pub index: ChunkIndex,
    /// Size of its blob (what a node downloads to use it).
    pub blob_size: u64,
}

/// A layer with its chunk index, when it has one and it was loaded.
#[derive(Clone, Debug)]
pub struct IndexedLayer {
    /// The layer.
    pub layer: ImageLayer,
    /// Its chunk index.
    pub index: Option<LayerIndex>,
}

/// An image manifest resolved from an [`ImageSource`].
#[derive(Clone, Debug)]
pub struct OpenedImage {
    /// How the image was named.
    pub name: String,
    /// Digest of the image manifest.
    pub manifest_digest: Digest,
    /// The layers, in order.
    pub layers: Vec<ImageLayer>,
}

impl ImageSource<'_> {
    /// Resolves the image manifest (picking `os`/`arch` from an index).
    pub async fn open(&self, os: &str, arch: &str) -> ClientResult<OpenedImage> {
        let name = self.to_string();
        let (manifest_digest, manifest) = match self {
            ImageSource::Layout { layout, tag } => {
                let r = layout.resolve(tag.as_deref(), os, arch)?;
                (r.digest, r.manifest)
            }
            ImageSource::Registry { client, reference } => {
                let r = resolve_image(client, reference, os, arch).await?;
                (r.manifest.digest, r.parsed)
            }
        };
        let layers = image_layers(&manifest, &format!("manifest {manifest_digest} of {name}"))?;
        Ok(OpenedImage {
            name,
            manifest_digest,
            layers,
        })
    }

    /// A small blob (a chunk index), verified; `None` when the image's store lacks it
    /// (a layout or repository copied without its chunk-index referrers).
    async fn small_blob(&self, digest: &Digest) -> ClientResult<Option<Vec<u8>>> {
        match self {
            ImageSource::Layout { layout, .. } => {
                if !layout.blob_path(digest).is_file() {
                    return Ok(None);
                }
                layout.read_blob(digest).map(Some)
            }
            ImageSource::Registry { client, reference } => match client
                .read_blob_bytes(&reference.repository, digest, MAX_INDEX_BYTES)
                .await
            {
                Ok(b) => Ok(Some(b.to_vec())),
                Err(e) if e.status() == Some(404) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// The chunk index of `layer`, when it names one and the blob is there.
    pub async fn chunk_index(&self, layer: &ImageLayer) -> ClientResult<Option<LayerIndex>> {
        let Some(index_digest) = layer.chunk_index else {
            return Ok(None);
        };
        let Some(blob) = self.small_blob(&index_digest).await? else {
            tracing::warn!(layer = %layer.digest, index = %index_digest, source = %self,
                "chunk index blob not found; the layer counts whole at chunk level");
            return Ok(None);
        };
        parse_index(&blob, layer, &self.to_string()).map(Some)
    }

    /// A file holding the layer blob: the blob itself in a layout, a verified download
    /// into `tmp` (named by digest, so shared layers are fetched once) from a registry.
    pub async fn layer_file(&self, layer: &ImageLayer, tmp: &Path) -> ClientResult<PathBuf> {
        match self {
            ImageSource::Layout { layout, .. } => {
                let path = layout.blob_path(&layer.digest);
                if !path.is_file() {
                    return Err(ClientError::Layout {
                        path: layout.root().to_path_buf(),
                        message: format!("layer blob {} is missing", layer.digest),
                    });
                }
                Ok(path)
            }
            ImageSource::Registry { client, reference } => {
                let path = tmp.join(layer.digest.hex());
                if !path.is_file() {
                    client
                        .download_blob(
                            &reference.repository,
                            &layer.digest,
                            Some(layer.size),
                            &path,
                            &|_| {},
                        )
                        .await?;
                }
                Ok(path)
            }
        }
    }
}

fn parse_index(blob: &[u8], layer: &ImageLayer, source: &str) -> ClientResult<LayerIndex> {
    let what = || format!("chunk index of layer {} in {source}", layer.digest);
    let index = ChunkIndex::from_blob(blob).map_err(|e| ClientError::Invalid {
        what: what(),
        message: e.to_string(),
    })?;
    if index.layer_digest != layer.digest {
        return Err(ClientError::Invalid {
            what: what(),
            message: format!("describes another layer ({})", index.layer_digest),
        });
    }
    Ok(LayerIndex {
        index,
        blob_size: blob.len() as u64,
    })
}

/// The layers of `manifest` in `layout`, each with its chunk index (when the layout holds
/// it). The synchronous path for callers that only have layouts (`gantry demo`).
pub fn layout_layers(
    layout: &OciLayout,
    manifest: &ImageManifest,
) -> ClientResult<Vec<IndexedLayer>> {
    let what = format!("OCI layout {}", layout.root().display());
    image_layers(manifest, &what)?
        .into_iter()
        .map(|layer| {
            let index = match layer.chunk_index {
                Some(d) if layout.blob_path(&d).is_file() => {
                    Some(parse_index(&layout.read_blob(&d)?, &layer, &what)?)
                }
                _ => None,
            };
            Ok(IndexedLayer { layer, index })
        })
        .collect()
}

/// Download cost of one layer of the new image.
#[derive(Clone, Debug, Serialize)]
pub struct LayerDiff {
    /// The layer's name (`dev.gantry.layer`), if any.
    pub name: Option<String>,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size (what the whole-image method moves for it).
    pub size: u64,
    /// Whether the old image lacks this blob.
    pub changed: bool,
    /// Its chunk index, if it has one.
    pub chunk_index: Option<Digest>,
    /// Chunks in its index (0 without one).
    pub chunks: usize,
    /// Chunks fetched for it at chunk level: in no old layer's index and not already
    /// counted for an earlier layer.
    pub new_chunks: usize,
    /// Bytes moved at layer level: 0 or `size`.
    pub layer_level_bytes: u64,
    /// Bytes moved at chunk level: new chunks plus the index blob; `size` when the layer
    /// changed and has no index.
    pub chunk_level_bytes: u64,
    /// `size` as a percentage of the new image's layers.
    pub size_percent: f64,
    /// `layer_level_bytes` as a percentage of the new image's layers.
    pub layer_level_percent: f64,
    /// `chunk_level_bytes` as a percentage of the new image's layers.
    pub chunk_level_percent: f64,
}

/// Per-layer download cost of going from `old` to `new`: layer level (every new layer whose
/// digest is not in the old image) and chunk level (chunks of changed layers that no old
/// layer's index holds, counted once, plus each needed index blob; a changed layer without
/// an index counts whole). Indexes of unchanged new layers are not needed.
pub fn compare_layers(old: &[IndexedLayer], new: &[IndexedLayer]) -> Vec<LayerDiff> {
    let old_blobs: HashSet<Digest> = old.iter().map(|l| l.layer.digest).collect();
    let old_chunks: HashSet<Digest> = old
        .iter()
        .filter_map(|l| l.index.as_ref())
        .flat_map(|i| i.index.chunks.iter().map(|c| c.id))
        .collect();
    let mut fetched: HashSet<Digest> = HashSet::new();
    let mut out: Vec<LayerDiff> = new
        .iter()
        .map(|l| {
            let changed = !old_blobs.contains(&l.layer.digest);
            let chunks = l.index.as_ref().map_or(0, |i| i.index.chunks.len());
            let (new_chunks, chunk_level_bytes) = match (&l.index, changed) {
                (_, false) => (0, 0),
                (None, true) => (0, l.layer.size),
                (Some(i), true) => {
                    let mut n = 0;
                    let mut bytes = i.blob_size;
                    for c in &i.index.chunks {
                        if !old_chunks.contains(&c.id) && fetched.insert(c.id) {
                            n += 1;
                            bytes += c.compressed_len;
                        }
                    }
                    (n, bytes)
                }
            };
            LayerDiff {
                name: l.layer.name.clone(),
                digest: l.layer.digest,
                size: l.layer.size,
                changed,
                chunk_index: l.layer.chunk_index,
                chunks,
                new_chunks,
                layer_level_bytes: if changed { l.layer.size } else { 0 },
                chunk_level_bytes,
                size_percent: 0.0,
                layer_level_percent: 0.0,
                chunk_level_percent: 0.0,
            }
        })
        .collect();
    let total: u64 = out.iter().map(|l| l.size).sum();
    for l in &mut out {
        l.size_percent = percent(l.size, total);
        l.layer_level_percent = percent(l.layer_level_bytes, total);
        l.chunk_level_percent = percent(l.chunk_level_bytes, total);
    }
    out
}

fn percent(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

fn ratio(n: u64, update: Option<u64>) -> Option<f64> {
    update.filter(|u| *u > 0).map(|u| n as f64 / u as f64)
}

/// The update's own size and what it is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpdateSize {
    /// gzip -6 size of the counted bytes, concatenated (0 when nothing is counted).
    pub bytes: u64,
    /// Counted bytes, uncompressed.
    pub raw_bytes: u64,
    /// Files of the new image whose path the old image lacks (counted whole).
    pub files_added: usize,
    /// Files whose content changed, counted whole (not a zip archive in both images).
    pub files_changed: usize,
    /// Files of the old image the new one lacks (not counted).
    pub files_removed: usize,
    /// Zip archives (paks) in both images whose content changed: only their new or
    /// changed entries count.
    pub archives_changed: usize,
    /// Entries of those archives whose name the old archive lacks.
    pub entries_added: usize,
    /// Entries whose content changed.
    pub entries_changed: usize,
    /// Entries of the old archives the new ones lack (not counted).
    pub entries_removed: usize,
}

/// What a node holding OLD must download to run NEW, three ways, and the update's own size.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    /// The old image, as named.
    pub old: String,
    /// The new image, as named.
    pub new: String,
    /// Digest of the old image manifest.
    pub old_manifest: Digest,
    /// Digest of the new image manifest.
    pub new_manifest: Digest,
    /// The whole new image: the sum of its layer blobs.
    pub image_bytes: u64,
    /// Every new layer whose digest is not in the old image (the layer-level way, as Docker and containerd pull).
    pub layer_level_bytes: u64,
    /// Chunks no old layer holds plus the chunk indexes of changed layers (Gantry's).
    pub chunk_level_bytes: u64,
    /// The update's own size (gzip -6 of the new and changed files and entries);
    /// `None` when not computed.
    pub update_bytes: Option<u64>,
    /// `layer_level_bytes` as a percentage of `image_bytes`.
    pub layer_level_percent: f64,
    /// `chunk_level_bytes` as a percentage of `image_bytes`.
    pub chunk_level_percent: f64,
    /// `update_bytes` as a percentage of `image_bytes`.
    pub update_percent: Option<f64>,
    /// `image_bytes` ÷ `update_bytes`.
    pub image_ratio: Option<f64>,
    /// `layer_level_bytes` ÷ `update_bytes`.
    pub layer_level_ratio: Option<f64>,
    /// `chunk_level_bytes` ÷ `update_bytes`.
    pub chunk_level_ratio: Option<f64>,
    /// What the update's own size is made of.
    pub update: Option<UpdateSize>,
    /// Per layer of the new image.
    pub layers: Vec<LayerDiff>,
}

impl DiffReport {
    /// Totals, percentages and ratios from per-layer costs and the update's own size.
    pub fn new(
        old: &OpenedImage,
        new: &OpenedImage,
        layers: Vec<LayerDiff>,
        update: Option<UpdateSize>,
    ) -> Self {
        let image_bytes = layers.iter().map(|l| l.size).sum();
        let layer_level_bytes = layers.iter().map(|l| l.layer_level_bytes).sum();
        let chunk_level_bytes = layers.iter().map(|l| l.chunk_level_bytes).sum();
        let update_bytes = update.as_ref().map(|u| u.bytes);
        DiffReport {
            old: old.name.clone(),
            new: new.name.clone(),
            old_manifest: old.manifest_digest,
            new_manifest: new.manifest_digest,
            image_bytes,
            layer_level_bytes,
            chunk_level_bytes,
            update_bytes,
            layer_level_percent: percent(layer_level_bytes, image_bytes),
            chunk_level_percent: percent(chunk_level_bytes, image_bytes),
            update_percent: update_bytes.map(|u| percent(u, image_bytes)),
            image_ratio: ratio(image_bytes, update_bytes),
            layer_level_ratio: ratio(layer_level_bytes, update_bytes),
            chunk_level_ratio: ratio(chunk_level_bytes, update_bytes),
            update,
            layers,
        }
    }
}

/// Options of [`diff`].
#[derive(Clone, Debug)]
pub struct DiffOptions {
    /// Compute the update's own size (reads both images whole; registry images are
    /// downloaded).
    pub update_size: bool,
    /// Platform OS picked from an image index.
    pub os: String,
    /// Platform architecture picked from an image index.
    pub arch: String,
    /// Where downloaded layers and large archives being compared are kept while the
    /// update's size is computed (default: the system's temporary directory).
    pub temp_dir: Option<PathBuf>,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            update_size: true,
            os: "linux".into(),
            arch: host_arch().into(),
            temp_dir: None,
        }
    }
}

/// Compares two images: what a node holding `old` must download to run `new`, whole,
/// at layer level and at chunk level, per layer and in total, and (unless
/// `options.update_size` is false) the update's own size.
pub async fn diff(
    old: &ImageSource<'_>,
    new: &ImageSource<'_>,
    options: &DiffOptions,
) -> ClientResult<DiffReport> {
    let old_image = old.open(&options.os, &options.arch).await?;
    let new_image = new.open(&options.os, &options.arch).await?;
    let mut old_layers = Vec::new();
    for layer in &old_image.layers {
        old_layers.push(IndexedLayer {
            layer: layer.clone(),
            index: old.chunk_index(layer).await?,
        });
    }
    let mut new_layers = Vec::new();
    for layer in &new_image.layers {
        new_layers.push(IndexedLayer {
            layer: layer.clone(),
            index: new.chunk_index(layer).await?,
        });
    }
    let layers = compare_layers(&old_layers, &new_layers);
    let update = if options.update_size {
        Some(images_update_size(old, &old_image, new, &new_image, options).await?)
    } else {
        None
    };
    Ok(DiffReport::new(&old_image, &new_image, layers, update))
}

async fn images_update_size(
    old: &ImageSource<'_>,
    old_image: &OpenedImage,
    new: &ImageSource<'_>,
    new_image: &OpenedImage,
    options: &DiffOptions,
) -> ClientResult<UpdateSize> {
    let same = |a: &OpenedImage, b: &OpenedImage| {
        a.layers
            .iter()
            .map(|l| l.digest)
            .eq(b.layers.iter().map(|l| l.digest))
    };
    if same(old_image, new_image) {
        return Ok(UpdateSize::default());
    }
    let base = options.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("gantry-diff-")
        .tempdir_in(&base)
        .map_err(ClientError::io(&base))?;
    let mut old_blobs = Vec::new();
    for layer in &old_image.layers {
        old_blobs.push(LayerBlob {
            path: old.layer_file(layer, tmp.path()).await?,
            digest: layer.digest,
        });
    }
    let mut new_blobs = Vec::new();
    for layer in &new_image.layers {
        new_blobs.push(LayerBlob {
            path: new.layer_file(layer, tmp.path()).await?,
            digest: layer.digest,
        });
    }
    let spool = tmp.path().to_path_buf();
    let size = tokio::task::spawn_blocking(move || update_size(&old_blobs, &new_blobs, &spool))
        .await
        .map_err(|e| ClientError::Invalid {
            what: "computing the update's own size".into(),
            message: e.to_string(),
        })??;
    drop(tmp);
    Ok(size)
}

/// A layer blob on disk (gzip-compressed or plain tar).
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// The blob file.
    pub path: PathBuf,
    /// Its digest (for messages).
    pub digest: Digest,
}

/// The update's own size from the layers of two images (each listed bottom to top): the
/// gzip -6 size of every regular file of `new` whose path `old` lacks or whose content
/// differs, except that for a zip archive in both images only its new or changed entries
/// count (compared by name and content). Counted bytes are concatenated in the new image's
/// layer and tar order, an archive's entries in central-directory order. Large archives
/// spill to temporary files in `spool_dir` while their entries are read.
///
/// Hard links are not counted (their content is counted under the file they link to);
/// directories, symbolic links and devices have no content; whiteouts remove paths of
/// lower layers.
pub fn update_size(
    old: &[LayerBlob],
    new: &[LayerBlob],
    spool_dir: &Path,
) -> ClientResult<UpdateSize> {
    let new_files = scan(new)?;
    let old_files = scan(old)?;
    let plan = plan(&old_files, &new_files);
    let mut size = plan.stats.clone();
    let old_zips = index_old_zips(old, &plan.old_zips, spool_dir)?;
    let mut sink = UpdateSink::new();
    count_new(
        new,
        &plan.counted,
        &old_zips,
        spool_dir,
        &mut sink,
        &mut size,
    )?;
    let (raw, gz) = sink.finish().map_err(ClientError::io(spool_dir))?;
    size.raw_bytes = raw;
    size.bytes = gz;
    Ok(size)
}

/// Where a file sits in an image: (layer, entry ordinal in the layer's tar).
type Pos = (usize, u64);

/// The final state of a regular file in an image.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileInfo {
    at: Pos,
    hash: Digest,
    zip: bool,
    link: bool,
}

/// Path → final file, after every layer and whiteout.
type FileMap = BTreeMap<String, FileInfo>;

/// A tar entry as the walk hands it over.
enum Item<'a> {
    File {
        path: String,
        data: &'a mut dyn Read,
    },
    HardLink {
        path: String,
        target: String,
    },
    Whiteout {
        path: String,
    },
    Opaque {
        dir: String,
    },
    Other {
        path: String,
    },
}

/// Whether a walk goes on.
enum Flow {
    Continue,
    Stop,
}

fn layer_error(blob: &LayerBlob, message: impl fmt::Display) -> ClientError {
    ClientError::Invalid {
        what: format!("layer {} ({})", blob.digest, blob.path.display()),
        message: message.to_string(),
    }
}

/// `a/./b/` → `a/b`; `None` for the root.
fn normalize(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Reads a layer blob's tar (gunzipping it when it is gzip) and hands each entry to
/// `visit` with its ordinal.
fn walk_layer(
    blob: &LayerBlob,
    visit: &mut dyn FnMut(u64, Item<'_>) -> ClientResult<Flow>,
) -> ClientResult<()> {
    let mut file = File::open(&blob.path).map_err(ClientError::io(&blob.path))?;
    let mut magic = [0u8; 4];
    let n = read_full(&mut file, &mut magic).map_err(ClientError::io(&blob.path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(ClientError::io(&blob.path))?;
    let reader: Box<dyn Read> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 20,
            file,
        )))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(layer_error(
            blob,
            "zstd-compressed layers are not supported by gantry diff",
        ));
    } else {
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| layer_error(blob, e))?;
    for (ordinal, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| layer_error(blob, e))?;
        let Some(path) = normalize(&entry.path_bytes()) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(&path);
        let parent = path.rsplit_once('/').map(|(p, _)| p.to_string());
        let item_path = path.clone();
        let kind = entry.header().entry_type();
        let flow = if name == ".wh..wh..opq" {
            visit(
                ordinal as u64,
                Item::Opaque {
                    dir: parent.unwrap_or_default(),
                },
            )?
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            let path = match parent {
                Some(p) => format!("{p}/{hidden}"),
                None => hidden.to_string(),
            };
            visit(ordinal as u64, Item::Whiteout { path })?
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .and_then(|t| normalize(&t))
                .unwrap_or_default();
            visit(
                ordinal as u64,
                Item::HardLink {
                    path: item_path,
                    target,
                },
            )?
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            visit(
                ordinal as u64,
                Item::File {
                    path: item_path,
                    data: &mut entry,
                },
            )?
        } else if kind.is_pax_global_extensions() {
            Flow::Continue
        } else {
            visit(ordinal as u64, Item::Other { path: item_path })?
        };
        if let Flow::Stop = flow {
            break;
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// sha256 of a file's content and whether it starts like a zip archive.
fn hash_content(data: &mut dyn Read) -> io::Result<(Digest, bool)> {
    let mut h = DigestHasher::new();
    let mut head = [0u8; 4];
    let n = read_full(data, &mut head)?;
    h.update(&head[..n]);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match data.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => h.update(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((h.finish(), n == 4 && head == ZIP_MAGIC))
}

/// Removes the files at `path` or under it that came from layers below `layer`.
fn remove_lower(files: &mut FileMap, path: &str, layer: usize, include_self: bool) {
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut gone: Vec<String> = files
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(_, f)| f.at.0 < layer)
        .map(|(k, _)| k.clone())
        .collect();
    if include_self && files.get(path).is_some_and(|f| f.at.0 < layer) {
        gone.push(path.to_string());
    }
    for k in gone {
        files.remove(&k);
    }
}

/// The regular files of an image, as they are after all its layers.
fn scan(layers: &[LayerBlob]) -> ClientResult<FileMap> {
    let mut files = FileMap::new();
    for (i, blob) in layers.iter().enumerate() {
        walk_layer(blob, &mut |n, item| {
            match item {
                Item::File { path, data } => {
                    let (hash, zip) = hash_content(data).map_err(|e| layer_error(blob, e))?;
                    files.insert(
                        path,
                        FileInfo {
                            at: (i, n),
                            hash,
                            zip,
                            link: false,
                        },
                    );
                }
                Item::HardLink { path, target } => match files.get(&target).cloned() {
                    Some(t) => {
                        files.insert(
                            path,
                            FileInfo {
                                at: (i, n),
                                link: true,
                                ..t
                            },
                        );
                    }
                    None => {
                        files.remove(&path);
                    }
                },
                Item::Whiteout { path } => remove_lower(&mut files, &path, i, true),
                Item::Opaque { dir } => remove_lower(&mut files, &dir, i, false),
                Item::Other { path } => {
                    files.remove(&path);
                }
            }
            Ok(Flow::Continue)
        })?;
    }
    Ok(files)
}

/// How a file of the new image counts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Counted {
    /// Every byte.
    Whole,
    /// Only entries new or changed against the old archive at the same path.
    Entries,
}

/// Which files count, and which old archives must be indexed to know.
#[derive(Debug, Default)]
struct Plan {
    /// Position in the new image → (path, how).
    counted: BTreeMap<Pos, (String, Counted)>,
    /// Position in the old image → path, of archives to compare entry by entry.
    old_zips: BTreeMap<Pos, String>,
    stats: UpdateSize,
}

fn plan(old: &FileMap, new: &FileMap) -> Plan {
    let mut p = Plan::default();
    for (path, f) in new {
        if f.link {
            continue;
        }
        match old.get(path) {
            None => {
                p.stats.files_added += 1;
                p.counted.insert(f.at, (path.clone(), Counted::Whole));
            }
            Some(o) if o.hash == f.hash => {}
            Some(o) if o.zip && f.zip && !o.link => {
                p.counted.insert(f.at, (path.clone(), Counted::Entries));
                p.old_zips.insert(o.at, path.clone());
            }
            Some(_) => {
                p.stats.files_changed += 1;
                p.counted.insert(f.at, (path.clone(), Counted::Whole));
            }
        }
    }
    p.stats.files_removed = old.keys().filter(|k| !new.contains_key(*k)).count();
    p
}

/// One entry of a zip archive: where its stored bytes are and a hash of them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ZipEntry {
    name: String,
    start: u64,
    len: u64,
    method: zip::CompressionMethod,
    crc32: u32,
    hash: Digest,
}

/// Reads the entries of a zip archive (central directory order, directories left out);
/// `None` when it cannot be read as one. Entries are compared by their stored bytes, which
/// for the stored entries of game paks are the content itself.
fn index_zip<R: Read + Seek>(reader: R) -> Option<Vec<ZipEntry>> {
    let mut archive = zip::ZipArchive::new(reader).ok()?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut entry = archive.by_index_raw(i).ok()?;
        if entry.is_dir() {
            continue;
        }
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let method = entry.compression();
        let crc32 = entry.crc32();
        let len = entry.compressed_size();
        let mut h = DigestHasher::new();
        let copied = io::copy(&mut entry, &mut h).ok()?;
        if copied != len {
            return None;
        }
        let start = entry.data_start()?;
        out.push(ZipEntry {
            name,
            start,
            len,
            method,
            crc32,
            hash: h.finish(),
        });
    }
    Some(out)
}

/// Whether an entry is new or changed against the old archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryChange {
    Added,
    Changed,
}

/// The entries of `new` (by index) that `old` lacks or holds with other content, and how
/// many entries of `old` are gone.
fn changed_entries(old: &[ZipEntry], new: &[ZipEntry]) -> (Vec<(usize, EntryChange)>, usize) {
    let by_name: HashMap<&str, &ZipEntry> = old.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut out = Vec::new();
    for (i, e) in new.iter().enumerate() {
        match by_name.get(e.name.as_str()) {
            None => out.push((i, EntryChange::Added)),
            Some(o) if o.hash != e.hash || o.method != e.method || o.crc32 != e.crc32 => {
                out.push((i, EntryChange::Changed))
            }
            Some(_) => {}
        }
    }
    let names: HashSet<&str> = new.iter().map(|e| e.name.as_str()).collect();
    let removed = old
        .iter()
        .map(|e| e.name.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|n| !names.contains(n))
        .count();
    (out, removed)
}

/// Copies a file's content into a spool (memory, or a temporary file when large).
fn spool(data: &mut dyn Read, dir: &Path) -> io::Result<tempfile::SpooledTempFile> {
    let mut s = tempfile::spooled_tempfile_in(SPOOL_IN_MEMORY, dir);
    io::copy(data, &mut s)?;
    s.seek(SeekFrom::Start(0))?;
    Ok(s)
}

/// Entries of the old image's archives listed in `wanted` (by path; `None` when one is not
/// a readable zip). Only layers holding one of them are read.
fn index_old_zips(
    layers: &[LayerBlob],
    wanted: &BTreeMap<Pos, String>,
    spool_dir: &Path,
) -> ClientResult<HashMap<String, Option<Vec<ZipEntry>>>> {
    let mut out = HashMap::new();
    for (i, blob) in layers.iter().enumerate() {
        let Some(last) = wanted
            .range((i, 0)..(i + 1, 0))
            .next_back()
            .map(|(p, _)| p.1)
        else {
            continue;
        };
        walk_layer(blob, &mut |n, item| {
            if let Item::File { data, .. } = item {
                if let Some(path) = wanted.get(&(i, n)) {
                    let s = spool(data, spool_dir).map_err(|e| layer_error(blob, e))?;
                    out.insert(path.clone(), index_zip(s));
                }
            }
            Ok(if n >= last {
                Flow::Stop
            } else {
                Flow::Continue
            })
        })?;
    }
    Ok(out)
}

/// Feeds the counted files and entries of the new image to `sink`.
fn count_new(
    layers: &[LayerBlob],
    counted: &BTreeMap<Pos, (String, Counted)>,
    old_zips: &HashMap<String, Option<Vec<ZipEntry>>>,
    spool_dir: &Path,
    sink: &mut UpdateSink,
    size: &mut UpdateSize,
) -> ClientResult<()> {
    for (i, blob) in layers.iter().enumerate() {
        let Some(last) = counted
            .range((i, 0)..(i + 1, 0))
            .next_back()
            .map(|(p, _)| p.1)
        else {
            continue;
        };
        walk_layer(blob, &mut |n, item| {
            if let Item::File { data, .. } = item {
                if let Some((path, how)) = counted.get(&(i, n)) {
                    let err = |e: io::Error| layer_error(blob, format!("{path}: {e}"));
                    match how {
                        Counted::Whole => {
                            io::copy(data, sink).map_err(err)?;
                        }
                        Counted::Entries => {
                            let mut s = spool(data, spool_dir).map_err(err)?;
                            let old = old_zips.get(path).and_then(|z| z.as_ref());
                            let new = index_zip(&mut s);
                            match (old, new) {
                                (Some(old), Some(new)) => {
                                    size.archives_changed += 1;
                                    let (changed, removed) = changed_entries(old, &new);
                                    size.entries_removed += removed;
                                    for (k, change) in changed {
                                        match change {
                                            EntryChange::Added => size.entries_added += 1,
                                            EntryChange::Changed => size.entries_changed += 1,
                                        }
                                        let e = &new[k];
                                        s.seek(SeekFrom::Start(e.start)).map_err(err)?;
                                        let copied = io::copy(&mut (&mut s).take(e.len), sink)
                                            .map_err(err)?;
                                        if copied != e.len {
                                            return Err(layer_error(
                                                blob,
                                                format!(
                                                    "{path}: zip entry {} is truncated",
                                                    e.name
                                                ),
                                            ));
                                        }
                                    }
                                }
                                _ => {
                                    size.files_changed += 1;
                                    s.seek(SeekFrom::Start(0)).map_err(err)?;
                                    io::copy(&mut s, sink).map_err(err)?;
                                }
                            }
                        }
                    }
                }
            }
            Ok(if n >= last {
                Flow::Stop
            } else {
                Flow::Continue
            })
        })?;
    }
    Ok(())
}

/// Counts bytes written to it.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Input block of the gzip encoder: deflate's output depends a little on how its input is
/// split, so bytes are fed in fixed blocks and the size is a function of the bytes alone.
const GZIP_BLOCK: usize = 1 << 20;

/// gzip -6 of everything written, counted.
struct UpdateSink {
    enc: GzEncoder<CountingSink>,
    buf: Vec<u8>,
    raw: u64,
}

impl UpdateSink {
    fn new() -> Self {
        UpdateSink {
            enc: GzEncoder::new(CountingSink(0), Compression::new(6)),
            buf: Vec::with_capacity(GZIP_BLOCK),
            raw: 0,
        }
    }

    /// (bytes written, gzip size); (0, 0) when nothing was written.
    fn finish(mut self) -> io::Result<(u64, u64)> {
        self.enc.write_all(&self.buf)?;
        let raw = self.raw;
        let gz = self.enc.finish()?.0;
        Ok(if raw == 0 { (0, 0) } else { (raw, gz) })
    }
}

impl Write for UpdateSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(GZIP_BLOCK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == GZIP_BLOCK {
            self.enc.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.raw += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_layer::{ChunkRecord, ChunkerParams, CompressionParams};

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut w = zip::ZipWriter::new(io::Cursor::new(&mut bytes));
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            for (name, data) in entries {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
            w.finish().unwrap();
        }
        bytes
    }

    enum T<'a> {
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        Dir(&'a str),
    }

    /// A gzip tar layer blob in `dir`.
    fn layer(dir: &Path, name: &str, entries: &[T<'_>]) -> LayerBlob {
        let mut tar_bytes = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar_bytes);
            for e in entries {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                match e {
                    T::File(path, data) => {
                        h.set_size(data.len() as u64);
                        h.set_cksum();
                        b.append_data(&mut h, path, *data).unwrap();
                    }
                    T::Link(path, target) => {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, path, target).unwrap();
                    }
                    T::Dir(path) => {
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_size(0);
                        h.set_cksum();
                        b.append_data(&mut h, path, io::empty()).unwrap();
                    }
                }
            }
            b.finish().unwrap();
        }
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar_bytes).unwrap();
        let blob = gz.finish().unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &blob).unwrap();
        LayerBlob {
            path,
            digest: Digest::of(&blob),
        }
    }

    fn gzip6(data: &[u8]) -> u64 {
        let mut sink = UpdateSink::new();
        sink.write_all(data).unwrap();
        sink.finish().unwrap().1
    }

    #[test]
    fn the_update_size_does_not_depend_on_how_bytes_arrive() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let mut split = UpdateSink::new();
        for c in data.chunks(8191) {
            split.write_all(c).unwrap();
        }
        let (raw, gz) = split.finish().unwrap();
        assert_eq!((raw, gz), (data.len() as u64, gzip6(&data)));
        assert_eq!(UpdateSink::new().finish().unwrap(), (0, 0));
    }

    fn entry(name: &str, data: &[u8]) -> ZipEntry {
        ZipEntry {
            name: name.into(),
            start: 0,
            len: data.len() as u64,
            method: zip::CompressionMethod::Stored,
            crc32: 0,
            hash: Digest::of(data),
        }
    }

    #[test]
    fn entries_compare_by_name_and_content() {
        let old = [entry("a", b"1"), entry("b", b"2"), entry("gone", b"3")];
        let new = [
            entry("b", b"2 but re-exported"),
            entry("a", b"1"),
            entry("new", b"4"),
        ];
        let (changed, removed) = changed_entries(&old, &new);
        assert_eq!(
            changed,
            [(0, EntryChange::Changed), (2, EntryChange::Added)]
        );
        assert_eq!(removed, 1);
        let (same, removed) = changed_entries(&old, &old);
        assert!(same.is_empty());
        assert_eq!(removed, 0);
    }

    #[test]
    fn stored_zip_entries_are_located_and_hashed() {
        let bytes = zip_of(&[("tex/a.dds", b"aaaa"), ("snd/b.ogg", b"bbbbbbbb")]);
        let entries = index_zip(io::Cursor::new(&bytes)).unwrap();
        assert_eq!(entries.len(), 2);
        for (e, data) in entries.iter().zip([&b"aaaa"[..], b"bbbbbbbb"]) {
            assert_eq!(
                &bytes[e.start as usize..(e.start + e.len) as usize],
                data,
                "{}",
                e.name
            );
            assert_eq!(e.hash, Digest::of(data));
        }
        assert_eq!(entries[1].name, "snd/b.ogg");
        assert!(index_zip(io::Cursor::new(b"PK\x03\x04 not really")).is_none());
    }

    #[test]
    fn update_size_counts_new_and_changed_files_and_only_changed_pak_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let old_pak = zip_of(&[
            ("same", &big[..100_000]),
            ("edited", b"old texture"),
            ("removed", b"bye"),
        ]);
        let new_pak = zip_of(&[
            ("same", &big[..100_000]),
            ("edited", b"new texture, a little longer"),
            ("added", b"brand new entry"),
        ]);
        let old = vec![
            layer(
                d,
                "old0",
                &[
                    T::Dir("game"),
                    T::File("game/a.cfg", b"a=1"),
                    T::File("game/b.pak", &old_pak),
                    T::File("game/engine.bin", &big),
                    T::File("game/old-only.txt", b"x"),
                ],
            ),
            layer(d, "old1", &[T::File("game/a.cfg", b"a=2")]),
        ];
        let new = vec![
            layer(
                d,
                "new0",
                &[
                    T::File("./game/a.cfg", b"a=2"),
                    T::File("game/b.pak", &new_pak),
                    T::File("game/engine.bin", &big[1..]),
                    T::File("game/shadowed.txt", b"replaced below"),
                    T::File("game/whited.txt", b"removed by a whiteout"),
                    T::File("game/levels/l1.dat", b"opaque dir hides this"),
                ],
            ),
            layer(
                d,
                "new1",
                &[
                    T::File("game/shadowed.txt", b"final"),
                    T::File("game/.wh.whited.txt", b""),
                    T::File("game/levels/.wh..wh..opq", b""),
                    T::File("game/levels/l2.dat", b"level two"),
                    T::Link("game/link.bin", "game/engine.bin"),
                ],
            ),
        ];
        let size = update_size(&old, &new, d).unwrap();
        // Layer order, then tar order; inside the pak, central-directory order.
        let mut expected = Vec::new();
        expected.extend_from_slice(b"new texture, a little longer");
        expected.extend_from_slice(b"brand new entry");
        expected.extend_from_slice(&big[1..]);
        expected.extend_from_slice(b"final");
        expected.extend_from_slice(b"level two");
        assert_eq!(size.raw_bytes, expected.len() as u64);
        assert_eq!(size.bytes, gzip6(&expected));
        assert_eq!(
            size,
            UpdateSize {
                bytes: gzip6(&expected),
                raw_bytes: expected.len() as u64,
                files_added: 2,
                files_changed: 1,
                files_removed: 1,
                archives_changed: 1,
                entries_added: 1,
                entries_changed: 1,
                entries_removed: 1,
            }
        );
    }

    #[test]
    fn a_pak_new_to_the_image_or_not_a_zip_before_counts_whole() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pak = zip_of(&[("e", b"entry")]);
        let old = vec![layer(
            d,
            "old",
            &[T::File("b.pak", b"PK\x03\x04 but no zip")],
        )];
        let new = vec![layer(
            d,
            "new",
            &[T::File("a.pak", &pak), T::File("b.pak", &pak)],
        )];
        let size = update_size(&old, &new, d).unwrap();
        let expected = [pak.clone(), pak].concat();
        assert_eq!(size.raw_bytes, expected.len() as u64);
        assert_eq!(size.bytes, gzip6(&expected));
        assert_eq!((size.files_added, size.files_changed), (1, 1));
    }

    #[test]
    fn identical_contents_give_zero() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pak = zip_of(&[("e", b"entry")]);
        let a = vec![layer(d, "a", &[T::File("x", b"1"), T::File("p.pak", &pak)])];
        // Other layering, same final files.
        let b = vec![
            layer(d, "b0", &[T::File("x", b"0")]),
            layer(d, "b1", &[T::File("x", b"1"), T::File("p.pak", &pak)]),
        ];
        assert_eq!(update_size(&a, &b, d).unwrap(), UpdateSize::default());
    }

    fn indexed(name: &str, size: u64, chunks: &[(&str, u64)], index_size: u64) -> IndexedLayer {
        let digest = Digest::of(name.as_bytes());
        let index = (!chunks.is_empty()).then(|| LayerIndex {
            index: ChunkIndex {
                schema_version: 1,
                media_type: media_types::CHUNK_INDEX_ARTIFACT.into(),
                layer_digest: digest,
                layer_size: size,
                diff_id: digest,
                uncompressed_size: 0,
                compression: CompressionParams {
                    format: "gzip".into(),
                    deflate: "zlib-rs".into(),
                    level: 6,
                },
                chunker: ChunkerParams::default(),
                chunks: chunks
                    .iter()
                    .map(|(id, len)| ChunkRecord {
                        compressed_len: *len,
                        uncompressed_len: *len,
                        id: Digest::of(id.as_bytes()),
                    })
                    .collect(),
            },
            blob_size: index_size,
        });
        IndexedLayer {
            layer: ImageLayer {
                digest,
                size,
                media_type: media_types::OCI_LAYER_GZIP.into(),
                name: Some(name.into()),
                chunk_index: index.as_ref().map(|_| Digest::of(b"index")),
            },
            index,
        }
    }

    #[test]
    fn layer_and_chunk_level_costs() {
        let old = [
            indexed("engine", 100, &[("e1", 60), ("e2", 40)], 5),
            indexed("paks-v1", 1000, &[("p1", 500), ("p2", 500)], 7),
        ];
        let new = [
            indexed("engine", 100, &[("e1", 60), ("e2", 40)], 5),
            // p2 kept, p3 new and repeated, e1 found in another old layer.
            indexed("paks-v2", 1100, &[("p3", 300), ("p2", 500), ("p3", 300)], 9),
            indexed("extra", 50, &[], 0),
        ];
        let l = compare_layers(&old, &new);
        assert_eq!(
            l.iter().map(|l| l.changed).collect::<Vec<_>>(),
            [false, true, true]
        );
        assert_eq!(
            l.iter().map(|l| l.layer_level_bytes).collect::<Vec<_>>(),
            [0, 1100, 50]
        );
        assert_eq!(
            l.iter().map(|l| l.chunk_level_bytes).collect::<Vec<_>>(),
            [0, 9 + 300, 50]
        );
        assert_eq!(l[1].new_chunks, 1);
        assert_eq!(l[1].chunks, 3);
        assert!((l[1].layer_level_percent - 100.0 * 1100.0 / 1250.0).abs() < 1e-9);
    }
}
