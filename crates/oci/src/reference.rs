use crate::digest::Digest;
use crate::names::{valid_repository, valid_tag};
use std::fmt;
use std::str::FromStr;

/// The registry a reference without a host names, as in Docker.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// An image reference, `[host[:port]/]repository[:tag][@sha256:…]`, parsed
/// with Docker's rules: the first path component is a host when it contains
/// `.` or `:` or is `localhost`; a bare Docker Hub name gets `library/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port, e.g. `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `studio/multiplayersample`.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given; it wins over the tag when both are present.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing to parse.
    #[error("empty image reference")]
    Empty,
    /// A path component breaks the repository name grammar.
    #[error("image reference {reference:?}: invalid repository name {repository:?} (lowercase letters, digits and . _ - separators, components split by /)")]
    Repository {
        reference: String,
        repository: String,
    },
    /// The tag breaks the tag grammar.
    #[error("image reference {reference:?}: invalid tag {tag:?} (up to 128 of [A-Za-z0-9_.-], not starting with . or -)")]
    Tag { reference: String, tag: String },
    /// The part after `@` is not a digest.
    #[error("image reference {reference:?}: {source}")]
    Digest {
        reference: String,
        #[source]
        source: crate::digest::DigestError,
    },
    /// The host part is malformed.
    #[error("image reference {reference:?}: invalid registry host {host:?}")]
    Host { reference: String, host: String },
}

impl Reference {
    /// The tag to use when none was given and no digest pins the image.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same image pinned to `digest` (the tag is kept for readability).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let reference = input.to_string();
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest {
                        reference: reference.clone(),
                        source,
                    })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder)
            }
            _ => (DEFAULT_REGISTRY.to_string(), rest),
        };
        if !valid_host(&registry) {
            return Err(ReferenceError::Host {
                reference,
                host: registry,
            });
        }
        // A tag is the part after the last ':' that is not followed by '/'.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), Some(tag.to_string())),
            _ => (path.to_string(), None),
        };
        if let Some(tag) = &tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::Tag {
                    reference,
                    tag: tag.clone(),
                });
            }
        }
        // Checked after Docker Hub's `library/` is added: the name the registry sees must
        // obey the grammar and its length bound too.
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_repository(&repository) {
            return Err(ReferenceError::Repository {
                reference,
                repository,
            });
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_short_names() {
        let r = parse("ubuntu:18.04");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/ubuntu", Some("18.04"))
        );
        assert_eq!(parse("studio/game").repository, "studio/game");
    }

    /// Found by the `reference` fuzz target (input kept in fuzz/corpus/reference): a bare
    /// name of 250 characters was accepted, and `library/` made it 258, past the 255 a
    /// repository name may have.
    #[test]
    fn a_short_name_too_long_once_library_is_added_is_refused() {
        let name = "a".repeat(crate::names::MAX_NAME_LEN - 4);
        assert!(matches!(
            name.parse::<Reference>(),
            Err(ReferenceError::Repository { .. })
        ));
        let fits = "a".repeat(crate::names::MAX_NAME_LEN - "library/".len());
        assert_eq!(
            fits.parse::<Reference>().unwrap().repository,
            format!("library/{fits}")
        );
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let d = Digest::of(b"m");
        let r = parse(&format!("127.0.0.1:5000/studio/game:v2@{d}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "studio/game");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.digest, Some(d));
        assert_eq!(r.manifest_key(), d.to_string());
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/studio/game:v2@{d}"));
        let r = parse("localhost/game");
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("localhost", None));
        assert_eq!(r.manifest_key(), "latest");
        let r = parse("registry.example.com:443/a/b/c");
        assert_eq!(r.repository, "a/b/c");
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "Upper/case",
            "repo:",
            "repo:-tag",
            "a//b",
            "repo@sha256:xyz",
            "bad_host:99999999/x",
            "-lead",
            "x/y_",
        ] {
            assert!(
                bad.parse::<Reference>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn separators_follow_distribution_grammar() {
        assert!(valid_repository("a.b_c__d---e/f"));
        assert!(!valid_repository("a___b"));
        assert!(!valid_repository("a..b"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_display_round_trips(s in "[a-z0-9:/@._-]{0,40}") {
            if let Ok(r) = s.parse::<Reference>() {
                let again: Reference = r.to_string().parse().unwrap();
                proptest::prop_assert_eq!(again, r);
            }
        }
    }
}
