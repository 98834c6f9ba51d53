//! The chunk index a node fetches from a registry: `ChunkIndex::from_blob` (gzip + JSON +
//! `validate`), and the JSON alone so that mutations reach the fields past the gzip layer.
//! An index that validates must keep the bounds `validate` documents and survive a
//! `to_blob` → `from_blob` round trip unchanged.
#![no_main]

use gantry_layer::ChunkIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = ChunkIndex::from_blob(data) {
        check(&index);
    }
    if let Ok(index) = serde_json::from_slice::<ChunkIndex>(data) {
        // Offsets of an index that was not validated must not panic either.
        let _ = index.chunks_with_offsets().last();
        if index.validate().is_ok() {
            check(&index);
        }
    }
});

fn check(index: &ChunkIndex) {
    let max_compressed = index.chunker.max_compressed_chunk_len();
    let max_uncompressed = index.chunker.max_chunk_len();
    assert!(max_uncompressed <= 16 * 1024 * 1024);
    let (mut compressed, mut uncompressed) = (0u64, 0u64);
    for chunk in index.chunks_with_offsets() {
        assert_eq!(
            (chunk.compressed_offset, chunk.uncompressed_offset),
            (compressed, uncompressed)
        );
        let r = chunk.record;
        assert!((1..=max_compressed).contains(&r.compressed_len));
        assert!(r.uncompressed_len <= max_uncompressed);
        compressed += r.compressed_len;
        uncompressed += r.uncompressed_len;
    }
    assert_eq!(
        (compressed, uncompressed),
        (index.layer_size, index.uncompressed_size)
    );
    let blob = index.to_blob().expect("a valid index serializes");
    let again = ChunkIndex::from_blob(&blob).expect("a valid index's blob parses");
    assert_eq!(&again, index);
    assert_eq!(
        again.to_blob().expect("serializes"),
        blob,
        "blob form is stable"
    );
}
