//! `gantry supervise` with real child processes: ports, metadata, events and sinks, Agones,
//! health, signals, reaping and exit codes. The supervisor runs as its own process (PID 1
//! stand-in: a child subreaper). Cloud metadata, the Agones SDK and report endpoints are
//! in-test fakes (named so): they cannot run here.

mod common;

use common::{
    config, parse_event, proc_stat_field, script, zombie_children, Blackhole, FakeHttp, Supervised,
    HELPER,
};
use gantry_supervise::{HealthCheck, PortSpec, Protocol, Status};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}", gantry_test_support::free_port())
}

#[test]
fn free_port_is_exported_and_substituted_into_args() {
    let cfg = config(&[
        "/bin/sh",
        "-c",
        r#"echo "game arg=$1 env=$SERVER_PORT""#,
        "sh",
        "+sv_port=${SERVER_PORT}",
    ]);
    let mut sup = Supervised::start(&cfg, &[]);
    assert_eq!(sup.exit_code(T), 0, "{}", sup.dump());
    let events = sup.events();
    assert_eq!(
        events.iter().map(|e| e.status).collect::<Vec<_>>(),
        [Status::Starting, Status::Ready, Status::Exited],
        "{}",
        sup.dump()
    );
    let port = events[0].public_port;
    assert_ne!(port, 0);
    assert!(events.iter().all(|e| e.public_port == port));
    // The game's own line passes through stdout unchanged.
    let expected = format!("game arg=+sv_port={port} env={port}");
    assert!(sup.lines().contains(&expected), "{}", sup.dump());
    assert_eq!(events[2].exit_code, Some(0));
}

#[test]
fn fixed_port_under_a_custom_variable_name() {
    let port = gantry_test_support::free_port();
    let mut cfg = config(&[
        "/bin/sh",
        "-c",
        r#"echo "args=$1,$2 env=$GAME_PORT""#,
        "sh",
        "-port=${GAME_PORT}",
        "${SERVER_PORT}",
    ]);
    cfg.port = PortSpec::Fixed(port);
    cfg.port_env = "GAME_PORT".into();
    let mut sup = Supervised::start(&cfg, &[]);
    assert_eq!(sup.exit_code(T), 0, "{}", sup.dump());
    let expected = format!("args=-port={port},${{SERVER_PORT}} env={port}");
    assert!(sup.lines().contains(&expected), "{}", sup.dump());
    assert_eq!(sup.events()[0].public_port, port);
}

