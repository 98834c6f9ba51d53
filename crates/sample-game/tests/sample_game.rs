//! Integration tests of the sample game generator: determinism, archive validity, layout,
//! the runtime script, and both kinds of update.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use gantry_sample_game::{
    generate, parse_size, update, PakShape, SampleError, SampleSpec, UpdateKind, UpdateReport,
    UpdateSpec, STATE_FILE,
};
use sha2::{Digest, Sha256};

const MB: u64 = 1_000_000;

fn spec(scale: u64, seed: u64) -> SampleSpec {
    SampleSpec {
        scale_bytes: scale,
        seed,
        ..Default::default()
    }
}

fn gen(scale: u64, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("repo");
    generate(&dir, &spec(scale, seed)).expect("generate");
    (tmp, dir)
}

/// Every file under `dir` (relative path → bytes).
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            if e.file_type().expect("type").is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn digests(tree: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, [u8; 32]> {
    tree.iter()
        .map(|(k, v)| (k.clone(), Sha256::digest(v).into()))
        .collect()
}

/// Entries of a pak: name → data, checking every entry is stored.
fn read_pak(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut z = zip::ZipArchive::new(File::open(path).expect("open pak")).expect("valid zip");
    let mut out = BTreeMap::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).expect("entry");
        let name = f.name().expect("UTF-8 entry name").to_string();
        assert_eq!(
            f.compression(),
            zip::CompressionMethod::Stored,
            "{name} in {}",
            path.display()
        );
        assert_eq!(f.size(), f.compressed_size());
        let mut data = Vec::new();
        f.read_to_end(&mut data).expect("read entry (CRC checked)");
        assert_eq!(data.len() as u64, f.size());
        assert!(out.insert(name, data).is_none(), "duplicate entry");
    }
    out
}

fn all_paks(dir: &Path) -> Vec<String> {
    read_tree(&dir.join("paks"))
        .into_keys()
        .filter(|k| k.ends_with(".pak"))
        .collect()
}

/// Files in the engine tarball: path → (mode, mtime, data). Directories have no data.
fn read_engine(dir: &Path) -> BTreeMap<String, (u32, u64, Vec<u8>)> {
    let engine = dir.join("engine");
    let mut parts: Vec<PathBuf> = fs::read_dir(&engine)
        .expect("engine dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with("BinLinux64.Dedicated.tar.gz.x")
            })
        })
        .collect();
    parts.sort();
    let mut all = Vec::new();
    for p in &parts {
        all.extend(fs::read(p).expect("part"));
    }
    // A single gzip member: GzDecoder (not Multi) must read it to the end.
    let mut tar_bytes = Vec::new();
    GzDecoder::new(all.as_slice())
        .read_to_end(&mut tar_bytes)
        .expect("valid gzip");
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut out = BTreeMap::new();
    for e in archive.entries().expect("tar") {
        let mut e = e.expect("tar entry");
        let path = e.path().expect("path").to_string_lossy().into_owned();
        let mode = e.header().mode().expect("mode");
        let mtime = e.header().mtime().expect("mtime");
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        out.insert(path, (mode, mtime, data));
    }
    out
}

fn gz6_len(data: &[u8]) -> u64 {
    let mut e = GzEncoder::new(Vec::new(), Compression::new(6));
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip").len() as u64
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (_a, a) = gen(10 * MB, 7);
    let (_b, b) = gen(10 * MB, 7);
    let ta = read_tree(&a);
    let tb = read_tree(&b);
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(v == &tb[k], "{k} differs between two generations");
    }
    let (_c, c) = gen(10 * MB, 8);
    let tc = read_tree(&c);
    assert_ne!(ta["paks/textures.pak"], tc["paks/textures.pak"]);
    assert_ne!(
        ta["engine/BinLinux64.Dedicated.tar.gz.xaa"],
        tc["engine/BinLinux64.Dedicated.tar.gz.xaa"]
    );
}

