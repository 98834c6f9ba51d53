//! The fast path's layer assembly: a layer's uncompressed tar stream, given as an ordered
//! run of [`Piece`]s, written into an empty snapshot directory with the on-disk semantics of
//! containerd's overlayfs applier (whiteouts as 0:0 character devices, opaque directories as
//! `trusted.overlay.opaque`, xattrs, hard links, symlinks, devices, ownership, modes, times),
//! while [`StreamHasher`] computes the stream's sha256 (the layer's diff_id) on another core.
//!
//! A piece is either bytes (a chunk inflated from the agent) or a byte range of a file that
//! an earlier snapshot on this node holds (a chunk the node already has). File data taken
//! from such a range is cloned (`FICLONERANGE`) where the filesystem can share blocks and
//! the offsets are block-aligned, and copied in the kernel (`copy_file_range`) otherwise.
//!
//! The result is a [`LayerMap`]: where every byte of the layer's tar stream now lives (a
//! file of the new snapshot, or header bytes kept in the map), so a later layer can take
//! its unchanged chunks from this one.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why a layer could not be assembled. The fast path then removes what it wrote and lets
/// the layer take the normal path.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The tar stream holds something this applier does not take (it is left to
    /// containerd's own applier on the normal path).
    #[error("layer tar: {0}")]
    Tar(String),
}

type Result<T, E = UnpackError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> UnpackError {
    let context = context.into();
    move |source| UnpackError::Io { context, source }
}

/// Where the bytes of one segment of a layer's tar stream live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Place {
    /// Header, padding or extension bytes, kept in [`LayerMap::meta`] from this offset.
    Meta(u64),
    /// Data of a regular file of the snapshot, from this offset in the file.
    File {
        /// Path relative to the snapshot's directory.
        path: String,
        /// Offset in the file.
        offset: u64,
    },
    /// Bytes with no copy on disk any more (their file was replaced later in the layer).
    Gone,
}

/// A contiguous run of a layer's tar stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Offset in the tar stream.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// Where its bytes are.
    pub place: Place,
}

/// Where every byte of a layer's uncompressed tar stream lives on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMap {
    /// Segments in stream order, contiguous from 0.
    pub segments: Vec<Segment>,
    /// Header, padding and extension bytes.
    #[serde(skip)]
    pub meta: Vec<u8>,
    /// Length of the tar stream.
    pub size: u64,
}

impl LayerMap {
    /// The pieces that make up `[start, start + len)` of the stream, with file paths under
    /// `dir` (the snapshot directory); `None` when part of the range has no copy on disk or
    /// lies outside the stream.
    pub fn pieces(&self, dir: &Path, start: u64, len: u64) -> Option<Vec<Piece>> {
        let end = start.checked_add(len)?;
        if end > self.size {
            return None;
        }
        let mut out = Vec::new();
        let mut i = self
            .segments
            .partition_point(|s| s.start.saturating_add(s.len) <= start);
        let mut pos = start;
        while pos < end {
            let seg = self.segments.get(i)?;
            let skip = pos.checked_sub(seg.start)?;
            let take = (seg.len - skip).min(end - pos);
            match &seg.place {
                Place::Meta(at) => {
                    let a = usize::try_from(at + skip).ok()?;
                    let b = a.checked_add(usize::try_from(take).ok()?)?;
                    out.push(Piece::Bytes(Bytes::copy_from_slice(self.meta.get(a..b)?)));
                }
                Place::File { path, offset } => out.push(Piece::File {
                    path: dir.join(path),
                    offset: offset + skip,
                    len: take,
                }),
                Place::Gone => return None,
            }
            pos += take;
            i += 1;
        }
        Some(out)
    }

    /// Writes the map as two files: `<stem>.json` (segments) and `<stem>.meta` (bytes).
    /// Not synced, like the snapshot's own files: after a power loss a map may be cut
    /// short, and then [`LayerMap::load`] refuses it; a map that loads but points at lost
    /// data only ever feeds a build whose diff_id check then fails.
    pub fn save(&self, json: &Path, meta: &Path) -> Result<()> {
        let text = serde_json::to_vec(self).map_err(|e| UnpackError::Io {
            context: format!("encoding {}", json.display()),
            source: std::io::Error::other(e),
        })?;
        write_file(meta, &self.meta)?;
        write_file(json, &text)
    }

    /// Reads a map written by [`LayerMap::save`], checking that its segments cover the
    /// stream contiguously and that its meta offsets lie within the meta bytes.
    pub fn load(json: &Path, meta: &Path) -> Result<LayerMap> {
        let text = std::fs::read(json).map_err(io_err(format!("reading {}", json.display())))?;
        let mut map: LayerMap = serde_json::from_slice(&text).map_err(|e| UnpackError::Io {
            context: format!("decoding {}", json.display()),
            source: std::io::Error::other(e),
        })?;
        map.meta = std::fs::read(meta).map_err(io_err(format!("reading {}", meta.display())))?;
        let mut pos = 0u64;
        for s in &map.segments {
            let ok = s.start == pos
                && match &s.place {
                    Place::Meta(at) => at
                        .checked_add(s.len)
                        .is_some_and(|e| e <= map.meta.len() as u64),
                    Place::File { path, .. } => clean_path(path.as_bytes()).is_ok(),
                    Place::Gone => true,
                };
            if !ok {
                return Err(UnpackError::Tar(format!(
                    "layer map {} is inconsistent at stream offset {pos}",
                    json.display()
                )));
            }
            pos = pos.saturating_add(s.len);
        }
        if pos != map.size {
            return Err(UnpackError::Tar(format!(
                "layer map {} covers {pos} of {} bytes",
                json.display(),
                map.size
            )));
        }
        Ok(map)
    }

