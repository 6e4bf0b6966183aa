//! The zinfo blob: the checkpoints stored in a zTOC's
//! `CompressionInfo.checkpoints` (docs/format.md §2).
//!
//! - Gzip layers ([`GzipZinfo`]): a little-endian header (checkpoint count,
//!   span size) followed by one 32,785-byte record per checkpoint (§2.2).
//!   Read without copying: a [`CheckpointRef`] borrows its 32 KiB window
//!   from the blob, because a mounted layer keeps every zTOC in memory and
//!   the windows are nearly all of it.
//! - Uncompressed layers ([`TarZinfo`]): a tiny FlatBuffers table holding
//!   the span size and the layer size (§2.6).
//!
//! Invariants of a parsed [`GzipZinfo`] (checked by [`GzipZinfo::parse`]):
//! at least one checkpoint; compressed and uncompressed offsets are
//! non-negative and strictly increase from one checkpoint to the next;
//! `bits <= 7`, and `compressed_offset >= 1` whenever `bits != 0`.

use std::fmt;

use crate::error::{Error, Result};
use crate::flatbuffer::{vtable_offset, FlatBuffer};

pub use self::frames::{FrameSpan, FrameZinfo, FrameZinfoWriter};

mod frames;

/// How the layer blob is compressed (FlatBuffers enum, docs/format.md §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionAlgorithm {
    /// `Gzip = 1`
    Gzip,
    /// `Uncompressed = 2`
    Uncompressed,
    /// `Zstd = 3`: a sochi extension the reference does not know
    /// ([`FrameZinfo`], docs/zstd.md).
    Zstd,
}

impl CompressionAlgorithm {
    /// The lower-case name the reference uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionAlgorithm::Gzip => "gzip",
            CompressionAlgorithm::Uncompressed => "uncompressed",
            CompressionAlgorithm::Zstd => "zstd",
        }
    }
}

/// Bytes of uncompressed history a checkpoint carries: DEFLATE's maximum
/// distance, so inflating can resume from the checkpoint.
pub const WINDOW_SIZE: usize = 32768;

/// Gzip blob header: `int32` checkpoint count, `int64` span size.
const GZIP_HEADER_SIZE: usize = 4 + 8;
/// One record: `int64 in`, `int64 out`, `uint8 bits`, window.
const CHECKPOINT_SIZE: usize = 8 + 8 + 1 + WINDOW_SIZE;
/// Record field offsets.
const IN_AT: usize = 0;
const OUT_AT: usize = 8;
const BITS_AT: usize = 16;
const WINDOW_AT: usize = 17;
/// At most 7 bits of the byte before a checkpoint belong to its span
/// (zlib `data_type & 7`).
const MAX_BITS: u8 = 7;
/// A v1 blob does not store checkpoint 0; it is implied just after a
/// minimal 10-byte gzip header (docs/format.md §2.2).
const V1_FIRST_COMPRESSED_OFFSET: u64 = 10;
/// The window of the implied v1 checkpoint 0, which has no history.
static ZERO_WINDOW: [u8; WINDOW_SIZE] = [0; WINDOW_SIZE];

/// TarZinfo version written by the reference (and by sochi).
const TAR_ZINFO_VERSION: i32 = 2;
/// TarZinfo FlatBuffers slots (docs/format.md §2.6).
const TAR_SLOT_VERSION: u16 = 0;
const TAR_SLOT_SPAN_SIZE: u16 = 1;
const TAR_SLOT_SIZE: u16 = 2;

