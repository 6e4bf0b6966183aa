//! containerd remote snapshotter (being written).
