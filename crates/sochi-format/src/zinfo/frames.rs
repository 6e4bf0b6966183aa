//! The zinfo of a zstd layer, a sochi extension (docs/zstd.md): each span
//! is a run of whole zstd frames, decoded from its own first byte (zstd
//! frames carry no history, so no window is stored). Two kinds of layer
//! use it:
//!
//! - zstd:chunked, whose spans are the chunks of its table of contents:
//!   they tile the files' contents back to back (a layer space that is not
//!   the tar's: the tar headers between them are never served), their
//!   compressed ranges leave out the header frames between them, and their
//!   digests are of the **uncompressed** chunk, as the table gives them;
//! - multi-frame zstd, whose spans tile the blob and the tar, with digests
//!   of the compressed bytes as for gzip.
//!
//! Layout, little-endian: the 8-byte magic `sochizf1`, a `u32` of flags
//! (bit 0: digests of uncompressed bytes), a `u32` span count (>= 1), then
//! per span its compressed start, its compressed end and its uncompressed
//! start as `u64`s. Invariants (checked by [`FrameZinfo::parse`]): span 0
//! starts at uncompressed 0; uncompressed starts strictly increase;
//! compressed ranges are in order and do not overlap.

use std::ops::Range;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"sochizf1";
const HEADER_SIZE: usize = 8 + 4 + 4;
const RECORD_SIZE: usize = 3 * 8;
const FLAG_UNCOMPRESSED_DIGESTS: u32 = 1;

/// One span of a [`FrameZinfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    /// Its bytes in the blob: whole zstd frames.
    pub compressed: Range<u64>,
    /// Where it starts in the layer's uncompressed space.
    pub uncompressed_start: u64,
}

/// The spans of a zstd layer, read in place from the zinfo blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameZinfo<'a> {
    blob: &'a [u8],
    count: usize,
    uncompressed_digests: bool,
}

fn corrupt(offset: usize, detail: String) -> Error {
    Error::Corrupt {
        what: "zstd zinfo",
        offset,
        detail,
    }
}

fn word(blob: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(blob.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> FrameZinfo<'a> {
    /// Decodes and checks a zstd zinfo blob.
    pub fn parse(blob: &'a [u8]) -> Result<Self> {
        if blob.get(..8) != Some(&MAGIC[..]) {
            return Err(corrupt(0, "no sochizf1 magic".into()));
        }
        let half = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(blob.get(at..at + 4)?.try_into().ok()?))
        };
        let (Some(flags), Some(count)) = (half(8), half(12)) else {
            return Err(corrupt(8, "truncated header".into()));
        };
        if flags & !FLAG_UNCOMPRESSED_DIGESTS != 0 {
            return Err(corrupt(8, format!("unknown flags {flags:#x}")));
        }
        let count = count as usize;
        let expected = count
            .checked_mul(RECORD_SIZE)
            .and_then(|records| records.checked_add(HEADER_SIZE));
        if count == 0 || expected != Some(blob.len()) {
            return Err(corrupt(
                12,
                format!("{count} spans in a blob of {} bytes", blob.len()),
            ));
        }
        let zinfo = FrameZinfo {
            blob,
            count,
            uncompressed_digests: flags & FLAG_UNCOMPRESSED_DIGESTS != 0,
        };
        let mut previous: Option<FrameSpan> = None;
        for index in 0..count {
            let at = HEADER_SIZE + index * RECORD_SIZE;
            let span = zinfo
                .span(index)
                .ok_or_else(|| corrupt(at, "truncated span".into()))?;
            let fits = i64::try_from(span.compressed.end).is_ok()
                && i64::try_from(span.uncompressed_start).is_ok();
            let follows = match &previous {
                None => span.uncompressed_start == 0,
                Some(previous) => {
                    span.compressed.start >= previous.compressed.end
                        && span.uncompressed_start > previous.uncompressed_start
                }
            };
            if span.compressed.start > span.compressed.end || !fits || !follows {
                return Err(corrupt(
                    at,
                    format!("span {index} ({span:?}) does not follow the span before it"),
                ));
            }
            previous = Some(span);
        }
        Ok(zinfo)
    }

    /// Number of spans (>= 1).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Never: a zstd zinfo has at least one span.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the zTOC's span digests are of the uncompressed spans
    /// (zstd:chunked) rather than of their compressed bytes.
    pub fn uncompressed_digests(&self) -> bool {
        self.uncompressed_digests
    }

    /// Span `index`, or `None` if out of range.
    pub fn span(&self, index: usize) -> Option<FrameSpan> {
        if index >= self.count {
            return None;
        }
        let at = HEADER_SIZE + index * RECORD_SIZE;
        Some(FrameSpan {
            compressed: word(self.blob, at)?..word(self.blob, at + 8)?,
            uncompressed_start: word(self.blob, at + 16)?,
        })
    }
}

