//! Credentials from Docker's `config.json`, as the docker CLI finds them:
//! `credHelpers[<registry>]`, else `credsStore`, through
//! `docker-credential-<name> get` (server URL on stdin, JSON
//! `{"ServerURL","Username","Secret"}` on stdout); else the `auths` entry
//! (`auth` = base64 `user:password`, or `username`/`password`, or an
//! `identitytoken`). Docker Hub is stored under `https://index.docker.io/v1/`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use crate::credentials::{Credentials, Secret};
use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;

/// The server address Docker uses for Docker Hub in `auths` and helpers.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
/// The user name a credential helper answers for an identity token.
const TOKEN_USERNAME: &str = "<token>";
/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// A loaded Docker config. Empty when the file does not exist.
#[derive(Debug, Default)]
pub(crate) struct DockerConfig {
    path: PathBuf,
    file: ConfigFile,
    /// Where to look for `docker-credential-*`; `None` = `$PATH`. Tests set
    /// it so that they need not change the process environment.
    search_path: Option<OsString>,
}

impl DockerConfig {
    /// Loads `path`, or `$DOCKER_CONFIG/config.json`, or
    /// `$HOME/.docker/config.json`. A missing file is an empty config; a
    /// malformed one is an error naming the file.
    pub fn load(path: Option<&Path>) -> Result<DockerConfig> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => match default_path() {
                Some(p) => p,
                None => return Ok(DockerConfig::default()),
            },
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DockerConfig {
                    path,
                    ..DockerConfig::default()
                })
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        DockerConfig::from_json(&bytes, path)
    }

    /// The same file read again (a missing file is an empty config), with
    /// the same helper search path.
    pub fn reload(&self) -> Result<DockerConfig> {
        let path = (!self.path.as_os_str().is_empty()).then_some(self.path.as_path());
        let mut fresh = DockerConfig::load(path)?;
        fresh.search_path = self.search_path.clone();
        Ok(fresh)
    }

    /// Parses the bytes of a config file read from `path`.
    pub fn from_json(bytes: &[u8], path: PathBuf) -> Result<DockerConfig> {
        let file: ConfigFile = serde_json::from_slice(bytes).map_err(|e| Error::Config {
            path: path.clone(),
            detail: format!("invalid docker config json: {e}"),
        })?;
        Ok(DockerConfig {
            path,
            file,
            search_path: None,
        })
    }

    /// Looks for credential helpers in `dirs` (a `PATH`-style list) instead
    /// of `$PATH`.
    #[cfg(test)]
    pub fn with_search_path(mut self, dirs: OsString) -> DockerConfig {
        self.search_path = Some(dirs);
        self
    }

    /// The credentials for `registry` (as in [`crate::Reference::registry`]),
    /// or `None` for anonymous access.
    pub async fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        let server = if registry == DOCKER_HUB {
            DOCKER_HUB_SERVER.to_string()
        } else {
            registry.to_string()
        };
        let helper = self
            .file
            .cred_helpers
            .iter()
            .find(|(key, _)| same_registry(key, registry))
            .map(|(_, helper)| helper.clone());
        if let Some(helper) = helper {
            if let Some(creds) = self.run_helper(&helper, &server, true).await? {
                return Ok(Some(creds));
            }
        } else if let Some(store) = self.file.creds_store.as_deref().filter(|s| !s.is_empty()) {
            if let Some(creds) = self.run_helper(store, &server, false).await? {
                return Ok(Some(creds));
            }
        }
        let entry = self
            .file
            .auths
            .iter()
            .find(|(key, _)| same_registry(key, registry));
        match entry {
            Some((key, entry)) => self.decode_entry(key, entry),
            None => Ok(None),
        }
    }

    fn decode_entry(&self, key: &str, entry: &AuthEntry) -> Result<Option<Credentials>> {
        if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken {
                token: Secret::new(token),
            }));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |detail: &str| Error::Config {
                path: self.path.clone(),
                detail: format!("auths[{key:?}].auth: {detail}"),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("not base64"))?;
            let text = String::from_utf8(decoded).map_err(|_| bad("not utf-8"))?;
            let (username, password) = text
                .split_once(':')
                .ok_or_else(|| bad("not base64 of user:password"))?;
            return Ok(Some(Credentials::Basic {
                username: username.to_string(),
                password: Secret::new(password),
            }));
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::Basic {
                username: u.clone(),
                password: Secret::new(p.as_str()),
            })),
            _ => Ok(None),
        }
    }

    /// Runs `docker-credential-<helper> get`. `Ok(None)` when the helper
    /// has no credentials for the server; a missing helper binary is an
    /// error when `required` (a `credHelpers` entry), else no credentials
    /// (a global `credsStore` copied from another machine should not break
    /// anonymous pulls).
    async fn run_helper(
        &self,
        helper: &str,
        server: &str,
        required: bool,
    ) -> Result<Option<Credentials>> {
        let fail = |detail: String| Error::CredentialHelper {
            helper: helper.to_string(),
            server: server.to_string(),
            detail,
        };
        if helper.is_empty() || helper.contains(['/', '\\']) {
            return Err(fail("invalid helper name".into()));
        }
        let binary = format!("docker-credential-{helper}");
        let search = self
            .search_path
            .clone()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        let Some(program) = std::env::split_paths(&search)
            .map(|dir| dir.join(&binary))
            .find(|p| p.is_file())
        else {
            if required {
                return Err(fail(format!("{binary} not found in PATH")));
            }
            tracing::warn!(helper = %binary, "credsStore helper not found in PATH; using auths");
            return Ok(None);
        };
        let mut child = tokio::process::Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its stdin closes the
            // pipe; its exit status and output then say what happened.
            if let Err(e) = stdin.write_all(server.as_bytes()).await {
                tracing::debug!(helper = %binary, error = %e, "writing to the credential helper");
            }
        }
        let output = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("no answer in {} s", HELPER_TIMEOUT.as_secs())))?
            .map_err(|e| fail(format!("waiting for it: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stdout.contains("credentials not found") || stderr.contains("credentials not found")
            {
                return Ok(None);
            }
            return Err(fail(format!(
                "exited with {}: {}",
                output.status,
                first_line(&stdout, &stderr)
            )));
        }
        let answer: HelperAnswer = serde_json::from_slice(&output.stdout)
            .map_err(|e| fail(format!("invalid json answer: {e}")))?;
        if answer.secret.is_empty() {
            return Ok(None);
        }
        if answer.username == TOKEN_USERNAME {
            return Ok(Some(Credentials::IdentityToken {
                token: Secret::new(answer.secret),
            }));
        }
        Ok(Some(Credentials::Basic {
            username: answer.username,
            password: Secret::new(answer.secret),
        }))
    }
}

