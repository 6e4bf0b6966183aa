//! SHA-256 content digests as OCI writes them: `sha256:<64 lower-case hex>`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A SHA-256 digest. Displays as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lower-case hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses `sha256:<64 lower-case hex>`.
    pub fn parse(text: &str) -> Result<Self> {
        let err = |detail| Error::Digest {
            value: text.chars().take(100).collect(),
            detail,
        };
        let hex_part = text
            .strip_prefix("sha256:")
            .ok_or_else(|| err("expected the prefix sha256:"))?;
        if hex_part.len() != 64 {
            return Err(err("expected 64 hex digits"));
        }
        if !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err("expected lower-case hex digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| err("expected hex digits"))?;
        Ok(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips() {
        let d = Sha256Digest::of(b"{}");
        assert_eq!(
            d.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(Sha256Digest::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn bad_digests_are_refused() {
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "sha256:ABCDEF",
            &format!("sha256:{}", "G".repeat(64)),
        ] {
            assert!(Sha256Digest::parse(bad).is_err(), "{bad}");
        }
    }
}