#[test]
fn metadata_from_fake_imdsv2_uses_the_token_flow() {
    let imds = FakeHttp::start(|req, _| {
        if req.method == "PUT" && req.path == "/latest/api/token" {
            return match req.header("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(_) => (200, "tok-123".into()),
                None => (400, "missing TTL".into()),
            };
        }
        if req.header("x-aws-ec2-metadata-token") != Some("tok-123") {
            return (401, String::new());
        }
        match req.path.as_str() {
            "/latest/meta-data/instance-type" => (200, "c5.xlarge".into()),
            "/latest/meta-data/public-hostname" => (
                200,
                "ec2-203-0-113-7.eu-west-1.compute.amazonaws.com".into(),
            ),
            "/latest/meta-data/local-ipv4" => (200, "10.1.2.3".into()),
            "/latest/meta-data/placement/region" => (200, "eu-west-1".into()),
            _ => (404, String::new()),
        }
    });
    let mut cfg = config(&["/bin/sh", "-c", "exit 0"]);
    cfg.metadata_url = Some(imds.url());
    let mut sup = Supervised::start(
        &cfg,
        &[
            ("NODE_NAME", "node-a"),
            ("GANTRY_IMAGE_DIGEST", "sha256:abcd"),
            ("GANTRY_IMAGE", "reg.example/game:v2"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    assert_eq!(sup.exit_code(T), 0, "{}", sup.dump());
    let e = &sup.events()[0];
    assert_eq!(e.status, Status::Starting);
    assert_eq!(e.instance_type.as_deref(), Some("c5.xlarge"));
    assert_eq!(
        e.public_hostname.as_deref(),
        Some("ec2-203-0-113-7.eu-west-1.compute.amazonaws.com")
    );
    assert_eq!(e.private_ip.as_deref(), Some("10.1.2.3"));
    // Instance metadata wins over the environment.
    assert_eq!(e.region.as_deref(), Some("eu-west-1"));
    assert_eq!(e.node_name.as_deref(), Some("node-a"));
    assert_eq!(e.image_digest.as_deref(), Some("sha256:abcd"));
    assert_eq!(e.image.as_deref(), Some("reg.example/game:v2"));
    assert_eq!(e.kind, "gs");

    let reqs = imds.requests();
    assert_eq!(reqs[0].method, "PUT", "{reqs:?}");
    assert_eq!(reqs.len(), 5, "one token request and four reads: {reqs:?}");
    assert!(reqs[1..]
        .iter()
        .all(|r| r.method == "GET" && r.header("x-aws-ec2-metadata-token") == Some("tok-123")));
}

#[test]
fn metadata_falls_back_to_hostname_and_env_when_unreachable() {
    let mut cfg = config(&["/bin/sh", "-c", "exit 0"]);
    cfg.metadata_url = Some(closed_port_url());
    let mut sup = Supervised::start(&cfg, &[("AWS_REGION", "ap-south-1")]);
    assert_eq!(sup.exit_code(T), 0, "{}", sup.dump());
    let e = &sup.events()[0];
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(e.instance_type, None);
    assert_eq!(e.private_ip, None);
    assert_eq!(e.public_hostname.as_deref(), Some(hostname.trim()));
    assert_eq!(e.hostname.as_deref(), Some(hostname.trim()));
    assert_eq!(e.region.as_deref(), Some("ap-south-1"));
    assert_eq!(e.node_name, None);
    assert_eq!(e.image_digest, None);
    assert_eq!(e.image, None);
}

#[test]
fn hanging_fake_metadata_service_delays_start_by_at_most_its_budget() {
    let hole = Blackhole::start();
    let mut cfg = config(&["/bin/sh", "-c", "exit 0"]);
    cfg.metadata_url = Some(hole.url());
    cfg.metadata_timeout = Duration::from_millis(300);
    let mut sup = Supervised::start(&cfg, &[]);
    sup.wait_event(0, Status::Starting, T);
    let to_start = sup.started.elapsed();
    assert_eq!(sup.exit_code(T), 0, "{}", sup.dump());
    assert!(
        !hole.accepted.lock().unwrap().is_empty(),
        "the metadata service was never contacted"
    );
    assert!(
        to_start >= Duration::from_millis(280) && to_start < Duration::from_millis(1500),
        "starting came {to_start:?} after launch (budget 300ms)"
    );
    assert_eq!(sup.events()[0].instance_type, None);
}

#[test]
fn events_go_to_an_http_sink_with_retries_and_bearer_token() {
    // The first POST fails with 503: the sink must retry it.
    let sink = FakeHttp::start(|_, i| {
        if i == 0 {
            (503, "busy".into())
        } else {
            (204, String::new())
        }
    });
    let dir = gantry_test_support::tempdir();
    let game = script(
        dir.path(),
        "game.sh",
        &format!(
            "echo \"token=${{GANTRY_REPORT_TOKEN:-unset}}\"\nexec {HELPER} tcp \"$SERVER_PORT\""
        ),
    );
    let mut cfg = config(&[game.to_str().unwrap()]);
    cfg.health = Some(HealthCheck::Tcp);
    cfg.report_urls = vec![format!("{}/events", sink.url())];
    let mut sup = Supervised::start(&cfg, &[("GANTRY_REPORT_TOKEN", "s3cret")]);
    sup.wait_event(0, Status::Ready, T);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 128 + libc::SIGTERM, "{}", sup.dump());
    assert!(
        sup.lines().contains(&"token=unset".to_string()),
        "the token leaked to the game\n{}",
        sup.dump()
    );

    let delivered: Vec<_> = sink
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(delivered.len() >= 5, "{delivered:?}");
    assert!(delivered.iter().all(|r| r.path == "/events"
        && r.header("authorization") == Some("Bearer s3cret")
        && r.header("content-type") == Some("application/json")));
    // Request 0 was refused; every event arrives once after it, in order.
    let events: Vec<_> = delivered[1..]
        .iter()
        .map(|r| parse_event(&r.body).unwrap_or_else(|| panic!("not an event: {}", r.body)))
        .collect();
    assert_eq!(
        events.iter().map(|e| e.status).collect::<Vec<_>>(),
        [
            Status::Starting,
            Status::Ready,
            Status::Terminating,
            Status::Exited
        ]
    );
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(events[3].exit_code, Some(143));
    assert_eq!(events[3].signal, Some(libc::SIGTERM));
    // The same events as on stdout.
    assert_eq!(events, sup.events());
}

#[test]
fn game_runs_and_exits_promptly_when_sinks_are_down_or_hanging() {
    let hole = Blackhole::start();
    let mut cfg = config(&["/bin/sh", "-c", "echo game-running; sleep 0.3; exit 4"]);
    cfg.report_urls = vec![closed_port_url(), hole.url()];
    cfg.report_flush_timeout = Duration::from_secs(1);
    let mut sup = Supervised::start(&cfg, &[]);
    let running = sup.wait_line(0, T, |l| l == "game-running");
    let to_game = sup.started.elapsed();
    assert_eq!(sup.exit_code(T), 4, "{}", sup.dump());
    let total = sup.started.elapsed();
    assert!(
        to_game < Duration::from_millis(1000),
        "the game started after {to_game:?}"
    );
    // 0.3 s of game + at most the 1 s flush timeout, with slack for a loaded machine.
    assert!(
        total < Duration::from_secs(4),
        "the supervisor took {total:?}"
    );
    assert!(running > 0);
    assert_eq!(
        sup.statuses(),
        [Status::Starting, Status::Ready, Status::Exited],
        "{}",
        sup.dump()
    );
    assert_eq!(sup.events()[2].exit_code, Some(4));
    assert!(
        !hole.accepted.lock().unwrap().is_empty(),
        "the hanging sink was never tried"
    );
}

#[test]
fn fake_agones_sdk_passthrough_port_is_listened_on_and_gets_ready_health_and_shutdown() {
    let game_port = gantry_test_support::free_port();
    let sdk = FakeHttp::start(
        move |req, _| match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/gameserver") => (
                200,
                format!(
                    r#"{{"object_meta":{{"name":"gs-1"}},"status":{{"state":"Scheduled","address":"203.0.113.9","ports":[{{"name":"default","port":{game_port}}}]}}}}"#
                ),
            ),
            ("POST", "/ready" | "/health" | "/shutdown") => (200, "{}".into()),
            _ => (404, String::new()),
        },
    );
    let mut cfg = config(&[HELPER, "tcp", "${SERVER_PORT}", "--delay-ms", "300"]);
    cfg.port = PortSpec::Auto;
    cfg.health = Some(HealthCheck::Tcp);
    let sdk_port = sdk.addr.port().to_string();
    let mut sup = Supervised::start(&cfg, &[("AGONES_SDK_HTTP_PORT", &sdk_port)]);
    let listening = sup.wait_line(0, T, |l| l == format!("listening tcp {game_port}"));
    let ready = sup.wait_event(0, Status::Ready, T);
    assert!(listening < ready, "{}", sup.dump());
    std::thread::sleep(Duration::from_millis(600));
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 143, "{}", sup.dump());

    let e = sup.event_at(ready);
    assert_eq!(e.public_port, game_port);
    assert_eq!(e.public_hostname.as_deref(), Some("203.0.113.9"));
    let calls: Vec<String> = sdk
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(calls[0], "GET /gameserver", "{calls:?}");
    let ready_at = calls
        .iter()
        .position(|c| c == "POST /ready")
        .expect("POST /ready");
    assert_eq!(
        calls.iter().filter(|c| *c == "POST /ready").count(),
        1,
        "{calls:?}"
    );
    assert!(
        calls[..ready_at].iter().all(|c| c != "POST /health"),
        "health pings before ready: {calls:?}"
    );
    let pings = calls.iter().filter(|c| *c == "POST /health").count();
    assert!(
        pings >= 3,
        "{pings} health pings in 600 ms at 100 ms: {calls:?}"
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some("POST /shutdown"),
        "{calls:?}"
    );
}

