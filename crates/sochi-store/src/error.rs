//! The one error type of `sochi-store`.

use std::path::PathBuf;

/// What went wrong in the local store or an OCI layout.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What we were doing, e.g. "reading".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A blob's bytes do not hash to its digest.
    #[error("blob {expected} in {layout}: content has digest {actual}")]
    DigestMismatch {
        /// The layout directory.
        layout: PathBuf,
        /// The digest asked for.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// A blob is not in the layout.
    #[error("blob {digest} not found in {layout}")]
    BlobNotFound {
        /// The layout directory.
        layout: PathBuf,
        /// The digest asked for.
        digest: String,
    },
    /// A tag or platform could not be resolved.
    #[error("{layout}: {detail}")]
    NotFound {
        /// The layout directory.
        layout: PathBuf,
        /// What was missing.
        detail: String,
    },
    /// A file of the layout or the database is malformed.
    #[error("{path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A document inside the layout could not be decoded.
    #[error("{path}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: sochi_format::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
