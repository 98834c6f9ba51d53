//! The snapshot store: metadata plus the overlayfs directories, with containerd's overlayfs
//! snapshotter semantics. Synchronous; the gRPC layer calls it from `spawn_blocking`.
//!
//! On disk, under the root:
//! - `metadata.json`: every snapshot (key → id, kind, parent, labels, times, usage once
//!   committed) and the next id. Replaced atomically on every change: written to
//!   `metadata.json.tmp`, fsynced, renamed over, and the root directory fsynced. The whole
//!   state of a node is a few hundred snapshots (tens of KB), so rewriting it whole is cheap
//!   and needs no database; a crash leaves either the old or the new file.
//! - `snapshots/<id>/fs` (the layer's upper directory, what a bind mount or `lowerdir`
//!   names) and `snapshots/<id>/work` (overlay's work directory; active snapshots only).
//!
//! Crash safety comes from ordering: a new snapshot's directory is built under
//! `snapshots/new-…` and renamed to `snapshots/<id>` *before* the metadata naming it is
//! written; a removed snapshot leaves the metadata *before* its directory is deleted. So
//! the metadata never names a missing directory, and a crash can only leave directories
//! the metadata does not name, which [`Store::open`] (and [`Store::cleanup`]) delete.
//!
//! Every change runs under one mutex, from the existence checks to the metadata write, so
//! of two prepares of the same key exactly one succeeds and the other gets
//! [`Error::AlreadyExists`].

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;

const METADATA: &str = "metadata.json";
const METADATA_TMP: &str = "metadata.json.tmp";
const SNAPSHOTS: &str = "snapshots";
const FORMAT_VERSION: u32 = 1;

/// Counter making temporary directory names unique within the process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The kind of a snapshot, as containerd defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only view of a committed snapshot (no upper directory of its own in use).
    View,
    /// Writable snapshot being filled (a layer being applied, or a container's rootfs).
    Active,
    /// Immutable snapshot that others may use as parent.
    Committed,
}

impl Kind {
    /// containerd's name of the kind (`View`, `Active`, `Committed`), as filters use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "View",
            Kind::Active => "Active",
            Kind::Committed => "Committed",
        }
    }
}

/// What [`Store::stat`], [`Store::walk`] and [`Store::update`] report of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The key (active, view) or name (committed).
    pub name: String,
    /// The parent's name; empty when there is none.
    pub parent: String,
    /// View, active or committed.
    pub kind: Kind,
    /// The snapshot's labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it or its labels last changed.
    pub updated_at: SystemTime,
}

/// Disk usage of a snapshot's own directory (not its parents').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of disk used (allocated blocks, each inode once).
    pub size: i64,
    /// Number of inodes (hard links counted once).
    pub inodes: i64,
}

/// One mount, as containerd's `Mount` message carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type: `bind` or `overlay`.
    pub kind: String,
    /// The source: a directory for `bind`, `overlay` for overlay.
    pub source: String,
    /// Mount options (`ro`, `rbind`, `index=off`, `lowerdir=…`, …).
    pub options: Vec<String>,
}

/// How overlay mounts are made; detected from the host by [`MountOptions::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Add `index=off` (the kernel knows the option; containerd 1.6 adds it then).
    pub index_off: bool,
    /// Add `userxattr` (overlay in a user namespace keeps its xattrs in `user.overlay.*`).
    pub userxattr: bool,
}

impl MountOptions {
    /// What containerd 1.6 would use on this host: `index=off` when
    /// `/sys/module/overlay/parameters/index` exists, `userxattr` when running inside a user
    /// namespace (not the initial one).
    pub fn detect() -> Self {
        MountOptions {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            userxattr: in_user_namespace(),
        }
    }
}

