//! The table of contents of a zstd:chunked layer (containers/storage,
//! written by Podman, Buildah and `skopeo --dest-compress-format
//! zstd:chunked`): a JSON document, zstd-compressed, stored in a
//! skippable frame near the blob's end, located by the layer's
//! annotations and by a 48-byte footer (a skippable frame ending in
//! `GnUlInUx`), its digest in the content-addressed manifest.
//!
//! This module reads the annotations and the footer and parses and checks
//! the (decompressed) table; fetching and decompressing it is the
//! caller's. Nothing here trusts the blob: positions are checked against
//! its size, entries against each other, and sizes are bounded.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::{Digest, Sha256Digest};
use crate::error::{Error, Result};
use crate::{CompressionAlgorithm, CompressionInfo, EntryType, FileMetadata, Ztoc};

/// The layer annotation holding the digest of the compressed table.
pub const MANIFEST_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
/// The layer annotation locating it: `offset:length:uncompressed length:type`.
pub const MANIFEST_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
/// The footer's length at the end of the blob.
pub const FOOTER_LEN: usize = 48;
/// The largest decompressed table read (64 MiB; about 200,000 entries).
pub const MAX_TOC_SIZE: u64 = 64 << 20;
/// The type of a position that locates the table of contents.
const TYPE_TOC: u64 = 1;
const FOOTER_MAGIC: &[u8; 8] = b"GnUlInUx";
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

/// Where the compressed table of contents is in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TocPosition {
    /// Its first byte in the blob.
    pub offset: u64,
    /// Its compressed length.
    pub length: u64,
    /// Its decompressed length.
    pub uncompressed_length: u64,
}

fn invalid(detail: String) -> Error {
    Error::Invalid {
        what: "zstd:chunked table of contents",
        detail,
    }
}

impl TocPosition {
    /// Reads the `manifest-position` annotation, checking it against the
    /// blob's size.
    pub fn from_annotation(text: &str, blob_size: u64) -> Result<TocPosition> {
        let fields: Vec<u64> = text
            .split(':')
            .map(|field| field.parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| invalid(format!("position {text:?} is not four numbers")))?;
        let [offset, length, uncompressed_length, kind] = fields[..] else {
            return Err(invalid(format!("position {text:?} is not four numbers")));
        };
        if kind != TYPE_TOC {
            return Err(invalid(format!("position of type {kind}, not {TYPE_TOC}")));
        }
        TocPosition {
            offset,
            length,
            uncompressed_length,
        }
        .checked(blob_size)
    }

    /// Reads the footer (the blob's last [`FOOTER_LEN`] bytes).
    pub fn from_footer(footer: &[u8], blob_size: u64) -> Result<TocPosition> {
        let word = |at: usize| -> Option<u64> {
            let bytes: [u8; 8] = footer.get(at..at + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(bytes))
        };
        let magic = footer
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes);
        if footer.len() != FOOTER_LEN
            || magic != Some(SKIPPABLE_MAGIC)
            || footer.get(40..48) != Some(&FOOTER_MAGIC[..])
        {
            return Err(invalid(
                "the blob does not end in a zstd:chunked footer".into(),
            ));
        }
        let (Some(offset), Some(length), Some(uncompressed_length), Some(kind)) =
            (word(8), word(16), word(24), word(32))
        else {
            return Err(invalid("truncated footer".into()));
        };
        if kind != TYPE_TOC {
            return Err(invalid(format!("footer of type {kind}, not {TYPE_TOC}")));
        }
        TocPosition {
            offset,
            length,
            uncompressed_length,
        }
        .checked(blob_size)
    }

    fn checked(self, blob_size: u64) -> Result<TocPosition> {
        let end = self.offset.checked_add(self.length);
        if end.is_none_or(|end| end > blob_size) || self.length == 0 {
            return Err(invalid(format!(
                "{} bytes at {} do not fit the blob of {blob_size} bytes",
                self.length, self.offset
            )));
        }
        if self.uncompressed_length > MAX_TOC_SIZE {
            return Err(invalid(format!(
                "{} bytes decompressed, more than the {MAX_TOC_SIZE} sochi reads",
                self.uncompressed_length
            )));
        }
        Ok(self)
    }
}

