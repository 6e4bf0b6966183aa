//! zstd:chunked layers made here, in Rust, the way containers/storage lays
//! them out (a frame per tar header run, a frame per chunk of file data,
//! holes as frames of zeros, chunk digests of the uncompressed chunk),
//! served through the span manager: right bytes, one request per chunk
//! read, bad chunks never served.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use sochi_format::{ChunkedToc, EntryType, Sha256Digest, Ztoc};

use crate::{BackgroundOptions, Error, LayerMetrics, MemoryBlob, SpanManager};

/// A file of the test layer: its name and content as chunks (a chunk of
/// zeros is a hole, marked so in the table).
struct TestFile {
    name: &'static str,
    chunks: Vec<Vec<u8>>,
}

struct ChunkedLayer {
    blob: Vec<u8>,
    ztoc: Ztoc,
    /// `(name, content, compressed range of the first chunk)`.
    files: Vec<(String, Vec<u8>, std::ops::Range<usize>)>,
}

fn frame(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}

fn digest(data: &[u8]) -> String {
    Sha256Digest::of(data).to_string()
}

fn test_files() -> Vec<TestFile> {
    let text = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| b'a' + ((i * 7 + usize::from(seed)) % 26) as u8)
            .collect()
    };
    vec![
        TestFile {
            name: "etc/hostname",
            chunks: vec![b"sochi\n".to_vec()],
        },
        TestFile {
            name: "usr/bin/tool",
            chunks: vec![text(70_000, 1), vec![0; 9000], text(50_000, 2)],
        },
        TestFile {
            name: "usr/lib/data",
            chunks: vec![text(200_000, 3)],
        },
    ]
}

fn chunked_layer() -> ChunkedLayer {
    let mut blob = Vec::new();
    let mut entries = vec![
        r#"{"type":"dir","name":"etc/","mode":493}"#.to_string(),
        r#"{"type":"symlink","name":"bin","linkName":"usr/bin","mode":511}"#.to_string(),
        r#"{"type":"reg","name":"empty","mode":420,"size":0}"#.to_string(),
    ];
    let mut files = Vec::new();
    for file in test_files() {
        // A stand-in for the file's tar header frame.
        blob.extend(frame(&[b'h'; 512]));
        let content: Vec<u8> = file.chunks.concat();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for chunk in &file.chunks {
            starts.push(blob.len());
            blob.extend(frame(chunk));
            ends.push(blob.len());
        }
        let multi = file.chunks.len() > 1;
        let first = if multi {
            format!(
                r#","chunkSize":{},"chunkDigest":"{}""#,
                file.chunks[0].len(),
                digest(&file.chunks[0])
            )
        } else {
            String::new()
        };
        entries.push(format!(
            r#"{{"type":"reg","name":"{}","mode":493,"size":{},"digest":"{}","offset":{},"endOffset":{}{first}}}"#,
            file.name,
            content.len(),
            digest(&content),
            starts[0],
            ends[ends.len() - 1],
        ));
        let mut chunk_offset = file.chunks[0].len();
        for (chunk, start) in file.chunks.iter().zip(&starts).skip(1) {
            let zeros = if chunk.iter().all(|&b| b == 0) {
                r#","chunkType":"zeros""#
            } else {
                ""
            };
            entries.push(format!(
                r#"{{"type":"chunk","name":"{}","offset":{start},"chunkSize":{},"chunkOffset":{chunk_offset},"chunkDigest":"{}"{zeros}}}"#,
                file.name,
                chunk.len(),
                digest(chunk)
            ));
            chunk_offset += chunk.len();
        }
        files.push((file.name.to_string(), content, starts[0]..ends[0]));
    }
    // The end-of-archive frame, where the table of contents would follow.
    blob.extend(frame(&[0; 1024]));
    let json = format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(","));
    let toc = ChunkedToc::from_json(json.as_bytes(), blob.len() as u64).unwrap();
    let ztoc = toc.to_ztoc(blob.len() as u64).unwrap();
    ChunkedLayer { blob, ztoc, files }
}

