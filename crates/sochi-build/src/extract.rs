//! Reading one file of a layer through its zTOC (`sochi ztoc get-file`):
//! only the spans that hold the file are read and inflated.

use std::io::{Read, Seek, SeekFrom, Write};

use sochi_format::{CompressionAlgorithm, EntryType, FileMetadata, SpanId, Ztoc};

use crate::error::{Error, Result};

/// DEFLATE's largest expansion: a 258-byte match coded in 2 bits, so one
/// compressed byte inflates to at most 1032 bytes. Bounds the output buffer
/// for a span, whatever sizes a (possibly hostile) zTOC claims.
const MAX_DEFLATE_RATIO: u64 = 1032;
/// The most a zstd span may claim to decode to per compressed byte (a
/// block of 128 KiB of one byte repeated is a few bytes); beyond it the
/// zTOC is refused rather than trusted with an allocation.
const MAX_ZSTD_RATIO: u64 = 1 << 16;

/// Cleans a tar name the way the snapshotter does (`Clean("/" + name)`,
/// leading `/` dropped): `./a//b/../c/` → `a/c`. `..` cannot climb above
/// the root, so hostile names stay inside the layer.
pub fn clean_name(name: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join(&b'/')
}

/// Finds the entry for `path`: an exact name first, then the cleaned name;
/// hardlinks and symlinks are followed to the entry that holds the data.
pub fn find_entry<'a>(ztoc: &'a Ztoc, path: &str) -> Result<&'a FileMetadata> {
    let mut wanted = path.as_bytes().to_vec();
    for _ in 0..40 {
        let entry = ztoc
            .toc
            .iter()
            .rev()
            .find(|e| e.name == wanted)
            .or_else(|| {
                let cleaned = clean_name(&wanted);
                ztoc.toc
                    .iter()
                    .rev()
                    .find(|e| clean_name(&e.name) == cleaned)
            })
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "{} is not in the zTOC",
                    String::from_utf8_lossy(&wanted)
                ))
            })?;
        match entry.entry_type {
            EntryType::Hardlink => wanted = entry.linkname.clone(),
            EntryType::Symlink => {
                wanted = if entry.linkname.starts_with(b"/") {
                    entry.linkname.clone()
                } else {
                    let cleaned = clean_name(&entry.name);
                    let dir = match cleaned.iter().rposition(|b| *b == b'/') {
                        Some(p) => cleaned[..p].to_vec(),
                        None => Vec::new(),
                    };
                    [dir.as_slice(), b"/", entry.linkname.as_slice()].concat()
                }
            }
            _ => return Ok(entry),
        }
    }
    Err(Error::NotFound(format!("{path}: too many levels of links")))
}

