use crate::error::LayerError;
use gantry_oci::{media_types, Digest};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// Largest chunk-index blob (gzipped JSON) any reader accepts: the registry, the agent,
/// the snapshotter and the client use this one limit, so an index one of them takes is
/// not refused by another.
pub const MAX_INDEX_BLOB_BYTES: u64 = 64 << 20;

/// Content-defined chunking parameters (FastCDC 2020, normalization level 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk, bytes.
    pub min: u32,
    /// Target average chunk, bytes.
    pub avg: u32,
    /// Largest chunk, bytes.
    pub max: u32,
    /// Files of at least `avg` bytes get chunk boundaries of their own (as do
    /// large entries inside zip/pak archives) and are cut with min, avg and
    /// max multiplied by this: a changed entry is replaced whole anyway, and
    /// larger chunks compress better.
    pub large_file_scale: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
            large_file_scale: 4,
        }
    }
}

impl ChunkerParams {
    /// The longest chunk of tar bytes these parameters can cut: `max` × `large_file_scale`
    /// (FastCDC never cuts a chunk longer than its `max`).
    pub fn max_chunk_len(&self) -> u64 {
        u64::from(self.max) * u64::from(self.large_file_scale)
    }

    /// The longest gzip member a chunk of at most [`Self::max_chunk_len`] bytes can
    /// compress to, at any level: zlib's conservative deflate bound plus the 18 bytes of
    /// gzip header and trailer.
    pub fn max_compressed_chunk_len(&self) -> u64 {
        gzip_member_bound(self.max_chunk_len())
    }

    /// Checks the bounds FastCDC 2020 accepts.
    pub fn validate(&self) -> Result<(), LayerError> {
        let ok = (64..=1_048_576).contains(&self.min)
            && (256..=4_194_304).contains(&self.avg)
            && (1024..=16_777_216).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max
            && (1..=64).contains(&self.large_file_scale)
            && u64::from(self.max) * u64::from(self.large_file_scale) <= 16_777_216
            && self.min.is_multiple_of(2)
            && self.avg.is_multiple_of(2)
            && self.max.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(LayerError::Index(format!(
                "chunker parameters min={} avg={} max={} large_file_scale={} are outside FastCDC's bounds \
                 (64 ≤ min ≤ avg ≤ max, even, max × large_file_scale ≤ 16 MiB, scale 1–64)",
                self.min, self.avg, self.max, self.large_file_scale
            )))
        }
    }
}

/// Most bytes one gzip member holding `n` bytes can take (zlib's `deflateBound` for
/// non-default settings, plus the 10-byte header and 8-byte trailer).
fn gzip_member_bound(n: u64) -> u64 {
    n + n.div_ceil(8) + n.div_ceil(64) + 5 + 18
}

/// How chunks were compressed: recorded so a reader can tell that another
/// implementation or level would give other chunk ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionParams {
    /// Container format of each chunk (`gzip`: one member per chunk).
    pub format: String,
    /// Deflate implementation.
    pub deflate: String,
    /// Compression level.
    pub level: u32,
}

/// One chunk as stored in an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Length of the chunk's gzip member in the layer blob.
    pub compressed_len: u64,
    /// Length of the tar bytes the chunk holds.
    pub uncompressed_len: u64,
    /// sha256 of the compressed bytes: the chunk id.
    pub id: Digest,
}

impl Serialize for ChunkRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.compressed_len, self.uncompressed_len, self.id.hex()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ChunkRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (compressed_len, uncompressed_len, hex_id) = <(u64, u64, String)>::deserialize(d)?;
        let id = Digest::from_hex(&hex_id).map_err(serde::de::Error::custom)?;
        Ok(ChunkRecord {
            compressed_len,
            uncompressed_len,
            id,
        })
    }
}

/// A chunk with its place in the layer blob and in the tar stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedChunk {
    /// Position in the list.
    pub index: usize,
    /// Offset of the gzip member in the layer blob.
    pub compressed_offset: u64,
    /// Offset of its bytes in the uncompressed tar.
    pub uncompressed_offset: u64,
    /// The record.
    pub record: ChunkRecord,
}

