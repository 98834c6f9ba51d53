//! Bad inputs fail with an error naming the file and the problem, and never
//! leave a partial image where a good one was.

mod common;

use gantry_test_support::tempdir;
use std::path::Path;

/// Builds the good game into `out`, breaks it with `breaker`, builds again,
/// and checks the error text and that `out` still holds the good image.
fn assert_fails(breaker: impl FnOnce(&Path), needles: &[&str]) {
    let tmp = tempdir();
    let game = common::small_game(&tmp.path().join("game"));
    let out = tmp.path().join("image");
    let good = common::build(&game, &out, None);
    let index_before = std::fs::read(out.join("index.json")).unwrap();
    breaker(&game);
    let err = gantry_build::build(
        &common::options(&game, &out, Some(&tmp.path().join("cache"))),
        &gantry_build::NoProgress,
    )
    .expect_err("build should fail")
    .to_string();
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in error: {err}");
    }
    assert_eq!(
        std::fs::read(out.join("index.json")).unwrap(),
        index_before,
        "the good layout was touched"
    );
    let layout = gantry_build::OciLayout::open(&out).unwrap();
    assert_eq!(
        layout.resolve(None, "linux", "amd64").unwrap().digest,
        good.manifest_digest
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("gantry-tmp") || n.contains("gantry-old"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary layouts left behind: {leftovers:?}"
    );
}

