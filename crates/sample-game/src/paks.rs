//! The game assets under `paks/`: `.pak` archives (ZIP, STORED entries) and config files.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;

use crate::content::{self, Kind, Vocab};
use crate::error::IoContext;
use crate::rng::{derive_seed, Rng};
use crate::zipfmt::{DosTime, PakWriter, MAX_ARCHIVE, MAX_ENTRIES};
use crate::{PakShape, SampleError};

/// Scale the entry size limits below are written for (the original sample's 3.1 GB image).
const REFERENCE_SCALE: f64 = 3.1e9;
/// Smallest pak.
const MIN_PAK: u64 = 4096;
/// A pak of the split shape growing past this is continued in `<stem>_<n>.pak`.
const PAK_SPLIT: u64 = 2 << 30;
/// The single pak grows up to the limit of ZIP without ZIP64 (4 GiB), less room for the
/// central directory of 65,535 entries.
const SINGLE_PAK_SPLIT: u64 = MAX_ARCHIVE - (64 << 20);

/// A kind of entry in a pak: where it lives, its extension, how often it occurs and its size
/// range at the reference scale.
pub(crate) struct EntryTpl {
    dirs: &'static [&'static str],
    ext: &'static str,
    weight: u32,
    min: u64,
    max: u64,
}

const fn tpl(
    dirs: &'static [&'static str],
    ext: &'static str,
    weight: u32,
    min: u64,
    max: u64,
) -> EntryTpl {
    EntryTpl {
        dirs,
        ext,
        weight,
        min,
        max,
    }
}

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

const TEXTURES: &[EntryTpl] = &[tpl(
    &[
        "textures/props",
        "textures/characters",
        "textures/environment",
        "textures/weapons",
        "textures/vehicles",
        "textures/fx",
        "textures/terrain",
        "textures/skybox",
    ],
    "dds",
    1,
    16 * K,
    16 * M,
)];
const SOUNDS: &[EntryTpl] = &[
    tpl(&["sounds/wwise"], "wem", 12, 32 * K, 8 * M),
    tpl(&["sounds/wwise"], "bnk", 2, 64 * K, 24 * M),
    tpl(&["sounds/wwise"], "xml", 1, 2 * K, 64 * K),
];
const LEVEL: &[EntryTpl] = &[
    tpl(&["terrain"], "ctc", 1, 256 * K, 48 * M),
    tpl(&["textures", "textures/decals"], "dds", 6, 16 * K, 8 * M),
    tpl(&["objects"], "cgf", 4, 8 * K, 4 * M),
    tpl(&["sounds"], "wem", 2, 32 * K, 4 * M),
    tpl(&[""], "xml", 3, 2 * K, 512 * K),
    tpl(&["entities"], "ent", 1, K, 64 * K),
];
const GAMEDATA: &[EntryTpl] = &[
    tpl(
        &[
            "libs/entityarchetypes",
            "libs/gameaudio",
            "libs/materialeffects",
            "prefabs",
        ],
        "xml",
        5,
        K,
        512 * K,
    ),
    tpl(&["entities"], "ent", 2, K, 64 * K),
    tpl(&["config"], "json", 2, K, 128 * K),
    tpl(&["libs/ui", "textures/ui"], "dds", 3, 16 * K, 2 * M),
    tpl(&["libs"], "dat", 2, 16 * K, 4 * M),
];
const SHADERS: &[EntryTpl] = &[
    tpl(&["shaders"], "cfx", 3, 4 * K, 256 * K),
    tpl(&["shaders"], "cfi", 2, 2 * K, 128 * K),
    tpl(&["shadercache"], "fxcb", 4, 16 * K, 8 * M),
];
const SCRIPTS: &[EntryTpl] = &[
    tpl(
        &[
            "scripts",
            "scripts/entities",
            "scripts/multiplayer",
            "scripts/ai",
            "scripts/ui",
        ],
        "lua",
        10,
        K,
        256 * K,
    ),
    tpl(&["scripts"], "xml", 2, K, 64 * K),
];
const ANIMATIONS: &[EntryTpl] = &[
    tpl(
        &["animations/characters", "animations/weapons"],
        "caf",
        8,
        8 * K,
        4 * M,
    ),
    tpl(&["animations"], "i_caf", 3, 8 * K, 2 * M),
    tpl(&["animations"], "adb", 2, 2 * K, 128 * K),
];
const OBJECTS: &[EntryTpl] = &[
    tpl(
        &[
            "objects/props",
            "objects/characters",
            "objects/weapons",
            "objects/vehicles",
        ],
        "cgf",
        8,
        8 * K,
        8 * M,
    ),
    tpl(&["objects/characters"], "chr", 2, 16 * K, 8 * M),
    tpl(&["objects/characters"], "skin", 2, 16 * K, 8 * M),
    tpl(&["objects"], "mtl", 4, K, 32 * K),
];
const UI: &[EntryTpl] = &[
    tpl(&["ui/canvases"], "uicanvas", 4, 2 * K, 256 * K),
    tpl(&["ui/textures"], "dds", 4, 8 * K, 2 * M),
    tpl(&["ui/scripts"], "lua", 2, K, 64 * K),
];
const FONTS: &[EntryTpl] = &[
    tpl(&["fonts"], "ttf", 3, 16 * K, 4 * M),
    tpl(&["fonts"], "xml", 2, K, 8 * K),
];
const MATERIALS: &[EntryTpl] = &[tpl(
    &["materials", "materials/props", "materials/terrain"],
    "mtl",
    1,
    K,
    64 * K,
)];
const PARTICLES: &[EntryTpl] = &[
    tpl(&["libs/particles"], "xml", 6, 2 * K, 256 * K),
    tpl(&["textures/particles"], "dds", 3, 8 * K, M),
];
const LOCALIZATION: &[EntryTpl] = &[
    tpl(&["localization"], "xml", 4, 2 * K, 256 * K),
    tpl(&["localization/dialog"], "wem", 4, 16 * K, M),
];
const ENGINE_PAK: &[EntryTpl] = &[
    tpl(&["config"], "cfg", 4, 256, 16 * K),
    tpl(&["engineassets/textures"], "dds", 3, 8 * K, 512 * K),
    tpl(&["engineassets/shading"], "xml", 1, K, 32 * K),
];
const GEMS_PAK: &[EntryTpl] = &[
    tpl(&["gems"], "json", 4, 256, 16 * K),
    tpl(&["gems/scripts"], "lua", 3, K, 32 * K),
];
const CONFIG_PAK: &[EntryTpl] = &[
    tpl(&["config"], "cfg", 4, 256, 8 * K),
    tpl(&["config"], "json", 2, 256, 8 * K),
];

