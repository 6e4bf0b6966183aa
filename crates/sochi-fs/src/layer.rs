//! The one entry point to a lazy layer's filesystem: open a layer from its
//! zTOC and its blob, then mount it, plain or with its FUSE connection kept.

use std::path::Path;
use std::sync::Arc;

use sochi_format::Ztoc;
use sochi_spans::{BlobReader, SpanManager};

use crate::config::LayerConfig;
use crate::fuse::LayerFs;
use crate::keeper::Keeper;
use crate::kept::KeptMount;
use crate::mount::{mount_kept, mount_plain, MountHandle};
use crate::{LayerTree, Result};

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
        spans.start_read_ahead();
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
