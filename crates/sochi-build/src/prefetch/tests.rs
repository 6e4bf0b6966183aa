//! Prefetch artifacts by the rules of docs/format.md §3.8, on the
//! reference's zTOCs of the fixtures (span size 65536) and on small tar
//! layers made here (span size 512, so that span = offset / 512).

use std::path::Path;

use sochi_format::{media_types, Descriptor, Sha256Digest, Ztoc};

use super::*;
use crate::layer::{build_layer_ztoc, LayerCompression, LayerOptions};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn fixture_ztoc(name: &str) -> Ztoc {
    let bytes = std::fs::read(Path::new(FIXTURES).join(name)).unwrap();
    Ztoc::from_bytes(&bytes).unwrap()
}

/// A layer descriptor named by `name` (its digest is that of the name).
fn layer(name: &str) -> Descriptor {
    Descriptor::of(media_types::OCI_LAYER_GZIP, name.as_bytes())
}

fn paths(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| p.to_string()).collect()
}

fn span(start_span: i32, end_span: i32) -> PrefetchSpan {
    PrefetchSpan {
        start_span,
        end_span,
        priority: 0,
    }
}

/// Where each path was found: `(layer, start, end)`, `None` if nowhere.
fn hits(build: &PrefetchBuild) -> Vec<Option<(Digest, i32, i32)>> {
    build
        .paths
        .iter()
        .map(|p| {
            p.found
                .as_ref()
                .map(|h| (h.layer.clone(), h.start_span, h.end_span))
        })
        .collect()
}

