//! The engine: a gzip tar of `BinLinux64.Dedicated/` split into seven parts, as the original
//! sample kept it in git (`split -n 7`, parts `BinLinux64.Dedicated.tar.gz.xaa` … `.xag`).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::content::{self, Kind, Vocab};
use crate::error::IoContext;
use crate::pargz::ParGzWriter;
use crate::rng::{derive_seed, Rng};
use crate::{SampleError, Stats, UpdateSizer};

/// Directory the engine unpacks to (at `/` in the image).
pub(crate) const ENGINE_DIR: &str = "BinLinux64.Dedicated";
/// Name of the (virtual) engine tarball; the parts append `.xaa` … `.xag`.
pub(crate) const TAR_NAME: &str = "BinLinux64.Dedicated.tar.gz";
/// Number of parts the tarball is split into.
pub(crate) const PARTS: usize = 7;
/// The dedicated server launcher, relative to the engine directory.
pub(crate) const LAUNCHER: &str = "MultiplayerSampleLauncher_Server";
/// gzip level of the engine tarball (the level `gzip`/`tar -z` use by default).
const ENGINE_GZIP_LEVEL: u32 = 6;
/// Share of the scale taken by the engine's uncompressed files.
pub(crate) const ENGINE_SHARE: f64 = 0.25;

/// Modification time of everything in generation 1: 2019-06-03 10:00:00 UTC.
pub(crate) const BASE_MTIME: u64 = 1_559_556_000;

/// Modification time of files (re)built by version `v` (one day per version).
pub(crate) fn mtime_for_version(v: u32) -> u64 {
    BASE_MTIME + u64::from(v.saturating_sub(1)) * 86_400
}

/// Binaries of the engine, with relative weights of their sizes.
const ROOT_FILES: &[(&str, f64)] = &[
    (LAUNCHER, 9.0),
    ("libCry3DEngine.so", 7.0),
    ("libCrySystem.so", 6.0),
    ("libCryAction.so", 5.0),
    ("libCryPhysics.so", 5.0),
    ("libCryAnimation.so", 4.0),
    ("libCryAISystem.so", 3.5),
    ("libCryNetwork.so", 3.0),
    ("libCryRenderNULL.so", 3.0),
    ("libCryEntitySystem.so", 2.0),
    ("libCryScriptSystem.so", 2.0),
    ("libCryMovie.so", 1.5),
    ("libCryFont.so", 1.0),
    ("libGridMate.so", 2.5),
    ("libLmbrAWS.so", 2.0),
    ("libaws-cpp-sdk-core.so", 2.0),
    ("libaws-cpp-sdk-gamelift-server.so", 1.0),
    ("libaws-cpp-sdk-sqs.so", 0.8),
    ("libaws-cpp-sdk-lambda.so", 0.6),
    ("libtbb.so.2", 0.3),
    ("libtbbmalloc.so.2", 0.1),
];

/// Gems, shipped as `libGem.<Name>.<uuid>.v0.1.0.so`.
const GEMS: &[(&str, f64)] = &[
    ("LmbrCentral", 4.0),
    ("EMotionFX", 5.0),
    ("LyShine", 3.0),
    ("ScriptCanvas", 3.0),
    ("MultiplayerSample", 3.0),
    ("AudioEngineWwise", 3.0),
    ("CloudGemFramework", 2.0),
    ("Maestro", 1.5),
    ("Multiplayer", 1.5),
    ("AudioSystem", 1.5),
    ("GameLift", 1.0),
    ("CloudGemMetric", 1.0),
    ("Water", 1.0),
    ("PhysicsEntities", 0.8),
    ("ImGui", 0.8),
    ("StartingPointInput", 0.6),
    ("LegacyGameInterface", 0.6),
    ("CameraFramework", 0.5),
    ("GameEffectSystem", 0.5),
    ("LyShineExamples", 0.5),
    ("StartingPointCamera", 0.4),
    ("Camera", 0.4),
    ("Clouds", 0.4),
    ("StartingPointMovement", 0.3),
    ("TextureAtlas", 0.3),
    ("HttpRequestor", 0.3),
    ("SaveData", 0.3),
    ("LocalUser", 0.2),
];

