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
