//! Writing a zTOC byte for byte as the reference does (docs/format.md §1.4).
//!
//! The reference builds with the Go FlatBuffers builder; the Rust builder
//! lays out data the same way (back to front, same alignment, trailing
//! vtable trimming, vtable sharing), so issuing the same calls in the same
//! order gives the same bytes. That is why this file calls
//! `start_table`/`push_slot`/`end_table` by hand: generated `create`
//! helpers push fields largest first, which moves them around.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::read::{
    compression_slot, file_slot, toc_slot, xattr_slot, ztoc_slot, ALGORITHM_GZIP,
    ALGORITHM_UNCOMPRESSED, ALGORITHM_ZSTD,
};
use super::{CompressionAlgorithm, FileMetadata, Ztoc};
use crate::error::{Error, Result};
use crate::flatbuffer::vtable_offset;

/// Upper bounds on what one item adds to the buffer, padding included:
/// a string is a length, the bytes, a NUL and up to 3 bytes of padding.
const STRING_OVERHEAD: u64 = 4 + 1 + 3;
/// A `FileMetadata` table: 14 fields of at most 8 bytes, its vtable
/// offset, alignment padding and a vtable of its own (4 + 2 × 14 bytes).
const FILE_TABLE_BOUND: u64 = 4 + 14 * 8 + 7 + 32;
/// An `Xattr` table: two offsets, padding and a vtable.
const XATTR_TABLE_BOUND: u64 = 4 + 2 * 4 + 7 + 8;
/// The root, `TOC` and `CompressionInfo` tables, vectors' length prefixes
/// and padding, and the root offset.
const FIXED_BOUND: u64 = 512;

