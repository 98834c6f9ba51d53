//! moto's server mode (PyPI `moto[server]`) as a real S3-compatible server for tests.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{child_path, find_tool, free_port};

/// Access key the tests use (moto accepts any credentials).
pub const MOTO_ACCESS_KEY_ID: &str = "gantry-test";
/// Secret key the tests use.
pub const MOTO_SECRET_ACCESS_KEY: &str = "gantry-test-secret";
/// Region the tests use.
pub const MOTO_REGION: &str = "us-east-1";

/// A moto S3 server on a free port of 127.0.0.1 (plain HTTP, in-memory state). Killed on
/// drop.
pub struct MotoServer {
    child: Child,
    dir: TempDir,
    port: u16,
}

/// How moto is started: the `moto_server` script, or `python3 -m moto.server`.
fn moto_command() -> Command {
    if let Some(bin) = find_tool("moto_server") {
        return Command::new(bin);
    }
    let python = find_tool("python3").unwrap_or_else(|| PathBuf::from("python3"));
    let importable = Command::new(&python)
        .args(["-c", "import moto.server"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !importable {
        panic!(
            "moto's S3 server is not installed (neither `moto_server` on PATH nor the python3 \
             module `moto.server`). Gantry's tests use a real S3-compatible server and must \
             not skip: run `bash scripts/test.sh`, which runs `pip install 'moto[server]'`"
        );
    }
    let mut cmd = Command::new(python);
    cmd.args(["-m", "moto.server"]);
    cmd
}

impl MotoServer {
    /// Starts moto and waits until it answers (panics after 60 s, with its log).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gantry-moto-")
            .tempdir()
            .expect("create moto temp dir");
        let log_path = dir.path().join("moto.log");
        for _attempt in 0..5 {
            let port = free_port();
            let log = File::create(&log_path).expect("create moto log");
            let mut child = moto_command()
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("PATH", child_path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if !matches!(child.try_wait(), Ok(None)) {
                    break; // exited: most likely the port was taken, try another
                }
                if http(port, "GET", "/").is_some_and(|r| r.starts_with("HTTP/1.")) {
                    return MotoServer { child, dir, port };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "moto did not answer on 127.0.0.1:{port} within 60 s; log:\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "moto kept exiting at start; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:<port>`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a bucket (panics when moto refuses).
    pub fn create_bucket(&self, name: &str) {
        let response = http(self.port, "PUT", &format!("/{name}"))
            .unwrap_or_else(|| panic!("no answer from moto creating bucket {name}"));
        assert!(
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
            "creating bucket {name}: {response}"
        );
    }

    /// moto's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One unsigned HTTP/1.0 request; the whole response, `None` when nothing answered.
fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut conn =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))
            .ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    conn.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    (!response.is_empty()).then_some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moto_starts_creates_buckets_and_stops() {
        let moto = MotoServer::start();
        moto.create_bucket("gantry-probe");
        let listing = http(moto.port(), "GET", "/").expect("moto answers");
        assert!(listing.contains("gantry-probe"), "{listing}");
        let port = moto.port();
        drop(moto);
        assert!(http(port, "GET", "/").is_none(), "moto killed on drop");
    }
}
