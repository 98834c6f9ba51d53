//! End-to-end builds checked with real peers: GNU tar and gzip read every
//! layer, containerd + runc run the image, skopeo and umoci read the layout.

mod common;

use gantry_layer::ChunkIndex;
use gantry_oci::{media_types, Digest};
use gantry_test_support::{
    assert_success, command, output_with_timeout, require_tool, tempdir, Containerd,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

fn manifest(layout: &Path) -> serde_json::Value {
    let l = gantry_build::OciLayout::open(layout).unwrap();
    let r = l.resolve(None, "linux", "amd64").unwrap();
    serde_json::from_slice(&r.bytes).unwrap()
}

fn layer_blobs(layout: &Path) -> Vec<(String, String, Option<Digest>)> {
    let m = manifest(layout);
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let digest = d["digest"].as_str().unwrap().to_string();
            let name = d["annotations"][media_types::ANNOTATION_LAYER_NAME]
                .as_str()
                .unwrap_or("")
                .to_string();
            let index = d["annotations"][media_types::ANNOTATION_CHUNK_INDEX]
                .as_str()
                .map(|s| s.parse().unwrap());
            (name, digest, index)
        })
        .collect()
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn every_layer_is_a_gzip_tar_that_gnu_tar_lists_as_expected() {
    let tmp = tempdir();
    let game = common::small_game(&tmp.path().join("game"));
    let out = common::build(&game, &tmp.path().join("image"), None);
    let layout = out.layout.clone();
    let layers = layer_blobs(&layout);
    assert_eq!(
        layers.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(),
        ["base-rootfs", "engine", "runtime", "assets"]
    );
    let tar_bin = require_tool("tar");
    let mut listed = Vec::new();
    for (name, digest, index) in &layers {
        let path = blob_path(&layout, digest);
        let o = output_with_timeout(
            &mut command(&tar_bin, &["-tzvf".as_ref(), path.as_os_str()]),
            Duration::from_secs(60),
        );
        assert_success(format!("tar -tz of layer {name}"), &o);
        listed.push(String::from_utf8(o.stdout).unwrap());
        // The chunk index matches the blob chunk by chunk.
        let index = ChunkIndex::from_blob(
            &std::fs::read(blob_path(&layout, &index.unwrap().to_string())).unwrap(),
        )
        .unwrap();
        let blob = std::fs::read(&path).unwrap();
        assert_eq!(index.layer_digest.to_string(), *digest);
        assert_eq!(index.layer_size, blob.len() as u64);
        for c in index.chunks_with_offsets() {
            let member = &blob[c.compressed_offset as usize
                ..(c.compressed_offset + c.record.compressed_len) as usize];
            assert_eq!(
                Digest::of(member),
                c.record.id,
                "layer {name} chunk {}",
                c.index
            );
        }
        // diff_id is the sha256 of what gzip -d gives.
        let o = output_with_timeout(
            &mut command("gzip", &["-dc".as_ref(), path.as_os_str()]),
            Duration::from_secs(60),
        );
        assert_success("gzip -dc", &o);
        assert_eq!(Digest::of(&o.stdout), index.diff_id);
    }
    let names = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&listed[1]),
        [
            "Engine/",
            "Engine/launcher",
            "Engine/lib/",
            "Engine/lib/libgame.so"
        ]
    );
    assert_eq!(names(&listed[2]), ["start.sh"]);
    assert_eq!(
        names(&listed[3]),
        [
            "Engine/",
            "Engine/game.cfg",
            "Engine/levels/",
            "Engine/levels/level1.pak"
        ]
    );
    // Fixed metadata: uid/gid 0, the build's epoch, modes kept.
    assert!(listed[2].starts_with("-rwxr-xr-x 0/0"), "{}", listed[2]);
    assert!(
        listed[3].contains("2023-11-14"),
        "mtime should be SOURCE_DATE_EPOCH: {}",
        listed[3]
    );
    assert!(listed[0].contains("bin/busybox"));
}

