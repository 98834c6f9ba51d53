//! The build itself: base image, layers (from cache or freshly chunked),
//! config, manifest, chunk-index referrer, layout.

use crate::cache::{BuildCache, CachedLayer};
use crate::error::BuildError;
use crate::sources::{fingerprint_layer, resolve_layer};
use crate::spec::{BuildSpec, LayerSpec, SourceSpec};
use gantry_client::layout::{LayoutWriter, OciLayout};
use gantry_layer::{ChunkReuse, ChunkerParams, LayerOptions, NoReuse, SegmentPlan, TarOptions};
use gantry_oci::spec::{
    Config, DescriptorBuilder, History, ImageConfiguration, ImageIndexBuilder, ImageManifest,
    ImageManifestBuilder, MediaType, RootFs,
};
use gantry_oci::{media_types, Digest};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Bumped whenever the bytes a build produces for the same inputs change,
/// so old cache entries are not reused.
const CACHE_FORMAT: &[u8] = b"gantry-build-cache-v3";

/// What to build and where.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The game repository (relative paths in the spec start here).
    pub context: PathBuf,
    /// The spec file, default `<context>/gantry.toml`.
    pub spec_file: Option<PathBuf>,
    /// Output OCI layout directory.
    pub output: PathBuf,
    /// Cache directory; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH`: mtime of every entry and the image's created time.
    pub source_date_epoch: u64,
    /// Compression threads.
    pub threads: usize,
    /// Overrides the spec's tag.
    pub tag: Option<String>,
    /// How to reach the registry of a `[base] image = "…"` (credentials, CA, plain HTTP).
    pub registry: gantry_client::ClientOptions,
}

/// Progress callbacks for long builds.
pub trait BuildProgress: Sync {
    /// A layer starts; `bytes` is its content size (0 when cached).
    fn layer_started(&self, _name: &str, _bytes: u64) {}
    /// Uncompressed bytes of the current layer processed so far.
    fn layer_progress(&self, _name: &str, _done: u64) {}
    /// A layer is done.
    fn layer_finished(&self, _report: &LayerReport) {}
}

/// No progress output.
pub struct NoProgress;
impl BuildProgress for NoProgress {}

/// One layer of the result.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Name in the spec (`base` for base image layers).
    pub name: String,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Uncompressed digest.
    pub diff_id: Option<Digest>,
    /// Uncompressed size.
    pub uncompressed_size: Option<u64>,
    /// Chunk count (0 for base layers without an index).
    pub chunks: usize,
    /// Chunk index blob, when the layer has one.
    pub chunk_index: Option<Digest>,
    /// Where the layer came from: `built`, `cached` or `base`.
    pub source: &'static str,
    /// Uncompressed bytes whose compressed chunks were reused from the cache.
    pub reused_bytes: u64,
    /// Uncompressed bytes cut by the chunker and hashed chunk by chunk; the
    /// rest followed cuts the cache knew for unchanged files and archive
    /// entries, checked against the bytes. 0 for a cached or base layer.
    pub chunked_bytes: u64,
    /// Time spent on this layer.
    pub seconds: f64,
    /// What was wrong with the layer's archives (game paks): each names the
    /// file and the entry. The layer is still exact; such a file is chunked
    /// as a plain file, or its lying entry is not taken from the cache.
    pub warnings: Vec<String>,
}