fn write_tar(path: &Path, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

fn add_tar_layer(game: &Path, archive: &str) {
    let mut spec = std::fs::read_to_string(game.join("gantry.toml")).unwrap();
    spec.push_str(&format!("\n[[layers]]\nname = \"extra\"\n[[layers.sources]]\ntar = \"{archive}\"\ndest = \"/opt\"\n"));
    std::fs::write(game.join("gantry.toml"), spec).unwrap();
}

fn raw_member(
    b: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    link: Option<&[u8]>,
    body: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    if let Some(link) = link {
        h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, body).unwrap();
}

#[test]
fn missing_source_is_named() {
    assert_fails(
        |g| std::fs::remove_file(g.join("start.sh")).unwrap(),
        &["runtime", "start.sh", "does not exist"],
    );
}

#[test]
fn missing_split_part_is_named() {
    assert_fails(
        |g| std::fs::remove_file(g.join("engine/Engine.tar.gz.xab")).unwrap(),
        &["engine", "Engine.tar.gz.xab", "missing"],
    );
}

#[test]
fn truncated_gzip_is_reported_with_the_archive() {
    assert_fails(
        |g| {
            let p = g.join("engine/Engine.tar.gz.xac");
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        },
        &["engine", "Engine.tar.gz.x*", "truncated or corrupt gzip"],
    );
}

#[test]
fn dot_dot_member_is_refused() {
    assert_fails(
        |g| {
            write_tar(&g.join("evil.tar"), |b| {
                raw_member(
                    b,
                    b"ok/../../etc/passwd",
                    tar::EntryType::Regular,
                    None,
                    b"x",
                )
            });
            add_tar_layer(g, "evil.tar");
        },
        &["evil.tar", "..", "unsafe member"],
    );
}

#[test]
fn absolute_member_is_refused() {
    assert_fails(
        |g| {
            write_tar(&g.join("abs.tar"), |b| {
                raw_member(b, b"/etc/shadow", tar::EntryType::Regular, None, b"x")
            });
            add_tar_layer(g, "abs.tar");
        },
        &["abs.tar", "/etc/shadow", "absolute"],
    );
}

#[test]
fn escaping_symlink_in_archive_is_refused() {
    assert_fails(
        |g| {
            write_tar(&g.join("link.tar"), |b| {
                raw_member(
                    b,
                    b"a/link",
                    tar::EntryType::Symlink,
                    Some(b"../../../etc/passwd"),
                    b"",
                )
            });
            add_tar_layer(g, "link.tar");
        },
        &["link.tar", "a/link", "escapes the image root"],
    );
}

#[test]
fn escaping_symlink_in_directory_is_refused() {
    assert_fails(
        |g| {
            std::os::unix::fs::symlink("../../../../../../etc/passwd", g.join("assets/levels/evil"))
                .unwrap()
        },
        &["assets", "levels/evil", "escapes the image root"],
    );
}

#[test]
fn unknown_spec_key_is_named_with_the_file() {
    assert_fails(
        |g| {
            let spec = std::fs::read_to_string(g.join("gantry.toml"))
                .unwrap()
                .replace("env = [", "enviroment = [");
            std::fs::write(g.join("gantry.toml"), spec).unwrap();
        },
        &["gantry.toml", "enviroment"],
    );
}

#[test]
fn refuses_to_replace_a_directory_that_is_not_a_layout() {
    let tmp = tempdir();
    let game = common::small_game(&tmp.path().join("game"));
    let precious = tmp.path().join("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let err = gantry_build::build(
        &common::options(&game, &precious, None),
        &gantry_build::NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not an OCI image layout"), "{err}");
    assert_eq!(
        std::fs::read_to_string(precious.join("notes.txt")).unwrap(),
        "keep me"
    );
}

/// Appends a layer named `extra` with the given `[[layers.sources]]` tables.
fn add_layer(game: &Path, sources: &str) {
    let mut spec = std::fs::read_to_string(game.join("gantry.toml")).unwrap();
    spec.push_str("\n[[layers]]\nname = \"extra\"\n");
    spec.push_str(sources);
    std::fs::write(game.join("gantry.toml"), spec).unwrap();
}

#[test]
fn member_beneath_a_symlink_in_the_same_archive_is_refused() {
    assert_fails(
        |g| {
            write_tar(&g.join("evil.tar"), |b| {
                raw_member(b, b"a", tar::EntryType::Symlink, Some(b"/etc"), b"");
                raw_member(b, b"a/passwd", tar::EntryType::Regular, None, b"x");
            });
            add_tar_layer(g, "evil.tar");
        },
        &[
            "evil.tar",
            "member \"a/passwd\"",
            "beneath /opt/a, a symlink to \"/etc\"",
        ],
    );
}

#[test]
fn member_beneath_a_symlink_from_an_earlier_source_is_refused() {
    assert_fails(
        |g| {
            std::fs::create_dir_all(g.join("confdir")).unwrap();
            std::os::unix::fs::symlink("/etc", g.join("confdir/conf")).unwrap();
            write_tar(&g.join("more.tar"), |b| {
                raw_member(b, b"conf/passwd", tar::EntryType::Regular, None, b"x")
            });
            add_layer(
                g,
                "[[layers.sources]]\ndir = \"confdir\"\ndest = \"/opt\"\n\
                 [[layers.sources]]\ntar = \"more.tar\"\ndest = \"/opt\"\n",
            );
        },
        &[
            "more.tar",
            "member \"conf/passwd\"",
            "beneath /opt/conf",
            "source 1 (dir",
            "confdir",
        ],
    );
}

#[test]
fn file_source_beneath_a_symlink_from_an_archive_is_refused() {
    assert_fails(
        |g| {
            write_tar(&g.join("links.tar"), |b| {
                raw_member(b, b"conf", tar::EntryType::Symlink, Some(b"/etc"), b"")
            });
            std::fs::write(g.join("passwd"), "root::0:0::/:/bin/sh\n").unwrap();
            add_layer(
                g,
                "[[layers.sources]]\ntar = \"links.tar\"\ndest = \"/opt\"\n\
                 [[layers.sources]]\nfile = \"passwd\"\ndest = \"/opt/conf/passwd\"\n",
            );
        },
        &["source 2 (file", "/opt/conf/passwd", "symlink", "links.tar"],
    );
}

#[test]
fn symlink_over_a_directory_with_contents_is_refused() {
    assert_fails(
        |g| {
            std::fs::create_dir_all(g.join("confdir/conf")).unwrap();
            std::fs::write(g.join("confdir/conf/passwd"), "x").unwrap();
            write_tar(&g.join("links.tar"), |b| {
                raw_member(b, b"conf", tar::EntryType::Symlink, Some(b"/etc"), b"")
            });
            add_layer(
                g,
                "[[layers.sources]]\ndir = \"confdir\"\ndest = \"/opt\"\n\
                 [[layers.sources]]\ntar = \"links.tar\"\ndest = \"/opt\"\n",
            );
        },
        &[
            "links.tar",
            "member \"conf\"",
            "/opt/conf/passwd",
            "symlink",
        ],
    );
}

#[test]
fn symlinks_with_nothing_beneath_them_still_build() {
    let tmp = tempdir();
    let game = common::small_game(&tmp.path().join("game"));
    write_tar(&game.join("links.tar"), |b| {
        raw_member(b, b"usr/bin/tool", tar::EntryType::Regular, None, b"x");
        raw_member(b, b"bin", tar::EntryType::Symlink, Some(b"usr/bin"), b"");
        raw_member(
            b,
            b"tool",
            tar::EntryType::Symlink,
            Some(b"usr/bin/tool"),
            b"",
        );
        // A directory replacing a symlink on the same path: later wins, and
        // what follows lands in the directory.
        raw_member(b, b"x", tar::EntryType::Symlink, Some(b"/etc"), b"");
        raw_member(b, b"x", tar::EntryType::Directory, None, b"");
        raw_member(b, b"x/f", tar::EntryType::Regular, None, b"y");
    });
    std::fs::create_dir_all(game.join("linkdir")).unwrap();
    std::os::unix::fs::symlink("/etc", game.join("linkdir/etc-link")).unwrap();
    add_layer(
        &game,
        "[[layers.sources]]\ntar = \"links.tar\"\ndest = \"/opt\"\n\
         [[layers.sources]]\ndir = \"linkdir\"\ndest = \"/opt\"\n",
    );
    common::build(&game, &tmp.path().join("image"), None);
}
