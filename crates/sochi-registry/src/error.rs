//! The one error type of `sochi-registry`.
//!
//! URLs in errors never carry credentials: they go through
//! `redact_url` (in the client) first, which drops user info and the values
//! of query parameters that may be secrets (presigned-URL signatures, the
//! upload `_state`).

use std::path::PathBuf;

/// What went wrong while talking to a registry.
///
/// Variants are grouped by who is at fault: the caller's input, the
/// registry's answers, the network, then the local machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the caller's input ---
    /// An image reference could not be parsed.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// An argument breaks a rule of this API (e.g. a descriptor whose size
    /// does not match the bytes given).
    #[error("invalid argument: {what}: {detail}")]
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A content size is past a limit of this client.
    #[error("{what} at {url} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// What was being read.
        what: &'static str,
        /// Where.
        url: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// No manifest of an image index matches the platform asked for.
    #[error("{reference}: no manifest for platform {platform} (the index has: {available})")]
    PlatformNotFound {
        /// The image.
        reference: String,
        /// The platform asked for, `os/arch[/variant]`.
        platform: String,
        /// The platforms the index lists, comma-separated.
        available: String,
    },

    // --- the registry's answers ---
    /// The registry answered with an unexpected HTTP status.
    #[error(
        "{method} {url}: registry answered {status}{}",
        registry_detail(code.as_deref(), message.as_deref())
    )]
    Status {
        /// HTTP method.
        method: String,
        /// The URL (redacted).
        url: String,
        /// HTTP status code.
        status: u16,
        /// The first error code of the OCI error body, e.g. `MANIFEST_UNKNOWN`.
        code: Option<String>,
        /// The message of that error.
        message: Option<String>,
    },
    /// Authentication failed: no credentials, wrong credentials, a token
    /// that was refused even after renewing it, or a broken token service.
    #[error("authentication to registry {registry} for repository {repository} failed: {detail}")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// What happened.
        detail: String,
    },
    /// The registry wants credentials and none are known for the
    /// repository (none given, none from a keychain or the Docker config).
    #[error("registry {registry} wants credentials for repository {repository}: no credentials are configured ({detail})")]
    NoCredentials {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// What the registry said.
        detail: String,
    },
    /// Content did not hash to the digest it was asked for by.
    #[error("{what} at {url}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked, e.g. "manifest" or "blob".
        what: &'static str,
        /// Where it came from (redacted).
        url: String,
        /// The digest asked for or announced.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// Content was not the size its descriptor says.
    #[error("{what} at {url}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was checked.
        what: &'static str,
        /// Where it came from (redacted).
        url: String,
        /// The size expected.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// The registry refused an uploaded blob because its content does not
    /// hash to the digest given (`400 DIGEST_INVALID`).
    #[error("registry {registry} refused blob {digest} for repository {repository}: the uploaded bytes do not match the digest ({message})")]
    DigestRejected {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// The digest sent.
        digest: String,
        /// The registry's message.
        message: String,
    },
    /// A SOCI index that discovery was pointed at (by the image's v2
    /// annotation, a referrer, or explicitly) is not in the repository:
    /// the registry answered 404. A copy of an image keeps its annotation
    /// but not always its index (`skopeo copy`, issue 16); the caller
    /// decides whether that fails or means "no index".
    #[error("SOCI index from {url}: {origin}, but repository {repository} does not have it (the registry answered 404)")]
    SociIndexNotFound {
        /// The index manifest's URL (redacted).
        url: String,
        /// The index digest.
        digest: String,
        /// How discovery came to it.
        found_by: crate::FoundBy,
        /// Where it was named, e.g. "named by the
        /// com.amazon.soci.index-digest annotation of image manifest …".
        origin: String,
        /// The repository asked.
        repository: String,
    },
    /// An answer of the registry could not be understood.
    #[error("{what} from {url}: {detail}")]
    Malformed {
        /// What was being read, e.g. "Content-Range header".
        what: &'static str,
        /// Where it came from (redacted).
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// A JSON document from the registry could not be decoded.
    #[error("{what} from {url}: invalid json")]
    Json {
        /// The document kind.
        what: &'static str,
        /// Where it came from (redacted).
        url: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A document from the registry broke an OCI rule.
    #[error("{url}")]
    Format {
        /// Where it came from (redacted).
        url: String,
        /// The format error.
        #[source]
        source: sochi_format::Error,
    },

    // --- the network ---
    /// The request could not be sent or its answer not read (connection
    /// refused or reset, TLS failure, DNS) after all retries.
    #[error("connection to {url} failed")]
    Connection {
        /// The URL (redacted).
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The connection could not be opened in the connect timeout, after all
    /// retries.
    #[error("timed out talking to {url}")]
    Timeout {
        /// The URL (redacted).
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },

    /// No byte came from (or went to) the server for the stall timeout,
    /// after all retries.
    #[error("{url}: no data for {} s", after.as_secs_f64())]
    Stalled {
        /// The URL (redacted).
        url: String,
        /// The stall timeout.
        after: std::time::Duration,
    },

    // --- the local machine ---
    /// Reading a local file failed.
    #[error("reading {path}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the stream of a blob to push failed.
    #[error("reading the content of blob {digest}")]
    Read {
        /// The blob being pushed.
        digest: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file (Docker config, CA bundle) is invalid.
    #[error("{path}: {detail}", path = path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A Docker credential helper failed.
    #[error("credential helper docker-credential-{helper} for {server}: {detail}")]
    CredentialHelper {
        /// The helper's name (after `docker-credential-`).
        helper: String,
        /// The server whose credentials were asked for.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// The HTTP client could not be built (e.g. a bad CA certificate).
    #[error("building the http client")]
    Client {
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
}

impl Error {
    /// The HTTP status, if the registry answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            Error::SociIndexNotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// Whether this is a 404 from the registry (unknown manifest, blob or
    /// repository).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

fn registry_detail(code: Option<&str>, message: Option<&str>) -> String {
    match (code, message) {
        (Some(c), Some(m)) if !m.is_empty() => format!(": {c}: {m}"),
        (Some(c), _) => format!(": {c}"),
        (None, Some(m)) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One error of the OCI error body `{"errors":[{"code","message"}]}`.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct RegistryError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<RegistryError>,
}

/// The first error of an OCI error body; `None` when the body is not one
/// (distribution 2.8 answers unknown routes with `text/plain` "404 page not
/// found").
pub(crate) fn parse_error_body(body: &[u8]) -> Option<RegistryError> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.errors.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_error_names_method_url_and_code() {
        let e = Error::Status {
            method: "GET".into(),
            url: "https://r.example/v2/a/manifests/latest".into(),
            status: 404,
            code: Some("MANIFEST_UNKNOWN".into()),
            message: Some("manifest unknown".into()),
        };
        assert_eq!(
            e.to_string(),
            "GET https://r.example/v2/a/manifests/latest: registry answered 404: MANIFEST_UNKNOWN: manifest unknown"
        );
        assert!(e.is_not_found());
    }

    #[test]
    fn error_body_parses_first_error() {
        let e = parse_error_body(
            br#"{"errors":[{"code":"DIGEST_INVALID","message":"m","detail":{}}]}"#,
        )
        .expect("an error");
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("DIGEST_INVALID", "m")
        );
        assert!(parse_error_body(b"404 page not found").is_none());
    }
}