/// The chunk index of one layer: everything a node needs to rebuild the layer
/// blob from chunks, and to verify each one before using it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChunkIndex {
    /// Always 1 for this format.
    pub schema_version: u32,
    /// [`media_types::CHUNK_INDEX_ARTIFACT`].
    pub media_type: String,
    /// Digest of the layer blob.
    pub layer_digest: Digest,
    /// Size of the layer blob.
    pub layer_size: u64,
    /// Digest of the uncompressed tar (the config's diff id).
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// How chunks were compressed.
    pub compression: CompressionParams,
    /// How the tar was cut.
    pub chunker: ChunkerParams,
    /// Chunks in blob order; offsets are the running sums of lengths.
    pub chunks: Vec<ChunkRecord>,
}

impl ChunkIndex {
    /// The blob form: canonical JSON, gzip-compressed (level 9, fixed header).
    pub fn to_blob(&self) -> Result<Vec<u8>, LayerError> {
        let json = gantry_oci::canonical_json("chunk index", self)
            .map_err(|e| LayerError::Index(e.to_string()))?;
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(Vec::new(), flate2::Compression::best());
        enc.write_all(&json)
            .map_err(|e| LayerError::Index(e.to_string()))?;
        enc.finish().map_err(|e| LayerError::Index(e.to_string()))
    }

