//! zTOC conformance: sochi must read every zTOC the reference wrote, write
//! it back byte for byte, decode it as the reference's own dump does, print
//! the same `soci ztoc info`, and refuse damaged input without panicking.
//!
//! Fixtures live in `fixtures/` at the top of the repository (see its README).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sochi_format::{
    CompressionAlgorithm, Error, GzipZinfoWriter, Sha256Digest, SpanId, Zinfo, Ztoc, ZtocInfo,
    WINDOW_SIZE,
};

const LAYERS: [&str; 4] = [
    "gnu-mixed.tar.gz",
    "multimember.tar.gz",
    "pax-mixed.tar.gz",
    "plain.tar",
];
const SPAN_SIZES: [u64; 2] = [65536, 4194304];

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

fn read_json(name: &str) -> Value {
    serde_json::from_slice(&read_fixture(name)).unwrap()
}

/// Every fixture zTOC: (stem like "plain.tar.65536", bytes).
fn fixture_ztocs() -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    for layer in LAYERS {
        for span_size in SPAN_SIZES {
            let stem = format!("{layer}.{span_size}");
            let bytes = read_fixture(&format!("{stem}.ztoc"));
            all.push((stem, bytes));
        }
    }
    all
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn as_u64(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: not a u64: {value}"))
}

fn as_i64(value: &Value, what: &str) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: not an i64: {value}"))
}

fn as_str<'v>(value: &'v Value, what: &str) -> &'v str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {value}"))
}

fn expect_corrupt(result: Result<Ztoc, Error>, needle: &str) {
    match result {
        Err(err @ Error::Corrupt { what: "ztoc", .. }) => {
            let text = err.to_string();
            assert!(
                text.contains(needle),
                "error {text:?} does not mention {needle:?}"
            );
        }
        Err(other) => panic!("expected a ztoc corrupt error mentioning {needle:?}, got {other:?}"),
        Ok(_) => panic!("expected an error mentioning {needle:?}, but the zTOC was accepted"),
    }
}

// --- Reading and writing the reference's bytes ------------------------------

#[test]
fn every_fixture_round_trips_byte_for_byte() {
    let sums = String::from_utf8(read_fixture("SHA256SUMS")).unwrap();
    let sums: BTreeMap<&str, &str> = sums
        .lines()
        .filter_map(|line| line.split_once("  "))
        .map(|(digest, name)| (name, digest))
        .collect();
    for (stem, bytes) in fixture_ztocs() {
        let ztoc = Ztoc::from_bytes(&bytes).unwrap_or_else(|err| panic!("{stem}: {err}"));
        let written = ztoc.to_bytes();
        assert_eq!(written.len(), bytes.len(), "{stem}: length");
        assert!(written == bytes, "{stem}: bytes differ from the reference");
        let name = format!("{stem}.ztoc");
        assert_eq!(
            Some(&sha256_hex(&written).as_str()),
            sums.get(name.as_str()),
            "{stem}"
        );
    }
}

#[test]
fn index_v1_ztoc_blobs_round_trip() {
    let dir = fixtures_dir().join("index-v1/blobs/sha256");
    let mut ztocs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.first() == Some(&b'{') {
            continue; // the index manifest and the config
        }
        let ztoc =
            Ztoc::from_bytes(&bytes).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let written = ztoc.to_bytes();
        assert_eq!(
            sha256_hex(&written),
            path.file_name().unwrap().to_str().unwrap()
        );
        ztocs += 1;
    }
    assert_eq!(ztocs, 3);
}

