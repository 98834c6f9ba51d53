//! Gantry's layer format: deterministic tar streams, content-defined
//! chunking, one gzip member per chunk, and the chunk index that lets a node
//! rebuild a new layer blob from chunks it already holds.
//!
//! Nothing here knows about HTTP or registries; the functions read and write
//! byte streams and files.

mod archive;
mod compress;
mod entry;
mod error;
mod index;
mod pipeline;
mod segment;
mod tar_stream;

pub use compress::{gunzip_all, GzipChunkCompressor, DEFAULT_GZIP_LEVEL, DEFLATE_IMPLEMENTATION};
pub use entry::{EntryKind, FileData, ImagePath, LayerEntry};
pub use error::LayerError;
pub use index::{
    ChunkIndex, ChunkRecord, ChunkerParams, CompressionParams, IndexedChunk, MAX_INDEX_BLOB_BYTES,
};
pub use pipeline::{
    write_layer, CachedMember, ChunkReuse, KnownChunk, LayerOptions, NoReuse, WrittenChunk,
    WrittenLayer,
};
pub use segment::{Segment, SegmentPlan};
pub use tar_stream::{TarOptions, TarStream};
