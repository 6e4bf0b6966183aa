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

/// A content digest as a descriptor carries it: `algorithm:encoded`
/// (`sha256:<hex>` for everything sochi stores), kept exactly as written,
/// so that a document re-encodes to the bytes it was read from. One type
/// for every digest that travels between crates (descriptors, layers,
/// indexes, reports); [`Sha256Digest`] is its checked binary form.
///
/// Decoding does not refuse a malformed digest (the document's own digest
/// must survive a round trip); [`Digest::parse`] and [`Digest::sha256`]
/// check it where it is used.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// Checks the OCI digest grammar (`algorithm ":" encoded`, lower-case
    /// algorithm components joined by `+._-`, encoded `[a-zA-Z0-9=_-]+`).
    pub fn parse(text: &str) -> Result<Digest> {
        let err = |detail| Error::Digest {
            value: text.chars().take(100).collect(),
            detail,
        };
        let (algorithm, encoded) = text
            .split_once(':')
            .ok_or_else(|| err("expected algorithm:encoded"))?;
        let algorithm_ok = !algorithm.is_empty()
            && algorithm.split(['+', '.', '_', '-']).all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !algorithm_ok {
            return Err(err("malformed algorithm"));
        }
        if encoded.is_empty()
            || !encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
        {
            return Err(err("malformed encoded part"));
        }
        Ok(Digest(text.to_string()))
    }

    /// The digest as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest it names (the only algorithm sochi stores).
    pub fn sha256(&self) -> Result<Sha256Digest> {
        Sha256Digest::parse(&self.0)
    }

    /// The encoded part (the hex of a SHA-256 digest), or the whole text
    /// when it has no `:`.
    pub fn encoded(&self) -> &str {
        self.0.split_once(':').map_or(self.0.as_str(), |(_, e)| e)
    }
}

impl From<String> for Digest {
    /// As decoding does: unchecked ([`Digest::parse`] checks).
    fn from(text: String) -> Digest {
        Digest(text)
    }
}

impl From<&str> for Digest {
    /// As decoding does: unchecked ([`Digest::parse`] checks).
    fn from(text: &str) -> Digest {
        Digest(text.to_string())
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

impl From<Sha256Digest> for Digest {
    fn from(digest: Sha256Digest) -> Digest {
        Digest(digest.to_string())
    }
}

impl std::ops::Deref for Digest {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Digest {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<Digest> for String {
    fn eq(&self, other: &Digest) -> bool {
        *self == other.0
    }
}

impl PartialEq<Digest> for str {
    fn eq(&self, other: &Digest) -> bool {
        self == other.0
    }
}

impl PartialEq<Digest> for &str {
    fn eq(&self, other: &Digest) -> bool {
        *self == other.0
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_follow_the_oci_grammar_and_keep_their_text() {
        for good in [
            "sha256:6c22e9634b5ceb406732df877ab1a998d3aa06892f6d400124dcd603638b6a3e",
            "sha512:abc",
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        ] {
            let digest = Digest::parse(good).unwrap();
            assert_eq!(digest.as_str(), good);
            assert_eq!(digest, good);
        }
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "SHA256:abc",
            "sha256:a/b",
            "sha256:a b",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?}");
        }
        let text = "sha256:6c22e9634b5ceb406732df877ab1a998d3aa06892f6d400124dcd603638b6a3e";
        let digest = Digest::parse(text).unwrap();
        assert_eq!(digest.sha256().unwrap().to_string(), text);
        assert_eq!(digest.encoded(), &text[7..]);
        // Decoding keeps whatever a document holds, so it re-encodes the same.
        let decoded: Digest = serde_json::from_str("\"not a digest\"").unwrap();
        assert_eq!(serde_json::to_string(&decoded).unwrap(), "\"not a digest\"");
        assert!(decoded.sha256().is_err());
    }

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
