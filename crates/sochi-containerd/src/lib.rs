//! A containerd client for sochi's lazy pull: what `sochi pull` does over
//! containerd's gRPC socket (content store, leases, snapshots, diff,
//! images), so that `ctr run --snapshotter sochi IMAGE …` runs an image
//! whose layers the snapshotter mounts remotely.
//!
//! It is needed because containerd 1.6's own `ctr images pull` sends no
//! remote-snapshot labels to the snapshotter and downloads every blob first
//! (environment.md §4). It does not serve snapshots (`sochi-snapshotter`)
//! or talk to registries by itself (it takes a `sochi-registry` client).
//!
//! - [`Containerd`]: a connection in one namespace (and optionally under a
//!   lease); cheap to clone.
//! - [`pull`] with [`PullOptions`]: resolve, store manifest and config,
//!   offer each layer to the snapshotter as a remote snapshot (labels of
//!   docs/format.md §6.2), unpack the layers it declines, record the image; returns
//!   a [`PullReport`] with a [`PullOutcome`] per layer.
//! - [`chain_ids`] and the snapshot labels (`sochi_format::snapshot_labels`): the contract with the
//!   snapshotter.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sochi_containerd::{pull, Containerd, PullOptions};
//! use sochi_registry::{Client, ClientConfig, Reference};
//!
//! let containerd = Containerd::connect("/run/containerd/containerd.sock", "default").await?;
//! let registry = Client::new(ClientConfig::default())?;
//! let image = Reference::parse("127.0.0.1:5000/py:soci")?;
//! let report = pull(&containerd, &registry, &image, &PullOptions::new("sochi")).await?;
//! for layer in &report.layers {
//!     println!("{} {}", layer.digest, layer.outcome.as_str());
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use client::Containerd;
pub use error::{Error, Result};
pub use labels::{chain_ids, image_layers_label};
pub use pull::{pull, LayerReport, PullOptions, PullOutcome, PullReport, DEFAULT_LEASE_EXPIRY};

mod client;
mod content;
mod error;
mod labels;
mod pull;
mod snapshots;