/// A decoded zinfo blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zinfo<'a> {
    /// Checkpoints of a gzip layer.
    Gzip(GzipZinfo<'a>),
    /// Fixed-size spans of an uncompressed tar layer.
    Tar(TarZinfo),
    /// Spans of whole zstd frames.
    Zstd(FrameZinfo<'a>),
}

impl<'a> Zinfo<'a> {
    /// Decodes `blob` as the zinfo of a layer compressed with `algorithm`.
    pub fn parse(algorithm: CompressionAlgorithm, blob: &'a [u8]) -> Result<Self> {
        match algorithm {
            CompressionAlgorithm::Gzip => GzipZinfo::parse(blob).map(Zinfo::Gzip),
            CompressionAlgorithm::Uncompressed => TarZinfo::parse(blob).map(Zinfo::Tar),
            CompressionAlgorithm::Zstd => FrameZinfo::parse(blob).map(Zinfo::Zstd),
        }
    }

    /// The compression this zinfo describes.
    pub fn algorithm(&self) -> CompressionAlgorithm {
        match self {
            Zinfo::Gzip(_) => CompressionAlgorithm::Gzip,
            Zinfo::Tar(_) => CompressionAlgorithm::Uncompressed,
            Zinfo::Zstd(_) => CompressionAlgorithm::Zstd,
        }
    }

    /// The span size requested when the zTOC was built (what
    /// `soci ztoc info` reports as `span_size`).
    pub fn span_size(&self) -> i64 {
        match self {
            Zinfo::Gzip(gzip) => gzip.span_size(),
            Zinfo::Tar(tar) => tar.span_size,
            // Spans follow the frames; there is no size to ask for.
            Zinfo::Zstd(_) => 0,
        }
    }

    /// The highest span id the checkpoints describe: one less than the
    /// number of spans. `-1` for a TarZinfo of an empty layer.
    pub fn max_span_id(&self) -> i64 {
        match self {
            // len() >= 1 and fits in an i32.
            Zinfo::Gzip(gzip) => i64::try_from(gzip.len())
                .unwrap_or(i64::MAX)
                .saturating_sub(1),
            Zinfo::Tar(tar) => tar.max_span_id(),
            Zinfo::Zstd(zstd) => i64::try_from(zstd.len())
                .unwrap_or(i64::MAX)
                .saturating_sub(1),
        }
    }
}

/// One checkpoint of a gzip layer: where span *i* starts and the history
/// needed to inflate from there (docs/format.md §2.3).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRef<'a> {
    /// Offset in the layer blob of the first whole byte of the span
    /// (the record's `in`).
    pub compressed_offset: u64,
    /// Offset in the uncompressed stream where the span starts (`out`).
    pub uncompressed_offset: u64,
    /// How many high-order bits of byte `compressed_offset - 1` belong to
    /// the span (0..=7).
    pub bits: u8,
    /// The [`WINDOW_SIZE`] uncompressed bytes before `uncompressed_offset`
    /// (zeros before the start of the stream).
    pub window: &'a [u8],
}

impl fmt::Debug for CheckpointRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The window is 32 KiB; print its size, not its bytes.
        f.debug_struct("CheckpointRef")
            .field("compressed_offset", &self.compressed_offset)
            .field("uncompressed_offset", &self.uncompressed_offset)
            .field("bits", &self.bits)
            .field("window_len", &self.window.len())
            .finish()
    }
}

/// The checkpoints of a gzip layer, read in place from the zinfo blob.
///
/// Version 2 blobs store every checkpoint; legacy version 1 blobs (written
/// before February 2023) leave out checkpoint 0, which is then implied as
/// `in = 10, out = 0, bits = 0` with a zero window. The version follows
/// from the blob length alone.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GzipZinfo<'a> {
    blob: &'a [u8],
    /// Number of checkpoints, including an implied v1 checkpoint 0; >= 1.
    count: usize,
    span_size: i64,
    /// True for a legacy v1 blob.
    legacy: bool,
}

impl fmt::Debug for GzipZinfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GzipZinfo")
            .field("version", &self.version())
            .field("checkpoints", &self.count)
            .field("span_size", &self.span_size)
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

impl<'a> GzipZinfo<'a> {
    /// Decodes and checks a gzip zinfo blob (v1 or v2, docs/format.md §2.2).
    pub fn parse(blob: &'a [u8]) -> Result<Self> {
        let corrupt = |offset: usize, detail: String| Error::Corrupt {
            what: "zinfo",
            offset,
            detail,
        };
        let (Some(count), Some(span_size)) = (read_i32(blob, 0), read_i64(blob, 4)) else {
            return Err(corrupt(
                0,
                format!(
                    "blob is {} bytes, shorter than the {GZIP_HEADER_SIZE}-byte header",
                    blob.len()
                ),
            ));
        };
        let count = usize::try_from(count)
            .ok()
            .filter(|&count| count >= 1)
            .ok_or_else(|| corrupt(0, format!("checkpoint count {count} is less than 1")))?;
        if span_size < 0 {
            return Err(corrupt(4, format!("negative span size {span_size}")));
        }
        // count < 2^31, so neither product overflows a u64.
        let records_v2 = count as u64;
        let len_v2 = records_v2 * CHECKPOINT_SIZE as u64 + GZIP_HEADER_SIZE as u64;
        let len_v1 = len_v2 - CHECKPOINT_SIZE as u64;
        let legacy = match blob.len() as u64 {
            len if len == len_v2 => false,
            len if len == len_v1 => true,
            len => {
                return Err(corrupt(
                    0,
                    format!(
                        "blob is {len} bytes, but {count} checkpoints take {len_v2} bytes (or {len_v1} in the v1 layout)"
                    ),
                ))
            }
        };
        let zinfo = GzipZinfo {
            blob,
            count,
            span_size,
            legacy,
        };
        zinfo.check_checkpoints()?;
        Ok(zinfo)
    }

