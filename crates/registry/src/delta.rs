//! Delta push, Gantry's extension of the upload API (`docs/delta-push.md`, version 1).
//!
//! Inside an ordinary upload session a client may `PATCH` a JSON list of byte ranges of
//! blobs the repository already holds instead of bytes; the registry appends those bytes
//! as if they had been uploaded. The finished upload is verified against its digest like
//! any other, so a wrong range can only make the push fail.
//!
//! Implemented over the [`Storage`](crate::Storage) trait alone: the ranges' streams
//! ([`Storage::read_blob`](crate::Storage::read_blob)) are chained into one body for
//! [`Storage::append_upload`](crate::Storage::append_upload), so every backend supports it.

use std::collections::HashMap;

use futures::{stream, StreamExt};
use gantry_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::storage::{ByteStream, StorageError};
use crate::Registry;

/// The value of [`crate::api::DELTA_PUSH_HEADER`] on `/v2/`: the versions spoken (v2 adds
/// the chunk lookup, [`crate::chunks`]).
pub const VERSION: &str = "v1, v2";
pub use gantry_oci::delta_push::{RANGES_MEDIA_TYPE, UPLOAD_OFFSET_HEADER};
/// Largest ranges body accepted (about 10,000 ranges).
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Source ranges opened ahead of the one being copied (hides object-store latency).
const READ_AHEAD: usize = 4;

/// One range of an existing blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRange {
    /// The source blob; it must be linked into the repository of the upload.
    pub digest: Digest,
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

/// The body of a ranges `PATCH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRanges {
    /// Appended in order.
    pub ranges: Vec<BlobRange>,
}

