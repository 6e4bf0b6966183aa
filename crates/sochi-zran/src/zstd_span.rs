//! Decoding one span of whole zstd frames (a multi-frame zstd zTOC's span,
//! or a zstd:chunked chunk), the way the indexer read it.
//!
//! Why streaming and not libzstd's one-shot `ZSTD_decompressDCtx`: the two
//! do not accept the same inputs. The fuzzer found frames with an empty
//! compressed block that the streaming decoder (which the indexer, and an
//! unpack, use) decodes and the one-shot decoder calls corrupt, so a zTOC
//! built from such a layer would not have decoded at mount. One decoder for
//! both sides keeps "indexed" and "readable" the same thing.

use zstd::stream::raw::{Decoder, InBuffer, Operation as _, OutBuffer};

use crate::error::{Error, Result};

/// Decodes the zstd frames in `compressed`, which must decode to exactly
/// `out.len()` bytes, into `out`. Skippable frames decode to nothing. An
/// error says how the input differs: not zstd, ends inside a frame, or
/// decodes to more or fewer bytes than `out` holds.
pub fn decode_zstd_span(compressed: &[u8], out: &mut [u8]) -> Result<()> {
    let want = out.len();
    let zstd = |detail: String| Error::Zstd { detail };
    let mut decoder = Decoder::new().map_err(|error| zstd(error.to_string()))?;
    let mut input = InBuffer::around(compressed);
    let mut output = OutBuffer::around(out);
    // Until the first call, no frame is complete.
    let mut frame_done = compressed.is_empty();
    loop {
        let before = (input.pos(), output.pos());
        if input.pos() == compressed.len() && frame_done {
            break;
        }
        let hint = decoder
            .run(&mut input, &mut output)
            .map_err(|error| zstd(format!("{error} (at compressed offset {})", input.pos())))?;
        frame_done = hint == 0;
        if (input.pos(), output.pos()) == before {
            return Err(zstd(if output.pos() == want {
                format!("decodes to more than the span's {want} bytes")
            } else {
                format!("the span's {} bytes end inside a frame", compressed.len())
            }));
        }
    }
    let written = output.pos();
    if written != want {
        return Err(zstd(format!(
            "decodes to {written} bytes, the span holds {want}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<u8> {
        parts
            .iter()
            .flat_map(|part| zstd::bulk::compress(part, 3).unwrap())
            .collect()
    }

    #[test]
    fn frames_decode_to_exactly_the_span() {
        let blob = frames(&[b"hello ", b"world"]);
        let mut out = [0u8; 11];
        decode_zstd_span(&blob, &mut out).unwrap();
        assert_eq!(&out, b"hello world");
    }

    #[test]
    fn more_or_fewer_bytes_or_a_cut_frame_are_errors() {
        let blob = frames(&[b"hello ", b"world"]);
        let mut short = [0u8; 10];
        let error = decode_zstd_span(&blob, &mut short).unwrap_err().to_string();
        assert!(error.contains("more than the span's 10 bytes"), "{error}");
        let mut long = [0u8; 12];
        let error = decode_zstd_span(&blob, &mut long).unwrap_err().to_string();
        assert!(
            error.contains("decodes to 11 bytes, the span holds 12"),
            "{error}"
        );
        let mut out = [0u8; 11];
        let error = decode_zstd_span(&blob[..blob.len() - 2], &mut out)
            .unwrap_err()
            .to_string();
        assert!(error.contains("end inside a frame"), "{error}");
        let error = decode_zstd_span(b"not zstd at all", &mut out)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("zstd: "), "{error}");
    }

    #[test]
    fn nothing_decodes_to_nothing() {
        decode_zstd_span(&[], &mut []).unwrap();
        let mut out = [0u8; 1];
        assert!(decode_zstd_span(&[], &mut out).is_err());
    }

    /// Found by the `zstd_frame_index` fuzzer: two frames, the second with
    /// an empty compressed block, which libzstd's streaming decoder (the
    /// indexer's) decodes and its one-shot decoder refuses.
    #[test]
    fn what_the_streaming_decoder_reads_decodes_here() {
        let blob = [
            0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x2b, 0x12, 0x5b, 0x02, 0x00, 0x3b, 0x12, 0x01, 0x06,
            0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x12, 0x00, 0x00, 0x00, 0x2b, 0x12, 0x00, 0x61,
        ];
        let whole = zstd::stream::decode_all(&blob[..]).unwrap();
        assert_eq!(whole.len(), 28_656);
        let mut out = vec![0u8; whole.len()];
        decode_zstd_span(&blob, &mut out).unwrap();
        assert!(out == whole);
    }
}
