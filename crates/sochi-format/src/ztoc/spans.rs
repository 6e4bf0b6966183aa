//! Span geometry: where each span starts and ends in the layer blob and in
//! the uncompressed tar, and which span holds a given offset (docs/format.md §2.4).
//!
//! Spans are named by [`SpanId`], their index `0..span_count()`. Invariants, checked
//! by [`SpanGeometry::new`]: `span_count() >= 1`; it equals the number of
//! checkpoints (gzip) or `ceil(size / span_size)` (tar); for every span but
//! the last, start < end in both streams; the last span starts no later than
//! the end of the layer blob.
//!
//! The last span ends at `uncompressed_archive_size`, which is where Go's tar
//! reader saw end-of-archive. A checkpoint can lie in the tar's trailing
//! padding after that point, so the last span's uncompressed end may be
//! *before* its start; the reference does the same and such a span holds no
//! TOC data. Callers compute lengths with `saturating_sub`.

use crate::error::{Error, Result};
use crate::zinfo::{CheckpointRef, Zinfo};

use super::{CompressionAlgorithm, Ztoc};

/// A span of a layer: its index `0..span_count()` in the zTOC. A type of
/// its own so that a span is never mixed up with an offset or a count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpanId(pub usize);

impl SpanId {
    /// The index, for a vector of per-span values.
    pub fn index(self) -> usize {
        self.0
    }

    /// The next span.
    pub fn next(self) -> SpanId {
        SpanId(self.0.saturating_add(1))
    }
}

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<usize> for SpanId {
    fn from(index: usize) -> SpanId {
        SpanId(index)
    }
}

/// Start and end offsets of every span of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanGeometry<'a> {
    zinfo: Zinfo<'a>,
    /// Number of spans, >= 1.
    span_count: usize,
    compressed_archive_size: u64,
    uncompressed_archive_size: u64,
}

impl Ztoc {
    /// The span geometry of this zTOC. Decodes the zinfo blob (no copy:
    /// the result borrows the checkpoints from `self`) and checks it against
    /// `max_span_id` and the archive sizes. Costs one pass over the
    /// checkpoints; build it once per use, not per read.
    pub fn span_geometry(&self) -> Result<SpanGeometry<'_>> {
        let zinfo = Zinfo::parse(self.compression.algorithm, &self.compression.checkpoints)?;
        SpanGeometry::new(
            zinfo,
            self.compression.max_span_id,
            self.compressed_archive_size,
            self.uncompressed_archive_size,
        )
    }
}

impl Ztoc {
    /// Whether the files' offsets are offsets in the layer's tar, with each
    /// file's tar header before its data: false for a zstd:chunked layer,
    /// whose span digests are of its uncompressed chunks and whose files
    /// lie back to back ([`crate::ChunkedToc::to_ztoc`]).
    pub fn has_tar_headers(&self) -> bool {
        !matches!(
            Zinfo::parse(self.compression.algorithm, &self.compression.checkpoints),
            Ok(Zinfo::Zstd(zstd)) if zstd.uncompressed_digests()
        )
    }
}

