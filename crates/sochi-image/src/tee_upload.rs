//! Converting between two registries without downloading a layer twice:
//! the stream that feeds the indexer is also uploaded to the destination,
//! and a layer the destination can mount is never downloaded for copying.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use sochi_build::{ImageSource, SourceError};
use sochi_format::Descriptor;
use sochi_registry::{BlobStream, Client, PushBlob, Reference};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::io::StreamReader;

use crate::error::{Context as _, Result};
use crate::registry::Registry;

type Upload = JoinHandle<sochi_registry::Result<PushBlob>>;

/// Wraps a registry source: every layer the indexer streams and the
/// destination lacks is uploaded from that same stream.
pub struct TeeToRegistry<'a> {
    /// Where blobs come from.
    pub inner: &'a dyn ImageSource,
    /// The client and runtime.
    pub registry: Arc<Registry>,
    /// The destination repository.
    pub dst: Reference,
    /// Uploads started, to be awaited before any manifest is pushed.
    pub uploads: Mutex<Vec<(String, Upload)>>,
}

impl TeeToRegistry<'_> {
    /// Waits for every upload; the first failure is the result.
    pub fn finish_uploads(&self) -> Result<()> {
        let uploads = std::mem::take(&mut *self.uploads.lock());
        for (digest, upload) in uploads {
            self.registry
                .block_on(upload)
                .map_err(std::io::Error::other)
                .with_context(|| format!("uploading {digest}"))?
                .with_context(|| format!("uploading {digest}"))?;
        }
        Ok(())
    }
}

impl ImageSource for TeeToRegistry<'_> {
    fn read_blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, SourceError> {
        self.inner.read_blob(descriptor)
    }

    fn open_blob(&self, descriptor: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let reader = self.inner.open_blob(descriptor)?;
        let client = self.registry.client.clone();
        let present = self
            .registry
            .block_on(client.blob_size(&self.dst, &descriptor.digest))?;
        if present.is_some() {
            return Ok(reader);
        }
        let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(8);
        let body = StreamReader::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let (dst, d) = (self.dst.clone(), descriptor.clone());
        let upload = self
            .registry
            .runtime
            .spawn(async move { client.push_blob_stream(&dst, &d, body, None).await });
        self.uploads
            .lock()
            .push((descriptor.digest.to_string(), upload));
        Ok(Box::new(TeeUpload {
            inner: reader,
            sender: Some(sender),
        }))
    }

    fn has_blob(&self, descriptor: &Descriptor) -> bool {
        self.inner.has_blob(descriptor)
    }

    fn verifies_digests(&self) -> bool {
        self.inner.verifies_digests()
    }
}

/// Hands a copy of every chunk read to an upload. If the upload gives up,
/// reading goes on (its error surfaces in `finish_uploads`); if reading
/// stops early, the upload sees a short stream and cancels itself.
struct TeeUpload<'a> {
    inner: Box<dyn Read + Send + 'a>,
    sender: Option<mpsc::Sender<io::Result<Bytes>>>,
}

impl Read for TeeUpload<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.sender = None;
        } else if let Some(sender) = &self.sender {
            if sender
                .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                .is_err()
            {
                self.sender = None;
            }
        }
        Ok(n)
    }
}

/// A blob body that sends its GET only when first read, so a push that
/// turns out to need no upload (the blob exists, or is mounted) downloads
/// nothing.
pub struct LazyBlob {
    state: LazyState,
}

enum LazyState {
    Idle(Client, Reference, String),
    Opening(Pin<Box<dyn std::future::Future<Output = sochi_registry::Result<BlobStream>> + Send>>),
    Open(Box<BlobStream>),
    Failed,
}

impl LazyBlob {
    /// The blob `digest` of `repo`, not fetched yet.
    pub fn new(client: Client, repo: Reference, digest: String) -> LazyBlob {
        LazyBlob {
            state: LazyState::Idle(client, repo, digest),
        }
    }
}

impl AsyncRead for LazyBlob {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                LazyState::Idle(..) => {
                    let LazyState::Idle(client, repo, digest) =
                        std::mem::replace(&mut this.state, LazyState::Failed)
                    else {
                        continue;
                    };
                    this.state = LazyState::Opening(Box::pin(async move {
                        client.get_blob(&repo, &digest).await
                    }));
                }
                LazyState::Opening(future) => match future.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stream)) => this.state = LazyState::Open(Box::new(stream)),
                    Poll::Ready(Err(e)) => {
                        this.state = LazyState::Failed;
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                },
                LazyState::Open(stream) => return Pin::new(stream.as_mut()).poll_read(cx, buf),
                LazyState::Failed => {
                    return Poll::Ready(Err(io::Error::other("blob download failed before")))
                }
            }
        }
    }
}