fn first_line(stdout: &str, stderr: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

fn default_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// Whether a key of `auths`/`credHelpers` (`host`, `https://host`,
/// `https://host/v1/`) names `registry`; Docker Hub's several names are one.
fn same_registry(key: &str, registry: &str) -> bool {
    let host = key
        .split_once("://")
        .map_or(key, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    if hub(registry) {
        hub(host)
    } else {
        host == registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        DockerConfig::from_json(json.as_bytes(), PathBuf::from("/test/config.json")).unwrap()
    }

    fn basic(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials::Basic {
            username: u.into(),
            password: Secret::new(p),
        })
    }

    #[tokio::test]
    async fn auths_base64_and_username_password() {
        let c = config(
            r#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
                "127.0.0.1:5000":{"username":"u","password":"p:w"},
                "https://r.example/v2/":{"auth":"YTpiOmM="},
                "tok.example":{"auth":"","identitytoken":"refresh"}
            }}"#,
        );
        assert_eq!(
            c.credentials("docker.io").await.unwrap(),
            basic("hub", "secret")
        );
        assert_eq!(
            c.credentials("127.0.0.1:5000").await.unwrap(),
            basic("u", "p:w")
        );
        assert_eq!(c.credentials("r.example").await.unwrap(), basic("a", "b:c"));
        assert_eq!(
            c.credentials("tok.example").await.unwrap(),
            Some(Credentials::IdentityToken {
                token: Secret::new("refresh")
            })
        );
        assert_eq!(c.credentials("other.example").await.unwrap(), None);
        assert_eq!(c.credentials("127.0.0.1:5001").await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_auth_and_bad_json_name_the_file() {
        let c = config(r#"{"auths":{"r.example":{"auth":"!!!"}}}"#);
        let e = c.credentials("r.example").await.unwrap_err().to_string();
        assert!(
            e.contains("/test/config.json") && e.contains("not base64"),
            "{e}"
        );
        let e = DockerConfig::from_json(b"{", PathBuf::from("/x/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/x/config.json: invalid docker config json"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let c = DockerConfig::load(Some(&dir.path().join("none.json"))).unwrap();
        assert!(c.file.auths.is_empty());
    }

    fn write_helper(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn credential_helpers_and_store() {
        let dir = tempfile::tempdir().unwrap();
        // Echoes the server it was asked for back as the user name.
        write_helper(
            dir.path(),
            "test",
            r#"[ "$1" = get ] || exit 3
read -r server || true
printf '{"ServerURL":"%s","Username":"user-%s","Secret":"s3cret"}' "$server" "$server""#,
        );
        write_helper(
            dir.path(),
            "store",
            r#"read -r server || true
case "$server" in
  tok.example) printf '{"Username":"<token>","Secret":"refresh"}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac"#,
        );
        write_helper(dir.path(), "broken", "echo boom >&2; exit 2");
        let c = config(
            r#"{"credHelpers":{"r.example":"test","docker.io":"test","b.example":"broken","m.example":"missing"},
                "credsStore":"store",
                "auths":{"fallback.example":{"auth":"YTpi"}}}"#,
        )
        .with_search_path(dir.path().as_os_str().to_owned());
        assert_eq!(
            c.credentials("r.example").await.unwrap(),
            basic("user-r.example", "s3cret")
        );
        assert_eq!(
            c.credentials("docker.io").await.unwrap(),
            basic("user-https://index.docker.io/v1/", "s3cret")
        );
        assert_eq!(
            c.credentials("tok.example").await.unwrap(),
            Some(Credentials::IdentityToken {
                token: Secret::new("refresh")
            })
        );
        // The store has nothing: the auths entry is used.
        assert_eq!(
            c.credentials("fallback.example").await.unwrap(),
            basic("a", "b")
        );
        assert_eq!(c.credentials("none.example").await.unwrap(), None);
        let e = c.credentials("b.example").await.unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-broken") && e.contains("boom"),
            "{e}"
        );
        let e = c.credentials("m.example").await.unwrap_err().to_string();
        assert!(e.contains("docker-credential-missing not found"), "{e}");
    }

    #[tokio::test]
    async fn missing_creds_store_falls_back_to_auths() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(r#"{"credsStore":"desktop","auths":{"r.example":{"auth":"YTpi"}}}"#)
            .with_search_path(dir.path().as_os_str().to_owned());
        assert_eq!(c.credentials("r.example").await.unwrap(), basic("a", "b"));
    }

    #[test]
    fn registry_keys_match_like_docker() {
        assert!(same_registry("https://index.docker.io/v1/", "docker.io"));
        assert!(same_registry("docker.io", "docker.io"));
        assert!(same_registry("http://r.example:5000/v2/", "r.example:5000"));
        assert!(!same_registry("r.example", "r.example:5000"));
        assert!(!same_registry("r.example.evil", "r.example"));
    }
}
