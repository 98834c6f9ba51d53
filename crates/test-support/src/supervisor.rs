//! The static `gantry-supervise` binary that images built with `supervise = true` carry.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::assert_success;

/// The static supervisor: `$GANTRY_SUPERVISE_BINARY` (what `scripts/test.sh` builds once),
/// else built by `scripts/build-supervisor.sh` once per test binary, in a target directory of
/// its own under the running test's target directory (so it never waits for the lock of the
/// cargo running the tests).
pub fn static_supervisor() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("GANTRY_SUPERVISE_BINARY").filter(|p| !p.is_empty()) {
                let p = PathBuf::from(p);
                assert!(
                    p.is_file(),
                    "GANTRY_SUPERVISE_BINARY={} does not exist",
                    p.display()
                );
                return p;
            }
            // <target>/debug/deps/<test>-… → <target>.
            let exe = std::env::current_exe().expect("current_exe");
            let target = exe
                .ancestors()
                .nth(3)
                .expect("the test binary is under <target>/<profile>/deps");
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let out = Command::new("bash")
                .arg(workspace.join("scripts/build-supervisor.sh"))
                .env("CARGO_TARGET_DIR", target.join("supervisor-build"))
                .current_dir(&workspace)
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/build-supervisor.sh");
            assert_success("scripts/build-supervisor.sh", &out);
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            assert!(path.is_file(), "build-supervisor.sh printed {path:?}");
            path
        })
        .clone()
}