/// Every kind of asset in one archive, weighted towards the small entries real engines pack
/// by the tens of thousands (about 90 KB on average at the reference scale).
const SINGLE_PAK: &[EntryTpl] = &[
    tpl(
        &[
            "textures/props",
            "textures/characters",
            "textures/environment",
            "textures/ui",
        ],
        "dds",
        4,
        16 * K,
        M,
    ),
    tpl(
        &["sounds/wwise", "localization/dialog"],
        "wem",
        2,
        16 * K,
        512 * K,
    ),
    tpl(
        &["objects/props", "objects/characters"],
        "cgf",
        2,
        8 * K,
        512 * K,
    ),
    tpl(&["animations/characters"], "caf", 2, 8 * K, 256 * K),
    tpl(&["shadercache"], "fxcb", 1, 16 * K, 256 * K),
    tpl(
        &["scripts", "scripts/entities", "ui/scripts"],
        "lua",
        4,
        K,
        64 * K,
    ),
    tpl(
        &["libs/entityarchetypes", "prefabs", "levels"],
        "xml",
        3,
        K,
        128 * K,
    ),
    tpl(&["config", "gems"], "json", 1, 512, 32 * K),
    tpl(&["materials", "objects"], "mtl", 2, K, 32 * K),
    tpl(&["entities"], "ent", 1, K, 64 * K),
];

/// The levels of the sample, with their share of the scale.
pub(crate) const LEVELS: &[(&str, f64)] = &[
    ("mp_arena", 0.07),
    ("mp_canyon", 0.05),
    ("mp_harbor", 0.035),
    ("mp_frontline", 0.015),
    ("gym", 0.005),
    ("sandbox", 0.002),
];

/// A pak of the repository: path under `paks/`, share of the scale, what it holds.
pub(crate) struct PakTpl {
    pub(crate) path: String,
    pub(crate) share: f64,
    pub(crate) entries: &'static [EntryTpl],
    /// Size past which the pak continues in `<stem>_<n>.pak`.
    split: u64,
}

