//! Errors of the layer tree, the filesystem and its mounts.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while turning a zTOC into a layer tree,
/// serving it, or mounting it.
///
/// The layer-tree variants come first and are malformed input (the zTOC
/// describes something that is not a filesystem tree; names are raw bytes,
/// shown lossily); the span store's errors are wrapped; mounting last.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hardlink names a target that no earlier entry of the layer created
    /// (the reference fails the whole layer, docs/format.md §3.6).
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
    /// Reading the layer's data failed (the span store's error).
    #[error("layer data")]
    Spans(#[from] sochi_spans::Error),
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