    fn push(&mut self, start: u64, len: u64, place: Place) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.segments.last_mut() {
            let merged = match (&mut last.place, &place) {
                (Place::Meta(a), Place::Meta(b)) => *a + last.len == *b,
                (
                    Place::File {
                        path: p1,
                        offset: o1,
                    },
                    Place::File {
                        path: p2,
                        offset: o2,
                    },
                ) => p1 == p2 && *o1 + last.len == *o2,
                _ => false,
            };
            if merged {
                last.len += len;
                self.size = start + len;
                return;
            }
        }
        self.segments.push(Segment { start, len, place });
        self.size = start + len;
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(io_err(format!("writing {}", path.display())))
}

/// A run of a layer's tar stream.
#[derive(Clone, Debug)]
pub enum Piece {
    /// The bytes themselves.
    Bytes(Bytes),
    /// A byte range of a file an earlier snapshot holds (read-only, committed).
    File {
        /// The file.
        path: PathBuf,
        /// Offset in the file.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }

    /// The first `n` bytes and the rest.
    fn split(self, n: u64) -> (Piece, Piece) {
        match self {
            Piece::Bytes(b) => {
                let n = n as usize;
                (Piece::Bytes(b.slice(..n)), Piece::Bytes(b.slice(n..)))
            }
            Piece::File { path, offset, len } => (
                Piece::File {
                    path: path.clone(),
                    offset,
                    len: n,
                },
                Piece::File {
                    path,
                    offset: offset + n,
                    len: len - n,
                },
            ),
        }
    }
}

/// What an assembly wrote, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// File data shared with earlier snapshots' files without a copy (reflink).
    pub reused_bytes: u64,
    /// File data copied from earlier snapshots' files (`copy_file_range`).
    pub copied_bytes: u64,
    /// File data written from new chunks.
    pub written_bytes: u64,
    /// Entries applied.
    pub entries: u64,
}

/// An open source file, kept while consecutive pieces come from it.
struct Source {
    path: PathBuf,
    file: File,
    size: u64,
}

/// Something kept alive until the hasher is done with a batch of pieces (a share of a
/// memory budget, say), dropped right after.
pub type Keep = Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>;

/// The sha256 of a tar stream (a layer's diff_id) given as ordered batches of [`Piece`]s,
/// computed on a thread of its own. It is fed apart from the [`Assembler`], so hashing
/// unchanged data (from the files of earlier snapshots) runs ahead of the writer instead of
/// waiting for its copies.
pub struct StreamHasher {
    tx: Option<tokio::sync::mpsc::Sender<(Vec<Piece>, Keep)>>,
    handle: Option<JoinHandle<Result<[u8; 32]>>>,
}

