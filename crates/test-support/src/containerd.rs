//! A private containerd (with runc) for one test.
//!
//! What running containers needed on this machine (Debian 12 VM as root, kernel 6.x,
//! containerd 1.6.20, runc 1.1.5, cgroup v1 hybrid hierarchy plus cgroup2 at
//! `/sys/fs/cgroup/unified`, root filesystem ext4, no AppArmor/SELinux/seccomp confinement):
//! - Kernel side, nothing: root may create cgroups in every v1 controller, the overlayfs
//!   snapshotter's own mount check passes on the ext4 temp dir, and `/run` is writable by root.
//!   The snapshotter is still chosen at start from `ctr plugins ls` (overlayfs when its
//!   plugin is `ok`, else `native`; `GANTRY_TEST_SNAPSHOTTER` overrides) and passed to every
//!   `ctr` call through `CONTAINERD_SNAPSHOTTER`, for machines where overlay does not work
//!   (e.g. a temp dir on overlayfs itself).
//! - Debian puts `runc` in `/usr/sbin`, which a non-login environment may lack on `PATH`:
//!   containerd gets `PATH` + the standard sbin/bin directories.
//! - Independence from the system containerd and from other instances (tests of one binary
//!   run in parallel, binaries run one after the other): each instance has its own temp dir
//!   with `root`, `state`, the gRPC socket, the ttrpc socket, the `opt` plugin dir and a
//!   generated config that disables CRI (which would want CNI, a sandbox image and port
//!   10010) and the snapshotters that cannot work here (aufs, btrfs, devmapper, zfs).
//!   Containers get ids unique across processes (`gt-<pid>-<n>`), because runc's cgroup path
//!   (`/<namespace>/<id>`) is machine-global, and `ctr run` gets a private `--runc-root` and
//!   `--fifo-dir` instead of the shared `/run/containerd/{runc,fifo}`. The shim socket
//!   directory `/run/containerd/s` cannot be moved in 1.6, but socket names there hash the
//!   containerd address, so instances do not collide.
//! - Teardown (Drop): force-delete all tasks, SIGTERM (then SIGKILL) containerd, `runc delete
//!   --force` anything left in the private runc root, SIGKILL shims whose `-address` is this
//!   instance's socket, lazily unmount whatever is still mounted under the temp dir, then
//!   remove it.
//!
//! With CRI ([`Containerd::start_cri`], driven by [`crate::CriClient`] the way kubelet does):
//! the same private paths, the CRI plugin left enabled, and this section (tested with
//! containerd 1.6.20 as root; nothing else was needed here):
//! - `sandbox_image = "gantry.test/pause:cri"`: a busybox image whose command is
//!   `/bin/sleep 2147483647`, built locally and imported into namespace `k8s.io` with the
//!   CRI snapshotter before `start_cri` returns (no network here). CRI picks it up from the
//!   image events; it kills sandboxes with SIGKILL, so the sleeping PID 1 is no problem.
//! - `stream_server_address = "127.0.0.1"`, `stream_server_port = "0"`: the default 10010
//!   would collide between instances.
//! - `restrict_oom_score_adj = true`: harmless as real root, needed where the test runs in a
//!   container that may not lower OOM scores.
//! - `[...containerd] snapshotter = <option, default overlayfs if an overlay mount works in
//!   the temp dir, else native>`, `disable_snapshot_annotations = false` (option), runtime
//!   `runc` = `io.containerd.runc.v2` with `BinaryName` = the found runc, `Root = <dir>/runc`
//!   (so teardown's `runc delete` covers CRI's containers) and `SystemdCgroup = false`.
//! - `[...cni] bin_dir`/`conf_dir` = empty private dirs: pods use the host network
//!   namespace, so no CNI is needed; containerd logs "failed to load cni during init" at
//!   start, which is expected.
//! - `[...registry] config_path = <dir>/hosts` ([`Containerd::hosts_dir`]): `hosts.toml`
//!   files there ([`write_mirror_hosts_toml`]) redirect pulls, e.g. a made-up registry name
//!   to a plain-HTTP loopback registry. (For `127.0.0.1:<port>` itself containerd falls back
//!   to plain HTTP even without one.) Credentials given to `PullImage` are sent to the host
//!   actually contacted.
//! - Cgroups: pods get no cgroup parent, so runc uses `/k8s.io/<64-hex id>`, removed on
//!   delete (the empty `/k8s.io` parent stays, as with `ctr` in namespace `k8s.io`).

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{
    assert_success, child_path, output_with_timeout, require_tool, try_output_with_timeout,
};

