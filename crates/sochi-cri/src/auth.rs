//! Registry credentials of one CRI pull ([`AuthConfig`]), with every secret
//! in a [`Secret`] that prints as `<redacted>`: a credential reaches a log
//! line only if someone calls [`Secret::expose`] to put it there.

use std::fmt;

use base64::Engine as _;

use crate::api;

/// A credential: a password, a token (sochi's one secret type, shared
/// with the registry client).
pub use sochi_registry::Secret;

/// The registry credentials a kubelet sends with `PullImage` (CRI
/// `AuthConfig`): a username and password, or the same as base64
/// `user:pass` in `auth`, or an identity token (an OAuth2 refresh token),
/// or a registry token (a bearer token sent as it is). `server_address`
/// says which registry they are for, when the kubelet knows.
///
/// `Debug` shows the username and server address only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    username: String,
    password: Secret,
    auth: Secret,
    server_address: String,
    identity_token: Secret,
    registry_token: Secret,
}

impl AuthConfig {
    /// Username and password.
    pub fn basic(username: impl Into<String>, password: Secret) -> AuthConfig {
        AuthConfig {
            username: username.into(),
            password,
            ..AuthConfig::default()
        }
    }

    /// The same, for the registry at `server_address`.
    pub fn with_server_address(mut self, server_address: impl Into<String>) -> AuthConfig {
        self.server_address = server_address.into();
        self
    }

    /// The username field as sent (empty when the kubelet sent `auth`).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The registry the credentials are for, as sent (empty when not
    /// said).
    pub fn server_address(&self) -> &str {
        &self.server_address
    }

    /// Username and password: the `username` and `password` fields when a
    /// username was sent, else `auth` decoded (standard base64 of
    /// `user:pass`, split at the first `:`, as containerd's `ParseAuth`
    /// does). `None` when neither is there, or `auth` is not base64 of
    /// UTF-8 text with a `:`.
    ///
    /// containerd prefers an identity token to `auth` when both are sent
    /// without a username; a caller that wants the same looks at
    /// [`AuthConfig::identity_token`] first.
    pub fn user_password(&self) -> Option<(String, Secret)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if self.auth.is_empty() {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(self.auth.expose().trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_string(), Secret::new(password)))
    }

    /// The identity token (an OAuth2 refresh token), if one was sent.
    pub fn identity_token(&self) -> Option<&Secret> {
        (!self.identity_token.is_empty()).then_some(&self.identity_token)
    }

    /// The registry token (a bearer token for the registry), if one was
    /// sent.
    pub fn registry_token(&self) -> Option<&Secret> {
        (!self.registry_token.is_empty()).then_some(&self.registry_token)
    }

    /// True when no field was sent.
    pub fn is_empty(&self) -> bool {
        *self == AuthConfig::default()
    }

    /// The wire message (for a `PullImage` request).
    pub fn to_wire(&self) -> api::AuthConfig {
        api::AuthConfig {
            username: self.username.clone(),
            password: self.password.expose().to_string(),
            auth: self.auth.expose().to_string(),
            server_address: self.server_address.clone(),
            identity_token: self.identity_token.expose().to_string(),
            registry_token: self.registry_token.expose().to_string(),
        }
    }
}

impl From<api::AuthConfig> for AuthConfig {
    fn from(wire: api::AuthConfig) -> AuthConfig {
        AuthConfig {
            username: wire.username,
            password: Secret::new(wire.password),
            auth: Secret::new(wire.auth),
            server_address: wire.server_address,
            identity_token: Secret::new(wire.identity_token),
            registry_token: Secret::new(wire.registry_token),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Which secrets were sent is useful and harmless; their values are
        // not shown, whatever `Secret`'s Debug ever becomes.
        let sent = |secret: &Secret| if secret.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &sent(&self.password))
            .field("auth", &sent(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &sent(&self.identity_token))
            .field("registry_token", &sent(&self.registry_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> api::AuthConfig {
        api::AuthConfig {
            username: "alice".into(),
            password: "pa55-word".into(),
            auth: base64::engine::general_purpose::STANDARD.encode("bob:s3cret:with:colons"),
            server_address: "registry.example:5000".into(),
            identity_token: "identity-tok".into(),
            registry_token: "registry-tok".into(),
        }
    }

    #[test]
    fn debug_and_display_show_no_secret() {
        let auth = AuthConfig::from(wire());
        let debug = format!("{auth:?} {auth:#?}");
        for secret in [
            "pa55-word",
            "s3cret",
            "identity-tok",
            "registry-tok",
            wire().auth.as_str(),
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("alice"), "{debug}");
        assert!(debug.contains("registry.example:5000"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn username_and_password_come_first() {
        let (user, password) = AuthConfig::from(wire()).user_password().unwrap();
        assert_eq!(user, "alice");
        assert_eq!(password.expose(), "pa55-word");
    }

    #[test]
    fn auth_is_decoded_when_no_username_was_sent() {
        let auth = AuthConfig::from(api::AuthConfig {
            username: String::new(),
            password: String::new(),
            ..wire()
        });
        let (user, password) = auth.user_password().unwrap();
        assert_eq!(user, "bob");
        // Split at the first colon only: passwords may hold colons.
        assert_eq!(password.expose(), "s3cret:with:colons");
    }

    #[test]
    fn undecodable_auth_gives_no_credentials() {
        for bad in ["not base64!", "bm9jb2xvbg=="] {
            // "bm9jb2xvbg==" is base64 of "nocolon".
            let auth = AuthConfig::from(api::AuthConfig {
                auth: bad.into(),
                ..api::AuthConfig::default()
            });
            assert_eq!(auth.user_password(), None, "{bad}");
        }
        assert_eq!(AuthConfig::default().user_password(), None);
    }

    #[test]
    fn tokens_are_there_only_when_sent() {
        let auth = AuthConfig::from(wire());
        assert_eq!(auth.identity_token().unwrap().expose(), "identity-tok");
        assert_eq!(auth.registry_token().unwrap().expose(), "registry-tok");
        let none = AuthConfig::basic("u", Secret::new("p"));
        assert!(none.identity_token().is_none());
        assert!(none.registry_token().is_none());
        assert!(!none.is_empty());
        assert!(AuthConfig::default().is_empty());
    }

    #[test]
    fn wire_round_trip() {
        assert_eq!(AuthConfig::from(wire()).to_wire(), wire());
    }
}