/// Checks the compressed table against the `manifest-checksum` annotation.
pub fn check_toc_digest(compressed: &[u8], checksum: &str) -> Result<()> {
    let expected = Digest::parse(checksum)
        .and_then(|d| d.sha256())
        .map_err(|_| invalid(format!("checksum {checksum:?} is not a sha256 digest")))?;
    let actual = Sha256Digest::of(compressed);
    if actual != expected {
        return Err(invalid(format!(
            "its digest is {actual}, the manifest says {expected}"
        )));
    }
    Ok(())
}

/// The table of contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ChunkedToc {
    /// Always 1.
    pub version: i64,
    /// Files, and further chunks of the file before them, in blob order.
    #[serde(default)]
    pub entries: Vec<TocEntry>,
}

/// One entry: a file (`reg`, `dir`, `symlink`, `hardlink`, `char`,
/// `block`, `fifo`) or a further chunk of the regular file before it
/// (`chunk`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TocEntry {
    /// The entry's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its path in the layer.
    pub name: String,
    /// A link's target.
    pub link_name: String,
    /// Mode bits.
    pub mode: i64,
    /// A regular file's size.
    pub size: i64,
    /// Owner.
    pub uid: i64,
    /// Group.
    pub gid: i64,
    /// Modification time (RFC 3339).
    pub modtime: String,
    /// Device numbers.
    pub dev_major: i64,
    /// Device numbers.
    pub dev_minor: i64,
    /// Extended attributes, values base64.
    pub xattrs: BTreeMap<String, String>,
    /// A regular file's content digest.
    pub digest: String,
    /// Where the entry's (first) chunk starts in the blob.
    pub offset: i64,
    /// Where a regular file's compressed data ends in the blob.
    pub end_offset: i64,
    /// The chunk's uncompressed length.
    pub chunk_size: i64,
    /// The chunk's offset within the file.
    pub chunk_offset: i64,
    /// The chunk's content digest.
    pub chunk_digest: String,
    /// `""` (data) or `"zeros"` (a hole).
    pub chunk_type: String,
}

const KINDS: [&str; 8] = [
    "reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk",
];

impl ChunkedToc {
    /// Parses the decompressed table and checks it against the blob:
    /// version 1, known types, names, chunks that follow their file and
    /// lie within it, compressed offsets within `data_end` (where the
    /// table starts), digests that are digests.
    pub fn from_json(bytes: &[u8], data_end: u64) -> Result<ChunkedToc> {
        if bytes.len() as u64 > MAX_TOC_SIZE {
            return Err(invalid(format!("{} bytes", bytes.len())));
        }
        let toc: ChunkedToc = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "zstd:chunked table of contents",
            source,
        })?;
        if toc.version != 1 {
            return Err(invalid(format!("version {}, not 1", toc.version)));
        }
        let mut file: Option<(&TocEntry, i64)> = None;
        for (index, entry) in toc.entries.iter().enumerate() {
            let bad = |detail: &str| invalid(format!("entry {index} ({:?}): {detail}", entry.name));
            if !KINDS.contains(&entry.kind.as_str()) {
                return Err(bad(&format!("unknown type {:?}", entry.kind)));
            }
            if entry.name.is_empty() || entry.name.contains('\0') {
                return Err(bad("empty name or a NUL in it"));
            }
            let within = |offset: i64| u64::try_from(offset).is_ok_and(|o| o <= data_end);
            match entry.kind.as_str() {
                "reg" => {
                    if entry.size < 0
                        || !within(entry.offset)
                        || !within(entry.end_offset)
                        || entry.end_offset < entry.offset
                    {
                        return Err(bad("size or compressed offsets out of range"));
                    }
                    if entry.size > 0 {
                        check_digest(&entry.digest).map_err(|()| bad("no content digest"))?;
                    }
                    let next = entry.chunk_size.max(0);
                    if entry.chunk_size < 0 || entry.chunk_offset != 0 || next > entry.size {
                        return Err(bad("first chunk out of range"));
                    }
                    file = Some((entry, next));
                }
                "chunk" => {
                    let Some((owner, expected_offset)) = file else {
                        return Err(bad("a chunk without a file before it"));
                    };
                    let end = entry.chunk_offset.checked_add(entry.chunk_size);
                    if owner.name != entry.name
                        || entry.chunk_offset != expected_offset
                        || entry.chunk_size <= 0
                        || end.is_none_or(|end| end > owner.size)
                        || !within(entry.offset)
                        || entry.offset < owner.offset
                        || entry.offset > owner.end_offset
                    {
                        return Err(bad("chunk out of place or out of range"));
                    }
                    if entry.chunk_type != "zeros" {
                        check_digest(&entry.chunk_digest).map_err(|()| bad("no chunk digest"))?;
                    }
                    file = Some((owner, end.unwrap_or(0)));
                }
                _ => file = None,
            }
        }
        Ok(toc)
    }
}

