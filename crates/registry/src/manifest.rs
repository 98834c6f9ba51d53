//! Validation of pushed manifests: JSON shape, media type, descriptors, and what a manifest
//! references (blobs, child manifests, subject).

use gantry_oci::{media_types, Digest};
use serde_json::{Map, Value};

/// Manifest media types the registry accepts.
pub const ACCEPTED_MEDIA_TYPES: [&str; 4] = [
    media_types::OCI_MANIFEST,
    media_types::OCI_INDEX,
    media_types::DOCKER_MANIFEST,
    media_types::DOCKER_MANIFEST_LIST,
];

/// A content descriptor inside a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Whether the descriptor lists external `urls` (a non-distributable layer the
    /// registry need not hold).
    pub external: bool,
}

/// A manifest that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest's media type (one of [`ACCEPTED_MEDIA_TYPES`]).
    pub media_type: String,
    /// For image manifests: the config descriptor.
    pub config: Option<Descriptor>,
    /// For image manifests: the layers.
    pub layers: Vec<Descriptor>,
    /// For indexes: the child manifests.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 `subject`).
    pub subject: Option<Descriptor>,
    /// `artifactType` as the referrers API reports it: the manifest's own, else (image
    /// manifests only) the config's media type.
    pub artifact_type: Option<String>,
    /// The manifest's annotations.
    pub annotations: Option<Map<String, Value>>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not a JSON object.
    #[error("manifest is not a JSON object: {0}")]
    Json(String),
    /// `schemaVersion` is missing or not 2.
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    /// The media type is not one the registry accepts.
    #[error("unsupported manifest media type {0:?} (accepted: OCI image manifest and index, Docker schema 2 manifest and manifest list)")]
    MediaType(String),
    /// The body's `mediaType` disagrees with the `Content-Type` header.
    #[error("manifest mediaType {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch {
        /// `mediaType` field.
        body: String,
        /// `Content-Type` header.
        header: String,
    },
    /// A field has the wrong type or is missing.
    #[error("manifest field {0}")]
    Field(String),
}

/// The media type part of a `Content-Type` header value (parameters dropped, lowercased).
pub fn bare_media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Parses and validates a manifest body pushed with `content_type`.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ManifestError::Json("top level is not an object".into()));
    };
    if obj.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let body_type = match obj.get("mediaType") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ManifestError::Field("mediaType is not a string".into())),
    };
    let header_type = content_type
        .map(bare_media_type)
        .filter(|t| ACCEPTED_MEDIA_TYPES.contains(&t.as_str()));
    let media_type = match (body_type, header_type) {
        (Some(body), Some(header)) if body != header => {
            return Err(ManifestError::MediaTypeMismatch { body, header })
        }
        (Some(body), _) => body,
        (None, Some(header)) => header,
        // Neither says: infer the OCI type from the shape.
        (None, None) if obj.contains_key("manifests") => media_types::OCI_INDEX.to_string(),
        (None, None) => media_types::OCI_MANIFEST.to_string(),
    };
    if !ACCEPTED_MEDIA_TYPES.contains(&media_type.as_str()) {
        return Err(ManifestError::MediaType(media_type));
    }
    let artifact_type = match obj.get("artifactType") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ManifestError::Field("artifactType is not a string".into())),
    };
    let annotations = match obj.get("annotations") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            if m.values().any(|v| !v.is_string()) {
                return Err(ManifestError::Field(
                    "annotations values must be strings".into(),
                ));
            }
            Some(m.clone())
        }
        Some(_) => return Err(ManifestError::Field("annotations is not an object".into())),
    };
    let subject = match obj.get("subject") {
        None | Some(Value::Null) => None,
        Some(v) => Some(descriptor("subject", v)?),
    };
    let mut manifest = Manifest {
        media_type: media_type.clone(),
        config: None,
        layers: Vec::new(),
        manifests: Vec::new(),
        subject,
        artifact_type: artifact_type.clone(),
        annotations,
    };
    if media_types::is_index(&media_type) {
        if obj.contains_key("config") || obj.contains_key("layers") {
            return Err(ManifestError::Field(
                "config/layers are not allowed in an index".into(),
            ));
        }
        let list = obj
            .get("manifests")
            .ok_or_else(|| ManifestError::Field("manifests is missing".into()))?;
        manifest.manifests = descriptor_list("manifests", list)?;
    } else {
        if obj.contains_key("manifests") {
            return Err(ManifestError::Field(
                "manifests is not allowed in an image manifest".into(),
            ));
        }
        let config = obj
            .get("config")
            .ok_or_else(|| ManifestError::Field("config is missing".into()))?;
        let config = descriptor("config", config)?;
        manifest.layers = match obj.get("layers") {
            Some(v) => descriptor_list("layers", v)?,
            None if media_type == media_types::DOCKER_MANIFEST => {
                return Err(ManifestError::Field("layers is missing".into()))
            }
            None => Vec::new(),
        };
        if artifact_type.is_none() {
            manifest.artifact_type = Some(config.media_type.clone());
        }
        manifest.config = Some(config);
    }
    Ok(manifest)
}