/// A fake Agones SDK whose GameServer got host port `host_port` under the name `default`.
fn fake_sdk_with_host_port(host_port: u16) -> FakeHttp {
    FakeHttp::start(
        move |req, _| match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/gameserver") => (
                200,
                format!(
                    r#"{{"object_meta":{{"name":"gs-2"}},"spec":{{"health":{{}}}},"status":{{"state":"Scheduled","address":"198.51.100.7","ports":[{{"name":"default","port":{host_port}}}]}}}}"#
                ),
            ),
            ("POST", "/ready" | "/health" | "/shutdown") => (200, "{}".into()),
            _ => (404, String::new()),
        },
    )
}

#[test]
fn dynamic_port_policy_game_listens_on_the_container_port_and_reports_the_host_port() {
    // Under Agones' Dynamic policy the node's host port (here 7654, never bound) is mapped to
    // the container port: the game must listen on the container port, players get the host one.
    let container_port = gantry_test_support::free_port();
    let host_port = 7654;
    let sdk = fake_sdk_with_host_port(host_port);
    let dir = gantry_test_support::tempdir();
    let game = script(
        dir.path(),
        "game.sh",
        &format!(
            "echo \"args=$1 listen=$SERVER_PORT public=$GANTRY_PUBLIC_PORT\"\nexec {HELPER} tcp \"$SERVER_PORT\"\n"
        ),
    );
    let mut cfg = config(&[game.to_str().unwrap(), "+public=${GANTRY_PUBLIC_PORT}"]);
    cfg.port = PortSpec::Auto;
    cfg.container_port = Some(container_port);
    cfg.health = Some(HealthCheck::Tcp);
    let sdk_port = sdk.addr.port().to_string();
    let mut sup = Supervised::start(&cfg, &[("AGONES_SDK_HTTP_PORT", &sdk_port)]);
    let ready = sup.wait_event(0, Status::Ready, T);
    let expected = format!("args=+public={host_port} listen={container_port} public={host_port}");
    assert!(sup.lines().contains(&expected), "{}", sup.dump());
    assert!(
        sup.lines()
            .contains(&format!("listening tcp {container_port}")),
        "{}",
        sup.dump()
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 143, "{}", sup.dump());
    let e = sup.event_at(ready);
    assert_eq!(e.public_port, host_port, "{}", sup.dump());
    assert_eq!(e.public_hostname.as_deref(), Some("198.51.100.7"));
    assert!(sup.events().iter().all(|e| e.public_port == host_port));
    let calls: Vec<String> = sdk
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(calls.iter().any(|c| c == "POST /ready"), "{calls:?}");
}