/// How long `ctr` commands (import, pull, run) may take before the test fails.
const CTR_TIMEOUT: Duration = Duration::from_secs(300);
/// How long containerd may take to answer `ctr version` after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Short timeout for best-effort teardown commands.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Counter for names unique within this process (instances, containers, import archives).
static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A containerd daemon private to one test, with its own root, state, sockets and config
/// under a temporary directory. Killed, with its shims and containers, on drop.
pub struct Containerd {
    child: Child,
    dir: Option<TempDir>,
    base: PathBuf,
    address: PathBuf,
    namespace: String,
    snapshotter: String,
    cri_snapshotter: String,
    ctr: PathBuf,
    runc: PathBuf,
}

impl Containerd {
    /// Starts containerd in a fresh temp dir and waits until `ctr version` succeeds.
    /// Uses the namespace `gantry-test`. Panics (with containerd's log) on failure.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Like [`Containerd::start`], with `extra_toml` appended to the generated
    /// `config.toml` (version 2), e.g. a `[proxy_plugins.NAME]` table for a proxy
    /// snapshotter whose socket is already listening. The default snapshotter is still
    /// picked as [`Containerd::start`] does; switch with [`Containerd::set_snapshotter`].
    pub fn start_with_config(extra_toml: &str) -> Self {
        Self::launch(extra_toml, None)
    }

    /// Starts containerd with its CRI plugin enabled (what kubelet talks to; drive it with
    /// [`crate::CriClient`] on [`Containerd::address`]), configured by `options`: pods need
    /// no network (a busybox pause image, built here, is imported before this returns; pods
    /// use the host network namespace, so no CNI), pulls go through the `hosts.toml` files
    /// in [`Containerd::hosts_dir`] (`registry.config_path`), and CRI's snapshotter is
    /// `options.snapshotter` (default: overlayfs if an overlay mount works here, else native).
    /// The helpers then use namespace `k8s.io` and that snapshotter. The module docs say
    /// which CRI settings are used and why.
    pub fn start_cri(options: &CriOptions) -> Self {
        let mut me = Self::launch(&options.extra_toml, Some(options));
        me.namespace = "k8s.io".to_string();
        me.snapshotter = me.cri_snapshotter.clone();
        let layout = me.base.join("imports").join(unique("pause-layout"));
        crate::cri::write_pause_oci_layout(&layout, "pause");
        me.import_oci_layout(&layout, CRI_SANDBOX_IMAGE);
        let _ = std::fs::remove_dir_all(&layout);
        me
    }

    /// The snapshotter CRI was configured with (empty unless started by
    /// [`Containerd::start_cri`]).
    pub fn cri_snapshotter(&self) -> &str {
        &self.cri_snapshotter
    }

