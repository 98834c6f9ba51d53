//! One storage test suite, run against every backend: the filesystem ([`FsStorage`]) and
//! an S3-compatible bucket ([`S3Storage`]) on a real S3 server (moto, started per test).
//!
//! Each case is a function over a [`Backend`], which can open the same store again (a
//! restarted server for the filesystem, another replica for S3). Backend-specific checks
//! (the filesystem's lock and crash leftovers, S3's torn sessions) stay next to each
//! backend.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{stream, StreamExt};
use gantry_oci::Digest;
use gantry_registry::storage::{ByteStream, S3Config, S3Storage};
use gantry_registry::{FsStorage, Storage, StorageError};
use gantry_test_support::{MotoServer, MOTO_ACCESS_KEY_ID, MOTO_REGION, MOTO_SECRET_ACCESS_KEY};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// A store that can be opened more than once.
enum Backend {
    Fs(tempfile::TempDir),
    /// The server is kept alive (and killed on drop) with the store's configuration.
    S3(#[allow(dead_code)] MotoServer, Box<S3Config>),
}

impl Backend {
    fn fs() -> Self {
        Backend::Fs(tempfile::tempdir().unwrap())
    }

    async fn s3() -> Self {
        let moto = tokio::task::spawn_blocking(MotoServer::start)
            .await
            .unwrap();
        moto.create_bucket("gantry");
        let config = s3_config(&moto, "gantry", "registry");
        Backend::S3(moto, Box::new(config))
    }

    /// Opens the store. A filesystem store must be closed (dropped) before it is opened
    /// again; S3 stores may be open several times at once. A background task of the
    /// store just dropped (a chunk-index check, say) may hold it a moment longer: a
    /// locked filesystem store is tried again for up to 10 s.
    async fn open(&self) -> Arc<dyn Storage> {
        match self {
            Backend::Fs(dir) => {
                let start = std::time::Instant::now();
                loop {
                    match FsStorage::open(dir.path()) {
                        Ok(s) => break Arc::new(s),
                        Err(StorageError::Locked(_))
                            if start.elapsed() < Duration::from_secs(10) =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("opening {}: {e}", dir.path().display()),
                    }
                }
            }
            Backend::S3(_, config) => Arc::new(S3Storage::connect(config).await.unwrap()),
        }
    }

