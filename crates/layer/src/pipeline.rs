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

/// A gzip member a cache holds for a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedMember {
    /// The member's bytes.
    pub member: Vec<u8>,
    /// Its chunk id (sha256 of `member`), as recorded when it was made.
    pub id: Digest,
    /// xxh3-64 of `member`, as recorded when it was made: a member whose
    /// bytes no longer match is not used.
    pub member_xxh3: u64,
}

/// How a cache remembers one chunk of an earlier build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownChunk {
    /// Uncompressed length.
    pub len: u64,
    /// sha256 of the uncompressed bytes.
    pub digest: Digest,
    /// xxh3-128 of the uncompressed bytes: the bytes read now must match it
    /// before `digest` is believed.
    pub data_xxh3: u128,
}

/// A source of already-compressed chunks (a build cache).
pub trait ChunkReuse: Sync {
    /// Given the sha256 of a chunk's uncompressed bytes: the gzip member made
    /// for it earlier with the same options. A member whose bytes do not
    /// match its recorded xxh3, or whose gzip trailer gives another length,
    /// is ignored and the chunk is compressed afresh.
    fn lookup(&self, uncompressed: &Digest, uncompressed_len: u64) -> Option<CachedMember>;

    /// The chunks recorded for a segment with this [`crate::Segment::reuse_key`]
    /// or a region with this key (see [`crate::Segment::region_keys`]), so its
    /// bytes need not go through the chunker or sha256 per chunk. Each is
    /// checked against the bytes (xxh3-128) before it is used.
    fn known_chunks(&self, _key: &Digest) -> Option<Vec<KnownChunk>> {
        None
    }
}

/// Compress everything afresh.
pub struct NoReuse;

impl ChunkReuse for NoReuse {
    fn lookup(&self, _: &Digest, _: u64) -> Option<CachedMember> {
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
    /// xxh3-128 of the uncompressed bytes.
    pub data_xxh3: u128,
    /// xxh3-64 of the gzip member.
    pub member_xxh3: u64,
    /// Whether the gzip member came from [`ChunkReuse`].
    pub reused: bool,
    /// Whether the chunk's cuts and digest came from [`ChunkReuse::known_chunks`]
    /// (checked against its bytes) instead of the chunker and sha256.
    pub known: bool,
    /// Index of the [`crate::Segment`] the chunk belongs to.
    pub segment: usize,
    /// Key of the region (the run between two cuts of a large-file segment)
    /// the chunk belongs to, for a cache to record.
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
    /// Problems found in the layer's archives (see [`SegmentPlan::notes`]),
    /// and stored archive entries whose bytes do not match the checksum
    /// their directory gives.
    pub notes: Vec<String>,
    /// Archives whose directory does not match their entries' bytes. The
    /// layer is exact, but their cuts followed a directory that lies: write
    /// it again with [`SegmentPlan::with_plain_files`] naming them, so they
    /// are chunked as plain files.
    pub lying_archives: Vec<std::path::PathBuf>,
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

    /// Uncompressed bytes that went through the chunker and sha256 per
    /// chunk (the rest was cut where a cache knew, after checking the bytes).
    pub fn chunked_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| !c.known)
            .map(|c| c.record.uncompressed_len)
            .sum()
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

/// A chunk's uncompressed bytes: the first `len` bytes of a buffer that
/// goes back to the producer once hashed, so a build of gigabytes does not
/// allocate and zero a buffer per chunk.
struct ChunkBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl ChunkBuf {
    fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        ChunkBuf { bytes, len }
    }

    /// A buffer of `len` bytes from `pool` (or new); its contents are stale.
    fn from_pool(pool: &Receiver<Vec<u8>>, len: usize) -> Self {
        let mut bytes = pool.try_recv().unwrap_or_default();
        if bytes.len() < len {
            bytes.resize(len, 0);
        }
        ChunkBuf { bytes, len }
    }

