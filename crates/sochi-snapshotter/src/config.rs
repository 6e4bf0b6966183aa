//! The snapshotter's TOML configuration. Keys follow the reference's
//! (`/etc/soci-snapshotter-grpc/config.toml`, docs/format.md §6.11) where it has
//! them; a missing key takes its default, and a missing default file means
//! all defaults (a missing explicit `--config` is an error).

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
    /// Span cache.
    pub directory_cache: DirectoryCache,
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
            directory_cache: DirectoryCache::default(),
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
}

impl Default for Blob {
    fn default() -> Self {
        Blob {
            fetching_timeout_sec: 30,
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

/// `[directory_cache]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DirectoryCache {
    /// Bound of each layer's on-disk span cache in bytes (LRU); none if
    /// unset.
    pub max_bytes: Option<u64>,
    /// Bound of each layer's in-memory span cache in bytes.
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
}
