//! OCI image layout directories: written into a temporary sibling and moved
//! into place only when complete, so a failed build never leaves a partial
//! image where a good one was; read as the source of a push, a base image, `gantry
//! inspect` and `gantry diff`.

use crate::error::ClientError;
use gantry_oci::spec::{ImageIndex, ImageManifest};
use gantry_oci::{media_types, Digest, DigestHasher};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An OCI layout being written in a temporary directory beside its target.
pub struct LayoutWriter {
    dir: tempfile::TempDir,
    target: PathBuf,
}

impl LayoutWriter {
    /// Starts a layout that [`LayoutWriter::commit`] will move to `target`.
    pub fn create(target: &Path) -> Result<Self, ClientError> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(ClientError::io(&parent))?;
        check_replaceable(target)?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "layout".into());
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{name}.gantry-tmp-"))
            .tempdir_in(&parent)
            .map_err(ClientError::io(&parent))?;
        fs::create_dir_all(dir.path().join("blobs/sha256")).map_err(ClientError::io(dir.path()))?;
        fs::write(dir.path().join("oci-layout"), OCI_LAYOUT_FILE)
            .map_err(ClientError::io(dir.path()))?;
        Ok(LayoutWriter {
            dir,
            target: target.to_path_buf(),
        })
    }

    /// The temporary directory (same filesystem as the target).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where a blob lives in this layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.path().join("blobs/sha256").join(digest.hex())
    }

    /// Stores bytes as a blob and returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, ClientError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        fs::write(&path, bytes).map_err(ClientError::io(&path))?;
        Ok(digest)
    }

    /// Puts an existing blob file into the layout: a hard link when possible
    /// (blobs are immutable), a copy otherwise.
    pub fn put_file(&self, src: &Path, digest: &Digest) -> Result<(), ClientError> {
        let dst = self.blob_path(digest);
        if dst.exists() {
            return Ok(());
        }
        if fs::hard_link(src, &dst).is_err() {
            fs::copy(src, &dst).map_err(ClientError::io(src))?;
        }
        Ok(())
    }

    /// Writes `index.json`, syncs, and moves the layout to its target,
    /// replacing an older layout there.
    pub fn commit(self, index: &ImageIndex) -> Result<PathBuf, ClientError> {
        let json = gantry_oci::canonical_json_pretty("index.json", index).map_err(|e| {
            ClientError::Layout {
                path: self.target.clone(),
                message: format!("index.json: {e}"),
            }
        })?;
        let index_path = self.dir.path().join("index.json");
        let mut f = fs::File::create(&index_path).map_err(ClientError::io(&index_path))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(ClientError::io(&index_path))?;
        check_replaceable(&self.target)?;
        let tmp = self.dir.keep();
        let old = if self.target.exists() {
            let name = self
                .target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let old = self
                .target
                .with_file_name(format!(".{name}.gantry-old-{}", std::process::id()));
            fs::rename(&self.target, &old).map_err(ClientError::io(&self.target))?;
            Some(old)
        } else {
            None
        };
        if let Err(e) = fs::rename(&tmp, &self.target) {
            if let Some(old) = &old {
                let _ = fs::rename(old, &self.target);
            }
            let _ = fs::remove_dir_all(&tmp);
            return Err(ClientError::Io {
                path: self.target.clone(),
                source: e,
            });
        }
        if let Some(old) = old {
            fs::remove_dir_all(&old).map_err(ClientError::io(&old))?;
        }
        Ok(self.target.clone())
    }
}

/// Only an OCI layout or an empty directory may be replaced by a build.
fn check_replaceable(target: &Path) -> Result<(), ClientError> {
    if !target.exists() {
        return Ok(());
    }
    let is_layout = target.join("oci-layout").is_file();
    let is_empty_dir = target.is_dir()
        && fs::read_dir(target)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if is_layout || is_empty_dir {
        Ok(())
    } else {
        Err(ClientError::Layout {
            path: target.to_path_buf(),
            message: "exists and is not an OCI image layout; refusing to replace it".into(),
        })
    }
}

/// A read-only OCI image layout.
#[derive(Clone, Debug)]
pub struct OciLayout {
    root: PathBuf,
}

/// An image manifest found in a layout, with its raw bytes.
#[derive(Clone, Debug)]
pub struct ResolvedManifest {
    /// Digest of the manifest bytes.
    pub digest: Digest,
    /// The raw bytes, as stored.
    pub bytes: Vec<u8>,
    /// Parsed.
    pub manifest: ImageManifest,
    /// Its tag in the layout, if any.
    pub tag: Option<String>,
}

