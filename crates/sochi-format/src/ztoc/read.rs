//! Reading a zTOC: the decoder over the bounded FlatBuffers reader of
//! `crate::flatbuffer` (docs/format.md §1.1–§1.3). Every failure is an
//! [`Error::Corrupt`] naming the table and field and the byte offset.
//!
//! A FlatBuffers buffer may point many offsets at the same bytes. The
//! reference writer never shares strings or tables, so the decoder charges
//! every table and string it copies out against a budget equal to the buffer
//! length: a buffer crafted to decode the same megabyte a million times is
//! refused instead of exhausting memory.

use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::flatbuffer::{FlatBuffer, Table, Vector, OFFSET_SIZE};
use crate::zinfo::{CompressionAlgorithm, Zinfo};

use super::{CompressionInfo, EntryType, FileMetadata, Ztoc};

/// Tar headers and data are padded to 512-byte blocks.
const TAR_BLOCK_SIZE: i64 = 512;

/// How many bytes the decoder may still copy out (see the module doc).
struct Budget {
    left: usize,
}

impl Budget {
    fn charge(&mut self, fb: &FlatBuffer<'_>, at: usize, bytes: usize) -> Result<()> {
        // Every string or table is also reached through a 4-byte offset or
        // length; charging it catches an empty one shared a million times.
        let cost = bytes.saturating_add(OFFSET_SIZE);
        self.left = self.left.checked_sub(cost).ok_or_else(|| {
            fb.corrupt(
                at,
                "the same bytes are referenced more than once (decoded data exceeds the buffer)",
            )
        })?;
        Ok(())
    }
}

// Slots of the schema (docs/format.md §1.1); vtable offset = 4 + 2 × slot.
mod slot {
    pub(crate) mod ztoc {
        pub(crate) const VERSION: u16 = 0;
        pub(crate) const BUILD_TOOL_IDENTIFIER: u16 = 1;
        pub(crate) const COMPRESSED_ARCHIVE_SIZE: u16 = 2;
        pub(crate) const UNCOMPRESSED_ARCHIVE_SIZE: u16 = 3;
        pub(crate) const TOC: u16 = 4;
        pub(crate) const COMPRESSION_INFO: u16 = 5;
    }
    pub(crate) mod toc {
        pub(crate) const METADATA: u16 = 0;
    }
    pub(crate) mod file {
        pub(crate) const NAME: u16 = 0;
        pub(crate) const TYPE: u16 = 1;
        pub(crate) const UNCOMPRESSED_OFFSET: u16 = 2;
        pub(crate) const UNCOMPRESSED_SIZE: u16 = 3;
        pub(crate) const LINKNAME: u16 = 4;
        pub(crate) const MODE: u16 = 5;
        pub(crate) const UID: u16 = 6;
        pub(crate) const GID: u16 = 7;
        pub(crate) const UNAME: u16 = 8;
        pub(crate) const GNAME: u16 = 9;
        pub(crate) const MOD_TIME: u16 = 10;
        pub(crate) const DEVMAJOR: u16 = 11;
        pub(crate) const DEVMINOR: u16 = 12;
        pub(crate) const XATTRS: u16 = 13;
    }
    pub(crate) mod xattr {
        pub(crate) const KEY: u16 = 0;
        pub(crate) const VALUE: u16 = 1;
    }
    pub(crate) mod compression {
        pub(crate) const ALGORITHM: u16 = 0;
        pub(crate) const MAX_SPAN_ID: u16 = 1;
        pub(crate) const SPAN_DIGESTS: u16 = 2;
        pub(crate) const CHECKPOINTS: u16 = 3;
    }
}
pub(super) use slot::{compression as compression_slot, file as file_slot, toc as toc_slot};
pub(super) use slot::{xattr as xattr_slot, ztoc as ztoc_slot};

/// The FlatBuffers value of `CompressionAlgorithm.Gzip`, also the default.
pub(super) const ALGORITHM_GZIP: i8 = 1;
/// The FlatBuffers value of `CompressionAlgorithm.Uncompressed`.
pub(super) const ALGORITHM_UNCOMPRESSED: i8 = 2;
/// sochi's value for zstd frames (docs/zstd.md); not in the reference's
/// schema.
pub(super) const ALGORITHM_ZSTD: i8 = 3;

