//! [`ImageServiceProxy`]: `runtime.v1.ImageService` in front of an upstream
//! CRI runtime (containerd's socket).
//!
//! Every call is forwarded as the protobuf bytes it came with (the
//! [`RawCodec`]), with its metadata, to the same method upstream; the
//! upstream's answer or status goes back as it came. Nothing is decoded on
//! the way except, to tell the [`PullObserver`] and to log, the image of the
//! request (and a `PullImage`'s credentials). A request that does not
//! decode is still forwarded: the upstream gives the error it gives.
//!
//! A status the proxy makes itself is `Unavailable` when the upstream
//! cannot be reached (message: the socket and the cause), or
//! `Unimplemented` for a path outside `runtime.v1.ImageService` (which a
//! tonic router never sends it).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message as _;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::BoxFuture;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::Channel;
use tonic::Status;

use crate::api;
use crate::auth::AuthConfig;
use crate::codec::RawCodec;
use crate::error::chain;
use crate::unix::{connect_lazy, MAX_MESSAGE_SIZE};

/// The gRPC service name the proxy serves.
const SERVICE: &str = "runtime.v1.ImageService";

/// Told of every `PullImage` before it is forwarded.
pub trait PullObserver: Send + Sync + 'static {
    /// Called before the pull is forwarded (containerd prepares the snapshots during the pull, so credentials must be known first).
    ///
    /// `image` is the request's `image.image` as sent (a reference, maybe
    /// without registry or tag: the runtime normalises it); `auth` is the
    /// request's `auth`, if it had one. It runs on the proxy's task, the
    /// forward waiting for it: keep it short (record, don't fetch).
    fn pulling(&self, image: &str, auth: Option<&AuthConfig>);
}

/// The `runtime.v1.ImageService` of an upstream CRI runtime, forwarded call
/// by call. Serve it with tonic beside other services:
/// `tonic::transport::Server::builder().add_service(proxy)`.
///
/// Cheap to clone; clones share the upstream connection, which is made on
/// the first call (and again after it breaks).
#[derive(Clone)]
pub struct ImageServiceProxy {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: PathBuf,
    observer: Arc<dyn PullObserver>,
    /// Made on the first call: a channel must be made inside the runtime.
    channel: OnceLock<Channel>,
}

impl ImageServiceProxy {
    /// A proxy to the CRI runtime listening on the unix socket `upstream`
    /// (e.g. `/run/containerd/containerd.sock`) that tells `observer` of
    /// every pull. Connects nothing yet.
    pub fn new(upstream: PathBuf, observer: Arc<dyn PullObserver>) -> ImageServiceProxy {
        ImageServiceProxy {
            inner: Arc::new(Inner {
                upstream,
                observer,
                channel: OnceLock::new(),
            }),
        }
    }

    /// The upstream socket.
    pub fn upstream(&self) -> &Path {
        &self.inner.upstream
    }
}

impl std::fmt::Debug for ImageServiceProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageServiceProxy")
            .field("upstream", &self.inner.upstream)
            .finish_non_exhaustive()
    }
}

impl NamedService for ImageServiceProxy {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for ImageServiceProxy {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let path = request.uri().path().to_string();
            let Some(method) = method_of(&path) else {
                return Ok(
                    Status::unimplemented(format!("{path} is not a method of {SERVICE}"))
                        .into_http(),
                );
            };
            let forward = Forward {
                inner,
                method: method.to_string(),
                path: path.clone(),
            };
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE);
            Ok(grpc.unary(forward, request).await)
        })
    }
}

/// `Method` of `/runtime.v1.ImageService/Method`.
fn method_of(path: &str) -> Option<&str> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE)?
        .strip_prefix('/')?;
    (!method.is_empty() && !method.contains('/')).then_some(method)
}

/// One call on its way upstream.
struct Forward {
    inner: Arc<Inner>,
    method: String,
    path: String,
}

impl UnaryService<Bytes> for Forward {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let method = std::mem::take(&mut self.method);
        let path = std::mem::take(&mut self.path);
        Box::pin(async move { inner.forward(&method, path, request).await })
    }
}

impl Inner {
    async fn forward(
        &self,
        method: &str,
        path: String,
        mut request: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<Bytes>, Status> {
        // Compression is each hop's own business (the proxy's hops use
        // none): the caller's offer must not make the upstream compress an
        // answer the proxy's client cannot read.
        for header in ["grpc-encoding", "grpc-accept-encoding"] {
            request.metadata_mut().remove(header);
        }
        let image = self.inspect(method, request.get_ref());
        tracing::debug!(
            method,
            image = image.as_deref().unwrap_or_default(),
            upstream = %self.upstream.display(),
            "forwarding a CRI image call"
        );
        let path = http::uri::PathAndQuery::try_from(path)
            .map_err(|err| Status::internal(format!("a gRPC path that is no URI path: {err}")))?;
        let channel = self
            .channel
            .get_or_init(|| connect_lazy(&self.upstream))
            .clone();
        let mut client = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        client
            .ready()
            .await
            .map_err(|err| self.unreachable(&chain(&err)))?;
        client
            .unary(request, path, RawCodec)
            .await
            .map_err(|status| self.upstream_status(status))
    }

    /// The image the call is about, for the log; for `PullImage` also tells
    /// the observer. `None` when the call names no image or does not
    /// decode.
    fn inspect(&self, method: &str, body: &Bytes) -> Option<String> {
        let decoded = match method {
            "PullImage" => api::PullImageRequest::decode(body.as_ref()).map(|pull| {
                let image = pull.image.map(|spec| spec.image).unwrap_or_default();
                let auth = pull.auth.map(AuthConfig::from);
                self.observer.pulling(&image, auth.as_ref());
                image
            }),
            "ImageStatus" => api::ImageStatusRequest::decode(body.as_ref())
                .map(|status| status.image.map(|spec| spec.image).unwrap_or_default()),
            "RemoveImage" => api::RemoveImageRequest::decode(body.as_ref())
                .map(|remove| remove.image.map(|spec| spec.image).unwrap_or_default()),
            "ListImages" => api::ListImagesRequest::decode(body.as_ref()).map(|list| {
                list.filter
                    .and_then(|filter| filter.image)
                    .map(|spec| spec.image)
                    .unwrap_or_default()
            }),
            _ => return None,
        };
        match decoded {
            Ok(image) => Some(image),
            Err(err) => {
                tracing::warn!(
                    method,
                    error = %err,
                    "a CRI image request that does not decode: forwarded as it is{}",
                    if method == "PullImage" { ", without telling the pull observer" } else { "" }
                );
                None
            }
        }
    }

    /// A status that came from the upstream (its answer) passes unchanged;
    /// one tonic made because the call never got an answer (connection
    /// refused, reset) becomes `Unavailable` naming the socket.
    fn upstream_status(&self, status: Status) -> Status {
        // tonic keeps the transport error as the source of the statuses it
        // makes; a status read from the upstream's trailers has none.
        if std::error::Error::source(&status).is_none() {
            return status;
        }
        self.unreachable(status.message())
    }

    /// `Unavailable`, naming the upstream socket and `cause`.
    fn unreachable(&self, cause: &str) -> Status {
        Status::unavailable(format!(
            "the CRI runtime at {} is unreachable: {cause}",
            self.upstream.display()
        ))
    }
}

#[cfg(test)]
mod tests;
