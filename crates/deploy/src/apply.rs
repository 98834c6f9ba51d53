//! Server-side apply of rendered objects through `kube`, and following the rollout until
//! every pod (or Ready GameServer) runs the new image digest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::Serialize;

use crate::error::{DeployError, DeployResult};
use crate::render::{Manifest, GAME_CONTAINER, NAME_LABEL};

/// The field manager of Gantry's server-side applies.
pub const FIELD_MANAGER: &str = "gantry";

/// Which cluster: a kubeconfig file (default: `$KUBECONFIG`, then `~/.kube/config`) and a
/// context in it (default: its current context).
#[derive(Clone, Debug, Default)]
pub struct KubeTarget {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
}

/// Desired, ready, pods per digest, and whether the rollout is complete.
type State = (i32, i32, BTreeMap<String, usize>, bool);

/// Pods per image digest: how many, and their names.
type PodsByDigest = BTreeMap<String, (usize, Vec<String>)>;

/// A connection to one cluster's API server.
pub struct Cluster {
    client: Client,
    server: String,
    default_namespace: String,
}

/// Where a rollout ended.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutReport {
    /// `Deployment ns/name` or `Fleet ns/name`.
    pub object: String,
    /// Desired replicas.
    pub desired: i32,
    /// Ready pods (Deployment) or Ready + Allocated GameServers (Fleet).
    pub ready: i32,
    /// The digest the rollout waited for, if the image was pinned.
    pub digest: Option<String>,
    /// How many pods run which image digest (`(not running)` for pods not started).
    pub pods_by_digest: BTreeMap<String, usize>,
    /// Time taken.
    pub seconds: f64,
}