impl Ztoc {
    /// Decodes and validates a zTOC blob.
    ///
    /// Beyond decoding, this applies the checks the reference snapshotter
    /// makes before it uses a zTOC (docs/format.md §1.2, §1.3): the zinfo decodes and
    /// has `max_span_id + 1` checkpoints, there is one span digest per span,
    /// checkpoint offsets strictly increase, entries have known types and
    /// non-negative offsets and sizes, and the tar header offsets derived
    /// from the entries ([`Ztoc::tar_header_offsets`]) are consistent.
    ///
    /// Every failure is an [`Error::Corrupt`] naming the field and its byte
    /// offset in `bytes`. Never panics, whatever the input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Ztoc> {
        let fb = FlatBuffer::new(bytes, "ztoc");
        let mut budget = Budget { left: bytes.len() };
        let root = fb.root("Ztoc")?;

        let version = utf8(
            &root,
            root.string(ztoc_slot::VERSION, "Ztoc.version")?,
            "Ztoc.version",
        )?;
        let build_tool_identifier = utf8(
            &root,
            root.string(
                ztoc_slot::BUILD_TOOL_IDENTIFIER,
                "Ztoc.build_tool_identifier",
            )?,
            "Ztoc.build_tool_identifier",
        )?;
        let compressed_archive_size = non_negative(
            &root,
            root.i64(
                ztoc_slot::COMPRESSED_ARCHIVE_SIZE,
                "Ztoc.compressed_archive_size",
                0,
            )?,
            "Ztoc.compressed_archive_size",
        )?;
        let uncompressed_archive_size = non_negative(
            &root,
            root.i64(
                ztoc_slot::UNCOMPRESSED_ARCHIVE_SIZE,
                "Ztoc.uncompressed_archive_size",
                0,
            )?,
            "Ztoc.uncompressed_archive_size",
        )?;

        let toc_table = root
            .table(ztoc_slot::TOC, "Ztoc.toc", "TOC")?
            .ok_or_else(|| root.missing("toc"))?;
        let (toc, entry_positions) = read_toc(&fb, &toc_table, &mut budget)?;

        let info_table = root
            .table(
                ztoc_slot::COMPRESSION_INFO,
                "Ztoc.compression_info",
                "CompressionInfo",
            )?
            .ok_or_else(|| root.missing("compression_info"))?;
        let compression = read_compression_info(&fb, &info_table, &mut budget)?;

        let ztoc = Ztoc {
            version,
            build_tool_identifier,
            compressed_archive_size,
            uncompressed_archive_size,
            toc,
            compression,
        };

        // Any failure below is about the whole CompressionInfo or TOC; the
        // detailed checks that can point at a field were done while reading.
        ztoc.span_geometry()
            .map_err(|err| relocate(err, info_table.pos()))?;
        ztoc.check_header_offsets(&entry_positions)?;
        Ok(ztoc)
    }

    /// The offset of each entry's tar header in the uncompressed layer, in
    /// TOC order (docs/format.md §1.2 step 4). The zTOC does not store it: entries are
    /// sorted by `uncompressed_offset`; the first header is at 0, and each
    /// next one starts where the previous entry's data ends, rounded up to a
    /// 512-byte block.
    ///
    /// Errors with "invalid toc entry" if a derived header offset lies past
    /// the entry's own data offset (the reference's `ErrInvalidTOCEntry`),
    /// or if an offset or size is negative or overflows.
    pub fn tar_header_offsets(&self) -> Result<Vec<u64>> {
        self.derive_header_offsets()
            .map_err(|(index, detail)| Error::Invalid {
                what: "ztoc",
                detail: format!("invalid toc entry {index}: {detail}"),
            })
    }

    /// [`Ztoc::tar_header_offsets`] for the reader, naming the entry's
    /// position in the buffer.
    fn check_header_offsets(&self, entry_positions: &[usize]) -> Result<()> {
        self.derive_header_offsets()
            .map(|_| ())
            .map_err(|(index, detail)| Error::Corrupt {
                what: "ztoc",
                offset: entry_positions.get(index).copied().unwrap_or(0),
                detail: format!("invalid toc entry {index}: {detail}"),
            })
    }

    /// Header offsets, or the index of the offending entry and why.
    fn derive_header_offsets(&self) -> std::result::Result<Vec<u64>, (usize, String)> {
        let mut order: Vec<usize> = (0..self.toc.len()).collect();
        // Stable, so entries with equal offsets keep archive order.
        order.sort_by_key(|&index| self.toc.get(index).map(|e| e.uncompressed_offset));
        let mut offsets = vec![0u64; self.toc.len()];
        let mut next_header: i64 = 0;
        for index in order {
            let Some(entry) = self.toc.get(index) else {
                continue;
            };
            if entry.uncompressed_offset < 0 || entry.uncompressed_size < 0 {
                return Err((index, "negative offset or size".to_string()));
            }
            if next_header > entry.uncompressed_offset {
                return Err((
                    index,
                    format!(
                        "header would start at {next_header}, after the entry's data offset {}",
                        entry.uncompressed_offset
                    ),
                ));
            }
            if let Some(slot) = offsets.get_mut(index) {
                // Non-negative: checked above and next_header only grows from 0.
                *slot = u64::try_from(next_header).unwrap_or(0);
            }
            next_header = entry
                .uncompressed_offset
                .checked_add(entry.uncompressed_size)
                .and_then(align_to_tar_block)
                .ok_or_else(|| (index, "offset + size overflows".to_string()))?;
        }
        Ok(offsets)
    }
}