#[test]
fn fields_match_the_reference_dump() {
    for (stem, bytes) in fixture_ztocs() {
        let dump = read_json(&format!("{stem}.dump.json"));
        let ztoc = Ztoc::from_bytes(&bytes).unwrap();
        let ctx = |what: &str| format!("{stem}: {what}");

        assert_eq!(
            ztoc.version,
            as_str(&dump["version"], "version"),
            "{}",
            ctx("version")
        );
        assert_eq!(
            ztoc.build_tool_identifier,
            as_str(&dump["build_tool_identifier"], "build tool")
        );
        assert_eq!(
            ztoc.compressed_archive_size,
            as_i64(&dump["compressed_archive_size"], "c size")
        );
        assert_eq!(
            ztoc.uncompressed_archive_size,
            as_i64(&dump["uncompressed_archive_size"], "u size")
        );
        assert_eq!(
            ztoc.compression.algorithm.as_str(),
            as_str(&dump["compression_algorithm"], "algorithm")
        );
        assert_eq!(
            i64::from(ztoc.compression.max_span_id),
            as_i64(&dump["max_span_id"], "max span id")
        );
        assert_eq!(bytes.len() as u64, as_u64(&dump["size"], "size"));
        assert_eq!(
            format!("sha256:{}", sha256_hex(&bytes)),
            as_str(&dump["digest"], "digest")
        );
        assert_eq!(
            sha256_hex(&ztoc.compression.checkpoints),
            as_str(&dump["checkpoints_sha256"], "cp sha")
        );

        let digests: Vec<String> = ztoc
            .compression
            .span_digests
            .iter()
            .map(|d| d.to_string())
            .collect();
        let expected: Vec<&str> = dump["span_digests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| as_str(d, "span digest"))
            .collect();
        assert_eq!(digests, expected, "{}", ctx("span digests"));

        check_toc(&stem, &ztoc, &dump);
        check_checkpoints(&stem, &ztoc, &dump);
    }
}

fn check_toc(stem: &str, ztoc: &Ztoc, dump: &Value) {
    let entries = dump["toc"].as_array().unwrap();
    assert_eq!(ztoc.toc.len(), entries.len(), "{stem}: entry count");
    let header_offsets = ztoc.tar_header_offsets().unwrap();
    for (index, (entry, expected)) in ztoc.toc.iter().zip(entries).enumerate() {
        let ctx = format!(
            "{stem}: entry {index} ({})",
            String::from_utf8_lossy(&entry.name)
        );
        assert_eq!(
            entry.name,
            as_str(&expected["name"], &ctx).as_bytes(),
            "{ctx}: name"
        );
        assert_eq!(
            entry.entry_type.as_str(),
            as_str(&expected["type"], &ctx),
            "{ctx}: type"
        );
        assert_eq!(
            entry.uncompressed_offset,
            as_i64(&expected["uncompressed_offset"], &ctx),
            "{ctx}"
        );
        assert_eq!(
            entry.uncompressed_size,
            as_i64(&expected["uncompressed_size"], &ctx),
            "{ctx}"
        );
        assert_eq!(
            header_offsets[index],
            as_u64(&expected["tar_header_offset"], &ctx),
            "{ctx}: header"
        );
        assert_eq!(
            entry.linkname,
            as_str(&expected["linkname"], &ctx).as_bytes(),
            "{ctx}: linkname"
        );
        assert_eq!(entry.mode, as_i64(&expected["mode"], &ctx), "{ctx}: mode");
        assert_eq!(
            u64::from(entry.uid),
            as_u64(&expected["uid"], &ctx),
            "{ctx}: uid"
        );
        assert_eq!(
            u64::from(entry.gid),
            as_u64(&expected["gid"], &ctx),
            "{ctx}: gid"
        );
        assert_eq!(
            entry.uname,
            as_str(&expected["uname"], &ctx).as_bytes(),
            "{ctx}: uname"
        );
        assert_eq!(
            entry.gname,
            as_str(&expected["gname"], &ctx).as_bytes(),
            "{ctx}: gname"
        );
        assert_eq!(
            entry.mod_time,
            as_str(&expected["mod_time"], &ctx),
            "{ctx}: mod_time"
        );
        assert_eq!(
            entry.devmajor,
            as_i64(&expected["devmajor"], &ctx),
            "{ctx}: devmajor"
        );
        assert_eq!(
            entry.devminor,
            as_i64(&expected["devminor"], &ctx),
            "{ctx}: devminor"
        );
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = expected["pax_headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), as_str(v, &ctx).as_bytes().to_vec()))
            .collect();
        pax.sort();
        assert_eq!(entry.pax_records, pax, "{ctx}: pax records");
    }
}

fn check_checkpoints(stem: &str, ztoc: &Ztoc, dump: &Value) {
    let geometry = ztoc.span_geometry().unwrap();
    let meta = &dump["checkpoints_meta"];
    let checkpoints = dump["checkpoints"].as_array().unwrap();
    assert_eq!(
        geometry.span_count(),
        checkpoints.len(),
        "{stem}: span count"
    );
    assert_eq!(
        geometry.span_size() as u64,
        as_u64(&meta["span_size"], "span size"),
        "{stem}"
    );
    let zinfo = Zinfo::parse(ztoc.compression.algorithm, &ztoc.compression.checkpoints).unwrap();
    match zinfo {
        Zinfo::Gzip(gzip) => {
            assert_eq!(
                u64::from(gzip.version()),
                as_u64(&meta["zinfo_version"], "version")
            );
            assert_eq!(gzip.len() as u64, as_u64(&meta["header_count"], "count"));
            assert_eq!(
                gzip.span_size() as u64,
                as_u64(&meta["header_span_size"], "span")
            );
        }
        Zinfo::Tar(tar) => {
            assert_eq!(as_str(&meta["format"], "format"), "tar-zinfo flatbuffer");
            // What the reference writes for this layer, byte for byte.
            assert_eq!(
                tar.to_bytes(),
                ztoc.compression.checkpoints,
                "{stem}: tar zinfo bytes"
            );
            assert_eq!(
                tar.size, ztoc.compressed_archive_size,
                "{stem}: tar zinfo size"
            );
        }
        Zinfo::Zstd(_) => panic!("{stem}: the reference writes no zstd zTOC"),
    }
    for (span, expected) in checkpoints.iter().enumerate() {
        let ctx = format!("{stem}: span {span}");
        assert_eq!(as_u64(&expected["index"], &ctx), span as u64);
        let offsets = [
            (
                geometry.start_compressed(SpanId(span)),
                "start_compressed_offset",
            ),
            (
                geometry.end_compressed(SpanId(span)),
                "end_compressed_offset",
            ),
            (
                geometry.start_uncompressed(SpanId(span)),
                "start_uncompressed_offset",
            ),
            (
                geometry.end_uncompressed(SpanId(span)),
                "end_uncompressed_offset",
            ),
        ];
        for (actual, key) in offsets {
            assert_eq!(actual, Some(as_u64(&expected[key], &ctx)), "{ctx}: {key}");
        }
        match ztoc.compression.algorithm {
            CompressionAlgorithm::Gzip => {
                let checkpoint = geometry.checkpoint(SpanId(span)).unwrap();
                assert_eq!(
                    checkpoint.compressed_offset,
                    as_u64(&expected["in"], &ctx),
                    "{ctx}: in"
                );
                assert_eq!(
                    checkpoint.uncompressed_offset,
                    as_u64(&expected["out"], &ctx),
                    "{ctx}: out"
                );
                assert_eq!(
                    u64::from(checkpoint.bits),
                    as_u64(&expected["bits"], &ctx),
                    "{ctx}: bits"
                );
                assert_eq!(checkpoint.window.len(), WINDOW_SIZE);
                assert_eq!(
                    sha256_hex(checkpoint.window),
                    as_str(&expected["window_sha256"], &ctx)
                );
            }
            CompressionAlgorithm::Uncompressed => {
                assert!(geometry.checkpoint(SpanId(span)).is_none())
            }
            CompressionAlgorithm::Zstd => panic!("{ctx}: the reference writes no zstd zTOC"),
        }
    }
    assert_eq!(geometry.start_compressed(SpanId(checkpoints.len())), None);
}

#[test]
fn zinfo_writer_rebuilds_the_reference_blobs() {
    for (stem, bytes) in fixture_ztocs() {
        let ztoc = Ztoc::from_bytes(&bytes).unwrap();
        let Zinfo::Gzip(gzip) =
            Zinfo::parse(ztoc.compression.algorithm, &ztoc.compression.checkpoints).unwrap()
        else {
            continue;
        };
        let mut writer = GzipZinfoWriter::new(gzip.span_size());
        for checkpoint in gzip.checkpoints() {
            writer
                .push(
                    checkpoint.compressed_offset,
                    checkpoint.uncompressed_offset,
                    checkpoint.bits,
                    checkpoint.window,
                )
                .unwrap();
        }
        assert_eq!(writer.len(), gzip.len());
        assert!(
            writer.finish() == ztoc.compression.checkpoints,
            "{stem}: zinfo bytes differ"
        );
    }
}

#[test]
fn v1_zinfo_reads_like_v2() {
    // pax-mixed's first checkpoint sits right after a 10-byte header, which
    // is what a v1 blob implies, so dropping its record gives a v1 blob.
    let bytes = read_fixture("pax-mixed.tar.gz.65536.ztoc");
    let ztoc = Ztoc::from_bytes(&bytes).unwrap();
    let record = 8 + 8 + 1 + WINDOW_SIZE;
    let mut legacy = ztoc.clone();
    let blob = &ztoc.compression.checkpoints;
    legacy.compression.checkpoints = [&blob[..12], &blob[12 + record..]].concat();
    let legacy = Ztoc::from_bytes(&legacy.to_bytes()).unwrap();
    let (old, new) = (
        legacy.span_geometry().unwrap(),
        ztoc.span_geometry().unwrap(),
    );
    let Zinfo::Gzip(gzip) = *old.zinfo() else {
        panic!("not gzip")
    };
    assert_eq!(gzip.version(), 1);
    for span in 0..new.span_count() {
        assert_eq!(
            old.checkpoint(SpanId(span)),
            new.checkpoint(SpanId(span)),
            "span {span}"
        );
        assert_eq!(
            old.end_compressed(SpanId(span)),
            new.end_compressed(SpanId(span))
        );
    }
}

// --- soci ztoc info -----------------------------------------------------------

#[test]
fn info_matches_the_reference() {
    for (stem, bytes) in fixture_ztocs() {
        let ztoc = Ztoc::from_bytes(&bytes).unwrap();
        let info = ZtocInfo::new(&ztoc, bytes.len() as u64).unwrap();
        let ours = serde_json::to_string_pretty(&info).unwrap();

        // The fixture is the reference's output plus `x_*` keys after
        // "files"; drop those lines and the comma they left behind.
        let fixture = String::from_utf8(read_fixture(&format!("{stem}.info.json"))).unwrap();
        let mut expected: Vec<&str> = fixture
            .lines()
            .filter(|line| !line.starts_with("  \"x_"))
            .collect();
        if let Some(position) = expected.iter().rposition(|line| *line == "  ],") {
            expected[position] = "  ]";
        }
        let expected = expected.join("\n");

        let as_value = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        assert_eq!(as_value(&ours), as_value(&expected), "{stem}: info differs");
        // Same text, so also the same key order and layout.
        if ours != expected {
            let line = ours.lines().zip(expected.lines()).position(|(a, b)| a != b);
            panic!("{stem}: info text differs at line {line:?}");
        }
    }
}

#[test]
fn info_of_an_empty_toc_prints_null_files() {
    let mut ztoc = Ztoc::from_bytes(&read_fixture("plain.tar.4194304.ztoc")).unwrap();
    ztoc.toc.clear();
    let info = ZtocInfo::new(&ztoc, 1).unwrap();
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["files"], Value::Null);
    assert_eq!(json["num_files"], 0);
}

// --- Damaged input ------------------------------------------------------------

#[test]
fn truncated_ztoc_is_an_error_at_every_length() {
    for name in ["plain.tar.4194304.ztoc", "pax-mixed.tar.gz.4194304.ztoc"] {
        let bytes = read_fixture(name);
        for len in 0..bytes.len() {
            assert!(
                Ztoc::from_bytes(&bytes[..len]).is_err(),
                "{name} truncated to {len} bytes"
            );
        }
    }
}

/// xorshift64*: deterministic, and no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[test]
fn random_bit_flips_never_panic() {
    let mut rng = Rng(0x5eed_50c1);
    let mut accepted = 0;
    let mut refused = 0;
    for name in [
        "plain.tar.65536.ztoc",
        "gnu-mixed.tar.gz.4194304.ztoc",
        "pax-mixed.tar.gz.65536.ztoc",
    ] {
        let original = read_fixture(name);
        // Flip bits only in the part before the checkpoint windows (most of a
        // gzip zTOC), where they hit structure rather than history bytes.
        let structure = original.len().min(16 * 1024);
        for round in 0..1500 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(4) {
                let at = if round % 4 == 0 {
                    rng.below(bytes.len())
                } else {
                    rng.below(structure)
                };
                bytes[at] ^= 1 << rng.below(8);
            }
            match Ztoc::from_bytes(&bytes) {
                Ok(ztoc) => {
                    accepted += 1;
                    // Whatever was accepted must be usable without panics.
                    let _ = ztoc.to_bytes();
                    let geometry = ztoc.span_geometry().unwrap();
                    let _ = ZtocInfo::new(&ztoc, bytes.len() as u64).unwrap();
                    for span in 0..=geometry.span_count() {
                        let _ = (
                            geometry.start_compressed(SpanId(span)),
                            geometry.end_uncompressed(SpanId(span)),
                        );
                    }
                }
                Err(_) => refused += 1,
            }
        }
    }
    assert!(
        refused > 0 && accepted > 0,
        "accepted {accepted}, refused {refused}"
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = Ztoc::from_bytes(&bytes);
        let _ = Zinfo::parse(CompressionAlgorithm::Uncompressed, &bytes);
        let _ = Zinfo::parse(CompressionAlgorithm::Gzip, &bytes);
    }
}

