//! What `soci ztoc info` prints about a zTOC (docs/format.md §7.2, §3.7).
//!
//! Field names and order are the reference's JSON keys. Like the reference,
//! entries are listed sorted by `uncompressed_offset` (its reader sorts them
//! on load), `span_size` is the span size stored in the zinfo, and each
//! file's spans are `SpanOf(offset)` and `SpanOf(offset + size)`: the end
//! offset is exclusive, so a file ending exactly on a span boundary reports
//! the next span as its end.

use serde::{Serialize, Serializer};

use crate::error::{Error, Result};

use super::Ztoc;

/// Summary of a zTOC, serialized with the reference's keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZtocInfo {
    /// zTOC format version.
    pub version: String,
    /// Build tool identifier.
    pub build_tool: String,
    /// Size of the zTOC blob in bytes.
    pub size: u64,
    /// Span size recorded in the zinfo at build time.
    pub span_size: i64,
    /// Number of spans (`max_span_id + 1`).
    pub num_spans: usize,
    /// Number of TOC entries.
    pub num_files: usize,
    /// Entries whose first and last span differ.
    pub num_multi_span_files: usize,
    /// One line per entry, by `uncompressed_offset`. Go prints `null` for an
    /// empty list, and so do we.
    #[serde(serialize_with = "null_if_empty")]
    pub files: Vec<ZtocFileInfo>,
}

/// One entry of [`ZtocInfo::files`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZtocFileInfo {
    /// Entry name; invalid UTF-8 becomes U+FFFD byte by byte, as Go's JSON
    /// encoder does.
    pub filename: String,
    /// Offset of the entry's data in the uncompressed tar.
    pub offset: i64,
    /// Size of the entry's data.
    pub size: i64,
    /// Entry type (`reg`, `dir`, ...).
    #[serde(rename = "type")]
    pub entry_type: &'static str,
    /// Span holding `offset`.
    pub start_span: usize,
    /// Span holding `offset + size` (exclusive end; see the module doc).
    pub end_span: usize,
}

impl ZtocInfo {
    /// Summarizes `ztoc`, whose blob is `size` bytes long.
    pub fn new(ztoc: &Ztoc, size: u64) -> Result<ZtocInfo> {
        let geometry = ztoc.span_geometry()?;
        let mut entries: Vec<_> = ztoc.toc.iter().collect();
        entries.sort_by_key(|entry| entry.uncompressed_offset); // stable
        let mut files = Vec::with_capacity(entries.len());
        let mut num_multi_span_files = 0;
        for entry in entries {
            let bad = || Error::Invalid {
                what: "ztoc",
                detail: format!(
                    "entry {:?}: bad offset {} or size {}",
                    go_lossy_utf8(&entry.name),
                    entry.uncompressed_offset,
                    entry.uncompressed_size
                ),
            };
            let start = u64::try_from(entry.uncompressed_offset).map_err(|_| bad())?;
            let end = u64::try_from(entry.uncompressed_size)
                .ok()
                .and_then(|size| start.checked_add(size))
                .ok_or_else(bad)?;
            let start_span = geometry.span_of(start);
            let end_span = geometry.span_of(end);
            if start_span != end_span {
                num_multi_span_files += 1;
            }
            files.push(ZtocFileInfo {
                filename: go_lossy_utf8(&entry.name),
                offset: entry.uncompressed_offset,
                size: entry.uncompressed_size,
                entry_type: entry.entry_type.as_str(),
                start_span: start_span.index(),
                end_span: end_span.index(),
            });
        }
        Ok(ZtocInfo {
            version: ztoc.version.clone(),
            build_tool: ztoc.build_tool_identifier.clone(),
            size,
            span_size: geometry.span_size(),
            num_spans: geometry.span_count(),
            num_files: ztoc.toc.len(),
            num_multi_span_files,
            files,
        })
    }
}

fn null_if_empty<S: Serializer>(files: &[ZtocFileInfo], serializer: S) -> Result<S::Ok, S::Error> {
    if files.is_empty() {
        serializer.serialize_none()
    } else {
        serializer.collect_seq(files)
    }
}

/// Decodes like Go's `encoding/json` does for a string holding invalid
/// UTF-8: each byte that does not start a valid sequence becomes one U+FFFD
/// (Rust's `from_utf8_lossy` would merge a truncated sequence into one).
fn go_lossy_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(err) => {
                let (valid, after) = rest.split_at(err.valid_up_to());
                // `valid` is valid UTF-8 by construction.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push(char::REPLACEMENT_CHARACTER);
                rest = after.get(1..).unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_replaced_byte_by_byte() {
        assert_eq!(go_lossy_utf8(b"ok"), "ok");
        assert_eq!(go_lossy_utf8(b"a\xe2\x82b"), "a\u{fffd}\u{fffd}b");
        assert_eq!(go_lossy_utf8(b"\xff"), "\u{fffd}");
        assert_eq!(go_lossy_utf8("é".as_bytes()), "é");
    }
}
