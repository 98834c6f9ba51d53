//! The sample game (`gantry-sample-game`) built into image layouts with Gantry's builder:
//! v1, then the next day's asset update as v2, optionally on a base image layout (so the
//! image has a shell and containerd can run commands in it).

use std::path::{Path, PathBuf};

/// v1 and v2 layouts of the sample game and what the update changed.
pub struct SampleImages {
    /// Holds everything (game repository, layouts, build cache).
    pub dir: tempfile::TempDir,
    /// The game repository (at v2 once built).
    pub game: PathBuf,
    /// Layout of v1 (tag `v1`).
    pub v1: PathBuf,
    /// Layout of v2 (tag `v2`).
    pub v2: PathBuf,
    /// The update's own size: gzip -6 of new and changed content.
    pub update_bytes: u64,
    /// Files the update changed, relative to the game repository (`paks/…`).
    pub files_changed: Vec<String>,
    /// The base image layout both are built on, if any.
    base: Option<PathBuf>,
}

impl SampleImages {
    /// A pak the update changed: its path inside the image and the sha256 (hex) of its v2
    /// bytes, for a container of v2 to check.
    pub fn changed_pak(&self) -> (String, String) {
        use sha2::Digest as _;
        let changed = self
            .files_changed
            .iter()
            .find(|f| f.starts_with("paks/") && f.ends_with(".pak"))
            .expect("the update changed a pak");
        let inside = format!(
            "/BinLinux64.Dedicated/{}",
            changed.trim_start_matches("paks/")
        );
        let bytes = std::fs::read(self.game.join(changed)).expect("read the changed pak");
        (inside, hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// Applies an engine update (a few server binaries rebuilt, paks untouched) to the game
    /// at v2 and builds it with the same cache into a layout (its path is returned): v3.
    pub fn engine_update(&self) -> PathBuf {
        gantry_sample_game::update(
            &self.game,
            &gantry_sample_game::UpdateSpec {
                bytes: 1_000_000,
                seed: 12,
                kind: gantry_sample_game::UpdateKind::Engine,
            },
        )
        .expect("engine update of the sample game");
        set_base(&self.game, self.base.as_deref());
        build(
            &self.game,
            &self.dir.path().join("v3"),
            &self.dir.path().join("cache"),
        )
    }
}

/// Generates the sample game at about `scale` bytes (seed 11), builds v1, applies an asset
/// update of about `update` bytes, builds v2 (with the build cache, as CI would). With
/// `base`, both images are built on that OCI layout's image tagged `latest`.
pub fn sample_images(scale: u64, update: u64, base: Option<&Path>) -> SampleImages {
    sample_images_shaped(scale, update, base, gantry_sample_game::PakShape::Split)
}

/// [`sample_images`] with the assets packed as `paks` says (one large pak, or many).
pub fn sample_images_shaped(
    scale: u64,
    update: u64,
    base: Option<&Path>,
    paks: gantry_sample_game::PakShape,
) -> SampleImages {
    let dir = crate::tempdir();
    let game = dir.path().join("game");
    gantry_sample_game::generate(
        &game,
        &gantry_sample_game::SampleSpec {
            scale_bytes: scale,
            seed: 11,
            paks,
        },
    )
    .expect("generate the sample game");
    set_base(&game, base);
    let cache = dir.path().join("cache");
    let v1 = build(&game, &dir.path().join("v1"), &cache);
    let report = gantry_sample_game::update(
        &game,
        &gantry_sample_game::UpdateSpec {
            bytes: update,
            seed: 11,
            kind: gantry_sample_game::UpdateKind::Assets,
        },
    )
    .expect("update the sample game");
    // The update rewrites gantry.toml (new tag): set the base again.
    set_base(&game, base);
    let v2 = build(&game, &dir.path().join("v2"), &cache);
    SampleImages {
        dir,
        game,
        v1,
        v2,
        update_bytes: report.update_bytes,
        files_changed: report.files_changed,
        base: base.map(Path::to_path_buf),
    }
}

/// Puts `[base] layout = BASE, tag = "latest"` into the game's gantry.toml.
fn set_base(game: &Path, base: Option<&Path>) {
    let Some(base) = base else {
        return;
    };
    let spec = game.join("gantry.toml");
    let text = std::fs::read_to_string(&spec).expect("read gantry.toml");
    assert!(
        text.contains("# no [base] table = scratch base"),
        "the sample's gantry.toml changed shape: {text}"
    );
    let text = text.replace(
        "# no [base] table = scratch base",
        &format!(
            "[base]\nlayout = {:?}\ntag = \"latest\"",
            base.display().to_string()
        ),
    );
    std::fs::write(&spec, text).expect("write gantry.toml");
}

/// Builds the game repository into a layout at `out`; returns the layout path.
pub fn build(game: &Path, out: &Path, cache: &Path) -> PathBuf {
    let opts = gantry_build::BuildOptions {
        context: game.to_path_buf(),
        spec_file: None,
        output: out.to_path_buf(),
        cache_dir: Some(cache.to_path_buf()),
        source_date_epoch: 0,
        threads: 2,
        tag: None,
        registry: Default::default(),
    };
    gantry_build::build(&opts, &gantry_build::NoProgress)
        .unwrap_or_else(|e| panic!("build {}: {e}", game.display()))
        .layout
}
