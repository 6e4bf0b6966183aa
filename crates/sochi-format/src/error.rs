//! The one error type of `sochi-format`.

/// What went wrong while reading or writing a SOCI format.
///
/// Variants are grouped by who is at fault: malformed input first, then
/// features we do not support, then misuse by the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes do not form a valid structure.
    #[error("{what}: corrupt at offset {offset}: {detail}")]
    Corrupt {
        /// The structure being read, e.g. "ztoc" or "zinfo".
        what: &'static str,
        /// Byte offset in the input where the problem was found.
        offset: usize,
        /// What was wrong.
        detail: String,
    },
    /// A value is well-formed but breaks a rule of the format.
    #[error("{what}: invalid: {detail}")]
    Invalid {
        /// The structure being read or written.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A JSON document could not be decoded.
    #[error("{what}: invalid json")]
    Json {
        /// The document kind, e.g. "image manifest".
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A prefetch artifact names spans its layer does not have
    /// ([`crate::PrefetchArtifact::validate_against`]).
    #[error("prefetch artifact {artifact}: span range {range} ({start_span}..={end_span}) {problem} (the layer has {span_count} spans)")]
    PrefetchRange {
        /// The artifact's digest.
        artifact: crate::Digest,
        /// Index of the range in `prefetch_spans`.
        range: usize,
        /// Its first span.
        start_span: i32,
        /// Its last span.
        end_span: i32,
        /// Spans of the layer's zTOC.
        span_count: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A digest string is not `sha256:<64 lower-case hex digits>`.
    #[error("invalid digest {value:?}: {detail}")]
    Digest {
        /// The offending text.
        value: String,
        /// Why it was refused.
        detail: &'static str,
    },
    /// The input uses a feature sochi does not support.
    #[error("unsupported {what}: {detail}")]
    Unsupported {
        /// The feature.
        what: &'static str,
        /// Details.
        detail: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error` and its causes on one line, `outer: inner: innermost`. Every
/// sochi error states its own fact and leaves its cause to the chain, so
/// nothing is said twice.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
