use serde::Serialize;
use serde_json::{Map, Value};

/// A value could not be turned into JSON (a map with non-string keys, say).
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize {what} as JSON: {source}")]
pub struct CanonicalJsonError {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

/// Compact JSON with object keys sorted at every level.
///
/// OCI types keep annotations and labels in hash maps whose iteration order
/// changes from run to run; sorting keys makes the bytes, and so the digest,
/// a function of the content alone.
pub fn canonical_json<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, CanonicalJsonError> {
    let sorted = sorted_value(what, value)?;
    serde_json::to_vec(&sorted).map_err(|source| CanonicalJsonError { what, source })
}

/// Like [`canonical_json`] but indented, for files people read (`index.json`).
pub fn canonical_json_pretty<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, CanonicalJsonError> {
    let sorted = sorted_value(what, value)?;
    serde_json::to_vec_pretty(&sorted).map_err(|source| CanonicalJsonError { what, source })
}

fn sorted_value<T: Serialize>(what: &'static str, value: &T) -> Result<Value, CanonicalJsonError> {
    let value =
        serde_json::to_value(value).map_err(|source| CanonicalJsonError { what, source })?;
    Ok(sort_keys(value))
}

/// Rebuilds every object with its keys inserted in sorted order, which is
/// correct whether or not serde_json's `preserve_order` feature is enabled.
fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut sorted = Map::new();
            for (key, inner) in entries {
                sorted.insert(key, sort_keys(inner));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let mut inner = HashMap::new();
        for k in ["zeta", "alpha", "mid"] {
            inner.insert(k.to_string(), 1);
        }
        let mut outer = HashMap::new();
        outer.insert("b".to_string(), inner.clone());
        outer.insert("a".to_string(), inner);
        let json = String::from_utf8(canonical_json("test", &outer).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"a":{"alpha":1,"mid":1,"zeta":1},"b":{"alpha":1,"mid":1,"zeta":1}}"#
        );
    }

    #[test]
    fn same_content_same_bytes_across_many_maps() {
        let first: Vec<u8> = {
            let m: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
            canonical_json("test", &m).unwrap()
        };
        for _ in 0..20 {
            let m: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
            assert_eq!(canonical_json("test", &m).unwrap(), first);
        }
    }
}