    fn into_vec(mut self) -> Vec<u8> {
        self.bytes.truncate(self.len);
        self.bytes
    }
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::ops::DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

/// How many chunk buffers wait for reuse at most.
const POOL: usize = 64;
/// Larger buffers (chunkers set to large chunks) are not kept.
const POOL_BUFFER_MAX: usize = 4 << 20;

/// A chunk to process.
struct WorkItem {
    seq: u64,
    segment: usize,
    region_key: Option<Digest>,
    data: ChunkBuf,
    /// What a cache knows of `data`, already checked against it.
    known: Option<KnownChunk>,
}
type Work = Result<WorkItem, LayerError>;
/// A chunk as the producer finds it: bytes, what a cache knows of them, region key.
type Found = Result<(ChunkBuf, Option<KnownChunk>, Option<Digest>), LayerError>;
type Done = Result<(u64, ChunkBuf, Vec<u8>, WrittenChunk), LayerError>;

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
    let mut notes = plan.notes.clone();
    let (work_tx, work_rx) = bounded::<Work>(threads * 4);
    let (done_tx, done_rx) = bounded::<Done>(threads * 4);
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(POOL);
    std::thread::scope(|scope| {
        let params = options.chunker;
        let producer = scope.spawn(move || produce(plan, params, reuse, work_tx, pool_rx));
        for _ in 0..threads {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let level = options.gzip_level;
            scope.spawn(move || compress_worker(level, reuse, rx, tx));
        }
        drop(work_rx);
        drop(done_tx);
        let mut written = collect(done_rx, out, options, progress, pool_tx)?;
        let (found, lying) = producer
            .join()
            .map_err(|_| LayerError::Chunking(std::io::Error::other("chunking thread panicked")))?;
        notes.extend(found);
        written.notes = notes;
        written.lying_archives = lying;
        Ok(written)
    })
}

/// Reads the plan's bytes once, in order, and sends them on as chunks: where
/// a cache knows a region's chunks and the bytes match them, along the known
/// cuts; from the first chunk that does not match, through the chunker, as a
/// cold build would. Returns the archive checks' findings and the archives
/// whose directory lied.
fn produce(
    plan: SegmentPlan,
    params: ChunkerParams,
    reuse: &dyn ChunkReuse,
    tx: Sender<Work>,
    pool: Receiver<Vec<u8>>,
) -> (Vec<String>, Vec<std::path::PathBuf>) {
    let mut seq = 0u64;
    let mut notes = Vec::new();
    let mut lying = Vec::new();
    for (index, segment) in plan.segments.into_iter().enumerate() {
        let mut send = |item: Found| -> bool {
            let failed = item.is_err();
            let item = item.map(|(data, known, region_key)| WorkItem {
                seq,
                segment: index,
                region_key,
                data,
                known,
            });
            seq += 1;
            tx.send(item).is_ok() && !failed
        };
        let bounds: Vec<u64> = segment
            .cuts
            .iter()
            .copied()
            .chain(std::iter::once(segment.len))
            .collect();
        let scale = match segment.own_file {
            true => params.large_file_scale as usize,
            false => 1,
        };
        let lists = known_lists(
            &segment,
            &bounds,
            reuse,
            u64::from(params.max) * scale as u64,
        );
        let mut reader = CheckedReader {
            inner: PieceReader::new(segment.pieces),
            offset: 0,
            checks: segment.checks,
        };
        let mut start = 0u64;
        for ((end, region_key), list) in bounds
            .iter()
            .copied()
            .zip(
                segment
                    .region_keys
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(None)),
            )
            .zip(lists)
        {
            let mut done = start;
            let mut pending = Vec::new();
            let list = list.unwrap_or_default();
            let (region_len, old_len) = (end - start, list.iter().map(|c| c.len).sum::<u64>());
            let max_chunk = u64::from(params.max) * scale as u64;
            // FastCDC decides a cut on the first byte after it, and by the room left to
            // the region's end. So a known chunk is sent only once the next one matched
            // too (or the region's end cut it), and only while the chunker would have
            // seen the same room; the first chunk not sent is where the chunker starts.
            let mut held: Option<(ChunkBuf, KnownChunk)> = None;
            for (i, &known) in list.iter().enumerate() {
                let (room, off) = (end - done, done - start);
                // The last chunk of a region was cut by the region's end, so it
                // stands only where the region ends at the same place.
                if known.len > room || (i + 1 == list.len() && known.len != room) {
                    break;
                }
                let mut data = ChunkBuf::from_pool(&pool, known.len as usize);
                if let Err(e) = reader.read_exact(&mut data) {
                    send(Err(LayerError::Chunking(e)));
                    return (notes, lying);
                }
                if xxhash_rust::xxh3::xxh3_128(&data) != known.data_xxh3 {
                    // Changed from here on: cut the rest afresh.
                    pending = data.into_vec();
                    break;
                }
                // Its first byte is unchanged: the chunk before it ends where it did.
                if let Some((d, k)) = held.take() {
                    if !send(Ok((d, Some(k), region_key))) {
                        return (notes, lying);
                    }
                }
                let same_room = old_len == region_len
                    || (region_len - off >= max_chunk && old_len - off >= max_chunk);
                if !same_room {
                    pending = data.into_vec();
                    break;
                }
                done += known.len;
                held = Some((data, known));
            }
            if let Some((d, k)) = held.take() {
                if done == end {
                    if !send(Ok((d, Some(k), region_key))) {
                        return (notes, lying);
                    }
                } else {
                    done -= k.len;
                    let mut back = d.into_vec();
                    back.extend_from_slice(&pending);
                    pending = back;
                }
            }
            if done < end {
                let rest = end - done - pending.len() as u64;
                let region = std::io::Cursor::new(pending).chain((&mut reader).take(rest));
                let chunker = fastcdc::v2020::StreamCDC::new(
                    region,
                    params.min as usize * scale,
                    params.avg as usize * scale,
                    params.max as usize * scale,
                );
                for chunk in chunker {
                    if !send(
                        chunk
                            .map(|c| (ChunkBuf::owned(c.data), None, region_key))
                            .map_err(|e| LayerError::Chunking(e.into())),
                    ) {
                        return (notes, lying);
                    }
                }
            }
            start = end;
        }
        if let Some(checks) = reader.checks {
            let (found, lied) = checks.finish();
            notes.extend(found);
            lying.extend(lied);
        }
    }
    (notes, lying)
}

