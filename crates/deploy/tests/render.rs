//! Rendered objects: each kind read back through k8s-openapi's types (and the typed Agones
//! Fleet) writes the same YAML again, and matches the golden files exactly.
//! Regenerate the golden files after an intended change with
//! `GANTRY_UPDATE_GOLDEN=1 cargo test -p gantry-deploy --test render`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gantry_deploy::agones::Fleet;
use gantry_deploy::render::{self, AgentSpec, FleetOptions, GameSpec, Manifest};
use gantry_deploy::DeployImage;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::ConfigMap;

const DIGEST: &str = "sha256:4f1c2a3b4c5d6e7f808192a3b4c5d6e7f808192a3b4c5d6e7f808192a3b4c5d6";

/// The original sample's Deployment (1 replica, host network, spot node selector, 500m/512Mi,
/// 30 s, CONSOLE_ADDR/GROUP/QUEUENAME) with the image pinned and the supervisor as command.
fn sample_spec() -> GameSpec {
    let image = DeployImage::parse("registry.example.com/studio/multiplayersample:v2")
        .unwrap()
        .pinned(DIGEST.parse().unwrap());
    let mut spec = GameSpec::new("multiplayersample", image);
    spec.namespace = "games".into();
    spec.node_selector = BTreeMap::from([(
        "eks.amazonaws.com/capacityType".to_string(),
        "SPOT".to_string(),
    )]);
    spec.env = vec![
        ("CONSOLE_ADDR".into(), "10.0.0.0/8".into()),
        ("GROUP".into(), "game-servers".into()),
        ("QUEUENAME".into(), "gs-status".into()),
    ];
    spec.port = Some(7777);
    spec.command = [
        "gantry",
        "supervise",
        "--",
        "/BinLinux64.Dedicated/Launcher_Server",
    ]
    .map(String::from)
    .to_vec();
    spec.report_url = Some("https://registry.example.com/gantry/v1/fleet/events".into());
    spec.report_secret = Some("gantry-report".into());
    spec
}

fn agent_spec() -> AgentSpec {
    AgentSpec {
        name: "gantry-agent".into(),
        namespace: "kube-system".into(),
        image: format!("registry.example.com/gantry/gantry@{DIGEST}"),
        pull_policy: "IfNotPresent".into(),
        upstreams: vec![
            "registry.example.com".parse().unwrap(),
            "10.1.2.3:5000=http://10.1.2.3:5000".parse().unwrap(),
        ],
        node_selector: BTreeMap::new(),
        snapshotter: false,
        runtime_class: None,
    }
}

fn golden(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    if std::env::var_os("GANTRY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (GANTRY_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        text,
        want,
        "{} differs (GANTRY_UPDATE_GOLDEN=1 rewrites it after an intended change)",
        path.display()
    );
}

/// YAML → typed → YAML gives the same text, for each document.
fn round_trip(yaml: &str) {
    let docs: Vec<&str> = yaml.split("---\n").collect();
    for doc in docs {
        let value: serde_json::Value = yaml_serde::from_str(doc).unwrap();
        let again = match value["kind"].as_str().unwrap() {
            "Deployment" => {
                yaml_serde::to_string(&yaml_serde::from_str::<Deployment>(doc).unwrap())
            }
            "DaemonSet" => yaml_serde::to_string(&yaml_serde::from_str::<DaemonSet>(doc).unwrap()),
            "ConfigMap" => yaml_serde::to_string(&yaml_serde::from_str::<ConfigMap>(doc).unwrap()),
            "Fleet" => yaml_serde::to_string(&yaml_serde::from_str::<Fleet>(doc).unwrap()),
            other => panic!("unexpected kind {other}"),
        }
        .unwrap();
        assert_eq!(again, doc);
    }
    // And through the crate's own reader (what `gantry deploy apply -f` uses).
    let objects = render::parse_yaml(yaml, "rendered").unwrap();
    assert_eq!(render::to_yaml(&objects).unwrap(), yaml);
}

#[test]
fn deployment_matches_the_original_sample_and_round_trips() {
    let objects = vec![render::deployment(&sample_spec()).unwrap()];
    let yaml = render::to_yaml(&objects).unwrap();
    round_trip(&yaml);
    golden("deployment", &yaml);

    let Manifest::Deployment(d) = &objects[0] else {
        panic!("not a Deployment")
    };
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["eks.amazonaws.com/capacityType"],
        "SPOT"
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(format!("registry.example.com/studio/multiplayersample@{DIGEST}").as_str())
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "500m");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "512Mi");
    let env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    assert_eq!(
        env["GANTRY_IMAGE"].value.as_deref(),
        Some("registry.example.com/studio/multiplayersample:v2")
    );
    assert_eq!(env["GANTRY_IMAGE_DIGEST"].value.as_deref(), Some(DIGEST));
    let field = |n: &str| {
        env[n]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    };
    assert_eq!(field("NODE_NAME"), "spec.nodeName");
    assert_eq!(field("POD_NAME"), "metadata.name");
    let secret = env["GANTRY_REPORT_TOKEN"]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("gantry-report", "token")
    );
    assert_eq!(objects[0].pinned_digest().as_deref(), Some(DIGEST));
}

