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

/// How to write an image, for error messages.
const FORMS: &str = "write a layout as a path (./DIR, /DIR, or a directory holding an \
oci-layout file) or oci:DIR[:TAG], and a registry image as [docker://]HOST/REPO[:TAG][@DIGEST] \
(http:// for a plain-HTTP registry)";

/// Whether `s` is written as a path: `/…`, `./…`, `../…`, `~/…`, `.` or `..`.
fn looks_like_path(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with("~/")
        || s == "."
        || s == ".."
}

/// Whether `dir` is an OCI layout (holds an `oci-layout` file).
fn is_layout_dir(dir: &std::path::Path) -> bool {
    dir.join("oci-layout").is_file()
}

impl Location {
    /// Parses an image as every command takes it (skopeo's and Docker's conventions):
    /// - `oci:DIR[:TAG]`: an OCI layout, and the image tagged TAG in it;
    /// - a path (`/…`, `./…`, `../…`, `~/…`), or an existing directory holding an
    ///   `oci-layout` file: an OCI layout;
    /// - `docker://REF` (as skopeo writes it), `http://REF` (plain HTTP), `https://REF`, or
    ///   a bare reference `[HOST/]REPO[:TAG][@DIGEST]`: an image in a registry.
    ///
    /// `docker-archive:FILE` is refused, naming the forms that work. A bare name that is
    /// neither a layout nor a valid reference, or that names an existing file or
    /// directory that is not a layout, is refused as ambiguous.
    pub fn parse(s: &str) -> anyhow::Result<Location> {
        Self::parse_at(s, std::path::Path::new("."))
    }

    /// [`Location::parse`] with bare names looked up under `base` instead of the
    /// working directory.
    fn parse_at(s: &str, base: &std::path::Path) -> anyhow::Result<Location> {
        if let Some(rest) = s.strip_prefix("oci:") {
            return Self::layout_form(s, rest);
        }
        if s.starts_with("docker-archive:") {
            bail!("{s:?}: docker-archive is not read by this command; {FORMS}");
        }
        if looks_like_path(s) {
            return Ok(Location::Layout {
                path: expand_home(s),
                tag: None,
            });
        }
        let explicit = ["docker://", "http://", "https://"]
            .iter()
            .any(|p| s.starts_with(p));
        if !explicit {
            if is_layout_dir(&base.join(s)) {
                return Ok(Location::Layout {
                    path: PathBuf::from(s),
                    tag: None,
                });
            }
            if base.join(s).exists() {
                bail!(
                    "{s:?} is ambiguous: there is a file or directory of that name, but it \
                     is not an OCI layout (no oci-layout file); {FORMS}"
                );
            }
        }
        Self::registry_form(s)
    }

    /// Parses where a layout is: `oci:DIR[:TAG]`, or any other text as a directory.
    /// A registry written as such (`docker://`, `http://`, `https://`) is refused.
    pub fn layout(s: &str) -> anyhow::Result<(PathBuf, Option<String>)> {
        if let Some(rest) = s.strip_prefix("oci:") {
            if let Location::Layout { path, tag } = Self::layout_form(s, rest)? {
                return Ok((path, tag));
            }
        }
        if ["docker://", "http://", "https://", "docker-archive:"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            bail!("{s:?}: expected an OCI layout here, not a registry image; {FORMS}");
        }
        Ok((expand_home(s), None))
    }

    fn layout_form(s: &str, rest: &str) -> anyhow::Result<Location> {
        if rest.is_empty() {
            bail!("{s:?}: an OCI layout location needs a directory (oci:DIR[:TAG])");
        }
        // The last `:` starts a tag when what follows has no `/`.
        if let Some((dir, tag)) = rest.rsplit_once(':') {
            if !tag.contains('/') && !dir.is_empty() {
                return Ok(Location::Layout {
                    path: expand_home(dir),
                    tag: (!tag.is_empty()).then(|| tag.to_string()),
                });
            }
        }
        Ok(Location::Layout {
            path: expand_home(rest),
            tag: None,
        })
    }