#[test]
fn layout_matches_the_seed_repository() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("repo");
    let scale = 20 * MB;
    let report = generate(&dir, &spec(scale, 3)).expect("generate");
    let tree = read_tree(&dir);

    // Report agrees with the disk.
    assert_eq!(report.files_written as usize, tree.len());
    let total: u64 = tree.values().map(|v| v.len() as u64).sum();
    assert_eq!(report.total_bytes, total);
    for f in &report.files {
        assert_eq!(tree[&f.path].len() as u64, f.bytes, "{}", f.path);
    }
    assert_eq!(report.tag, "v1");

    // About 25% engine (uncompressed) and 75% paks.
    let eng = report.engine_uncompressed_bytes as f64 / scale as f64;
    let paks = report.areas["paks"].bytes as f64 / scale as f64;
    assert!((0.2..0.3).contains(&eng), "engine share {eng}");
    assert!((0.68..0.82).contains(&paks), "paks share {paks}");

    // Engine parts.
    let parts: Vec<&String> = tree
        .keys()
        .filter(|k| k.starts_with("engine/BinLinux64.Dedicated.tar.gz.x"))
        .collect();
    let names: Vec<String> = parts
        .iter()
        .map(|p| p.rsplit('.').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["xaa", "xab", "xac", "xad", "xae", "xaf", "xag"]);
    let sizes: Vec<usize> = parts.iter().map(|p| tree[*p].len()).collect();
    assert!(sizes.windows(2).all(|w| w[1] >= w[0] && w[1] - w[0] <= 7));
    assert!(tree.contains_key("engine/unpack.sh"));

    // Paks: config files and archives.
    let configs = tree
        .keys()
        .filter(|k| {
            k.starts_with("paks/")
                && k.matches('/').count() == 1
                && (k.ends_with(".cfg") || k.ends_with(".xml") || k.ends_with(".json"))
        })
        .count();
    assert!((18..=24).contains(&configs), "{configs} config files");
    for must in [
        "paks/gamedata.pak",
        "paks/scripts.pak",
        "paks/shaders.pak",
        "paks/textures.pak",
        "paks/sounds.pak",
    ] {
        assert!(tree.contains_key(must), "{must}");
    }
    let levels = tree
        .keys()
        .filter(|k| k.starts_with("paks/levels/") && k.ends_with("/level.pak"))
        .count();
    assert!(levels >= 4);
    let pak_sizes: Vec<usize> = tree
        .iter()
        .filter(|(k, _)| k.ends_with(".pak"))
        .map(|(_, v)| v.len())
        .collect();
    let largest = *pak_sizes.iter().max().unwrap_or(&0) as f64;
    assert!(largest > scale as f64 * 0.2, "a few paks are big");
    assert!(pak_sizes.iter().any(|&s| s < 64 * 1024), "many are small");

    // Build files.
    let toml_text = String::from_utf8(tree["gantry.toml"].clone()).expect("utf8");
    let toml: toml::Value = toml::from_str(&toml_text).expect("gantry.toml parses");
    assert_eq!(toml["image"]["name"].as_str(), Some("multiplayersample"));
    assert_eq!(toml["image"]["tag"].as_str(), Some("v1"));
    assert!(toml.get("base").is_none());
    assert_eq!(
        toml["config"]["entrypoint"].as_array().map(|a| a.len()),
        Some(1)
    );
    let layers = toml["layers"].as_array().expect("layers");
    let layer_names: Vec<&str> = layers.iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(layer_names, ["engine", "runtime", "paks"]);
    assert_eq!(
        layers[0]["sources"][0]["split"].as_str(),
        Some("engine/BinLinux64.Dedicated.tar.gz.x*")
    );
    assert_eq!(layers[2]["sources"][0]["dir"].as_str(), Some("paks"));

    let dockerfile = String::from_utf8(tree["Dockerfile"].clone()).expect("utf8");
    assert!(dockerfile.contains("ARG BASE=docker.io/library/ubuntu:18.04"));
    assert_eq!(dockerfile.matches("FROM ${BASE}").count(), 2);
    assert!(dockerfile.contains("tar -xz -C /"));
    assert!(dockerfile.contains("COPY --from=engine /BinLinux64.Dedicated/qtlibs"));
    let last = dockerfile
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert_eq!(last, "ADD paks /BinLinux64.Dedicated/");

    let state: serde_json::Value = serde_json::from_slice(&tree[STATE_FILE]).expect("state parses");
    assert_eq!(state["version"], 1);
    assert_eq!(state["seed"], 3);
    assert_eq!(state["scale_bytes"], scale);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for exe in ["runtime/start.sh", "engine/unpack.sh"] {
            let mode = fs::metadata(dir.join(exe))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "{exe} executable");
        }
    }
}