const QT_FILES: &[(&str, f64)] = &[
    ("libQt5Core.so.5", 4.0),
    ("libQt5Gui.so.5", 4.0),
    ("libQt5Widgets.so.5", 4.0),
    ("libQt5Network.so.5", 1.2),
    ("libQt5Xml.so.5", 0.3),
    ("libQt5Concurrent.so.5", 0.1),
    ("libicudata.so.56", 2.5),
    ("libicui18n.so.56", 2.5),
    ("libicuuc.so.56", 1.5),
];

const QT_PLATFORM_FILES: &[(&str, f64)] = &[
    ("libqminimal.so", 0.2),
    ("libqoffscreen.so", 0.4),
    ("libqxcb.so", 0.6),
];

/// One item of the engine tarball.
#[derive(Clone, Debug)]
pub(crate) enum EngineItem {
    Dir(String),
    File { path: String, size: u64, mode: u32 },
}

/// The engine's layout for a seed and scale: directories first, then the files they hold.
pub(crate) fn engine_plan(seed: u64, scale: u64) -> Vec<EngineItem> {
    let mut rng = Rng::derived(seed, &[b"engine-plan"]);
    let mut named: Vec<(String, f64)> = Vec::new();
    for (name, w) in ROOT_FILES {
        named.push((format!("{ENGINE_DIR}/{name}"), *w));
    }
    for (gem, w) in GEMS {
        let mut uuid = [0u8; 16];
        rng.fill(&mut uuid);
        let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
        named.push((format!("{ENGINE_DIR}/libGem.{gem}.{hex}.v0.1.0.so"), *w));
    }
    for (name, w) in QT_FILES {
        named.push((format!("{ENGINE_DIR}/qtlibs/{name}"), *w));
    }
    for (name, w) in QT_PLATFORM_FILES {
        named.push((format!("{ENGINE_DIR}/qtlibs/platforms/{name}"), *w));
    }
    let total_w: f64 = named.iter().map(|(_, w)| w).sum();
    let budget = scale as f64 * ENGINE_SHARE;
    let mut items = vec![EngineItem::Dir(format!("{ENGINE_DIR}/"))];
    let mut dirs_done = BTreeSet::new();
    for (path, w) in named {
        let dir = match path.rsplit_once('/') {
            Some((d, _)) => d.to_string(),
            None => String::new(),
        };
        if dir != ENGINE_DIR && dirs_done.insert(dir.clone()) {
            items.push(EngineItem::Dir(format!("{dir}/")));
        }
        let factor = 0.8 + 0.4 * rng.unit();
        let min = if path.ends_with(LAUNCHER) { 8192 } else { 4096 };
        let size = ((budget * w / total_w * factor) as u64).max(min);
        items.push(EngineItem::File {
            path,
            size,
            mode: 0o755,
        });
    }
    items.push(EngineItem::File {
        path: format!("{ENGINE_DIR}/qtlibs/qt.conf"),
        size: 0,
        mode: 0o644,
    });
    items
}

/// The start of the launcher: a POSIX shell script, so that the generated image really runs
/// (it prints where it listens and idles until SIGTERM); the rest of the file is synthetic
/// machine code the shell never reads.
fn launcher_stub() -> &'static str {
    r#"#!/bin/sh
# MultiplayerSampleLauncher_Server: stand-in for the sample's dedicated server binary,
# generated by gantry sample-game. The bytes after this script are synthetic machine code.
port=33435
for arg in "$@"; do
  case "$arg" in
    +sv_port=*) port="${arg#+sv_port=}" ;;
  esac
done
echo "MultiplayerSample dedicated server listening on udp port $port"
if [ -n "$SAMPLE_SERVER_ONESHOT" ]; then exit 0; fi
trap 'echo "MultiplayerSample dedicated server shutting down"; exit 0' TERM INT
while :; do sleep 1 & wait $!; done
exit 0
"#
}

const QT_CONF: &str = "[Paths]\nPrefix = .\nPlugins = .\n";

