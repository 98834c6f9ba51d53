//! A layer blob being assembled from its chunk index, followed by readers while it is
//! written: containerd receives the blob as it is assembled instead of after, and the
//! blob's digest is computed in the same pass instead of in a second read at the end.
//!
//! Safe because of what is exposed and when:
//! - only the *ready* prefix is readable: bytes up to the first chunk not yet written, and
//!   every chunk is checked against its id (from an index bound to this layer) before it
//!   is written;
//! - the blob's last byte is held back until the whole blob has matched its digest, so no
//!   reader ever receives a complete body that is wrong. A blob that fails ends every
//!   reader's body with an error (the connection is cut, and containerd, which verifies
//!   the digest of what it ingests as well, discards the partial content).
//!
//! Blobs fetched whole (no index) are not served this way: their bytes are unverified
//! until the end.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use gantry_layer::ChunkIndex;
use gantry_oci::{Digest, DigestHasher};
use tokio::sync::watch;

use crate::error::AgentError;

/// Largest piece a reader or the hasher takes at once.
const PIECE: u64 = 1 << 20;

/// Where an assembly stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Being written; `ready` bytes from the start are written and their chunks checked.
    Assembling {
        /// Length of the ready prefix.
        ready: u64,
    },
    /// Complete and verified against the blob's digest.
    Verified,
    /// Abandoned: a chunk failed twice, the index lied, or I/O failed.
    Failed,
}

/// A blob being assembled: its temporary file, which chunks are written, and its progress.
pub struct Partial {
    digest: Digest,
    file: Arc<std::fs::File>,
    size: u64,
    /// Start offset of each chunk, in blob order (the first is 0).
    starts: Vec<u64>,
    written: Mutex<Written>,
    tx: watch::Sender<Progress>,
}

/// Which chunks are written, and the first that is not.
struct Written {
    done: Vec<bool>,
    next: usize,
}

impl Partial {
    /// A new assembly of `index`'s layer into `file` (already sized), nothing written yet.
    pub fn new(file: Arc<std::fs::File>, index: &ChunkIndex) -> Arc<Partial> {
        let starts = index
            .chunks_with_offsets()
            .map(|c| c.compressed_offset)
            .collect();
        Partial::with_chunks(file, index.layer_digest, index.layer_size, starts)
    }

