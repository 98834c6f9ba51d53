//! Gantry's delta-push extension of the Distribution API (`docs/delta-push.md`): the names
//! and bodies both sides speak, defined once.
//!
//! - v1: inside an upload session, a `PATCH` may name byte ranges of blobs the repository
//!   holds instead of carrying bytes.
//! - v2: v1 plus the chunk lookup: `POST /v2/<name>/chunks/lookup` with a list of chunk ids
//!   answers where the repository holds each chunk it has (a layer blob, offset, length),
//!   from the chunk indexes pushed with its layers once each was checked against its layer.
//!   A client needs no base tag to push only the new chunks.

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Header on `/v2/` listing the versions spoken, e.g. `v1, v2`.
pub const HEADER: &str = "gantry-delta-push";
/// Ranges `PATCH` within upload sessions.
pub const V1: &str = "v1";
/// [`V1`] plus the chunk lookup.
pub const V2: &str = "v2";
/// Request and answer header carrying an upload session's offset.
pub const UPLOAD_OFFSET_HEADER: &str = "gantry-upload-offset";
/// Content type of a `PATCH` body that names ranges of existing blobs.
pub const RANGES_MEDIA_TYPE: &str = "application/vnd.gantry.blob-ranges.v1+json";
/// Content type of a chunk lookup request body ([`ChunkLookup`]).
pub const LOOKUP_MEDIA_TYPE: &str = "application/vnd.gantry.chunk-lookup.v1+json";
/// Content type of a chunk lookup answer ([`ChunkLookupAnswer`]).
pub const LOOKUP_ANSWER_MEDIA_TYPE: &str = "application/vnd.gantry.chunk-locations.v1+json";
/// The last two path segments of the chunk lookup: `/v2/<name>/chunks/lookup`.
pub const LOOKUP_PATH_SUFFIX: &str = "/chunks/lookup";
/// Most chunk ids one lookup may name (a client sends several lookups for more).
pub const MAX_LOOKUP_CHUNKS: usize = 65_536;

/// Whether the `/v2/` header value `advertised` includes `version`.
pub fn speaks(advertised: &str, version: &str) -> bool {
    advertised.split(',').any(|v| v.trim() == version)
}

/// A chunk lookup: which of these chunks does the repository hold, and where?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkLookup {
    /// Chunk ids (sha256 of each chunk's compressed bytes).
    pub chunks: Vec<Digest>,
}

/// Where a repository holds one chunk: `length` bytes at `offset` of blob `digest`, a
/// layer linked into the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkLocation {
    /// The chunk id.
    pub chunk: Digest,
    /// The layer blob holding it.
    pub digest: Digest,
    /// Its offset in that blob.
    pub offset: u64,
    /// Its length.
    pub length: u64,
}

/// The answer to a [`ChunkLookup`]: the chunks held, in no particular order; the rest
/// are missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChunkLookupAnswer {
    /// Chunks held.
    pub found: Vec<ChunkLocation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_a_list() {
        assert!(speaks("v1, v2", V2));
        assert!(speaks("v1,v2", V1));
        assert!(!speaks("v1", V2));
        assert!(!speaks("v12", V1));
    }

    #[test]
    fn bodies_round_trip_and_refuse_unknown_fields() {
        let d = Digest::of(b"x");
        let q = ChunkLookup { chunks: vec![d] };
        let text = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<ChunkLookup>(&text).unwrap(), q);
        assert!(serde_json::from_str::<ChunkLookup>(r#"{"chunks":[],"x":1}"#).is_err());
        let a = ChunkLookupAnswer {
            found: vec![ChunkLocation {
                chunk: d,
                digest: d,
                offset: 1,
                length: 2,
            }],
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<ChunkLookupAnswer>(&text).unwrap(), a);
    }
}
