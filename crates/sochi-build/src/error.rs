//! The one error type of `sochi-build`.

/// A boxed error from an [`crate::ImageSource`] implementation.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong while indexing a layer or an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The layer's tar stream is malformed or uses an unsupported entry.
    #[error("layer {layer}")]
    Tar {
        /// The layer (digest or file name).
        layer: String,
        /// What the tar reader found.
        #[source]
        source: sochi_tar::TarError,
    },
    /// The layer's gzip stream is malformed.
    #[error("layer {layer}")]
    Gzip {
        /// The layer (digest or file name).
        layer: String,
        /// What the inflater found.
        #[source]
        source: sochi_zran::Error,
    },
    /// A layer's bytes do not match its descriptor.
    #[error("layer {layer}: {detail}")]
    LayerMismatch {
        /// The layer digest.
        layer: String,
        /// What differs.
        detail: String,
    },
    /// A SOCI format could not be read or written.
    #[error("{context}")]
    Format {
        /// What was being read or written.
        context: String,
        /// The format error.
        #[source]
        source: sochi_format::Error,
    },
    /// A JSON document given as input could not be read.
    #[error("{what}: invalid json")]
    Json {
        /// What the document should be.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The image source failed.
    #[error("{context}")]
    Source {
        /// What was being read.
        context: String,
        /// The source's error.
        #[source]
        source: SourceError,
    },
    /// An I/O error while reading a layer or writing output.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The layer is read fine but a zTOC cannot help it (a zstd layer of
    /// one frame): an index build skips it with `reason`.
    #[error("layer {layer}: {reason}")]
    NotIndexable {
        /// The layer (digest or file name).
        layer: String,
        /// Why, as a sentence for the user.
        reason: String,
    },
    /// The image or options do not allow an index to be built.
    #[error("{0}")]
    Invalid(String),
    /// A file asked for is not in the zTOC.
    #[error("{0}")]
    NotFound(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