#[test]
fn fleet_round_trips_with_agones_health() {
    let mut spec = sample_spec();
    spec.replicas = 3;
    let objects = vec![render::fleet(&spec, &FleetOptions::default()).unwrap()];
    let yaml = render::to_yaml(&objects).unwrap();
    round_trip(&yaml);
    golden("fleet", &yaml);
    let Manifest::Fleet(f) = &objects[0] else {
        panic!("not a Fleet")
    };
    assert_eq!(f.api_version, "agones.dev/v1");
    let gs = &f.spec.template.spec;
    assert_eq!(gs.ports[0].port_policy, "Dynamic");
    assert_eq!(gs.ports[0].container_port, Some(7777));
    let health = gs.health.as_ref().unwrap();
    // The supervisor pings every 2 s: a period holds two pings.
    assert!(health.period_seconds.unwrap() >= 2 * 2);
    assert_eq!(health.failure_threshold, Some(3));
    // The same pod as the Deployment, less the host network.
    let Manifest::Deployment(d) = render::deployment(&spec).unwrap() else {
        panic!()
    };
    let mut dep_pod = d.spec.unwrap().template;
    let mut fleet_pod = gs.template.clone();
    // The supervisor listens on the container port and reports Agones' host port.
    let fleet_env = fleet_pod.spec.as_mut().unwrap().containers[0]
        .env
        .as_mut()
        .unwrap();
    let container_port = fleet_env.pop().unwrap();
    assert_eq!(container_port.name, "GANTRY_CONTAINER_PORT");
    assert_eq!(container_port.value.as_deref(), Some("7777"));
    let dp = dep_pod.spec.as_mut().unwrap();
    dp.host_network = None;
    dp.dns_policy = None;
    dp.containers[0].ports = None;
    assert_eq!(dep_pod, fleet_pod);
}

/// Agones refuses a containerPort under Passthrough and needs a hostPort under Static; the
/// supervisor is told a container port only where Agones maps one.
#[test]
fn fleet_port_policies_follow_agones_rules() {
    let spec = sample_spec();
    let game_env = |f: &Fleet| {
        f.spec
            .template
            .spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.name == "GANTRY_CONTAINER_PORT")
            .map(|e| e.value.unwrap_or_default())
            .collect::<Vec<_>>()
    };
    for (policy, container, host, env) in [
        ("Dynamic", Some(7777), None, vec!["7777".to_string()]),
        ("Static", Some(7777), Some(7777), vec!["7777".to_string()]),
        ("Passthrough", None, None, vec![]),
    ] {
        let options = FleetOptions {
            port_policy: policy.into(),
            ..FleetOptions::default()
        };
        let objects = vec![render::fleet(&spec, &options).unwrap()];
        round_trip(&render::to_yaml(&objects).unwrap());
        let Manifest::Fleet(f) = &objects[0] else {
            panic!("not a Fleet")
        };
        let port = &f.spec.template.spec.ports[0];
        assert_eq!(port.container_port, container, "{policy}");
        assert_eq!(port.host_port, host, "{policy}");
        assert_eq!(game_env(f), env, "{policy}");
    }
}

#[test]
fn agent_daemon_set_carries_the_hosts_toml() {
    let objects = render::agent(&agent_spec()).unwrap();
    let yaml = render::to_yaml(&objects).unwrap();
    round_trip(&yaml);
    golden("agent", &yaml);
    let Manifest::ConfigMap(cm) = &objects[0] else {
        panic!("first object is not the ConfigMap")
    };
    let data = cm.data.as_ref().unwrap();
    assert_eq!(
        data["10.1.2.3_5000.hosts.toml"],
        gantry_agent::hosts::hosts_toml("http://10.1.2.3:5000", "http://127.0.0.1:5050")
    );
    assert_eq!(
        data["registry.example.com.hosts.toml"],
        gantry_agent::hosts::hosts_toml("https://registry.example.com", "http://127.0.0.1:5050")
    );
    let Manifest::DaemonSet(ds) = &objects[1] else {
        panic!("second object is not the DaemonSet")
    };
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    let cmd = pod.containers[0].command.as_ref().unwrap().join(" ");
    assert_eq!(
        cmd,
        "gantry agent --addr 127.0.0.1:5050 --root /var/lib/gantry-agent \
         --upstream registry.example.com=https://registry.example.com \
         --upstream 10.1.2.3:5000=http://10.1.2.3:5000"
    );
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let script = &init.command.as_ref().unwrap()[2];
    assert!(
        script.contains("'/etc/containerd/certs.d/10.1.2.3:5000'"),
        "{script}"
    );
}

