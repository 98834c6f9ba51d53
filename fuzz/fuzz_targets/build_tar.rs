//! Source archives as `gantry build` reads them (`gantry_build::resolve_layer` on a layer
//! whose `tar` source is the input, plain or gzip-compressed). What it accepts must be a
//! tree it can write: entries sorted parents-first, each path once, every ancestor a
//! directory, everything under the source's `dest`, symlinks that stay inside the image,
//! and staged files of the sizes recorded.
#![no_main]

use gantry_build::resolve_layer;
use gantry_build::spec::{LayerSpec, SourceSpec};
use gantry_layer::{EntryKind, FileData, ImagePath};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

const DEST: &str = "srv/game";

fn workdir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
}

fuzz_target!(|data: &[u8]| {
    let repo = workdir().path();
    let staging = repo.join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).expect("staging directory");
    std::fs::write(repo.join("source.tar"), data).expect("write the archive");
    let layer = LayerSpec {
        name: "fuzz".into(),
        owner: None,
        sources: vec![SourceSpec {
            tar: Some(PathBuf::from("source.tar")),
            dest: format!("/{DEST}"),
            ..SourceSpec::default()
        }],
    };
    let Ok(resolved) = resolve_layer(repo, &layer, &staging) else {
        return;
    };
    let kinds: BTreeMap<&str, &EntryKind> = resolved
        .entries
        .iter()
        .map(|e| (e.path.as_str(), &e.kind))
        .collect();
    assert_eq!(kinds.len(), resolved.entries.len(), "a path appears twice");
    for pair in resolved.entries.windows(2) {
        assert!(
            pair[0].sort_key() < pair[1].sort_key(),
            "entries out of order"
        );
    }
    let mut content = 0u64;
    for entry in &resolved.entries {
        let path = entry.path.as_str();
        assert!(
            path == "srv" || path == DEST || path.starts_with(&format!("{DEST}/")),
            "{path:?} is outside {DEST}"
        );
        assert!(
            ImagePath::parse(path, false).is_ok_and(|p| p == entry.path),
            "{path:?} is not normalized"
        );
        let mut ancestor = entry.path.parent();
        while let Some(a) = ancestor.filter(|a| !a.is_root()) {
            assert!(
                matches!(kinds.get(a.as_str()), Some(EntryKind::Directory)),
                "{path:?}: ancestor {a} is not a directory in the tree"
            );
            ancestor = a.parent();
        }
        match &entry.kind {
            EntryKind::File { data, size } => {
                content += size;
                if let FileData::Disk(file) = data {
                    let len = std::fs::metadata(file).expect("staged file").len();
                    assert_eq!(len, *size, "{path:?}");
                }
            }
            EntryKind::Symlink { target } => {
                assert!(entry.path.check_symlink_target(target).is_ok(), "{path:?}");
            }
            EntryKind::Directory => {}
        }
    }
    assert_eq!(content, resolved.content_bytes);
});
