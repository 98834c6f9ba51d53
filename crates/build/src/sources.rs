//! Turns a layer's sources (directories, files, archives, split parts) into
//! the sorted entry list of its tar, and fingerprints them cheaply (file
//! metadata only) so an unchanged layer is not read at all on a rebuild.

use crate::error::BuildError;
use crate::spec::{parse_owner, LayerSpec, SourceKind};
use gantry_layer::{EntryKind, FileData, ImagePath, LayerEntry};
use gantry_oci::{Digest, DigestHasher};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::ops::Bound;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A layer's entries, sorted parents-first, ready to stream as a tar.
#[derive(Debug)]
pub struct ResolvedLayer {
    /// Entries in tar order.
    pub entries: Vec<LayerEntry>,
    /// Sum of regular file sizes, for progress.
    pub content_bytes: u64,
}

struct Ctx<'a> {
    layer: &'a str,
    uid: u64,
    gid: u64,
    staging: &'a Path,
    staged: usize,
    entries: BTreeMap<ImagePath, LayerEntry>,
    /// Which source put each symlink in the tree, for errors.
    symlink_origins: BTreeMap<ImagePath, String>,
    /// The source being resolved (`archive x.tar`, `dir assets`), for errors.
    source: String,
}

impl Ctx<'_> {
    /// Adds an entry; a later source wins on the same path. Refuses an entry
    /// that would land beneath a symlink (or other non-directory) already in
    /// the tree, and a non-directory that would replace a directory holding
    /// entries: either way a file would end up at a path other than its name.
    /// The error is a sentence naming both paths, for the caller to wrap.
    fn insert(&mut self, path: ImagePath, kind: EntryKind, mode: u32) -> Result<(), String> {
        if path.is_root() {
            return Ok(());
        }
        let mut ancestor = path.parent();
        while let Some(a) = ancestor {
            if a.is_root() {
                break;
            }
            if let Some(existing) = self.entries.get(&a) {
                match &existing.kind {
                    EntryKind::Directory => {}
                    EntryKind::Symlink { target } => {
                        let origin = self
                            .symlink_origins
                            .get(&a)
                            .map(String::as_str)
                            .unwrap_or("an earlier source");
                        return Err(format!(
                            "{path} would land beneath {a}, a symlink to {target:?} from \
                             {origin}; nothing may be written beneath a symlink"
                        ));
                    }
                    EntryKind::File { .. } => {
                        return Err(format!(
                            "{path} would land beneath {a}, which is a regular file"
                        ));
                    }
                }
            }
            ancestor = a.parent();
        }
        if !matches!(kind, EntryKind::Directory) {
            if let Some(child) = self.first_descendant(&path) {
                return Err(match &kind {
                    EntryKind::Symlink { target } => format!(
                        "symlink {path} -> {target:?} would replace a directory that already \
                         holds {child}; nothing may be written beneath a symlink"
                    ),
                    _ => {
                        format!("file {path} would replace a directory that already holds {child}")
                    }
                });
            }
        }
        if matches!(kind, EntryKind::Symlink { .. }) {
            self.symlink_origins
                .insert(path.clone(), self.source.clone());
        } else {
            self.symlink_origins.remove(&path);
        }
        let entry = LayerEntry {
            path: path.clone(),
            kind,
            mode: mode & 0o7777,
            uid: self.uid,
            gid: self.gid,
        };
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Some entry beneath `dir`, if any.
    fn first_descendant(&self, dir: &ImagePath) -> Option<ImagePath> {
        // Paths beneath `dir` sort from `dir/` up to `dir0` ('0' follows '/').
        let start = format!("{}/", dir.as_str());
        let end = format!("{}0", dir.as_str());
        self.entries
            .range::<str, _>((
                Bound::Included(start.as_str()),
                Bound::Excluded(end.as_str()),
            ))
            .next()
            .map(|(k, _)| k.clone())
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    }

    fn missing(&self, path: &Path) -> BuildError {
        BuildError::MissingSource {
            layer: self.layer.to_string(),
            path: path.to_path_buf(),
        }
    }
}

fn layer_owner(layer: &LayerSpec) -> Result<(u64, u64), BuildError> {
    layer
        .owner
        .as_deref()
        .map(|o| parse_owner(o, &layer.name))
        .transpose()
        .map(|o| o.unwrap_or((0, 0)))
}

