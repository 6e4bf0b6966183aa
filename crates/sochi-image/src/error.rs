//! The one error type of `sochi-image`.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while building, pushing or converting an image.
///
/// Each variant states what was being done (`context`); the cause is the
/// source chain, never repeated in the message. Grouped by who is at
/// fault: the caller, the image, the registry, the local store, the
/// machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image name that is neither a registry reference nor
    /// `oci:PATH[:TAG]`.
    #[error("image {text:?}: {reason}")]
    Reference {
        /// What was given.
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// `push` found no index in the local store for an image manifest.
    #[error(
        "no SOCI index for {image} ({platform}, manifest {manifest}) in the local store: run `sochi create {image}` first"
    )]
    NoLocalIndex {
        /// The image.
        image: String,
        /// The platform.
        platform: String,
        /// The image manifest digest.
        manifest: String,
    },
    /// The index builder failed (the image, its layers, the source).
    #[error("{context}")]
    Build {
        /// What was being done.
        context: String,
        /// The builder's error.
        #[source]
        source: Box<sochi_build::Error>,
    },
    /// A SOCI or OCI document could not be read or written.
    #[error("{context}")]
    Format {
        /// What was being done.
        context: String,
        /// The format error.
        #[source]
        source: sochi_format::Error,
    },
    /// Talking to a registry failed.
    #[error("{context}")]
    Registry {
        /// What was being done.
        context: String,
        /// The registry client's error (boxed: it is large).
        #[source]
        source: Box<sochi_registry::Error>,
    },
    /// Reading an image's blob from its source failed.
    #[error("{context}")]
    Source {
        /// What was being done.
        context: String,
        /// The source's error.
        #[source]
        source: sochi_build::SourceError,
    },
    /// The local store or an OCI layout failed.
    #[error("{context}")]
    Store {
        /// What was being done.
        context: String,
        /// The store's error.
        #[source]
        source: sochi_store::Error,
    },
    /// Local I/O or the async runtime failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `.context(…)` for the errors this crate wraps.
pub(crate) trait Context<T> {
    /// Wraps the error with what was being done.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// [`Context::context`] with a message made only on failure.
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

macro_rules! wraps {
    ($source:ty, $variant:ident, $wrap:expr) => {
        impl<T> Context<T> for std::result::Result<T, $source> {
            fn context(self, context: impl Into<String>) -> Result<T> {
                self.map_err(|source| Error::$variant {
                    context: context.into(),
                    source: $wrap(source),
                })
            }
            fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
                self.map_err(|source| Error::$variant {
                    context: context(),
                    source: $wrap(source),
                })
            }
        }
    };
}

wraps!(sochi_build::Error, Build, Box::new);
wraps!(sochi_format::Error, Format, std::convert::identity);
wraps!(sochi_registry::Error, Registry, Box::new);
wraps!(sochi_build::SourceError, Source, std::convert::identity);
wraps!(sochi_store::Error, Store, std::convert::identity);
wraps!(std::io::Error, Io, std::convert::identity);
