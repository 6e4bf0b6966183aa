//! The error type of the tar reader.

use std::io;

/// What went wrong while reading a tar stream.
///
/// Every variant but `Io` carries the byte offset in the uncompressed
/// stream where the problem was found (for header problems: the offset of
/// the header block). Variants are grouped by who is at fault: the archive
/// (`Corrupt`, `TooLarge`), a feature sochi refuses on purpose
/// (`Unsupported`), then the stream underneath (`Io`).
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The archive is malformed where Go's `archive/tar` would also fail
    /// (bad checksum, unparsable number or PAX record, truncation, ...).
    #[error("tar: corrupt archive at offset {offset}: {detail}")]
    Corrupt {
        /// Offset in the uncompressed stream.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// The archive uses an entry kind the zTOC cannot describe (docs/format.md §3.5):
    /// PAX global headers, GNU sparse files (old or PAX), contiguous files,
    /// volume headers or any unknown typeflag.
    #[error("tar: unsupported {what} at offset {offset}")]
    Unsupported {
        /// Offset of the entry's header block.
        offset: u64,
        /// The feature and the entry it was found in.
        what: String,
    },
    /// A PAX extended header or GNU long name/link is larger than the limit
    /// Go enforces (1 MiB), so reading it would cost unbounded memory.
    #[error("tar: {what} at offset {offset} is too large")]
    TooLarge {
        /// Offset of the header block that announced the data.
        offset: u64,
        /// What it is and how large.
        what: String,
    },
    /// Reading the underlying stream failed.
    #[error("tar: reading the uncompressed layer stream failed")]
    Io(#[from] io::Error),
}

impl TarError {
    /// The offset the error refers to, if it has one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            TarError::Corrupt { offset, .. }
            | TarError::Unsupported { offset, .. }
            | TarError::TooLarge { offset, .. } => Some(*offset),
            TarError::Io(_) => None,
        }
    }

    pub(crate) fn corrupt(offset: u64, detail: impl Into<String>) -> Self {
        TarError::Corrupt {
            offset,
            detail: detail.into(),
        }
    }
}
