//! Manifests and image indexes as pushed to `gantry serve` (`gantry_registry::manifest::parse`,
//! with the first byte choosing the `Content-Type`) and as every client reads them
//! (`oci_spec`'s `ImageManifest` / `ImageIndex`, then `gantry_client::diff::image_layers`).
//! A manifest the registry accepts has the shape its media type asks for; a manifest or
//! index that parses has canonical JSON that parses back to the same canonical JSON.
#![no_main]

use gantry_oci::{canonical_json, media_types, spec, Digest};
use gantry_registry::manifest::{self, ACCEPTED_MEDIA_TYPES};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some(media_types::OCI_MANIFEST),
    Some(media_types::OCI_INDEX),
    Some(media_types::DOCKER_MANIFEST),
    Some(media_types::DOCKER_MANIFEST_LIST),
    Some("application/json; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(choice) % CONTENT_TYPES.len()];
    if let Ok(m) = manifest::parse(body, content_type) {
        assert!(ACCEPTED_MEDIA_TYPES.contains(&m.media_type.as_str()));
        if media_types::is_index(&m.media_type) {
            assert!(m.config.is_none() && m.layers.is_empty());
        } else {
            assert!(m.config.is_some() && m.manifests.is_empty());
            assert!(m.artifact_type.is_some());
        }
        let required = m.required_blobs().count();
        assert!(required <= m.layers.len() + 1);
        let _ = m.referrer_descriptor(&Digest::of(body), body.len() as u64);
    }
    if let Ok(m) = serde_json::from_slice::<spec::ImageManifest>(body) {
        let _ = gantry_client::diff::image_layers(&m, "fuzz input");
        round_trip(&m);
    }
    if let Ok(index) = serde_json::from_slice::<spec::ImageIndex>(body) {
        round_trip(&index);
    }
});

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) {
    let first = canonical_json("fuzz input", value).expect("a parsed manifest serializes");
    let back: T = serde_json::from_slice(&first).expect("canonical JSON parses back");
    let second = canonical_json("fuzz input", &back).expect("serializes again");
    assert_eq!(
        first, second,
        "canonical JSON is stable across a round trip"
    );
}