impl StreamHasher {
    /// Starts the hashing thread.
    pub fn start() -> Result<StreamHasher> {
        let (tx, rx) = tokio::sync::mpsc::channel::<(Vec<Piece>, Keep)>(4096);
        let handle = std::thread::Builder::new()
            .name("gantry-diffid".into())
            .spawn(move || hash_pieces(rx))
            .map_err(io_err("starting the diff_id hasher"))?;
        Ok(StreamHasher {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// The next pieces of the stream (from async code).
    pub async fn feed(&self, pieces: Vec<Piece>, keep: Keep) -> Result<()> {
        match &self.tx {
            Some(tx) if tx.send((pieces, keep)).await.is_ok() => Ok(()),
            _ => Err(UnpackError::Tar("the diff_id hasher stopped".into())),
        }
    }

    /// The next pieces of the stream (from a thread that may block).
    pub fn blocking_feed(&self, pieces: Vec<Piece>) -> Result<()> {
        match &self.tx {
            Some(tx) if tx.blocking_send((pieces, None)).is_ok() => Ok(()),
            _ => Err(UnpackError::Tar("the diff_id hasher stopped".into())),
        }
    }

    /// Ends the stream and returns its sha256 (waits for the thread: blocking).
    pub fn finish(mut self) -> Result<[u8; 32]> {
        drop(self.tx.take());
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => Err(UnpackError::Tar("the diff_id hasher failed".into())),
        }
    }
}

fn hash_pieces(mut rx: tokio::sync::mpsc::Receiver<(Vec<Piece>, Keep)>) -> Result<[u8; 32]> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut open: Option<(PathBuf, File)> = None;
    while let Some((pieces, keep)) = rx.blocking_recv() {
        for piece in pieces {
            match piece {
                Piece::Bytes(b) => sha.update(&b),
                Piece::File { path, offset, len } => {
                    if open.as_ref().is_none_or(|(p, _)| *p != path) {
                        let f = File::open(&path)
                            .map_err(io_err(format!("opening {}", path.display())))?;
                        open = Some((path.clone(), f));
                    }
                    let Some((_, f)) = open.as_ref() else {
                        continue;
                    };
                    let mut done = 0u64;
                    while done < len {
                        let n = (len - done).min(buf.len() as u64) as usize;
                        f.read_exact_at(&mut buf[..n], offset + done)
                            .map_err(io_err(format!("reading {}", path.display())))?;
                        sha.update(&buf[..n]);
                        done += n as u64;
                    }
                }
            }
        }
        drop(keep);
    }
    Ok(sha.finalize().into())
}

/// What the parser is in the middle of.
enum State {
    /// Collecting a 512-byte header.
    Header(Vec<u8>),
    /// Collecting the data of a PAX or GNU long-name extension header.
    Extension {
        kind: u8,
        need: u64,
        buf: Vec<u8>,
        pad: u64,
    },
    /// Writing a regular file's data.
    Data {
        file: File,
        rel: String,
        at: u64,
        remaining: u64,
        pad: u64,
        entry: Entry,
    },
    /// Bytes that are not file data (padding, data of other types, the end-of-archive
    /// blocks and anything after them).
    Skip { remaining: u64, then_header: bool },
}

/// A header's metadata, after PAX and GNU extensions.
#[derive(Clone, Debug, Default)]
struct Entry {
    path: String,
    link: String,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, i64),
    major: u32,
    minor: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Extensions that apply to the next header only.
#[derive(Default)]
struct Pending {
    path: Option<String>,
    link: Option<String>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, i64)>,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Longest PAX or GNU extension accepted (paths and xattrs; containerd's own reader caps
/// PAX headers similarly).
const MAX_EXTENSION: u64 = 1 << 20;

/// Writes a layer's tar stream into an empty directory. Feed every [`Piece`] of the stream
/// in order with [`Assembler::feed`], then [`Assembler::finish`].
pub struct Assembler {
    dest: PathBuf,
    block: u64,
    reflink: bool,
    state: State,
    pos: u64,
    pending: Pending,
    map: LayerMap,
    /// Segment indexes of each regular file's data, to mark them gone if it is replaced.
    file_segments: HashMap<String, Vec<usize>>,
    dirs: Vec<(PathBuf, (i64, i64))>,
    source: Option<Source>,
    stats: Stats,
    ended: bool,
}

impl Assembler {
    /// An assembler writing into `dest`, which must exist and be empty. `reflink`: try
    /// to share blocks with source files (falls back to copying by itself when the
    /// filesystem refuses).
    pub fn new(dest: &Path, reflink: bool) -> Result<Assembler> {
        let block = fs_block_size(dest).unwrap_or(4096).max(512);
        Ok(Assembler {
            dest: dest.to_path_buf(),
            block,
            reflink,
            state: State::Header(Vec::with_capacity(512)),
            pos: 0,
            pending: Pending::default(),
            map: LayerMap::default(),
            file_segments: HashMap::new(),
            dirs: Vec::new(),
            source: None,
            stats: Stats::default(),
            ended: false,
        })
    }

    /// Takes the next piece of the stream.
    pub fn feed(&mut self, piece: Piece) -> Result<()> {
        let mut rest = Some(piece);
        while let Some(piece) = rest.take() {
            if piece.len() == 0 {
                break;
            }
            let want = self.wants();
            let (now, later) = if piece.len() > want {
                let (a, b) = piece.split(want);
                (a, Some(b))
            } else {
                (piece, None)
            };
            rest = later;
            self.consume(now)?;
        }
        Ok(())
    }

    /// How many bytes the current state takes before it changes.
    fn wants(&self) -> u64 {
        match &self.state {
            State::Header(buf) => 512 - buf.len() as u64,
            State::Extension { need, buf, .. } => need - buf.len() as u64,
            State::Data { remaining, .. } => *remaining,
            State::Skip { remaining, .. } => *remaining,
        }
        .max(1)
    }

    fn meta_bytes(&mut self, piece: &Piece) -> Result<Bytes> {
        match piece {
            Piece::Bytes(b) => Ok(b.clone()),
            Piece::File { path, offset, len } => {
                let f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
                let mut buf = vec![0u8; *len as usize];
                f.read_exact_at(&mut buf, *offset)
                    .map_err(io_err(format!("reading {}", path.display())))?;
                Ok(Bytes::from(buf))
            }
        }
    }

    fn record_meta(&mut self, bytes: &[u8]) {
        let at = self.map.meta.len() as u64;
        self.map.meta.extend_from_slice(bytes);
        self.map.push(self.pos, bytes.len() as u64, Place::Meta(at));
    }

    fn consume(&mut self, piece: Piece) -> Result<()> {
        let len = piece.len();
        if let State::Data { .. } = self.state {
            self.write_data(&piece)?;
            self.pos += len;
            let done = matches!(self.state, State::Data { remaining: 0, .. });
            if done {
                self.end_file()?;
            }
            return Ok(());
        }
        let bytes = self.meta_bytes(&piece)?;
        self.record_meta(&bytes);
        self.pos += len;
        match &mut self.state {
            State::Header(buf) => {
                buf.extend_from_slice(&bytes);
                if buf.len() == 512 {
                    let block = std::mem::take(buf);
                    self.header(&block)?;
                }
            }
            State::Extension { buf, need, .. } => {
                buf.extend_from_slice(&bytes);
                if buf.len() as u64 == *need {
                    let State::Extension { kind, buf, pad, .. } =
                        std::mem::replace(&mut self.state, State::Header(Vec::new()))
                    else {
                        return Ok(());
                    };
                    self.extension(kind, &buf)?;
                    self.state = if pad > 0 {
                        State::Skip {
                            remaining: pad,
                            then_header: true,
                        }
                    } else {
                        State::Header(Vec::with_capacity(512))
                    };
                }
            }
            State::Skip {
                remaining,
                then_header,
            } => {
                *remaining -= len;
                if *remaining == 0 && *then_header {
                    self.state = State::Header(Vec::with_capacity(512));
                } else if *remaining == 0 {
                    // After the end of the archive: whatever follows is skipped too.
                    *remaining = u64::MAX;
                }
            }
            State::Data { .. } => {}
        }
        Ok(())
    }

    fn header(&mut self, block: &[u8]) -> Result<()> {
        if block.iter().all(|&b| b == 0) {
            self.ended = true;
            self.state = State::Skip {
                remaining: u64::MAX,
                then_header: false,
            };
            return Ok(());
        }
        let h = tar::Header::from_byte_slice(block);
        let stored_sum = h
            .cksum()
            .map_err(|e| UnpackError::Tar(format!("header at {}: {e}", self.pos - 512)))?;
        let sum: u32 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        if sum != stored_sum {
            return Err(UnpackError::Tar(format!(
                "header at {} has a bad checksum",
                self.pos - 512
            )));
        }
        let kind = block[156];
        let size = match self.pending.size {
            Some(s) if !matches!(kind, b'x' | b'g' | b'L' | b'K') => s,
            _ => h
                .entry_size()
                .map_err(|e| UnpackError::Tar(format!("header at {}: {e}", self.pos - 512)))?,
        };
        let pad = (512 - size % 512) % 512;
        match kind {
            b'x' | b'g' | b'L' | b'K' => {
                if size > MAX_EXTENSION {
                    return Err(UnpackError::Tar(format!(
                        "extension header of {size} bytes at {}",
                        self.pos - 512
                    )));
                }
                if size == 0 {
                    self.state = State::Header(Vec::with_capacity(512));
                } else {
                    self.state = State::Extension {
                        kind,
                        need: size,
                        buf: Vec::with_capacity(size as usize),
                        pad,
                    };
                }
                Ok(())
            }
            b'0' | 0 | b'7' | b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => {
                let entry = self.entry(h, kind)?;
                self.pending = Pending::default();
                self.apply(entry, size, pad)
            }
            other => Err(UnpackError::Tar(format!(
                "entry type {:?} at {} is not supported by the fast path",
                other as char,
                self.pos - 512
            ))),
        }
    }

    fn entry(&mut self, h: &tar::Header, kind: u8) -> Result<Entry> {
        let bad = |e: std::io::Error| UnpackError::Tar(format!("header: {e}"));
        let raw_path = match self.pending.path.take() {
            Some(p) => p,
            None => String::from_utf8_lossy(&h.path_bytes()).into_owned(),
        };
        let link = match self.pending.link.take() {
            Some(l) => l,
            None => h
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        };
        Ok(Entry {
            path: raw_path,
            link,
            kind: if kind == 0 || kind == b'7' {
                b'0'
            } else {
                kind
            },
            mode: h.mode().map_err(bad)?,
            uid: self
                .pending
                .uid
                .take()
                .map_or_else(|| h.uid(), Ok)
                .map_err(bad)?,
            gid: self
                .pending
                .gid
                .take()
                .map_or_else(|| h.gid(), Ok)
                .map_err(bad)?,
            mtime: match self.pending.mtime.take() {
                Some(t) => t,
                None => (h.mtime().map_err(bad)? as i64, 0),
            },
            // Device numbers only mean something (and are only filled in) for devices.
            major: if matches!(kind, b'3' | b'4') {
                h.device_major().map_err(bad)?.unwrap_or(0)
            } else {
                0
            },
            minor: if matches!(kind, b'3' | b'4') {
                h.device_minor().map_err(bad)?.unwrap_or(0)
            } else {
                0
            },
            xattrs: std::mem::take(&mut self.pending.xattrs),
        })
    }

    fn extension(&mut self, kind: u8, data: &[u8]) -> Result<()> {
        let text = |d: &[u8]| {
            let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
            String::from_utf8_lossy(&d[..end]).into_owned()
        };
        match kind {
            b'L' => self.pending.path = Some(text(data)),
            b'K' => self.pending.link = Some(text(data)),
            b'x' => {
                for ext in tar::PaxExtensions::new(data) {
                    let ext = ext.map_err(|e| UnpackError::Tar(format!("PAX header: {e}")))?;
                    let key = ext
                        .key()
                        .map_err(|e| UnpackError::Tar(format!("PAX key: {e}")))?;
                    let value = ext.value_bytes();
                    let num = || -> Result<u64> {
                        std::str::from_utf8(value)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| UnpackError::Tar(format!("PAX {key} is not a number")))
                    };
                    match key {
                        "path" => self.pending.path = Some(text(value)),
                        "linkpath" => self.pending.link = Some(text(value)),
                        "size" => self.pending.size = Some(num()?),
                        "uid" => self.pending.uid = Some(num()?),
                        "gid" => self.pending.gid = Some(num()?),
                        "mtime" => self.pending.mtime = parse_pax_time(value),
                        _ => {
                            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                                self.pending.xattrs.push((name.to_string(), value.to_vec()));
                            }
                        }
                    }
                }
            }
            // Global PAX headers: containerd's applier ignores them too.
            _ => {}
        }
        Ok(())
    }