    fn registry_form(s: &str) -> anyhow::Result<Location> {
        let (plain_http, rest) = match s.strip_prefix("http://") {
            Some(r) => (true, r),
            None => (
                false,
                s.strip_prefix("https://")
                    .or_else(|| s.strip_prefix("docker://"))
                    .unwrap_or(s),
            ),
        };
        let reference: Reference = rest.parse().with_context(|| {
            format!("{s:?} is neither an OCI layout nor an image reference; {FORMS}")
        })?;
        Ok(Location::Registry {
            reference,
            plain_http,
        })
    }

    /// Parses a registry image (where only a registry makes sense); a layout is refused.
    pub fn reference(s: &str) -> anyhow::Result<(Reference, bool)> {
        if s.starts_with("oci:") || looks_like_path(s) {
            bail!("{s:?}: expected a registry image here, not an OCI layout; {FORMS}");
        }
        match Self::registry_form(s)? {
            Location::Registry {
                reference,
                plain_http,
            } => Ok((reference, plain_http)),
            Location::Layout { .. } => bail!("{s:?}: expected an image reference, not a layout"),
        }
    }
}

/// `~/x` with the home directory; anything else as it is.
fn expand_home(s: &str) -> PathBuf {
    match (s.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(s),
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

    fn layout_of(s: &str) -> (PathBuf, Option<String>) {
        match Location::parse(s).unwrap() {
            Location::Layout { path, tag } => (path, tag),
            other => panic!("{s}: {other:?}"),
        }
    }

    fn registry_of(s: &str) -> (String, bool) {
        match Location::parse(s).unwrap() {
            Location::Registry {
                reference,
                plain_http,
            } => (reference.to_string(), plain_http),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn every_form_of_an_image_argument() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("v1");
        std::fs::create_dir(&layout).unwrap();
        std::fs::write(layout.join("oci-layout"), "{}").unwrap();
        let plain = dir.path().join("notes");
        std::fs::create_dir(&plain).unwrap();
        // Paths, however written, are layouts.
        assert_eq!(layout_of("./v1").0, PathBuf::from("./v1"));
        assert_eq!(layout_of("../v1").0, PathBuf::from("../v1"));
        assert_eq!(layout_of(".").0, PathBuf::from("."));
        let abs = layout.to_str().unwrap();
        assert_eq!(layout_of(abs).0, layout);
        assert_eq!(
            layout_of(&format!("oci:{abs}:v2")),
            (layout.clone(), Some("v2".into()))
        );
        // A bare name that is a layout directory is a layout (relative to the cwd).
        let bare = Location::parse_at("v1", dir.path());
        let ambiguous = Location::parse_at("notes", dir.path());
        let reference = Location::parse_at("busybox:1", dir.path());
        assert!(matches!(bare.unwrap(), Location::Layout { .. }));
        let e = ambiguous.unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("oci:DIR"), "{e}");
        assert!(matches!(reference.unwrap(), Location::Registry { .. }));
        // Registry forms.
        assert_eq!(
            registry_of("docker://ghcr.io/studio/game:v1"),
            ("ghcr.io/studio/game:v1".into(), false)
        );
        assert_eq!(
            registry_of("http://127.0.0.1:5000/game:v1"),
            ("127.0.0.1:5000/game:v1".into(), true)
        );
        assert_eq!(
            registry_of("https://127.0.0.1:5000/game:v1"),
            ("127.0.0.1:5000/game:v1".into(), false)
        );
        assert_eq!(
            registry_of("127.0.0.1:5000/game:v1"),
            ("127.0.0.1:5000/game:v1".into(), false)
        );
        // Refused, naming the forms.
        for bad in ["docker-archive:game.tar", "Not A Ref", "oci:"] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let e = Location::parse("docker-archive:game.tar")
            .unwrap_err()
            .to_string();
        assert!(e.contains("oci:DIR") && e.contains("docker://"), "{e}");
        // Where only one kind makes sense.
        assert!(Location::reference("./v1").is_err());
        assert!(Location::reference("oci:v1").is_err());
        assert_eq!(
            Location::reference("docker://h:1/r:t")
                .unwrap()
                .0
                .to_string(),
            "h:1/r:t"
        );
        assert_eq!(
            Location::layout("Copy_Of_Image").unwrap().0,
            PathBuf::from("Copy_Of_Image")
        );
        assert_eq!(
            Location::layout("oci:out:v3").unwrap(),
            (PathBuf::from("out"), Some("v3".into()))
        );
        assert!(Location::layout("docker://h/r:t").is_err());
    }
}
