//! Bad input: truncated, corrupt, garbage and trailing data, and corrupt
//! checkpoints all give errors, never a panic or an index.

use std::io::{self, Read};

use sochi_format::CheckpointRef;
use sochi_zran::{inflate_span, inflate_span_to_vec, CheckpointingReader, Error};

use crate::testutil::{
    gunzip, gzip, gzip_members, index, parse_zinfo, span_ranges, synthetic, Rng,
};

fn small_blob() -> Vec<u8> {
    gzip(&synthetic(10, 60_000), 6)
}

#[test]
fn truncated_gzip_is_an_error_at_every_length() {
    let blob = small_blob();
    for len in 0..blob.len() {
        match index(&blob[..len], 0) {
            Err(Error::Truncated { offset }) => assert!(offset <= len as u64, "cut at {len}"),
            Err(other) => panic!("cut at {len}: unexpected {other}"),
            Ok(_) => panic!("cut at {len}: indexed a truncated stream"),
        }
    }
}

#[test]
fn truncated_multi_member_gzip_is_an_error() {
    let blob = gzip_members(&[&synthetic(11, 20_000), &synthetic(12, 20_000)], 6);
    for len in (0..blob.len()).step_by(7) {
        assert!(index(&blob[..len], 0).is_err(), "cut at {len}");
    }
}

#[test]
fn truncation_surfaces_through_read_as_unexpected_eof() {
    let blob = small_blob();
    let mut reader = CheckpointingReader::new(&blob[..blob.len() - 3], 65536).unwrap();
    let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert!(matches!(Error::from_io(err), Error::Truncated { .. }));
    // The index is incomplete: the reader refuses to go on.
    assert!(matches!(reader.finish(), Err(Error::UsedAfterError)));
}

#[test]
fn corrupt_deflate_data_is_an_error() {
    let blob = small_blob();
    let mut rng = Rng::new(13);
    // Flip bits well inside the DEFLATE data (not in the header, whose MTIME
    // is not checked, nor in the last byte's padding bits).
    for _ in 0..300 {
        let mut bad = blob.clone();
        let at = 12 + rng.below(blob.len() as u64 - 24) as usize;
        bad[at] ^= 1 << rng.below(8);
        match index(&bad, 65536) {
            Err(Error::Corrupt { offset, .. }) => assert!(offset <= bad.len() as u64),
            Err(Error::Truncated { .. }) | Err(Error::TrailingData { .. }) => {}
            Err(other) => panic!("flip at {at}: unexpected {other}"),
            Ok(_) => panic!("flip at {at}: indexed a corrupt stream"),
        }
    }
}

#[test]
fn bad_crc_and_length_are_errors() {
    let blob = small_blob();
    let n = blob.len();
    for (at, what) in [
        (n - 8, "incorrect data check"),
        (n - 2, "incorrect length check"),
    ] {
        let mut bad = blob.clone();
        bad[at] ^= 0x40;
        match index(&bad, 65536) {
            Err(Error::Corrupt { offset, detail }) => {
                assert_eq!(detail, what);
                assert!(offset > n as u64 - 9, "{offset}");
            }
            other => panic!("{what}: unexpected {other:?}"),
        }
    }
}

#[test]
fn trailing_garbage_is_an_error() {
    let blob = small_blob();
    let cases: [&[u8]; 5] = [
        &[0; 512],
        &[0],
        &[0x1f],
        &[0x1f, 0x8b, 0x08],
        b"garbage after the stream",
    ];
    for trailer in cases {
        let mut bad = blob.clone();
        bad.extend_from_slice(trailer);
        match index(&bad, 65536) {
            Err(Error::TrailingData { offset }) => assert_eq!(offset, blob.len() as u64),
            other => panic!("{trailer:?}: unexpected {other:?}"),
        }
    }
}

#[test]
fn garbage_instead_of_gzip_is_an_error() {
    let garbage = synthetic(14, 100_000);
    for input in [
        &garbage[..],
        b"\x1f\x8b\x09\x00not deflate",
        b"PK\x03\x04",
        b"\0",
    ] {
        match index(input, 65536) {
            Err(Error::Corrupt { offset, .. }) => assert!(offset < 10),
            Err(Error::Truncated { .. }) => assert!(input.len() < 10),
            other => panic!("{:?}: unexpected {other:?}", &input[..input.len().min(8)]),
        }
    }
}