    fn apply(&mut self, e: Entry, size: u64, pad: u64) -> Result<()> {
        self.stats.entries += 1;
        let rel = clean_path(e.path.as_bytes())?;
        let skip_after = |size: u64, pad: u64| State::Skip {
            remaining: size + pad,
            then_header: true,
        };
        if rel.is_empty() {
            // The root directory itself: containerd leaves the snapshot root as it is.
            self.state = if size + pad > 0 {
                skip_after(size, pad)
            } else {
                State::Header(Vec::with_capacity(512))
            };
            return Ok(());
        }
        let path = self.dest.join(&rel);
        let parent = path.parent().unwrap_or(&self.dest).to_path_buf();
        self.ensure_parent(&parent)?;
        let base = rel.rsplit('/').next().unwrap_or(&rel);
        if base == ".wh..wh..opq" {
            set_xattr(&parent, "trusted.overlay.opaque", b"y")?;
            self.state = next_state(size, pad);
            return Ok(());
        }
        if let Some(orig) = base.strip_prefix(".wh.") {
            let target = parent.join(orig);
            let orig_rel = match rel.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/{orig}"),
                None => orig.to_string(),
            };
            self.replace_existing(&orig_rel, &target, false)?;
            mknod(&target, libc::S_IFCHR, 0)?;
            std::os::unix::fs::lchown(&target, Some(e.uid as u32), Some(e.gid as u32))
                .map_err(io_err(format!("chown {}", target.display())))?;
            self.state = next_state(size, pad);
            return Ok(());
        }
        self.replace_existing(&rel, &path, e.kind == b'5')?;
        match e.kind {
            b'0' => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io_err(format!("creating {}", path.display())))?;
                if size == 0 {
                    drop(file);
                    self.finish_entry(&path, &e)?;
                    self.state = next_state(0, pad);
                } else {
                    self.state = State::Data {
                        file,
                        rel,
                        at: 0,
                        remaining: size,
                        pad,
                        entry: e,
                    };
                }
                return Ok(());
            }
            b'5' if !path.is_dir() => {
                std::fs::create_dir(&path).map_err(io_err(format!("mkdir {}", path.display())))?;
            }
            b'2' => std::os::unix::fs::symlink(&e.link, &path)
                .map_err(io_err(format!("symlink {}", path.display())))?,
            b'1' => {
                let target = self.dest.join(clean_path(e.link.as_bytes())?);
                let md = std::fs::symlink_metadata(&target).map_err(io_err(format!(
                    "hard link {} to {}",
                    path.display(),
                    target.display()
                )))?;
                if md.is_dir() {
                    return Err(UnpackError::Tar(format!(
                        "hard link {} to a directory",
                        e.path
                    )));
                }
                self.check_no_symlink_ancestor(&target)?;
                std::fs::hard_link(&target, &path)
                    .map_err(io_err(format!("hard link {}", path.display())))?;
                self.state = next_state(size, pad);
                // A hard link shares its target's inode: nothing more to set.
                return Ok(());
            }
            b'3' | b'4' | b'6' => {
                let kind = match e.kind {
                    b'3' => libc::S_IFCHR,
                    b'4' => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                mknod(&path, kind, libc::makedev(e.major, e.minor))?;
            }
            _ => {}
        }
        self.finish_entry(&path, &e)?;
        self.state = next_state(size, pad);
        Ok(())
    }

    /// Creates missing parent directories (0755, as containerd does) and refuses a parent
    /// that is a symlink: the entry would land outside its own path.
    fn ensure_parent(&self, parent: &Path) -> Result<()> {
        self.check_no_symlink_ancestor(parent)?;
        if !parent.exists() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("mkdir {}", parent.display())))?;
        }
        Ok(())
    }

    fn check_no_symlink_ancestor(&self, path: &Path) -> Result<()> {
        let mut p = path;
        while p != self.dest && p.starts_with(&self.dest) {
            if let Ok(md) = std::fs::symlink_metadata(p) {
                if md.file_type().is_symlink() {
                    return Err(UnpackError::Tar(format!(
                        "{} goes through the symlink {}",
                        path.display(),
                        p.display()
                    )));
                }
            }
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        Ok(())
    }

    /// Removes what an earlier entry of this layer put at `path` (unless both are
    /// directories), marking the stream bytes of removed files as gone from the map.
    fn replace_existing(&mut self, rel: &str, path: &Path, is_dir: bool) -> Result<()> {
        let Ok(md) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        if md.is_dir() && is_dir {
            return Ok(());
        }
        if md.is_dir() {
            std::fs::remove_dir_all(path)
                .map_err(io_err(format!("removing {}", path.display())))?;
            let prefix = format!("{rel}/");
            let gone: Vec<String> = self
                .file_segments
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for k in gone {
                self.forget(&k);
            }
        } else {
            std::fs::remove_file(path).map_err(io_err(format!("removing {}", path.display())))?;
            self.forget(rel);
        }
        Ok(())
    }

    fn forget(&mut self, rel: &str) {
        if let Some(idx) = self.file_segments.remove(rel) {
            for i in idx {
                if let Some(s) = self.map.segments.get_mut(i) {
                    s.place = Place::Gone;
                }
            }
        }
    }

    fn finish_entry(&mut self, path: &Path, e: &Entry) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(e.uid as u32), Some(e.gid as u32))
            .map_err(io_err(format!("chown {}", path.display())))?;
        if e.kind != b'2' {
            std::fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(e.mode & 0o7777),
            )
            .map_err(io_err(format!("chmod {}", path.display())))?;
        }
        for (name, value) in &e.xattrs {
            set_xattr(path, name, value)?;
        }
        if e.kind == b'5' {
            self.dirs.push((path.to_path_buf(), e.mtime));
        } else {
            set_times(path, e.mtime)?;
        }
        Ok(())
    }

    fn write_data(&mut self, piece: &Piece) -> Result<()> {
        let block = self.block;
        let State::Data {
            file,
            rel,
            at,
            remaining,
            ..
        } = &mut self.state
        else {
            return Ok(());
        };
        let len = piece.len();
        let seg_start = self.pos;
        match piece {
            Piece::Bytes(b) => {
                file.write_all_at(b, *at).map_err(io_err(format!(
                    "writing {}",
                    self.dest.join(&*rel).display()
                )))?;
                self.stats.written_bytes += len;
            }
            Piece::File { path, offset, len } => {
                if self.source.as_ref().is_none_or(|s| s.path != *path) {
                    let f =
                        File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
                    let size = f
                        .metadata()
                        .map_err(io_err(format!("stat {}", path.display())))?
                        .len();
                    self.source = Some(Source {
                        path: path.clone(),
                        file: f,
                        size,
                    });
                }
                let Some(src) = self.source.as_ref() else {
                    return Ok(());
                };
                let (shared, copied) =
                    clone_or_copy(src, *offset, *len, file, *at, block, &mut self.reflink)
                        .map_err(io_err(format!(
                            "copying {} into {}",
                            path.display(),
                            self.dest.join(&*rel).display()
                        )))?;
                self.stats.reused_bytes += shared;
                self.stats.copied_bytes += copied;
            }
        }
        let place = Place::File {
            path: rel.clone(),
            offset: *at,
        };
        *at += len;
        *remaining -= len;
        let rel = rel.clone();
        let before = self.map.segments.len();
        self.map.push(seg_start, len, place);
        if self.map.segments.len() > before {
            self.file_segments
                .entry(rel)
                .or_default()
                .push(self.map.segments.len() - 1);
        }
        Ok(())
    }

    fn end_file(&mut self) -> Result<()> {
        let State::Data {
            file,
            rel,
            at,
            pad,
            entry,
            ..
        } = std::mem::replace(&mut self.state, State::Header(Vec::new()))
        else {
            return Ok(());
        };
        let path = self.dest.join(&rel);
        file.set_len(at)
            .map_err(io_err(format!("truncating {}", path.display())))?;
        drop(file);
        self.finish_entry(&path, &entry)?;
        self.state = next_state(0, pad);
        Ok(())
    }

    /// Ends the stream: directory times, the map and the stats.
    pub fn finish(mut self) -> Result<(LayerMap, Stats)> {
        let complete = match &self.state {
            State::Header(buf) => buf.is_empty(),
            State::Skip { then_header, .. } => !*then_header && self.ended,
            _ => false,
        };
        if !complete && !self.ended {
            return Err(UnpackError::Tar(format!(
                "the tar stream ends in the middle of an entry at {}",
                self.pos
            )));
        }
        for (dir, t) in self.dirs.iter().rev() {
            set_times(dir, *t)?;
        }
        self.map.size = self.pos;
        Ok((self.map, self.stats))
    }
}

