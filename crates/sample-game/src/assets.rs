//! The assets update: the next day's export of the game team, applied to `paks/` in place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::content::{self, Kind, TextStyle, Vocab};
use crate::engine::mtime_for_version;
use crate::error::IoContext;
use crate::paks::{self, PakTpl};
use crate::repo;
use crate::rng::Rng;
use crate::zipfmt::{self, DosTime, EntryMeta, PakWriter};
use crate::{EntryChange, PakShape, SampleError, State, UpdateReport, UpdateSizer};

/// SHA-256 of each file.
pub(crate) fn digest_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, [u8; 32])>, SampleError> {
    let mut out = Vec::with_capacity(paths.len());
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = File::open(p).at(p)?;
        let mut h = Sha256::new();
        loop {
            let n = f.read(&mut buf).at(p)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        out.push((p.clone(), h.finalize().into()));
    }
    Ok(out)
}

/// A pak found in the repository.
struct Pak {
    /// Path under `paks/`, `/`-separated.
    rel: String,
    path: PathBuf,
    size: u64,
    entries: Vec<EntryMeta>,
}

impl Pak {
    fn content_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

fn find_paks(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SampleError> {
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let path = e.path();
        let ft = e.file_type().at(&path)?;
        if ft.is_dir() {
            find_paks(&path, out)?;
        } else if ft.is_file() && path.extension().is_some_and(|x| x == "pak") {
            out.push(path);
        }
    }
    Ok(())
}

fn load_paks(paks_dir: &Path) -> Result<Vec<Pak>, SampleError> {
    let mut paths = Vec::new();
    find_paks(paks_dir, &mut paths)?;
    let mut paks: Vec<Pak> = Vec::with_capacity(paths.len());
    for path in paths {
        let mut f = File::open(&path).at(&path)?;
        let entries = zipfmt::read_index(&mut f).map_err(|e| SampleError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let size = f.metadata().at(&path)?.len();
        paks.push(Pak {
            rel: crate::rel_path(paks_dir, &path),
            path,
            size,
            entries,
        });
    }
    paks.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(paks)
}

/// The template a pak was generated from (continuations `x_1.pak` map to `x.pak`).
fn template_for<'a>(templates: &'a [PakTpl], rel: &str) -> Option<&'a PakTpl> {
    if let Some(t) = templates.iter().find(|t| t.path == rel) {
        return Some(t);
    }
    let stem = rel.strip_suffix(".pak")?;
    let (base, n) = stem.rsplit_once('_')?;
    if n.chars().all(|c| c.is_ascii_digit()) {
        let base = format!("{base}.pak");
        templates.iter().find(|t| t.path == base)
    } else {
        None
    }
}

/// What happens to one existing entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Keep,
    Remove,
    /// New content of this size (a re-export).
    Replace(u64),
    /// Some lines edited, a few added and removed.
    EditText,
    /// One line rewritten and one added: a small edit that shifts every later entry.
    TouchText,
}

/// All changes to one pak.
#[derive(Default)]
struct PakPlan {
    actions: BTreeMap<usize, Action>,
    /// (insert before this index, name, size).
    inserts: Vec<(usize, String, u64)>,
}

/// The lines of `old` with each line in `replaced` swapped for the next line of `fresh`
/// (its two header lines skipped), the next line of `fresh` put before each line in
/// `inserted`, and line `removed` dropped. Output equal to `old` gets one more fresh line
/// (or, with none, a newline).
fn splice(
    old: &[u8],
    fresh: &[u8],
    replaced: &BTreeSet<usize>,
    inserted: &BTreeSet<usize>,
    removed: Option<usize>,
) -> Vec<u8> {
    let lines: Vec<&[u8]> = old.split_inclusive(|&b| b == b'\n').collect();
    let pool: Vec<&[u8]> = fresh
        .split_inclusive(|&b| b == b'\n')
        .skip(2)
        .filter(|l| l.len() > 1)
        .collect();
    let mut out = Vec::with_capacity(old.len() + 512);
    let mut next = 0usize;
    let mut take = |out: &mut Vec<u8>| {
        if !pool.is_empty() {
            out.extend_from_slice(pool[next % pool.len()]);
            next += 1;
        }
    };
    for (i, line) in lines.iter().enumerate() {
        if inserted.contains(&i) {
            take(&mut out);
        }
        if Some(i) == removed {
            continue;
        }
        if replaced.contains(&i) {
            take(&mut out);
        } else {
            out.extend_from_slice(line);
        }
    }
    if out == old {
        take(&mut out);
    }
    if out == old {
        out.push(b'\n');
    }
    out
}