/// Writes the data of `entry` (a regular file) to `out`, reading from the
/// layer blob only the spans that hold it; returns the bytes written.
pub fn extract_file<B: Read + Seek>(
    ztoc: &Ztoc,
    blob: &mut B,
    entry: &FileMetadata,
    out: &mut dyn Write,
) -> Result<u64> {
    if entry.entry_type != EntryType::Regular {
        return Err(Error::Invalid(format!(
            "{} is a {}, not a regular file",
            String::from_utf8_lossy(&entry.name),
            entry.entry_type.as_str()
        )));
    }
    let fmt = |source| Error::Format {
        context: "reading the zTOC".to_string(),
        source,
    };
    let io = |context: String| move |source| Error::Io { context, source };
    let start = u64::try_from(entry.uncompressed_offset).unwrap_or(0);
    let size = u64::try_from(entry.uncompressed_size).unwrap_or(0);
    let end = start
        .checked_add(size)
        .ok_or_else(|| Error::Invalid("file extends past 2^64".to_string()))?;
    if size == 0 {
        return Ok(0);
    }
    if ztoc.compression.algorithm == CompressionAlgorithm::Uncompressed {
        return copy_uncompressed(blob, start, size, out);
    }
    let geometry = ztoc.span_geometry().map_err(fmt)?;
    // The zTOC reader does not tie entries to the archive size, and the
    // last span ends there: a file past it would come out short.
    if end > geometry.uncompressed_archive_size() {
        return Err(Error::Invalid(format!(
            "{} ends at uncompressed offset {end}, past the end of the layer's spans ({})",
            String::from_utf8_lossy(&entry.name),
            geometry.uncompressed_archive_size()
        )));
    }
    let first = geometry.span_of(start);
    let last = geometry.span_of(end - 1);
    let mut written = 0u64;
    let mut compressed = Vec::new();
    let mut data = Vec::new();
    for span in (first.index()..=last.index()).map(SpanId) {
        let (c_start, c_end) = (
            geometry.start_compressed(span),
            geometry.end_compressed(span),
        );
        let (u_start, u_end) = (
            geometry.start_uncompressed(span),
            geometry.end_uncompressed(span),
        );
        let (Some(c_start), Some(c_end), Some(u_start), Some(u_end)) =
            (c_start, c_end, u_start, u_end)
        else {
            return Err(Error::Invalid(format!("span {span} is not in the zTOC")));
        };
        let from = start.max(u_start);
        let to = end.min(u_end);
        if to <= from {
            continue;
        }
        // Sizes come from the zTOC, which may lie: read what the layer
        // has rather than allocate what the zTOC claims, and allocate
        // output only as far as those bytes can inflate.
        let c_len = c_end.saturating_sub(c_start);
        read_span(blob, span, c_start, c_len, &mut compressed)?;
        let max_inflated = c_len.saturating_add(1).saturating_mul(MAX_DEFLATE_RATIO);
        if ztoc.compression.algorithm != CompressionAlgorithm::Zstd && to - u_start > max_inflated {
            return Err(Error::Invalid(format!(
                "span {span}: {} uncompressed bytes cannot come from {c_len} compressed bytes",
                to - u_start
            )));
        }
        let len = usize::try_from(to - from)
            .map_err(|_| Error::Invalid(format!("span {span} is too large")))?;
        data.resize(len, 0);
        match geometry.checkpoint(span) {
            Some(checkpoint) => {
                sochi_zran::inflate_span(checkpoint, &compressed, from - u_start, &mut data)
                    .map_err(|source| Error::Gzip {
                        layer: format!("span {span}"),
                        source,
                    })?;
            }
            // zstd frames start without history: the span decodes from
            // its first byte (sochi's `--zstd-frames` zTOCs).
            None if ztoc.compression.algorithm == CompressionAlgorithm::Zstd => {
                if u_end - u_start > c_len.saturating_add(1).saturating_mul(MAX_ZSTD_RATIO) {
                    return Err(Error::Invalid(format!(
                        "span {span}: {} uncompressed bytes cannot come from {c_len} compressed bytes",
                        u_end - u_start
                    )));
                }
                let whole = usize::try_from(u_end - u_start)
                    .map_err(|_| Error::Invalid(format!("span {span} is too large")))?;
                let mut decoded = vec![0; whole];
                sochi_zran::decode_zstd_span(&compressed, &mut decoded)
                    .map_err(|error| Error::Invalid(format!("span {span}: {error}")))?;
                let piece = usize::try_from(from - u_start)
                    .ok()
                    .and_then(|at| decoded.get(at..at + len))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "span {span}: the file's bytes lie outside the span's {whole}"
                        ))
                    })?;
                data.copy_from_slice(piece);
            }
            None => return Err(Error::Invalid(format!("span {span} has no checkpoint"))),
        }
        out.write_all(&data)
            .map_err(io("writing file data".to_string()))?;
        written += data.len() as u64;
    }
    if written != size {
        return Err(Error::Invalid(format!(
            "the zTOC's spans hold {written} of the {size} bytes of {}",
            String::from_utf8_lossy(&entry.name)
        )));
    }
    Ok(written)
}

/// The data of a file in an uncompressed layer: its bytes as they are in
/// the layer, at `start`.
fn copy_uncompressed<B: Read + Seek>(
    blob: &mut B,
    start: u64,
    size: u64,
    out: &mut dyn Write,
) -> Result<u64> {
    let io = |context: String| move |source| Error::Io { context, source };
    blob.seek(SeekFrom::Start(start))
        .map_err(io(format!("seeking to {start} in the layer")))?;
    let copied =
        std::io::copy(&mut blob.take(size), out).map_err(io("copying file data".to_string()))?;
    if copied != size {
        return Err(Error::Invalid(format!(
            "layer ends after {copied} of {size} bytes of the file"
        )));
    }
    Ok(size)
}

