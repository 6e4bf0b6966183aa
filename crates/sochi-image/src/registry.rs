//! Glue between the async registry client and the synchronous builder: a
//! registry repository as an [`ImageSource`], layers streamed straight from
//! the registry into the indexer.

use std::io::Read;

use sochi_build::{ImageSource, SourceError};
use sochi_format::{is_index_media_type, media_types, Descriptor};
use sochi_registry::{BlobStream, Client, ClientConfig, Reference};
use tokio::io::AsyncReadExt;
use tokio::runtime::{Handle, Runtime};

use crate::error::{Context as _, Result};

/// A registry client and the runtime it runs on.
pub struct Registry {
    /// Runs the client's futures; callers stay synchronous.
    pub runtime: Runtime,
    /// The client.
    pub client: Client,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A client configured by `config` on a runtime of `threads` workers.
    pub fn connect(config: ClientConfig, threads: usize) -> Result<Registry> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let client = {
            let _guard = runtime.enter();
            Client::new(config).context("configuring the registry client")?
        };
        Ok(Registry { runtime, client })
    }

    /// Runs a future to completion.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The descriptor and bytes of the image a reference names.
    pub fn resolve(&self, reference: &Reference) -> Result<(Descriptor, Vec<u8>)> {
        self.block_on(self.client.get_manifest(reference))
            .with_context(|| format!("resolving {reference}"))
    }

    /// The image's repository as a build source.
    pub fn source(&self, repository: &Reference) -> RegistrySource {
        RegistrySource {
            client: self.client.clone(),
            repository: repository.clone(),
            handle: self.runtime.handle().clone(),
        }
    }
}

/// Whether a descriptor points at a manifest or index (served by the
/// manifests endpoint) rather than a blob.
pub fn is_manifest(descriptor: &Descriptor) -> bool {
    is_index_media_type(&descriptor.media_type)
        || descriptor.media_type == media_types::OCI_MANIFEST
        || descriptor.media_type == media_types::DOCKER_MANIFEST
}

/// A blob stream read from synchronous code. Each `read` waits until the
/// buffer is at least half full (or the blob ends): the indexer reads in
/// large buffers, and a runtime round trip per network chunk costs more
/// than it carries.
struct BlockingBlob {
    stream: BlobStream,
    handle: Handle,
}

impl Read for BlockingBlob {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let stream = &mut self.stream;
        self.handle.block_on(async {
            let mut filled = 0;
            while filled < buf.len().div_ceil(2) {
                let n = stream.read(&mut buf[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            Ok(filled)
        })
    }
}

/// Reads an image's blobs from its registry repository.
pub struct RegistrySource {
    client: Client,
    repository: Reference,
    handle: Handle,
}

impl ImageSource for RegistrySource {
    fn read_blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, SourceError> {
        if is_manifest(descriptor) {
            let reference = self.repository.with_digest(&descriptor.digest);
            let (_, bytes) = self.handle.block_on(self.client.get_manifest(&reference))?;
            if bytes.len() as i64 != descriptor.size {
                return Err(format!(
                    "manifest {} is {} bytes, its descriptor says {}",
                    descriptor.digest,
                    bytes.len(),
                    descriptor.size
                )
                .into());
            }
            return Ok(bytes);
        }
        Ok(self
            .handle
            .block_on(self.client.read_blob(&self.repository, descriptor))?)
    }

    fn open_blob(&self, descriptor: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let stream = self
            .handle
            .block_on(self.client.get_blob(&self.repository, &descriptor.digest))?;
        Ok(Box::new(BlockingBlob {
            stream,
            handle: self.handle.clone(),
        }))
    }

    fn verifies_digests(&self) -> bool {
        // BlobStream hashes what it delivers and fails at its end on a
        // mismatch.
        true
    }

    fn has_blob(&self, descriptor: &Descriptor) -> bool {
        if is_manifest(descriptor) {
            let reference = self.repository.with_digest(&descriptor.digest);
            return matches!(
                self.handle.block_on(self.client.head_manifest(&reference)),
                Ok(Some(_))
            );
        }
        matches!(
            self.handle
                .block_on(self.client.blob_size(&self.repository, &descriptor.digest)),
            Ok(Some(_))
        )
    }
}
