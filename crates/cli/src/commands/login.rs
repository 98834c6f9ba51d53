//! `gantry login REGISTRY` and `gantry logout REGISTRY`: credentials in Docker's
//! `config.json` (or the credential helper it names), shared with `docker login`.

use anyhow::Context;
use clap::Args;
use gantry_client::credentials::{Credential, DockerConfig};
use gantry_client::{ClientOptions, RegistryClient};

use super::transfer::{read_password, runtime};

/// Arguments of `gantry login`.
#[derive(Args)]
pub struct LoginArgs {
    /// Registry host (`host[:port]`; `http://host` for a plain-HTTP registry).
    pub registry: String,
    /// Username.
    #[arg(long, short = 'u')]
    pub username: String,
    /// Read the password from standard input (else $GANTRY_PASSWORD).
    #[arg(long)]
    pub password_stdin: bool,
    /// Use plain HTTP to check the credentials.
    #[arg(long)]
    pub insecure: bool,
    /// Trust this CA certificate (PEM) in addition to the system roots.
    #[arg(long = "ca-cert", value_name = "PEM")]
    pub ca_cert: Vec<std::path::PathBuf>,
    /// Store without checking the credentials against the registry.
    #[arg(long)]
    pub no_verify: bool,
}

/// Arguments of `gantry logout`.
#[derive(Args)]
pub struct LogoutArgs {
    /// Registry host.
    pub registry: String,
}

fn host(registry: &str) -> (String, bool) {
    let (plain, rest) = match registry.strip_prefix("http://") {
        Some(r) => (true, r),
        None => (false, registry.strip_prefix("https://").unwrap_or(registry)),
    };
    (rest.trim_end_matches('/').to_string(), plain)
}

/// Runs `gantry login`.
pub fn run_login(args: LoginArgs) -> anyhow::Result<()> {
    let (host, plain) = host(&args.registry);
    let credential = Credential::new(&args.username, read_password(args.password_stdin)?);
    if !args.no_verify {
        let client = RegistryClient::new(
            &host,
            &ClientOptions {
                insecure: args.insecure || plain,
                ca_certs: args.ca_cert.clone(),
                credential: Some(credential.clone()),
                no_stored_credentials: true,
                retries: 1,
            },
        )?;
        runtime()?
            .block_on(client.login_check())
            .with_context(|| format!("logging in to {host} as {:?}", args.username))?;
    }
    let mut config = DockerConfig::load()?;
    config
        .store(&host, &credential)
        .with_context(|| format!("storing the credentials for {host}"))?;
    eprintln!(
        "Login Succeeded ({} in {})",
        args.username,
        config.path().display()
    );
    Ok(())
}

/// Runs `gantry logout`.
pub fn run_logout(args: LogoutArgs) -> anyhow::Result<()> {
    let (host, _) = host(&args.registry);
    let mut config = DockerConfig::load()?;
    if config.erase(&host)? {
        eprintln!("Removing login credentials for {host}");
    } else {
        eprintln!("Not logged in to {host}");
    }
    Ok(())
}
