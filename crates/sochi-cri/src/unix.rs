//! gRPC channels over a unix socket: tonic's `Endpoint` with a connector
//! that dials the socket (the URI is a placeholder nobody reads; HTTP/2
//! needs one).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The largest message either side of a call may send: what the kubelet
/// allows (`maxMsgSize`, 16 MiB, in its remote runtime client), so that
/// the answer to `ListImages` on a node with many images fits.
pub(crate) const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// An endpoint that connects to `path`; never fails (the URI is fixed).
fn endpoint() -> Endpoint {
    Endpoint::from_static("http://localhost")
}

/// The connector of a channel to `path`. A failed connect names the socket.
fn connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(stream) => Ok(TokioIo::new(stream)),
                Err(err) => Err(std::io::Error::new(
                    err.kind(),
                    format!("connecting to {}: {err}", path.display()),
                )),
            }
        }
    })
}

/// A channel to `path`, connected now.
pub(crate) async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    endpoint()
        .connect_with_connector(connector(path.to_path_buf()))
        .await
}

/// A channel to `path` that connects on its first call and again after the
/// connection breaks. Must be made inside a tokio runtime (it spawns the
/// channel's worker).
pub(crate) fn connect_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.to_path_buf()))
}