fn pax_mixed() -> Ztoc {
    Ztoc::from_bytes(&read_fixture("pax-mixed.tar.gz.65536.ztoc")).unwrap()
}

#[test]
fn zinfo_of_wrong_length_is_an_error() {
    let mut ztoc = pax_mixed();
    ztoc.compression.checkpoints.pop();
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "checkpoints");
    let mut ztoc = pax_mixed();
    ztoc.compression.checkpoints.truncate(11);
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "header");
    let mut ztoc = Ztoc::from_bytes(&read_fixture("plain.tar.65536.ztoc")).unwrap();
    ztoc.compression.checkpoints.truncate(8);
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "checkpoints");
}

#[test]
fn max_span_id_mismatch_is_an_error() {
    let mut ztoc = pax_mixed();
    ztoc.compression.max_span_id += 1;
    let extra = ztoc.compression.span_digests[0];
    ztoc.compression.span_digests.push(extra);
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "max_span_id");

    let mut ztoc = Ztoc::from_bytes(&read_fixture("plain.tar.65536.ztoc")).unwrap();
    ztoc.compression.max_span_id -= 1;
    ztoc.compression.span_digests.pop();
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "max_span_id");

    let mut ztoc = pax_mixed();
    ztoc.compression.max_span_id = -1;
    ztoc.compression.span_digests.clear();
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "max_span_id");
}

