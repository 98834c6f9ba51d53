//! The build cache: finished layers keyed by a fingerprint of their inputs'
//! metadata (an unchanged layer is not read again), and, per layer name, a
//! map from each chunk's uncompressed sha256 to its gzip member in the last
//! blob built for that layer (an unchanged chunk is not compressed again).

use crate::error::BuildError;
use gantry_layer::{CachedMember, ChunkReuse, KnownChunk, WrittenLayer};
use gantry_oci::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How many finished layers, and chunk maps, the cache keeps (newest first).
const KEEP_LAYERS: usize = 32;

/// A layer the cache holds, with its chunk index blob.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedLayer {
    /// Layer name in the spec.
    pub name: String,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Uncompressed tar digest.
    pub diff_id: Digest,
    /// Uncompressed tar size.
    pub uncompressed_size: u64,
    /// Number of chunks.
    pub chunks: usize,
    /// Chunk index blob digest.
    pub index_digest: Digest,
    /// Chunk index blob size.
    pub index_size: u64,
}

/// The chunks of the last blob built for a layer name, stored as
/// `chunks/<sha256 of the name>.map`: a fixed-size record per chunk, so a
/// map of a hundred thousand chunks loads in milliseconds.
struct ChunkMap {
    blob: Digest,
    chunks: Vec<MapChunk>,
    /// Segment and region keys, and the chunks (indices into `chunks`) they were cut into.
    keys: Vec<(Digest, Vec<u32>)>,
}

#[derive(Clone, Copy)]
struct MapChunk {
    /// sha256 of the uncompressed bytes.
    uncompressed: Digest,
    /// Where the member is in the blob.
    offset: u64,
    compressed_len: u64,
    id: Digest,
    uncompressed_len: u64,
    data_xxh3: u128,
    member_xxh3: u64,
}

/// File magic and version of a chunk map.
const MAP_MAGIC: &[u8; 8] = b"GTCMAP02";
const MAP_RECORD: usize = 32 + 8 + 8 + 32 + 8 + 16 + 8;

impl ChunkMap {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.chunks.len() * (MAP_RECORD + 8));
        out.extend_from_slice(MAP_MAGIC);
        out.extend_from_slice(self.blob.as_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c.uncompressed.as_bytes());
            out.extend_from_slice(&c.offset.to_le_bytes());
            out.extend_from_slice(&c.compressed_len.to_le_bytes());
            out.extend_from_slice(c.id.as_bytes());
            out.extend_from_slice(&c.uncompressed_len.to_le_bytes());
            out.extend_from_slice(&c.data_xxh3.to_le_bytes());
            out.extend_from_slice(&c.member_xxh3.to_le_bytes());
        }
        out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        for (key, idx) in &self.keys {
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&(idx.len() as u64).to_le_bytes());
            for i in idx {
                out.extend_from_slice(&i.to_le_bytes());
            }
        }
        let check = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&check.to_le_bytes());
        out
    }

    /// `None` for anything but a whole, intact map of this version.
    fn decode(bytes: &[u8]) -> Option<ChunkMap> {
        let (body, check) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
        if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != check {
            return None;
        }
        let mut r = MapReader(body);
        if r.take(8)? != MAP_MAGIC {
            return None;
        }
        let blob = r.digest()?;
        let n = usize::try_from(r.u64()?).ok()?;
        if n > r.0.len() / MAP_RECORD {
            return None;
        }
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(MapChunk {
                uncompressed: r.digest()?,
                offset: r.u64()?,
                compressed_len: r.u64()?,
                id: r.digest()?,
                uncompressed_len: r.u64()?,
                data_xxh3: u128::from_le_bytes(r.take(16)?.try_into().ok()?),
                member_xxh3: r.u64()?,
            });
        }
        let k = usize::try_from(r.u64()?).ok()?;
        let mut keys = Vec::with_capacity(k.min(r.0.len() / 40));
        for _ in 0..k {
            let key = r.digest()?;
            let m = usize::try_from(r.u64()?).ok()?;
            if m > r.0.len() / 4 {
                return None;
            }
            let mut idx = Vec::with_capacity(m);
            for _ in 0..m {
                idx.push(u32::from_le_bytes(r.take(4)?.try_into().ok()?));
            }
            keys.push((key, idx));
        }
        r.0.is_empty().then_some(ChunkMap { blob, chunks, keys })
    }
}

