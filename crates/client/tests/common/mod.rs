//! Helpers of the client's integration tests: sample images built with gantry's builder,
//! `gantry serve` in-process (with or without token auth), a Prometheus metric reader.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gantry_client::credentials::Credential;
use gantry_client::{ClientOptions, RegistryClient};
use gantry_registry::{add_user, AccessRule, AuthConfig, Config, RunningServer, TokenAuth};

/// v1 and v2 layouts of the sample game at test scale, and v2's own update size.
pub struct SampleImages {
    pub dir: tempfile::TempDir,
    pub v1: PathBuf,
    pub v2: PathBuf,
    pub update_bytes: u64,
}

/// Builds the sample game (about `scale` bytes), updates ~`update` bytes of assets,
/// builds again.
pub fn sample_images(scale: u64, update: u64) -> SampleImages {
    let dir = gantry_test_support::tempdir();
    let game = dir.path().join("game");
    gantry_sample_game::generate(
        &game,
        &gantry_sample_game::SampleSpec {
            scale_bytes: scale,
            seed: 11,
        },
    )
    .unwrap();
    let v1 = build(&game, &dir.path().join("v1"));
    let report = gantry_sample_game::update(
        &game,
        &gantry_sample_game::UpdateSpec {
            bytes: update,
            seed: 11,
            kind: gantry_sample_game::UpdateKind::Assets,
        },
    )
    .unwrap();
    let v2 = build(&game, &dir.path().join("v2"));
    SampleImages {
        dir,
        v1,
        v2,
        update_bytes: report.update_bytes,
    }
}

fn build(game: &Path, out: &Path) -> PathBuf {
    let opts = gantry_build::BuildOptions {
        context: game.to_path_buf(),
        spec_file: None,
        output: out.to_path_buf(),
        cache_dir: None,
        source_date_epoch: 0,
        threads: 2,
        tag: None,
        registry: Default::default(),
    };
    gantry_build::build(&opts, &gantry_build::NoProgress)
        .unwrap()
        .layout
}

/// `gantry serve` on a free loopback port over a temp dir.
pub struct Serve {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
}

impl Serve {
    /// No auth.
    pub async fn open() -> Serve {
        Self::with(|_| {}).await
    }

    /// Token auth: `alice`/`alicepw` may pull and push `team/**`; nobody else anything.
    pub async fn with_auth() -> Serve {
        Self::with(|c| {
            let users = TokenAuth::default_users_path(&c.root);
            add_user(&users, "alice", "alicepw").unwrap();
            c.auth = Some(AuthConfig {
                access: vec![AccessRule {
                    repository: "team/**".into(),
                    users: vec!["alice".into()],
                    actions: vec!["pull".into(), "push".into()],
                    anonymous_pull: false,
                }],
                ..AuthConfig::default()
            });
        })
        .await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Serve {
        let dir = gantry_test_support::tempdir();
        let mut config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            root: dir.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let server = gantry_registry::bind(&config).await.unwrap();
        Serve { server, dir }
    }

    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// A counter summed over its label sets, from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(&format!("{}/metrics", self.server.url()), name).await
    }
}

/// Sums every sample of metric `name` (any labels) at `url`.
pub async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain-HTTP client for `host` with the given credentials (none stored ones).
pub fn client(host: &str, credential: Option<(&str, &str)>) -> RegistryClient {
    RegistryClient::new(
        host,
        &ClientOptions {
            insecure: true,
            credential: credential.map(|(u, p)| Credential::new(u, p)),
            no_stored_credentials: true,
            ..ClientOptions::default()
        },
    )
    .unwrap()
}
