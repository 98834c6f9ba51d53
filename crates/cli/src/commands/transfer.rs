//! What the registry commands share: where an image is (`oci:DIR[:TAG]` or a reference,
//! `http://` marking a plain-HTTP registry), registry connection flags, a tokio runtime,
//! and progress bars per blob.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context};
use clap::Args;
use gantry_client::credentials::Credential;
use gantry_client::{BlobOutcome, ClientOptions, RegistryClient, TransferProgress};
use gantry_oci::{Digest, Reference};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Flags for reaching a registry.
#[derive(Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Use plain HTTP (for registries on loopback or a trusted network); an `http://`
    /// prefix on the reference does the same for that registry.
    #[arg(long)]
    pub insecure: bool,
    /// Trust this CA certificate (PEM) in addition to the system roots.
    #[arg(long = "ca-cert", value_name = "PEM")]
    pub ca_cert: Vec<PathBuf>,
    /// Log in as this user for this command (password from --password-stdin or
    /// $GANTRY_PASSWORD), instead of the credentials stored by `gantry login`/`docker login`.
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    /// Read the password for --username from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Ignore stored credentials (anonymous unless --username is given).
    #[arg(long)]
    pub anonymous: bool,
}

impl RegistryArgs {
    /// The client options for a registry named with or without `http://`.
    pub fn options(&self, plain_http: bool) -> anyhow::Result<ClientOptions> {
        let credential = match &self.username {
            Some(user) => Some(Credential {
                username: user.clone(),
                secret: read_password(self.password_stdin)?,
            }),
            None => None,
        };
        Ok(ClientOptions {
            insecure: self.insecure || plain_http,
            ca_certs: self.ca_cert.clone(),
            credential,
            no_stored_credentials: self.anonymous,
            retries: 0,
        })
    }

    /// A client for `host`.
    pub fn client(&self, host: &str, plain_http: bool) -> anyhow::Result<RegistryClient> {
        Ok(RegistryClient::new(host, &self.options(plain_http)?)?)
    }
}

/// The password for `--username`: standard input (first line) or `$GANTRY_PASSWORD`.
pub fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the password from standard input")?;
        let line = s.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(line);
    }
    match std::env::var("GANTRY_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => bail!("a password is needed: pass --password-stdin (or set GANTRY_PASSWORD)"),
    }
}

/// Where an image is.
#[derive(Clone, Debug)]
pub enum Location {
    /// An OCI layout directory, optionally with the tag of one image in it.
    Layout {
        /// The directory.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` of the image.
        tag: Option<String>,
    },
    /// An image in a registry.
    Registry {
        /// The reference.
        reference: Reference,
        /// Whether it was written with `http://`.
        plain_http: bool,
    },
}

impl Location {
    /// Parses `oci:DIR[:TAG]`, `[http://]host/repo[:tag][@digest]`.
    pub fn parse(s: &str) -> anyhow::Result<Location> {
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                bail!("{s:?}: an OCI layout location needs a directory (oci:DIR[:TAG])");
            }
            // The last `:` starts a tag when what follows has no `/`.
            if let Some((dir, tag)) = rest.rsplit_once(':') {
                if !tag.contains('/') && !dir.is_empty() {
                    return Ok(Location::Layout {
                        path: PathBuf::from(dir),
                        tag: (!tag.is_empty()).then(|| tag.to_string()),
                    });
                }
            }
            return Ok(Location::Layout {
                path: PathBuf::from(rest),
                tag: None,
            });
        }
        let (plain_http, rest) = match s.strip_prefix("http://") {
            Some(r) => (true, r),
            None => (false, s.strip_prefix("https://").unwrap_or(s)),
        };
        let reference: Reference = rest
            .parse()
            .with_context(|| format!("{s:?} is neither oci:DIR[:TAG] nor an image reference"))?;
        Ok(Location::Registry {
            reference,
            plain_http,
        })
    }

    /// Parses a reference (a registry location only).
    pub fn reference(s: &str) -> anyhow::Result<(Reference, bool)> {
        match Location::parse(s)? {
            Location::Registry {
                reference,
                plain_http,
            } => Ok((reference, plain_http)),
            Location::Layout { .. } => bail!("{s:?}: expected an image reference, not a layout"),
        }
    }
}

/// A tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A progress bar per blob in transfer (stderr; hidden when quiet or not a terminal).
pub struct TransferBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    quiet: bool,
}

impl TransferBars {
    /// Bars unless `quiet`.
    pub fn new(quiet: bool) -> Self {
        let multi = MultiProgress::new();
        if quiet {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        TransferBars {
            multi,
            bars: Mutex::new(HashMap::new()),
            quiet,
        }
    }
}

impl TransferProgress for TransferBars {
    fn blob_started(&self, digest: &Digest, size: u64, label: &str) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} {msg:<19} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(label.chars().take(12).collect::<String>());
        bar.set_message(digest.to_string()[..19].to_string());
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(*digest, bar);
        }
    }

    fn blob_bytes(&self, digest: &Digest, n: u64) {
        if let Ok(bars) = self.bars.lock() {
            if let Some(bar) = bars.get(digest) {
                bar.inc(n);
            }
        }
    }

    fn blob_finished(&self, digest: &Digest, outcome: BlobOutcome) {
        let bar = self.bars.lock().ok().and_then(|mut b| b.remove(digest));
        if let Some(bar) = bar {
            let label = bar.prefix();
            let size = bar.length().unwrap_or(0);
            bar.finish_and_clear();
            self.multi.remove(&bar);
            if !self.quiet {
                let _ = self.multi.println(format!(
                    "{label:>12} {} {:>10}  {}",
                    &digest.to_string()[..19],
                    crate::commands::human_bytes(size),
                    outcome_text(outcome)
                ));
            }
        }
    }
}

fn outcome_text(o: BlobOutcome) -> &'static str {
    match o {
        BlobOutcome::Existing => "already there",
        BlobOutcome::Mounted => "mounted",
        BlobOutcome::Uploaded => "uploaded",
        BlobOutcome::Delta => "delta-pushed",
        BlobOutcome::Downloaded => "downloaded",
        BlobOutcome::Local => "reused locally",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        match Location::parse("oci:out/game:v2").unwrap() {
            Location::Layout { path, tag } => {
                assert_eq!(path, PathBuf::from("out/game"));
                assert_eq!(tag.as_deref(), Some("v2"));
            }
            other => panic!("{other:?}"),
        }
        match Location::parse("oci:/tmp/a/b").unwrap() {
            Location::Layout { path, tag } => {
                assert_eq!(path, PathBuf::from("/tmp/a/b"));
                assert_eq!(tag, None);
            }
            other => panic!("{other:?}"),
        }
        match Location::parse("http://127.0.0.1:5000/studio/game:v1").unwrap() {
            Location::Registry {
                reference,
                plain_http,
            } => {
                assert!(plain_http);
                assert_eq!(reference.registry, "127.0.0.1:5000");
                assert_eq!(reference.repository, "studio/game");
                assert_eq!(reference.tag.as_deref(), Some("v1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(Location::parse("oci:").is_err());
        assert!(Location::parse("UPPER/Case").is_err());
    }
}