impl Ztoc {
    /// Serializes the zTOC exactly as the reference `soci` CLI does, so that
    /// equal zTOCs have equal digests. PAX records are written sorted by key
    /// whatever their order in [`FileMetadata::pax_records`].
    ///
    /// # Panics
    ///
    /// If the zTOC is larger than FlatBuffers' 2 GiB limit (the reference
    /// fails there too). Use [`Ztoc::try_to_bytes`] where the size comes
    /// from input, such as a layer being indexed.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.build(self.size_bound())
    }

    /// [`Ztoc::to_bytes`], or an error if the zTOC could exceed the 2 GiB
    /// FlatBuffers limit (e.g. a multi-gigabyte layer indexed with a small
    /// span size: each checkpoint costs 32 KiB).
    pub fn try_to_bytes(&self) -> Result<Vec<u8>> {
        let bound = self.size_bound();
        if bound > flatbuffers::FLATBUFFERS_MAX_BUFFER_SIZE as u64 {
            return Err(Error::Invalid {
                what: "ztoc",
                detail: format!(
                    "the zTOC would take up to {bound} bytes, more than the 2 GiB FlatBuffers allows ({} checkpoint bytes, {} files)",
                    self.compression.checkpoints.len(),
                    self.toc.len()
                ),
            });
        }
        Ok(self.build(bound))
    }

    /// An upper bound on the serialized size.
    fn size_bound(&self) -> u64 {
        let len = |bytes: usize| bytes as u64;
        let string = |bytes: usize| len(bytes).saturating_add(STRING_OVERHEAD);
        let entries = self.toc.iter().fold(0u64, |total, entry| {
            let strings = [
                entry.name.len(),
                entry.entry_type.as_str().len(),
                entry.linkname.len(),
                entry.uname.len(),
                entry.gname.len(),
                entry.mod_time.len(),
            ]
            .into_iter()
            .fold(0u64, |sum, bytes| sum.saturating_add(string(bytes)));
            let records = entry.pax_records.iter().fold(0u64, |sum, (key, value)| {
                sum.saturating_add(string(key.len()))
                    .saturating_add(string(value.len()))
                    .saturating_add(XATTR_TABLE_BOUND + 4)
            });
            total
                .saturating_add(strings)
                .saturating_add(records)
                .saturating_add(FILE_TABLE_BOUND + 4 + STRING_OVERHEAD)
        });
        let digests = len(self.compression.span_digests.len()).saturating_mul(string(71) + 4);
        [
            string(self.version.len()),
            string(self.build_tool_identifier.len()),
            string(self.compression.checkpoints.len()),
            entries,
            digests,
            FIXED_BOUND,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add)
    }

    fn build(&self, size_bound: u64) -> Vec<u8> {
        let capacity = size_bound.min(flatbuffers::FLATBUFFERS_MAX_BUFFER_SIZE as u64);
        let mut builder = FlatBufferBuilder::with_capacity(usize::try_from(capacity).unwrap_or(0));

        let version = builder.create_byte_string(self.version.as_bytes());
        let build_tool = builder.create_byte_string(self.build_tool_identifier.as_bytes());

        // Entries are built last to first, then listed first to last.
        let mut entries: Vec<_> = self
            .toc
            .iter()
            .rev()
            .map(|entry| write_entry(&mut builder, entry))
            .collect();
        entries.reverse();
        let metadata = builder.create_vector(&entries);
        let start = builder.start_table();
        builder.push_slot_always(vtable_offset(toc_slot::METADATA), metadata);
        let toc = builder.end_table(start);

        let checkpoints = builder.create_vector(&self.compression.checkpoints[..]);
        let digests: Vec<_> = self
            .compression
            .span_digests
            .iter()
            .map(|digest| builder.create_byte_string(digest.to_string().as_bytes()))
            .collect();
        let span_digests = builder.create_vector(&digests);

        let start = builder.start_table();
        builder.push_slot::<i32>(
            vtable_offset(compression_slot::MAX_SPAN_ID),
            self.compression.max_span_id,
            0,
        );
        builder.push_slot_always(vtable_offset(compression_slot::SPAN_DIGESTS), span_digests);
        builder.push_slot_always(vtable_offset(compression_slot::CHECKPOINTS), checkpoints);
        let algorithm = match self.compression.algorithm {
            CompressionAlgorithm::Gzip => ALGORITHM_GZIP,
            CompressionAlgorithm::Uncompressed => ALGORITHM_UNCOMPRESSED,
            CompressionAlgorithm::Zstd => ALGORITHM_ZSTD,
        };
        // Gzip is the schema default, so it is not written.
        builder.push_slot::<i8>(
            vtable_offset(compression_slot::ALGORITHM),
            algorithm,
            ALGORITHM_GZIP,
        );
        let compression_info = builder.end_table(start);

        let start = builder.start_table();
        builder.push_slot_always(vtable_offset(ztoc_slot::VERSION), version);
        builder.push_slot_always(vtable_offset(ztoc_slot::BUILD_TOOL_IDENTIFIER), build_tool);
        builder.push_slot_always(vtable_offset(ztoc_slot::TOC), toc);
        builder.push_slot::<i64>(
            vtable_offset(ztoc_slot::COMPRESSED_ARCHIVE_SIZE),
            self.compressed_archive_size,
            0,
        );
        builder.push_slot::<i64>(
            vtable_offset(ztoc_slot::UNCOMPRESSED_ARCHIVE_SIZE),
            self.uncompressed_archive_size,
            0,
        );
        builder.push_slot_always(vtable_offset(ztoc_slot::COMPRESSION_INFO), compression_info);
        let root = builder.end_table(start);
        builder.finish_minimal(root);

        // The finished data sits at the end of the builder's buffer; move it
        // to the front rather than copying the whole thing again.
        let (mut buf, head) = builder.collapse();
        buf.drain(..head);
        buf.shrink_to_fit();
        buf
    }
}