#[test]
fn paks_are_zips_with_stored_entries() {
    let (_t, dir) = gen(10 * MB, 5);
    let mut kinds: BTreeSet<String> = BTreeSet::new();
    let mut entries = 0;
    for rel in all_paks(&dir) {
        let pak = read_pak(&dir.join("paks").join(&rel));
        assert!(!pak.is_empty(), "{rel} has entries");
        for (name, data) in &pak {
            entries += 1;
            let ext = name.rsplit('.').next().unwrap_or_default().to_string();
            if ext == "dds" {
                assert!(data.len() < 4 || data.starts_with(b"DDS "), "{name}");
            }
            kinds.insert(ext);
        }
    }
    assert!(entries > 100, "{entries}");
    for ext in ["dds", "wem", "lua", "xml", "cfx"] {
        assert!(kinds.contains(ext), "{ext} entries exist");
    }
}

#[test]
fn engine_parts_concatenate_to_the_engine_tarball() {
    let scale = 12 * MB;
    let (_t, dir) = gen(scale, 9);
    let files = read_engine(&dir);
    let launcher = "BinLinux64.Dedicated/MultiplayerSampleLauncher_Server";
    for must in [
        "BinLinux64.Dedicated/",
        launcher,
        "BinLinux64.Dedicated/libCrySystem.so",
        "BinLinux64.Dedicated/qtlibs/",
        "BinLinux64.Dedicated/qtlibs/libQt5Core.so.5",
        "BinLinux64.Dedicated/qtlibs/platforms/libqminimal.so",
    ] {
        assert!(files.contains_key(must), "{must} in the tarball");
    }
    let total: u64 = files.values().map(|(_, _, d)| d.len() as u64).sum();
    assert!(
        (0.2..0.3).contains(&(total as f64 / scale as f64)),
        "{total}"
    );
    let mtimes: BTreeSet<u64> = files.values().map(|(_, m, _)| *m).collect();
    assert_eq!(mtimes.len(), 1, "one fixed mtime");
    let libs = files.keys().filter(|k| k.ends_with(".so")).count();
    assert!(libs > 30);
    for (path, (mode, _, data)) in &files {
        if path.ends_with(".so") {
            assert!(data.starts_with(b"\x7fELF"), "{path}");
            assert_eq!(mode & 0o111, 0o111, "{path}");
        }
    }
    assert!(files[launcher].2.starts_with(b"#!/bin/sh\n"));
    // Code compresses about 3:1.
    let sample: Vec<u8> = files
        .values()
        .flat_map(|(_, _, d)| d.iter().copied())
        .take(2_000_000)
        .collect();
    let ratio = sample.len() as f64 / gz6_len(&sample) as f64;
    assert!((2.5..3.6).contains(&ratio), "code ratio {ratio}");
}

