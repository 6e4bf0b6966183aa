//! Where a registry's requests go: containerd's registry host
//! configuration (`hosts.toml` under a `config_path` directory), which is
//! what cluster tools such as Spegel write, plus mirrors named in sochi's
//! own configuration the way the reference names them.
//!
//! For a registry `host[:port]`, `DIR/host[:port]/hosts.toml` is read, else
//! `DIR/_default/hosts.toml`; without either, requests go to the registry
//! itself. In the file:
//!
//! ```toml
//! server = "https://registry.example.com"   # the origin; default https://<host>
//!
//! [host."http://mirror.local:5000"]         # tried first, in file order
//!   capabilities = ["pull", "resolve"]      # default: pull, resolve, push
//!   ca = "/etc/certs/mirror.pem"            # or a list; relative to this file
//!   skip_verify = false
//!   override_path = false                   # true: the URL path replaces /v2
//! ```
//!
//! A host URL without a scheme is `https`; without a path it gets `/v2`,
//! and a path is followed by `/v2` unless `override_path` is set. Mirrors
//! from sochi's configuration (`[[resolver.host."<host>".mirrors]]`) come
//! after the file's hosts and before the origin.
//!
//! Reads (`GET`, `HEAD`) go to the hosts in order: manifests by tag to the
//! hosts that may `resolve`, everything else (blobs, ranges, manifests by
//! digest, referrers) to those that may `pull`; the origin is always last.
//! Writes go to the origin only. A mirror never gets the origin's
//! credentials, only credentials configured for the mirror's own host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use reqwest::Url;

use crate::error::{Error, Result};
use crate::reference::Reference;

/// What a host may be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Blobs, ranges, manifests by digest, referrers.
    pub pull: bool,
    /// Manifests by tag.
    pub resolve: bool,
    /// Uploads (sochi pushes to the origin only).
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// A mirror named in sochi's own configuration (the reference's
/// `[[resolver.host."<host>".mirrors]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port]`, or a URL with a scheme and path.
    pub host: String,
    /// Plain HTTP and any certificate (the reference's `insecure`).
    pub insecure: bool,
}

/// Where the requests for each registry go: a `hosts.toml` directory and
/// mirrors per registry. The default sends every request to the registry
/// itself.
#[derive(Clone, Debug, Default)]
pub struct HostsConfig {
    /// containerd's `config_path`: `DIR/<host>/hosts.toml`.
    pub dir: Option<PathBuf>,
    /// Mirrors per registry host (`docker.io`, `127.0.0.1:5000`).
    pub mirrors: HashMap<String, Vec<Mirror>>,
}

/// One host a registry's requests may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryHost {
    /// `scheme://authority/path`, the path ending in `/v2` unless
    /// overridden; the repository follows it.
    pub base: Url,
    /// What it may be asked.
    pub capabilities: Capabilities,
    /// CA certificates (PEM files) trusted for it besides the system's.
    pub ca: Vec<PathBuf>,
    /// Accept any certificate.
    pub skip_verify: bool,
    /// A mirror (`false`: the registry itself, always last).
    pub mirror: bool,
}

impl RegistryHost {
    /// `authority` of the base URL: the key of its authentication state
    /// and of its credentials.
    pub fn authority(&self) -> String {
        match self.base.port() {
            Some(port) => format!("{}:{port}", self.base.host_str().unwrap_or("")),
            None => self.base.host_str().unwrap_or("").to_string(),
        }
    }
}