    /// Checks the invariants listed in the module doc.
    fn check_checkpoints(&self) -> Result<()> {
        let mut previous: Option<CheckpointRef<'a>> = None;
        for index in 0..self.count {
            let at = self.record_offset(index).unwrap_or(0);
            let corrupt = |offset: usize, detail: String| Error::Corrupt {
                what: "zinfo",
                offset,
                detail: format!("checkpoint {index}: {detail}"),
            };
            let checkpoint = self
                .checkpoint(index)
                .ok_or_else(|| corrupt(at, "record is out of range".to_string()))?;
            if i64::try_from(checkpoint.compressed_offset).is_err() {
                return Err(corrupt(
                    at + IN_AT,
                    "negative compressed offset".to_string(),
                ));
            }
            if i64::try_from(checkpoint.uncompressed_offset).is_err() {
                return Err(corrupt(
                    at + OUT_AT,
                    "negative uncompressed offset".to_string(),
                ));
            }
            if checkpoint.bits > MAX_BITS {
                return Err(corrupt(
                    at + BITS_AT,
                    format!("bits is {}, more than {MAX_BITS}", checkpoint.bits),
                ));
            }
            if checkpoint.bits != 0 && checkpoint.compressed_offset == 0 {
                return Err(corrupt(
                    at + BITS_AT,
                    "bits set, but there is no byte before compressed offset 0".to_string(),
                ));
            }
            if let Some(previous) = previous {
                if checkpoint.compressed_offset <= previous.compressed_offset {
                    return Err(corrupt(
                        at + IN_AT,
                        format!(
                            "compressed offset {} does not follow the previous checkpoint's {}",
                            checkpoint.compressed_offset, previous.compressed_offset
                        ),
                    ));
                }
                if checkpoint.uncompressed_offset <= previous.uncompressed_offset {
                    return Err(corrupt(
                        at + OUT_AT,
                        format!(
                            "uncompressed offset {} does not follow the previous checkpoint's {}",
                            checkpoint.uncompressed_offset, previous.uncompressed_offset
                        ),
                    ));
                }
            }
            previous = Some(checkpoint);
        }
        Ok(())
    }

    /// 2 for the current layout, 1 for the legacy one.
    pub fn version(&self) -> u32 {
        if self.legacy {
            1
        } else {
            2
        }
    }

    /// The span size requested at build time.
    pub fn span_size(&self) -> i64 {
        self.span_size
    }

    /// Number of checkpoints (= number of spans), including an implied v1
    /// checkpoint 0. At least 1.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: a parsed blob has at least one checkpoint.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The blob as stored in the zTOC.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.blob
    }

    /// Where checkpoint `index`'s record starts in the blob; `None` for the
    /// implied v1 checkpoint 0 or an index out of range.
    fn record_offset(&self, index: usize) -> Option<usize> {
        if index >= self.count {
            return None;
        }
        let record = if self.legacy {
            index.checked_sub(1)?
        } else {
            index
        };
        record
            .checked_mul(CHECKPOINT_SIZE)?
            .checked_add(GZIP_HEADER_SIZE)
    }

    /// Checkpoint `index`, or `None` if out of range.
    pub fn checkpoint(&self, index: usize) -> Option<CheckpointRef<'a>> {
        if index >= self.count {
            return None;
        }
        if self.legacy && index == 0 {
            return Some(CheckpointRef {
                compressed_offset: V1_FIRST_COMPRESSED_OFFSET,
                uncompressed_offset: 0,
                bits: 0,
                window: &ZERO_WINDOW,
            });
        }
        let at = self.record_offset(index)?;
        let record = self.blob.get(at..at.checked_add(CHECKPOINT_SIZE)?)?;
        Some(CheckpointRef {
            // Stored as int64; a negative value shows up as > i64::MAX,
            // which `parse` refuses.
            compressed_offset: read_u64(record, IN_AT)?,
            uncompressed_offset: read_u64(record, OUT_AT)?,
            bits: *record.get(BITS_AT)?,
            window: record.get(WINDOW_AT..)?,
        })
    }

    /// All checkpoints, span 0 first.
    pub fn checkpoints(&self) -> impl Iterator<Item = CheckpointRef<'a>> + '_ {
        (0..self.count).filter_map(|index| self.checkpoint(index))
    }
}

