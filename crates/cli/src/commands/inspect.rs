//! `gantry inspect`.

use crate::commands::{human_bytes, print_json};
use anyhow::Context;
use clap::Args;
use gantry_build::OciLayout;
use gantry_layer::ChunkIndex;
use gantry_oci::{media_types, Digest};
use serde::Serialize;

/// Arguments of `gantry inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// OCI image layout: a directory, or `oci:DIR[:TAG]`.
    pub layout: String,
    /// Which image in the layout (default: the only one).
    #[arg(long)]
    pub tag: Option<String>,
    /// List every chunk of every index.
    #[arg(long)]
    pub chunks: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Inspection {
    manifest_digest: Digest,
    tag: Option<String>,
    config: serde_json::Value,
    layers: Vec<LayerInfo>,
    total_size: u64,
}

#[derive(Serialize)]
struct LayerInfo {
    name: Option<String>,
    digest: String,
    media_type: String,
    size: u64,
    chunk_index: Option<IndexInfo>,
}

#[derive(Serialize)]
struct IndexInfo {
    digest: Digest,
    size: u64,
    diff_id: Digest,
    uncompressed_size: u64,
    chunks: usize,
    average_chunk: u64,
    compression: gantry_layer::CompressionParams,
    chunker: gantry_layer::ChunkerParams,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk_list: Option<Vec<ChunkRow>>,
}

#[derive(Serialize)]
struct ChunkRow {
    offset: u64,
    compressed_len: u64,
    uncompressed_offset: u64,
    uncompressed_len: u64,
    id: Digest,
}

/// Runs `gantry inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let (path, tag) = super::transfer::Location::layout(&args.layout)?;
    let layout = OciLayout::open(&path)?;
    let resolved = layout.resolve_for_host(args.tag.as_deref().or(tag.as_deref()))?;
    let manifest = &resolved.manifest;
    let config_digest = Digest::from_oci(manifest.config().digest())?;
    let config: serde_json::Value = serde_json::from_slice(&layout.read_blob(&config_digest)?)?;
    let mut layers = Vec::new();
    for d in manifest.layers() {
        let ann = d.annotations().clone().unwrap_or_default();
        let chunk_index = match ann.get(media_types::ANNOTATION_CHUNK_INDEX) {
            Some(idx) => {
                let idx_digest: Digest = idx
                    .parse()
                    .with_context(|| format!("layer {}: bad chunk index annotation", d.digest()))?;
                let blob = layout.read_blob(&idx_digest)?;
                let index = ChunkIndex::from_blob(&blob)
                    .with_context(|| format!("chunk index {idx_digest}"))?;
                let chunk_list = args.chunks.then(|| {
                    index
                        .chunks_with_offsets()
                        .map(|c| ChunkRow {
                            offset: c.compressed_offset,
                            compressed_len: c.record.compressed_len,
                            uncompressed_offset: c.uncompressed_offset,
                            uncompressed_len: c.record.uncompressed_len,
                            id: c.record.id,
                        })
                        .collect()
                });
                Some(IndexInfo {
                    digest: idx_digest,
                    size: blob.len() as u64,
                    diff_id: index.diff_id,
                    uncompressed_size: index.uncompressed_size,
                    chunks: index.chunks.len(),
                    average_chunk: index.uncompressed_size / (index.chunks.len().max(1) as u64),
                    compression: index.compression.clone(),
                    chunker: index.chunker,
                    chunk_list,
                })
            }
            None => None,
        };
        layers.push(LayerInfo {
            name: ann.get(media_types::ANNOTATION_LAYER_NAME).cloned(),
            digest: d.digest().to_string(),
            media_type: d.media_type().to_string(),
            size: d.size(),
            chunk_index,
        });
    }
    let total_size = layers.iter().map(|l| l.size).sum();
    let out = Inspection {
        manifest_digest: resolved.digest,
        tag: resolved.tag,
        config,
        layers,
        total_size,
    };
    if args.json {
        return print_json(&out);
    }
    println!("manifest  {}", out.manifest_digest);
    if let Some(t) = &out.tag {
        println!("tag       {t}");
    }
    println!(
        "size      {} in {} layers",
        human_bytes(out.total_size),
        out.layers.len()
    );
    println!();
    println!(
        "{:<10} {:<19} {:>10} {:>10} {:>7} {:>9}  index",
        "layer", "digest", "size", "tar", "chunks", "avg"
    );
    for l in &out.layers {
        let name = l.name.clone().unwrap_or_else(|| "-".into());
        match &l.chunk_index {
            Some(i) => println!(
                "{:<10} {:<19} {:>10} {:>10} {:>7} {:>9}  {} ({}, gzip-{} {})",
                name,
                &l.digest[..19],
                human_bytes(l.size),
                human_bytes(i.uncompressed_size),
                i.chunks,
                human_bytes(i.average_chunk),
                &i.digest.to_string()[..19],
                human_bytes(i.size),
                i.compression.level,
                i.compression.deflate
            ),
            None => println!(
                "{:<10} {:<19} {:>10} {:>10} {:>7} {:>9}  none",
                name,
                &l.digest[..19],
                human_bytes(l.size),
                "-",
                "-",
                "-"
            ),
        }
        if let Some(list) = l.chunk_index.as_ref().and_then(|i| i.chunk_list.as_ref()) {
            for c in list {
                println!(
                    "    {:>12} +{:<8} tar {:>12} +{:<8} {}",
                    c.offset, c.compressed_len, c.uncompressed_offset, c.uncompressed_len, c.id
                );
            }
        }
    }
    Ok(())
}
