//! OCI vocabulary shared by every Gantry component: content digests, image
//! references, media types, and canonical JSON for manifests and configs.
//!
//! This crate does no I/O. Manifest, index and config types come from
//! [`oci_spec`] (re-exported as [`spec`]); [`canonical_json`] serializes them
//! with sorted object keys so that a manifest digest never depends on hash map
//! iteration order.

mod canonical;
pub mod delta_push;
mod digest;
pub mod media_types;
pub mod names;
pub mod platform;
mod reference;

pub use canonical::{canonical_json, canonical_json_pretty, CanonicalJsonError};
pub use digest::{Digest, DigestError, DigestHasher};
pub use oci_spec::image as spec;
pub use reference::{Reference, ReferenceError, DEFAULT_REGISTRY};

/// Largest manifest (or index) any Gantry component reads: the size the Distribution
/// Spec asks registries to accept. Readers stop at this many bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
