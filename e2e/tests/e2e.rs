//! End-to-end tests against real services (see the `sochi-e2e` crate).
#![allow(clippy::unwrap_used)]

// The harness itself: registry, fault proxy, images, sochi runner.
mod harness;

// create / push / convert against the real registry, with faults.
mod registry;

// sochi mount: a lazy layer over FUSE compared with tar -x.
mod mount;

// The oracle: real-tool unpack of an image and tree comparison.
mod oracle;

// sochi mount IMAGE: lazy images from a registry against the oracle, faults.
mod lazy;

// sochi pull into a real containerd (overlayfs: a full pull), then ctr run.
mod pull;

// sochi snapshotter behind a real containerd: lazy pulls, ctr run, restarts.
mod snapshotter;

// Hostile images: no privilege, one xattr policy, nothing half-made.
mod hostile;

// containerd's CRI plugin as a kubelet drives it, on the sochi snapshotter.
mod cri;

// A Kubernetes node's registry side: kubelet credentials, rotation, mirrors.
mod kube;

// A node with many images: one memory budget for all of them.
mod many;

// Load orders recorded from real starts, made into prefetch artifacts;
// hostile prefetch artifacts refused.
mod load_order;

// zstd and zstd:chunked images, and SOCI images copied with recompression.
mod zstd;
mod zstd_frames;
