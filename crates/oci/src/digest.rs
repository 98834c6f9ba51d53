use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A content digest. Gantry produces and accepts `sha256` only, which is what
/// every registry and runtime supports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// A string that is not a valid `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The algorithm prefix is missing or not `sha256`.
    #[error("digest {0:?}: unsupported or missing algorithm (expected \"sha256:<hex>\")")]
    Algorithm(String),
    /// The hex part has the wrong length or characters.
    #[error("digest {0:?}: expected 64 lowercase hex characters after \"sha256:\"")]
    Encoded(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// Wraps raw sha256 output.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex characters, without the algorithm (the blob file name in an
    /// OCI layout).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the 64-character hex form without the `sha256:` prefix.
    pub fn from_hex(hex_part: &str) -> Result<Self, DigestError> {
        let valid = hex_part.len() == 64
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::Encoded(hex_part.to_string()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| DigestError::Encoded(hex_part.to_string()))?;
        Ok(Digest(out))
    }

    /// Converts to the `oci-spec` digest type used in manifests.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        oci_spec::image::Sha256Digest::from_str(&self.hex())
            .map(Into::into)
            .unwrap_or_else(|_| unreachable!("64 lowercase hex characters are a valid sha256"))
    }

    /// Converts from the `oci-spec` digest type.
    pub fn from_oci(d: &oci_spec::image::Digest) -> Result<Self, DigestError> {
        d.to_string().parse()
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("sha256", hex_part)) => {
                Digest::from_hex(hex_part).map_err(|_| DigestError::Encoded(s.to_string()))
            }
            _ => Err(DigestError::Algorithm(s.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 over streamed content.
#[derive(Clone, Default)]
pub struct DigestHasher(Sha256);

impl DigestHasher {
    /// A hasher with nothing fed yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds more content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl std::io::Write for DigestHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_of_empty_json_object() {
        assert_eq!(
            Digest::of(b"{}").to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn parse_round_trips_and_rejects_bad_input() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!(matches!(
            "md5:abc".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            "sha256:ABC".parse::<Digest>(),
            Err(DigestError::Encoded(_))
        ));
        let upper = d.to_string().to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err());
        assert!("sha256".parse::<Digest>().is_err());
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = DigestHasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }

    #[test]
    fn converts_to_and_from_oci_spec() {
        let d = Digest::of(b"x");
        assert_eq!(Digest::from_oci(&d.to_oci()).unwrap(), d);
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_strings_never_panics(s in ".*") {
            let _ = s.parse::<Digest>();
        }
    }
}