/// The result of a build.
#[derive(Clone, Debug, Serialize)]
pub struct BuildOutput {
    /// Digest of the image manifest.
    pub manifest_digest: Digest,
    /// Size of the image manifest.
    pub manifest_size: u64,
    /// Digest of the image config.
    pub config_digest: Digest,
    /// Digest of the chunk-index referrer manifest, if any layer has an index.
    pub referrer_digest: Option<Digest>,
    /// The manifest digest a `[base] image` reference resolved to.
    pub base_digest: Option<Digest>,
    /// The layout written.
    pub layout: PathBuf,
    /// `name:tag`.
    pub image: String,
    /// Tag in the layout.
    pub tag: String,
    /// Layers, base first.
    pub layers: Vec<LayerReport>,
    /// Sum of layer blob sizes.
    pub total_size: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Builds the image described by the spec into an OCI layout.
pub fn build(opts: &BuildOptions, progress: &dyn BuildProgress) -> Result<BuildOutput, BuildError> {
    let started = Instant::now();
    let spec_path = opts
        .spec_file
        .clone()
        .unwrap_or_else(|| opts.context.join("gantry.toml"));
    let spec = BuildSpec::load(&spec_path)?;
    let tag = opts.tag.clone().unwrap_or_else(|| spec.image.tag.clone());
    format!("localhost/{}:{tag}", spec.image.name)
        .parse::<gantry_oci::Reference>()
        .map_err(|e| BuildError::Spec(format!("tag: {e}")))?;
    // The supervisor binary is checked before any work, so a missing one fails fast.
    let supervise = match &spec.supervise {
        Some(section) => Some((
            section,
            crate::supervise::find_binary(section, &opts.context, &spec.image.architecture)?,
        )),
        None => None,
    };
    let cache = opts
        .cache_dir
        .as_deref()
        .map(BuildCache::open)
        .transpose()?;
    let writer = LayoutWriter::create(&opts.output)?;
    let layer_options = LayerOptions {
        chunker: ChunkerParams {
            min: spec.chunking.min,
            avg: spec.chunking.avg,
            max: spec.chunking.max,
            large_file_scale: spec.chunking.large_file_scale,
        },
        gzip_level: spec.chunking.gzip_level,
        threads: opts.threads.max(1),
    };
    let tar_options = TarOptions {
        mtime: opts.source_date_epoch,
    };
    let created =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(opts.source_date_epoch))
            .to_string();

    // Base image.
    let mut base = BaseImage::default();
    let mut base_annotations = HashMap::new();
    let mut base_digest = None;
    let mut layer_specs: Vec<LayerSpec> = spec.layers.clone();
    if let Some(b) = &spec.base {
        if let Some(rootfs) = &b.rootfs {
            layer_specs.insert(
                0,
                LayerSpec {
                    name: "base-rootfs".into(),
                    owner: None,
                    sources: vec![SourceSpec {
                        tar: Some(rootfs.clone()),
                        ..SourceSpec::default()
                    }],
                },
            );
            layer_specs[0].sources[0].dest = "/".into();
        } else if let Some(layout) = &b.layout {
            base = BaseImage::from_layout(
                &opts.context.join(layout),
                b.tag.as_deref(),
                &spec,
                &writer,
                progress,
            )?;
        } else if let Some(image) = &b.image {
            let (pulled, reference, digest) = pull_base(image, opts, &spec)?;
            base = BaseImage::from_layout(pulled.path(), None, &spec, &writer, progress)?;
            base_annotations.insert(media_types::ANNOTATION_BASE_NAME.to_string(), reference);
            base_annotations.insert(
                media_types::ANNOTATION_BASE_DIGEST.to_string(),
                digest.to_string(),
            );
            base_digest = Some(digest);
        }
    }

    // The supervisor last: it changes independently of the game, and the layers below stay
    // the same when it is turned on or off.
    if let Some((section, binary)) = &supervise {
        layer_specs.push(crate::supervise::layer(section, binary));
    }

