//! A layer blob in a registry as a [`BlobReader`]: the span store's range
//! reads become HTTP range requests.
//!
//! The span manager runs on FUSE threads and background threads, which are
//! not async; each read is run on the tokio runtime with `block_on` and a
//! deadline, so a FUSE thread never waits on the network without a bound.
//! The client's own retries (backoff, re-authentication on 401, resumed
//! bodies) happen inside that deadline.

use std::ops::Range;
use std::time::Duration;

use sochi_registry::{Client, Reference};
use sochi_spans::{BlobError, BlobErrorKind, BlobReader};
use tokio::runtime::Handle;

/// Default bound of one range read, retries included.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// One layer blob of one repository.
#[derive(Clone)]
pub struct RegistryBlob {
    client: Client,
    repository: Reference,
    digest: String,
    runtime: Handle,
    timeout: Duration,
}

impl std::fmt::Debug for RegistryBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBlob")
            .field("repository", &self.repository.to_string())
            .field("digest", &self.digest)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RegistryBlob {
    /// Blob `digest` of `repository`, read through `client` on `runtime`;
    /// each read fails as [`BlobErrorKind::Timeout`] after `timeout`.
    pub fn new(
        client: Client,
        repository: Reference,
        digest: String,
        runtime: Handle,
        timeout: Duration,
    ) -> RegistryBlob {
        RegistryBlob {
            client,
            repository,
            digest,
            runtime,
            timeout,
        }
    }
}

impl BlobReader for RegistryBlob {
    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
        self.wait(
            self.client
                .get_blob_range(&self.repository, &self.digest, range),
        )
    }

    fn read_range_in_background(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
        self.wait(
            self.client
                .get_blob_range_in_background(&self.repository, &self.digest, range),
        )
    }
}

impl RegistryBlob {
    /// Runs `read` on the runtime within the deadline (the wait for a turn
    /// to send included).
    fn wait<B: AsRef<[u8]>>(
        &self,
        read: impl std::future::Future<Output = sochi_registry::Result<B>>,
    ) -> Result<Vec<u8>, BlobError> {
        match self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, read).await })
        {
            Ok(Ok(bytes)) => Ok(bytes.as_ref().to_vec()),
            Ok(Err(error)) => Err(BlobError::new(kind_of(&error), error)),
            Err(_) => Err(BlobError::new(
                BlobErrorKind::Timeout,
                format!("no answer from the registry within {:?}", self.timeout),
            )),
        }
    }
}

/// What kind of blob-read failure a registry error is: the one mapping
/// from registry errors to what a filesystem answers (`ETIMEDOUT`,
/// `EACCES`, `EIO`).
fn kind_of(error: &sochi_registry::Error) -> BlobErrorKind {
    use sochi_registry::Error;
    match error {
        Error::Status { status: 404, .. } => BlobErrorKind::NotFound,
        Error::Status {
            status: 401 | 403, ..
        }
        | Error::Unauthorized { .. }
        | Error::NoCredentials { .. } => BlobErrorKind::Denied,
        Error::Timeout { .. } | Error::Stalled { .. } => BlobErrorKind::Timeout,
        Error::SizeMismatch { .. } => BlobErrorKind::ShortRead,
        _ => BlobErrorKind::Transport,
    }
}