fn descriptor_list(field: &str, value: &Value) -> Result<Vec<Descriptor>, ManifestError> {
    let Value::Array(items) = value else {
        return Err(ManifestError::Field(format!("{field} is not an array")));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| descriptor(&format!("{field}[{i}]"), v))
        .collect()
}

fn descriptor(field: &str, value: &Value) -> Result<Descriptor, ManifestError> {
    let Value::Object(obj) = value else {
        return Err(ManifestError::Field(format!(
            "{field} is not a descriptor object"
        )));
    };
    let media_type = obj
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| ManifestError::Field(format!("{field}.mediaType is missing")))?;
    let digest = obj
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| ManifestError::Field(format!("{field}.digest is missing")))?;
    let digest: Digest = digest
        .parse()
        .map_err(|e| ManifestError::Field(format!("{field}.digest: {e}")))?;
    let size = obj.get("size").and_then(Value::as_u64).ok_or_else(|| {
        ManifestError::Field(format!("{field}.size must be a non-negative integer"))
    })?;
    let external = match obj.get("urls") {
        None | Some(Value::Null) => false,
        Some(Value::Array(urls)) => {
            if urls.iter().any(|u| !u.is_string()) {
                return Err(ManifestError::Field(format!(
                    "{field}.urls must be strings"
                )));
            }
            !urls.is_empty()
        }
        Some(_) => {
            return Err(ManifestError::Field(format!(
                "{field}.urls is not an array"
            )))
        }
    };
    Ok(Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        external,
    })
}