impl<'a> SpanGeometry<'a> {
    /// Checks `zinfo` against a zTOC's `max_span_id` and archive sizes
    /// (docs/format.md §1.3) and returns the geometry.
    pub fn new(
        zinfo: Zinfo<'a>,
        max_span_id: i32,
        compressed_archive_size: i64,
        uncompressed_archive_size: i64,
    ) -> Result<Self> {
        let invalid = |detail: String| Error::Invalid {
            what: "ztoc",
            detail,
        };
        let (Ok(compressed_archive_size), Ok(uncompressed_archive_size)) = (
            u64::try_from(compressed_archive_size),
            u64::try_from(uncompressed_archive_size),
        ) else {
            return Err(invalid(format!(
                "negative archive size (compressed {compressed_archive_size}, uncompressed {uncompressed_archive_size})"
            )));
        };
        if zinfo.max_span_id() != i64::from(max_span_id) {
            return Err(invalid(format!(
                "max_span_id is {max_span_id}, but the {} checkpoints describe max span id {}",
                zinfo.algorithm().as_str(),
                zinfo.max_span_id()
            )));
        }
        let span_count = usize::try_from(max_span_id)
            .ok()
            .and_then(|max| max.checked_add(1))
            .ok_or_else(|| invalid(format!("max_span_id {max_span_id} is negative")))?;
        if let Zinfo::Tar(tar) = zinfo {
            if tar.span_size <= 0 {
                return Err(invalid(format!(
                    "span size {} is not positive",
                    tar.span_size
                )));
            }
        }
        let geometry = SpanGeometry {
            zinfo,
            span_count,
            compressed_archive_size,
            uncompressed_archive_size,
        };
        // Gzip checkpoints strictly increase (checked by the zinfo parser),
        // and tar spans are fixed slices, so only the last span can go wrong.
        let last = span_count - 1;
        let last_start = geometry
            .start_compressed(SpanId(last))
            .ok_or_else(|| invalid(format!("span {last}: start offset overflows")))?;
        if let Zinfo::Zstd(zstd) = zinfo {
            let last_span = zstd
                .span(last)
                .ok_or_else(|| invalid(format!("span {last} missing")))?;
            if last_span.compressed.end > compressed_archive_size
                || last_span.uncompressed_start >= uncompressed_archive_size
            {
                return Err(invalid(format!(
                    "span {last} ({last_span:?}) is past the end of the layer ({compressed_archive_size} bytes, {uncompressed_archive_size} uncompressed)"
                )));
            }
        }
        if last_start > compressed_archive_size {
            return Err(invalid(format!(
                "span {last} starts at compressed offset {last_start}, past the end of the layer ({compressed_archive_size} bytes)"
            )));
        }
        Ok(geometry)
    }

    /// Gzip or uncompressed.
    pub fn algorithm(&self) -> CompressionAlgorithm {
        self.zinfo.algorithm()
    }

