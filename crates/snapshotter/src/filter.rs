//! The subset of containerd's filter syntax that `Walk` needs: comma-separated
//! conjunctions of `FIELD`, `FIELD==VALUE` and `FIELD!=VALUE` on `name`, `parent`, `kind`
//! and `labels.KEY`, where keys and values may be double-quoted. (Several filter strings
//! are alternatives; [`crate::store::Store::walk`] ORs them.) Regular-expression matches
//! (`~=`) are refused with `InvalidArgument`.

use crate::error::{Error, Result};
use crate::store::SnapshotInfo;

/// One parsed filter string: all its terms must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    field: Field,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

impl Filter {
    /// Parses one filter string.
    pub(crate) fn parse(text: &str) -> Result<Filter> {
        let bad = |why: &str| Error::InvalidArgument(format!("filter {text:?}: {why}"));
        let mut terms = Vec::new();
        for part in split_unquoted(text, ',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("empty term"));
            }
            let (field, op) = if let Some(i) = find_unquoted(part, "==") {
                (&part[..i], Some((true, &part[i + 2..])))
            } else if let Some(i) = find_unquoted(part, "!=") {
                (&part[..i], Some((false, &part[i + 2..])))
            } else if find_unquoted(part, "~=").is_some() {
                return Err(bad("regular expression matches (~=) are not supported"));
            } else {
                (part, None)
            };
            let field = match field.trim() {
                "name" => Field::Name,
                "parent" => Field::Parent,
                "kind" => Field::Kind,
                f => match f.strip_prefix("labels.") {
                    Some(key) if !key.is_empty() => Field::Label(unquote(key)),
                    _ => return Err(bad(&format!("unknown field {f:?}"))),
                },
            };
            let op = match op {
                None => Op::Present,
                Some((true, v)) => Op::Equal(unquote(v.trim())),
                Some((false, v)) => Op::NotEqual(unquote(v.trim())),
            };
            terms.push(Term { field, op });
        }
        Ok(Filter { terms })
    }

    /// Whether `info` satisfies every term.
    pub(crate) fn matches(&self, info: &SnapshotInfo) -> bool {
        self.terms.iter().all(|t| {
            let value: Option<&str> = match &t.field {
                Field::Name => Some(&info.name),
                // As containerd's adaptor: the parent is always present, empty for none
                // (its remote-snapshot lookup asks for `parent==""` on a bottom layer).
                Field::Parent => Some(info.parent.as_str()),
                Field::Kind => Some(info.kind.as_str()),
                Field::Label(k) => info.labels.get(k).map(String::as_str),
            };
            let eq = |want: &str, have: &str| match t.field {
                Field::Kind => want.eq_ignore_ascii_case(have),
                _ => want == have,
            };
            match &t.op {
                Op::Present => value.is_some(),
                Op::Equal(want) => value.is_some_and(|v| eq(want, v)),
                Op::NotEqual(want) => !value.is_some_and(|v| eq(want, v)),
            }
        })
    }
}

/// Splits at `sep` outside double quotes.
fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Byte offset of the first `pat` outside double quotes.
fn find_unquoted(text: &str, pat: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if !quoted && text[i..].starts_with(pat) => return Some(i),
            _ => {}
        }
    }
    None
}

/// Removes surrounding double quotes and their backslash escapes.
fn unquote(s: &str) -> String {
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terms() {
        let f = Filter::parse(r#"labels."a,b==c"==x,kind!=View,name"#).unwrap();
        assert_eq!(
            f.terms,
            vec![
                Term {
                    field: Field::Label("a,b==c".into()),
                    op: Op::Equal("x".into())
                },
                Term {
                    field: Field::Kind,
                    op: Op::NotEqual("View".into())
                },
                Term {
                    field: Field::Name,
                    op: Op::Present
                },
            ]
        );
        assert!(Filter::parse("size==3").is_err());
        assert!(Filter::parse("name==a,,kind").is_err());
    }

    /// containerd's remote-snapshot lookup, as metadata/snapshot.go writes it: for a bottom
    /// layer the parent is `""`, and a snapshot without a parent must match it.
    #[test]
    fn containerd_remote_snapshot_lookup_matches_a_bottom_layer() {
        let info = |parent: &str| SnapshotInfo {
            name: "gantry-fast/x".into(),
            parent: parent.into(),
            kind: crate::store::Kind::Committed,
            labels: [(
                "containerd.io/snapshot.ref".to_string(),
                "sha256:abc".to_string(),
            )]
            .into(),
            created_at: std::time::SystemTime::UNIX_EPOCH,
            updated_at: std::time::SystemTime::UNIX_EPOCH,
        };
        let bottom =
            Filter::parse(r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#).unwrap();
        assert!(bottom.matches(&info("")));
        assert!(!bottom.matches(&info("k8s.io/1/p")));
        let upper = Filter::parse(
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="k8s.io/1/p""#,
        )
        .unwrap();
        assert!(upper.matches(&info("k8s.io/1/p")));
        assert!(!upper.matches(&info("")));
    }
}
