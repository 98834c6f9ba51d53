//! `gantry serve` in-process on a free loopback port over a temp dir, with or without
//! token auth, plus a reader for its Prometheus counters.

use gantry_registry::{add_user, AccessRule, AuthConfig, Config, RunningServer, TokenAuth};

/// A running `gantry serve`; stops when dropped.
pub struct GantryServe {
    /// The server.
    pub server: RunningServer,
    /// Its storage.
    pub dir: tempfile::TempDir,
}

impl GantryServe {
    /// Without auth.
    pub async fn open() -> GantryServe {
        Self::with(|_| {}).await
    }

    /// With token auth: user `alice` (password `alicepw`) may pull and push `team/**`;
    /// nothing else is allowed to anyone.
    pub async fn with_auth() -> GantryServe {
        Self::with(|c| {
            let users = TokenAuth::default_users_path(&c.root);
            add_user(&users, "alice", "alicepw").expect("add user");
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

    /// With the configuration adjusted by `adjust`.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> GantryServe {
        let dir = crate::tempdir();
        let mut config = Config {
            addr: "127.0.0.1:0".parse().expect("address"),
            root: dir.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let server = gantry_registry::bind(&config)
            .await
            .expect("start gantry serve");
        GantryServe { server, dir }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// Sum of every sample of counter `name` (any labels) on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(&format!("{}/metrics", self.server.url()), name).await
    }
}

/// Sums every sample of metric `name` (any labels) on the Prometheus page at `url`.
pub async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A registry client for `host` over plain HTTP with the given credentials (never the
/// ones stored in Docker's config).
pub fn registry_client(
    host: &str,
    credential: Option<(&str, &str)>,
) -> gantry_client::RegistryClient {
    gantry_client::RegistryClient::new(
        host,
        &gantry_client::ClientOptions {
            insecure: true,
            credential: credential.map(|(u, p)| gantry_client::credentials::Credential::new(u, p)),
            no_stored_credentials: true,
            ..gantry_client::ClientOptions::default()
        },
    )
    .expect("registry client")
}

/// Pushes the image of the OCI layout `layout` (its only or `latest` tag) to `reference`
/// with the default options (delta push where offered); panics on failure.
pub async fn push_layout_to(
    client: &gantry_client::RegistryClient,
    layout: &std::path::Path,
    reference: &str,
) -> gantry_client::PushReport {
    let dest: gantry_oci::Reference = reference
        .parse()
        .unwrap_or_else(|e| panic!("reference {reference}: {e}"));
    let opened = gantry_client::OciLayout::open(layout)
        .unwrap_or_else(|e| panic!("layout {}: {e}", layout.display()));
    gantry_client::push_layout(
        client,
        &opened,
        None,
        &dest,
        &gantry_client::PushOptions::default(),
        std::sync::Arc::new(gantry_client::NoProgress),
    )
    .await
    .unwrap_or_else(|e| panic!("push {} to {reference}: {e}", layout.display()))
}
