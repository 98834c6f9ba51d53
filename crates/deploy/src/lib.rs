//! `gantry deploy`: the Kubernetes side of delivery. Renders a plain game-server Deployment
//! (host network, node selector, requests = limits, as in the original sample) or an Agones
//! Fleet, pinned to a manifest digest, with the environment `gantry supervise` reads, and the
//! node agent as a DaemonSet with containerd's `hosts.toml`; applies them server-side through
//! `kube` and follows the rollout until every pod runs the new digest.

pub mod agones;
pub mod apply;
pub mod error;
pub mod image;
pub mod render;

pub use apply::{Cluster, KubeTarget, RolloutReport};
pub use error::{DeployError, DeployResult};
pub use image::DeployImage;
pub use render::{AgentSpec, FleetOptions, GameSpec, Manifest};

use gantry_client::RegistryClient;

/// Pins `image` to the digest its tag names now (a HEAD on the manifest; an index stays an
/// index, so each node still picks its platform). A reference that carries a digest is
/// returned as is, without a request.
pub async fn pin_image(client: &RegistryClient, image: DeployImage) -> DeployResult<DeployImage> {
    if image.is_pinned() {
        return Ok(image);
    }
    let reference = image.reference.clone();
    let tag = reference.tag_or_latest().to_string();
    let what = format!("{}/{}:{tag}", reference.registry, reference.repository);
    match client.head_manifest(&reference.repository, &tag).await {
        Ok(Some(digest)) => Ok(image.pinned(digest)),
        Ok(None) => Err(DeployError::invalid(
            format!("--digest-pin {what}"),
            "the registry has no such tag",
        )),
        Err(e) => Err(DeployError::invalid(
            format!("--digest-pin {what}"),
            format!("resolving the tag: {e}"),
        )),
    }
}
