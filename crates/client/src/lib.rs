//! Gantry's registry client: everything that talks to an OCI registry or an OCI image
//! layout on disk as a source or destination of images.
//!
//! - [`credentials`]: Docker's `config.json` (`auths`, `credsStore`, `credHelpers`), so a
//!   `docker login` works for Gantry and the reverse.
//! - [`auth`]: Basic and Docker token auth from `WWW-Authenticate` challenges.
//! - [`registry`]: one registry over the Distribution API (retries, verified downloads,
//!   resumable and delta uploads, Range reads, referrers).
//! - [`layout`]: OCI image layouts on disk, written atomically.
//! - [`push`] and [`pull`]: images between layouts and registries, and between two
//!   registries without a layout ([`copy_image`]).

pub mod auth;
pub mod credentials;
pub mod diff;
pub mod error;
pub mod layout;
pub mod progress;
pub mod pull;
pub mod push;
pub mod registry;

pub use error::{ClientError, ClientResult};
pub use layout::{LayoutWriter, OciLayout, ResolvedManifest};
pub use progress::{BlobOutcome, NoProgress, TransferProgress};
pub use pull::{copy_layout, pull_to_layout, resolve_image, PullOptions, PullReport, RemoteImage};
pub use push::{copy_image, push_from_source, push_layout, PushOptions, PushReport};
pub use registry::{
    BlobRange, BlobSource, Capabilities, ClientOptions, DeltaOp, FetchedManifest, RegistryClient,
    UploadSource, UploadStart,
};
