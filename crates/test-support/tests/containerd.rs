//! The Containerd helper against real containerd + runc, and the registry helper against
//! real CNCF distribution, skopeo and `ctr images pull`.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_test_support::{
    assert_success, output_with_timeout, require_tool, tempdir, write_busybox_oci_layout,
    write_mirror_hosts_toml, Containerd, DistributionRegistry,
};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn import_and_run_hello() {
    let layout = tempdir();
    let img = write_busybox_oci_layout(layout.path(), "latest");
    let ctd = Containerd::start();
    ctd.import_oci_layout(layout.path(), "gantry.test/busybox:latest");
    assert_eq!(
        ctd.image_digest("gantry.test/busybox:latest"),
        img.manifest_digest
    );

    let out = ctd.run(
        "gantry.test/busybox:latest",
        &["/bin/sh", "-c", "echo hello-from-container"],
    );
    assert_success("ctr run", &out);
    // containerd's stdio path can lose the tail of the output (see `run_sh`): what comes
    // through is a prefix of what the script wrote.
    assert!(
        "hello-from-container\n".starts_with(&stdout(&out)),
        "{:?}",
        stdout(&out)
    );
    let out = ctd.run_sh(
        "gantry.test/busybox:latest",
        &[],
        "echo hello-from-container",
    );
    assert_success("ctr run", &out);
    assert_eq!(stdout(&out), "hello-from-container\n");

    // Exit status, stderr and the image's environment come through.
    let out = ctd.run_sh(
        "gantry.test/busybox:latest",
        &[],
        "echo $PATH; ls /bin/busybox; echo oops >&2; exit 7",
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        stdout(&out),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/bin/busybox\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // Extra ctr run flags.
    let out = ctd.run_sh(
        "gantry.test/busybox:latest",
        &["--env", "GANTRY_X=42"],
        "echo x=$GANTRY_X",
    );
    assert_success("ctr run --env", &out);
    assert_eq!(stdout(&out), "x=42\n");
}

#[test]
fn two_instances_at_once() {
    let layout = tempdir();
    write_busybox_oci_layout(layout.path(), "latest");
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let layout = layout.path().to_path_buf();
            std::thread::spawn(move || {
                let ctd = Containerd::start();
                ctd.import_oci_layout(&layout, "gantry.test/twin:v1");
                let mut outputs = Vec::new();
                for round in 0..2 {
                    let out = ctd.run_sh(
                        "gantry.test/twin:v1",
                        &[],
                        &format!("echo instance-{i}-round-{round}"),
                    );
                    assert_success("ctr run", &out);
                    outputs.push(stdout(&out));
                }
                (ctd.address().to_path_buf(), outputs, ctd)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_ne!(results[0].0, results[1].0, "distinct sockets");
    for (i, (_, outputs, _)) in results.iter().enumerate() {
        assert_eq!(
            outputs,
            &vec![
                format!("instance-{i}-round-0\n"),
                format!("instance-{i}-round-1\n")
            ]
        );
    }
}

#[test]
fn import_names_are_deterministic() {
    let ctd = Containerd::start();

    // A layout whose ref.name is a bare tag: ctr alone would call it import-<date>:v1.
    let layout = tempdir();
    let img = write_busybox_oci_layout(layout.path(), "v1");
    ctd.import_oci_layout(layout.path(), "registry.gantry.test/games/arena:v1");
    // The same layout imported under a second name.
    ctd.import_oci_layout(layout.path(), "local/arena");
    let listed = stdout(&ctd.ctr(&["images", "ls", "-q"]));
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort();
    assert_eq!(
        names,
        ["local/arena", "registry.gantry.test/games/arena:v1"]
    );
    assert_eq!(ctd.image_digest("local/arena"), img.manifest_digest);

    // A layout with two entries: the one whose ref.name is the requested tag is chosen.
    let two = tempdir();
    let a = write_busybox_oci_layout(two.path(), "a");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(two.path().join("index.json")).unwrap()).unwrap();
    let mut other = index["manifests"][0].clone();
    other["annotations"]["org.opencontainers.image.ref.name"] = "b".into();
    // Point "b" at a distinct manifest blob: same content plus an annotation.
    let hex = a.manifest_digest.strip_prefix("sha256:").unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(two.path().join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    manifest["annotations"] = serde_json::json!({"variant": "b"});
    let bytes = serde_json::to_vec(&manifest).unwrap();
    use sha2::Digest;
    let b_hex = hex::encode(sha2::Sha256::digest(&bytes));
    std::fs::write(two.path().join("blobs/sha256").join(&b_hex), &bytes).unwrap();
    other["digest"] = format!("sha256:{b_hex}").into();
    other["size"] = bytes.len().into();
    index["manifests"].as_array_mut().unwrap().push(other);
    std::fs::write(
        two.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    ctd.import_oci_layout(two.path(), "gantry.test/pick:b");
    assert_eq!(
        ctd.image_digest("gantry.test/pick:b"),
        format!("sha256:{b_hex}")
    );
    ctd.import_oci_layout(two.path(), "gantry.test/pick:a");
    assert_eq!(ctd.image_digest("gantry.test/pick:a"), a.manifest_digest);
    let out = ctd.run_sh("gantry.test/pick:b", &[], "echo picked");
    assert_success("run picked image", &out);
    assert_eq!(stdout(&out), "picked\n");
}

fn skopeo_push(layout: &Path, tag: &str, dest: &str) {
    let skopeo = require_tool("skopeo");
    let policy = layout.join("..").join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let out = output_with_timeout(
        std::process::Command::new(skopeo)
            .arg("--policy")
            .arg(&policy)
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}")),
        Duration::from_secs(120),
    );
    assert_success("skopeo copy", &out);
}

#[test]
fn pull_from_registry_directly_and_through_hosts_dir() {
    let registry = DistributionRegistry::start();
    let work = tempdir();
    let layout = work.path().join("layout");
    let img = write_busybox_oci_layout(&layout, "latest");
    let reference = format!("{}/gantry/busybox:latest", registry.host());
    skopeo_push(&layout, "latest", &reference);

    let ctd = Containerd::start();
    let out = ctd.pull(&reference, None, true, None);
    assert_success("ctr images pull --plain-http", &out);
    assert_eq!(ctd.image_digest(&reference), img.manifest_digest);
    let out = ctd.run_sh(&reference, &[], "echo pulled-and-ran");
    assert_success("run pulled image", &out);
    assert_eq!(stdout(&out), "pulled-and-ran\n");

    // A name that resolves nowhere, redirected by hosts.toml to the real registry.
    let hosts = ctd.hosts_dir();
    write_mirror_hosts_toml(
        &hosts,
        "registry.gantry.invalid",
        "https://registry.gantry.invalid",
        &registry.url(),
    );
    let mirrored = "registry.gantry.invalid/gantry/busybox:latest";
    let out = ctd.pull(mirrored, Some(&hosts), false, None);
    assert_success("ctr images pull --hosts-dir", &out);
    assert_eq!(ctd.image_digest(mirrored), img.manifest_digest);

    // A host with a port: its directory is named `host:port`. Port 1 has no listener, so
    // only the mirror can answer.
    write_mirror_hosts_toml(&hosts, "127.0.0.1:1", "http://127.0.0.1:1", &registry.url());
    let ported = "127.0.0.1:1/gantry/busybox:latest";
    let out = ctd.pull(ported, Some(&hosts), false, None);
    assert_success("ctr images pull --hosts-dir (host:port)", &out);
    assert_eq!(ctd.image_digest(ported), img.manifest_digest);

    // Credentials are passed (this registry has no auth and ignores them).
    let second = format!("{}/gantry/busybox:latest", registry.host());
    let out = ctd.pull(&second, None, true, Some("user:secret"));
    assert_success("ctr images pull --user", &out);
}

#[test]
fn drop_cleans_up_containers_shims_and_dirs() {
    let layout = tempdir();
    write_busybox_oci_layout(layout.path(), "latest");
    let ctd = Containerd::start().with_namespace("k8s.io");
    assert_eq!(ctd.namespace(), "k8s.io");
    ctd.import_oci_layout(layout.path(), "gantry.test/sleeper:latest");
    // A detached container that would run for a long time.
    let out = ctd.ctr(&[
        "run",
        "-d",
        "gantry.test/sleeper:latest",
        &format!("sleeper-{}", std::process::id()),
        "/bin/sleep",
        "600",
    ]);
    assert_success("ctr run -d", &out);
    let tasks = stdout(&ctd.ctr(&["tasks", "ls"]));
    assert!(tasks.contains("RUNNING"), "{tasks}");
    let dir = ctd.dir().to_path_buf();
    let sock = ctd.address().as_os_str().to_owned();
    let start = Instant::now();
    drop(ctd);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "teardown took too long"
    );
    assert!(!dir.exists(), "temp dir removed");
    // No process still names the socket (shim) and nothing is mounted under the dir.
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) {
            use std::os::unix::ffi::OsStrExt;
            assert!(
                !cmdline.split(|b| *b == 0).any(|a| a == sock.as_bytes()),
                "process {:?} still refers to {sock:?}",
                p.file_name()
            );
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "{mounts}");
}

/// The browser check itself: a page whose chart texts overlap, and one that leaves its
/// chart, is reported; a clean page is not (so the demo's layout test cannot pass blindly).
#[test]
fn browser_layout_check_finds_overlap_and_overflow() {
    let tmp = gantry_test_support::tempdir();
    let page = |name: &str, svg_body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(
            &p,
            format!(
                "<!doctype html><html><body><p>legend</p>\
                 <svg id=\"c\" width=\"300\" height=\"100\">{svg_body}</svg></body></html>"
            ),
        )
        .unwrap();
        p
    };
    let clean = page(
        "clean.html",
        "<text x=\"20\" y=\"40\" font-size=\"11\">97.2 MB</text>\
         <text x=\"150\" y=\"40\" font-size=\"11\">97.3 MB</text>",
    );
    let overlapping = page(
        "overlap.html",
        "<text x=\"20\" y=\"40\" font-size=\"11\">97.2 MB</text>\
         <text x=\"40\" y=\"40\" font-size=\"11\">97.3 MB</text>",
    );
    let overflowing = page(
        "overflow.html",
        "<text x=\"280\" y=\"40\" font-size=\"11\">97.2 MB</text>",
    );
    let shot = tmp.path().join("shot.png");
    let c = gantry_test_support::check_page_layout(&clean, 1280, &shot);
    assert_eq!((c.texts, c.problems.len()), (2, 0), "{c:?}");
    let o = gantry_test_support::check_page_layout(&overlapping, 1280, &shot);
    assert!(o.problems.iter().any(|p| p.contains("overlaps")), "{o:?}");
    let f = gantry_test_support::check_page_layout(&overflowing, 1280, &shot);
    assert!(f.problems.iter().any(|p| p.contains("overflows")), "{f:?}");
    assert!(shot.is_file());
}

