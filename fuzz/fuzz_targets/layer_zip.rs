//! Game paks (zip) inside a layer, as `gantry build` chunks them: the zip's central
//! directory is read to cut chunks around its entries (`SegmentPlan::new`), and its stored
//! entries are checked against their CRC-32 while the layer is written (`write_layer`).
//! Whatever the directory claims, the plan must cover the tar exactly, cuts must lie inside
//! their segment, and the written layer must be the tar of the file, byte for byte, with a
//! chunk index that validates.
#![no_main]

use gantry_layer::{
    gunzip_all, write_layer, ChunkIndex, ChunkerParams, EntryKind, FileData, ImagePath, LayerEntry,
    LayerOptions, NoReuse, SegmentPlan, TarOptions, TarStream,
};
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use std::sync::OnceLock;

fn workdir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
}

fuzz_target!(|data: &[u8]| {
    let file = workdir().path().join("game.pak");
    std::fs::write(&file, data).expect("write the pak");
    let entries = vec![
        LayerEntry {
            path: ImagePath::parse("game", false).expect("path"),
            kind: EntryKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        LayerEntry {
            path: ImagePath::parse("game/game.pak", false).expect("path"),
            kind: EntryKind::File {
                data: FileData::Disk(file.clone()),
                size: data.len() as u64,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    ];
    let options = LayerOptions {
        chunker: ChunkerParams {
            min: 64,
            avg: 256,
            max: 1024,
            large_file_scale: 2,
        },
        gzip_level: 1,
        threads: 1,
    };
    let tar_options = TarOptions { mtime: 0 };
    let mut tar = Vec::new();
    TarStream::new(entries.clone(), tar_options)
        .read_to_end(&mut tar)
        .expect("tar of the entries");

    // Files of at least 1 byte get a segment of their own, so the pak is always probed.
    let plan = SegmentPlan::new(entries.clone(), tar_options, 1).expect("plan");
    assert_eq!(
        plan.segments.iter().map(|s| s.len).sum::<u64>(),
        tar.len() as u64
    );
    for segment in &plan.segments {
        for pair in segment.cuts.windows(2) {
            assert!(pair[0] < pair[1], "cuts out of order: {:?}", segment.cuts);
        }
        assert!(segment.cuts.iter().all(|c| *c > 0 && *c < segment.len));
        assert_eq!(segment.region_keys.len(), segment.cuts.len() + 1);
    }

    let mut blob = Vec::new();
    let written = write_layer(plan, &mut blob, &options, &NoReuse, &|_| {}).expect("layer");
    assert_eq!(written.size, blob.len() as u64);
    assert_eq!(gunzip_all(&blob).expect("the layer gunzips"), tar);
    let index = written.index();
    index.validate().expect("the written index validates");
    let parsed = ChunkIndex::from_blob(&index.to_blob().expect("index blob")).expect("parses");
    assert_eq!(parsed, index);

    // An archive found lying is written again as a plain file: the same tar.
    if !written.lying_archives.is_empty() {
        let plan = SegmentPlan::with_plain_files(entries, tar_options, 1, &written.lying_archives)
            .expect("plan");
        let mut again = Vec::new();
        let rewritten = write_layer(plan, &mut again, &options, &NoReuse, &|_| {}).expect("layer");
        assert_eq!(rewritten.diff_id, written.diff_id);
        assert!(rewritten.lying_archives.is_empty());
    }
});
