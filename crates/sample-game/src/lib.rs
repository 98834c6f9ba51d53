//! Deterministic generator of a sample dedicated game-server build repository.
//!
//! [`generate`] writes a repository shaped like the one of the original containerized game
//! server sample: a split gzip tarball of the engine (`engine/`), game assets as `.pak` zip
//! archives with stored entries plus config files (`paks/`), runtime scripts (`runtime/`), a
//! `gantry.toml` build spec and the sample's two-stage `Dockerfile`. [`update`] then makes "the
//! next day's build" in place: re-exported pak entries (assets) or rebuilt binaries (engine).
//!
//! Everything is a pure function of `(scale, seed)` and, for updates, of the version: the same
//! inputs give byte-identical files (fixed timestamps and ordering inside tar and zip).
//!
//! Content is synthetic but compresses like the real thing. Measured with `gzip -6` on a
//! 3.1 GB repository (seed 1):
//!
//! | content                                   | share of scale | gzip -6 ratio |
//! |-------------------------------------------|---------------:|--------------:|
//! | engine code (the tar, uncompressed)       | 25%            | 2.92          |
//! | textures, meshes, animations (pak entries)| 54%            | 2.50          |
//! | audio (pak entries)                       | 15%            | 1.00          |
//! | compiled shaders (pak entries)            | 3%             | 2.90          |
//! | text: scripts, XML, JSON, configs         | 3%             | 5.3           |
//!
//! Generating 3.1 GB takes about 8-15 s on two cores (the engine's gzip runs on its own
//! threads, pigz-style, while the paks are written).
//!
//! ```no_run
//! use gantry_sample_game::{generate, parse_size, update, SampleSpec, UpdateKind, UpdateSpec};
//! # fn main() -> Result<(), gantry_sample_game::SampleError> {
//! let dir = std::path::Path::new("/tmp/mps");
//! generate(dir, &SampleSpec { scale_bytes: parse_size("3.1GB")?, seed: 1, ..Default::default() })?;
//! let report = update(dir, &UpdateSpec { bytes: parse_size("50MB")?, seed: 1, kind: UpdateKind::Assets })?;
//! println!("update's own size: {} bytes", report.update_bytes);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

mod assets;
mod content;
mod engine;
mod error;
mod paks;
mod pargz;
mod repo;
mod rng;
mod size;
mod zipfmt;

pub use error::SampleError;
pub use size::parse_size;

use content::Vocab;
use error::IoContext;

/// Name of the generator state file at the root of a generated repository.
pub const STATE_FILE: &str = ".sample-game.json";

/// The scale of the original sample's image (3.1 GB), the benchmark's default.
pub const DEFAULT_SCALE_BYTES: u64 = 3_100_000_000;

/// What to generate: the total uncompressed content size and the random seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleSpec {
    /// Approximate total bytes of content (engine files uncompressed plus paks), e.g.
    /// `parse_size("3.1GB")`. About 25% goes to the engine and 75% to the paks.
    pub scale_bytes: u64,
    /// Seed of every random choice; the same `(scale_bytes, seed, paks)` gives identical
    /// bytes.
    pub seed: u64,
    /// How the assets are packed: many paks (default) or one very large one.
    pub paks: PakShape,
}

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec {
            scale_bytes: DEFAULT_SCALE_BYTES,
            seed: 1,
            paks: PakShape::Split,
        }
    }
}

/// How the game's assets are packed into `.pak` archives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PakShape {
    /// About 25 paks by kind and level, up to 2 GiB each: an update leaves most of them
    /// untouched.
    #[default]
    Split,
    /// One pak holding every asset (tens of thousands of small stored entries, about 2.3 GB
    /// at the 3.1 GB scale), as many shipped games pack them: every update changes it, and
    /// its small text edits shift every later entry by a few bytes.
    Single,
}

impl std::str::FromStr for PakShape {
    type Err = SampleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "split" | "many" => Ok(PakShape::Split),
            "single" | "one" => Ok(PakShape::Single),
            _ => Err(SampleError::InvalidSpec(format!(
                "unknown pak shape {s:?} (expected split or single)"
            ))),
        }
    }
}

impl std::fmt::Display for PakShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PakShape::Split => "split",
            PakShape::Single => "single",
        })
    }
}