struct MapReader<'a>(&'a [u8]);

impl<'a> MapReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn digest(&mut self) -> Option<Digest> {
        Some(Digest::from_bytes(self.take(32)?.try_into().ok()?))
    }
}

/// A cache directory (default `~/.cache/gantry/build`).
#[derive(Clone, Debug)]
pub struct BuildCache {
    dir: PathBuf,
}

impl BuildCache {
    /// Opens (creating) a cache directory.
    pub fn open(dir: &Path) -> Result<Self, BuildError> {
        for sub in ["layers", "chunks", "blobs/sha256", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(BuildError::io(&p))?;
        }
        Ok(BuildCache {
            dir: dir.to_path_buf(),
        })
    }

    /// Where a cached blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Scratch space on the cache's filesystem (blobs are renamed from here).
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The finished layer for this fingerprint, if its blobs are all present
    /// with the right sizes.
    pub fn lookup_layer(&self, fingerprint: &Digest) -> Option<CachedLayer> {
        let path = self
            .dir
            .join("layers")
            .join(format!("{}.json", fingerprint.hex()));
        let layer: CachedLayer = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        let ok = |d: &Digest, size: u64| {
            fs::metadata(self.blob_path(d))
                .map(|m| m.len() == size)
                .unwrap_or(false)
        };
        if ok(&layer.digest, layer.size) && ok(&layer.index_digest, layer.index_size) {
            // Touch so pruning keeps recently used layers.
            let _ = filetime_touch(&path);
            Some(layer)
        } else {
            None
        }
    }

    /// Records a finished layer, the chunk map of its blob (under `map_key`,
    /// see [`BuildCache::chunk_reuse`]) and how each keyed segment (see
    /// [`gantry_layer::Segment::reuse_key`]) was cut.
    pub fn record_layer(
        &self,
        fingerprint: &Digest,
        map_key: &str,
        layer: &CachedLayer,
        written: &WrittenLayer,
        segment_keys: &[Option<Digest>],
    ) -> Result<(), BuildError> {
        let mut offset = 0;
        let chunks = written
            .chunks
            .iter()
            .map(|c| {
                let entry = MapChunk {
                    uncompressed: c.uncompressed_digest,
                    offset,
                    compressed_len: c.record.compressed_len,
                    id: c.record.id,
                    uncompressed_len: c.record.uncompressed_len,
                    data_xxh3: c.data_xxh3,
                    member_xxh3: c.member_xxh3,
                };
                offset += c.record.compressed_len;
                entry
            })
            .collect();
        // Chunk lists by key: whole large files (metadata keys) and regions
        // of large files (archive directory or path keys).
        let mut by_key: HashMap<Digest, Vec<u32>> = HashMap::new();
        for (i, c) in written.chunks.iter().enumerate() {
            if let Some(key) = segment_keys.get(c.segment).copied().flatten() {
                by_key.entry(key).or_default().push(i as u32);
            }
            if let Some(key) = c.region_key {
                by_key.entry(key).or_default().push(i as u32);
            }
        }
        let mut keys: Vec<(Digest, Vec<u32>)> = by_key.into_iter().collect();
        keys.sort_by_key(|(key, idx)| (idx.first().copied(), *key));
        let map = ChunkMap {
            blob: layer.digest,
            chunks,
            keys,
        };
        self.write_file(&self.chunk_map_path(map_key), &map.encode())?;
        self.write_json(
            &self
                .dir
                .join("layers")
                .join(format!("{}.json", fingerprint.hex())),
            layer,
        )
    }