#[test]
fn fixed_port_under_agones_is_listened_on_and_the_assigned_port_is_public() {
    let game_port = gantry_test_support::free_port();
    let host_port = 7100;
    let sdk = fake_sdk_with_host_port(host_port);
    let mut cfg = config(&[HELPER, "tcp", "${SERVER_PORT}"]);
    cfg.port = PortSpec::Fixed(game_port);
    cfg.health = Some(HealthCheck::Tcp);
    cfg.agones_url = Some(sdk.url());
    let mut sup = Supervised::start(&cfg, &[]);
    let ready = sup.wait_event(0, Status::Ready, T);
    assert!(
        sup.lines().contains(&format!("listening tcp {game_port}")),
        "{}",
        sup.dump()
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 143, "{}", sup.dump());
    assert_eq!(sup.event_at(ready).public_port, host_port);
}

#[test]
fn ready_only_after_the_tcp_probe_passes() {
    let mut cfg = config(&[HELPER, "tcp", "${SERVER_PORT}", "--delay-ms", "700"]);
    cfg.health = Some(HealthCheck::Tcp);
    cfg.health_interval = Duration::from_millis(50);
    let mut sup = Supervised::start(&cfg, &[]);
    let ready = sup.wait_event(0, Status::Ready, T);
    let listening = sup.wait_line(0, T, |l| l.starts_with("listening tcp "));
    assert!(
        listening < ready,
        "ready before the game listened\n{}",
        sup.dump()
    );
    assert!(
        sup.started.elapsed() >= Duration::from_millis(700),
        "ready too early"
    );
    assert_eq!(sup.statuses(), [Status::Starting, Status::Ready]);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 143, "{}", sup.dump());
}

