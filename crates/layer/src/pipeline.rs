use crate::compress::{GzipChunkCompressor, DEFAULT_GZIP_LEVEL, DEFLATE_IMPLEMENTATION};
use crate::error::LayerError;
use crate::index::{ChunkIndex, ChunkRecord, ChunkerParams, CompressionParams};
use crate::segment::{PieceReader, SegmentPlan};
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

/// A source of already-compressed chunks (a build cache).
pub trait ChunkReuse: Sync {
    /// Given the sha256 of a chunk's uncompressed bytes: the gzip member made
    /// for it earlier with the same options, and that member's chunk id. A
    /// member whose bytes do not hash to the id, or whose gzip trailer does
    /// not match the data, is ignored and the chunk is compressed afresh.
    fn lookup(&self, uncompressed: &Digest, uncompressed_len: u64) -> Option<(Vec<u8>, Digest)>;

    /// The chunk lengths and uncompressed digests recorded for a segment
    /// with this [`crate::Segment::reuse_key`], so it need not be re-chunked.
    fn segment_chunks(&self, _reuse_key: &Digest) -> Option<Vec<(u64, Digest)>> {
        None
    }
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
    /// Index of the [`crate::Segment`] the chunk belongs to.
    pub segment: usize,
    /// Content key of the region (the run between two cuts of a large-file
    /// segment) the chunk belongs to, for a cache to record.
    pub region_key: Option<Digest>,
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

/// A chunk to process.
struct WorkItem {
    seq: u64,
    segment: usize,
    region_key: Option<Digest>,
    data: Vec<u8>,
    /// The uncompressed digest a cache claims for `data`.
    claimed: Option<Digest>,
}
type Work = Result<WorkItem, LayerError>;
/// A chunk as the producer finds it: bytes, claimed digest, region key.
type Found = Result<(Vec<u8>, Option<Digest>, Option<Digest>), LayerError>;
type Done = Result<(u64, Vec<u8>, Vec<u8>, WrittenChunk), LayerError>;

/// Cuts each segment of the tar stream into content-defined chunks (or takes
/// a segment's chunk boundaries from `reuse`), compresses each chunk as its
/// own gzip member on `options.threads` threads (or takes the member from
/// `reuse`), and writes the members in order to `out`. `progress` is called
/// with the uncompressed bytes done so far.
pub fn write_layer(
    plan: SegmentPlan,
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
        scope.spawn(move || produce(plan, params, reuse, work_tx));
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

fn produce(plan: SegmentPlan, params: ChunkerParams, reuse: &dyn ChunkReuse, tx: Sender<Work>) {
    let mut seq = 0u64;
    for (index, segment) in plan.segments.into_iter().enumerate() {
        let mut send = |item: Found| -> bool {
            let failed = item.is_err();
            let item = item.map(|(data, claimed, region_key)| WorkItem {
                seq,
                segment: index,
                region_key,
                data,
                claimed,
            });
            seq += 1;
            tx.send(item).is_ok() && !failed
        };
        let known_chunks = |key: Option<Digest>, len: u64| {
            key.and_then(|k| reuse.segment_chunks(&k))
                .filter(|chunks| chunks.iter().map(|c| c.0).sum::<u64>() == len)
        };
        let bounds: Vec<u64> = segment
            .cuts
            .iter()
            .copied()
            .chain(std::iter::once(segment.len))
            .collect();
        let whole = known_chunks(segment.reuse_key, segment.len);
        // A changed large file (a pak with a re-exported entry) is keyed region
        // by region from its content, so its unchanged entries are not re-chunked.
        let region_keys = match segment.own_file {
            true => match region_keys(&segment.pieces, &bounds) {
                Ok(keys) => keys,
                Err(e) => {
                    send(Err(LayerError::Chunking(e)));
                    return;
                }
            },
            false => vec![None; bounds.len()],
        };
        let mut reader = PieceReader::new(segment.pieces);
        let emit_known = |reader: &mut PieceReader,
                          chunks: Vec<(u64, Digest)>,
                          region_key: Option<Digest>,
                          send: &mut dyn FnMut(Found) -> bool|
         -> bool {
            for (len, digest) in chunks {
                let mut data = vec![0u8; len as usize];
                let item = reader
                    .read_exact(&mut data)
                    .map(|_| (data, Some(digest), region_key))
                    .map_err(LayerError::Chunking);
                if !send(item) {
                    return false;
                }
            }
            true
        };
        if let Some(chunks) = whole {
            // Chunks never cross a cut, so each belongs to one region; tag it
            // so the cache keeps the regions' keys for the next build.
            let mut offset = 0u64;
            let mut region = 0usize;
            for (len, digest) in chunks {
                while region + 1 < bounds.len() && offset >= bounds[region] {
                    region += 1;
                }
                offset += len;
                let key = region_keys.get(region).copied().flatten();
                if !emit_known(&mut reader, vec![(len, digest)], key, &mut send) {
                    return;
                }
            }
            continue;
        }
        let mut start = 0u64;
        for (end, region_key) in bounds.iter().copied().zip(region_keys) {
            if let Some(chunks) = known_chunks(region_key, end - start) {
                if !emit_known(&mut reader, chunks, region_key, &mut send) {
                    return;
                }
                start = end;
                continue;
            }
            let region = (&mut reader).take(end - start);
            let f = if segment.own_file {
                params.large_file_scale as usize
            } else {
                1
            };
            let chunker = fastcdc::v2020::StreamCDC::new(
                region,
                params.min as usize * f,
                params.avg as usize * f,
                params.max as usize * f,
            );
            for chunk in chunker {
                if !send(
                    chunk
                        .map(|c| (c.data, None, region_key))
                        .map_err(|e| LayerError::Chunking(e.into())),
                ) {
                    return;
                }
            }
            start = end;
        }
    }
}

/// A content key per region of a segment: xxh3-128 of the region's bytes
/// with its length. Fast enough to run over every changed large file; a
/// chunk list found under a key is still checked chunk by chunk against
/// each cached member's CRC-32 before it is used.
fn region_keys(
    pieces: &[crate::segment::Piece],
    bounds: &[u64],
) -> std::io::Result<Vec<Option<Digest>>> {
    let mut reader = PieceReader::new(pieces.to_vec());
    let mut keys = Vec::with_capacity(bounds.len());
    let mut buf = vec![0u8; 1 << 20];
    let mut start = 0u64;
    for &end in bounds {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut remaining = end - start;
        while remaining > 0 {
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            reader.read_exact(&mut buf[..want])?;
            hasher.update(&buf[..want]);
            remaining -= want as u64;
        }
        let mut key = DigestHasher::new();
        key.update(b"gantry-region-v1\0");
        key.update(&(end - start).to_le_bytes());
        key.update(&hasher.digest128().to_le_bytes());
        keys.push(Some(key.finish()));
        start = end;
    }
    Ok(keys)
}

/// Whether a gzip member's trailer (CRC-32 and length) describes `data`.
fn trailer_matches(member: &[u8], data: &[u8]) -> bool {
    if member.len() < 18 {
        return false;
    }
    let t = &member[member.len() - 8..];
    t[..4] == crc32fast::hash(data).to_le_bytes() && t[4..] == (data.len() as u32).to_le_bytes()
}

fn compress_worker(level: u32, reuse: &dyn ChunkReuse, rx: Receiver<Work>, tx: Sender<Done>) {
    let mut compressor = GzipChunkCompressor::new(level);
    for item in rx {
        let result = item.and_then(
            |WorkItem {
                 seq,
                 segment,
                 region_key,
                 data,
                 claimed,
             }| {
                let uncompressed_digest = claimed.unwrap_or_else(|| Digest::of(&data));
                let stored = reuse
                    .lookup(&uncompressed_digest, data.len() as u64)
                    .map(|(member, id)| (Digest::of(&member), member, id))
                    .filter(|(actual, member, id)| actual == id && trailer_matches(member, &data));
                let (id, member, reused, uncompressed_digest) = match stored {
                    Some((id, member, _)) => (id, member, true, uncompressed_digest),
                    None => {
                        // A digest claimed by the cache is only trusted together with a member that matches.
                        let digest = if claimed.is_some() {
                            Digest::of(&data)
                        } else {
                            uncompressed_digest
                        };
                        let member = compressor.compress(&data)?;
                        (Digest::of(&member), member, false, digest)
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
                        segment,
                        region_key,
                    },
                ))
            },
        );
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
    // The uncompressed stream is hashed (diff id) on its own thread, beside
    // this one, which hashes and writes the compressed blob.
    let (tar_tx, tar_rx) = bounded::<Vec<u8>>(16);
    std::thread::scope(|scope| {
        let tar_hasher = scope.spawn(move || {
            let mut h = DigestHasher::new();
            for data in tar_rx {
                h.update(&data);
            }
            h.finish()
        });
        let written = write_in_order(rx, out, progress, tar_tx);
        let diff_id = tar_hasher
            .join()
            .map_err(|_| LayerError::Chunking(std::io::Error::other("hasher thread panicked")))?;
        let (digest, size, uncompressed_size, chunks) = written?;
        Ok(WrittenLayer {
            digest,
            size,
            diff_id,
            uncompressed_size,
            chunks,
            options: *options,
        })
    })
}

/// Writes members in sequence order, hashing them; passes the uncompressed
/// bytes on to the diff-id hasher. Dropping `rx` on an error stops the
/// other threads.
fn write_in_order(
    rx: Receiver<Done>,
    out: &mut dyn Write,
    progress: &(dyn Fn(u64) + Sync),
    tar_tx: Sender<Vec<u8>>,
) -> Result<(Digest, u64, u64, Vec<WrittenChunk>), LayerError> {
    let mut blob_hash = DigestHasher::new();
    let mut size = 0u64;
    let mut uncompressed_size = 0u64;
    let mut chunks = Vec::new();
    let mut waiting: BTreeMap<u64, (Vec<u8>, Vec<u8>, WrittenChunk)> = BTreeMap::new();
    let mut next = 0u64;
    for item in rx {
        let (seq, data, member, chunk) = item?;
        waiting.insert(seq, (data, member, chunk));
        while let Some((data, member, chunk)) = waiting.remove(&next) {
            blob_hash.update(&member);
            out.write_all(&member).map_err(LayerError::Write)?;
            size += member.len() as u64;
            uncompressed_size += data.len() as u64;
            tar_tx.send(data).map_err(|_| {
                LayerError::Chunking(std::io::Error::other("hasher thread stopped"))
            })?;
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
    Ok((blob_hash.finish(), size, uncompressed_size, chunks))
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
        let layer = write_layer(
            SegmentPlan::from_bytes(data.to_vec()),
            &mut out,
            &opts,
            reuse,
            &|_| {},
        )
        .unwrap();
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

    /// A cache that knows one segment's chunking and every member, with the
    /// option of lying about an uncompressed digest.
    struct SegmentReuse {
        key: Digest,
        chunks: Vec<(u64, Digest)>,
        members: std::collections::HashMap<Digest, Vec<u8>>,
    }
    impl ChunkReuse for SegmentReuse {
        fn lookup(&self, d: &Digest, _: u64) -> Option<(Vec<u8>, Digest)> {
            self.members.get(d).map(|m| (m.clone(), Digest::of(m)))
        }
        fn segment_chunks(&self, key: &Digest) -> Option<Vec<(u64, Digest)>> {
            (*key == self.key).then(|| self.chunks.clone())
        }
    }

    fn one_file_plan(dir: &std::path::Path, data: &[u8]) -> SegmentPlan {
        let path = dir.join("big.bin");
        std::fs::write(&path, data).unwrap();
        let entry = crate::LayerEntry {
            path: crate::ImagePath::parse("big.bin", false).unwrap(),
            kind: crate::EntryKind::File {
                data: crate::FileData::Disk(path),
                size: data.len() as u64,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        SegmentPlan::new(vec![entry], crate::TarOptions::default(), 64 * 1024).unwrap()
    }

    #[test]
    fn known_segment_chunking_is_reused_and_lies_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let data = pseudo_random(900_000, 11);
        let plan = one_file_plan(dir.path(), &data);
        let key = plan.segments[0].reuse_key.unwrap();
        let mut blob = Vec::new();
        let first = write_layer(
            plan.clone(),
            &mut blob,
            &LayerOptions::default(),
            &NoReuse,
            &|_| {},
        )
        .unwrap();
        let mut offset = 0usize;
        let mut members = std::collections::HashMap::new();
        let mut chunks = Vec::new();
        for c in first.chunks.iter().filter(|c| c.segment == 0) {
            let len = c.record.compressed_len as usize;
            members.insert(c.uncompressed_digest, blob[offset..offset + len].to_vec());
            chunks.push((c.record.uncompressed_len, c.uncompressed_digest));
            offset += len;
        }
        let honest = SegmentReuse {
            key,
            chunks: chunks.clone(),
            members: members.clone(),
        };
        let mut again = Vec::new();
        let second = write_layer(
            plan.clone(),
            &mut again,
            &LayerOptions::default(),
            &honest,
            &|_| {},
        )
        .unwrap();
        assert_eq!(again, blob);
        assert!(second
            .chunks
            .iter()
            .filter(|c| c.segment == 0)
            .all(|c| c.reused));
        // The cache claims chunk 0 has the digest of chunk 1: its member's
        // trailer does not match the data, so the chunk is compressed afresh.
        let mut lying = chunks.clone();
        lying[0].1 = chunks[1].1;
        let liar = SegmentReuse {
            key,
            chunks: lying,
            members,
        };
        let mut third = Vec::new();
        let out = write_layer(plan, &mut third, &LayerOptions::default(), &liar, &|_| {}).unwrap();
        assert_eq!(third, blob);
        assert_eq!(
            out.chunks[0].uncompressed_digest,
            first.chunks[0].uncompressed_digest
        );
        assert!(!out.chunks[0].reused);
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
            SegmentPlan::from_bytes(data.clone()),
            &mut FailingWriter,
            &LayerOptions::default(),
            &NoReuse,
            &|_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