fn line_count(text: &[u8]) -> usize {
    text.split_inclusive(|&b| b == b'\n').count()
}

/// Edits text: about a tenth of the lines replaced, a couple inserted, one removed.
fn edit_text(old: &[u8], style: TextStyle, rng: &mut Rng, vocab: &Vocab) -> Vec<u8> {
    let lines = line_count(old);
    let n = lines.max(1);
    let edits = (n / 10).max(1);
    let fresh = content::text(style, edits * 120 + 256, rng, vocab);
    let mut replaced: BTreeSet<usize> = BTreeSet::new();
    for _ in 0..edits {
        replaced.insert(rng.index(n));
    }
    let inserted: BTreeSet<usize> = (0..rng.range(1, 3)).map(|_| rng.index(n)).collect();
    let removed = rng.index(n);
    splice(
        old,
        &fresh,
        &replaced,
        &inserted,
        (lines > 3).then_some(removed),
    )
}

/// A small text edit: one line rewritten, one line added (a tweaked value, a new comment).
fn touch_text(old: &[u8], style: TextStyle, rng: &mut Rng, vocab: &Vocab) -> Vec<u8> {
    let fresh = content::text(style, 512, rng, vocab);
    let n = line_count(old).max(1);
    let (replaced, inserted) = (rng.index(n), rng.index(n));
    splice(
        old,
        &fresh,
        &BTreeSet::from([replaced]),
        &BTreeSet::from([inserted]),
        None,
    )
}

/// Small text edits of the single-pak shape at the reference scale (3.1 GB), scaled with it.
const TEXT_TOUCHES_AT_REFERENCE: f64 = 200.0;

