//! Multi-frame zstd layers made here (a tar cut into pieces, each piece
//! one frame, a skippable frame at the end) are indexed at frame
//! boundaries and read back, file by file, through the span manager.

use std::collections::HashMap;
use std::sync::Arc;

use sochi_format::{media_types, zstd_frames, EntryType, FrameZinfo, IndexVersion, Ztoc};

use super::*;
use crate::index::tests::{linux_image, MemorySource};
use crate::{
    build_index, build_layer_ztoc, BuildOptions, LayerCompression, LayerOptions, LayerOutcome,
};

/// Bytes that compress somewhat but not to nothing: text with a counter
/// and a cheap pseudo-random tail per line.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut line = 0u64;
    while out.len() < len {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.extend_from_slice(format!("line {line} of file {seed}: {state:016x}\n").as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

/// A tar of regular files `(name, size)`, ended by two zero blocks and
/// then padded to a 10240-byte record, as GNU tar writes it (the padding
/// is decoded but lies past the tar's end).
fn tar(files: &[(&str, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (seed, (name, size)) in files.iter().enumerate() {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"14540000000");
        h[156] = b'0';
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend(content(*size, seed as u64));
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out.resize(out.len().div_ceil(10240) * 10240, 0);
    out
}

fn files() -> Vec<(&'static str, usize)> {
    vec![
        ("empty", 0),
        ("small", 100),
        ("big", 700_000),
        ("middle", 123_457),
        ("across", 300_001),
        ("last", 4096),
    ]
}

/// A skippable frame (RFC 8878 §3.1.2) holding `data`.
fn skippable(data: &[u8]) -> Vec<u8> {
    let mut frame = 0x184D_2A50u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
    frame.extend_from_slice(data);
    frame
}

/// `bytes` cut into pieces of `piece` bytes, each compressed as one frame,
/// then a skippable frame; with the uncompressed start of every frame.
fn frames_of(bytes: &[u8], piece: usize) -> (Vec<u8>, Vec<u64>) {
    let mut blob = Vec::new();
    let mut starts = Vec::new();
    for (i, chunk) in bytes.chunks(piece).enumerate() {
        starts.push((i * piece) as u64);
        blob.extend(zstd::bulk::compress(chunk, 3).unwrap());
    }
    starts.push(bytes.len() as u64);
    blob.extend(skippable(b"a table of contents, say"));
    (blob, starts)
}

fn zstd_options(span_size: u64) -> LayerOptions {
    LayerOptions {
        span_size,
        compression: LayerCompression::Zstd,
        expect: None,
        source_verifies_digest: false,
    }
}

/// Everything a zTOC of `blob` (frames of `tar`) must be, checked.
fn check_ztoc(tar: &[u8], blob: &[u8], uncompressed_starts: &[u64], span_size: u64) {
    let built = build_layer_ztoc(blob, &zstd_options(span_size), "test", &|_| {}).unwrap();
    let ztoc = &built.ztoc;
    assert_eq!(ztoc.compression.algorithm, CompressionAlgorithm::Zstd);
    assert_eq!(ztoc.compressed_archive_size, blob.len() as i64);
    assert_eq!(ztoc.uncompressed_archive_size, tar.len() as i64);
    assert_eq!(Ztoc::from_bytes(&built.bytes).unwrap(), *ztoc);
    assert!(ztoc.has_tar_headers());

    let frames = zstd_frames(blob).unwrap();
    let zinfo = FrameZinfo::parse(&ztoc.compression.checkpoints).unwrap();
    assert!(!zinfo.uncompressed_digests());
    assert_eq!(zinfo.len(), ztoc.compression.span_digests.len());
    let mut next_start = 0;
    for i in 0..zinfo.len() {
        let span = zinfo.span(i).unwrap();
        // Spans tile the blob, each starting at a frame start.
        assert_eq!(span.compressed.start, next_start, "span {i}");
        next_start = span.compressed.end;
        let frame = frames
            .iter()
            .position(|f| f.offset == span.compressed.start)
            .unwrap_or_else(|| panic!("span {i} does not start at a frame: {span:?}"));
        assert_eq!(
            span.uncompressed_start, uncompressed_starts[frame],
            "span {i}"
        );
        let end = zinfo
            .span(i + 1)
            .map_or(tar.len() as u64, |next| next.uncompressed_start);
        if i + 1 < zinfo.len() {
            assert!(end - span.uncompressed_start >= span_size, "span {i} short");
        }
        let compressed = &blob[span.compressed.start as usize..span.compressed.end as usize];
        assert_eq!(
            ztoc.compression.span_digests[i],
            Sha256Digest::of(compressed),
            "span {i}"
        );
    }
    assert_eq!(next_start, blob.len() as u64);

    let manager = sochi_spans::SpanManager::new(
        ztoc,
        Arc::new(sochi_spans::MemoryBlob::new(blob.to_vec())),
        None,
    )
    .unwrap();
    let names: Vec<_> = ztoc.toc.iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        names,
        files()
            .iter()
            .map(|(n, _)| n.as_bytes().to_vec())
            .collect::<Vec<_>>()
    );
    for entry in &ztoc.toc {
        assert_eq!(entry.entry_type, EntryType::Regular);
        let offset = entry.uncompressed_offset as usize;
        let mut buf = vec![0; entry.uncompressed_size as usize];
        let n = manager.read(offset as u64, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        assert!(buf == tar[offset..offset + n], "{:?}", entry.name);
    }
    // The whole stream, padding included, reads back too.
    let mut all = vec![0; tar.len()];
    assert_eq!(manager.read(0, &mut all).unwrap(), tar.len());
    assert!(all == tar);
    // And `sochi ztoc get-file`'s extraction gives each file too.
    for entry in &ztoc.toc {
        let mut out = Vec::new();
        crate::extract_file(ztoc, &mut std::io::Cursor::new(blob), entry, &mut out).unwrap();
        let offset = entry.uncompressed_offset as usize;
        assert!(out == tar[offset..offset + out.len()], "{:?}", entry.name);
        assert_eq!(out.len() as i64, entry.uncompressed_size);
    }
}

#[test]
fn spans_start_at_frame_boundaries_and_files_read_back() {
    let tar = tar(&files());
    // Frames that cut through headers and files alike.
    let (blob, starts) = frames_of(&tar, 50_000);
    for span_size in [1, 64 << 10, 200_000, 4 << 20] {
        check_ztoc(&tar, &blob, &starts, span_size);
    }
}

#[test]
fn frames_that_decode_to_nothing_go_with_the_span_after_them() {
    let tar = tar(&files());
    let mut blob = skippable(b"first");
    let mut starts = vec![0];
    // After each data frame, an empty frame and a skippable one.
    let mut empty_frames = Vec::new();
    for (i, chunk) in tar.chunks(256 << 10).enumerate() {
        starts.push((i * (256 << 10)) as u64);
        blob.extend(zstd::bulk::compress(chunk, 1).unwrap());
        let end = (i * (256 << 10) + chunk.len()) as u64;
        empty_frames.push(blob.len() as u64);
        starts.push(end);
        blob.extend(zstd::bulk::compress(&[], 1).unwrap());
        starts.push(end);
        blob.extend(skippable(b"between"));
    }
    check_ztoc(&tar, &blob, &starts, 100_000);
    let built = build_layer_ztoc(&blob[..], &zstd_options(100_000), "test", &|_| {}).unwrap();
    let zinfo = FrameZinfo::parse(&built.ztoc.compression.checkpoints).unwrap();
    // Each data frame is a span: the leading skippable frame is span 0's,
    // and every other span starts at the empty frame before its data.
    assert_eq!(zinfo.len(), tar.len().div_ceil(256 << 10));
    for i in 1..zinfo.len() {
        assert_eq!(zinfo.span(i).unwrap().compressed.start, empty_frames[i - 1]);
    }
}

#[test]
fn one_frame_is_not_indexable() {
    let tar = tar(&files());
    let mut blob = zstd::bulk::compress(&tar, 3).unwrap();
    blob.extend(skippable(b"not a frame of data"));
    let err = build_layer_ztoc(&blob[..], &zstd_options(1 << 10), "one", &|_| {}).unwrap_err();
    match err {
        Error::NotIndexable { layer, reason } => {
            assert_eq!(layer, "one");
            assert_eq!(reason, SINGLE_FRAME_REASON);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_truncated_or_corrupt_blob_is_an_error() {
    let tar = tar(&files());
    let (blob, _) = frames_of(&tar, 50_000);
    let frames = zstd_frames(&blob).unwrap();
    // Cut inside the last data frame: the tar is whole, the blob is not.
    let cut = (frames[frames.len() - 2].offset + 3) as usize;
    let err = build_layer_ztoc(&blob[..cut], &zstd_options(1 << 16), "cut", &|_| {}).unwrap_err();
    assert!(
        err.to_string().contains("cut") && format!("{err:#?}").contains("ends inside a frame"),
        "{err:#?}"
    );
    let mut garbage = blob.clone();
    garbage.extend_from_slice(b"not zstd at all");
    let err = build_layer_ztoc(&garbage[..], &zstd_options(1 << 16), "bad", &|_| {}).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(build_layer_ztoc(&[][..], &zstd_options(1 << 16), "empty", &|_| {}).is_err());
}

/// An image of a gzip layer, a multi-frame zstd layer and a one-frame
/// zstd layer, indexed with and without `zstd_frames`: only the flag gets
/// the multi-frame layer a zTOC, and the one-frame layer never has one.
#[test]
fn zstd_layers_are_indexed_only_with_the_flag() {
    let tar = tar(&files());
    let mut source = MemorySource(HashMap::new());
    let config = source.add(media_types::OCI_CONFIG, b"{}".to_vec());
    let gzip = {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&tar).unwrap();
        source.add(media_types::OCI_LAYER_GZIP, encoder.finish().unwrap())
    };
    let multi = source.add(media_types::OCI_LAYER_ZSTD, frames_of(&tar, 100_000).0);
    let single = source.add(
        media_types::DOCKER_LAYER_ZSTD,
        zstd::bulk::compress(&tar, 3).unwrap(),
    );
    let image = linux_image(config, vec![gzip.clone(), multi.clone(), single.clone()]);
    let mut options = BuildOptions {
        span_size: 1 << 16,
        min_layer_size: 0,
        jobs: 2,
        ..BuildOptions::default()
    };
    let reasons = |built: &crate::BuiltIndex| -> Vec<Option<String>> {
        built
            .layers
            .iter()
            .map(|(_, outcome)| match outcome {
                LayerOutcome::Skipped { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    };

    let without = build_index(&source, &image, IndexVersion::V1, &options, None, &|_| {}).unwrap();
    assert_eq!(
        reasons(&without),
        vec![
            None,
            Some(format!(
                "compressed in an unsupported format ({})",
                media_types::OCI_LAYER_ZSTD
            )),
            Some(format!(
                "compressed in an unsupported format ({})",
                media_types::DOCKER_LAYER_ZSTD
            )),
        ]
    );
    assert_eq!(without.index.ztocs().count(), 1);

    options.zstd_frames = true;
    let with = build_index(&source, &image, IndexVersion::V1, &options, None, &|_| {}).unwrap();
    assert_eq!(
        reasons(&with),
        vec![None, None, Some(SINGLE_FRAME_REASON.to_string())]
    );
    // The gzip layer's zTOC is the one built without the flag.
    assert_eq!(with.index.blobs[0], without.index.blobs[0]);
    let ztoc = with.index.ztoc_for_layer(&multi.digest).unwrap();
    assert_eq!(
        ztoc.annotations[sochi_format::annotations::SPAN_SIZE],
        "65536"
    );
    let (_, _, built) = with
        .built_ztocs()
        .find(|(layer, _, _)| layer.digest == multi.digest)
        .unwrap();
    assert_eq!(built.ztoc.compression.algorithm, CompressionAlgorithm::Zstd);
    assert!(with.index.ztoc_for_layer(&single.digest).is_none());
}
