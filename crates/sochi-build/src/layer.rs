//! One layer → one zTOC, in a single streaming pass.
//!
//! The blob is read once: a gzip layer flows through the checkpointing
//! inflater (checkpoints and span digests) into the tar reader (the TOC);
//! an uncompressed layer flows through a span hasher into the tar reader;
//! a multi-frame zstd layer flows through libzstd, cut at frame ends
//! (`crate::zstd`).
//! Nothing is written to disk and memory does not grow with the layer, only
//! with its checkpoint count (32 KiB each, the zTOC's own size).

use std::io::{self, BufRead, Read};

use sha2::{Digest as _, Sha256};
use sochi_format::{
    is_layer_media_type, media_types, CompressionAlgorithm, CompressionInfo, FileMetadata,
    Sha256Digest, TarZinfo, Ztoc, BUILD_TOOL_IDENTIFIER, ZTOC_VERSION,
};
use sochi_zran::CheckpointingReader;

pub use sochi_format::LayerCompression;

use crate::error::{Error, Result};
use crate::span_hasher::SpanHasher;
use sochi_tar::{TarError, TarReader};

/// The reference's default span size (4 MiB).
pub const DEFAULT_SPAN_SIZE: u64 = 4 << 20;

/// What to do with a layer, decided from its media type (docs/format.md §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Index it with this compression.
    Indexable(LayerCompression),
    /// A layer sochi cannot index (zstd, unknown compression): skipped, as
    /// the reference does.
    Unsupported,
    /// Not a layer at all (the prefetch artifact): ignored.
    Ignored,
}

impl LayerKind {
    /// Classifies a layer media type (the table is
    /// [`LayerCompression::of_media_type`]); a non-layer type other than
    /// the prefetch artifact is an error.
    pub fn from_media_type(media_type: &str) -> Result<LayerKind> {
        if media_type == media_types::SOCI_PREFETCH {
            return Ok(LayerKind::Ignored);
        }
        if !is_layer_media_type(media_type) {
            return Err(Error::Invalid(format!(
                "{media_type:?} is not a layer media type"
            )));
        }
        Ok(match LayerCompression::of_media_type(media_type) {
            Some(compression @ (LayerCompression::Gzip | LayerCompression::Uncompressed)) => {
                LayerKind::Indexable(compression)
            }
            Some(LayerCompression::Zstd) | None => LayerKind::Unsupported,
        })
    }
}

