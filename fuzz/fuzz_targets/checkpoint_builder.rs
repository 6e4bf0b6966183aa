//! Differential: index arbitrary bytes with `CheckpointingReader`, and if it
//! succeeds, inflate every span from its checkpoint with `inflate_span` and
//! compare with a plain gunzip of the same bytes (flate2 `MultiGzDecoder`).
//! A mismatch is a bug: sochi would serve wrong file contents.
//!
//! Input: byte 0 and byte 1 pick the span size (`byte0 << (byte1 % 20)`;
//! 0 means a checkpoint at every block boundary), byte 2 how far into each
//! span a second, partial read starts; the rest is the gzip blob.

#![no_main]

use std::io::Read as _;

use libfuzzer_sys::fuzz_target;
use sochi_format::{CompressionAlgorithm, SpanGeometry, Zinfo};
use sochi_zran::{inflate_span, CheckpointingReader};

/// Uncompressed bytes read before giving up on an input (a gzip bomb is
/// slow, not wrong).
const MAX_OUTPUT: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let [a, b, skip_selector, blob @ ..] = data else {
        return;
    };
    let span_size = u64::from(*a) << (b % 20);

    let indexed = index(blob, span_size);

    // On a gzip stream (zlib streams start otherwise) the reader and a
    // plain gunzip must agree: same bytes, or both refuse.
    if blob.starts_with(&[0x1f, 0x8b]) {
        let mut gunzipped = Vec::new();
        let gunzip = flate2::read::MultiGzDecoder::new(blob)
            .take(MAX_OUTPUT)
            .read_to_end(&mut gunzipped);
        match (&indexed, gunzip) {
            (Indexed::Done(plain, _), Ok(_)) => {
                assert!(
                    gunzipped == *plain,
                    "CheckpointingReader output differs from gunzip"
                );
            }
            (Indexed::Done(..), Err(err)) => {
                panic!("CheckpointingReader accepted what gunzip refuses: {err}")
            }
            (Indexed::Refused(err), Ok(_)) if gunzipped.len() as u64 != MAX_OUTPUT => {
                panic!("CheckpointingReader refused what gunzip accepts: {err}");
            }
            _ => {}
        }
    }
    let Indexed::Done(plain, index) = indexed else {
        return;
    };
    assert_eq!(index.uncompressed_size, plain.len() as u64);
    assert_eq!(
        index.compressed_size,
        blob.len() as u64,
        "accepted trailing bytes"
    );
    assert_eq!(index.checkpoint_count, index.span_digests.len());

    let zinfo = match Zinfo::parse(CompressionAlgorithm::Gzip, &index.zinfo) {
        Ok(zinfo) => zinfo,
        Err(err) => panic!("zinfo written by CheckpointingReader does not parse: {err}"),
    };
    let max_span_id = i32::try_from(index.checkpoint_count - 1).unwrap_or(i32::MAX);
    let geometry = match SpanGeometry::new(
        zinfo,
        max_span_id,
        index.compressed_size as i64,
        index.uncompressed_size as i64,
    ) {
        Ok(geometry) => geometry,
        Err(err) => panic!("geometry of a fresh index: {err}"),
    };
    for span in 0..geometry.span_count() {
        let (Some(checkpoint), Some(start_c), Some(end_c), Some(start_u), Some(end_u)) = (
            geometry.checkpoint(sochi_format::SpanId(span)),
            geometry.start_compressed(sochi_format::SpanId(span)),
            geometry.end_compressed(sochi_format::SpanId(span)),
            geometry.start_uncompressed(sochi_format::SpanId(span)),
            geometry.end_uncompressed(sochi_format::SpanId(span)),
        ) else {
            panic!("span {span} has no bounds");
        };
        assert!(
            start_c <= end_c && end_c <= blob.len() as u64,
            "span {span}"
        );
        assert!(
            start_u <= end_u && end_u <= plain.len() as u64,
            "span {span}"
        );
        let compressed = &blob[start_c as usize..end_c as usize];
        let expected = &plain[start_u as usize..end_u as usize];
        if span == 0 {
            assert_eq!(start_u, 0);
        } else {
            // The window is the 32 KiB before the span (zeros before 0).
            let from = (start_u as usize).saturating_sub(32768);
            let history = &plain[from..start_u as usize];
            assert!(checkpoint.window.ends_with(history), "span {span}: window");
        }

        let mut out = vec![0u8; expected.len()];
        if let Err(err) = inflate_span(checkpoint, compressed, 0, &mut out) {
            panic!("span {span} ({start_c}..{end_c}) does not inflate: {err}");
        }
        assert!(
            out == expected,
            "span {span}: inflate_span bytes differ from gunzip"
        );

        // A read from the middle, as a lazy read of one file asks.
        let skip = expected.len() * usize::from(*skip_selector) / 256;
        let mut part = vec![0u8; (expected.len() - skip).div_ceil(2)];
        if let Err(err) = inflate_span(checkpoint, compressed, skip as u64, &mut part) {
            panic!("span {span}, skip {skip}: {err}");
        }
        assert!(
            part == expected[skip..skip + part.len()],
            "span {span}, skip {skip}"
        );
    }
});

enum Indexed {
    /// The uncompressed stream and the index.
    Done(Vec<u8>, sochi_zran::GzipLayerIndex),
    /// The reader refused the stream.
    Refused(sochi_zran::Error),
    /// Too large to check (a gzip bomb is slow, not wrong).
    Skipped,
}

/// Reads `blob` through a `CheckpointingReader` to the end and finishes it.
fn index(blob: &[u8], span_size: u64) -> Indexed {
    let reader = match CheckpointingReader::new(blob, span_size) {
        Ok(reader) => reader,
        Err(err) => return Indexed::Refused(err),
    };
    let mut plain = Vec::new();
    let mut limited = reader.take(MAX_OUTPUT);
    if let Err(err) = limited.read_to_end(&mut plain) {
        return Indexed::Refused(sochi_zran::Error::from_io(err));
    }
    if plain.len() as u64 == MAX_OUTPUT {
        return Indexed::Skipped;
    }
    match limited.into_inner().finish() {
        Ok(index) => Indexed::Done(plain, index),
        Err(err) => Indexed::Refused(err),
    }
}
