//! Corrupt checkpoints: index a gzip blob, then damage one checkpoint (its
//! window, its bits, its offset) before `inflate_span`. The result may be an
//! error or bytes (a wrong window cannot be detected), never a panic; an
//! undamaged checkpoint must still give gunzip's bytes.
//!
//! Input: byte 0 span size (`byte0 << 10`), byte 1 which span, bytes 2-3
//! where in the window to flip, byte 4 the XOR mask, byte 5 the new bits
//! (`bits ^ (byte5 % 8)`, and > 7 when byte5 >= 248), byte 6 a signed shift
//! of the compressed offset, byte 7 the skip; the rest is the gzip blob.

#![no_main]

use std::io::Read as _;

use libfuzzer_sys::fuzz_target;
use sochi_format::{CheckpointRef, CompressionAlgorithm, SpanGeometry, Zinfo};
use sochi_zran::{inflate_span, CheckpointingReader};

const MAX_OUTPUT: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let [span_byte, span_selector, at_hi, at_lo, mask, bits_byte, shift, skip_byte, blob @ ..] =
        data
    else {
        return;
    };
    let Ok(reader) = CheckpointingReader::new(blob, u64::from(*span_byte) << 10) else {
        return;
    };
    let mut plain = Vec::new();
    let mut limited = reader.take(MAX_OUTPUT);
    if limited.read_to_end(&mut plain).is_err() || plain.len() as u64 == MAX_OUTPUT {
        return;
    }
    let Ok(index) = limited.into_inner().finish() else {
        return;
    };
    let Ok(zinfo) = Zinfo::parse(CompressionAlgorithm::Gzip, &index.zinfo) else {
        panic!("fresh zinfo does not parse");
    };
    let max_span_id = i32::try_from(index.checkpoint_count - 1).unwrap_or(i32::MAX);
    let Ok(geometry) = SpanGeometry::new(
        zinfo,
        max_span_id,
        index.compressed_size as i64,
        index.uncompressed_size as i64,
    ) else {
        panic!("fresh geometry is invalid");
    };
    let span = usize::from(*span_selector) % geometry.span_count();
    let (Some(checkpoint), Some(end_c), Some(start_u), Some(end_u)) = (
        geometry.checkpoint(sochi_format::SpanId(span)),
        geometry.end_compressed(sochi_format::SpanId(span)),
        geometry.start_uncompressed(sochi_format::SpanId(span)),
        geometry.end_uncompressed(sochi_format::SpanId(span)),
    ) else {
        panic!("span {span} has no bounds");
    };

    let mut window = checkpoint.window.to_vec();
    let at = usize::from(u16::from_be_bytes([*at_hi, *at_lo])) % window.len();
    window[at] ^= mask;
    let bits = if *bits_byte >= 248 {
        *bits_byte
    } else {
        checkpoint.bits ^ (bits_byte % 8)
    };
    let compressed_offset = checkpoint
        .compressed_offset
        .saturating_add_signed(i64::from(*shift as i8));
    let damaged = CheckpointRef {
        compressed_offset,
        uncompressed_offset: checkpoint.uncompressed_offset,
        bits,
        window: &window,
    };
    let undamaged = damaged == checkpoint;

    // The slice the caller would fetch for the damaged checkpoint.
    let start_c = compressed_offset.saturating_sub(u64::from(bits != 0));
    let compressed = blob
        .get(start_c as usize..end_c.max(start_c) as usize)
        .unwrap_or_default();
    let len = (end_u - start_u) as usize;
    let skip = len * usize::from(*skip_byte) / 256;
    let mut out = vec![0u8; len - skip];
    let result = inflate_span(damaged, compressed, skip as u64, &mut out);
    if undamaged {
        if let Err(err) = result {
            panic!("undamaged checkpoint of span {span}: {err}");
        }
        assert!(
            out == plain[start_u as usize + skip..end_u as usize],
            "undamaged checkpoint of span {span}: wrong bytes"
        );
    }

    // A window of the wrong length is refused, not read past.
    let short = CheckpointRef {
        window: &window[..window.len() - 1 - usize::from(*mask) % 100],
        ..checkpoint
    };
    assert!(inflate_span(short, compressed, 0, &mut out).is_err());
});
