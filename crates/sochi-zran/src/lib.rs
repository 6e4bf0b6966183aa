//! Checkpointing inflate for SOCI: zlib's `zran` technique.
//!
//! `sochi-zran` reads a gzip layer once and records where it can later be
//! decompressed from the middle, and it decompresses such a middle part. It
//! owns the crate's only `unsafe` code, the zlib calls, in one private
//! module. It knows nothing of tar, zTOCs or registries: it takes
//! `impl Read` or byte slices and returns values.
//!
//! - [`CheckpointingReader`] yields a layer's uncompressed bytes (it is a
//!   [`Read`](std::io::Read) and [`BufRead`](std::io::BufRead), so a tar
//!   reader can sit on top) while placing checkpoints exactly where the
//!   reference does (docs/format.md §3.2) and hashing each span's compressed bytes
//!   (docs/format.md §2.4). [`CheckpointingReader::finish`] returns a
//!   [`GzipLayerIndex`]: the zinfo blob of the zTOC plus the span digests.
//! - [`inflate_span`] decompresses bytes of one span from its checkpoint and
//!   the span's compressed bytes (docs/format.md §2.5), as the snapshotter does on a
//!   lazy read.
//! - [`decode_zstd_span`] decodes a span of whole zstd frames, with the
//!   streaming decoder the indexer and an unpack use.
//!
//! ```
//! # fn main() -> Result<(), sochi_zran::Error> {
//! use sochi_format::{CheckpointRef, WINDOW_SIZE};
//! use sochi_zran::{inflate_span, CheckpointingReader};
//!
//! // "hello\n", gzip -6: a 10-byte header, DEFLATE data, an 8-byte trailer.
//! let layer = [
//!     0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9,
//!     0xc9, 0xe7, 0x02, 0x00, 0x20, 0x30, 0x3a, 0x36, 0x06, 0x00, 0x00, 0x00,
//! ];
//! let index = CheckpointingReader::new(&layer[..], 65536)?.finish()?;
//! assert_eq!(index.checkpoint_count, 1);
//! assert_eq!(index.uncompressed_size, 6);
//!
//! // Checkpoint 0 sits right after the header; its window is all zeros.
//! let window = [0u8; WINDOW_SIZE];
//! let checkpoint = CheckpointRef {
//!     compressed_offset: 10,
//!     uncompressed_offset: 0,
//!     bits: 0,
//!     window: &window,
//! };
//! let mut out = [0u8; 4];
//! inflate_span(checkpoint, &layer[10..], 1, &mut out)?;
//! assert_eq!(&out, b"ello");
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use error::{Error, Result};
pub use reader::{CheckpointingReader, GzipLayerIndex};
pub use span::{inflate_span, inflate_span_to_vec};
pub use zstd_span::decode_zstd_span;

mod error;
#[allow(unsafe_code)]
mod ffi;
mod reader;
mod span;
mod span_digests;
mod zstd_span;
