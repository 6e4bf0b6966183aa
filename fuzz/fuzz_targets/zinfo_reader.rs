//! `Zinfo::parse` on arbitrary bytes: the first byte picks the algorithm
//! (modulo 3: gzip, uncompressed, zstd frames), the rest is the blob. Whatever parses
//! must yield every checkpoint it claims, in strictly increasing order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sochi_format::{CompressionAlgorithm, Zinfo, WINDOW_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, blob)) = data.split_first() else {
        return;
    };
    let algorithm = match selector % 3 {
        0 => CompressionAlgorithm::Gzip,
        1 => CompressionAlgorithm::Uncompressed,
        _ => CompressionAlgorithm::Zstd,
    };
    let Ok(zinfo) = Zinfo::parse(algorithm, blob) else {
        return;
    };
    assert_eq!(zinfo.algorithm(), algorithm);
    let _ = zinfo.span_size();
    let max_span_id = zinfo.max_span_id();
    match zinfo {
        Zinfo::Gzip(gzip) => {
            assert!(!gzip.is_empty());
            assert_eq!(max_span_id, gzip.len() as i64 - 1);
            assert_eq!(gzip.as_bytes(), blob);
            let mut count = 0;
            let mut previous: Option<(u64, u64)> = None;
            for checkpoint in gzip.checkpoints() {
                assert_eq!(checkpoint.window.len(), WINDOW_SIZE);
                assert!(checkpoint.bits <= 7);
                assert!(checkpoint.bits == 0 || checkpoint.compressed_offset > 0);
                assert!(i64::try_from(checkpoint.compressed_offset).is_ok());
                assert!(i64::try_from(checkpoint.uncompressed_offset).is_ok());
                if let Some((compressed, uncompressed)) = previous {
                    assert!(checkpoint.compressed_offset > compressed);
                    assert!(checkpoint.uncompressed_offset > uncompressed);
                }
                previous = Some((checkpoint.compressed_offset, checkpoint.uncompressed_offset));
                count += 1;
            }
            assert_eq!(count, gzip.len(), "checkpoints() skipped a checkpoint");
            assert!(gzip.checkpoint(gzip.len()).is_none());
        }
        Zinfo::Tar(tar) => {
            assert_eq!(max_span_id, tar.max_span_id());
            // What the writer makes of it parses back the same.
            let bytes = tar.to_bytes();
            match Zinfo::parse(CompressionAlgorithm::Uncompressed, &bytes) {
                Ok(Zinfo::Tar(again)) => assert_eq!(again, tar),
                other => panic!("re-serialized TarZinfo: {other:?}"),
            }
        }
        Zinfo::Zstd(zstd) => {
            assert_eq!(max_span_id, zstd.len() as i64 - 1);
            let mut previous: Option<sochi_format::FrameSpan> = None;
            for index in 0..zstd.len() {
                let span = zstd.span(index).expect("every span it counts");
                assert!(span.compressed.start <= span.compressed.end);
                if let Some(previous) = previous {
                    assert!(span.compressed.start >= previous.compressed.end);
                    assert!(span.uncompressed_start > previous.uncompressed_start);
                }
                previous = Some(span);
            }
            assert!(zstd.span(zstd.len()).is_none());
        }
    }
});
