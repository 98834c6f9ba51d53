//! `gantry fleet`: the fleet view of a `gantry serve` (which game servers run which digest of
//! each image and tag, from `gantry supervise` status events), and its report tokens.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::transfer::{runtime, RegistryArgs};

/// Arguments of `gantry fleet`.
#[derive(Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// `gantry fleet` subcommands.
#[derive(Subcommand)]
pub enum FleetCommand {
    /// Show, per image and tag, which servers run which digest and whether all live ones
    /// run the digest the tag points to.
    Status(StatusArgs),
    /// Manage report tokens: secrets `gantry supervise --report-token` sends to report
    /// status events (stored hashed in the registry's report-tokens file).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Arguments of `gantry fleet status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The registry (`host:port`, `http://host:port` for plain HTTP).
    #[arg(value_name = "REGISTRY", required_unless_present = "registry")]
    pub registry_pos: Option<String>,
    /// The registry, as a flag.
    #[arg(long, value_name = "URL", conflicts_with = "registry_pos")]
    pub registry: Option<String>,
    /// Only this repository, or repository and tag (`repo[:tag]`).
    #[arg(long, value_name = "REPO[:TAG]")]
    pub image: Option<String>,
    /// Print the registry's JSON view.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero unless every tag shown is converged (and at least one is shown).
    #[arg(long)]
    pub expect_converged: bool,
    #[command(flatten)]
    pub connection: RegistryArgs,
}

/// `gantry fleet token` subcommands.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create (or replace) a report token and print its secret once. Grant it the `report`
    /// action on repositories in the `[[auth.access]]` rules (`users = ["NAME"]`).
    Add(TokenArgs),
    /// Remove a report token.
    Remove(TokenArgs),
    /// List report token names.
    List(TokenFileArg),
}

/// The report tokens file.
#[derive(Args)]
pub struct TokenFileArg {
    /// Report tokens file [default: gantry-registry/auth/report-tokens, the file `gantry
    /// serve` reads with the default root].
    #[arg(long)]
    pub file: Option<PathBuf>,
}

impl TokenFileArg {
    fn path(&self) -> PathBuf {
        self.file.clone().unwrap_or_else(|| {
            gantry_registry::TokenAuth::default_report_tokens_path(
                &gantry_registry::Config::default().root,
            )
        })
    }
}

/// Arguments of `gantry fleet token add|remove`.
#[derive(Args)]
pub struct TokenArgs {
    /// Token name (letters, digits, `.`, `_`, `-`, `@`): the name access rules grant
    /// `report` to.
    pub name: String,
    #[command(flatten)]
    pub file: TokenFileArg,
}

/// Runs `gantry fleet`.
pub fn run(args: FleetArgs) -> anyhow::Result<()> {
    match args.command {
        FleetCommand::Status(a) => status(a),
        FleetCommand::Token(TokenCommand::Add(a)) => {
            let path = a.file.path();
            let secret = gantry_registry::add_report_token(&path, &a.name)?;
            eprintln!(
                "report token {:?} written to {} (only its hash); the secret, shown once:",
                a.name,
                path.display()
            );
            println!("{secret}");
            Ok(())
        }
        FleetCommand::Token(TokenCommand::Remove(a)) => {
            let path = a.file.path();
            if !gantry_registry::remove_report_token(&path, &a.name)? {
                bail!("no report token {:?} in {}", a.name, path.display());
            }
            Ok(())
        }
        FleetCommand::Token(TokenCommand::List(f)) => {
            let tokens = gantry_registry::ReportTokens::load(&f.path())?;
            for name in tokens.names() {
                println!("{name}");
            }
            Ok(())
        }
    }
}

/// A client for a `gantry serve` named as `host:port`, `http://host:port` (plain HTTP) or
/// `https://host:port`.
pub(crate) fn server_client(
    registry: &str,
    connection: &RegistryArgs,
) -> anyhow::Result<gantry_client::RegistryClient> {
    let (plain_http, host) = match registry.strip_prefix("http://") {
        Some(h) => (true, h),
        None => (false, registry.strip_prefix("https://").unwrap_or(registry)),
    };
    connection.client(host.trim_end_matches('/'), plain_http)
}