/// Builds a v2 gzip zinfo blob, one checkpoint at a time (docs/format.md §2.2, §3.4).
///
/// Refuses what [`GzipZinfo::parse`] would refuse, so a finished blob
/// always parses (given at least one checkpoint).
#[derive(Clone)]
pub struct GzipZinfoWriter {
    buf: Vec<u8>,
    count: usize,
    /// (compressed, uncompressed) offset of the last checkpoint pushed.
    last: Option<(u64, u64)>,
}

impl fmt::Debug for GzipZinfoWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GzipZinfoWriter")
            .field("checkpoints", &self.count)
            .field("last", &self.last)
            .finish()
    }
}

impl GzipZinfoWriter {
    /// Starts a blob for a layer indexed with `span_size`.
    pub fn new(span_size: i64) -> Self {
        let mut buf = Vec::with_capacity(GZIP_HEADER_SIZE + CHECKPOINT_SIZE);
        buf.extend_from_slice(&0i32.to_le_bytes()); // patched by finish()
        buf.extend_from_slice(&span_size.to_le_bytes());
        GzipZinfoWriter {
            buf,
            count: 0,
            last: None,
        }
    }

    /// Appends a checkpoint. `window` must be exactly [`WINDOW_SIZE`]
    /// bytes, `bits` at most 7, and both offsets must be larger than the
    /// previous checkpoint's and fit in an `int64`.
    pub fn push(
        &mut self,
        compressed_offset: u64,
        uncompressed_offset: u64,
        bits: u8,
        window: &[u8],
    ) -> Result<()> {
        let invalid = |detail: String| Error::Invalid {
            what: "zinfo",
            detail: format!("checkpoint {}: {detail}", self.count),
        };
        if window.len() != WINDOW_SIZE {
            return Err(invalid(format!(
                "window is {} bytes, expected {WINDOW_SIZE}",
                window.len()
            )));
        }
        if bits > MAX_BITS {
            return Err(invalid(format!("bits is {bits}, more than {MAX_BITS}")));
        }
        if bits != 0 && compressed_offset == 0 {
            return Err(invalid("bits set at compressed offset 0".to_string()));
        }
        let (Ok(compressed), Ok(uncompressed)) = (
            i64::try_from(compressed_offset),
            i64::try_from(uncompressed_offset),
        ) else {
            return Err(invalid("offset does not fit in an int64".to_string()));
        };
        if let Some((last_compressed, last_uncompressed)) = self.last {
            if compressed_offset <= last_compressed || uncompressed_offset <= last_uncompressed {
                return Err(invalid(format!(
                    "offsets ({compressed_offset}, {uncompressed_offset}) do not follow the previous checkpoint's ({last_compressed}, {last_uncompressed})"
                )));
            }
        }
        if i32::try_from(self.count).map_or(true, |count| count == i32::MAX) {
            return Err(invalid("too many checkpoints".to_string()));
        }
        self.buf.reserve(CHECKPOINT_SIZE);
        self.buf.extend_from_slice(&compressed.to_le_bytes());
        self.buf.extend_from_slice(&uncompressed.to_le_bytes());
        self.buf.push(bits);
        self.buf.extend_from_slice(window);
        self.count += 1;
        self.last = Some((compressed_offset, uncompressed_offset));
        Ok(())
    }

    /// Number of checkpoints pushed so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True before the first checkpoint.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished v2 blob, with the checkpoint count filled in.
    pub fn finish(mut self) -> Vec<u8> {
        // push() keeps count below i32::MAX.
        let count = i32::try_from(self.count).unwrap_or(i32::MAX);
        if let Some(header) = self.buf.get_mut(0..4) {
            header.copy_from_slice(&count.to_le_bytes());
        }
        self.buf
    }
}