    /// Waits long enough that times recorded before and after differ: S3 keeps
    /// `Last-Modified` to the second.
    async fn tick(&self) {
        let pause = match self {
            Backend::Fs(_) => Duration::from_millis(100),
            Backend::S3(..) => Duration::from_millis(1100),
        };
        tokio::time::sleep(pause).await;
    }
}

pub fn s3_config(moto: &MotoServer, bucket: &str, prefix: &str) -> S3Config {
    S3Config {
        bucket: bucket.to_string(),
        endpoint: Some(moto.endpoint()),
        region: Some(MOTO_REGION.to_string()),
        access_key_id: Some(MOTO_ACCESS_KEY_ID.to_string()),
        secret_access_key: Some(MOTO_SECRET_ACCESS_KEY.to_string()),
        session_token: None,
        allow_http: true,
        prefix: prefix.to_string(),
    }
}

/// The bucket itself, to look behind the storage's back.
fn raw_store(moto: &MotoServer, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(moto.endpoint())
            .with_region(MOTO_REGION)
            .with_access_key_id(MOTO_ACCESS_KEY_ID)
            .with_secret_access_key(MOTO_SECRET_ACCESS_KEY)
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

fn body(parts: &[&[u8]]) -> ByteStream {
    let items: Vec<Result<Bytes, std::io::Error>> = parts
        .iter()
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect();
    Box::pin(stream::iter(items))
}

async fn read_all(s: &dyn Storage, d: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
    let mut stream = s.read_blob(d, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ----- the cases -----

async fn chunked_upload_becomes_a_blob_only_when_finished(b: Backend) {
    let s = b.open().await;
    let u = s.create_upload("a/b").await.unwrap();
    assert_eq!(u.offset, 0);
    let off = s
        .append_upload("a/b", &u.id, 0, body(&[b"hello ", b"wor"]), 100)
        .await
        .unwrap();
    assert_eq!(off, 9);
    // Out of order.
    let err = s
        .append_upload("a/b", &u.id, 3, body(&[b"x"]), 100)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::OutOfOrder { current: 9, .. }),
        "{err}"
    );
    // Another repository does not see the session.
    assert!(matches!(
        s.upload_info("other", &u.id).await,
        Err(StorageError::UploadNotFound(_))
    ));
    let off = s
        .append_upload("a/b", &u.id, 9, body(&[b"ld"]), 100)
        .await
        .unwrap();
    assert_eq!(off, 11);
    assert_eq!(s.upload_info("a/b", &u.id).await.unwrap().offset, 11);
    let d = Digest::of(b"hello world");
    assert!(s.stat_blob(&d).await.unwrap().is_none());
    let meta = s.finish_upload("a/b", &u.id, &d).await.unwrap();
    assert_eq!(meta.size, 11);
    assert_eq!(s.stat_blob(&d).await.unwrap().unwrap().size, 11);
    assert_eq!(read_all(&*s, &d, None).await, b"hello world");
    assert!(matches!(
        s.upload_info("a/b", &u.id).await,
        Err(StorageError::UploadNotFound(_))
    ));
    assert!(s.list_uploads().await.unwrap().is_empty());
}

async fn ranges_and_small_reads(b: Backend) {
    let s = b.open().await;
    let d = Digest::of(b"hello world");
    s.put_blob_bytes(&d, Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    assert_eq!(read_all(&*s, &d, Some((6, 5))).await, b"world");
    assert_eq!(read_all(&*s, &d, Some((0, 1))).await, b"h");
    assert_eq!(read_all(&*s, &d, Some((11, 0))).await, b"");
    for (start, len) in [(6, 6), (11, 1), (20, 1), (12, 0), (u64::MAX, 2)] {
        assert!(
            matches!(
                s.read_blob(&d, Some((start, len))).await,
                Err(StorageError::Range { size: 11, .. })
            ),
            "range {start}+{len}"
        );
    }
    let missing = Digest::of(b"missing");
    for range in [None, Some((0, 1)), Some((0, 0))] {
        assert!(matches!(
            s.read_blob(&missing, range).await,
            Err(StorageError::BlobNotFound(_))
        ));
    }
    assert_eq!(
        s.read_blob_bytes(&d, 11).await.unwrap(),
        Bytes::from_static(b"hello world")
    );
    assert!(matches!(
        s.read_blob_bytes(&d, 10).await,
        Err(StorageError::Range { .. })
    ));
    assert!(matches!(
        s.read_blob_bytes(&missing, 10).await,
        Err(StorageError::BlobNotFound(_))
    ));
    // The empty blob.
    let empty = Digest::of(b"");
    s.put_blob_bytes(&empty, Bytes::new()).await.unwrap();
    assert_eq!(read_all(&*s, &empty, None).await, b"");
    assert_eq!(s.stat_blob(&empty).await.unwrap().unwrap().size, 0);
}

async fn large_blob_in_uneven_chunks(b: Backend) {
    // Bigger than a multipart part (8 MiB) in one append, plus small appends around it.
    let data = noise(21 * 1024 * 1024 + 123, 7);
    let d = Digest::of(&data);
    let s = b.open().await;
    let u = s.create_upload("big").await.unwrap();
    let cuts = [0, 1000, 19 * 1024 * 1024, data.len()];
    for w in cuts.windows(2) {
        let chunks: Vec<&[u8]> = data[w[0]..w[1]].chunks(256 * 1024).collect();
        let off = s
            .append_upload("big", &u.id, w[0] as u64, body(&chunks), u64::MAX)
            .await
            .unwrap();
        assert_eq!(off, w[1] as u64);
    }
    let meta = s.finish_upload("big", &u.id, &d).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    let start = 8 * 1024 * 1024 - 10;
    assert_eq!(
        read_all(&*s, &d, Some((start as u64, 20))).await,
        &data[start..start + 20]
    );
    assert_eq!(Digest::of(&read_all(&*s, &d, None).await), d);
    // One big append on a fresh instance (no running hash), finished there.
    let u = s.create_upload("big").await.unwrap();
    let chunks: Vec<&[u8]> = data.chunks(1024 * 1024).collect();
    s.append_upload("big", &u.id, 0, body(&chunks), u64::MAX)
        .await
        .unwrap();
    drop(s);
    let s = b.open().await;
    let wrong = Digest::of(b"not it");
    assert!(matches!(
        s.finish_upload("big", &u.id, &wrong).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert!(s.stat_blob(&wrong).await.unwrap().is_none());
    assert!(s.list_uploads().await.unwrap().is_empty());
}

async fn digest_mismatch_stores_nothing(b: Backend) {
    let s = b.open().await;
    let u = s.create_upload("r").await.unwrap();
    s.append_upload("r", &u.id, 0, body(&[b"abc"]), 100)
        .await
        .unwrap();
    let wrong = Digest::of(b"abd");
    let err = s.finish_upload("r", &u.id, &wrong).await.unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
    assert!(s.stat_blob(&wrong).await.unwrap().is_none());
    assert!(s.stat_blob(&Digest::of(b"abc")).await.unwrap().is_none());
    assert!(s.list_uploads().await.unwrap().is_empty());
    assert!(s.list_blobs().await.unwrap().is_empty());
    // Uploading bytes that are already stored still checks them.
    let abc = Digest::of(b"abc");
    s.put_blob_bytes(&abc, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let u = s.create_upload("r").await.unwrap();
    s.append_upload("r", &u.id, 0, body(&[b"xyz"]), 100)
        .await
        .unwrap();
    assert!(matches!(
        s.finish_upload("r", &u.id, &abc).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(read_all(&*s, &abc, None).await, b"abc");
}

async fn size_limit_refuses_the_chunk_and_keeps_the_session(b: Backend) {
    let s = b.open().await;
    let u = s.create_upload("r").await.unwrap();
    s.append_upload("r", &u.id, 0, body(&[b"1234"]), 8)
        .await
        .unwrap();
    let err = s
        .append_upload("r", &u.id, 4, body(&[b"56", b"789"]), 8)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { limit: 8, .. }));
    assert_eq!(s.upload_info("r", &u.id).await.unwrap().offset, 4);
    s.append_upload("r", &u.id, 4, body(&[b"5678"]), 8)
        .await
        .unwrap();
    s.finish_upload("r", &u.id, &Digest::of(b"12345678"))
        .await
        .unwrap();
}

async fn broken_body_keeps_received_bytes_and_a_new_instance_resumes(b: Backend) {
    let id;
    {
        let s = b.open().await;
        let u = s.create_upload("r").await.unwrap();
        id = u.id.clone();
        let items: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"part1")),
            Err(std::io::Error::other("connection reset")),
        ];
        let err = s
            .append_upload("r", &u.id, 0, Box::pin(stream::iter(items)), 100)
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Body(_)));
        assert_eq!(s.upload_info("r", &u.id).await.unwrap().offset, 5);
        // A body that fails before any byte changes nothing.
        let items: Vec<Result<Bytes, std::io::Error>> =
            vec![Err(std::io::Error::other("connection reset"))];
        assert!(matches!(
            s.append_upload("r", &u.id, 5, Box::pin(stream::iter(items)), 100)
                .await,
            Err(StorageError::Body(_))
        ));
        assert_eq!(s.upload_info("r", &u.id).await.unwrap().offset, 5);
    }
    // A new instance (a restarted server, another replica) has no running hash.
    let s = b.open().await;
    let uploads = s.list_uploads().await.unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].id, id);
    assert_eq!(uploads[0].repository, "r");
    assert_eq!(uploads[0].offset, 5);
    s.append_upload("r", &id, 5, body(&[b"part2"]), 100)
        .await
        .unwrap();
    s.finish_upload("r", &id, &Digest::of(b"part1part2"))
        .await
        .unwrap();
    assert_eq!(
        read_all(&*s, &Digest::of(b"part1part2"), None).await,
        b"part1part2"
    );
}

