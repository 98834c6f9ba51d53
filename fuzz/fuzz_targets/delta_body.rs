//! The bodies of Gantry's delta push: the ranges `PATCH` a client sends to `gantry serve`
//! (`gantry_registry::delta::BlobRanges::parse`) and the chunk lookup and its answer
//! (`gantry_oci::delta_push`). Whatever parses serializes and parses back equal.
#![no_main]

use gantry_oci::delta_push::{ChunkLookup, ChunkLookupAnswer};
use gantry_registry::delta::BlobRanges;
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

fuzz_target!(|data: &[u8]| {
    if let Ok(ranges) = BlobRanges::parse(data) {
        let text = serde_json::to_vec(&ranges).expect("serializes");
        assert_eq!(BlobRanges::parse(&text).expect("parses back"), ranges);
    }
    round_trip::<ChunkLookup>(data);
    round_trip::<ChunkLookupAnswer>(data);
});

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_vec(&value).expect("serializes");
        assert_eq!(
            serde_json::from_slice::<T>(&text).expect("parses back"),
            value
        );
    }
}
