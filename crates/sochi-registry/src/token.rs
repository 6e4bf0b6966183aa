//! The Docker token flow as methods of the client (see the auth module for
//! the flow itself): the `Authorization` a request gets, learning from a
//! `401`, fetching and caching tokens. Apart from `auth.rs` so that the
//! authentication state knows nothing of the client, and the client
//! nothing of this file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde::Deserialize;

use crate::auth::{Challenge, HostAuth, Scope, Token};
use crate::client::{redact_url, Client};
use crate::credentials::{Credentials, Secret};
use crate::error::{parse_error_body, Error, Result};
use crate::reference::Reference;

/// Token lifetime when the token service does not say (the spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed at least this often, whatever the service says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Token answers are small; refuse anything bigger.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// `client_id` sent with the OAuth2 refresh-token grant.
const CLIENT_ID: &str = "sochi";

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Client {
    /// The `Authorization` value for a request to `repo`'s registry with
    /// `scope`, from what the host asked for before; `None` when nothing is
    /// known yet (the request goes anonymously and a `401` teaches us).
    pub(crate) async fn authorization(
        &self,
        repo: &Reference,
        scope: &Scope,
    ) -> Result<Option<HeaderValue>> {
        let host = repo.api_host().to_string();
        let known = self.inner.auth.hosts.lock().get(&host).cloned();
        let Some(known) = known else {
            return Ok(None);
        };
        let credentials = self.credentials(repo).await?;
        if let Some(Credentials::RegistryToken { token }) = &credentials {
            // A token for the registry itself: no token service to ask.
            return bearer_header(token.expose(), repo).map(Some);
        }
        match known {
            HostAuth::Basic => match credentials {
                Some(Credentials::Basic { username, password }) => {
                    Ok(Some(basic_header(&username, password.expose())))
                }
                _ => Ok(None),
            },
            HostAuth::Bearer { realm, service } => {
                let key = (host.clone(), scope.key());
                let cached = self.inner.auth.tokens.lock().get(&key).cloned();
                let token = match cached.filter(|t| t.expires > Instant::now()) {
                    Some(t) => t,
                    None => {
                        let t = self
                            .fetch_token(repo, &realm, service.as_deref(), &scope.0)
                            .await?;
                        self.inner.auth.tokens.lock().insert(key, t.clone());
                        t
                    }
                };
                bearer_header(&token.value, repo).map(Some)
            }
        }
    }

    /// Handles a `401`: learns the host's scheme from `challenges`, drops a
    /// refused token and gets a new one. When the refused request carried
    /// credentials (`sent_credentials`), they are looked up again first: a
    /// rotated password in the Docker config, a credential helper's new
    /// token or a keychain's newer entry is used from now on. `detail` is
    /// the registry's message, used if nothing can be done.
    pub(crate) async fn reauthenticate(
        &self,
        repo: &Reference,
        scope: &Scope,
        challenges: &[Challenge],
        detail: &str,
        sent_credentials: bool,
    ) -> Result<()> {
        if sent_credentials {
            self.forget_credentials(&repo.registry).await;
        }
        let host = repo.api_host().to_string();
        let unauthorized = |detail: String| Error::Unauthorized {
            registry: repo.registry.clone(),
            repository: repo.repository.clone(),
            detail,
        };
        let no_credentials = || Error::NoCredentials {
            registry: repo.registry.clone(),
            repository: repo.repository.clone(),
            detail: detail.to_string(),
        };
        let bearer = challenges.iter().find(|c| c.scheme == "bearer");
        let basic = challenges.iter().find(|c| c.scheme == "basic");
        let credentials = self.credentials(repo).await?;
        if let Some(challenge) = bearer {
            let realm = challenge
                .params
                .get("realm")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| unauthorized("the bearer challenge has no realm".into()))?
                .clone();
            let service = challenge.params.get("service").cloned();
            let scopes = scope.with_challenge(challenge.params.get("scope").map(String::as_str));
            self.inner.auth.hosts.lock().insert(
                host.clone(),
                HostAuth::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                },
            );
            self.inner
                .auth
                .tokens
                .lock()
                .remove(&(host.clone(), scope.key()));
            if matches!(credentials, Some(Credentials::RegistryToken { .. })) {
                // Sent as it is on the next attempt.
                return Ok(());
            }
            let token = self
                .fetch_token(repo, &realm, service.as_deref(), &scopes)
                .await?;
            self.inner
                .auth
                .tokens
                .lock()
                .insert((host, scope.key()), token);
            return Ok(());
        }
        if basic.is_some() {
            return match credentials {
                Some(Credentials::Basic { .. } | Credentials::RegistryToken { .. }) => {
                    self.inner.auth.hosts.lock().insert(host, HostAuth::Basic);
                    Ok(())
                }
                Some(Credentials::IdentityToken { .. }) => Err(unauthorized(
                    "the registry wants basic authentication but only an identity token is configured"
                        .into(),
                )),
                None => Err(no_credentials()),
            };
        }
        Err(unauthorized(format!(
            "401 without a usable WWW-Authenticate challenge ({detail})"
        )))
    }

    /// The error for a request refused again after renewing: no
    /// credentials, or credentials the registry does not accept.
    pub(crate) async fn refused_again(&self, repo: &Reference, detail: String) -> Error {
        match self.credentials(repo).await {
            Ok(None) => Error::NoCredentials {
                registry: repo.registry.clone(),
                repository: repo.repository.clone(),
                detail,
            },
            Ok(Some(_)) => Error::Unauthorized {
                registry: repo.registry.clone(),
                repository: repo.repository.clone(),
                detail,
            },
            Err(e) => e,
        }
    }

    /// The credentials for `repo`: the configured user, else the keychain
    /// (asked every time: it answers from memory and may have a newer
    /// entry), else the Docker config (looked up once per registry, again
    /// after [`Client::forget_credentials`]).
    pub(crate) async fn credentials(&self, repo: &Reference) -> Result<Option<Credentials>> {
        if let Some((username, password)) = &self.inner.config.user {
            return Ok(Some(Credentials::Basic {
                username: username.clone(),
                password: Secret::new(password.as_str()),
            }));
        }
        if let Some(keychain) = &self.inner.config.keychain {
            if let Some(found) = keychain.credentials(&repo.registry, &repo.repository) {
                return Ok(Some(found));
            }
        }
        let registry = repo.registry.as_str();
        let mut cache = self.inner.auth.credentials.lock().await;
        if let Some(found) = cache.get(registry) {
            return Ok(found.clone());
        }
        let docker = self.inner.docker.read().clone();
        let found = docker.credentials(registry).await?;
        cache.insert(registry.to_string(), found.clone());
        Ok(found)
    }

    /// Drops what was looked up for `registry` and reads the Docker config
    /// file again, so that the next lookup sees a rotated password and runs
    /// the credential helper again (an ECR token lasts 12 hours).
    pub(crate) async fn forget_credentials(&self, registry: &str) {
        let mut cache = self.inner.auth.credentials.lock().await;
        cache.remove(registry);
        let current = self.inner.docker.read().clone();
        match current.reload() {
            Ok(fresh) => *self.inner.docker.write() = Arc::new(fresh),
            Err(e) => {
                tracing::warn!(error = %sochi_format::error_chain(&e), "keeping the Docker config read before")
            }
        }
        tracing::debug!(registry, "credentials will be looked up again");
    }

    async fn fetch_token(
        &self,
        repo: &Reference,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Token> {
        let unauthorized = |detail: String| Error::Unauthorized {
            registry: repo.registry.clone(),
            repository: repo.repository.clone(),
            detail,
        };
        let url = Url::parse(realm)
            .map_err(|e| unauthorized(format!("token realm {realm:?} is not a url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(unauthorized(format!(
                "token realm {realm:?} is not http(s)"
            )));
        }
        let mut renewed = false;
        let (url, body) = loop {
            let credentials = self.credentials(repo).await?;
            let mut url = url.clone();
            let make = token_request(
                &self.inner.http,
                &mut url,
                credentials.as_ref(),
                service,
                scopes,
            );
            tracing::debug!(realm, scopes = %scopes.join(" "), "fetching registry token");
            let response = self.send_plain(&url, make).await?;
            let status = response.status().as_u16();
            let body = crate::client::read_limited(
                response,
                MAX_TOKEN_RESPONSE,
                "token answer",
                &url,
                self.stall(),
            )
            .await?;
            if status == 200 {
                break (url, body);
            }
            let message = parse_error_body(&body)
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            let detail = format!(
                "token service {} answered {status}: {message}",
                redact_url(&url)
            );
            let refused = matches!(status, 401 | 403);
            match credentials {
                // Perhaps rotated since they were read: read them again, once.
                Some(_) if refused && !renewed => {
                    self.forget_credentials(&repo.registry).await;
                    renewed = true;
                }
                None if refused => {
                    return Err(Error::NoCredentials {
                        registry: repo.registry.clone(),
                        repository: repo.repository.clone(),
                        detail,
                    })
                }
                _ => return Err(unauthorized(detail)),
            }
        };
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            unauthorized(format!(
                "token service {} answered invalid json: {e}",
                redact_url(&url)
            ))
        })?;
        let value = if answer.token.is_empty() {
            answer.access_token
        } else {
            answer.token
        };
        if value.is_empty() {
            return Err(unauthorized(format!(
                "token service {} answered without a token",
                redact_url(&url)
            )));
        }
        let lifetime = answer
            .expires_in
            .filter(|&s| s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .min(MAX_TOKEN_LIFETIME);
        // Renew a little early so a token does not expire in flight.
        let margin = (lifetime / 10).min(Duration::from_secs(10));
        Ok(Token {
            value,
            expires: Instant::now() + lifetime - margin,
        })
    }
}

