//! The image a workload runs, as written by the user and, once known, pinned to its manifest
//! digest: pods of one rollout then run the same bytes whatever the tag does meanwhile.

use gantry_oci::{Digest, Reference};

use crate::error::{DeployError, DeployResult};

/// An image reference for a pod spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployImage {
    /// The repository as written, without tag or digest (`reg.example/studio/game`).
    pub repository: String,
    /// The tag as written, if any.
    pub tag: Option<String>,
    /// The manifest digest, if written (`@sha256:…`) or resolved.
    pub digest: Option<Digest>,
    /// The parsed reference (registry host, normalized repository), for resolving.
    pub reference: Reference,
}

impl DeployImage {
    /// Parses `[http://|https://]host/repo[:tag][@sha256:…]`; the scheme only says how the
    /// registry is reached and is not part of what pods run.
    pub fn parse(input: &str) -> DeployResult<DeployImage> {
        let text = input
            .strip_prefix("http://")
            .or_else(|| input.strip_prefix("https://"))
            .unwrap_or(input);
        let reference: Reference = text
            .parse()
            .map_err(|e| DeployError::invalid(format!("--image {input:?}"), format!("{e}")))?;
        let without_digest = text.split_once('@').map(|(r, _)| r).unwrap_or(text);
        let (repository, tag) = match without_digest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), Some(tag.to_string())),
            _ => (without_digest.to_string(), None),
        };
        Ok(DeployImage {
            repository,
            tag,
            digest: reference.digest,
            reference,
        })
    }

    /// The same image pinned to `digest`.
    pub fn pinned(mut self, digest: Digest) -> DeployImage {
        self.digest = Some(digest);
        self.reference = self.reference.with_digest(digest);
        self
    }

    /// Whether pods get the image by digest.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// What the pod spec's `image` says: `repo@sha256:…` when pinned, else as written.
    pub fn pod_image(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.repository),
            (None, Some(t)) => format!("{}:{t}", self.repository),
            (None, None) => self.repository.clone(),
        }
    }

    /// The human reference (`repo:tag`), kept in `GANTRY_IMAGE` and an annotation when the
    /// pod spec names the digest; `repo@sha256:…` when no tag was written.
    pub fn tagged(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.repository),
            (None, Some(d)) => format!("{}@{d}", self.repository),
            (None, None) => self.repository.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tag_only_renders_as_written() {
        let i = DeployImage::parse("http://127.0.0.1:5000/studio/game:v2").unwrap();
        assert_eq!(i.repository, "127.0.0.1:5000/studio/game");
        assert_eq!(i.tag.as_deref(), Some("v2"));
        assert!(!i.is_pinned());
        assert_eq!(i.pod_image(), "127.0.0.1:5000/studio/game:v2");
        assert_eq!(i.reference.registry, "127.0.0.1:5000");
    }

    #[test]
    fn digest_pins_without_network_and_keeps_the_tag() {
        let i = DeployImage::parse(&format!("reg.example/studio/game:v2@{D}")).unwrap();
        assert!(i.is_pinned());
        assert_eq!(i.pod_image(), format!("reg.example/studio/game@{D}"));
        assert_eq!(i.tagged(), "reg.example/studio/game:v2");
        let bare = DeployImage::parse(&format!("reg.example/studio/game@{D}")).unwrap();
        assert_eq!(bare.tagged(), format!("reg.example/studio/game@{D}"));
    }

    #[test]
    fn pinning_a_resolved_digest() {
        let d: Digest = D.parse().unwrap();
        let i = DeployImage::parse("game:v1").unwrap().pinned(d);
        assert_eq!(i.pod_image(), format!("game@{D}"));
        assert_eq!(i.tagged(), "game:v1");
        assert_eq!(i.reference.registry, "docker.io");
    }

    #[test]
    fn bad_references_name_the_flag() {
        let err = DeployImage::parse("UPPER/x").unwrap_err().to_string();
        assert!(err.contains("--image"), "{err}");
    }
}
