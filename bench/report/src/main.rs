//! Report writer for `bench/run.sh` (the benchmark harness).
//!
//! ```text
//! report MANIFEST.json [--check]
//! ```
//!
//! MANIFEST.json is written by `bench/run.sh`: the command, machine, workload and the paths of
//! the per-script results (bench/build.sh, bench/delivery.sh per repetition, bench/registry.sh),
//! the output Markdown file and the charts directory. The program
//! - computes the seven benchmark figures for both sides (medians over the delivery
//!   repetitions), the ratio and whether the target is met;
//! - writes the harness section of the Markdown file between the BEGIN/END markers (replacing
//!   an earlier one; inserted before the first `## ` section of an existing file without
//!   markers; a new file otherwise), so hand-written sections around it stay;
//! - writes the charts as SVG files (hand-made, no fonts fetched) into the charts directory;
//! - with `--check`, exits 1 unless every figure was produced (a number on both sides where
//!   the figure has two) and Gantry's bytes for figures 1 and 2 are below the layer-level ones.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

const BEGIN: &str =
    "<!-- BEGIN bench/run.sh: generated; a re-run of the harness replaces everything down to END -->";
const END: &str = "<!-- END bench/run.sh -->";

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("report: {e}");
            std::process::exit(2);
        }
    }
}

/// Reads and parses a JSON file, naming it in the error.
fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A value at a dotted path (`a.b.0.c`; numbers index arrays).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) if cur.is_array() => cur.get(i)?,
            _ => cur.get(part)?,
        };
    }
    Some(cur)
}

fn num(v: &Value, path: &str) -> Option<f64> {
    at(v, path)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite())
}

fn text(v: &Value, path: &str) -> String {
    match at(v, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "?".to_string(),
        Some(other) => other.to_string(),
    }
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// The median over the delivery repetitions of one path (None if any lacks it).
fn dmed(runs: &[Value], path: &str) -> Option<f64> {
    let xs: Option<Vec<f64>> = runs.iter().map(|r| num(r, path)).collect();
    median(xs?)
}

/// `x`, noting in `problems` when it is missing.
fn need(problems: &mut Vec<String>, name: &str, x: Option<f64>) -> Option<f64> {
    if x.is_none() {
        problems.push(format!("{name}: not produced"));
    }
    x
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn mb(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(x) if x >= 1e6 => format!("{:.1} MB", x / 1e6),
        Some(x) => format!("{:.1} kB", x / 1e3),
    }
}

fn secs(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.2} s"))
}

fn times(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(x) if x >= 10.0 => format!("{x:.1}×"),
        Some(x) => format!("{x:.2}×"),
    }
}

