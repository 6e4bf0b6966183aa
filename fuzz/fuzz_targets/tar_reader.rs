//! The Go-`archive/tar`-exact reader on arbitrary bytes: walking every
//! entry and reading its data, parsing one header with `parse_header_at`,
//! and indexing the bytes as a layer with a small span size, uncompressed
//! and gzipped. None of it may panic, what the reader reports must be
//! consistent with the input, and every regular file read back through the
//! built zTOC (`extract_file`) must be exactly its bytes in the tar.

#![no_main]

use std::io::{Cursor, Write as _};

use libfuzzer_sys::fuzz_target;
use sochi_tar::{parse_header_at, TarReader};
use sochi_build::{build_layer_ztoc, extract_file, LayerCompression, LayerOptions, LayerZtoc};
use sochi_format::{CompressionAlgorithm, EntryType, FileMetadata, Ztoc};

/// Span sizes for the layer build, picked by the input length so that one
/// input does not pay for all of them.
const SPAN_SIZES: [u64; 4] = [512, 1000, 4096, 65536];

fuzz_target!(|data: &[u8]| {
    let entries = walk(data);

    if let Ok((metadata, consumed)) = parse_header_at(data) {
        assert!(consumed <= data.len());
        assert_eq!(metadata.uncompressed_offset, consumed as i64);
    }

    let span_size = SPAN_SIZES[data.len() % SPAN_SIZES.len()];
    let options = LayerOptions {
        span_size,
        compression: LayerCompression::Uncompressed,
        expect: None,
        source_verifies_digest: false,
    };
    let Ok(built) = build_layer_ztoc(data, &options, "fuzz", &|_| {}) else {
        return;
    };
    assert_eq!(built.layer_size, data.len() as u64);
    assert_eq!(
        built.ztoc.compression.algorithm,
        CompressionAlgorithm::Uncompressed
    );
    let entries =
        entries.unwrap_or_else(|| panic!("the layer build accepted what the walk refused"));
    assert_eq!(built.ztoc.toc.len(), entries.len());
    check_readable(&built);
    extract_all(&built, data, data);

    // The same tar gzipped: the same TOC, and every file through the
    // checkpoints.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let gzipped = encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .unwrap_or_else(|err| panic!("gzip: {err}"));
    let options = LayerOptions {
        span_size,
        compression: LayerCompression::Gzip,
        expect: None,
        source_verifies_digest: false,
    };
    let built_gzip = match build_layer_ztoc(&gzipped[..], &options, "fuzz.gz", &|_| {}) {
        Ok(built) => built,
        Err(err) => panic!("the tar indexes uncompressed but not gzipped: {err}"),
    };
    assert_eq!(built_gzip.ztoc.toc, built.ztoc.toc);
    assert_eq!(
        built_gzip.ztoc.uncompressed_archive_size,
        built.ztoc.uncompressed_archive_size
    );
    check_readable(&built_gzip);
    extract_all(&built_gzip, &gzipped, data);
});

/// What we build must be a zTOC we (and so the snapshotter) accept, with
/// one exception taken over from the reference: a link, directory, device
/// or fifo whose header claims a size keeps that size in the zTOC (Go reads
/// no data for it), so the derived header offset of the next entry is
/// wrong and the reader refuses the zTOC as the reference's does
/// (`ErrInvalidTOCEntry`, docs/format.md §1.2).
fn check_readable(built: &LayerZtoc) {
    match Ztoc::from_bytes(&built.bytes) {
        Ok(parsed) => assert_eq!(parsed, built.ztoc),
        Err(err) => {
            let sized_header_only =
                built.ztoc.toc.iter().any(|entry| {
                    entry.entry_type != EntryType::Regular && entry.uncompressed_size > 0
                });
            assert!(
                sized_header_only && built.ztoc.tar_header_offsets().is_err(),
                "built zTOC does not parse: {err}"
            );
        }
    }
}

/// Every regular file read through the zTOC equals its bytes in the tar.
fn extract_all(built: &LayerZtoc, blob: &[u8], tar: &[u8]) {
    for entry in &built.ztoc.toc {
        if entry.entry_type != EntryType::Regular {
            continue;
        }
        let mut out = Vec::new();
        let written = extract_file(&built.ztoc, &mut Cursor::new(blob), entry, &mut out)
            .unwrap_or_else(|err| panic!("extracting {:?}: {err}", entry.name));
        let start = entry.uncompressed_offset as usize;
        let end = start + entry.uncompressed_size as usize;
        assert_eq!(written, out.len() as u64);
        assert!(
            out == tar[start..end],
            "extracted bytes of {:?} differ",
            entry.name
        );
    }
}

/// Every entry and its data; offsets stay inside the input, each entry's
/// data is exactly `uncompressed_size` bytes (none for non-regular
/// entries), and its header blocks parse alone to the same entry, as the
/// snapshotter checks on first read (docs/format.md §3.6). `None` on an error.
fn walk(data: &[u8]) -> Option<Vec<FileMetadata>> {
    let mut reader = TarReader::new(data);
    let mut buf = [0u8; 700];
    let mut previous_end = 0u64;
    let mut entries = Vec::new();
    loop {
        let entry = match reader.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                assert!(reader.position() <= data.len() as u64);
                assert!(reader.next_entry().ok().flatten().is_none());
                return Some(entries);
            }
            Err(_) => {
                assert!(reader.next_entry().is_err(), "error is not sticky");
                return None;
            }
        };
        let offset = u64::try_from(entry.metadata.uncompressed_offset).unwrap_or(u64::MAX);
        assert!(entry.header_offset >= previous_end);
        assert!(entry.header_offset < offset);
        assert!(offset <= data.len() as u64);
        assert_eq!(reader.position(), offset);

        let headers = &data[entry.header_offset as usize..offset as usize];
        match parse_header_at(headers) {
            Ok((mut alone, consumed)) => {
                assert_eq!(
                    consumed,
                    headers.len(),
                    "header blocks parse to another length"
                );
                alone.uncompressed_offset = entry.metadata.uncompressed_offset;
                assert_eq!(
                    alone, entry.metadata,
                    "header blocks parse to another entry"
                );
            }
            Err(err) => panic!("header blocks of an entry do not parse alone: {err}"),
        }

        let mut total = 0u64;
        loop {
            match reader.read_data(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let start = usize::try_from(offset + total).unwrap_or(usize::MAX);
                    assert_eq!(
                        data.get(start..start + n),
                        Some(&buf[..n]),
                        "wrong data bytes"
                    );
                    total += n as u64;
                }
                Err(_) => return None,
            }
        }
        let size = u64::try_from(entry.metadata.uncompressed_size).unwrap_or(u64::MAX);
        if entry.metadata.entry_type == EntryType::Regular {
            assert_eq!(total, size, "data length differs from the header's size");
        } else {
            assert_eq!(total, 0, "a non-regular entry has data");
        }
        previous_end = offset + total;
        entries.push(entry.metadata);
    }
}
