//! The Agones `Fleet` (agones.dev/v1) as typed serde structs: only the fields Gantry writes,
//! with the GameServer's pod template as k8s-openapi's `PodTemplateSpec`, so the pod part
//! is checked by the same types as a Deployment's.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// `apiVersion` of Agones' Fleet and GameServer.
pub const AGONES_API_VERSION: &str = "agones.dev/v1";

/// An Agones Fleet: `replicas` GameServers from one template, rolled like a Deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fleet {
    /// `agones.dev/v1`.
    pub api_version: String,
    /// `Fleet`.
    pub kind: String,
    /// Name, namespace, labels, annotations.
    pub metadata: ObjectMeta,
    /// The desired state.
    pub spec: FleetSpec,
}

/// `spec` of a Fleet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetSpec {
    /// Number of GameServers.
    pub replicas: i32,
    /// `Packed` (fill nodes) or `Distributed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<String>,
    /// How a template change replaces GameServers (allocated ones are never touched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<FleetStrategy>,
    /// The GameServer template.
    pub template: GameServerTemplateSpec,
}

/// `spec.strategy` of a Fleet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStrategy {
    /// `RollingUpdate` or `Recreate`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Surge and unavailability of a rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// `spec.strategy.rollingUpdate` (percentages or counts, as strings).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// Extra GameServers during the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<String>,
    /// GameServers that may be missing during the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<String>,
}

/// `spec.template` of a Fleet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameServerTemplateSpec {
    /// Labels and annotations of each GameServer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// The GameServer spec.
    pub spec: GameServerSpec,
}

/// `spec` of a GameServer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameServerSpec {
    /// The container that runs the game (and the supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The ports Agones assigns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<GameServerPort>,
    /// How Agones judges health from the SDK's `/health` pings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The pod.
    pub template: PodTemplateSpec,
}

/// One entry of a GameServer's `ports`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameServerPort {
    /// Port name (the supervisor's `--agones-port-name`, `default` by default).
    pub name: String,
    /// `Dynamic` (Agones picks the host port), `Static` or `Passthrough`.
    pub port_policy: String,
    /// The port inside the container (`Dynamic`, `Static`; Agones refuses it with
    /// `Passthrough`, where the container port is the assigned host port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i32>,
    /// The node's port (`Static` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    /// `UDP`, `TCP` or `TCPUDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `spec.health` of a GameServer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Health checking off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Seconds between Agones' checks for a ping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Missed periods in a row before the GameServer is `Unhealthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    /// Seconds after the container starts before checking begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
}
