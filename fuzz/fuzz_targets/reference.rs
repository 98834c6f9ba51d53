//! Names from requests and references: image references (`gantry_oci::Reference`),
//! digests, the repository / tag / reference grammar (`gantry_oci::names`), and what
//! `gantry serve` reads from a request path and query: routes, manifest references, token
//! scopes and fleet image names. Accepted values must obey the documented grammar and
//! bounds, and a reference or digest written back out parses to the same value.
#![no_main]

use gantry_oci::names::{valid_reference, valid_repository, valid_tag, MAX_NAME_LEN, MAX_TAG_LEN};
use gantry_oci::{Digest, Reference};
use gantry_registry::{route, token, ManifestRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(r) = s.parse::<Reference>() {
        assert!(valid_repository(&r.repository), "{r:?}");
        if let Some(tag) = &r.tag {
            assert!(valid_tag(tag), "{r:?}");
        }
        let written = r.to_string();
        let again: Reference = written.parse().expect("a reference written out parses");
        assert_eq!(again, r, "{written:?}");
        let _ = (r.manifest_key(), r.tag_or_latest());
    }

    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s, "digests have one spelling");
        assert_eq!(Digest::from_oci(&d.to_oci()).expect("converts back"), d);
    }

    if valid_repository(s) {
        assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
        for component in s.split('/') {
            assert!(!component.is_empty() && component != "." && component != "..");
            assert!(!component.starts_with('_') && !component.contains('%'));
        }
    }
    if valid_tag(s) {
        assert!(!s.is_empty() && s.len() <= MAX_TAG_LEN && !s.contains('/'));
    }
    if valid_reference(s) {
        assert!(!s.contains('/') && !s.is_empty());
    }

    if let Ok(route) = route::parse(s) {
        if let Some(name) = route.repository() {
            assert!(valid_repository(name), "{route:?}");
        }
        let _ = route.kind();
    }
    match ManifestRef::parse(s) {
        Some(ManifestRef::Tag(tag)) => assert!(valid_tag(&tag)),
        Some(ManifestRef::Digest(d)) => assert_eq!(d.to_string(), s),
        None => {}
    }
    if let Some(scope) = token::parse_scope(s) {
        assert!(!scope.name.is_empty());
        let again = token::parse_scope(&scope.scope());
        if !scope.actions.is_empty() {
            assert_eq!(again.as_ref(), Some(&scope), "{:?}", scope.scope());
        }
    }
    let _ = token::parse_scopes(s.split('&'));
    if let Some(key) = gantry_registry::fleet::parse_image(s) {
        assert!(valid_repository(&key.repository));
    }
});
