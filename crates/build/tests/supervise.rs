//! `supervise = true`: the static `gantry-supervise` binary as the image's last layer and
//! entrypoint, run as PID 1 by real containerd + runc over a busybox base that has no C
//! library at all.
//!
//! The binary comes from `$GANTRY_SUPERVISE_BINARY` (scripts/test.sh builds it once), else
//! this test builds it with scripts/build-supervisor.sh into `<target>/supervisor-build`. A
//! binary that cannot be built fails the test.

mod common;

use gantry_build::BuildError;
use gantry_test_support::{tempdir, Containerd, HttpStub};
use std::path::Path;

/// A game repository over the busybox base (`supervise` goes first in gantry.toml): a game script that prints its port (from its
/// arguments and the environment), who PID 1 is and whether a C library exists, then exits 7.
fn game_repo(dir: &Path, supervise: &str) {
    std::fs::create_dir_all(dir.join("base")).unwrap();
    gantry_test_support::busybox_rootfs_tar(&dir.join("base/rootfs.tar"));
    std::fs::write(
        dir.join("game.sh"),
        "#!/bin/sh\n\
         echo \"game arg=$1 port=$2 env=$SERVER_PORT\"\n\
         echo \"pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\"\n\
         echo \"hosts=$(tr '\\n' ' ' < /etc/hosts)\"\n\
         if [ -e /lib ] || [ -e /lib64 ] || [ -e /usr/lib ]; then echo libc=yes; else echo libc=no; fi\n\
         sleep 1\n\
         exit 7\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("hosts"),
        "127.0.0.1 localhost\n127.0.0.1 events.gantry.test\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("gantry.toml"),
        format!(
            r#"
{supervise}

[image]
name = "supervised"
tag = "v1"

[base]
rootfs = "base/rootfs.tar"

[config]
entrypoint = ["/game/game.sh", "+map"]
cmd = ["${{SERVER_PORT}}"]

[[layers]]
name = "game"
[[layers.sources]]
file = "game.sh"
dest = "/game/game.sh"
mode = "0755"
[[layers.sources]]
file = "hosts"
dest = "/etc/hosts"
"#
        ),
    )
    .unwrap();
}