/// Builds a zstd zinfo blob one span at a time, refusing what
/// [`FrameZinfo::parse`] would refuse.
#[derive(Clone, Debug)]
pub struct FrameZinfoWriter {
    buf: Vec<u8>,
    count: u32,
    last: Option<FrameSpan>,
}

impl FrameZinfoWriter {
    /// Starts a blob; `uncompressed_digests` says what the span digests
    /// will be of.
    pub fn new(uncompressed_digests: bool) -> Self {
        let mut buf = Vec::with_capacity(HEADER_SIZE + RECORD_SIZE);
        buf.extend_from_slice(MAGIC);
        let flags = if uncompressed_digests {
            FLAG_UNCOMPRESSED_DIGESTS
        } else {
            0
        };
        buf.extend_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes()); // patched by finish()
        FrameZinfoWriter {
            buf,
            count: 0,
            last: None,
        }
    }

    /// Appends a span.
    pub fn push(&mut self, compressed: Range<u64>, uncompressed_start: u64) -> Result<()> {
        let span = FrameSpan {
            compressed,
            uncompressed_start,
        };
        let follows = match &self.last {
            None => span.uncompressed_start == 0,
            Some(last) => {
                span.compressed.start >= last.compressed.end
                    && span.uncompressed_start > last.uncompressed_start
            }
        };
        let fits = i64::try_from(span.compressed.end).is_ok()
            && i64::try_from(span.uncompressed_start).is_ok();
        if span.compressed.start > span.compressed.end || !follows || !fits {
            return Err(Error::Invalid {
                what: "zstd zinfo",
                detail: format!(
                    "span {} ({span:?}) does not follow the span before it ({:?})",
                    self.count, self.last
                ),
            });
        }
        self.count = self.count.checked_add(1).ok_or_else(|| Error::Invalid {
            what: "zstd zinfo",
            detail: "too many spans".into(),
        })?;
        self.buf
            .extend_from_slice(&span.compressed.start.to_le_bytes());
        self.buf
            .extend_from_slice(&span.compressed.end.to_le_bytes());
        self.buf
            .extend_from_slice(&span.uncompressed_start.to_le_bytes());
        self.last = Some(span);
        Ok(())
    }

    /// Number of spans pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True before the first span.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished blob.
    pub fn finish(mut self) -> Vec<u8> {
        if let Some(header) = self.buf.get_mut(12..16) {
            header.copy_from_slice(&self.count.to_le_bytes());
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_spans_read_back_and_bad_ones_are_refused() {
        let mut writer = FrameZinfoWriter::new(true);
        writer.push(10..20, 0).unwrap();
        writer.push(25..40, 100).unwrap();
        assert!(writer.clone().push(39..50, 200).is_err(), "overlap");
        assert!(writer.clone().push(40..50, 100).is_err(), "empty span");
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 50..45;
        assert!(writer.clone().push(reversed, 200).is_err(), "reversed");
        let blob = writer.finish();
        let zinfo = FrameZinfo::parse(&blob).unwrap();
        assert_eq!(zinfo.len(), 2);
        assert!(zinfo.uncompressed_digests());
        assert_eq!(
            zinfo.span(1),
            Some(FrameSpan {
                compressed: 25..40,
                uncompressed_start: 100
            })
        );
        assert_eq!(zinfo.span(2), None);
        assert!(FrameZinfoWriter::new(false).push(0..1, 5).is_err());

        assert!(FrameZinfo::parse(&blob[..blob.len() - 1]).is_err());
        assert!(FrameZinfo::parse(&FrameZinfoWriter::new(false).finish()).is_err());
        let mut swapped = blob.clone();
        swapped[HEADER_SIZE + RECORD_SIZE + 16] = 0; // span 1 starts at 0
        assert!(FrameZinfo::parse(&swapped).is_err());
        let mut flags = blob;
        flags[8] = 2;
        assert!(FrameZinfo::parse(&flags).is_err());
    }
}