    fn launch(extra_toml: &str, cri: Option<&CriOptions>) -> Self {
        let containerd = require_tool("containerd");
        let ctr = require_tool("ctr");
        let runc = require_tool("runc");
        require_tool("containerd-shim-runc-v2");

        let dir = tempfile::Builder::new()
            .prefix("gantry-ctd-")
            .tempdir()
            .expect("create containerd temp dir");
        // A unix socket path must fit in sun_path (108 bytes): fall back to /tmp if TMPDIR is deep.
        let dir = if dir.path().join("containerd.sock.ttrpc").as_os_str().len() > 100 {
            tempfile::Builder::new()
                .prefix("gantry-ctd-")
                .tempdir_in("/tmp")
                .expect("create containerd temp dir in /tmp")
        } else {
            dir
        };
        let base = dir.path().to_path_buf();
        let address = base.join("containerd.sock");
        for sub in ["root", "state", "opt", "runc", "fifo", "imports", "hosts"] {
            std::fs::create_dir_all(base.join(sub)).expect("create containerd subdir");
        }
        let config = base.join("config.toml");
        let mut config_text = config_toml(&base, &address, cri.is_some());
        let mut cri_snapshotter = String::new();
        if let Some(options) = cri {
            cri_snapshotter = options
                .snapshotter
                .clone()
                .or_else(|| std::env::var("GANTRY_TEST_SNAPSHOTTER").ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| {
                    if overlay_works(&base) {
                        "overlayfs"
                    } else {
                        "native"
                    }
                    .to_string()
                });
            config_text.push_str(&cri_config_toml(&base, &runc, &cri_snapshotter, options));
        }
        if !extra_toml.is_empty() {
            config_text.push('\n');
            config_text.push_str(extra_toml);
            config_text.push('\n');
        }
        std::fs::write(&config, config_text).expect("write containerd config");

        let log_path = base.join("containerd.log");
        let log = File::create(&log_path).expect("create containerd log");
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(&config)
            .env("PATH", child_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", containerd.display()));

        let mut me = Containerd {
            child,
            dir: Some(dir),
            base,
            address,
            namespace: "gantry-test".to_string(),
            snapshotter: String::new(),
            cri_snapshotter,
            ctr,
            runc,
        };
        me.wait_ready();
        me.snapshotter = me.pick_snapshotter();
        me
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "containerd exited during startup ({status}); log:\n{}",
                    self.log()
                );
            }
            let probe =
                try_output_with_timeout(&mut self.raw_ctr(&["version"]), Duration::from_secs(10));
            if matches!(&probe, Ok(out) if out.status.success()) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "containerd did not become ready within {START_TIMEOUT:?} (last probe: {probe:?}); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pick_snapshotter(&self) -> String {
        if let Ok(s) = std::env::var("GANTRY_TEST_SNAPSHOTTER") {
            if !s.is_empty() {
                return s;
            }
        }
        let out = output_with_timeout(&mut self.raw_ctr(&["plugins", "ls"]), CTR_TIMEOUT);
        assert_success("ctr plugins ls", &out);
        let text = String::from_utf8_lossy(&out.stdout);
        let overlay_ok = text.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&"io.containerd.snapshotter.v1")
                && cols.get(1) == Some(&"overlayfs")
                && cols.last() == Some(&"ok")
        });
        if overlay_ok { "overlayfs" } else { "native" }.to_string()
    }

    /// Makes [`Containerd::ctr`] and the other helpers use `namespace` (default `gantry-test`),
    /// e.g. `k8s.io` to look like a kubelet's node.
    pub fn with_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    /// Makes [`Containerd::ctr`], imports, pulls and runs use the snapshotter `name` (e.g.
    /// a proxy snapshotter configured with [`Containerd::start_with_config`], or
    /// `overlayfs`) from now on; they pass it as `CONTAINERD_SNAPSHOTTER`.
    pub fn set_snapshotter(&mut self, name: &str) {
        self.snapshotter = name.to_string();
    }

    /// The containerd gRPC socket (pass to `ctr --address`, or a containerd client).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The namespace that [`Containerd::ctr`] and the other helpers use.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The snapshotter used for imports, pulls and runs (`overlayfs` or `native`).
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// This instance's temp dir (holds `root/`, `state/`, `config.toml`, `containerd.log`).
    pub fn dir(&self) -> &Path {
        &self.base
    }

    /// An empty directory of this instance for `hosts.toml` files (`<dir>/<host>/hosts.toml`),
    /// to pass as `hosts_dir` to [`Containerd::pull`]; see [`write_mirror_hosts_toml`].
    pub fn hosts_dir(&self) -> PathBuf {
        self.base.join("hosts")
    }

    /// containerd's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("containerd.log")).unwrap_or_default()
    }

    fn raw_ctr<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        self.raw_ctr_in(&self.namespace, args)
    }

    fn raw_ctr_in<S: AsRef<OsStr>>(&self, namespace: &str, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .env("PATH", child_path())
            .env("CONTAINERD_SNAPSHOTTER", &self.snapshotter);
        cmd
    }

    /// A `ctr --address <sock> --namespace <ns> ARGS` command with `CONTAINERD_SNAPSHOTTER`
    /// set, to spawn yourself (e.g. a detached container, or a pull that should run in the
    /// background).
    pub fn ctr_command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        self.raw_ctr(args)
    }

    /// Runs `ctr --address <sock> --namespace <ns> ARGS` and returns its output, whatever its
    /// exit status (panics only if it cannot start or runs over 5 minutes).
    pub fn ctr<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        output_with_timeout(&mut self.raw_ctr(args), CTR_TIMEOUT)
    }

    /// Imports the OCI image layout directory `layout_dir` so that the image is available as
    /// `image_name` (exactly that string, e.g. `gantry.test/game:v1`). Panics on failure.
    ///
    /// Naming: containerd 1.6 (`ctr images import`) names an image from an OCI archive's
    /// `index.json` entry by its `io.containerd.image.name` annotation when present (used
    /// verbatim, `--base-name` ignored), else from `org.opencontainers.image.ref.name` (a full
    /// reference is kept; a bare tag gets a prefix: `--base-name`, by default
    /// `import-<today's date>`), else it creates no image at all (only with `--digests`:
    /// `<prefix>@<digest>`). So this helper archives the layout with a rewritten `index.json`
    /// that holds only the chosen entry, annotated `io.containerd.image.name = image_name`:
    /// the name is deterministic whatever the layout's own annotations are. The entry chosen
    /// is the only one, else the one whose `org.opencontainers.image.ref.name` equals
    /// `image_name` or its tag.
    pub fn import_oci_layout(&self, layout_dir: &Path, image_name: &str) {
        let archive = self
            .base
            .join("imports")
            .join(format!("{}.tar", unique("import")));
        write_import_archive(layout_dir, image_name, &archive);
        let out = self.ctr(&[
            OsStr::new("images"),
            OsStr::new("import"),
            archive.as_os_str(),
        ]);
        let _ = std::fs::remove_file(&archive);
        assert_success(
            format!("ctr images import of {}", layout_dir.display()),
            &out,
        );
        let listed = self.ctr(&["images", "ls", "-q"]);
        assert!(
            String::from_utf8_lossy(&listed.stdout)
                .lines()
                .any(|l| l.trim() == image_name),
            "after import, containerd does not list {image_name}: {}\nimport said: {}",
            String::from_utf8_lossy(&listed.stdout),
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Runs a container from `image_name` with `args` as its command (`ctr run --rm`, with
    /// runc, a unique container id, no network but loopback) until it exits, and returns
    /// `ctr`'s output: the container's stdout/stderr and exit status.
    pub fn run(&self, image_name: &str, args: &[&str]) -> Output {
        self.run_with(image_name, &[], args)
    }

    /// Like [`Containerd::run`], with extra `ctr run` flags before the image name, e.g.
    /// `["--net-host"]`, `["--env", "K=V"]`, `["--mount", "type=bind,src=/x,dst=/x,options=rbind:ro"]`.
    /// A run that exits 0 without printing anything at all is run once more: containerd 1.6
    /// can drop the whole output of a task that exits within milliseconds (seen once in CI,
    /// on `echo`), and such a run says nothing about the image. A command that really prints
    /// nothing prints nothing again.
    pub fn run_with(&self, image_name: &str, ctr_flags: &[&str], args: &[&str]) -> Output {
        let out = self.run_once(image_name, ctr_flags, args);
        if out.status.success() && out.stdout.is_empty() && out.stderr.is_empty() {
            eprintln!(
                "ctr run {image_name} {args:?}: exit 0 and no output at all; running it once \
                 more (containerd can lose a short-lived task's output)"
            );
            return self.run_once(image_name, ctr_flags, args);
        }
        out
    }

    /// Runs `script` with the image's `/bin/sh` (`ctr run --rm`, as [`Containerd::run_with`])
    /// and returns its exit status and what it wrote to stdout and stderr, captured in files
    /// of a host directory bind-mounted at `/.gantry-out` instead of through containerd's
    /// stdio fifos. containerd 1.6 can drop the tail of a short-lived task's output on its
    /// fifo path (seen in CI: the last line of a `sh -c` script missing, exit 0, nothing on
    /// stderr), so a test that asserts on a container's output uses this. `ctr`'s own
    /// stdout and stderr (its errors, before the script runs) follow the script's.
    pub fn run_sh(&self, image_name: &str, ctr_flags: &[&str], script: &str) -> Output {
        let dir = self.base.join("out").join(unique("run"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // The image may run as a user other than root.
        std::fs::set_permissions(
            &dir,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
        )
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        let mount = format!(
            "type=bind,src={},dst=/.gantry-out,options=rbind:rw",
            dir.display()
        );
        let mut flags = vec!["--mount", mount.as_str()];
        flags.extend_from_slice(ctr_flags);
        let wrapped =
            format!("exec >/.gantry-out/stdout 2>/.gantry-out/stderr </dev/null\n{script}");
        let out = self.run_once(image_name, &flags, &["/bin/sh", "-c", &wrapped]);
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_default();
        let mut stdout = read("stdout");
        stdout.extend_from_slice(&out.stdout);
        let mut stderr = read("stderr");
        stderr.extend_from_slice(&out.stderr);
        let _ = std::fs::remove_dir_all(&dir);
        Output {
            status: out.status,
            stdout,
            stderr,
        }
    }

    fn run_once(&self, image_name: &str, ctr_flags: &[&str], args: &[&str]) -> Output {
        let id = unique("gt");
        let runc_root = self.base.join("runc");
        let fifo_dir = self.base.join("fifo");
        let mut cmd = self.raw_ctr(&["run", "--rm"]);
        cmd.arg("--runc-root")
            .arg(&runc_root)
            .arg("--fifo-dir")
            .arg(&fifo_dir)
            .args(ctr_flags)
            .arg(image_name)
            .arg(&id)
            .args(args);
        match try_output_with_timeout(&mut cmd, CTR_TIMEOUT) {
            Ok(out) => out,
            Err(e) => {
                let _ = try_output_with_timeout(
                    &mut self.raw_ctr(&["tasks", "delete", "--force", &id]),
                    TEARDOWN_TIMEOUT,
                );
                panic!("{e}");
            }
        }
    }

    /// The digest (`sha256:...`) of the target containerd recorded for `image_name` (the
    /// manifest, or the index for a multi-platform image). Panics if there is no such image.
    pub fn image_digest(&self, image_name: &str) -> String {
        let out = self.ctr(&["images", "ls"]);
        assert_success("ctr images ls", &out);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .skip(1)
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&image_name))
                    .then(|| cols.get(2).map(|s| s.to_string()))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("containerd has no image {image_name}; images:\n{text}"))
    }

    /// Runs `ctr images pull [--plain-http] [--hosts-dir DIR] [--user USER[:PASSWORD]]
    /// REFERENCE` (which also unpacks the image) and returns the output, whatever its status.
    /// `hosts_dir` holds `<host>/hosts.toml` files (see [`write_mirror_hosts_toml`]); that is
    /// `ctr`'s equivalent of the CRI-only `config_path`.
    pub fn pull(
        &self,
        reference: &str,
        hosts_dir: Option<&Path>,
        plain_http: bool,
        user: Option<&str>,
    ) -> Output {
        let mut cmd = self.raw_ctr(&["images", "pull"]);
        if plain_http {
            cmd.arg("--plain-http");
        }
        if let Some(dir) = hosts_dir {
            cmd.arg("--hosts-dir").arg(dir);
        }
        if let Some(user) = user {
            cmd.arg("--user").arg(user);
        }
        cmd.arg(reference);
        output_with_timeout(&mut cmd, CTR_TIMEOUT)
    }

    fn teardown(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of containerd log ({}) ---\n{}",
                self.address.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        // 1. Containers: force-delete every task in every namespace while containerd is up.
        if matches!(self.child.try_wait(), Ok(None)) {
            let namespaces = self.quiet_list(&["namespaces", "ls", "-q"], None);
            for ns in namespaces {
                for task in self.quiet_list(&["tasks", "ls", "-q"], Some(&ns)) {
                    let mut cmd = self.raw_ctr_in(&ns, &["tasks", "delete", "--force", &task]);
                    let _ = try_output_with_timeout(&mut cmd, TEARDOWN_TIMEOUT);
                }
            }
        }
        // 2. containerd itself: SIGTERM, then SIGKILL.
        let pid = self.child.id() as libc::pid_t;
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // 3. Anything runc still has in our private root.
        if let Ok(namespaces) = std::fs::read_dir(self.base.join("runc")) {
            for ns in namespaces.flatten() {
                let Ok(ids) = std::fs::read_dir(ns.path()) else {
                    continue;
                };
                for id in ids.flatten() {
                    let mut cmd = Command::new(&self.runc);
                    cmd.arg("--root")
                        .arg(ns.path())
                        .args(["delete", "--force"])
                        .arg(id.file_name());
                    let _ = try_output_with_timeout(&mut cmd, TEARDOWN_TIMEOUT);
                }
            }
        }
        // 4. Shims of this instance (they outlive containerd by design).
        for shim in pids_with_arg_pair("-address", self.address.as_os_str()) {
            // SAFETY: kill(2) on a pid whose command line names this instance's socket.
            unsafe { libc::kill(shim, libc::SIGKILL) };
        }
        // 5. Mounts left under our dir (snapshots, rootfs of killed containers).
        unmount_under(&self.base);
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!(
                    "gantry-test-support: could not remove {}: {e}",
                    path.display()
                );
            }
        }
    }

    fn quiet_list(&self, args: &[&str], ns: Option<&str>) -> Vec<String> {
        let mut cmd = self.raw_ctr_in(ns.unwrap_or(&self.namespace), args);
        match try_output_with_timeout(&mut cmd, TEARDOWN_TIMEOUT) {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("snapshotter", &self.snapshotter)
            .field("pid", &self.child.id())
            .finish()
    }
}

