//! Getting a layer blob the node does not hold: from its chunk index, the chunks the node
//! already has (in any held blob) plus the missing ones, fetched from upstream with
//! coalesced single-range requests in parallel; every chunk checked against its sha256,
//! the assembled blob against its digest. Without an index the blob is fetched whole and
//! verified. A chunk or blob that fails verification is fetched once more, then the request
//! fails: nothing unverified is ever stored or served.
//!
//! Indexes and upstream answers are untrusted input. An index is used only when it passes
//! [`ChunkIndex::validate`] (chunk lengths within the chunker's bounds, checked sums),
//! describes the layer, and gives the size both the manifest and upstream's HEAD give;
//! otherwise it is treated as absent (the blob is fetched whole, and
//! `gantry_agent_rejected_indexes_total` counts it). Memory grows only as bytes arrive, no
//! fetch reads past the size it expects, and file work runs on the blocking pool.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use gantry_layer::ChunkIndex;
use gantry_oci::Digest;
use http::HeaderValue;
use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::error::AgentError;
use crate::metrics::{BlobRecord, Method as HowObtained, Metrics};
use crate::partial::{FailUnlessFinished, Partial};
use crate::store::{ChunkLocation, KnownIndex, ScopedChunks, Store};
use crate::upstream::{UpstreamSpec, Upstreams};

/// Longest single range request (missing chunks are coalesced up to this).
pub const MAX_RANGE: u64 = 8 << 20;
/// Largest chunk index accepted.
const MAX_INDEX_BYTES: usize = gantry_layer::MAX_INDEX_BLOB_BYTES as usize;

/// One fetch job: which upstream, repository and credentials.
pub struct Fetcher<'a> {
    /// Local store.
    pub store: &'a Store,
    /// Upstream registries.
    pub upstreams: &'a Upstreams,
    /// Metrics.
    pub metrics: &'a Metrics,
    /// The upstream of this request.
    pub up: &'a UpstreamSpec,
    /// Repository.
    pub repo: &'a str,
    /// The client's `Authorization`, passed upstream.
    pub auth: Option<&'a HeaderValue>,
    /// Range requests in flight at once.
    pub jobs: usize,
    /// Told of each delta assembly as it starts, so requests for the blob can follow it
    /// ([`Partial::body`]) instead of waiting for the end.
    pub publish: Option<&'a (dyn Fn(Arc<Partial>) + Send + Sync)>,
}

/// A chunk to fetch: (offset in the layer, length, chunk id).
type MissingChunk = (u64, u64, Digest);

/// A run of missing chunks fetched with one range request.
struct Run {
    start: u64,
    len: u64,
    /// (offset within the run, length, chunk id)
    chunks: Vec<(u64, u64, Digest)>,
}

/// Why a delta assembly did not give the layer.
enum DeltaError {
    /// The chunk index is unusable: it is treated as absent and the blob fetched whole.
    Index(AgentError),
    /// Anything else (a chunk that failed its check twice, upstream refusals, I/O).
    Other(AgentError),
}

impl From<AgentError> for DeltaError {
    fn from(e: AgentError) -> Self {
        DeltaError::Other(e)
    }
}

