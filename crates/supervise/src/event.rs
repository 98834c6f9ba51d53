//! Status events: one JSON object per event, the original sample wrapper's fields plus image
//! digest, node name and a sequence number.

use crate::metadata::Metadata;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::SystemTime;

/// Lifecycle state of the game server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The supervisor picked the port and is starting the game.
    Starting,
    /// The health probe passed (first time, or again after `unhealthy`).
    Ready,
    /// The probe failed the configured number of times in a row after `ready`.
    Unhealthy,
    /// SIGTERM or SIGINT arrived and was forwarded to the game.
    Terminating,
    /// The game exited; `exit_code` says how.
    Exited,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Starting => "starting",
            Status::Ready => "ready",
            Status::Unhealthy => "unhealthy",
            Status::Terminating => "terminating",
            Status::Exited => "exited",
        })
    }
}

/// One status event, as written to stdout and POSTed to report endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The state entered.
    pub status: Status,
    /// Kind of server (`gs`, as in the original sample's wrapper).
    #[serde(rename = "type")]
    pub kind: String,
    /// Name players connect to.
    pub public_hostname: Option<String>,
    /// Port players connect to.
    pub public_port: u16,
    /// Cloud region.
    pub region: Option<String>,
    /// Cloud instance type.
    pub instance_type: Option<String>,
    /// Private IPv4 of the instance.
    pub private_ip: Option<String>,
    /// The pod's hostname (identifies the server).
    pub hostname: Option<String>,
    /// The image reference as deployed (`reg.example/game:v2`), from `GANTRY_IMAGE`: tells a
    /// fleet view which repository and tag the server belongs to.
    #[serde(default)]
    pub image: Option<String>,
    /// Digest of the running image.
    pub image_digest: Option<String>,
    /// Kubernetes node name.
    pub node_name: Option<String>,
    /// When, RFC 3339 in UTC with milliseconds.
    pub datetime: String,
    /// Position of this event in the supervisor's run (0 = `starting`): orders events that
    /// an HTTP endpoint received out of order after retries.
    pub seq: u64,
    /// `exited`: the game's exit code, 128 + signal number when a signal killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `exited`: the signal that killed the game, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `unhealthy`: the last probe failure; `exited` before start: why it did not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event {
    /// An event for `status` at the current time.
    pub fn new(status: Status, kind: &str, port: u16, md: &Metadata, seq: u64) -> Self {
        Event {
            status,
            kind: kind.to_string(),
            public_hostname: md.public_hostname.clone(),
            public_port: port,
            region: md.region.clone(),
            instance_type: md.instance_type.clone(),
            private_ip: md.private_ip.clone(),
            hostname: md.hostname.clone(),
            image: md.image.clone(),
            image_digest: md.image_digest.clone(),
            node_name: md.node_name.clone(),
            datetime: now_rfc3339(),
            seq,
            exit_code: None,
            signal: None,
            reason: None,
        }
    }
}

/// The current time as RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_has_the_original_sample_fields() {
        let md = Metadata {
            instance_type: Some("c5.large".into()),
            public_hostname: Some("ec2-203-0-113-7.compute.amazonaws.com".into()),
            region: Some("us-west-2".into()),
            ..Metadata::default()
        };
        let mut e = Event::new(Status::Exited, "gs", 7777, &md, 4);
        e.exit_code = Some(0);
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        for field in [
            "public_hostname",
            "public_port",
            "region",
            "status",
            "type",
            "instance_type",
            "datetime",
            "image",
            "image_digest",
            "node_name",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {v}");
        }
        assert_eq!(v["status"], "exited");
        assert_eq!(v["type"], "gs");
        assert_eq!(v["public_port"], 7777);
        assert_eq!(v["exit_code"], 0);
        assert!(v.get("signal").is_none());
        let dt = v["datetime"].as_str().unwrap();
        assert!(dt.ends_with('Z') && dt.len() == 24, "{dt}");
        humantime::parse_rfc3339(dt).unwrap();
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