fn in_user_namespace() -> bool {
    match fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: Kind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    parent: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    created: u64,
    updated: u64,
    /// Set on commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Db {
    version: u32,
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

impl Default for Db {
    fn default() -> Self {
        Db {
            version: FORMAT_VERSION,
            next_id: 1,
            snapshots: BTreeMap::new(),
        }
    }
}

impl Db {
    fn get(&self, key: &str) -> Result<&Record> {
        self.snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// Ids of the parent chain of `record`, nearest first.
    fn parent_ids(&self, record: &Record) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut parent = record.parent.as_str();
        while !parent.is_empty() {
            let p = self.snapshots.get(parent).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "metadata is inconsistent: parent {parent:?} is missing"
                ))
            })?;
            ids.push(p.id);
            parent = p.parent.as_str();
            if ids.len() > self.snapshots.len() {
                return Err(Error::FailedPrecondition(
                    "metadata is inconsistent: parent chain has a cycle".into(),
                ));
            }
        }
        Ok(ids)
    }

    fn info(name: &str, r: &Record) -> SnapshotInfo {
        SnapshotInfo {
            name: name.to_string(),
            parent: r.parent.clone(),
            kind: r.kind,
            labels: r.labels.clone(),
            created_at: from_nanos(r.created),
            updated_at: from_nanos(r.updated),
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// The snapshots of one root directory: metadata and overlay directories.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    options: MountOptions,
    db: Mutex<Db>,
}

impl Store {
    /// Opens (creating if needed) the store at `root` with the host's mount options, and
    /// deletes what a crash may have left: a half-written metadata file and snapshot
    /// directories the metadata does not name.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, MountOptions::detect())
    }

    /// Like [`Store::open`] with explicit mount options.
    pub fn open_with(root: &Path, options: MountOptions) -> Result<Self> {
        let snapshots = root.join(SNAPSHOTS);
        fs::create_dir_all(&snapshots).ctx(|| format!("creating {}", snapshots.display()))?;
        let tmp = root.join(METADATA_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => tracing::warn!(path = %tmp.display(), "removed a half-written metadata file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", tmp.display()), e)),
        }
        let path = root.join(METADATA);
        let db = match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Db>(&bytes).map_err(|source| Error::Metadata {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Db::default(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        if db.version != FORMAT_VERSION {
            return Err(Error::FailedPrecondition(format!(
                "{} has format version {}, this snapshotter reads {FORMAT_VERSION}",
                path.display(),
                db.version
            )));
        }
        let store = Store {
            root: root.to_path_buf(),
            options,
            db: Mutex::new(db),
        };
        let removed = store.cleanup()?;
        if !removed.is_empty() {
            tracing::info!(
                count = removed.len(),
                "removed orphaned snapshot directories"
            );
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mount options in use.
    pub fn mount_options(&self) -> &MountOptions {
        &self.options
    }

    fn lock(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave the in-memory state half-changed:
        // changes are made on a copy and swapped in after the metadata write.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join(SNAPSHOTS).join(id.to_string())
    }

    /// The upper directory (`fs`) of the snapshot with internal id `id`.
    fn upper(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    /// The directory holding the content of snapshot `key` (its overlay upper directory):
    /// where a layer is applied, and what a future fast path fills before committing.
    pub fn upper_dir(&self, key: &str) -> Result<PathBuf> {
        let db = self.lock();
        Ok(self.upper(db.get(key)?.id))
    }

    /// Writes `db` as the metadata file, atomically and durably.
    fn persist(&self, db: &Db) -> Result<()> {
        let tmp = self.root.join(METADATA_TMP);
        let path = self.root.join(METADATA);
        let bytes = serde_json::to_vec(db).map_err(|source| Error::Metadata {
            path: path.clone(),
            source,
        })?;
        let mut file = fs::File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        file.write_all(&bytes)
            .ctx(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .ctx(|| format!("syncing {}", tmp.display()))?;
        drop(file);
        fs::rename(&tmp, &path)
            .ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(&self.root)
    }

    /// Creates an active snapshot `key` on top of the committed snapshot `parent` (empty
    /// for none) and returns the mounts to apply a layer or run a container on.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// Creates a read-only view `key` of the committed snapshot `parent` and returns its
    /// mounts.
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let mut db = self.lock();
        if db.snapshots.contains_key(key) {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        let parent_owner = if parent.is_empty() {
            None
        } else {
            let p = db
                .snapshots
                .get(parent)
                .ok_or_else(|| Error::NotFound(format!("{parent} (parent of {key})")))?;
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
            let upper = self.upper(p.id);
            let meta = fs::symlink_metadata(&upper)
                .ctx(|| format!("reading the parent's directory {}", upper.display()))?;
            Some((meta.uid(), meta.gid()))
        };

        let mut next = db.clone();
        let id = next.next_id;
        next.next_id += 1;
        let now = now_nanos();
        let record = Record {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            usage: None,
        };
        let mounts = self.mounts_of(&next, &record)?;
        next.snapshots.insert(key.to_string(), record);
        self.create_dir(id, kind, parent_owner)?;
        if let Err(e) = self.persist(&next) {
            self.remove_dir_logged(id);
            return Err(e);
        }
        *db = next;
        Ok(mounts)
    }

    /// Builds `snapshots/<id>` (with `fs`, and `work` for active snapshots) under a
    /// temporary name and renames it into place. `owner`: uid and gid for `fs` (the
    /// parent's, as containerd does, so a layer on a chowned parent keeps its owner).
    fn create_dir(&self, id: u64, kind: Kind, owner: Option<(u32, u32)>) -> Result<()> {
        let snapshots = self.root.join(SNAPSHOTS);
        let tmp = snapshots.join(format!(
            "new-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
            let upper = tmp.join("fs");
            make_dir(&upper, 0o755)?;
            if kind == Kind::Active {
                make_dir(&tmp.join("work"), 0o711)?;
            }
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(&upper, Some(uid), Some(gid))
                    .ctx(|| format!("chown {}", upper.display()))?;
            }
            let dest = self.snapshot_dir(id);
            fs::rename(&tmp, &dest)
                .ctx(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
            sync_dir(&snapshots)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    fn remove_dir_logged(&self, id: u64) {
        let dir = self.snapshot_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove snapshot directory; the next cleanup will");
        }
    }

    /// The mounts of snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let db = self.lock();
        let record = db.get(key)?;
        self.mounts_of(&db, record)
    }

    /// containerd 1.6 overlayfs mounts: a bind mount of the snapshot's own `fs` when it has
    /// no parent (rw when active, ro for a view); a read-only bind mount of the parent's
    /// `fs` for a view of a single layer; otherwise overlay with `index=off`/`userxattr` as
    /// detected, `workdir`+`upperdir` when active, and `lowerdir` = parents, nearest first.
    fn mounts_of(&self, db: &Db, record: &Record) -> Result<Vec<Mount>> {
        let parents = db.parent_ids(record)?;
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        if parents.is_empty() {
            let flag = if record.kind == Kind::View {
                "ro"
            } else {
                "rw"
            };
            return Ok(vec![Mount {
                kind: "bind".into(),
                source: path(self.upper(record.id)),
                options: vec![flag.into(), "rbind".into()],
            }]);
        }
        let mut options = Vec::new();
        if self.options.index_off {
            options.push("index=off".to_string());
        }
        if self.options.userxattr {
            options.push("userxattr".to_string());
        }
        if record.kind == Kind::Active {
            options.push(format!(
                "workdir={}",
                path(self.snapshot_dir(record.id).join("work"))
            ));
            options.push(format!("upperdir={}", path(self.upper(record.id))));
        } else if parents.len() == 1 {
            return Ok(vec![Mount {
                kind: "bind".into(),
                source: path(self.upper(parents[0])),
                options: vec!["ro".into(), "rbind".into()],
            }]);
        }
        let lower: Vec<String> = parents.iter().map(|id| path(self.upper(*id))).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        Ok(vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }])
    }

    /// Commits the active snapshot `key` as the committed snapshot `name` (its directory
    /// stays; the key is gone), recording its disk usage. `labels` replace the active
    /// snapshot's labels.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot name must not be empty".into(),
            ));
        }
        // Measure outside the lock (a large layer takes a while), then check nothing moved.
        let id = {
            let db = self.lock();
            let record = db.get(key)?;
            if record.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            record.id
        };
        let usage = disk_usage(&self.upper(id))?;
        let mut db = self.lock();
        if db.snapshots.contains_key(name) {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        let mut next = db.clone();
        let mut record = next
            .snapshots
            .remove(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        if record.id != id || record.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} changed while being committed"
            )));
        }
        record.kind = Kind::Committed;
        record.labels = labels;
        record.updated = now_nanos();
        record.usage = Some(usage);
        next.snapshots.insert(name.to_string(), record);
        self.persist(&next)?;
        *db = next;
        Ok(())
    }

    /// Information about snapshot `key`.
    pub fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        let db = self.lock();
        Ok(Db::info(key, db.get(key)?))
    }

    /// Updates the labels of snapshot `info.name` (the only mutable field). `fieldpaths`:
    /// none or empty replaces all labels; `labels` likewise; `labels.KEY` sets (or, with
    /// an empty or absent value, deletes) one label; anything else is invalid.
    pub fn update(&self, info: &SnapshotInfo, fieldpaths: &[String]) -> Result<SnapshotInfo> {
        let mut db = self.lock();
        let mut next = db.clone();
        let record = next
            .snapshots
            .get_mut(&info.name)
            .ok_or_else(|| Error::NotFound(info.name.clone()))?;
        if fieldpaths.is_empty() {
            record.labels = info.labels.clone();
        }
        for path in fieldpaths {
            if path == "labels" {
                record.labels = info.labels.clone();
            } else if let Some(label) = path.strip_prefix("labels.") {
                match info.labels.get(label) {
                    Some(v) if !v.is_empty() => {
                        record.labels.insert(label.to_string(), v.clone());
                    }
                    _ => {
                        record.labels.remove(label);
                    }
                }
            } else {
                return Err(Error::InvalidArgument(format!(
                    "cannot update field {path:?} of snapshot {:?}",
                    info.name
                )));
            }
        }
        record.labels.retain(|_, v| !v.is_empty());
        record.updated = now_nanos();
        let updated = Db::info(&info.name, record);
        self.persist(&next)?;
        *db = next;
        Ok(updated)
    }

    /// Disk usage of snapshot `key`'s own directory: measured now for an active snapshot or
    /// view, recorded at commit for a committed one.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let id = {
            let db = self.lock();
            let record = db.get(key)?;
            if let Some(u) = record.usage {
                return Ok(u);
            }
            record.id
        };
        disk_usage(&self.upper(id))
    }

    /// Every snapshot matching any of `filters` (containerd filter syntax on `name`,
    /// `parent`, `kind` and `labels.KEY`; all snapshots when there is none), by name.
    pub fn walk(&self, filters: &[String]) -> Result<Vec<SnapshotInfo>> {
        let parsed = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>>>()?;
        let db = self.lock();
        Ok(db
            .snapshots
            .iter()
            .map(|(name, r)| Db::info(name, r))
            .filter(|info| parsed.is_empty() || parsed.iter().any(|f| f.matches(info)))
            .collect())
    }

    /// Removes snapshot `key` and its directory. Fails with
    /// [`Error::FailedPrecondition`] while another snapshot has it as parent.
    pub fn remove(&self, key: &str) -> Result<()> {
        let mut db = self.lock();
        let record = db.get(key)?;
        if let Some((child, _)) = db.snapshots.iter().find(|(_, r)| r.parent == key) {
            return Err(Error::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: snapshot {child:?} has it as parent"
            )));
        }
        let id = record.id;
        let mut next = db.clone();
        next.snapshots.remove(key);
        self.persist(&next)?;
        *db = next;
        drop(db);
        self.remove_dir_logged(id);
        Ok(())
    }

    /// Deletes every directory under `snapshots/` that the metadata does not name (left by
    /// a crash, or by a removal that could not delete its directory). Returns them.
    pub fn cleanup(&self) -> Result<Vec<PathBuf>> {
        // Hold the lock: no snapshot may be created while we decide what is orphaned.
        let db = self.lock();
        let ids: HashSet<String> = db.snapshots.values().map(|r| r.id.to_string()).collect();
        let dir = self.root.join(SNAPSHOTS);
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            if ids.contains(name.to_string_lossy().as_ref()) {
                continue;
            }
            let path = entry.path();
            let result = if entry
                .file_type()
                .ctx(|| format!("stat {}", path.display()))?
                .is_dir()
            {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.ctx(|| format!("removing orphaned {}", path.display()))?;
            removed.push(path);
        }
        Ok(removed)
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .ctx(|| format!("creating {}", path.display()))?;
    // The umask may have cut bits off.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

/// Disk usage under `root` the way containerd measures it: allocated 512-byte blocks and
/// inodes, each inode (dev, ino) once.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).ctx(|| format!("stat {}", path.display()))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += (meta.blocks() * 512) as i64;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).ctx(|| format!("listing {}", path.display()))? {
                stack.push(entry.ctx(|| format!("listing {}", path.display()))?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn opts() -> MountOptions {
        MountOptions {
            index_off: true,
            userxattr: false,
        }
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("snap-unit-")
            .tempdir_in("/tmp")
            .unwrap()
    }

    fn snapshot_dirs(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(root.join(SNAPSHOTS))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn lifecycle_and_mounts_match_containerd_overlayfs() {
        let d = tmp();
        let s = Store::open_with(d.path(), opts()).unwrap();
        let root = d.path().display().to_string();

        let m = s.prepare("a-key", "", BTreeMap::new()).unwrap();
        assert_eq!(
            m,
            vec![Mount {
                kind: "bind".into(),
                source: format!("{root}/snapshots/1/fs"),
                options: vec!["rw".into(), "rbind".into()],
            }]
        );
        assert!(d.path().join("snapshots/1/work").is_dir());
        fs::write(d.path().join("snapshots/1/fs/file"), b"hello").unwrap();
        s.commit("a", "a-key", labels(&[("l", "1")])).unwrap();
        assert!(matches!(s.stat("a-key"), Err(Error::NotFound(_))));
        let info = s.stat("a").unwrap();
        assert_eq!(info.kind, Kind::Committed);
        assert_eq!(info.labels, labels(&[("l", "1")]));
        let u = s.usage("a").unwrap();
        assert_eq!(u.inodes, 2);
        assert!(u.size > 0);

        // View of a single layer: read-only bind of the parent.
        let m = s.view("v1", "a", BTreeMap::new()).unwrap();
        assert_eq!(
            m,
            vec![Mount {
                kind: "bind".into(),
                source: format!("{root}/snapshots/1/fs"),
                options: vec!["ro".into(), "rbind".into()],
            }]
        );
        assert!(
            !d.path().join("snapshots/2/work").exists(),
            "views have no workdir"
        );

        // Active on one parent: overlay with upper, work, lower.
        let m = s.prepare("b-key", "a", BTreeMap::new()).unwrap();
        assert_eq!(
            m,
            vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    format!("workdir={root}/snapshots/3/work"),
                    format!("upperdir={root}/snapshots/3/fs"),
                    format!("lowerdir={root}/snapshots/1/fs"),
                ],
            }]
        );
        s.commit("b", "b-key", BTreeMap::new()).unwrap();
        // View of two layers: overlay, lowerdir only, nearest first.
        let m = s.view("v2", "b", BTreeMap::new()).unwrap();
        assert_eq!(
            m[0].options,
            vec![
                "index=off".to_string(),
                format!("lowerdir={root}/snapshots/3/fs:{root}/snapshots/1/fs"),
            ]
        );
        assert_eq!(s.mounts("v2").unwrap(), m);
        // View with no parent: read-only bind of its own (empty) fs.
        let m = s.view("v0", "", BTreeMap::new()).unwrap();
        assert_eq!(m[0].options, vec!["ro".to_string(), "rbind".to_string()]);

        // Errors with containerd's meanings.
        assert!(matches!(
            s.prepare("a-key2", "b-key", BTreeMap::new()),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s.prepare("x", "v2", BTreeMap::new()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            s.commit("c", "v2", BTreeMap::new()),
            Err(Error::FailedPrecondition(_))
        ));
        s.prepare("c-key", "b", BTreeMap::new()).unwrap();
        assert!(matches!(
            s.commit("a", "c-key", BTreeMap::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(s.stat("c-key").unwrap().kind, Kind::Active);

        // Persisted: a reopened store sees the same snapshots and ids.
        drop(s);
        let s = Store::open_with(d.path(), opts()).unwrap();
        let names: Vec<String> = s.walk(&[]).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["a", "b", "c-key", "v0", "v1", "v2"]);
        assert_eq!(s.mounts("v2").unwrap(), m_v2(&root));
        let m = s.prepare("d", "b", BTreeMap::new()).unwrap();
        assert!(m[0]
            .options
            .contains(&format!("upperdir={root}/snapshots/7/fs")));

        fn m_v2(root: &str) -> Vec<Mount> {
            vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    format!("lowerdir={root}/snapshots/3/fs:{root}/snapshots/1/fs"),
                ],
            }]
        }
    }

    #[test]
    fn userxattr_option_and_no_index() {
        let d = tmp();
        let s = Store::open_with(
            d.path(),
            MountOptions {
                index_off: false,
                userxattr: true,
            },
        )
        .unwrap();
        s.prepare("a-key", "", BTreeMap::new()).unwrap();
        s.commit("a", "a-key", BTreeMap::new()).unwrap();
        let m = s.prepare("b", "a", BTreeMap::new()).unwrap();
        assert_eq!(m[0].options[0], "userxattr");
        assert!(m[0].options.iter().all(|o| o != "index=off"));
    }

    #[test]
    fn crash_mid_prepare_is_cleaned_up_on_restart() {
        let d = tmp();
        let s = Store::open_with(d.path(), opts()).unwrap();
        s.prepare("base-key", "", BTreeMap::new()).unwrap();
        s.commit("base", "base-key", BTreeMap::new()).unwrap();
        // A prepare that crashed after building and renaming its directory but before the
        // metadata write, one that crashed while building its temporary directory, and a
        // metadata write that crashed before its rename.
        s.create_dir(2, Kind::Active, None).unwrap();
        fs::create_dir_all(d.path().join("snapshots/new-1-99/fs")).unwrap();
        fs::write(d.path().join(METADATA_TMP), b"{\"trunc").unwrap();
        assert_eq!(snapshot_dirs(d.path()), ["1", "2", "new-1-99"]);
        drop(s);

        let s = Store::open_with(d.path(), opts()).unwrap();
        assert_eq!(snapshot_dirs(d.path()), ["1"]);
        assert!(!d.path().join(METADATA_TMP).exists());
        assert_eq!(s.stat("base").unwrap().kind, Kind::Committed);
        // The id of the crashed prepare is reused safely.
        s.prepare("next", "base", BTreeMap::new()).unwrap();
        assert_eq!(snapshot_dirs(d.path()), ["1", "2"]);
        assert!(matches!(s.stat("nope"), Err(Error::NotFound(_))));
    }

    #[test]
    fn concurrent_prepares_of_one_key_one_wins() {
        let d = tmp();
        let s = Arc::new(Store::open_with(d.path(), opts()).unwrap());
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (s, b) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    s.prepare("same", "", BTreeMap::new())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(Error::AlreadyExists(k)) if k == "same")));
        assert_eq!(snapshot_dirs(d.path()), ["1"], "losers leave no directory");
    }

    #[test]
    fn remove_with_children_fails_then_works_bottom_up() {
        let d = tmp();
        let s = Store::open_with(d.path(), opts()).unwrap();
        s.prepare("a-key", "", BTreeMap::new()).unwrap();
        s.commit("a", "a-key", BTreeMap::new()).unwrap();
        s.prepare("b-key", "a", BTreeMap::new()).unwrap();
        s.commit("b", "b-key", BTreeMap::new()).unwrap();
        s.view("v", "b", BTreeMap::new()).unwrap();
        assert!(matches!(s.remove("a"), Err(Error::FailedPrecondition(_))));
        assert!(matches!(s.remove("b"), Err(Error::FailedPrecondition(_))));
        assert!(matches!(s.remove("zzz"), Err(Error::NotFound(_))));
        s.remove("v").unwrap();
        s.remove("b").unwrap();
        s.remove("a").unwrap();
        assert!(snapshot_dirs(d.path()).is_empty());
        assert!(s.walk(&[]).unwrap().is_empty());
        drop(s);
        let s = Store::open_with(d.path(), opts()).unwrap();
        assert!(s.walk(&[]).unwrap().is_empty());
    }

    #[test]
    fn update_labels_and_walk_filters() {
        let d = tmp();
        let s = Store::open_with(d.path(), opts()).unwrap();
        s.prepare("a-key", "", labels(&[("keep", "1"), ("drop", "x")]))
            .unwrap();
        let mut info = s.stat("a-key").unwrap();
        info.labels = labels(&[("new", "2")]);
        let got = s
            .update(&info, &["labels.new".into(), "labels.drop".into()])
            .unwrap();
        assert_eq!(got.labels, labels(&[("keep", "1"), ("new", "2")]));
        assert!(got.updated_at >= got.created_at);
        assert!(matches!(
            s.update(&info, &["parent".into()]),
            Err(Error::InvalidArgument(_))
        ));
        let got = s.update(&info, &[]).unwrap();
        assert_eq!(got.labels, labels(&[("new", "2")]));
        assert_eq!(s.stat("a-key").unwrap().labels, labels(&[("new", "2")]));

        s.commit("a", "a-key", labels(&[("containerd.io/snapshot/x", "y")]))
            .unwrap();
        s.prepare("b", "a", BTreeMap::new()).unwrap();
        let names = |f: &[&str]| -> Vec<String> {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            s.walk(&f).unwrap().into_iter().map(|i| i.name).collect()
        };
        assert_eq!(names(&[]), ["a", "b"]);
        assert_eq!(names(&["kind==Committed"]), ["a"]);
        assert_eq!(names(&["kind==active"]), ["b"]);
        assert_eq!(names(&["parent==a"]), ["b"]);
        assert_eq!(names(&["name!=a"]), ["b"]);
        assert_eq!(names(&[r#"labels."containerd.io/snapshot/x""#]), ["a"]);
        assert_eq!(names(&[r#"labels."containerd.io/snapshot/x"==y"#]), ["a"]);
        assert_eq!(names(&["kind==Committed,name==b"]), Vec::<String>::new());
        assert_eq!(names(&["name==a", "name==b"]), ["a", "b"]);
        assert!(matches!(
            s.walk(&["name~=a".into()]),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn disk_usage_counts_hard_links_once() {
        let d = tmp();
        fs::write(d.path().join("f"), vec![1u8; 10_000]).unwrap();
        fs::hard_link(d.path().join("f"), d.path().join("g")).unwrap();
        let u = disk_usage(d.path()).unwrap();
        assert_eq!(u.inodes, 2);
        assert!(u.size >= 10_000);
    }
}