#[test]
fn same_inputs_give_the_same_digest_on_rebuild_and_after_copying() {
    let tmp = tempdir();
    let game = common::small_game(&tmp.path().join("game"));
    let first = common::build(&game, &tmp.path().join("a"), None);
    let cached = common::build(
        &game,
        &tmp.path().join("b"),
        Some(&tmp.path().join("cache")),
    );
    let cached_again = common::build(
        &game,
        &tmp.path().join("c"),
        Some(&tmp.path().join("cache")),
    );
    assert_eq!(first.manifest_digest, cached.manifest_digest);
    assert_eq!(first.manifest_digest, cached_again.manifest_digest);
    assert!(cached_again.layers.iter().all(|l| l.source == "cached"));
    // A copy has new inodes, new mtimes and a different directory order.
    let copy = tmp.path().join("copy");
    common::copy_dir(&game, &copy);
    std::fs::write(copy.join("assets/zz-new"), b"x").unwrap();
    std::fs::remove_file(copy.join("assets/zz-new")).unwrap();
    let moved = common::build(&copy, &tmp.path().join("d"), None);
    assert_eq!(first.manifest_digest, moved.manifest_digest);
    for (a, b) in first.layers.iter().zip(&moved.layers) {
        assert_eq!(a.digest, b.digest, "layer {}", a.name);
    }
    // And with a different cache state the blobs are byte-identical too.
    for l in &first.layers {
        let a = std::fs::read(blob_path(&first.layout, &l.digest.to_string())).unwrap();
        let b = std::fs::read(blob_path(&moved.layout, &l.digest.to_string())).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn chunk_ids_of_unchanged_regions_survive_an_update() {
    let tmp = tempdir();
    let game = tmp.path().join("game");
    gantry_sample_game::generate(
        &game,
        &gantry_sample_game::SampleSpec {
            scale_bytes: 12_000_000,
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    let v1 = common::build(&game, &tmp.path().join("v1"), None);
    gantry_sample_game::update(
        &game,
        &gantry_sample_game::UpdateSpec {
            bytes: 300_000,
            seed: 7,
            kind: gantry_sample_game::UpdateKind::Assets,
        },
    )
    .unwrap();
    let v2 = common::build(
        &game,
        &tmp.path().join("v2"),
        Some(&tmp.path().join("cache")),
    );
    let index = |out: &gantry_build::BuildOutput, name: &str| {
        let l = out.layers.iter().find(|l| l.name == name).unwrap();
        ChunkIndex::from_blob(
            &std::fs::read(blob_path(&out.layout, &l.chunk_index.unwrap().to_string())).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        index(&v1, "engine").layer_digest,
        index(&v2, "engine").layer_digest,
        "engine untouched by an asset update"
    );
    let old: BTreeSet<Digest> = index(&v1, "paks").chunks.iter().map(|c| c.id).collect();
    let new = index(&v2, "paks");
    assert_ne!(new.layer_digest, index(&v1, "paks").layer_digest);
    let kept: u64 = new
        .chunks
        .iter()
        .filter(|c| old.contains(&c.id))
        .map(|c| c.uncompressed_len)
        .sum();
    let share = kept as f64 / new.uncompressed_size as f64;
    assert!(
        share > 0.7,
        "only {:.0}% of the new paks layer is in chunks v1 already had",
        share * 100.0
    );
}

#[test]
fn containerd_runs_a_command_from_the_built_image() {
    let tmp = tempdir();
    let game = common::small_game(&tmp.path().join("game"));
    let out = common::build(&game, &tmp.path().join("image"), None);
    let containerd = Containerd::start();
    containerd.import_oci_layout(&out.layout, "localhost/smallgame:v1");
    assert_eq!(
        containerd.image_digest("localhost/smallgame:v1"),
        out.manifest_digest.to_string()
    );
    // Stock `ctr images import` of the untouched layout (which also lists the
    // chunk-index referrer) imports the tagged image.
    let archive = tmp.path().join("layout.tar");
    let o = output_with_timeout(
        &mut command(
            require_tool("tar"),
            &[
                "-C".as_ref(),
                out.layout.as_os_str(),
                "-cf".as_ref(),
                archive.as_os_str(),
                ".".as_ref(),
            ],
        ),
        Duration::from_secs(60),
    );
    assert_success("tar of the layout", &o);
    let o = containerd.ctr(&[
        "images".as_ref(),
        "import".as_ref(),
        "--base-name".as_ref(),
        "localhost/stock".as_ref(),
        archive.as_os_str(),
    ]);
    assert_success("ctr images import", &o);
    assert_eq!(
        containerd.image_digest("localhost/stock:v1"),
        out.manifest_digest.to_string()
    );
    let o = containerd.run("localhost/smallgame:v1", &[]);
    assert_success("running the entrypoint", &o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "game server up, cfg: sv_maxplayers=16"
    );
    let o = containerd.run_sh(
        "localhost/smallgame:v1",
        &[],
        "ls -l /Engine/lib/libgame.so | awk '{print $5}'; echo $GAME",
    );
    assert_success("ls in the container", &o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["90000", "small"]
    );
}

#[test]
fn skopeo_and_umoci_read_the_layout() {
    let tmp = tempdir();
    let game = common::small_game(&tmp.path().join("game"));
    let out = common::build(&game, &tmp.path().join("image"), None);
    // index.json lists the image by tag and the chunk-index referrer untagged.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.layout.join("index.json")).unwrap()).unwrap();
    let referrer = &index["manifests"][1];
    assert_eq!(referrer["artifactType"], media_types::CHUNK_INDEX_ARTIFACT);
    assert_eq!(referrer["digest"], out.referrer_digest.unwrap().to_string());
    let referrer: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob_path(
            &out.layout,
            &out.referrer_digest.unwrap().to_string(),
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        referrer["subject"]["digest"],
        out.manifest_digest.to_string()
    );
    assert_eq!(referrer["layers"].as_array().unwrap().len(), 4);
    let layout_ref = format!("oci:{}:v1", out.layout.display());
    let o = output_with_timeout(
        &mut command(require_tool("skopeo"), &["inspect", "--raw", &layout_ref]),
        Duration::from_secs(60),
    );
    assert_success("skopeo inspect --raw", &o);
    assert_eq!(Digest::of(&o.stdout), out.manifest_digest);
    let o = output_with_timeout(
        &mut command(require_tool("skopeo"), &["inspect", &layout_ref]),
        Duration::from_secs(60),
    );
    assert_success("skopeo inspect", &o);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["Layers"].as_array().unwrap().len(), 4);
    // skopeo copies it, verifying every blob, to a fresh layout.
    let copy = format!("oci:{}:copied", tmp.path().join("copy").display());
    let o = output_with_timeout(
        &mut command(require_tool("skopeo"), &["copy", &layout_ref, &copy]),
        Duration::from_secs(120),
    );
    assert_success("skopeo copy", &o);
    // umoci unpacks it into a runtime bundle.
    let bundle = tmp.path().join("bundle");
    let image = format!("{}:v1", out.layout.display());
    let o = output_with_timeout(
        &mut command(
            require_tool("umoci"),
            &[
                "unpack".as_ref(),
                "--image".as_ref(),
                image.as_ref(),
                bundle.as_os_str(),
            ],
        ),
        Duration::from_secs(120),
    );
    assert_success("umoci unpack", &o);
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/Engine/game.cfg")).unwrap(),
        "sv_maxplayers=16\n"
    );
    assert_eq!(
        std::fs::metadata(bundle.join("rootfs/Engine/lib/libgame.so"))
            .unwrap()
            .len(),
        90_000
    );
}

#[test]
fn base_image_from_a_layout_is_reused_unchanged() {
    let tmp = tempdir();
    let base = tmp.path().join("base");
    let busybox = gantry_test_support::write_busybox_oci_layout(&base, "1.0");
    let game = tmp.path().join("game");
    std::fs::create_dir_all(&game).unwrap();
    std::fs::write(game.join("hello.txt"), "hello from a layered image\n").unwrap();
    std::fs::write(
        game.join("gantry.toml"),
        r#"
[image]
name = "layered"
[base]
layout = "../base"
tag = "1.0"
[config]
cmd = ["cat", "/srv/hello.txt"]
[[layers]]
name = "data"
[[layers.sources]]
file = "hello.txt"
dest = "/srv/"
"#,
    )
    .unwrap();
    let out = common::build(&game, &tmp.path().join("image"), None);
    assert_eq!(
        out.layers[0].digest,
        busybox.layer_digest.parse::<Digest>().unwrap()
    );
    assert_eq!(out.layers[0].source, "base");
    let containerd = Containerd::start();
    containerd.import_oci_layout(&out.layout, "localhost/layered:latest");
    let o = containerd.run("localhost/layered:latest", &[]);
    assert_success("cat from layered image", &o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from a layered image\n"
    );
}

fn layer<'a>(out: &'a gantry_build::BuildOutput, name: &str) -> &'a gantry_build::LayerReport {
    out.layers
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
}

#[test]
fn a_single_pak_rebuild_follows_the_pak_directory_and_equals_a_cold_build() {
    use gantry_sample_game::{PakShape, SampleSpec, UpdateKind, UpdateSpec};
    let tmp = tempdir();
    let game = tmp.path().join("game");
    gantry_sample_game::generate(
        &game,
        &SampleSpec {
            scale_bytes: 40_000_000,
            seed: 5,
            paks: PakShape::Single,
        },
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    common::build(&game, &tmp.path().join("v1"), Some(&cache));
    gantry_sample_game::update(
        &game,
        &UpdateSpec {
            bytes: 1_000_000,
            seed: 5,
            kind: UpdateKind::Assets,
        },
    )
    .unwrap();
    let warm = common::build(&game, &tmp.path().join("warm"), Some(&cache));
    let cold = common::build(&game, &tmp.path().join("cold"), None);
    assert_eq!(warm.manifest_digest, cold.manifest_digest);
    let (w, c) = (layer(&warm, "paks"), layer(&cold, "paks"));
    let total = w.uncompressed_size.unwrap();
    assert_eq!(w.source, "built");
    assert!(w.warnings.is_empty(), "{:?}", w.warnings);
    assert_eq!(c.chunked_bytes, total, "a cold build chunks everything");
    // The one pak changed, yet only the changed entries (and the central
    // directory) went through the chunker: the rest followed the cuts the
    // cache knew for the entries the directory says are unchanged.
    assert!(
        w.chunked_bytes * 10 < total,
        "{} of {total} bytes chunked again for a 1 MB update",
        w.chunked_bytes
    );
    assert!(w.reused_bytes * 10 > total * 8, "{} reused", w.reused_bytes);

    // The pak touched (new mtime and ctime: no key from file metadata) and a
    // member of the cached blob rotted: the entries are still found from the
    // directory, the rotten member is compressed again, the image the same.
    let pak = game.join("paks/game.pak");
    let bytes = std::fs::read(&pak).unwrap();
    std::fs::write(&pak, &bytes).unwrap();
    let blob = cache.join("blobs/sha256").join(w.digest.hex());
    let mut rotten = std::fs::read(&blob).unwrap();
    let middle = rotten.len() / 2;
    rotten[middle] ^= 0x40;
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, &rotten).unwrap();
    let again = common::build(&game, &tmp.path().join("again"), Some(&cache));
    assert_eq!(again.manifest_digest, cold.manifest_digest);
    let a = layer(&again, "paks");
    assert_eq!(a.source, "built");
    assert!(a.chunked_bytes * 10 < total, "{} chunked", a.chunked_bytes);
    assert!(a.reused_bytes < total, "the rotten member was not reused");
}

/// A stored zip of `n` entries of 10 kB, as a game pak.
fn pak_bytes(n: u32) -> Vec<u8> {
    use std::io::Write;
    let mut bytes = Vec::new();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    for i in 0..n {
        w.start_file(format!("levels/entry{i:03}.bin"), opts)
            .unwrap();
        let data: Vec<u8> = (0..10_000u32)
            .map(|b| (b.wrapping_mul(2654435761) >> 13) as u8 ^ i as u8)
            .collect();
        w.write_all(&data).unwrap();
    }
    w.finish().unwrap();
    bytes
}

/// Offset of the `k`-th central directory header of a zip.
fn central_header(bytes: &[u8], k: usize) -> usize {
    let eocd = bytes.len() - 22;
    let cd = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    (cd..bytes.len() - 4)
        .filter(|&i| bytes[i..i + 4] == *b"PK\x01\x02")
        .nth(k)
        .unwrap()
}

#[test]
fn broken_paks_are_named_and_shipped_byte_for_byte() {
    let tmp = tempdir();
    let game = tmp.path().join("game");
    let paks = game.join("paks");
    std::fs::create_dir_all(&paks).unwrap();
    std::fs::write(
        game.join("gantry.toml"),
        "[image]\nname = \"broken\"\ntag = \"v1\"\n\n[[layers]]\nname = \"paks\"\n\
         [[layers.sources]]\ndir = \"paks\"\ndest = \"/paks\"\n",
    )
    .unwrap();
    // A pak whose directory lies: one entry's bytes no longer match its CRC-32.
    let mut lying = pak_bytes(30);
    let data_of_7 = zip::ZipArchive::new(std::io::Cursor::new(&lying))
        .unwrap()
        .by_name("levels/entry007.bin")
        .unwrap()
        .data_start()
        .unwrap() as usize;
    lying[data_of_7 + 100] ^= 0xff;
    std::fs::write(paks.join("lying.pak"), &lying).unwrap();
    // A truncated pak: its central directory is gone.
    let whole = pak_bytes(30);
    std::fs::write(paks.join("truncated.pak"), &whole[..whole.len() * 2 / 3]).unwrap();
    // A pak whose entries overlap: entry 5's central header points at entry 4's local
    // header (a readable one: the names have the same length).
    let mut overlap = pak_bytes(30);
    let h4 = central_header(&overlap, 4);
    let h5 = central_header(&overlap, 5);
    let at4 = u32::from_le_bytes(overlap[h4 + 42..h4 + 46].try_into().unwrap());
    overlap[h5 + 42..h5 + 46].copy_from_slice(&at4.to_le_bytes());
    std::fs::write(paks.join("overlap.pak"), &overlap).unwrap();

    let cache = tmp.path().join("cache");
    let first = common::build(&game, &tmp.path().join("a"), Some(&cache));
    let warnings = &layer(&first, "paks").warnings;
    let find = |needles: &[&str]| {
        assert!(
            warnings
                .iter()
                .any(|w| needles.iter().all(|n| w.contains(n))),
            "no warning with {needles:?} in {warnings:#?}"
        )
    };
    find(&["lying.pak", "`levels/entry007.bin`", "CRC-32"]);
    find(&["lying.pak", "does not match", "chunked as a plain file"]);
    find(&["truncated.pak", "truncated", "chunked as a plain file"]);
    find(&["overlap.pak", "overlap", "chunked as a plain file"]);
    // Every file is in the layer as it is on disk.
    let l = layer(&first, "paks");
    let gz = std::fs::read(blob_path(&first.layout, &l.digest.to_string())).unwrap();
    let tar_bytes = gantry_layer::gunzip_all(&gz).unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut seen = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        if let Some(name) = path
            .file_name()
            .filter(|n| n.to_string_lossy().ends_with(".pak"))
        {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut body).unwrap();
            assert_eq!(body, std::fs::read(paks.join(name)).unwrap(), "{path:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, 3);
    // All three are chunked as plain files (large-file chunks of 64 KiB and more): with
    // cuts at their entries the 30 entries of 10 kB of each would be 30 chunks or more.
    assert!(l.chunks < 20, "{} chunks", l.chunks);
    // Touched, then rebuilt warm: the same image as a cold build, still warned.
    for name in ["lying.pak", "truncated.pak", "overlap.pak"] {
        let p = paks.join(name);
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, b).unwrap();
    }
    let warm = common::build(&game, &tmp.path().join("b"), Some(&cache));
    let cold = common::build(&game, &tmp.path().join("c"), None);
    assert_eq!(warm.manifest_digest, first.manifest_digest);
    assert_eq!(cold.manifest_digest, first.manifest_digest);
    assert_eq!(layer(&warm, "paks").warnings.len(), warnings.len());
}

#[test]
fn other_chunking_settings_never_follow_the_cache_of_the_old_ones() {
    use gantry_sample_game::{PakShape, SampleSpec};
    let tmp = tempdir();
    let game = tmp.path().join("game");
    gantry_sample_game::generate(
        &game,
        &SampleSpec {
            scale_bytes: 12_000_000,
            seed: 8,
            paks: PakShape::Single,
        },
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    common::build(&game, &tmp.path().join("v1"), Some(&cache));
    // The same inputs with another gzip level and maximum chunk size: nothing the
    // cache recorded under the old settings may shape the new image.
    let spec = game.join("gantry.toml");
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str("\n[chunking]\nmin = 16384\navg = 65536\nmax = 131072\nlarge_file_scale = 4\ngzip_level = 1\n");
    std::fs::write(&spec, text).unwrap();
    let warm = common::build(&game, &tmp.path().join("warm"), Some(&cache));
    let cold = common::build(&game, &tmp.path().join("cold"), None);
    assert_eq!(warm.manifest_digest, cold.manifest_digest);
    assert_eq!(layer(&warm, "paks").reused_bytes, 0);
}
