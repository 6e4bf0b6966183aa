//! The credentials the kubelet sends with its image pulls (CRI
//! `PullImage`'s `AuthConfig`, seen by sochi's image service proxy), kept
//! for the lazy reads of those images.
//!
//! Better than the reference's CRI keychain on two counts its docs list as
//! limits ("no credential rotation", "credentials are lost if the
//! snapshotter restarts"):
//! - entries are per registry host and repository and the newest wins, so a
//!   later pull of any image of a repository with fresh credentials also
//!   serves the lazy reads of the images pulled from it before;
//! - each entry is also handed to the FUSE keeper, a process that outlives
//!   the snapshotter, and held in its memory only: a restarted snapshotter
//!   reads them back, and no credential ever touches the disk.
//!
//! Nothing here logs a secret: [`Credentials`] prints `<redacted>`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sochi_cri::{AuthConfig, PullObserver};
use sochi_fs::Keeper;
use sochi_registry::{Credentials, Keychain, Reference, Secret};

/// The keeper-note key prefix of an entry; the registry and repository
/// follow, separated by spaces (neither may contain one).
const NOTE_PREFIX: &str = "cri-credentials ";

/// Credentials per (registry, repository), newest first.
#[derive(Default)]
pub struct CriKeychain {
    entries: RwLock<HashMap<(String, String), Credentials>>,
    keeper: Option<Arc<Keeper>>,
}

impl std::fmt::Debug for CriKeychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriKeychain")
            .field("entries", &self.entries.read().len())
            .finish_non_exhaustive()
    }
}

/// How an entry travels to the keeper and back.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Stored {
    Basic { username: String, password: String },
    IdentityToken { token: String },
    RegistryToken { token: String },
}

impl Stored {
    fn of(credentials: &Credentials) -> Stored {
        match credentials {
            Credentials::Basic { username, password } => Stored::Basic {
                username: username.clone(),
                password: password.expose().to_string(),
            },
            Credentials::IdentityToken { token } => Stored::IdentityToken {
                token: token.expose().to_string(),
            },
            Credentials::RegistryToken { token } => Stored::RegistryToken {
                token: token.expose().to_string(),
            },
        }
    }

    fn credentials(self) -> Credentials {
        match self {
            Stored::Basic { username, password } => Credentials::Basic {
                username,
                password: Secret::new(password),
            },
            Stored::IdentityToken { token } => Credentials::IdentityToken {
                token: Secret::new(token),
            },
            Stored::RegistryToken { token } => Credentials::RegistryToken {
                token: Secret::new(token),
            },
        }
    }
}

