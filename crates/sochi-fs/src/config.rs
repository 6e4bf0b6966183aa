//! How a layer is opened and served: one set of knobs, read by the layer
//! (its span store) and by its filesystem (verification, threads, status).

use sochi_spans::SpanStoreConfig;

/// FUSE threads per layer by default. They answer from memory only (the
/// tree, spans already here); reads that wait go to the process's
/// [`ReadPool`](crate::ReadPool), so two keep a layer responsive while one
/// is busy copying a large read, and an idle layer costs little.
pub const DEFAULT_FUSE_THREADS: usize = 2;

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