/// Parses a host URL as containerd does: `https` without a scheme, `/v2`
/// appended unless `override_path`.
fn host_url(text: &str, override_path: bool, file: &Path) -> Result<Url> {
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("https://{text}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| Error::Config {
        path: file.to_path_buf(),
        detail: format!("host {text:?} is not a url: {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Config {
            path: file.to_path_buf(),
            detail: format!("host {text:?} is not an http(s) url with a host"),
        });
    }
    let path = url.path().trim_end_matches('/').to_string();
    let path = if override_path || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The settings of one host in a `hosts.toml` (the top level or a
/// `[host."…"]` table).
fn host_settings(
    table: &toml::Table,
    file: &Path,
    what: &str,
) -> Result<(Capabilities, Vec<PathBuf>, bool, bool)> {
    let bad = |detail: String| Error::Config {
        path: file.to_path_buf(),
        detail: format!("{what}: {detail}"),
    };
    let capabilities = match table.get("capabilities") {
        None => Capabilities::ALL,
        Some(toml::Value::Array(items)) => {
            let mut caps = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for item in items {
                match item.as_str() {
                    Some("pull") => caps.pull = true,
                    Some("resolve") => caps.resolve = true,
                    Some("push") => caps.push = true,
                    _ => return Err(bad(format!("unknown capability {item}"))),
                }
            }
            caps
        }
        Some(other) => return Err(bad(format!("capabilities must be a list, not {other}"))),
    };
    let dir = file.parent().unwrap_or(Path::new("/"));
    let ca = match table.get("ca") {
        None => Vec::new(),
        Some(toml::Value::String(path)) => vec![dir.join(path)],
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(|path| dir.join(path))
                    .ok_or_else(|| bad(format!("ca entry {item} is not a path")))
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(bad(format!("ca must be a path or a list, not {other}"))),
    };
    let flag = |key: &str| match table.get(key) {
        None => Ok(false),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(other) => Err(bad(format!("{key} must be true or false, not {other}"))),
    };
    let skip_verify = flag("skip_verify")?;
    let override_path = flag("override_path")?;
    for ignored in ["client", "header"] {
        if table.contains_key(ignored) {
            tracing::warn!(file = %file.display(), what, key = ignored, "hosts.toml setting not supported; ignored");
        }
    }
    Ok((capabilities, ca, skip_verify, override_path))
}

/// Parses a `hosts.toml` for `registry`: its `[host]` entries in file
/// order, then the origin (`server`, else `origin`).
pub(crate) fn parse_hosts_toml(text: &str, file: &Path, origin: Url) -> Result<Vec<RegistryHost>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Config {
        path: file.to_path_buf(),
        detail: format!("invalid toml: {}", e.message()),
    })?;
    let mut hosts = Vec::new();
    if let Some(entries) = table.get("host") {
        let entries = entries.as_table().ok_or_else(|| Error::Config {
            path: file.to_path_buf(),
            detail: "`host` must be a table of [host.\"<url>\"] entries".into(),
        })?;
        for (name, settings) in entries {
            let settings = settings.as_table().ok_or_else(|| Error::Config {
                path: file.to_path_buf(),
                detail: format!("host {name:?} must be a table"),
            })?;
            let what = format!("host {name:?}");
            let (capabilities, ca, skip_verify, override_path) =
                host_settings(settings, file, &what)?;
            hosts.push(RegistryHost {
                base: host_url(name, override_path, file)?,
                capabilities,
                ca,
                skip_verify,
                mirror: true,
            });
        }
    }
    let (capabilities, ca, skip_verify, override_path) = host_settings(&table, file, "server")?;
    let base = match table.get("server") {
        None => origin,
        Some(toml::Value::String(server)) => host_url(server, override_path, file)?,
        Some(other) => {
            return Err(Error::Config {
                path: file.to_path_buf(),
                detail: format!("server must be a url, not {other}"),
            })
        }
    };
    hosts.push(RegistryHost {
        base,
        capabilities,
        ca,
        skip_verify,
        mirror: false,
    });
    Ok(hosts)
}

/// A parsed `hosts.toml` and the modification time it was parsed at.
#[derive(Clone)]
struct Parsed {
    file: Option<(PathBuf, Option<SystemTime>)>,
    hosts: Arc<Vec<RegistryHost>>,
}