#[test]
fn wrong_digest_count_is_an_error() {
    let mut ztoc = pax_mixed();
    ztoc.compression.span_digests.pop();
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "span_digests");
    let mut ztoc = pax_mixed();
    ztoc.compression.span_digests.push(Sha256Digest::of(b""));
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "span_digests");
}

#[test]
fn non_monotonic_checkpoints_are_an_error() {
    let record = 8 + 8 + 1 + WINDOW_SIZE;
    let out_of = |index: usize| 12 + index * record + 8;
    let mut ztoc = pax_mixed();
    // Give checkpoint 2 the uncompressed offset of checkpoint 1.
    let (one, two) = (out_of(1), out_of(2));
    let value = ztoc.compression.checkpoints[one..one + 8].to_vec();
    ztoc.compression.checkpoints[two..two + 8].copy_from_slice(&value);
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "checkpoint 2");
    // And checkpoint 3 the compressed offset of checkpoint 2.
    let mut ztoc = pax_mixed();
    let (two, three) = (out_of(2) - 8, out_of(3) - 8);
    let value = ztoc.compression.checkpoints[two..two + 8].to_vec();
    ztoc.compression.checkpoints[three..three + 8].copy_from_slice(&value);
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "checkpoint 3");
    // bits above 7.
    let mut ztoc = pax_mixed();
    ztoc.compression.checkpoints[12 + record + 16] = 9;
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "bits");
}

