//! A blocking client for containerd's CRI API (`runtime.v1.RuntimeService` and
//! `runtime.v1.ImageService`, what kubelet speaks), for tests on machines without `crictl`.
//!
//! The generated API comes from the `k8s-cri` crate (0.7, tonic 0.9 / prost 0.11; its build
//! script runs `protoc`, Debian package `protobuf-compiler`). Each call runs on a private
//! tokio runtime in a scoped thread, so the client works from plain `#[test]`s and from inside
//! another tokio runtime alike. Everything panics with a descriptive message on failure,
//! except the `try_*` calls, which return the (boxed) gRPC status.
//!
//! Start a containerd with CRI enabled with [`crate::Containerd::start_cri`]; it imports a
//! local pause image, so no network is needed. Pods use the host network namespace (no CNI).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The generated CRI v1 API (`k8s_cri::v1`): request/response types and enums such as
/// `ContainerState`, for [`CriClient::call`] and for reading statuses.
pub use k8s_cri::v1 as cri_api;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, Image, ImageSpec, ImageStatusRequest,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PullImageRequest, RemoveContainerRequest, RemoveImageRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    VersionRequest, VersionResponse,
};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call (e.g. a pull) may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long [`CriClient::connect`] waits for the socket to answer `Version`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod sandbox started by [`CriClient::run_pod_sandbox`].
#[derive(Debug, Clone)]
pub struct PodSandbox {
    /// The sandbox id CRI returned.
    pub id: String,
    /// The config it was started with (needed again for `CreateContainer`).
    pub config: PodSandboxConfig,
    /// The sandbox's log directory (absolute); container log paths are relative to it.
    pub log_dir: PathBuf,
}

/// A blocking CRI client over a containerd unix socket.
pub struct CriClient {
    /// Always `Some` until dropped (taken by `Drop` to shut it down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    socket: PathBuf,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("socket", &self.socket)
            .finish()
    }
}

