//! Media types and annotation keys that Gantry writes and recognises.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip-compressed OCI layer (Gantry's default: one gzip member per chunk).
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd-compressed OCI layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// The empty JSON object `{}` used as config of artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Artifact type of the referrer manifest that carries a chunk index.
pub const CHUNK_INDEX_ARTIFACT: &str = "application/vnd.gantry.chunk-index.v1+json";
/// Media type of one chunk index blob (gzip-compressed JSON).
pub const CHUNK_INDEX_BLOB: &str = "application/vnd.gantry.chunk-index.v1+json+gzip";

/// Layer descriptor annotation naming the digest of that layer's chunk index blob.
pub const ANNOTATION_CHUNK_INDEX: &str = "dev.gantry.chunk-index";
/// Layer descriptor annotation naming the layer in `gantry.toml`.
pub const ANNOTATION_LAYER_NAME: &str = "dev.gantry.layer";
/// Standard annotation carrying the tag of a manifest in an OCI layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Standard annotation of the creation time.
/// The base image an image was built on, by reference (OCI pre-defined annotation).
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
/// The base image's manifest digest (OCI pre-defined annotation).
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// The bytes of the empty JSON descriptor's blob.
pub const EMPTY_JSON: &[u8] = b"{}";

/// Whether `media_type` names a single-platform image manifest.
pub fn is_image_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Whether `media_type` names a multi-platform index.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}