fn run_start_sh(shell: &str, dir: &Path, game_dir: &Path) -> String {
    let out = Command::new(shell)
        .args(if shell.ends_with("busybox") {
            vec!["sh".to_string()]
        } else {
            vec![]
        })
        .arg(dir.join("runtime/start.sh"))
        .env("SERVER_PORT", "4567")
        .env("GAME_DIR", game_dir)
        .env("SAMPLE_SERVER_ONESHOT", "1")
        .output()
        .expect("run start.sh");
    assert!(
        out.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn start_sh_starts_the_launcher() {
    let (tmp, dir) = gen(2 * MB, 1);
    let root = tmp.path().join("rootfs");
    fs::create_dir_all(&root).expect("mkdir");
    let status = Command::new("sh")
        .arg(dir.join("engine/unpack.sh"))
        .arg(&root)
        .status()
        .expect("run unpack.sh");
    assert!(status.success());
    assert!(fs::read_dir(dir.join("engine")).expect("engine").all(|e| !e
        .expect("e")
        .file_name()
        .to_string_lossy()
        .contains(".tar.gz.x")));
    let game = root.join("BinLinux64.Dedicated");
    assert!(game.join("MultiplayerSampleLauncher_Server").is_file());
    let mut shells = vec!["sh".to_string()];
    for bb in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(bb).exists() {
            shells.push(bb.to_string());
            break;
        }
    }
    for shell in shells {
        let out = run_start_sh(&shell, &dir, &game);
        assert!(
            out.contains("starting MultiplayerSample server on port 4567"),
            "{shell}: {out}"
        );
        assert!(out.contains("listening on udp port 4567"), "{shell}: {out}");
    }
}

/// Checks an assets update against the repository before and after.
fn check_assets_update(
    before: &BTreeMap<String, Vec<u8>>,
    dir: &Path,
    r: &UpdateReport,
    requested: u64,
) {
    let after = read_tree(dir);
    // Engine untouched.
    for (k, v) in before.iter().filter(|(k, _)| k.starts_with("engine/")) {
        assert!(after.get(k) == Some(v), "{k} must not change");
    }
    // Roughly the asked amount.
    let ratio = r.changed_bytes as f64 / requested as f64;
    assert!(
        (0.8..1.3).contains(&ratio),
        "changed {ratio:.2}x of request"
    );
    assert!(r.paks_replaced.len() == 1);
    assert!(!r.entries_added.is_empty() && !r.entries_removed.is_empty());
    let touched: BTreeSet<&str> = r
        .entries_changed
        .iter()
        .map(|e| e.archive.as_str())
        .collect();
    assert!(touched.len() >= 2, "several paks: {touched:?}");
    assert!(r.files_changed.iter().any(|f| f.ends_with(".cfg")
        || (f.starts_with("paks/") && (f.ends_with(".json") || f.ends_with(".xml")))));

    // Every pak is still valid; entries not mentioned are byte-identical.
    let mut new_content = Vec::new();
    let mentioned: BTreeSet<(String, String)> = r
        .entries_changed
        .iter()
        .chain(&r.entries_added)
        .chain(&r.entries_removed)
        .map(|e| (e.archive.clone(), e.name.clone()))
        .collect();
    let mut shifted = false;
    for rel in all_paks(dir) {
        let archive = format!("paks/{rel}");
        let new = read_pak(&dir.join("paks").join(&rel));
        let old_bytes = before.get(&archive).expect("pak existed");
        let old_tmp = tempfile::NamedTempFile::new().expect("tmp");
        fs::write(old_tmp.path(), old_bytes).expect("write");
        let old = read_pak(old_tmp.path());
        if r.paks_replaced.contains(&archive) {
            assert!(new.keys().all(|k| !old.contains_key(k)));
        }
        for (name, data) in &new {
            let key = (archive.clone(), name.clone());
            if mentioned.contains(&key) {
                assert!(old.get(name) != Some(data), "{archive}:{name} changed");
            } else {
                assert!(old.get(name) == Some(data), "{archive}:{name} untouched");
            }
        }
        for name in old.keys() {
            if !new.contains_key(name) {
                assert!(mentioned.contains(&(archive.clone(), name.clone())));
            }
        }
        if old_bytes != &after[&archive] && old.len() > 3 {
            shifted = true;
        }
    }
    assert!(shifted);
    for e in r.entries_changed.iter().chain(&r.entries_added) {
        let pak = read_pak(&dir.join(&e.archive));
        let data = &pak[&e.name];
        assert_eq!(Some(data.len() as u64), e.new_size);
        new_content.extend_from_slice(data);
    }
    for f in &r.files_changed {
        if f.starts_with("paks/") && !f.ends_with(".pak") {
            new_content.extend_from_slice(&after[f]);
        }
    }
    assert_eq!(new_content.len() as u64, r.changed_bytes);
    // update_bytes is gzip -6 of the same content (order may differ slightly).
    let independent = gz6_len(&new_content) as f64;
    let rel = r.update_bytes as f64 / independent;
    assert!((0.97..1.03).contains(&rel), "update_bytes {rel}");
    assert!(r.update_bytes < r.changed_bytes);
    assert!(r.update_bytes * 4 > r.changed_bytes, "mostly binary assets");
}

#[test]
fn assets_update_changes_about_the_requested_bytes() {
    let (_t, dir) = gen(20 * MB, 11);
    let before = read_tree(&dir);
    let requested = MB * 3 / 2;
    let r = update(
        &dir,
        &UpdateSpec {
            bytes: requested,
            seed: 11,
            kind: UpdateKind::Assets,
        },
    )
    .expect("update");
    assert_eq!(r.version, 2);
    assert_eq!(r.tag, "v2");
    check_assets_update(&before, &dir, &r, requested);
    let toml = fs::read_to_string(dir.join("gantry.toml")).expect("toml");
    assert!(toml.contains("tag = \"v2\""));
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join(STATE_FILE)).expect("state")).expect("json");
    assert_eq!(state["version"], 2);

    // A second assets update differs from the first.
    let before2 = read_tree(&dir);
    let r2 = update(
        &dir,
        &UpdateSpec {
            bytes: requested,
            seed: 11,
            kind: UpdateKind::Assets,
        },
    )
    .expect("update 2");
    assert_eq!(r2.tag, "v3");
    check_assets_update(&before2, &dir, &r2, requested);
    let names = |r: &UpdateReport| -> BTreeSet<String> {
        r.entries_changed
            .iter()
            .map(|e| format!("{}:{}", e.archive, e.name))
            .collect()
    };
    assert_ne!(names(&r), names(&r2));
}

