//! Where the game server runs: EC2 instance metadata (IMDSv2) when reachable within a short
//! budget, else the hostname and environment; the image digest and node name.

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Lifetime asked for the IMDSv2 session token: it is used only during startup.
const TOKEN_TTL_SECONDS: &str = "60";

/// What the events say about the place the server runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Cloud instance type (`c5.large`), from instance metadata.
    pub instance_type: Option<String>,
    /// Name players connect to.
    pub public_hostname: Option<String>,
    /// Private IPv4 address of the instance.
    pub private_ip: Option<String>,
    /// Cloud region.
    pub region: Option<String>,
    /// This host's (the pod's) hostname.
    pub hostname: Option<String>,
    /// The image reference as deployed (`reg.example/game:v2`).
    pub image: Option<String>,
    /// Digest of the image the server runs.
    pub image_digest: Option<String>,
    /// Kubernetes node name.
    pub node_name: Option<String>,
    /// Whether instance metadata answered.
    pub from_instance_metadata: bool,
}

/// The instance metadata fields read from IMDS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `meta-data/instance-type`.
    pub instance_type: Option<String>,
    /// `meta-data/public-hostname` (absent without a public address).
    pub public_hostname: Option<String>,
    /// `meta-data/local-ipv4`.
    pub local_ipv4: Option<String>,
    /// `meta-data/placement/region`.
    pub region: Option<String>,
}

/// Reads instance metadata at `base` (IMDSv2: `PUT /latest/api/token`, then GETs with the
/// token; IMDSv1 GETs when the token request is answered with an error status). Returns
/// `None` when the service is unreachable, answers nothing useful, or `budget` runs out.
pub async fn instance_metadata(base: &str, budget: Duration) -> Option<InstanceMetadata> {
    tokio::time::timeout(budget, fetch_instance_metadata(base, budget))
        .await
        .ok()
        .flatten()
}

async fn fetch_instance_metadata(base: &str, budget: Duration) -> Option<InstanceMetadata> {
    let base = base.trim_end_matches('/');
    let client = crate::dns::client_builder()
        .no_proxy()
        .connect_timeout(budget)
        .timeout(budget)
        .build()
        .ok()?;
    let token = match client
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
        .send()
        .await
    {
        Ok(resp) if resp.status().is_success() => Some(resp.text().await.ok()?.trim().to_string()),
        // Answered, but no token: IMDSv1 only.
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("instance metadata at {base} unreachable: {e}");
            return None;
        }
    };
    let token = token.as_deref();
    let (instance_type, public_hostname, local_ipv4, region) = tokio::join!(
        get(&client, base, token, "instance-type"),
        get(&client, base, token, "public-hostname"),
        get(&client, base, token, "local-ipv4"),
        get(&client, base, token, "placement/region"),
    );
    let md = InstanceMetadata {
        instance_type,
        public_hostname,
        local_ipv4,
        region,
    };
    (md != InstanceMetadata::default()).then_some(md)
}

async fn get(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    path: &str,
) -> Option<String> {
    let mut req = client.get(format!("{base}/latest/meta-data/{path}"));
    if let Some(t) = token {
        req = req.header("X-aws-ec2-metadata-token", t);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The host's name (`gethostname`), if it has one.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it (or
    // truncates), and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Gathers the metadata for `config`: instance metadata within its budget, then overrides
/// and fallbacks. `agones_address` is the GameServer's address when Agones is in use.
pub async fn gather(config: &Config, agones_address: Option<String>) -> Metadata {
    let imds = match &config.metadata_url {
        Some(url) => instance_metadata(url, config.metadata_timeout).await,
        None => None,
    };
    let from_instance_metadata = imds.is_some();
    let imds = imds.unwrap_or_default();
    let hostname = hostname();
    Metadata {
        instance_type: imds.instance_type,
        public_hostname: config
            .public_hostname
            .clone()
            .or(agones_address)
            .or(imds.public_hostname)
            .or_else(|| hostname.clone()),
        private_ip: imds.local_ipv4,
        region: config
            .region
            .clone()
            .or(imds.region)
            .or_else(|| env_nonempty("AWS_REGION"))
            .or_else(|| env_nonempty("AWS_DEFAULT_REGION")),
        hostname,
        image: env_nonempty(&config.image_env),
        image_digest: env_nonempty(&config.image_digest_env),
        node_name: config
            .node_name
            .clone()
            .or_else(|| env_nonempty("NODE_NAME")),
        from_instance_metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_matches_the_kernel() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname().as_deref(), Some(kernel.trim()));
    }
}
