//! Hashing content to check it against an OCI digest (`sha256:` or
//! `sha512:`, the algorithms OCI registers).

use sha2::{Digest as _, Sha256, Sha512};

/// An incremental hasher for the algorithm of a digest.
pub(crate) enum ContentHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl ContentHasher {
    /// A hasher for the algorithm of `digest`; `None` for other algorithms.
    pub fn for_digest(digest: &str) -> Option<ContentHasher> {
        match digest.split_once(':').map(|(alg, _)| alg) {
            Some("sha256") => Some(ContentHasher::Sha256(Sha256::new())),
            Some("sha512") => Some(ContentHasher::Sha512(Sha512::new())),
            _ => None,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ContentHasher::Sha256(h) => h.update(bytes),
            ContentHasher::Sha512(h) => h.update(bytes),
        }
    }

    /// `algorithm:hex` of what was hashed.
    pub fn finish(self) -> String {
        match self {
            ContentHasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            ContentHasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// The digest of `bytes` in the algorithm of `like` (sha256 when `like`
/// names another algorithm).
pub(crate) fn digest_like(like: &str, bytes: &[u8]) -> String {
    let mut h =
        ContentHasher::for_digest(like).unwrap_or_else(|| ContentHasher::Sha256(Sha256::new()));
    h.update(bytes);
    h.finish()
}

/// The `sha256:` digest of `bytes`.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    digest_like("sha256:", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_in_both_algorithms() {
        assert_eq!(
            sha256_of(b"{}"),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(digest_like("sha512:x", b"").starts_with("sha512:cf83e1357eefb8bd"));
        assert!(ContentHasher::for_digest("md5:x").is_none());
    }
}
