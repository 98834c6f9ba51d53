//! `gantry.toml`: what to build. Unknown keys are errors, so a typo never
//! silently drops a layer or a setting.

use crate::error::BuildError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole build spec.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// Image name and tag.
    pub image: ImageSection,
    /// Base image; absent means `scratch`.
    #[serde(default)]
    pub base: Option<BaseSection>,
    /// Runtime configuration.
    #[serde(default)]
    pub config: ConfigSection,
    /// Layers in stack order: put what changes least first.
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    /// Chunking and compression tuning (recorded in every chunk index).
    #[serde(default)]
    pub chunking: ChunkingSection,
    /// `supervise = true` or `[supervise]`: the `gantry-supervise` binary as the image's last
    /// layer and entrypoint, wrapping the original entrypoint and cmd. `None` when off.
    #[serde(
        default,
        deserialize_with = "deserialize_supervise",
        skip_serializing_if = "Option::is_none"
    )]
    pub supervise: Option<SuperviseSection>,
}

/// `[supervise]` (or `supervise = true`, all defaults).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SuperviseSection {
    /// Off when `false` (the table may stay in the file), default `true`.
    pub enabled: bool,
    /// The supervisor binary to add, relative to the build context [default:
    /// `$GANTRY_SUPERVISE_BINARY`, else `gantry-supervise` next to the running executable].
    pub binary: Option<PathBuf>,
    /// Where it goes in the image.
    pub path: String,
    /// Supervisor options placed before `--`, e.g. `["--protocol", "tcp"]`.
    pub args: Vec<String>,
    /// Accept a dynamically linked binary (the image then needs a matching glibc).
    pub allow_dynamic: bool,
}

impl Default for SuperviseSection {
    fn default() -> Self {
        SuperviseSection {
            enabled: true,
            binary: None,
            path: "/usr/local/bin/gantry-supervise".into(),
            args: Vec::new(),
            allow_dynamic: false,
        }
    }
}

/// `supervise = true|false` or a `[supervise]` table; `None` when off.
fn deserialize_supervise<'de, D>(deserializer: D) -> Result<Option<SuperviseSection>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<SuperviseSection>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("`supervise = true`, `supervise = false` or a [supervise] table")
        }
        fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Self::Value, E> {
            Ok(on.then(SuperviseSection::default))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let section =
                SuperviseSection::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            Ok(section.enabled.then_some(section))
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// `[image]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Repository name, e.g. `multiplayersample`.
    pub name: String,
    /// Tag, default `latest`.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Target OS, default `linux`.
    #[serde(default = "default_os")]
    pub os: String,
    /// Target architecture (Go naming), default `amd64`.
    #[serde(default = "default_arch")]
    pub architecture: String,
}

fn default_tag() -> String {
    "latest".into()
}
fn default_os() -> String {
    "linux".into()
}
fn default_arch() -> String {
    "amd64".into()
}

/// `[base]`: exactly one of `rootfs`, `layout` (with optional `tag`), `image`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct BaseSection {
    /// A tar (or tar.gz) of a root filesystem; becomes the first layer.
    pub rootfs: Option<PathBuf>,
    /// An OCI image layout directory whose layers are reused unchanged.
    pub layout: Option<PathBuf>,
    /// Which image of `layout` (its `org.opencontainers.image.ref.name`).
    pub tag: Option<String>,
    /// A registry reference (resolved by the registry client).
    pub image: Option<String>,
}

/// `[config]`: the image's runtime configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigSection {
    /// Entrypoint argv.
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries, added to (and overriding) the base's.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// `port[/tcp|/udp]` entries.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Labels, added to the base's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `user[:group]` the process runs as.
    pub user: Option<String>,
    /// Signal that stops the container.
    pub stop_signal: Option<String>,
}

/// `[chunking]`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkingSection {
    /// Smallest chunk, bytes.
    pub min: u32,
    /// Average chunk, bytes.
    pub avg: u32,
    /// Largest chunk, bytes.
    pub max: u32,
    /// gzip level of each chunk.
    pub gzip_level: u32,
    /// Chunk size multiplier for files (and pak entries) of at least `avg` bytes.
    pub large_file_scale: u32,
}

