//! A minimal ZIP writer and index reader for `.pak` archives with STORED entries.
//!
//! Written by hand (rather than with the `zip` crate's writer) so that every byte of the
//! archive is under our control: fixed timestamps, no extra fields, fixed attributes, entries in
//! the order given. The tests read the archives back with the `zip` crate.
//!
//! Limits: no ZIP64. Archives stay below 4 GiB (the generator splits larger paks) and hold at
//! most 65,535 entries.

use std::io::{self, Read, Seek, SeekFrom, Write};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const LOCAL_LEN: u64 = 30;
const CENTRAL_LEN: usize = 46;
const EOCD_LEN: usize = 22;
/// Largest number of entries in one archive (no ZIP64).
pub(crate) const MAX_ENTRIES: usize = 65_535;
/// Largest archive size (no ZIP64); the generator keeps paks below 2 GiB.
pub(crate) const MAX_ARCHIVE: u64 = u32::MAX as u64;

/// An MS-DOS date and time as stored in ZIP headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DosTime {
    pub(crate) time: u16,
    pub(crate) date: u16,
}

impl DosTime {
    /// From seconds since the Unix epoch (UTC), clamped to the DOS range (1980..2107).
    pub(crate) fn from_unix(secs: u64) -> DosTime {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let y = y.clamp(1980, 2107);
        let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
        DosTime {
            time: ((h << 11) | (mi << 5) | (s / 2)) as u16,
            date: ((((y - 1980) as u64) << 9) | ((m as u64) << 5) | d as u64) as u16,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// CRC-32 (the ZIP/gzip polynomial) of a buffer.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// One entry of an archive's central directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    pub(crate) name: String,
    pub(crate) crc: u32,
    pub(crate) size: u64,
    pub(crate) mtime: DosTime,
    /// Offset of the entry's data in the archive.
    pub(crate) data_offset: u64,
}

struct Central {
    name: String,
    crc: u32,
    size: u32,
    mtime: DosTime,
    local_offset: u32,
}

/// Streams a ZIP archive with STORED entries to `W`.
pub(crate) struct PakWriter<W: Write> {
    w: W,
    offset: u64,
    entries: Vec<Central>,
}

fn too_big(what: &str) -> io::Error {
    io::Error::other(format!("{what} exceeds the ZIP limits (no ZIP64 support)"))
}

impl<W: Write> PakWriter<W> {
    pub(crate) fn new(w: W) -> Self {
        PakWriter {
            w,
            offset: 0,
            entries: Vec::new(),
        }
    }

    /// Bytes written so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of entries written so far.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn local_header(&mut self, name: &str, crc: u32, size: u64, mtime: DosTime) -> io::Result<()> {
        if self.entries.len() >= MAX_ENTRIES {
            return Err(too_big("entry count"));
        }
        let end = self.offset + LOCAL_LEN + name.len() as u64 + size;
        if size > MAX_ARCHIVE || end > MAX_ARCHIVE || name.len() > usize::from(u16::MAX) {
            return Err(too_big("archive size"));
        }
        let mut h = Vec::with_capacity(LOCAL_LEN as usize + name.len());
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&10u16.to_le_bytes()); // version needed: 1.0 (stored)
        h.extend_from_slice(&0u16.to_le_bytes()); // flags
        h.extend_from_slice(&0u16.to_le_bytes()); // method: stored
        h.extend_from_slice(&mtime.time.to_le_bytes());
        h.extend_from_slice(&mtime.date.to_le_bytes());
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&(size as u32).to_le_bytes()); // compressed size
        h.extend_from_slice(&(size as u32).to_le_bytes()); // uncompressed size
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // extra length
        h.extend_from_slice(name.as_bytes());
        self.w.write_all(&h)?;
        self.entries.push(Central {
            name: name.to_string(),
            crc,
            size: size as u32,
            mtime,
            local_offset: self.offset as u32,
        });
        self.offset += h.len() as u64;
        Ok(())
    }

    /// Adds an entry holding `data`.
    pub(crate) fn add(&mut self, name: &str, data: &[u8], mtime: DosTime) -> io::Result<()> {
        self.local_header(name, crc32(data), data.len() as u64, mtime)?;
        self.w.write_all(data)?;
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Adds an entry whose data (of `meta.size` bytes, checksum `meta.crc`) is copied from
    /// `src`, as when carrying an unchanged entry over from an older archive.
    pub(crate) fn add_raw(&mut self, meta: &EntryMeta, src: &mut impl Read) -> io::Result<()> {
        self.local_header(&meta.name, meta.crc, meta.size, meta.mtime)?;
        let copied = io::copy(&mut src.take(meta.size), &mut self.w)?;
        if copied != meta.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry {} truncated in the source archive", meta.name),
            ));
        }
        self.offset += meta.size;
        Ok(())
    }

    /// Writes the central directory and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let cd_start = self.offset;
        let mut cd = Vec::with_capacity(self.entries.len() * (CENTRAL_LEN + 48) + EOCD_LEN);
        for e in &self.entries {
            cd.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            cd.extend_from_slice(&(3u16 << 8 | 20).to_le_bytes()); // made by: Unix, 2.0
            cd.extend_from_slice(&10u16.to_le_bytes()); // version needed
            cd.extend_from_slice(&0u16.to_le_bytes()); // flags
            cd.extend_from_slice(&0u16.to_le_bytes()); // method
            cd.extend_from_slice(&e.mtime.time.to_le_bytes());
            cd.extend_from_slice(&e.mtime.date.to_le_bytes());
            cd.extend_from_slice(&e.crc.to_le_bytes());
            cd.extend_from_slice(&e.size.to_le_bytes());
            cd.extend_from_slice(&e.size.to_le_bytes());
            cd.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            cd.extend_from_slice(&0u16.to_le_bytes()); // extra
            cd.extend_from_slice(&0u16.to_le_bytes()); // comment
            cd.extend_from_slice(&0u16.to_le_bytes()); // disk
            cd.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            cd.extend_from_slice(&(0o100_644u32 << 16).to_le_bytes()); // regular file, rw-r--r--
            cd.extend_from_slice(&e.local_offset.to_le_bytes());
            cd.extend_from_slice(e.name.as_bytes());
        }
        let cd_len = cd.len() as u64;
        if cd_start + cd_len + EOCD_LEN as u64 > MAX_ARCHIVE {
            return Err(too_big("archive size"));
        }
        let n = self.entries.len() as u16;
        cd.extend_from_slice(&EOCD_SIG.to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes()); // this disk
        cd.extend_from_slice(&0u16.to_le_bytes()); // disk with the central directory
        cd.extend_from_slice(&n.to_le_bytes());
        cd.extend_from_slice(&n.to_le_bytes());
        cd.extend_from_slice(&(cd_len as u32).to_le_bytes());
        cd.extend_from_slice(&(cd_start as u32).to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.w.write_all(&cd)?;
        self.offset += cd.len() as u64;
        self.w.flush()?;
        Ok(self.w)
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the central directory of a (non-ZIP64, STORED-only) archive.
///
/// Errors with `InvalidData` if the archive is malformed or uses compression.
pub(crate) fn read_index<R: Read + Seek>(r: &mut R) -> io::Result<Vec<EntryMeta>> {
    let len = r.seek(SeekFrom::End(0))?;
    if len < EOCD_LEN as u64 {
        return Err(bad("too short for a zip archive"));
    }
    let tail_len = len.min(EOCD_LEN as u64 + 65_535);
    r.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    r.read_exact(&mut tail)?;
    let eocd = (0..=tail.len().saturating_sub(EOCD_LEN))
        .rev()
        .find(|&i| u32_at(&tail, i) == EOCD_SIG)
        .ok_or_else(|| bad("no end-of-central-directory record"))?;
    let count = usize::from(u16_at(&tail, eocd + 10));
    let cd_len = u64::from(u32_at(&tail, eocd + 12));
    let cd_start = u64::from(u32_at(&tail, eocd + 16));
    if cd_start + cd_len > len {
        return Err(bad("central directory out of bounds"));
    }
    r.seek(SeekFrom::Start(cd_start))?;
    let mut cd = vec![0u8; cd_len as usize];
    r.read_exact(&mut cd)?;
    let mut entries = Vec::with_capacity(count);
    let mut at = 0usize;
    for _ in 0..count {
        if at + CENTRAL_LEN > cd.len() || u32_at(&cd, at) != CENTRAL_SIG {
            return Err(bad("bad central directory header"));
        }
        let method = u16_at(&cd, at + 10);
        if method != 0 {
            return Err(bad(format!("entry uses compression method {method}")));
        }
        let mtime = DosTime {
            time: u16_at(&cd, at + 12),
            date: u16_at(&cd, at + 14),
        };
        let crc = u32_at(&cd, at + 16);
        let size = u64::from(u32_at(&cd, at + 24));
        let name_len = usize::from(u16_at(&cd, at + 28));
        let extra_len = usize::from(u16_at(&cd, at + 30));
        let comment_len = usize::from(u16_at(&cd, at + 32));
        let local = u64::from(u32_at(&cd, at + 42));
        let name_end = at + CENTRAL_LEN + name_len;
        if name_end > cd.len() {
            return Err(bad("central directory name out of bounds"));
        }
        let name = String::from_utf8(cd[at + CENTRAL_LEN..name_end].to_vec())
            .map_err(|_| bad("entry name is not UTF-8"))?;
        at = name_end + extra_len + comment_len;
        entries.push(EntryMeta {
            name,
            crc,
            size,
            mtime,
            data_offset: local,
        });
    }
    // Resolve data offsets from the local headers (their extra fields may differ).
    for e in &mut entries {
        let mut h = [0u8; LOCAL_LEN as usize];
        r.seek(SeekFrom::Start(e.data_offset))?;
        r.read_exact(&mut h)?;
        if u32_at(&h, 0) != LOCAL_SIG {
            return Err(bad(format!("bad local header for {}", e.name)));
        }
        let skip = u64::from(u16_at(&h, 26)) + u64::from(u16_at(&h, 28));
        e.data_offset += LOCAL_LEN + skip;
        if e.data_offset + e.size > len {
            return Err(bad(format!("data of {} out of bounds", e.name)));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn dos_time_conversion() {
        // 2019-06-03 10:00:00 UTC
        let t = DosTime::from_unix(1_559_556_000);
        assert_eq!(t.date, ((2019 - 1980) << 9) | (6 << 5) | 3);
        assert_eq!(t.time, 10 << 11);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn write_then_index() {
        let t = DosTime::from_unix(1_559_556_000);
        let mut w = PakWriter::new(Cursor::new(Vec::new()));
        w.add("a/one.txt", b"hello", t).expect("add");
        w.add("b/two.bin", &[0u8; 1000], t).expect("add");
        w.add("empty", b"", t).expect("add");
        assert_eq!(w.len(), 3);
        let mut buf = w.finish().expect("finish");
        let idx = read_index(&mut buf).expect("index");
        assert_eq!(idx.len(), 3);
        let data = buf.into_inner();
        let e = &idx[0];
        assert_eq!(e.name, "a/one.txt");
        assert_eq!(
            &data[e.data_offset as usize..(e.data_offset + e.size) as usize],
            b"hello"
        );
        assert_eq!(e.crc, crc32(b"hello"));
        assert_eq!(idx[1].size, 1000);
        assert_eq!(idx[2].size, 0);

        // Raw copy reproduces the archive byte for byte.
        let mut src = Cursor::new(data.clone());
        let mut w2 = PakWriter::new(Cursor::new(Vec::new()));
        for e in &idx {
            src.seek(SeekFrom::Start(e.data_offset)).expect("seek");
            w2.add_raw(e, &mut src).expect("raw");
        }
        assert_eq!(w2.finish().expect("finish").into_inner(), data);
    }

    #[test]
    fn rejects_garbage() {
        let mut c = Cursor::new(vec![0u8; 100]);
        assert!(read_index(&mut c).is_err());
        let mut c = Cursor::new(Vec::new());
        assert!(read_index(&mut c).is_err());
    }
}