#[test]
fn udp_game_on_a_free_udp_port_is_ready_after_the_default_udp_probe() {
    let mut cfg = config(&[HELPER, "udp", "${SERVER_PORT}", "--delay-ms", "500"]);
    cfg.protocol = Protocol::Udp;
    // No probe configured: the protocol's (UDP) applies.
    cfg.health = None;
    cfg.health_interval = Duration::from_millis(50);
    cfg.health_timeout = Duration::from_millis(200);
    let mut sup = Supervised::start(&cfg, &[]);
    let ready = sup.wait_event(0, Status::Ready, T);
    let port = sup.event_at(ready).public_port;
    let listening = sup.wait_line(0, T, |l| l == format!("listening udp {port}"));
    assert!(
        listening < ready,
        "ready before the game bound its UDP port\n{}",
        sup.dump()
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 143, "{}", sup.dump());
}

#[test]
fn unhealthy_after_consecutive_failures_and_ready_again_on_recovery() {
    let mut cfg = config(&[
        HELPER,
        "tcp",
        "${SERVER_PORT}",
        "--up-ms",
        "800",
        "--down-ms",
        "1200",
    ]);
    cfg.health = Some(HealthCheck::Tcp);
    cfg.health_interval = Duration::from_millis(100);
    cfg.health_failures = 3;
    let mut sup = Supervised::start(&cfg, &[]);
    let listen1 = sup.wait_line(0, T, |l| l.starts_with("listening tcp"));
    let ready1 = sup.wait_event(0, Status::Ready, T);
    let closed = sup.wait_line(listen1, T, |l| l.starts_with("closed tcp"));
    let unhealthy = sup.wait_event(0, Status::Unhealthy, T);
    let listen2 = sup.wait_line(closed, T, |l| l.starts_with("listening tcp"));
    let ready2 = sup.wait_event(ready1 + 1, Status::Ready, T);
    assert!(
        listen1 < ready1
            && ready1 < closed
            && closed < unhealthy
            && unhealthy < listen2
            && listen2 < ready2,
        "{}",
        sup.dump()
    );
    let reason = sup.event_at(unhealthy).reason.unwrap_or_default();
    assert!(reason.contains("refused"), "{reason}");
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 143, "{}", sup.dump());
    assert_eq!(
        &sup.statuses()[..4],
        [
            Status::Starting,
            Status::Ready,
            Status::Unhealthy,
            Status::Ready
        ]
    );
}

#[test]
fn command_probe_sees_the_port_and_gates_ready() {
    let dir = gantry_test_support::tempdir();
    let flag = dir.path().join("loaded");
    let game = script(
        dir.path(),
        "game.sh",
        &format!(
            "sleep 0.5\necho assets-loaded\ntouch {}\nexec sleep 30",
            flag.display()
        ),
    );
    let mut cfg = config(&[game.to_str().unwrap()]);
    cfg.health = Some(HealthCheck::Cmd(format!(
        "test -f {} && test -n \"$SERVER_PORT\"",
        flag.display()
    )));
    let mut sup = Supervised::start(&cfg, &[]);
    let ready = sup.wait_event(0, Status::Ready, T);
    let loaded = sup.wait_line(0, T, |l| l == "assets-loaded");
    assert!(loaded < ready, "{}", sup.dump());
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 143, "{}", sup.dump());
}

