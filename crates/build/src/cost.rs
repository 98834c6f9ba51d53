//! What a node holding one image must download to run another, computed
//! three ways: whole image, layer-level (every layer whose digest changed, as
//! a stock runtime pulls) and chunk-level (only chunks the node lacks, plus
//! the chunk indexes, as Gantry's agent pulls).

use crate::error::BuildError;
use gantry_client::layout::OciLayout;
use gantry_layer::ChunkIndex;
use gantry_oci::{media_types, Digest};
use serde::Serialize;
use std::collections::HashSet;

/// Per-layer download cost of an update.
#[derive(Clone, Debug, Serialize)]
pub struct LayerCost {
    /// Layer name annotation, if any.
    pub name: Option<String>,
    /// Layer digest in the new image.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Whether the old image has the same blob.
    pub unchanged: bool,
    /// Bytes moved at layer level (0 or `size`).
    pub layer_level_bytes: u64,
    /// Bytes moved at chunk level (new chunks plus the index blob).
    pub chunk_level_bytes: u64,
}

/// Download cost of going from one image to another.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateCost {
    /// Sum of the new image's layer blobs.
    pub image_bytes: u64,
    /// Bytes a layer-level pull moves.
    pub layer_level_bytes: u64,
    /// Bytes a chunk-level pull moves.
    pub chunk_level_bytes: u64,
    /// Per layer.
    pub layers: Vec<LayerCost>,
}

fn chunk_index(
    layout: &OciLayout,
    d: &gantry_oci::spec::Descriptor,
) -> Result<Option<(ChunkIndex, u64)>, BuildError> {
    let Some(idx) = d
        .annotations()
        .as_ref()
        .and_then(|a| a.get(media_types::ANNOTATION_CHUNK_INDEX))
    else {
        return Ok(None);
    };
    let digest: Digest = idx.parse().map_err(|e| BuildError::Layout {
        path: layout.root().to_path_buf(),
        message: format!("chunk index annotation: {e}"),
    })?;
    let blob = layout.read_blob(&digest)?;
    let index = ChunkIndex::from_blob(&blob).map_err(|e| BuildError::Layout {
        path: layout.root().to_path_buf(),
        message: format!("chunk index {digest}: {e}"),
    })?;
    Ok(Some((index, blob.len() as u64)))
}

/// Compares the images tagged `old_tag` and `new_tag` (or the only image) of two layouts.
pub fn update_cost(
    old: &OciLayout,
    old_tag: Option<&str>,
    new: &OciLayout,
    new_tag: Option<&str>,
) -> Result<UpdateCost, BuildError> {
    let old_m = old.resolve(old_tag, "linux", "amd64")?.manifest;
    let new_m = new.resolve(new_tag, "linux", "amd64")?.manifest;
    let mut old_blobs = HashSet::new();
    let mut old_chunks = HashSet::new();
    for d in old_m.layers() {
        old_blobs.insert(d.digest().to_string());
        if let Some((index, _)) = chunk_index(old, d)? {
            old_chunks.extend(index.chunks.iter().map(|c| c.id));
        }
    }
    let mut layers = Vec::new();
    let mut fetched_chunks = HashSet::new();
    for d in new_m.layers() {
        let digest = Digest::from_oci(d.digest()).map_err(|e| BuildError::Layout {
            path: new.root().to_path_buf(),
            message: e.to_string(),
        })?;
        let unchanged = old_blobs.contains(&d.digest().to_string());
        let layer_level_bytes = if unchanged { 0 } else { d.size() };
        let chunk_level_bytes = if unchanged {
            0
        } else {
            match chunk_index(new, d)? {
                Some((index, index_size)) => {
                    index_size
                        + index
                            .chunks
                            .iter()
                            .filter(|c| !old_chunks.contains(&c.id) && fetched_chunks.insert(c.id))
                            .map(|c| c.compressed_len)
                            .sum::<u64>()
                }
                None => d.size(),
            }
        };
        let name = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(media_types::ANNOTATION_LAYER_NAME))
            .cloned();
        layers.push(LayerCost {
            name,
            digest,
            size: d.size(),
            unchanged,
            layer_level_bytes,
            chunk_level_bytes,
        });
    }
    Ok(UpdateCost {
        image_bytes: layers.iter().map(|l| l.size).sum(),
        layer_level_bytes: layers.iter().map(|l| l.layer_level_bytes).sum(),
        chunk_level_bytes: layers.iter().map(|l| l.chunk_level_bytes).sum(),
        layers,
    })
}