async fn cancel_removes_the_session(b: Backend) {
    let s = b.open().await;
    let u = s.create_upload("r").await.unwrap();
    s.append_upload("r", &u.id, 0, body(&[b"abc"]), 100)
        .await
        .unwrap();
    assert!(!s.cancel_upload("other", &u.id).await.unwrap());
    assert!(s.cancel_upload("r", &u.id).await.unwrap());
    assert!(!s.cancel_upload("r", &u.id).await.unwrap());
    assert!(s.list_uploads().await.unwrap().is_empty());
    assert!(matches!(
        s.append_upload("r", &u.id, 3, body(&[b"d"]), 100).await,
        Err(StorageError::UploadNotFound(_))
    ));
}

/// Requests on upload ids that name no session leave no lock behind, nor do sessions
/// that are finished, cancelled or purged.
async fn upload_locks_do_not_outlive_their_sessions(b: Backend) {
    let s = b.open().await;
    for _ in 0..200 {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        assert!(s
            .append_upload("r", &id, 0, body(&[b"x"]), 100)
            .await
            .is_err());
        assert!(s.finish_upload("r", &id, &Digest::of(b"")).await.is_err());
        assert!(!s.cancel_upload("r", &id).await.unwrap());
    }
    assert_eq!(s.upload_locks(), 0, "locks of unknown upload ids");
    let done = s.create_upload("r").await.unwrap();
    s.append_upload("r", &done.id, 0, body(&[b"abc"]), 100)
        .await
        .unwrap();
    // Out of order and from another repository: refused, the session kept.
    assert!(s
        .append_upload("r", &done.id, 9, body(&[b"d"]), 100)
        .await
        .is_err());
    assert!(s
        .append_upload("q", &done.id, 3, body(&[b"d"]), 100)
        .await
        .is_err());
    s.finish_upload("r", &done.id, &Digest::of(b"abc"))
        .await
        .unwrap();
    let cancelled = s.create_upload("r").await.unwrap();
    assert!(s.cancel_upload("r", &cancelled.id).await.unwrap());
    let purged = s.create_upload("r").await.unwrap();
    s.append_upload("r", &purged.id, 0, body(&[b"x"]), 100)
        .await
        .unwrap();
    b.tick().await;
    assert_eq!(s.purge_uploads(SystemTime::now()).await.unwrap(), 1);
    assert_eq!(s.upload_locks(), 0, "locks of ended sessions");
}