    /// The decoded zinfo.
    pub fn zinfo(&self) -> &Zinfo<'a> {
        &self.zinfo
    }

    /// The span size requested at build time.
    pub fn span_size(&self) -> i64 {
        self.zinfo.span_size()
    }

    /// Number of spans (>= 1).
    pub fn span_count(&self) -> usize {
        self.span_count
    }

    /// The id of the last span.
    pub fn max_span_id(&self) -> SpanId {
        SpanId(self.span_count.saturating_sub(1))
    }

    /// Size of the layer blob.
    pub fn compressed_archive_size(&self) -> u64 {
        self.compressed_archive_size
    }

    /// Where the tar reader saw end-of-archive.
    pub fn uncompressed_archive_size(&self) -> u64 {
        self.uncompressed_archive_size
    }

    /// For tar layers: `span * span_size`.
    fn tar_offset(span_size: i64, span: usize) -> Option<u64> {
        u64::try_from(span)
            .ok()?
            .checked_mul(u64::try_from(span_size).ok()?)
    }

    /// First byte of `span` in the layer blob. For gzip this includes the
    /// partial byte before a checkpoint with `bits != 0`. `None` if `span`
    /// is out of range.
    pub fn start_compressed(&self, span: SpanId) -> Option<u64> {
        let span = span.index();
        if span >= self.span_count {
            return None;
        }
        match &self.zinfo {
            Zinfo::Gzip(gzip) => {
                let checkpoint = gzip.checkpoint(span)?;
                checkpoint
                    .compressed_offset
                    .checked_sub(u64::from(checkpoint.bits != 0))
            }
            Zinfo::Tar(tar) => Self::tar_offset(tar.span_size, span),
            Zinfo::Zstd(zstd) => Some(zstd.span(span)?.compressed.start),
        }
    }

    /// End (exclusive) of `span` in the layer blob: the next checkpoint's
    /// `in`, or the blob size for the last span (so it includes the gzip
    /// trailer). `None` if `span` is out of range.
    pub fn end_compressed(&self, span: SpanId) -> Option<u64> {
        let span = span.index();
        if span >= self.span_count {
            return None;
        }
        // A zstd span ends where its frames do: the gaps of zstd:chunked
        // (tar headers, the table of contents) belong to no span.
        if let Zinfo::Zstd(zstd) = &self.zinfo {
            return Some(zstd.span(span)?.compressed.end);
        }
        if span == self.max_span_id().index() {
            return Some(self.compressed_archive_size);
        }
        let next = span.checked_add(1)?;
        match &self.zinfo {
            Zinfo::Gzip(gzip) => Some(gzip.checkpoint(next)?.compressed_offset),
            Zinfo::Tar(tar) => Self::tar_offset(tar.span_size, next),
            Zinfo::Zstd(zstd) => Some(zstd.span(next)?.compressed.start),
        }
    }

    /// Where `span` starts in the uncompressed tar. `None` if out of range.
    pub fn start_uncompressed(&self, span: SpanId) -> Option<u64> {
        let span = span.index();
        if span >= self.span_count {
            return None;
        }
        match &self.zinfo {
            Zinfo::Gzip(gzip) => Some(gzip.checkpoint(span)?.uncompressed_offset),
            Zinfo::Tar(tar) => Self::tar_offset(tar.span_size, span),
            Zinfo::Zstd(zstd) => Some(zstd.span(span)?.uncompressed_start),
        }
    }

    /// End (exclusive) of `span` in the uncompressed tar: the next span's
    /// start, or `uncompressed_archive_size` for the last span (see the
    /// module doc). `None` if out of range.
    pub fn end_uncompressed(&self, span: SpanId) -> Option<u64> {
        let span = span.index();
        if span >= self.span_count {
            return None;
        }
        if span == self.max_span_id().index() {
            return Some(self.uncompressed_archive_size);
        }
        self.start_uncompressed(SpanId(span.checked_add(1)?))
    }

    /// The span holding uncompressed `offset`, as the reference computes it.
    ///
    /// Gzip: the last span whose start is at or before `offset` (0 if none).
    /// Tar: `offset / span_size`, which is past [`Self::max_span_id`] for an
    /// offset at or beyond the end of the last span (the reference does not
    /// clamp; `soci ztoc info` prints it as is).
    pub fn span_of(&self, uncompressed_offset: u64) -> SpanId {
        SpanId(match &self.zinfo {
            Zinfo::Gzip(gzip) => {
                // Binary search for the first checkpoint past the offset;
                // starts strictly increase (zinfo invariant).
                let (mut low, mut high) = (0usize, self.span_count);
                while low < high {
                    let mid = low + (high - low) / 2;
                    let start = gzip
                        .checkpoint(mid)
                        .map_or(u64::MAX, |checkpoint| checkpoint.uncompressed_offset);
                    if start <= uncompressed_offset {
                        low = mid + 1;
                    } else {
                        high = mid;
                    }
                }
                low.saturating_sub(1)
            }
            Zinfo::Zstd(zstd) => {
                let (mut low, mut high) = (0usize, self.span_count);
                while low < high {
                    let mid = low + (high - low) / 2;
                    let start = zstd
                        .span(mid)
                        .map_or(u64::MAX, |span| span.uncompressed_start);
                    if start <= uncompressed_offset {
                        low = mid + 1;
                    } else {
                        high = mid;
                    }
                }
                low.saturating_sub(1)
            }
            Zinfo::Tar(tar) => u64::try_from(tar.span_size)
                .ok()
                .and_then(|span_size| uncompressed_offset.checked_div(span_size))
                .map_or(0, |span| usize::try_from(span).unwrap_or(usize::MAX)),
        })
    }

    /// The checkpoint to inflate `span` from (gzip only; `None` for tar
    /// layers or an out-of-range span).
    pub fn checkpoint(&self, span: SpanId) -> Option<CheckpointRef<'a>> {
        let span = span.index();
        match &self.zinfo {
            Zinfo::Gzip(gzip) if span < self.span_count => gzip.checkpoint(span),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zinfo::{GzipZinfoWriter, TarZinfo, WINDOW_SIZE};

    fn gzip_blob() -> Vec<u8> {
        let window = vec![0u8; WINDOW_SIZE];
        let mut writer = GzipZinfoWriter::new(100);
        writer.push(10, 0, 0, &window).unwrap();
        writer.push(50, 200, 3, &window).unwrap();
        writer.push(90, 400, 0, &window).unwrap();
        writer.finish()
    }

    #[test]
    fn gzip_geometry_follows_the_checkpoints() {
        let blob = gzip_blob();
        let zinfo = Zinfo::parse(CompressionAlgorithm::Gzip, &blob).unwrap();
        let geometry = SpanGeometry::new(zinfo, 2, 120, 500).unwrap();
        assert_eq!(geometry.span_count(), 3);
        assert_eq!(geometry.start_compressed(SpanId(0)), Some(10));
        assert_eq!(geometry.end_compressed(SpanId(0)), Some(50));
        assert_eq!(geometry.start_compressed(SpanId(1)), Some(49)); // bits != 0
        assert_eq!(geometry.end_compressed(SpanId(1)), Some(90));
        assert_eq!(geometry.end_compressed(SpanId(2)), Some(120));
        assert_eq!(geometry.end_uncompressed(SpanId(2)), Some(500));
        assert_eq!(geometry.start_compressed(SpanId(3)), None);
        assert_eq!(geometry.end_uncompressed(SpanId(usize::MAX)), None);
        assert_eq!(geometry.span_of(0), SpanId(0));
        assert_eq!(geometry.span_of(199), SpanId(0));
        assert_eq!(geometry.span_of(200), SpanId(1));
        assert_eq!(geometry.span_of(u64::MAX), SpanId(2));
        assert_eq!(geometry.checkpoint(SpanId(1)).unwrap().bits, 3);
        assert!(geometry.checkpoint(SpanId(3)).is_none());
    }

    #[test]
    fn max_span_id_mismatch_is_an_error() {
        let blob = gzip_blob();
        for max in [-1, 0, 1, 3, i32::MAX] {
            let zinfo = Zinfo::parse(CompressionAlgorithm::Gzip, &blob).unwrap();
            assert!(SpanGeometry::new(zinfo, max, 120, 500).is_err(), "{max}");
        }
    }

    #[test]
    fn last_span_past_the_layer_end_is_an_error() {
        let blob = gzip_blob();
        let zinfo = Zinfo::parse(CompressionAlgorithm::Gzip, &blob).unwrap();
        assert!(SpanGeometry::new(zinfo, 2, 89, 500).is_err());
        assert!(SpanGeometry::new(zinfo, 2, -1, 500).is_err());
    }

    #[test]
    fn tar_geometry_is_fixed_slices() {
        let tar = TarZinfo {
            span_size: 100,
            size: 250,
        };
        let geometry = SpanGeometry::new(Zinfo::Tar(tar), 2, 250, 240).unwrap();
        assert_eq!(geometry.start_compressed(SpanId(1)), Some(100));
        assert_eq!(geometry.end_compressed(SpanId(1)), Some(200));
        assert_eq!(geometry.end_compressed(SpanId(2)), Some(250));
        assert_eq!(geometry.end_uncompressed(SpanId(2)), Some(240));
        assert_eq!(geometry.span_of(199), SpanId(1));
        assert_eq!(geometry.span_of(300), SpanId(3)); // not clamped, like the reference
        assert!(geometry.checkpoint(SpanId(0)).is_none());
        let empty = TarZinfo {
            span_size: 100,
            size: 0,
        };
        assert!(SpanGeometry::new(Zinfo::Tar(empty), 0, 0, 0).is_err());
    }
}
