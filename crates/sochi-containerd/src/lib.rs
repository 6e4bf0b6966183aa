//! A containerd client for the lazy pull (being written).