/// Resolves every source of `layer` (paths relative to `repo`); archives are
/// extracted into `staging`, which must outlive the returned entries.
pub fn resolve_layer(
    repo: &Path,
    layer: &LayerSpec,
    staging: &Path,
) -> Result<ResolvedLayer, BuildError> {
    let (uid, gid) = layer_owner(layer)?;
    let mut ctx = Ctx {
        layer: &layer.name,
        uid,
        gid,
        staging,
        staged: 0,
        entries: BTreeMap::new(),
        symlink_origins: BTreeMap::new(),
        source: String::new(),
    };
    for (i, source) in layer.sources.iter().enumerate() {
        let dest =
            ImagePath::parse(&source.dest, true).map_err(|e| BuildError::Spec(e.to_string()))?;
        let kind = source.kind(&layer.name, i + 1)?;
        ctx.source = match &kind {
            SourceKind::Dir(p) => format!("source {} (dir {})", i + 1, repo.join(p).display()),
            SourceKind::File(p) => format!("source {} (file {})", i + 1, repo.join(p).display()),
            SourceKind::Tar(p) => format!("source {} (archive {})", i + 1, repo.join(p).display()),
            SourceKind::Split(p) => format!("source {} (split {})", i + 1, repo.join(p).display()),
        };
        match kind {
            SourceKind::Dir(dir) => add_dir(&mut ctx, &repo.join(dir), &dest)?,
            SourceKind::File(file) => {
                let into_dir = source.dest.ends_with('/');
                add_file(
                    &mut ctx,
                    &repo.join(file),
                    &dest,
                    into_dir,
                    source.mode_override(&layer.name)?,
                )?
            }
            SourceKind::Tar(archive) => {
                let path = repo.join(archive);
                let file = fs::File::open(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ctx.missing(&path),
                    _ => BuildError::Io {
                        path: path.clone(),
                        source: e,
                    },
                })?;
                extract_archive(&mut ctx, file, &path, &dest)?
            }
            SourceKind::Split(pattern) => {
                let parts = split_parts(repo, &pattern, &layer.name)?;
                let mut reader: Box<dyn Read> = Box::new(std::io::empty());
                for part in &parts {
                    let f = fs::File::open(part).map_err(ctx.io(part))?;
                    reader = Box::new(reader.chain(f));
                }
                let label = PathBuf::from(format!(
                    "{} ({} parts)",
                    repo.join(&pattern).display(),
                    parts.len()
                ));
                extract_archive(&mut ctx, reader, &label, &dest)?
            }
        }
    }
    add_missing_parents(&mut ctx)?;
    let mut entries: Vec<LayerEntry> = ctx.entries.into_values().collect();
    entries.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let content_bytes = entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    Ok(ResolvedLayer {
        entries,
        content_bytes,
    })
}

fn add_missing_parents(ctx: &mut Ctx) -> Result<(), BuildError> {
    let paths: Vec<ImagePath> = ctx.entries.keys().cloned().collect();
    for path in paths {
        let mut parent = path.parent();
        while let Some(p) = parent {
            if p.is_root() || ctx.entries.contains_key(&p) {
                break;
            }
            ctx.insert(p.clone(), EntryKind::Directory, 0o755)
                .map_err(|message| BuildError::Source {
                    layer: ctx.layer.into(),
                    message,
                })?;
            parent = p.parent();
        }
    }
    Ok(())
}

