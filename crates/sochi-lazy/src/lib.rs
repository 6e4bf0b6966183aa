//! Lazy images: an image in a registry, mounted without pulling it.
//!
//! - [`unpack`]: a layer without a zTOC, fetched whole and unpacked into a
//!   directory in overlayfs's format (whiteouts as 0/0 character devices,
//!   opaque directories with the opaque xattr).

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod unpack;
