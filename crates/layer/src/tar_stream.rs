use crate::entry::{EntryKind, LayerEntry};
use crate::error::LayerError;
use std::io::{self, Read};

/// Fixed metadata stamped on every entry of a deterministic tar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TarOptions {
    /// Modification time of every entry (`SOURCE_DATE_EPOCH`, else 0).
    pub mtime: u64,
}

const BLOCK: usize = 512;
/// Largest size the ustar octal field holds; larger files get a PAX record.
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;

/// A `Read` producing the tar of a sorted list of entries, byte for byte the
/// same for the same entries on any machine: ustar headers, PAX records only
/// for long names or huge files, fixed mtime, no user or group names. The
/// chunking pipeline reads the same bytes through a [`crate::SegmentPlan`].
pub struct TarStream {
    inner: Result<crate::segment::PieceReader, Option<LayerError>>,
}

impl TarStream {
    /// Streams `entries` in the order given; callers sort them first.
    pub fn new(entries: Vec<LayerEntry>, options: TarOptions) -> Self {
        let inner = crate::segment::SegmentPlan::new(entries, options, u64::MAX)
            .map(|plan| {
                crate::segment::PieceReader::new(
                    plan.segments.into_iter().flat_map(|s| s.pieces).collect(),
                )
            })
            .map_err(Some);
        TarStream { inner }
    }
}

impl Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Ok(reader) => reader.read(buf),
            Err(e) => Err(io::Error::other(
                e.take()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "tar stream failed".into()),
            )),
        }
    }
}

/// The bytes that precede an entry's data: an optional PAX header and the
/// ustar header.
pub(crate) fn entry_header(entry: &LayerEntry, options: TarOptions) -> Result<Vec<u8>, LayerError> {
    let (size, link) = match &entry.kind {
        EntryKind::File { size, .. } => (*size, None),
        EntryKind::Symlink { target } => (0, Some(target.as_str())),
        EntryKind::Directory => (0, None),
    };
    let mut name = entry.path.as_str().to_string();
    if matches!(entry.kind, EntryKind::Directory) {
        name.push('/');
    }
    let mut out = Vec::with_capacity(BLOCK);
    write_header(&mut out, entry, &name, link, size, options.mtime)?;
    Ok(out)
}

/// Zero bytes that pad `size` bytes of data to a whole tar block.
pub(crate) fn padding(size: u64) -> Vec<u8> {
    let mut v = Vec::new();
    pad(&mut v, size);
    v
}

/// The two zero blocks that end a tar.
pub(crate) const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

fn pad(buf: &mut Vec<u8>, size: u64) {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        buf.resize(buf.len() + BLOCK - rem, 0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n" where len counts itself.
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn write_header(
    out: &mut Vec<u8>,
    entry: &LayerEntry,
    name: &str,
    link: Option<&str>,
    size: u64,
    mtime: u64,
) -> Result<(), LayerError> {
    let mut pax = Vec::new();
    if name.len() > 100 {
        pax.extend(pax_record("path", name.as_bytes()));
    }
    if let Some(link) = link {
        if link.len() > 100 {
            pax.extend(pax_record("linkpath", link.as_bytes()));
        }
    }
    if size > USTAR_MAX_SIZE {
        pax.extend(pax_record("size", size.to_string().as_bytes()));
    }
    let bad = |reason| LayerError::InvalidPath {
        path: name.to_string(),
        reason,
    };
    if !pax.is_empty() {
        let mut h = tar::Header::new_ustar();
        set_name(&mut h, b"././@PaxHeader")?;
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(pax.len() as u64);
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        let len = pax.len() as u64;
        out.extend(pax);
        pad(out, len);
    }
    let mut h = tar::Header::new_ustar();
    set_name(&mut h, truncate(name.as_bytes(), 100))?;
    h.set_mode(entry.mode & 0o7777);
    h.set_uid(entry.uid);
    h.set_gid(entry.gid);
    h.set_mtime(mtime);
    h.set_size(size.min(USTAR_MAX_SIZE));
    h.set_entry_type(match entry.kind {
        EntryKind::Directory => tar::EntryType::Directory,
        EntryKind::File { .. } => tar::EntryType::Regular,
        EntryKind::Symlink { .. } => tar::EntryType::Symlink,
    });
    if let Some(link) = link {
        let bytes = truncate(link.as_bytes(), 100);
        let ustar = h
            .as_ustar_mut()
            .ok_or_else(|| bad("ustar header expected"))?;
        ustar.linkname[..bytes.len()].copy_from_slice(bytes);
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    Ok(())
}

fn truncate(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

fn set_name(h: &mut tar::Header, name: &[u8]) -> Result<(), LayerError> {
    let ustar = h.as_ustar_mut().ok_or_else(|| LayerError::InvalidPath {
        path: String::from_utf8_lossy(name).into_owned(),
        reason: "ustar header expected",
    })?;
    ustar.name = [0; 100];
    ustar.name[..name.len()].copy_from_slice(name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{FileData, ImagePath};
    use std::sync::Arc;

    fn file(path: &str, content: &[u8]) -> LayerEntry {
        LayerEntry {
            path: ImagePath::parse(path, false).unwrap(),
            kind: EntryKind::File {
                data: FileData::Bytes(Arc::from(content)),
                size: content.len() as u64,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", b"abc");
        assert_eq!(r, b"12 path=abc\n");
        let long = vec![b'x'; 95];
        let r = pax_record("path", &long);
        let text = String::from_utf8(r.clone()).unwrap();
        let declared: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(declared, r.len());
    }

    #[test]
    fn standard_reader_reads_long_names_links_and_dirs() {
        let long_name = format!("d/{}", "n".repeat(150));
        let long_target = "t".repeat(120);
        let entries = vec![
            LayerEntry {
                path: ImagePath::parse("d", false).unwrap(),
                kind: EntryKind::Directory,
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            file(&long_name, b"hello"),
            LayerEntry {
                path: ImagePath::parse("d/link", false).unwrap(),
                kind: EntryKind::Symlink {
                    target: long_target.clone(),
                },
                mode: 0o777,
                uid: 1000,
                gid: 1000,
            },
        ];
        let mut bytes = Vec::new();
        TarStream::new(entries, TarOptions { mtime: 1234 })
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            assert_eq!(e.header().mtime().unwrap(), 1234);
            let mut content = String::new();
            e.read_to_string(&mut content).unwrap();
            seen.push((path, link, content));
        }
        assert_eq!(seen[0].0, "d/");
        assert_eq!(seen[1], (long_name, None, "hello".to_string()));
        assert_eq!(
            seen[2],
            ("d/link".to_string(), Some(long_target), String::new())
        );
    }

    #[test]
    fn same_entries_same_bytes() {
        let make = || {
            let mut b = Vec::new();
            TarStream::new(
                vec![file("a", b"1"), file("b", b"22")],
                TarOptions::default(),
            )
            .read_to_end(&mut b)
            .unwrap();
            b
        };
        assert_eq!(make(), make());
    }

    #[test]
    fn shrunk_disk_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let entry = LayerEntry {
            path: ImagePath::parse("f", false).unwrap(),
            kind: EntryKind::File {
                data: FileData::Disk(p.clone()),
                size: 10,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let mut out = Vec::new();
        let err = TarStream::new(vec![entry], TarOptions::default())
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("changed while the layer was being built"),
            "{err}"
        );
        assert!(err.to_string().contains(&p.display().to_string()));
    }
}