/// For each region of `segment` (bounded by `bounds`), the chunks a cache
/// knows for it: from the whole segment's key if the cache has it, else from
/// the region's own key. A list that does not fit its region is dropped.
fn known_lists(
    segment: &crate::Segment,
    bounds: &[u64],
    reuse: &dyn ChunkReuse,
    max_chunk: u64,
) -> Vec<Option<Vec<KnownChunk>>> {
    let sane = |list: &Vec<KnownChunk>| list.iter().all(|c| c.len > 0 && c.len <= max_chunk);
    if let Some(whole) = segment
        .reuse_key
        .and_then(|k| reuse.known_chunks(&k))
        .filter(|l| sane(l) && l.iter().map(|c| c.len).sum::<u64>() == segment.len)
    {
        // Chunks never cross a cut: split the list at the region bounds.
        let mut lists = vec![Vec::new(); bounds.len()];
        let mut offset = 0u64;
        let mut region = 0usize;
        let mut aligned = true;
        for chunk in whole {
            while region + 1 < bounds.len() && offset >= bounds[region] {
                region += 1;
            }
            offset += chunk.len;
            aligned &= offset <= bounds[region];
            lists[region].push(chunk);
        }
        if aligned {
            return lists.into_iter().map(Some).collect();
        }
    }
    (0..bounds.len())
        .map(|i| {
            segment
                .region_keys
                .get(i)
                .copied()
                .flatten()
                .and_then(|k| reuse.known_chunks(&k))
                .filter(sane)
        })
        .collect()
}