#[test]
fn sigterm_reaches_child_and_grandchild_in_their_own_process_group() {
    let dir = gantry_test_support::tempdir();
    let marks = dir.path().join("marks");
    let m = marks.display();
    script(
        dir.path(),
        "grandchild.sh",
        &format!("trap 'echo grandchild-term >> {m}; exit 0' TERM\necho grandchild-up >> {m}\nwhile :; do sleep 0.05; done"),
    );
    let game = script(
        dir.path(),
        "game.sh",
        &format!(
            "echo $$ > {d}/game.pid\n{d}/grandchild.sh &\nGC=$!\ntrap 'echo child-term >> {m}; wait $GC; exit 7' TERM\necho child-up\nwhile :; do sleep 0.05; done",
            d = dir.path().display()
        ),
    );
    let mut cfg = config(&[game.to_str().unwrap()]);
    cfg.grace_period = Duration::from_secs(10);
    let mut sup = Supervised::start(&cfg, &[]);
    sup.wait_line(0, T, |l| l == "child-up");
    let deadline = Instant::now() + T;
    while !std::fs::read_to_string(&marks)
        .unwrap_or_default()
        .contains("grandchild-up")
    {
        assert!(Instant::now() < deadline, "grandchild did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let game_pid: i32 = std::fs::read_to_string(dir.path().join("game.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The game leads its own process group, apart from the supervisor's.
    assert_eq!(proc_stat_field(game_pid, 5), Some(game_pid.to_string()));
    assert_ne!(proc_stat_field(sup.pid(), 5), Some(game_pid.to_string()));

    sup.signal(libc::SIGTERM);
    let sent = Instant::now();
    assert_eq!(sup.exit_code(T), 7, "{}", sup.dump());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "waited for the grace period"
    );
    let marks = std::fs::read_to_string(&marks).unwrap();
    assert!(marks.contains("child-term"), "{marks}");
    assert!(marks.contains("grandchild-term"), "{marks}");
    let events = sup.events();
    assert_eq!(
        events.iter().map(|e| e.status).collect::<Vec<_>>(),
        [
            Status::Starting,
            Status::Ready,
            Status::Terminating,
            Status::Exited
        ]
    );
    assert_eq!(events[3].exit_code, Some(7));
}

#[test]
fn game_ignoring_sigterm_is_killed_after_the_grace_period() {
    let mut cfg = config(&[
        "/bin/sh",
        "-c",
        "trap '' TERM; echo stubborn; while :; do sleep 0.05; done",
    ]);
    cfg.grace_period = Duration::from_millis(700);
    let mut sup = Supervised::start(&cfg, &[]);
    sup.wait_line(0, T, |l| l == "stubborn");
    sup.signal(libc::SIGTERM);
    let sent = Instant::now();
    assert_eq!(sup.exit_code(T), 128 + libc::SIGKILL, "{}", sup.dump());
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(4),
        "exit {took:?} after SIGTERM, grace 700ms"
    );
    let exited = sup.events().pop().unwrap();
    assert_eq!(exited.status, Status::Exited);
    assert_eq!(exited.exit_code, Some(137));
    assert_eq!(exited.signal, Some(libc::SIGKILL));
}

#[test]
fn orphaned_grandchildren_are_reaped_no_zombies_left() {
    let dir = gantry_test_support::tempdir();
    let d = dir.path().display();
    // Each subshell starts a background sleep and exits: the sleeps are orphans, re-parented
    // to the supervisor (subreaper here, PID 1 in a container); when they exit someone must
    // reap them. One long-lived orphan shows the re-parenting happened.
    let game = script(
        dir.path(),
        "game.sh",
        &format!(
            "for i in 1 2 3 4 5 6; do ( sleep 0.1 & ) ; done\n( sleep 30 & echo $! > {d}/long.pid )\necho spawned\nexec sleep 30"
        ),
    );
    let cfg = config(&[game.to_str().unwrap()]);
    let mut sup = Supervised::start(&cfg, &[]);
    sup.wait_line(0, T, |l| l == "spawned");
    std::thread::sleep(Duration::from_millis(800));
    let long_pid: i32 = std::fs::read_to_string(dir.path().join("long.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        proc_stat_field(long_pid, 4),
        Some(sup.pid().to_string()),
        "orphans are not re-parented to the supervisor"
    );
    let zombies = zombie_children(sup.pid());
    assert!(
        zombies.is_empty(),
        "zombies under the supervisor: {zombies:?}"
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.exit_code(T), 143, "{}", sup.dump());
    // The long-lived orphan was in the game's group: it is gone too.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        proc_stat_field(long_pid, 3).is_none_or(|s| s == "Z"),
        "orphan {long_pid} outlived the game"
    );
}

