//! Archives inside a layer (game paks): where their entries lie, read from
//! the archive's own directory without reading the entries. Chunking cuts
//! around entries with it, a rebuild finds an unchanged entry's chunks by
//! what the directory says about it, and the read pass checks the directory
//! against the bytes.
//!
//! Zip is read now. [`ArchiveLayout`] knows nothing of zip, so a reader of
//! another format (Unreal `.pak`, Unity bundles) only has to fill it.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// One entry of an archive, in offsets of the archive file.
#[derive(Clone, Debug)]
pub(crate) struct ArchiveEntry {
    /// Name as the directory gives it.
    pub name: String,
    /// Where the entry's own header starts.
    pub header_start: u64,
    /// Where its data starts.
    pub data_start: u64,
    /// Where its data ends.
    pub data_end: u64,
    /// Checksum the directory records for the entry's (uncompressed) data.
    pub crc32: u32,
    /// Size of the uncompressed data.
    pub size: u64,
    /// Whether the data is stored as is, so its checksum can be checked
    /// against the bytes in the file.
    pub stored: bool,
}

/// Where an archive's entries lie.
#[derive(Clone, Debug)]
pub(crate) struct ArchiveLayout {
    /// Entries by `header_start`, none overlapping another.
    pub entries: Vec<ArchiveEntry>,
    /// Where the directory (after the last entry's data) starts.
    pub directory_start: u64,
}

/// What a file turned out to be.
pub(crate) enum Probe {
    /// Not an archive this module reads.
    NotArchive,
    /// An archive whose directory is consistent.
    Archive(ArchiveLayout),
    /// It looks like an archive but its directory cannot be used; why.
    Unusable(String),
}

/// Reads the directory of the archive at `path` (`size` bytes).
pub(crate) fn probe(path: &Path, size: u64) -> Probe {
    let mut magic = [0u8; 4];
    let is_zip = File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"PK\x03\x04";
    if !is_zip {
        return Probe::NotArchive;
    }
    match read_zip(path, size) {
        Ok(layout) => Probe::Archive(layout),
        Err(why) => Probe::Unusable(why),
    }
}

fn read_zip(path: &Path, size: u64) -> Result<ArchiveLayout, String> {
    let file = File::open(path).map_err(|e| format!("cannot be opened again: {e}"))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| format!("its zip central directory cannot be read ({e}); is it truncated?"))?;
    let directory_start = archive.central_directory_start();
    let mut entries = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| format!("entry #{i} cannot be read ({e})"))?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let data_start = entry
            .data_start()
            .ok_or_else(|| format!("entry `{name}`: its local header cannot be read"))?;
        let stored = entry.compression() == zip::CompressionMethod::Stored;
        if stored && entry.compressed_size() != entry.size() {
            return Err(format!(
                "entry `{name}`: stored, yet the central directory gives {} bytes stored for {} \
                 bytes of data",
                entry.compressed_size(),
                entry.size()
            ));
        }
        let data_end = data_start
            .checked_add(entry.compressed_size())
            .filter(|end| *end <= directory_start.min(size))
            .ok_or_else(|| {
                format!(
                    "entry `{name}`: its {} bytes from offset {data_start} run past the entries' \
                     end at {}; is the file truncated?",
                    entry.compressed_size(),
                    directory_start.min(size)
                )
            })?;
        entries.push(ArchiveEntry {
            name,
            header_start: entry.header_start(),
            data_start,
            data_end,
            crc32: entry.crc32(),
            size: entry.size(),
            stored,
        });
    }
    entries.sort_by_key(|e| e.header_start);
    for pair in entries.windows(2) {
        if pair[1].header_start < pair[0].data_end {
            return Err(format!(
                "entries `{}` ({}..{}) and `{}` (from {}) overlap",
                pair[0].name,
                pair[0].header_start,
                pair[0].data_end,
                pair[1].name,
                pair[1].header_start
            ));
        }
    }
    Ok(ArchiveLayout {
        entries,
        directory_start,
    })
}

/// Checks the stored entries of one archive against the checksums of its
/// directory while the layer's bytes stream past, in order, once.
#[derive(Clone, Debug)]
pub(crate) struct EntryChecks {
    file: PathBuf,
    /// Offset of the archive's first byte in the stream fed.
    base: u64,
    /// (start, end, crc32, name) of each stored non-empty entry, in order.
    checks: Vec<(u64, u64, u32, String)>,
    next: usize,
    hasher: Option<crc32fast::Hasher>,
    notes: Vec<String>,
}

impl EntryChecks {
    /// Checks for `layout`'s stored entries; the archive starts at `base`
    /// in the stream that will be fed.
    pub(crate) fn new(file: PathBuf, base: u64, layout: &ArchiveLayout) -> Self {
        let checks = layout
            .entries
            .iter()
            .filter(|e| e.stored && e.data_end > e.data_start)
            .map(|e| (e.data_start, e.data_end, e.crc32, e.name.clone()))
            .collect();
        EntryChecks {
            file,
            base,
            checks,
            next: 0,
            hasher: None,
            notes: Vec::new(),
        }
    }

