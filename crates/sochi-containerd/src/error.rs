//! The one error type of `sochi-containerd`.

use std::path::PathBuf;

use containerd_client::tonic;

/// What went wrong during a pull.
///
/// Variants are grouped by who is at fault: the caller's input, the image,
/// the registry, then containerd (and its snapshotter).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the caller's input ---
    /// An argument breaks a rule of this API (a namespace that is no valid
    /// gRPC header value, an empty snapshotter name).
    #[error("invalid {what}: {detail}")]
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },

    // --- the image ---
    /// A manifest or image config could not be parsed.
    #[error("parsing the {what} {digest}")]
    Format {
        /// `manifest` or `config`.
        what: &'static str,
        /// Its digest.
        digest: String,
        /// Why.
        #[source]
        source: sochi_format::Error,
    },
    /// The image config is not JSON of the shape the OCI image spec says.
    #[error("the image config {digest} is malformed: {detail}")]
    Config {
        /// The config digest.
        digest: String,
        /// What is wrong.
        detail: String,
    },
    /// Manifest and config disagree (layer count, diff IDs).
    #[error("image {manifest}: {detail}")]
    Inconsistent {
        /// The manifest digest.
        manifest: String,
        /// What disagrees.
        detail: String,
    },
    /// Applying a layer gave another uncompressed digest than the config's
    /// `rootfs.diff_ids` entry.
    #[error("layer {index} ({digest}) unpacks to {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        /// Layer index, bottom first.
        index: usize,
        /// Layer (compressed) digest.
        digest: String,
        /// `rootfs.diff_ids[index]`.
        expected: String,
        /// What containerd's differ computed.
        actual: String,
    },

    // --- the registry ---
    /// A registry call failed.
    #[error("{what}")]
    Registry {
        /// What was being done, e.g. "resolving 127.0.0.1:5000/py:soci".
        what: String,
        /// The registry client's error (boxed: it is large).
        #[source]
        source: Box<sochi_registry::Error>,
    },
    /// Reading a blob body from the registry failed (includes a digest
    /// mismatch found at its end).
    #[error("reading blob {digest} from the registry")]
    BlobRead {
        /// The blob.
        digest: String,
        /// The stream's error.
        #[source]
        source: std::io::Error,
    },

    // --- containerd ---
    /// containerd's socket could not be reached.
    #[error("connecting to containerd at {}", address.display())]
    Connect {
        /// The socket path.
        address: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A containerd call answered an error status.
    #[error("containerd {call} {target}: {code:?}: {message}")]
    Containerd {
        /// The service and method, e.g. `Snapshots.Prepare`.
        call: &'static str,
        /// What it was about (a digest, snapshot key, image name).
        target: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// containerd's message.
        message: String,
    },
    /// containerd answered something this client cannot use.
    #[error("containerd {call} {target}: {detail}")]
    Protocol {
        /// The service and method.
        call: &'static str,
        /// What it was about.
        target: String,
        /// What was wrong with the answer.
        detail: String,
    },

    // --- context ---
    /// Something failed while handling one layer.
    #[error("layer {index} ({digest})")]
    Layer {
        /// Layer index, bottom first.
        index: usize,
        /// Layer digest.
        digest: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// The gRPC status code, when containerd answered with an error (also
    /// through [`Error::Layer`]).
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Containerd { code, .. } => Some(*code),
            Error::Layer { source, .. } => source.code(),
            _ => None,
        }
    }

    /// The error of a containerd call `call` about `target`.
    pub(crate) fn status(
        call: &'static str,
        target: impl Into<String>,
        status: tonic::Status,
    ) -> Error {
        Error::Containerd {
            call,
            target: target.into(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// `self` in the context of layer `index`.
    pub(crate) fn in_layer(self, index: usize, digest: &str) -> Error {
        Error::Layer {
            index,
            digest: digest.to_string(),
            source: Box::new(self),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