/// What a lazy mount of a zstd:chunked layer is built from: a zTOC whose
/// file table comes from the table of contents and whose spans are its
/// chunks ([`crate::FrameZinfo`], digests of the uncompressed chunks).
/// The files' data sit back to back in a layer space of their own (the
/// tar headers are not in it), which is what `uncompressed_offset` means
/// here. Never written out: it is made again from the table.
pub const CHUNKED_BUILD_TOOL: &str = "sochi zstd:chunked";

impl ChunkedToc {
    /// The zTOC of the layer this table describes (`blob_size` bytes):
    /// every file, and one span per chunk, in blob order.
    ///
    /// Fails when the table does not describe a layer sochi can serve: a
    /// file whose chunks do not add up to its size, chunks out of blob
    /// order or overlapping, or no file data at all (such a layer is
    /// small: it is unpacked).
    pub fn to_ztoc(&self, blob_size: u64) -> Result<Ztoc> {
        use base64::Engine as _;

        let mut toc = Vec::new();
        let mut spans = crate::FrameZinfoWriter::new(true);
        let mut digests = Vec::new();
        let mut layer_offset = 0u64;
        let entries = &self.entries;
        let mut index = 0;
        while let Some(entry) = entries.get(index) {
            let bad =
                |detail: String| invalid(format!("entry {index} ({:?}): {detail}", entry.name));
            let entry_type = match entry.kind.as_str() {
                "reg" => EntryType::Regular,
                "dir" => EntryType::Directory,
                "symlink" => EntryType::Symlink,
                "hardlink" => EntryType::Hardlink,
                "char" => EntryType::CharDevice,
                "block" => EntryType::BlockDevice,
                "fifo" => EntryType::Fifo,
                other => return Err(bad(format!("a {other:?} entry where a file was expected"))),
            };
            // This file's further chunks follow it.
            let chunk_count = entries
                .get(index + 1..)
                .unwrap_or_default()
                .iter()
                .take_while(|next| next.kind == "chunk")
                .count();
            let chunks = entries
                .get(index + 1..index + 1 + chunk_count)
                .unwrap_or_default();
            let size = u64::try_from(entry.size).map_err(|_| bad("negative size".into()))?;
            let file_offset = layer_offset;
            if entry_type == EntryType::Regular && size > 0 {
                // (compressed start, uncompressed size, digest) of each chunk.
                let first_size = if entry.chunk_size > 0 {
                    entry.chunk_size
                } else {
                    entry.size
                };
                let first_digest = if entry.chunk_digest.is_empty() {
                    &entry.digest
                } else {
                    &entry.chunk_digest
                };
                let mut pieces = vec![(entry.offset, first_size, first_digest)];
                pieces.extend(
                    chunks
                        .iter()
                        .map(|chunk| (chunk.offset, chunk.chunk_size, &chunk.chunk_digest)),
                );
                let mut covered = 0u64;
                for (at, (start, chunk_size, digest)) in pieces.iter().enumerate() {
                    let end = match pieces.get(at + 1) {
                        Some((next, _, _)) => *next,
                        None => entry.end_offset,
                    };
                    let (Ok(start), Ok(end), Ok(chunk_size)) = (
                        u64::try_from(*start),
                        u64::try_from(end),
                        u64::try_from(*chunk_size),
                    ) else {
                        return Err(bad(format!("chunk {at}: negative offset or size")));
                    };
                    let digest = Digest::parse(digest)
                        .and_then(|d| d.sha256())
                        .map_err(|_| bad(format!("chunk {at}: no sha256 digest")))?;
                    spans
                        .push(start..end, layer_offset)
                        .map_err(|error| bad(format!("chunk {at}: {error}")))?;
                    digests.push(digest);
                    covered = covered.saturating_add(chunk_size);
                    layer_offset = layer_offset
                        .checked_add(chunk_size)
                        .ok_or_else(|| bad("sizes overflow".into()))?;
                }
                if covered != size {
                    return Err(bad(format!(
                        "its chunks hold {covered} bytes, its size is {size}"
                    )));
                }
            }
            let mut pax_records = Vec::with_capacity(entry.xattrs.len());
            for (name, value) in &entry.xattrs {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|_| bad(format!("xattr {name:?} is not base64")))?;
                pax_records.push((format!("SCHILY.xattr.{name}").into_bytes(), value));
            }
            let id = |value: i64, what: &str| {
                u32::try_from(value).map_err(|_| bad(format!("{what} {value} out of range")))
            };
            toc.push(FileMetadata {
                name: entry.name.as_bytes().to_vec(),
                entry_type,
                uncompressed_offset: i64::try_from(file_offset)
                    .map_err(|_| bad("offset overflows".into()))?,
                uncompressed_size: if entry_type == EntryType::Regular {
                    entry.size
                } else {
                    0
                },
                linkname: entry.link_name.as_bytes().to_vec(),
                mode: entry.mode,
                uid: id(entry.uid, "uid")?,
                gid: id(entry.gid, "gid")?,
                uname: Vec::new(),
                gname: Vec::new(),
                mod_time: entry.modtime.clone(),
                devmajor: entry.dev_major,
                devminor: entry.dev_minor,
                pax_records,
            });
            index += 1 + chunk_count;
        }
        if spans.is_empty() {
            return Err(invalid("no file data: nothing to fetch lazily".into()));
        }
        let max_span_id = i32::try_from(spans.len() - 1)
            .map_err(|_| invalid(format!("{} chunks", spans.len())))?;
        let too_big = |what: &str| invalid(format!("{what} does not fit an int64"));
        let ztoc = Ztoc {
            version: "0.9".into(),
            build_tool_identifier: CHUNKED_BUILD_TOOL.into(),
            compressed_archive_size: i64::try_from(blob_size).map_err(|_| too_big("blob size"))?,
            uncompressed_archive_size: i64::try_from(layer_offset)
                .map_err(|_| too_big("the files' size"))?,
            toc,
            compression: CompressionInfo {
                algorithm: CompressionAlgorithm::Zstd,
                max_span_id,
                span_digests: digests,
                checkpoints: spans.finish(),
            },
        };
        // The same checks as for a zTOC read from a registry.
        ztoc.span_geometry()?;
        Ok(ztoc)
    }
}