    let mut reports = base.reports.clone();
    let mut descriptors = base.descriptors.clone();
    let mut diff_ids = base.diff_ids.clone();
    let mut history = base.history.clone();
    let mut index_descriptors = Vec::new();
    for layer in &layer_specs {
        let t = Instant::now();
        let built = build_layer(
            opts,
            &cache,
            &writer,
            layer,
            &layer_options,
            tar_options,
            progress,
        )?;
        let mut annotations = HashMap::new();
        annotations.insert(
            media_types::ANNOTATION_CHUNK_INDEX.to_string(),
            built.index_digest.to_string(),
        );
        annotations.insert(
            media_types::ANNOTATION_LAYER_NAME.to_string(),
            layer.name.clone(),
        );
        descriptors.push(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageLayerGzip)
                .digest(built.digest.to_oci())
                .size(built.size)
                .annotations(annotations)
                .build()
                .map_err(|e| BuildError::Spec(e.to_string()))?,
        );
        let mut idx_annotations = HashMap::new();
        idx_annotations.insert(
            media_types::ANNOTATION_CHUNK_INDEX.to_string(),
            built.digest.to_string(),
        );
        index_descriptors.push(
            DescriptorBuilder::default()
                .media_type(MediaType::Other(media_types::CHUNK_INDEX_BLOB.into()))
                .digest(built.index_digest.to_oci())
                .size(built.index_size)
                .annotations(idx_annotations)
                .build()
                .map_err(|e| BuildError::Spec(e.to_string()))?,
        );
        diff_ids.push(built.diff_id.to_string());
        let mut h = History::default();
        h.set_created(Some(created.clone()));
        h.set_created_by(Some(format!("gantry build: layer {}", layer.name)));
        history.push(h);
        let report = LayerReport {
            name: layer.name.clone(),
            digest: built.digest,
            size: built.size,
            diff_id: Some(built.diff_id),
            uncompressed_size: Some(built.uncompressed_size),
            chunks: built.chunks,
            chunk_index: Some(built.index_digest),
            source: built.source,
            reused_bytes: built.reused_bytes,
            chunked_bytes: built.chunked_bytes,
            seconds: t.elapsed().as_secs_f64(),
            warnings: built.warnings,
        };
        progress.layer_finished(&report);
        reports.push(report);
    }

    // Config.
    let mut config = image_config(&spec, base.config.as_ref(), diff_ids, history, &created)?;
    if let Some((section, _)) = &supervise {
        crate::supervise::apply_to_config(section, &mut config)?;
    }
    let config_bytes = gantry_oci::canonical_json("image config", &config)
        .map_err(|e| BuildError::Spec(e.to_string()))?;
    let config_digest = writer.put_bytes(&config_bytes)?;
    let config_desc = DescriptorBuilder::default()
        .media_type(MediaType::ImageConfig)
        .digest(config_digest.to_oci())
        .size(config_bytes.len() as u64)
        .build()
        .map_err(|e| BuildError::Spec(e.to_string()))?;

    // Manifest.
    let mut manifest_annotations = HashMap::new();
    manifest_annotations.insert(media_types::ANNOTATION_CREATED.to_string(), created.clone());
    manifest_annotations.extend(base_annotations);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(descriptors)
        .annotations(manifest_annotations)
        .build()
        .map_err(|e| BuildError::Spec(e.to_string()))?;
    let manifest_bytes = gantry_oci::canonical_json("manifest", &manifest)
        .map_err(|e| BuildError::Spec(e.to_string()))?;
    let manifest_digest = writer.put_bytes(&manifest_bytes)?;
    let manifest_desc_plain = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(manifest_digest.to_oci())
        .size(manifest_bytes.len() as u64)
        .build()
        .map_err(|e| BuildError::Spec(e.to_string()))?;

    // Chunk-index referrer artifact (subject: the image manifest).
    let referrer = if index_descriptors.is_empty() {
        None
    } else {
        let empty = writer.put_bytes(media_types::EMPTY_JSON)?;
        let referrer = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .artifact_type(MediaType::Other(media_types::CHUNK_INDEX_ARTIFACT.into()))
            .config(
                DescriptorBuilder::default()
                    .media_type(MediaType::EmptyJSON)
                    .digest(empty.to_oci())
                    .size(media_types::EMPTY_JSON.len() as u64)
                    .build()
                    .map_err(|e| BuildError::Spec(e.to_string()))?,
            )
            .layers(index_descriptors)
            .subject(manifest_desc_plain.clone())
            .build()
            .map_err(|e| BuildError::Spec(e.to_string()))?;
        let bytes = gantry_oci::canonical_json("referrer manifest", &referrer)
            .map_err(|e| BuildError::Spec(e.to_string()))?;
        Some((writer.put_bytes(&bytes)?, bytes.len() as u64))
    };

    let mut tagged = manifest_desc_plain.clone();
    let mut ann = HashMap::new();
    ann.insert(media_types::ANNOTATION_REF_NAME.to_string(), tag.clone());
    tagged.set_annotations(Some(ann));
    // The referrer is listed untagged with its artifactType, as `oras attach
    // --oci-layout` does, so layout-aware tools can discover it.
    let mut manifests = vec![tagged];
    if let Some((digest, size)) = referrer {
        manifests.push(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageManifest)
                .digest(digest.to_oci())
                .size(size)
                .artifact_type(MediaType::Other(media_types::CHUNK_INDEX_ARTIFACT.into()))
                .build()
                .map_err(|e| BuildError::Spec(e.to_string()))?,
        );
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| BuildError::Spec(e.to_string()))?;
    let layout = writer.commit(&index)?;
    if let Some(cache) = &cache {
        cache.prune()?;
    }
    let total_size = reports.iter().map(|r| r.size).sum();
    Ok(BuildOutput {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config_digest,
        referrer_digest: referrer.map(|r| r.0),
        base_digest,
        layout,
        image: format!("{}:{tag}", spec.image.name),
        tag,
        layers: reports,
        total_size,
        seconds: started.elapsed().as_secs_f64(),
    })
}