impl Manifest {
    /// Blobs the registry must hold in the repository before accepting the manifest: the
    /// config and every layer that is not external.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter())
            .filter(|d| !d.external)
    }

    /// The descriptor the referrers API lists for this manifest, as JSON.
    pub fn referrer_descriptor(&self, digest: &Digest, size: u64) -> Value {
        let mut d = Map::new();
        d.insert("mediaType".into(), Value::String(self.media_type.clone()));
        d.insert("digest".into(), Value::String(digest.to_string()));
        d.insert("size".into(), Value::from(size));
        if let Some(t) = &self.artifact_type {
            d.insert("artifactType".into(), Value::String(t.clone()));
        }
        if let Some(a) = &self.annotations {
            if !a.is_empty() {
                d.insert("annotations".into(), Value::Object(a.clone()));
            }
        }
        Value::Object(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(s: &str) -> String {
        Digest::of(s.as_bytes()).to_string()
    }

    fn image() -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {"mediaType": media_types::OCI_CONFIG, "digest": d("c"), "size": 1},
            "layers": [
                {"mediaType": media_types::OCI_LAYER_GZIP, "digest": d("l"), "size": 2},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                 "digest": d("f"), "size": 3, "urls": ["https://example.invalid/x"]}
            ],
            "annotations": {"a": "b"}
        })
    }

    #[test]
    fn image_manifest() {
        let bytes = serde_json::to_vec(&image()).unwrap();
        let m = parse(
            &bytes,
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
        )
        .unwrap();
        assert_eq!(m.media_type, media_types::OCI_MANIFEST);
        assert_eq!(m.required_blobs().count(), 2, "external layer skipped");
        assert_eq!(m.artifact_type.as_deref(), Some(media_types::OCI_CONFIG));
        let desc = m.referrer_descriptor(&Digest::of(&bytes), 5);
        assert_eq!(desc["annotations"]["a"], "b");
        assert_eq!(desc["size"], 5);
    }

    #[test]
    fn index_with_subject_and_artifact_type() {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "artifactType": "application/x-test",
            "manifests": [{"mediaType": media_types::OCI_MANIFEST, "digest": d("m"), "size": 9}],
            "subject": {"mediaType": media_types::OCI_MANIFEST, "digest": d("s"), "size": 4}
        });
        let m = parse(&serde_json::to_vec(&v).unwrap(), None).unwrap();
        assert_eq!(m.manifests.len(), 1);
        assert_eq!(m.subject.unwrap().digest, Digest::of(b"s"));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-test"));
    }

    #[test]
    fn media_type_from_header_or_shape() {
        let mut v = image();
        v.as_object_mut().unwrap().remove("mediaType");
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            parse(&bytes, Some(media_types::DOCKER_MANIFEST))
                .unwrap()
                .media_type,
            media_types::DOCKER_MANIFEST
        );
        assert_eq!(
            parse(&bytes, None).unwrap().media_type,
            media_types::OCI_MANIFEST
        );
        assert_eq!(
            parse(&bytes, Some("application/json")).unwrap().media_type,
            media_types::OCI_MANIFEST
        );
    }

    #[test]
    fn refusals() {
        let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
            (b"not json".to_vec(), None),
            (b"[]".to_vec(), None),
            (b"{}".to_vec(), None),
            (br#"{"schemaVersion":1}"#.to_vec(), None),
            (
                serde_json::to_vec(&image()).unwrap(),
                Some(media_types::DOCKER_MANIFEST),
            ),
            (
                br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#.to_vec(),
                None,
            ),
            (br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.to_vec(), None),
            (
                serde_json::to_vec(&json!({"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:zz","size":1}})).unwrap(),
                None,
            ),
            (
                serde_json::to_vec(&json!({"schemaVersion":2,"config":{"mediaType":"x","digest":d("c"),"size":-1}})).unwrap(),
                None,
            ),
            (
                serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":media_types::OCI_INDEX,"manifests":{}})).unwrap(),
                None,
            ),
            (
                serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":media_types::OCI_INDEX})).unwrap(),
                None,
            ),
            (
                serde_json::to_vec(&json!({"schemaVersion":2,"config":{"mediaType":"x","digest":d("c"),"size":1},"annotations":{"a":1}})).unwrap(),
                None,
            ),
        ];
        for (bytes, ct) in cases {
            assert!(
                parse(&bytes, ct).is_err(),
                "{} with {ct:?} should be refused",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&bytes, None);
        }

        #[test]
        fn arbitrary_json_manifests_never_panic(
            schema in proptest::option::of(-3i64..5),
            mt in proptest::option::of(proptest::sample::select(vec![
                media_types::OCI_MANIFEST, media_types::OCI_INDEX, media_types::DOCKER_MANIFEST,
                media_types::DOCKER_MANIFEST_LIST, "text/plain", ""])),
            digest in "(sha256:[0-9a-f]{0,64})|[a-z:]{0,10}",
            size in proptest::prelude::any::<i64>(),
            with_config in proptest::prelude::any::<bool>(),
            with_layers in proptest::prelude::any::<bool>(),
            with_manifests in proptest::prelude::any::<bool>(),
            with_subject in proptest::prelude::any::<bool>(),
            ct in proptest::option::of("[a-z/.+;= -]{0,40}"),
        ) {
            let desc = json!({"mediaType": "x", "digest": digest, "size": size});
            let mut obj = Map::new();
            if let Some(s) = schema { obj.insert("schemaVersion".into(), json!(s)); }
            if let Some(m) = mt { obj.insert("mediaType".into(), json!(m)); }
            if with_config { obj.insert("config".into(), desc.clone()); }
            if with_layers { obj.insert("layers".into(), json!([desc.clone(), 7])); }
            if with_manifests { obj.insert("manifests".into(), json!([desc.clone()])); }
            if with_subject { obj.insert("subject".into(), desc); }
            let bytes = serde_json::to_vec(&Value::Object(obj)).unwrap();
            if let Ok(m) = parse(&bytes, ct.as_deref()) {
                proptest::prop_assert!(ACCEPTED_MEDIA_TYPES.contains(&m.media_type.as_str()));
            }
        }

        #[test]
        fn arbitrary_json_documents_never_panic(
            doc in json_document(),
            ct in proptest::option::of(content_type()),
        ) {
            let bytes = serde_json::to_vec(&doc).unwrap();
            check_invariants(&bytes, ct.as_deref())?;
        }

        #[test]
        fn mutated_valid_manifests_never_panic(
            edits in proptest::collection::vec(edit(), 1..8),
            index in proptest::prelude::any::<bool>(),
            ct in proptest::option::of(content_type()),
        ) {
            let base = if index { index_value() } else { image() };
            let mut bytes = serde_json::to_vec_pretty(&base).unwrap();
            for e in edits {
                apply(&mut bytes, e);
            }
            check_invariants(&bytes, ct.as_deref())?;
        }

        #[test]
        fn arbitrary_text_bodies_never_panic(
            text in "\\PC{0,300}",
            ct in proptest::option::of("\\PC{0,60}"),
        ) {
            check_invariants(text.as_bytes(), ct.as_deref())?;
            if let Some(ct) = &ct {
                let bare = bare_media_type(ct);
                proptest::prop_assert!(!bare.contains(';'));
                proptest::prop_assert_eq!(bare.trim(), bare.as_str());
            }
        }
    }

    use proptest::prelude::{prop_oneof, BoxedStrategy, Just, Strategy};

    /// Keys the parser looks at, plus noise, so that generated objects reach every branch.
    fn key() -> BoxedStrategy<String> {
        prop_oneof![
            3 => proptest::sample::select(vec![
                "schemaVersion", "mediaType", "config", "layers", "manifests", "subject",
                "artifactType", "annotations", "digest", "size", "urls",
            ])
            .prop_map(str::to_string),
            1 => "[a-zA-Z]{0,8}",
        ]
        .boxed()
    }

    fn leaf() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            proptest::prelude::any::<bool>().prop_map(Value::from),
            proptest::prelude::any::<i64>().prop_map(Value::from),
            proptest::prelude::any::<u64>().prop_map(Value::from),
            proptest::prelude::any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            Just(json!(2)),
            Just(json!(-1)),
            proptest::sample::select(ACCEPTED_MEDIA_TYPES.to_vec()).prop_map(Value::from),
            "[0-9a-f]{64}".prop_map(|h| Value::from(format!("sha256:{h}"))),
            "(sha256|sha512|md5)?:?[0-9a-fA-FxZ]{0,70}".prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
        ]
        .boxed()
    }

    /// Arbitrary JSON, nested up to a few levels, biased towards manifest shapes.
    fn json_document() -> BoxedStrategy<Value> {
        leaf()
            .prop_recursive(5, 64, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::vec((key(), inner), 0..8)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
            .boxed()
    }

    fn content_type() -> BoxedStrategy<String> {
        prop_oneof![
            proptest::sample::select(ACCEPTED_MEDIA_TYPES.to_vec()).prop_map(str::to_string),
            proptest::sample::select(ACCEPTED_MEDIA_TYPES.to_vec())
                .prop_map(|t| format!(" {} ; charset=utf-8", t.to_uppercase())),
            "\\PC{0,40}",
        ]
        .boxed()
    }

    #[derive(Debug, Clone, Copy)]
    enum Edit {
        Truncate(usize),
        Set(usize, u8),
        Insert(usize, u8),
        Remove(usize),
    }

    fn edit() -> BoxedStrategy<Edit> {
        use proptest::prelude::any;
        let interesting = proptest::sample::select(b"{}[]\",:0123456789-.eE\\ ntfu\xff".to_vec());
        let byte = prop_oneof![any::<u8>(), interesting];
        prop_oneof![
            any::<usize>().prop_map(Edit::Truncate),
            (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
            (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Remove),
        ]
        .boxed()
    }

    fn apply(bytes: &mut Vec<u8>, e: Edit) {
        if bytes.is_empty() {
            return;
        }
        let at = |i: usize| i % bytes.len();
        match e {
            Edit::Truncate(i) => {
                let n = at(i);
                bytes.truncate(n);
            }
            Edit::Set(i, b) => {
                let n = at(i);
                bytes[n] = b;
            }
            Edit::Insert(i, b) => {
                let n = at(i);
                bytes.insert(n, b);
            }
            Edit::Remove(i) => {
                let n = at(i);
                bytes.remove(n);
            }
        }
    }

    fn index_value() -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": [{"mediaType": media_types::OCI_MANIFEST, "digest": d("m"), "size": 9,
                           "platform": {"os": "linux", "architecture": "amd64"}}],
            "subject": {"mediaType": media_types::OCI_MANIFEST, "digest": d("s"), "size": 4},
            "annotations": {"k": "v"}
        })
    }

    /// Parsing never panics, and what it accepts is consistent.
    fn check_invariants(
        bytes: &[u8],
        ct: Option<&str>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let Ok(m) = parse(bytes, ct) else {
            return Ok(());
        };
        proptest::prop_assert!(ACCEPTED_MEDIA_TYPES.contains(&m.media_type.as_str()));
        if media_types::is_index(&m.media_type) {
            proptest::prop_assert!(m.config.is_none() && m.layers.is_empty());
        } else {
            proptest::prop_assert!(m.config.is_some() && m.manifests.is_empty());
            proptest::prop_assert!(m.artifact_type.is_some());
        }
        proptest::prop_assert!(m.required_blobs().all(|d| !d.external));
        let digest = Digest::of(bytes);
        let desc = m.referrer_descriptor(&digest, bytes.len() as u64);
        let shown = digest.to_string();
        proptest::prop_assert_eq!(desc["digest"].as_str(), Some(shown.as_str()));
        proptest::prop_assert_eq!(desc["mediaType"].as_str(), Some(m.media_type.as_str()));
        // The accepted body is valid JSON whose top level is an object with schemaVersion 2.
        let v: Value = serde_json::from_slice(bytes).unwrap();
        proptest::prop_assert_eq!(v["schemaVersion"].as_i64(), Some(2));
        Ok(())
    }

    #[test]
    fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
        for depth in [1_000, 100_000] {
            let mut body = String::from(r#"{"schemaVersion":2,"annotations":"#);
            body.push_str(&"[".repeat(depth));
            body.push_str(&"]".repeat(depth));
            body.push('}');
            assert!(matches!(
                parse(body.as_bytes(), None),
                Err(ManifestError::Json(_))
            ));
        }
    }
}