/// A zTOC built from a layer.
#[derive(Clone, Debug)]
pub struct LayerZtoc {
    /// The decoded zTOC.
    pub ztoc: Ztoc,
    /// Its serialized bytes (the blob pushed to registries).
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`.
    pub digest: Sha256Digest,
    /// Size of the layer blob read.
    pub layer_size: u64,
    /// Whether any entry carries an xattr or opaque marker (for the
    /// `disable-xattrs` optimization, docs/format.md §4.2).
    pub has_xattrs: bool,
}

/// Options for indexing one layer.
#[derive(Clone, Debug)]
pub struct LayerOptions {
    /// Span size in uncompressed bytes.
    pub span_size: u64,
    /// How the blob is compressed.
    pub compression: LayerCompression,
    /// If set, the blob must hash to this digest and have this size.
    pub expect: Option<(Sha256Digest, u64)>,
    /// The blob reader checks the digest itself (and fails at the end of
    /// the stream on a mismatch), so `expect` only checks the size.
    pub source_verifies_digest: bool,
}

/// Reads a layer blob once and builds its zTOC.
///
/// `name` is used in error messages; `progress` is called with the count
/// of blob bytes read so far.
pub fn build_layer_ztoc(
    blob: impl Read,
    options: &LayerOptions,
    name: &str,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LayerZtoc> {
    let hash = options.expect.is_some() && !options.source_verifies_digest;
    let mut reader = CountingReader::new(blob, hash, progress);
    let indexed = match options.compression {
        LayerCompression::Gzip => index_gzip(&mut reader, options.span_size, name),
        LayerCompression::Uncompressed => index_tar(&mut reader, options.span_size, name),
        // The caller asked for the sochi variant (docs/zstd.md): an index
        // build only gets here with `BuildOptions::zstd_frames`.
        LayerCompression::Zstd => crate::zstd::index_zstd(&mut reader, options.span_size, name),
    };
    let (toc, uncompressed_archive_size, compression) = match indexed {
        Ok(indexed) => indexed,
        Err(error) => return Err(blame_corruption(&mut reader, options, name, error)),
    };
    let layer_size = reader.count;
    if let Some((expected, expected_size)) = options.expect {
        if layer_size != expected_size {
            return Err(Error::LayerMismatch {
                layer: name.to_string(),
                detail: format!("read {layer_size} bytes, the descriptor says {expected_size}"),
            });
        }
        let actual = reader.digest();
        if !options.source_verifies_digest && actual != Some(expected) {
            return Err(Error::LayerMismatch {
                layer: name.to_string(),
                detail: format!(
                    "content has digest {}",
                    actual.map(|d| d.to_string()).unwrap_or_default()
                ),
            });
        }
    }
    let has_xattrs = has_xattrs(&toc);
    let ztoc = Ztoc {
        version: ZTOC_VERSION.to_string(),
        build_tool_identifier: BUILD_TOOL_IDENTIFIER.to_string(),
        compressed_archive_size: to_i64(layer_size, name)?,
        uncompressed_archive_size: to_i64(uncompressed_archive_size, name)?,
        toc,
        compression,
    };
    let bytes = ztoc.try_to_bytes().map_err(|source| Error::Format {
        context: format!("serializing the zTOC of layer {name}"),
        source,
    })?;
    let digest = Sha256Digest::of(&bytes);
    Ok(LayerZtoc {
        ztoc,
        bytes,
        digest,
        layer_size,
        has_xattrs,
    })
}

/// Whether any entry carries an xattr or an opaque-directory marker: a
/// layer without either may be marked `disable-xattrs` (docs/format.md §4.2).
pub fn has_xattrs(toc: &[FileMetadata]) -> bool {
    toc.iter().any(|e| {
        e.name.ends_with(b".wh..wh..opq")
            || e.pax_records
                .iter()
                .any(|(k, _)| k.starts_with(b"SCHILY.xattr."))
    })
}

/// A layer that fails to parse may simply have been corrupted on its way
/// (a flipped byte can still inflate). When its digest is known, read the
/// rest of the blob: if the bytes are not the layer's, say that first.
fn blame_corruption<R: Read>(
    reader: &mut CountingReader<'_, R>,
    options: &LayerOptions,
    name: &str,
    error: Error,
) -> Error {
    let Some((expected, _)) = options.expect else {
        return error;
    };
    if let Err(read_error) = io::copy(reader, &mut io::sink()) {
        // A source that checks digests itself (a registry stream) says so
        // with InvalidData at the end of the blob.
        if read_error.kind() == io::ErrorKind::InvalidData {
            return Error::LayerMismatch {
                layer: name.to_string(),
                detail: format!("the blob is corrupt: {read_error} ({error})"),
            };
        }
        return error;
    }
    match reader.digest() {
        Some(actual) if actual != expected => Error::LayerMismatch {
            layer: name.to_string(),
            detail: format!(
                "content has digest {actual}, not {expected}: the blob is corrupt ({error})"
            ),
        },
        _ => error,
    }
}

fn to_i64(value: u64, name: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::Invalid(format!("layer {name}: size {value} overflows")))
}

type Indexed = (Vec<FileMetadata>, u64, CompressionInfo);

fn read_toc<R: BufRead>(
    tar: &mut TarReader<R>,
) -> std::result::Result<(Vec<FileMetadata>, u64), TarError> {
    let mut toc = Vec::new();
    while let Some(entry) = tar.next_entry()? {
        toc.push(entry.metadata);
    }
    Ok((toc, tar.position()))
}

fn index_gzip(blob: &mut dyn Read, span_size: u64, name: &str) -> Result<Indexed> {
    let gzip_err = |source| Error::Gzip {
        layer: name.to_string(),
        source,
    };
    let inflater = CheckpointingReader::new(blob, span_size).map_err(gzip_err)?;
    let mut tar = TarReader::new(inflater);
    let (toc, end) = read_toc(&mut tar).map_err(|e| tar_or_gzip(e, name))?;
    let index = tar.into_inner().finish().map_err(gzip_err)?;
    let max_span_id = checked_max_span_id(index.checkpoint_count, name)?;
    Ok((
        toc,
        end,
        CompressionInfo {
            algorithm: CompressionAlgorithm::Gzip,
            max_span_id,
            span_digests: index.span_digests,
            checkpoints: index.zinfo,
        },
    ))
}

fn index_tar(blob: &mut dyn Read, span_size: u64, name: &str) -> Result<Indexed> {
    if span_size == 0 {
        return Err(Error::Invalid(format!(
            "layer {name}: a span size of 0 is not allowed for an uncompressed layer"
        )));
    }
    let hasher = SpanHasher::new(blob, span_size);
    let mut tar = TarReader::new(hasher);
    let (toc, end) = read_toc(&mut tar).map_err(|e| tar_or_gzip(e, name))?;
    let (span_digests, size) = tar.into_inner().finish().map_err(|source| Error::Io {
        context: format!("reading layer {name}"),
        source,
    })?;
    if size == 0 {
        return Err(Error::Invalid(format!("layer {name} is empty")));
    }
    let max_span_id = checked_max_span_id(span_digests.len(), name)?;
    let zinfo = TarZinfo {
        span_size: to_i64(span_size, name)?,
        size: to_i64(size, name)?,
    };
    Ok((
        toc,
        end,
        CompressionInfo {
            algorithm: CompressionAlgorithm::Uncompressed,
            max_span_id,
            span_digests,
            checkpoints: zinfo.to_bytes(),
        },
    ))
}

fn checked_max_span_id(count: usize, name: &str) -> Result<i32> {
    count
        .checked_sub(1)
        .and_then(|m| i32::try_from(m).ok())
        .ok_or_else(|| Error::Invalid(format!("layer {name}: {count} spans do not fit a zTOC")))
}

/// A tar error that wraps an inflate error is reported as the latter.
fn tar_or_gzip(error: TarError, name: &str) -> Error {
    if let TarError::Io(io) = error {
        return match sochi_zran::Error::from_io(io) {
            sochi_zran::Error::Io { source } => Error::Io {
                context: format!("reading layer {name}"),
                source,
            },
            other => Error::Gzip {
                layer: name.to_string(),
                source: other,
            },
        };
    }
    Error::Tar {
        layer: name.to_string(),
        source: error,
    }
}

/// Counts (and optionally hashes) the blob bytes as they are read.
struct CountingReader<'a, R> {
    inner: R,
    count: u64,
    hasher: Option<Sha256>,
    progress: &'a (dyn Fn(u64) + Sync),
    reported: u64,
}

impl<'a, R: Read> CountingReader<'a, R> {
    fn new(inner: R, hash: bool, progress: &'a (dyn Fn(u64) + Sync)) -> Self {
        CountingReader {
            inner,
            count: 0,
            hasher: hash.then(Sha256::new),
            progress,
            reported: 0,
        }
    }

    fn digest(&mut self) -> Option<Sha256Digest> {
        self.hasher
            .take()
            .map(|h| Sha256Digest(h.finalize().into()))
    }
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        // Report at most every 4 MiB: the callback may touch a progress bar.
        if self.count - self.reported >= 4 << 20 || n == 0 {
            self.reported = self.count;
            (self.progress)(self.count);
        }
        Ok(n)
    }
}
