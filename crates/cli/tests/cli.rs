//! The `gantry` binary as scripts use it: exit codes, `--json` shapes,
//! and clear errors.

use std::path::Path;
use std::process::{Command, Output};

fn gantry(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .current_dir(cwd)
        .env("GANTRY_CACHE_DIR", cwd.join("cache"))
        .output()
        .expect("run gantry")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "gantry failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn sample_game_build_inspect_round_trip_in_json() {
    let tmp = gantry_test_support::tempdir();
    let dir = tmp.path();
    ok(&gantry(
        &["sample-game", "game", "--scale", "8MB", "--seed", "3"],
        dir,
    ));
    let built: serde_json::Value = serde_json::from_str(&ok(&gantry(
        &["build", "game", "--output", "image", "--json"],
        dir,
    )))
    .unwrap();
    let digest = built["manifest_digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));
    assert!(built["layout"].as_str().unwrap().ends_with("image"));
    assert_eq!(built["layers"].as_array().unwrap().len(), 3);
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&gantry(&["inspect", "image", "--json"], dir))).unwrap();
    assert_eq!(inspected["manifest_digest"], digest.as_str());
    for layer in inspected["layers"].as_array().unwrap() {
        let index = &layer["chunk_index"];
        assert!(index["chunks"].as_u64().unwrap() >= 1);
        assert_eq!(index["compression"]["deflate"], "zlib-rs");
    }
    // A second build is a cache hit with the same digest; SOURCE_DATE_EPOCH changes it.
    let again: serde_json::Value = serde_json::from_str(&ok(&gantry(
        &["build", "game", "--output", "image", "--json"],
        dir,
    )))
    .unwrap();
    assert_eq!(again["manifest_digest"], digest.as_str());
    assert!(again["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["source"] == "cached"));
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "build",
            "game",
            "--output",
            "image2",
            "--json",
            "--no-cache",
        ])
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    let dated: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_ne!(dated["manifest_digest"], digest.as_str());
    // The update changes the paks layer only.
    ok(&gantry(
        &[
            "sample-game",
            "--update",
            "game",
            "--mb",
            "0.2",
            "--seed",
            "3",
        ],
        dir,
    ));
    let v2: serde_json::Value = serde_json::from_str(&ok(&gantry(
        &["build", "game", "--output", "image", "--json"],
        dir,
    )))
    .unwrap();
    let sources: Vec<&str> = v2["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["cached", "cached", "built"]);
    assert_eq!(v2["tag"], "v2");
}

#[test]
fn errors_exit_non_zero_and_name_the_problem() {
    let tmp = gantry_test_support::tempdir();
    let out = gantry(&["build", "nowhere", "--output", "image"], tmp.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere/gantry.toml"), "{err}");
    // The cause is printed once, not once per error that names it.
    let os_error = std::io::Error::from_raw_os_error(2 /* ENOENT */).to_string();
    assert_eq!(err.matches(&os_error).count(), 1, "{err}");
    let out = gantry(&["inspect", "nowhere"], tmp.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an OCI image layout"));
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["build", "x", "--output", "y"])
        .current_dir(tmp.path())
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOURCE_DATE_EPOCH"));
}

#[test]
fn install_containerd_config_turns_the_snapshotter_on_and_off() {
    let tmp = gantry_test_support::tempdir();
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n",
    )
    .unwrap();
    let hosts = tmp.path().join("certs.d");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "agent",
            "install-containerd-config",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--containerd-config",
            config.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        gantry(&refs, tmp.path())
    };
    ok(&run(args(&[
        "--registry",
        "registry.example.com",
        "--snapshotter",
    ])));
    let on = std::fs::read_to_string(&config).unwrap();
    assert!(on.contains("[proxy_plugins.gantry]"), "{on}");
    assert!(on.contains("snapshotter = \"gantry\""), "{on}");
    assert!(on.contains("disable_snapshot_annotations = false"), "{on}");
    assert!(on.contains("/run/gantry/snapshotter.sock"), "{on}");
    assert!(hosts.join("registry.example.com/hosts.toml").is_file());
    assert!(tmp.path().join("config.toml.gantry-backup").is_file());
    ok(&run(args(&["--remove-snapshotter"])));
    let off = std::fs::read_to_string(&config).unwrap();
    assert!(!off.contains("proxy_plugins"), "{off}");
    assert!(off.contains("snapshotter = \"overlayfs\""), "{off}");
    let bad = run(args(&[
        "--registry",
        "r.example.com",
        "--snapshotter",
        "--remove-snapshotter",
    ]));
    assert!(!bad.status.success());
    std::fs::write(&config, "version = 3\n").unwrap();
    let v3 = run(args(&["--registry", "r.example.com", "--snapshotter"]));
    assert!(!v3.status.success());
    assert!(String::from_utf8_lossy(&v3.stderr).contains("version 3"));
}

/// A `gantry serve` process on a free loopback port, killed when dropped.
struct Serve(std::process::Child, String);

