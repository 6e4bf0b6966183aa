//! Reading one file of a layer through its zTOC (`sochi ztoc get-file`):
//! only the spans that hold the file are read and inflated.

use std::io::{Read, Seek, SeekFrom, Write};

use sochi_format::{CompressionAlgorithm, EntryType, FileMetadata, Ztoc};

use crate::error::{Error, Result};

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
        blob.seek(SeekFrom::Start(start))
            .map_err(io(format!("seeking to {start} in the layer")))?;
        let copied = std::io::copy(&mut blob.take(size), out)
            .map_err(io("copying file data".to_string()))?;
        if copied != size {
            return Err(Error::Invalid(format!(
                "layer ends after {copied} of {size} bytes of the file"
            )));
        }
        return Ok(size);
    }
    let geometry = ztoc.span_geometry().map_err(fmt)?;
    let first = geometry.span_of(start);
    let last = geometry.span_of(end - 1);
    let mut written = 0u64;
    let mut compressed = Vec::new();
    let mut data = Vec::new();
    for span in first..=last {
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
        let checkpoint = geometry
            .checkpoint(span)
            .ok_or_else(|| Error::Invalid(format!("span {span} has no checkpoint")))?;
        let from = start.max(u_start);
        let to = end.min(u_end);
        if to <= from {
            continue;
        }
        let c_len = usize::try_from(c_end.saturating_sub(c_start))
            .map_err(|_| Error::Invalid(format!("span {span} is too large")))?;
        compressed.resize(c_len, 0);
        blob.seek(SeekFrom::Start(c_start))
            .map_err(io(format!("seeking to span {span} at {c_start}")))?;
        blob.read_exact(&mut compressed).map_err(io(format!(
            "reading span {span} ({c_len} bytes at {c_start})"
        )))?;
        data.resize((to - from) as usize, 0);
        sochi_zran::inflate_span(checkpoint, &compressed, from - u_start, &mut data).map_err(
            |source| Error::Gzip {
                layer: format!("span {span}"),
                source,
            },
        )?;
        out.write_all(&data)
            .map_err(io("writing file data".to_string()))?;
        written += data.len() as u64;
    }
    Ok(written)
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
}
