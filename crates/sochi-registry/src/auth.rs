//! Registry authentication: `WWW-Authenticate` challenges, the Docker
//! token flow, and the token cache.
//!
//! The flow (distribution's `docs/spec/auth/token.md`): a request goes out
//! anonymously, or with what the host is known to want; a `401` carries a
//! challenge. `Basic` → the credentials go on every request to that host.
//! `Bearer realm=…,service=…,scope=…` → `GET <realm>?service=…&scope=…`
//! (with the credentials as Basic, if any; an identity token is a `POST`
//! with `grant_type=refresh_token`) gives `{"token"|"access_token",
//! "expires_in"}`. Tokens are cached per (host, scope set) until they
//! expire; a cached token that is refused gets one renewal, then the `401`
//! is an error naming the registry and repository.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use parking_lot::Mutex;

use crate::credentials::Credentials;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lower-case scheme, e.g. `bearer`, `basic`.
    pub scheme: String,
    /// Parameters, keys lower-case.
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value (RFC 9110 §11.6.1): one or more
/// challenges, each a scheme and `name=value` parameters whose values may
/// be quoted strings with commas and `\`-escapes in them.
pub(crate) fn parse_challenges(value: &str) -> Vec<Challenge> {
    let bytes = value.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_sep = |b: u8| b == b',' || b.is_ascii_whitespace();
    loop {
        while i < bytes.len() && is_sep(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && !is_sep(bytes[i]) && bytes[i] != b'=' {
            i += 1;
        }
        let name = &value[start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let is_param = j < bytes.len() && bytes[j] == b'=' && !out.is_empty() && !name.is_empty();
        if !is_param {
            if name.is_empty() {
                // A stray '=' (token68 padding): skip it.
                i += 1;
                continue;
            }
            out.push(Challenge {
                scheme: name.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
            continue;
        }
        i = j + 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut param = String::new();
        if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            let mut chars = value[i..].char_indices();
            let mut end = value.len() - i;
            while let Some((k, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            param.push(escaped);
                        }
                    }
                    '"' => {
                        end = k + 1;
                        break;
                    }
                    c => param.push(c),
                }
            }
            i += end;
        } else {
            let start = i;
            while i < bytes.len() && !is_sep(bytes[i]) {
                i += 1;
            }
            param.push_str(&value[start..i]);
        }
        if let Some(challenge) = out.last_mut() {
            challenge.params.insert(name.to_ascii_lowercase(), param);
        }
    }
    out
}

/// The set of token scopes a request needs, sorted and deduplicated so
/// that it can key the token cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Scope(pub(crate) Vec<String>);

impl Scope {
    /// `repository:<name>:pull`.
    pub fn pull(repository: &str) -> Scope {
        Scope(vec![format!("repository:{repository}:pull")])
    }

    /// `repository:<name>:pull,push`.
    pub fn push(repository: &str) -> Scope {
        Scope(vec![format!("repository:{repository}:pull,push")])
    }

    /// Push to `repository` and pull from `from` (a cross-repository mount).
    pub fn push_mount(repository: &str, from: &str) -> Scope {
        let mut scopes = vec![
            format!("repository:{repository}:pull,push"),
            format!("repository:{from}:pull"),
        ];
        scopes.sort();
        scopes.dedup();
        Scope(scopes)
    }

    /// `repository:<name>:delete` (as ORAS asks for deletes).
    pub fn delete(repository: &str) -> Scope {
        Scope(vec![format!("repository:{repository}:delete")])
    }

    pub(crate) fn key(&self) -> String {
        self.0.join(" ")
    }

    /// Our scopes plus those a challenge names.
    pub(crate) fn with_challenge(&self, challenge_scope: Option<&str>) -> Vec<String> {
        let mut all = self.0.clone();
        for s in challenge_scope.unwrap_or("").split_whitespace() {
            if !all.iter().any(|have| have == s) {
                all.push(s.to_string());
            }
        }
        all
    }
}

/// What a host asked for in its last challenge.
#[derive(Clone, Debug)]
pub(crate) enum HostAuth {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) expires: Instant,
}

/// Per-client authentication state, shared by clones of the client.
///
/// Invariant: a token is in `tokens` only for a host whose `hosts` entry is
/// `Bearer`, and is dropped when the host refuses it.
#[derive(Default)]
pub(crate) struct AuthCache {
    pub(crate) hosts: Mutex<HashMap<String, HostAuth>>,
    pub(crate) tokens: Mutex<HashMap<(String, String), Token>>,
    /// Credentials per registry, looked up once (a helper runs once).
    pub(crate) credentials: tokio::sync::Mutex<HashMap<String, Option<Credentials>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            c,
            vec![Challenge {
                scheme: "bearer".into(),
                params: params(&[
                    ("realm", "https://auth.docker.io/token"),
                    ("service", "registry.docker.io"),
                    ("scope", "repository:library/busybox:pull,push"),
                ]),
            }]
        );
    }

    #[test]
    fn several_challenges_spaces_escapes_and_tokens() {
        let c = parse_challenges(
            r#"Basic realm="Registry Realm", BEARER Realm = "https://a/t?x=1" , error=invalid_token, error_description="say \"hi\", ok""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params, params(&[("realm", "Registry Realm")]));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(
            c[1].params,
            params(&[
                ("realm", "https://a/t?x=1"),
                ("error", "invalid_token"),
                ("error_description", "say \"hi\", ok"),
            ])
        );
        assert_eq!(parse_challenges("Basic")[0].scheme, "basic");
        assert!(parse_challenges("").is_empty());
        // Unterminated quotes and token68 padding do not panic.
        assert_eq!(
            parse_challenges(r#"Bearer realm="abc"#)[0].params["realm"],
            "abc"
        );
        assert_eq!(parse_challenges("Negotiate abc==")[0].scheme, "negotiate");
    }

    #[test]
    fn scopes_key_and_merge() {
        assert_eq!(Scope::pull("a/b").key(), "repository:a/b:pull");
        assert_eq!(
            Scope::push_mount("a", "b").key(),
            "repository:a:pull,push repository:b:pull"
        );
        assert_eq!(
            Scope::pull("a").with_challenge(Some("repository:a:pull repository:c:pull")),
            vec![
                "repository:a:pull".to_string(),
                "repository:c:pull".to_string()
            ]
        );
    }
}
