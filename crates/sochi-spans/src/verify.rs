//! First-read verification of a file's tar header (docs/format.md §3.6): before any
//! byte of a file is served, the header bytes in front of its data are read
//! through the span manager, parsed with Go `archive/tar` semantics, and
//! compared with the file's zTOC entry. A zTOC that does not describe its
//! layer then fails reads instead of serving the wrong bytes.
//!
//! Spans are verified against the zTOC's digests already; this catches a
//! zTOC whose file table does not match the layer it names.

use std::sync::atomic::{AtomicU64, Ordering};

use sochi_format::parse_mod_time;
use sochi_format::{FileMetadata, Ztoc};

use crate::error::{Error, Result};
use crate::SpanManager;

/// Longest header (with its PAX and GNU long-name records) read for a
/// check; a zTOC claiming more is refused rather than trusted with an
/// allocation.
const MAX_HEADER_BYTES: u64 = 16 << 20;

/// First-read verification of a layer's files: which TOC entries passed,
/// one bit per entry.
#[derive(Debug)]
pub struct HeaderCheck {
    bits: Vec<AtomicU64>,
    header_offsets: Vec<u64>,
}

impl HeaderCheck {
    /// Nothing verified yet for the entries of `ztoc`.
    pub fn new(ztoc: &Ztoc) -> Result<HeaderCheck> {
        let header_offsets = ztoc.tar_header_offsets()?;
        let bits = (0..header_offsets.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(HeaderCheck {
            bits,
            header_offsets,
        })
    }

    /// Whether TOC entry `entry` has been checked (then a read of it
    /// checks nothing more).
    pub fn is_checked(&self, entry: usize) -> bool {
        self.is_set(entry)
    }

    fn is_set(&self, entry: usize) -> bool {
        self.bits
            .get(entry / 64)
            .is_some_and(|word| word.load(Ordering::Relaxed) & (1 << (entry % 64)) != 0)
    }

    fn set(&self, entry: usize) {
        if let Some(word) = self.bits.get(entry / 64) {
            word.fetch_or(1 << (entry % 64), Ordering::Relaxed);
        }
    }

    /// Checks TOC entry `entry` once; later calls for it return at once.
    /// Concurrent first reads may both check; both get the same answer.
    pub fn check(&self, ztoc: &Ztoc, spans: &SpanManager, entry: usize) -> Result<()> {
        if self.is_set(entry) {
            return Ok(());
        }
        let (Some(file), Some(&header_start)) =
            (ztoc.toc.get(entry), self.header_offsets.get(entry))
        else {
            return Err(mismatch(entry, &[], "no such toc entry".into()));
        };
        let data_start = u64::try_from(file.uncompressed_offset).unwrap_or(0);
        let len = data_start.saturating_sub(header_start);
        if len == 0 || len > MAX_HEADER_BYTES {
            return Err(mismatch(
                entry,
                &file.name,
                format!("{len} header bytes before the data"),
            ));
        }
        let mut bytes = vec![0; usize::try_from(len).unwrap_or(0)];
        let read = spans.read(header_start, &mut bytes)?;
        if read != bytes.len() {
            return Err(mismatch(
                entry,
                &file.name,
                "header runs past the layer".into(),
            ));
        }
        let (parsed, consumed) = sochi_tar::parse_header_at(&bytes)
            .map_err(|error| mismatch(entry, &file.name, format!("unparsable: {error}")))?;
        if consumed != bytes.len() {
            return Err(mismatch(
                entry,
                &file.name,
                format!(
                    "header is {consumed} bytes, the zTOC leaves {}",
                    bytes.len()
                ),
            ));
        }
        if let Some(detail) = difference(file, &parsed) {
            return Err(mismatch(entry, &file.name, detail));
        }
        self.set(entry);
        Ok(())
    }
}

fn mismatch(entry: usize, name: &[u8], detail: String) -> Error {
    Error::HeaderMismatch {
        entry,
        name: name.to_vec(),
        detail,
    }
}

/// The first field where the header disagrees with the zTOC, the fields the
/// reference compares: name, size, mode, type, uid, gid, link name, mod
/// time (as an instant), device numbers and the `SCHILY.xattr.*` records.
fn difference(toc: &FileMetadata, header: &FileMetadata) -> Option<String> {
    let differs = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        Some(format!("{what}: zTOC {a:?}, header {b:?}"))
    };
    if toc.name != header.name {
        return differs(
            "name",
            &String::from_utf8_lossy(&toc.name),
            &String::from_utf8_lossy(&header.name),
        );
    }
    if toc.uncompressed_size != header.uncompressed_size {
        return differs("size", &toc.uncompressed_size, &header.uncompressed_size);
    }
    if toc.entry_type != header.entry_type {
        return differs("type", &toc.entry_type, &header.entry_type);
    }
    if toc.mode & 0o7777 != header.mode & 0o7777 {
        return differs("mode", &toc.mode, &header.mode);
    }
    if (toc.uid, toc.gid) != (header.uid, header.gid) {
        return differs("owner", &(toc.uid, toc.gid), &(header.uid, header.gid));
    }
    if toc.linkname != header.linkname {
        return differs(
            "link name",
            &String::from_utf8_lossy(&toc.linkname),
            &String::from_utf8_lossy(&header.linkname),
        );
    }
    if parse_mod_time(&toc.mod_time) != parse_mod_time(&header.mod_time) {
        return differs("mod time", &toc.mod_time, &header.mod_time);
    }
    if (toc.devmajor, toc.devminor) != (header.devmajor, header.devminor) {
        return differs(
            "device",
            &(toc.devmajor, toc.devminor),
            &(header.devmajor, header.devminor),
        );
    }
    let xattrs = |m: &FileMetadata| {
        m.pax_records
            .iter()
            .filter(|(key, _)| key.starts_with(b"SCHILY.xattr."))
            .cloned()
            .collect::<Vec<_>>()
    };
    if xattrs(toc) != xattrs(header) {
        return Some("xattrs differ".into());
    }
    None
}