impl Fetcher<'_> {
    fn blob_path(&self, digest: &Digest) -> String {
        format!("/v2/{}/blobs/{}", self.repo, digest)
    }

    /// Obtains `layer` into the store: by delta from the chunk index a manifest of this
    /// repository named (`known`) when the index passes every check, else whole.
    /// `head_size` is the size upstream's HEAD gave; a fetch never takes more bytes.
    pub async fn obtain(
        &self,
        layer: &Digest,
        head_size: Option<u64>,
        known: Option<KnownIndex>,
    ) -> Result<(), AgentError> {
        let started = Instant::now();
        let mut requests = 0u64;
        let expected_size = head_size.or(known.map(|k| k.layer_size));
        let delta = match known {
            Some(k) => Some(self.delta(layer, &k, head_size, &mut requests).await),
            None => None,
        };
        let (method, upstream_bytes, reused_bytes) = match delta {
            Some(Ok((up, reused))) => (HowObtained::Delta, up, reused),
            Some(Err(DeltaError::Index(e))) => {
                self.metrics.rejected_index();
                tracing::warn!(%layer, repository = self.repo, error = %e, "chunk index refused; fetching the blob whole");
                let n = self.whole(layer, expected_size, &mut requests).await?;
                (HowObtained::Whole, n, 0)
            }
            Some(Err(DeltaError::Other(e))) => match e {
                AgentError::Corrupt { .. }
                | AgentError::UpstreamStatus {
                    status: 401 | 403, ..
                } => return Err(e),
                e => {
                    tracing::warn!(%layer, error = %e, "delta assembly failed; fetching the blob whole");
                    let n = self.whole(layer, expected_size, &mut requests).await?;
                    (HowObtained::Whole, n, 0)
                }
            },
            None => {
                let n = self.whole(layer, expected_size, &mut requests).await?;
                (HowObtained::Whole, n, 0)
            }
        };
        let store = self.store.clone();
        let digest = *layer;
        let (size, evicted) = AgentError::blocking("eviction", move || {
            let size = store.size(&digest).unwrap_or(0);
            Ok((size, store.evict()))
        })
        .await?;
        self.metrics.record(BlobRecord {
            repository: self.repo.to_string(),
            digest: layer.to_string(),
            size,
            method,
            upstream_bytes,
            reused_bytes,
            requests,
            seconds: started.elapsed().as_secs_f64(),
        });
        if evicted > 0 {
            tracing::info!(evicted, "evicted least recently used blobs");
        }
        Ok(())
    }

    /// Fetches a whole blob, verifies and stores it; one retry on a digest mismatch.
    /// With `size` known, a body that runs past it is cut off at once (and the attempt
    /// fails). Returns the bytes fetched.
    async fn whole(
        &self,
        digest: &Digest,
        size: Option<u64>,
        requests: &mut u64,
    ) -> Result<u64, AgentError> {
        let mut fetched = 0;
        for attempt in 0..2 {
            let path = self.blob_path(digest);
            let url = format!("{}{path}", self.up.url);
            *requests += 1;
            let resp = self
                .upstreams
                .send(self.up, Method::GET, &path, self.auth, &[])
                .await?;
            if !resp.status().is_success() {
                return Err(AgentError::UpstreamStatus {
                    url,
                    status: resp.status().as_u16(),
                });
            }
            if let (Some(want), Some(said)) = (size, resp.content_length()) {
                if said != want {
                    self.metrics.verification_failure();
                    return Err(AgentError::Upstream {
                        url,
                        message: format!(
                            "blob {digest}: the answer is {said} bytes long, the blob {want} bytes; not fetched"
                        ),
                    });
                }
            }
            let store = self.store.clone();
            let d = *digest;
            let (tmp, file) =
                AgentError::blocking("temporary file", move || store.temp_file(&d)).await?;
            let received = self
                .stream_to(resp, &tmp, file, digest, size, &url, &mut fetched)
                .await;
            if let Err(e) = received {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            let store = self.store.clone();
            let (d, t) = (*digest, tmp.clone());
            let committed =
                AgentError::blocking("verifying a blob", move || store.commit(&t, &d, size)).await;
            match committed {
                Ok(()) => return Ok(fetched),
                Err(AgentError::Corrupt { .. }) if attempt == 0 => {
                    self.metrics.verification_failure();
                    tracing::warn!(%digest, "upstream blob failed verification; fetching again");
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    self.metrics.verification_failure();
                    return Err(e);
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Writes the body of `resp` to `tmp`, stopping as soon as it passes `size`.
    #[allow(clippy::too_many_arguments)]
    async fn stream_to(
        &self,
        resp: reqwest::Response,
        tmp: &std::path::Path,
        file: std::fs::File,
        digest: &Digest,
        size: Option<u64>,
        url: &str,
        fetched: &mut u64,
    ) -> Result<(), AgentError> {
        let mut file = tokio::fs::File::from_std(file);
        let mut body = self.upstreams.body(resp, url);
        let mut this_attempt = 0u64;
        while let Some(item) = body.next().await {
            let chunk = item?;
            this_attempt += chunk.len() as u64;
            *fetched += chunk.len() as u64;
            self.metrics
                .upstream(self.repo, &digest.to_string(), chunk.len() as u64);
            if let Some(want) = size.filter(|w| this_attempt > *w) {
                self.metrics.verification_failure();
                return Err(AgentError::Upstream {
                    url: url.to_string(),
                    message: format!(
                        "blob {digest}: upstream sent more than the {want} bytes the blob has; cut off"
                    ),
                });
            }
            file.write_all(&chunk).await.map_err(AgentError::io(tmp))?;
        }
        file.flush().await.map_err(AgentError::io(tmp))?;
        Ok(())
    }

    /// The chunk index blob, from the store or upstream (verified, then stored), checked
    /// against the layer: it must describe `layer`, and its size must equal both the
    /// manifest's descriptor and upstream's HEAD. Any failed check is [`DeltaError::Index`].
    async fn index(
        &self,
        layer: &Digest,
        known: &KnownIndex,
        head_size: Option<u64>,
        requests: &mut u64,
    ) -> Result<(Arc<ChunkIndex>, u64), DeltaError> {
        let index_digest = known.index;
        let what = format!("chunk index {index_digest} of layer {layer}");
        let invalid = |message: String| {
            DeltaError::Index(AgentError::Invalid {
                what: what.clone(),
                message,
            })
        };
        let mut fetched = 0;
        let store = self.store.clone();
        let held = AgentError::blocking("store", move || Ok(store.has(&index_digest))).await?;
        if !held {
            let path = self.blob_path(&index_digest);
            let url = format!("{}{path}", self.up.url);
            *requests += 1;
            let resp = self
                .upstreams
                .send(self.up, Method::GET, &path, self.auth, &[])
                .await?;
            if !resp.status().is_success() {
                return Err(DeltaError::Other(AgentError::UpstreamStatus {
                    url,
                    status: resp.status().as_u16(),
                }));
            }
            let bytes = match read_body(self.upstreams, resp, MAX_INDEX_BYTES, &url).await {
                Ok(b) => b,
                Err(e @ AgentError::Invalid { .. }) => return Err(DeltaError::Index(e)),
                Err(e) => return Err(e.into()),
            };
            fetched = bytes.len() as u64;
            self.metrics
                .upstream(self.repo, &layer.to_string(), fetched);
            let actual = Digest::of(&bytes);
            if actual != index_digest {
                self.metrics.verification_failure();
                return Err(DeltaError::Index(AgentError::Corrupt {
                    what: what.clone(),
                    expected: index_digest,
                    actual,
                }));
            }
            let store = self.store.clone();
            AgentError::blocking("storing a chunk index", move || {
                store.put_bytes(&index_digest, &bytes)
            })
            .await?;
        }
        let store = self.store.clone();
        let index = AgentError::blocking("reading a chunk index", move || {
            store.read_index(&index_digest)
        })
        .await
        .map_err(DeltaError::Index)?;
        if index.layer_digest != *layer {
            return Err(invalid(format!(
                "describes layer {}, not {layer}",
                index.layer_digest
            )));
        }
        if index.layer_size != known.layer_size || head_size != Some(index.layer_size) {
            return Err(invalid(format!(
                "gives the layer {} bytes; the manifest says {}, the registry {}",
                index.layer_size,
                known.layer_size,
                head_size.map_or("nothing".to_string(), |s| s.to_string())
            )));
        }
        Ok((index, fetched))
    }

    /// The bytes `[start, start + len)` of `layer`, which the node does not hold, from its
    /// chunk index without assembling the whole blob: chunks held in other blobs are read
    /// there (each re-checked), the missing ones fetched with coalesced range requests, and
    /// every chunk checked against its id before any of its bytes are returned. This is how
    /// `gantry snapshotter` takes only the new chunks of a layer.
    pub async fn range_of(
        &self,
        layer: &Digest,
        known: &KnownIndex,
        head_size: Option<u64>,
        start: u64,
        len: u64,
    ) -> Result<Bytes, AgentError> {
        let mut requests = 0;
        let (index, _) = self
            .index(layer, known, head_size, &mut requests)
            .await
            .map_err(|e| match e {
                DeltaError::Index(e) => {
                    self.metrics.rejected_index();
                    e
                }
                DeltaError::Other(e) => e,
            })?;
        let end = start.saturating_add(len);
        let covering: Vec<_> = index
            .chunks_with_offsets()
            .filter(|c| {
                c.compressed_offset < end && c.compressed_offset + c.record.compressed_len > start
            })
            .map(|c| (c.compressed_offset, c.record.compressed_len, c.record.id))
            .collect();
        let (Some(first), Some(last)) = (covering.first(), covering.last()) else {
            return Err(AgentError::Invalid {
                what: format!("layer {layer}"),
                message: format!(
                    "range {start}+{len} is outside its {} bytes",
                    index.layer_size
                ),
            });
        };
        let (base, stop) = (first.0, last.0 + last.1);
        let layer_label = layer.to_string();
        let (store, d, wanted) = (self.store.clone(), *layer, covering.clone());
        let (upstream, repo) = (self.up.host.clone(), self.repo.to_string());
        let (held, missing) = AgentError::blocking("reading held chunks", move || {
            let mut held = Vec::new();
            let mut missing = Vec::new();
            let mut open = HashMap::new();
            let mut scoped = store.scoped(&upstream, &repo);
            for (offset, len, id) in wanted {
                let mut buf = Vec::new();
                if read_held_chunk(&store, &mut scoped, &mut open, &d, &id, len, &mut buf) {
                    held.push((offset, buf));
                } else {
                    missing.push((offset, len, id));
                }
            }
            Ok((held, missing))
        })
        .await?;
        let reused: u64 = held.iter().map(|(_, b)| b.len() as u64).sum();
        self.metrics.reused(self.repo, &layer_label, reused);
        let mut out = vec![0u8; usize::try_from(stop - base).unwrap_or(0)];
        for (offset, b) in held {
            let at = (offset - base) as usize;
            out[at..at + b.len()].copy_from_slice(&b);
        }
        // Missing chunks in runs of adjacent ones, each chunk checked (one retry).
        for run in coalesce(missing) {
            let (bytes, _) = self.fetch_run(layer, &run, &layer_label).await?;
            let at = (run.start - base) as usize;
            out[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        let from = (start.max(base) - base) as usize;
        let to = (end.min(stop) - base) as usize;
        Ok(Bytes::from(out).slice(from..to))
    }

    /// Assembles `layer` from its index, hashing it as it is written; requests for the
    /// blob follow the assembly through the published [`Partial`]. Returns (bytes
    /// fetched, bytes reused).
    async fn delta(
        &self,
        layer: &Digest,
        known: &KnownIndex,
        head_size: Option<u64>,
        requests: &mut u64,
    ) -> Result<(u64, u64), DeltaError> {
        let (index, mut fetched) = self.index(layer, known, head_size, requests).await?;
        let store = self.store.clone();
        let (d, size) = (*layer, index.layer_size);
        let (tmp, file) = AgentError::blocking("temporary file", move || {
            let (tmp, file) = store.temp_file(&d)?;
            file.set_len(size).map_err(AgentError::io(&tmp))?;
            Ok((tmp, file))
        })
        .await?;
        let file = Arc::new(file);
        let partial = Partial::new(file.clone(), &index);
        // Every way out of this function that does not verify the blob fails its readers.
        let _unfinished = FailUnlessFinished(partial.clone());
        if let Some(publish) = self.publish {
            publish(partial.clone());
        }
        let hashing = tokio::spawn(partial.clone().hash());
        let result = self
            .assemble(layer, &index, &tmp, &file, &partial, &mut fetched, requests)
            .await;
        drop(file);
        let reused = match result {
            Ok(reused) => reused,
            Err(e) => {
                partial.finish(false);
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let hashed = match hashing.await {
            Ok(h) => h,
            Err(e) => Err(AgentError::Task {
                what: format!("hashing layer {layer}"),
                message: e.to_string(),
            }),
        };
        let (actual, len) = match hashed {
            Ok(h) => h,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e.into());
            }
        };
        let store = self.store.clone();
        let (d, index_digest, ix) = (*layer, known.index, index.clone());
        let committed = AgentError::blocking("verifying an assembled layer", move || {
            store.commit_hashed(&tmp, &d, Some(ix.layer_size), actual, len)?;
            store.record_layer(&index_digest, &ix)
        })
        .await;
        match committed {
            Ok(()) => {
                partial.finish(true);
                Ok((fetched, reused))
            }
            // Every chunk matched its id, yet the whole is not the layer: the index lies.
            Err(AgentError::Corrupt { actual, .. }) => {
                Err(DeltaError::Index(AgentError::Invalid {
                    what: format!("chunk index {} of layer {layer}", known.index),
                    message: format!(
                        "its chunks, each verified, assemble to {actual}, not the layer"
                    ),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Places every chunk of `index` into `file`, marking each in `partial` once written:
    /// the chunks held in other blobs copied (each re-checked) while the missing ones are
    /// fetched in coalesced runs; a held copy that fails its check is fetched after.
    /// Returns the bytes reused.
    #[allow(clippy::too_many_arguments)]
    async fn assemble(
        &self,
        layer: &Digest,
        index: &Arc<ChunkIndex>,
        tmp: &std::path::Path,
        file: &Arc<std::fs::File>,
        partial: &Arc<Partial>,
        fetched: &mut u64,
        requests: &mut u64,
    ) -> Result<u64, DeltaError> {
        let layer_label = layer.to_string();
        let (store, ix, d) = (self.store.clone(), index.clone(), *layer);
        let (upstream, repo) = (self.up.host.clone(), self.repo.to_string());
        let (held, missing) = AgentError::blocking("looking up held chunks", move || {
            Ok(held_elsewhere(&mut store.scoped(&upstream, &repo), &ix, &d))
        })
        .await?;
        let (store, f, t, p) = (
            self.store.clone(),
            file.clone(),
            tmp.to_path_buf(),
            partial.clone(),
        );
        let copying = AgentError::blocking("copying held chunks", move || {
            copy_held_chunks(&store, held, &f, &t, &p)
        });
        let fetching = self.fetch_chunks(layer, missing, file, tmp, partial);
        let (copied, got) = tokio::join!(copying, fetching);
        let (reused, failed) = copied?;
        let (got, runs) = got?;
        self.metrics.reused(self.repo, &layer_label, reused);
        *fetched += got;
        *requests += runs;
        if !failed.is_empty() {
            let (got, runs) = self.fetch_chunks(layer, failed, file, tmp, partial).await?;
            *fetched += got;
            *requests += runs;
        }
        let (f, t) = (file.clone(), tmp.to_path_buf());
        AgentError::blocking("syncing an assembled layer", move || {
            f.sync_all().map_err(AgentError::io(&t))
        })
        .await?;
        Ok(reused)
    }

    /// Fetches `missing` chunks in coalesced runs (several at once), writes each run into
    /// `file` and marks it in `partial`. Returns (bytes fetched, requests made).
    async fn fetch_chunks(
        &self,
        layer: &Digest,
        missing: Vec<MissingChunk>,
        file: &Arc<std::fs::File>,
        tmp: &std::path::Path,
        partial: &Arc<Partial>,
    ) -> Result<(u64, u64), AgentError> {
        let layer_label = layer.to_string();
        let runs = coalesce(missing);
        let requests = runs.len() as u64;
        let fetches: Vec<_> = runs
            .into_iter()
            .map(|run| {
                let file = file.clone();
                let tmp = tmp.to_path_buf();
                let partial = partial.clone();
                let layer_label = layer_label.clone();
                async move {
                    let (bytes, got) = self.fetch_run(layer, &run, &layer_label).await?;
                    AgentError::blocking("writing fetched chunks", move || {
                        file.write_all_at(&bytes, run.start)
                            .map_err(AgentError::io(&tmp))?;
                        partial.written(run.start, run.len);
                        Ok(())
                    })
                    .await?;
                    Ok::<u64, AgentError>(got)
                }
            })
            .collect();
        let results: Vec<u64> = stream::iter(fetches)
            .buffer_unordered(self.jobs.max(1))
            .try_collect()
            .await?;
        Ok((results.iter().sum(), requests))
    }

    /// The bytes of `run` from upstream, every chunk checked against its id (on the
    /// blocking pool); a run with a bad chunk is fetched once more, then the fetch fails.
    /// Returns the bytes and how many were fetched in all.
    async fn fetch_run(
        &self,
        layer: &Digest,
        run: &Run,
        layer_label: &str,
    ) -> Result<(Bytes, u64), AgentError> {
        let mut got = 0u64;
        for attempt in 0..2 {
            let bytes = self.range(layer, run.start, run.len).await?;
            got += bytes.len() as u64;
            self.metrics
                .upstream(self.repo, layer_label, bytes.len() as u64);
            let (b, chunks) = (bytes.clone(), run.chunks.clone());
            let bad = AgentError::blocking("checking fetched chunks", move || {
                Ok(chunks.iter().find_map(|(off, len, id)| {
                    let actual = b
                        .get(*off as usize..(*off + *len) as usize)
                        .map(Digest::of)
                        .unwrap_or_else(|| Digest::of(b""));
                    (actual != *id).then_some((*id, actual))
                }))
            })
            .await?;
            match bad {
                None => return Ok((bytes, got)),
                Some((expected, actual)) => {
                    self.metrics.verification_failure();
                    if attempt == 1 {
                        return Err(AgentError::Corrupt {
                            what: format!("chunk of layer {layer} at offset {}", run.start),
                            expected,
                            actual,
                        });
                    }
                    tracing::warn!(%layer, chunk = %expected, "chunk from upstream failed verification; fetching again");
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// `len` bytes of `layer` from `start` with one single-range request; a 200 answer
    /// (the server ignored Range) is cut down to the range. Memory grows only as bytes
    /// arrive, and the answer is read no further than the range.
    async fn range(&self, layer: &Digest, start: u64, len: u64) -> Result<Bytes, AgentError> {
        let path = self.blob_path(layer);
        let url = format!("{}{path}", self.up.url);
        let Some(end) = len.checked_sub(1).and_then(|l| start.checked_add(l)) else {
            return Err(AgentError::Invalid {
                what: url,
                message: format!("range {start}+{len} is empty or out of bounds"),
            });
        };
        let want = usize::try_from(len).map_err(|_| AgentError::Invalid {
            what: url.clone(),
            message: format!("range of {len} bytes is too large"),
        })?;
        let resp = self
            .upstreams
            .send(
                self.up,
                Method::GET,
                &path,
                self.auth,
                &[("range", format!("bytes={start}-{end}"))],
            )
            .await?;
        let skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT => 0,
            StatusCode::OK => start,
            s => {
                return Err(AgentError::UpstreamStatus {
                    url,
                    status: s.as_u16(),
                })
            }
        };
        let mut out = BytesMut::new();
        let mut skip = skip;
        let mut body = self.upstreams.body(resp, &url);
        while let Some(item) = body.next().await {
            let mut chunk = item?;
            if skip > 0 {
                let n = skip.min(chunk.len() as u64) as usize;
                skip -= n as u64;
                chunk = chunk.slice(n..);
            }
            let rest = want - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(rest)]);
            if out.len() == want {
                break;
            }
        }
        if out.len() != want {
            return Err(AgentError::Upstream {
                url,
                message: format!("range {start}+{len}: only {} bytes received", out.len()),
            });
        }
        Ok(out.freeze())
    }
}

/// A chunk of the layer that another held blob has: (offset in the layer, length, id,
/// where it is held).
type HeldChunk = (u64, u64, Digest, ChunkLocation);

/// Splits the chunks of `index` into those another held blob of the same repository has
/// (by the store's chunk table; no chunk is read) and the missing ones. Blocking.
fn held_elsewhere(
    scoped: &mut ScopedChunks<'_>,
    index: &ChunkIndex,
    layer: &Digest,
) -> (Vec<HeldChunk>, Vec<MissingChunk>) {
    let mut held = Vec::new();
    let mut missing = Vec::new();
    for c in index.chunks_with_offsets() {
        let (id, len) = (c.record.id, c.record.compressed_len);
        match scoped.find(layer, &id, len) {
            Some(loc) => held.push((c.compressed_offset, len, id, loc)),
            None => missing.push((c.compressed_offset, len, id)),
        }
    }
    (held, missing)
}

/// Copies `held` chunks into `file`, each re-checked against its id first and marked in
/// `partial` once written. Returns the bytes reused and the chunks whose copy failed its
/// check (to be fetched). Blocking.
fn copy_held_chunks(
    store: &Store,
    held: Vec<HeldChunk>,
    file: &std::fs::File,
    tmp: &std::path::Path,
    partial: &Partial,
) -> Result<(u64, Vec<MissingChunk>), AgentError> {
    let mut reused = 0u64;
    let mut failed: Vec<MissingChunk> = Vec::new();
    let mut open = HashMap::new();
    let mut buf = Vec::new();
    for (offset, len, id, loc) in held {
        if read_chunk_at(store, &mut open, &loc, &id, &mut buf) {
            file.write_all_at(&buf, offset)
                .map_err(AgentError::io(tmp))?;
            partial.written(offset, len);
            reused += len;
        } else {
            failed.push((offset, len, id));
        }
    }
    Ok((reused, failed))
}

/// Reads chunk `id` (`len` compressed bytes) into `buf` from a held blob of the same
/// repository other than `layer`
/// and checks it against its id; false when no held blob has it or the copy fails its
/// check (then it is fetched). `open` keeps the blobs opened so far.
fn read_held_chunk(
    store: &Store,
    scoped: &mut ScopedChunks<'_>,
    open: &mut HashMap<Digest, std::fs::File>,
    layer: &Digest,
    id: &Digest,
    len: u64,
    buf: &mut Vec<u8>,
) -> bool {
    match scoped.find(layer, id, len) {
        Some(loc) => read_chunk_at(store, open, &loc, id, buf),
        None => false,
    }
}

/// Reads the chunk at `loc` into `buf` and checks it against `id`; false when the blob
/// cannot be read or the bytes fail the check.
fn read_chunk_at(
    store: &Store,
    open: &mut HashMap<Digest, std::fs::File>,
    loc: &ChunkLocation,
    id: &Digest,
    buf: &mut Vec<u8>,
) -> bool {
    if let std::collections::hash_map::Entry::Vacant(e) = open.entry(loc.blob) {
        if let Ok(f) = std::fs::File::open(store.blob_path(&loc.blob)) {
            e.insert(f);
        }
    }
    let (Some(src), Ok(n)) = (open.get(&loc.blob), usize::try_from(loc.len)) else {
        return false;
    };
    // The index was validated: a chunk is at most a few tens of MiB.
    buf.resize(n, 0);
    if src.read_exact_at(buf, loc.offset).is_ok() && Digest::of(buf) == *id {
        true
    } else {
        tracing::warn!(chunk = %id, blob = %loc.blob, "held chunk failed its check; fetching it");
        false
    }
}

/// Missing chunks (in blob order) coalesced into runs of adjacent chunks of at most
/// [`MAX_RANGE`] bytes, one range request each.
fn coalesce(missing: Vec<MissingChunk>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (offset, len, id) in missing {
        match runs.last_mut() {
            Some(r) if r.start + r.len == offset && r.len + len <= MAX_RANGE => {
                r.chunks.push((r.len, len, id));
                r.len += len;
            }
            _ => runs.push(Run {
                start: offset,
                len,
                chunks: vec![(0, len, id)],
            }),
        }
    }
    runs
}

/// Reads a whole answer of at most `max` bytes: refused at once when its `Content-Length`
/// says more, and cut off as soon as the body passes `max` ([`AgentError::Invalid`]).
pub(crate) async fn read_body(
    upstreams: &Upstreams,
    resp: reqwest::Response,
    max: usize,
    url: &str,
) -> Result<Bytes, AgentError> {
    if let Some(n) = resp.content_length().filter(|n| *n > max as u64) {
        return Err(AgentError::Invalid {
            what: url.to_string(),
            message: format!("{n} bytes long, larger than {max} bytes"),
        });
    }
    let mut out = BytesMut::new();
    let mut body = upstreams.body(resp, url);
    while let Some(item) = body.next().await {
        let chunk = item?;
        if out.len() + chunk.len() > max {
            return Err(AgentError::Invalid {
                what: url.to_string(),
                message: format!("larger than {max} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