/// Which part of the build an update changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    /// Game assets: pak entries re-exported, added and removed, config files edited, one
    /// small pak replaced whole. The engine is untouched.
    #[default]
    Assets,
    /// Engine: a few binaries rebuilt (tarball re-made, re-gzipped, re-split). Paks untouched.
    Engine,
}

impl std::str::FromStr for UpdateKind {
    type Err = SampleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "assets" | "asset" | "paks" => Ok(UpdateKind::Assets),
            "engine" | "binaries" => Ok(UpdateKind::Engine),
            _ => Err(SampleError::InvalidSpec(format!(
                "unknown update kind {s:?} (expected assets or engine)"
            ))),
        }
    }
}

impl std::fmt::Display for UpdateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpdateKind::Assets => "assets",
            UpdateKind::Engine => "engine",
        })
    }
}

/// What an update changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSpec {
    /// Target bytes of new or changed content (uncompressed), e.g. 50 MB.
    pub bytes: u64,
    /// Mixed into the update's random choices together with the repository's own seed and
    /// the new version number (use the generation seed if in doubt).
    pub seed: u64,
    /// Assets (default) or engine.
    pub kind: UpdateKind,
}

/// Files and bytes of one area of the repository (`engine`, `paks`, `runtime`, `root`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AreaStats {
    /// Number of files.
    pub files: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// One file written, with its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the repository root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateReport {
    /// The repository directory.
    pub dir: PathBuf,
    /// The random seed.
    pub seed: u64,
    /// The requested scale in bytes.
    pub scale_bytes: u64,
    /// Version of the build (1 after generate).
    pub version: u32,
    /// Image tag written to `gantry.toml` (`v1`).
    pub tag: String,
    /// Number of files written.
    pub files_written: u64,
    /// Bytes of all files written.
    pub total_bytes: u64,
    /// Files and bytes per area: `engine`, `paks`, `runtime`, `root`.
    pub areas: BTreeMap<String, AreaStats>,
    /// Uncompressed bytes of the files inside the engine tarball.
    pub engine_uncompressed_bytes: u64,
    /// Number of files inside the engine tarball.
    pub engine_files: u64,
    /// How the assets are packed.
    pub shape: PakShape,
    /// Number of `.pak` archives.
    pub paks: u64,
    /// Number of entries in all paks.
    pub pak_entries: u64,
    /// Uncompressed content bytes per kind: `code`, `texture`, `audio`, `text`.
    pub content_bytes: BTreeMap<String, u64>,
    /// Every file written, sorted by path.
    pub files: Vec<FileRecord>,
}

/// An entry (pak member or engine tarball member) added, changed or removed by an update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryChange {
    /// The archive: a pak's path relative to the repository (`paks/textures.pak`), or
    /// `engine/BinLinux64.Dedicated.tar.gz` for the engine tarball.
    pub archive: String,
    /// Entry name inside the archive.
    pub name: String,
    /// Size before the update (`None` if added).
    pub old_size: Option<u64>,
    /// Size after the update (`None` if removed).
    pub new_size: Option<u64>,
}

/// What [`update`] changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    /// The repository directory.
    pub dir: PathBuf,
    /// The kind of update.
    pub kind: UpdateKind,
    /// The new version (2 after the first update).
    pub version: u32,
    /// The new image tag (`v2`, …).
    pub tag: String,
    /// The requested bytes.
    pub requested_bytes: u64,
    /// Uncompressed bytes of everything new or changed in the image: new/changed pak entries
    /// (including every entry of a replaced pak), edited config files, rebuilt binaries.
    pub changed_bytes: u64,
    /// The update's own size: gzip -6 compressed size of the concatenation of the same
    /// entries and files (the benchmarks' yardstick).
    pub update_bytes: u64,
    /// Repository files whose bytes changed (paths relative to the repository).
    pub files_changed: Vec<String>,
    /// Repository files created.
    pub files_added: Vec<String>,
    /// Repository files deleted.
    pub files_removed: Vec<String>,
    /// Entries whose content changed in place (re-exported assets, edited text, rebuilt
    /// binaries).
    pub entries_changed: Vec<EntryChange>,
    /// Entries added (including the new content of a replaced pak).
    pub entries_added: Vec<EntryChange>,
    /// Entries removed (including the old content of a replaced pak).
    pub entries_removed: Vec<EntryChange>,
    /// Paks replaced whole (paths relative to the repository).
    pub paks_replaced: Vec<String>,
    /// Uncompressed new/changed bytes per content kind (`code`, `texture`, `audio`, `text`).
    pub content_bytes: BTreeMap<String, u64>,
}

