//! Parsing of `/v2/...` request paths into API routes.
//!
//! Repository names contain slashes, so routes are recognised from the end of the path
//! (`.../manifests/<reference>`, `.../blobs/uploads/<id>`, ...) and the rest is the name,
//! which is then checked against the name grammar.

use gantry_oci::names::valid_repository;

/// One endpoint of the Distribution API, with the path parameters it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags {
        /// Repository.
        name: String,
    },
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        /// Repository.
        name: String,
        /// Tag or digest, unparsed.
        reference: String,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob {
        /// Repository.
        name: String,
        /// Digest, unparsed.
        digest: String,
    },
    /// `/v2/<name>/blobs/uploads/` (start an upload)
    UploadStart {
        /// Repository.
        name: String,
    },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload {
        /// Repository.
        name: String,
        /// Upload session id.
        id: String,
    },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        /// Repository.
        name: String,
        /// Subject digest, unparsed.
        digest: String,
    },
    /// `/v2/<name>/chunks/lookup` (delta push v2: where the repository holds chunks)
    ChunkLookup {
        /// Repository.
        name: String,
    },
}

/// Why a `/v2/...` path is not a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The path has the shape of a route but the repository name breaks the grammar.
    NameInvalid(String),
    /// No route has this shape.
    NotFound,
}

impl Route {
    /// The repository the route is about, if any.
    pub fn repository(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. }
            | Route::ChunkLookup { name } => Some(name),
        }
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags { .. } => "tags",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } | Route::Upload { .. } => "blob_upload",
            Route::Referrers { .. } => "referrers",
            Route::ChunkLookup { .. } => "chunk_lookup",
        }
    }
}

/// Parses a request path (without query) that starts with `/v2`.
pub fn parse(path: &str) -> Result<Route, RouteError> {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Ok(Route::Base),
        Some(rest) => rest.strip_prefix('/').ok_or(RouteError::NotFound)?,
        None => return Err(RouteError::NotFound),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let named = |name: &str| -> Result<String, RouteError> {
        if valid_repository(name) {
            Ok(name.to_string())
        } else {
            Err(RouteError::NameInvalid(name.to_string()))
        }
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags { name: named(name)? });
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads/") {
        return Ok(Route::UploadStart { name: named(name)? });
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return Ok(Route::UploadStart { name: named(name)? });
    }
    // `<name>/<keyword>/<last>` where `<last>` has no slash.
    let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
    if last.is_empty() {
        return Err(RouteError::NotFound);
    }
    if let Some(name) = rest.strip_suffix(gantry_oci::delta_push::LOOKUP_PATH_SUFFIX) {
        return Ok(Route::ChunkLookup { name: named(name)? });
    }
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Ok(Route::Upload {
            name: named(name)?,
            id: last.to_string(),
        });
    }
    let (name, keyword) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
    match keyword {
        "manifests" => Ok(Route::Manifest {
            name: named(name)?,
            reference: last.to_string(),
        }),
        "blobs" => Ok(Route::Blob {
            name: named(name)?,
            digest: last.to_string(),
        }),
        "referrers" => Ok(Route::Referrers {
            name: named(name)?,
            digest: last.to_string(),
        }),
        _ => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_every_route() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Route::Catalog));
        assert_eq!(
            parse("/v2/a/b/c/tags/list"),
            Ok(Route::Tags {
                name: "a/b/c".into()
            })
        );
        assert_eq!(
            parse("/v2/studio/game/manifests/v1"),
            Ok(Route::Manifest {
                name: "studio/game".into(),
                reference: "v1".into()
            })
        );
        assert_eq!(
            parse("/v2/x/blobs/sha256:abc"),
            Ok(Route::Blob {
                name: "x".into(),
                digest: "sha256:abc".into()
            })
        );
        assert_eq!(
            parse("/v2/x/y/blobs/uploads/"),
            Ok(Route::UploadStart { name: "x/y".into() })
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads/1234"),
            Ok(Route::Upload {
                name: "x".into(),
                id: "1234".into()
            })
        );
        assert_eq!(
            parse("/v2/x/referrers/sha256:abc"),
            Ok(Route::Referrers {
                name: "x".into(),
                digest: "sha256:abc".into()
            })
        );
    }

    #[test]
    fn the_chunk_lookup() {
        assert_eq!(
            parse("/v2/studio/game/chunks/lookup"),
            Ok(Route::ChunkLookup {
                name: "studio/game".into()
            })
        );
        assert_eq!(
            parse("/v2/a/chunks/manifests/lookup"),
            Ok(Route::Manifest {
                name: "a/chunks".into(),
                reference: "lookup".into()
            })
        );
        assert!(parse("/v2/A/chunks/lookup").is_err());
    }

    #[test]
    fn names_that_look_like_keywords() {
        // A repository may be called "blobs" or "manifests".
        assert_eq!(
            parse("/v2/blobs/manifests/manifests/latest"),
            Ok(Route::Manifest {
                name: "blobs/manifests".into(),
                reference: "latest".into()
            })
        );
        assert_eq!(
            parse("/v2/tags/blobs/uploads/"),
            Ok(Route::UploadStart {
                name: "tags".into()
            })
        );
    }

    #[test]
    fn rejects_bad_names_and_shapes() {
        assert_eq!(
            parse("/v2/UPPER/manifests/x"),
            Err(RouteError::NameInvalid("UPPER".into()))
        );
        assert_eq!(
            parse("/v2/../etc/manifests/x"),
            Err(RouteError::NameInvalid("../etc".into()))
        );
        assert_eq!(parse("/v2/x/manifests/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/x/other/y"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v3/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/manifests/x"), Err(RouteError::NotFound));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "/v2[a-z0-9/_:.-]{0,60}") {
            if let Ok(route) = parse(&s) {
                if let Some(name) = route.repository() {
                    proptest::prop_assert!(valid_repository(name));
                }
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }
    }
}