fn add_dir(ctx: &mut Ctx, dir: &Path, dest: &ImagePath) -> Result<(), BuildError> {
    let meta = fs::symlink_metadata(dir).map_err(|_| ctx.missing(dir))?;
    if !meta.is_dir() {
        return Err(BuildError::Source {
            layer: ctx.layer.into(),
            message: format!("{} is not a directory (use `file` or `tar`)", dir.display()),
        });
    }
    for item in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            BuildError::Io {
                path,
                source: e.into(),
            }
        })?;
        let rel = item.path().strip_prefix(dir).unwrap_or(Path::new(""));
        let rel = rel.to_str().ok_or_else(|| BuildError::Source {
            layer: ctx.layer.into(),
            message: format!("{}: file name is not UTF-8", item.path().display()),
        })?;
        let path =
            dest.join(&ImagePath::parse(rel, false).map_err(|e| BuildError::Spec(e.to_string()))?);
        let meta = item
            .path()
            .symlink_metadata()
            .map_err(ctx.io(item.path()))?;
        let mode = meta.permissions().mode();
        let ft = meta.file_type();
        let inserted = if ft.is_dir() {
            ctx.insert(path, EntryKind::Directory, mode)
        } else if ft.is_file() {
            let data = FileData::Disk(item.path().to_path_buf());
            ctx.insert(
                path,
                EntryKind::File {
                    data,
                    size: meta.len(),
                },
                mode,
            )
        } else if ft.is_symlink() {
            let target = fs::read_link(item.path()).map_err(ctx.io(item.path()))?;
            let target = target.to_string_lossy().into_owned();
            path.check_symlink_target(&target)
                .map_err(|e| BuildError::Source {
                    layer: ctx.layer.into(),
                    message: format!("{}: {e}", item.path().display()),
                })?;
            ctx.insert(path, EntryKind::Symlink { target }, 0o777)
        } else {
            return Err(BuildError::Source {
                layer: ctx.layer.into(),
                message: format!(
                    "{}: unsupported file type (only files, directories and symlinks)",
                    item.path().display()
                ),
            });
        };
        inserted.map_err(|message| BuildError::Source {
            layer: ctx.layer.into(),
            message: format!("{}: {}: {message}", ctx.source, item.path().display()),
        })?;
    }
    Ok(())
}

fn add_file(
    ctx: &mut Ctx,
    file: &Path,
    dest: &ImagePath,
    into_dir: bool,
    mode: Option<u32>,
) -> Result<(), BuildError> {
    let meta = fs::metadata(file).map_err(|_| ctx.missing(file))?;
    if !meta.is_file() {
        return Err(BuildError::Source {
            layer: ctx.layer.into(),
            message: format!("{} is not a regular file (use `dir`)", file.display()),
        });
    }
    let path = if into_dir || dest.is_root() {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        dest.child(name)
            .map_err(|e| BuildError::Spec(e.to_string()))?
    } else {
        dest.clone()
    };
    let mode = mode.unwrap_or(meta.permissions().mode());
    ctx.insert(
        path,
        EntryKind::File {
            data: FileData::Disk(file.to_path_buf()),
            size: meta.len(),
        },
        mode,
    )
    .map_err(|message| BuildError::Source {
        layer: ctx.layer.into(),
        message: format!("{}: {message}", ctx.source),
    })
}

