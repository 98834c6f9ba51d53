//! A minimal root filesystem from Debian's static busybox, and a hand-built OCI image layout
//! around it, for tests that need a runnable base image before Gantry's builder exists.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::require_tool;

/// Applets linked to `/bin/busybox` in [`busybox_rootfs_tar`] (all present in Debian 12's
/// `busybox-static`).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "[",
    "ash",
    "awk",
    "basename",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "grep",
    "gunzip",
    "gzip",
    "head",
    "hostname",
    "id",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mktemp",
    "mv",
    "nc",
    "nproc",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "realpath",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tar",
    "tee",
    "test",
    "timeout",
    "touch",
    "tr",
    "true",
    "uname",
    "uniq",
    "wc",
    "wget",
    "which",
    "whoami",
    "xargs",
    "yes",
];

/// Where Debian's `busybox-static` installs the statically linked busybox.
const BUSYBOX: &str = "/bin/busybox";

/// Writes to `dest` an uncompressed, deterministic tar (sorted, parents first, mtime 0,
/// uid/gid 0) of a minimal root filesystem: directories `bin dev etc proc root run sys tmp`,
/// `bin/busybox` (a copy of the host's static `/bin/busybox`), a relative symlink in `bin/`
/// for each of [`BUSYBOX_APPLETS`], and `etc/passwd`, `etc/group` with root. Usable as a base
/// image layer: containers can run `/bin/sh -c ...`.
pub fn busybox_rootfs_tar(dest: &Path) {
    let bytes = busybox_rootfs_tar_bytes();
    std::fs::write(dest, bytes).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
}

fn busybox_rootfs_tar_bytes() -> Vec<u8> {
    let busybox = busybox_path();
    let binary =
        std::fs::read(&busybox).unwrap_or_else(|e| panic!("read {}: {e}", busybox.display()));

    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        h.set_path(path).expect("tar path");
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("append dir");
    };
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_path(path).expect("tar path");
        h.set_cksum();
        b.append(&h, data).expect("append file");
    };

    dir(&mut b, "bin/", 0o755);
    // "busybox" sorts between the applets; keep all of bin/ in byte order.
    let mut names: Vec<&str> = BUSYBOX_APPLETS.to_vec();
    names.push("busybox");
    names.sort_unstable();
    for name in names {
        let path = format!("bin/{name}");
        if name == "busybox" {
            file(&mut b, &path, 0o755, &binary);
        } else {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            h.set_path(&path).expect("tar path");
            h.set_link_name("busybox").expect("link name");
            h.set_cksum();
            b.append(&h, std::io::empty()).expect("append symlink");
        }
    }
    dir(&mut b, "dev/", 0o755);
    dir(&mut b, "etc/", 0o755);
    file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    dir(&mut b, "proc/", 0o555);
    dir(&mut b, "root/", 0o700);
    dir(&mut b, "run/", 0o755);
    dir(&mut b, "sys/", 0o555);
    dir(&mut b, "tmp/", 0o1777);
    b.into_inner().expect("finish tar")
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn busybox_path() -> PathBuf {
    let p = PathBuf::from(BUSYBOX);
    if p.is_file() {
        p
    } else {
        // Give the standard "install it" message.
        require_tool("busybox");
        panic!(
            "{BUSYBOX} (Debian package busybox-static) is missing; a dynamically linked busybox \
             cannot run in an empty rootfs. Run `bash scripts/test.sh` to install it"
        )
    }
}

/// The OCI architecture name of this machine (`amd64`, `arm64`, ...).
pub fn host_oci_arch() -> &'static str {
    gantry_oci::platform::host_arch()
}

/// Digests and sizes of the image written by [`write_busybox_oci_layout`]
/// (digests are `sha256:<hex>` strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyboxImage {
    /// Digest of the image manifest (what containerd records as the image target).
    pub manifest_digest: String,
    /// Size in bytes of the image manifest.
    pub manifest_size: u64,
    /// Digest of the image config blob.
    pub config_digest: String,
    /// Digest of the gzip-compressed layer blob.
    pub layer_digest: String,
    /// Digest of the uncompressed layer tar (the config's `rootfs.diff_ids[0]`).
    pub diff_id: String,
}

/// Writes an OCI image layout at `dir` (created if needed) holding one image: one
/// `tar+gzip` layer from [`busybox_rootfs_tar`], a config for this machine's platform with
/// `PATH` set and `Cmd ["/bin/sh"]`, and an `index.json` entry annotated with
/// `org.opencontainers.image.ref.name = ref_name` (usually a tag such as `latest`).
/// Built by hand, independent of Gantry's own builder. Deterministic.
pub fn write_busybox_oci_layout(dir: &Path, ref_name: &str) -> BusyboxImage {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("mkdir {}: {e}", blobs.display()));
    let put = |data: &[u8]| -> String {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data).expect("write blob");
        format!("sha256:{hex}")
    };

    let layer_tar = busybox_rootfs_tar_bytes();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer_tar)));
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar).expect("gzip layer");
    let layer_gz = gz.finish().expect("gzip layer");
    let layer_digest = put(&layer_gz);

    let config = serde_json::json!({
        "architecture": host_oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "gantry-test-support busybox rootfs"}]
    });
    let config_bytes = serde_json::to_vec(&config).expect("config json");
    let config_digest = put(&config_bytes);

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len()
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_gz.len()
        }]
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
    let manifest_digest = put(&manifest_bytes);

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "platform": {"architecture": host_oci_arch(), "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": ref_name}
        }]
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index json"),
    )
    .expect("write index.json");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");

    BusyboxImage {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config_digest,
        layer_digest,
        diff_id,
    }
}

