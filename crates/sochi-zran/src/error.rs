//! The one error type of `sochi-zran`.

use std::io;

use crate::ffi::{code_name, ZlibFailure};

/// What went wrong while indexing a gzip stream or inflating a span.
///
/// Variants are grouped by who is at fault: the compressed input first, then
/// the checkpoint a caller handed in, then zlib itself, then I/O, the zinfo
/// writer, and misuse by the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The compressed data is not valid gzip/DEFLATE (zlib `Z_DATA_ERROR`,
    /// a failed CRC or length check, or data that is not gzip at all).
    #[error("gzip: corrupt data at compressed offset {offset}: {detail}")]
    Corrupt {
        /// Compressed offset (from the start of the layer) where the inflater
        /// stopped; the fault is at or just before it.
        offset: u64,
        /// zlib's message, e.g. "invalid distance too far back".
        detail: String,
    },
    /// The compressed data ends before the gzip stream (or the requested
    /// span output) does.
    #[error(
        "gzip: truncated: data ends at compressed offset {offset} in the middle of the stream"
    )]
    Truncated {
        /// Compressed offset of the end of the data seen.
        offset: u64,
    },
    /// Bytes follow the last gzip member that are not another member. The
    /// reference refuses such layers too (docs/format.md §3.2).
    #[error("gzip: trailing data at compressed offset {offset} after the last gzip member")]
    TrailingData {
        /// Compressed offset of the first trailing byte.
        offset: u64,
    },
    /// A zlib stream asks for a preset dictionary, which a layer cannot
    /// supply.
    #[error("gzip: stream needs a preset dictionary (compressed offset {offset})")]
    NeedsDictionary {
        /// Compressed offset where zlib asked for it.
        offset: u64,
    },
    /// A checkpoint handed to [`inflate_span`](crate::inflate_span) cannot be
    /// used (bad bit count, window of the wrong size, no partial byte).
    #[error("checkpoint at compressed offset {compressed_offset} is invalid: {detail}")]
    InvalidCheckpoint {
        /// The checkpoint's compressed offset.
        compressed_offset: u64,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// A zlib call failed in a way that is not the data's fault.
    #[error("{call} returned {code} ({name})", name = code_name(*code))]
    Zlib {
        /// The zlib function, e.g. `"inflatePrime"`.
        call: &'static str,
        /// Its return code.
        code: i32,
    },
    /// zlib did something its documentation rules out (kept as an error
    /// rather than a panic; never seen in practice).
    #[error("{call} broke its contract: {detail}")]
    ZlibContract {
        /// The zlib function.
        call: &'static str,
        /// What it did.
        detail: &'static str,
    },
    /// Reading the compressed stream failed.
    #[error("reading the compressed stream")]
    Io {
        /// The error of the underlying reader.
        #[source]
        source: io::Error,
    },
    /// The zinfo writer refused a checkpoint.
    #[error("zinfo")]
    Zinfo {
        /// The writer's error.
        #[source]
        source: sochi_format::Error,
    },
    /// The span size does not fit the zinfo's signed 64-bit field.
    #[error("span size {span_size} is too large (at most {max})", max = i64::MAX)]
    SpanSizeTooLarge {
        /// The requested span size.
        span_size: u64,
    },
    /// A span of zstd frames does not decode to exactly its length
    /// ([`decode_zstd_span`](crate::decode_zstd_span)).
    #[error("zstd: {detail}")]
    Zstd {
        /// What libzstd reported, or how the input differs.
        detail: String,
    },
    /// The reader was used again after it returned an error that left its
    /// index incomplete.
    #[error("checkpointing reader used after an earlier error")]
    UsedAfterError,
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Turns an [`io::Error`] from [`CheckpointingReader`]'s `Read`/`BufRead`
    /// back into our error: if it wraps an [`Error`] (as all our own failures
    /// do), that error is returned; otherwise it is a genuine I/O error of the
    /// underlying reader and becomes [`Error::Io`].
    ///
    /// [`CheckpointingReader`]: crate::CheckpointingReader
    pub fn from_io(error: io::Error) -> Error {
        match error.downcast::<Error>() {
            Ok(ours) => ours,
            Err(source) => Error::Io { source },
        }
    }

    /// Wraps this error in an [`io::Error`] (kind `Other`, or
    /// `UnexpectedEof` for truncation and `InvalidData` for corrupt data) so
    /// it can travel through `Read`; [`Error::from_io`] unwraps it.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            Error::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            Error::Corrupt { .. } | Error::TrailingData { .. } | Error::NeedsDictionary { .. } => {
                io::ErrorKind::InvalidData
            }
            Error::Io { source } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// Maps a failed zlib call at compressed `offset`: bad data is the
    /// input's fault, anything else is zlib's.
    pub(crate) fn from_zlib(failure: ZlibFailure, offset: u64) -> Error {
        if failure.is_data_error() {
            Error::Corrupt {
                offset,
                detail: failure
                    .message
                    .unwrap_or_else(|| "invalid deflate data".to_owned()),
            }
        } else {
            Error::Zlib {
                call: failure.call,
                code: failure.code,
            }
        }
    }
}

impl From<sochi_format::Error> for Error {
    fn from(source: sochi_format::Error) -> Self {
        Error::Zinfo { source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_errors_round_trip_through_io_error() {
        let io = Error::Truncated { offset: 7 }.into_io();
        assert_eq!(io.kind(), io::ErrorKind::UnexpectedEof);
        assert!(matches!(Error::from_io(io), Error::Truncated { offset: 7 }));
    }

    #[test]
    fn genuine_io_errors_are_wrapped() {
        let io = io::Error::new(io::ErrorKind::ConnectionReset, "peer gone");
        match Error::from_io(io) {
            Error::Io { source } => assert_eq!(source.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn zlib_errors_name_call_and_code() {
        let err = Error::Zlib {
            call: "inflatePrime",
            code: -2,
        };
        assert_eq!(err.to_string(), "inflatePrime returned -2 (Z_STREAM_ERROR)");
    }
}
