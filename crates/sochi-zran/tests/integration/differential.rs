//! Differential: every span inflated from its checkpoint equals the same
//! bytes from a plain gunzip, across span sizes, levels, multi-member gzip,
//! empty and tiny streams.

use std::io::Read as _;

use sha2::{Digest as _, Sha256};
use sochi_zran::{inflate_span, inflate_span_to_vec, CheckpointingReader};

use crate::testutil::{
    expected_window, fixture, gunzip, gzip, gzip_members, parse_zinfo, span_ranges, synthetic,
};

const SPAN_SIZES: &[u64] = &[0, 1, 65536, 4 << 20];

/// Indexes `blob` at every span size and checks the result against a plain
/// gunzip: the bytes read, every window, every span digest, and every span
/// (whole and a slice from its middle) inflated from its checkpoint.
fn check_blob(name: &str, blob: &[u8]) {
    let plain = gunzip(blob);
    for &span_size in SPAN_SIZES {
        let context = format!("{name} at span size {span_size}");
        let mut reader = CheckpointingReader::new(blob, span_size).unwrap();
        let mut read_back = Vec::new();
        reader.read_to_end(&mut read_back).unwrap();
        assert!(read_back == plain, "{context}: uncompressed bytes differ");
        assert_eq!(
            reader.uncompressed_position(),
            plain.len() as u64,
            "{context}"
        );
        assert_eq!(reader.compressed_position(), blob.len() as u64, "{context}");
        let index = reader.finish().unwrap();
        assert_eq!(index.compressed_size, blob.len() as u64, "{context}");
        assert_eq!(index.uncompressed_size, plain.len() as u64, "{context}");

        let (_, checkpoints) = parse_zinfo(&index.zinfo);
        assert!(!checkpoints.is_empty(), "{context}: no checkpoint");
        assert_eq!(checkpoints.len(), index.checkpoint_count, "{context}");
        assert_eq!(checkpoints.len(), index.span_digests.len(), "{context}");
        assert_eq!(checkpoints[0].uncompressed_offset, 0, "{context}");
        assert_eq!(checkpoints[0].bits, 0, "{context}");

        let ranges = span_ranges(&checkpoints, blob.len() as u64, plain.len() as u64);
        for (i, (checkpoint, &((start_c, end_c), (start_u, end_u)))) in
            checkpoints.iter().zip(&ranges).enumerate()
        {
            let context = format!("{context}, span {i}");
            if i > 0 {
                let previous = &checkpoints[i - 1];
                assert!(
                    checkpoint.uncompressed_offset - previous.uncompressed_offset > span_size,
                    "{context}: spans must be longer than the span size"
                );
                assert!(
                    checkpoint.compressed_offset > previous.compressed_offset,
                    "{context}"
                );
            }
            assert!(
                checkpoint.window == expected_window(&plain, start_u),
                "{context}: window"
            );
            let compressed = &blob[start_c..end_c];
            assert_eq!(
                index.span_digests[i].0,
                <[u8; 32]>::from(Sha256::digest(compressed)),
                "{context}: digest"
            );
            let span = inflate_span_to_vec(checkpoint.as_ref(), compressed, end_u - start_u)
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            assert!(span == plain[start_u..end_u], "{context}: span bytes");

            // A slice from the middle, as a lazy read of one file would ask.
            let len = end_u - start_u;
            let skip = len / 3;
            let mut part = vec![0u8; (len - skip).div_ceil(2)];
            inflate_span(checkpoint.as_ref(), compressed, skip as u64, &mut part)
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            assert!(
                part == plain[start_u + skip..start_u + skip + part.len()],
                "{context}"
            );
        }
    }
}

#[test]
fn synthetic_layers_at_every_level() {
    let data = synthetic(1, 3 << 20);
    for level in [0, 1, 6, 9] {
        check_blob(&format!("synthetic level {level}"), &gzip(&data, level));
    }
}

#[test]
fn spans_larger_than_the_output_buffer() {
    // Long stretches of zeros: huge spans and windows across buffer slides.
    let mut data = synthetic(2, 1 << 20);
    data.extend(std::iter::repeat_n(0u8, 6 << 20));
    data.extend(synthetic(3, 1 << 20));
    check_blob("zero-heavy", &gzip(&data, 6));
}

#[test]
fn multi_member_gzip() {
    let a = synthetic(4, 700_000);
    let b = synthetic(5, 5_000);
    let c = synthetic(6, 1_300_000);
    check_blob("three members", &gzip_members(&[&a, &b, &c], 6));
    // An empty member in the middle and at the end.
    check_blob("empty members", &gzip_members(&[&a, b"", &c, b""], 6));
    check_blob("many tiny members", &gzip_members(&[&b"a"[..]; 50], 6));
}

#[test]
fn empty_and_tiny_streams() {
    check_blob("empty", &gzip(b"", 6));
    check_blob("one byte", &gzip(b"x", 6));
    check_blob("tiny", &gzip(b"hello, world\n", 9));
}

#[test]
fn header_with_file_name_moves_checkpoint_zero() {
    let mut encoder = flate2::GzBuilder::new()
        .filename("layer.tar")
        .comment("made by sochi tests")
        .write(Vec::new(), flate2::Compression::new(6));
    std::io::Write::write_all(&mut encoder, &synthetic(7, 200_000)).unwrap();
    let blob = encoder.finish().unwrap();
    let index = crate::testutil::index(&blob, 65536).unwrap();
    let (_, checkpoints) = parse_zinfo(&index.zinfo);
    assert_eq!(
        checkpoints[0].compressed_offset,
        (10 + "layer.tar".len() + 1 + "made by sochi tests".len() + 1) as u64
    );
    check_blob("named", &blob);
}

#[test]
fn fixture_layers() {
    for layer in ["pax-mixed.tar.gz", "gnu-mixed.tar.gz", "multimember.tar.gz"] {
        check_blob(layer, &fixture(layer));
    }
}

// Found with the checkpoint_builder fuzz target (fuzz/, README "Fuzzing"):
// When no output precedes a block boundary (an empty first member, or an
// empty stored block from a sync flush before any data), the reference's
// rule (`totout == 0 || totout - last > span`, docs/format.md §3.2) fires twice at
// uncompressed offset 0 and its zTOC has an empty span 0 that its own
// snapshotter refuses (§1.3). sochi keeps the first checkpoint only, so
// these valid streams index and every span inflates correctly.
#[test]
fn streams_with_no_output_before_a_block_boundary_index() {
    let data = synthetic(8, 100_000);
    check_blob("empty first member", &gzip_members(&[b"", &data], 6));

    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    std::io::Write::flush(&mut encoder).unwrap(); // an empty stored block
    std::io::Write::write_all(&mut encoder, &data).unwrap();
    check_blob("sync flush before any data", &encoder.finish().unwrap());
}
