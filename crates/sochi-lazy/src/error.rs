//! The one error type of `sochi-lazy`.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while planning, mounting, unpacking or serving an image.
///
/// Each variant states what was being done (`context`); the cause is the
/// source chain, never repeated in the message. Grouped by who is at
/// fault: the caller or the image (`Invalid`), the registry, the image's
/// documents and layers, then the machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or an image that cannot be mounted as asked.
    #[error("{0}")]
    Invalid(String),
    /// Talking to the registry failed.
    #[error("{context}")]
    Registry {
        /// What was being done.
        context: String,
        /// The registry client's error (boxed: it is large).
        #[source]
        source: Box<sochi_registry::Error>,
    },
    /// A manifest, index, config or zTOC of the image is malformed.
    #[error("{context}")]
    Format {
        /// What was being done.
        context: String,
        /// The format error.
        #[source]
        source: sochi_format::Error,
    },
    /// A layer could not be opened or mounted lazily.
    #[error("{context}")]
    Layer {
        /// What was being done.
        context: String,
        /// The filesystem's error.
        #[source]
        source: sochi_fs::Error,
    },
    /// A layer could not be unpacked.
    #[error("{context}")]
    Unpack {
        /// What was being done.
        context: String,
        /// The unpack's error (entry, offsets, digests; boxed: it is large).
        #[source]
        source: Box<crate::unpack::UnpackError>,
    },
    /// A state file could not be read or written.
    #[error("{context}")]
    Json {
        /// What was being done.
        context: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// Local I/O failed (files, mounts, locks, signals).
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// One of our own errors, in a larger step.
    #[error("{context}")]
    Step {
        /// The larger step.
        context: String,
        /// What failed in it.
        #[source]
        source: Box<Error>,
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

wraps!(sochi_registry::Error, Registry, Box::new);
wraps!(sochi_format::Error, Format, std::convert::identity);
wraps!(sochi_fs::Error, Layer, std::convert::identity);
wraps!(crate::unpack::UnpackError, Unpack, Box::new);
wraps!(serde_json::Error, Json, std::convert::identity);
wraps!(std::io::Error, Io, std::convert::identity);
wraps!(nix::Error, Io, std::io::Error::from);
wraps!(rustix::io::Errno, Io, std::io::Error::from);
wraps!(Error, Step, Box::new);

impl<T> Context<T> for Option<T> {
    /// A missing value is an [`Error::Invalid`] saying what was missing.
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(context.into()))
    }
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(context()))
    }
}

/// `return Err(Error::Invalid(format!(…)))`.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;
