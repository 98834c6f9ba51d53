//! Platform names as OCI writes them (`amd64`, `arm64`), not as Rust does (`x86_64`,
//! `aarch64`): one mapping for every crate that picks or writes a platform.

/// The OCI architecture name of an architecture as `std::env::consts::ARCH` names it.
pub fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The OCI architecture name of this machine.
pub fn host_arch() -> &'static str {
    oci_arch(std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_names_become_oci_names() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("s390x"), "s390x");
        assert!(!host_arch().is_empty());
    }
}