/// Writes `<hosts_dir>/<registry_host>/hosts.toml` that sends pulls and resolves of
/// `registry_host` (e.g. `registry.gantry.test` or `127.0.0.1:5000`) to `mirror_url`
/// (e.g. `http://127.0.0.1:7000`) first, falling back to `server_url`. Returns the file path.
pub fn write_mirror_hosts_toml(
    hosts_dir: &Path,
    registry_host: &str,
    server_url: &str,
    mirror_url: &str,
) -> PathBuf {
    let dir = hosts_dir.join(registry_host);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let path = dir.join("hosts.toml");
    let text = format!(
        "server = {}\n\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
        toml_str(server_url),
        toml_str(mirror_url)
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path_str(p: &Path) -> String {
    toml_str(p.to_str().expect("temp paths are UTF-8"))
}

fn config_toml(base: &Path, address: &Path, cri: bool) -> String {
    format!(
        r#"# Generated by gantry-test-support for one test: private paths{no_cri}.
version = 2
root = {root}
state = {state}
oom_score = 0
disabled_plugins = [{disable_cri}
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {address}
  uid = 0
  gid = 0

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
        no_cri = if cri { "" } else { ", no CRI" },
        disable_cri = if cri {
            ""
        } else {
            "\n  \"io.containerd.grpc.v1.cri\","
        },
        root = path_str(&base.join("root")),
        state = path_str(&base.join("state")),
        address = path_str(address),
        ttrpc = path_str(&base.join("containerd.sock.ttrpc")),
        opt = path_str(&base.join("opt")),
    )
}

/// The name under which [`Containerd::start_cri`] imports its pause image (CRI's
/// `sandbox_image`), in namespace `k8s.io`.
pub const CRI_SANDBOX_IMAGE: &str = "gantry.test/pause:cri";

/// Options for [`Containerd::start_cri`].
#[derive(Debug, Clone, Default)]
pub struct CriOptions {
    /// CRI's snapshotter (`[plugins."io.containerd.grpc.v1.cri".containerd] snapshotter`),
    /// e.g. a proxy snapshotter declared in `extra_toml`. `None`: `GANTRY_TEST_SNAPSHOTTER`
    /// if set, else overlayfs when an overlay mount works in the temp dir, else native.
    pub snapshotter: Option<String>,
    /// `disable_snapshot_annotations` (default `false`: CRI passes the
    /// `containerd.io/snapshot/cri.*` labels a remote snapshotter needs).
    pub disable_snapshot_annotations: bool,
    /// Raw TOML appended to the config, e.g. a `[proxy_plugins.gantry]` table.
    pub extra_toml: String,
}

/// The CRI plugin's section of the config (see the module docs).
fn cri_config_toml(base: &Path, runc: &Path, snapshotter: &str, options: &CriOptions) -> String {
    for sub in ["cni/bin", "cni/net.d"] {
        std::fs::create_dir_all(base.join(sub)).expect("create CRI subdir");
    }
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = {snapshotter}
    default_runtime_name = "runc"
    disable_snapshot_annotations = {disable_annotations}
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {hosts}
"#,
        sandbox = toml_str(CRI_SANDBOX_IMAGE),
        snapshotter = toml_str(snapshotter),
        disable_annotations = options.disable_snapshot_annotations,
        runc = path_str(runc),
        runc_root = path_str(&base.join("runc")),
        cni_bin = path_str(&base.join("cni/bin")),
        cni_conf = path_str(&base.join("cni/net.d")),
        hosts = path_str(&base.join("hosts")),
    )
}

/// Whether an overlay mount works under `base` (what containerd's overlayfs snapshotter
/// checks at start).
fn overlay_works(base: &Path) -> bool {
    let probe = base.join("overlay-probe");
    let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).expect("create overlay probe dir");
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dirs[0].display(),
        dirs[1].display(),
        dirs[2].display()
    );
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in probe paths");
    let (src, target, fstype, data) = (
        c("overlay"),
        c(dirs[3].to_str().expect("UTF-8 temp path")),
        c("overlay"),
        c(&opts),
    );
    // SAFETY: mount(2) with valid NUL-terminated strings that outlive the call.
    let ok = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    } == 0;
    if ok {
        // SAFETY: umount2(2) with a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir_all(&probe);
    ok
}