#[test]
fn engine_update_rebuilds_binaries_and_leaves_paks() {
    let (_t, dir) = gen(20 * MB, 12);
    let before = read_tree(&dir);
    let engine_before = read_engine(&dir);
    let requested = MB;
    let r = update(
        &dir,
        &UpdateSpec {
            bytes: requested,
            seed: 1,
            kind: UpdateKind::Engine,
        },
    )
    .expect("engine update");
    let after = read_tree(&dir);
    for (k, v) in before.iter().filter(|(k, _)| k.starts_with("paks/")) {
        assert!(after.get(k) == Some(v), "{k} must not change");
    }
    assert!(!r.entries_changed.is_empty() && r.entries_changed.len() <= 8);
    assert!(r.entries_added.is_empty() && r.entries_removed.is_empty());
    let ratio = r.changed_bytes as f64 / requested as f64;
    assert!(
        (0.5..1.5).contains(&ratio),
        "changed {ratio:.2}x of request"
    );
    let engine_after = read_engine(&dir);
    assert_eq!(
        engine_before.keys().collect::<Vec<_>>(),
        engine_after.keys().collect::<Vec<_>>()
    );
    let rebuilt: BTreeSet<&str> = r.entries_changed.iter().map(|e| e.name.as_str()).collect();
    let mut new_content = Vec::new();
    for (path, (_, mtime, data)) in &engine_after {
        let (_, old_mtime, old) = &engine_before[path];
        if rebuilt.contains(path.as_str()) {
            assert_ne!(data, old, "{path} rebuilt");
            assert!(mtime > old_mtime);
            new_content.extend_from_slice(data);
        } else {
            assert_eq!(data, old, "{path} untouched");
        }
    }
    assert_eq!(new_content.len() as u64, r.changed_bytes);
    let rel = r.update_bytes as f64 / gz6_len(&new_content) as f64;
    assert!((0.97..1.03).contains(&rel), "update_bytes {rel}");
    let code_ratio = r.changed_bytes as f64 / r.update_bytes as f64;
    assert!((2.4..3.6).contains(&code_ratio), "{code_ratio}");
    assert!(r
        .files_changed
        .iter()
        .any(|f| f.starts_with("engine/BinLinux64.Dedicated.tar.gz.x")));
    assert_eq!(r.tag, "v2");
}