/// The token request, made again on each retry: an OAuth2 refresh-token
/// grant (POST) for an identity token, else a GET with the service and
/// scopes added to `url`'s query, with basic credentials if any.
fn token_request(
    http: &reqwest::Client,
    url: &mut Url,
    credentials: Option<&Credentials>,
    service: Option<&str>,
    scopes: &[String],
) -> Box<dyn Fn() -> reqwest::RequestBuilder + Send + Sync> {
    match credentials {
        Some(Credentials::IdentityToken { token }) => {
            let mut form = vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", token.expose().to_string()),
                ("client_id", CLIENT_ID.to_string()),
                ("scope", scopes.join(" ")),
            ];
            if let Some(s) = service {
                form.push(("service", s.to_string()));
            }
            let body = form_encode(&form);
            let url = url.clone();
            let http = http.clone();
            Box::new(move || {
                http.post(url.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body.clone())
            })
        }
        other => {
            {
                let mut query = url.query_pairs_mut();
                if let Some(s) = service {
                    query.append_pair("service", s);
                }
                for s in scopes {
                    query.append_pair("scope", s);
                }
            }
            let auth = match other {
                Some(Credentials::Basic { username, password }) => {
                    Some(basic_header(username, password.expose()))
                }
                _ => None,
            };
            let url = url.clone();
            let http = http.clone();
            Box::new(move || {
                let request = http.get(url.clone());
                match &auth {
                    Some(a) => request.header(AUTHORIZATION, a.clone()),
                    None => request,
                }
            })
        }
    }
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

fn bearer_header(token: &str, repo: &Reference) -> Result<HeaderValue> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::Unauthorized {
            registry: repo.registry.clone(),
            repository: repo.repository.clone(),
            detail: "the token service answered a token that is not a valid header value".into(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `application/x-www-form-urlencoded` encoding.
fn form_encode(pairs: &[(&str, String)]) -> String {
    fn encode(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(k, &mut out);
        out.push('=');
        encode(v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[
                ("scope", "repository:a:pull push".into()),
                ("x", "a&b=/".into())
            ]),
            "scope=repository%3Aa%3Apull+push&x=a%26b%3D%2F"
        );
    }
}
