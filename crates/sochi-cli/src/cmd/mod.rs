//! One file per command; each turns its flags into library options, calls
//! the libraries, and prints.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sochi_build::{
    prefetch_paths_from_json, trim_prefetch_paths, BuildOptions, PlatformSelection,
    DEFAULT_MIN_LAYER_SIZE, DEFAULT_SPAN_SIZE,
};
use sochi_format::Platform;
use sochi_store::Store;

pub mod convert;
pub mod create;
pub mod index;
pub mod load_order;
pub mod mount;
pub mod pull;
pub mod push;
pub mod snapshotter;
pub mod unmount;
pub mod ztoc;

/// Flags every command sees.
#[derive(Debug)]
pub struct Global {
    /// The store root.
    pub root: PathBuf,
    /// How to talk to registries.
    pub registry: RegistryArgs,
}

/// Registry connection flags (global).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry (default for localhost and 127.0.0.1).
    #[arg(long, global = true)]
    pub plain_http: bool,
    /// Skip TLS certificate verification.
    #[arg(long, short = 'k', global = true, visible_alias = "skip-verify")]
    pub insecure: bool,
    /// A PEM file of CA certificates to trust for the registry.
    #[arg(long, global = true, visible_alias = "tlscacert")]
    pub ca_file: Option<PathBuf>,
    /// Registry credentials USER:PASSWORD (else ~/.docker/config.json, else anonymous).
    #[arg(
        long,
        short = 'u',
        global = true,
        env = "SOCHI_REGISTRY_USER",
        hide_env_values = true
    )]
    pub user: Option<String>,
    /// A directory of containerd registry host files (`<host>/hosts.toml`:
    /// mirrors, CAs, plain-HTTP hosts), as in containerd's `config_path`.
    #[arg(long, global = true, value_name = "DIR", env = "SOCHI_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,
}

impl Global {
    /// The registry client configuration the global flags give.
    pub fn client_config(&self) -> Result<sochi_registry::ClientConfig> {
        let flags = &self.registry;
        let user = match &flags.user {
            Some(text) => {
                let Some((user, pass)) = text.split_once(':') else {
                    bail!("--user takes USER:PASSWORD");
                };
                Some((user.to_string(), pass.to_string()))
            }
            None => None,
        };
        Ok(sochi_registry::ClientConfig {
            plain_http: flags.plain_http,
            insecure: flags.insecure,
            ca_file: flags.ca_file.clone(),
            user,
            user_agent: format!("sochi/{}", env!("CARGO_PKG_VERSION")),
            hosts: sochi_registry::HostsConfig {
                dir: flags.hosts_dir.clone(),
                ..sochi_registry::HostsConfig::default()
            },
            ..sochi_registry::ClientConfig::default()
        })
    }

    /// A registry client configured from the global flags.
    pub fn registry(&self) -> Result<sochi_image::Registry> {
        self.registry_with_threads(sochi_image::REGISTRY_THREADS)
    }

    /// [`Global::registry`] on a runtime of `threads` workers.
    pub fn registry_with_threads(&self, threads: usize) -> Result<sochi_image::Registry> {
        Ok(sochi_image::Registry::connect(
            self.client_config()?,
            threads,
        )?)
    }

    /// Opens (creating if needed) the local store.
    pub fn store(&self) -> Result<Store> {
        Store::open(&self.root)
            .with_context(|| format!("opening the store at {}", self.root.display()))
    }
}

/// Index build flags shared by `create` and `convert` (names as the
/// reference's).
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Span size in bytes of uncompressed data between checkpoints.
    #[arg(long, default_value_t = DEFAULT_SPAN_SIZE)]
    pub span_size: u64,
    /// Layers smaller than this (compressed bytes) get no zTOC.
    #[arg(long, default_value_t = DEFAULT_MIN_LAYER_SIZE)]
    pub min_layer_size: u64,
    /// Optimizations to apply: `xattr` marks zTOCs of layers without xattrs.
    #[arg(long, value_delimiter = ',')]
    pub optimizations: Vec<String>,
    /// Platform to index (os/arch[/variant]); repeat for more.
    #[arg(long, short = 'p')]
    pub platform: Vec<String>,
    /// Index every platform of the image.
    #[arg(long, conflicts_with = "platform")]
    pub all_platforms: bool,
    /// Rebuild zTOCs even when the store has one for a layer.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Layers indexed at once (default: number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// A file to prefetch (its path in the image): the layer that provides
    /// it gets a prefetch artifact listing its spans. Repeat, or separate
    /// paths with commas, as the reference's flag does.
    #[arg(long, value_name = "PATH", value_delimiter = ',')]
    pub prefetch_file: Vec<String>,
    /// A JSON file holding an array of paths to prefetch (added after
    /// those of --prefetch-file).
    #[arg(long, value_name = "FILE")]
    pub prefetch_files_json: Option<PathBuf>,
    /// A load order recorded from a real start (`sochi snapshotter
    /// load-order`, `sochi load-order record`): each layer it read gets a
    /// prefetch artifact listing those spans in the order of first use.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prefetch_file", "prefetch_files_json"])]
    pub load_order: Option<PathBuf>,
    /// Index multi-frame zstd layers (pzstd, zstd:chunked) at their frame
    /// starts. A sochi extension: the reference and AWS Fargate cannot
    /// read these zTOCs. Without it zstd layers get none, as with the
    /// reference; a zstd layer of one frame never gets one.
    #[arg(long)]
    pub zstd_frames: bool,
}

impl BuildArgs {
    /// The library options these flags mean.
    pub fn options(&self) -> Result<(BuildOptions, PlatformSelection)> {
        let mut options = BuildOptions {
            span_size: self.span_size,
            min_layer_size: self.min_layer_size,
            zstd_frames: self.zstd_frames,
            ..BuildOptions::default()
        };
        for o in &self.optimizations {
            match o.as_str() {
                "xattr" => options.optimize_xattrs = true,
                other => bail!("unknown optimization {other:?} (known: xattr)"),
            }
        }
        if let Some(jobs) = self.jobs {
            options.jobs = jobs.max(1);
        }
        options.prefetch_paths = trim_prefetch_paths(&self.prefetch_file);
        if let Some(file) = &self.prefetch_files_json {
            let bytes = std::fs::read(file)
                .with_context(|| format!("reading the prefetch paths in {}", file.display()))?;
            let paths = prefetch_paths_from_json(&bytes)
                .with_context(|| format!("reading the prefetch paths in {}", file.display()))?;
            options.prefetch_paths.extend(paths);
        }
        if let Some(file) = &self.load_order {
            let bytes = std::fs::read(file)
                .with_context(|| format!("reading the load order {}", file.display()))?;
            let order = sochi_format::LoadOrder::from_bytes(&bytes)
                .with_context(|| format!("reading the load order {}", file.display()))?;
            options.load_order = Some(std::sync::Arc::new(order));
        }
        let selection = if self.all_platforms {
            PlatformSelection::All
        } else if self.platform.is_empty() {
            PlatformSelection::Host
        } else {
            PlatformSelection::Some(
                self.platform
                    .iter()
                    .map(|p| Platform::parse(p))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok((options, selection))
    }
}
