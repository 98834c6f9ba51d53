//! `gantry deploy` through the binary: render of each kind, the tag-only warning,
//! `--digest-pin` against a real `gantry serve` after `gantry push`, and `apply` failing
//! clearly without a kubeconfig and with an API server that is not listening.

use std::process::{Command, Output};
use std::time::Duration;

use gantry_test_support::{
    free_port, output_with_timeout, tempdir, write_busybox_oci_layout, GantryServe,
};

fn gantry(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    output_with_timeout(&mut cmd, Duration::from_secs(120))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn render_tag_only_warns_and_renders_as_written() {
    let out = gantry(
        &[
            "deploy",
            "render",
            "--image",
            "registry.example.com/studio/game:v2",
            "--node-selector",
            "lifecycle=spot",
            "--env",
            "GROUP=gs",
            "--pull-policy",
            "Always",
            "--",
            "gantry",
            "supervise",
            "--",
            "./Launcher_Server",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.contains("kind: Deployment"), "{yaml}");
    assert!(
        yaml.contains("image: registry.example.com/studio/game:v2"),
        "{yaml}"
    );
    assert!(yaml.contains("imagePullPolicy: Always"), "{yaml}");
    assert!(yaml.contains("hostNetwork: true"), "{yaml}");
    assert!(yaml.contains("lifecycle: spot"), "{yaml}");
    assert!(yaml.contains("- ./Launcher_Server"), "{yaml}");
    assert!(!yaml.contains("GANTRY_IMAGE_DIGEST"), "{yaml}");
    let err = text(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("different bytes"),
        "{err}"
    );
}

#[test]
fn render_fleet_and_agent() {
    let digest = format!("sha256:{}", "cd".repeat(32));
    let image = format!("registry.example.com/studio/game@{digest}");
    let out = gantry(
        &[
            "deploy",
            "render",
            "--kind",
            "fleet",
            "--image",
            &image,
            "--replicas",
            "4",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.contains("apiVersion: agones.dev/v1"), "{yaml}");
    assert!(yaml.contains("portPolicy: Dynamic"), "{yaml}");
    assert!(yaml.contains("replicas: 4"), "{yaml}");
    assert!(yaml.contains(&format!("value: {digest}")), "{yaml}");
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );

    let out = gantry(
        &[
            "deploy",
            "render",
            "--kind",
            "agent",
            "--agent-image",
            &image,
            "--upstream",
            "registry.example.com",
            "--namespace",
            "kube-system",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(
        yaml.contains("kind: ConfigMap") && yaml.contains("kind: DaemonSet"),
        "{yaml}"
    );
    assert!(yaml.contains("\n---\n"), "{yaml}");

    let out = gantry(
        &[
            "deploy",
            "render",
            "--kind",
            "agent",
            "--upstream",
            "r.example",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--agent-image"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn render_digest_pin_against_gantry_serve() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let serve = rt.block_on(GantryServe::open());
    let host = serve.host();
    let layout = tempdir();
    let image = write_busybox_oci_layout(layout.path(), "latest");
    let layout_ref = format!("oci:{}:latest", layout.path().display());
    let reference = format!("http://{host}/studio/game:v1");
    let out = gantry(&["push", &layout_ref, &reference, "--anonymous"], &[]);
    assert!(out.status.success(), "push: {}", text(&out.stderr));

    let out = gantry(
        &[
            "deploy",
            "render",
            "--image",
            &reference,
            "--digest-pin",
            "--anonymous",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(
        yaml.contains(&format!(
            "image: {host}/studio/game@{}",
            image.manifest_digest
        )),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("value: {host}/studio/game:v1")),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("value: {}", image.manifest_digest)),
        "{yaml}"
    );
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );

    // apply -f of what render wrote parses it back (then fails: no API server listens).
    let dir = tempdir();
    let file = dir.path().join("game.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let port = free_port();
    let kubeconfig = write_kubeconfig(dir.path(), &format!("https://127.0.0.1:{port}"));
    let out = gantry(
        &[
            "deploy",
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&format!("https://127.0.0.1:{port}")), "{err}");
    assert!(err.contains("unreachable"), "{err}");
    drop(serve);
}

fn write_kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters:\n- name: c\n  cluster:\n    server: {server}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
             users:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn apply_without_kubeconfig_or_cluster_fails_clearly() {
    let home = tempdir();
    let missing = home.path().join("nope");
    let args = [
        "deploy",
        "apply",
        "--image",
        "registry.example.com/studio/game:v2",
        "--timeout",
        "5s",
    ];
    let out = gantry(
        &args,
        &[
            ("HOME", home.path().to_str().unwrap()),
            ("KUBECONFIG", missing.to_str().unwrap()),
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no usable kubeconfig"), "{err}");

    // KUBECONFIG naming a cluster on a closed port: the error names the server.
    let port = free_port();
    let kubeconfig = write_kubeconfig(home.path(), &format!("https://127.0.0.1:{port}"));
    let out = gantry(
        &args,
        &[
            ("HOME", home.path().to_str().unwrap()),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&format!("https://127.0.0.1:{port}")), "{err}");
}
