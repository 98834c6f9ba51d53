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

/// Starts `gantry serve --root ROOT --config CONFIG` on `addr` and waits for it.
fn serve(addr: &str, root: &Path, config: &Path) -> Server {
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--addr", addr, "--root"])
            .arg(root)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    gantry_test_support::wait_for_tcp(addr, Duration::from_secs(30));
    server
}

/// `gantry serve` with `[[replication]]` to another `gantry serve`, both with token auth:
/// a pushed image reaches the remote under the replication user's credentials, and
/// `gantry replication status` shows it (only to an admin).
#[test]
fn replication_to_another_serve_with_auth_and_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docker = d.join("docker");
    let add_user = |root: &Path, user: &str, password: &str| {
        let users = root.join("auth/users");
        ok(
            &gantry(
                &[
                    "user",
                    "add",
                    user,
                    "--file",
                    users.to_str().unwrap(),
                    "--password-stdin",
                ],
                &format!("{password}\n"),
                &docker,
                d,
            ),
            "user add",
        );
    };
    // The remote: user `replicator` may push studio/**.
    let (remote_root, source_root) = (d.join("remote"), d.join("source"));
    add_user(&remote_root, "replicator", "rep-secret");
    std::fs::write(
        d.join("remote.toml"),
        "[auth]\n[[auth.access]]\nrepository = \"studio/**\"\nusers = [\"replicator\"]\n\
         actions = [\"pull\", \"push\"]\n",
    )
    .unwrap();
    let remote_addr = format!("127.0.0.1:{}", gantry_test_support::free_port());
    let _remote = serve(&remote_addr, &remote_root, &d.join("remote.toml"));
    // The source: `ci` is an admin; studio/** goes to the remote as `replicator`.
    add_user(&source_root, "ci", "ci-secret");
    std::fs::write(d.join("rep.password"), "rep-secret\n").unwrap();
    std::fs::write(
        d.join("source.toml"),
        format!(
            "[auth]\nadmins = [\"ci\"]\n\n[[replication]]\nurl = \"http://{remote_addr}\"\n\
             name = \"eu\"\nrepositories = [\"studio/**\"]\nusername = \"replicator\"\n\
             password_file = \"{}\"\ninterval = \"1h\"\n",
            d.join("rep.password").display()
        ),
    )
    .unwrap();
    let source_addr = format!("127.0.0.1:{}", gantry_test_support::free_port());
    let _source = serve(&source_addr, &source_root, &d.join("source.toml"));

    // Without credentials the status is refused.
    let out = gantry(
        &["replication", "status", &format!("http://{source_addr}")],
        "",
        &docker,
        d,
    );
    assert!(!out.status.success(), "status without credentials");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") || err.contains("auth"), "{err}");

    ok(
        &gantry(&["sample-game", "game", "--scale", "2MB"], "", &docker, d),
        "sample-game",
    );
    for (host, user, password) in [
        (&source_addr, "ci", "ci-secret"),
        (&remote_addr, "replicator", "rep-secret"),
    ] {
        ok(
            &gantry(
                &[
                    "login",
                    &format!("http://{host}"),
                    "-u",
                    user,
                    "--password-stdin",
                ],
                &format!("{password}\n"),
                &docker,
                d,
            ),
            "login",
        );
    }
    let out = ok(
        &gantry(
            &[
                "build",
                "game",
                "--output",
                "image",
                "--push",
                &format!("http://{source_addr}/studio/game:v1"),
                "--json",
            ],
            "",
            &docker,
            d,
        ),
        "build --push",
    );
    let digest = serde_json::from_str::<serde_json::Value>(&out).unwrap()["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();

    // Until it is copied, --expect-in-sync fails; then it passes.
    let start = std::time::Instant::now();
    loop {
        let out = gantry(
            &[
                "replication",
                "status",
                &format!("http://{source_addr}"),
                "--expect-in-sync",
            ],
            "",
            &docker,
            d,
        );
        if out.status.success() {
            let table = String::from_utf8_lossy(&out.stdout);
            assert!(table.contains("eu") && table.contains("in sync"), "{table}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not in sync after 60 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = ok(
        &gantry(
            &[
                "replication",
                "status",
                &format!("http://{source_addr}"),
                "--json",
            ],
            "",
            &docker,
            d,
        ),
        "replication status --json",
    );
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    let eu = &view["targets"][0];
    assert_eq!(eu["name"], "eu");
    assert_eq!(eu["copied"], 1, "{eu}");
    assert_eq!(eu["last_copied"]["image"], "studio/game:v1");
    assert_eq!(eu["last_copied"]["digest"], digest.as_str());

    // The remote has it, chunk index included.
    let out = ok(
        &gantry(
            &[
                "pull",
                &format!("http://{remote_addr}/studio/game:v1"),
                "pulled",
                "--json",
            ],
            "",
            &docker,
            d,
        ),
        "pull from the remote",
    );
    let pulled: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pulled["manifest_digest"], digest.as_str());
    assert_eq!(pulled["referrers"].as_array().unwrap().len(), 1);
}
