//! The one error type of `sochi-cri`: what the typed client reports. The
//! proxy answers with gRPC statuses instead (it passes the upstream's on
//! unchanged, and makes its own only when the upstream is unreachable).

use std::path::PathBuf;

/// What went wrong talking to a CRI runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the runtime's socket.
    #[error("connecting to the CRI socket {}", address.display())]
    Connect {
        /// The unix socket.
        address: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered a call with an error status (or the call never
    /// reached it: the status then says so).
    #[error("CRI {method} on {}", address.display())]
    Call {
        /// The method, e.g. `RunPodSandbox`.
        method: &'static str,
        /// The unix socket.
        address: PathBuf,
        /// The status (boxed: it is large).
        #[source]
        status: Box<tonic::Status>,
    },
    /// The runtime's answer lacks what the call promises.
    #[error("CRI {method} on {}: the answer has no {field}", address.display())]
    MissingField {
        /// The method.
        method: &'static str,
        /// The unix socket.
        address: PathBuf,
        /// The field that was empty.
        field: &'static str,
    },
}

impl Error {
    /// The gRPC status code of a failed call, if the error is one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Call { status, .. } => Some(status.code()),
            Error::Connect { .. } | Error::MissingField { .. } => None,
        }
    }

    /// The status of a failed call, if the error is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Call { status, .. } => Some(status),
            Error::Connect { .. } | Error::MissingField { .. } => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error` and its sources, joined by `: ` (what a status message carries
/// when the cause is a local one).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