#[test]
fn last_span_past_the_layer_is_an_error() {
    let mut ztoc = pax_mixed();
    ztoc.compressed_archive_size = 1000;
    expect_corrupt(
        Ztoc::from_bytes(&ztoc.to_bytes()),
        "past the end of the layer",
    );
}

#[test]
fn overlapping_toc_entries_are_an_error() {
    let mut ztoc = pax_mixed();
    // Entry 4 (700,000 bytes of text) now runs into entry 5's header.
    ztoc.toc[4].uncompressed_size += 1024;
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "invalid toc entry");
    assert!(ztoc.tar_header_offsets().is_err());
}

#[test]
fn negative_sizes_are_an_error() {
    let mut ztoc = pax_mixed();
    ztoc.compressed_archive_size = -1;
    expect_corrupt(
        Ztoc::from_bytes(&ztoc.to_bytes()),
        "compressed_archive_size",
    );
    let mut ztoc = pax_mixed();
    ztoc.uncompressed_archive_size = -5;
    expect_corrupt(
        Ztoc::from_bytes(&ztoc.to_bytes()),
        "uncompressed_archive_size",
    );
    let mut ztoc = pax_mixed();
    ztoc.toc[3].uncompressed_size = -1;
    expect_corrupt(Ztoc::from_bytes(&ztoc.to_bytes()), "uncompressed_size");
}

