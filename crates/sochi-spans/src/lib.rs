//! The span store of a lazy layer: everything between "bytes `a..b` of the
//! uncompressed layer, please" and the layer blob in a registry or a file.
//! It knows nothing of FUSE or of filesystem trees; `sochi-fs` serves a
//! layer's files from it.
//!
//! - [`BlobReader`] is the port to the layer blob: byte ranges, with typed
//!   failures ([`BlobError`], [`BlobErrorKind`]); [`MemoryBlob`] and
//!   [`FileBlob`] implement it here, the registry client in `sochi-lazy`.
//! - [`SpanManager`] maps an uncompressed range to the zTOC's spans and
//!   fetches, verifies (SHA-256 per span), inflates and caches whole spans
//!   (in memory, and in one sparse file per layer on disk); readers of a
//!   span being fetched wait for that fetch, with a bound.
//! - [`SpanManager::prefetch`] fetches the spans a prefetch artifact lists
//!   right after the mount, without holding the mount or reads up
//!   ([`PrefetchOptions`], [`prefetch_order`]); a [`PrefetchQueue`] runs
//!   the prefetch of an image's layers in one priority order.
//! - [`SpanManager::fetch_all`] is the background fetch of the whole layer,
//!   with its whole-blob digest check ([`BackgroundOptions`]).
//! - [`LoadRecorder`] records which spans an image's readers touch, in
//!   the order of first use (a load order, made into prefetch artifacts).
//! - [`HeaderCheck`] is the first-read verification of a file's tar header
//!   against its zTOC entry.
//! - [`LayerMetrics`] counts what a layer did, for Prometheus.
//!
//! ```
//! use std::sync::Arc;
//! use sochi_format::{CompressionAlgorithm, CompressionInfo, Ztoc};
//! use sochi_spans::{MemoryBlob, SpanManager};
//!
//! // An uncompressed layer of 1024 bytes, one span.
//! let layer = vec![7u8; 1024];
//! let ztoc = Ztoc {
//!     version: "0.9".into(),
//!     build_tool_identifier: "AWS SOCI CLI v0.2".into(),
//!     compressed_archive_size: 1024,
//!     uncompressed_archive_size: 1024,
//!     toc: Vec::new(),
//!     compression: CompressionInfo {
//!         algorithm: CompressionAlgorithm::Uncompressed,
//!         max_span_id: 0,
//!         span_digests: vec![sochi_format::Sha256Digest::of(&layer)],
//!         checkpoints: sochi_format::TarZinfo { span_size: 1024, size: 1024 }.to_bytes(),
//!     },
//! };
//! let spans = SpanManager::new(&ztoc, Arc::new(MemoryBlob::new(layer)), None)?;
//! let mut buf = [0u8; 4];
//! assert_eq!(spans.read(100, &mut buf)?, 4);
//! assert_eq!(buf, [7; 4]);
//! # Ok::<(), sochi_spans::Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use background::BackgroundOptions;
pub use blob::{BlobError, BlobErrorKind, BlobReader, FileBlob, MemoryBlob};
pub use error::{Error, Result};
pub use load_order::{LayerRecording, LoadRecorder, RecordEnd, RecordOptions};
pub use memory::SpanMemory;
pub use metrics::{
    prefetch_state_name, Histogram, LayerMetrics, PrefetchRefusal, PREFETCH_DONE, PREFETCH_FAILED,
    PREFETCH_NONE, PREFETCH_RUNNING,
};
pub use sochi_format::SpanId;
pub use spans::{
    prefetch_order, DiskBudget, PrefetchJob, PrefetchOptions, PrefetchQueue, PrefetchRanges,
    SpanManager, SpanStoreConfig, DEFAULT_MEMORY_LIMIT, DEFAULT_WAIT_BOUND,
};
pub use verify::HeaderCheck;

mod background;
mod blob;
mod error;
mod load_order;
mod memory;
mod metrics;
mod recency;
mod spans;
mod verify;
