//! Errors of the layer tree.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while turning a zTOC into a layer tree.
///
/// All variants are malformed input: the zTOC describes something that is
/// not a filesystem tree. Names are raw bytes, shown lossily.
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
    /// The tree outgrows its 32-bit internal indexes.
    #[error("layer tree: too many {what} (limit {limit})")]
    TooLarge {
        /// What overflowed.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
}
