//! Crash safety: the registry runs as a child process (this test binary re-executed into
//! `crash_child_server`), is killed with SIGKILL in the middle of many concurrent uploads,
//! and restarted on the same storage, several times. Afterwards every acknowledged blob is
//! intact, no stored blob's bytes differ from its digest, and an upload session that was
//! acknowledged up to some offset resumes from that offset.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gantry_oci::Digest;
use reqwest::StatusCode;

const ENV_ROOT: &str = "GANTRY_CRASH_CHILD_ROOT";
const ENV_ADDR_FILE: &str = "GANTRY_CRASH_CHILD_ADDR_FILE";

/// The server process of [`sigkill_during_concurrent_uploads_loses_nothing_acknowledged`]; does
/// nothing when run on its own.
#[test]
#[ignore = "child process of the crash test, started by it"]
fn crash_child_server() {
    let (Ok(root), Ok(addr_file)) = (std::env::var(ENV_ROOT), std::env::var(ENV_ADDR_FILE)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = test_config(Path::new(&root));
        let server = gantry_registry::bind(&config).await.unwrap();
        let tmp = format!("{addr_file}.tmp");
        std::fs::write(&tmp, server.addr().to_string()).unwrap();
        std::fs::rename(&tmp, &addr_file).unwrap();
        std::future::pending::<()>().await;
    });
}

struct ChildServer {
    child: Child,
    url: String,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_child(root: &Path, work: &Path) -> ChildServer {
    let addr_file = work.join("addr");
    let _ = std::fs::remove_file(&addr_file);
    let log = std::fs::File::create(work.join("child.log")).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_ROOT, root)
        .env(ENV_ADDR_FILE, &addr_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = ChildServer {
        child,
        url: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            server.url = format!("http://{addr}");
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "child server exited ({status}): {}",
                std::fs::read_to_string(work.join("child.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "child server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Debug)]
struct Acked {
    repo: String,
    digest: Digest,
    size: usize,
}

/// Uploads blobs in a loop (three upload styles) until the server goes away; records each
/// blob the server acknowledged with 201.
async fn uploader(
    client: reqwest::Client,
    url: String,
    worker: u64,
    seeds: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    let repo = format!("crash/w{}", worker % 6);
    loop {
        let seed = seeds.fetch_add(1, Ordering::SeqCst);
        let size = 1 + (seed as usize * 7919) % (1536 * 1024);
        let data = bytes(seed, size);
        let digest = Digest::of(&data);
        let ok = match seed % 3 {
            0 => single_post(&client, &url, &repo, &data, &digest).await,
            1 => post_put(&client, &url, &repo, &data, &digest).await,
            _ => chunked(&client, &url, &repo, &data, &digest).await,
        };
        match ok {
            Some(true) => acked.lock().unwrap().push(Acked {
                repo: repo.clone(),
                digest,
                size,
            }),
            Some(false) => panic!("the server refused a valid upload of {digest}"),
            None => return, // connection failed: the server is down
        }
    }
}

async fn single_post(
    c: &reqwest::Client,
    url: &str,
    repo: &str,
    data: &[u8],
    d: &Digest,
) -> Option<bool> {
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .ok()?;
    Some(r.status() == StatusCode::CREATED)
}

async fn post_put(
    c: &reqwest::Client,
    url: &str,
    repo: &str,
    data: &[u8],
    d: &Digest,
) -> Option<bool> {
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .ok()?;
    let loc = r.headers().get("location")?.to_str().ok()?.to_string();
    let r = c
        .put(format!("{url}{loc}?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .ok()?;
    Some(r.status() == StatusCode::CREATED)
}

async fn chunked(
    c: &reqwest::Client,
    url: &str,
    repo: &str,
    data: &[u8],
    d: &Digest,
) -> Option<bool> {
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .ok()?;
    let loc = r.headers().get("location")?.to_str().ok()?.to_string();
    let chunk = data.len().div_ceil(3).max(1);
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + chunk).min(data.len());
        let r = c
            .patch(format!("{url}{loc}"))
            .header("content-range", format!("{offset}-{}", end - 1))
            .body(data[offset..end].to_vec())
            .send()
            .await
            .ok()?;
        if r.status() != StatusCode::ACCEPTED {
            return Some(false);
        }
        offset = end;
    }
    let r = c.put(format!("{url}{loc}?digest={d}")).send().await.ok()?;
    Some(r.status() == StatusCode::CREATED)
}

/// Every file under `blobs/` hashes to its name; nothing is left in `tmp/` by a restart.
fn check_blob_store(root: &Path) -> usize {
    let mut count = 0;
    for prefix in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let prefix = prefix.unwrap().path();
        for blob in std::fs::read_dir(&prefix).unwrap() {
            let path: PathBuf = blob.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let data = std::fs::read(&path).unwrap();
            assert_eq!(
                Digest::of(&data).hex(),
                name,
                "{} holds bytes that do not match its name",
                path.display()
            );
            assert!(name.starts_with(prefix.file_name().unwrap().to_str().unwrap()));
            count += 1;
        }
    }
    count
}

#[test]
fn sigkill_during_concurrent_uploads_loses_nothing_acknowledged() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("storage");
    std::fs::create_dir_all(&root).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = client();
    let seeds = Arc::new(AtomicU64::new(1));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(Vec::new()));

