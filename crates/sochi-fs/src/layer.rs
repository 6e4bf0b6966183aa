//! The one entry point to a lazy layer's filesystem: open a layer from its
//! zTOC and its blob, then mount it, plain or with its FUSE connection kept.

use std::path::Path;
use std::sync::Arc;

use sochi_format::Ztoc;
use sochi_spans::{BlobReader, SpanManager, SpanStoreConfig};

use crate::fuse::LayerFs;
use crate::keeper::Keeper;
use crate::kept::KeptMount;
use crate::mount::{mount_kept, mount_plain, MountHandle};
use crate::{LayerTree, Result};

/// FUSE worker threads per layer by default.
pub const DEFAULT_FUSE_THREADS: usize = 8;

/// How a layer is opened and served.
#[derive(Clone, Debug)]
pub struct LayerConfig {
    /// The layer digest, for the status file (no status dir without it).
    pub layer_digest: Option<String>,
    /// The compressed layer size, for the status file.
    pub layer_size: u64,
    /// Check each file's tar header against the zTOC before its first read
    /// (docs/format.md §3.6; on by default in the reference and here).
    pub verify: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// The span store's caches and bounds.
    pub spans: SpanStoreConfig,
}

impl Default for LayerConfig {
    /// Verification on, [`DEFAULT_FUSE_THREADS`] threads, no status file,
    /// spans cached in memory only.
    fn default() -> LayerConfig {
        LayerConfig {
            layer_digest: None,
            layer_size: 0,
            verify: true,
            threads: DEFAULT_FUSE_THREADS,
            spans: SpanStoreConfig::default(),
        }
    }
}

/// A layer ready to mount: the tree of its zTOC and the span store over
/// its blob.
#[derive(Debug)]
pub struct Layer {
    tree: Arc<LayerTree>,
    spans: Arc<SpanManager>,
    ztoc: Arc<Ztoc>,
    config: LayerConfig,
}

impl Layer {
    /// Builds the layer tree of `ztoc` and a span store reading `blob`.
    ///
    /// # Errors
    ///
    /// The zTOC does not describe a tree (or carries what no layer may:
    /// [`crate::Error::XattrRefused`]), or its spans are malformed.
    pub fn open(ztoc: Arc<Ztoc>, blob: Arc<dyn BlobReader>, config: LayerConfig) -> Result<Layer> {
        let spans = Arc::new(SpanManager::open(&ztoc, blob, &config.spans)?);
        let tree = Arc::new(LayerTree::build(&ztoc)?);
        Ok(Layer {
            tree,
            spans,
            ztoc,
            config,
        })
    }

    /// The span store (metrics, background fetch, cache state).
    pub fn spans(&self) -> &Arc<SpanManager> {
        &self.spans
    }

    /// The layer tree.
    pub fn tree(&self) -> &LayerTree {
        &self.tree
    }

    fn filesystem(&self) -> Result<LayerFs> {
        LayerFs::new(
            Arc::clone(&self.tree),
            Arc::clone(&self.spans),
            Arc::clone(&self.ztoc),
            self.config.clone(),
        )
    }

    /// Mounts the layer read-only, `nosuid,nodev`, at `mountpoint` (as
    /// root); the handle unmounts it when dropped.
    pub fn mount(&self, mountpoint: &Path) -> Result<MountHandle> {
        mount_plain(|| self.filesystem(), self.config.threads, mountpoint)
    }

    /// Mounts the layer with its FUSE connection kept by `keeper` under
    /// `key`, so that the mount outlives this process; or, when the keeper
    /// holds a connection under `key` for a live mount at `mountpoint`,
    /// takes it over (docs/snapshotter.md, "Restarts").
    pub fn mount_kept(
        &self,
        mountpoint: &Path,
        keeper: Arc<Keeper>,
        key: &str,
    ) -> Result<(MountHandle, KeptMount)> {
        mount_kept(
            self.filesystem()?,
            self.config.threads,
            mountpoint,
            keeper,
            key,
        )
    }
}
