//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use gantry_build::{BuildOptions, BuildOutput, NoProgress};
use std::path::{Path, PathBuf};

/// Build options for a test: no cache unless given, one fixed epoch.
pub fn options(context: &Path, output: &Path, cache: Option<&Path>) -> BuildOptions {
    BuildOptions {
        context: context.to_path_buf(),
        spec_file: None,
        output: output.to_path_buf(),
        cache_dir: cache.map(Path::to_path_buf),
        source_date_epoch: 1_700_000_000,
        threads: 2,
        tag: None,
        registry: Default::default(),
    }
}

/// Builds and panics with the error on failure.
pub fn build(context: &Path, output: &Path, cache: Option<&Path>) -> BuildOutput {
    gantry_build::build(&options(context, output, cache), &NoProgress)
        .unwrap_or_else(|e| panic!("build failed: {e}"))
}

/// A small game repository: a busybox base rootfs, a split engine archive,
/// a start script and a directory of assets.
pub fn small_game(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("base")).unwrap();
    gantry_test_support::busybox_rootfs_tar(&dir.join("base/rootfs.tar"));
    // Engine: a gzip tar split in three parts.
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        for (name, body) in [
            ("Engine/launcher", vec![7u8; 40_000]),
            (
                "Engine/lib/libgame.so",
                (0..90_000u32).map(|i| (i * 7 % 251) as u8).collect(),
            ),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, name, &body[..]).unwrap();
        }
        b.finish().unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::create_dir_all(dir.join("engine")).unwrap();
    let third = gz.len() / 3 + 1;
    for (i, part) in gz.chunks(third).enumerate() {
        std::fs::write(
            dir.join(format!(
                "engine/Engine.tar.gz.xa{}",
                (b'a' + i as u8) as char
            )),
            part,
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("assets/levels")).unwrap();
    std::fs::write(dir.join("assets/game.cfg"), "sv_maxplayers=16\n").unwrap();
    std::fs::write(dir.join("assets/levels/level1.pak"), vec![42u8; 300_000]).unwrap();
    std::fs::write(
        dir.join("start.sh"),
        "#!/bin/sh\necho \"game server up, cfg: $(cat /Engine/game.cfg)\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("gantry.toml"),
        r#"
[image]
name = "smallgame"
tag = "v1"

[base]
rootfs = "base/rootfs.tar"

[config]
entrypoint = ["/start.sh"]
env = ["GAME=small"]

[[layers]]
name = "engine"
[[layers.sources]]
split = "engine/Engine.tar.gz.x*"

[[layers]]
name = "runtime"
[[layers.sources]]
file = "start.sh"
dest = "/start.sh"
mode = "0755"

[[layers]]
name = "assets"
[[layers.sources]]
dir = "assets"
dest = "/Engine"
"#,
    )
    .unwrap();
    dir.to_path_buf()
}

/// Recursively copies a directory (new inodes and mtimes).
pub fn copy_dir(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(from).unwrap();
        let dst = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else {
            std::fs::copy(entry.path(), &dst).unwrap();
        }
    }
}