struct BuiltLayer {
    digest: Digest,
    size: u64,
    diff_id: Digest,
    uncompressed_size: u64,
    chunks: usize,
    index_digest: Digest,
    index_size: u64,
    source: &'static str,
    reused_bytes: u64,
    chunked_bytes: u64,
    warnings: Vec<String>,
}

fn build_layer(
    opts: &BuildOptions,
    cache: &Option<BuildCache>,
    writer: &LayoutWriter,
    layer: &LayerSpec,
    options: &LayerOptions,
    tar_options: TarOptions,
    progress: &dyn BuildProgress,
) -> Result<BuiltLayer, BuildError> {
    let salt = format!(
        "{}\0{}\0{:?}\0{}\0{}",
        String::from_utf8_lossy(CACHE_FORMAT),
        tar_options.mtime,
        options.chunker,
        options.gzip_level,
        gantry_layer::DEFLATE_IMPLEMENTATION
    );
    let fingerprint = fingerprint_layer(&opts.context, layer, salt.as_bytes())?;
    if let Some(cache) = cache {
        if let Some(hit) = cache.lookup_layer(&fingerprint) {
            progress.layer_started(&layer.name, 0);
            writer.put_file(&cache.blob_path(&hit.digest), &hit.digest)?;
            writer.put_file(&cache.blob_path(&hit.index_digest), &hit.index_digest)?;
            return Ok(BuiltLayer {
                digest: hit.digest,
                size: hit.size,
                diff_id: hit.diff_id,
                uncompressed_size: hit.uncompressed_size,
                chunks: hit.chunks,
                index_digest: hit.index_digest,
                index_size: hit.index_size,
                source: "cached",
                reused_bytes: hit.uncompressed_size,
                chunked_bytes: 0,
                warnings: Vec::new(),
            });
        }
    }
    let scratch_parent = match cache {
        Some(c) => c.tmp_dir(),
        None => writer.path().to_path_buf(),
    };
    let staging = tempfile::Builder::new()
        .prefix("staging-")
        .tempdir_in(&scratch_parent)
        .map_err(BuildError::io(&scratch_parent))?;
    let resolved = resolve_layer(&opts.context, layer, staging.path())?;
    progress.layer_started(&layer.name, resolved.content_bytes);
    // Files of at least one average chunk (and pak entries of 4 KiB or more)
    // get chunk boundaries of their own; see gantry_layer::SegmentPlan.
    let layer_error = |source| BuildError::Layer {
        layer: layer.name.clone(),
        source,
    };
    let big_file = u64::from(options.chunker.avg);
    let plan =
        SegmentPlan::new(resolved.entries.clone(), tar_options, big_file).map_err(layer_error)?;
    let map_key = format!("{}\0{salt}", layer.name);
    let reuse = cache.as_ref().map(|c| c.chunk_reuse(&map_key));
    let name = layer.name.as_str();
    let reuse: &dyn ChunkReuse = match &reuse {
        Some(r) => r,
        None => &NoReuse,
    };
    let write = |plan: SegmentPlan| -> Result<_, BuildError> {
        let blob_tmp = tempfile::NamedTempFile::new_in(&scratch_parent)
            .map_err(BuildError::io(&scratch_parent))?;
        let keys: Vec<Option<Digest>> = plan.segments.iter().map(|s| s.reuse_key).collect();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, blob_tmp.as_file());
        let written = gantry_layer::write_layer(plan, &mut out, options, reuse, &|done| {
            progress.layer_progress(name, done)
        })
        .map_err(layer_error)?;
        drop(out);
        Ok((blob_tmp, keys, written))
    };
    let (mut blob_tmp, mut segment_keys, mut written) = write(plan)?;
    if !written.lying_archives.is_empty() {
        // A pak whose directory lies is chunked as a plain file: the layer is
        // written again (cold and warm builds alike, so they stay identical).
        let plan = SegmentPlan::with_plain_files(
            resolved.entries,
            tar_options,
            big_file,
            &written.lying_archives,
        )
        .map_err(layer_error)?;
        let first_notes = std::mem::take(&mut written.notes);
        drop(blob_tmp);
        (blob_tmp, segment_keys, written) = write(plan)?;
        let mut notes = first_notes;
        for note in std::mem::take(&mut written.notes) {
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        written.notes = notes;
    }
    drop(staging);
    let index_blob = written
        .index()
        .to_blob()
        .map_err(|source| BuildError::Layer {
            layer: layer.name.clone(),
            source,
        })?;
    let index_digest = Digest::of(&index_blob);
    match cache {
        Some(cache) => {
            let blob_path = cache.blob_path(&written.digest);
            blob_tmp.persist(&blob_path).map_err(|e| BuildError::Io {
                path: blob_path.clone(),
                source: e.error,
            })?;
            let index_path = cache.blob_path(&index_digest);
            fs::write(&index_path, &index_blob).map_err(BuildError::io(&index_path))?;
            writer.put_file(&blob_path, &written.digest)?;
            writer.put_file(&index_path, &index_digest)?;
            let cached = CachedLayer {
                name: layer.name.clone(),
                digest: written.digest,
                size: written.size,
                diff_id: written.diff_id,
                uncompressed_size: written.uncompressed_size,
                chunks: written.chunks.len(),
                index_digest,
                index_size: index_blob.len() as u64,
            };
            cache.record_layer(&fingerprint, &map_key, &cached, &written, &segment_keys)?;
        }
        None => {
            let blob_path = writer.blob_path(&written.digest);
            blob_tmp.persist(&blob_path).map_err(|e| BuildError::Io {
                path: blob_path.clone(),
                source: e.error,
            })?;
            writer.put_bytes(&index_blob)?;
        }
    }
    Ok(BuiltLayer {
        digest: written.digest,
        size: written.size,
        diff_id: written.diff_id,
        uncompressed_size: written.uncompressed_size,
        chunks: written.chunks.len(),
        index_digest,
        index_size: index_blob.len() as u64,
        source: "built",
        reused_bytes: written.reused_bytes(),
        chunked_bytes: written.chunked_bytes(),
        warnings: written.notes,
    })
}