fn extent(ztoc: &Ztoc, name: &str) -> (u64, u64) {
    let entry = ztoc
        .toc
        .iter()
        .find(|entry| entry.name == name.as_bytes())
        .unwrap();
    assert_eq!(entry.entry_type, EntryType::Regular);
    (
        entry.uncompressed_offset as u64,
        entry.uncompressed_size as u64,
    )
}

fn read_file(spans: &SpanManager, ztoc: &Ztoc, name: &str) -> Result<Vec<u8>, Error> {
    let (offset, size) = extent(ztoc, name);
    let mut buf = vec![0; size as usize];
    let read = spans.read(offset, &mut buf)?;
    assert_eq!(read as u64, size);
    Ok(buf)
}

#[test]
fn files_read_back_from_their_chunks_and_a_small_file_costs_one_request_of_its_chunk() {
    let layer = chunked_layer();
    assert!(!layer.ztoc.has_tar_headers());
    assert_eq!(layer.ztoc.compression.span_digests.len(), 5);
    let spans = SpanManager::new(&layer.ztoc, Arc::new(MemoryBlob::new(layer.blob)), None).unwrap();
    let (name, content, chunk) = &layer.files[0];
    assert_eq!(&read_file(&spans, &layer.ztoc, name).unwrap(), content);
    let metrics = spans.metrics();
    assert_eq!(LayerMetrics::get(&metrics.demand_requests), 1);
    assert_eq!(
        LayerMetrics::get(&metrics.demand_bytes),
        chunk.len() as u64,
        "exactly the chunk's frame"
    );
    for (name, content, _) in &layer.files {
        assert_eq!(
            &read_file(&spans, &layer.ztoc, name).unwrap(),
            content,
            "{name}"
        );
    }
    // The three chunks of usr/bin/tool came in one request.
    assert_eq!(LayerMetrics::get(&metrics.demand_requests), 3);
}

#[test]
fn a_corrupt_chunk_is_never_served_and_other_files_still_read() {
    let layer = chunked_layer();
    for corruption in [0usize, 1] {
        let mut blob = layer.blob.clone();
        let (_, _, chunk) = &layer.files[2];
        match corruption {
            // A byte of the data: zstd frames carry no checksum by
            // default, so this may decode, to bytes of the wrong digest.
            0 => blob[chunk.start + chunk.len() / 2] ^= 0x55,
            // The frame header: it does not decode at all.
            _ => blob[chunk.start] ^= 0xff,
        }
        let spans = SpanManager::new(&layer.ztoc, Arc::new(MemoryBlob::new(blob)), None).unwrap();
        let error = read_file(&spans, &layer.ztoc, &layer.files[2].0).unwrap_err();
        assert!(
            matches!(
                error,
                Error::ChunkDigestMismatch { .. } | Error::Zstd { .. }
            ),
            "{error}"
        );
        // Read twice (one retry), counted as mismatches.
        assert_eq!(LayerMetrics::get(&spans.metrics().digest_mismatches), 2);
        let (name, content, _) = &layer.files[1];
        assert_eq!(&read_file(&spans, &layer.ztoc, name).unwrap(), content);
    }
}