impl OciLayout {
    /// Opens a layout, checking its `oci-layout` marker.
    pub fn open(root: &Path) -> Result<Self, ClientError> {
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            return Err(ClientError::Layout {
                path: root.to_path_buf(),
                message: "not an OCI image layout (no oci-layout file)".into(),
            });
        }
        Ok(OciLayout {
            root: root.to_path_buf(),
        })
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// `index.json`.
    pub fn index(&self) -> Result<ImageIndex, ClientError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(ClientError::io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| self.err(format!("index.json: {e}")))
    }

    fn err(&self, message: String) -> ClientError {
        ClientError::Layout {
            path: self.root.clone(),
            message,
        }
    }

    /// Reads a blob and checks its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => self.err(format!("blob {digest} is missing")),
            _ => ClientError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        if Digest::of(&bytes) != *digest {
            return Err(self.err(format!("blob {digest} does not match its digest (corrupt)")));
        }
        Ok(bytes)
    }

    /// Streams a blob file through sha256 and checks digest and size.
    pub fn verify_blob(&self, digest: &Digest, size: u64) -> Result<(), ClientError> {
        let path = self.blob_path(digest);
        let mut f =
            fs::File::open(&path).map_err(|_| self.err(format!("blob {digest} is missing")))?;
        let mut h = DigestHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(ClientError::io(&path))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            h.update(&buf[..n]);
        }
        if total != size || h.finish() != *digest {
            return Err(self.err(format!(
                "blob {digest} does not match its descriptor (corrupt or truncated)"
            )));
        }
        Ok(())
    }

    /// [`OciLayout::resolve`] for this machine's platform (`linux` and its OCI
    /// architecture name), else `linux/amd64`, the usual platform of game servers.
    pub fn resolve_for_host(&self, tag: Option<&str>) -> Result<ResolvedManifest, ClientError> {
        let host = gantry_oci::platform::host_arch();
        match self.resolve(tag, "linux", host) {
            Err(e) if host != "amd64" => self.resolve(tag, "linux", "amd64").map_err(|_| e),
            other => other,
        }
    }

    /// The image manifest tagged `tag`, or the only image when `tag` is
    /// `None`. An image index is followed to its `platform` entry.
    pub fn resolve(
        &self,
        tag: Option<&str>,
        os: &str,
        arch: &str,
    ) -> Result<ResolvedManifest, ClientError> {
        let index = self.index()?;
        let tagged = |d: &gantry_oci::spec::Descriptor| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(media_types::ANNOTATION_REF_NAME))
                .cloned()
        };
        let candidates: Vec<_> = index
            .manifests()
            .iter()
            .filter(|d| match tag {
                Some(t) => tagged(d).as_deref() == Some(t),
                None => d.artifact_type().is_none(),
            })
            .collect();
        let desc = match (candidates.as_slice(), tag) {
            ([one], _) => *one,
            ([], Some(t)) => return Err(self.err(format!("no image tagged {t:?}"))),
            ([], None) => return Err(self.err("holds no image".into())),
            (_, Some(t)) => return Err(self.err(format!("several images tagged {t:?}"))),
            (_, None) => return Err(self.err("holds several images; name one with a tag".into())),
        };
        let tag_found = tagged(desc);
        let digest = Digest::from_oci(desc.digest()).map_err(|e| self.err(e.to_string()))?;
        let bytes = self.read_blob(&digest)?;
        let media_type = desc.media_type().to_string();
        if media_types::is_index(&media_type) {
            let inner: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| self.err(format!("index {digest}: {e}")))?;
            let m = inner
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == os && p.architecture().to_string() == arch
                    })
                })
                .ok_or_else(|| {
                    self.err(format!("index {digest} has no manifest for {os}/{arch}"))
                })?;
            let digest = Digest::from_oci(m.digest()).map_err(|e| self.err(e.to_string()))?;
            let bytes = self.read_blob(&digest)?;
            let manifest = serde_json::from_slice(&bytes)
                .map_err(|e| self.err(format!("manifest {digest}: {e}")))?;
            return Ok(ResolvedManifest {
                digest,
                bytes,
                manifest,
                tag: tag_found,
            });
        }
        let manifest = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(format!("manifest {digest}: {e}")))?;
        Ok(ResolvedManifest {
            digest,
            bytes,
            manifest,
            tag: tag_found,
        })
    }
}