/// The zinfo of an uncompressed layer: spans are fixed-size slices of the
/// layer file (docs/format.md §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TarZinfo {
    /// Span size in bytes; positive.
    pub span_size: i64,
    /// Size of the layer file in bytes.
    pub size: i64,
}

impl TarZinfo {
    /// Decodes a TarZinfo FlatBuffers table. Refuses a span size <= 0 (the
    /// reference divides by it) and a negative size. The `version` field is
    /// not checked, as in the reference.
    pub fn parse(blob: &[u8]) -> Result<Self> {
        let fb = FlatBuffer::new(blob, "zinfo");
        let table = fb.root("TarZinfo")?;
        let (span_size, span_size_at) = table.i64(TAR_SLOT_SPAN_SIZE, "TarZinfo.span_size", 0)?;
        let (size, size_at) = table.i64(TAR_SLOT_SIZE, "TarZinfo.size", 0)?;
        if span_size <= 0 {
            return Err(fb.corrupt(
                span_size_at.unwrap_or(table.pos()),
                format!("TarZinfo.span_size: {span_size} is not positive"),
            ));
        }
        if size < 0 {
            return Err(fb.corrupt(
                size_at.unwrap_or(table.pos()),
                format!("TarZinfo.size: negative value {size}"),
            ));
        }
        Ok(TarZinfo { span_size, size })
    }

    /// Serializes exactly as the reference does: one table, fields added in
    /// the order version (2), span_size, size; defaults (0) left out.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut builder = flatbuffers::FlatBufferBuilder::with_capacity(64);
        let start = builder.start_table();
        builder.push_slot::<i32>(vtable_offset(TAR_SLOT_VERSION), TAR_ZINFO_VERSION, 0);
        builder.push_slot::<i64>(vtable_offset(TAR_SLOT_SPAN_SIZE), self.span_size, 0);
        builder.push_slot::<i64>(vtable_offset(TAR_SLOT_SIZE), self.size, 0);
        let root = builder.end_table(start);
        builder.finish_minimal(root);
        builder.finished_data().to_vec()
    }

    /// `size / span_size`, minus one if `size` is an exact multiple (so -1
    /// for an empty layer). `i64::MAX`, which no zTOC's `max_span_id`
    /// matches, if `span_size` is not positive or `size` is negative.
    pub fn max_span_id(&self) -> i64 {
        if self.span_size <= 0 || self.size < 0 {
            return i64::MAX;
        }
        let spans = self.size / self.span_size;
        if self.size % self.span_size == 0 {
            spans - 1
        } else {
            spans
        }
    }
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(*bytes.get(at..)?.first_chunk::<4>()?))
}