impl Default for ChunkingSection {
    fn default() -> Self {
        let c = gantry_layer::ChunkerParams::default();
        ChunkingSection {
            min: c.min,
            avg: c.avg,
            max: c.max,
            gzip_level: gantry_layer::DEFAULT_GZIP_LEVEL,
            large_file_scale: c.large_file_scale,
        }
    }
}

/// `[[layers]]`: one image layer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Name, unique in the spec (used by the cache and shown by `inspect`).
    pub name: String,
    /// Owner `uid:gid` for every entry of the layer (default `0:0`).
    pub owner: Option<String>,
    /// What goes in, in order; later sources win on the same path.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
}

/// `[[layers.sources]]`: exactly one of `dir`, `file`, `tar`, `split`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A directory whose contents land under `dest`.
    pub dir: Option<PathBuf>,
    /// One file; `dest` is its path (or a directory when it ends in `/`).
    pub file: Option<PathBuf>,
    /// A tar or tar.gz extracted under `dest`.
    pub tar: Option<PathBuf>,
    /// A glob of split parts (`*.tar.gz.x*`), concatenated in name order and
    /// extracted under `dest`.
    pub split: Option<String>,
    /// Where in the image, default `/`.
    #[serde(default = "default_dest")]
    pub dest: String,
    /// Octal permission override for `file`, e.g. `"0755"`.
    pub mode: Option<String>,
}

fn default_dest() -> String {
    "/".into()
}

/// The kind of a source after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory.
    Dir(PathBuf),
    /// One file.
    File(PathBuf),
    /// An archive.
    Tar(PathBuf),
    /// Split archive parts matching a glob.
    Split(String),
}

impl SourceSpec {
    /// Which kind it is; errors unless exactly one is set.
    pub fn kind(&self, layer: &str, n: usize) -> Result<SourceKind, BuildError> {
        let mut kinds = Vec::new();
        if let Some(p) = &self.dir {
            kinds.push(SourceKind::Dir(p.clone()));
        }
        if let Some(p) = &self.file {
            kinds.push(SourceKind::File(p.clone()));
        }
        if let Some(p) = &self.tar {
            kinds.push(SourceKind::Tar(p.clone()));
        }
        if let Some(p) = &self.split {
            kinds.push(SourceKind::Split(p.clone()));
        }
        if kinds.len() != 1 {
            return Err(BuildError::Spec(format!(
                "layer {layer:?} source #{n}: give exactly one of `dir`, `file`, `tar`, `split` (found {})",
                kinds.len()
            )));
        }
        Ok(kinds.remove(0))
    }

    /// The parsed `mode` override.
    pub fn mode_override(&self, layer: &str) -> Result<Option<u32>, BuildError> {
        self.mode
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|v| *v <= 0o7777)
                    .ok_or_else(|| {
                        BuildError::Spec(format!(
                            "layer {layer:?}: mode {m:?} is not an octal permission like \"0755\""
                        ))
                    })
            })
            .transpose()
    }
}