fn config_of(layout: &Path) -> serde_json::Value {
    let read = |digest: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&read(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap()
}

#[test]
fn supervised_image_runs_the_game_as_pid_1_under_containerd() {
    let binary = gantry_test_support::static_supervisor();
    // Stands in for a fleet's event endpoint (gantry serve's is tested in crates/cli/tests/fleet.rs).
    let reports = HttpStub::start(|_| (200, String::new()));
    let port = reports.port;
    let tmp = tempdir();
    let game = tmp.path().join("game");
    game_repo(
        &game,
        &format!(
            "[supervise]\nbinary = {binary:?}\nargs = [\"--protocol\", \"tcp\", \"--health\", \
             \"cmd:true\", \"--health-interval\", \"200ms\", \"--metadata-url\", \"none\", \
             \"--report-url\", \"http://events.gantry.test:{port}/events\"]\n"
        ),
    );
    let cache = tmp.path().join("cache");
    let out = common::build(&game, &tmp.path().join("image"), Some(&cache));
    let last = out.layers.last().unwrap();
    assert_eq!(last.name, "gantry-supervise");
    assert!(last.chunks > 0 && last.chunk_index.is_some());
    let config = config_of(&out.layout);
    let entrypoint: Vec<String> =
        serde_json::from_value(config["config"]["Entrypoint"].clone()).unwrap();
    assert_eq!(entrypoint[0], "/usr/local/bin/gantry-supervise");
    assert_eq!(entrypoint[1..3], ["--protocol", "tcp"]);
    assert_eq!(
        entrypoint[entrypoint.len() - 3..],
        ["--", "/game/game.sh", "+map"]
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["${SERVER_PORT}"])
    );

    // A rebuild takes the supervisor layer from the cache.
    let again = common::build(&game, &tmp.path().join("image2"), Some(&cache));
    assert_eq!(again.manifest_digest, out.manifest_digest);
    assert_eq!(again.layers.last().unwrap().source, "cached");

    let containerd = Containerd::start();
    containerd.import_oci_layout(&out.layout, "localhost/supervised:v1");
    // The report endpoint of this test listens on the host's loopback: the container joins
    // the test's network namespace. Not with `--net-host`, which would mount the host's
    // /etc/hosts over the image's.
    let netns = format!("network:/proc/{}/ns/net", std::process::id());
    let o = containerd.run_with("localhost/supervised:v1", &["--with-ns", &netns], &[]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert_eq!(o.status.code(), Some(7), "the game's exit code\n{context}");

    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}\n{context}")))
        .collect();
    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["starting", "ready", "exited"], "{context}");
    assert_eq!(events[2]["exit_code"], 7, "{context}");
    let public_port = events[1]["public_port"].as_u64().unwrap();
    assert!(public_port > 0, "{context}");

    // The original entrypoint + cmd ran, with ${SERVER_PORT} substituted, under the
    // supervisor as PID 1, in a root filesystem without any C library.
    assert!(
        stdout.contains(&format!(
            "game arg=+map port={public_port} env={public_port}"
        )),
        "{context}"
    );
    assert!(
        stdout.contains("pid1=/usr/local/bin/gantry-supervise --protocol tcp"),
        "{context}"
    );
    assert!(stdout.contains("libc=no"), "{context}");

    // The report URL's host name resolved from the image's /etc/hosts, with no C library there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got: Vec<String> = reports.requests().iter().map(|r| r.text()).collect();
        let statuses: Vec<String> = got
            .iter()
            .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .filter_map(|e| e["status"].as_str().map(str::to_string))
            .collect();
        if statuses.iter().any(|s| s == "exited") {
            assert!(statuses.iter().any(|s| s == "ready"), "{statuses:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the report endpoint got {got:?}\n{context}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_dynamically_linked_supervisor_is_refused_unless_allowed() {
    // This test executable is linked against the system's glibc.
    let dynamic = std::env::current_exe().unwrap();
    let tmp = tempdir();
    let game = tmp.path().join("game");
    game_repo(&game, &format!("[supervise]\nbinary = {dynamic:?}\n"));
    let opts = common::options(&game, &tmp.path().join("image"), None);
    let err = gantry_build::build(&opts, &gantry_build::NoProgress).unwrap_err();
    assert!(matches!(err, BuildError::SuperviseBinary { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("dynamically linked"), "{msg}");
    assert!(msg.contains("allow_dynamic"), "{msg}");
    assert!(
        msg.contains(&*dynamic.canonicalize().unwrap().to_string_lossy()),
        "{msg}"
    );
    assert!(!tmp.path().join("image").exists(), "nothing is written");

    game_repo(
        &game,
        &format!("[supervise]\nbinary = {dynamic:?}\nallow_dynamic = true\n"),
    );
    let out = common::build(&game, &tmp.path().join("image"), None);
    assert_eq!(out.layers.last().unwrap().name, "gantry-supervise");
}

#[test]
fn a_missing_or_non_elf_supervisor_is_named_in_the_error() {
    let tmp = tempdir();
    let game = tmp.path().join("game");
    game_repo(&game, "[supervise]\nbinary = \"bin/gantry-supervise\"\n");
    let opts = common::options(&game, &tmp.path().join("image"), None);
    let msg = gantry_build::build(&opts, &gantry_build::NoProgress)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bin/gantry-supervise"), "{msg}");

    game_repo(&game, "supervise = { binary = \"game.sh\" }\n");
    let msg = gantry_build::build(&opts, &gantry_build::NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("game.sh") && msg.contains("not an ELF"),
        "{msg}"
    );
}
