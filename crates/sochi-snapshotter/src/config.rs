//! The snapshotter's TOML configuration. Keys follow the reference's
//! (`/etc/soci-snapshotter-grpc/config.toml`, docs/format.md §6.11) where it has
//! them; a missing key takes its default, and a missing default file means
//! all defaults (a missing explicit `--config` is an error).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where the daemon looks when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sochi/snapshotter.toml";

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Serve Prometheus metrics here (HOST:PORT); empty for none.
    pub metrics_address: String,
    /// Forget an image's "no SOCI index" after this many seconds.
    pub no_index_ttl_sec: u64,
    /// How indexes are found.
    pub pull_modes: PullModes,
    /// FUSE settings.
    pub fuse: Fuse,
    /// Blob fetching.
    pub blob: Blob,
    /// Background fetch.
    pub background_fetch: BackgroundFetch,
    /// Prefetch of the layers' prefetch artifacts.
    pub prefetch: Prefetch,
    /// Recording of load orders (sochi's own).
    pub load_order: LoadOrderConfig,
    /// Span cache.
    pub directory_cache: DirectoryCache,
    /// Registry hosts: containerd's `hosts.toml` directory.
    pub registry: Registry,
    /// Mirrors per registry, as the reference names them.
    pub resolver: Resolver,
    /// Credentials from the kubelet's image pulls.
    pub cri_keychain: CriKeychainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            metrics_address: String::new(),
            no_index_ttl_sec: 60,
            pull_modes: PullModes::default(),
            fuse: Fuse::default(),
            blob: Blob::default(),
            background_fetch: BackgroundFetch::default(),
            prefetch: Prefetch::default(),
            load_order: LoadOrderConfig::default(),
            directory_cache: DirectoryCache::default(),
            registry: Registry::default(),
            resolver: Resolver::default(),
            cri_keychain: CriKeychainConfig::default(),
        }
    }
}

/// `[registry]`: as containerd's CRI plugin names it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Registry {
    /// A directory of `<host>/hosts.toml` files (mirrors, CAs, plain-HTTP
    /// hosts), e.g. `/etc/containerd/certs.d`; empty for none.
    pub config_path: String,
}

/// `[resolver]`: the reference's mirror configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Resolver {
    /// `[resolver.host."<host>"]`.
    pub host: BTreeMap<String, ResolverHost>,
}

/// `[resolver.host."<host>"]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResolverHost {
    /// `[[resolver.host."<host>".mirrors]]`, tried in order before the
    /// host itself.
    pub mirrors: Vec<MirrorConfig>,
}

/// One mirror.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MirrorConfig {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP (and any certificate).
    pub insecure: bool,
}

/// `[cri_keychain]`: the reference's keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct CriKeychainConfig {
    /// Serve CRI `runtime.v1.ImageService` on the snapshotter's socket,
    /// keep the credentials of each `PullImage` and forward the call to
    /// `image_service_path`; point the kubelet's
    /// `--image-service-endpoint` at the snapshotter's socket.
    pub enable_keychain: bool,
    /// containerd's CRI socket.
    pub image_service_path: String,
}

impl Default for CriKeychainConfig {
    fn default() -> Self {
        CriKeychainConfig {
            enable_keychain: false,
            image_service_path: "/run/containerd/containerd.sock".into(),
        }
    }
}

impl Config {
    /// Where the registry client sends each registry's requests.
    pub fn hosts(&self) -> sochi_registry::HostsConfig {
        sochi_registry::HostsConfig {
            dir: (!self.registry.config_path.is_empty())
                .then(|| std::path::PathBuf::from(&self.registry.config_path)),
            mirrors: self
                .resolver
                .host
                .iter()
                .map(|(host, settings)| {
                    let mirrors = settings
                        .mirrors
                        .iter()
                        .map(|m| sochi_registry::Mirror {
                            host: m.host.clone(),
                            insecure: m.insecure,
                        })
                        .collect();
                    (host.clone(), mirrors)
                })
                .collect(),
        }
    }
}

