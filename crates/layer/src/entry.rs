use crate::error::LayerError;
use std::path::PathBuf;
use std::sync::Arc;

/// A normalized path inside an image: relative to the root, `/`-separated,
/// no empty, `.` or `..` components. The root itself is the empty path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImagePath(String);

impl ImagePath {
    /// The image root.
    pub fn root() -> Self {
        ImagePath(String::new())
    }

    /// Normalizes a path as written in a spec or an archive: a leading `/`
    /// and `./` are allowed when `allow_absolute` (spec destinations are
    /// absolute), `.` components are dropped, `..` is refused.
    pub fn parse(raw: &str, allow_absolute: bool) -> Result<Self, LayerError> {
        let err = |reason| LayerError::InvalidPath {
            path: raw.to_string(),
            reason,
        };
        if raw.contains('\0') {
            return Err(err("contains a NUL byte"));
        }
        if raw.starts_with('/') && !allow_absolute {
            return Err(err("absolute paths are not allowed in an archive"));
        }
        let mut parts: Vec<&str> = Vec::new();
        for component in raw.split('/') {
            match component {
                "" | "." => {}
                ".." => return Err(err("contains a `..` component")),
                c => parts.push(c),
            }
        }
        Ok(ImagePath(parts.join("/")))
    }

    /// `self/child`, where `child` is already a valid relative path.
    pub fn join(&self, child: &ImagePath) -> ImagePath {
        match (self.0.is_empty(), child.0.is_empty()) {
            (true, _) => child.clone(),
            (_, true) => self.clone(),
            _ => ImagePath(format!("{}/{}", self.0, child.0)),
        }
    }

    /// `self/name` for one component (a directory entry's file name).
    pub fn child(&self, name: &str) -> Result<ImagePath, LayerError> {
        let c = ImagePath::parse(name, false)?;
        Ok(self.join(&c))
    }

    /// The parent directory, or `None` for the root.
    pub fn parent(&self) -> Option<ImagePath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rsplit_once('/') {
            Some((p, _)) => ImagePath(p.to_string()),
            None => ImagePath::root(),
        })
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path text without a leading slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Components, for sorting so that a parent precedes its children.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// Refuses a symlink whose relative target climbs above the image root.
    /// Absolute targets resolve inside the container's root and are allowed.
    pub fn check_symlink_target(&self, target: &str) -> Result<(), LayerError> {
        if target.starts_with('/') {
            return Ok(());
        }
        let mut depth: i64 = self.components().count() as i64 - 1;
        for component in target.split('/') {
            match component {
                "" | "." => {}
                ".." => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(LayerError::SymlinkEscapes {
                            path: self.0.clone(),
                            target: target.to_string(),
                        });
                    }
                }
                _ => depth += 1,
            }
        }
        Ok(())
    }
}

/// Lets maps keyed by `ImagePath` be searched by path text (the order is the text's).
impl std::borrow::Borrow<str> for ImagePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ImagePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// Where a regular file's bytes come from when the tar stream is produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData {
    /// A file on disk, read when streamed; its size must not change.
    Disk(PathBuf),
    /// Bytes held in memory (small generated files).
    Bytes(Arc<[u8]>),
}

/// The kind of a layer entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file of `size` bytes.
    File { data: FileData, size: u64 },
    /// A symbolic link.
    Symlink { target: String },
}

/// One entry of a layer's tar, with exactly the metadata Gantry records:
/// no times beyond the build's fixed mtime, no user or group names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path in the image.
    pub path: ImagePath,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
}

impl LayerEntry {
    /// Sort key that orders a parent before its children and is independent
    /// of the order the inputs were read in.
    pub fn sort_key(&self) -> Vec<&str> {
        self.path.components().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_refuses_dot_dot() {
        assert_eq!(
            ImagePath::parse("/a/./b//c/", true).unwrap().as_str(),
            "a/b/c"
        );
        assert_eq!(ImagePath::parse("./x", false).unwrap().as_str(), "x");
        assert!(ImagePath::parse("a/../b", true).is_err());
        assert!(ImagePath::parse("/etc/passwd", false).is_err());
        assert!(ImagePath::parse("/", true).unwrap().is_root());
    }

    #[test]
    fn parents_and_joins() {
        let p = ImagePath::parse("a/b/c", false).unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(
            ImagePath::parse("a", false).unwrap().parent().unwrap(),
            ImagePath::root()
        );
        assert_eq!(ImagePath::root().join(&p), p);
        assert_eq!(p.child("d").unwrap().as_str(), "a/b/c/d");
    }

    #[test]
    fn symlink_escape_detection() {
        let link = ImagePath::parse("a/b/link", false).unwrap();
        assert!(link.check_symlink_target("../x").is_ok());
        assert!(link.check_symlink_target("../../x").is_ok());
        assert!(link.check_symlink_target("../../../etc/passwd").is_err());
        assert!(link.check_symlink_target("/etc/passwd").is_ok());
        assert!(link.check_symlink_target("c/../../..").is_ok());
        assert!(link.check_symlink_target("c/../../../..").is_err());
    }
}