    /// Parses and checks a blob: lengths must add up to the layer size.
    pub fn from_blob(blob: &[u8]) -> Result<Self, LayerError> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(blob)
            .take(512 * 1024 * 1024)
            .read_to_end(&mut json)
            .map_err(|e| LayerError::Index(format!("not a gzip-compressed chunk index: {e}")))?;
        let index: ChunkIndex = serde_json::from_slice(&json)
            .map_err(|e| LayerError::Index(format!("malformed JSON: {e}")))?;
        index.validate()?;
        Ok(index)
    }

    /// Internal consistency: version, media type, chunker parameters, every chunk's
    /// lengths within what those parameters can produce (a compressed chunk is never
    /// empty), and the sums of lengths (checked, never wrapping) equal to the layer's sizes.
    /// An index that passes can be trusted not to name absurd sizes; whether it describes
    /// the blob is only known once chunks are checked against their ids.
    pub fn validate(&self) -> Result<(), LayerError> {
        if self.schema_version != 1 || self.media_type != media_types::CHUNK_INDEX_ARTIFACT {
            return Err(LayerError::Index(format!(
                "unsupported index version {} / media type {:?}",
                self.schema_version, self.media_type
            )));
        }
        self.chunker.validate()?;
        let max_compressed = self.chunker.max_compressed_chunk_len();
        let max_uncompressed = self.chunker.max_chunk_len();
        let mut compressed: u64 = 0;
        let mut uncompressed: u64 = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            if c.compressed_len == 0
                || c.compressed_len > max_compressed
                || c.uncompressed_len > max_uncompressed
            {
                return Err(LayerError::Index(format!(
                    "layer {}: chunk {i} ({}) is {} compressed / {} uncompressed bytes; \
                     the chunker parameters allow 1 to {max_compressed} / at most {max_uncompressed}",
                    self.layer_digest, c.id, c.compressed_len, c.uncompressed_len
                )));
            }
            let sums = compressed
                .checked_add(c.compressed_len)
                .zip(uncompressed.checked_add(c.uncompressed_len));
            let Some((a, b)) = sums else {
                return Err(LayerError::Index(format!(
                    "layer {}: chunk lengths overflow at chunk {i}",
                    self.layer_digest
                )));
            };
            (compressed, uncompressed) = (a, b);
        }
        if compressed != self.layer_size || uncompressed != self.uncompressed_size {
            return Err(LayerError::Index(format!(
                "chunk lengths add up to {compressed} compressed / {uncompressed} uncompressed bytes, \
                 but the layer {} is {} / {} bytes",
                self.layer_digest, self.layer_size, self.uncompressed_size
            )));
        }
        Ok(())
    }

    /// Chunks with their offsets.
    pub fn chunks_with_offsets(&self) -> impl Iterator<Item = IndexedChunk> + '_ {
        let mut compressed_offset = 0;
        let mut uncompressed_offset = 0;
        self.chunks.iter().enumerate().map(move |(index, record)| {
            let chunk = IndexedChunk {
                index,
                compressed_offset,
                uncompressed_offset,
                record: *record,
            };
            // Saturating: an index that was not validated must not panic here.
            compressed_offset = compressed_offset.saturating_add(record.compressed_len);
            uncompressed_offset = uncompressed_offset.saturating_add(record.uncompressed_len);
            chunk
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChunkIndex {
        let chunks = vec![
            ChunkRecord {
                compressed_len: 10,
                uncompressed_len: 30,
                id: Digest::of(b"a"),
            },
            ChunkRecord {
                compressed_len: 5,
                uncompressed_len: 7,
                id: Digest::of(b"b"),
            },
        ];
        ChunkIndex {
            schema_version: 1,
            media_type: media_types::CHUNK_INDEX_ARTIFACT.into(),
            layer_digest: Digest::of(b"layer"),
            layer_size: 15,
            diff_id: Digest::of(b"tar"),
            uncompressed_size: 37,
            compression: CompressionParams {
                format: "gzip".into(),
                deflate: "zlib-rs".into(),
                level: 6,
            },
            chunker: ChunkerParams::default(),
            chunks,
        }
    }

    #[test]
    fn blob_round_trip_is_stable() {
        let idx = sample();
        let blob = idx.to_blob().unwrap();
        assert_eq!(blob, idx.to_blob().unwrap());
        assert_eq!(ChunkIndex::from_blob(&blob).unwrap(), idx);
        let offsets: Vec<(u64, u64)> = idx
            .chunks_with_offsets()
            .map(|c| (c.compressed_offset, c.uncompressed_offset))
            .collect();
        assert_eq!(offsets, vec![(0, 0), (10, 30)]);
    }

    #[test]
    fn inconsistent_or_garbage_blobs_are_refused() {
        let mut idx = sample();
        idx.layer_size = 99;
        let blob = idx.to_blob().unwrap();
        assert!(ChunkIndex::from_blob(&blob)
            .unwrap_err()
            .to_string()
            .contains("add up"));
        assert!(ChunkIndex::from_blob(b"not gzip").is_err());
        let truncated = &sample().to_blob().unwrap()[..20];
        assert!(ChunkIndex::from_blob(truncated).is_err());
    }

    #[test]
    fn chunks_longer_than_the_chunker_allows_are_refused() {
        // One 8 TiB chunk whose lengths add up: refused by the per-chunk bound.
        let mut idx = sample();
        idx.chunks.truncate(1);
        idx.chunks[0].compressed_len = 1 << 43;
        idx.chunks[0].uncompressed_len = 1 << 43;
        (idx.layer_size, idx.uncompressed_size) = (1 << 43, 1 << 43);
        let err = idx.validate().unwrap_err().to_string();
        assert!(err.contains("chunker parameters allow"), "{err}");
        // The largest chunk the parameters allow passes; one byte more does not.
        let max = idx.chunker.max_compressed_chunk_len();
        assert!(max >= idx.chunker.max_chunk_len() + 18);
        idx.chunks[0].compressed_len = max;
        idx.chunks[0].uncompressed_len = idx.chunker.max_chunk_len();
        (idx.layer_size, idx.uncompressed_size) = (max, idx.chunker.max_chunk_len());
        idx.validate().unwrap();
        idx.chunks[0].compressed_len = max + 1;
        idx.layer_size = max + 1;
        assert!(idx.validate().is_err());
        // Empty compressed chunks are refused (a gzip member is never empty).
        let mut idx = sample();
        idx.chunks[1].compressed_len = 0;
        idx.layer_size = 10;
        assert!(idx.validate().is_err());
    }
}