fn plain(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn mib_kb(kb: Option<f64>) -> String {
    kb.map_or("–".into(), |k| format!("{:.0} MiB", k / 1024.0))
}

/// One row of the figures table.
struct Row {
    num: String,
    what: String,
    layer_level: String,
    gantry: String,
    advantage: String,
    target: String,
    met: Option<bool>,
}

/// One group of bars in a chart: a label and one value per series.
struct Group {
    label: String,
    values: Vec<Option<f64>>,
}

/// A chart: grouped horizontal bars, each group scaled to its own largest value (the groups
/// compare the two sides of one measure; their units differ).
struct Chart {
    file: &'static str,
    title: String,
    note: String,
    series: Vec<(&'static str, &'static str)>,
    groups: Vec<Group>,
    fmt: fn(f64) -> String,
}

fn fmt_mb(x: f64) -> String {
    mb(Some(x))
}
fn fmt_s(x: f64) -> String {
    secs(Some(x))
}
fn fmt_plain(x: f64) -> String {
    plain(Some(x))
}
fn fmt_mib(x: f64) -> String {
    format!("{x:.0} MiB")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG text of a chart.
fn svg(chart: &Chart) -> String {
    const W: f64 = 860.0;
    const LABEL_W: f64 = 290.0;
    const BAR_W: f64 = 430.0;
    const BAR_H: f64 = 16.0;
    const GAP: f64 = 3.0;
    const GROUP_GAP: f64 = 14.0;
    let top = 78.0;
    let per_group = chart.series.len() as f64 * (BAR_H + GAP) + GROUP_GAP;
    let h = top + chart.groups.len() as f64 * per_group + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{h}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">{}</text>"#,
        xml_escape(&chart.title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="42" fill="#444444">{}</text>"##,
        xml_escape(&chart.note)
    );
    let mut lx = 10.0;
    for (name, color) in &chart.series {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="52" width="12" height="12" fill="{color}"/><text x="{}" y="62">{}</text>"#,
            lx + 16.0,
            xml_escape(name)
        );
        lx += 30.0 + 7.0 * name.chars().count() as f64;
    }
    for (gi, g) in chart.groups.iter().enumerate() {
        let gy = top + gi as f64 * per_group;
        let max = g
            .values
            .iter()
            .flatten()
            .fold(0.0f64, |m, &v| if v > m { v } else { m });
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            gy + chart.series.len() as f64 * (BAR_H + GAP) / 2.0 + 3.0,
            xml_escape(&g.label)
        );
        for (si, (_, color)) in chart.series.iter().enumerate() {
            let y = gy + si as f64 * (BAR_H + GAP);
            match g.values.get(si).copied().flatten() {
                Some(v) => {
                    let w = if max > 0.0 { v / max * BAR_W } else { 0.0 };
                    let w = if v > 0.0 { w.max(1.5) } else { 0.0 };
                    let _ = writeln!(
                        s,
                        r#"<rect x="{LABEL_W}" y="{y}" width="{w:.1}" height="{BAR_H}" fill="{color}"/><text x="{:.1}" y="{}">{}</text>"#,
                        LABEL_W + w + 5.0,
                        y + BAR_H - 4.0,
                        xml_escape(&(chart.fmt)(v))
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{}" y="{}" fill="#888888">not measured</text>"##,
                        LABEL_W + 5.0,
                        y + BAR_H - 4.0
                    );
                }
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// `to` relative to the directory `from_dir` (both absolute), with `/` separators.
fn relative(from_dir: &Path, to: &Path) -> String {
    let a: Vec<Component> = from_dir.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = Vec::new();
    for _ in common..a.len() {
        parts.push("..".into());
    }
    for c in &b[common..] {
        parts.push(c.as_os_str().to_string_lossy().into_owned());
    }
    parts.join("/")
}

fn run() -> Result<bool, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let manifest_path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .ok_or("usage: report MANIFEST.json [--check]")?;
    let m = read_json(Path::new(manifest_path))?;
    let path_of = |key: &str| -> Result<PathBuf, String> {
        at(&m, key)
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .ok_or(format!("{manifest_path}: no {key}"))
    };
    let build = read_json(&path_of("build")?)?;
    let registry = read_json(&path_of("registry")?)?;
    let delivery_paths: Vec<PathBuf> = at(&m, "delivery")
        .and_then(Value::as_array)
        .ok_or(format!("{manifest_path}: no delivery list"))?
        .iter()
        .filter_map(|v| v.as_str().map(PathBuf::from))
        .collect();
    if delivery_paths.is_empty() {
        return Err(format!("{manifest_path}: empty delivery list"));
    }
    let delivery: Vec<Value> = delivery_paths
        .iter()
        .map(|p| read_json(p))
        .collect::<Result<_, _>>()?;
    let out = path_of("out")?;
    let charts_dir = path_of("charts_dir")?;
    let out_dir = out
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));

    let mut problems: Vec<String> = Vec::new();

    // ---- the figures
    let update = need(
        &mut problems,
        "update's own size",
        num(&m, "workload.update.update_bytes"),
    );
    let rate = text(&delivery[0], "params.rate");
    let mut rows: Vec<Row> = Vec::new();

    // 1. bytes a node holding v1 downloads for v2 (link, registry -> node)
    let s1 = need(
        &mut problems,
        "1 layer-level pull bytes",
        dmed(&delivery, "pull.1.v2.link_down_bytes"),
    );
    let g1 = need(
        &mut problems,
        "1 Gantry pull bytes",
        dmed(&delivery, "pull.0.v2.link_down_bytes"),
    );
    let g_image = dmed(&delivery, "pull.0.image_bytes");
    let s_image = dmed(&delivery, "pull.1.image_bytes");
    let g1x = div(g1, update);
    let g1pct = div(g1, g_image).map(|x| x * 100.0);
    rows.push(Row {
        num: "1".into(),
        what: "bytes a node holding v1 downloads to run v2 (on the link)".into(),
        layer_level: format!(
            "{} ({} the update, {:.1} % of the image)",
            mb(s1),
            times(div(s1, update)),
            div(s1, s_image).map_or(f64::NAN, |x| x * 100.0)
        ),
        gantry: format!(
            "{} ({} the update, {:.2} % of the image)",
            mb(g1),
            times(g1x),
            g1pct.unwrap_or(f64::NAN)
        ),
        advantage: times(div(s1, g1)),
        target: format!(
            "≤ 1.25 × the update's own size ({}) and ≤ 3 % of the image",
            mb(update)
        ),
        met: g1x.zip(g1pct).map(|(x, p)| x <= 1.25 && p <= 3.0),
    });

    // 2. bytes CI uploads to push v2 (link, both directions)
    let s2 = need(
        &mut problems,
        "2 layer-level push bytes",
        dmed(&delivery, "push.2.v2.link_bytes"),
    );
    let g2 = need(
        &mut problems,
        "2 Gantry push bytes",
        dmed(&delivery, "push.0.v2.link_bytes"),
    );
    let g2x = div(g2, update);
    rows.push(Row {
        num: "2".into(),
        what: "bytes CI sends to push v2 (on the link, up + down)".into(),
        layer_level: format!(
            "{} ({} the update; `buildah push` → docker-registry)",
            mb(s2),
            times(div(s2, update))
        ),
        gantry: format!(
            "{} ({} the update; delta push → `gantry serve`)",
            mb(g2),
            times(g2x)
        ),
        advantage: times(div(s2, g2)),
        target: "≤ 1.25 × the update's own size".into(),
        met: g2x.map(|x| x <= 1.25),
    });

    // 3. rebuild after the update (warm) and no-op rebuild
    let step = |name: &str, field: &str| -> Option<f64> {
        at(&build, "summary")?
            .as_array()?
            .iter()
            .find(|s| s.get("step").and_then(Value::as_str) == Some(name))
            .and_then(|s| num(s, field))
    };
    let s3 = need(
        &mut problems,
        "3 buildah warm rebuild",
        step("update", "buildah_bud_s"),
    );
    let g3 = need(
        &mut problems,
        "3 gantry warm rebuild",
        step("update", "gantry_s"),
    );
    let r3 = div(s3, g3);
    rows.push(Row {
        num: "3".into(),
        what: "rebuild after the update (warm cache)".into(),
        layer_level: format!(
            "{} `buildah bud` ({} with push)",
            secs(s3),
            secs(step("update", "buildah_bud_push_s"))
        ),
        gantry: format!("{} `gantry build`", secs(g3)),
        advantage: format!(
            "{} ({} against bud + push)",
            times(r3),
            times(div(step("update", "buildah_bud_push_s"), g3))
        ),
        target: "≥ 10× faster than buildah warm".into(),
        met: r3.map(|x| x >= 10.0),
    });
    let s3n = need(
        &mut problems,
        "3 buildah no-op rebuild",
        step("noop", "buildah_bud_s"),
    );
    let g3n = need(
        &mut problems,
        "3 gantry no-op rebuild",
        step("noop", "gantry_s"),
    );
    rows.push(Row {
        num: "3".into(),
        what: "no-op rebuild (nothing changed)".into(),
        layer_level: secs(s3n),
        gantry: secs(g3n),
        advantage: times(div(s3n, g3n)),
        target: "under 3 s".into(),
        met: g3n.map(|x| x < 3.0),
    });

    // 4. cold build
    let s4 = need(
        &mut problems,
        "4 buildah cold bud + push",
        step("cold", "buildah_bud_push_s"),
    );
    let g4 = need(
        &mut problems,
        "4 gantry cold build",
        step("cold", "gantry_s"),
    );
    let s4b = need(
        &mut problems,
        "4 buildah image bytes",
        step("cold", "buildah_layers_bytes"),
    );
    let g4b = need(
        &mut problems,
        "4 gantry image bytes",
        step("cold", "gantry_layers_bytes"),
    );
    let r4 = div(s4, g4);
    rows.push(Row {
        num: "4".into(),
        what: format!("cold build ({})", text(&m, "scale")),
        layer_level: format!(
            "{} `buildah bud` + push ({} bud), image {}",
            secs(s4),
            secs(step("cold", "buildah_bud_s")),
            mb(s4b)
        ),
        gantry: format!("{} `gantry build`, image {}", secs(g4), mb(g4b)),
        advantage: format!(
            "{} (output {} of buildah's)",
            times(r4),
            times(div(g4b, s4b))
        ),
        target: "≥ 2× faster at no larger output".into(),
        met: r4.zip(div(g4b, s4b)).map(|(r, o)| r >= 2.0 && o <= 1.0),
    });

    // 5. update pull wall time on the limited link
    let s5 = need(
        &mut problems,
        "5 layer-level pull time",
        dmed(&delivery, "pull.1.v2.seconds"),
    );
    let g5 = need(
        &mut problems,
        "5 Gantry pull time",
        dmed(&delivery, "pull.0.v2.seconds"),
    );
    let r5 = div(s5, g5);
    rows.push(Row {
        num: "5".into(),
        what: format!(
            "`ctr images pull` of v2 on a node holding v1, link at {rate} (tc tbf, own netns)"
        ),
        layer_level: format!(
            "{} (new layers in the content store after {})",
            secs(s5),
            secs(dmed(&delivery, "pull.1.v2.new_layers_committed_s"))
        ),
        gantry: format!(
            "{} (new layers in the content store after {})",
            secs(g5),
            secs(dmed(&delivery, "pull.0.v2.new_layers_committed_s"))
        ),
        advantage: times(r5),
        target: "≥ 10× faster".into(),
        met: r5.map(|x| x >= 10.0),
    });

    // 6. registry throughput
    let table: Vec<Value> = at(&registry, "table")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let reg = |measure: &str, c: Option<u64>| -> Option<&Value> {
        table.iter().find(|r| {
            r.get("measure").and_then(Value::as_str) == Some(measure)
                && r.get("concurrency").and_then(Value::as_u64) == c
        })
    };
    let conc = [1u64, 16, 64];
    let mut reg_groups: Vec<Group> = Vec::new();
    for (measure, unit, label) in [
        ("blob GET 1 MiB requests/s", "req/s", "blob GET 1 MiB"),
        ("blob GET 64 MiB MB/s", "MB/s", "blob GET 64 MiB"),
        (
            "manifest GET by tag requests/s",
            "req/s",
            "manifest GET by tag",
        ),
    ] {
        let mut sv = Vec::new();
        let mut gv = Vec::new();
        let mut rv = Vec::new();
        for c in conc {
            let r = reg(measure, Some(c));
            let d = need(
                &mut problems,
                &format!("6 docker-registry {measure} c={c}"),
                r.and_then(|r| num(r, "distribution.value")),
            );
            let g = need(
                &mut problems,
                &format!("6 gantry {measure} c={c}"),
                r.and_then(|r| num(r, "gantry.value")),
            );
            sv.push(plain(d));
            gv.push(plain(g));
            rv.push(div(g, d));
            reg_groups.push(Group {
                label: format!(
                    "{label}, {c} client{} ({unit})",
                    if c == 1 { "" } else { "s" }
                ),
                values: vec![d, g],
            });
        }
        rows.push(Row {
            num: "6".into(),
            what: format!("{label} at 1 / 16 / 64 clients ({unit})"),
            layer_level: sv.join(" / "),
            gantry: gv.join(" / "),
            advantage: rv.iter().map(|x| times(*x)).collect::<Vec<_>>().join(" / "),
            target: "≥ 2×".into(),
            met: rv
                .iter()
                .copied()
                .collect::<Option<Vec<f64>>>()
                .map(|v| v.iter().all(|x| *x >= 2.0)),
        });
    }
    let p99: Vec<&Value> = table
        .iter()
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some("p99"))
        .collect();
    let p99_measured: Vec<f64> = p99.iter().filter_map(|r| num(r, "ratio")).collect();
    if p99_measured.is_empty() {
        problems.push("6 p99 latency: not produced".into());
    }
    let p99_lower = p99_measured.iter().filter(|x| **x > 1.0).count();
    rows.push(Row {
        num: "6".into(),
        what: "p99 latency of those GETs (9 measures)".into(),
        layer_level: "–".into(),
        gantry: format!(
            "lower in {p99_lower} of {} measured{}",
            p99_measured.len(),
            if p99_measured.len() < p99.len() {
                format!(
                    " ({} not measured: runs too short)",
                    p99.len() - p99_measured.len()
                )
            } else {
                String::new()
            }
        ),
        advantage: format!(
            "{} … {}",
            times(p99_measured.iter().copied().reduce(f64::min)),
            times(p99_measured.iter().copied().reduce(f64::max))
        ),
        target: "p99 lower".into(),
        met: if p99_measured.is_empty() {
            None
        } else {
            Some(p99_lower == p99_measured.len())
        },
    });
    let push_row = reg("push 256 MiB blob MB/s (median)", None);
    let sp = need(
        &mut problems,
        "6 docker-registry push MB/s",
        push_row.and_then(|r| num(r, "distribution.value")),
    );
    let gp = need(
        &mut problems,
        "6 gantry push MB/s",
        push_row.and_then(|r| num(r, "gantry.value")),
    );
    rows.push(Row {
        num: "6".into(),
        what: "push of a 256 MiB blob (MB/s)".into(),
        layer_level: plain(sp),
        gantry: plain(gp),
        advantage: times(div(gp, sp)),
        target: "≥ 2×".into(),
        met: div(gp, sp).map(|x| x >= 2.0),
    });
    reg_groups.push(Group {
        label: "push 256 MiB blob (MB/s)".into(),
        values: vec![sp, gp],
    });

    // 7. memory (VmHWM, from the delivery runs)
    let rss_max = |d: &Value, prefix: &str| -> Option<f64> {
        at(d, "rss")?
            .as_array()?
            .iter()
            .filter(|r| {
                r.get("process")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p.starts_with(prefix))
            })
            .filter_map(|r| num(r, "vmhwm_kb"))
            .reduce(f64::max)
    };
    let med_rss =
        |prefix: &str| median(delivery.iter().filter_map(|d| rss_max(d, prefix)).collect());
    let s7 = need(
        &mut problems,
        "7 docker-registry peak RSS",
        med_rss("docker-registry"),
    );
    let g7s = need(
        &mut problems,
        "7 gantry serve peak RSS",
        med_rss("gantry serve"),
    );
    let g7a = need(
        &mut problems,
        "7 gantry agent peak RSS",
        med_rss("gantry agent"),
    );
    let g7 = g7s.zip(g7a).map(|(a, b)| a.max(b));
    rows.push(Row {
        num: "7".into(),
        what: format!(
            "peak RSS while moving the {} image (push, v1 and v2 pulls)",
            text(&m, "scale")
        ),
        layer_level: format!("docker-registry {}", mib_kb(s7)),
        gantry: format!("gantry serve {}, gantry agent {}", mib_kb(g7s), mib_kb(g7a)),
        advantage: times(div(s7, g7s)),
        target: "agent and registry under 200 MB".into(),
        met: g7.map(|kb| kb * 1024.0 < 200e6),
    });

    // checks beyond presence: Gantry moves fewer bytes (figures 1 and 2)
    if let (Some(s), Some(g)) = (s1, g1) {
        if g >= s {
            problems.push(format!(
                "1: Gantry's pull bytes {g} are not below the layer-level ones, {s}"
            ));
        }
    }
    if let (Some(s), Some(g)) = (s2, g2) {
        if g >= s {
            problems.push(format!(
                "2: Gantry's push bytes {g} are not below the layer-level ones, {s}"
            ));
        }
    }

    // ---- charts
    let layer_gantry = vec![("layer-level", "#c0504d"), ("Gantry", "#4f81bd")];
    let charts = vec![
        Chart {
            file: "bytes.svg",
            title: "Bytes moved for the next day's update (v2)".into(),
            note: format!(
                "on the node's link (veth counters); update's own size {} (gzip -6); bars scaled per row",
                mb(update)
            ),
            series: vec![
                ("layer-level", "#c0504d"),
                ("Gantry", "#4f81bd"),
                ("update's own size", "#9bbb59"),
            ],
            groups: vec![
                Group {
                    label: "push v2 (CI → registry)".into(),
                    values: vec![s2, g2, update],
                },
                Group {
                    label: "pull v2 (registry → node)".into(),
                    values: vec![s1, g1, update],
                },
            ],
            fmt: fmt_mb,
        },
        Chart {
            file: "times.svg",
            title: "Wall times, layer-level and Gantry".into(),
            note: "one run on a shared 2-core machine (noisy: read the ratios); bars scaled per row"
                .into(),
            series: layer_gantry.clone(),
            groups: vec![
                Group {
                    label: "cold build v1 (bud + push / build)".into(),
                    values: vec![s4, g4],
                },
                Group {
                    label: "rebuild after the update (warm)".into(),
                    values: vec![s3, g3],
                },
                Group {
                    label: "no-op rebuild".into(),
                    values: vec![s3n, g3n],
                },
                Group {
                    label: "push v2".into(),
                    values: vec![
                        dmed(&delivery, "push.2.v2.seconds"),
                        dmed(&delivery, "push.0.v2.seconds"),
                    ],
                },
                Group {
                    label: format!("pull v2 at {rate}"),
                    values: vec![s5, g5],
                },
            ],
            fmt: fmt_s,
        },
        Chart {
            file: "registry.svg",
            title: "Registry throughput: docker-registry and gantry serve".into(),
            note: "loopback, plain HTTP; higher is better; bars scaled per row".into(),
            series: vec![("docker-registry", "#c0504d"), ("gantry serve", "#4f81bd")],
            groups: reg_groups,
            fmt: fmt_plain,
        },
        Chart {
            file: "memory.svg",
            title: "Peak RSS (VmHWM) during the delivery runs".into(),
            note: "target: agent and registry under 200 MB".into(),
            series: vec![("peak RSS", "#4f81bd")],
            groups: vec![
                Group {
                    label: "docker-registry (layer-level)".into(),
                    values: vec![s7.map(|k| k / 1024.0)],
                },
                Group {
                    label: "gantry serve".into(),
                    values: vec![g7s.map(|k| k / 1024.0)],
                },
                Group {
                    label: "gantry agent".into(),
                    values: vec![g7a.map(|k| k / 1024.0)],
                },
            ],
            fmt: fmt_mib,
        },
    ];
    std::fs::create_dir_all(&charts_dir).map_err(|e| format!("{}: {e}", charts_dir.display()))?;
    for c in &charts {
        let p = charts_dir.join(c.file);
        std::fs::write(&p, svg(c)).map_err(|e| format!("{}: {e}", p.display()))?;
    }

    // ---- Markdown
    let quick = at(&m, "quick").and_then(Value::as_bool).unwrap_or(false);
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(
        md,
        "## All benchmark figures in one run (`bench/run.sh`{})\n",
        if quick { ", quick: test scale" } else { "" }
    );
    if quick {
        let _ = writeln!(md, "A quick run at test scale: it shows that the harness works, not how Gantry performs at full scale.\n");
    }
    let _ = writeln!(md, "Command: `{}`  ", text(&m, "command"));
    let _ = writeln!(
        md,
        "Date: {} (took {:.0} min). Gantry: {} ({}).  ",
        text(&m, "date"),
        num(&m, "took_s").unwrap_or(0.0) / 60.0,
        text(&m, "versions.gantry"),
        text(&m, "versions.git")
    );
    let _ = writeln!(
        md,
        "Machine: {} cores, {}, {}, kernel {}. Load average {} at the start and {} at the end; sampled every {} s during the run: {}. {}\n",
        text(&m, "machine.nproc"),
        text(&m, "machine.cpu"),
        text(&m, "machine.mem"),
        text(&m, "machine.kernel"),
        text(&m, "machine.loadavg_start"),
        text(&m, "machine.loadavg_end"),
        text(&m, "machine.load_interval_s"),
        text(&m, "machine.load_summary"),
        text(&m, "machine.note"),
    );
    let _ = writeln!(
        md,
        "Workload, generated once and used by every script below: `gantry sample-game --scale {} --seed {}` ({} in {} files), then `gantry sample-game --update --mb {}`: {} changed in {} files, **update's own size {}** (gzip -6 of what is new or changed). Layer-level: the sample's two-stage Dockerfile built by `buildah bud --layers`, pushed by `buildah push` to `docker-registry`, pulled by containerd directly. Gantry: `gantry build`, `gantry push` to `gantry serve`, pulled by containerd through `gantry agent`. Delivery repetitions: {} (medians; the side that goes first alternates); build runs: {} (alternating inside bench/build.sh).\n",
        text(&m, "scale"),
        text(&m, "seed"),
        mb(num(&m, "workload.sample.total_bytes")),
        text(&m, "workload.sample.files_written"),
        text(&m, "update_mb"),
        mb(num(&m, "workload.update.changed_bytes")),
        at(&m, "workload.update.files_changed")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
        mb(update),
        delivery.len(),
        text(&build, "params.runs"),
    );
    let _ = writeln!(
        md,
        "| # | figure | layer-level | Gantry | Gantry's advantage | target | met |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.num,
            r.what,
            r.layer_level,
            r.gantry,
            r.advantage,
            r.target,
            match r.met {
                Some(true) => "**met**",
                Some(false) => "not met",
                None => "–",
            }
        );
    }
    let _ = writeln!(md, "\nGantry's advantage: layer-level ÷ Gantry for bytes, times and memory; Gantry ÷ layer-level for throughput (above 1× favours Gantry). Bytes are whole Ethernet frames on the node's veth link; 1 MB = 10^6 bytes.\n");
    for c in &charts {
        let _ = writeln!(
            md,
            "![{}]({})",
            c.title,
            relative(&out_dir, &charts_dir.join(c.file))
        );
    }
    let _ = writeln!(
        md,
        "\nDetails (per-script reports with every measure, the exact commands and versions):"
    );
    let md_of = |p: &Path| relative(&out_dir, &p.with_extension("md"));
    let _ = writeln!(
        md,
        "- figures 3 and 4: [{}]({})",
        md_of(&path_of("build")?),
        md_of(&path_of("build")?)
    );
    for (i, p) in delivery_paths.iter().enumerate() {
        let _ = writeln!(
            md,
            "- figures 1, 2, 5 and 7, repetition {} ({} first): [{}]({})",
            i + 1,
            text(&delivery[i], "params.first"),
            md_of(p),
            md_of(p)
        );
    }
    let _ = writeln!(
        md,
        "- figure 6: [{}]({})",
        md_of(&path_of("registry")?),
        md_of(&path_of("registry")?)
    );
    if !problems.is_empty() {
        let _ = writeln!(md, "\nProblems: {}", problems.join("; "));
    }
    let _ = writeln!(md, "{END}");

    let old = std::fs::read_to_string(&out).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}\n{}",
            &old[..b],
            md,
            old[e + END.len()..].trim_start_matches('\n')
        ),
        _ if old.is_empty() => format!("# Benchmarks\n\n{md}"),
        _ => match old.find("\n## ") {
            Some(i) => format!("{}\n{}\n{}", &old[..i], md, &old[i + 1..]),
            None => format!("{}\n\n{}", old.trim_end(), md),
        },
    };
    std::fs::write(&out, new).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "report: wrote {} and {} charts in {}",
        out.display(),
        charts.len(),
        charts_dir.display()
    );
    print!("{md}");

    if check && !problems.is_empty() {
        eprintln!("report: check FAILED:");
        for p in &problems {
            eprintln!("  - {p}");
        }
        return Ok(false);
    }
    if check {
        eprintln!("report: check passed (every figure produced; Gantry's bytes below the layer-level ones for figures 1 and 2)");
    }
    Ok(true)
}