/// A tar header (V7) for `name`.
fn header(name: &str, typeflag: u8, size: usize, linkname: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"14540000000");
    h[156] = typeflag;
    h[157..157 + linkname.len()].copy_from_slice(linkname.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// A tar of `(name, typeflag, size, linkname)` entries.
fn tar(entries: &[(&str, u8, usize, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, typeflag, size, linkname) in entries {
        out.extend_from_slice(&header(name, *typeflag, *size, linkname));
        out.extend(std::iter::repeat_n(b'x', *size));
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The zTOC of `tar` at span size 512.
fn tar_ztoc(tar: &[u8]) -> Ztoc {
    let options = LayerOptions {
        span_size: 512,
        compression: LayerCompression::Uncompressed,
        expect: None,
        source_verifies_digest: false,
    };
    build_layer_ztoc(tar, &options, "test", &|_| {})
        .unwrap()
        .ztoc
}

#[test]
fn paths_are_cleaned_like_go_path_clean_from_the_root() {
    for (path, cleaned) in [
        ("x", "x"),
        ("/x", "x"),
        ("./x", "x"),
        ("x/", "x"),
        ("a/../x", "x"),
        ("../../x", "x"),
        ("/a//b/./c/", "a/b/c"),
        ("/", ""),
        (".", ""),
        ("ünï/./名前", "ünï/名前"),
    ] {
        assert_eq!(clean_prefetch_path(path), cleaned, "{path:?}");
    }
}

#[test]
fn path_lists_are_trimmed_and_read_as_go_reads_a_json_string_array() {
    assert_eq!(
        trim_prefetch_paths([" a ", "", "\t\n", "b\u{a0}", "c d"]),
        paths(&["a", "b", "c d"])
    );
    assert_eq!(
        prefetch_paths_from_json(br#"[" /app/x ", "", null, "y,z"]"#).unwrap(),
        paths(&["/app/x", "y,z"])
    );
    assert!(prefetch_paths_from_json(b"null").unwrap().is_empty());
    assert!(prefetch_paths_from_json(b" [] ").unwrap().is_empty());
    for bad in [&b"{}"[..], b"[1]", b"\"x\"", b"[\"x\"", b"", b"[] []"] {
        let err = prefetch_paths_from_json(bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("a JSON array of prefetch paths: invalid json"),
            "{err}"
        );
    }
}

#[test]
fn a_synthetic_layer_maps_each_kind_of_entry_to_its_spans() {
    // Span size 512: each entry's data starts one block after its header.
    let tar = tar(&[
        ("d", b'5', 0, ""),       // header 0, offset 512: span 1
        ("big", b'0', 1500, ""),  // offset 1024..2524: spans 2..=4
        ("dup", b'0', 10, ""),    // header 2560, offset 3072: span 6
        ("link", b'1', 0, "big"), // header 3584, offset 4096: span 8
        ("dup", b'0', 10, ""),    // header 4096, offset 4608: span 9
        ("exact", b'0', 512, ""), // offset 5632..6144: the end is span 12
        ("./dotted", b'0', 1, ""),
        ("sub/", b'5', 0, ""),
    ]);
    let ztoc = tar_ztoc(&tar);
    let layer = layer("synthetic");
    let build = build_prefetch(
        &paths(&[
            "d", "/d/", "big", "dup", "link", "exact", "dotted", "./dotted", "sub",
        ]),
        &[(&layer, Some(&ztoc))],
    );
    let at = |start, end| Some((layer.digest.clone(), start, end));
    assert_eq!(
        hits(&build),
        vec![
            at(1, 1),   // a directory stored without a trailing slash
            at(1, 1),   // the same, asked as "/d/"
            at(2, 4),   // a file over three spans
            at(6, 6),   // the first of two entries with one name wins
            at(8, 8),   // a hardlink: its own offset, not its target's data
            at(11, 12), // an end offset on a span boundary takes the next span
            None,       // stored as "./dotted": the raw name never matches
            None,       // the same
            None,       // stored as "sub/": never matches
        ]
    );
    assert_eq!(build.blobs.len(), 1);
    assert_eq!(
        build.blobs[0].artifact.prefetch_spans,
        vec![span(1, 4), span(6, 6), span(8, 8), span(11, 12)]
    );
}

#[test]
fn fixture_spans_are_those_ztoc_info_reports() {
    // pax-mixed.tar.gz at span size 65536, as `soci ztoc info` lists it.
    let ztoc = fixture_ztoc("pax-mixed.tar.gz.65536.ztoc");
    let layer = layer("pax");
    let build = build_prefetch(
        &paths(&[
            "data/text-700k.txt",   // 0..=2
            "/many/f024",           // 8..=9
            "data/hard",            // hardlink: 7..=7
            "./data/text-700k.txt", // again, as ./x
            "data/../many/f002",    // 7..=8, as a/../x
            "many/f039/",           // 10..=10, as x/
            "etc",                  // stored as "etc/"
            "etc/",                 // the same
            "dot-prefixed",         // stored as "./dot-prefixed"
            "no/such/file",         // in no layer
        ]),
        &[(&layer, Some(&ztoc))],
    );
    let at = |start, end| Some((layer.digest.clone(), start, end));
    assert_eq!(
        hits(&build),
        vec![
            at(0, 2),
            at(8, 9),
            at(7, 7),
            at(0, 2),
            at(7, 8),
            at(10, 10),
            None,
            None,
            None,
            None
        ]
    );
    // 0..=2 stays apart from 7..=7 (3 < 7); 7..=8, 8..=9 and 10..=10
    // overlap or touch.
    let blob = &build.blobs[0];
    assert_eq!(blob.artifact.prefetch_spans, vec![span(0, 2), span(7, 10)]);
    assert_eq!(
        std::str::from_utf8(&blob.bytes).unwrap(),
        r#"{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":2},{"start_span":7,"end_span":10}]}"#
    );
    assert_eq!(blob.descriptor.media_type, media_types::SOCI_PREFETCH);
    assert_eq!(
        blob.descriptor.digest,
        Digest::from(Sha256Digest::of(&blob.bytes))
    );
    assert_eq!(
        blob.descriptor.size,
        i64::try_from(blob.bytes.len()).unwrap()
    );
    assert_eq!(
        blob.descriptor
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        vec![(annotations::LAYER_DIGEST, layer.digest.as_str())]
    );
    assert!(blob.descriptor.urls.is_empty());
    assert!(blob.descriptor.platform.is_none() && blob.descriptor.artifact_type.is_none());
}

#[test]
fn the_top_layer_with_a_ztoc_wins_and_artifacts_follow_layer_order() {
    let pax = fixture_ztoc("pax-mixed.tar.gz.65536.ztoc");
    let gnu = fixture_ztoc("gnu-mixed.tar.gz.65536.ztoc");
    let plain = fixture_ztoc("plain.tar.65536.ztoc");
    let synthetic = tar_ztoc(&tar(&[("only-here", b'0', 700, "")]));
    let (bottom, middle, top, unindexed) = (
        layer("bottom"),
        layer("middle"),
        layer("top"),
        layer("none"),
    );
    let layers = [
        (&bottom, Some(&synthetic)),
        (&middle, Some(&pax)),
        (&top, Some(&gnu)),
        (&unindexed, None),
    ];
    let build = build_prefetch(
        &paths(&["data/random-300k.bin", "only-here", "etc/passwd"]),
        &layers,
    );
    assert_eq!(
        hits(&build),
        vec![
            Some((top.digest.clone(), 2, 6)), // gnu-mixed: 2..=6 (pax-mixed: 2..=7)
            Some((bottom.digest.clone(), 1, 2)),
            Some((top.digest.clone(), 0, 0)),
        ]
    );
    // Bottom first, whatever the order of the paths.
    let layers_of: Vec<&Digest> = build.blobs.iter().map(|b| &b.layer.digest).collect();
    assert_eq!(layers_of, vec![&bottom.digest, &top.digest]);
    assert_eq!(
        build.blobs[1].artifact.prefetch_spans,
        vec![span(0, 0), span(2, 6)]
    );

    // Without a zTOC on the top layer, the one below provides the file.
    let build = build_prefetch(
        &paths(&["data/random-300k.bin"]),
        &[(&middle, Some(&plain)), (&top, None)],
    );
    assert_eq!(hits(&build), vec![Some((middle.digest.clone(), 10, 15))]);
}

#[test]
fn paths_in_no_layer_make_no_artifact_and_no_error() {
    let pax = fixture_ztoc("pax-mixed.tar.gz.65536.ztoc");
    let layer = layer("pax");
    let build = build_prefetch(
        &paths(&["missing", "/data", "trailing-dir"]),
        &[(&layer, Some(&pax))],
    );
    assert!(build.blobs.is_empty());
    assert_eq!(hits(&build), vec![None, None, None]);
    assert_eq!(build.paths[1].cleaned, "data");
    assert!(build_prefetch(&[], &[(&layer, Some(&pax))])
        .paths
        .is_empty());
}

#[test]
fn a_layer_listed_twice_gets_its_artifact_twice() {
    // The reference keys layers by digest and walks the manifest's list.
    let pax = fixture_ztoc("pax-mixed.tar.gz.65536.ztoc");
    let layer = layer("pax");
    let build = build_prefetch(
        &paths(&["etc/passwd"]),
        &[(&layer, Some(&pax)), (&layer, Some(&pax))],
    );
    assert_eq!(build.blobs.len(), 2);
    assert_eq!(build.blobs[0].descriptor, build.blobs[1].descriptor);
}

/// A load order of `(layer, start_offset, end_offset)` runs.
fn load_order(runs: &[(&Descriptor, u64, u64)]) -> LoadOrder {
    LoadOrder {
        version: sochi_format::LOAD_ORDER_VERSION,
        image: "img".into(),
        complete: true,
        layers: runs
            .iter()
            .map(|(layer, _, _)| sochi_format::LoadLayer {
                digest: layer.digest.to_string(),
                ..Default::default()
            })
            .collect(),
        runs: runs
            .iter()
            .map(|(layer, start, end)| sochi_format::LoadRun {
                layer: layer.digest.to_string(),
                start_offset: *start,
                end_offset: *end,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn prioritized(start_span: i32, end_span: i32, priority: i64) -> PrefetchSpan {
    PrefetchSpan {
        start_span,
        end_span,
        priority,
    }
}

#[test]
fn a_load_order_keeps_first_use_order_and_maps_bytes_to_this_ztocs_spans() {
    // 8 spans of 512 bytes per layer.
    let bytes = tar(&[("a", b'0', 3000, ""), ("b", b'0', 100, "")]);
    let ztoc = tar_ztoc(&bytes);
    let (lower, upper, other) = (layer("lower"), layer("upper"), layer("not-in-image"));
    let order = load_order(&[
        (&upper, 2048, 2560), // span 4
        (&lower, 1024, 2048), // spans 2..=3 (the recording's spans were bigger)
        (&upper, 512, 1024),  // span 1
        (&other, 0, 512),     // a layer the image has not
        (&upper, 2100, 3000), // spans 4 (listed) and 5: 5 only, merged into 4
        (&lower, 0, 10),      // span 0, later
    ]);
    let build = build_load_order_prefetch(&order, &[(&lower, Some(&ztoc)), (&upper, Some(&ztoc))]);
    assert_eq!(build.unmatched_layers, [other.digest.to_string()]);
    let artifacts: Vec<_> = build
        .blobs
        .iter()
        .map(|b| (b.layer.digest.clone(), b.artifact.prefetch_spans.clone()))
        .collect();
    assert_eq!(
        artifacts,
        [
            (
                lower.digest.clone(),
                vec![prioritized(2, 3, 1), prioritized(0, 0, 5)]
            ),
            (
                upper.digest.clone(),
                vec![
                    prioritized(4, 4, 0),
                    prioritized(1, 1, 2),
                    prioritized(5, 5, 4)
                ]
            ),
        ]
    );
    // Bytes the reference parses: the same ranges, priorities included.
    for blob in &build.blobs {
        let parsed = PrefetchArtifact::from_bytes(&blob.bytes).unwrap();
        assert_eq!(parsed, blob.artifact);
        parsed
            .validate_against(
                &blob.descriptor.digest,
                ztoc.span_geometry().unwrap().span_count(),
            )
            .unwrap();
        assert_eq!(blob.descriptor.media_type, media_types::SOCI_PREFETCH);
    }
}

#[test]
fn a_load_order_past_the_layers_end_or_for_layers_without_ztoc_builds_nothing_for_them() {
    let bytes = tar(&[("a", b'0', 600, "")]);
    let ztoc = tar_ztoc(&bytes);
    let (lazy, unpacked) = (layer("lazy"), layer("unpacked"));
    let order = load_order(&[(&lazy, 1 << 40, (1 << 40) + 10), (&unpacked, 0, 512)]);
    let build = build_load_order_prefetch(&order, &[(&lazy, Some(&ztoc)), (&unpacked, None)]);
    assert!(build.blobs.is_empty());
    assert_eq!(build.unmatched_layers, [unpacked.digest.to_string()]);
}