/// Digests of the image written by [`write_layered_oci_layout`] (`sha256:<hex>` strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayeredImage {
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Digests of the uncompressed layer tars, bottom first (the config's `diff_ids`).
    pub diff_ids: Vec<String>,
    /// The layers' chain ids, bottom first: the names containerd commits each layer's
    /// snapshot under (the last one is the image's top snapshot).
    pub chain_ids: Vec<String>,
}

/// The OCI chain ids of `diff_ids` (bottom first): the first is its diff id, each next
/// one `sha256(previous chain id + " " + diff id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// Writes an OCI image layout at `dir` (created if needed) holding one image whose layers
/// are the uncompressed tars `layers` (bottom first), each stored `tar+gzip`, with a config
/// for this machine's platform (`PATH` set, `Cmd ["/bin/sh"]`) and an `index.json` entry
/// annotated `org.opencontainers.image.ref.name = ref_name`. Layers may use OCI whiteouts
/// (`.wh.NAME`, `.wh..wh..opq`), hard links, devices and PAX xattrs: they are stored as
/// given. Deterministic.
pub fn write_layered_oci_layout(dir: &Path, ref_name: &str, layers: &[Vec<u8>]) -> LayeredImage {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("mkdir {}: {e}", blobs.display()));
    let put = |data: &[u8]| -> String {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data).expect("write blob");
        format!("sha256:{hex}")
    };
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for tar in layers {
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(tar))));
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(tar).expect("gzip layer");
        let blob = gz.finish().expect("gzip layer");
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put(&blob),
            "size": blob.len()
        }));
    }
    let config = serde_json::json!({
        "architecture": host_oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "gantry-test-support layer"})).collect::<Vec<_>>()
    });
    let config_bytes = serde_json::to_vec(&config).expect("config json");
    let config_digest = put(&config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len()
        },
        "layers": descriptors
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
    let manifest_digest = put(&manifest_bytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "platform": {"architecture": host_oci_arch(), "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": ref_name}
        }]
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index json"),
    )
    .expect("write index.json");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    LayeredImage {
        manifest_digest,
        chain_ids: chain_ids(&diff_ids),
        diff_ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    #[test]
    fn applets_exist_in_host_busybox() {
        let out = std::process::Command::new(busybox_path())
            .arg("--list")
            .output()
            .expect("run busybox --list");
        let list = String::from_utf8_lossy(&out.stdout);
        let have: Vec<&str> = list.lines().collect();
        for a in BUSYBOX_APPLETS {
            assert!(have.contains(a), "busybox lacks applet {a}");
        }
    }

    #[test]
    fn rootfs_tar_is_deterministic_and_complete() {
        let d = crate::tempdir();
        let (a, b) = (d.path().join("a.tar"), d.path().join("b.tar"));
        busybox_rootfs_tar(&a);
        busybox_rootfs_tar(&b);
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap(), "same inputs, same bytes");

        let mut entries = BTreeMap::new();
        let mut order = Vec::new();
        let mut ar = tar::Archive::new(bytes.as_slice());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            order.push(path.clone());
            entries.insert(path, (e.header().entry_type(), link, data.len()));
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "entries sorted by path");
        for d in ["bin/", "dev/", "etc/", "proc/", "sys/", "tmp/"] {
            assert_eq!(entries[d].0, tar::EntryType::Directory, "{d}");
        }
        assert!(entries["bin/busybox"].2 > 100_000);
        for a in ["sh", "cat", "echo", "ls", "sleep", "env"] {
            let (kind, link, _) = &entries[&format!("bin/{a}")];
            assert_eq!(*kind, tar::EntryType::Symlink);
            assert_eq!(link.as_deref(), Some("busybox"));
        }
    }

    #[test]
    fn oci_layout_is_consistent() {
        let d = crate::tempdir();
        let img = write_busybox_oci_layout(d.path(), "latest");
        let blob = |digest: &str| {
            let hex = digest.strip_prefix("sha256:").unwrap();
            let data = std::fs::read(d.path().join("blobs/sha256").join(hex)).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&data)),
                hex,
                "blob content matches name"
            );
            data
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(&img.manifest_digest)).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], img.layer_digest.as_str());
        assert_eq!(manifest["config"]["digest"], img.config_digest.as_str());
        let config: serde_json::Value = serde_json::from_slice(&blob(&img.config_digest)).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], img.diff_id.as_str());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(blob(&img.layer_digest).as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&tar))),
            img.diff_id
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["digest"],
            img.manifest_digest.as_str()
        );
        // Deterministic: a second layout elsewhere has the same digests.
        let d2 = crate::tempdir();
        assert_eq!(write_busybox_oci_layout(d2.path(), "latest"), img);
    }
}
