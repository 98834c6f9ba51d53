//! Splits a layer's tar stream into segments at entry boundaries, so that
//! chunks never span two large files (or two large entries of a pak/zip
//! archive). A change to one file or one archive entry then changes only the
//! chunks of that file or entry, whatever its neighbours do; and an
//! unchanged file's chunks can be known from a cache without re-chunking it.

use crate::archive::{self, ArchiveLayout, EntryChecks, Probe};
use crate::entry::{EntryKind, FileData, LayerEntry};
use crate::error::LayerError;
use crate::tar_stream::{entry_header, padding, TarOptions, END_OF_ARCHIVE};
use gantry_oci::{Digest, DigestHasher};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A piece of the tar stream: literal bytes or a region of a file on disk.
#[derive(Clone, Debug)]
pub(crate) enum Piece {
    Bytes(Arc<[u8]>),
    File {
        path: PathBuf,
        offset: u64,
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
}

/// A run of the tar stream that chunking treats on its own: chunks end at
/// the segment's end and at each of its `cuts`.
#[derive(Clone, Debug)]
pub struct Segment {
    pub(crate) pieces: Vec<Piece>,
    /// Length in bytes.
    pub len: u64,
    /// Offsets inside the segment where a chunk must end (sorted, each
    /// strictly between 0 and `len`).
    pub cuts: Vec<u64>,
    /// Whether the segment is one large file (chunked with the larger sizes
    /// of [`crate::ChunkerParams::large_file_scale`]).
    pub own_file: bool,
    /// For a segment that is exactly one file read from disk: a digest of
    /// its tar header, the file's identity and metadata, and its cuts. Equal
    /// keys mean equal bytes, so a cache may supply the segment's chunk
    /// lengths and digests without reading it through the chunker.
    pub reuse_key: Option<Digest>,
    /// One per region (the runs between `cuts`): a key under which a cache
    /// may know how the region was cut last time, from what the archive's
    /// directory says about the entries in it (or, for a large file that is
    /// no archive, from its path). Only a candidate: every chunk a cache
    /// offers is checked against the bytes before it is used.
    pub region_keys: Vec<Option<Digest>>,
    /// The archive's stored entries, checked against its directory in the
    /// read pass.
    pub(crate) checks: Option<EntryChecks>,
}

/// A layer's tar stream as segments, in order.
#[derive(Clone, Debug)]
pub struct SegmentPlan {
    /// The segments; their concatenation is the layer's tar.
    pub segments: Vec<Segment>,
    /// Archives found unusable (truncated, overlapping entries, sizes that
    /// do not add up), each naming the file and what is wrong; such a file
    /// is chunked as a plain file.
    pub notes: Vec<String>,
}

impl SegmentPlan {
    /// Plans the tar of `entries` (already sorted). Files of at least
    /// `big_file` bytes get a segment of their own; inside a zip archive
    /// (game paks), entries of at least `big_file` or 4 KiB bytes, whichever is
    /// less, get cuts around them (see `archive_cuts`).
    pub fn new(
        entries: Vec<LayerEntry>,
        options: TarOptions,
        big_file: u64,
    ) -> Result<Self, LayerError> {
        Self::with_plain_files(entries, options, big_file, &[])
    }

