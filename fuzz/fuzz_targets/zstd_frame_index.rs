//! The multi-frame zstd indexer (`--zstd-frames`) on arbitrary bytes: it
//! never panics, and a zTOC it builds has spans that tile the blob, start
//! at uncompressed 0 and decode (each on its own, as a mount decodes
//! them) to exactly the stream libzstd decodes from the whole blob.
//!
//! Input: byte 0 picks the span size (`1 << (byte0 % 24)`), the rest is
//! the blob.

#![no_main]

use std::io::Read as _;

use libfuzzer_sys::fuzz_target;
use sochi_build::{build_layer_ztoc, LayerCompression, LayerOptions};
use sochi_format::{SpanId, Zinfo};

/// Decoded bytes looked at before giving up on an input (a zstd bomb is
/// slow, not wrong).
const MAX_OUTPUT: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, blob)) = data.split_first() else {
        return;
    };
    // The whole stream, bounded: an input that decodes to more is skipped.
    let mut whole = Vec::new();
    let Ok(decoder) = zstd::stream::read::Decoder::with_buffer(blob) else {
        return;
    };
    if decoder.take(MAX_OUTPUT + 1).read_to_end(&mut whole).is_err()
        || whole.len() as u64 > MAX_OUTPUT
    {
        return;
    }
    let options = LayerOptions {
        span_size: 1 << (selector % 24),
        compression: LayerCompression::Zstd,
        expect: None,
        source_verifies_digest: false,
    };
    let Ok(built) = build_layer_ztoc(blob, &options, "fuzz", &|_| {}) else {
        return;
    };
    let ztoc = &built.ztoc;
    let geometry = ztoc.span_geometry().expect("a zTOC the builder made");
    assert!(matches!(geometry.zinfo(), Zinfo::Zstd(zstd) if !zstd.uncompressed_digests()));
    let mut next = 0u64;
    let mut decoded = Vec::new();
    for span in 0..geometry.span_count() {
        let span = SpanId(span);
        let start = geometry.start_compressed(span).expect("span start");
        let end = geometry.end_compressed(span).expect("span end");
        assert_eq!(start, next, "spans tile the blob");
        next = end;
        let len = geometry.end_uncompressed(span).expect("end")
            - geometry.start_uncompressed(span).expect("start");
        let mut out = vec![0; len as usize];
        // As a mount decodes it.
        sochi_zran::decode_zstd_span(&blob[start as usize..end as usize], &mut out)
            .expect("a span decodes on its own to its length");
        decoded.extend_from_slice(&out);
    }
    assert_eq!(next, blob.len() as u64, "the last span ends with the blob");
    assert!(decoded == whole, "spans decode to the stream");
});
