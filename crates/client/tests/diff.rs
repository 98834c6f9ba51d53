//! `gantry diff` on real images: the sample game built twice with gantry's builder (an
//! asset update and an engine update), compared layout against layout and layout against
//! `gantry serve`, with every figure recomputed independently from the manifests, the
//! chunk indexes and the generator's own measure of the update.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::Serve;
use gantry_client::diff::{diff, DiffOptions, DiffReport, ImageSource};
use gantry_client::{
    push_layout, ClientOptions, NoProgress, OciLayout, PushOptions, RegistryClient,
};
use gantry_layer::ChunkIndex;
use gantry_oci::{Digest, Reference};
use gantry_sample_game::{
    generate, update, PakShape, SampleSpec, UpdateKind, UpdateReport, UpdateSpec,
};

/// Two builds of the sample game and the generator's report of the update between them.
struct Versions {
    _dir: tempfile::TempDir,
    v1: PathBuf,
    v2: PathBuf,
    update: UpdateReport,
}

fn build(game: &Path, out: &Path) -> PathBuf {
    let opts = gantry_build::BuildOptions {
        context: game.to_path_buf(),
        spec_file: None,
        output: out.to_path_buf(),
        cache_dir: None,
        source_date_epoch: 0,
        threads: 2,
        tag: None,
        registry: ClientOptions::default(),
    };
    gantry_build::build(&opts, &gantry_build::NoProgress)
        .unwrap()
        .layout
}

fn versions(scale: u64, bytes: u64, kind: UpdateKind) -> Versions {
    versions_shaped(scale, bytes, kind, PakShape::Split)
}

fn versions_shaped(scale: u64, bytes: u64, kind: UpdateKind, paks: PakShape) -> Versions {
    let dir = gantry_test_support::tempdir();
    let game = dir.path().join("game");
    generate(
        &game,
        &SampleSpec {
            scale_bytes: scale,
            seed: 5,
            paks,
        },
    )
    .unwrap();
    let v1 = build(&game, &dir.path().join("v1"));
    let report = update(
        &game,
        &UpdateSpec {
            bytes,
            seed: 5,
            kind,
        },
    )
    .unwrap();
    let v2 = build(&game, &dir.path().join("v2"));
    Versions {
        _dir: dir,
        v1,
        v2,
        update: report,
    }
}

fn layout(path: &Path) -> ImageSource<'static> {
    ImageSource::Layout {
        layout: OciLayout::open(path).unwrap(),
        tag: None,
    }
}

/// (layer digest, size, chunk index) of each layer, read straight from the layout.
fn layers(path: &Path) -> Vec<(Digest, u64, ChunkIndex)> {
    let l = OciLayout::open(path).unwrap();
    let m = l.resolve(None, "linux", "amd64").unwrap().manifest;
    m.layers()
        .iter()
        .map(|d| {
            let digest = Digest::from_oci(d.digest()).unwrap();
            let index: Digest = d.annotations().as_ref().unwrap()["dev.gantry.chunk-index"]
                .parse()
                .unwrap();
            let index = ChunkIndex::from_blob(&l.read_blob(&index).unwrap()).unwrap();
            (digest, d.size(), index)
        })
        .collect()
}