/// The bytes of an engine file.
pub(crate) fn engine_file_content(path: &str, size: u64, seed: u64, vocab: &Vocab) -> Vec<u8> {
    if path.ends_with("/qt.conf") {
        return QT_CONF.as_bytes().to_vec();
    }
    if path.ends_with(LAUNCHER) {
        let stub = launcher_stub().as_bytes();
        let size = size.max(stub.len() as u64 + 64);
        let mut out = content::generate_exec(size, seed, vocab);
        out[..stub.len()].copy_from_slice(stub);
        out[stub.len()] = b'\n';
        return out;
    }
    // Everything else in the engine directory is a shared library.
    content::generate(Kind::Code, size, seed, vocab)
}

fn content_seed(seed: u64, path: &str, generation: u32) -> u64 {
    derive_seed(
        seed,
        &[b"engine-file", path.as_bytes(), &generation.to_le_bytes()],
    )
}

fn tar_header(size: u64, mode: u32, mtime: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    // Both names are short ASCII, which cannot fail.
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h
}

/// Path of the temporary full tarball while (re)building.
fn tmp_tarball(engine_dir: &Path) -> PathBuf {
    engine_dir.join(format!(".{TAR_NAME}.tmp"))
}

/// Name of part `i` (0-based): `BinLinux64.Dedicated.tar.gz.xaa`, `.xab`, …
pub(crate) fn part_name(i: usize) -> String {
    let a = (b'a' + (i / 26) as u8) as char;
    let b = (b'a' + (i % 26) as u8) as char;
    format!("{TAR_NAME}.x{a}{b}")
}

/// The engine part files present in `engine_dir`, sorted by name.
pub(crate) fn list_parts(engine_dir: &Path) -> Result<Vec<PathBuf>, SampleError> {
    let prefix = format!("{TAR_NAME}.x");
    let mut parts = Vec::new();
    for e in fs::read_dir(engine_dir).at(engine_dir)? {
        let e = e.at(engine_dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            parts.push(e.path());
        }
    }
    parts.sort();
    Ok(parts)
}

/// Splits `whole` into [`PARTS`] files of equal size (the last takes the remainder), like
/// `split -n 7`, then removes it. Returns (file name, size) of each part.
fn split_into_parts(
    whole: &Path,
    engine_dir: &Path,
    stats: &mut Stats,
) -> Result<Vec<(String, u64)>, SampleError> {
    let total = fs::metadata(whole).at(whole)?.len();
    let mut src = BufReader::with_capacity(1 << 20, File::open(whole).at(whole)?);
    let chunk = total / PARTS as u64;
    let mut out = Vec::with_capacity(PARTS);
    for i in 0..PARTS {
        let len = if i + 1 == PARTS {
            total - chunk * (PARTS as u64 - 1)
        } else {
            chunk
        };
        let name = part_name(i);
        let path = engine_dir.join(&name);
        let mut dst = BufWriter::with_capacity(1 << 20, File::create(&path).at(&path)?);
        let copied = io::copy(&mut (&mut src).take(len), &mut dst).at(&path)?;
        if copied != len {
            return Err(SampleError::Malformed {
                path: whole.to_path_buf(),
                reason: "tarball shrank while splitting".into(),
            });
        }
        dst.flush().at(&path)?;
        stats.file(&format!("engine/{name}"), len);
        out.push((name, len));
    }
    fs::remove_file(whole).at(whole)?;
    Ok(out)
}

type TarOut = tar::Builder<ParGzWriter<BufWriter<File>>>;

fn new_tarball(path: &Path) -> Result<TarOut, SampleError> {
    let f = File::create(path).at(path)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let gz = ParGzWriter::new(
        BufWriter::with_capacity(1 << 20, f),
        ENGINE_GZIP_LEVEL,
        threads,
    )
    .at(path)?;
    Ok(tar::Builder::new(gz))
}

fn finish_tarball(tar: TarOut, path: &Path) -> Result<(), SampleError> {
    let gz = tar.into_inner().at(path)?;
    let mut w = gz.finish().at(path)?;
    w.flush().at(path)?;
    Ok(())
}

