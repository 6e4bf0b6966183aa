//! A layer blob in a registry as a [`BlobReader`]: the span manager's range
//! reads become HTTP range requests.
//!
//! The span manager runs on FUSE threads and background threads, which are
//! not async; each read is run on the tokio runtime with `block_on` and a
//! deadline, so a FUSE thread never waits on the network without a bound.
//! The client's own retries (backoff, re-authentication on 401, resumed
//! bodies) happen inside that deadline.

use std::io;
use std::ops::Range;
use std::time::Duration;

use sochi_fs::BlobReader;
use sochi_registry::{Client, Reference};
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
    /// each read fails with `TimedOut` after `timeout`.
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
    fn read_range(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        let (start, end) = (range.start, range.end);
        let read = self
            .client
            .get_blob_range(&self.repository, &self.digest, range);
        match self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, read).await })
        {
            Ok(Ok(bytes)) => Ok(bytes.to_vec()),
            Ok(Err(error)) => Err(io::Error::other(format!(
                "{}@{} bytes {start}..{end}: {}",
                self.repository.repository,
                self.digest,
                error_chain(&error)
            ))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}@{} bytes {start}..{end}: no answer within {:?}",
                    self.repository.repository, self.digest, self.timeout
                ),
            )),
        }
    }
}

/// `error` with its sources, one line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
