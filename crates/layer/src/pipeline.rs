use crate::compress::{GzipChunkCompressor, DEFAULT_GZIP_LEVEL, DEFLATE_IMPLEMENTATION};
use crate::error::LayerError;
use crate::index::{ChunkIndex, ChunkRecord, ChunkerParams, CompressionParams};
use crossbeam_channel::{bounded, Receiver, Sender};
use gantry_oci::{media_types, Digest, DigestHasher};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// How a layer is cut and compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerOptions {
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// gzip level for every chunk.
    pub gzip_level: u32,
    /// Compression threads (at least 1).
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            chunker: ChunkerParams::default(),
            gzip_level: DEFAULT_GZIP_LEVEL,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

impl LayerOptions {
    /// The compression record stored in chunk indexes.
    pub fn compression_params(&self) -> CompressionParams {
        CompressionParams {
            format: "gzip".into(),
            deflate: DEFLATE_IMPLEMENTATION.into(),
            level: self.gzip_level,
        }
    }
}

/// A source of already-compressed chunks (a build cache): given the sha256 of
/// a chunk's uncompressed bytes, the gzip member made for it earlier with the
/// same options, and that member's recorded id. A member whose bytes do not
/// hash to the id is ignored and the chunk is compressed afresh.
pub trait ChunkReuse: Sync {
    /// The stored gzip member for these uncompressed bytes and its chunk id.
    fn lookup(&self, uncompressed: &Digest, uncompressed_len: u64) -> Option<(Vec<u8>, Digest)>;
}

/// Compress everything afresh.
pub struct NoReuse;

impl ChunkReuse for NoReuse {
    fn lookup(&self, _: &Digest, _: u64) -> Option<(Vec<u8>, Digest)> {
        None
    }
}

/// One chunk as written, with what a cache needs to find it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrittenChunk {
    /// The index record.
    pub record: ChunkRecord,
    /// sha256 of the uncompressed bytes.
    pub uncompressed_digest: Digest,
    /// Whether the gzip member came from [`ChunkReuse`].
    pub reused: bool,
}

/// The result of writing one layer blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Chunks in order.
    pub chunks: Vec<WrittenChunk>,
    /// Options used.
    pub options: LayerOptions,
}

impl WrittenLayer {
    /// The chunk index describing this blob.
    pub fn index(&self) -> ChunkIndex {
        ChunkIndex {
            schema_version: 1,
            media_type: media_types::CHUNK_INDEX_ARTIFACT.into(),
            layer_digest: self.digest,
            layer_size: self.size,
            diff_id: self.diff_id,
            uncompressed_size: self.uncompressed_size,
            compression: self.options.compression_params(),
            chunker: self.options.chunker,
            chunks: self.chunks.iter().map(|c| c.record).collect(),
        }
    }

    /// Uncompressed bytes whose compression was reused.
    pub fn reused_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| c.reused)
            .map(|c| c.record.uncompressed_len)
            .sum()
    }
}

type Work = Result<(u64, Vec<u8>), LayerError>;
type Done = Result<(u64, Vec<u8>, Vec<u8>, WrittenChunk), LayerError>;