/// [`HostsConfig`] with each registry's hosts parsed once, and again when
/// its `hosts.toml` changes (a node agent may write it at any time).
#[derive(Default)]
pub(crate) struct HostsCache {
    config: HostsConfig,
    parsed: Mutex<HashMap<String, Parsed>>,
}

impl HostsCache {
    pub fn new(config: HostsConfig) -> HostsCache {
        HostsCache {
            config,
            parsed: Mutex::new(HashMap::new()),
        }
    }

    /// The `hosts.toml` that applies to `registry`, if any.
    fn file_for(&self, registry: &str) -> Option<PathBuf> {
        let dir = self.config.dir.as_ref()?;
        [registry, "_default"]
            .iter()
            .map(|name| dir.join(name).join("hosts.toml"))
            .find(|path| path.is_file())
    }

    /// The hosts of `repo`'s registry, in the order they are tried; the
    /// origin (`origin`, the URL base the client would use without any
    /// configuration) is last.
    pub fn hosts(&self, repo: &Reference, origin: &Url) -> Result<Arc<Vec<RegistryHost>>> {
        let file = self.file_for(&repo.registry);
        let stamp = file.as_ref().map(|path| {
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            (path.clone(), modified)
        });
        if let Some(parsed) = self.parsed.lock().get(&repo.registry) {
            if parsed.file == stamp {
                return Ok(parsed.hosts.clone());
            }
        }
        let mut hosts = match &file {
            None => vec![RegistryHost {
                base: origin.clone(),
                capabilities: Capabilities::ALL,
                ca: Vec::new(),
                skip_verify: false,
                mirror: false,
            }],
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                parse_hosts_toml(&text, path, origin.clone())?
            }
        };
        if let Some(mirrors) = self.config.mirrors.get(&repo.registry) {
            let origin_at = hosts.len() - 1;
            let extra = mirrors
                .iter()
                .map(|m| mirror_host(m, Path::new("sochi configuration")))
                .collect::<Result<Vec<_>>>()?;
            hosts.splice(origin_at..origin_at, extra);
        }
        let hosts = Arc::new(hosts);
        if let Some(path) = &file {
            tracing::debug!(registry = %repo.registry, file = %path.display(), hosts = ?hosts.iter().map(|h| h.base.as_str()).collect::<Vec<_>>(), "registry hosts");
        }
        self.parsed.lock().insert(
            repo.registry.clone(),
            Parsed {
                file: stamp,
                hosts: hosts.clone(),
            },
        );
        Ok(hosts)
    }
}