/// Checks a report of v1 → v2 against figures recomputed from the layouts; returns the
/// bytes of the chunks v1 lacks (no index blobs).
fn check_against_layouts(r: &DiffReport, v1: &Path, v2: &Path) -> u64 {
    let old = layers(v1);
    let new = layers(v2);
    let old_digests: HashSet<Digest> = old.iter().map(|l| l.0).collect();
    let old_chunks: HashSet<Digest> = old
        .iter()
        .flat_map(|l| l.2.chunks.iter().map(|c| c.id))
        .collect();
    let changed: Vec<_> = new.iter().filter(|l| !old_digests.contains(&l.0)).collect();
    assert!(!changed.is_empty(), "the update changed no layer");
    assert!(changed.len() < new.len(), "the update changed every layer");
    assert_eq!(r.image_bytes, new.iter().map(|l| l.1).sum::<u64>());
    assert_eq!(
        r.layer_level_bytes,
        changed.iter().map(|l| l.1).sum::<u64>(),
        "layer level = the sizes of the changed layers"
    );
    let mut seen = HashSet::new();
    let new_chunk_bytes: u64 = changed
        .iter()
        .flat_map(|l| l.2.chunks.iter())
        .filter(|c| !old_chunks.contains(&c.id) && seen.insert(c.id))
        .map(|c| c.compressed_len)
        .sum();
    assert!(new_chunk_bytes > 0);
    assert!(
        r.chunk_level_bytes >= new_chunk_bytes,
        "chunk level {} below the new chunks {new_chunk_bytes}",
        r.chunk_level_bytes
    );
    assert!(
        r.chunk_level_bytes < r.layer_level_bytes,
        "chunk level {} not below layer level {}",
        r.chunk_level_bytes,
        r.layer_level_bytes
    );
    assert_eq!(r.layers.len(), new.len());
    for (l, (digest, size, index)) in r.layers.iter().zip(&new) {
        assert_eq!(l.digest, *digest);
        assert_eq!(l.size, *size);
        assert_eq!(l.chunks, index.chunks.len());
        assert_eq!(l.changed, !old_digests.contains(digest));
        if !l.changed {
            assert_eq!((l.layer_level_bytes, l.chunk_level_bytes), (0, 0));
        }
    }
    new_chunk_bytes
}

