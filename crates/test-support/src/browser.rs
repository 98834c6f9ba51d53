//! A real browser for tests of the HTML Gantry writes: Debian's Chromium, headless, loads a
//! page, measures where its texts landed, and takes a screenshot.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{output_with_timeout, require_tool};

/// Flags for a headless Chromium on a machine with no network and as root: no sandbox (root),
/// no GPU, and none of the background connections a closed network refuses.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// The script appended to the page: every `<text>` of every `<svg>` must lie inside its
/// chart, and no two texts of the page's charts may overlap each other or the page's other
/// visible text blocks (headings, paragraphs, the legend). Findings go into
/// `<pre id="layout-check">` as JSON, read back from Chromium's `--dump-dom`.
const CHECK_SCRIPT: &str = r#"<script>
(function () {
  const problems = [];
  const boxes = [];
  const rect = (el) => el.getBoundingClientRect();
  const name = (el) => (el.tagName + ' "' + (el.textContent || '').trim().slice(0, 40) + '"');
  const overlap = (a, b) =>
    a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
  let texts = 0;
  for (const svg of document.querySelectorAll('svg')) {
    const s = rect(svg);
    for (const t of svg.querySelectorAll('text')) {
      texts++;
      const r = rect(t);
      if (r.width === 0 || r.height === 0) continue;
      if (r.left < s.left - 0.5 || r.right > s.right + 0.5 || r.top < s.top - 0.5 || r.bottom > s.bottom + 0.5) {
        problems.push(name(t) + ' overflows its chart #' + svg.id + ': text ' +
          JSON.stringify([r.left, r.top, r.right, r.bottom]) + ' chart ' + JSON.stringify([s.left, s.top, s.right, s.bottom]));
      }
      boxes.push([t, r]);
    }
  }
  for (const el of document.querySelectorAll('h1, h2, p, li, figcaption, th, td')) {
    const r = rect(el);
    if (r.width > 0 && r.height > 0) boxes.push([el, r]);
  }
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, ra] = boxes[i];
      const [b, rb] = boxes[j];
      if (a.contains(b) || b.contains(a)) continue;
      if (a.tagName !== 'text' && b.tagName !== 'text') continue;
      if (overlap(ra, rb)) problems.push(name(a) + ' overlaps ' + name(b));
    }
  }
  const out = document.createElement('pre');
  out.id = 'layout-check';
  out.textContent = JSON.stringify({ texts: texts, width: window.innerWidth, problems: problems });
  document.body.appendChild(out);
})();
</script>"#;

/// What Chromium found on a page: how many chart texts it measured and what was wrong.
#[derive(Debug)]
pub struct LayoutCheck {
    /// `<text>` elements measured inside `<svg>` charts.
    pub texts: u64,
    /// The viewport width the page was laid out at.
    pub width: u64,
    /// Each text that overflows its chart or overlaps another text, described.
    pub problems: Vec<String>,
}

fn chromium(args: &[&str], profile: &Path, width: u32) -> std::process::Output {
    let bin = require_tool("chromium");
    let mut cmd = Command::new(bin);
    cmd.args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={width},1000"))
        .args(args);
    output_with_timeout(&mut cmd, Duration::from_secs(120))
}

/// Loads `page` in headless Chromium at `width` px and checks its charts' texts (see
/// [`LayoutCheck`]); also writes a screenshot of the page as it is to `screenshot`.
/// Panics when Chromium is missing or fails.
pub fn check_page_layout(page: &Path, width: u32, screenshot: &Path) -> LayoutCheck {
    let html =
        std::fs::read_to_string(page).unwrap_or_else(|e| panic!("reading {}: {e}", page.display()));
    let dir = tempfile::tempdir().expect("a temp dir for the browser");
    let checked = dir.path().join("checked.html");
    let with_script = match html.rfind("</body>") {
        Some(i) => format!("{}{CHECK_SCRIPT}{}", &html[..i], &html[i..]),
        None => format!("{html}{CHECK_SCRIPT}"),
    };
    std::fs::write(&checked, with_script).expect("writing the page to check");
    let url = format!("file://{}", checked.display());
    let out = chromium(
        &["--dump-dom", &url],
        &dir.path().join("profile-dom"),
        width,
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = dom
        .find("<pre id=\"layout-check\">")
        .unwrap_or_else(|| panic!("the check script did not run; page as Chromium saw it:\n{dom}"))
        + "<pre id=\"layout-check\">".len();
    let end = start
        + dom[start..]
            .find("</pre>")
            .expect("end of the check's output");
    let json = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("check output {json:?}: {e}"));
    let shot = chromium(
        &[
            &format!("--screenshot={}", screenshot.display()),
            &format!("file://{}", page.display()),
        ],
        &dir.path().join("profile-shot"),
        width,
    );
    assert!(
        shot.status.success() && screenshot.is_file(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    LayoutCheck {
        texts: v["texts"].as_u64().unwrap_or(0),
        width: v["width"].as_u64().unwrap_or(0),
        problems: v["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    }
}