/// Rounds up to a multiple of 512.
fn align_to_tar_block(offset: i64) -> Option<i64> {
    offset
        .checked_add(TAR_BLOCK_SIZE - 1)
        .map(|end| end / TAR_BLOCK_SIZE * TAR_BLOCK_SIZE)
}

/// Turns an error found while checking a decoded part into a
/// [`Error::Corrupt`] at `offset` of the zTOC.
fn relocate(err: Error, offset: usize) -> Error {
    match err {
        Error::Corrupt {
            what,
            offset: inner,
            detail,
        } => Error::Corrupt {
            what: "ztoc",
            offset,
            detail: format!("{what} at offset {inner}: {detail}"),
        },
        Error::Invalid { what: _, detail } => Error::Corrupt {
            what: "ztoc",
            offset,
            detail,
        },
        other => other,
    }
}

fn utf8(table: &Table<'_>, bytes: Option<&[u8]>, field: &str) -> Result<String> {
    // An absent string reads as empty, as in the reference.
    let bytes = bytes.unwrap_or_default();
    String::from_utf8(bytes.to_vec())
        .map_err(|err| table.corrupt(table.pos(), format!("{field}: not UTF-8: {err}")))
}

fn non_negative(table: &Table<'_>, (value, at): (i64, Option<usize>), field: &str) -> Result<i64> {
    if value < 0 {
        return Err(table.corrupt(
            at.unwrap_or(table.pos()),
            format!("{field}: negative value {value}"),
        ));
    }
    Ok(value)
}

/// Reads the TOC; also returns where each entry's table starts.
fn read_toc(
    fb: &FlatBuffer<'_>,
    toc: &Table<'_>,
    budget: &mut Budget,
) -> Result<(Vec<FileMetadata>, Vec<usize>)> {
    // An absent vector reads as empty, as in the reference.
    let Some(metadata) = toc.vector(toc_slot::METADATA, "TOC.metadata", OFFSET_SIZE)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut entries = Vec::with_capacity(metadata.len());
    let mut positions = Vec::with_capacity(metadata.len());
    for index in 0..metadata.len() {
        let table = metadata.table(index, "FileMetadata")?;
        budget.charge(fb, table.pos(), table.object_len())?;
        entries.push(read_entry(fb, &table, index, budget)?);
        positions.push(table.pos());
    }
    Ok((entries, positions))
}

