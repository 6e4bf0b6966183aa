//! An OCI distribution client for sochi: what `sochi push`, `sochi create`
//! against a registry and the lazy-layer fetcher need from a registry.
//!
//! It speaks the distribution API over HTTP(S): manifests and indexes (OCI
//! and Docker media types), blobs (streaming with resume, byte ranges,
//! monolithic and chunked uploads, cross-repository mounts), and referrers
//! (the OCI 1.1 API, or the `sha256-<hex>` tag fallback that registries
//! without it, like Debian's distribution 2.8.2, need). It authenticates as
//! the docker CLI does (explicit user, `~/.docker/config.json`, credential
//! helpers, anonymous; basic and bearer-token challenges) and retries what
//! is worth retrying. It does not build images or indexes (`sochi-build`),
//! store content (`sochi-store`) or parse formats (`sochi-format`, whose
//! [`Descriptor`](sochi_format::Descriptor) and index types it uses).
//!
//! - [`Reference`]: an image reference as users write it, normalized like
//!   Docker (`busybox` → `docker.io/library/busybox:latest`).
//! - [`Client`] (from a [`ClientConfig`]): every registry call; cheap to
//!   clone, clones share connections and tokens.
//! - [`BlobStream`]: a blob as an `AsyncRead` that resumes after connection
//!   errors and checks the digest at its end.
//!
//! ```no_run
//! # async fn run() -> sochi_registry::Result<()> {
//! use sochi_registry::{Client, ClientConfig, Reference};
//! use tokio::io::AsyncReadExt as _;
//!
//! let client = Client::new(ClientConfig::default())?;
//! let image = Reference::parse("127.0.0.1:5000/busybox:latest")?;
//! let (descriptor, manifest) = client.get_manifest(&image).await?;
//! println!("{} {} ({} bytes)", descriptor.media_type, descriptor.digest, manifest.len());
//!
//! let layer = "sha256:6479…"; // a layer digest from the manifest
//! let first_kib = client.get_blob_range(&image, layer, 0..1024).await?;
//! let mut whole = Vec::new();
//! client.get_blob(&image, layer).await?.read_to_end(&mut whole).await.ok();
//! let socis = client
//!     .referrers(&image, &descriptor.digest, Some("application/vnd.amazon.soci.index.v1+json"))
//!     .await?;
//! # let _ = (first_kib, socis);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use blob::BlobStream;
pub use client::{
    Client, ClientConfig, HostStats, PutManifest, DEFAULT_BACKGROUND_REQUESTS_PER_HOST,
    DEFAULT_RANGE_REQUESTS_PER_HOST,
};
pub use credentials::{Credentials, Keychain, Secret};
pub use discovery::{DiscoveredIndex, DiscoveryOptions, FoundBy};
pub use error::{Error, Result};
pub use hosts::{Capabilities, HostsConfig, Mirror, RegistryHost};
pub use push::PushBlob;
pub use reference::Reference;
pub use referrers::ReferrerPush;

mod auth;
mod blob;
mod client;
mod credentials;
mod digest;
mod discovery;
mod docker_config;
mod error;
mod hosts;
mod push;
mod reference;
mod referrers;
mod retry;
#[cfg(test)]
mod tests;
mod token;
