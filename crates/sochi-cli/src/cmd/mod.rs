//! One file per command; each turns its flags into library options, calls
//! the libraries, and prints.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sochi_build::{BuildOptions, PlatformSelection, DEFAULT_MIN_LAYER_SIZE, DEFAULT_SPAN_SIZE};
use sochi_format::Platform;
use sochi_store::Store;

pub mod convert;
pub mod create;
pub mod index;
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
}

impl Global {
    /// A registry client configured from the global flags.
    pub fn registry(&self) -> Result<crate::registry::Registry> {
        self.registry_with_threads(2)
    }

    /// [`Global::registry`] on a runtime of `threads` workers.
    pub fn registry_with_threads(&self, threads: usize) -> Result<crate::registry::Registry> {
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
        let config = sochi_registry::ClientConfig {
            plain_http: flags.plain_http,
            insecure: flags.insecure,
            ca_file: flags.ca_file.clone(),
            user,
            user_agent: format!("sochi/{}", env!("CARGO_PKG_VERSION")),
            ..sochi_registry::ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let client = {
            let _guard = runtime.enter();
            sochi_registry::Client::new(config).context("configuring the registry client")?
        };
        Ok(crate::registry::Registry { runtime, client })
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
}

impl BuildArgs {
    /// The library options these flags mean.
    pub fn options(&self) -> Result<(BuildOptions, PlatformSelection)> {
        let mut options = BuildOptions {
            span_size: self.span_size,
            min_layer_size: self.min_layer_size,
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

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An image opened for reading, from a layout or a registry.
pub struct OpenedImage {
    /// Where its blobs come from.
    pub source: Box<dyn sochi_build::ImageSource>,
    /// The image (manifest or index) descriptor.
    pub image: sochi_format::Descriptor,
    /// Where its layers can be read later (a layout dir), if local.
    pub layer_source: String,
    /// The registry client, when the image is in a registry (keeps its
    /// runtime alive as long as the source).
    pub registry: Option<std::sync::Arc<crate::registry::Registry>>,
}

/// Opens an image named on the command line.
pub fn open_image(global: &Global, image_ref: &crate::image_ref::ImageRef) -> Result<OpenedImage> {
    use crate::image_ref::ImageRef;
    match image_ref {
        ImageRef::Layout { path, tag } => {
            let layout = sochi_store::OciLayout::open(path)?;
            let image = layout.resolve(tag.as_deref())?;
            Ok(OpenedImage {
                source: Box::new(crate::layout_source::LayoutSource(layout)),
                image,
                layer_source: path
                    .canonicalize()
                    .unwrap_or(path.clone())
                    .display()
                    .to_string(),
                registry: None,
            })
        }
        ImageRef::Registry(reference) => {
            let registry = std::sync::Arc::new(global.registry()?);
            let (image, _) = registry.resolve(reference)?;
            Ok(OpenedImage {
                source: Box::new(registry.source(reference)),
                image,
                layer_source: String::new(),
                registry: Some(registry),
            })
        }
    }
}
