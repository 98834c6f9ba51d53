//! containerd's `config.toml` for the snapshotter: the settings that turn it on for CRI
//! (and off again), merged into a node's existing config.
//!
//! On (containerd 1.6/1.7, config version 2):
//!
//! ```toml
//! [proxy_plugins.gantry]
//!   type = "snapshot"
//!   address = "/run/gantry/snapshotter.sock"
//! [plugins."io.containerd.grpc.v1.cri".containerd]
//!   snapshotter = "gantry"
//!   disable_snapshot_annotations = false   # the fast path needs CRI's layer labels
//! ```
//!
//! Off: the `proxy_plugins` entry removed and CRI's snapshotter back to `overlayfs`
//! (snapshots made by the plugin stay on disk until `gantry snapshotter`'s root is removed).
//! containerd 2.x moved these CRI settings to `[plugins."io.containerd.cri.v1.images"]`; a
//! version 3 config is refused with a message saying so.

use std::path::Path;

use toml::{Table, Value};

/// The CRI plugin's table in a version 2 config.
const CRI: &str = "io.containerd.grpc.v1.cri";

/// Why a config could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not TOML.
    #[error("containerd config is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    /// A key that should be a table is something else.
    #[error("containerd config: `{0}` is not a table")]
    NotATable(String),
    /// A config version this knows no layout for.
    #[error(
        "containerd config version {0}: only version 2 (containerd 1.6/1.7) is supported; \
         containerd 2.x keeps CRI's snapshotter under [plugins.\"io.containerd.cri.v1.images\"]"
    )]
    Version(i64),
    /// Encoding failed.
    #[error("encoding the containerd config: {0}")]
    Encode(#[from] toml::ser::Error),
}

fn table<'a>(t: &'a mut Table, key: &str) -> Result<&'a mut Table, ConfigError> {
    t.entry(key.to_string())
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| ConfigError::NotATable(key.to_string()))
}

fn parse(text: &str) -> Result<Table, ConfigError> {
    let t: Table = if text.trim().is_empty() {
        Table::new()
    } else {
        text.parse()?
    };
    match t.get("version").and_then(Value::as_integer) {
        None | Some(2) => Ok(t),
        Some(v) => Err(ConfigError::Version(v)),
    }
}

/// `text` (a containerd config, possibly empty) with the snapshotter `name` at the unix
/// socket `address` declared and made CRI's snapshotter, snapshot labels on.
pub fn enable(text: &str, name: &str, address: &Path) -> Result<String, ConfigError> {
    let mut t = parse(text)?;
    t.insert("version".into(), Value::Integer(2));
    let mut plugin = Table::new();
    plugin.insert("type".into(), Value::String("snapshot".into()));
    plugin.insert(
        "address".into(),
        Value::String(address.to_string_lossy().into_owned()),
    );
    table(&mut t, "proxy_plugins")?.insert(name.into(), Value::Table(plugin));
    let cri = table(table(&mut t, "plugins")?, CRI)?;
    let containerd = table(cri, "containerd")?;
    containerd.insert("snapshotter".into(), Value::String(name.into()));
    containerd.insert("disable_snapshot_annotations".into(), Value::Boolean(false));
    Ok(toml::to_string(&t)?)
}

/// `text` with the snapshotter `name` removed and CRI back on `overlayfs`.
pub fn disable(text: &str, name: &str) -> Result<String, ConfigError> {
    let mut t = parse(text)?;
    if let Some(p) = t.get_mut("proxy_plugins").and_then(Value::as_table_mut) {
        p.remove(name);
        if p.is_empty() {
            t.remove("proxy_plugins");
        }
    }
    let cri = t
        .get_mut("plugins")
        .and_then(Value::as_table_mut)
        .and_then(|p| p.get_mut(CRI))
        .and_then(Value::as_table_mut)
        .and_then(|c| c.get_mut("containerd"))
        .and_then(Value::as_table_mut);
    if let Some(c) = cri {
        if c.get("snapshotter").and_then(Value::as_str) == Some(name) {
            c.insert("snapshotter".into(), Value::String("overlayfs".into()));
        }
    }
    Ok(toml::to_string(&t)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"
version = 2
root = "/var/lib/containerd"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
"#;

    fn get<'a>(t: &'a Table, path: &[&str]) -> Option<&'a Value> {
        let (last, rest) = path.split_last()?;
        let mut cur = t;
        for k in rest {
            cur = cur.get(*k)?.as_table()?;
        }
        cur.get(*last)
    }

    #[test]
    fn enable_keeps_the_rest_and_disable_restores_overlayfs() {
        let on = enable(NODE, "gantry", Path::new("/run/gantry/snapshotter.sock")).unwrap();
        let t: Table = on.parse().unwrap();
        let c = ["plugins", CRI, "containerd"];
        assert_eq!(
            get(&t, &[c[0], c[1], c[2], "snapshotter"]).and_then(Value::as_str),
            Some("gantry")
        );
        assert_eq!(
            get(&t, &[c[0], c[1], c[2], "disable_snapshot_annotations"]),
            Some(&Value::Boolean(false))
        );
        assert_eq!(
            get(&t, &[c[0], c[1], c[2], "default_runtime_name"]).and_then(Value::as_str),
            Some("runc")
        );
        assert_eq!(
            get(&t, &["plugins", CRI, "registry", "config_path"]).and_then(Value::as_str),
            Some("/etc/containerd/certs.d")
        );
        assert_eq!(
            get(&t, &["proxy_plugins", "gantry", "address"]).and_then(Value::as_str),
            Some("/run/gantry/snapshotter.sock")
        );
        assert_eq!(
            enable(&on, "gantry", Path::new("/run/gantry/snapshotter.sock")).unwrap(),
            on
        );
        let off: Table = disable(&on, "gantry").unwrap().parse().unwrap();
        assert!(
            off.get("proxy_plugins").is_none(),
            "no empty table left: {off:?}"
        );
        assert_eq!(
            get(&off, &[c[0], c[1], c[2], "snapshotter"]).and_then(Value::as_str),
            Some("overlayfs")
        );
        assert!(enable("", "gantry", Path::new("/s.sock"))
            .unwrap()
            .contains("version = 2"));
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        assert!(matches!(
            enable("version = 3", "g", Path::new("/s")),
            Err(ConfigError::Version(3))
        ));
        assert!(matches!(
            enable("[[oops", "g", Path::new("/s")),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            enable("proxy_plugins = 1", "g", Path::new("/s")),
            Err(ConfigError::NotATable(_))
        ));
    }
}