/// rustls needs one process-wide crypto provider: the workspace enables both ring (through
/// tokio-rustls) and aws-lc-rs (through reqwest), so rustls cannot pick one by itself and
/// kube's TLS setup would panic. Install ring's (the registry's) unless one is set.
pub fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// The API resource of a kind Gantry applies (no discovery round trip needed).
fn resource(m: &Manifest) -> ApiResource {
    let (group, version, kind, plural) = match m {
        Manifest::Deployment(_) => ("apps", "v1", "Deployment", "deployments"),
        Manifest::DaemonSet(_) => ("apps", "v1", "DaemonSet", "daemonsets"),
        Manifest::ConfigMap(_) => ("", "v1", "ConfigMap", "configmaps"),
        Manifest::Fleet(_) => ("agones.dev", "v1", "Fleet", "fleets"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn image_digest(image_id: &str) -> String {
    match image_id.rsplit_once('@') {
        Some((_, d)) => d.to_string(),
        None if image_id.is_empty() => "(not running)".to_string(),
        None => image_id.to_string(),
    }
}

impl Cluster {
    /// Reads the kubeconfig and prepares a client (no request is made yet).
    pub async fn connect(target: &KubeTarget) -> DeployResult<Cluster> {
        install_crypto_provider();
        let options = KubeConfigOptions {
            context: target.context.clone(),
            cluster: None,
            user: None,
        };
        let config = match &target.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| DeployError::Kubeconfig {
                    message: format!("{}: {}", path.display(), chain(&e)),
                })?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| DeployError::Kubeconfig {
                        message: format!("{}: {}", path.display(), chain(&e)),
                    })?
            }
            None => match Config::from_kubeconfig(&options).await {
                Ok(c) => c,
                // Inside a pod without a kubeconfig: the service account.
                Err(e) if target.context.is_none() => Config::incluster()
                    .map_err(|_| DeployError::Kubeconfig { message: chain(&e) })?,
                Err(e) => return Err(DeployError::Kubeconfig { message: chain(&e) }),
            },
        };
        let server = config.cluster_url.to_string();
        let default_namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| DeployError::Kubeconfig {
            message: format!("client for {server}: {}", chain(&e)),
        })?;
        Ok(Cluster {
            client,
            server,
            default_namespace,
        })
    }

    /// The API server URL (from the kubeconfig).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The namespace of the kubeconfig's context (used for objects without one).
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    fn error(&self, what: &str, e: kube::Error) -> DeployError {
        match e {
            kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
                DeployError::Forbidden {
                    server: self.server.clone(),
                    what: what.to_string(),
                    code: status.code,
                    message: status.message.clone(),
                }
            }
            kube::Error::Api(status) => DeployError::Api {
                server: self.server.clone(),
                what: what.to_string(),
                code: status.code,
                message: status.message.clone(),
            },
            other => DeployError::Unreachable {
                server: self.server.clone(),
                message: format!("{what}: {}", chain(&other)),
            },
        }
    }

    fn namespace_of(&self, m: &Manifest) -> String {
        let meta = match m {
            Manifest::Deployment(o) => &o.metadata,
            Manifest::Fleet(o) => &o.metadata,
            Manifest::DaemonSet(o) => &o.metadata,
            Manifest::ConfigMap(o) => &o.metadata,
        };
        meta.namespace
            .clone()
            .unwrap_or_else(|| self.default_namespace.clone())
    }

    /// Server-side applies `m` (field manager `gantry`, conflicts forced: Gantry owns the
    /// fields it renders).
    pub async fn apply(&self, m: &Manifest) -> DeployResult<()> {
        let what = format!("apply {}", m.describe());
        let value = m.to_json()?;
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = self.namespace_of(m);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &resource(m));
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .map_err(|e| self.error(&what, e))?;
        Ok(())
    }

    /// Follows the rollout of a Deployment or Fleet until it is complete with `digest` (if
    /// given) on every pod, reporting each change through `progress`; other kinds are done
    /// once applied (a DaemonSet waits for its pods to be ready).
    pub async fn rollout(
        &self,
        m: &Manifest,
        digest: Option<&str>,
        timeout: Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> DeployResult<RolloutReport> {
        let start = Instant::now();
        let ns = self.namespace_of(m);
        let object = m.describe();
        let mut last = String::new();
        loop {
            let (desired, ready, pods, done) = match m {
                Manifest::Deployment(d) => self.deployment_state(&ns, d, digest).await?,
                Manifest::Fleet(f) => {
                    self.fleet_state(&ns, f.metadata.name.as_deref().unwrap_or(""), digest)
                        .await?
                }
                Manifest::DaemonSet(d) => self.daemon_set_state(&ns, d).await?,
                Manifest::ConfigMap(_) => (0, 0, BTreeMap::new(), true),
            };
            let state = describe_state(desired, ready, &pods);
            if state != last {
                progress(&format!("{object}: {state}"));
                last = state.clone();
            }
            if done {
                return Ok(RolloutReport {
                    object,
                    desired,
                    ready,
                    digest: digest.map(str::to_string),
                    pods_by_digest: pods,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            if start.elapsed() >= timeout {
                return Err(DeployError::Timeout {
                    what: object,
                    seconds: timeout.as_secs(),
                    state: match digest {
                        Some(d) => format!("{state}; waiting for {d}"),
                        None => state,
                    },
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn pods_by_digest(
        &self,
        ns: &str,
        name: &str,
        container: &str,
    ) -> DeployResult<PodsByDigest> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = pods
            .list(&ListParams::default().labels(&format!("{NAME_LABEL}={name}")))
            .await
            .map_err(|e| self.error(&format!("list pods of {ns}/{name}"), e))?;
        let mut out = PodsByDigest::new();
        for pod in list.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let id = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.name == container))
                .map(|c| c.image_id.clone())
                .unwrap_or_default();
            let entry = out.entry(image_digest(&id)).or_default();
            entry.0 += 1;
            entry.1.push(pod.metadata.name.unwrap_or_default());
        }
        Ok(out)
    }

    async fn deployment_state(
        &self,
        ns: &str,
        d: &Deployment,
        digest: Option<&str>,
    ) -> DeployResult<State> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let live = api
            .get(&name)
            .await
            .map_err(|e| self.error(&format!("get Deployment {ns}/{name}"), e))?;
        let desired = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = live.status.unwrap_or_default();
        let observed =
            status.observed_generation.unwrap_or(0) >= live.metadata.generation.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let ready = status.ready_replicas.unwrap_or(0);
        let total = status.replicas.unwrap_or(0);
        let pods = self.pods_by_digest(ns, &name, GAME_CONTAINER).await?;
        let counts: BTreeMap<String, usize> = pods.iter().map(|(k, v)| (k.clone(), v.0)).collect();
        let digests_ok = match digest {
            Some(d) => counts.len() == 1 && counts.get(d).copied() == Some(desired as usize),
            None => true,
        };
        let done = observed
            && updated == desired
            && ready == desired
            && total == desired
            && (digests_ok || desired == 0);
        Ok((desired, ready, counts, done))
    }

    async fn daemon_set_state(&self, ns: &str, d: &DaemonSet) -> DeployResult<State> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), ns);
        let live = api
            .get(&name)
            .await
            .map_err(|e| self.error(&format!("get DaemonSet {ns}/{name}"), e))?;
        let status = live.status.unwrap_or_default();
        let observed =
            status.observed_generation.unwrap_or(0) >= live.metadata.generation.unwrap_or(0);
        let desired = status.desired_number_scheduled;
        let ready = status.number_ready;
        let updated = status.updated_number_scheduled.unwrap_or(0);
        let done = observed && updated == desired && ready == desired;
        Ok((desired, ready, BTreeMap::new(), done))
    }

    async fn fleet_state(&self, ns: &str, name: &str, digest: Option<&str>) -> DeployResult<State> {
        let fleets: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            ns,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("agones.dev", "v1", "Fleet"),
                "fleets",
            ),
        );
        let live = fleets
            .get(name)
            .await
            .map_err(|e| self.error(&format!("get Fleet {ns}/{name}"), e))?;
        let desired = live.data["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
        let servers: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            ns,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("agones.dev", "v1", "GameServer"),
                "gameservers",
            ),
        );
        let list = servers
            .list(&ListParams::default().labels(&format!("agones.dev/fleet={name}")))
            .await
            .map_err(|e| self.error(&format!("list GameServers of Fleet {ns}/{name}"), e))?;
        let pods = self.pods_by_digest(ns, name, GAME_CONTAINER).await?;
        let digest_of_pod: BTreeMap<&str, &str> = pods
            .iter()
            .flat_map(|(d, (_, names))| names.iter().map(move |n| (n.as_str(), d.as_str())))
            .collect();
        let (mut ready_new, mut ready_old, mut allocated) = (0, 0, 0);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for gs in &list.items {
            let gs_name = gs.metadata.name.as_deref().unwrap_or("");
            let state = gs.data["status"]["state"].as_str().unwrap_or("");
            let d = digest_of_pod
                .get(gs_name)
                .copied()
                .unwrap_or("(not running)");
            *counts.entry(d.to_string()).or_default() += 1;
            match state {
                "Ready" if digest.is_none_or(|want| want == d) => ready_new += 1,
                "Ready" => ready_old += 1,
                "Allocated" | "Reserved" => allocated += 1,
                _ => {}
            }
        }
        let ready = ready_new + ready_old + allocated;
        // Allocated GameServers keep their image until their match ends (Agones never
        // replaces them); every Ready one must run the new digest.
        let done = ready_old == 0 && ready_new + allocated >= desired;
        Ok((desired, ready, counts, done))
    }
}

fn describe_state(desired: i32, ready: i32, pods: &BTreeMap<String, usize>) -> String {
    let mut s = format!("{ready}/{desired} ready");
    if !pods.is_empty() {
        let list: Vec<String> = pods.iter().map(|(d, n)| format!("{n} on {d}")).collect();
        s.push_str(&format!("; pods: {}", list.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_give_digests() {
        assert_eq!(
            image_digest("reg.example/studio/game@sha256:abc"),
            "sha256:abc"
        );
        assert_eq!(
            image_digest("docker-pullable://game@sha256:abc"),
            "sha256:abc"
        );
        assert_eq!(image_digest(""), "(not running)");
    }

    #[test]
    fn state_names_each_digest() {
        let pods = BTreeMap::from([("sha256:new".to_string(), 2), ("sha256:old".to_string(), 1)]);
        assert_eq!(
            describe_state(3, 2, &pods),
            "2/3 ready; pods: 2 on sha256:new, 1 on sha256:old"
        );
    }
}