#[test]
fn exit_code_propagates_for_normal_exit_and_signal_death() {
    let mut sup = Supervised::start(&config(&["/bin/sh", "-c", "exit 3"]), &[]);
    assert_eq!(sup.exit_code(T), 3);
    let exited = sup.events().pop().unwrap();
    assert_eq!(
        (exited.status, exited.exit_code, exited.signal),
        (Status::Exited, Some(3), None)
    );

    let mut sup = Supervised::start(&config(&["/bin/sh", "-c", "kill -KILL $$"]), &[]);
    assert_eq!(sup.exit_code(T), 137);
    let exited = sup.events().pop().unwrap();
    assert_eq!(exited.exit_code, Some(137));
    assert_eq!(exited.signal, Some(libc::SIGKILL));
}

#[test]
fn missing_program_exits_127_with_an_exited_event() {
    let mut sup = Supervised::start(&config(&["/nonexistent/game-server"]), &[]);
    assert_eq!(sup.exit_code(T), 127);
    let events = sup.events();
    assert_eq!(
        events.iter().map(|e| e.status).collect::<Vec<_>>(),
        [Status::Starting, Status::Exited]
    );
    assert_eq!(events[1].exit_code, Some(127));
    assert!(events[1]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("/nonexistent/game-server"));
}

#[test]
fn sighup_and_sigquit_are_forwarded_without_terminating() {
    let mut cfg = config(&[
        "/bin/sh",
        "-c",
        "trap 'echo got-hup' HUP; trap 'echo got-quit' QUIT; echo up; while :; do sleep 0.05; done",
    ]);
    cfg.grace_period = Duration::from_secs(10);
    let mut sup = Supervised::start(&cfg, &[]);
    sup.wait_line(0, T, |l| l == "up");
    sup.signal(libc::SIGHUP);
    sup.wait_line(0, T, |l| l == "got-hup");
    sup.signal(libc::SIGQUIT);
    sup.wait_line(0, T, |l| l == "got-quit");
    assert_eq!(sup.statuses(), [Status::Starting, Status::Ready]);
    sup.signal(libc::SIGINT);
    // sh exits on SIGINT by its default action.
    assert_eq!(sup.exit_code(T), 128 + libc::SIGINT, "{}", sup.dump());
    assert_eq!(
        sup.statuses(),
        [
            Status::Starting,
            Status::Ready,
            Status::Terminating,
            Status::Exited
        ]
    );
}

/// The real `gantry-supervise` binary (what images run), with only `env` in its environment.
fn supervisor_binary(env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gantry-supervise"));
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("GANTRY_TEST_MARKER", "visible");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args([
        "--port",
        "free",
        "--protocol",
        "tcp",
        "--health",
        "none",
        "--metadata-url",
        "none",
        "--report-interval",
        "0s",
    ]);
    cmd
}

/// A game that copies its parent's (the supervisor's) /proc environ and cmdline to `out`.
fn proc_snooping_game(dir: &std::path::Path, out: &std::path::Path) -> std::path::PathBuf {
    script(
        dir,
        "snoop.sh",
        &format!(
            "cat /proc/$PPID/environ > {o}/environ 2>/dev/null; echo $? > {o}/environ.rc\n\
             cat /proc/$PPID/cmdline > {o}/cmdline; echo $? > {o}/cmdline.rc\n\
             echo \"game env: token=${{GANTRY_REPORT_TOKEN:-unset}} file=${{GANTRY_REPORT_TOKEN_FILE:-unset}}\"",
            o = out.display()
        ),
    )
}

/// How the token is given, its value, environment, extra arguments.
type TokenCase<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);

