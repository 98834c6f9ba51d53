//! `gantry build`: turns a game-server build repository described by
//! `gantry.toml` into an OCI image layout, daemonless and reproducibly, with
//! every layer in Gantry's chunked format and its chunk index attached as an
//! OCI 1.1 referrer artifact.

mod cache;
mod cost;
mod error;
mod image;
mod sources;
pub mod spec;
pub mod supervise;

pub use cache::{BuildCache, CachedLayer};
pub use cost::{update_cost, LayerCost, UpdateCost};
pub use error::BuildError;
pub use gantry_client::layout::{LayoutWriter, OciLayout, ResolvedManifest};
pub use image::{build, BuildOptions, BuildOutput, BuildProgress, LayerReport, NoProgress};
pub use sources::{fingerprint_layer, resolve_layer, split_parts, ResolvedLayer};
pub use spec::{BuildSpec, SuperviseSection};