/// GETs `url` of a `gantry serve` (asking for `scopes` when it wants a token) and parses
/// the JSON answer; `what` names it in errors.
pub(crate) fn get_json(
    client: &gantry_client::RegistryClient,
    scopes: &[String],
    url: &str,
    what: &str,
) -> anyhow::Result<Value> {
    runtime()?.block_on(async {
        let resp = client.send(scopes, reqwest::Method::GET, url, &Ok).await?;
        let resp = client.check(resp, what).await?;
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading {url}"))?;
        serde_json::from_str::<Value>(&text).with_context(|| format!("{url}: not JSON"))
    })
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let registry = args
        .registry
        .clone()
        .or(args.registry_pos.clone())
        .context("name the registry")?;
    let client = server_client(&registry, &args.connection)?;
    let mut scopes = Vec::new();
    let mut url = format!("{}/gantry/v1/fleet", client.base_url());
    if let Some(image) = &args.image {
        let repo = image.split(':').next().unwrap_or(image);
        scopes.push(gantry_client::auth::repository_scope(repo, &["pull"]));
        url.push_str(&format!("?image={image}"));
    }
    let view = get_json(&client, &scopes, &url, "the fleet view")?;
    if args.json {
        super::print_json(&view)?;
    } else {
        print_table(&view);
    }
    if args.expect_converged {
        let mut shown = 0;
        let mut behind = Vec::new();
        for (repo, tag) in tags(&view) {
            shown += 1;
            if tag["converged"] != Value::Bool(true) {
                behind.push(format!("{repo}:{}", tag["tag"].as_str().unwrap_or("?")));
            }
        }
        if shown == 0 {
            bail!(
                "no servers reported for {}",
                args.image.as_deref().unwrap_or("any image")
            );
        }
        if !behind.is_empty() {
            bail!("not converged: {}", behind.join(", "));
        }
    }
    Ok(())
}

/// Every (repository, tag view) of the JSON view.
fn tags(view: &Value) -> Vec<(&str, &Value)> {
    let mut out = Vec::new();
    for r in view["repositories"].as_array().into_iter().flatten() {
        let name = r["repository"].as_str().unwrap_or("?");
        for t in r["tags"].as_array().into_iter().flatten() {
            out.push((name, t));
        }
    }
    out
}

/// `sha256:0123456789ab` (12 hex digits), or `-`.
fn short(digest: Option<&str>) -> String {
    match digest {
        Some(d) => {
            let (algo, hex) = d.split_once(':').unwrap_or(("", d));
            format!("{algo}:{}", &hex[..hex.len().min(12)])
        }
        None => "-".into(),
    }
}

fn counts(map: &Value, shorten: bool) -> String {
    let parts: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let key = if shorten { short(Some(k)) } else { k.clone() };
            format!("{key}={}", v.as_u64().unwrap_or(0))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn print_table(view: &Value) {
    let mut rows = vec![[
        "IMAGE".to_string(),
        "TAG".into(),
        "TAG DIGEST".into(),
        "CONVERGED".into(),
        "LIVE".into(),
        "LIVE BY DIGEST".into(),
        "BY STATUS".into(),
    ]];
    for (repo, t) in tags(view) {
        rows.push([
            repo.to_string(),
            t["tag"].as_str().unwrap_or("?").to_string(),
            short(t["tag_digest"].as_str()),
            if t["converged"] == Value::Bool(true) {
                "yes".into()
            } else {
                "no".into()
            },
            t["live"].as_u64().unwrap_or(0).to_string(),
            counts(&t["by_digest"], true),
            counts(&t["by_status"], false),
        ]);
    }
    if rows.len() == 1 {
        println!("no servers reported");
        return;
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
