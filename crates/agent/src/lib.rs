//! `gantry agent`: the node-side registry mirror containerd pulls through
//! (`/etc/containerd/certs.d/<registry>/hosts.toml`).
//!
//! It hands containerd the exact layer blobs the manifest names, so digests, containerd
//! and kubelet are unchanged, but builds each blob it does not hold from chunks the node
//! already has (in any earlier layer) plus only the missing chunks, fetched from the
//! registry with single-range requests. Every chunk is checked against its sha256 before a
//! byte of it is served, and every blob against its digest before its last byte is.
//!
//! - [`store`]: verified blobs on disk, the chunk map, LRU eviction, crash safety.
//! - [`upstream`]: the registries behind the agent; requests carry the client's own
//!   `Authorization`, so the registry decides who may read what.
//! - [`assemble`]: delta assembly of a layer from its chunk index.
//! - [`partial`]: a blob being assembled, served and hashed while it is written.
//! - [`server`]: the pull side of the Distribution API for containerd, `/metrics`, `/status`.
//! - [`hosts`]: containerd `hosts.toml` for the agent.

pub mod assemble;
pub mod error;
pub mod hosts;
pub mod metrics;
pub mod partial;
pub mod server;
pub mod store;
pub mod upstream;

pub use error::AgentError;
pub use server::{bind, AgentConfig, RunningAgent};
pub use store::Store;
pub use upstream::{UpstreamLimits, UpstreamSpec};