/// Writes to `archive` a tar of the OCI layout at `layout_dir` whose `index.json` keeps only
/// the chosen manifest, annotated `io.containerd.image.name = image_name`.
fn write_import_archive(layout_dir: &Path, image_name: &str, archive: &Path) {
    let index_path = layout_dir.join("index.json");
    let index_bytes =
        std::fs::read(&index_path).unwrap_or_else(|e| panic!("read {}: {e}", index_path.display()));
    let mut index: serde_json::Value = serde_json::from_slice(&index_bytes)
        .unwrap_or_else(|e| panic!("parse {}: {e}", index_path.display()));
    let manifests = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no manifests array", index_path.display()))
        .clone();
    let tag = image_name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map(|(_, t)| t);
    let ref_name = |m: &serde_json::Value| {
        m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .map(str::to_string)
    };
    let chosen = if manifests.len() == 1 {
        manifests[0].clone()
    } else {
        manifests
            .iter()
            .find(|m| {
                let r = ref_name(m);
                r.as_deref() == Some(image_name) || (tag.is_some() && r.as_deref() == tag)
            })
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "{} has {} manifests and none has org.opencontainers.image.ref.name \
                     {image_name:?} or its tag",
                    index_path.display(),
                    manifests.len()
                )
            })
    };
    let mut chosen = chosen;
    if !chosen["annotations"].is_object() {
        chosen["annotations"] = serde_json::json!({});
    }
    chosen["annotations"]["io.containerd.image.name"] = image_name.into();
    index["manifests"] = serde_json::Value::Array(vec![chosen]);
    let new_index = serde_json::to_vec(&index).expect("serialize index.json");

    let file =
        File::create(archive).unwrap_or_else(|e| panic!("create {}: {e}", archive.display()));
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    b.follow_symlinks(false);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(new_index.len() as u64);
    h.set_mtime(0);
    h.set_path("index.json").expect("tar path");
    h.set_cksum();
    b.append(&h, new_index.as_slice())
        .expect("append index.json");
    for entry in walkdir::WalkDir::new(layout_dir)
        .sort_by_file_name()
        .min_depth(1)
    {
        let entry = entry.unwrap_or_else(|e| panic!("walk {}: {e}", layout_dir.display()));
        let rel = entry
            .path()
            .strip_prefix(layout_dir)
            .expect("walkdir stays under its root");
        if rel == Path::new("index.json") {
            continue;
        }
        b.append_path_with_name(entry.path(), rel)
            .unwrap_or_else(|e| panic!("archive {}: {e}", entry.path().display()));
    }
    b.into_inner()
        .expect("finish import archive")
        .into_inner()
        .map_err(|e| e.into_error())
        .expect("flush import archive");
}