    /// Takes the stream's bytes at `offset`; calls must follow the stream
    /// in order.
    pub(crate) fn feed(&mut self, offset: u64, data: &[u8]) {
        let Some(start) = offset.checked_sub(self.base) else {
            let skip = usize::try_from(self.base - offset).unwrap_or(usize::MAX);
            if skip < data.len() {
                self.feed(self.base, &data[skip..]);
            }
            return;
        };
        let end = start + data.len() as u64;
        while let Some((s, e, crc, name)) = self.checks.get(self.next) {
            if *s >= end {
                break;
            }
            let from = (*s).max(start);
            let to = (*e).min(end);
            if from < to {
                let slice = &data[(from - start) as usize..(to - start) as usize];
                self.hasher
                    .get_or_insert_with(crc32fast::Hasher::new)
                    .update(slice);
            }
            if *e > end {
                break;
            }
            let actual = self.hasher.take().map(|h| h.finalize()).unwrap_or(0);
            if actual != *crc {
                self.notes.push(format!(
                    "{}: entry `{name}`: the zip central directory gives CRC-32 {crc:08x}, its \
                     bytes have {actual:08x}",
                    self.file.display()
                ));
            }
            self.next += 1;
        }
    }

    /// What did not match, and the archive's path if anything did not.
    pub(crate) fn finish(self) -> (Vec<String>, Option<PathBuf>) {
        let lied = (!self.notes.is_empty()).then_some(self.file);
        (self.notes, lied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut w = zip::ZipWriter::new(io::Cursor::new(&mut bytes));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default());
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        bytes
    }

    fn probe_bytes(bytes: &[u8]) -> Probe {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pak");
        std::fs::write(&path, bytes).unwrap();
        probe(&path, bytes.len() as u64)
    }

    fn layout(bytes: &[u8]) -> ArchiveLayout {
        match probe_bytes(bytes) {
            Probe::Archive(l) => l,
            Probe::NotArchive => panic!("not an archive"),
            Probe::Unusable(why) => panic!("unusable: {why}"),
        }
    }

    fn unusable(bytes: &[u8]) -> String {
        match probe_bytes(bytes) {
            Probe::Unusable(why) => why,
            _ => panic!("expected an unusable archive"),
        }
    }

    #[test]
    fn entries_are_where_the_directory_says() {
        let bytes = zip_of(&[("a", vec![1u8; 100]), ("b", vec![2u8; 50])]);
        let l = layout(&bytes);
        assert_eq!(l.entries.len(), 2);
        for e in &l.entries {
            let data = &bytes[e.data_start as usize..e.data_end as usize];
            assert_eq!(crc32fast::hash(data), e.crc32, "{}", e.name);
        }
        assert!(l.entries[1].data_end <= l.directory_start);
        assert!(matches!(
            probe_bytes(b"not a zip at all"),
            Probe::NotArchive
        ));
    }

    #[test]
    fn a_truncated_archive_is_unusable_with_a_reason() {
        let bytes = zip_of(&[("a", vec![1u8; 100]), ("b", vec![2u8; 50])]);
        let why = unusable(&bytes[..120]);
        assert!(why.contains("truncated"), "{why}");
    }

    #[test]
    fn overlapping_entries_are_named() {
        let mut bytes = zip_of(&[("first", vec![1u8; 100]), ("second", vec![2u8; 50])]);
        // Point the second entry's central header at the first entry's local header.
        let l = layout(&bytes);
        let cd = l.directory_start as usize;
        let second = bytes[cd..]
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == b"PK\x01\x02")
            .map(|(i, _)| cd + i)
            .nth(1)
            .unwrap();
        bytes[second + 42..second + 46].copy_from_slice(&0u32.to_le_bytes());
        let why = unusable(&bytes);
        assert!(
            why.contains("first") && why.contains("second") || why.contains("overlap"),
            "{why}"
        );
    }

    #[test]
    fn checks_find_a_lying_crc_whatever_the_feed_sizes() {
        let mut bytes = zip_of(&[("ok", vec![1u8; 300]), ("liar", vec![2u8; 500])]);
        let l = layout(&bytes);
        // Change one byte of `liar`'s data: the directory's CRC no longer matches.
        let liar = l.entries.iter().find(|e| e.name == "liar").unwrap();
        bytes[liar.data_start as usize + 10] ^= 0xff;
        for step in [1usize, 7, 64, 4096] {
            let base = 512u64;
            let mut checks = EntryChecks::new(PathBuf::from("game.pak"), base, &l);
            let stream: Vec<u8> = vec![0u8; base as usize]
                .into_iter()
                .chain(bytes.clone())
                .collect();
            for (i, piece) in stream.chunks(step).enumerate() {
                checks.feed((i * step) as u64, piece);
            }
            let (notes, lied) = checks.finish();
            assert_eq!(lied, Some(PathBuf::from("game.pak")));
            assert_eq!(notes.len(), 1, "step {step}: {notes:?}");
            assert!(
                notes[0].contains("game.pak") && notes[0].contains("`liar`"),
                "{}",
                notes[0]
            );
        }
    }
}