fn read_i64(bytes: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_le_bytes(*bytes.get(at..)?.first_chunk::<8>()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(*bytes.get(at..)?.first_chunk::<8>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(fill: u8) -> Vec<u8> {
        vec![fill; WINDOW_SIZE]
    }

    fn two_checkpoints() -> Vec<u8> {
        let mut writer = GzipZinfoWriter::new(65536);
        writer.push(10, 0, 0, &window(0)).unwrap();
        writer.push(5000, 70000, 3, &window(7)).unwrap();
        assert_eq!(writer.len(), 2);
        writer.finish()
    }

    #[test]
    fn written_blob_parses_back() {
        let blob = two_checkpoints();
        assert_eq!(blob.len(), GZIP_HEADER_SIZE + 2 * CHECKPOINT_SIZE);
        let zinfo = GzipZinfo::parse(&blob).unwrap();
        assert_eq!(zinfo.version(), 2);
        assert_eq!(zinfo.len(), 2);
        assert_eq!(zinfo.span_size(), 65536);
        let second = zinfo.checkpoint(1).unwrap();
        assert_eq!(
            (
                second.compressed_offset,
                second.uncompressed_offset,
                second.bits
            ),
            (5000, 70000, 3)
        );
        assert!(second.window.iter().all(|&b| b == 7));
        assert!(zinfo.checkpoint(2).is_none());
        assert_eq!(zinfo.checkpoints().count(), 2);
    }

    #[test]
    fn v1_blob_implies_checkpoint_zero() {
        let blob = two_checkpoints();
        // v1: the header still says 2, but record 0 is left out.
        let mut v1 = blob[..GZIP_HEADER_SIZE].to_vec();
        v1.extend_from_slice(&blob[GZIP_HEADER_SIZE + CHECKPOINT_SIZE..]);
        let zinfo = GzipZinfo::parse(&v1).unwrap();
        assert_eq!(zinfo.version(), 1);
        assert_eq!(zinfo.len(), 2);
        let first = zinfo.checkpoint(0).unwrap();
        assert_eq!(
            (
                first.compressed_offset,
                first.uncompressed_offset,
                first.bits
            ),
            (10, 0, 0)
        );
        assert_eq!(first.window.len(), WINDOW_SIZE);
        assert!(first.window.iter().all(|&b| b == 0));
        assert_eq!(zinfo.checkpoint(1).unwrap().compressed_offset, 5000);
    }

    #[test]
    fn zinfo_of_wrong_length_is_an_error() {
        let blob = two_checkpoints();
        for len in [0, 3, 11, 12, 13, blob.len() - 1, blob.len() + 1] {
            let mut bytes = blob.clone();
            bytes.resize(len, 0);
            assert!(GzipZinfo::parse(&bytes).is_err(), "length {len}");
        }
        // A count that disagrees with the length.
        let mut bytes = blob.clone();
        bytes[0] = 3;
        assert!(GzipZinfo::parse(&bytes).is_err());
        bytes[0..4].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(GzipZinfo::parse(&bytes).is_err());
        bytes[0..4].copy_from_slice(&0i32.to_le_bytes());
        assert!(GzipZinfo::parse(&bytes).is_err());
    }

    #[test]
    fn non_monotonic_checkpoints_are_an_error() {
        let mut blob = two_checkpoints();
        let second = GZIP_HEADER_SIZE + CHECKPOINT_SIZE;
        blob[second..second + 8].copy_from_slice(&10i64.to_le_bytes());
        let err = GzipZinfo::parse(&blob).unwrap_err().to_string();
        assert!(err.contains("checkpoint 1"), "{err}");

        let mut blob = two_checkpoints();
        blob[second + 8..second + 16].copy_from_slice(&0i64.to_le_bytes());
        assert!(GzipZinfo::parse(&blob).is_err());

        let mut blob = two_checkpoints();
        blob[second + 16] = 8;
        assert!(GzipZinfo::parse(&blob).is_err());

        let mut blob = two_checkpoints();
        blob[second + 8..second + 16].copy_from_slice(&(-5i64).to_le_bytes());
        assert!(GzipZinfo::parse(&blob).is_err());
    }

    #[test]
    fn writer_refuses_bad_checkpoints() {
        let mut writer = GzipZinfoWriter::new(1);
        assert!(writer.push(10, 0, 0, &[0; 100]).is_err());
        assert!(writer.push(10, 0, 8, &window(0)).is_err());
        assert!(writer.push(0, 0, 1, &window(0)).is_err());
        assert!(writer.push(u64::MAX, 0, 0, &window(0)).is_err());
        writer.push(10, 0, 0, &window(0)).unwrap();
        assert!(writer.push(10, 5, 0, &window(0)).is_err());
        assert!(writer.push(11, 0, 0, &window(0)).is_err());
        assert_eq!(writer.len(), 1);
    }

    #[test]
    fn tar_zinfo_round_trips() {
        let tar = TarZinfo {
            span_size: 65536,
            size: 2938880,
        };
        let bytes = tar.to_bytes();
        assert_eq!(TarZinfo::parse(&bytes).unwrap(), tar);
        assert_eq!(tar.max_span_id(), 44);
        assert_eq!(
            TarZinfo {
                span_size: 4,
                size: 8
            }
            .max_span_id(),
            1
        );
        assert_eq!(
            TarZinfo {
                span_size: 4,
                size: 0
            }
            .max_span_id(),
            -1
        );
    }

    #[test]
    fn tar_zinfo_refuses_non_positive_span_size() {
        for span_size in [0, -1] {
            let bytes = TarZinfo {
                span_size,
                size: 10,
            }
            .to_bytes();
            assert!(TarZinfo::parse(&bytes).is_err(), "{span_size}");
        }
        assert!(TarZinfo::parse(&[]).is_err());
        assert!(TarZinfo::parse(&[4, 0, 0, 0]).is_err());
    }
}