fn check_digest(text: &str) -> std::result::Result<(), ()> {
    Digest::parse(text)
        .and_then(|d| d.sha256())
        .map(|_| ())
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6";

    fn footer(offset: u64, length: u64, uncompressed: u64, kind: u64) -> Vec<u8> {
        let mut f = SKIPPABLE_MAGIC.to_le_bytes().to_vec();
        f.extend_from_slice(&40u32.to_le_bytes());
        for word in [offset, length, uncompressed, kind] {
            f.extend_from_slice(&word.to_le_bytes());
        }
        f.extend_from_slice(FOOTER_MAGIC);
        f
    }

    #[test]
    fn positions_from_the_annotation_and_the_footer_as_skopeo_writes_them() {
        // skopeo 1.9.3's zstd:chunked copy of the busybox test image.
        let position = TocPosition::from_annotation("1062878:3981:57107:1", 1_066_907).unwrap();
        assert_eq!(
            position,
            TocPosition {
                offset: 1_062_878,
                length: 3981,
                uncompressed_length: 57_107
            }
        );
        let from_footer =
            TocPosition::from_footer(&footer(1_062_878, 3981, 57_107, 1), 1_066_907).unwrap();
        assert_eq!(from_footer, position);
        for bad in [
            "1:2:3",
            "1:2:3:2",
            "a:b:c:d",
            "1066900:3981:57107:1",
            "0:0:0:1",
        ] {
            assert!(
                TocPosition::from_annotation(bad, 1_066_907).is_err(),
                "{bad}"
            );
        }
        let huge = format!("0:10:{}:1", MAX_TOC_SIZE + 1);
        assert!(TocPosition::from_annotation(&huge, 100).is_err());
        assert!(TocPosition::from_footer(&footer(0, 10, 10, 1)[..47], 100).is_err());
        let mut wrong = footer(0, 10, 10, 1);
        wrong[47] = b'y';
        assert!(TocPosition::from_footer(&wrong, 100).is_err());
    }

    #[test]
    fn the_digest_of_the_compressed_table_is_checked() {
        let compressed = b"compressed table";
        let good = Sha256Digest::of(compressed).to_string();
        check_toc_digest(compressed, &good).unwrap();
        let error = check_toc_digest(b"other bytes", &good)
            .unwrap_err()
            .to_string();
        assert!(error.contains("the manifest says"), "{error}");
        assert!(check_toc_digest(compressed, "md5:00").is_err());
    }

    #[test]
    fn a_table_as_skopeo_writes_it_parses() {
        let json = format!(
            r#"{{"version":1,"entries":[
            {{"type":"dir","name":"bin/","mode":493,"modtime":"2026-12-03T15:13:16Z"}},
            {{"type":"symlink","name":"bin/sh","linkName":"/bin/busybox","mode":511}},
            {{"type":"reg","name":"bin/busybox","mode":493,"size":5000,"digest":"{DIGEST}",
              "offset":167,"endOffset":900,"chunkSize":1755,"chunkDigest":"{DIGEST}"}},
            {{"type":"chunk","name":"bin/busybox","offset":674,"chunkSize":2341,"chunkOffset":1755,
              "chunkDigest":"{DIGEST}","chunkType":"zeros"}},
            {{"type":"chunk","name":"bin/busybox","offset":697,"chunkSize":904,"chunkOffset":4096,
              "chunkDigest":"{DIGEST}"}},
            {{"type":"reg","name":"empty","size":0,"offset":900,"endOffset":900}}]}}"#
        );
        let toc = ChunkedToc::from_json(json.as_bytes(), 1000).unwrap();
        assert_eq!(toc.entries.len(), 6);
        assert_eq!(toc.entries[1].link_name, "/bin/busybox");
        assert_eq!(toc.entries[3].chunk_type, "zeros");
    }

    #[test]
    fn hostile_tables_are_refused_naming_the_entry() {
        let reg = format!(
            r#"{{"type":"reg","name":"f","size":10,"digest":"{DIGEST}","offset":10,"endOffset":20,"chunkSize":5}}"#
        );
        let cases = [
            (r#"{"version":2,"entries":[]}"#.to_string(), "version 2"),
            (r#"{"version":1,"entries":[{"type":"socket","name":"s"}]}"#.to_string(), "unknown type"),
            (r#"{"version":1,"entries":[{"type":"dir","name":""}]}"#.to_string(), "empty name"),
            (
                format!(r#"{{"version":1,"entries":[{{"type":"reg","name":"f","size":1,"digest":"{DIGEST}","offset":10,"endOffset":5000}}]}}"#),
                "out of range",
            ),
            (
                format!(r#"{{"version":1,"entries":[{{"type":"chunk","name":"f","chunkSize":1,"chunkDigest":"{DIGEST}"}}]}}"#),
                "without a file",
            ),
            (
                format!(r#"{{"version":1,"entries":[{reg},{{"type":"chunk","name":"f","offset":15,"chunkOffset":5,"chunkSize":9,"chunkDigest":"{DIGEST}"}}]}}"#),
                "chunk out of place",
            ),
            (
                format!(r#"{{"version":1,"entries":[{reg},{{"type":"chunk","name":"g","offset":15,"chunkOffset":5,"chunkSize":5,"chunkDigest":"{DIGEST}"}}]}}"#),
                "chunk out of place",
            ),
            (
                r#"{"version":1,"entries":[{"type":"reg","name":"f","size":3,"offset":1,"endOffset":2}]}"#.to_string(),
                "no content digest",
            ),
        ];
        for (json, expected) in cases {
            let error = ChunkedToc::from_json(json.as_bytes(), 1000)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
        assert!(ChunkedToc::from_json(b"{\"version\":1,\"entries\":[", 1000).is_err());
    }
}