/// One `FileMetadata` table, strings first, in the reference's order.
fn write_entry<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    entry: &FileMetadata,
) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let name = builder.create_byte_string(&entry.name);
    let entry_type = builder.create_byte_string(entry.entry_type.as_str().as_bytes());
    let linkname = builder.create_byte_string(&entry.linkname);
    let uname = builder.create_byte_string(&entry.uname);
    let gname = builder.create_byte_string(&entry.gname);
    let mod_time = builder.create_byte_string(entry.mod_time.as_bytes());

    let mut records: Vec<&(Vec<u8>, Vec<u8>)> = entry.pax_records.iter().collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    let xattrs: Vec<_> = records
        .into_iter()
        .map(|(key, value)| {
            let key = builder.create_byte_string(key);
            let value = builder.create_byte_string(value);
            let start = builder.start_table();
            builder.push_slot_always(vtable_offset(xattr_slot::KEY), key);
            builder.push_slot_always(vtable_offset(xattr_slot::VALUE), value);
            builder.end_table(start)
        })
        .collect();
    let xattrs = builder.create_vector(&xattrs);

    let start = builder.start_table();
    builder.push_slot_always(vtable_offset(file_slot::NAME), name);
    builder.push_slot_always(vtable_offset(file_slot::TYPE), entry_type);
    builder.push_slot::<i64>(
        vtable_offset(file_slot::UNCOMPRESSED_OFFSET),
        entry.uncompressed_offset,
        0,
    );
    builder.push_slot::<i64>(
        vtable_offset(file_slot::UNCOMPRESSED_SIZE),
        entry.uncompressed_size,
        0,
    );
    builder.push_slot_always(vtable_offset(file_slot::LINKNAME), linkname);
    builder.push_slot::<i64>(vtable_offset(file_slot::MODE), entry.mode, 0);
    builder.push_slot::<u32>(vtable_offset(file_slot::UID), entry.uid, 0);
    builder.push_slot::<u32>(vtable_offset(file_slot::GID), entry.gid, 0);
    builder.push_slot_always(vtable_offset(file_slot::UNAME), uname);
    builder.push_slot_always(vtable_offset(file_slot::GNAME), gname);
    builder.push_slot_always(vtable_offset(file_slot::MOD_TIME), mod_time);
    builder.push_slot::<i64>(vtable_offset(file_slot::DEVMAJOR), entry.devmajor, 0);
    builder.push_slot::<i64>(vtable_offset(file_slot::DEVMINOR), entry.devminor, 0);
    builder.push_slot_always(vtable_offset(file_slot::XATTRS), xattrs);
    builder.end_table(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ztoc::{CompressionInfo, EntryType};
    use crate::Sha256Digest;

    fn entry(index: usize) -> FileMetadata {
        FileMetadata {
            // Odd lengths and empty strings, for the most padding.
            name: vec![b'n'; index % 5],
            entry_type: EntryType::Regular,
            uncompressed_offset: 512 * (index as i64 + 1),
            uncompressed_size: i64::from(index % 3 == 1),
            linkname: Vec::new(),
            mode: 0o644,
            uid: 1,
            gid: 2,
            uname: Vec::new(),
            gname: b"g".to_vec(),
            mod_time: "2023-11-14T22:13:20Z".to_string(),
            devmajor: 3,
            devminor: 4,
            pax_records: (0..index % 4)
                .map(|k| (vec![b'k'; k + 1], vec![0u8; k]))
                .collect(),
        }
    }

    #[test]
    fn size_bound_covers_the_written_bytes() {
        let ztoc = Ztoc {
            version: "0.9".to_string(),
            build_tool_identifier: String::new(),
            compressed_archive_size: i64::MAX,
            uncompressed_archive_size: 1,
            toc: (0..200).map(entry).collect(),
            compression: CompressionInfo {
                algorithm: CompressionAlgorithm::Uncompressed,
                max_span_id: 2,
                span_digests: vec![Sha256Digest::of(b""); 3],
                checkpoints: vec![1; 13],
            },
        };
        let bytes = ztoc.try_to_bytes().unwrap();
        assert!(ztoc.size_bound() >= bytes.len() as u64);
        assert_eq!(bytes, ztoc.to_bytes());
    }
}