/// `[pull_modes]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PullModes {
    /// `[pull_modes.soci_v1]`.
    pub soci_v1: Enable,
    /// `[pull_modes.soci_v2]`.
    pub soci_v2: Enable,
}

/// An `enable` switch, on by default (sochi looks for v1 indexes too,
/// after v2; the reference stopped doing so by default in v0.10).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Enable {
    /// On or off.
    pub enable: bool,
}

impl Default for Enable {
    fn default() -> Self {
        Enable { enable: true }
    }
}

/// `[fuse]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Fuse {
    /// Skip the first-read tar header check (docs/format.md §3.6).
    pub disable_verification: bool,
    /// FUSE threads per layer.
    pub threads: usize,
    /// Hand each layer's FUSE connection to a keeper process: a stopped,
    /// killed or upgraded snapshotter leaves its layers mounted, running
    /// containers keep them, and the next start takes the connections
    /// over. Off: a stop unmounts every layer.
    pub keep_connections: bool,
}

impl Default for Fuse {
    fn default() -> Self {
        Fuse {
            disable_verification: false,
            threads: sochi_fs::DEFAULT_FUSE_THREADS,
            keep_connections: true,
        }
    }
}

/// `[blob]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Blob {
    /// Bound of one range read, retries included (then EIO).
    pub fetching_timeout_sec: u64,
    /// Range requests of readers in flight to one registry at once (its
    /// mirrors included), for all layers together; more wait their turn
    /// (0: no bound).
    pub max_range_requests_per_host: usize,
    /// Range requests of background fetches in flight to one registry at
    /// once, counted apart from readers' (0: no bound).
    pub max_background_requests_per_host: usize,
}

impl Default for Blob {
    fn default() -> Self {
        Blob {
            fetching_timeout_sec: 30,
            max_range_requests_per_host: sochi_registry::DEFAULT_RANGE_REQUESTS_PER_HOST,
            max_background_requests_per_host: sochi_registry::DEFAULT_BACKGROUND_REQUESTS_PER_HOST,
        }
    }
}

/// `[background_fetch]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct BackgroundFetch {
    /// No background fetch.
    pub disable: bool,
    /// Fetch in the background only after reads have fetched nothing for
    /// this long.
    pub idle_msec: u64,
    /// Fetch nothing in the background until this long after a layer is
    /// mounted: the container it was pulled for starts first (the
    /// reference's `silence_period_msec`, 30 s there).
    pub silence_period_msec: u64,
}

impl Default for BackgroundFetch {
    fn default() -> Self {
        BackgroundFetch {
            disable: false,
            idle_msec: 500,
            silence_period_msec: 30_000,
        }
    }
}

/// `[prefetch]`: the reference's keys, another default and another
/// meaning of `max_concurrency` (docs/snapshotter.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefetch {
    /// Fetch the spans of a layer's prefetch artifact right after the
    /// mount. On by default (off in the reference): the mount does not
    /// wait for it here, so it costs a container's start nothing.
    pub enable: bool,
    /// Range requests in flight per layer while prefetching; 0 for the
    /// default (4). The reference bounds layers prefetching at once.
    pub max_concurrency: usize,
}

impl Default for Prefetch {
    fn default() -> Self {
        Prefetch {
            enable: true,
            max_concurrency: 0,
        }
    }
}

impl Prefetch {
    /// The prefetch options these keys ask for, `None` when disabled.
    pub fn options(&self) -> Option<sochi_spans::PrefetchOptions> {
        let defaults = sochi_spans::PrefetchOptions::default();
        self.enable.then_some(sochi_spans::PrefetchOptions {
            concurrency: match self.max_concurrency {
                0 => defaults.concurrency,
                n => n,
            },
            ..defaults
        })
    }
}

/// `[load_order]`: recording which spans each image's start reads, in
/// the order of first use (docs/prefetch.md); `sochi snapshotter
/// load-order --image REF` exports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadOrderConfig {
    /// Record each image from its first lazy layer mount on.
    pub record: bool,
    /// A recording ends once no new span was read for this long.
    pub quiet_sec: u64,
    /// ... or this long after the first read.
    pub max_sec: u64,
    /// ... or at this many runs of spans.
    pub max_runs: usize,
}