#[derive(Default)]
struct BaseImage {
    config: Option<ImageConfiguration>,
    descriptors: Vec<gantry_oci::spec::Descriptor>,
    diff_ids: Vec<String>,
    history: Vec<History>,
    reports: Vec<LayerReport>,
}

/// A pulled base image: in the build cache (kept, so a rebuild of a base pinned by digest
/// needs no network and one by tag downloads only what changed), or a temporary directory.
enum PulledBase {
    Cached(PathBuf),
    /// The layout inside a directory removed when this is dropped.
    Temporary {
        _dir: tempfile::TempDir,
        layout: PathBuf,
    },
}

impl PulledBase {
    fn path(&self) -> &Path {
        match self {
            PulledBase::Cached(p) => p,
            PulledBase::Temporary { layout, .. } => layout,
        }
    }
}

/// Resolves `[base] image` for the spec's platform through the registry client and pulls
/// it into a layout. Returns the layout, the reference as written (without `http://`),
/// and the manifest digest it resolved to.
fn pull_base(
    image: &str,
    opts: &BuildOptions,
    spec: &BuildSpec,
) -> Result<(PulledBase, String, Digest), BuildError> {
    let berr = |message: String| BuildError::Base {
        location: image.to_string(),
        message,
    };
    let (plain_http, text) = match image.strip_prefix("http://") {
        Some(rest) => (true, rest),
        None => (false, image),
    };
    let reference: gantry_oci::Reference = text.parse().map_err(|e| berr(format!("{e}")))?;
    let mut client_options = opts.registry.clone();
    client_options.insecure |= plain_http;
    let client = gantry_client::RegistryClient::new(&reference.registry, &client_options)
        .map_err(|e| berr(e.to_string()))?;
    let key = format!("{}/{}", reference.registry, reference.repository).replace([':', '/'], "_");
    let target = match &opts.cache_dir {
        Some(dir) => {
            let d = dir.join("bases");
            fs::create_dir_all(&d).map_err(BuildError::io(&d))?;
            PulledBase::Cached(d.join(key))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("gantry-base-")
                .tempdir()
                .map_err(BuildError::io(std::env::temp_dir()))?;
            let layout = t.path().join("base");
            PulledBase::Temporary { _dir: t, layout }
        }
    };
    let layout_dir = target.path().to_path_buf();
    // A base pinned by digest that the cache already holds needs no network.
    if let Some(digest) = reference.digest {
        if let Ok(layout) = OciLayout::open(&layout_dir) {
            if layout
                .resolve(None, &spec.image.os, &spec.image.architecture)
                .is_ok_and(|m| m.digest == digest)
            {
                return Ok((target, text.to_string(), digest));
            }
        }
    }
    let options = gantry_client::PullOptions {
        os: spec.image.os.clone(),
        arch: spec.image.architecture.clone(),
        referrers: true,
        ..gantry_client::PullOptions::default()
    };
    // The pull runs on a runtime of its own; called from async code (inside a runtime,
    // where a second one may not block), on a thread of its own too.
    let pull = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| berr(format!("starting the async runtime: {e}")))?;
        runtime
            .block_on(gantry_client::pull_to_layout(
                &client,
                &reference,
                &layout_dir,
                &options,
                std::sync::Arc::new(gantry_client::NoProgress),
            ))
            .map_err(|e| berr(e.to_string()))
    };
    let report = match tokio::runtime::Handle::try_current() {
        Ok(_) => std::thread::scope(|scope| scope.spawn(pull).join())
            .map_err(|_| berr("the base image pull panicked".to_string()))??,
        Err(_) => pull()?,
    };
    Ok((target, text.to_string(), report.manifest_digest))
}