    fn chunk_map_path(&self, map_key: &str) -> PathBuf {
        self.dir
            .join("chunks")
            .join(format!("{}.map", Digest::of(map_key.as_bytes()).hex()))
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), BuildError> {
        let bytes = serde_json::to_vec(value).map_err(|e| BuildError::Spec(e.to_string()))?;
        self.write_file(path, &bytes)
    }

    /// Writes `bytes` to `path` whole or not at all.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
        let tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(BuildError::io(self.tmp_dir()))?;
        fs::write(tmp.path(), bytes).map_err(BuildError::io(tmp.path()))?;
        tmp.persist(path).map_err(|e| BuildError::Io {
            path: path.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }

    /// The chunks of the last blob built under `map_key`, for reuse. The key
    /// names the layer and every setting that shapes its chunks and members
    /// (chunker sizes, gzip level, deflate implementation), so a build with
    /// other settings never follows cuts or takes members made with these.
    pub fn chunk_reuse(&self, map_key: &str) -> CachedChunks {
        let load = || -> Option<CachedChunks> {
            let map = ChunkMap::decode(&fs::read(self.chunk_map_path(map_key)).ok()?)?;
            let file = fs::File::open(self.blob_path(&map.blob)).ok()?;
            let known = map
                .keys
                .iter()
                .filter_map(|(key, idx)| {
                    let list: Option<Vec<KnownChunk>> = idx
                        .iter()
                        .map(|i| {
                            map.chunks.get(*i as usize).map(|c| KnownChunk {
                                len: c.uncompressed_len,
                                digest: c.uncompressed,
                                data_xxh3: c.data_xxh3,
                            })
                        })
                        .collect();
                    Some((*key, list?))
                })
                .collect();
            let chunks = map
                .chunks
                .into_iter()
                .map(|c| (c.uncompressed, c))
                .collect();
            Some(CachedChunks {
                file: Some(file),
                chunks,
                known,
            })
        };
        load().unwrap_or(CachedChunks {
            file: None,
            chunks: HashMap::new(),
            known: HashMap::new(),
        })
    }

    /// Drops all but the most recently used layers, and blobs nothing keeps.
    pub fn prune(&self) -> Result<(), BuildError> {
        let layers_dir = self.dir.join("layers");
        let mut layers: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&layers_dir)
            .map_err(BuildError::io(&layers_dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        layers.sort_by_key(|l| std::cmp::Reverse(l.0));
        let mut keep: HashSet<String> = HashSet::new();
        for (i, (_, path)) in layers.iter().enumerate() {
            let parsed: Option<CachedLayer> = fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match parsed {
                Some(l) if i < KEEP_LAYERS => {
                    keep.insert(l.digest.hex());
                    keep.insert(l.index_digest.hex());
                }
                _ => {
                    let _ = fs::remove_file(path);
                }
            }
        }
        // Chunk maps are rewritten by every build of their layer: keep the most
        // recent ones (a map left by other chunking settings ages out with its blob).
        let chunks_dir = self.dir.join("chunks");
        let mut maps: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&chunks_dir)
            .map_err(BuildError::io(&chunks_dir))?
            .flatten()
            .map(|e| {
                let modified = e.metadata().and_then(|m| m.modified());
                (modified.unwrap_or(std::time::UNIX_EPOCH), e.path())
            })
            .collect();
        maps.sort_by_key(|m| std::cmp::Reverse(m.0));
        for (i, (_, path)) in maps.iter().enumerate() {
            let map = fs::read(path).ok().and_then(|b| ChunkMap::decode(&b));
            match map {
                Some(m) if i < KEEP_LAYERS => {
                    keep.insert(m.blob.hex());
                }
                _ => {
                    let _ = fs::remove_file(path);
                }
            }
        }
        let blobs_dir = self.dir.join("blobs/sha256");
        for entry in fs::read_dir(&blobs_dir)
            .map_err(BuildError::io(&blobs_dir))?
            .flatten()
        {
            if !keep.contains(&entry.file_name().to_string_lossy().into_owned()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

fn filetime_touch(path: &Path) -> std::io::Result<()> {
    let f = fs::OpenOptions::new().append(true).open(path)?;
    f.set_modified(std::time::SystemTime::now())
}

/// Chunks of an earlier blob, readable by uncompressed digest.
pub struct CachedChunks {
    file: Option<fs::File>,
    chunks: HashMap<Digest, MapChunk>,
    known: HashMap<Digest, Vec<KnownChunk>>,
}

impl CachedChunks {
    /// How many chunks are available.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

impl ChunkReuse for CachedChunks {
    fn lookup(&self, uncompressed: &Digest, len: u64) -> Option<CachedMember> {
        let c = self.chunks.get(uncompressed)?;
        // A gzip member is never much longer than its data (stored blocks).
        if c.uncompressed_len != len || c.compressed_len > len + len / 8 + 1024 {
            return None;
        }
        let file = self.file.as_ref()?;
        let mut member = vec![0u8; usize::try_from(c.compressed_len).ok()?];
        file.read_exact_at(&mut member, c.offset).ok()?;
        Some(CachedMember {
            member,
            id: c.id,
            member_xxh3: c.member_xxh3,
        })
    }

    fn known_chunks(&self, key: &Digest) -> Option<Vec<KnownChunk>> {
        self.known.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ChunkMap {
        let chunk = |i: u8| MapChunk {
            uncompressed: Digest::of(&[i]),
            offset: u64::from(i) * 100,
            compressed_len: 100,
            id: Digest::of(&[i, i]),
            uncompressed_len: 250,
            data_xxh3: u128::from(i) << 100 | 7,
            member_xxh3: u64::from(i) * 3,
        };
        ChunkMap {
            blob: Digest::of(b"blob"),
            chunks: (0..5).map(chunk).collect(),
            keys: vec![
                (Digest::of(b"k1"), vec![0, 1]),
                (Digest::of(b"k2"), vec![4]),
            ],
        }
    }

    #[test]
    fn a_chunk_map_reads_back_and_a_damaged_one_is_ignored() {
        let bytes = map().encode();
        let back = ChunkMap::decode(&bytes).expect("decodes");
        assert_eq!(back.blob, Digest::of(b"blob"));
        assert_eq!(back.chunks.len(), 5);
        assert_eq!(back.chunks[3].data_xxh3, 3u128 << 100 | 7);
        assert_eq!(back.chunks[4].member_xxh3, 12);
        assert_eq!(back.keys, map().keys);
        assert!(ChunkMap::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(ChunkMap::decode(&[]).is_none());
        for at in [0, 9, bytes.len() / 2, bytes.len() - 9] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(ChunkMap::decode(&bad).is_none(), "flip at {at}");
        }
    }
}

#[cfg(test)]
mod prune_tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_chunk_maps_and_their_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BuildCache::open(dir.path()).unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(10_000);
        for i in 0..(KEEP_LAYERS + 3) {
            let blob = Digest::of(format!("blob {i}").as_bytes());
            fs::write(cache.blob_path(&blob), b"x").unwrap();
            let map = ChunkMap {
                blob,
                chunks: Vec::new(),
                keys: Vec::new(),
            };
            let path = cache.chunk_map_path(&format!("layer {i}"));
            fs::write(&path, map.encode()).unwrap();
            let f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        cache.prune().unwrap();
        let maps = fs::read_dir(dir.path().join("chunks")).unwrap().count();
        assert_eq!(maps, KEEP_LAYERS);
        for i in 0..(KEEP_LAYERS + 3) {
            let blob = Digest::of(format!("blob {i}").as_bytes());
            assert_eq!(cache.blob_path(&blob).exists(), i >= 3, "blob {i}");
        }
    }
}
