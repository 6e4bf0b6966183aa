//! Errors of the span store.

use crate::blob::BlobError;
use crate::SpanId;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading a layer's data through its
/// spans, from malformed input (the zTOC, the bytes fetched) to the blob
/// and the cache underneath.
///
/// Messages state this layer's fact; the cause is the source chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The zTOC's span geometry or checkpoints are malformed.
    #[error("span store: the zTOC's spans are malformed")]
    Ztoc(#[from] sochi_format::Error),
    /// A span's compressed bytes do not hash to the digest in the zTOC,
    /// also after one retry; none of its bytes were used.
    #[error("span {span}: compressed bytes have digest {actual}, the zTOC says {expected}")]
    SpanDigestMismatch {
        /// The span.
        span: SpanId,
        /// The digest recorded in the zTOC.
        expected: sochi_format::Sha256Digest,
        /// The digest of the bytes read.
        actual: sochi_format::Sha256Digest,
    },
    /// A zstd:chunked chunk decoded to bytes whose digest is not the one
    /// its table of contents gives, also after one retry; none of its
    /// bytes were used.
    #[error(
        "span {span}: the chunk decodes to digest {actual}, the table of contents says {expected}"
    )]
    ChunkDigestMismatch {
        /// The span (the chunk).
        span: SpanId,
        /// The digest from the table of contents.
        expected: sochi_format::Sha256Digest,
        /// The digest of the decoded bytes.
        actual: sochi_format::Sha256Digest,
    },
    /// A span's zstd frames did not decode to the span's size.
    #[error("span {span}: zstd: {detail}")]
    Zstd {
        /// The span.
        span: SpanId,
        /// What libzstd reported, or how the size differs.
        detail: String,
    },
    /// A span whose digest matched did not decompress.
    #[error("span {span}: cannot decompress")]
    Inflate {
        /// The span.
        span: SpanId,
        /// What zlib reported.
        #[source]
        source: sochi_zran::Error,
    },
    /// Reading the layer blob failed.
    #[error("layer blob: reading bytes {start}..{end}")]
    Blob {
        /// First byte asked for.
        start: u64,
        /// End (exclusive) of the range asked for.
        end: u64,
        /// What the blob reader reported.
        #[source]
        source: BlobError,
    },
    /// The layer blob answered a range read with the wrong number of bytes.
    #[error("layer blob: asked for bytes {start}..{end}, got {actual} bytes")]
    BlobLength {
        /// First byte asked for.
        start: u64,
        /// End (exclusive) of the range asked for.
        end: u64,
        /// How many bytes came back.
        actual: usize,
    },
    /// Another reader's fetch of this span, which this reader waited for,
    /// failed (its error went to that reader).
    #[error("span {span}: the fetch this read waited for failed: {message}")]
    SharedFetch {
        /// The span.
        span: SpanId,
        /// The fetching reader's error, as text (errors are not `Clone`).
        message: String,
    },
    /// Another reader's fetch of this span did not end in time.
    #[error("span {span}: waited {waited:?} for another reader's fetch")]
    WaitTimeout {
        /// The span.
        span: SpanId,
        /// How long this read waited.
        waited: std::time::Duration,
    },
    /// The layer blob's digest, computed by the background fetch over all
    /// its bytes, is not the layer digest.
    #[error("layer blob: whole-blob digest {actual}, expected {expected}")]
    LayerDigestMismatch {
        /// The layer digest.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// The background fetch was stopped.
    #[error("background fetch stopped")]
    Stopped,
    /// A file's tar header in the layer does not match its zTOC entry
    /// (first-read verification, docs/format.md §3.6).
    #[error("toc entry {entry} {:?}: tar header does not match the zTOC: {detail}", String::from_utf8_lossy(.name))]
    HeaderMismatch {
        /// Index of the entry in the TOC.
        entry: usize,
        /// Raw name of the entry.
        name: Vec<u8>,
        /// What differs.
        detail: String,
    },
    /// Writing or reading the on-disk span cache failed.
    #[error("span cache: {}", .path.display())]
    CacheIo {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the bytes read were not the layer's (a digest that does not
    /// match, or zstd frames that do not decode to their span): worth
    /// reading once more, never worth serving.
    pub(crate) fn is_bad_bytes(&self) -> bool {
        matches!(
            self,
            Error::SpanDigestMismatch { .. }
                | Error::ChunkDigestMismatch { .. }
                | Error::Zstd { .. }
        )
    }
}
