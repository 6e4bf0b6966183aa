//! Builds SOCI indexes: a layer blob → its zTOC in one streaming pass, an
//! image → its SOCI index (v1) or SOCI-enabled image (v2).
//!
//! - [`build_layer_ztoc`] reads a layer once (gzip or tar) and returns the
//!   zTOC: the TOC from a Go-`archive/tar`-exact reader (`sochi-tar`), the
//!   checkpoints and span digests from `sochi-zran`. A multi-frame zstd
//!   layer gets sochi's zTOC variant, spans cut at frame starts, when
//!   asked for ([`BuildOptions::zstd_frames`]).
//! - [`build_index`] indexes the layers of one image manifest concurrently.
//! - [`convert`] makes the SOCI-enabled image (index manifest v2).
//! - [`build_prefetch`] makes the prefetch artifacts of `--prefetch-file`
//!   paths over the layers' zTOCs ([`build_index`] calls it).
//!
//! Images are read through [`ImageSource`]; nothing here writes output.
//!
//! ```
//! use sochi_build::{build_layer_ztoc, LayerCompression, LayerOptions};
//! // A tar with one empty file "a" (a 512-byte header, then two zero blocks).
//! let mut tar = vec![0u8; 512 * 3];
//! tar[0] = b'a';
//! tar[100..107].copy_from_slice(b"0000644");
//! tar[124..135].copy_from_slice(b"00000000000");
//! tar[136..147].copy_from_slice(b"00000000000");
//! tar[156] = b'0';
//! tar[148..156].copy_from_slice(b"        ");
//! let sum: u32 = tar[..512].iter().map(|b| *b as u32).sum();
//! tar[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
//! let options = LayerOptions {
//!     span_size: 512,
//!     compression: LayerCompression::Uncompressed,
//!     expect: None,
//!     source_verifies_digest: false,
//! };
//! let built = build_layer_ztoc(&tar[..], &options, "example", &|_| {})?;
//! assert_eq!(built.ztoc.toc.len(), 1);
//! # Ok::<(), sochi_build::Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use convert::{convert, ConvertOutput};
pub use error::{Error, Result, SourceError};
pub use extract::{clean_name, extract_file, find_entry};
pub use index::{
    build_index, stored_ztoc_descriptor, ztoc_descriptor, BuildEvent, BuildOptions, BuiltIndex,
    LayerOutcome, ReuseLookup, ReusedZtoc, DEFAULT_MIN_LAYER_SIZE,
};
pub use layer::{
    build_layer_ztoc, has_xattrs, LayerCompression, LayerKind, LayerOptions, LayerZtoc,
    DEFAULT_SPAN_SIZE,
};
pub use prefetch::{
    build_load_order_prefetch, build_prefetch, clean_prefetch_path, prefetch_descriptor,
    prefetch_paths_from_json, trim_prefetch_paths, PrefetchBlob, PrefetchBuild, PrefetchHit,
    PrefetchPathReport,
};
pub use source::{
    manifest_platform, select_manifests, ImageSource, PlatformManifest, PlatformSelection,
};

mod convert;
mod error;
mod extract;
mod index;
mod layer;
mod prefetch;
mod source;
mod span_hasher;
mod zstd;