/// Parses `uid:gid` (or a lone `uid`, gid = uid).
pub fn parse_owner(owner: &str, layer: &str) -> Result<(u64, u64), BuildError> {
    let bad = || {
        BuildError::Spec(format!(
            "layer {layer:?}: owner {owner:?} must be numeric \"uid:gid\""
        ))
    };
    let (u, g) = owner.split_once(':').unwrap_or((owner, owner));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

impl BuildSpec {
    /// Reads and validates `gantry.toml` (or another spec file).
    pub fn load(path: &Path) -> Result<Self, BuildError> {
        let text = std::fs::read_to_string(path).map_err(|source| BuildError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            BuildError::Spec(msg) => BuildError::SpecFile {
                path: path.to_path_buf(),
                message: msg,
            },
            other => other,
        })
    }

    /// Parses and validates spec text.
    pub fn parse(text: &str) -> Result<Self, BuildError> {
        let spec: BuildSpec = toml::from_str(text).map_err(|e| BuildError::Spec(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), BuildError> {
        let err = |m: String| Err(BuildError::Spec(m));
        let reference = format!("localhost/{}:{}", self.image.name, self.image.tag);
        if let Err(e) = reference.parse::<gantry_oci::Reference>() {
            return err(format!("[image] name/tag: {e}"));
        }
        if let Some(base) = &self.base {
            let set = [
                base.rootfs.is_some(),
                base.layout.is_some(),
                base.image.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                return err("[base]: give exactly one of `rootfs`, `layout`, `image` (or omit [base] for scratch)".into());
            }
            if base.tag.is_some() && base.layout.is_none() {
                return err("[base]: `tag` only applies to `layout`".into());
            }
        }
        for e in &self.config.env {
            if !e.contains('=') || e.starts_with('=') {
                return err(format!("[config] env entry {e:?} must be KEY=value"));
            }
        }
        for p in &self.config.exposed_ports {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            if port.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                return err(format!(
                    "[config] exposed port {p:?} must be PORT[/tcp|/udp]"
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for layer in &self.layers {
            if layer.name.is_empty() || !names.insert(layer.name.as_str()) {
                return err(format!(
                    "layer name {:?} is empty or used twice",
                    layer.name
                ));
            }
            if let Some(owner) = &layer.owner {
                parse_owner(owner, &layer.name)?;
            }
            if layer.sources.is_empty() {
                return err(format!("layer {:?} has no sources", layer.name));
            }
            for (i, s) in layer.sources.iter().enumerate() {
                s.kind(&layer.name, i + 1)?;
                s.mode_override(&layer.name)?;
                if !s.dest.starts_with('/') {
                    return err(format!(
                        "layer {:?} source #{}: dest {:?} must be an absolute path in the image",
                        layer.name,
                        i + 1,
                        s.dest
                    ));
                }
                gantry_layer::ImagePath::parse(&s.dest, true)
                    .map_err(|e| BuildError::Spec(format!("layer {:?}: {e}", layer.name)))?;
            }
        }
        if self.layers.is_empty() && self.base.is_none() {
            return err("the spec has no [[layers]] and no [base]: nothing to build".into());
        }
        gantry_layer::ChunkerParams {
            min: self.chunking.min,
            avg: self.chunking.avg,
            max: self.chunking.max,
            large_file_scale: self.chunking.large_file_scale,
        }
        .validate()
        .map_err(|e| BuildError::Spec(format!("[chunking]: {e}")))?;
        if let Some(sup) = &self.supervise {
            if !sup.path.starts_with('/') {
                return err(format!(
                    "[supervise] path {:?} must be an absolute path in the image",
                    sup.path
                ));
            }
            gantry_layer::ImagePath::parse(&sup.path, true)
                .map_err(|e| BuildError::Spec(format!("[supervise] path: {e}")))?;
            if sup.path.ends_with('/') {
                return err(format!(
                    "[supervise] path {:?} must name the binary, not a directory",
                    sup.path
                ));
            }
            if sup.args.iter().any(|a| a == "--") {
                return err("[supervise] args: give only supervisor options (e.g. [\"--protocol\", \"tcp\"]), no \"--\": \
                     the supervised command is [config] entrypoint + cmd"
                    .into());
            }
            if self
                .layers
                .iter()
                .any(|l| l.name == crate::supervise::SUPERVISE_LAYER)
            {
                return err(format!(
                    "layer name {:?} is reserved for the supervisor while [supervise] is on",
                    crate::supervise::SUPERVISE_LAYER
                ));
            }
        }
        if self.chunking.gzip_level > 9 {
            return err(format!(
                "[chunking] gzip_level {} is not 0–9",
                self.chunking.gzip_level
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[image]
name = "multiplayersample"
tag = "v1"
[config]
entrypoint = ["/start.sh"]
exposed_ports = ["33435/udp"]
[[layers]]
name = "engine"
[[layers.sources]]
split = "engine/*.tar.gz.x*"
[[layers]]
name = "runtime"
[[layers.sources]]
file = "runtime/start.sh"
dest = "/start.sh"
mode = "0755"
"#;

    #[test]
    fn parses_the_sample_shape() {
        let spec = BuildSpec::parse(GOOD).unwrap();
        assert_eq!(spec.layers.len(), 2);
        assert_eq!(
            spec.layers[1].sources[0].mode_override("runtime").unwrap(),
            Some(0o755)
        );
        assert_eq!(spec.layers[0].sources[0].dest, "/");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let text = GOOD.replace("tag = \"v1\"", "tag = \"v1\"\ncolour = \"red\"");
        let err = BuildSpec::parse(&text).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        let text = GOOD.replace("mode = \"0755\"", "mdoe = \"0755\"");
        assert!(BuildSpec::parse(&text)
            .unwrap_err()
            .to_string()
            .contains("mdoe"));
    }

    #[test]
    fn bad_values_are_explained() {
        let cases = [
            (
                GOOD.replace("split = ", "dir = \"x\"\nsplit = "),
                "exactly one of",
            ),
            (GOOD.replace("0755", "0999"), "octal"),
            (GOOD.replace("33435/udp", "port"), "exposed port"),
            (
                GOOD.replace("name = \"runtime\"", "name = \"engine\""),
                "used twice",
            ),
            (
                GOOD.replace("dest = \"/start.sh\"", "dest = \"start.sh\""),
                "absolute",
            ),
            (
                GOOD.replace("dest = \"/start.sh\"", "dest = \"/a/../b\""),
                "..",
            ),
            (
                GOOD.replace("name = \"multiplayersample\"", "name = \"Bad Name\""),
                "[image]",
            ),
        ];
        for (text, needle) in cases {
            let err = BuildSpec::parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        }
    }

    #[test]
    fn supervise_is_a_bool_or_a_table() {
        assert_eq!(BuildSpec::parse(GOOD).unwrap().supervise, None);
        let on = BuildSpec::parse(&format!("supervise = true\n{GOOD}")).unwrap();
        assert_eq!(on.supervise, Some(SuperviseSection::default()));
        assert_eq!(
            on.supervise.unwrap().path,
            "/usr/local/bin/gantry-supervise"
        );
        let off = BuildSpec::parse(&format!("supervise = false\n{GOOD}")).unwrap();
        assert_eq!(off.supervise, None);
        let table = BuildSpec::parse(&format!(
            "{GOOD}\n[supervise]\nbinary = \"bin/sup\"\npath = \"/sup\"\n\
             args = [\"--protocol\", \"tcp\"]\nallow_dynamic = true\n"
        ))
        .unwrap()
        .supervise
        .unwrap();
        assert_eq!(table.binary, Some(PathBuf::from("bin/sup")));
        assert_eq!(table.path, "/sup");
        assert_eq!(table.args, ["--protocol", "tcp"]);
        assert!(table.enabled && table.allow_dynamic);
        let disabled = format!("{GOOD}\n[supervise]\nenabled = false\n");
        assert_eq!(BuildSpec::parse(&disabled).unwrap().supervise, None);
    }

    #[test]
    fn bad_supervise_values_are_explained() {
        let cases = [
            ("supervise = \"yes\"\n".to_string(), "supervise"),
            ("supervise = 1\n".to_string(), "supervise"),
            (format!("{GOOD}\n[supervise]\nbinnary = \"x\"\n"), "binnary"),
            (
                format!("{GOOD}\n[supervise]\npath = \"usr/sup\"\n"),
                "absolute",
            ),
            (format!("{GOOD}\n[supervise]\npath = \"/a/../sup\"\n"), ".."),
            (
                format!("{GOOD}\n[supervise]\npath = \"/usr/\"\n"),
                "not a directory",
            ),
            (
                format!("{GOOD}\n[supervise]\nargs = [\"--port\", \"7\", \"--\", \"/game\"]\n"),
                "no \"--\"",
            ),
            (
                format!("{GOOD}\n[supervise]\nargs = \"--port 7\"\n"),
                "args",
            ),
            (
                format!("{GOOD}\n[supervise]\n")
                    .replace("name = \"runtime\"", "name = \"gantry-supervise\""),
                "reserved",
            ),
        ];
        for (text, needle) in cases {
            let text = if text.starts_with("supervise") {
                format!("{text}{GOOD}")
            } else {
                text
            };
            let err = BuildSpec::parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        }
    }
}
