//! The snapshot labels of containerd's remote-snapshot contract
//! (docs/format.md §6.2), in one place for both sides: the lazy-pull client
//! that sets them on `Prepare` and the snapshotter that reads them and
//! writes its own.
//!
//! containerd passes a snapshotter only labels that start with
//! `containerd.io/snapshot/` (and `containerd.io/snapshot.ref`), so every
//! label of ours does too.

/// The committed name a layer snapshot should get (its chain ID). With it,
/// `Prepare` is a remote-snapshot attempt: a snapshotter that can mount the
/// layer itself commits it under this name and answers `AlreadyExists`.
pub const TARGET: &str = "containerd.io/snapshot.ref";
/// The image reference (containerd `pkg/snapshotters/annotations.go`).
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The image manifest digest.
pub const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The layer (compressed) digest.
pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The digests of this layer and the layers above it, comma-separated, cut
/// to fit containerd's label size limit ([`MAX_LABEL_SIZE`]).
pub const IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// The layer's compressed size (the reference's own label).
pub const SOCI_LAYER_SIZE: &str = "containerd.io/snapshot/remote/soci.size";
/// An explicit SOCI index digest for the image.
pub const SOCI_INDEX_DIGEST: &str = "containerd.io/snapshot/remote/soci.index.digest";
/// Written by the snapshotter on layers it mounted lazily.
pub const REMOTE: &str = "containerd.io/snapshot/remote";
/// Written by the snapshotter on every layer it provided (lazy or
/// unpacked).
pub const HAS_SOCI_INDEX: &str = "containerd.io/snapshot/remote/has.soci.index.digest";
/// How sochi provided the layer: `lazy` or `unpacked`.
pub const SOCHI_MODE: &str = "containerd.io/snapshot/remote/sochi.mode";

/// containerd refuses a label whose key and value together are longer
/// than this (`labels.Validate`, `maxSize`).
pub const MAX_LABEL_SIZE: usize = 4096;
