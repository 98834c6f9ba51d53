//! Repository names, tags and manifest references, with the Distribution Spec's grammar:
//! the one grammar every Gantry component checks names with (`gantry serve`, the agent,
//! image references).
//!
//! Names end up as path components on disk and in upstream URLs, so the grammar is also
//! what keeps a request from naming a file outside a storage root or another endpoint of
//! a registry: no component is empty, `.`, `..`, contains `%`, or starts with `_`
//! (reserved for storage's own directories).

use crate::digest::Digest;

/// Longest repository name accepted (distribution's limit).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted.
pub const MAX_TAG_LEN: usize = 128;

/// Whether `name` is a repository name: `/`-separated components of `[a-z0-9]+` joined by
/// `.`, `_`, `__` or runs of `-`; at most [`MAX_NAME_LEN`] characters.
pub fn valid_repository(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component)
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !is_alnum(first) || !is_alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &bytes[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|b| *b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `tag` is a tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    match bytes.first() {
        Some(&first) => {
            bytes.len() <= MAX_TAG_LEN
                && (first.is_ascii_alphanumeric() || first == b'_')
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        }
        None => false,
    }
}

/// Whether `reference` names a manifest: a [`valid_tag`] or a digest (`sha256:<hex>`).
pub fn valid_reference(reference: &str) -> bool {
    if reference.contains(':') {
        reference.parse::<Digest>().is_ok()
    } else {
        valid_tag(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        for good in [
            "a",
            "library/ubuntu",
            "a.b_c__d---e/f",
            "x/y/z/0",
            "studio/game-2",
        ] {
            assert!(valid_repository(good), "{good}");
        }
        for bad in [
            "",
            "A",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "a..b",
            "_a",
            "a/_manifests",
            "..",
            ".",
            "a/../b",
            "../../token",
            "%2e%2e",
            "a/%2e%2e/b",
            "a b",
            "a%2fb",
            "-a",
            "a-",
        ] {
            assert!(!valid_repository(bad), "{bad:?}");
        }
        assert!(valid_repository(&"a".repeat(MAX_NAME_LEN)));
        assert!(!valid_repository(&"a".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn tag_grammar() {
        for good in ["latest", "v1.0", "_x", "A-b_c.d", &"t".repeat(MAX_TAG_LEN)] {
            assert!(valid_tag(good), "{good}");
        }
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "a:b",
            "..",
            ".",
            "%2e%2e",
            &"t".repeat(MAX_TAG_LEN + 1),
            "é",
        ] {
            assert!(!valid_tag(bad), "{bad:?}");
        }
    }

    #[test]
    fn reference_grammar() {
        let d = Digest::of(b"x").to_string();
        assert!(valid_reference("v1"));
        assert!(valid_reference(&d));
        for bad in ["", "..", ".", "sha256:xyz", "md5:00", "a/b", "%2e%2e"] {
            assert!(!valid_reference(bad), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_accepts_path_tricks(s in "\\PC{0,80}") {
            if valid_repository(&s) {
                proptest::prop_assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with('_') && !c.contains('%')));
            }
            if valid_tag(&s) || valid_reference(&s) {
                proptest::prop_assert!(!s.contains('/') && !s.contains('%') && s != "." && s != "..");
            }
        }
    }
}
