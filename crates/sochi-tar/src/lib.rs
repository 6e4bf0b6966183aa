//! Reading tar layers exactly as Go's `archive/tar` does (docs/format.md §3.5), and
//! what a layer's entries may carry.
//!
//! sochi-tar reads tar streams and slices and returns values; it knows
//! nothing of gzip, zTOC building, registries or filesystems. The index
//! builder (`sochi-build`), the lazy layer's first-read check (`sochi-fs`)
//! and the local unpack (`sochi-lazy`) all read layers through it, so they
//! accept and refuse the same layers.
//!
//! The zTOC must agree with the reference's reading of the layer, which is
//! Go's tar reader fed by a byte-counting stream (docs/format.md §0, hazards 3 and 6):
//! the snapshotter re-parses each file's header on first read and refuses
//! the file if any field differs (§3.6). So this module reproduces Go's
//! behaviour, quirks included, rather than any tar standard:
//!
//! - the format is guessed from the magic after a checksum that may be a
//!   signed or an unsigned byte sum; the USTAR prefix is joined to the name
//!   for USTAR/PAX and STAR headers, not for GNU ones (`header`);
//! - PAX records override header fields, then GNU `L`/`K` long names
//!   override those; all PAX records of the entry are kept (`pax`);
//! - numbers are octal or GNU base-256; names are cut at the first NUL and
//!   never normalized (`../x`, `/abs`, `./x`, trailing `/` stay as they are:
//!   consumers clean them, docs/format.md §3.6);
//! - a legacy NUL typeflag is a directory when the name ends in `/`;
//!   links, directories, devices and fifos have no data whatever their
//!   size says;
//! - the archive ends at two zero blocks, or cleanly at EOF after one zero
//!   block or after (or inside) an entry's padding (`reader`);
//! - PAX global headers are skipped as containerd skips them (Go returns
//!   them as entries; the reference refuses such layers).
//!
//! [`check_xattr`] is the one policy for xattrs from a layer
//! (`trusted.overlay.*` never, `security.capability` only well-formed),
//! shared by the lazy layer tree and the unpack.
//!
//! [`TarReader`] streams entries from a [`BufRead`](std::io::BufRead) and
//! reports how many bytes it consumed; [`parse_header_at`] parses one
//! entry's header blocks from a slice, for verifying a file on first read.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use error::TarError;
pub use reader::{TarEntry, TarReader};
pub use xattrs::{check_xattr, entry_xattrs, first_refused_xattr, XattrRefusal, PAX_XATTR_PREFIX};

mod error;
mod header;
mod pax;
mod reader;
mod xattrs;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use sochi_format::FileMetadata;

/// Parses the header blocks of one entry at the start of `bytes` (any PAX
/// `x` and GNU `L`/`K` entries, then the entry's own header), as Go's
/// `tar.NewReader(bytes).Next()` would.
///
/// Returns the entry's metadata, with `uncompressed_offset` relative to the
/// start of `bytes`, and the number of bytes the headers took, which is the
/// same number. The snapshotter's first-read check (docs/format.md §3.6) passes the
/// bytes `[tar_header_offset, uncompressed_offset)` of a zTOC entry and
/// requires that all of them were consumed.
///
/// # Errors
///
/// Those of [`TarReader::next_entry`], and [`TarError::Corrupt`] if `bytes`
/// hold an end-of-archive marker or nothing at all instead of an entry.
pub fn parse_header_at(bytes: &[u8]) -> Result<(FileMetadata, usize), TarError> {
    let mut reader = TarReader::new(bytes);
    match reader.next_entry()? {
        Some(entry) => {
            let consumed = bytes.len() - reader.into_inner().len();
            Ok((entry.metadata, consumed))
        }
        None => Err(TarError::corrupt(
            reader.position(),
            "no tar entry here: end of archive",
        )),
    }
}