/// Applies an assets update to `repo/paks`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn update_assets(
    repo: &Path,
    state: &mut State,
    update_seed: u64,
    version: u32,
    bytes: u64,
    vocab: &Vocab,
    sizer: &mut UpdateSizer,
    report: &mut UpdateReport,
) -> Result<(), SampleError> {
    let paks_dir = repo.join("paks");
    let templates = paks::pak_templates(state.paks);
    let mut rng = Rng::derived(update_seed, &[b"assets-update", &version.to_le_bytes()]);
    let generation = format!("v{version}");
    let mtime = DosTime::from_unix(mtime_for_version(version));
    let paks = load_paks(&paks_dir)?;
    if paks.is_empty() {
        return Err(SampleError::Malformed {
            path: paks_dir,
            reason: "no .pak archives".into(),
        });
    }
    let mut spent = 0u64;

    // 1. One small pak replaced whole (a new export of, say, a localization).
    let small_limit = (bytes / 8).max(64 * 1024);
    // (The single-pak shape has no small pak to replace: its one pak is edited in place.)
    let single = state.paks == PakShape::Single;
    let mut small: Vec<usize> = (0..paks.len())
        .filter(|_| !single)
        .filter(|&i| paks[i].size <= small_limit)
        .filter(|&i| templates.iter().any(|t| t.path == paks[i].rel))
        .collect();
    if small.is_empty() && !single {
        if let Some(i) = (0..paks.len())
            .filter(|&i| templates.iter().any(|t| t.path == paks[i].rel))
            .min_by_key(|&i| (paks[i].size, i))
        {
            small.push(i);
        }
    }
    let replaced = if small.is_empty() {
        None
    } else {
        Some(small[rng.index(small.len())])
    };
    if let Some(ri) = replaced {
        let pak = &paks[ri];
        let t = templates
            .iter()
            .find(|t| t.path == pak.rel)
            .ok_or_else(|| SampleError::Malformed {
                path: pak.path.clone(),
                reason: "no template".into(),
            })?;
        let archive = format!("paks/{}", pak.rel);
        for e in &pak.entries {
            report.entries_removed.push(EntryChange {
                archive: archive.clone(),
                name: e.name.clone(),
                old_size: Some(e.size),
                new_size: None,
            });
        }
        fs::remove_file(&pak.path).at(&pak.path)?;
        let target = pak.content_bytes().max(1);
        let mut added = Vec::new();
        let files = paks::write_pak(
            &paks_dir,
            t,
            target,
            update_seed,
            state.scale_bytes,
            &generation,
            mtime,
            vocab,
            &mut |rel, name, data| {
                sizer.add_named(name, data);
                added.push(EntryChange {
                    archive: format!("paks/{rel}"),
                    name: name.to_string(),
                    old_size: None,
                    new_size: Some(data.len() as u64),
                });
            },
        )?;
        spent += added.iter().filter_map(|e| e.new_size).sum::<u64>();
        report.entries_added.extend(added);
        for (rel, _) in files {
            if rel == pak.rel {
                report.files_changed.push(format!("paks/{rel}"));
            } else {
                report.files_added.push(format!("paks/{rel}"));
            }
        }
        report.paks_replaced.push(archive);
    }

    // 2. A few config files edited.
    let mut configs: Vec<&str> = repo::CONFIG_FILES
        .iter()
        .copied()
        .filter(|n| paks_dir.join(n).is_file())
        .collect();
    rng.shuffle(&mut configs);
    let n_configs = (rng.range(2, 3) as usize).min(configs.len());
    let mut edited: Vec<&str> = configs[..n_configs].to_vec();
    edited.sort();
    for name in edited {
        let rev = state.config_revisions.get(name).copied().unwrap_or(0) + 1;
        let data = repo::config_file(name, state.seed, rev, vocab);
        let path = paks_dir.join(name);
        repo::write_file(&path, &data, 0o644)?;
        state.config_revisions.insert(name.to_string(), rev);
        sizer.add_named(name, &data);
        spent += data.len() as u64;
        report.files_changed.push(format!("paks/{name}"));
    }

    // 3. Several paks get re-exported entries; a few entries are added and removed.
    let mut pool: Vec<usize> = (0..paks.len())
        .filter(|&i| Some(i) != replaced && !paks[i].entries.is_empty())
        .collect();
    let n_chosen = (rng.range(3, 5) as usize).min(pool.len());
    let mut chosen: Vec<usize> = Vec::new();
    for _ in 0..n_chosen {
        // Weighted by size: the big paks are where most assets live.
        let total: u64 = pool.iter().map(|&i| paks[i].size).sum();
        let mut pick = rng.below(total.max(1));
        let mut at = 0;
        for (k, &i) in pool.iter().enumerate() {
            if pick < paks[i].size {
                at = k;
                break;
            }
            pick -= paks[i].size;
        }
        chosen.push(pool.remove(at));
    }
    let mut plans: BTreeMap<usize, PakPlan> = BTreeMap::new();

    // Additions: a few new assets.
    if !chosen.is_empty() {
        for k in 0..rng.range(2, 4) {
            let pi = chosen[rng.index(chosen.len())];
            let pak = &paks[pi];
            let Some(t) = template_for(&templates, &pak.rel) else {
                continue;
            };
            let (name, size) = paks::draw_entry(
                &mut rng,
                t.entries,
                vocab,
                state.scale_bytes,
                paks::pak_target(t, state.scale_bytes),
                k,
                &format!("_{generation}"),
            );
            let size = size.min((bytes / 20).max(256));
            let at = rng.index(pak.entries.len() + 1);
            spent += size;
            plans.entry(pi).or_default().inserts.push((at, name, size));
        }
    }
    // Removals: a few small assets dropped.
    for _ in 0..rng.range(2, 4) {
        if chosen.is_empty() {
            break;
        }
        let pi = chosen[rng.index(chosen.len())];
        let pak = &paks[pi];
        let plan = plans.entry(pi).or_default();
        if pak.entries.len() <= plan.actions.len() + 1 {
            continue;
        }
        let ei = rng.index(pak.entries.len());
        if pak.entries[ei].size <= (bytes / 20).max(4096) {
            plan.actions.entry(ei).or_insert(Action::Remove);
        }
    }
    // Re-exports, round-robin over the chosen paks until the budget is spent.
    let mut queues: Vec<(usize, Vec<usize>)> = chosen
        .iter()
        .map(|&pi| {
            let mut idx: Vec<usize> = (0..paks[pi].entries.len()).collect();
            rng.shuffle(&mut idx);
            (pi, idx)
        })
        .collect();
    let mut extra: Vec<usize> = pool.clone();
    rng.shuffle(&mut extra);
    let slack = (bytes / 50).max(1);
    loop {
        let left = bytes.saturating_sub(spent);
        if left <= slack {
            break;
        }
        let mut progressed = false;
        for (pi, queue) in queues.iter_mut() {
            let left = bytes.saturating_sub(spent);
            if left <= slack {
                break;
            }
            let plan = plans.entry(*pi).or_default();
            while let Some(ei) = queue.pop() {
                if plan.actions.contains_key(&ei) {
                    continue;
                }
                let e = &paks[*pi].entries[ei];
                if e.size == 0 || e.size > left + left / 10 {
                    continue;
                }
                let action = match Kind::for_name(&e.name) {
                    Kind::Text(_) => Action::EditText,
                    _ => {
                        let new_size = if rng.chance(0.25) {
                            e.size
                        } else {
                            let delta = rng.range(1, (e.size / 50).max(64));
                            if rng.chance(0.5) {
                                e.size + delta
                            } else {
                                e.size.saturating_sub(delta).max(1)
                            }
                        };
                        Action::Replace(new_size)
                    }
                };
                spent += match action {
                    Action::Replace(n) => n,
                    _ => e.size,
                };
                plan.actions.insert(ei, action);
                progressed = true;
                break;
            }
        }
        if !progressed {
            // The chosen paks are exhausted: bring in another one.
            match extra.pop() {
                Some(pi) => {
                    let mut idx: Vec<usize> = (0..paks[pi].entries.len()).collect();
                    rng.shuffle(&mut idx);
                    queues.push((pi, idx));
                }
                None => break,
            }
        }
    }

    // 3b. The single pak: besides the re-exports, many small text edits spread through it,
    // each shifting every later entry by a few bytes.
    if single {
        let touches = (TEXT_TOUCHES_AT_REFERENCE * state.scale_bytes as f64 / 3.1e9)
            .clamp(10.0, TEXT_TOUCHES_AT_REFERENCE) as usize;
        for (pi, pak) in paks.iter().enumerate() {
            let plan = plans.entry(pi).or_default();
            let mut texts: Vec<usize> = (0..pak.entries.len())
                .filter(|&ei| matches!(Kind::for_name(&pak.entries[ei].name), Kind::Text(_)))
                .filter(|ei| !plan.actions.contains_key(ei))
                .collect();
            rng.shuffle(&mut texts);
            for ei in texts.into_iter().take(touches) {
                plan.actions.insert(ei, Action::TouchText);
            }
        }
    }

    // 4. Rewrite every pak with changes.
    for (pi, mut plan) in plans {
        if plan.actions.values().all(|a| *a == Action::Keep) && plan.inserts.is_empty() {
            continue;
        }
        let pak = &paks[pi];
        plan.inserts.sort();
        rewrite_pak(
            pak,
            &plan,
            update_seed,
            &generation,
            mtime,
            &mut rng,
            vocab,
            sizer,
            report,
        )?;
        report.files_changed.push(format!("paks/{}", pak.rel));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn rewrite_pak(
    pak: &Pak,
    plan: &PakPlan,
    seed: u64,
    generation: &str,
    mtime: DosTime,
    rng: &mut Rng,
    vocab: &Vocab,
    sizer: &mut UpdateSizer,
    report: &mut UpdateReport,
) -> Result<(), SampleError> {
    let archive = format!("paks/{}", pak.rel);
    let tmp = pak.path.with_extension("pak.tmp");
    let mut src = BufReader::with_capacity(1 << 20, File::open(&pak.path).at(&pak.path)?);
    let out = File::create(&tmp).at(&tmp)?;
    let mut w = PakWriter::new(BufWriter::with_capacity(1 << 20, out));
    let mut inserts = plan.inserts.iter().peekable();
    let mut insert_until = |w: &mut PakWriter<BufWriter<File>>,
                            limit: usize,
                            sizer: &mut UpdateSizer,
                            report: &mut UpdateReport|
     -> Result<(), SampleError> {
        while let Some((_, name, size)) = inserts.next_if(|(at, _, _)| *at <= limit) {
            let data = paks::entry_content(
                name,
                *size,
                paks::entry_seed(seed, &pak.rel, name, generation),
                vocab,
            );
            w.add(name, &data, mtime).at(&tmp)?;
            sizer.add_named(name, &data);
            report.entries_added.push(EntryChange {
                archive: archive.clone(),
                name: name.clone(),
                old_size: None,
                new_size: Some(data.len() as u64),
            });
        }
        Ok(())
    };
    for (i, e) in pak.entries.iter().enumerate() {
        insert_until(&mut w, i, sizer, report)?;
        let action = plan.actions.get(&i).copied().unwrap_or(Action::Keep);
        match action {
            Action::Keep => {
                src.seek(SeekFrom::Start(e.data_offset)).at(&pak.path)?;
                w.add_raw(e, &mut src).at(&tmp)?;
            }
            Action::Remove => report.entries_removed.push(EntryChange {
                archive: archive.clone(),
                name: e.name.clone(),
                old_size: Some(e.size),
                new_size: None,
            }),
            Action::Replace(_) | Action::EditText | Action::TouchText => {
                let data = match action {
                    Action::Replace(n) => paks::entry_content(
                        &e.name,
                        n,
                        paks::entry_seed(seed, &pak.rel, &e.name, generation),
                        vocab,
                    ),
                    _ => {
                        let mut old = vec![0u8; e.size as usize];
                        src.seek(SeekFrom::Start(e.data_offset)).at(&pak.path)?;
                        src.read_exact(&mut old).at(&pak.path)?;
                        let style = match Kind::for_name(&e.name) {
                            Kind::Text(s) => s,
                            _ => TextStyle::Lua,
                        };
                        if action == Action::TouchText {
                            touch_text(&old, style, rng, vocab)
                        } else {
                            edit_text(&old, style, rng, vocab)
                        }
                    }
                };
                w.add(&e.name, &data, mtime).at(&tmp)?;
                sizer.add_named(&e.name, &data);
                report.entries_changed.push(EntryChange {
                    archive: archive.clone(),
                    name: e.name.clone(),
                    old_size: Some(e.size),
                    new_size: Some(data.len() as u64),
                });
            }
        }
    }
    insert_until(&mut w, usize::MAX, sizer, report)?;
    w.finish().at(&tmp)?;
    drop(src);
    fs::rename(&tmp, &pak.path).at(&pak.path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_edits_change_a_little() {
        let v = Vocab::new(2);
        let mut r = Rng::new(1);
        let old = content::text(TextStyle::Lua, 20_000, &mut r, &v);
        let new = edit_text(&old, TextStyle::Lua, &mut r, &v);
        assert_ne!(old, new);
        let diff = (old.len() as i64 - new.len() as i64).abs();
        assert!(diff < 4000, "{diff}");
        // Most lines survive.
        let old_lines: BTreeSet<&[u8]> = old.split(|&b| b == b'\n').collect();
        let kept = new
            .split(|&b| b == b'\n')
            .filter(|l| old_lines.contains(l))
            .count();
        assert!(kept * 10 > old_lines.len() * 7);
        // Tiny inputs do not panic.
        let _ = edit_text(b"x\n", TextStyle::Cfg, &mut r, &v);
        let _ = edit_text(b"", TextStyle::Cfg, &mut r, &v);
    }

    #[test]
    fn a_touch_changes_a_line_or_two() {
        let v = Vocab::new(3);
        let mut r = Rng::new(5);
        let old = content::text(TextStyle::Xml, 8_000, &mut r, &v);
        let new = touch_text(&old, TextStyle::Xml, &mut r, &v);
        assert_ne!(old, new);
        let old_lines: Vec<&[u8]> = old.split(|&b| b == b'\n').collect();
        let new_lines: Vec<&[u8]> = new.split(|&b| b == b'\n').collect();
        let kept = new_lines.iter().filter(|l| old_lines.contains(l)).count();
        assert!(kept + 3 >= old_lines.len(), "{kept} of {}", old_lines.len());
        assert!((old.len() as i64 - new.len() as i64).abs() < 600);
        let _ = touch_text(b"", TextStyle::Cfg, &mut r, &v);
    }

    #[test]
    fn continuation_paks_map_to_templates() {
        let t = paks::pak_templates(PakShape::Split);
        assert_eq!(
            template_for(&t, "textures_1.pak").map(|t| t.path.as_str()),
            Some("textures.pak")
        );
        assert!(template_for(&t, "nope.pak").is_none());
        assert!(template_for(&t, "levels/gym/level.pak").is_some());
    }
}