    /// Like [`SegmentPlan::new`], with the archives in `plain` chunked as plain
    /// files (no cuts at their entries): those whose directory was found to lie
    /// ([`crate::WrittenLayer::lying_archives`]).
    pub fn with_plain_files(
        entries: Vec<LayerEntry>,
        options: TarOptions,
        big_file: u64,
        plain: &[PathBuf],
    ) -> Result<Self, LayerError> {
        let mut segments = Vec::new();
        let mut notes = Vec::new();
        let mut group: Vec<Piece> = Vec::new();
        let flush = |group: &mut Vec<Piece>, segments: &mut Vec<Segment>| {
            if !group.is_empty() {
                let pieces = std::mem::take(group);
                let len = pieces.iter().map(Piece::len).sum();
                segments.push(Segment {
                    pieces,
                    len,
                    cuts: Vec::new(),
                    own_file: false,
                    reuse_key: None,
                    region_keys: vec![None],
                    checks: None,
                });
            }
        };
        for entry in &entries {
            let header: Arc<[u8]> = entry_header(entry, options)?.into();
            match &entry.kind {
                EntryKind::File { data, size } if *size >= big_file => {
                    flush(&mut group, &mut segments);
                    let h = header.len() as u64;
                    let mut pieces = vec![Piece::Bytes(header.clone())];
                    let mut layout = None;
                    let mut reuse_key = None;
                    match data {
                        FileData::Disk(path) => {
                            pieces.push(Piece::File {
                                path: path.clone(),
                                offset: 0,
                                len: *size,
                            });
                            let probe = match plain.contains(path) {
                                true => Probe::Unusable(
                                    "its zip central directory does not match its entries' \
                                     bytes"
                                        .into(),
                                ),
                                false => archive::probe(path, *size),
                            };
                            match probe {
                                Probe::NotArchive => {}
                                Probe::Archive(l) => layout = Some(l),
                                Probe::Unusable(why) => notes.push(format!(
                                    "{}: {why}; chunked as a plain file, without cuts at its \
                                     entries",
                                    path.display()
                                )),
                            }
                        }
                        FileData::Bytes(bytes) => pieces.push(Piece::Bytes(bytes.clone())),
                    }
                    pieces.push(Piece::Bytes(padding(*size).into()));
                    let len: u64 = pieces.iter().map(Piece::len).sum();
                    // A cut after the tar header (it holds the size and time),
                    // and around the archive's entries.
                    let mut cuts: Vec<u64> = std::iter::once(h)
                        .chain(
                            layout
                                .iter()
                                .flat_map(|l| entry_cuts(l, *size, big_file))
                                .map(|c| c + h),
                        )
                        .filter(|c| *c > 0 && *c < len)
                        .collect();
                    cuts.sort_unstable();
                    cuts.dedup();
                    if let FileData::Disk(path) = data {
                        reuse_key = file_key(path, &header, &cuts);
                    }
                    let region_keys =
                        region_keys(entry.path.as_str(), layout.as_ref(), h, &cuts, len);
                    let checks = match (data, &layout) {
                        (FileData::Disk(path), Some(l)) => {
                            Some(EntryChecks::new(path.clone(), h, l))
                        }
                        _ => None,
                    };
                    segments.push(Segment {
                        pieces,
                        len,
                        cuts,
                        own_file: true,
                        reuse_key,
                        region_keys,
                        checks,
                    });
                }
                EntryKind::File { data, size } => {
                    group.push(Piece::Bytes(header));
                    match data {
                        FileData::Disk(path) => group.push(Piece::File {
                            path: path.clone(),
                            offset: 0,
                            len: *size,
                        }),
                        FileData::Bytes(bytes) => group.push(Piece::Bytes(bytes.clone())),
                    }
                    let pad = padding(*size);
                    if !pad.is_empty() {
                        group.push(Piece::Bytes(pad.into()));
                    }
                }
                _ => group.push(Piece::Bytes(header)),
            }
        }
        group.push(Piece::Bytes(Arc::from(&END_OF_ARCHIVE[..])));
        flush(&mut group, &mut segments);
        Ok(SegmentPlan { segments, notes })
    }

    /// A plan of literal bytes in one segment (tests, small streams).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u64;
        SegmentPlan {
            segments: vec![Segment {
                pieces: vec![Piece::Bytes(bytes.into())],
                len,
                cuts: Vec::new(),
                own_file: false,
                reuse_key: None,
                region_keys: vec![None],
                checks: None,
            }],
            notes: Vec::new(),
        }
    }