/// The `c_len` compressed bytes of `span` at `c_start` in the layer, into
/// `compressed`; a layer that ends before them is refused.
fn read_span<B: Read + Seek>(
    blob: &mut B,
    span: SpanId,
    c_start: u64,
    c_len: u64,
    compressed: &mut Vec<u8>,
) -> Result<()> {
    let io = |context: String| move |source| Error::Io { context, source };
    blob.seek(SeekFrom::Start(c_start))
        .map_err(io(format!("seeking to span {span} at {c_start}")))?;
    compressed.clear();
    (&mut *blob)
        .take(c_len)
        .read_to_end(compressed)
        .map_err(io(format!(
            "reading span {span} ({c_len} bytes at {c_start})"
        )))?;
    if compressed.len() as u64 != c_len {
        return Err(Error::Invalid(format!(
            "span {span}: the layer ends after {} of its {c_len} compressed bytes at {c_start}",
            compressed.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_inside_the_root() {
        assert_eq!(clean_name(b"./a//b/../c/"), b"a/c");
        assert_eq!(clean_name(b"../../etc/passwd"), b"etc/passwd");
        assert_eq!(clean_name(b"/abs/x"), b"abs/x");
        assert_eq!(clean_name(b"./"), b"");
    }

    use std::io::Cursor;

    use crate::{build_layer_ztoc, LayerCompression, LayerOptions};

    /// A gzipped tar holding one regular file `a` of `len` bytes, and its zTOC.
    fn one_file_layer(len: usize) -> (Vec<u8>, Ztoc) {
        let mut header = [0u8; 512];
        header[0] = b'a';
        header[100..107].copy_from_slice(b"0000644");
        header[124..135].copy_from_slice(format!("{len:011o}").as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut tar = header.to_vec();
        tar.extend((0..len).map(|i| (i % 251) as u8));
        tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);

        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&tar).unwrap();
        let layer = encoder.finish().unwrap();
        let options = LayerOptions {
            span_size: 65536,
            compression: LayerCompression::Gzip,
            expect: None,
            source_verifies_digest: false,
        };
        let built = build_layer_ztoc(&layer[..], &options, "test", &|_| {}).unwrap();
        (layer, built.ztoc)
    }

    /// `ztoc` as the reader would hand it over: serialized and parsed back,
    /// so only zTOCs that pass `Ztoc::from_bytes` reach `extract_file`.
    fn reparsed(ztoc: &Ztoc) -> Ztoc {
        Ztoc::from_bytes(&ztoc.to_bytes()).unwrap()
    }

    fn extract(ztoc: &Ztoc, layer: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        extract_file(ztoc, &mut Cursor::new(layer), &ztoc.toc[0], &mut out)?;
        Ok(out)
    }

    #[test]
    fn a_file_reads_back_through_its_ztoc() {
        let (layer, ztoc) = one_file_layer(3000);
        let expected: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
        assert_eq!(extract(&reparsed(&ztoc), &layer).unwrap(), expected);
    }

    // Found by the ztoc_extract fuzz target: a file placed past the end of
    // the last span was "extracted" as zero bytes, successfully.
    #[test]
    fn a_file_past_the_last_span_is_an_error_not_short_output() {
        let (layer, mut ztoc) = one_file_layer(3000);
        ztoc.toc[0].uncompressed_offset = 1 << 20;
        let err = extract(&reparsed(&ztoc), &layer).unwrap_err();
        assert!(
            err.to_string()
                .contains("past the end of the layer's spans"),
            "{err}"
        );
    }

    // Found by the ztoc_extract fuzz target: sizes taken from the zTOC were
    // allocated before any byte was read (a 4 GiB malloc for a 2 KB zTOC).
    #[test]
    fn huge_sizes_in_a_ztoc_are_an_error_not_an_allocation() {
        let (layer, ztoc) = one_file_layer(3000);

        // The last span runs to the compressed archive size: 2^60 bytes.
        let mut huge_layer = ztoc.clone();
        huge_layer.compressed_archive_size = 1 << 60;
        let err = extract(&reparsed(&huge_layer), &layer).unwrap_err();
        assert!(err.to_string().contains("the layer ends after"), "{err}");

        // A 32 TiB file in a 2^50-byte archive, from a few hundred bytes.
        let mut huge_file = ztoc;
        huge_file.uncompressed_archive_size = 1 << 50;
        huge_file.toc[0].uncompressed_size = 1 << 45;
        let err = extract(&reparsed(&huge_file), &layer).unwrap_err();
        assert!(err.to_string().contains("cannot come from"), "{err}");
    }
}