/// Extracts a tar or gzip-compressed tar into the staging area, refusing
/// members that would land outside `dest` or link outside the image.
fn extract_archive(
    ctx: &mut Ctx,
    reader: impl Read,
    label: &Path,
    dest: &ImagePath,
) -> Result<(), BuildError> {
    let archive_err = |message: String| BuildError::Archive {
        layer: ctx.layer.to_string(),
        archive: label.to_path_buf(),
        message,
    };
    let mut buffered = BufReader::with_capacity(1 << 20, reader);
    let head = buffered
        .fill_buf()
        .map_err(|e| archive_err(format!("cannot read: {e}")))?;
    if head.is_empty() {
        return Err(archive_err("is empty".into()));
    }
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let inner: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(inner);
    let what = if gzip {
        "truncated or corrupt gzip tar"
    } else {
        "truncated or corrupt tar"
    };
    let mut staged_by_path: BTreeMap<ImagePath, (PathBuf, u64)> = BTreeMap::new();
    let mut count = 0usize;
    let entries = archive
        .entries()
        .map_err(|e| archive_err(format!("{what}: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_err(format!("{what}: {e}")))?;
        let raw = entry.path_bytes();
        let raw = String::from_utf8(raw.into_owned())
            .map_err(|_| archive_err("member name is not UTF-8".into()))?;
        let rel = ImagePath::parse(&raw, false)
            .map_err(|e| archive_err(format!("unsafe member: {e}")))?;
        let path = dest.join(&rel);
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let kind = header.entry_type();
        count += 1;
        let inserted = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                ctx.staged += 1;
                let staged = ctx
                    .staging
                    .join(format!("{}-{}", ctx.layer.len(), ctx.staged));
                let mut out = fs::File::create(&staged).map_err(ctx.io(&staged))?;
                let size = std::io::copy(&mut entry, &mut out)
                    .map_err(|e| archive_err(format!("{what}: member {raw:?}: {e}")))?;
                staged_by_path.insert(path.clone(), (staged.clone(), size));
                ctx.insert(
                    path,
                    EntryKind::File {
                        data: FileData::Disk(staged),
                        size,
                    },
                    mode,
                )
            }
            tar::EntryType::Directory => ctx.insert(path, EntryKind::Directory, mode),
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| archive_err(format!("symlink {raw:?} has no target")))?;
                path.check_symlink_target(&target)
                    .map_err(|e| archive_err(e.to_string()))?;
                ctx.insert(path, EntryKind::Symlink { target }, 0o777)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| archive_err(format!("hard link {raw:?} has no target")))?;
                let target = dest.join(
                    &ImagePath::parse(&target, false)
                        .map_err(|e| archive_err(format!("unsafe hard link {raw:?}: {e}")))?,
                );
                let (staged, size) = staged_by_path.get(&target).cloned().ok_or_else(|| {
                    archive_err(format!(
                        "hard link {raw:?} points to {target}, which is not earlier in the archive"
                    ))
                })?;
                staged_by_path.insert(path.clone(), (staged.clone(), size));
                ctx.insert(
                    path,
                    EntryKind::File {
                        data: FileData::Disk(staged),
                        size,
                    },
                    mode,
                )
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {
                count -= 1;
                Ok(())
            }
            other => {
                return Err(archive_err(format!(
                "member {raw:?} has unsupported type {other:?} (devices and FIFOs are not allowed)"
            )))
            }
        };
        inserted.map_err(|message| archive_err(format!("member {raw:?}: {message}")))?;
    }
    // Read to the end so a truncated or corrupt gzip trailer is noticed too.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| archive_err(format!("{what}: {e}")))?;
    if count == 0 {
        return Err(archive_err("contains no entries".into()));
    }
    Ok(())
}

