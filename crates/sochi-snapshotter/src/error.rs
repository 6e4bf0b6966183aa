//! The one error type of `sochi-snapshotter`, and its one mapping to gRPC
//! status codes.

use tonic::Status;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the snapshotter.
///
/// The first variants are containerd's own vocabulary (what a snapshot
/// request may be refused for); the rest are the snapshotter's state and
/// the machine. Messages state their own fact; causes are the chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot (or parent) of that name.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `snapshot "key"`.
        what: String,
    },
    /// A snapshot of that name exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What exists.
        what: String,
    },
    /// The request does not fit the snapshot's state (a parent not
    /// committed, a snapshot with children removed, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is malformed (a filter, an update path).
    #[error("{0}")]
    InvalidArgument(String),
    /// The snapshot metadata could not be read or written.
    #[error("{context}")]
    Metadata {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The configuration could not be read.
    #[error("{context}")]
    Config {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Local I/O (snapshot directories, the socket, a task) failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Starting or serving the snapshotter failed.
    #[error("{context}")]
    Serve {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// `NotFound` for snapshot `key`.
    pub fn snapshot_not_found(key: &str) -> Error {
        Error::NotFound {
            what: format!("snapshot {key:?}"),
        }
    }

    /// `AlreadyExists` for snapshot `key`.
    pub fn snapshot_exists(key: &str) -> Error {
        Error::AlreadyExists {
            what: format!("snapshot {key:?}"),
        }
    }

    /// An I/O failure while doing `context`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// The one mapping to gRPC: containerd acts on `NotFound`,
/// `AlreadyExists` (the remote-snapshot contract), `FailedPrecondition`
/// and `InvalidArgument`; a failure of our own state is `Internal`, with
/// the whole chain as the message.
impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let message = sochi_format::error_chain(&error);
        match error {
            Error::NotFound { .. } => Status::not_found(message),
            Error::AlreadyExists { .. } => Status::already_exists(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::InvalidArgument(_) => Status::invalid_argument(message),
            Error::Metadata { .. }
            | Error::Config { .. }
            | Error::Io { .. }
            | Error::Serve { .. } => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_grpc_code() {
        let io = || std::io::Error::other("disk full");
        for (error, code) in [
            (Error::snapshot_not_found("k"), tonic::Code::NotFound),
            (Error::snapshot_exists("k"), tonic::Code::AlreadyExists),
            (
                Error::FailedPrecondition("p".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                Error::InvalidArgument("a".into()),
                tonic::Code::InvalidArgument,
            ),
            (Error::io("writing")(io()), tonic::Code::Internal),
        ] {
            assert_eq!(Status::from(error).code(), code);
        }
        let status = Status::from(Error::io("creating the snapshot dir")(io()));
        assert_eq!(status.message(), "creating the snapshot dir: disk full");
    }
}
