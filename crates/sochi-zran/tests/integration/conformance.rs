//! Conformance: checkpoints, span digests and zinfo bytes equal what the
//! reference computed for the shared fixtures.

use std::io::Read as _;

use serde_json::Value;
use sochi_zran::CheckpointingReader;

use crate::testutil::{fixture, parse_zinfo, sha256_hex};

const LAYERS: &[&str] = &["pax-mixed.tar.gz", "gnu-mixed.tar.gz", "multimember.tar.gz"];
const SPAN_SIZES: &[u64] = &[65536, 4194304];

fn dump(layer: &str, span_size: u64) -> Value {
    let text = fixture(&format!("{layer}.{span_size}.dump.json"));
    serde_json::from_slice(&text).unwrap()
}

fn check_against_reference(layer: &str, span_size: u64, index: &sochi_zran::GzipLayerIndex) {
    let context = format!("{layer} at span size {span_size}");
    let dump = dump(layer, span_size);
    let (zinfo_span_size, checkpoints) = parse_zinfo(&index.zinfo);
    assert_eq!(zinfo_span_size as u64, span_size, "{context}");

    let expected = dump["checkpoints"].as_array().unwrap();
    assert_eq!(
        checkpoints.len(),
        expected.len(),
        "{context}: checkpoint count"
    );
    assert_eq!(index.checkpoint_count, expected.len(), "{context}");
    for (i, (ours, theirs)) in checkpoints.iter().zip(expected).enumerate() {
        let got = (
            ours.compressed_offset,
            ours.uncompressed_offset,
            u64::from(ours.bits),
            sha256_hex(&ours.window),
        );
        let want = (
            theirs["in"].as_u64().unwrap(),
            theirs["out"].as_u64().unwrap(),
            theirs["bits"].as_u64().unwrap(),
            theirs["window_sha256"].as_str().unwrap().to_owned(),
        );
        assert_eq!(got, want, "{context}: checkpoint {i}");
    }

    let span_digests: Vec<String> = index.span_digests.iter().map(|d| d.to_string()).collect();
    let expected_digests: Vec<&str> = dump["span_digests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(span_digests, expected_digests, "{context}: span digests");

    assert_eq!(
        sha256_hex(&index.zinfo),
        dump["checkpoints_sha256"].as_str().unwrap(),
        "{context}: zinfo bytes"
    );
    assert_eq!(
        index.zinfo.len() as u64,
        dump["checkpoints_meta"]["blob_bytes"].as_u64().unwrap(),
        "{context}"
    );
    assert_eq!(
        index.compressed_size,
        dump["compressed_archive_size"].as_u64().unwrap(),
        "{context}"
    );
}

#[test]
fn fixtures_index_like_the_reference() {
    for layer in LAYERS {
        let blob = fixture(layer);
        for &span_size in SPAN_SIZES {
            let index = CheckpointingReader::new(&blob[..], span_size)
                .unwrap()
                .finish()
                .unwrap();
            check_against_reference(layer, span_size, &index);
        }
    }
}

/// The caller's read pattern (tiny reads, then a drain) must not move any
/// checkpoint.
#[test]
fn fixtures_index_the_same_whatever_the_read_pattern() {
    for layer in LAYERS {
        let blob = fixture(layer);
        let mut reader = CheckpointingReader::new(&blob[..], 65536).unwrap();
        let mut buf = [0u8; 7];
        let mut read = 0u64;
        while read < 1_000_000 {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0);
            read += n as u64;
            assert_eq!(reader.uncompressed_position(), read);
        }
        check_against_reference(layer, 65536, &reader.finish().unwrap());
    }
}

/// The reference zTOC holds, byte for byte, the zinfo we produce.
#[test]
fn zinfo_is_embedded_in_the_reference_ztoc() {
    for layer in LAYERS {
        let blob = fixture(layer);
        for &span_size in SPAN_SIZES {
            let index = CheckpointingReader::new(&blob[..], span_size)
                .unwrap()
                .finish()
                .unwrap();
            let ztoc = fixture(&format!("{layer}.{span_size}.ztoc"));
            // The checkpoints vector is stored verbatim inside the FlatBuffer.
            let zinfo = index.zinfo.as_slice();
            assert!(
                ztoc.windows(zinfo.len()).any(|w| w == zinfo),
                "{layer} {span_size}: zinfo not found in the ztoc"
            );
        }
    }
}