/// Writes `engine/` (the split tarball and `unpack.sh`) for a new repository.
pub(crate) fn generate_engine(
    repo: &Path,
    seed: u64,
    scale: u64,
    vocab: &Vocab,
) -> Result<Stats, SampleError> {
    let mut stats = Stats::default();
    let engine_dir = repo.join("engine");
    fs::create_dir_all(&engine_dir).at(&engine_dir)?;
    let tmp = tmp_tarball(&engine_dir);
    let mut tar = new_tarball(&tmp)?;
    let mtime = mtime_for_version(1);
    for item in engine_plan(seed, scale) {
        match item {
            EngineItem::Dir(path) => {
                let mut h = tar_header(0, 0o755, mtime, true);
                tar.append_data(&mut h, &path, io::empty()).at(&tmp)?;
            }
            EngineItem::File { path, size, mode } => {
                let data = engine_file_content(&path, size, content_seed(seed, &path, 1), vocab);
                let mut h = tar_header(data.len() as u64, mode, mtime, false);
                tar.append_data(&mut h, &path, data.as_slice()).at(&tmp)?;
                stats.content(Kind::Code, data.len() as u64);
                stats.engine_files += 1;
                stats.engine_uncompressed += data.len() as u64;
            }
        }
    }
    finish_tarball(tar, &tmp)?;
    split_into_parts(&tmp, &engine_dir, &mut stats)?;
    let unpack = engine_dir.join("unpack.sh");
    crate::repo::write_file(&unpack, crate::repo::UNPACK_SH.as_bytes(), 0o755)?;
    stats.file("engine/unpack.sh", crate::repo::UNPACK_SH.len() as u64);
    Ok(stats)
}

/// Reads several files one after another as one stream.
struct Concat {
    files: Vec<PathBuf>,
    next: usize,
    cur: Option<File>,
}

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(f) = &mut self.cur {
                let n = f.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.cur = None;
            }
            if self.next >= self.files.len() {
                return Ok(0);
            }
            self.cur = Some(File::open(&self.files[self.next])?);
            self.next += 1;
        }
    }
}

/// Opens the engine tarball (its parts concatenated) for reading.
pub(crate) fn open_engine_tar(
    engine_dir: &Path,
) -> Result<tar::Archive<MultiGzDecoder<BufReader<impl Read>>>, SampleError> {
    let parts = list_parts(engine_dir)?;
    if parts.is_empty() {
        return Err(SampleError::Malformed {
            path: engine_dir.to_path_buf(),
            reason: format!("no {TAR_NAME}.x* parts"),
        });
    }
    let concat = Concat {
        files: parts,
        next: 0,
        cur: None,
    };
    Ok(tar::Archive::new(MultiGzDecoder::new(
        BufReader::with_capacity(1 << 20, concat),
    )))
}

/// What an engine update did.
pub(crate) struct EngineUpdate {
    /// (path in the tarball, old size, new size) of each rebuilt binary.
    pub(crate) rebuilt: Vec<(String, u64, u64)>,
    /// Part files written (names and sizes).
    pub(crate) parts: Vec<(String, u64)>,
    /// Part files that existed before and are gone now.
    pub(crate) parts_removed: Vec<String>,
}

/// Picks "a few" binaries whose planned sizes add up to about `bytes`.
fn pick_rebuilds(plan: &[EngineItem], bytes: u64, rng: &mut Rng) -> BTreeSet<String> {
    let mut candidates: Vec<(String, u64)> = plan
        .iter()
        .filter_map(|i| match i {
            EngineItem::File { path, size, mode } if *mode == 0o755 => Some((path.clone(), *size)),
            _ => None,
        })
        .collect();
    rng.shuffle(&mut candidates);
    let mut chosen = BTreeSet::new();
    let mut left = bytes;
    // First pass: binaries that are a sizeable part of what is left ("a few binaries");
    // second pass: anything that still fits.
    for min_share in [5, u64::MAX] {
        for (path, size) in &candidates {
            if chosen.len() >= 8 || left < bytes / 10 {
                break;
            }
            let big_enough = min_share == u64::MAX || *size >= left / min_share;
            if big_enough && *size <= left + left / 8 && !chosen.contains(path) {
                chosen.insert(path.clone());
                left = left.saturating_sub(*size);
            }
        }
    }
    if chosen.is_empty() {
        if let Some((path, _)) = candidates.iter().min_by_key(|(p, s)| (*s, p.clone())) {
            chosen.insert(path.clone());
        }
    }
    chosen
}