fn replace_once(haystack: &mut [u8], needle: &[u8], replacement: &[u8]) {
    assert_eq!(needle.len(), replacement.len());
    let at = haystack
        .windows(needle.len())
        .position(|window| window == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)));
    haystack[at..at + needle.len()].copy_from_slice(replacement);
}

#[test]
fn unknown_entry_type_is_an_error() {
    let mut bytes = read_fixture("plain.tar.4194304.ztoc");
    replace_once(
        &mut bytes,
        b"\x04\x00\x00\x00fifo\x00",
        b"\x04\x00\x00\x00fif0\x00",
    );
    expect_corrupt(Ztoc::from_bytes(&bytes), "unknown type");
}

#[test]
fn malformed_span_digest_is_an_error() {
    let mut bytes = read_fixture("plain.tar.4194304.ztoc");
    let ztoc = Ztoc::from_bytes(&bytes).unwrap();
    let digest = ztoc.compression.span_digests[0].to_string();
    let upper = digest.replace("sha256:", "SHA256:");
    replace_once(&mut bytes, digest.as_bytes(), upper.as_bytes());
    expect_corrupt(Ztoc::from_bytes(&bytes), "span_digests[0]");
}

/// Where field `slot` of the table at `table` is stored (trusted input).
fn field_position(bytes: &[u8], table: usize, slot: usize) -> usize {
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let soffset = i32::from_le_bytes(bytes[table..table + 4].try_into().unwrap());
    let vtable = (table as i64 - i64::from(soffset)) as usize;
    let voffset = u16_at(vtable + 4 + 2 * slot);
    assert_ne!(voffset, 0, "field {slot} is absent");
    table + voffset
}

fn follow(bytes: &[u8], at: usize) -> usize {
    at + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

#[test]
fn unknown_compression_algorithm_is_an_error() {
    let mut bytes = read_fixture("plain.tar.4194304.ztoc");
    let root = follow(&bytes, 0);
    let info = follow(&bytes, field_position(&bytes, root, 5));
    let algorithm = field_position(&bytes, info, 0);
    assert_eq!(bytes[algorithm], 2, "uncompressed");
    bytes[algorithm] = 4;
    expect_corrupt(Ztoc::from_bytes(&bytes), "compression_algorithm");
    // 3 is sochi's zstd (docs/zstd.md): its checkpoints must then be a
    // zstd zinfo, which a tar zinfo is not.
    bytes[algorithm] = 3;
    expect_corrupt(Ztoc::from_bytes(&bytes), "zstd zinfo");
}

#[test]
fn missing_tables_are_an_error() {
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let version = builder.create_string("0.9");
    let start = builder.start_table();
    builder.push_slot_always(4, version);
    let root = builder.end_table(start);
    builder.finish_minimal(root);
    expect_corrupt(Ztoc::from_bytes(builder.finished_data()), "Ztoc.toc");
}

#[test]
fn shared_tables_cannot_blow_up_memory() {
    // A TOC whose 100,000 entries all point at one table: 400 KB of
    // offsets that would decode to 100,000 copies of a 64 KiB name.
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let name = builder.create_string(&"x".repeat(65536));
    let kind = builder.create_string("reg");
    let start = builder.start_table();
    builder.push_slot_always(4, name);
    builder.push_slot_always(6, kind);
    let entry = builder.end_table(start);
    let entries = builder.create_vector(&vec![entry; 100_000]);
    let start = builder.start_table();
    builder.push_slot_always(4, entries);
    let toc = builder.end_table(start);
    let start = builder.start_table();
    builder.push_slot_always(12, toc);
    let root = builder.end_table(start);
    builder.finish_minimal(root);
    expect_corrupt(
        Ztoc::from_bytes(builder.finished_data()),
        "referenced more than once",
    );
}