impl Default for LoadOrderConfig {
    fn default() -> Self {
        let defaults = sochi_spans::RecordOptions::default();
        LoadOrderConfig {
            record: true,
            quiet_sec: defaults.quiet.as_secs(),
            max_sec: defaults.max_duration.as_secs(),
            max_runs: defaults.max_runs,
        }
    }
}

impl LoadOrderConfig {
    /// The recording bounds these keys ask for, `None` when disabled.
    pub fn options(&self) -> Option<sochi_spans::RecordOptions> {
        self.record.then(|| sochi_spans::RecordOptions {
            quiet: std::time::Duration::from_secs(self.quiet_sec.max(1)),
            max_duration: std::time::Duration::from_secs(self.max_sec.max(1)),
            max_runs: self.max_runs.max(1),
            ..sochi_spans::RecordOptions::default()
        })
    }
}

/// `[directory_cache]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DirectoryCache {
    /// Bound of the on-disk span caches of all layers together, in bytes
    /// (least recently used spans of any layer go first); none if unset.
    pub max_bytes: Option<u64>,
    /// Bound of the spans held in memory, all layers together, in bytes.
    pub memory_bytes: u64,
}

impl Default for DirectoryCache {
    fn default() -> Self {
        DirectoryCache {
            max_bytes: None,
            memory_bytes: 64 << 20,
        }
    }
}

impl Config {
    /// Reads `path`; `explicit` says whether the user named it (then it
    /// must exist).
    pub fn load(path: &Path, explicit: bool) -> Result<Config> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Config {
            context: format!("reading configuration {}", path.display()),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| failed(e.into())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(error) => Err(failed(error.into())),
        }
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config {
            context: "writing the configuration as TOML".into(),
            source: e.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_partial_files_fill_in() {
        let text = Config::default().to_toml().unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.blob.fetching_timeout_sec, 30);
        let partial: Config = toml::from_str("[pull_modes.soci_v1]\nenable = false\n").unwrap();
        assert!(!partial.pull_modes.soci_v1.enable);
        assert!(partial.pull_modes.soci_v2.enable);
        assert_eq!(partial.no_index_ttl_sec, 60);
        assert!(toml::from_str::<Config>("fuse = 3").is_err());
    }

    #[test]
    fn prefetch_is_on_by_default_and_zero_concurrency_means_four() {
        let defaults = Config::default();
        assert_eq!(defaults.prefetch.options().unwrap().concurrency, 4);
        let config: Config =
            toml::from_str("[prefetch]\nenable = true\nmax_concurrency = 2\n").unwrap();
        assert_eq!(config.prefetch.options().unwrap().concurrency, 2);
        let off: Config = toml::from_str("[prefetch]\nenable = false\n").unwrap();
        assert!(off.prefetch.options().is_none());
    }

    #[test]
    fn registry_hosts_mirrors_and_the_keychain_as_the_reference_names_them() {
        let config: Config = toml::from_str(
            r#"
[registry]
config_path = "/etc/containerd/certs.d"

[[resolver.host."docker.io".mirrors]]
host = "mirror.local:5000"
insecure = true
request_timeout_sec = 5

[[resolver.host."docker.io".mirrors]]
host = "second.local"

[cri_keychain]
enable_keychain = true
image_service_path = "/run/k3s/containerd/containerd.sock"
"#,
        )
        .unwrap();
        let hosts = config.hosts();
        assert_eq!(
            hosts.dir.as_deref(),
            Some(Path::new("/etc/containerd/certs.d"))
        );
        let mirrors = &hosts.mirrors["docker.io"];
        assert_eq!(mirrors.len(), 2);
        assert!(mirrors[0].insecure && !mirrors[1].insecure);
        assert_eq!(mirrors[1].host, "second.local");
        assert!(config.cri_keychain.enable_keychain);
        assert_eq!(
            config.cri_keychain.image_service_path,
            "/run/k3s/containerd/containerd.sock"
        );
        let defaults = Config::default();
        assert!(!defaults.cri_keychain.enable_keychain);
        assert!(defaults.hosts().dir.is_none());
    }
}