async fn purge_removes_only_stale_sessions(b: Backend) {
    let s = b.open().await;
    let old = s.create_upload("r").await.unwrap();
    let cutoff = SystemTime::now();
    b.tick().await;
    let fresh = s.create_upload("r").await.unwrap();
    assert_eq!(s.purge_uploads(cutoff).await.unwrap(), 1);
    assert!(s.upload_info("r", &old.id).await.is_err());
    assert!(s.upload_info("r", &fresh.id).await.is_ok());
    // An append counts as progress.
    let cutoff = SystemTime::now();
    b.tick().await;
    s.append_upload("r", &fresh.id, 0, body(&[b"x"]), 100)
        .await
        .unwrap();
    assert_eq!(s.purge_uploads(cutoff).await.unwrap(), 0);
    let info = s.upload_info("r", &fresh.id).await.unwrap();
    assert!(info.updated >= cutoff - Duration::from_secs(1));
    b.tick().await;
    assert_eq!(s.purge_uploads(SystemTime::now()).await.unwrap(), 1);
    assert!(s.list_uploads().await.unwrap().is_empty());
}

async fn touch_restarts_the_blob_time(b: Backend) {
    let s = b.open().await;
    let d = Digest::of(b"{}");
    let first = s
        .put_blob_bytes(&d, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    b.tick().await;
    b.tick().await;
    s.touch_blob(&d).await.unwrap();
    let touched = s.stat_blob(&d).await.unwrap().unwrap();
    assert!(
        touched.modified > first.modified,
        "{touched:?} after {first:?}"
    );
    let listed = s.list_blobs().await.unwrap();
    assert_eq!(listed, [(d, touched)]);
    assert!(matches!(
        s.touch_blob(&Digest::of(b"nope")).await,
        Err(StorageError::BlobNotFound(_))
    ));
    // Storing it again is a touch too.
    b.tick().await;
    b.tick().await;
    let again = s
        .put_blob_bytes(&d, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert!(again.modified > touched.modified);
}

async fn links_manifests_tags_referrers_and_repositories(b: Backend) {
    let s = b.open().await;
    let d = Digest::of(b"{}");
    s.put_blob_bytes(&d, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert!(matches!(
        s.put_blob_bytes(&d, Bytes::from_static(b"{ }")).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert!(!s.repository_exists("a").await.unwrap());
    assert!(s.list_repositories().await.unwrap().is_empty());
    s.link_blob("a", &d).await.unwrap();
    s.link_blob("a", &d).await.unwrap();
    s.link_blob("a/b/c", &d).await.unwrap();
    assert!(s.blob_linked("a", &d).await.unwrap());
    assert!(!s.blob_linked("a/b", &d).await.unwrap());
    assert!(s.repository_exists("a").await.unwrap());
    assert!(!s.repository_exists("a/b").await.unwrap());
    assert_eq!(s.list_blob_links("a").await.unwrap(), [d]);
    assert!(s.list_blob_links("a/b").await.unwrap().is_empty());
    s.put_manifest("z", &d, "application/x").await.unwrap();
    assert_eq!(
        s.manifest_media_type("z", &d).await.unwrap().as_deref(),
        Some("application/x")
    );
    assert_eq!(s.manifest_media_type("a", &d).await.unwrap(), None);
    s.put_tag("z", "v2", &d).await.unwrap();
    s.put_tag("z", "v10", &d).await.unwrap();
    s.put_tag("z", "V1.0_rc-1", &d).await.unwrap();
    assert_eq!(s.list_tags("z").await.unwrap(), ["V1.0_rc-1", "v10", "v2"]);
    assert!(s.list_tags("a").await.unwrap().is_empty());
    assert_eq!(s.get_tag("z", "v2").await.unwrap(), Some(d));
    assert_eq!(s.get_tag("z", "v3").await.unwrap(), None);
    assert!(s.delete_tag("z", "v2").await.unwrap());
    assert!(!s.delete_tag("z", "v2").await.unwrap());
    assert_eq!(s.list_repositories().await.unwrap(), ["a", "a/b/c", "z"]);
    let r1 = Digest::of(b"r1");
    let r2 = Digest::of(b"r2");
    let (first, second) = if r1.hex() < r2.hex() {
        (r1, r2)
    } else {
        (r2, r1)
    };
    s.put_referrer("z", &d, &second, Bytes::from_static(b"{\"r\":2}"))
        .await
        .unwrap();
    s.put_referrer("z", &d, &first, Bytes::from_static(b"{\"r\":1}"))
        .await
        .unwrap();
    assert_eq!(
        s.list_referrers("z", &d).await.unwrap(),
        [
            Bytes::from_static(b"{\"r\":1}"),
            Bytes::from_static(b"{\"r\":2}")
        ],
        "ordered by referrer digest"
    );
    assert!(s.list_referrers("a", &d).await.unwrap().is_empty());
    s.delete_referrer("z", &d, &first).await.unwrap();
    s.delete_referrer("z", &d, &second).await.unwrap();
    s.delete_referrer("z", &d, &second).await.unwrap();
    assert!(s.list_referrers("z", &d).await.unwrap().is_empty());
    assert_eq!(s.list_manifests("z").await.unwrap(), [d]);
    assert!(s.delete_manifest("z", &d).await.unwrap());
    assert!(!s.delete_manifest("z", &d).await.unwrap());
    assert!(s.list_manifests("z").await.unwrap().is_empty());
    assert_eq!(s.list_blobs().await.unwrap().len(), 1);
    assert!(s.unlink_blob("a", &d).await.unwrap());
    assert!(!s.unlink_blob("a", &d).await.unwrap());
    assert!(s.delete_blob(&d).await.unwrap());
    assert!(!s.delete_blob(&d).await.unwrap());
    assert!(s.stat_blob(&d).await.unwrap().is_none());
    assert!(s.list_blobs().await.unwrap().is_empty());
}

async fn upload_ids_cannot_escape_the_uploads_area(b: Backend) {
    let s = b.open().await;
    for id in [
        "../tmp",
        "..",
        "x",
        "00000000-0000-0000-0000-00000000000G",
        "00000000-0000-0000-0000-000000000000/../x",
    ] {
        assert!(matches!(
            s.upload_info("r", id).await,
            Err(StorageError::UploadNotFound(_))
        ));
        assert!(matches!(
            s.append_upload("r", id, 0, body(&[b"x"]), 100).await,
            Err(StorageError::UploadNotFound(_))
        ));
    }
}

/// A chunk index checked against its layer is recorded in the store, so a new instance
/// (a restarted server, another replica) answers chunk lookups from it; a forged index
/// for the same layer is refused and never answers; other repositories see nothing, and
/// a layer unlinked from the repository is no longer answered.
async fn chunk_indexes_are_checked_recorded_and_survive_a_restart(b: Backend) {
    use gantry_layer::{write_layer, LayerOptions, NoReuse, SegmentPlan};
    use gantry_registry::chunks::{Candidate, ChunkKnowledge};
    let mut blob = Vec::new();
    let written = write_layer(
        SegmentPlan::from_bytes(noise(700_000, 7)),
        &mut blob,
        &LayerOptions::default(),
        &NoReuse,
        &|_| {},
    )
    .unwrap();
    let index = written.index();
    assert!(index.chunks.len() >= 3, "{} chunks", index.chunks.len());
    let index_blob = index.to_blob().unwrap();
    let mut forged = index.clone();
    forged.chunks[1].id = Digest::of(b"forged");
    let forged_blob = forged.to_blob().unwrap();
    let (layer, ix, fx) = (
        written.digest,
        Digest::of(&index_blob),
        Digest::of(&forged_blob),
    );
    let ids: Vec<Digest> = index.chunks.iter().map(|c| c.id).collect();
    let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();

    let s = b.open().await;
    for (d, bytes) in [(layer, blob), (ix, index_blob), (fx, forged_blob)] {
        s.put_blob_bytes(&d, Bytes::from(bytes)).await.unwrap();
        s.link_blob("game", &d).await.unwrap();
    }
    let k = ChunkKnowledge::new(s.clone());
    k.learn(
        "game",
        vec![
            Candidate {
                index: fx,
                layer: Some(layer),
            },
            Candidate {
                index: ix,
                layer: Some(layer),
            },
        ],
    );
    // The lookup waits for the checks.
    let found = k.lookup("game", &ids).await.unwrap();
    assert_eq!(found.len(), distinct);
    for (c, at) in index.chunks_with_offsets().zip(&ids) {
        let l = found.iter().find(|l| l.chunk == *at).unwrap();
        assert_eq!((l.digest, l.length), (layer, c.record.compressed_len));
    }
    assert!(k
        .lookup("game", &[Digest::of(b"forged")])
        .await
        .unwrap()
        .is_empty());
    assert!(k.lookup("other", &ids).await.unwrap().is_empty());
    assert_eq!(
        s.list_chunk_indexes("game").await.unwrap(),
        vec![(layer, ix)]
    );
    drop(k);
    drop(s);

    let s = b.open().await;
    let k = ChunkKnowledge::new(s.clone());
    assert_eq!(
        k.lookup("game", &ids).await.unwrap().len(),
        distinct,
        "after a restart"
    );

    // A second layer sharing the first one's leading chunks: when the first is unlinked,
    // the shared chunks are answered from the second, the others not at all.
    let mut data2 = noise(700_000, 7);
    data2[600_000..].fill(1);
    let mut blob2 = Vec::new();
    let written2 = write_layer(
        SegmentPlan::from_bytes(data2),
        &mut blob2,
        &LayerOptions::default(),
        &NoReuse,
        &|_| {},
    )
    .unwrap();
    let index2 = written2.index();
    let index2_blob = index2.to_blob().unwrap();
    let (layer2, ix2) = (written2.digest, Digest::of(&index2_blob));
    for (d, bytes) in [(layer2, blob2), (ix2, index2_blob)] {
        s.put_blob_bytes(&d, Bytes::from(bytes)).await.unwrap();
        s.link_blob("game", &d).await.unwrap();
    }
    k.learn(
        "game",
        vec![Candidate {
            index: ix2,
            layer: Some(layer2),
        }],
    );
    let in2: std::collections::HashSet<Digest> = index2.chunks.iter().map(|c| c.id).collect();
    let shared: std::collections::HashSet<Digest> =
        ids.iter().filter(|i| in2.contains(i)).copied().collect();
    assert!(
        !shared.is_empty() && shared.len() < distinct,
        "{} shared",
        shared.len()
    );
    assert_eq!(k.lookup("game", &ids).await.unwrap().len(), distinct);
    s.unlink_blob("game", &layer).await.unwrap();
    let found = k.lookup("game", &ids).await.unwrap();
    assert_eq!(
        found.len(),
        shared.len(),
        "only the chunks the live layer holds"
    );
    assert!(found
        .iter()
        .all(|l| l.digest == layer2 && in2.contains(&l.chunk)));
    s.unlink_blob("game", &layer2).await.unwrap();
    assert!(
        k.lookup("game", &ids).await.unwrap().is_empty(),
        "no layer linked"
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::fs()).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::s3().await).await
                }
            )*
        }
    };
}

