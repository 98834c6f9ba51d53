//! HTTP `Range` headers as `gantry serve` (`gantry_registry::range::parse`, plus the upload
//! `Content-Range`) and the node agent (`gantry_agent::server::parse_range_value`) read
//! them. Input: 8 bytes of blob size, 1 byte of range limit, then the header value.
//! Served ranges must be non-empty, inside the blob, apart from each other and no more
//! than asked; what the agent serves, the registry serves the same way.
#![no_main]

use gantry_registry::range::{self, RangeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let mut size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let control = data[8];
    // Mostly small blobs, where ranges land inside; sometimes any u64.
    if control & 0x80 == 0 {
        size %= 4096;
    }
    let max_ranges = usize::from(control & 0x1f);
    let Ok(header) = std::str::from_utf8(&data[9..]) else {
        return;
    };

    let registry = range::parse(header, size, max_ranges);
    if let RangeRequest::Ranges(rs) = &registry {
        assert!(!rs.is_empty() && rs.len() <= max_ranges);
        for &(start, len) in rs {
            assert!(len > 0, "{rs:?}");
            assert!(
                start.checked_add(len).is_some_and(|end| end <= size),
                "{rs:?}"
            );
        }
        let mut sorted = rs.clone();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0, "overlapping or adjacent: {rs:?}");
        }
        assert!(rs.iter().map(|r| r.1).sum::<u64>() <= size);
    }

    if let Some((first, last)) = range::parse_content_range(header) {
        assert!(first <= last);
    }

    let agent = gantry_agent::server::parse_range_value(header, size);
    match agent {
        Some(Ok((start, len))) => {
            assert!(len > 0 && start.checked_add(len).is_some_and(|end| end <= size));
            assert_eq!(
                range::parse(header, size, 1),
                RangeRequest::Ranges(vec![(start, len)]),
                "the agent serves {start}+{len} of {header:?}"
            );
        }
        Some(Err(())) => assert_eq!(
            range::parse(header, size, 1),
            RangeRequest::Unsatisfiable,
            "the agent answers 416 to {header:?}"
        ),
        None => {}
    }
});
