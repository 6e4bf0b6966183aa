//! The filesystem of a lazy layer: the **layer tree** of its zTOC, built
//! the way the reference snapshotter builds it (docs/format.md §3.6), and
//! the read-only FUSE filesystem that serves it, its file data read through
//! the span store (`sochi-spans`). The tree does no I/O; the span store
//! knows nothing of FUSE.
//!
//! [`Layer::open`] is the entry point: a zTOC and a blob ([`sochi_spans::BlobReader`])
//! give a [`Layer`], which [`Layer::mount`]s plain or [`Layer::mount_kept`]
//! with its FUSE connection held by the [`Keeper`] (a mount that outlives
//! the daemon, taken over by the next one).
//!
//! [`LayerTree::build`] turns a [`sochi_format::Ztoc`] into a [`LayerTree`]
//! whose nodes are addressed by [`Ino`]; [`LayerTree::lookup`],
//! [`LayerTree::attr`] (an [`Attr`]), [`LayerTree::readdir`],
//! [`LayerTree::readlink`], [`LayerTree::xattrs`] and
//! [`LayerTree::file_extent`] answer what a filesystem asks.
//!
//! The tree is laid out for small memory (the reference's users report
//! gigabytes for big layers): nodes in one `Vec`, sorted child lists, names
//! in one byte arena, and regular files holding only a TOC index.
//!
//! ```
//! use sochi_format::{CompressionAlgorithm, CompressionInfo, EntryType, FileMetadata, Ztoc};
//! use sochi_fs::{FileKind, LayerTree};
//!
//! let file = FileMetadata {
//!     name: b"./etc/hostname".to_vec(),
//!     entry_type: EntryType::Regular,
//!     uncompressed_offset: 512,
//!     uncompressed_size: 5,
//!     linkname: Vec::new(),
//!     mode: 0o644,
//!     uid: 0,
//!     gid: 0,
//!     uname: Vec::new(),
//!     gname: Vec::new(),
//!     mod_time: "2023-11-14T22:13:20Z".into(),
//!     devmajor: 0,
//!     devminor: 0,
//!     pax_records: Vec::new(),
//! };
//! let ztoc = Ztoc {
//!     version: "0.9".into(),
//!     build_tool_identifier: "AWS SOCI CLI v0.2".into(),
//!     compressed_archive_size: 0,
//!     uncompressed_archive_size: 2048,
//!     toc: vec![file],
//!     compression: CompressionInfo {
//!         algorithm: CompressionAlgorithm::Uncompressed,
//!         max_span_id: 0,
//!         span_digests: Vec::new(),
//!         checkpoints: Vec::new(),
//!     },
//! };
//! let tree = LayerTree::build(&ztoc)?;
//! let etc = tree.lookup(tree.root(), b"etc").unwrap();
//! assert_eq!(tree.attr(etc).unwrap().perm, 0o755); // synthesized parent
//! let hostname = tree.lookup(etc, b"hostname").unwrap();
//! assert_eq!(tree.attr(hostname).unwrap().kind, FileKind::Regular);
//! assert_eq!(tree.file_extent(&ztoc, hostname), Some((512, 5)));
//! # Ok::<(), sochi_fs::Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use config::{LayerConfig, DEFAULT_FUSE_THREADS};
pub use error::{Error, Result};
pub use fuse::errno_of;
pub use keeper::{serve_keeper, FuseConnection, Keeper};
pub use kept::KeptMount;
pub use layer::Layer;
pub use mount::MountHandle;
pub use mountinfo::mount_type;
pub use pool::ReadPool;
pub use tree::{Attr, FileKind, Ino, LayerTree};

mod build;
mod config;
mod error;
mod fuse;
mod keeper;
mod kept;
mod layer;
mod mount;
mod mountinfo;
mod path;
mod pool;
mod priority;
mod tree;

#[cfg(test)]
mod tests;