/// Cuts the tar stream from `reader` into content-defined chunks, compresses
/// each as its own gzip member on `options.threads` threads (or takes it from
/// `reuse`), and writes the members in order to `out`. `progress` is called
/// with the uncompressed bytes done so far.
pub fn write_layer<R: Read + Send>(
    reader: R,
    out: &mut dyn Write,
    options: &LayerOptions,
    reuse: &dyn ChunkReuse,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WrittenLayer, LayerError> {
    options.chunker.validate()?;
    let threads = options.threads.max(1);
    let (work_tx, work_rx) = bounded::<Work>(threads * 4);
    let (done_tx, done_rx) = bounded::<Done>(threads * 4);
    std::thread::scope(|scope| {
        let params = options.chunker;
        scope.spawn(move || produce(reader, params, work_tx));
        for _ in 0..threads {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let level = options.gzip_level;
            scope.spawn(move || compress_worker(level, reuse, rx, tx));
        }
        drop(work_rx);
        drop(done_tx);
        collect(done_rx, out, options, progress)
    })
}

fn produce<R: Read>(reader: R, params: ChunkerParams, tx: Sender<Work>) {
    let chunker = fastcdc::v2020::StreamCDC::new(
        reader,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    );
    for (seq, chunk) in chunker.enumerate() {
        let item = chunk
            .map(|c| (seq as u64, c.data))
            .map_err(|e| LayerError::Chunking(e.into()));
        let failed = item.is_err();
        if tx.send(item).is_err() || failed {
            return;
        }
    }
}

fn compress_worker(level: u32, reuse: &dyn ChunkReuse, rx: Receiver<Work>, tx: Sender<Done>) {
    let mut compressor = GzipChunkCompressor::new(level);
    for item in rx {
        let result = item.and_then(|(seq, data)| {
            let uncompressed_digest = Digest::of(&data);
            let stored = reuse
                .lookup(&uncompressed_digest, data.len() as u64)
                .map(|(member, id)| (Digest::of(&member), member, id))
                .filter(|(actual, _, id)| actual == id);
            let (id, member, reused) = match stored {
                Some((id, member, _)) => (id, member, true),
                None => {
                    let member = compressor.compress(&data)?;
                    (Digest::of(&member), member, false)
                }
            };
            let record = ChunkRecord {
                compressed_len: member.len() as u64,
                uncompressed_len: data.len() as u64,
                id,
            };
            Ok((
                seq,
                data,
                member,
                WrittenChunk {
                    record,
                    uncompressed_digest,
                    reused,
                },
            ))
        });
        let failed = result.is_err();
        if tx.send(result).is_err() || failed {
            return;
        }
    }
}

fn collect(
    rx: Receiver<Done>,
    out: &mut dyn Write,
    options: &LayerOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WrittenLayer, LayerError> {
    let mut blob_hash = DigestHasher::new();
    let mut tar_hash = DigestHasher::new();
    let mut size = 0u64;
    let mut uncompressed_size = 0u64;
    let mut chunks = Vec::new();
    let mut waiting: BTreeMap<u64, (Vec<u8>, Vec<u8>, WrittenChunk)> = BTreeMap::new();
    let mut next = 0u64;
    // Dropping `rx` on an early return makes the other threads stop.
    for item in rx {
        let (seq, data, member, chunk) = item?;
        waiting.insert(seq, (data, member, chunk));
        while let Some((data, member, chunk)) = waiting.remove(&next) {
            tar_hash.update(&data);
            blob_hash.update(&member);
            out.write_all(&member).map_err(LayerError::Write)?;
            size += member.len() as u64;
            uncompressed_size += data.len() as u64;
            chunks.push(chunk);
            next += 1;
            progress(uncompressed_size);
        }
    }
    if !waiting.is_empty() {
        return Err(LayerError::Chunking(std::io::Error::other(
            "chunk sequence has a gap",
        )));
    }
    out.flush().map_err(LayerError::Write)?;
    Ok(WrittenLayer {
        digest: blob_hash.finish(),
        size,
        diff_id: tar_hash.finish(),
        uncompressed_size,
        chunks,
        options: *options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::gunzip_all;
    use std::sync::Mutex;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    fn write(data: &[u8], reuse: &dyn ChunkReuse, threads: usize) -> (Vec<u8>, WrittenLayer) {
        let mut out = Vec::new();
        let opts = LayerOptions {
            threads,
            ..LayerOptions::default()
        };
        let layer = write_layer(data, &mut out, &opts, reuse, &|_| {}).unwrap();
        (out, layer)
    }

    #[test]
    fn blob_is_valid_gzip_and_digests_match() {
        let data = pseudo_random(1_500_000, 1);
        let (blob, layer) = write(&data, &NoReuse, 2);
        assert_eq!(gunzip_all(&blob).unwrap(), data);
        assert_eq!(layer.digest, Digest::of(&blob));
        assert_eq!(layer.diff_id, Digest::of(&data));
        assert_eq!(layer.size, blob.len() as u64);
        assert!(
            layer.chunks.len() > 5,
            "expected several chunks, got {}",
            layer.chunks.len()
        );
        let idx = layer.index();
        idx.validate().unwrap();
        for c in idx.chunks_with_offsets() {
            let member = &blob[c.compressed_offset as usize
                ..(c.compressed_offset + c.record.compressed_len) as usize];
            assert_eq!(Digest::of(member), c.record.id);
        }
    }

    #[test]
    fn thread_count_does_not_change_output() {
        let data = pseudo_random(800_000, 2);
        assert_eq!(write(&data, &NoReuse, 1).0, write(&data, &NoReuse, 3).0);
    }

    #[test]
    fn unchanged_regions_keep_their_chunk_ids() {
        let v1 = pseudo_random(2_000_000, 3);
        let mut v2 = v1.clone();
        // Change 1000 bytes in the middle and insert 333 bytes: later bytes shift.
        for b in &mut v2[900_000..901_000] {
            *b = b.wrapping_add(1);
        }
        v2.splice(1_200_000..1_200_000, pseudo_random(333, 9));
        let (_, a) = write(&v1, &NoReuse, 2);
        let (_, b) = write(&v2, &NoReuse, 2);
        let old: std::collections::HashSet<_> = a.chunks.iter().map(|c| c.record.id).collect();
        let new_bytes: u64 = b
            .chunks
            .iter()
            .filter(|c| !old.contains(&c.record.id))
            .map(|c| c.record.uncompressed_len)
            .sum();
        assert!(
            new_bytes < 4 * 256 * 1024,
            "{new_bytes} bytes of new chunks for a 1.3 KB change"
        );
        assert!(b.chunks.first().unwrap().record.id == a.chunks.first().unwrap().record.id);
        assert!(b.chunks.last().unwrap().record.id == a.chunks.last().unwrap().record.id);
    }

    struct MapReuse(Mutex<std::collections::HashMap<Digest, Vec<u8>>>);
    impl ChunkReuse for MapReuse {
        fn lookup(&self, d: &Digest, _: u64) -> Option<(Vec<u8>, Digest)> {
            self.0.lock().unwrap().get(d).cloned().map(|m| {
                let id = Digest::of(&m);
                (m, id)
            })
        }
    }

    struct CorruptReuse;
    impl ChunkReuse for CorruptReuse {
        fn lookup(&self, _: &Digest, _: u64) -> Option<(Vec<u8>, Digest)> {
            Some((b"garbage".to_vec(), Digest::of(b"something else")))
        }
    }

    #[test]
    fn corrupt_cached_chunks_are_not_used() {
        let data = pseudo_random(300_000, 6);
        let (blob, _) = write(&data, &NoReuse, 2);
        let (again, layer) = write(&data, &CorruptReuse, 2);
        assert_eq!(again, blob);
        assert_eq!(layer.reused_bytes(), 0);
    }

    #[test]
    fn reused_chunks_give_identical_blob() {
        let data = pseudo_random(1_000_000, 4);
        let (blob, layer) = write(&data, &NoReuse, 2);
        let map = MapReuse(Mutex::new(Default::default()));
        for c in layer.index().chunks_with_offsets() {
            let member = blob[c.compressed_offset as usize
                ..(c.compressed_offset + c.record.compressed_len) as usize]
                .to_vec();
            map.0
                .lock()
                .unwrap()
                .insert(layer.chunks[c.index].uncompressed_digest, member);
        }
        let (again, layer2) = write(&data, &map, 2);
        assert_eq!(again, blob);
        assert_eq!(layer2.reused_bytes(), data.len() as u64);
    }

    struct FailingWriter;
    impl Write for FailingWriter {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_error_stops_all_threads_and_is_reported() {
        let data = pseudo_random(3_000_000, 5);
        let err = write_layer(
            &data[..],
            &mut FailingWriter,
            &LayerOptions::default(),
            &NoReuse,
            &|_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
