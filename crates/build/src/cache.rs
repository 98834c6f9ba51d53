//! The build cache: finished layers keyed by a fingerprint of their inputs'
//! metadata (an unchanged layer is not read again), and, per layer name, a
//! map from each chunk's uncompressed sha256 to its gzip member in the last
//! blob built for that layer (an unchanged chunk is not compressed again).

use crate::error::BuildError;
use gantry_layer::{ChunkReuse, WrittenLayer};
use gantry_oci::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How many finished layers the cache keeps (newest first).
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

#[derive(Serialize, Deserialize)]
struct ChunkMap {
    blob: Digest,
    /// (uncompressed sha256, offset in blob, compressed length, chunk id, uncompressed length)
    chunks: Vec<(Digest, u64, u64, Digest, u64)>,
    /// Segments with a reuse key, and the chunks (indices into `chunks`) they were cut into.
    segments: Vec<(Digest, Vec<u32>)>,
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

    /// Records a finished layer, the chunk map of its blob and how each
    /// keyed segment (see [`gantry_layer::Segment::reuse_key`]) was cut.
    pub fn record_layer(
        &self,
        fingerprint: &Digest,
        layer: &CachedLayer,
        written: &WrittenLayer,
        segment_keys: &[Option<Digest>],
    ) -> Result<(), BuildError> {
        let mut offset = 0;
        let chunks = written
            .chunks
            .iter()
            .map(|c| {
                let entry = (
                    c.uncompressed_digest,
                    offset,
                    c.record.compressed_len,
                    c.record.id,
                    c.record.uncompressed_len,
                );
                offset += c.record.compressed_len;
                entry
            })
            .collect();
        // Chunk lists by reuse key: whole large files (metadata keys) and
        // regions of large files (content keys).
        let mut by_key: HashMap<Digest, Vec<u32>> = HashMap::new();
        for (i, c) in written.chunks.iter().enumerate() {
            if let Some(key) = segment_keys.get(c.segment).copied().flatten() {
                by_key.entry(key).or_default().push(i as u32);
            }
            if let Some(key) = c.region_key {
                by_key.entry(key).or_default().push(i as u32);
            }
        }
        let mut segments: Vec<(Digest, Vec<u32>)> = by_key.into_iter().collect();
        segments.sort_by_key(|(key, idx)| (idx.first().copied(), *key));
        let map = ChunkMap {
            blob: layer.digest,
            chunks,
            segments,
        };
        self.write_json(&self.chunk_map_path(&layer.name), &map)?;
        self.write_json(
            &self
                .dir
                .join("layers")
                .join(format!("{}.json", fingerprint.hex())),
            layer,
        )
    }

    fn chunk_map_path(&self, layer_name: &str) -> PathBuf {
        self.dir
            .join("chunks")
            .join(format!("{}.json", Digest::of(layer_name.as_bytes()).hex()))
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), BuildError> {
        let bytes = serde_json::to_vec(value).map_err(|e| BuildError::Spec(e.to_string()))?;
        let tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(BuildError::io(self.tmp_dir()))?;
        fs::write(tmp.path(), bytes).map_err(BuildError::io(tmp.path()))?;
        tmp.persist(path).map_err(|e| BuildError::Io {
            path: path.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }

    /// The chunks of the last blob built for `layer_name`, for reuse.
    pub fn chunk_reuse(&self, layer_name: &str) -> CachedChunks {
        let load = || -> Option<CachedChunks> {
            let map: ChunkMap =
                serde_json::from_slice(&fs::read(self.chunk_map_path(layer_name)).ok()?).ok()?;
            let file = fs::File::open(self.blob_path(&map.blob)).ok()?;
            let segments = map
                .segments
                .iter()
                .filter_map(|(key, idx)| {
                    let list: Option<Vec<(u64, Digest)>> = idx
                        .iter()
                        .map(|i| map.chunks.get(*i as usize).map(|c| (c.4, c.0)))
                        .collect();
                    Some((*key, list?))
                })
                .collect();
            let chunks = map
                .chunks
                .into_iter()
                .map(|(u, off, len, id, _)| (u, (off, len, id)))
                .collect();
            Some(CachedChunks {
                file: Some(file),
                chunks,
                segments,
            })
        };
        load().unwrap_or(CachedChunks {
            file: None,
            chunks: HashMap::new(),
            segments: HashMap::new(),
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
        let chunks_dir = self.dir.join("chunks");
        for entry in fs::read_dir(&chunks_dir)
            .map_err(BuildError::io(&chunks_dir))?
            .flatten()
        {
            let map: Option<ChunkMap> = fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match map {
                Some(m) => {
                    keep.insert(m.blob.hex());
                }
                None => {
                    let _ = fs::remove_file(entry.path());
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
    chunks: HashMap<Digest, (u64, u64, Digest)>,
    segments: HashMap<Digest, Vec<(u64, Digest)>>,
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
    fn lookup(&self, uncompressed: &Digest, _len: u64) -> Option<(Vec<u8>, Digest)> {
        let (offset, len, id) = *self.chunks.get(uncompressed)?;
        let file = self.file.as_ref()?;
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        file.read_exact_at(&mut buf, offset).ok()?;
        Some((buf, id))
    }

    fn segment_chunks(&self, reuse_key: &Digest) -> Option<Vec<(u64, Digest)>> {
        self.segments.get(reuse_key).cloned()
    }
}
