//! CNCF distribution (Debian's `docker-registry`) as a reference registry for tests.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, require_tool};

/// A `docker-registry serve` (CNCF distribution 2.8) on a free port of 127.0.0.1, plain HTTP,
/// deletes enabled, storage in a temp dir, no auth or htpasswd basic auth. Killed on drop.
pub struct DistributionRegistry {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl DistributionRegistry {
    /// Starts the registry and waits until it answers `GET /v2/` (panics after 30 s, with
    /// the registry's log).
    pub fn start() -> Self {
        Self::start_with_auth(None)
    }

    /// Starts the registry requiring HTTP basic auth for `user`/`password` (its htpasswd
    /// backend, bcrypt hash) on every request.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_with_auth(Some((user, password)))
    }

    fn start_with_auth(auth: Option<(&str, &str)>) -> Self {
        let bin = require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("gantry-registry-")
            .tempdir()
            .expect("create registry temp dir");
        let htpasswd = auth.map(|(user, password)| {
            let hash = bcrypt::hash(password, 5).expect("bcrypt hash");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, format!("{user}:{hash}\n")).expect("write htpasswd");
            path
        });
        // Retry on the rare race where the free port is taken before the registry binds it.
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                config_yml(&dir.path().join("data"), port, htpasswd.as_deref()),
            )
            .expect("write registry config");
            let log = File::create(dir.path().join("registry.log")).expect("create registry log");
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            match wait_until_serving(&mut child, port, Duration::from_secs(30)) {
                Ready::Serving => return DistributionRegistry { child, dir, port },
                // Most likely the port was taken meanwhile: try another one.
                Ready::Exited => continue,
                Ready::TimedOut => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer on 127.0.0.1:{port} within 30 s; log:\n{}",
                        std::fs::read_to_string(dir.path().join("registry.log"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        panic!(
            "docker-registry kept exiting at start; log:\n{}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:<port>`, the registry host for references (`127.0.0.1:<port>/repo:tag`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The TCP port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Root directory of the registry's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for DistributionRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Ready {
    Serving,
    Exited,
    TimedOut,
}

/// Waits until `GET /v2/` on the port is answered by a distribution registry (it sends
/// `Docker-Distribution-Api-Version`) while `child` is still running.
fn wait_until_serving(child: &mut Child, port: u16, timeout: Duration) -> Ready {
    let deadline = Instant::now() + timeout;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return Ready::Exited;
        }
        if let Ok(mut conn) =
            TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))
        {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut response = String::new();
            if conn
                .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .is_ok()
                && conn.read_to_string(&mut response).is_ok()
                && response
                    .to_ascii_lowercase()
                    .contains("docker-distribution-api-version")
                && matches!(child.try_wait(), Ok(None))
            {
                return Ready::Serving;
            }
        }
        if Instant::now() >= deadline {
            return Ready::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn config_yml(storage: &Path, port: u16, htpasswd: Option<&Path>) -> String {
    let auth = match htpasswd {
        Some(path) => format!(
            "auth:\n  htpasswd:\n    realm: gantry-test\n    path: {}\n",
            path.display()
        ),
        None => String::new(),
    };
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n{auth}",
        storage.display()
    )
}