fn read_entry(
    fb: &FlatBuffer<'_>,
    table: &Table<'_>,
    index: usize,
    budget: &mut Budget,
) -> Result<FileMetadata> {
    // An absent string reads as empty, as in the reference.
    let mut bytes = |slot: u16, field: &'static str| -> Result<Vec<u8>> {
        match table.string(slot, field)? {
            Some(value) => {
                budget.charge(fb, table.pos(), value.len())?;
                Ok(value.to_vec())
            }
            None => Ok(Vec::new()),
        }
    };
    let name = bytes(file_slot::NAME, "FileMetadata.name")?;
    let type_name = bytes(file_slot::TYPE, "FileMetadata.type")?;
    let linkname = bytes(file_slot::LINKNAME, "FileMetadata.linkname")?;
    let uname = bytes(file_slot::UNAME, "FileMetadata.uname")?;
    let gname = bytes(file_slot::GNAME, "FileMetadata.gname")?;
    let mod_time = bytes(file_slot::MOD_TIME, "FileMetadata.mod_time")?;

    let entry_type = EntryType::from_name(&type_name).ok_or_else(|| {
        table.corrupt(
            table.pos(),
            format!(
                "toc entry {index}: unknown type {:?}",
                String::from_utf8_lossy(&type_name)
            ),
        )
    })?;
    let mod_time = String::from_utf8(mod_time).map_err(|_| {
        table.corrupt(
            table.pos(),
            format!("toc entry {index}: mod_time is not UTF-8"),
        )
    })?;
    let uncompressed_offset = non_negative(
        table,
        table.i64(
            file_slot::UNCOMPRESSED_OFFSET,
            "FileMetadata.uncompressed_offset",
            0,
        )?,
        "FileMetadata.uncompressed_offset",
    )?;
    let uncompressed_size = non_negative(
        table,
        table.i64(
            file_slot::UNCOMPRESSED_SIZE,
            "FileMetadata.uncompressed_size",
            0,
        )?,
        "FileMetadata.uncompressed_size",
    )?;

    let pax_records = read_pax_records(fb, table, budget)?;

    Ok(FileMetadata {
        name,
        entry_type,
        uncompressed_offset,
        uncompressed_size,
        linkname,
        mode: table.i64(file_slot::MODE, "FileMetadata.mode", 0)?.0,
        uid: table.u32(file_slot::UID, "FileMetadata.uid", 0)?,
        gid: table.u32(file_slot::GID, "FileMetadata.gid", 0)?,
        uname,
        gname,
        mod_time,
        devmajor: table
            .i64(file_slot::DEVMAJOR, "FileMetadata.devmajor", 0)?
            .0,
        devminor: table
            .i64(file_slot::DEVMINOR, "FileMetadata.devminor", 0)?
            .0,
        pax_records,
    })
}

/// An entry's xattrs as PAX records, as the reference's map gives them:
/// one per key (the last wins), in key order.
fn read_pax_records(
    fb: &FlatBuffer<'_>,
    table: &Table<'_>,
    budget: &mut Budget,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut pax_records = Vec::new();
    if let Some(xattrs) = table.vector(file_slot::XATTRS, "FileMetadata.xattrs", OFFSET_SIZE)? {
        pax_records.reserve(xattrs.len());
        for j in 0..xattrs.len() {
            let xattr = xattrs.table(j, "Xattr")?;
            budget.charge(fb, xattr.pos(), xattr.object_len())?;
            let key = xattr
                .string(xattr_slot::KEY, "Xattr.key")?
                .unwrap_or_default();
            let value = xattr
                .string(xattr_slot::VALUE, "Xattr.value")?
                .unwrap_or_default();
            // Charged as one string: both may be absent in a valid buffer.
            budget.charge(fb, xattr.pos(), key.len().saturating_add(value.len()))?;
            pax_records.push((key.to_vec(), value.to_vec()));
        }
    }
    // The reference reads the records into a map: keys come out unique (the
    // last one wins) and, as the writer sorts them, in byte order.
    pax_records.reverse();
    pax_records.sort_by(|a, b| a.0.cmp(&b.0)); // stable: the last duplicate comes first
    pax_records.dedup_by(|later, earlier| later.0 == earlier.0);
    Ok(pax_records)
}