impl CriKeychain {
    /// A keychain that hands its entries to `keeper`, starting with the
    /// entries the keeper holds from a previous run.
    pub fn new(keeper: Option<Arc<Keeper>>) -> CriKeychain {
        let keychain = CriKeychain {
            entries: RwLock::new(HashMap::new()),
            keeper,
        };
        if let Some(keeper) = &keychain.keeper {
            match keeper.notes() {
                Ok(notes) => {
                    let mut entries = keychain.entries.write();
                    for (key, value) in notes {
                        let Some(rest) = key.strip_prefix(NOTE_PREFIX) else {
                            continue;
                        };
                        let Some((registry, repository)) = rest.split_once(' ') else {
                            continue;
                        };
                        match serde_json::from_slice::<Stored>(&value) {
                            Ok(stored) => {
                                entries.insert(
                                    (registry.to_string(), repository.to_string()),
                                    stored.credentials(),
                                );
                            }
                            Err(_) => {
                                tracing::warn!(%registry, %repository, "unreadable kept credentials; skipped")
                            }
                        }
                    }
                    if !entries.is_empty() {
                        tracing::info!(
                            repositories = entries.len(),
                            "image pull credentials taken back from the FUSE keeper"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading kept credentials from the FUSE keeper")
                }
            }
        }
        keychain
    }

    /// Records `credentials` for the repository of `image` (a reference as
    /// the kubelet sends it), replacing what was there.
    pub fn record(&self, image: &str, credentials: Credentials) {
        let reference = match Reference::parse(image) {
            Ok(reference) => reference,
            Err(error) => {
                tracing::warn!(%image, %error, "pull credentials for an unparsable image; not kept");
                return;
            }
        };
        let key = (reference.registry.clone(), reference.repository.clone());
        if let Some(keeper) = &self.keeper {
            let note = format!("{NOTE_PREFIX}{} {}", key.0, key.1);
            let kept = serde_json::to_vec(&Stored::of(&credentials))
                .map_err(std::io::Error::other)
                .and_then(|value| keeper.put_note(&note, &value));
            if let Err(error) = kept {
                tracing::warn!(registry = %key.0, repository = %key.1, %error, "credentials not handed to the FUSE keeper: lost on a restart");
            }
        }
        tracing::info!(registry = %key.0, repository = %key.1, ?credentials, "image pull credentials recorded");
        self.entries.write().insert(key, credentials);
    }

    /// How many repositories have credentials.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether no repository has credentials.
    pub fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }
}

impl PullObserver for CriKeychain {
    fn pulling(&self, image: &str, auth: Option<&AuthConfig>) {
        let Some(auth) = auth.filter(|auth| !auth.is_empty()) else {
            return;
        };
        let Some(credentials) = credentials_of(auth) else {
            tracing::warn!(%image, ?auth, "pull credentials of no kind sochi reads (an undecodable auth?); not kept");
            return;
        };
        if !auth.server_address().is_empty() {
            let registry = Reference::parse(image).map(|reference| reference.registry);
            let server = server_host(auth.server_address());
            // containerd uses a pull's credentials only for the registry
            // they name; so does sochi, lest an image of one registry
            // carry credentials for another.
            if registry.as_deref().ok() != Some(server.as_str()) {
                tracing::warn!(%image, server_address = %auth.server_address(), "pull credentials for another registry than the image's; not kept");
                return;
            }
        }
        self.record(image, credentials);
    }
}

/// The credentials of a CRI `AuthConfig`: username and password (or the
/// same in `auth`) before an identity token before a registry token.
fn credentials_of(auth: &AuthConfig) -> Option<Credentials> {
    if let Some((username, password)) = auth.user_password() {
        return Some(Credentials::Basic { username, password });
    }
    if let Some(token) = auth.identity_token() {
        return Some(Credentials::IdentityToken {
            token: token.clone(),
        });
    }
    auth.registry_token()
        .map(|token| Credentials::RegistryToken {
            token: token.clone(),
        })
}

/// The registry host of an `AuthConfig.server_address`, which a kubelet
/// writes as a Docker config key: `registry.example:5000`,
/// `https://registry.example/v2/`, or Docker Hub's
/// `https://index.docker.io/v1/`.
fn server_host(server_address: &str) -> String {
    let rest = server_address
        .split_once("://")
        .map_or(server_address, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or_default();
    // The same names a reference's registry goes through.
    Reference::parse(&format!("{host}/x"))
        .map(|reference| reference.registry)
        .unwrap_or_else(|_| host.to_string())
}

impl Keychain for CriKeychain {
    fn credentials(&self, registry: &str, repository: &str) -> Option<Credentials> {
        self.entries
            .read()
            .get(&(registry.to_string(), repository.to_string()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_records_the_credentials_of_the_image_registry_only() {
        let keychain = CriKeychain::new(None);
        let basic_auth = AuthConfig::basic("kube", Secret::new("pw"));
        keychain.pulling("registry.example:5000/team/app:v1", Some(&basic_auth));
        assert_eq!(
            keychain.credentials("registry.example:5000", "team/app"),
            Some(basic("pw"))
        );
        let elsewhere = basic_auth
            .clone()
            .with_server_address("https://other.example/v2/");
        keychain.pulling("registry.example:5000/team/two:v1", Some(&elsewhere));
        assert_eq!(
            keychain.credentials("registry.example:5000", "team/two"),
            None
        );
        let same = basic_auth
            .clone()
            .with_server_address("registry.example:5000");
        keychain.pulling("registry.example:5000/team/three:v1", Some(&same));
        assert!(keychain
            .credentials("registry.example:5000", "team/three")
            .is_some());
        let hub = basic_auth.with_server_address("https://index.docker.io/v1/");
        keychain.pulling("busybox", Some(&hub));
        assert!(keychain
            .credentials("docker.io", "library/busybox")
            .is_some());
        keychain.pulling("registry.example:5000/team/none:v1", None);
        assert_eq!(keychain.len(), 3);
    }
    use std::time::{Duration, Instant};

    fn basic(password: &str) -> Credentials {
        Credentials::Basic {
            username: "kube".into(),
            password: Secret::new(password),
        }
    }

    #[test]
    fn per_repository_newest_wins() {
        let keychain = CriKeychain::new(None);
        keychain.record("registry.example/team/app:v1", basic("old"));
        let digest = format!("sha256:{}", "ab".repeat(32));
        keychain.record(&format!("registry.example/team/app@{digest}"), basic("new"));
        keychain.record("registry.example/team/other:v1", basic("other"));
        assert_eq!(
            keychain.credentials("registry.example", "team/app"),
            Some(basic("new"))
        );
        assert_eq!(
            keychain.credentials("registry.example", "team/other"),
            Some(basic("other"))
        );
        assert_eq!(keychain.credentials("registry.example", "team/none"), None);
        // Docker Hub names normalise as the registry client's do.
        keychain.record("busybox", basic("hub"));
        assert_eq!(
            keychain.credentials("docker.io", "library/busybox"),
            Some(basic("hub"))
        );
        assert!(!format!("{keychain:?}").contains("new"));
    }

    #[test]
    fn entries_survive_in_the_keeper_not_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("keeper.sock");
        let server = {
            let socket = socket.clone();
            std::thread::spawn(move || sochi_fs::serve_keeper(&socket))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let connect = || loop {
            match Keeper::connect(&socket) {
                Ok(keeper) => break Arc::new(keeper),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(error) => panic!("connecting: {error}"),
            }
        };
        let first = CriKeychain::new(Some(connect()));
        first.record("registry.example/team/app:v1", basic("s3cret-rotated"));
        first.record(
            "registry.example/team/tok:v1",
            Credentials::RegistryToken {
                token: Secret::new("tok-42"),
            },
        );
        // A second connection stands for the restarted snapshotter; the
        // first is dropped after, as when the old process dies.
        let second = CriKeychain::new(Some(connect()));
        drop(first);
        assert_eq!(
            second.credentials("registry.example", "team/app"),
            Some(basic("s3cret-rotated"))
        );
        assert!(matches!(
            second.credentials("registry.example", "team/tok"),
            Some(Credentials::RegistryToken { .. })
        ));
        for entry in walk(dir.path()) {
            if let Ok(bytes) = std::fs::read(&entry) {
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains("s3cret"), "{}", entry.display());
            }
        }
        drop(second);
        server.join().unwrap().unwrap();
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