fn next_state(size: u64, pad: u64) -> State {
    if size + pad > 0 {
        State::Skip {
            remaining: size + pad,
            then_header: true,
        }
    } else {
        State::Header(Vec::with_capacity(512))
    }
}

/// A tar path made relative and clean: no leading `/` or `./`, no empty or `.`
/// components; `..` is refused.
pub fn clean_path(raw: &[u8]) -> Result<String> {
    let s = String::from_utf8_lossy(raw);
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(UnpackError::Tar(format!(
                    "path {s:?} leaves the layer root"
                )))
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0i64;
    for (i, d) in frac.bytes().take(9).enumerate() {
        if !d.is_ascii_digit() {
            return None;
        }
        nanos += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    Some((secs, nanos))
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| UnpackError::Tar(format!("path {} holds a NUL byte", path.display())))
}

fn mknod(path: &Path, kind: libc::mode_t, dev: libc::dev_t) -> Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) };
    if r != 0 {
        return Err(io_err(format!("mknod {}", path.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let c = cpath(path)?;
    let n = CString::new(name).map_err(|_| UnpackError::Tar(format!("xattr name {name:?}")))?;
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io_err(format!(
            "setting xattr {name} on {}",
            path.display()
        ))(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_times(path: &Path, (secs, nanos): (i64, i64)) -> Result<()> {
    let c = cpath(path)?;
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as _,
    };
    let times = [t, t];
    // SAFETY: valid path and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io_err(format!("setting times of {}", path.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The filesystem's block size, the unit `FICLONERANGE` shares.
fn fs_block_size(dir: &Path) -> Option<u64> {
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct for a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then_some(st.f_bsize as u64)
}

/// Puts `len` bytes of `src` from `src_off` at `dst_off` of `dst`: the block-aligned part
/// shared with `FICLONERANGE` when `reflink` (turned off at the first refusal), the rest
/// copied in the kernel. Returns (shared, copied) bytes.
fn clone_or_copy(
    src: &Source,
    src_off: u64,
    len: u64,
    dst: &File,
    dst_off: u64,
    block: u64,
    reflink: &mut bool,
) -> std::io::Result<(u64, u64)> {
    let mut shared = 0;
    let mut copied = 0;
    let (mut s, mut d, mut left) = (src_off, dst_off, len);
    if *reflink && s % block == d % block {
        let head = ((block - s % block) % block).min(left);
        if head > 0 {
            copy_range(&src.file, s, dst, d, head)?;
            copied += head;
            (s, d, left) = (s + head, d + head, left - head);
        }
        // The clone may end unaligned only at the end of the source file.
        let body = if s + left == src.size {
            left
        } else {
            left - left % block
        };
        if body > 0 {
            match clone_range(&src.file, s, dst, d, body) {
                Ok(()) => {
                    shared += body;
                    (s, d, left) = (s + body, d + body, left - body);
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY)
                    ) =>
                {
                    tracing::info!(
                        error = %e,
                        src_off = s,
                        dst_off = d,
                        len = body,
                        src_size = src.size,
                        "FICLONERANGE refused; copying from now on"
                    );
                    *reflink = false;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if left > 0 {
        copy_range(&src.file, s, dst, d, left)?;
        copied += left;
    }
    Ok((shared, copied))
}

fn clone_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> std::io::Result<()> {
    let arg = libc::file_clone_range {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset: src_off,
        src_length: len,
        dest_offset: dst_off,
    };
    // SAFETY: FICLONERANGE takes a pointer to a file_clone_range that lives for the call.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &arg) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn copy_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<()> {
    let mut off_in = src_off as libc::loff_t;
    let mut off_out = dst_off as libc::loff_t;
    let mut left = len as usize;
    while left > 0 {
        // SAFETY: valid fds and offset pointers for the call.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                left,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EXDEV | libc::EOPNOTSUPP)
            ) {
                return copy_by_hand(src, off_in as u64, dst, off_out as u64, left as u64);
            }
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "source file shorter than its layer map says",
            ));
        }
        left -= n as usize;
    }
    Ok(())
}

fn copy_by_hand(
    src: &File,
    mut s: u64,
    dst: &File,
    mut d: u64,
    mut left: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], s)?;
        dst.write_all_at(&buf[..n], d)?;
        (s, d, left) = (s + n as u64, d + n as u64, left - n as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_600_000_000);
        h
    }

    /// A layer with every kind of entry the applier handles.
    fn layer(big: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Directory, 0, 0o750);
        b.append_data(&mut h, "game/", std::io::empty()).unwrap();
        let mut h = header(tar::EntryType::Regular, big.len() as u64, 0o644);
        b.append_data(&mut h, "game/big.pak", big).unwrap();
        let mut h = header(tar::EntryType::Regular, 5, 0o4755);
        b.append_data(&mut h, "game/run.sh", &b"echo\n"[..])
            .unwrap();
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, "game/link", "run.sh").unwrap();
        let mut h = header(tar::EntryType::Link, 0, 0o644);
        b.append_link(&mut h, "game/hard", "game/run.sh").unwrap();
        let mut h = header(tar::EntryType::Fifo, 0, 0o600);
        b.append_data(&mut h, "game/fifo", std::io::empty())
            .unwrap();
        let mut h = header(tar::EntryType::Char, 0, 0o600);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        b.append_data(&mut h, "game/null", std::io::empty())
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0, 0o644);
        b.append_data(&mut h, "old/.wh.removed", std::io::empty())
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0, 0o644);
        b.append_data(&mut h, "opaque/.wh..wh..opq", std::io::empty())
            .unwrap();
        let long = format!("deep/{}/file.txt", "x".repeat(150));
        let mut h = header(tar::EntryType::Regular, 3, 0o600);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.gantry", &b"yes"[..])])
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 2, 0o644);
        b.append_data(&mut h, "game/attr", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    /// Whether `dir`'s filesystem can clone a file's blocks.
    fn reflinks(dir: &Path) -> bool {
        let a = dir.join("reflink-probe-a");
        std::fs::write(&a, vec![1u8; 8192]).unwrap();
        let src = File::open(&a).unwrap();
        let dst = File::create(dir.join("reflink-probe-b")).unwrap();
        clone_range(&src, 0, &dst, 0, 8192).is_ok()
    }

    fn big(seed: u8, n: usize) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// Feeds `tar` in pieces of the given sizes, as bytes.
    fn assemble(tar: &[u8], dest: &Path, sizes: &[usize]) -> (LayerMap, Stats, [u8; 32]) {
        let mut a = Assembler::new(dest, true).unwrap();
        let h = StreamHasher::start().unwrap();
        let bytes = Bytes::from(tar.to_vec());
        let (mut at, mut k) = (0, 0);
        while at < tar.len() {
            let n = sizes[k % sizes.len()].min(tar.len() - at);
            let piece = Piece::Bytes(bytes.slice(at..at + n));
            h.blocking_feed(vec![piece.clone()]).unwrap();
            a.feed(piece).unwrap();
            at += n;
            k += 1;
        }
        let (map, stats) = a.finish().unwrap();
        (map, stats, h.finish().unwrap())
    }

    #[test]
    fn applies_every_entry_kind_with_overlay_semantics() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("fs");
        std::fs::create_dir(&dest).unwrap();
        let data = big(7, 300_000);
        let tar = layer(&data);
        let (map, stats, hash) = assemble(&tar, &dest, &[1, 7, 511, 512, 513, 65536]);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&tar)));
        assert_eq!(map.size, tar.len() as u64);
        assert_eq!(stats.written_bytes, 300_000 + 5 + 3 + 2);
        assert_eq!(std::fs::read(dest.join("game/big.pak")).unwrap(), data);
        let md = std::fs::symlink_metadata(dest.join("game/run.sh")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o4755, 1000, 1001)
        );
        assert_eq!(md.mtime(), 1_600_000_000);
        assert_eq!(md.nlink(), 2, "game/hard is a hard link of run.sh");
        assert_eq!(
            std::fs::read_link(dest.join("game/link")).unwrap(),
            Path::new("run.sh")
        );
        let dir = std::fs::metadata(dest.join("game")).unwrap();
        assert_eq!((dir.mode() & 0o7777, dir.mtime()), (0o750, 1_600_000_000));
        assert!(std::fs::symlink_metadata(dest.join("game/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let null = std::fs::symlink_metadata(dest.join("game/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
        let wh = std::fs::symlink_metadata(dest.join("old/removed")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert!(!dest.join("old/.wh.removed").exists());
        assert!(!dest.join("opaque/.wh..wh..opq").exists());
        let long = dest.join(format!("deep/{}/file.txt", "x".repeat(150)));
        assert_eq!(std::fs::read(long).unwrap(), b"abc");
        let mut buf = [0u8; 8];
        let c = CString::new(dest.join("game/attr").as_os_str().as_bytes()).unwrap();
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                c"user.gantry".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        // tmpfs and some overlay roots refuse user xattrs; where they exist, they match.
        if n >= 0 {
            assert_eq!(&buf[..n as usize], b"yes");
        }
    }

    #[test]
    fn a_later_layer_takes_unchanged_bytes_from_the_earlier_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let v1_dir = tmp.path().join("v1");
        let v2_dir = tmp.path().join("v2");
        std::fs::create_dir(&v1_dir).unwrap();
        std::fs::create_dir(&v2_dir).unwrap();
        let mut data = big(3, 1_000_000);
        let v1 = layer(&data);
        let (map1, _, _) = assemble(&v1, &v1_dir, &[4096 * 3 + 5]);
        let saved = (tmp.path().join("m.json"), tmp.path().join("m.meta"));
        map1.save(&saved.0, &saved.1).unwrap();
        let map1 = LayerMap::load(&saved.0, &saved.1).unwrap();
        // v2: 100 bytes in the middle of the pak changed in place.
        for b in &mut data[500_000..500_100] {
            *b ^= 0xff;
        }
        let v2 = layer(&data);
        assert_eq!(v1.len(), v2.len());
        // "Chunks" of 64 KiB: those equal to v1's at the same offset come from v1's files.
        let mut a = Assembler::new(&v2_dir, true).unwrap();
        let h = StreamHasher::start().unwrap();
        let chunk = 65_536;
        let mut from_v1 = 0;
        for start in (0..v2.len()).step_by(chunk) {
            let end = (start + chunk).min(v2.len());
            if v1[start..end] == v2[start..end] {
                for p in map1
                    .pieces(&v1_dir, start as u64, (end - start) as u64)
                    .unwrap()
                {
                    h.blocking_feed(vec![p.clone()]).unwrap();
                    a.feed(p).unwrap();
                }
                from_v1 += end - start;
            } else {
                let p = Piece::Bytes(Bytes::copy_from_slice(&v2[start..end]));
                h.blocking_feed(vec![p.clone()]).unwrap();
                a.feed(p).unwrap();
            }
        }
        let (map2, stats) = a.finish().unwrap();
        let hash = h.finish().unwrap();
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&v2)));
        assert_eq!(std::fs::read(v2_dir.join("game/big.pak")).unwrap(), data);
        assert_eq!(
            std::fs::read(v1_dir.join("game/big.pak")).unwrap()[500_000],
            {
                let mut d = data[500_000];
                d ^= 0xff;
                d
            }
        );
        assert!(from_v1 > 900_000);
        assert!(
            stats.reused_bytes + stats.copied_bytes > 900_000,
            "{stats:?}"
        );
        // Where the filesystem shares blocks (XFS with reflink, btrfs) most of it is shared.
        if reflinks(tmp.path()) {
            assert!(stats.reused_bytes > 800_000, "{stats:?}");
        } else {
            assert_eq!(stats.reused_bytes, 0, "{stats:?}");
        }
        assert!(stats.written_bytes < 70_000, "{stats:?}");
        assert_eq!(map2.size, v2.len() as u64);
        // v2's map serves its own bytes back.
        let pieces = map2.pieces(&v2_dir, 0, v2.len() as u64).unwrap();
        let mut back = Vec::new();
        for p in pieces {
            match p {
                Piece::Bytes(b) => back.extend_from_slice(&b),
                Piece::File { path, offset, len } => {
                    let mut buf = vec![0; len as usize];
                    File::open(path)
                        .unwrap()
                        .read_exact_at(&mut buf, offset)
                        .unwrap();
                    back.extend_from_slice(&buf);
                }
            }
        }
        assert_eq!(back, v2);
    }

    #[test]
    fn bad_streams_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dotdot", {
                let mut b = tar::Builder::new(Vec::new());
                let mut h = header(tar::EntryType::Regular, 1, 0o644);
                h.as_old_mut().name[..9].copy_from_slice(b"../escape");
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
                b.into_inner().unwrap()
            }),
            ("through a symlink", {
                let mut b = tar::Builder::new(Vec::new());
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                b.append_link(&mut h, "etc", "/etc").unwrap();
                let mut h = header(tar::EntryType::Regular, 1, 0o644);
                b.append_data(&mut h, "etc/passwd", &b"x"[..]).unwrap();
                b.into_inner().unwrap()
            }),
            ("truncated", layer(&big(1, 10_000))[..5000].to_vec()),
            ("bad checksum", {
                let mut t = layer(&big(1, 100));
                t[0] ^= 1;
                t
            }),
        ];
        for (i, (what, tar)) in cases.into_iter().enumerate() {
            let dest = tmp.path().join(format!("d{i}"));
            std::fs::create_dir(&dest).unwrap();
            let mut a = Assembler::new(&dest, false).unwrap();
            let fed = a.feed(Piece::Bytes(Bytes::from(tar)));
            let result = fed.and_then(|_| a.finish().map(|_| ()));
            assert!(result.is_err(), "{what} was accepted");
            assert!(
                !tmp.path().join("escape").exists(),
                "{what} wrote outside its root"
            );
        }
    }

    #[test]
    fn maps_refuse_ranges_they_cannot_serve() {
        let mut m = LayerMap {
            meta: b"hdr".to_vec(),
            ..LayerMap::default()
        };
        m.push(0, 3, Place::Meta(0));
        m.push(
            3,
            10,
            Place::File {
                path: "a".into(),
                offset: 0,
            },
        );
        m.push(13, 5, Place::Gone);
        let dir = Path::new("/snap");
        assert!(m.pieces(dir, 0, 13).is_some());
        assert!(m.pieces(dir, 10, 5).is_none(), "reaches a gone segment");
        assert!(m.pieces(dir, 0, 19).is_none(), "past the end");
        assert!(m.pieces(dir, u64::MAX, 2).is_none());
        let p = m.pieces(dir, 2, 4).unwrap();
        assert!(matches!(&p[0], Piece::Bytes(b) if &b[..] == b"r"));
        assert!(
            matches!(&p[1], Piece::File { path, offset: 0, len: 3 } if path == Path::new("/snap/a"))
        );
    }
}