    // A resumable upload acknowledged up to 300000 bytes before the first crash.
    let resumable = bytes(424242, 500_000);
    let mut resumable_loc = String::new();

    const ROUNDS: usize = 3;
    const WORKERS: u64 = 24;
    for round in 0..ROUNDS {
        let mut server = start_child(&root, work.path());
        let url = server.url.clone();
        if round == 0 {
            resumable_loc = rt.block_on(async {
                let r = client
                    .post(format!("{url}/v2/crash/resume/blobs/uploads/"))
                    .send()
                    .await
                    .unwrap();
                let loc = r.headers()["location"].to_str().unwrap().to_string();
                for (a, b) in [(0, 150_000), (150_000, 300_000)] {
                    let r = client
                        .patch(format!("{url}{loc}"))
                        .header("content-range", format!("{a}-{}", b - 1))
                        .body(resumable[a..b].to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                }
                loc
            });
        }
        let before = acked.lock().unwrap().len();
        let tasks: Vec<_> = (0..WORKERS)
            .map(|w| {
                rt.spawn(uploader(
                    client.clone(),
                    url.clone(),
                    w,
                    seeds.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        // Let uploads run, then kill at an arbitrary moment with many in flight.
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().len() < before + 40 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(37 * (round as u64 + 1)));
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        let now = acked.lock().unwrap().len();
        assert!(
            now >= before + 40,
            "round {round}: only {} uploads acknowledged",
            now - before
        );
    }

    // Restart and verify.
    let server = start_child(&root, work.path());
    let url = server.url.clone();
    let all = acked.lock().unwrap().clone();
    rt.block_on(async {
        for a in &all {
            let r = client
                .get(format!("{url}/v2/{}/blobs/{}", a.repo, a.digest))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::OK,
                "acknowledged blob {} lost",
                a.digest
            );
            let data = r.bytes().await.unwrap();
            assert_eq!(data.len(), a.size);
            assert_eq!(Digest::of(&data), a.digest);
        }
        // The resumable session reports its acknowledged offset and finishes.
        let r = client
            .get(format!("{url}{resumable_loc}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["range"], "0-299999");
        let r = client
            .put(format!(
                "{url}{resumable_loc}?digest={}",
                Digest::of(&resumable)
            ))
            .header("content-range", "300000-499999")
            .body(resumable[300_000..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    });
    let stored = check_blob_store(&root);
    assert!(
        stored > all.len() / 2,
        "{stored} blobs stored, {} acknowledged",
        all.len()
    );
    // The kills hit uploads in flight: their sessions are still there (until purged).
    let torn_sessions = std::fs::read_dir(root.join("uploads")).unwrap().count();
    assert!(torn_sessions > 0, "no upload was in flight at any kill");
    let leftovers = std::fs::read_dir(root.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "staging area not emptied at start");
    eprintln!(
        "crash test: {} acknowledged uploads over {ROUNDS} SIGKILLs, {stored} blobs verified, \
         {torn_sessions} upload sessions cut by the kills",
        all.len()
    );
    drop(server);
}