impl Serve {
    fn start(root: &Path) -> Serve {
        let addr = format!("127.0.0.1:{}", gantry_test_support::free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--addr", &addr, "--root"])
            .arg(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gantry serve");
        gantry_test_support::wait_for_tcp(addr.as_str(), std::time::Duration::from_secs(30));
        Serve(child, addr)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fails(out: &Output, says: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure; stderr: {err}");
    for s in says {
        assert!(err.contains(s), "{s:?} not in: {err}");
    }
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// What a `gantry diff --json` says a node downloads, and of which two images.
fn diff_figures(out: &Output) -> serde_json::Value {
    let v = json(out);
    let keep = [
        "old_manifest",
        "new_manifest",
        "image_bytes",
        "layer_level_bytes",
        "chunk_level_bytes",
    ];
    keep.iter().map(|k| (k.to_string(), v[k].clone())).collect()
}

/// Every command that takes an image takes the same forms: a path (`./DIR`, `/DIR`, or a
/// directory holding `oci-layout`), `oci:DIR[:TAG]`, `docker://REF`, `http://REF` and a
/// bare reference; where only one kind makes sense, the other is refused saying so.
#[test]
fn every_command_takes_the_same_image_forms() {
    let tmp = gantry_test_support::tempdir();
    let dir = tmp.path();
    ok(&gantry(&["sample-game", "game", "--scale", "2MB"], dir));
    ok(&gantry(&["build", "game", "--output", "v1"], dir));
    ok(&gantry(
        &["sample-game", "--update", "game", "--mb", "0.1"],
        dir,
    ));
    ok(&gantry(&["build", "game", "--output", "v2"], dir));
    std::fs::create_dir(dir.join("notes")).unwrap();
    let abs = |name: &str| dir.join(name).display().to_string();
    let serve = Serve::start(&dir.join("registry"));
    let host = serve.1.clone();

    // inspect and diff: every way of naming the two layouts says the same.
    let digest = json(&gantry(&["inspect", "v1", "--json"], dir))["manifest_digest"].clone();
    for form in ["./v1", &abs("v1"), "oci:v1", &format!("oci:{}", abs("v1"))] {
        let i = json(&gantry(&["inspect", form, "--json"], dir));
        assert_eq!(i["manifest_digest"], digest, "inspect {form}");
    }
    let expected = diff_figures(&gantry(&["diff", "v1", "v2", "--json"], dir));
    for (old, new) in [
        ("./v1".to_string(), "./v2".to_string()),
        (abs("v1"), abs("v2")),
        ("oci:v1".to_string(), "oci:v2".to_string()),
    ] {
        let d = diff_figures(&gantry(&["diff", &old, &new, "--json"], dir));
        assert_eq!(d, expected, "diff {old} {new}");
    }

    // push from each layout form to each registry form, pull back with each.
    for (i, (layout, dest, flags)) in [
        (
            "./v1",
            format!("docker://{host}/forms/a:v1"),
            vec!["--insecure"],
        ),
        ("oci:v1", format!("http://{host}/forms/b:v1"), vec![]),
        ("v1", format!("{host}/forms/c:v1"), vec!["--insecure"]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut args = vec!["push", layout, dest.as_str(), "--json"];
        args.extend(flags.iter().copied());
        let pushed = json(&gantry(&args, dir));
        assert_eq!(pushed["manifest_digest"], digest, "push {layout} {dest}");
        let out = format!("oci:pulled-{i}:mine");
        let mut args = vec!["pull", dest.as_str(), out.as_str(), "--json"];
        args.extend(flags.iter().copied());
        let pulled = json(&gantry(&args, dir));
        assert_eq!(pulled["manifest_digest"], digest, "pull {dest} {out}");
        let i = json(&gantry(&["inspect", &out, "--json"], dir));
        assert_eq!(i["manifest_digest"], digest, "inspect {out}");
    }
    // copy between a layout and a registry, both ways, and diff against the registry.
    ok(&gantry(
        &[
            "copy",
            "oci:v2",
            &format!("docker://{host}/forms/d:v2"),
            "--insecure",
        ],
        dir,
    ));
    ok(&gantry(
        &[
            "copy",
            &format!("docker://{host}/forms/d:v2"),
            "./copied",
            "--insecure",
        ],
        dir,
    ));
    let d = diff_figures(&gantry(
        &[
            "diff",
            "./v1",
            &format!("http://{host}/forms/d:v2"),
            "--json",
        ],
        dir,
    ));
    assert_eq!(d, expected, "diff layout registry");
    let built = json(&gantry(
        &[
            "build",
            "game",
            "--output",
            "v2-again",
            "--push",
            &format!("docker://{host}/forms/e:v2"),
            "--insecure",
            "--json",
        ],
        dir,
    ));
    assert_eq!(built["push"]["manifest_digest"], built["manifest_digest"]);

    // Refusals name the problem and the forms that work.
    fails(
        &gantry(&["diff", "notes", "v2"], dir),
        &["\"notes\"", "ambiguous", "oci:DIR"],
    );
    fails(
        &gantry(&["diff", "docker-archive:game.tar", "v2"], dir),
        &["docker-archive", "docker://"],
    );
    fails(
        &gantry(
            &[
                "push",
                &format!("docker://{host}/forms/a:v1"),
                &format!("{host}/x:y"),
            ],
            dir,
        ),
        &["expected an OCI layout"],
    );
    fails(
        &gantry(&["pull", "./v1", "out"], dir),
        &["expected a registry image", "oci:DIR"],
    );
}