/// Rebuilds a few binaries inside the engine tarball (version `version`), re-making the tar,
/// re-gzipping and re-splitting it. New binaries' bytes go to `sizer`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn update_engine(
    repo: &Path,
    seed: u64,
    update_seed: u64,
    scale: u64,
    version: u32,
    bytes: u64,
    vocab: &Vocab,
    sizer: &mut UpdateSizer,
) -> Result<EngineUpdate, SampleError> {
    let engine_dir = repo.join("engine");
    let old_parts = list_parts(&engine_dir)?;
    let mut rng = Rng::derived(update_seed, &[b"engine-update", &version.to_le_bytes()]);
    let targets = pick_rebuilds(&engine_plan(seed, scale), bytes, &mut rng);
    let tmp = tmp_tarball(&engine_dir);
    let mut out = new_tarball(&tmp)?;
    let mut archive = open_engine_tar(&engine_dir)?;
    let mtime = mtime_for_version(version);
    let mut rebuilt = Vec::new();
    let src_err = |e: io::Error| SampleError::Malformed {
        path: engine_dir.join(format!("{TAR_NAME}.x*")),
        reason: format!("cannot read the engine tarball: {e}"),
    };
    for entry in archive.entries().map_err(src_err)? {
        let mut entry = entry.map_err(src_err)?;
        let path = entry
            .path()
            .map_err(src_err)?
            .to_string_lossy()
            .into_owned();
        let mut header = entry.header().clone();
        if targets.contains(&path) {
            let old = header.size().map_err(src_err)?;
            // "Rebuilt": new code, a slightly different size.
            let delta = (old / 50).max(64);
            let new_size = (old + rng.range(0, 2 * delta))
                .saturating_sub(delta)
                .max(4096);
            let data = engine_file_content(
                &path,
                new_size,
                content_seed(update_seed, &path, version),
                vocab,
            );
            sizer.add_named(&path, &data);
            let mut h = tar_header(
                data.len() as u64,
                header.mode().unwrap_or(0o755),
                mtime,
                false,
            );
            out.append_data(&mut h, &path, data.as_slice()).at(&tmp)?;
            rebuilt.push((path, old, data.len() as u64));
        } else {
            out.append_data(&mut header, &path, &mut entry).at(&tmp)?;
        }
    }
    drop(archive);
    finish_tarball(out, &tmp)?;
    for p in &old_parts {
        fs::remove_file(p).at(p)?;
    }
    let mut scratch = Stats::default();
    let parts = split_into_parts(&tmp, &engine_dir, &mut scratch)?;
    let parts_removed = old_parts
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !parts.iter().any(|(m, _)| m == n))
        .collect();
    Ok(EngineUpdate {
        rebuilt,
        parts,
        parts_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_like_split() {
        assert_eq!(part_name(0), "BinLinux64.Dedicated.tar.gz.xaa");
        assert_eq!(part_name(6), "BinLinux64.Dedicated.tar.gz.xag");
        assert_eq!(part_name(26), "BinLinux64.Dedicated.tar.gz.xba");
    }

    #[test]
    fn plan_scales_and_is_deterministic() {
        let total = |items: &[EngineItem]| -> u64 {
            items
                .iter()
                .map(|i| match i {
                    EngineItem::File { size, .. } => *size,
                    EngineItem::Dir(_) => 0,
                })
                .sum()
        };
        let big = engine_plan(5, 3_100_000_000);
        let t = total(&big) as f64;
        assert!((t / 3.1e9 - ENGINE_SHARE).abs() < 0.03, "{t}");
        assert_eq!(
            format!("{big:?}"),
            format!("{:?}", engine_plan(5, 3_100_000_000))
        );
        assert!(big
            .iter()
            .any(|i| matches!(i, EngineItem::Dir(d) if d.ends_with("/qtlibs/"))));
        // Tiny scales still produce every file.
        assert_eq!(engine_plan(5, 1000).len(), big.len());
    }

    #[test]
    fn launcher_is_a_script() {
        let v = Vocab::new(1);
        let data = engine_file_content(&format!("{ENGINE_DIR}/{LAUNCHER}"), 100, 1, &v);
        assert!(data.starts_with(b"#!/bin/sh\n"));
        assert!(data.len() > launcher_stub().len());
    }
}