/// Like `skopeo_push`, as `user:password` (`--dest-creds`).
fn skopeo_push_as(layout: &Path, tag: &str, dest: &str, creds: &str) {
    let skopeo = require_tool("skopeo");
    let policy = layout.join("..").join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let out = output_with_timeout(
        std::process::Command::new(skopeo)
            .arg("--policy")
            .arg(&policy)
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", creds])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}")),
        Duration::from_secs(120),
    );
    assert_success("skopeo copy --dest-creds", &out);
}

/// Kubelet's path through containerd's CRI plugin: `gantry serve` (token auth) on loopback,
/// PullImage through CRI with credentials (via `hosts.toml`, plain HTTP), a host-network pod
/// sandbox (the locally built pause image) and a container that hashes a file of the pulled
/// image, its stdout read back from the CRI log; then everything is removed through CRI and
/// the containerd is torn down without leftovers.
#[test]
fn cri_pulls_from_gantry_serve_and_runs_a_pod() {
    use gantry_test_support::{CriClient, CriOptions, GantryServe, CRI_SANDBOX_IMAGE};
    use sha2::Digest;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let serve = rt.block_on(GantryServe::with_auth());
    let host = serve.host();
    let work = tempdir();
    let layout = work.path().join("layout");
    let img = write_busybox_oci_layout(&layout, "latest");
    let reference = format!("{host}/team/busybox:latest");
    skopeo_push_as(&layout, "latest", &reference, "alice:alicepw");

    let ctd = Containerd::start_cri(&CriOptions::default());
    assert_eq!(ctd.namespace(), "k8s.io");
    assert!(!ctd.cri_snapshotter().is_empty());
    // containerd would fall back to plain HTTP for 127.0.0.1 by itself; say so explicitly.
    let url = format!("http://{host}");
    write_mirror_hosts_toml(&ctd.hosts_dir(), &host, &url, &url);
    // A name that resolves nowhere: only CRI's `registry.config_path` can send it here.
    write_mirror_hosts_toml(
        &ctd.hosts_dir(),
        "registry.gantry.invalid",
        "https://registry.gantry.invalid",
        &url,
    );
    // The blocking client also works (and drops) inside an async context.
    rt.block_on(async {
        let inner = CriClient::connect(ctd.address());
        assert_eq!(inner.version().runtime_name, "containerd");
    });
    let cri = CriClient::connect(ctd.address());
    let v = cri.version();
    assert_eq!(v.runtime_name, "containerd", "{v:?}");
    assert_eq!(v.runtime_api_version, "v1", "{v:?}");
    assert!(
        cri.image_status(CRI_SANDBOX_IMAGE).is_some(),
        "CRI sees the imported pause image"
    );

    // The registry wants a token: anonymous pulls are refused, alice's succeeds.
    let err = cri
        .try_pull_image(&reference, None)
        .expect_err("anonymous pull of team/busybox must be refused");
    assert!(err.message().contains("authoriz"), "{err:?}");
    assert!(cri.image_status(&reference).is_none());
    let image_id = cri.pull_image(&reference, Some(("alice", "alicepw")));
    assert_eq!(image_id, img.config_digest);
    let status = cri.image_status(&reference).expect("pulled image is known");
    assert_eq!(status.id, img.config_digest);
    assert!(status.repo_tags.contains(&reference), "{status:?}");
    assert!(
        status
            .repo_digests
            .contains(&format!("{host}/team/busybox@{}", img.manifest_digest)),
        "{status:?}"
    );

    let mirrored = "registry.gantry.invalid/team/busybox:latest";
    let mirrored_id = cri.pull_image(mirrored, Some(("alice", "alicepw")));
    assert_eq!(mirrored_id, img.config_digest);
    assert!(cri.image_status(mirrored).is_some());

    // A pod whose container hashes the image's busybox: the host's static busybox.
    let pod_logs = work.path().join("pods").join("hash");
    let sandbox = cri.run_pod_sandbox("hash", &pod_logs);
    let container = cri.create_container(
        &sandbox,
        "hash",
        &reference,
        &["/bin/sha256sum"],
        &["/bin/busybox"],
        "hash.log",
    );
    cri.start_container(&container);
    assert_eq!(cri.wait_exited(&container, Duration::from_secs(60)), 0);
    assert_eq!(
        cri.container_log_path(&container),
        pod_logs.join("hash.log")
    );
    let expected = hex::encode(sha2::Sha256::digest(std::fs::read("/bin/busybox").unwrap()));
    // containerd writes the log as the output arrives: allow it a moment after the exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = cri.container_stdout(&container);
    while out.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        out = cri.container_stdout(&container);
    }
    assert_eq!(out, format!("{expected}  /bin/busybox\n"));
    let raw = std::fs::read_to_string(pod_logs.join("hash.log")).unwrap();
    assert!(raw.contains(" stdout F "), "CRI log format: {raw:?}");

    // The one-call variant, in a second pod.
    let (code, out) = cri.run_to_completion(
        "echo",
        &reference,
        &["/bin/sh", "-c", "echo hello from cri; exit 3"],
        &work.path().join("pods").join("echo"),
        Duration::from_secs(60),
    );
    assert_eq!((code, out.as_str()), (3, "hello from cri\n"));

    // Tear down through CRI.
    cri.remove_container(&container);
    cri.stop_pod_sandbox(&sandbox.id);
    cri.remove_pod_sandbox(&sandbox.id);
    assert!(cri.list_containers().is_empty());
    assert!(cri.list_pod_sandboxes().is_empty());
    cri.remove_image(&reference);
    assert!(cri.image_status(&reference).is_none());

    let dir = ctd.dir().to_path_buf();
    drop(cri);
    drop(ctd);
    assert!(!dir.exists(), "containerd temp dir removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "{mounts}");
    drop(serve);
}