fn assert_near_generator(r: &DiffReport, update: &UpdateReport) {
    let ours = r.update_bytes.expect("update size computed") as f64;
    let theirs = update.update_bytes as f64;
    assert!(theirs > 0.0);
    assert!(
        (ours / theirs - 1.0).abs() <= 0.10,
        "update's own size from the images {ours} vs the generator's {theirs} ({:.3}×); {:?}",
        ours / theirs,
        r.update
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_update_of_the_sample_game_three_ways_and_its_own_size() {
    let v = versions(24_000_000, 600_000, UpdateKind::Assets);
    let r = diff(&layout(&v.v1), &layout(&v.v2), &DiffOptions::default())
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    eprintln!(
        "generator: update_bytes {} changed_bytes {}",
        v.update.update_bytes, v.update.changed_bytes
    );
    let new_chunks = check_against_layouts(&r, &v.v1, &v.v2);
    eprintln!("new chunks {new_chunks}");
    let names: Vec<_> = r.layers.iter().map(|l| l.name.as_deref()).collect();
    assert_eq!(names, [Some("engine"), Some("runtime"), Some("paks")]);
    assert_eq!(
        r.layers.iter().map(|l| l.changed).collect::<Vec<_>>(),
        [false, false, true],
        "an asset update changes the paks layer only"
    );
    assert_near_generator(&r, &v.update);
    let u = r.update.as_ref().unwrap();
    assert!(u.archives_changed >= 3, "{u:?}");
    assert!(u.entries_changed > 0 && u.entries_added > 0, "{u:?}");
    assert!(u.files_changed >= 2, "edited config files: {u:?}");
    assert!(r.chunk_level_ratio.unwrap() < r.layer_level_ratio.unwrap());

    // Without the update's size: same download figures, nothing read beyond indexes.
    let quick = diff(
        &layout(&v.v1),
        &layout(&v.v2),
        &DiffOptions {
            update_size: false,
            ..DiffOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(quick.update_bytes, None);
    assert_eq!(
        (quick.layer_level_bytes, quick.chunk_level_bytes),
        (r.layer_level_bytes, r.chunk_level_bytes)
    );

    // An image against itself.
    let same = diff(&layout(&v.v2), &layout(&v.v2), &DiffOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (
            same.layer_level_bytes,
            same.chunk_level_bytes,
            same.update_bytes
        ),
        (0, 0, Some(0))
    );
    assert_eq!(same.image_bytes, r.image_bytes);
}

/// One large pak of small entries, edited throughout (re-exports scattered over the pak,
/// small text edits shifting every later entry): only the edited entries' chunks are new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_pak_edited_throughout_costs_about_the_update() {
    let v = versions_shaped(30_000_000, 1_500_000, UpdateKind::Assets, PakShape::Single);
    let r = diff(&layout(&v.v1), &layout(&v.v2), &DiffOptions::default())
        .await
        .unwrap();
    let new_chunks = check_against_layouts(&r, &v.v1, &v.v2);
    assert_near_generator(&r, &v.update);
    let u = r.update.as_ref().unwrap();
    assert_eq!(u.archives_changed, 1, "{u:?}");
    assert!(u.entries_changed >= 50, "{u:?}");
    let ratio = r.chunk_level_ratio.unwrap();
    eprintln!(
        "single pak: chunk level {} B for an update of {} B ({ratio:.3}x), layer level {:.1}x",
        r.chunk_level_bytes,
        v.update.update_bytes,
        r.layer_level_ratio.unwrap()
    );
    // The new chunks are the edited entries, each compressed on its own: at most 1.25x
    // the update (gzip -6 of the same content as one stream). The whole download adds
    // the pak's chunk index, about 10% of so small an update at this test scale (its
    // entries are the smallest the generator makes); the benchmark measures the ratio
    // at 500 MB and 3.1 GB.
    let chunks = new_chunks as f64 / v.update.update_bytes as f64;
    assert!(chunks <= 1.25, "the new chunks are {chunks:.3}x the update");
    assert!(ratio <= 1.4, "a node downloads {ratio:.3}x the update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_update_counts_the_rebuilt_binaries() {
    let v = versions(12_000_000, 400_000, UpdateKind::Engine);
    let r = diff(&layout(&v.v1), &layout(&v.v2), &DiffOptions::default())
        .await
        .unwrap();
    eprintln!(
        "engine update: image {} layer {} chunk {} update {:?} generator {} {:?}",
        r.image_bytes,
        r.layer_level_bytes,
        r.chunk_level_bytes,
        r.update_bytes,
        v.update.update_bytes,
        r.update
    );
    check_against_layouts(&r, &v.v1, &v.v2);
    assert_eq!(
        r.layers.iter().map(|l| l.changed).collect::<Vec<_>>(),
        [true, false, false],
        "an engine update changes the engine layer only"
    );
    assert_near_generator(&r, &v.update);
    let u = r.update.as_ref().unwrap();
    assert_eq!(u.archives_changed, 0, "{u:?}");
    assert!(u.files_changed > 0, "{u:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_image_in_gantry_serve_gives_the_same_figures_as_its_layout() {
    let v = versions(8_000_000, 200_000, UpdateKind::Assets);
    let serve = Serve::open().await;
    let client = RegistryClient::new(
        &serve.host(),
        &ClientOptions {
            insecure: true,
            no_stored_credentials: true,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let reference: Reference = format!("{}/studio/game:v2", serve.host()).parse().unwrap();
    push_layout(
        &client,
        &OciLayout::open(&v.v2).unwrap(),
        None,
        &reference,
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let tmp = gantry_test_support::tempdir();
    let options = DiffOptions {
        temp_dir: Some(tmp.path().to_path_buf()),
        ..DiffOptions::default()
    };
    let local = diff(&layout(&v.v1), &layout(&v.v2), &options)
        .await
        .unwrap();
    let remote = diff(
        &layout(&v.v1),
        &ImageSource::Registry {
            client: &client,
            reference: reference.clone(),
        },
        &options,
    )
    .await
    .unwrap();
    assert_eq!(remote.new, reference.to_string());
    assert_eq!(remote.new_manifest, local.new_manifest);
    assert_eq!(
        (
            remote.image_bytes,
            remote.layer_level_bytes,
            remote.chunk_level_bytes,
            remote.update_bytes
        ),
        (
            local.image_bytes,
            local.layer_level_bytes,
            local.chunk_level_bytes,
            local.update_bytes
        )
    );
    assert_eq!(
        serde_json::to_value(&remote.layers).unwrap(),
        serde_json::to_value(&local.layers).unwrap()
    );
    assert_eq!(remote.update, local.update);
    check_against_layouts(&remote, &v.v1, &v.v2);
    // The downloads went to a temporary directory that is gone.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