#[test]
fn the_background_fetch_caches_every_chunk_and_checks_the_blob() {
    let layer = chunked_layer();
    let dir = tempfile::tempdir().unwrap();
    let blob_digest = digest(&layer.blob);
    let size = layer.blob.len() as u64;
    let spans = SpanManager::new(
        &layer.ztoc,
        Arc::new(MemoryBlob::new(layer.blob)),
        Some(dir.path().to_path_buf()),
    )
    .unwrap();
    let options = BackgroundOptions {
        idle: Duration::ZERO,
        start_delay: Duration::ZERO,
        chunk_bytes: 100_000,
        ..BackgroundOptions::default()
    };
    spans
        .fetch_all(&blob_digest, size, &options, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(LayerMetrics::get(&spans.metrics().background_spans), 5);
    assert_eq!(spans.fetched_bytes(), size);
    for (name, content, _) in &layer.files {
        assert_eq!(&read_file(&spans, &layer.ztoc, name).unwrap(), content);
    }
    assert_eq!(LayerMetrics::get(&spans.metrics().demand_requests), 0);
}

#[test]
fn tables_that_do_not_add_up_are_refused() {
    let d = digest(b"x");
    let cases = [
        // Chunks that hold less than the file's size.
        format!(
            r#"{{"version":1,"entries":[{{"type":"reg","name":"f","size":10,"digest":"{d}","offset":10,"endOffset":20,"chunkSize":4,"chunkDigest":"{d}"}}]}}"#
        ),
        // A file before the one before it in the blob.
        format!(
            r#"{{"version":1,"entries":[{{"type":"reg","name":"f","size":1,"digest":"{d}","offset":30,"endOffset":40}},{{"type":"reg","name":"g","size":1,"digest":"{d}","offset":10,"endOffset":20}}]}}"#
        ),
        // No data at all.
        r#"{"version":1,"entries":[{"type":"dir","name":"d/"}]}"#.to_string(),
    ];
    for json in cases {
        let toc = ChunkedToc::from_json(json.as_bytes(), 100).unwrap();
        assert!(toc.to_ztoc(100).is_err(), "{json}");
    }
}

#[test]
fn a_read_in_a_file_takes_the_files_next_chunks_along_and_no_other_files() {
    let layer = chunked_layer();
    let (offset, size) = extent(&layer.ztoc, "usr/bin/tool");
    let spans = SpanManager::new(&layer.ztoc, Arc::new(MemoryBlob::new(layer.blob)), None).unwrap();
    let mut head = [0u8; 100];
    spans
        .read_in_file(offset, &mut head, offset + size)
        .unwrap();
    let metrics = spans.metrics();
    assert_eq!(LayerMetrics::get(&metrics.demand_requests), 1);
    assert_eq!(
        LayerMetrics::get(&metrics.demand_spans),
        3,
        "the file's three chunks"
    );
    // The rest of the file is here now; the next file is not.
    let mut rest = vec![0u8; (size - 100) as usize];
    spans
        .read_in_file(offset + 100, &mut rest, offset + size)
        .unwrap();
    assert_eq!(LayerMetrics::get(&metrics.demand_requests), 1);
    let (name, content, _) = &layer.files[2];
    assert_eq!(&read_file(&spans, &layer.ztoc, name).unwrap(), content);
    assert_eq!(LayerMetrics::get(&metrics.demand_requests), 2);
    assert_eq!(LayerMetrics::get(&metrics.demand_spans), 4);
}

#[test]
fn after_a_readers_fetch_the_next_chunks_come_in_the_background() {
    let layer = chunked_layer();
    let spans = Arc::new(
        SpanManager::new(&layer.ztoc, Arc::new(MemoryBlob::new(layer.blob)), None).unwrap(),
    );
    spans.start_read_ahead();
    let (name, content, _) = &layer.files[0];
    assert_eq!(&read_file(&spans, &layer.ztoc, name).unwrap(), content);
    let metrics = Arc::clone(spans.metrics());
    assert_eq!(
        LayerMetrics::get(&metrics.demand_spans),
        1,
        "the reader's own chunk"
    );
    // The other four chunks (under 1 MiB together) follow in one request.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while LayerMetrics::get(&metrics.prefetch_spans) < 4 {
        assert!(std::time::Instant::now() < deadline, "no read-ahead");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(LayerMetrics::get(&metrics.prefetch_requests), 1);
    for (name, content, _) in &layer.files[1..] {
        assert_eq!(&read_file(&spans, &layer.ztoc, name).unwrap(), content);
    }
    assert_eq!(
        LayerMetrics::get(&metrics.demand_requests),
        1,
        "all read ahead"
    );
    // The thread holds no reference: the manager goes away.
    let weak = Arc::downgrade(&spans);
    drop(spans);
    assert!(weak.upgrade().is_none());
}
