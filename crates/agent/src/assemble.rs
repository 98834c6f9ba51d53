//! Getting a layer blob the node does not hold: from its chunk index, the chunks the node
//! already has (in any held blob) plus the missing ones, fetched from upstream with
//! coalesced single-range requests in parallel; every chunk checked against its sha256,
//! the assembled blob against its digest. Without an index the blob is fetched whole and
//! verified. A chunk or blob that fails verification is fetched once more, then the request
//! fails: nothing unverified is ever stored or served.

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
use crate::store::Store;
use crate::upstream::{describe, UpstreamSpec, Upstreams};

/// Longest single range request (missing chunks are coalesced up to this).
pub const MAX_RANGE: u64 = 8 << 20;
/// Largest chunk index accepted.
const MAX_INDEX_BYTES: usize = 64 << 20;

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
}

/// A run of missing chunks fetched with one range request.
struct Run {
    start: u64,
    len: u64,
    /// (offset within the run, length, chunk id)
    chunks: Vec<(u64, u64, Digest)>,
}

impl Fetcher<'_> {
    fn blob_path(&self, digest: &Digest) -> String {
        format!("/v2/{}/blobs/{}", self.repo, digest)
    }

    /// Obtains `layer` (of `size` bytes when known) into the store: by delta from its
    /// chunk index `index` when given, else whole.
    pub async fn obtain(
        &self,
        layer: &Digest,
        size: Option<u64>,
        index: Option<Digest>,
    ) -> Result<(), AgentError> {
        let started = Instant::now();
        let mut requests = 0u64;
        let (method, upstream_bytes, reused_bytes) = match index {
            Some(index_digest) => match self.delta(layer, &index_digest, &mut requests).await {
                Ok((up, reused)) => (HowObtained::Delta, up, reused),
                Err(e @ AgentError::Corrupt { .. }) => return Err(e),
                Err(
                    e @ AgentError::UpstreamStatus {
                        status: 401 | 403, ..
                    },
                ) => return Err(e),
                Err(e) => {
                    tracing::warn!(%layer, error = %e, "delta assembly failed; fetching the blob whole");
                    let n = self.whole(layer, size, &mut requests).await?;
                    (HowObtained::Whole, n, 0)
                }
            },
            None => {
                let n = self.whole(layer, size, &mut requests).await?;
                (HowObtained::Whole, n, 0)
            }
        };
        self.metrics.record(BlobRecord {
            repository: self.repo.to_string(),
            digest: layer.to_string(),
            size: self.store.size(layer).unwrap_or(0),
            method,
            upstream_bytes,
            reused_bytes,
            requests,
            seconds: started.elapsed().as_secs_f64(),
        });
        let evicted = self.store.evict();
        if evicted > 0 {
            tracing::info!(evicted, "evicted least recently used blobs");
        }
        Ok(())
    }

    /// Fetches a whole blob, verifies and stores it; one retry on a digest mismatch.
    /// Returns the bytes fetched.
    async fn whole(
        &self,
        digest: &Digest,
        size: Option<u64>,
        requests: &mut u64,
    ) -> Result<u64, AgentError> {
        let mut fetched = 0;
        for attempt in 0..2 {
            let path = self.blob_path(digest);
            *requests += 1;
            let resp = self
                .upstreams
                .send(self.up, Method::GET, &path, self.auth, &[])
                .await?;
            if !resp.status().is_success() {
                return Err(AgentError::UpstreamStatus {
                    url: format!("{}{path}", self.up.url),
                    status: resp.status().as_u16(),
                });
            }
            let (tmp, file) = self.store.temp_file(digest)?;
            let mut file = tokio::fs::File::from_std(file);
            let mut stream = resp.bytes_stream();
            while let Some(item) = stream.next().await {
                let chunk = item.map_err(|e| AgentError::Upstream {
                    url: format!("{}{path}", self.up.url),
                    message: describe(&e),
                })?;
                fetched += chunk.len() as u64;
                self.metrics
                    .upstream(self.repo, &digest.to_string(), chunk.len() as u64);
                file.write_all(&chunk).await.map_err(AgentError::io(&tmp))?;
            }
            file.flush().await.map_err(AgentError::io(&tmp))?;
            drop(file);
            match self.store.commit(&tmp, digest, size) {
                Ok(()) => return Ok(fetched),
                Err(AgentError::Corrupt { .. }) if attempt == 0 => {
                    self.metrics.verification_failure();
                    tracing::warn!(%digest, "upstream blob failed verification; fetching again");
                }
                Err(e) => {
                    self.metrics.verification_failure();
                    return Err(e);
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// The chunk index blob, from the store or upstream (verified, then stored).
    async fn index(
        &self,
        layer: &Digest,
        index_digest: &Digest,
        requests: &mut u64,
    ) -> Result<(ChunkIndex, u64), AgentError> {
        let mut fetched = 0;
        if !self.store.has(index_digest) {
            let path = self.blob_path(index_digest);
            *requests += 1;
            let resp = self
                .upstreams
                .send(self.up, Method::GET, &path, self.auth, &[])
                .await?;
            if !resp.status().is_success() {
                return Err(AgentError::UpstreamStatus {
                    url: format!("{}{path}", self.up.url),
                    status: resp.status().as_u16(),
                });
            }
            let bytes = read_body(resp, MAX_INDEX_BYTES, &format!("{}{path}", self.up.url)).await?;
            fetched = bytes.len() as u64;
            self.metrics
                .upstream(self.repo, &layer.to_string(), fetched);
            let actual = Digest::of(&bytes);
            if actual != *index_digest {
                self.metrics.verification_failure();
                return Err(AgentError::Corrupt {
                    what: format!("chunk index {index_digest}"),
                    expected: *index_digest,
                    actual,
                });
            }
            self.store.put_bytes(index_digest, &bytes)?;
        }
        let index = self.store.read_index(index_digest)?;
        if index.layer_digest != *layer {
            return Err(AgentError::Invalid {
                what: format!("chunk index {index_digest}"),
                message: format!("describes layer {}, not {layer}", index.layer_digest),
            });
        }
        Ok((index, fetched))
    }

    /// Assembles `layer` from its index. Returns (bytes fetched, bytes reused).
    async fn delta(
        &self,
        layer: &Digest,
        index_digest: &Digest,
        requests: &mut u64,
    ) -> Result<(u64, u64), AgentError> {
        let (index, mut fetched) = self.index(layer, index_digest, requests).await?;
        let (tmp, file) = self.store.temp_file(layer)?;
        file.set_len(index.layer_size)
            .map_err(AgentError::io(&tmp))?;
        let file = Arc::new(file);
        let layer_label = layer.to_string();

        // Local chunks first; what is not held (or fails its check) is missing.
        let mut reused = 0u64;
        let mut missing: Vec<(u64, u64, Digest)> = Vec::new();
        let mut open: std::collections::HashMap<Digest, std::fs::File> = Default::default();
        for c in index.chunks_with_offsets() {
            let id = c.record.id;
            let len = c.record.compressed_len;
            let local = self
                .store
                .chunk(&id)
                .filter(|l| l.blob != *layer && l.len == len);
            let mut placed = false;
            if let Some(loc) = local {
                if let std::collections::hash_map::Entry::Vacant(e) = open.entry(loc.blob) {
                    if let Ok(f) = std::fs::File::open(self.store.blob_path(&loc.blob)) {
                        e.insert(f);
                    }
                }
                if let Some(src) = open.get(&loc.blob) {
                    let mut buf = vec![0u8; len as usize];
                    if src.read_exact_at(&mut buf, loc.offset).is_ok() && Digest::of(&buf) == id {
                        file.write_all_at(&buf, c.compressed_offset)
                            .map_err(AgentError::io(&tmp))?;
                        reused += len;
                        placed = true;
                    } else {
                        tracing::warn!(chunk = %id, blob = %loc.blob, "held chunk failed its check; fetching it");
                    }
                }
            }
            if !placed {
                missing.push((c.compressed_offset, len, id));
            }
        }
        drop(open);
        self.metrics.reused(self.repo, &layer_label, reused);

        // Missing chunks, coalesced into runs of adjacent chunks.
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
        *requests += runs.len() as u64;
        let fetches: Vec<_> = runs
            .iter()
            .map(|run| {
            let file = file.clone();
            let tmp = tmp.clone();
            let layer_label = layer_label.clone();
            async move {
                let mut got = 0u64;
                for attempt in 0..2 {
                    let bytes = self.range(layer, run.start, run.len).await?;
                    got += bytes.len() as u64;
                    self.metrics
                        .upstream(self.repo, &layer_label, bytes.len() as u64);
                    let bad = run.chunks.iter().find_map(|(off, len, id)| {
                        let actual = Digest::of(&bytes[*off as usize..(*off + *len) as usize]);
                        (actual != *id).then_some((*id, actual))
                    });
                    match bad {
                        None => {
                            file.write_all_at(&bytes, run.start)
                                .map_err(AgentError::io(&tmp))?;
                            return Ok::<u64, AgentError>(got);
                        }
                        Some((expected, actual)) => {
                            self.metrics.verification_failure();
                            if attempt == 1 {
                                return Err(AgentError::Corrupt {
                                    what: format!(
                                        "chunk of layer {layer} at offset {}",
                                        run.start
                                    ),
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
        })
            .collect();
        let results: Vec<u64> = stream::iter(fetches)
            .buffer_unordered(self.jobs.max(1))
            .try_collect()
            .await
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
        fetched += results.iter().sum::<u64>();
        file.sync_all().map_err(AgentError::io(&tmp))?;
        drop(file);
        self.store.commit(&tmp, layer, Some(index.layer_size))?;
        self.store.record_layer(index_digest, &index)?;
        Ok((fetched, reused))
    }

    /// `len` bytes of `layer` from `start` with one single-range request; a 200 answer
    /// (the server ignored Range) is cut down to the range.
    async fn range(&self, layer: &Digest, start: u64, len: u64) -> Result<Bytes, AgentError> {
        let path = self.blob_path(layer);
        let url = format!("{}{path}", self.up.url);
        let end = start + len - 1;
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
        let mut out = BytesMut::with_capacity(len as usize);
        let mut skip = skip;
        let mut stream = resp.bytes_stream();
        while let Some(item) = stream.next().await {
            let mut chunk = item.map_err(|e| AgentError::Upstream {
                url: url.clone(),
                message: describe(&e),
            })?;
            if skip > 0 {
                let n = skip.min(chunk.len() as u64) as usize;
                skip -= n as u64;
                chunk = chunk.slice(n..);
            }
            let want = len as usize - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(want)]);
            if out.len() == len as usize {
                break;
            }
        }
        if out.len() as u64 != len {
            return Err(AgentError::Upstream {
                url,
                message: format!("range {start}+{len}: only {} bytes received", out.len()),
            });
        }
        Ok(out.freeze())
    }
}

async fn read_body(resp: reqwest::Response, max: usize, url: &str) -> Result<Bytes, AgentError> {
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        let chunk = item.map_err(|e| AgentError::Upstream {
            url: url.to_string(),
            message: describe(&e),
        })?;
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
