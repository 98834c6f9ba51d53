//! HTTP `Range` requests on blobs (RFC 9110 byte ranges).

/// What a `Range` header asks of a blob of known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range` header: serve the whole blob (a malformed header is ignored, as
    /// RFC 9110 allows).
    Whole,
    /// Serve these `(start, length)` ranges, each non-empty and inside the blob, never
    /// overlapping nor adjacent (so they add up to at most the blob): in request order, or
    /// sorted when some had to be merged.
    Ranges(Vec<(u64, u64)>),
    /// No range overlaps the blob: answer 416.
    Unsatisfiable,
}

/// Parses a `Range` header value for a blob of `size` bytes. More than `max_ranges` ranges
/// are treated as no range at all. Overlapping or adjacent ranges are merged (RFC 9110
/// §14.2 allows it), so that repeating a range cannot multiply what is sent; when several
/// ranges merge into the whole blob, it is served whole (200).
pub fn parse(header: &str, size: u64, max_ranges: usize) -> RangeRequest {
    let Some((unit, specs)) = header.split_once('=') else {
        return RangeRequest::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Whole;
    }
    let mut ranges = Vec::new();
    let mut count = 0usize;
    for spec in specs.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        count += 1;
        if count > max_ranges {
            return RangeRequest::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return RangeRequest::Whole;
        };
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            // Suffix: the last N bytes.
            let Some(n) = number(last) else {
                return RangeRequest::Whole;
            };
            if n > 0 && size > 0 {
                let len = n.min(size);
                ranges.push((size - len, len));
            }
            continue;
        }
        let Some(start) = number(first) else {
            return RangeRequest::Whole;
        };
        let end = if last.is_empty() {
            None
        } else {
            match number(last) {
                Some(e) if e >= start => Some(e),
                _ => return RangeRequest::Whole,
            }
        };
        if start >= size {
            continue;
        }
        let end = end.map_or(size - 1, |e| e.min(size - 1));
        ranges.push((start, end - start + 1));
    }
    if count == 0 {
        return RangeRequest::Whole;
    }
    if ranges.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    let requested = ranges.len();
    let ranges = coalesce(ranges);
    if requested > 1 && ranges == [(0, size)] {
        return RangeRequest::Whole;
    }
    RangeRequest::Ranges(ranges)
}

/// `ranges` as they are when none overlaps or touches another; else sorted and merged.
fn coalesce(ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut sorted = ranges.clone();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (start, len) in sorted {
        match merged.last_mut() {
            Some((s, l)) if start <= *s + *l => *l = (*l).max(start + len - *s),
            _ => merged.push((start, len)),
        }
    }
    if merged.len() == ranges.len() {
        ranges
    } else {
        merged
    }
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an upload's `Content-Range` (`<start>-<end>`, inclusive; a `bytes ` or `bytes=`
/// prefix is tolerated) into `(start, end)`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    // `bytes a-b/size` (RFC form) is accepted too.
    let v = v.split('/').next().unwrap_or(v);
    let (a, b) = v.split_once('-')?;
    let (a, b) = (number(a.trim())?, number(b.trim())?);
    (b >= a).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_ranges() {
        assert_eq!(
            parse("bytes=0-9", 100, 8),
            RangeRequest::Ranges(vec![(0, 10)])
        );
        assert_eq!(
            parse("bytes=90-", 100, 8),
            RangeRequest::Ranges(vec![(90, 10)])
        );
        assert_eq!(
            parse("bytes=-5", 100, 8),
            RangeRequest::Ranges(vec![(95, 5)])
        );
        assert_eq!(
            parse("bytes=-500", 100, 8),
            RangeRequest::Ranges(vec![(0, 100)])
        );
        assert_eq!(
            parse("bytes=95-200", 100, 8),
            RangeRequest::Ranges(vec![(95, 5)])
        );
        assert_eq!(
            parse("bytes=0-0, 10-19,-1", 100, 8),
            RangeRequest::Ranges(vec![(0, 1), (10, 10), (99, 1)])
        );
        // Unsatisfiable parts are dropped, the rest served.
        assert_eq!(
            parse("bytes=200-300,0-1", 100, 8),
            RangeRequest::Ranges(vec![(0, 2)])
        );
        // Disjoint ranges keep their order.
        assert_eq!(
            parse("bytes=50-59,0-9", 100, 8),
            RangeRequest::Ranges(vec![(50, 10), (0, 10)])
        );
    }

    #[test]
    fn overlapping_ranges_are_merged() {
        // Repeats of the whole blob: served once, whole.
        assert_eq!(
            parse(&format!("bytes={}", ["0-"; 64].join(",")), 100, 64),
            RangeRequest::Whole
        );
        assert_eq!(parse("bytes=0-49,-50", 100, 8), RangeRequest::Whole);
        assert_eq!(
            parse("bytes=10-19,0-9,15-29,50-59,55-", 100, 8),
            RangeRequest::Ranges(vec![(0, 30), (50, 50)])
        );
        assert_eq!(
            parse("bytes=-1,99-99", 100, 8),
            RangeRequest::Ranges(vec![(99, 1)])
        );
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(parse("bytes=100-", 100, 8), RangeRequest::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100, 8), RangeRequest::Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0, 8), RangeRequest::Unsatisfiable);
        for ignored in [
            "",
            "bytes",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=1",
            "bytes=,",
        ] {
            assert_eq!(parse(ignored, 100, 8), RangeRequest::Whole, "{ignored:?}");
        }
        assert_eq!(parse("bytes=0-1,2-3,4-5", 100, 2), RangeRequest::Whole);
    }

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes=5-5"), Some((5, 5)));
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 9)));
        assert_eq!(parse_content_range("9-5"), None);
        assert_eq!(parse_content_range("-5"), None);
        assert_eq!(parse_content_range("x"), None);
    }

    /// Non-empty, inside the blob, apart from each other, at most the blob in all.
    fn check_ranges(
        rs: &[(u64, u64)],
        size: u64,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        for &(start, len) in rs {
            proptest::prop_assert!(len > 0 && start + len <= size);
        }
        let mut sorted = rs.to_vec();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            proptest::prop_assert!(w[0].0 + w[0].1 < w[1].0, "{rs:?}");
        }
        proptest::prop_assert!(rs.iter().map(|r| r.1).sum::<u64>() <= size);
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn ranges_stay_inside_the_blob(h in "\\PC{0,60}", size in 0u64..1000) {
            if let RangeRequest::Ranges(rs) = parse(&h, size, 16) {
                check_ranges(&rs, size)?;
            }
            let _ = parse_content_range(&h);
        }

        #[test]
        fn structured_ranges(a in 0u64..300, b in 0u64..300, size in 0u64..200) {
            let h = format!("bytes={a}-{b},-{b},{a}-,{b}-{b},0-{a}");
            if let RangeRequest::Ranges(rs) = parse(&h, size, 16) {
                check_ranges(&rs, size)?;
            }
        }
    }
}