#[test]
fn update_sequences_are_deterministic() {
    let (_a, a) = gen(8 * MB, 21);
    let (_b, b) = gen(8 * MB, 21);
    let steps = [
        (UpdateKind::Assets, 400_000),
        (UpdateKind::Engine, 300_000),
        (UpdateKind::Assets, 600_000),
    ];
    let mut previous: Option<BTreeMap<String, [u8; 32]>> = None;
    for (kind, bytes) in steps {
        let s = UpdateSpec {
            bytes,
            seed: 5,
            kind,
        };
        let ra = update(&a, &s).expect("update a");
        let rb = update(&b, &s).expect("update b");
        assert_eq!(
            serde_json::to_value(&ra).expect("json")["entries_changed"],
            serde_json::to_value(&rb).expect("json")["entries_changed"]
        );
        assert_eq!(ra.update_bytes, rb.update_bytes);
        let da = digests(&read_tree(&a));
        assert_eq!(da, digests(&read_tree(&b)), "replays agree after {kind}");
        if let Some(p) = previous {
            assert_ne!(p, da, "each update changes the repository");
        }
        previous = Some(da);
    }
}

#[test]
fn tiny_scales_work() {
    for scale in [1, 1000, 1_000_000] {
        let (_t, dir) = gen(scale, 2);
        for rel in all_paks(&dir) {
            read_pak(&dir.join("paks").join(rel));
        }
        read_engine(&dir);
        for kind in [UpdateKind::Assets, UpdateKind::Engine] {
            let r = update(
                &dir,
                &UpdateSpec {
                    bytes: 50_000,
                    seed: 1,
                    kind,
                },
            )
            .expect("update at a tiny scale");
            assert!(r.changed_bytes > 0);
        }
        for rel in all_paks(&dir) {
            read_pak(&dir.join("paks").join(rel));
        }
        read_engine(&dir);
    }
}

#[test]
fn errors_carry_context() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("x"), b"x").expect("write");
    let e = generate(tmp.path(), &spec(MB, 1)).unwrap_err();
    assert!(matches!(e, SampleError::DirNotEmpty { .. }), "{e}");
    assert!(e.to_string().contains(&tmp.path().display().to_string()));

    let e = update(
        tmp.path(),
        &UpdateSpec {
            bytes: 1,
            seed: 1,
            kind: UpdateKind::Assets,
        },
    )
    .unwrap_err();
    assert!(matches!(e, SampleError::NotARepository { .. }), "{e}");

    let e = generate(&tmp.path().join("new"), &spec(0, 1)).unwrap_err();
    assert!(matches!(e, SampleError::InvalidSpec(_)));

    assert_eq!(parse_size("3.1GB").expect("size"), 3_100_000_000);
    assert!(parse_size("lots").is_err());
    assert_eq!(
        "engine".parse::<UpdateKind>().expect("kind"),
        UpdateKind::Engine
    );
    assert_eq!(UpdateKind::default(), UpdateKind::Assets);
}

