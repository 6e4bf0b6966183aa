//! Errors of the layer tree and the span manager.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while turning a zTOC into a layer tree or
/// reading a layer's data through its spans.
///
/// The layer-tree variants come first and are malformed input (the zTOC
/// describes something that is not a filesystem tree; names are raw bytes,
/// shown lossily); the span manager's follow, from malformed input to I/O.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hardlink names a target that no earlier entry of the layer created
    /// (the reference fails the whole layer, spec §3.6).
    #[error(
        "layer tree: toc entry {entry} hardlink {:?} points to {:?}, which is not in the layer",
        String::from_utf8_lossy(.name),
        String::from_utf8_lossy(.target)
    )]
    HardlinkTargetMissing {
        /// Index of the entry in the TOC.
        entry: usize,
        /// Raw name of the hardlink.
        name: Vec<u8>,
        /// Raw link name it points to.
        target: Vec<u8>,
    },
    /// A hardlink points to a directory.
    #[error(
        "layer tree: toc entry {entry} hardlink {:?} points to directory {:?}",
        String::from_utf8_lossy(.name),
        String::from_utf8_lossy(.target)
    )]
    HardlinkToDirectory {
        /// Index of the entry in the TOC.
        entry: usize,
        /// Raw name of the hardlink.
        name: Vec<u8>,
        /// Raw link name it points to.
        target: Vec<u8>,
    },
    /// A path component of an entry (or of a hardlink target) is not a
    /// directory.
    #[error(
        "layer tree: toc entry {entry} {:?} has a parent component {:?} that is not a directory",
        String::from_utf8_lossy(.name),
        String::from_utf8_lossy(.component)
    )]
    NotADirectory {
        /// Index of the entry in the TOC.
        entry: usize,
        /// Raw name of the entry.
        name: Vec<u8>,
        /// The component that is not a directory.
        component: Vec<u8>,
    },
    /// A field of an entry is out of range (a negative size or offset, a
    /// device number that does not fit in 32 bits).
    #[error("layer tree: toc entry {entry} has an invalid {what}: {value}")]
    Corrupt {
        /// Index of the entry in the TOC.
        entry: usize,
        /// Which field.
        what: &'static str,
        /// Its value.
        value: i64,
    },
    /// An entry carries an xattr that no layer may carry (the policy of
    /// [`sochi_tar::check_xattr`], which the unpack applies too).
    #[error(
        "layer tree: toc entry {entry} {:?} (data at uncompressed offset {uncompressed_offset}): \
         xattr {:?} refused: {reason}",
        String::from_utf8_lossy(.name),
        String::from_utf8_lossy(.key)
    )]
    XattrRefused {
        /// Index of the entry in the TOC.
        entry: usize,
        /// Raw name of the entry.
        name: Vec<u8>,
        /// Where the entry's data starts in the uncompressed layer.
        uncompressed_offset: i64,
        /// The xattr's name (without `SCHILY.xattr.`).
        key: Vec<u8>,
        /// Why it is refused.
        reason: sochi_tar::XattrRefusal,
    },
    /// The tree outgrows its 32-bit internal indexes.
    #[error("layer tree: too many {what} (limit {limit})")]
    TooLarge {
        /// What overflowed.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The zTOC's span geometry or checkpoints are malformed.
    #[error("span manager: {0}")]
    Ztoc(#[from] sochi_format::Error),
    /// A span's compressed bytes do not hash to the digest in the zTOC,
    /// also after one retry; none of its bytes were used.
    #[error("span {span}: compressed bytes have digest {actual}, the ztoc says {expected}")]
    SpanDigestMismatch {
        /// The span id.
        span: usize,
        /// The digest recorded in the zTOC.
        expected: sochi_format::Sha256Digest,
        /// The digest of the bytes fetched.
        actual: sochi_format::Sha256Digest,
    },
    /// A span whose digest matched did not decompress.
    #[error("span {span}: cannot decompress")]
    Inflate {
        /// The span id.
        span: usize,
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
        source: std::io::Error,
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
    /// failed.
    #[error("span {span}: the fetch this read waited for failed: {message}")]
    SharedFetch {
        /// The span id.
        span: usize,
        /// The fetching reader's error.
        message: String,
    },
    /// Another reader's fetch of this span did not end in time.
    #[error("span {span}: waited {waited:?} for another reader's fetch")]
    WaitTimeout {
        /// The span id.
        span: usize,
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
    /// (spec §3.6 verification on first read).
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
    /// Mounting the layer failed.
    #[error("mounting at {}", .path.display())]
    Mount {
        /// The mountpoint.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
