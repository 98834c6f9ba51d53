//! Shared helpers for Gantry's integration tests.
//!
//! Tests use the real peers (containerd + runc, CNCF distribution, skopeo, busybox) that
//! `scripts/test.sh` installs. A missing peer makes a test **fail** with a message that
//! says so ([`require_tool`]); nothing here skips silently.
//!
//! Everything panics with a descriptive message on failure: these are test helpers.

#![warn(missing_docs)]

use std::ffi::OsStr;
use std::io::Read;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod browser;
mod containerd;
mod cri;
mod http_stub;
mod moto;
mod netns;
mod proxy;
mod registry;
mod rootfs;
mod sample;
mod serve;
mod supervisor;
mod xfs;

pub use browser::{check_page_layout, LayoutCheck};
pub use containerd::{write_mirror_hosts_toml, Containerd};
pub use containerd::{CriOptions, CRI_SANDBOX_IMAGE};
pub use cri::{cri_api, cri_log_stream, CriClient, PodSandbox};
pub use http_stub::{HttpStub, StubRequest};
pub use moto::{MotoServer, MOTO_ACCESS_KEY_ID, MOTO_REGION, MOTO_SECRET_ACCESS_KEY};
pub use netns::NetnsLink;
pub use proxy::{raw_http, stall_connections, RawResponse, TcpProxy};
pub use registry::DistributionRegistry;
pub use rootfs::{
    busybox_rootfs_tar, chain_ids, host_oci_arch, write_busybox_oci_layout,
    write_layered_oci_layout, BusyboxImage, LayeredImage, BUSYBOX_APPLETS,
};
pub use sample::{build as build_sample, sample_images, SampleImages};
pub use serve::{metric, push_layout_to, registry_client, GantryServe};
pub use supervisor::static_supervisor;
pub use xfs::LoopXfs;

/// Directories searched after `PATH` by [`require_tool`]: a non-login root shell (or a CI
/// environment) may lack the `sbin` directories where Debian puts `runc`.
const FALLBACK_BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Finds the program `name` on `PATH` (then in the standard `bin`/`sbin` directories) and
/// returns its full path; panics, telling to run `scripts/test.sh`, when it is not installed.
pub fn require_tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "required program `{name}` was not found on PATH ({}) nor in {FALLBACK_BIN_DIRS:?}. \
             Gantry's tests use real peers and must not skip: run `bash scripts/test.sh`, \
             which installs the Debian packages the tests need",
            std::env::var("PATH").unwrap_or_default()
        )
    })
}

/// Like [`require_tool`] but returns `None` instead of panicking.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(FALLBACK_BIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `PATH` for child processes: the current `PATH` plus the standard `bin`/`sbin`
/// directories (containerd looks up `runc` and `containerd-shim-runc-v2` there).
pub fn child_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in FALLBACK_BIN_DIRS {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    std::env::join_paths(dirs).expect("PATH entries contain no ':'")
}

/// Sends the tracing output of the code under test (warnings and errors, or what `RUST_LOG` asks for) to
/// the test's captured output, so a failing test shows what the component logged. Safe to
/// call from every test: only the first call in a process installs the subscriber.
pub fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Creates a fresh temporary directory, removed when the returned guard drops.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gantry-test-")
        .tempdir()
        .expect("create temporary directory")
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .expect("bind 127.0.0.1:0 to find a free port")
        .local_addr()
        .expect("local_addr of a bound listener")
        .port()
}

/// Waits until a TCP connection to `addr` succeeds; panics after `timeout`.
pub fn wait_for_tcp(addr: impl ToSocketAddrs + std::fmt::Debug, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("resolve {addr:?}: {e}"))
            .collect();
        for a in &addrs {
            if TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok() {
                return;
            }
        }
        if Instant::now() >= deadline {
            panic!("nothing accepted TCP connections at {addr:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `cmd` (stdin closed, stdout/stderr captured) and returns its output; panics when it
/// cannot be started or when it runs longer than `timeout` (it is killed first).
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    match try_output_with_timeout(cmd, timeout) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`output_with_timeout`], returning an error message instead of panicking.
pub fn try_output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    match wait_with_deadline(&mut child, timeout) {
        Some(status) => Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            // The pipes may be held open by grandchildren: do not wait for the readers.
            Err(format!(
                "{shown} did not finish within {timeout:?} and was killed"
            ))
        }
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Polls `child` until it exits (returns its status) or `timeout` passes (returns `None`).
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Panics with the command's stdout and stderr unless `out` records a successful exit.
pub fn assert_success(what: impl std::fmt::Display, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds a [`Command`] for `program` with `args`, with [`child_path`] as its `PATH`.
pub fn command<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env("PATH", child_path());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_tool_finds_sh_and_panics_for_missing() {
        assert!(require_tool("sh").is_absolute());
        let err = std::panic::catch_unwind(|| require_tool("gantry-no-such-program-xyz"))
            .expect_err("missing tool must panic");
        let msg = err.downcast_ref::<String>().expect("panic message");
        assert!(msg.contains("scripts/test.sh"), "{msg}");
    }

    #[test]
    fn free_port_and_wait_for_tcp() {
        let port = free_port();
        assert_ne!(port, 0);
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("port was free");
        wait_for_tcp(("127.0.0.1", port), Duration::from_secs(5));
        drop(listener);
        let res = std::panic::catch_unwind(|| {
            wait_for_tcp(("127.0.0.1", port), Duration::from_millis(100))
        });
        assert!(res.is_err(), "closed port must time out");
    }

    #[test]
    fn output_with_timeout_kills_slow_commands() {
        let out = output_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let start = Instant::now();
        let res =
            try_output_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(200));
        assert!(res.is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn tempdir_exists_and_is_removed() {
        let d = tempdir();
        let p = d.path().to_path_buf();
        assert!(p.is_dir());
        drop(d);
        assert!(!p.exists());
    }
}
