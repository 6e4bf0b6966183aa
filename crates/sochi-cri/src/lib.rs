//! The Kubernetes Container Runtime Interface (CRI, gRPC package
//! `runtime.v1`) as a kubelet speaks it to containerd, for sochi on
//! Kubernetes nodes.
//!
//! A kubelet pulls images through containerd's CRI plugin, and containerd
//! asks the snapshotter to prepare each layer during that pull. Whoever
//! fetches layers lazily must by then know the credentials the kubelet sent
//! with `PullImage`; those reach containerd only. This crate holds the two
//! pieces around that:
//!
//! - [`ImageServiceProxy`]: a tonic service for `runtime.v1.ImageService`
//!   that forwards every call, as the protobuf bytes it received (fields
//!   sochi does not model included) and with its metadata, to an upstream
//!   CRI socket (containerd's), and returns the upstream's answer or status
//!   unchanged. Before a `PullImage` goes on, it tells a [`PullObserver`]
//!   the image and the [`AuthConfig`] sent with it. An upstream that cannot
//!   be reached gives `Unavailable`, naming the socket.
//! - [`CriClient`]: the RuntimeService and ImageService calls that run a
//!   pod from an image, typed, over a unix socket (the end-to-end tests
//!   use it as their kubelet).
//! - [`AuthConfig`] and [`Secret`]: credentials that print as `<redacted>`.
//! - [`api`]: the generated wire types, from `proto/api.proto` (our own
//!   copy of the part of cri-api's definition sochi uses).
//!
//! It is not a CRI runtime: it runs nothing and serves nothing of the
//! RuntimeService (the kubelet talks to containerd for that, or through a
//! plain forward). The proxy changes no byte of any call; it only reads
//! what it logs and what the observer is told. It keeps no credentials
//! itself.
//!
//! The proxy beside other services on a socket of its own:
//!
//! ```no_run
//! use std::sync::Arc;
//! use sochi_cri::{AuthConfig, ImageServiceProxy, PullObserver};
//!
//! struct Log;
//!
//! impl PullObserver for Log {
//!     fn pulling(&self, image: &str, auth: Option<&AuthConfig>) {
//!         // `{auth:?}` shows no secret.
//!         println!("pulling {image} with {auth:?}");
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = ImageServiceProxy::new("/run/containerd/containerd.sock".into(), Arc::new(Log));
//! let listener = tokio::net::UnixListener::bind("/run/sochi/cri.sock")?;
//! tonic::transport::Server::builder()
//!     .add_service(proxy)
//!     .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
//!     .await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use auth::{AuthConfig, Secret};
pub use client::CriClient;
pub use error::{Error, Result};
pub use proxy::{ImageServiceProxy, PullObserver};

/// The CRI wire types and clients, generated from `proto/api.proto`
/// (package `runtime.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

mod auth;
mod client;
mod codec;
mod error;
mod proxy;
mod unix;
