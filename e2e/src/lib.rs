//! The end-to-end harness of sochi: real services, owned by one test each
//! and cleaned up on drop.
//!
//! - [`Registry`]: a private docker-registry on a free loopback port,
//!   plain HTTP or TLS (own CA) with optional htpasswd basic auth; killed
//!   and waited on drop. sochi talks plain HTTP to `127.0.0.1` whatever
//!   its flags, so TLS registries for sochi listen on `127.0.0.2`
//!   ([`Registry::secure`]).
//! - [`FaultProxy`]: a plain HTTP/1.1 reverse proxy in front of a plain
//!   `Registry` with run-time faults (`down`/`up`, `fail_next`,
//!   `reset_mid_body`, `corrupt_body`) and a request log.
//! - [`Sochi`]: the built `sochi` binary with a private `--root` and
//!   `DOCKER_CONFIG`; failures print the command, cwd, stdout and stderr.
//! - [`TestImages`]: busybox, debian-python and edgecase OCI layouts from
//!   `scripts/build-test-images.sh`, built once per process on first use,
//!   pushed with skopeo.
//! - [`Containerd`]: a private containerd 1.6 (config of
//!   `scripts/containerd.sh`: own root/state/sockets in a temp dir, proxy
//!   snapshotter `sochi`) with a `ctr` helper; tasks, shims and containerd
//!   stopped and mounts undone on drop.
//! - [`lazy`]: `sochi mount IMAGE MOUNTPOINT` owned by a guard
//!   ([`lazy::LazyMount`]), the daemon's metrics, the oracle's rootfs of a
//!   test image (cached), a bearer-token front for a registry.
//! - [`layouts`]: small OCI layouts made here (hostile layers, a wrong
//!   `diff_id`, a PAX global header), on their own or on a test image.
//! - [`Snapshotter`]: `sochi snapshotter` serving a [`Containerd`]'s proxy
//!   plugin, with `kill9`/`restart`; stopped and its mounts undone on drop.
//!   [`SnapshotView`]: a containerd snapshot view mounted read-only.
//! - [`cri`]: containerd's CRI plugin driven as a kubelet drives it
//!   ([`Containerd::start_with`] + [`ContainerdOptions::cri`],
//!   [`Containerd::cri`]): a blocking CRI client, registry hosts files, a
//!   sandbox image made from busybox, and [`cri::Pod`], a host-network pod
//!   torn down on drop.
//!
//! - [`zstd`]: test images recompressed by skopeo as zstd or zstd:chunked
//!   (cached like the test images), and registry-to-registry copies that
//!   recompress.
//!
//! A missing service (registry binary, skopeo, …) fails the test; nothing
//! is skipped. Install what the harness needs with `scripts/e2e-deps.sh`.
//!
//! The helpers are blocking and panic with context on failure: call them
//! from plain `#[test]`s (or `spawn_blocking`).

#![forbid(unsafe_code)]

pub use crate::containerd::{Containerd, ContainerdOptions, CriOptions};
pub use crate::images::{TestImages, IMAGE_NAMES};
pub use crate::process::{pid_alive, rss, rss_anon, run_ok, workspace_root};
pub use crate::proxy::{Fault, FaultProxy, RequestRecord};
pub use crate::registry::{Credentials, Registry, RegistryBuilder, TLS_LOOPBACK_IP};
pub use crate::snapshotter::{SnapshotView, Snapshotter, SnapshotterOptions};
pub use crate::sochi::{sochi_bin, Sochi, SochiOutput};

mod built;
mod containerd;
pub mod cri;
mod images;
pub mod layouts;
pub mod lazy;
mod mounts;
pub mod oracle;
mod process;
mod proxy;
mod registry;
pub mod snapshotter;
mod sochi;
mod tls;
pub mod zstd;
