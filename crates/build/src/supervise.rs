//! `supervise = true`: the `gantry-supervise` binary as the image's own last layer and its
//! entrypoint, wrapping the command the spec (or the base) defines.
//!
//! Entrypoint and Cmd keep Docker's meaning: the new Entrypoint is
//! `[path, args..., "--", original entrypoint...]` and Cmd is left as it was, so the
//! supervised command is the original entrypoint followed by Cmd, and arguments given at run
//! time (`docker run IMAGE ARGS`, `ctr run IMAGE ID ARGS`, a Kubernetes `args:`) replace Cmd
//! as they did before. A Kubernetes `command:` (or `--entrypoint`) replaces the supervisor too.

use crate::error::BuildError;
use crate::spec::{LayerSpec, SourceSpec, SuperviseSection};
use gantry_oci::spec::ImageConfiguration;
use std::path::{Path, PathBuf};

/// Environment variable naming the supervisor binary when `[supervise] binary` is not set.
pub const SUPERVISE_BINARY_ENV: &str = "GANTRY_SUPERVISE_BINARY";

/// File name of the supervisor binary looked up next to the running executable.
pub const SUPERVISE_BINARY_NAME: &str = "gantry-supervise";

/// Name of the layer that holds the supervisor (reserved while `supervise` is on).
pub const SUPERVISE_LAYER: &str = "gantry-supervise";

/// Finds the supervisor binary: `[supervise] binary` (relative to the build context), else
/// `$GANTRY_SUPERVISE_BINARY`, else `gantry-supervise` next to the running executable. Checks
/// it is an ELF executable for `architecture` and, unless `allow_dynamic`, statically linked.
pub fn find_binary(
    section: &SuperviseSection,
    context: &Path,
    architecture: &str,
) -> Result<PathBuf, BuildError> {
    let candidate = if let Some(p) = &section.binary {
        context.join(p)
    } else if let Some(p) = std::env::var_os(SUPERVISE_BINARY_ENV).filter(|p| !p.is_empty()) {
        PathBuf::from(p)
    } else {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(SUPERVISE_BINARY_NAME)));
        match beside {
            Some(p) if p.is_file() => p,
            beside => {
                return Err(BuildError::SuperviseBinary {
                    path: beside.unwrap_or_else(|| PathBuf::from(SUPERVISE_BINARY_NAME)),
                    message: format!(
                        "no supervisor binary found: looked at `[supervise] binary` in the spec \
                         (unset), ${SUPERVISE_BINARY_ENV} (unset) and this path, next to the \
                         running executable; build one with scripts/build-supervisor.sh"
                    ),
                })
            }
        }
    };
    let path = candidate
        .canonicalize()
        .map_err(|e| BuildError::SuperviseBinary {
            path: candidate.clone(),
            message: format!("cannot use the supervisor binary: {e}"),
        })?;
    let bytes = std::fs::read(&path).map_err(BuildError::io(&path))?;
    let elf = elf_info(&bytes).map_err(|message| BuildError::SuperviseBinary {
        path: path.clone(),
        message,
    })?;
    if let Some(expected) = elf_machine(architecture) {
        if elf.machine != expected {
            return Err(BuildError::SuperviseBinary {
                path,
                message: format!(
                    "is an ELF binary for machine {}, the image is {architecture}",
                    elf.machine
                ),
            });
        }
    }
    if elf.dynamic && !section.allow_dynamic {
        return Err(BuildError::SuperviseBinary {
            path,
            message: "is dynamically linked (it has an ELF interpreter): the image would need \
                      the same C library at the same paths. Use a static build \
                      (scripts/build-supervisor.sh), or set `allow_dynamic = true` in \
                      [supervise] when the base image has a matching glibc"
                .into(),
        });
    }
    Ok(path)
}

/// The layer that adds `binary` at `section.path`, mode 0755, built and cached like any other.
pub fn layer(section: &SuperviseSection, binary: &Path) -> LayerSpec {
    LayerSpec {
        name: SUPERVISE_LAYER.into(),
        owner: None,
        sources: vec![SourceSpec {
            file: Some(binary.to_path_buf()),
            dest: section.path.clone(),
            mode: Some("0755".into()),
            ..SourceSpec::default()
        }],
    }
}

/// The Entrypoint and Cmd of a supervised image, from the ones it would have had.
///
/// Entrypoint becomes `[path, args..., "--", entrypoint...]`; Cmd is kept, so the supervised
/// command is `entrypoint + cmd` and run-time arguments still replace Cmd. An entrypoint that
/// already starts with the supervisor at `path` (a supervised base image) is unwrapped first,
/// so supervisors never nest. Errors when there is no command at all to supervise.
pub fn compose_entrypoint(
    section: &SuperviseSection,
    entrypoint: Option<&[String]>,
    cmd: Option<&[String]>,
) -> Result<(Vec<String>, Option<Vec<String>>), String> {
    let mut original: &[String] = entrypoint.unwrap_or_default();
    if original.first() == Some(&section.path) {
        if let Some(dashes) = original.iter().position(|a| a == "--") {
            original = &original[dashes + 1..];
        }
    }
    let cmd = cmd.filter(|c| !c.is_empty());
    if original.is_empty() && cmd.is_none() {
        return Err(
            "supervise: the image has no entrypoint or cmd to supervise; set [config] \
             entrypoint or cmd (the supervised command is entrypoint followed by cmd)"
                .into(),
        );
    }
    let mut composed = Vec::with_capacity(section.args.len() + original.len() + 2);
    composed.push(section.path.clone());
    composed.extend(section.args.iter().cloned());
    composed.push("--".into());
    composed.extend(original.iter().cloned());
    Ok((composed, cmd.map(<[String]>::to_vec)))
}

