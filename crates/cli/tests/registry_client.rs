//! `gantry login`, `push`, `pull`, `copy` and `logout` as a user runs them, against
//! `gantry serve` with token auth started as its own process, credentials in a private
//! `$DOCKER_CONFIG` (the file `docker login` writes).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn gantry(args: &[&str], stdin: &str, docker_config: &Path, cwd: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .current_dir(cwd)
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("GANTRY_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn login_push_pull_copy_logout_with_token_auth() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docker = d.join("docker");
    let root = d.join("registry");
    let out = gantry(
        &[
            "user",
            "add",
            "ci",
            "--file",
            root.join("auth/users").to_str().unwrap(),
            "--password-stdin",
        ],
        "ci-secret\n",
        &docker,
        d,
    );
    ok(&out, "user add");
    std::fs::write(
        d.join("serve.toml"),
        "[auth]\n[[auth.access]]\nrepository = \"studio/**\"\nusers = [\"ci\"]\nactions = [\"pull\", \"push\"]\n",
    )
    .unwrap();
    let port = gantry_test_support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--addr", &addr, "--root"])
            .arg(&root)
            .arg("--config")
            .arg(d.join("serve.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    gantry_test_support::wait_for_tcp(addr.as_str(), Duration::from_secs(30));

    ok(
        &gantry(&["sample-game", "game", "--scale", "2MB"], "", &docker, d),
        "sample-game",
    );
    let reference = format!("http://{addr}/studio/game:v1");

    // Not logged in: refused, with the registry and repository named.
    let out = gantry(
        &["build", "game", "--output", "image", "--push", &reference],
        "",
        &docker,
        d,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("studio/game"), "{err}");

    // A wrong password is refused and nothing is stored.
    let out = gantry(
        &[
            "login",
            &format!("http://{addr}"),
            "-u",
            "ci",
            "--password-stdin",
        ],
        "wrong\n",
        &docker,
        d,
    );
    assert!(!out.status.success());
    assert!(!docker.join("config.json").exists());

    ok(
        &gantry(
            &[
                "login",
                &format!("http://{addr}"),
                "-u",
                "ci",
                "--password-stdin",
            ],
            "ci-secret\n",
            &docker,
            d,
        ),
        "login",
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docker.join("config.json")).unwrap()).unwrap();
    assert!(
        config["auths"][&addr]["auth"].is_string(),
        "docker-style auths entry: {config}"
    );

    let out = ok(
        &gantry(
            &[
                "build", "game", "--output", "image", "--push", &reference, "--json",
            ],
            "",
            &docker,
            d,
        ),
        "build --push",
    );
    let built: serde_json::Value = serde_json::from_str(&out).unwrap();
    let digest = built["manifest_digest"].as_str().unwrap().to_string();
    assert_eq!(built["push"]["manifest_digest"], digest.as_str());

    let out = ok(
        &gantry(&["pull", &reference, "pulled", "--json"], "", &docker, d),
        "pull",
    );
    let pulled: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pulled["manifest_digest"], digest.as_str());
    assert_eq!(pulled["referrers"].as_array().unwrap().len(), 1);

    // copy registry -> registry (same registry: mounted) and layout -> layout.
    let out = ok(
        &gantry(
            &[
                "copy",
                &reference,
                &format!("http://{addr}/studio/copy:v1"),
                "--json",
            ],
            "",
            &docker,
            d,
        ),
        "copy",
    );
    let copied: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(copied["manifest_digest"], digest.as_str());
    assert_eq!(
        copied["bytes_sent"], 0,
        "blobs are mounted within a registry"
    );
    ok(
        &gantry(&["copy", "oci:pulled", "oci:again:renamed"], "", &docker, d),
        "copy layout",
    );
    let out = ok(
        &gantry(&["inspect", "again", "--json"], "", &docker, d),
        "inspect",
    );
    assert!(out.contains(&digest));
    // `gantry push` takes a plain directory too (any name, not parsed as a reference).
    std::fs::rename(d.join("again"), d.join("Copy_Of_Image")).unwrap();
    ok(
        &gantry(
            &[
                "push",
                "Copy_Of_Image",
                &format!("http://{addr}/studio/plain:v1"),
            ],
            "",
            &docker,
            d,
        ),
        "push from a plain directory",
    );

    ok(&gantry(&["logout", &addr], "", &docker, d), "logout");
    let out = gantry(&["pull", &reference, "pulled2"], "", &docker, d);
    assert!(!out.status.success(), "pull after logout must be refused");
}