impl BlobRanges {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<BlobRanges, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// Why ranges could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// A range names a blob the repository does not hold. Nothing was appended.
    #[error("blob {digest} is not in repository {repository}")]
    BlobUnknown {
        /// The repository.
        repository: String,
        /// The blob.
        digest: Digest,
    },
    /// A range lies outside its blob. Nothing was appended.
    #[error("range {offset}+{length} is outside blob {digest} of {size} bytes")]
    RangeOutside {
        /// The blob.
        digest: Digest,
        /// First byte asked for.
        offset: u64,
        /// Length asked for.
        length: u64,
        /// The blob's size.
        size: u64,
    },
    /// The upload would exceed the blob size limit. Nothing was appended.
    #[error(
        "upload {id}: appending {appended} bytes at {start} exceeds the limit of {limit} bytes"
    )]
    TooLarge {
        /// Session id.
        id: String,
        /// The session's offset.
        start: u64,
        /// Bytes the ranges add up to.
        appended: u64,
        /// The limit.
        limit: u64,
    },
    /// The ranges add up to more than one request may append
    /// ([`crate::Limits::max_ranges_patch_bytes`]). Nothing was appended.
    #[error(
        "the ranges add up to {appended} bytes; one request may append at most {limit} bytes \
         ([limits] max_ranges_patch_bytes): send them in several requests"
    )]
    PatchTooLarge {
        /// Bytes the ranges add up to.
        appended: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes would pass a limit on open upload sessions. Nothing was appended.
    #[error(transparent)]
    Quota(#[from] crate::upload_quota::QuotaError),
    /// Reading a source blob failed midway; the bytes appended before stay in the session,
    /// now at `offset`.
    #[error("reading blob {digest} at upload offset {offset}: {source}")]
    SourceRead {
        /// The source blob.
        digest: Digest,
        /// The session's offset after the failure.
        offset: u64,
        /// Why.
        #[source]
        source: StorageError,
    },
    /// A storage failure, or the session's state (unknown upload, wrong offset).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Carried inside the `io::Error` of the chained stream so that a source failure can be
/// told apart from other append failures.
#[derive(Debug, thiserror::Error)]
#[error("source blob {digest}: {source}")]
struct SourceFailure {
    digest: Digest,
    #[source]
    source: StorageError,
}

/// Merges ranges that continue each other in the same blob and drops empty ones, so that
/// each source is opened once per run.
fn coalesce(ranges: &[BlobRange]) -> Vec<BlobRange> {
    let mut out: Vec<BlobRange> = Vec::with_capacity(ranges.len());
    for r in ranges.iter().filter(|r| r.length > 0) {
        match out.last_mut() {
            Some(last) if last.digest == r.digest && last.offset + last.length == r.offset => {
                last.length += r.length;
            }
            _ => out.push(*r),
        }
    }
    out
}

impl Registry {
    /// Appends `ranges` of blobs linked into `repo` to upload `id`, which must be at offset
    /// `start`, for `client` (counted against its open-session bytes). Every range and
    /// limit is checked before anything is appended. Returns the new offset. The caller
    /// checks that the client may pull `repo`.
    pub async fn append_blob_ranges(
        &self,
        repo: &str,
        id: &str,
        client: &str,
        start: u64,
        ranges: &[BlobRange],
    ) -> Result<u64, DeltaError> {
        let storage = self.storage();
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        let mut total: u64 = 0;
        for r in ranges {
            let size = match sizes.get(&r.digest) {
                Some(s) => *s,
                None => {
                    let meta = match storage.blob_linked(repo, &r.digest).await? {
                        true => storage.stat_blob(&r.digest).await?,
                        false => None,
                    };
                    let Some(meta) = meta else {
                        return Err(DeltaError::BlobUnknown {
                            repository: repo.to_string(),
                            digest: r.digest,
                        });
                    };
                    sizes.insert(r.digest, meta.size);
                    meta.size
                }
            };
            if r.offset.checked_add(r.length).is_none_or(|end| end > size) {
                return Err(DeltaError::RangeOutside {
                    digest: r.digest,
                    offset: r.offset,
                    length: r.length,
                    size,
                });
            }
            total = total.saturating_add(r.length);
        }
        let limit = self.options().limits.max_blob_bytes;
        if start.saturating_add(total) > limit {
            return Err(DeltaError::TooLarge {
                id: id.to_string(),
                start,
                appended: total,
                limit,
            });
        }
        let cap = self.options().limits.max_ranges_patch_bytes;
        if cap > 0 && total > cap {
            return Err(DeltaError::PatchTooLarge {
                appended: total,
                limit: cap,
            });
        }
        self.upload_quota().track(repo, id, client, start);
        self.upload_quota().charge(id, total)?;
        let result = self.append_ranges_charged(repo, id, start, ranges).await;
        // What the session holds now, whatever happened.
        match &result {
            Ok(offset) => self.upload_quota().settle(id, *offset),
            Err(DeltaError::SourceRead { offset, .. }) => self.upload_quota().settle(id, *offset),
            Err(_) => match storage.upload_info(repo, id).await {
                Ok(info) => self.upload_quota().settle(id, info.offset),
                Err(StorageError::UploadNotFound(_)) => self.upload_quota().close(id),
                Err(_) => {}
            },
        }
        result
    }

    /// The copy of [`Registry::append_blob_ranges`], once every check passed.
    async fn append_ranges_charged(
        &self,
        repo: &str,
        id: &str,
        start: u64,
        ranges: &[BlobRange],
    ) -> Result<u64, DeltaError> {
        let storage = self.storage();
        let limit = self.options().limits.max_blob_bytes;
        let runs = coalesce(ranges);
        let source = storage.clone();
        let opened = stream::iter(runs)
            .map(move |r| {
                let storage = source.clone();
                async move {
                    let failed = |source: StorageError| -> ByteStream {
                        let e = std::io::Error::other(SourceFailure {
                            digest: r.digest,
                            source,
                        });
                        Box::pin(stream::once(async move { Err(e) }))
                    };
                    match storage
                        .read_blob(&r.digest, Some((r.offset, r.length)))
                        .await
                    {
                        Ok(s) => check_length(s, r),
                        Err(e) => failed(e),
                    }
                }
            })
            .buffered(READ_AHEAD)
            .flatten();
        let body: ByteStream = Box::pin(opened);
        let counter = self.metrics().delta_reused_counter(repo);
        match storage.append_upload(repo, id, start, body, limit).await {
            Ok(offset) => {
                counter.inc_by(offset.saturating_sub(start));
                Ok(offset)
            }
            Err(StorageError::Body(e)) => {
                let offset = storage.upload_info(repo, id).await?.offset;
                counter.inc_by(offset.saturating_sub(start));
                match e
                    .into_inner()
                    .map(|inner| inner.downcast::<SourceFailure>())
                {
                    Some(Ok(f)) => Err(DeltaError::SourceRead {
                        digest: f.digest,
                        offset,
                        source: f.source,
                    }),
                    Some(Err(other)) => Err(DeltaError::Storage(StorageError::Body(
                        std::io::Error::other(other),
                    ))),
                    None => Err(DeltaError::Storage(StorageError::Body(
                        std::io::Error::other("source stream failed"),
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Fails the stream when a source yields fewer or more bytes than its range (a blob
/// replaced or truncated under us), so that the session never holds a short run.
fn check_length(inner: ByteStream, r: BlobRange) -> ByteStream {
    let state = (inner, 0u64, false);
    Box::pin(stream::unfold(
        state,
        move |(mut inner, mut seen, done)| async move {
            if done {
                return None;
            }
            let short = |seen: u64| {
                std::io::Error::other(SourceFailure {
                    digest: r.digest,
                    source: StorageError::Range {
                        start: r.offset,
                        len: r.length,
                        size: r.offset + seen,
                    },
                })
            };
            match inner.next().await {
                Some(Ok(chunk)) => {
                    seen += chunk.len() as u64;
                    if seen > r.length {
                        return Some((Err(short(seen)), (inner, seen, true)));
                    }
                    Some((Ok(chunk), (inner, seen, false)))
                }
                Some(Err(e)) => Some((
                    Err(std::io::Error::other(SourceFailure {
                        digest: r.digest,
                        source: StorageError::io(format!("read blob {}", r.digest), e),
                    })),
                    (inner, seen, true),
                )),
                None if seen < r.length => Some((Err(short(seen)), (inner, seen, true))),
                None => None,
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(seed: &[u8], offset: u64, length: u64) -> BlobRange {
        BlobRange {
            digest: Digest::of(seed),
            offset,
            length,
        }
    }

    #[test]
    fn parses_the_documented_body() {
        let d = Digest::of(b"a");
        let body = format!(r#"{{"ranges":[{{"digest":"{d}","offset":0,"length":65536}}]}}"#);
        let parsed = BlobRanges::parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.ranges, vec![r(b"a", 0, 65536)]);
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"ranges":[{"digest":"sha256:zz","offset":0,"length":1}]}"#,
            r#"{"ranges":[{"digest":"x","offset":-1,"length":1}]}"#,
            r#"{"ranges":[],"extra":1}"#,
        ] {
            assert!(BlobRanges::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn coalesces_adjacent_runs_of_one_blob() {
        let got = coalesce(&[
            r(b"a", 0, 10),
            r(b"a", 10, 5),
            r(b"a", 20, 1),
            r(b"b", 0, 0),
            r(b"b", 3, 4),
            r(b"a", 21, 2),
        ]);
        assert_eq!(
            got,
            vec![
                r(b"a", 0, 15),
                r(b"a", 20, 1),
                r(b"b", 3, 4),
                r(b"a", 21, 2)
            ]
        );
    }
}