#[test]
fn the_single_pak_shape_packs_every_asset_in_one_pak_and_an_update_edits_it_throughout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("repo");
    let shaped = SampleSpec {
        paks: PakShape::Single,
        ..spec(20 * MB, 13)
    };
    let g = generate(&dir, &shaped).expect("generate");
    assert_eq!(g.shape, PakShape::Single);
    assert_eq!(all_paks(&dir), vec!["game.pak".to_string()]);
    let before = read_tree(&dir);
    let old = read_pak(&dir.join("paks/game.pak"));
    assert_eq!(old.len() as u64, g.pak_entries);
    assert!(old.len() > 300, "many small entries: {}", old.len());
    let kinds: BTreeSet<&str> = old
        .keys()
        .filter_map(|n| n.rsplit_once('.'))
        .map(|(_, x)| x)
        .collect();
    assert!(kinds.len() >= 8, "mixed kinds: {kinds:?}");
    // The same spec gives the same bytes; the other shape other bytes.
    let (_t2, split) = gen(20 * MB, 13);
    assert_ne!(all_paks(&split), all_paks(&dir));
    let again = tmp.path().join("again");
    generate(&again, &shaped).expect("generate again");
    assert_eq!(digests(&read_tree(&again)), digests(&before));

    let requested = MB * 3 / 2;
    let r = update(
        &dir,
        &UpdateSpec {
            bytes: requested,
            seed: 13,
            kind: UpdateKind::Assets,
        },
    )
    .expect("update");
    assert!(r.paks_replaced.is_empty(), "{:?}", r.paks_replaced);
    assert!(r.files_changed.contains(&"paks/game.pak".to_string()));
    let ratio = r.changed_bytes as f64 / requested as f64;
    assert!(
        (0.8..1.6).contains(&ratio),
        "changed {ratio:.2}x of request"
    );
    assert!(!r.entries_added.is_empty() && !r.entries_removed.is_empty());
    // Small text edits: at least ten entries grow or shrink by a few bytes only.
    let touches = r
        .entries_changed
        .iter()
        .filter(|e| matches!((e.old_size, e.new_size), (Some(o), Some(n)) if o != n && o.abs_diff(n) < 600))
        .count();
    assert!(touches >= 10, "{touches} small edits");
    // Every entry not mentioned is byte-identical; the pak is still valid.
    let new = read_pak(&dir.join("paks/game.pak"));
    let mentioned: BTreeSet<&str> = r
        .entries_changed
        .iter()
        .chain(&r.entries_added)
        .chain(&r.entries_removed)
        .map(|e| e.name.as_str())
        .collect();
    for (name, data) in &new {
        assert_eq!(
            old.get(name) == Some(data),
            !mentioned.contains(name.as_str()),
            "{name}"
        );
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        assert!(mentioned.contains(name.as_str()), "{name} vanished");
    }
    // The engine is untouched.
    for (k, v) in before.iter().filter(|(k, _)| k.starts_with("engine/")) {
        assert!(fs::read(dir.join(k)).expect("read") == *v, "{k} changed");
    }
}

#[test]
fn a_state_written_before_the_single_shape_still_updates_as_split() {
    let (_t, dir) = gen(10 * MB, 14);
    let path = dir.join(STATE_FILE);
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("state")).expect("json");
    assert_eq!(state["paks"], "split");
    state.as_object_mut().expect("object").remove("paks");
    fs::write(&path, serde_json::to_vec(&state).expect("json")).expect("write");
    let r = update(
        &dir,
        &UpdateSpec {
            bytes: MB,
            seed: 14,
            kind: UpdateKind::Assets,
        },
    )
    .expect("update");
    assert_eq!(
        r.paks_replaced.len(),
        1,
        "the split shape replaces a small pak"
    );
}