/// The init container's script, run by a real shell on a temp dir standing in for the
/// node's /etc/containerd/certs.d, writes the hosts.toml files where containerd reads them.
#[test]
fn init_script_installs_hosts_toml() {
    let objects = render::agent(&agent_spec()).unwrap();
    let Manifest::ConfigMap(cm) = &objects[0] else {
        panic!()
    };
    let Manifest::DaemonSet(ds) = &objects[1] else {
        panic!()
    };
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let script = pod.init_containers.as_ref().unwrap()[0]
        .command
        .as_ref()
        .unwrap()[2]
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry-hosts");
    std::fs::create_dir_all(&config).unwrap();
    for (k, v) in cm.data.as_ref().unwrap() {
        std::fs::write(config.join(k), v).unwrap();
    }
    let hosts = dir.path().join("certs.d");
    let script = script
        .replace("/gantry-hosts/", &format!("{}/", config.display()))
        .replace("/etc/containerd/certs.d", &hosts.display().to_string());
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(hosts.join("10.1.2.3:5000/hosts.toml")).unwrap();
    assert!(text.contains("server = \"http://10.1.2.3:5000\""), "{text}");
    assert!(text.contains("[host.\"http://127.0.0.1:5050\"]"), "{text}");
    assert!(hosts.join("registry.example.com/hosts.toml").exists());
}

/// With the snapshotter: a second, privileged container whose root and socket are the
/// node's own paths (containerd reads and dials them there), and the runtime class asked for.
#[test]
fn agent_daemon_set_with_the_snapshotter() {
    let mut spec = agent_spec();
    spec.snapshotter = true;
    spec.runtime_class = Some("runc-overlayfs".into());
    let objects = render::agent(&spec).unwrap();
    let yaml = render::to_yaml(&objects).unwrap();
    round_trip(&yaml);
    golden("agent-snapshotter", &yaml);
    let Manifest::DaemonSet(ds) = &objects[1] else {
        panic!("second object is not the DaemonSet")
    };
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.runtime_class_name.as_deref(), Some("runc-overlayfs"));
    let snap = pod
        .containers
        .iter()
        .find(|c| c.name == "snapshotter")
        .expect("a snapshotter container");
    assert_eq!(
        snap.command.as_ref().unwrap().join(" "),
        format!(
            "gantry snapshotter --agent http://127.0.0.1:5050 --root {} --address {}",
            gantry_snapshotter::DEFAULT_ROOT,
            gantry_snapshotter::DEFAULT_ADDRESS
        )
    );
    assert_eq!(
        snap.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    let volumes = pod.volumes.as_ref().unwrap();
    for m in snap.volume_mounts.as_ref().unwrap() {
        let v = volumes.iter().find(|v| v.name == m.name).unwrap();
        assert_eq!(
            v.host_path.as_ref().map(|h| h.path.as_str()),
            Some(m.mount_path.as_str()),
            "{} is the node's own path",
            m.name
        );
    }
    assert!(gantry_snapshotter::DEFAULT_ADDRESS.starts_with(
        &snap
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "snapshotter-run")
            .unwrap()
            .mount_path
    ));
    // Without --snapshotter: the agent alone, as before.
    let plain = render::agent(&agent_spec()).unwrap();
    let Manifest::DaemonSet(ds) = &plain[1] else {
        panic!()
    };
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(pod.runtime_class_name, None);
}

#[test]
fn bad_values_are_refused_by_name() {
    let mut spec = sample_spec();
    spec.name = "Game_1".into();
    let err = render::deployment(&spec).unwrap_err().to_string();
    assert!(err.contains("--name"), "{err}");
    let mut spec = sample_spec();
    spec.pull_policy = "Sometimes".into();
    let err = render::deployment(&spec).unwrap_err().to_string();
    assert!(err.contains("--pull-policy"), "{err}");
    let mut spec = sample_spec();
    spec.cpu = "lots".into();
    let err = render::deployment(&spec).unwrap_err().to_string();
    assert!(err.contains("--cpu"), "{err}");
    let mut agent = agent_spec();
    agent.upstreams.clear();
    let err = render::agent(&agent).unwrap_err().to_string();
    assert!(err.contains("--upstream"), "{err}");
    let err = render::parse_yaml("kind: Service\napiVersion: v1\n", "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.yaml") && err.contains("Service"), "{err}");
}

#[test]
fn pull_policy_always_is_allowed() {
    let mut spec = sample_spec();
    spec.pull_policy = "Always".into();
    let Manifest::Deployment(d) = render::deployment(&spec).unwrap() else {
        panic!()
    };
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
}
