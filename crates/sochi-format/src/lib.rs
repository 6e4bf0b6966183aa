//! SOCI formats, byte for byte like the reference (awslabs/soci-snapshotter).
//!
//! `sochi-format` does no I/O: it takes bytes and returns values, and turns
//! values back into the exact bytes the reference writes.
//!
//! - [`Ztoc`]: one per indexed layer, the FlatBuffers table of the layer's
//!   files and checkpoints ([`Ztoc::from_bytes`], [`Ztoc::to_bytes`]).
//! - [`Zinfo`]: the checkpoint blob inside a zTOC (gzip v1/v2, TarZinfo).
//! - [`SociIndex`]: the index manifest that lists an image's zTOCs, written
//!   as Go-canonical JSON ([`json`]) because the reference re-encodes it.
//!
//! ```
//! use sochi_format::Sha256Digest;
//! assert_eq!(
//!     Sha256Digest::of(b"{}").to_string(),
//!     "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
//! );
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use digest::{Digest, Sha256Digest};
pub use error::{error_chain, Error, Result};
pub use gotime::{format_mod_time, parse_mod_time};
pub use layer_media::{is_layer_media_type, LayerCompression};
pub use load_order::{LoadLayer, LoadOrder, LoadRun, LOAD_ORDER_VERSION, MAX_LOAD_ORDER_SIZE};
pub use oci::{
    image_diff_ids, is_image_index, is_index_media_type, media_types, Descriptor, ImageIndex,
    ImageManifest, Platform,
};
pub use prefetch::{
    PrefetchArtifact, PrefetchSpan, MAX_PREFETCH_ARTIFACT_SIZE, PREFETCH_ARTIFACT_VERSION,
};
pub use soci_index::{annotations, IndexVersion, SociIndex, EMPTY_CONFIG};
pub use zinfo::{
    CheckpointRef, FrameSpan, FrameZinfo, FrameZinfoWriter, GzipZinfo, GzipZinfoWriter, TarZinfo,
    Zinfo, WINDOW_SIZE,
};
pub use zstd_chunked::{
    check_toc_digest, ChunkedToc, TocEntry, TocPosition, CHUNKED_BUILD_TOOL,
    FOOTER_LEN as ZSTD_CHUNKED_FOOTER_LEN, MANIFEST_CHECKSUM as ZSTD_CHUNKED_MANIFEST_CHECKSUM,
    MANIFEST_POSITION as ZSTD_CHUNKED_MANIFEST_POSITION,
};
pub use zstd_frames::{zstd_frames, ZstdFrame, ZSTD_MAGIC};
pub use ztoc::{
    CompressionAlgorithm, CompressionInfo, EntryType, FileMetadata, SpanGeometry, SpanId, Ztoc,
    ZtocFileInfo, ZtocInfo, BUILD_TOOL_IDENTIFIER, ZTOC_VERSION,
};

mod digest;
mod error;
mod flatbuffer;
mod gotime;
pub mod json;
mod layer_media;
mod load_order;
mod oci;
mod prefetch;
pub mod snapshot_labels;
mod soci_index;
mod zinfo;
mod zstd_chunked;
mod zstd_frames;
mod ztoc;