fn read_compression_info(
    fb: &FlatBuffer<'_>,
    table: &Table<'_>,
    budget: &mut Budget,
) -> Result<CompressionInfo> {
    let (algorithm_value, algorithm_at) = table.i8(
        compression_slot::ALGORITHM,
        "CompressionInfo.compression_algorithm",
        ALGORITHM_GZIP,
    )?;
    let algorithm = match algorithm_value {
        ALGORITHM_GZIP => CompressionAlgorithm::Gzip,
        ALGORITHM_UNCOMPRESSED => CompressionAlgorithm::Uncompressed,
        ALGORITHM_ZSTD => CompressionAlgorithm::Zstd,
        other => {
            return Err(table.corrupt(
                algorithm_at.unwrap_or(table.pos()),
                format!("CompressionInfo.compression_algorithm: unknown value {other}"),
            ))
        }
    };

    let (max_span_id, max_span_id_at) = table.i32(
        compression_slot::MAX_SPAN_ID,
        "CompressionInfo.max_span_id",
        0,
    )?;
    let max_span_id_at = max_span_id_at.unwrap_or(table.pos());
    let span_count = usize::try_from(max_span_id)
        .ok()
        .and_then(|max| max.checked_add(1))
        .ok_or_else(|| {
            table.corrupt(
                max_span_id_at,
                format!("CompressionInfo.max_span_id: negative value {max_span_id}"),
            )
        })?;

    let digests = table.vector(
        compression_slot::SPAN_DIGESTS,
        "CompressionInfo.span_digests",
        OFFSET_SIZE,
    )?;
    let digest_count = digests.map_or(0, |v| v.len());
    if digest_count != span_count {
        return Err(table.corrupt(
            digests.map_or(table.pos(), |v| v.start()),
            format!(
                "CompressionInfo.span_digests: {digest_count} digests for {span_count} spans (max_span_id {max_span_id})"
            ),
        ));
    }
    let span_digests = read_span_digests(fb, table, digests, span_count, budget)?;

    let checkpoints = table
        .vector(
            compression_slot::CHECKPOINTS,
            "CompressionInfo.checkpoints",
            1,
        )?
        .ok_or_else(|| table.missing("checkpoints"))?;
    budget.charge(fb, checkpoints.start(), checkpoints.len())?;
    // Check the zinfo here, where we can point into the buffer; the
    // cross-checks with the other fields follow in `Ztoc::span_geometry`.
    let zinfo = Zinfo::parse(algorithm, checkpoints.bytes())
        .map_err(|err| relocate_into(err, checkpoints.start()))?;
    let derived_max = zinfo.max_span_id();
    if derived_max != i64::from(max_span_id) {
        return Err(table.corrupt(
            max_span_id_at,
            format!(
                "CompressionInfo.max_span_id: {max_span_id}, but the checkpoints describe {} spans (max span id {derived_max})",
                derived_max.saturating_add(1)
            ),
        ));
    }

    Ok(CompressionInfo {
        algorithm,
        max_span_id,
        span_digests,
        checkpoints: checkpoints.bytes().to_vec(),
    })
}

/// The span digests, one per span (their count is checked by the caller),
/// each a valid sha256 digest.
fn read_span_digests(
    fb: &FlatBuffer<'_>,
    table: &Table<'_>,
    digests: Option<Vector<'_>>,
    span_count: usize,
    budget: &mut Budget,
) -> Result<Vec<Sha256Digest>> {
    let mut span_digests = Vec::with_capacity(span_count);
    if let Some(digests) = digests {
        for index in 0..digests.len() {
            let text = digests.string(index)?;
            budget.charge(fb, digests.start(), text.len())?;
            let digest = std::str::from_utf8(text)
                .ok()
                .and_then(|text| Sha256Digest::parse(text).ok())
                .ok_or_else(|| {
                    table.corrupt(
                        digests.start(),
                        format!(
                            "CompressionInfo.span_digests[{index}]: {:?} is not a sha256 digest",
                            String::from_utf8_lossy(text.get(..80).unwrap_or(text))
                        ),
                    )
                })?;
            span_digests.push(digest);
        }
    }
    Ok(span_digests)
}

/// A zinfo error at `offset` inside the blob becomes a zTOC error at the
/// same byte of the zTOC.
fn relocate_into(err: Error, blob_start: usize) -> Error {
    match err {
        Error::Corrupt {
            what,
            offset,
            detail,
        } => Error::Corrupt {
            what: "ztoc",
            offset: blob_start.saturating_add(offset),
            detail: format!("CompressionInfo.checkpoints: {what}: {detail}"),
        },
        other => relocate(other, blob_start),
    }
}