/// Sets the Entrypoint and Cmd of `config` as [`compose_entrypoint`] says.
pub fn apply_to_config(
    section: &SuperviseSection,
    config: &mut ImageConfiguration,
) -> Result<(), BuildError> {
    let mut runtime = config.config().clone().unwrap_or_default();
    let (entrypoint, cmd) = compose_entrypoint(
        section,
        runtime.entrypoint().as_deref(),
        runtime.cmd().as_deref(),
    )
    .map_err(BuildError::Spec)?;
    runtime.set_entrypoint(Some(entrypoint));
    runtime.set_cmd(cmd);
    config.set_config(Some(runtime));
    Ok(())
}

/// What the supervisor check needs from an ELF header.
#[derive(Debug, PartialEq, Eq)]
struct ElfInfo {
    /// `e_machine`.
    machine: u16,
    /// Has a `PT_INTERP` program header: the kernel hands it to a dynamic loader.
    dynamic: bool,
}

/// `e_machine` of an OCI architecture, when known.
fn elf_machine(architecture: &str) -> Option<u16> {
    match architecture {
        "amd64" => Some(62),
        "arm64" => Some(183),
        "386" => Some(3),
        "arm" => Some(40),
        "riscv64" => Some(243),
        "ppc64le" => Some(21),
        "s390x" => Some(22),
        _ => None,
    }
}

/// Reads the ELF identification, machine and program headers of an executable.
fn elf_info(bytes: &[u8]) -> Result<ElfInfo, String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable".into());
    }
    let wide = match bytes[4] {
        1 => false,
        2 => true,
        c => return Err(format!("has an unknown ELF class {c}")),
    };
    let little = match bytes[5] {
        1 => true,
        2 => false,
        d => return Err(format!("has an unknown ELF data encoding {d}")),
    };
    let truncated = || "is a truncated ELF file".to_string();
    let u16_at = |o: usize| -> Result<u16, String> {
        let b: [u8; 2] = bytes
            .get(o..o + 2)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(truncated)?;
        Ok(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Result<u32, String> {
        let b: [u8; 4] = bytes
            .get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(truncated)?;
        Ok(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let u64_at = |o: usize| -> Result<u64, String> {
        let b: [u8; 8] = bytes
            .get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(truncated)?;
        Ok(if little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    };
    let e_type = u16_at(16)?;
    // ET_EXEC, or ET_DYN (a position-independent executable, static or not).
    if e_type != 2 && e_type != 3 {
        return Err(format!(
            "is an ELF file of type {e_type}, not an executable"
        ));
    }
    let machine = u16_at(18)?;
    let (phoff, phentsize, phnum) = if wide {
        (u64_at(32)?, u16_at(54)?, u16_at(56)?)
    } else {
        (u64::from(u32_at(28)?), u16_at(42)?, u16_at(44)?)
    };
    let mut dynamic = false;
    for i in 0..u64::from(phnum) {
        let offset = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(truncated)?;
        if u32_at(offset)? == PT_INTERP {
            dynamic = true;
        }
    }
    Ok(ElfInfo { machine, dynamic })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(args: &[&str]) -> SuperviseSection {
        SuperviseSection {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..SuperviseSection::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_wraps_the_original_and_keeps_cmd() {
        let s = section(&["--protocol", "tcp"]);
        let (ep, cmd) = compose_entrypoint(
            &s,
            Some(&strings(&["/start.sh", "-x"])),
            Some(&strings(&["+map", "m1"])),
        )
        .unwrap();
        assert_eq!(
            ep,
            strings(&[
                "/usr/local/bin/gantry-supervise",
                "--protocol",
                "tcp",
                "--",
                "/start.sh",
                "-x"
            ])
        );
        assert_eq!(cmd, Some(strings(&["+map", "m1"])));
    }

    #[test]
    fn cmd_alone_becomes_the_supervised_command() {
        let (ep, cmd) =
            compose_entrypoint(&section(&[]), None, Some(&strings(&["/game", "-p"]))).unwrap();
        assert_eq!(ep, strings(&["/usr/local/bin/gantry-supervise", "--"]));
        assert_eq!(cmd, Some(strings(&["/game", "-p"])));
    }

    #[test]
    fn a_supervised_base_is_not_wrapped_twice() {
        let base = strings(&[
            "/usr/local/bin/gantry-supervise",
            "--port",
            "7",
            "--",
            "/game",
        ]);
        let (ep, _) =
            compose_entrypoint(&section(&["--health", "none"]), Some(&base), None).unwrap();
        assert_eq!(
            ep,
            strings(&[
                "/usr/local/bin/gantry-supervise",
                "--health",
                "none",
                "--",
                "/game"
            ])
        );
    }

    #[test]
    fn nothing_to_supervise_is_an_error() {
        let err = compose_entrypoint(&section(&[]), Some(&[]), Some(&[])).unwrap_err();
        assert!(err.contains("no entrypoint or cmd"), "{err}");
        assert!(compose_entrypoint(&section(&[]), None, None).is_err());
    }

    #[test]
    fn elf_headers_tell_static_from_dynamic() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = elf_info(&exe).unwrap();
        assert_eq!(
            Some(info.machine),
            elf_machine(gantry_oci::platform::host_arch())
        );
        // Test binaries are linked against the system's glibc.
        assert!(info.dynamic);
        assert!(elf_info(b"#!/bin/sh\necho hi\n")
            .unwrap_err()
            .contains("not an ELF"));
        assert!(elf_info(&exe[..40]).unwrap_err().contains("truncated"));
        // A 64-bit little-endian executable without program headers: static.
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[16] = 2;
        header[18] = 62;
        assert_eq!(
            elf_info(&header).unwrap(),
            ElfInfo {
                machine: 62,
                dynamic: false
            }
        );
    }
}