#[test]
fn report_token_is_in_neither_the_supervisors_environ_nor_its_cmdline() {
    let dir = gantry_test_support::tempdir();
    let token_file = dir.path().join("report-token");
    std::fs::write(&token_file, "tok-from-file-5e1\n").unwrap();
    let token_file = token_file.to_str().unwrap().to_string();
    // (how the token is given, its value, extra arguments)
    let cases: [TokenCase; 3] = [
        (
            "env",
            "tok-from-env-9f3",
            vec![("GANTRY_REPORT_TOKEN", "tok-from-env-9f3")],
            vec![],
        ),
        (
            "flag",
            "tok-from-flag-7c2",
            vec![],
            vec!["--report-token", "tok-from-flag-7c2"],
        ),
        (
            "file",
            "tok-from-file-5e1",
            vec![("GANTRY_REPORT_TOKEN_FILE", token_file.as_str())],
            vec![],
        ),
    ];
    for (how, token, env, args) in cases {
        let out = dir.path().join(how);
        std::fs::create_dir_all(&out).unwrap();
        let game = proc_snooping_game(dir.path(), &out);
        let sink = FakeHttp::start(|_, _| (204, String::new()));
        let mut cmd = supervisor_binary(&env);
        cmd.args(&args)
            .args(["--report-url", &format!("{}/events", sink.url()), "--"])
            .arg(&game);
        let output = gantry_test_support::output_with_timeout(&mut cmd, T);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let shown = format!("{how}: {:?}\n{stdout}\n{stderr}", output.status);
        assert_eq!(output.status.code(), Some(0), "{shown}");
        assert!(
            stdout.contains("game env: token=unset file=unset"),
            "{shown}"
        );

        let cmdline = std::fs::read(out.join("cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains("--report-url"), "{how}: {cmdline}");
        assert!(
            !cmdline.contains(token),
            "{how}: token in cmdline: {cmdline}"
        );
        // Running as root the game may read environ despite PR_SET_DUMPABLE (CAP_SYS_PTRACE):
        // then it must not hold the token. Another user cannot read it at all.
        let environ_rc = std::fs::read_to_string(out.join("environ.rc")).unwrap();
        if environ_rc.trim() == "0" {
            let environ = std::fs::read(out.join("environ")).unwrap();
            let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
            assert!(
                environ.contains("GANTRY_TEST_MARKER=visible"),
                "{how}: {environ}"
            );
            assert!(
                !environ.contains(token),
                "{how}: token in environ: {environ}"
            );
        } else {
            // SAFETY: geteuid has no preconditions.
            assert_ne!(unsafe { libc::geteuid() }, 0, "{how}: environ unreadable");
        }
        if how == "flag" {
            assert!(
                stderr.contains("--report-token is deprecated")
                    && stderr.contains("--report-token-file"),
                "{shown}"
            );
        } else {
            assert!(!stderr.contains("deprecated"), "{shown}");
        }
        // The token still authenticates the report requests.
        let posts: Vec<_> = sink
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        assert!(!posts.is_empty(), "{shown}");
        let bearer = format!("Bearer {token}");
        assert!(
            posts
                .iter()
                .all(|r| r.header("authorization") == Some(bearer.as_str())),
            "{how}: {posts:?}"
        );
    }
}

#[test]
fn a_game_of_the_supervisors_user_cannot_read_its_environ() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = gantry_test_support::tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let game = proc_snooping_game(dir.path(), dir.path());
    let mut cmd = supervisor_binary(&[("GANTRY_REPORT_TOKEN", "tok-dumpable-1d4")]);
    cmd.arg("--").arg(&game);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // As root the game could read it anyway (CAP_SYS_PTRACE): run both as `nobody`.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let output = gantry_test_support::output_with_timeout(&mut cmd, T);
    let shown = format!(
        "{:?}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cmdline.rc"))
            .unwrap()
            .trim(),
        "0",
        "{shown}"
    );
    assert_ne!(
        std::fs::read_to_string(dir.path().join("environ.rc"))
            .unwrap()
            .trim(),
        "0",
        "the game read /proc/<supervisor>/environ: the supervisor is dumpable\n{shown}"
    );
}
