//! What a node holding one image must download to run another, computed
//! three ways: whole image, layer-level (every layer whose digest changed, as
//! a stock runtime pulls) and chunk-level (only chunks the node lacks, plus
//! the chunk indexes, as Gantry's agent pulls). The per-layer computation is
//! `gantry diff`'s ([`gantry_client::diff::compare_layers`]); this is its
//! layout-only, synchronous entry point.

use crate::error::BuildError;
use gantry_client::diff::{compare_layers, layout_layers};
use gantry_client::layout::OciLayout;
use gantry_oci::Digest;
use serde::Serialize;

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

/// Compares the images tagged `old_tag` and `new_tag` (or the only image) of two layouts.
pub fn update_cost(
    old: &OciLayout,
    old_tag: Option<&str>,
    new: &OciLayout,
    new_tag: Option<&str>,
) -> Result<UpdateCost, BuildError> {
    let old_m = old.resolve_for_host(old_tag)?.manifest;
    let new_m = new.resolve_for_host(new_tag)?.manifest;
    let layers: Vec<LayerCost> =
        compare_layers(&layout_layers(old, &old_m)?, &layout_layers(new, &new_m)?)
            .into_iter()
            .map(|l| LayerCost {
                name: l.name,
                digest: l.digest,
                size: l.size,
                unchanged: !l.changed,
                layer_level_bytes: l.layer_level_bytes,
                chunk_level_bytes: l.chunk_level_bytes,
            })
            .collect();
    Ok(UpdateCost {
        image_bytes: layers.iter().map(|l| l.size).sum(),
        layer_level_bytes: layers.iter().map(|l| l.layer_level_bytes).sum(),
        chunk_level_bytes: layers.iter().map(|l| l.chunk_level_bytes).sum(),
        layers,
    })
}