/// Pids of processes whose command line has `flag` immediately followed by `value`.
fn pids_with_arg_pair(flag: &str, value: &OsStr) -> Vec<libc::pid_t> {
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        use std::os::unix::ffi::OsStrExt;
        if args
            .windows(2)
            .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2(2) with a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Decodes the `\ooo` octal escapes of /proc/self/mountinfo paths.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), r"/end\");
    }

    #[test]
    fn hosts_toml_shape() {
        let d = crate::tempdir();
        let p = write_mirror_hosts_toml(
            d.path(),
            "127.0.0.1:5000",
            "http://127.0.0.1:5000",
            "http://127.0.0.1:7000",
        );
        assert_eq!(p, d.path().join("127.0.0.1:5000/hosts.toml"));
        let text = std::fs::read_to_string(p).unwrap();
        assert!(text.contains("server = \"http://127.0.0.1:5000\""));
        assert!(text.contains("[host.\"http://127.0.0.1:7000\"]"));
    }

    #[test]
    fn cri_config_shape() {
        let d = crate::tempdir();
        let options = CriOptions {
            snapshotter: Some("gantry".into()),
            ..CriOptions::default()
        };
        let text = cri_config_toml(d.path(), Path::new("/usr/sbin/runc"), "gantry", &options);
        assert!(text.contains("snapshotter = \"gantry\""), "{text}");
        assert!(
            text.contains("disable_snapshot_annotations = false"),
            "{text}"
        );
        assert!(
            text.contains("sandbox_image = \"gantry.test/pause:cri\""),
            "{text}"
        );
        let hosts = format!("config_path = \"{}/hosts\"", d.path().display());
        assert!(text.contains(&hosts), "{text}");
        let sock = d.path().join("containerd.sock");
        assert!(!config_toml(d.path(), &sock, true).contains("\"io.containerd.grpc.v1.cri\","));
        assert!(config_toml(d.path(), &sock, false).contains("\"io.containerd.grpc.v1.cri\","));
    }
}