/// Dropping a CRI containerd with a pod still running (a failed test's path) kills the
/// pod's processes and shims and leaves no mounts or files behind.
#[test]
fn cri_drop_cleans_up_running_pods() {
    use gantry_test_support::{cri_api, CriClient, CriOptions};

    let work = tempdir();
    let layout = work.path().join("layout");
    write_busybox_oci_layout(&layout, "latest");
    let ctd = Containerd::start_cri(&CriOptions::default());
    ctd.import_oci_layout(&layout, "gantry.test/busybox:cri");
    let cri = CriClient::connect(ctd.address());
    assert!(cri.image_status("gantry.test/busybox:cri").is_some());
    let sandbox = cri.run_pod_sandbox("sleeper", &work.path().join("pods"));
    let marker = format!("gantry-cri-sleeper-{}", std::process::id());
    let container = cri.create_container(
        &sandbox,
        "sleeper",
        "gantry.test/busybox:cri",
        &["/bin/sh", "-c"],
        &[&format!("sleep 600; echo {marker}")],
        "sleeper.log",
    );
    cri.start_container(&container);
    assert_eq!(
        cri.container_status(&container).state,
        cri_api::ContainerState::ContainerRunning as i32,
        "container runs"
    );
    let with_marker = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                    .unwrap_or(false)
            })
            .count()
    };
    assert_eq!(with_marker(), 1, "the container's shell runs");
    let dir = ctd.dir().to_path_buf();
    let sock = ctd.address().as_os_str().to_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(dir.to_str().unwrap()),
        "the pod has mounts under the instance dir"
    );
    drop(cri);
    let start = Instant::now();
    drop(ctd);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "teardown took too long"
    );
    assert!(!dir.exists(), "temp dir removed");
    assert_eq!(with_marker(), 0, "the container's processes are gone");
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) {
            use std::os::unix::ffi::OsStrExt;
            assert!(
                !cmdline.split(|b| *b == 0).any(|a| a == sock.as_bytes()),
                "process {:?} still refers to {sock:?}",
                p.file_name()
            );
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "{mounts}");
}