/// Every pak of a repository of the given shape (about 75% of the scale in total).
pub(crate) fn pak_templates(shape: PakShape) -> Vec<PakTpl> {
    if shape == PakShape::Single {
        return vec![PakTpl {
            path: "game.pak".to_string(),
            share: 0.75,
            entries: SINGLE_PAK,
            split: SINGLE_PAK_SPLIT,
        }];
    }
    let mut v = Vec::new();
    let mut add = |path: &str, share: f64, entries: &'static [EntryTpl]| {
        v.push(PakTpl {
            path: path.to_string(),
            share,
            entries,
            split: PAK_SPLIT,
        })
    };
    add("textures.pak", 0.30, TEXTURES);
    add("sounds.pak", 0.14, SOUNDS);
    add("gamedata.pak", 0.035, GAMEDATA);
    add("shaders.pak", 0.03, SHADERS);
    add("objects.pak", 0.025, OBJECTS);
    add("animations.pak", 0.02, ANIMATIONS);
    add("scripts.pak", 0.012, SCRIPTS);
    add("ui.pak", 0.004, UI);
    add("materials.pak", 0.003, MATERIALS);
    add("fonts.pak", 0.002, FONTS);
    add("particles.pak", 0.002, PARTICLES);
    add("engine.pak", 0.001, ENGINE_PAK);
    add("localization/en-us.pak", 0.0008, LOCALIZATION);
    add("localization/de-de.pak", 0.0008, LOCALIZATION);
    add("localization/fr-fr.pak", 0.0008, LOCALIZATION);
    add("gems.pak", 0.0002, GEMS_PAK);
    add("config.pak", 0.00005, CONFIG_PAK);
    for (level, share) in LEVELS {
        add(&format!("levels/{level}/level.pak"), *share, LEVEL);
    }
    v
}

/// Target bytes of a pak at a scale.
pub(crate) fn pak_target(t: &PakTpl, scale: u64) -> u64 {
    ((scale as f64 * t.share) as u64).max(MIN_PAK)
}

/// Largest entry size of a template at a scale (scaled down with the repository, never below
/// twice its minimum, and small enough that a pak holds several entries).
fn max_entry(e: &EntryTpl, scale: u64, pak_target: u64) -> u64 {
    let scaled = (e.max as f64 * (scale as f64 / REFERENCE_SCALE)) as u64;
    scaled
        .max(e.min * 2)
        .min(e.max)
        .min((pak_target / 3).max(e.min))
}

const TEX_SUFFIXES: &[&str] = &["", "_diff", "_ddna", "_spec", "_mask", ""];

/// Draws the next entry of a pak: (name, size), unique names by a counter.
pub(crate) fn draw_entry(
    rng: &mut Rng,
    entries: &[EntryTpl],
    vocab: &Vocab,
    scale: u64,
    pak_target: u64,
    counter: u64,
    tag: &str,
) -> (String, u64) {
    let total_w: u32 = entries.iter().map(|e| e.weight).sum();
    let mut pick = rng.below(u64::from(total_w.max(1))) as u32;
    let mut tpl = &entries[0];
    for e in entries {
        if pick < e.weight {
            tpl = e;
            break;
        }
        pick -= e.weight;
    }
    let size = rng.log_uniform(tpl.min, max_entry(tpl, scale, pak_target));
    let dir = *rng.pick(tpl.dirs);
    let suffix = if tpl.ext == "dds" {
        *rng.pick(TEX_SUFFIXES)
    } else {
        ""
    };
    let stem = format!(
        "{}_{}_{counter:03}{tag}{suffix}",
        vocab.any(rng),
        vocab.any(rng)
    );
    let name = if dir.is_empty() {
        format!("{stem}.{}", tpl.ext)
    } else {
        format!("{dir}/{stem}.{}", tpl.ext)
    };
    (name, size)
}

/// Seed of a pak entry's content.
pub(crate) fn entry_seed(seed: u64, pak: &str, name: &str, generation: &str) -> u64 {
    derive_seed(
        seed,
        &[
            b"pak-entry",
            pak.as_bytes(),
            name.as_bytes(),
            generation.as_bytes(),
        ],
    )
}

/// Generates the bytes of a pak entry.
pub(crate) fn entry_content(name: &str, size: u64, seed: u64, vocab: &Vocab) -> Vec<u8> {
    content::generate(Kind::for_name(name), size, seed, vocab)
}

/// Generates the bytes of a pak entry into a reused buffer.
fn entry_content_into(name: &str, size: u64, seed: u64, vocab: &Vocab, out: &mut Vec<u8>) {
    content::generate_into(Kind::for_name(name), size, seed, vocab, out)
}