/// A mirror of sochi's configuration as a host: pull and resolve.
fn mirror_host(mirror: &Mirror, source: &Path) -> Result<RegistryHost> {
    let text = if mirror.host.contains("://") {
        mirror.host.clone()
    } else if mirror.insecure {
        format!("http://{}", mirror.host)
    } else {
        format!("https://{}", mirror.host)
    };
    Ok(RegistryHost {
        base: host_url(&text, false, source)?,
        capabilities: Capabilities {
            pull: true,
            resolve: true,
            push: false,
        },
        ca: Vec::new(),
        skip_verify: mirror.insecure,
        mirror: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Url {
        Url::parse("https://registry.example/v2").unwrap()
    }

    #[test]
    fn hosts_in_file_order_then_the_server() {
        let text = r#"
server = "https://registry.example"

[host."http://zeta.local:5000"]
  capabilities = ["pull", "resolve"]

[host."alpha.local"]
  capabilities = ["pull"]
  ca = ["certs/alpha.pem", "/abs/extra.pem"]
  skip_verify = true

[host."https://peer.local/registry"]
  override_path = true
"#;
        let hosts =
            parse_hosts_toml(text, Path::new("/etc/hosts.d/r/hosts.toml"), origin()).unwrap();
        let bases: Vec<&str> = hosts.iter().map(|h| h.base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "http://zeta.local:5000/v2",
                "https://alpha.local/v2",
                "https://peer.local/registry",
                "https://registry.example/v2",
            ]
        );
        assert!(hosts[0].capabilities.resolve && !hosts[0].capabilities.push);
        assert!(!hosts[1].capabilities.resolve && hosts[1].capabilities.pull);
        assert_eq!(
            hosts[1].ca,
            [
                PathBuf::from("/etc/hosts.d/r/certs/alpha.pem"),
                PathBuf::from("/abs/extra.pem")
            ]
        );
        assert!(hosts[1].skip_verify);
        assert_eq!(hosts[2].capabilities, Capabilities::ALL);
        assert_eq!(
            hosts.iter().map(|h| h.mirror).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(hosts[0].authority(), "zeta.local:5000");
    }

    #[test]
    fn no_server_means_the_registry_itself() {
        let hosts = parse_hosts_toml("", Path::new("/x/hosts.toml"), origin()).unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].base, origin());
        let hosts = parse_hosts_toml(
            "server = \"http://127.0.0.1:5000\"\n",
            Path::new("/x/hosts.toml"),
            origin(),
        )
        .unwrap();
        assert_eq!(hosts[0].base.as_str(), "http://127.0.0.1:5000/v2");
    }

    #[test]
    fn bad_files_name_the_file_and_the_setting() {
        for (text, wanted) in [
            ("server = 5", "server must be a url"),
            (
                "[host.\"m\"]\ncapabilities = [\"fly\"]",
                "unknown capability",
            ),
            (
                "[host.\"m\"]\nskip_verify = \"yes\"",
                "skip_verify must be true or false",
            ),
            ("[host.\"ftp://m\"]", "not an http(s) url"),
            ("server = ", "invalid toml"),
        ] {
            let e = parse_hosts_toml(text, Path::new("/etc/c/hosts.toml"), origin())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/etc/c/hosts.toml") && e.contains(wanted),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn files_are_found_per_registry_then_default_and_read_again_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("hosts.toml"), text).unwrap();
        };
        let cache = HostsCache::new(HostsConfig {
            dir: Some(dir.path().to_path_buf()),
            mirrors: HashMap::from([(
                "other.example".to_string(),
                vec![Mirror {
                    host: "cache.local:5001".into(),
                    insecure: true,
                }],
            )]),
        });
        let r = Reference::parse("127.0.0.1:5000/app:v1").unwrap();
        let origin = Url::parse("http://127.0.0.1:5000/v2").unwrap();
        assert_eq!(cache.hosts(&r, &origin).unwrap().len(), 1);

        write("_default", "[host.\"http://fallback.local\"]\n");
        let bases =
            |hosts: &[RegistryHost]| hosts.iter().map(|h| h.base.to_string()).collect::<Vec<_>>();
        assert_eq!(
            bases(&cache.hosts(&r, &origin).unwrap()),
            ["http://fallback.local/v2", "http://127.0.0.1:5000/v2"]
        );
        write("127.0.0.1:5000", "[host.\"http://m1.local\"]\n");
        assert_eq!(
            bases(&cache.hosts(&r, &origin).unwrap()),
            ["http://m1.local/v2", "http://127.0.0.1:5000/v2"]
        );
        // Rewritten with a different length, so the change shows whatever
        // the file system's timestamp granularity.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(
            "127.0.0.1:5000",
            "[host.\"http://m2.local:81\"]\n[host.\"http://m3.local\"]\n",
        );
        assert_eq!(cache.hosts(&r, &origin).unwrap().len(), 3);

        let other = Reference::parse("other.example/app:v1").unwrap();
        let other_origin = Url::parse("https://other.example/v2").unwrap();
        let hosts = cache.hosts(&other, &other_origin).unwrap();
        assert_eq!(
            bases(&hosts),
            [
                "http://fallback.local/v2",
                "http://cache.local:5001/v2",
                "https://other.example/v2"
            ]
        );
        assert!(hosts[1].skip_verify && !hosts[1].capabilities.push);
    }
}
