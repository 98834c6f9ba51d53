//! A loop-mounted XFS with reflink, for tests of code that shares file blocks
//! (`FICLONERANGE`) and of its copy fallback on the default filesystem.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{assert_success, output_with_timeout, require_tool};

/// An XFS filesystem (`mkfs.xfs -m reflink=1`) in a sparse image file, loop-mounted under a
/// temp dir; unmounted and removed on drop. Needs root and xfsprogs.
pub struct LoopXfs {
    dir: Option<tempfile::TempDir>,
    mnt: PathBuf,
}

impl LoopXfs {
    /// Creates and mounts a filesystem of `size_mb` MiB (sparse: costs only what is used).
    pub fn mount(size_mb: u64) -> LoopXfs {
        let mkfs = require_tool("mkfs.xfs");
        let mount = require_tool("mount");
        let dir = crate::tempdir();
        let image = dir.path().join("xfs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_mb << 20))
            .expect("create the XFS image file");
        let out = output_with_timeout(
            Command::new(mkfs)
                .args(["-q", "-f", "-m", "reflink=1"])
                .arg(&image),
            Duration::from_secs(60),
        );
        assert_success("mkfs.xfs -m reflink=1", &out);
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir the mount point");
        let out = output_with_timeout(
            Command::new(mount)
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mnt),
            Duration::from_secs(60),
        );
        assert_success("mount -o loop (XFS; needs root)", &out);
        LoopXfs {
            dir: Some(dir),
            mnt,
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for LoopXfs {
    fn drop(&mut self) {
        if let Some(umount) = crate::find_tool("umount") {
            let plain = Command::new(&umount).arg(&self.mnt).status();
            if !plain.is_ok_and(|s| s.success()) {
                // Something still holds it (a test that failed mid-way): detach lazily.
                let _ = Command::new(&umount).arg("-l").arg(&self.mnt).status();
            }
        }
        drop(self.dir.take());
    }
}