/// Writes pak `t` (and its continuations past 2 GiB) under `paks_dir`, `generation` labelling
/// the draw (the initial build uses `v1`; a pak replaced by an update uses its version).
/// `target` overrides the size. Calls `on_entry(pak path, entry name, bytes)` for each entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_pak(
    paks_dir: &Path,
    t: &PakTpl,
    target: u64,
    seed: u64,
    scale: u64,
    generation: &str,
    mtime: DosTime,
    vocab: &Vocab,
    on_entry: &mut dyn FnMut(&str, &str, &[u8]),
) -> Result<Vec<(String, u64)>, SampleError> {
    let mut rng = Rng::derived(
        seed,
        &[b"pak-plan", t.path.as_bytes(), generation.as_bytes()],
    );
    let mut files = Vec::new();
    let mut written = 0u64;
    let mut counter = 0u64;
    let mut file_no = 0u32;
    let mut data = Vec::new();
    // Entries of a replacement pak get new names (`…_v3.wem`), as a new export would.
    let tag = if generation == "v1" {
        String::new()
    } else {
        format!("_{generation}")
    };
    while written < target || file_no == 0 {
        let rel = if file_no == 0 {
            t.path.clone()
        } else {
            let stem = t.path.strip_suffix(".pak").unwrap_or(&t.path);
            format!("{stem}_{file_no}.pak")
        };
        file_no += 1;
        let path = paks_dir.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        let f = File::create(&path).at(&path)?;
        let mut w = PakWriter::new(BufWriter::with_capacity(1 << 20, f));
        while written < target && w.len() < MAX_ENTRIES - 1 {
            let (name, mut size) =
                draw_entry(&mut rng, t.entries, vocab, scale, target, counter, &tag);
            counter += 1;
            let left = target - written;
            // Do not leave a sliver: the last entry takes what remains.
            if size >= left || left - size < 512 {
                size = left;
            }
            if w.offset() + size + 4096 > t.split && w.len() > 0 {
                break;
            }
            let eseed = entry_seed(seed, &rel, &name, generation);
            entry_content_into(&name, size, eseed, vocab, &mut data);
            w.add(&name, &data, mtime).at(&path)?;
            on_entry(&rel, &name, &data);
            written += size;
        }
        let inner = w.finish().at(&path)?;
        drop(inner);
        let len = fs::metadata(&path).at(&path)?.len();
        files.push((rel, len));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_cover_about_three_quarters() {
        let share: f64 = pak_templates(PakShape::Split).iter().map(|t| t.share).sum();
        assert!((0.73..0.77).contains(&share), "{share}");
        let names: Vec<String> = pak_templates(PakShape::Split)
            .into_iter()
            .map(|t| t.path)
            .collect();
        for must in [
            "gamedata.pak",
            "scripts.pak",
            "shaders.pak",
            "textures.pak",
            "sounds.pak",
        ] {
            assert!(names.iter().any(|n| n == must), "{must}");
        }
        assert!(names.iter().filter(|n| n.starts_with("levels/")).count() >= 4);
    }

    #[test]
    fn the_single_shape_is_one_pak_of_small_entries() {
        let t = pak_templates(PakShape::Single);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].share, 0.75);
        // 0.75 of the reference scale fits one ZIP without ZIP64.
        assert!(pak_target(&t[0], REFERENCE_SCALE as u64) < t[0].split);
        // Tens of thousands of entries at the reference scale: draw the mean entry size.
        let vocab = Vocab::new(1);
        let mut rng = Rng::new(7);
        let target = pak_target(&t[0], REFERENCE_SCALE as u64);
        let n = 4000u64;
        let total: u64 = (0..n)
            .map(|i| {
                draw_entry(
                    &mut rng,
                    t[0].entries,
                    &vocab,
                    REFERENCE_SCALE as u64,
                    target,
                    i,
                    "",
                )
                .1
            })
            .sum();
        let entries = target / (total / n);
        assert!((15_000..60_000).contains(&entries), "{entries} entries");
    }

    #[test]
    fn entry_sizes_scale() {
        let e = &TEXTURES[0];
        assert_eq!(max_entry(e, 3_100_000_000, 930_000_000), 16 * M);
        let small = max_entry(e, 10_000_000, 3_000_000);
        assert!((32 * K..M).contains(&small), "{small}");
    }
}