suite!(
    chunked_upload_becomes_a_blob_only_when_finished,
    ranges_and_small_reads,
    large_blob_in_uneven_chunks,
    digest_mismatch_stores_nothing,
    size_limit_refuses_the_chunk_and_keeps_the_session,
    broken_body_keeps_received_bytes_and_a_new_instance_resumes,
    cancel_removes_the_session,
    upload_locks_do_not_outlive_their_sessions,
    purge_removes_only_stale_sessions,
    touch_restarts_the_blob_time,
    links_manifests_tags_referrers_and_repositories,
    upload_ids_cannot_escape_the_uploads_area,
    chunk_indexes_are_checked_recorded_and_survive_a_restart,
);

// ----- S3 only -----

/// Two stores on one bucket under different prefixes do not see each other; a session
/// torn by a crash (parts but no state) is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_prefixes_isolate_and_torn_sessions_are_purged() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    moto.create_bucket("shared");
    let a = S3Storage::connect(&s3_config(&moto, "shared", "one"))
        .await
        .unwrap();
    let b = S3Storage::connect(&s3_config(&moto, "shared", "two/nested"))
        .await
        .unwrap();
    let d = Digest::of(b"x");
    a.put_blob_bytes(&d, Bytes::from_static(b"x"))
        .await
        .unwrap();
    a.link_blob("repo", &d).await.unwrap();
    assert!(b.stat_blob(&d).await.unwrap().is_none());
    assert!(b.list_repositories().await.unwrap().is_empty());
    assert_eq!(a.list_repositories().await.unwrap(), ["repo"]);
    b.link_blob("other/repo", &d).await.unwrap();
    assert_eq!(b.list_repositories().await.unwrap(), ["other/repo"]);

    // A session whose state is gone but whose part remains (a crash between writing a
    // part and writing the state of a new session, say): not listed, purged by age.
    let u = a.create_upload("repo").await.unwrap();
    a.append_upload("repo", &u.id, 0, body(&[b"abc"]), 100)
        .await
        .unwrap();
    let raw = raw_store(&moto, "shared");
    let state = Path::from(format!("one/uploads/{}/state.json", u.id));
    raw.delete(&state).await.unwrap();
    assert!(a.list_uploads().await.unwrap().is_empty());
    assert!(matches!(
        a.upload_info("repo", &u.id).await,
        Err(StorageError::UploadNotFound(_))
    ));
    let uploads = Path::from("one/uploads");
    let left: Vec<_> = raw.list(Some(&uploads)).collect().await;
    assert_eq!(left.len(), 1, "the part is still there");
    assert_eq!(
        a.purge_uploads(SystemTime::now() - Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a.purge_uploads(SystemTime::now()).await.unwrap(), 1);
    let left: Vec<_> = raw.list(Some(&uploads)).collect().await;
    assert!(left.is_empty(), "{left:?}");
    // Blob keys are what the module documentation says.
    let blob = Path::from(format!("one/blobs/sha256/{}", d.hex()));
    assert_eq!(raw.head(&blob).await.unwrap().size, 1);
    // Refuses to connect to a bucket that does not exist.
    assert!(S3Storage::connect(&s3_config(&moto, "missing", ""))
        .await
        .is_err());
}
