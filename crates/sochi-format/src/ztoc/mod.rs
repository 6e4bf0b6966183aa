//! The zTOC: one per indexed layer, a FlatBuffers table holding the layer's
//! file table (TOC) and its checkpoints (docs/format.md §1).

mod info;
mod read;
mod spans;
mod write;

pub use info::{ZtocFileInfo, ZtocInfo};
pub use spans::{SpanGeometry, SpanId};

pub use crate::zinfo::CompressionAlgorithm;

/// The `version` every zTOC carries (the only one ever emitted).
pub const ZTOC_VERSION: &str = "0.9";
/// The build tool id the reference CLI writes; sochi writes it too so that
/// zTOC digests match the reference's.
pub const BUILD_TOOL_IDENTIFIER: &str = "AWS SOCI CLI v0.2";

/// A decoded zTOC.
///
/// Strings that come from tar headers are kept as raw bytes: Go's tar reader
/// does not require UTF-8 and neither does the zTOC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ztoc {
    /// Format version, `"0.9"`.
    pub version: String,
    /// Who built it, `"AWS SOCI CLI v0.2"` for the reference CLI and sochi.
    pub build_tool_identifier: String,
    /// Size in bytes of the layer blob as stored in the registry.
    pub compressed_archive_size: i64,
    /// Position where Go's tar reader reported end-of-archive (docs/format.md §3.5).
    pub uncompressed_archive_size: i64,
    /// One entry per tar entry, in archive order.
    pub toc: Vec<FileMetadata>,
    /// Checkpoints and span digests.
    pub compression: CompressionInfo,
}

/// The type of a tar entry as the zTOC names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryType {
    /// `reg`
    Regular,
    /// `dir`
    Directory,
    /// `symlink`
    Symlink,
    /// `hardlink`
    Hardlink,
    /// `char`
    CharDevice,
    /// `block`
    BlockDevice,
    /// `fifo`
    Fifo,
}

impl EntryType {
    /// The zTOC spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::Regular => "reg",
            EntryType::Directory => "dir",
            EntryType::Symlink => "symlink",
            EntryType::Hardlink => "hardlink",
            EntryType::CharDevice => "char",
            EntryType::BlockDevice => "block",
            EntryType::Fifo => "fifo",
        }
    }

    /// Parses the zTOC spelling.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"reg" => EntryType::Regular,
            b"dir" => EntryType::Directory,
            b"symlink" => EntryType::Symlink,
            b"hardlink" => EntryType::Hardlink,
            b"char" => EntryType::CharDevice,
            b"block" => EntryType::BlockDevice,
            b"fifo" => EntryType::Fifo,
            _ => return None,
        })
    }
}

/// One tar entry as the zTOC records it (docs/format.md §1.1, `FileMetadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMetadata {
    /// Entry name exactly as Go's tar reader reports it (no normalization).
    pub name: Vec<u8>,
    /// Entry type.
    pub entry_type: EntryType,
    /// Offset in the uncompressed tar of the first byte of file data.
    pub uncompressed_offset: i64,
    /// Header size (after a PAX `size` override).
    pub uncompressed_size: i64,
    /// Link target for symlinks and hardlinks, else empty.
    pub linkname: Vec<u8>,
    /// Raw tar mode field.
    pub mode: i64,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner user name.
    pub uname: Vec<u8>,
    /// Owner group name.
    pub gname: Vec<u8>,
    /// RFC 3339 UTC time with up to 9 fractional digits (Go `MarshalText`).
    pub mod_time: String,
    /// Device major number.
    pub devmajor: i64,
    /// Device minor number.
    pub devminor: i64,
    /// All PAX records of the entry, sorted by key (bytewise), keys unique.
    pub pax_records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Checkpoints and span digests (docs/format.md §1.1, `CompressionInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressionInfo {
    /// Gzip or uncompressed.
    pub algorithm: CompressionAlgorithm,
    /// Number of spans − 1.
    pub max_span_id: i32,
    /// SHA-256 of each span's compressed bytes, span 0 first.
    pub span_digests: Vec<crate::Sha256Digest>,
    /// The zinfo blob exactly as stored (see [`crate::Zinfo`]).
    pub checkpoints: Vec<u8>,
}