impl BaseImage {
    fn from_layout(
        path: &Path,
        tag: Option<&str>,
        spec: &BuildSpec,
        writer: &LayoutWriter,
        progress: &dyn BuildProgress,
    ) -> Result<Self, BuildError> {
        let location = path.display().to_string();
        let berr = |message: String| BuildError::Base {
            location: location.clone(),
            message,
        };
        let layout = OciLayout::open(path).map_err(|e| berr(e.to_string()))?;
        let resolved = layout
            .resolve(tag, &spec.image.os, &spec.image.architecture)
            .map_err(|e| berr(e.to_string()))?;
        let manifest: ImageManifest = resolved.manifest;
        let config_digest =
            Digest::from_oci(manifest.config().digest()).map_err(|e| berr(e.to_string()))?;
        let config_bytes = layout
            .read_blob(&config_digest)
            .map_err(|e| berr(e.to_string()))?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| berr(format!("config: {e}")))?;
        if config.os().to_string() != spec.image.os
            || config.architecture().to_string() != spec.image.architecture
        {
            return Err(berr(format!(
                "is {}/{}, the spec builds {}/{}",
                config.os(),
                config.architecture(),
                spec.image.os,
                spec.image.architecture
            )));
        }
        let mut reports = Vec::new();
        for d in manifest.layers() {
            let digest = Digest::from_oci(d.digest()).map_err(|e| berr(e.to_string()))?;
            progress.layer_started("base", 0);
            layout
                .verify_blob(&digest, d.size())
                .map_err(|e| berr(e.to_string()))?;
            writer.put_file(&layout.blob_path(&digest), &digest)?;
            if let Some(idx) = d
                .annotations()
                .as_ref()
                .and_then(|a| a.get(media_types::ANNOTATION_CHUNK_INDEX))
            {
                if let Ok(idx) = idx.parse::<Digest>() {
                    if layout.blob_path(&idx).is_file() {
                        writer.put_file(&layout.blob_path(&idx), &idx)?;
                    }
                }
            }
            let report = LayerReport {
                name: "base".into(),
                digest,
                size: d.size(),
                diff_id: None,
                uncompressed_size: None,
                chunks: 0,
                chunk_index: None,
                source: "base",
                reused_bytes: 0,
                chunked_bytes: 0,
                seconds: 0.0,
                warnings: Vec::new(),
            };
            progress.layer_finished(&report);
            reports.push(report);
        }
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers().len() {
            return Err(berr(format!(
                "config lists {} diff ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            )));
        }
        let history = config.history().clone().unwrap_or_default();
        Ok(BaseImage {
            descriptors: manifest.layers().clone(),
            diff_ids,
            history,
            reports,
            config: Some(config),
        })
    }
}

fn image_config(
    spec: &BuildSpec,
    base: Option<&ImageConfiguration>,
    diff_ids: Vec<String>,
    history: Vec<History>,
    created: &str,
) -> Result<ImageConfiguration, BuildError> {
    let c = &spec.config;
    let mut runtime: Config = base.and_then(|b| b.config().clone()).unwrap_or_default();
    // Env: base first, then the spec's, a later KEY replacing an earlier one.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in runtime
        .env()
        .clone()
        .unwrap_or_default()
        .iter()
        .chain(c.env.iter())
    {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        match env.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    if !env.is_empty() {
        runtime.set_env(Some(
            env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        ));
    }
    if let Some(ep) = &c.entrypoint {
        runtime.set_entrypoint(Some(ep.clone()));
        // As in Docker, a new entrypoint resets the base's cmd.
        runtime.set_cmd(None);
    }
    if let Some(cmd) = &c.cmd {
        runtime.set_cmd(Some(cmd.clone()));
    }
    if let Some(w) = &c.workdir {
        runtime.set_working_dir(Some(w.clone()));
    }
    if let Some(u) = &c.user {
        runtime.set_user(Some(u.clone()));
    }
    if let Some(s) = &c.stop_signal {
        runtime.set_stop_signal(Some(s.clone()));
    }
    if !c.exposed_ports.is_empty() {
        let mut ports = runtime.exposed_ports().clone().unwrap_or_default();
        for p in &c.exposed_ports {
            let p = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        ports.sort();
        runtime.set_exposed_ports(Some(ports));
    }
    if !c.labels.is_empty() {
        let mut labels: BTreeMap<String, String> = runtime
            .labels()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        labels.extend(c.labels.clone());
        runtime.set_labels(Some(labels.into_iter().collect()));
    }
    let mut rootfs = RootFs::default();
    rootfs.set_diff_ids(diff_ids);
    let mut config = ImageConfiguration::default();
    config.set_created(Some(created.to_string()));
    config.set_architecture(spec.image.architecture.as_str().into());
    config.set_os(spec.image.os.as_str().into());
    config.set_config(Some(runtime));
    config.set_rootfs(rootfs);
    config.set_history(Some(history));
    Ok(config)
}