    /// Total length of the tar stream.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Identity of a file's bytes from metadata: inode, device, size, and
/// modification and change times (ctime moves on any write), plus the tar
/// header and cuts that shape its chunks.
fn file_key(path: &std::path::Path, header: &[u8], cuts: &[u64]) -> Option<Digest> {
    let m = std::fs::metadata(path).ok()?;
    let mut h = DigestHasher::new();
    h.update(b"gantry-segment-v1\0");
    h.update(header);
    for v in [
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
    ] {
        h.update(&v.to_le_bytes());
    }
    for c in cuts {
        h.update(&c.to_le_bytes());
    }
    Some(h.finish())
}

/// Entries of a zip archive at least this long have chunks of their own.
const ENTRY_CUT_MIN: u64 = 4 * 1024;
/// Shorter entries start one when their name hashes to 0 modulo this: runs of tiny
/// entries (configs, small scripts) share a chunk, grouped by content, so a change to
/// one never moves the grouping of the others.
const TINY_ENTRY_GROUP: u64 = 8;

/// Offsets inside an archive (a game pak) where a chunk must end: around each entry of
/// at least [`ENTRY_CUT_MIN`] bytes, before some tiny ones (by name), and before the
/// directory. A re-exported or edited entry then changes only its own chunks, however many
/// small entries the archive packs and however far the edit shifts the entries after it.
fn entry_cuts(layout: &ArchiveLayout, size: u64, big: u64) -> Vec<u64> {
    let mut cuts = Vec::new();
    let mut data_end = 0u64;
    for entry in &layout.entries {
        let len = entry.data_end - entry.data_start;
        data_end = data_end.max(entry.data_end);
        if len >= big.min(ENTRY_CUT_MIN) {
            cuts.push(entry.header_start);
            cuts.push(entry.data_end);
        } else if xxhash_rust::xxh3::xxh3_64(entry.name.as_bytes()).is_multiple_of(TINY_ENTRY_GROUP)
        {
            cuts.push(entry.header_start);
        }
    }
    cuts.push(data_end);
    cuts.push(layout.directory_start);
    cuts.retain(|c| *c < size);
    cuts
}

/// The candidate key of each region of a one-file segment (see
/// [`Segment::region_keys`]). `h` is the tar header's length, `cuts` the
/// segment's cuts. An archive's region is keyed by what the directory says of
/// the entries starting in it (name, checksum, sizes, place); a region holding
/// none (the tar header, the directory) has no key. A plain file's one region
/// after its header is keyed by the file's path in the image, whatever its
/// length, so a file that grew or changed late keeps the chunks before the
/// change.
fn region_keys(
    image_path: &str,
    layout: Option<&ArchiveLayout>,
    h: u64,
    cuts: &[u64],
    len: u64,
) -> Vec<Option<Digest>> {
    let mut keys = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0u64;
    let mut entries = layout
        .map(|l| l.entries.as_slice())
        .unwrap_or(&[])
        .iter()
        .peekable();
    for end in cuts.iter().copied().chain(std::iter::once(len)) {
        let key = match layout {
            _ if end <= h => None,
            None => {
                let mut k = DigestHasher::new();
                k.update(b"gantry-file-region-v1\0");
                k.update(image_path.as_bytes());
                Some(k.finish())
            }
            Some(_) => {
                let mut k = DigestHasher::new();
                k.update(b"gantry-archive-region-v1\0");
                k.update(&(end - start).to_le_bytes());
                let mut any = false;
                while let Some(e) = entries.next_if(|e| e.header_start + h < end) {
                    if e.header_start + h < start {
                        continue;
                    }
                    any = true;
                    for v in [
                        e.header_start + h - start,
                        e.data_start - e.header_start,
                        e.data_end - e.data_start,
                        e.size,
                        u64::from(e.crc32),
                        u64::from(e.stored),
                        e.name.len() as u64,
                    ] {
                        k.update(&v.to_le_bytes());
                    }
                    k.update(e.name.as_bytes());
                }
                any.then(|| k.finish())
            }
        };
        keys.push(key);
        start = end;
    }
    keys
}

/// Reads a list of pieces in order, opening files lazily and failing if a
/// file is shorter than planned.
pub(crate) struct PieceReader {
    pieces: std::vec::IntoIter<Piece>,
    current: Option<Current>,
}

enum Current {
    Bytes(Arc<[u8]>, usize),
    File {
        file: File,
        path: PathBuf,
        remaining: u64,
        planned: u64,
    },
}

impl PieceReader {
    pub(crate) fn new(pieces: Vec<Piece>) -> Self {
        PieceReader {
            pieces: pieces.into_iter(),
            current: None,
        }
    }
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.current {
                Some(Current::Bytes(bytes, pos)) if *pos < bytes.len() => {
                    let n = buf.len().min(bytes.len() - *pos);
                    buf[..n].copy_from_slice(&bytes[*pos..*pos + n]);
                    *pos += n;
                    return Ok(n);
                }
                Some(Current::File {
                    file,
                    path,
                    remaining,
                    planned,
                }) if *remaining > 0 => {
                    let want = buf
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    let n = file.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::other(LayerError::SourceChanged {
                            path: path.clone(),
                            expected: *planned,
                        }));
                    }
                    *remaining -= n as u64;
                    return Ok(n);
                }
                _ => {}
            }
            self.current = match self.pieces.next() {
                None => return Ok(0),
                Some(Piece::Bytes(b)) => Some(Current::Bytes(b, 0)),
                Some(Piece::File { path, offset, len }) => {
                    let mut file = File::open(&path).map_err(|source| {
                        io::Error::other(LayerError::Read {
                            path: path.clone(),
                            source,
                        })
                    })?;
                    if offset > 0 {
                        file.seek(SeekFrom::Start(offset))?;
                    }
                    let planned = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if planned != len + offset {
                        return Err(io::Error::other(LayerError::SourceChanged {
                            path,
                            expected: len + offset,
                        }));
                    }
                    Some(Current::File {
                        file,
                        path,
                        remaining: len,
                        planned,
                    })
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ImagePath;
    use std::io::Write;

    fn disk_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> LayerEntry {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        LayerEntry {
            path: ImagePath::parse(name, false).unwrap(),
            kind: EntryKind::File {
                data: FileData::Disk(p),
                size: bytes.len() as u64,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn read_all(plan: &SegmentPlan) -> Vec<u8> {
        let mut out = Vec::new();
        PieceReader::new(
            plan.segments
                .iter()
                .flat_map(|s| s.pieces.clone())
                .collect(),
        )
        .read_to_end(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn segments_concatenate_to_the_plain_tar_and_split_at_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let entries = vec![
            disk_file(dir.path(), "a.txt", b"small"),
            disk_file(dir.path(), "b.bin", &vec![3u8; 5000]),
            disk_file(dir.path(), "c.txt", b"tail"),
        ];
        let plan = SegmentPlan::new(entries.clone(), TarOptions::default(), 4096).unwrap();
        assert_eq!(plan.segments.len(), 3);
        assert!(plan.segments[1].reuse_key.is_some());
        let mut plain = Vec::new();
        crate::TarStream::new(entries, TarOptions::default())
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(read_all(&plan), plain);
        assert_eq!(plan.len(), plain.len() as u64);
    }

    #[test]
    fn zip_entries_get_cuts_and_keys_follow_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let mut zip_bytes = Vec::new();
        {
            let mut w = zip::ZipWriter::new(io::Cursor::new(&mut zip_bytes));
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            for (name, len) in [("small1", 100usize), ("big", 20_000), ("small2", 50)] {
                w.start_file(name, opts).unwrap();
                w.write_all(&vec![7u8; len]).unwrap();
            }
            w.finish().unwrap();
        }
        let entry = disk_file(dir.path(), "game.pak", &zip_bytes);
        let plan = SegmentPlan::new(vec![entry.clone()], TarOptions::default(), 10_000).unwrap();
        let seg = &plan.segments[0];
        assert_eq!(
            seg.cuts.len(),
            4,
            "cuts after the tar header, around the big entry and before the central \
             directory: {:?}",
            seg.cuts
        );
        let key = seg.reuse_key.unwrap();
        let again = SegmentPlan::new(vec![entry.clone()], TarOptions::default(), 10_000).unwrap();
        assert_eq!(again.segments[0].reuse_key, Some(key));
        // Rewriting the file (same bytes) changes its ctime, so its key.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("game.pak"), &zip_bytes).unwrap();
        let later = SegmentPlan::new(vec![entry], TarOptions::default(), 10_000).unwrap();
        assert_ne!(later.segments[0].reuse_key, Some(key));
    }

    /// The bytes between the cuts of a one-file segment.
    fn regions(plan: &SegmentPlan) -> Vec<Vec<u8>> {
        let seg = &plan.segments[0];
        let mut bytes = Vec::new();
        PieceReader::new(seg.pieces.clone())
            .read_to_end(&mut bytes)
            .unwrap();
        let mut out = Vec::new();
        let mut start = 0usize;
        for &c in seg.cuts.iter().chain(std::iter::once(&seg.len)) {
            out.push(bytes[start..c as usize].to_vec());
            start = c as usize;
        }
        out
    }

    #[test]
    fn small_zip_entries_get_cuts_of_their_own_so_an_edit_changes_only_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let zip_of = |edited: bool| {
            let mut zip_bytes = Vec::new();
            let mut w = zip::ZipWriter::new(io::Cursor::new(&mut zip_bytes));
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .last_modified_time(zip::DateTime::default());
            for i in 0..60u32 {
                // Small entries of 6 KB, and tiny ones of 300 bytes in between.
                let len = if i % 3 == 2 { 300 } else { 6000 };
                let mut data: Vec<u8> = (0..len).map(|b| (b as u32 * 7 + i) as u8).collect();
                if edited && i == 10 {
                    data.extend_from_slice(b"a small edit");
                }
                w.start_file(format!("scripts/e{i:03}.lua"), opts).unwrap();
                w.write_all(&data).unwrap();
            }
            w.finish().unwrap();
            zip_bytes
        };
        let entry = disk_file(dir.path(), "v1.pak", &zip_of(false));
        let v1 = SegmentPlan::new(vec![entry], TarOptions::default(), 64 * 1024).unwrap();
        assert!(
            v1.segments[0].cuts.len() >= 40,
            "a cut before each 6 KB entry: {:?}",
            v1.segments[0].cuts
        );
        let entry = disk_file(dir.path(), "v2.pak", &zip_of(true));
        let v2 = SegmentPlan::new(vec![entry], TarOptions::default(), 64 * 1024).unwrap();
        let (r1, r2) = (regions(&v1), regions(&v2));
        // Every region of v2's entries but the edited one's is a region of v1; the tar
        // header (the file's name) with the first entry, and the central directory (the
        // offsets), differ too.
        let new: Vec<&Vec<u8>> = r2.iter().filter(|r| !r1.contains(r)).collect();
        let new_bytes: usize = new.iter().map(|r| r.len()).sum();
        let whole: usize = r2.iter().map(|r| r.len()).sum();
        assert!(
            new.len() <= 3 && new_bytes < 2 * (6_000 + 300 + 200) + 60 * 100 + 1024,
            "{} of {} regions ({new_bytes} of {whole} bytes) changed by one edit",
            new.len(),
            r2.len()
        );
    }
}