impl CriClient {
    /// Connects to the CRI service on the containerd gRPC socket `socket`, waiting (up to
    /// 30 s) until `Version` answers. Panics with the last error otherwise.
    pub fn connect(socket: &Path) -> CriClient {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("build tokio runtime for the CRI client");
        let path = socket.to_path_buf();
        let channel = run_on(&rt, async move {
            // The URI is required by tonic but unused: the connector dials the socket.
            Endpoint::try_from("http://[::]:0")
                .expect("static endpoint")
                .timeout(CALL_TIMEOUT)
                .connect_timeout(Duration::from_secs(10))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    tokio::net::UnixStream::connect(path.clone())
                }))
        });
        let client = CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            rt: Some(rt),
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match client.try_version() {
                Ok(_) => return client,
                Err(e) if Instant::now() >= deadline => panic!(
                    "CRI at {} did not answer Version within {CONNECT_TIMEOUT:?}: {e}",
                    socket.display()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `f` with clones of the runtime and image service clients on this client's tokio
    /// runtime and returns its result: for CRI calls this wrapper does not cover.
    pub fn call<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = T> + Send,
        T: Send,
    {
        let fut = f(self.runtime.clone(), self.images.clone());
        run_on(self.rt.as_ref().expect("runtime lives until drop"), fut)
    }

    /// `RuntimeService.Version`, or the gRPC status.
    pub fn try_version(&self) -> Result<VersionResponse, Box<tonic::Status>> {
        self.call(|mut rt, _| async move {
            rt.version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(Box::new)
        })
    }

    /// `RuntimeService.Version` (runtime name `containerd`, API version `v1`...).
    pub fn version(&self) -> VersionResponse {
        self.try_version()
            .unwrap_or_else(|e| panic!("CRI Version: {e}"))
    }

    /// `ImageService.PullImage` of `image_ref` with optional registry credentials
    /// (`(user, password)`), or the gRPC status. Returns the image id (`sha256:<config>`).
    pub fn try_pull_image(
        &self,
        image_ref: &str,
        auth: Option<(&str, &str)>,
    ) -> Result<String, Box<tonic::Status>> {
        let req = PullImageRequest {
            image: Some(image_spec(image_ref)),
            auth: auth.map(|(u, p)| AuthConfig {
                username: u.into(),
                password: p.into(),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        self.call(|_, mut img| async move {
            img.pull_image(req)
                .await
                .map(|r| r.into_inner().image_ref)
                .map_err(Box::new)
        })
    }

    /// Like [`CriClient::try_pull_image`]; panics on failure.
    pub fn pull_image(&self, image_ref: &str, auth: Option<(&str, &str)>) -> String {
        self.try_pull_image(image_ref, auth)
            .unwrap_or_else(|e| panic!("CRI PullImage {image_ref}: {e}"))
    }

    /// `ImageService.ImageStatus` of `image` (a reference or an image id): `None` when CRI
    /// does not know it.
    pub fn image_status(&self, image: &str) -> Option<Image> {
        let req = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        self.call(|_, mut img| async move { img.image_status(req).await })
            .unwrap_or_else(|e| panic!("CRI ImageStatus {image}: {e}"))
            .into_inner()
            .image
    }

    /// `ImageService.RemoveImage` of `image` (a reference or an image id). Panics on failure;
    /// removing an unknown image succeeds, as in CRI.
    pub fn remove_image(&self, image: &str) {
        let req = RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.call(|_, mut img| async move { img.remove_image(req).await })
            .unwrap_or_else(|e| panic!("CRI RemoveImage {image}: {e}"));
    }

    /// `RuntimeService.RunPodSandbox` for a pod named `name` (namespace `default`, a unique
    /// uid) in the HOST network namespace, so no CNI is needed, with `log_dir` as its log
    /// directory (created if missing). Panics on failure.
    pub fn run_pod_sandbox(&self, name: &str, log_dir: &Path) -> PodSandbox {
        std::fs::create_dir_all(log_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", log_dir.display()));
        let uid = hex::encode(
            &Sha256::digest(format!(
                "{name} {} {:?}",
                std::process::id(),
                Instant::now()
            ))[..8],
        );
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid,
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: log_dir.to_str().expect("log dir path is UTF-8").to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = self
            .call(|mut rt, _| async move { rt.run_pod_sandbox(req).await })
            .unwrap_or_else(|e| panic!("CRI RunPodSandbox {name}: {e}"))
            .into_inner()
            .pod_sandbox_id;
        PodSandbox {
            id,
            config,
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// `RuntimeService.CreateContainer` named `name` in `sandbox` from `image` (already
    /// pulled), with `command` (the entrypoint; empty keeps the image's) and `args`, logging
    /// to `log_path` relative to the sandbox's log directory (e.g. `name.log`). Returns the
    /// container id. Panics on failure.
    pub fn create_container(
        &self,
        sandbox: &PodSandbox,
        name: &str,
        image: &str,
        command: &[&str],
        args: &[&str],
        log_path: &str,
    ) -> String {
        let req = CreateContainerRequest {
            pod_sandbox_id: sandbox.id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(image_spec(image)),
                command: command.iter().map(|s| s.to_string()).collect(),
                args: args.iter().map(|s| s.to_string()).collect(),
                log_path: log_path.into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox.config.clone()),
        };
        self.call(|mut rt, _| async move { rt.create_container(req).await })
            .unwrap_or_else(|e| panic!("CRI CreateContainer {name} ({image}): {e}"))
            .into_inner()
            .container_id
    }

    /// `RuntimeService.StartContainer`. Panics on failure.
    pub fn start_container(&self, container_id: &str) {
        let req = StartContainerRequest {
            container_id: container_id.into(),
        };
        self.call(|mut rt, _| async move { rt.start_container(req).await })
            .unwrap_or_else(|e| panic!("CRI StartContainer {container_id}: {e}"));
    }

    /// `RuntimeService.ContainerStatus`. Panics on failure.
    pub fn container_status(&self, container_id: &str) -> ContainerStatus {
        let req = ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: false,
        };
        self.call(|mut rt, _| async move { rt.container_status(req).await })
            .unwrap_or_else(|e| panic!("CRI ContainerStatus {container_id}: {e}"))
            .into_inner()
            .status
            .unwrap_or_else(|| panic!("CRI ContainerStatus {container_id}: no status"))
    }

    /// Polls [`CriClient::container_status`] until the container has exited and returns its
    /// exit code; panics after `timeout`.
    pub fn wait_exited(&self, container_id: &str, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(container_id);
            if status.state == ContainerState::ContainerExited as i32 {
                return status.exit_code;
            }
            if Instant::now() >= deadline {
                panic!("container {container_id} did not exit within {timeout:?}: {status:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container's log file (`<sandbox log dir>/<log path>`), in CRI log format.
    pub fn container_log_path(&self, container_id: &str) -> PathBuf {
        PathBuf::from(self.container_status(container_id).log_path)
    }

    /// The container's stdout so far, as plain text (see [`cri_log_stream`]).
    pub fn container_stdout(&self, container_id: &str) -> String {
        let path = self.container_log_path(container_id);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read container log {}: {e}", path.display()));
        cri_log_stream(&text, "stdout")
    }

    /// `RuntimeService.StopContainer` with a grace period of `timeout_secs`. Panics on failure.
    pub fn stop_container(&self, container_id: &str, timeout_secs: i64) {
        let req = StopContainerRequest {
            container_id: container_id.into(),
            timeout: timeout_secs,
        };
        self.call(|mut rt, _| async move { rt.stop_container(req).await })
            .unwrap_or_else(|e| panic!("CRI StopContainer {container_id}: {e}"));
    }

    /// `RuntimeService.RemoveContainer` (also stops a running one). Panics on failure.
    pub fn remove_container(&self, container_id: &str) {
        let req = RemoveContainerRequest {
            container_id: container_id.into(),
        };
        self.call(|mut rt, _| async move { rt.remove_container(req).await })
            .unwrap_or_else(|e| panic!("CRI RemoveContainer {container_id}: {e}"));
    }

    /// `RuntimeService.StopPodSandbox` (stops its containers too). Panics on failure.
    pub fn stop_pod_sandbox(&self, sandbox_id: &str) {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.into(),
        };
        self.call(|mut rt, _| async move { rt.stop_pod_sandbox(req).await })
            .unwrap_or_else(|e| panic!("CRI StopPodSandbox {sandbox_id}: {e}"));
    }

    /// `RuntimeService.RemovePodSandbox` (removes its containers too). Panics on failure.
    pub fn remove_pod_sandbox(&self, sandbox_id: &str) {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.into(),
        };
        self.call(|mut rt, _| async move { rt.remove_pod_sandbox(req).await })
            .unwrap_or_else(|e| panic!("CRI RemovePodSandbox {sandbox_id}: {e}"));
    }

    /// Ids of all pod sandboxes CRI knows.
    pub fn list_pod_sandboxes(&self) -> Vec<String> {
        self.call(|mut rt, _| async move {
            rt.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })
        .unwrap_or_else(|e| panic!("CRI ListPodSandbox: {e}"))
        .into_inner()
        .items
        .into_iter()
        .map(|s| s.id)
        .collect()
    }

    /// Ids of all containers CRI knows.
    pub fn list_containers(&self) -> Vec<String> {
        self.call(|mut rt, _| async move {
            rt.list_containers(ListContainersRequest { filter: None })
                .await
        })
        .unwrap_or_else(|e| panic!("CRI ListContainers: {e}"))
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect()
    }

    /// Runs `command` (argv, as the entrypoint) from `image` in a fresh pod sandbox named
    /// `name` whose logs go under `log_dir`, waits (up to `timeout`) for it to exit, then
    /// removes the container and the sandbox. Returns the exit code and the plain stdout.
    pub fn run_to_completion(
        &self,
        name: &str,
        image: &str,
        command: &[&str],
        log_dir: &Path,
        timeout: Duration,
    ) -> (i32, String) {
        let sandbox = self.run_pod_sandbox(name, log_dir);
        let container =
            self.create_container(&sandbox, name, image, command, &[], &format!("{name}.log"));
        self.start_container(&container);
        let code = self.wait_exited(&container, timeout);
        let out = self.container_stdout(&container);
        self.remove_container(&container);
        self.stop_pod_sandbox(&sandbox.id);
        self.remove_pod_sandbox(&sandbox.id);
        (code, out)
    }
}

impl Drop for CriClient {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's async context.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.into(),
        annotations: HashMap::new(),
    }
}

/// Runs `fut` to completion on `rt` from a scoped thread (so callers may already be inside a
/// tokio runtime, where `block_on` would panic).
fn run_on<T: Send, Fut: std::future::Future<Output = T> + Send>(
    rt: &tokio::runtime::Runtime,
    fut: Fut,
) -> T {
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(fut))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The text of `stream` (`stdout` or `stderr`) in a CRI container log: lines of the form
/// `<RFC 3339 time> <stream> <tag> <text>`, where tag `F` ends a line and `P` marks a
/// partial one continued by the next entry. Returns the concatenated text, with `\n` after
/// each full line. Panics on a line that is not in that format.
pub fn cri_log_stream(log: &str, stream: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(_time), Some(s), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("not a CRI log line: {line:?}");
        };
        let text = parts.next().unwrap_or("");
        if s != stream {
            continue;
        }
        out.push_str(text);
        match tag {
            "F" => out.push('\n'),
            "P" => {}
            other => panic!("unknown CRI log tag {other:?} in {line:?}"),
        }
    }
    out
}

/// Writes to `dir` an OCI layout (tag `ref_name`) of the busybox image whose command sleeps
/// (practically) forever: a pause image for CRI sandboxes built without network.
pub(crate) fn write_pause_oci_layout(dir: &Path, ref_name: &str) {
    crate::write_busybox_oci_layout(dir, ref_name);
    let blobs = dir.join("blobs").join("sha256");
    let read_json = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let bytes = std::fs::read(blobs.join(hex)).expect("read blob");
        serde_json::from_slice(&bytes).expect("blob is JSON")
    };
    let put = |v: &serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(v).expect("serialize JSON");
        let hex = hex::encode(Sha256::digest(&bytes));
        std::fs::write(blobs.join(&hex), &bytes).expect("write blob");
        (format!("sha256:{hex}"), bytes.len())
    };
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("read index.json"))
            .expect("index.json is JSON");
    let mut manifest = read_json(
        index["manifests"][0]["digest"]
            .as_str()
            .expect("index has a manifest"),
    );
    let mut config = read_json(
        manifest["config"]["digest"]
            .as_str()
            .expect("manifest has a config"),
    );
    // PID 1 ignores SIGTERM; CRI kills sandboxes with SIGKILL.
    config["config"]["Cmd"] = serde_json::json!(["/bin/sleep", "2147483647"]);
    let (config_digest, config_size) = put(&config);
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    let (manifest_digest, manifest_size) = put(&manifest);
    index["manifests"][0]["digest"] = manifest_digest.into();
    index["manifests"][0]["size"] = manifest_size.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("index JSON"))
        .expect("write index.json");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_stream_joins_partials_and_filters_streams() {
        let log = "2026-12-06T23:00:00.000000001Z stdout F hello world\n\
                   2026-12-06T23:00:00.000000002Z stderr F oops\n\
                   2026-12-06T23:00:00.000000003Z stdout P abc\n\
                   2026-12-06T23:00:00.000000004Z stdout F def\n\
                   2026-12-06T23:00:00.000000005Z stdout F \n";
        assert_eq!(cri_log_stream(log, "stdout"), "hello world\nabcdef\n\n");
        assert_eq!(cri_log_stream(log, "stderr"), "oops\n");
        assert_eq!(cri_log_stream("", "stdout"), "");
    }

    #[test]
    fn pause_layout_sleeps() {
        let d = crate::tempdir();
        write_pause_oci_layout(d.path(), "pause");
        let blobs = d.path().join("blobs/sha256");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("index.json")).unwrap()).unwrap();
        let m = index["manifests"][0]["digest"].as_str().unwrap();
        let mb = std::fs::read(blobs.join(&m[7..])).unwrap();
        assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&mb))), m);
        let manifest: serde_json::Value = serde_json::from_slice(&mb).unwrap();
        let c = manifest["config"]["digest"].as_str().unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blobs.join(&c[7..])).unwrap()).unwrap();
        assert_eq!(config["config"]["Cmd"][0], "/bin/sleep");
    }
}