/// The parts matching `pattern`, in name order, checked to form one unbroken
/// `split` sequence (`aa, ab, …` or `00, 01, …`).
pub fn split_parts(repo: &Path, pattern: &str, layer: &str) -> Result<Vec<PathBuf>, BuildError> {
    let err = |message: String| BuildError::Source {
        layer: layer.into(),
        message,
    };
    let full = repo.join(pattern);
    let full_str = full
        .to_str()
        .ok_or_else(|| err(format!("split pattern {pattern:?} is not UTF-8")))?;
    let mut parts: Vec<PathBuf> = glob::glob(full_str)
        .map_err(|e| err(format!("split pattern {pattern:?}: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("split pattern {pattern:?}: {e}")))?;
    parts.retain(|p| p.is_file());
    parts.sort();
    if parts.is_empty() {
        return Err(BuildError::MissingSource {
            layer: layer.into(),
            path: full,
        });
    }
    let names: Vec<String> = parts
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let prefix_len = if names.len() == 1 {
        names[0].len().saturating_sub(2)
    } else {
        let first = names[0].as_bytes();
        let common = names
            .iter()
            .map(|n| {
                first
                    .iter()
                    .zip(n.as_bytes())
                    .take_while(|(a, b)| a == b)
                    .count()
            })
            .min()
            .unwrap_or(0);
        // The suffix is the trailing run that varies; keep it a fixed width.
        let width = names[0].len() - common;
        names[0].len() - width.max(2).min(names[0].len())
    };
    let mut expected: Option<Vec<u8>> = None;
    for (name, path) in names.iter().zip(&parts) {
        let suffix = name.as_bytes()[prefix_len.min(name.len())..].to_vec();
        let ok_alpha = suffix.iter().all(|b| b.is_ascii_lowercase());
        let ok_digit = suffix.iter().all(|b| b.is_ascii_digit());
        if suffix.is_empty() || !(ok_alpha || ok_digit) {
            return Err(err(format!(
                "{} does not end in a split suffix like `aa` or `00`",
                path.display()
            )));
        }
        let want = match &expected {
            None => {
                let zero = if ok_alpha { b'a' } else { b'0' };
                vec![zero; suffix.len()]
            }
            Some(w) => w.clone(),
        };
        if suffix != want {
            return Err(err(format!(
                "split part `{}` is missing from the sequence matching {pattern:?} (found {name} next)",
                String::from_utf8_lossy(&[&name.as_bytes()[..prefix_len], &want[..]].concat())
            )));
        }
        expected = Some(successor(&suffix));
    }
    Ok(parts)
}

fn successor(s: &[u8]) -> Vec<u8> {
    let mut out = s.to_vec();
    for i in (0..out.len()).rev() {
        let (lo, hi) = if out[i].is_ascii_digit() {
            (b'0', b'9')
        } else {
            (b'a', b'z')
        };
        if out[i] < hi {
            out[i] += 1;
            return out;
        }
        out[i] = lo;
    }
    out
}

/// A digest of everything about a layer's inputs that a rebuild could see
/// change, from metadata only: the layer spec, and for every input file its
/// path, type, size, mode, inode and modification and change times.
pub fn fingerprint_layer(
    repo: &Path,
    layer: &LayerSpec,
    salt: &[u8],
) -> Result<Digest, BuildError> {
    let mut h = DigestHasher::new();
    h.update(salt);
    h.update(
        &gantry_oci::canonical_json("layer spec", layer)
            .map_err(|e| BuildError::Spec(e.to_string()))?,
    );
    let stat = |h: &mut DigestHasher, path: &Path, rel: &str| -> Result<(), BuildError> {
        let m = fs::symlink_metadata(path).map_err(|_| BuildError::MissingSource {
            layer: layer.name.clone(),
            path: path.to_path_buf(),
        })?;
        let link = if m.file_type().is_symlink() {
            fs::read_link(path)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let line = format!(
            "{rel}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{link}\n",
            m.mode(),
            m.len(),
            m.ino(),
            m.dev(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
        h.update(line.as_bytes());
        Ok(())
    };
    for (i, source) in layer.sources.iter().enumerate() {
        match source.kind(&layer.name, i + 1)? {
            SourceKind::Dir(dir) => {
                let root = repo.join(dir);
                stat(&mut h, &root, "")?;
                for item in walkdir::WalkDir::new(&root)
                    .follow_links(false)
                    .sort_by_file_name()
                {
                    let item = item.map_err(|e| BuildError::Io {
                        path: e.path().unwrap_or(&root).to_path_buf(),
                        source: e.into(),
                    })?;
                    let rel = item
                        .path()
                        .strip_prefix(&root)
                        .unwrap_or(Path::new(""))
                        .to_string_lossy()
                        .into_owned();
                    stat(&mut h, item.path(), &rel)?;
                }
            }
            SourceKind::File(p) | SourceKind::Tar(p) => stat(&mut h, &repo.join(&p), "")?,
            SourceKind::Split(pattern) => {
                for part in split_parts(repo, &pattern, &layer.name)? {
                    let rel = part.to_string_lossy().into_owned();
                    stat(&mut h, &part, &rel)?;
                }
            }
        }
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_counts_like_split() {
        assert_eq!(successor(b"aa"), b"ab");
        assert_eq!(successor(b"az"), b"ba");
        assert_eq!(successor(b"09"), b"10");
    }

    #[test]
    fn split_sequence_gaps_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for s in ["aa", "ab", "ad"] {
            fs::write(dir.path().join(format!("e.tar.gz.x{s}")), b"x").unwrap();
        }
        let err = split_parts(dir.path(), "e.tar.gz.x*", "engine")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("e.tar.gz.xac") && err.contains("missing"),
            "{err}"
        );
        fs::write(dir.path().join("e.tar.gz.xac"), b"x").unwrap();
        assert_eq!(
            split_parts(dir.path(), "e.tar.gz.x*", "engine")
                .unwrap()
                .len(),
            4
        );
        fs::remove_file(dir.path().join("e.tar.gz.xaa")).unwrap();
        let err = split_parts(dir.path(), "e.tar.gz.x*", "engine")
            .unwrap_err()
            .to_string();
        assert!(err.contains("e.tar.gz.xaa"), "{err}");
        let err = split_parts(dir.path(), "nothing.x*", "engine")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
