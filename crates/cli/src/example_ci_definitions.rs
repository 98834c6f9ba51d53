//! Keeps `examples/` honest: every `gantry …` command in the example CI definitions must
//! parse with today's command line, and each definition must log in, build with `--push` and
//! deploy.

use crate::Cli;
use clap::Parser;
use std::path::{Path, PathBuf};

/// Logical shell commands of a CI YAML file: `>-` folded blocks and `\` continuations joined,
/// list dashes and `run:` keys removed.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let indent = line.len() - line.trim_start().len();
        let mut body = line.trim().trim_start_matches("- ").trim().to_string();
        if let Some(rest) = body.strip_prefix("run:") {
            body = rest.trim().to_string();
        }
        if body.ends_with(">-") || body.ends_with('>') {
            // folded block: the more-indented lines that follow are one command
            let mut joined = Vec::new();
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                if next.trim().is_empty() || next_indent <= indent {
                    break;
                }
                joined.push(next.trim().to_string());
                lines.next();
            }
            out.push(joined.join(" "));
            continue;
        }
        while body.ends_with('\\') {
            body.pop();
            match lines.next() {
                Some(next) => {
                    body.push(' ');
                    body.push_str(next.trim());
                }
                None => break,
            }
        }
        out.push(body);
    }
    out
}

/// The `gantry` invocations in a logical line (also after `|` and `&&`), without
/// redirections; GitHub expressions `${{ … }}` become a placeholder.
fn gantry_commands(line: &str) -> Vec<Vec<String>> {
    let mut line = line.to_string();
    while let (Some(start), Some(end)) = (line.find("${{"), line.find("}}")) {
        if end < start {
            break;
        }
        line.replace_range(start..end + 2, "x");
    }
    line.split(" | ")
        .flat_map(|s| s.split(" && "))
        .filter_map(|segment| {
            let words = shlex::split(segment.trim())?;
            if words.first().map(String::as_str) != Some("gantry") {
                return None;
            }
            let end = words
                .iter()
                .position(|w| w.starts_with('>') || w.starts_with("2>"))
                .unwrap_or(words.len());
            Some(words[..end].to_vec())
        })
        .collect()
}

fn example_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_gantry_command_in_the_example_ci_definitions_parses() {
    let files = example_files();
    assert!(files.len() >= 2, "expected CI examples, found {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read example");
        let commands: Vec<Vec<String>> = logical_lines(&text)
            .iter()
            .flat_map(|l| gantry_commands(l))
            .collect();
        for words in &commands {
            if let Err(e) = Cli::try_parse_from(words) {
                panic!(
                    "{}: `{}` does not parse:\n{e}",
                    file.display(),
                    words.join(" ")
                );
            }
        }
        let has = |pred: &dyn Fn(&[String]) -> bool| commands.iter().any(|w| pred(w));
        assert!(
            has(&|w| w[1] == "login"),
            "{}: no gantry login",
            file.display()
        );
        assert!(
            has(&|w| w[1] == "build" && w.iter().any(|a| a == "--push")),
            "{}: no gantry build --push",
            file.display()
        );
        assert!(
            has(&|w| w[1] == "deploy" && w[2] == "apply"),
            "{}: no gantry deploy apply",
            file.display()
        );
    }
}

#[test]
fn a_renamed_flag_in_an_example_would_be_caught() {
    let lines = logical_lines(
        "      - >-\n        gantry deploy apply --image r/x:1\n        --no-such-flag\n",
    );
    let commands: Vec<_> = lines.iter().flat_map(|l| gantry_commands(l)).collect();
    assert_eq!(commands.len(), 1);
    assert!(Cli::try_parse_from(&commands[0]).is_err());
    let piped = gantry_commands(
        "echo \"$P\" | gantry login r -u \"${{ secrets.U }}\" --password-stdin > out",
    );
    assert_eq!(
        piped,
        vec![vec!["gantry", "login", "r", "-u", "x", "--password-stdin"]]
    );
}