/// Persistent generator state, kept in [`STATE_FILE`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct State {
    generator: String,
    format: u32,
    seed: u64,
    scale_bytes: u64,
    /// Absent in states written before the single-pak shape existed.
    #[serde(default)]
    paks: PakShape,
    version: u32,
    /// Edit count of each config file edited by an update.
    #[serde(default)]
    config_revisions: BTreeMap<String, u32>,
    #[serde(default)]
    history: Vec<HistoryItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct HistoryItem {
    version: u32,
    kind: UpdateKind,
    seed: u64,
    requested_bytes: u64,
    changed_bytes: u64,
}

impl State {
    fn load(repo: &Path) -> Result<State, SampleError> {
        let path = repo.join(STATE_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SampleError::NotARepository {
                    path: repo.to_path_buf(),
                })
            }
            Err(source) => return Err(SampleError::Io { path, source }),
        };
        let state: State = serde_json::from_slice(&data).map_err(|source| SampleError::State {
            path: path.clone(),
            source,
        })?;
        if state.format != 1 {
            return Err(SampleError::Malformed {
                path,
                reason: format!("unsupported state format {}", state.format),
            });
        }
        Ok(state)
    }

    fn save(&self, repo: &Path) -> Result<u64, SampleError> {
        let path = repo.join(STATE_FILE);
        let mut data = serde_json::to_vec_pretty(self).map_err(|source| SampleError::State {
            path: path.clone(),
            source,
        })?;
        data.push(b'\n');
        repo::write_file(&path, &data, 0o644)?;
        Ok(data.len() as u64)
    }
}

/// Running totals while generating.
#[derive(Default)]
pub(crate) struct Stats {
    files: BTreeMap<String, u64>,
    content: BTreeMap<String, u64>,
    pak_entries: u64,
    engine_files: u64,
    engine_uncompressed: u64,
}

impl Stats {
    pub(crate) fn file(&mut self, rel: &str, bytes: u64) {
        self.files.insert(rel.to_string(), bytes);
    }

    pub(crate) fn content(&mut self, kind: content::Kind, bytes: u64) {
        *self.content.entry(kind.label().to_string()).or_default() += bytes;
    }

    fn merge(&mut self, other: Stats) {
        self.files.extend(other.files);
        for (k, v) in other.content {
            *self.content.entry(k).or_default() += v;
        }
        self.pak_entries += other.pak_entries;
        self.engine_files += other.engine_files;
        self.engine_uncompressed += other.engine_uncompressed;
    }
}

/// Sink that only counts bytes.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Measures an update's own size: gzip -6 of the concatenation of its new content.
pub(crate) struct UpdateSizer {
    enc: GzEncoder<CountingSink>,
    raw: u64,
    content: BTreeMap<String, u64>,
}

impl UpdateSizer {
    fn new() -> Self {
        UpdateSizer {
            enc: GzEncoder::new(CountingSink(0), Compression::new(6)),
            raw: 0,
            content: BTreeMap::new(),
        }
    }

    /// Adds new or changed content (its kind inferred from `name`).
    pub(crate) fn add_named(&mut self, name: &str, data: &[u8]) {
        let kind = if name.starts_with(engine::ENGINE_DIR) {
            content::Kind::Code
        } else {
            content::Kind::for_name(name)
        };
        *self.content.entry(kind.label().to_string()).or_default() += data.len() as u64;
        self.add(data);
    }

    /// Adds new or changed content.
    pub(crate) fn add(&mut self, data: &[u8]) {
        self.raw += data.len() as u64;
        // The sink never fails, so neither can the encoder.
        let _ = self.enc.write_all(data);
    }

    /// (uncompressed bytes, gzip -6 bytes, bytes per kind).
    fn finish(self) -> (u64, u64, BTreeMap<String, u64>) {
        let gz = match self.enc.finish() {
            Ok(sink) => sink.0,
            Err(_) => 0,
        };
        (self.raw, gz, self.content)
    }
}