#[test]
fn io_errors_pass_through_and_interruptions_are_retried() {
    struct Flaky<'a> {
        data: &'a [u8],
        calls: usize,
    }
    impl Read for Flaky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            if self.calls > 40 {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer gone"));
            }
            let n = buf.len().min(self.data.len()).min(1000);
            let (head, tail) = self.data.split_at(n);
            buf[..n].copy_from_slice(head);
            self.data = tail;
            Ok(n)
        }
    }
    let small = gzip(&synthetic(15, 10_000), 6);
    let index = CheckpointingReader::new(
        Flaky {
            data: &small,
            calls: 0,
        },
        0,
    )
    .unwrap()
    .finish()
    .unwrap();
    assert_eq!(index.compressed_size, small.len() as u64);

    let large = small_blob();
    let mut reader = CheckpointingReader::new(
        Flaky {
            data: &large,
            calls: 0,
        },
        0,
    )
    .unwrap();
    let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    match Error::from_io(err) {
        Error::Io { source } => assert_eq!(source.to_string(), "peer gone"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn span_size_beyond_i64_is_refused() {
    assert!(matches!(
        CheckpointingReader::new(&b""[..], u64::MAX),
        Err(Error::SpanSizeTooLarge { .. })
    ));
}

/// A stream with several spans, some with `bits != 0`, and its plain text.
fn spans() -> (Vec<u8>, Vec<u8>) {
    let blob = gzip_members(&[&synthetic(16, 400_000), &synthetic(17, 100_000)], 6);
    (gunzip(&blob), blob)
}

#[test]
fn malformed_checkpoints_are_refused() {
    let window = vec![0u8; 32768];
    fn checkpoint(bits: u8, window: &[u8]) -> CheckpointRef<'_> {
        CheckpointRef {
            compressed_offset: 10,
            uncompressed_offset: 0,
            bits,
            window,
        }
    }
    let (_, blob) = spans();
    let mut out = [0u8; 16];
    for bits in [8, 9, 200] {
        assert!(matches!(
            inflate_span(checkpoint(bits, &window), &blob[9..], 0, &mut out),
            Err(Error::InvalidCheckpoint { .. })
        ));
    }
    for len in [0, 1, 32767, 32769] {
        let wrong_window = vec![0; len];
        assert!(matches!(
            inflate_span(checkpoint(0, &wrong_window), &blob[10..], 0, &mut out),
            Err(Error::InvalidCheckpoint { .. })
        ));
    }
    let at_zero = CheckpointRef {
        compressed_offset: 0,
        uncompressed_offset: 0,
        bits: 3,
        window: &window,
    };
    assert!(inflate_span(at_zero, &blob, 0, &mut out).is_err());
    // No compressed bytes at all.
    assert!(matches!(
        inflate_span(checkpoint(0, &window), &[], 0, &mut out),
        Err(Error::Truncated { offset: 10 })
    ));
    assert!(matches!(
        inflate_span(checkpoint(5, &window), &[], 0, &mut out),
        Err(Error::Truncated { offset: 9 })
    ));
}

#[test]
fn asking_for_more_than_the_span_holds_is_an_error() {
    let (plain, blob) = spans();
    let index = index(&blob, 65536).unwrap();
    let (_, checkpoints) = parse_zinfo(&index.zinfo);
    assert!(checkpoints.len() > 3);
    let ranges = span_ranges(&checkpoints, blob.len() as u64, plain.len() as u64);
    for (checkpoint, &((start_c, end_c), (start_u, end_u))) in checkpoints.iter().zip(&ranges) {
        let compressed = &blob[start_c..end_c];
        let len = end_u - start_u;
        assert!(inflate_span_to_vec(checkpoint.as_ref(), compressed, len).is_ok());
        assert!(matches!(
            inflate_span_to_vec(checkpoint.as_ref(), compressed, len + 1),
            Err(Error::Truncated { .. })
        ));
        // Cut the compressed span short.
        let short = &compressed[..compressed.len() * 2 / 3];
        assert!(inflate_span_to_vec(checkpoint.as_ref(), short, len).is_err());
    }
}

#[test]
fn corrupt_checkpoints_never_panic() {
    let (plain, blob) = spans();
    let index = index(&blob, 65536).unwrap();
    let (_, checkpoints) = parse_zinfo(&index.zinfo);
    let ranges = span_ranges(&checkpoints, blob.len() as u64, plain.len() as u64);
    let mut rng = Rng::new(18);
    let mut errors = 0;
    for round in 0..400 {
        let i = rng.below(checkpoints.len() as u64) as usize;
        let mut checkpoint = checkpoints[i].clone();
        let ((start_c, end_c), (start_u, end_u)) = ranges[i];
        let mut compressed = blob[start_c..end_c].to_vec();
        match round % 4 {
            0 => checkpoint.bits = rng.below(8) as u8,
            1 => {
                let at = rng.below(checkpoint.window.len() as u64) as usize;
                checkpoint.window[at] ^= 0xff;
            }
            2 => {
                let at = rng.below(compressed.len() as u64) as usize;
                compressed[at] ^= 1 << rng.below(8);
            }
            _ => {
                // The wrong span's bytes for this checkpoint.
                let j = rng.below(checkpoints.len() as u64) as usize;
                let ((s, e), _) = ranges[j];
                compressed = blob[s..e].to_vec();
            }
        }
        let len = end_u - start_u;
        match inflate_span_to_vec(checkpoint.as_ref(), &compressed, len) {
            // Raw DEFLATE has no checksum: a flipped bit or window byte can
            // decode to other bytes without any error. Catching that is the
            // span digest's job (checked before inflating); here only "no
            // panic, exact length" is promised.
            Ok(bytes) => assert_eq!(bytes.len(), len),
            Err(_) => errors += 1,
        }
    }
    assert!(
        errors > 50,
        "only {errors} corrupt checkpoints were refused"
    );
}