    /// A new assembly of blob `digest` (`size` bytes) into `file`, cut into chunks that
    /// start at `starts` (ascending, the first 0).
    fn with_chunks(
        file: Arc<std::fs::File>,
        digest: Digest,
        size: u64,
        starts: Vec<u64>,
    ) -> Arc<Partial> {
        let (tx, _) = watch::channel(Progress::Assembling { ready: 0 });
        Arc::new(Partial {
            digest,
            file,
            size,
            written: Mutex::new(Written {
                done: vec![false; starts.len()],
                next: 0,
            }),
            starts,
            tx,
        })
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The current progress.
    pub fn progress(&self) -> Progress {
        *self.tx.borrow()
    }

    /// Notes that the chunks filling `[start, start + len)` are written (and checked).
    /// `start` must be a chunk's start; chunks are marked while they begin inside the span.
    pub fn written(&self, start: u64, len: u64) {
        let first = self.starts.partition_point(|s| *s < start);
        let end = start.saturating_add(len);
        let Ok(mut w) = self.written.lock() else {
            return;
        };
        for i in first..self.starts.len() {
            if self.starts[i] >= end {
                break;
            }
            w.done[i] = true;
        }
        let before = w.next;
        while w.next < w.done.len() && w.done[w.next] {
            w.next += 1;
        }
        if w.next != before {
            let ready = self.starts.get(w.next).copied().unwrap_or(self.size);
            self.tx.send_if_modified(|p| match p {
                Progress::Assembling { ready: r } if *r < ready => {
                    *r = ready;
                    true
                }
                _ => false,
            });
        }
    }

    /// Ends the assembly: verified, or failed. The first call counts.
    pub fn finish(&self, verified: bool) {
        self.tx.send_if_modified(|p| match p {
            Progress::Assembling { .. } => {
                *p = if verified {
                    Progress::Verified
                } else {
                    Progress::Failed
                };
                true
            }
            _ => false,
        });
    }

    /// Waits until the progress differs from `Assembling { ready: at_most }` with a
    /// larger prefix, or the assembly ends; returns the new progress.
    async fn wait_past(&self, at_most: u64) -> Progress {
        let mut rx = self.tx.subscribe();
        let got = rx
            .wait_for(|p| !matches!(p, Progress::Assembling { ready } if *ready <= at_most))
            .await
            .map(|p| *p);
        got.unwrap_or(Progress::Failed)
    }

    /// Waits until some bytes are ready or the assembly ends.
    pub async fn started(&self) -> Progress {
        self.wait_past(0).await
    }

    /// Reads `[at, at + len)` of the file (blocking pool).
    async fn read(&self, at: u64, len: u64) -> Result<Bytes, AgentError> {
        let file = self.file.clone();
        let what = format!("assembly of {}", self.digest);
        AgentError::blocking("reading an assembly", move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, at)
                .map_err(|e| AgentError::Io {
                    path: what.into(),
                    source: e,
                })?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// The blob as a body stream, each piece given as soon as it is ready; the last byte
    /// only once the blob is verified. Ends with an error if the assembly fails.
    pub fn body(self: Arc<Self>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures::stream::unfold((self, 0u64, false), |(p, sent, ended)| async move {
            if ended || sent >= p.size {
                return None;
            }
            let failed = |p: Arc<Partial>, why: String| {
                Some((Err(std::io::Error::other(why)), (p, sent, true)))
            };
            loop {
                // What may be sent now, and how much is written (to wait past).
                let (limit, ready) = match p.progress() {
                    Progress::Verified => (p.size, p.size),
                    Progress::Assembling { ready } => (ready.min(p.size - 1), ready),
                    Progress::Failed => {
                        let why = format!("blob {} failed during assembly; cut off", p.digest);
                        return failed(p, why);
                    }
                };
                if sent < limit {
                    let n = (limit - sent).min(PIECE);
                    return match p.read(sent, n).await {
                        Ok(b) => Some((Ok(b), (p, sent + n, false))),
                        Err(e) => failed(p, e.to_string()),
                    };
                }
                // All but the held-back last byte is sent: wait for more to be written,
                // or (everything written) for the verdict.
                p.wait_past(ready).await;
            }
        })
    }

    /// The blob's digest and length, hashed while it is assembled: each piece as soon as
    /// it is ready. Ends when the whole blob is written (or the assembly fails).
    pub async fn hash(self: Arc<Self>) -> Result<(Digest, u64), AgentError> {
        let mut hasher = DigestHasher::new();
        let mut at = 0u64;
        while at < self.size {
            let ready = match self.wait_past(at).await {
                Progress::Assembling { ready } => ready,
                Progress::Verified => self.size,
                Progress::Failed => {
                    return Err(AgentError::Invalid {
                        what: format!("assembly of {}", self.digest),
                        message: "abandoned".into(),
                    })
                }
            };
            while at < ready {
                let n = (ready - at).min(8 * PIECE);
                let bytes = self.read(at, n).await?;
                hasher = AgentError::blocking("hashing an assembly", move || {
                    hasher.update(&bytes);
                    Ok(hasher)
                })
                .await?;
                at += n;
            }
        }
        Ok((hasher.finish(), at))
    }
}

/// Fails the assembly when dropped unfinished (an error path or a cancelled task), so no
/// reader waits for it forever.
pub struct FailUnlessFinished(pub Arc<Partial>);

impl Drop for FailUnlessFinished {
    fn drop(&mut self) {
        self.0.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// A partial over `blob` cut into chunks of the given lengths.
    fn partial(blob: &[u8], lens: &[u64]) -> (tempfile::NamedTempFile, Arc<Partial>) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(blob.len() as u64).unwrap();
        let file = Arc::new(tmp.reopen().unwrap());
        let starts = lens
            .iter()
            .scan(0, |at, len| {
                let start = *at;
                *at += len;
                Some(start)
            })
            .collect();
        let p = Partial::with_chunks(file, Digest::of(blob), blob.len() as u64, starts);
        (tmp, p)
    }

    #[tokio::test]
    async fn readers_get_the_ready_prefix_and_the_last_byte_only_once_verified() {
        let blob: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let (tmp, p) = partial(&blob, &[1000, 1000, 1000]);
        let f = tmp.as_file();
        let mut body = Box::pin(p.clone().body());
        let hash = tokio::spawn(p.clone().hash());

        // The second chunk first: nothing is ready until the first is written.
        f.write_all_at(&blob[1000..2000], 1000).unwrap();
        p.written(1000, 1000);
        assert_eq!(p.progress(), Progress::Assembling { ready: 0 });
        f.write_all_at(&blob[..1000], 0).unwrap();
        p.written(0, 1000);
        assert_eq!(p.progress(), Progress::Assembling { ready: 2000 });
        assert_eq!(body.next().await.unwrap().unwrap(), &blob[..2000]);
        f.write_all_at(&blob[2000..], 2000).unwrap();
        p.written(2000, 1000);
        // All written, not yet verified: everything but the last byte.
        assert_eq!(body.next().await.unwrap().unwrap(), &blob[2000..2999]);
        let (digest, len) = hash.await.unwrap().unwrap();
        assert_eq!((digest, len), (Digest::of(&blob), 3000));
        let last = tokio::spawn(async move { body.next().await.map(|r| r.unwrap()) });
        // Everything is written, nothing verified: the reader waits (it does not spin).
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), p.wait_past(3000))
                .await
                .is_err(),
            "waiting past a complete, unverified assembly blocks until the verdict"
        );
        assert!(!last.is_finished());
        p.finish(true);
        assert_eq!(last.await.unwrap().unwrap(), &blob[2999..]);
    }

    #[tokio::test]
    async fn a_failed_assembly_ends_every_reader_with_an_error_before_the_end() {
        let blob = vec![7u8; 2000];
        let (tmp, p) = partial(&blob, &[1000, 1000]);
        tmp.as_file().write_all_at(&blob, 0).unwrap();
        p.written(0, 2000);
        let guard = FailUnlessFinished(p.clone());
        let mut got = Vec::new();
        let mut body = Box::pin(p.clone().body());
        got.extend_from_slice(&body.next().await.unwrap().unwrap());
        drop(guard); // the assembly's task ends without verifying
        assert!(
            body.next().await.unwrap().is_err(),
            "the body ends in an error"
        );
        assert!(body.next().await.is_none());
        assert!(got.len() < blob.len(), "never the whole body");
        assert_eq!(p.started().await, Progress::Failed);
    }
}
