//! containerd's registry host configuration (`<config_path>/<registry>/hosts.toml`) that
//! makes the agent the mirror of a registry: containerd sends pulls and tag resolution to
//! the agent first and falls back to the registry itself if the agent is down.

use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// The text of `hosts.toml` for `registry` (`host[:port]`), served by `server_url`
/// (`https://host` or `http://host` for a plain-HTTP registry) with `agent_url` as mirror.
pub fn hosts_toml(server_url: &str, agent_url: &str) -> String {
    format!(
        "# Written by `gantry agent install-containerd-config`: pulls go through the Gantry\n\
         # agent (chunk-level updates), falling back to the registry itself.\n\
         server = {}\n\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
        toml_string(server_url),
        toml_string(agent_url)
    )
}

/// Writes `<hosts_dir>/<registry>/hosts.toml` (atomically); returns its path.
pub fn install(
    hosts_dir: &Path,
    registry: &str,
    server_url: &str,
    agent_url: &str,
) -> Result<PathBuf, AgentError> {
    if registry.is_empty() || registry.contains('/') || registry.starts_with('.') {
        return Err(AgentError::Invalid {
            what: format!("registry {registry:?}"),
            message: "expected host[:port]".into(),
        });
    }
    let dir = hosts_dir.join(registry);
    std::fs::create_dir_all(&dir).map_err(AgentError::io(&dir))?;
    let path = dir.join("hosts.toml");
    let tmp = dir.join(".hosts.toml.tmp");
    std::fs::write(&tmp, hosts_toml(server_url, agent_url)).map_err(AgentError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(AgentError::io(&path))?;
    Ok(path)
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_mirror_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = install(
            dir.path(),
            "registry.example.com:5000",
            "https://registry.example.com:5000",
            "http://127.0.0.1:5050",
        )
        .unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("server = \"https://registry.example.com:5000\""));
        assert!(text.contains("[host.\"http://127.0.0.1:5050\"]"));
        assert!(text.contains("capabilities = [\"pull\", \"resolve\"]"));
        assert!(install(dir.path(), "../x", "a", "b").is_err());
    }
}
