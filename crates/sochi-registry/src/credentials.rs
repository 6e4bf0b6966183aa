//! Credentials, and the sources a client asks for them besides the Docker
//! config.
//!
//! Secrets are held in [`Secret`], which prints as `<redacted>` in `Debug`
//! and `Display` and has no serializer, so that a password or a token can
//! reach a log line, a metric or a `--json` report only by an explicit
//! [`Secret::expose`]. The only places that expose one build an
//! `Authorization` header (marked sensitive) or a token request body.

use std::fmt;

/// A password or a token. Prints as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one registry (or one repository of it).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// User name and password: sent as `Basic` to a registry that asks for
    /// it, or to the token service of one that wants bearer tokens.
    Basic {
        /// The user name (not secret; it may be logged).
        username: String,
        /// The password.
        password: Secret,
    },
    /// An OAuth2 refresh token (Docker's `identitytoken`, CRI's
    /// `identity_token`), exchanged at the token service with
    /// `grant_type=refresh_token`.
    IdentityToken {
        /// The refresh token.
        token: Secret,
    },
    /// A bearer token for the registry itself (CRI's `registry_token`),
    /// sent as `Authorization: Bearer` without asking a token service.
    RegistryToken {
        /// The token.
        token: Secret,
    },
}

impl fmt::Debug for Credentials {
    /// Never prints secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken { .. } => f.write_str("IdentityToken(<redacted>)"),
            Credentials::RegistryToken { .. } => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// A source of credentials asked before the Docker config, per registry
/// host and repository: the snapshotter's store of what the kubelet sent
/// with each image pull. It is asked on every request that needs
/// credentials (it must answer from memory), so a newer entry is used as
/// soon as it is there.
pub trait Keychain: Send + Sync + fmt::Debug {
    /// The credentials for `repository` on `registry` (as in
    /// [`crate::Reference`]: `docker.io`, `127.0.0.1:5000`), if any.
    fn credentials(&self, registry: &str, repository: &str) -> Option<Credentials>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let basic = Credentials::Basic {
            username: "alice".into(),
            password: Secret::new("hunter2"),
        };
        let token = Credentials::RegistryToken {
            token: Secret::new("tok-123"),
        };
        let identity = Credentials::IdentityToken {
            token: Secret::new("refresh-456"),
        };
        for text in [
            format!("{basic:?}"),
            format!("{token:?}"),
            format!("{identity:?}"),
            format!("{}", Secret::new("hunter2")),
            format!("{:?}", Secret::new("hunter2")),
            format!("{:#?}", Some(&basic)),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("tok-123"), "{text}");
            assert!(!text.contains("refresh-456"), "{text}");
        }
        assert_eq!(format!("{basic:?}"), "Basic(alice, <redacted>)");
    }
}
