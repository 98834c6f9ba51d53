//! The authorization hook. Every API request is checked against the [`Authorizer`] of the
//! [`crate::Registry`] before it is handled; the default allows everything.

use async_trait::async_trait;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs and manifests, mount blobs into the repository.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
    /// Report the status of game servers running the repository's images to the fleet view
    /// (`POST /gantry/v1/fleet/events`, see [`crate::fleet`]).
    Report,
}

impl Action {
    /// The action's name in Docker token scopes (`pull`, `push`, `delete`, `report`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Report => "report",
        }
    }
}

/// One permission a request needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Access {
    /// An action on a repository.
    Repository {
        /// Repository name.
        name: String,
        /// What is done to it.
        action: Action,
    },
    /// Listing every repository (`/v2/_catalog`).
    Catalog,
}

/// Who made a request, as the authorizer established it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The authenticated user, `None` for anonymous requests.
    pub user: Option<String>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No (valid) credentials: answered 401 with the challenge as `WWW-Authenticate`.
    #[error("authentication required")]
    Unauthorized {
        /// `WWW-Authenticate` value, e.g. `Bearer realm="...",service="...",scope="..."`.
        challenge: Option<String>,
    },
    /// Authenticated but not allowed: answered 403.
    #[error("access denied")]
    Denied,
    /// The credentials could not be checked for load (too many password checks queued):
    /// answered 503 with `Retry-After`.
    #[error("too busy to check credentials; retry in {retry_after:?}")]
    Busy {
        /// How long the client should wait.
        retry_after: std::time::Duration,
    },
}

/// Decides whether a request may do what it asks. `access` is empty for `/v2/` (which
/// only checks that the caller is authenticated, if the authorizer requires that).
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Authorizes `access` for the request with these headers and URI.
    async fn authorize(
        &self,
        request: &http::request::Parts,
        access: &[Access],
    ) -> Result<Principal, AuthError>;
}

/// Allows every request, anonymously.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn authorize(
        &self,
        _request: &http::request::Parts,
        _access: &[Access],
    ) -> Result<Principal, AuthError> {
        Ok(Principal::default())
    }
}