/// Path relative to `root`, `/`-separated.
pub(crate) fn rel_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn ensure_empty_dir(dir: &Path) -> Result<(), SampleError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SampleError::DirNotEmpty {
                    path: dir.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(dir).at(dir),
        Err(source) => Err(SampleError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn generate_paks(repo: &Path, spec: &SampleSpec, vocab: &Vocab) -> Result<Stats, SampleError> {
    let mut stats = Stats::default();
    let paks_dir = repo.join("paks");
    fs::create_dir_all(&paks_dir).at(&paks_dir)?;
    let mtime = zipfmt::DosTime::from_unix(engine::mtime_for_version(1));
    for t in paks::pak_templates(spec.paks) {
        let mut entries = 0u64;
        let mut content: BTreeMap<content::Kind, u64> = BTreeMap::new();
        let target = paks::pak_target(&t, spec.scale_bytes);
        let files = paks::write_pak(
            &paks_dir,
            &t,
            target,
            spec.seed,
            spec.scale_bytes,
            "v1",
            mtime,
            vocab,
            &mut |_, name, data| {
                entries += 1;
                *content.entry(content::Kind::for_name(name)).or_default() += data.len() as u64;
            },
        )?;
        stats.pak_entries += entries;
        for (kind, bytes) in content {
            stats.content(kind, bytes);
        }
        for (rel, len) in files {
            stats.file(&format!("paks/{rel}"), len);
        }
    }
    for name in repo::CONFIG_FILES {
        let data = repo::config_file(name, spec.seed, 0, vocab);
        repo::write_file(&paks_dir.join(name), &data, 0o644)?;
        stats.content(content::Kind::for_name(name), data.len() as u64);
        stats.file(&format!("paks/{name}"), data.len() as u64);
    }
    Ok(stats)
}

/// Generates a sample game-server build repository in `dir` (created if missing; it must be
/// empty), deterministically from `spec`.
///
/// Layout: `engine/BinLinux64.Dedicated.tar.gz.xaa` … `.xag` and `engine/unpack.sh`;
/// `paks/` with about 20 config files and the `.pak` archives; `runtime/start.sh` and
/// `runtime/start.py`; `gantry.toml`; `Dockerfile`; and the generator state
/// [`STATE_FILE`]. The engine and the paks are written by two threads.
pub fn generate(dir: &Path, spec: &SampleSpec) -> Result<GenerateReport, SampleError> {
    if spec.scale_bytes == 0 {
        return Err(SampleError::InvalidSpec("scale must be above zero".into()));
    }
    ensure_empty_dir(dir)?;
    let vocab = Vocab::new(spec.seed);
    let (engine_stats, pak_stats) = std::thread::scope(|s| {
        let engine = s.spawn(|| engine::generate_engine(dir, spec.seed, spec.scale_bytes, &vocab));
        let paks = generate_paks(dir, spec, &vocab);
        let engine = match engine.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (engine, paks)
    });
    let mut stats = engine_stats?;
    stats.merge(pak_stats?);

    let toml = repo::gantry_toml(1);
    let small: [(&str, &[u8], u32); 4] = [
        ("runtime/start.sh", repo::START_SH.as_bytes(), 0o755),
        ("runtime/start.py", repo::START_PY.as_bytes(), 0o755),
        ("Dockerfile", repo::DOCKERFILE.as_bytes(), 0o644),
        ("gantry.toml", toml.as_bytes(), 0o644),
    ];
    for (rel, data, mode) in small {
        repo::write_file(&dir.join(rel), data, mode)?;
        stats.file(rel, data.len() as u64);
    }
    let state = State {
        generator: format!("gantry-sample-game {}", env!("CARGO_PKG_VERSION")),
        format: 1,
        seed: spec.seed,
        scale_bytes: spec.scale_bytes,
        paks: spec.paks,
        version: 1,
        config_revisions: BTreeMap::new(),
        history: Vec::new(),
    };
    let state_len = state.save(dir)?;
    stats.file(STATE_FILE, state_len);

    let mut areas: BTreeMap<String, AreaStats> = BTreeMap::new();
    for (path, bytes) in &stats.files {
        let area = match path.split_once('/') {
            Some((first, _)) => first.to_string(),
            None => "root".to_string(),
        };
        let a = areas.entry(area).or_default();
        a.files += 1;
        a.bytes += bytes;
    }
    let paks = stats.files.keys().filter(|p| p.ends_with(".pak")).count() as u64;
    Ok(GenerateReport {
        dir: dir.to_path_buf(),
        seed: spec.seed,
        scale_bytes: spec.scale_bytes,
        version: 1,
        tag: repo::tag(1),
        files_written: stats.files.len() as u64,
        total_bytes: stats.files.values().sum(),
        areas,
        engine_uncompressed_bytes: stats.engine_uncompressed,
        engine_files: stats.engine_files,
        shape: spec.paks,
        paks,
        pak_entries: stats.pak_entries,
        content_bytes: stats.content,
        files: stats
            .files
            .into_iter()
            .map(|(path, bytes)| FileRecord { path, bytes })
            .collect(),
    })
}

/// Makes the next day's build of the repository in `dir`, in place, and bumps its version
/// (the tag in `gantry.toml` and the version in [`STATE_FILE`]).
///
/// [`UpdateKind::Assets`]: about `spec.bytes` of pak entries in several paks re-exported
/// (new bytes, sizes changed a little so later entries shift), text entries and a few config
/// files edited, a few entries added and removed, one small pak replaced whole.
/// [`UpdateKind::Engine`]: a few binaries in the engine tarball rebuilt, the tarball re-made,
/// re-gzipped and re-split; paks untouched.
///
/// Deterministic from the repository's seed, `spec.seed` and the new version, so successive
/// updates differ and replaying the same sequence gives identical bytes.
pub fn update(dir: &Path, spec: &UpdateSpec) -> Result<UpdateReport, SampleError> {
    let mut state = State::load(dir)?;
    let version = state.version + 1;
    let vocab = Vocab::new(state.seed);
    let mut sizer = UpdateSizer::new();
    let mut report = UpdateReport {
        dir: dir.to_path_buf(),
        kind: spec.kind,
        version,
        tag: repo::tag(version),
        requested_bytes: spec.bytes,
        changed_bytes: 0,
        update_bytes: 0,
        files_changed: Vec::new(),
        files_added: Vec::new(),
        files_removed: Vec::new(),
        entries_changed: Vec::new(),
        entries_added: Vec::new(),
        entries_removed: Vec::new(),
        paks_replaced: Vec::new(),
        content_bytes: BTreeMap::new(),
    };
    // The update's choices depend on the repository seed, the caller's seed and the version.
    let update_seed = rng::derive_seed(state.seed, &[b"update", &spec.seed.to_le_bytes()]);
    match spec.kind {
        UpdateKind::Assets => assets::update_assets(
            dir,
            &mut state,
            update_seed,
            version,
            spec.bytes,
            &vocab,
            &mut sizer,
            &mut report,
        )?,
        UpdateKind::Engine => {
            let engine_dir = dir.join("engine");
            let before = assets::digest_files(&engine::list_parts(&engine_dir)?)?;
            let r = engine::update_engine(
                dir,
                state.seed,
                update_seed,
                state.scale_bytes,
                version,
                spec.bytes,
                &vocab,
                &mut sizer,
            )?;
            let after_paths: Vec<PathBuf> =
                r.parts.iter().map(|(n, _)| engine_dir.join(n)).collect();
            let after = assets::digest_files(&after_paths)?;
            for (path, digest) in &after {
                let rel = rel_path(dir, path);
                match before.iter().find(|(p, _)| p == path) {
                    Some((_, old)) if old == digest => {}
                    Some(_) => report.files_changed.push(rel),
                    None => report.files_added.push(rel),
                }
            }
            for name in r.parts_removed {
                report.files_removed.push(format!("engine/{name}"));
            }
            let archive = format!("engine/{}", engine::TAR_NAME);
            for (name, old, new) in r.rebuilt {
                report.entries_changed.push(EntryChange {
                    archive: archive.clone(),
                    name,
                    old_size: Some(old),
                    new_size: Some(new),
                });
            }
        }
    }
    let toml = dir.join("gantry.toml");
    repo::write_file(&toml, repo::gantry_toml(version).as_bytes(), 0o644)?;
    report.files_changed.push("gantry.toml".into());

    let (raw, gz, content) = sizer.finish();
    report.changed_bytes = raw;
    report.update_bytes = gz;
    report.content_bytes = content;
    state.version = version;
    state.history.push(HistoryItem {
        version,
        kind: spec.kind,
        seed: spec.seed,
        requested_bytes: spec.bytes,
        changed_bytes: raw,
    });
    state.save(dir)?;
    report.files_changed.push(STATE_FILE.into());
    report.files_changed.sort();
    report.files_added.sort();
    report.files_removed.sort();
    Ok(report)
}

/// Formats a byte count with decimal units, e.g. `3.10 GB` (for reports and logs).
pub fn human_bytes(bytes: u64) -> String {
    size::human(bytes)
}
