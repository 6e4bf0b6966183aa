//! What sochi reads of zstd layers before decompressing anything: the
//! frame map of a zstd stream, and the zstd:chunked table of contents with
//! its position (annotation or footer), and the zTOC made of the table.
//! Nothing may panic; what parses must be consistent: frames tile the
//! input, positions fit the blob, a table's zTOC has valid spans.
//!
//! Input: byte 0 picks the parser, the rest is the document.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sochi_format::{zstd_frames, ChunkedToc, TocPosition};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, document)) = data.split_first() else {
        return;
    };
    let size = document.len() as u64;
    match selector % 3 {
        0 => {
            if let Ok(frames) = zstd_frames(document) {
                let mut at = 0;
                for frame in frames {
                    assert_eq!(frame.offset, at, "frames tile the stream");
                    assert!(frame.len > 0);
                    at += frame.len;
                }
                assert_eq!(at, size);
            }
        }
        1 => {
            let footer_at = document.len().saturating_sub(sochi_format::ZSTD_CHUNKED_FOOTER_LEN);
            for position in [
                TocPosition::from_footer(&document[footer_at..], size),
                std::str::from_utf8(document)
                    .map_err(|_| ())
                    .and_then(|text| TocPosition::from_annotation(text, size).map_err(|_| ()))
                    .map_err(|()| sochi_format::Error::Invalid { what: "fuzz", detail: String::new() }),
            ]
            .into_iter()
            .flatten()
            {
                assert!(position.offset + position.length <= size);
            }
        }
        _ => {
            // A table that parses is made into a zTOC, or refused: whatever
            // it makes has spans a span store accepts.
            if let Ok(toc) = ChunkedToc::from_json(document, size) {
                if let Ok(ztoc) = toc.to_ztoc(size) {
                    let geometry = ztoc.span_geometry().expect("a zTOC to_ztoc made");
                    assert_eq!(geometry.span_count(), ztoc.compression.span_digests.len());
                    assert!(!ztoc.has_tar_headers());
                }
            }
        }
    }
});