/// Reads a segment's pieces and shows every byte, in order, to its archive
/// checks.
struct CheckedReader {
    inner: PieceReader,
    offset: u64,
    checks: Option<crate::archive::EntryChecks>,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(checks) = &mut self.checks {
            checks.feed(self.offset, &buf[..n]);
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// Whether a cached member still holds what was recorded (its xxh3) and was
/// made from `data`: its gzip trailer gives the data's CRC-32 and length.
fn member_matches(m: &CachedMember, data: &[u8]) -> bool {
    let n = m.member.len();
    n >= 18
        && xxhash_rust::xxh3::xxh3_64(&m.member) == m.member_xxh3
        && m.member[n - 4..] == (data.len() as u32).to_le_bytes()
        && m.member[n - 8..n - 4] == crc32fast::hash(data).to_le_bytes()
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
                 known,
             }| {
                // A known chunk's digest is believed because its bytes matched
                // the xxh3-128 recorded with it, and kept only if the member
                // found under it was made from these bytes; others are hashed.
                let len = data.len() as u64;
                let data_xxh3 = match known {
                    Some(k) => k.data_xxh3,
                    None => xxhash_rust::xxh3::xxh3_128(&data),
                };
                let mut uncompressed_digest = match known {
                    Some(k) => k.digest,
                    None => Digest::of(&data),
                };
                let found = reuse
                    .lookup(&uncompressed_digest, len)
                    .filter(|m| member_matches(m, &data));
                let (id, member, member_xxh3, reused) = match found {
                    Some(m) => (m.id, m.member, m.member_xxh3, true),
                    None => {
                        if known.is_some() {
                            uncompressed_digest = Digest::of(&data);
                        }
                        let member = compressor.compress(&data)?;
                        let hash = xxhash_rust::xxh3::xxh3_64(&member);
                        (Digest::of(&member), member, hash, false)
                    }
                };
                let record = ChunkRecord {
                    compressed_len: member.len() as u64,
                    uncompressed_len: len,
                    id,
                };
                Ok((
                    seq,
                    data,
                    member,
                    WrittenChunk {
                        record,
                        uncompressed_digest,
                        data_xxh3,
                        member_xxh3,
                        reused,
                        known: known.is_some(),
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
    pool: Sender<Vec<u8>>,
) -> Result<WrittenLayer, LayerError> {
    // The uncompressed stream is hashed (diff id) on its own thread, beside
    // this one, which hashes and writes the compressed blob.
    let (tar_tx, tar_rx) = bounded::<ChunkBuf>(16);
    std::thread::scope(|scope| {
        let tar_hasher = scope.spawn(move || {
            let mut h = DigestHasher::new();
            for data in tar_rx {
                h.update(&data);
                if data.bytes.capacity() <= POOL_BUFFER_MAX {
                    let _ = pool.try_send(data.bytes);
                }
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
            notes: Vec::new(),
            lying_archives: Vec::new(),
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
    tar_tx: Sender<ChunkBuf>,
) -> Result<(Digest, u64, u64, Vec<WrittenChunk>), LayerError> {
    let mut blob_hash = DigestHasher::new();
    let mut size = 0u64;
    let mut uncompressed_size = 0u64;
    let mut chunks = Vec::new();
    let mut waiting: BTreeMap<u64, (ChunkBuf, Vec<u8>, WrittenChunk)> = BTreeMap::new();
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

    fn cached(member: &[u8]) -> CachedMember {
        CachedMember {
            member: member.to_vec(),
            id: Digest::of(member),
            member_xxh3: xxhash_rust::xxh3::xxh3_64(member),
        }
    }

    struct MapReuse(Mutex<std::collections::HashMap<Digest, Vec<u8>>>);
    impl ChunkReuse for MapReuse {
        fn lookup(&self, d: &Digest, _: u64) -> Option<CachedMember> {
            self.0.lock().unwrap().get(d).map(|m| cached(m))
        }
    }

    struct CorruptReuse;
    impl ChunkReuse for CorruptReuse {
        fn lookup(&self, _: &Digest, _: u64) -> Option<CachedMember> {
            Some(CachedMember {
                member: b"garbage".to_vec(),
                id: Digest::of(b"something else"),
                member_xxh3: 0,
            })
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

    fn members_of(blob: &[u8], layer: &WrittenLayer) -> std::collections::HashMap<Digest, Vec<u8>> {
        layer
            .index()
            .chunks_with_offsets()
            .map(|c| {
                let member = blob[c.compressed_offset as usize
                    ..(c.compressed_offset + c.record.compressed_len) as usize]
                    .to_vec();
                (layer.chunks[c.index].uncompressed_digest, member)
            })
            .collect()
    }

    #[test]
    fn reused_chunks_give_identical_blob() {
        let data = pseudo_random(1_000_000, 4);
        let (blob, layer) = write(&data, &NoReuse, 2);
        let map = MapReuse(Mutex::new(members_of(&blob, &layer)));
        let (again, layer2) = write(&data, &map, 2);
        assert_eq!(again, blob);
        assert_eq!(layer2.reused_bytes(), data.len() as u64);
    }

    #[test]
    fn a_cached_member_whose_bytes_changed_is_compressed_again() {
        let data = pseudo_random(1_000_000, 4);
        let (blob, layer) = write(&data, &NoReuse, 2);
        let mut members = members_of(&blob, &layer);
        // Flip a byte inside one member's deflate data, keeping its trailer.
        let first = layer.chunks[0].uncompressed_digest;
        members.get_mut(&first).unwrap()[12] ^= 0x55;
        let map = RecordedReuse {
            members,
            recorded: members_of(&blob, &layer),
        };
        let (again, layer2) = write(&data, &map, 2);
        assert_eq!(again, blob);
        assert!(!layer2.chunks[0].reused);
        assert!(layer2.chunks[1..].iter().all(|c| c.reused));
    }

    /// Serves `members` under the xxh3 of `recorded`'s bytes, as a cache
    /// whose blob changed after it was recorded would.
    struct RecordedReuse {
        members: std::collections::HashMap<Digest, Vec<u8>>,
        recorded: std::collections::HashMap<Digest, Vec<u8>>,
    }
    impl ChunkReuse for RecordedReuse {
        fn lookup(&self, d: &Digest, _: u64) -> Option<CachedMember> {
            let now = self.members.get(d)?;
            let then = cached(self.recorded.get(d)?);
            Some(CachedMember {
                member: now.clone(),
                ..then
            })
        }
    }

    /// A cache that knows one segment's (or region's) chunking and every
    /// member, with the option of lying about the bytes.
    struct SegmentReuse {
        key: Digest,
        chunks: Vec<KnownChunk>,
        members: std::collections::HashMap<Digest, Vec<u8>>,
    }
    impl ChunkReuse for SegmentReuse {
        fn lookup(&self, d: &Digest, _: u64) -> Option<CachedMember> {
            self.members.get(d).map(|m| cached(m))
        }
        fn known_chunks(&self, key: &Digest) -> Option<Vec<KnownChunk>> {
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

    fn known_of(layer: &WrittenLayer, segment: usize) -> Vec<KnownChunk> {
        layer
            .chunks
            .iter()
            .filter(|c| c.segment == segment)
            .map(|c| KnownChunk {
                len: c.record.uncompressed_len,
                digest: c.uncompressed_digest,
                data_xxh3: c.data_xxh3,
            })
            .collect()
    }

    #[test]
    fn known_segment_chunking_is_reused_and_lies_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        // A multiple of 512 bytes: no tar padding after the file, so the old
        // last chunk's bytes are still there, unchanged, when the file grows.
        let data = pseudo_random(900 * 1024, 11);
        let plan = one_file_plan(dir.path(), &data);
        let key = plan.segments[0].reuse_key.unwrap();
        let mut blob = Vec::new();
        let opts = LayerOptions::default();
        let first = write_layer(plan.clone(), &mut blob, &opts, &NoReuse, &|_| {}).unwrap();
        let members = members_of(&blob, &first);
        let chunks = known_of(&first, 0);
        assert!(chunks.len() > 3);
        let honest = SegmentReuse {
            key,
            chunks: chunks.clone(),
            members: members.clone(),
        };
        let mut again = Vec::new();
        let second = write_layer(plan.clone(), &mut again, &opts, &honest, &|_| {}).unwrap();
        assert_eq!(again, blob);
        assert!(second
            .chunks
            .iter()
            .filter(|c| c.segment == 0)
            .all(|c| c.reused));
        // The cache claims chunk 2 has the digest of chunk 3: its bytes do not
        // match the xxh3 recorded, so from there the file is cut and hashed
        // afresh, and the output is what a cold build gives.
        let mut lying = chunks.clone();
        lying[2].digest = chunks[3].digest;
        lying[2].data_xxh3 = chunks[3].data_xxh3;
        let liar = SegmentReuse {
            key,
            chunks: lying,
            members: members.clone(),
        };
        let mut third = Vec::new();
        let out = write_layer(plan.clone(), &mut third, &opts, &liar, &|_| {}).unwrap();
        assert_eq!(third, blob);
        for (o, f) in out.chunks.iter().zip(&first.chunks) {
            assert_eq!(o.uncompressed_digest, f.uncompressed_digest);
            assert_eq!(o.record, f.record);
        }
        // And a cache whose cuts were made for other bytes (the file grew at
        // its end, so the old last chunk was cut by the end of the file, not
        // by its content) gives the cold build's cuts too.
        let mut grown = data.clone();
        grown.extend_from_slice(&pseudo_random(300_000, 12));
        let dir2 = tempfile::tempdir().unwrap();
        let plan2 = one_file_plan(dir2.path(), &grown);
        let mut cold = Vec::new();
        write_layer(plan2.clone(), &mut cold, &opts, &NoReuse, &|_| {}).unwrap();
        let region_key = plan2.segments[0].region_keys[1].unwrap();
        let stale = SegmentReuse {
            key: region_key,
            chunks: chunks[1..].to_vec(),
            members,
        };
        let mut warm = Vec::new();
        let out = write_layer(plan2, &mut warm, &opts, &stale, &|_| {}).unwrap();
        assert_eq!(warm, cold);
        assert!(out.chunks[1..chunks.len() - 1].iter().all(|c| c.reused));
    }

    /// Writes `data` as one file, cold and with `reuse`; returns both blobs.
    fn cold_and_warm(data: &[u8], reuse: &dyn ChunkReuse) -> (Vec<u8>, Vec<u8>, WrittenLayer) {
        let dir = tempfile::tempdir().unwrap();
        let plan = one_file_plan(dir.path(), data);
        let opts = LayerOptions::default();
        let mut cold = Vec::new();
        write_layer(plan.clone(), &mut cold, &opts, &NoReuse, &|_| {}).unwrap();
        let mut warm = Vec::new();
        let out = write_layer(plan, &mut warm, &opts, reuse, &|_| {}).unwrap();
        (cold, warm, out)
    }

    /// v1's chunks of its file region, offered under v2's region key.
    fn region_reuse(v1: &[u8], v2_key: Digest) -> (SegmentReuse, WrittenLayer) {
        let dir = tempfile::tempdir().unwrap();
        let plan = one_file_plan(dir.path(), v1);
        let mut blob = Vec::new();
        let first =
            write_layer(plan, &mut blob, &LayerOptions::default(), &NoReuse, &|_| {}).unwrap();
        let members = members_of(&blob, &first);
        let chunks: Vec<KnownChunk> = known_of(&first, 0)[1..].to_vec();
        (
            SegmentReuse {
                key: v2_key,
                chunks,
                members,
            },
            first,
        )
    }

    #[test]
    fn an_edit_on_the_first_byte_after_an_old_cut_gives_the_cold_cuts() {
        // FastCDC decides a cut on the byte after it: a chunk whose own bytes are
        // unchanged may still not end where it did.
        let v1 = pseudo_random(3 * 1024 * 1024, 21);
        let dir = tempfile::tempdir().unwrap();
        let key = one_file_plan(dir.path(), &v1).segments[0].region_keys[1].unwrap();
        let (reuse, first) = region_reuse(&v1, key);
        let cuts: Vec<u64> = first.chunks[1..]
            .iter()
            .scan(0u64, |end, c| {
                *end += c.record.uncompressed_len;
                Some(*end)
            })
            .collect();
        assert!(cuts.len() > 4, "{cuts:?}");
        for at in [cuts[0], cuts[2]] {
            let mut v2 = v1.clone();
            v2[at as usize] ^= 0x5a;
            let (cold, warm, out) = cold_and_warm(&v2, &reuse);
            assert!(
                warm == cold,
                "an edit at the old cut {at}: the warm blob differs"
            );
            if at == cuts[2] {
                assert!(
                    out.chunks[1].known,
                    "the first chunk, two cuts before, was known"
                );
            }
        }
    }

    #[test]
    fn a_lying_digest_with_true_bytes_is_not_carried_on() {
        // The cache's xxh3 matches the bytes but its digest is another chunk's: the
        // member found under that digest was made from other bytes, so the chunk is
        // compressed afresh and its digest computed.
        let v1 = pseudo_random(2 * 1024 * 1024, 22);
        let dir = tempfile::tempdir().unwrap();
        let key = one_file_plan(dir.path(), &v1).segments[0].region_keys[1].unwrap();
        let (mut reuse, first) = region_reuse(&v1, key);
        let wrong = reuse.chunks[2].digest;
        reuse.chunks[0].digest = wrong;
        let (cold, warm, out) = cold_and_warm(&v1, &reuse);
        assert!(warm == cold);
        let chunk = &out.chunks[1];
        assert!(chunk.known && !chunk.reused);
        assert_eq!(
            chunk.uncompressed_digest,
            first.chunks[1].uncompressed_digest
        );
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
