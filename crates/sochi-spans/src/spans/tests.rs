//! Span-manager tests on the reference fixtures: every file read back
//! through the spans equals a plain gunzip, fetches are minimal and cached,
//! and corrupt bytes (in the blob or the disk cache) are never served.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use sochi_format::{EntryType, Ztoc};

use crate::{BlobError, BlobErrorKind, Error, LayerMetrics, MemoryBlob, SpanId, SpanManager};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/");
const LAYERS: [&str; 2] = ["pax-mixed.tar.gz", "plain.tar"];

/// A fixture layer: its zTOC, blob, uncompressed tar and regular files.
struct Layer {
    ztoc: Ztoc,
    blob: Vec<u8>,
    tar: Vec<u8>,
    /// `(uncompressed offset, size)` of every regular file.
    files: Vec<(u64, u64)>,
}

fn layer(name: &str) -> Layer {
    let read = |file: &str| {
        let path = format!("{FIXTURES}{file}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    };
    let blob = read(name);
    let ztoc = Ztoc::from_bytes(&read(&format!("{name}.65536.ztoc"))).unwrap();
    let tar = if name.ends_with(".gz") {
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        tar
    } else {
        blob.clone()
    };
    let files = ztoc
        .toc
        .iter()
        .filter(|entry| entry.entry_type == EntryType::Regular)
        .map(|entry| {
            (
                entry.uncompressed_offset as u64,
                entry.uncompressed_size as u64,
            )
        })
        .collect::<Vec<_>>();
    assert!(files.len() > 10, "{name}: {} files", files.len());
    Layer {
        ztoc,
        blob,
        tar,
        files,
    }
}

fn manager(layer: &Layer, blob: Vec<u8>, dir: Option<&Path>) -> (SpanManager, Arc<MemoryBlob>) {
    let blob = Arc::new(MemoryBlob::new(blob));
    let manager = SpanManager::new(&layer.ztoc, blob.clone(), dir.map(Path::to_path_buf)).unwrap();
    (manager, blob)
}

/// Reads `size` bytes at `offset` in chunks of `chunk`.
fn read_chunks(manager: &SpanManager, offset: u64, size: u64, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let want = chunk.min((size - out.len() as u64) as usize);
        let mut buf = vec![0; want];
        let got = manager.read(offset + out.len() as u64, &mut buf).unwrap();
        assert_eq!(got, want, "short read at {offset}+{}", out.len());
        out.extend_from_slice(&buf);
    }
    out
}

fn expected(layer: &Layer, offset: u64, size: u64) -> &[u8] {
    &layer.tar[offset as usize..(offset + size) as usize]
}

/// A non-empty file that lies inside one span, and that span's id.
fn single_span_file(layer: &Layer, skip: usize) -> ((u64, u64), SpanId) {
    let geometry = layer.ztoc.span_geometry().unwrap();
    layer
        .files
        .iter()
        .filter(|&&(offset, size)| {
            size > 0 && geometry.span_of(offset) == geometry.span_of(offset + size - 1)
        })
        .map(|&file| (file, geometry.span_of(file.0)))
        .filter(|&(_, span)| span > SpanId(0))
        .nth(skip)
        .unwrap()
}

#[test]
fn every_file_reads_back_in_odd_chunks() {
    for name in LAYERS {
        let layer = layer(name);
        let (manager, _) = manager(&layer, layer.blob.clone(), None);
        for &(offset, size) in &layer.files {
            for chunk in [4093, 65537] {
                let got = read_chunks(&manager, offset, size, chunk);
                assert!(
                    got == expected(&layer, offset, size),
                    "{name} file at {offset}"
                );
            }
        }
        // The whole layer too, and a read past its end.
        let size = manager.uncompressed_size();
        assert!(read_chunks(&manager, 0, size, 100_003) == expected(&layer, 0, size));
        assert_eq!(manager.read(size, &mut [0; 10]).unwrap(), 0);
        let mut tail = [0; 10];
        assert_eq!(manager.read(size - 3, &mut tail).unwrap(), 3);
    }
}

#[test]
fn small_file_fetches_only_its_span_and_then_hits_the_cache() {
    for name in LAYERS {
        let layer = layer(name);
        let ((offset, size), span) = single_span_file(&layer, 0);
        let geometry = layer.ztoc.span_geometry().unwrap();
        let span_bytes = geometry.end_compressed(SpanId(span.index())).unwrap()
            - geometry.start_compressed(SpanId(span.index())).unwrap();
        let (manager, blob) = manager(&layer, layer.blob.clone(), None);
        assert!(read_chunks(&manager, offset, size, 1000) == expected(&layer, offset, size));
        assert_eq!((blob.requests(), blob.bytes()), (1, span_bytes), "{name}");
        assert_eq!(manager.fetched_bytes(), span_bytes);
        assert_eq!(manager.cached_spans(), 1);
        assert!(read_chunks(&manager, offset, size, 7) == expected(&layer, offset, size));
        assert_eq!(
            blob.requests(),
            1,
            "{name}: second read is served from cache"
        );
    }
}

#[test]
fn adjacent_missing_spans_are_fetched_with_one_request() {
    let layer = layer("pax-mixed.tar.gz");
    let geometry = layer.ztoc.span_geometry().unwrap();
    assert!(geometry.span_count() >= 4);
    let (manager, blob) = manager(&layer, layer.blob.clone(), None);
    let start = geometry.start_uncompressed(SpanId(1)).unwrap();
    let end = geometry.end_uncompressed(SpanId(3)).unwrap();
    assert!(
        read_chunks(&manager, start, end - start, 1 << 20) == expected(&layer, start, end - start)
    );
    let compressed =
        geometry.end_compressed(SpanId(3)).unwrap() - geometry.start_compressed(SpanId(1)).unwrap();
    assert_eq!((blob.requests(), blob.bytes()), (1, compressed));
    assert_eq!(manager.cached_spans(), 3);
}

#[test]
fn corrupt_blob_byte_is_a_digest_mismatch_never_wrong_bytes() {
    for name in LAYERS {
        let layer = layer(name);
        let ((offset, size), span) = single_span_file(&layer, 1);
        let geometry = layer.ztoc.span_geometry().unwrap();
        let mut blob = layer.blob.clone();
        let start = geometry.start_compressed(SpanId(span.index())).unwrap();
        let end = geometry.end_compressed(SpanId(span.index())).unwrap();
        blob[((start + end) / 2) as usize] ^= 0x40;
        let (manager, memory) = manager(&layer, blob, None);
        let mut buf = vec![0; size as usize];
        match manager.read(offset, &mut buf) {
            Err(Error::SpanDigestMismatch {
                span: bad,
                expected,
                actual,
            }) => {
                assert_eq!(bad, span);
                assert_eq!(expected, layer.ztoc.compression.span_digests[span.index()]);
                assert_ne!(actual, expected);
            }
            other => panic!("{name}: expected a digest mismatch, got {other:?}"),
        }
        assert!(buf.iter().all(|&b| b == 0), "{name}: no byte was served");
        assert_eq!(memory.requests(), 2, "{name}: one retry");
        assert_eq!(manager.cached_spans(), 0);
        // Other spans still read fine.
        let ((offset, size), other) = single_span_file(&layer, 0);
        if other != span {
            assert!(read_chunks(&manager, offset, size, 999) == expected(&layer, offset, size));
        }
    }
}

#[test]
fn concurrent_readers_get_correct_bytes_and_share_fetches() {
    for name in LAYERS {
        let layer = layer(name);
        let (manager, blob) = manager(&layer, layer.blob.clone(), None);
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let (layer, manager) = (&layer, &manager);
                scope.spawn(move || {
                    let mut state = thread.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for _ in 0..200 {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let (offset, size) =
                            layer.files[(state % layer.files.len() as u64) as usize];
                        let chunk = 1 + (state >> 40) as usize % 70_000;
                        let got = read_chunks(manager, offset, size, chunk);
                        assert!(got == expected(layer, offset, size), "{name} at {offset}");
                    }
                });
            }
        });
        // Each span is fetched at most once: the layer fits in memory.
        assert!(blob.bytes() <= layer.blob.len() as u64 + manager.span_count() as u64);
    }
}

#[test]
fn disk_cache_survives_a_new_manager_and_tampered_files_are_refetched() {
    for name in LAYERS {
        let layer = layer(name);
        let dir = tempfile::tempdir().unwrap();
        let size = layer.ztoc.uncompressed_archive_size as u64;
        let (first, blob) = manager(&layer, layer.blob.clone(), Some(dir.path()));
        assert!(read_chunks(&first, 0, size, 1 << 20) == expected(&layer, 0, size));
        assert!(blob.requests() > 0);

        // A restart: the managers that wrote the cache are gone.
        drop(first);
        let (second, blob) = manager(&layer, layer.blob.clone(), Some(dir.path()));
        assert!(read_chunks(&second, 0, size, 77_777) == expected(&layer, 0, size));
        assert_eq!(blob.requests(), 0, "{name}: all spans came from disk");
        drop(second);

        // One flipped byte, the span's last, in the layer's cache file.
        let ((offset, file_size), span) = single_span_file(&layer, 0);
        let end = layer
            .ztoc
            .span_geometry()
            .unwrap()
            .end_uncompressed(SpanId(span.index()))
            .unwrap();
        let path = cache_file(dir.path(), "layer-");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, end - 1).unwrap();
        file.write_all_at(&[byte[0] ^ 1], end - 1).unwrap();
        drop(file);
        let (third, blob) = manager(&layer, layer.blob.clone(), Some(dir.path()));
        let got = read_chunks(&third, offset, file_size, 4096);
        assert!(got == expected(&layer, offset, file_size), "{name}");
        assert_eq!(
            blob.requests(),
            1,
            "{name}: the tampered span is fetched again"
        );

        drop(third);
        let (fourth, blob) = manager(&layer, layer.blob.clone(), Some(dir.path()));
        assert!(
            read_chunks(&fourth, offset, file_size, 4096) == expected(&layer, offset, file_size)
        );
        assert_eq!(
            blob.requests(),
            0,
            "{name}: the refetched span was written back"
        );
    }
}

#[test]
fn small_memory_limit_evicts_but_stays_correct() {
    let layer = layer("pax-mixed.tar.gz");
    let (manager, blob) = manager(&layer, layer.blob.clone(), None);
    let manager = manager.with_memory_limit(100_000);
    let size = manager.uncompressed_size();
    assert!(read_chunks(&manager, 0, size, 50_001) == expected(&layer, 0, size));
    assert!(read_chunks(&manager, 0, size, 50_001) == expected(&layer, 0, size));
    assert!(manager.cached_spans() <= 2);
    assert!(blob.bytes() > layer.blob.len() as u64);
}

#[test]
fn layers_sharing_memory_stay_within_one_limit_and_free_it_when_dropped() {
    let layer = layer("pax-mixed.tar.gz");
    let memory = crate::SpanMemory::new(200_000);
    let (a, _) = manager(&layer, layer.blob.clone(), None);
    let (b, _) = manager(&layer, layer.blob.clone(), None);
    let a = a.with_shared_memory(Arc::clone(&memory));
    let b = b.with_shared_memory(Arc::clone(&memory));
    let size = a.uncompressed_size();
    assert!(read_chunks(&a, 0, size, 50_001) == expected(&layer, 0, size));
    let after_a = a.cached_spans();
    assert!(after_a > 0 && memory.bytes() <= 200_000);
    assert!(read_chunks(&b, 0, size, 50_001) == expected(&layer, 0, size));
    assert!(memory.bytes() <= 200_000);
    // b read last: the one budget went to b, at a's expense.
    assert!(b.cached_spans() > 0);
    assert!(a.cached_spans() < after_a);
    assert_eq!(memory.spans(), a.cached_spans() + b.cached_spans());
    // An unmounted layer gives its spans back at once.
    drop(b);
    assert_eq!(memory.spans(), a.cached_spans());
}

/// A tar (ustar) of one file of `size` pseudo-random bytes.
fn synthetic_tar(size: usize) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut put = |at: usize, field: &[u8]| header[at..at + field.len()].copy_from_slice(field);
    put(0, b"big.bin");
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{size:011o}\0").as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    tar.extend((0..size).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
    tar
}

/// The zTOC of `tar` as an uncompressed layer with spans of `span_size`.
fn uncompressed_ztoc(tar: &[u8], span_size: u64) -> Ztoc {
    let options = sochi_build::LayerOptions {
        span_size,
        compression: sochi_build::LayerCompression::Uncompressed,
        expect: None,
        source_verifies_digest: false,
    };
    sochi_build::build_layer_ztoc(tar, &options, "synthetic", &|_| {})
        .unwrap()
        .ztoc
}

/// A sequential reader gets the disk-cached spans ahead of it read ahead,
/// each once per pass and again when it starts over; reads far apart get
/// none.
#[test]
fn sequential_reads_read_disk_cached_spans_ahead() {
    const MIB: u64 = 1 << 20;
    let tar = synthetic_tar(40 << 20);
    let ztoc = uncompressed_ztoc(&tar, MIB);
    let dir = tempfile::tempdir().unwrap();
    let blob = Arc::new(MemoryBlob::new(tar.clone()));
    let manager = SpanManager::new(&ztoc, blob, Some(dir.path().to_path_buf()))
        .unwrap()
        .with_memory_limit(0);
    let size = manager.uncompressed_size();
    let spans = manager.span_count() as u64;
    assert!(spans >= 40, "{spans} spans");
    let read_ahead = || LayerMetrics::get(&manager.metrics().disk_read_ahead);
    let pass = || {
        let before = read_ahead();
        let mut offset = 0;
        while offset < size {
            let mut buf = vec![0; (256 << 10).min(size - offset) as usize];
            assert_eq!(manager.read(offset, &mut buf).unwrap(), buf.len());
            assert!(buf[..] == tar[offset as usize..offset as usize + buf.len()]);
            offset += buf.len() as u64;
        }
        read_ahead() - before
    };
    // The first pass fetches: nothing ahead of it is on disk yet.
    pass();
    assert!((0..spans as usize).all(|span| manager.is_cached(span)));
    // Once the streak is 8 MiB, the span the pass enters next (E) sends
    // the spans in the next 16 MiB; each later span one more: every span
    // after E, once per pass.
    let span_at = |offset: u64| {
        (0..spans as usize)
            .rfind(|&span| manager.span(span).unwrap().start_uncompressed <= offset)
            .unwrap()
    };
    let entered = (1..)
        .map(|read: u64| read * (256 << 10))
        .find(|&start| start >= 8 << 20 && span_at(start) != span_at(start - 1))
        .map(span_at)
        .unwrap() as u64;
    assert!(entered < spans / 2, "{entered}");
    assert_eq!(pass(), spans - entered - 1);
    assert_eq!(pass(), spans - entered - 1);

    // 4 KiB reads all over the layer, and 4 KiB reads near each other but
    // in no order: none.
    let before = read_ahead();
    let mut state = 7u64;
    for i in 0..512u64 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let page = (state >> 33) % (size / 4096 - 1);
        let offset = if i < 256 {
            page * 4096
        } else {
            (24 << 20) + (page % 512) * 4096
        };
        let mut buf = vec![0; 4096];
        assert_eq!(manager.read(offset, &mut buf).unwrap(), 4096);
        assert!(buf[..] == tar[offset as usize..offset as usize + 4096]);
    }
    assert_eq!(read_ahead() - before, 0);
}

fn layer_digest(layer: &Layer) -> String {
    sochi_format::Sha256Digest::of(&layer.blob).to_string()
}

#[test]
fn background_fetch_fills_the_disk_cache_and_checks_the_layer_digest() {
    use crate::BackgroundOptions;
    use std::sync::atomic::AtomicBool;
    for name in LAYERS {
        let layer = layer(name);
        let dir = tempfile::tempdir().unwrap();
        let digest = layer_digest(&layer);
        let (first, blob) = manager(&layer, layer.blob.clone(), Some(dir.path()));
        // One file read first: the background fetch skips caching it again.
        let ((offset, size), _) = single_span_file(&layer, 1);
        read_chunks(&first, offset, size, 4096);
        let options = BackgroundOptions {
            chunk_bytes: 100_000,
            idle: std::time::Duration::ZERO,
            start_delay: std::time::Duration::ZERO,
            ..BackgroundOptions::default()
        };
        let stop = AtomicBool::new(false);
        first
            .fetch_all(&digest, layer.blob.len() as u64, &options, &stop)
            .unwrap();
        assert!(first.is_verified(&digest));
        let metrics = first.metrics();
        let background_bytes = LayerMetrics::get(&metrics.background_bytes);
        // The whole blob once, plus at most one shared byte per request.
        assert!(background_bytes >= layer.blob.len() as u64, "{name}");
        assert!(
            background_bytes
                <= layer.blob.len() as u64 + LayerMetrics::get(&metrics.background_requests),
            "{name}"
        );
        assert_eq!(
            LayerMetrics::get(&metrics.background_spans) + 1,
            first.span_count() as u64,
            "{name}: every span but the one read was cached by the background fetch"
        );
        assert!(first.resident_compressed_bytes() > 0);

        // A new manager finds everything on disk and the layer verified.
        let (second, blob2) = manager(&layer, layer.blob.clone(), Some(dir.path()));
        assert!(second.is_verified(&digest));
        let total = layer.ztoc.uncompressed_archive_size as u64;
        assert!(read_chunks(&second, 0, total, 1 << 20) == expected(&layer, 0, total));
        second
            .fetch_all(&digest, layer.blob.len() as u64, &options, &stop)
            .unwrap();
        assert_eq!(blob2.requests(), 0, "{name}: nothing fetched twice");
        drop(blob);
    }
}

#[test]
fn background_fetch_refuses_a_blob_that_is_not_the_layer() {
    use crate::BackgroundOptions;
    use std::sync::atomic::AtomicBool;
    let layer = layer("plain.tar");
    let dir = tempfile::tempdir().unwrap();
    let (manager, _) = manager(&layer, layer.blob.clone(), Some(dir.path()));
    let options = BackgroundOptions {
        idle: std::time::Duration::ZERO,
        start_delay: std::time::Duration::ZERO,
        attempts: 2,
        backoff: std::time::Duration::from_millis(1),
        ..BackgroundOptions::default()
    };
    let wrong = format!("sha256:{}", "0".repeat(64));
    let error = manager
        .fetch_all(
            &wrong,
            layer.blob.len() as u64,
            &options,
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert!(
        matches!(error, Error::LayerDigestMismatch { .. }),
        "{error}"
    );
    assert!(!manager.is_verified(&wrong));

    // A corrupt byte in the blob: the span is refused after the retries.
    let mut bad = layer.blob.clone();
    bad[layer.blob.len() / 2] ^= 0x40;
    let dir = tempfile::tempdir().unwrap();
    let (manager, _) = self::manager(&layer, bad, Some(dir.path()));
    let error = manager
        .fetch_all(
            &layer_digest(&layer),
            layer.blob.len() as u64,
            &options,
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert!(matches!(error, Error::SpanDigestMismatch { .. }), "{error}");

    // Stopping ends it at once.
    let stop = AtomicBool::new(true);
    let error = manager
        .fetch_all(
            &layer_digest(&layer),
            layer.blob.len() as u64,
            &options,
            &stop,
        )
        .unwrap_err();
    assert!(matches!(error, Error::Stopped));
}

#[test]
fn disk_limit_evicts_least_recently_used_spans() {
    let layer = layer("pax-mixed.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    let (manager, _) = manager(&layer, layer.blob.clone(), Some(dir.path()));
    let manager = manager.with_disk_limit(200_000).with_memory_limit(0);
    let size = manager.uncompressed_size();
    assert!(read_chunks(&manager, 0, size, 65_536) == expected(&layer, 0, size));
    // Evicted spans are punched out of the cache file, but for the pages
    // they share with their neighbours.
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(cache_file(dir.path(), "layer-"))
        .unwrap()
        .blocks()
        * 512;
    let shared_pages = 2 * 4096 * manager.span_count() as u64;
    assert!(size > 4 * (200_000 + shared_pages), "{size}");
    assert!(allocated <= 200_000 + shared_pages, "{allocated}");
    assert!(LayerMetrics::get(&manager.metrics().disk_evictions) > 0);
    // What was evicted is fetched again, never read from a hole.
    assert!(read_chunks(&manager, 0, size, 65_536) == expected(&layer, 0, size));
}

/// Allocated bytes of a cache dir's span file.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(cache_file(dir, "layer-"))
        .unwrap()
        .blocks()
        * 512
}

/// Two layers under one disk budget: the layer read last keeps its spans,
/// the other gives its oldest up (punched out of its file), and what was
/// evicted is fetched again, never read from a hole.
#[test]
fn a_disk_budget_evicts_across_layers_by_recency() {
    let layer = layer("pax-mixed.tar.gz");
    let budget = crate::DiskBudget::new(300_000);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, blob_a) = manager(&layer, layer.blob.clone(), Some(dir_a.path()));
    let a = a.with_memory_limit(0).with_disk_budget(&budget);
    let (b, _) = manager(&layer, layer.blob.clone(), Some(dir_b.path()));
    let b = b.with_memory_limit(0).with_disk_budget(&budget);
    let size = a.uncompressed_size();
    let shared_pages = 2 * 4096 * a.span_count() as u64;
    assert!(size > 4 * (300_000 + shared_pages), "{size}");
    assert!(read_chunks(&a, 0, size, 65_536) == expected(&layer, 0, size));
    assert!(budget.bytes() <= 300_000 && budget.bytes() > 0);
    let a_before = allocated(dir_a.path());
    assert!(read_chunks(&b, 0, size, 65_536) == expected(&layer, 0, size));
    assert!(budget.bytes() <= 300_000);
    // b's reads pushed a's spans out: a's file holds only shared pages.
    assert!(allocated(dir_a.path()) < a_before, "{a_before}");
    assert!(allocated(dir_a.path()) <= shared_pages);
    assert!(allocated(dir_b.path()) <= 300_000 + shared_pages);
    assert!(LayerMetrics::get(&b.metrics().disk_evictions) > 0);
    let fetched = blob_a.requests();
    assert!(read_chunks(&a, 0, size, 65_536) == expected(&layer, 0, size));
    assert!(
        blob_a.requests() > fetched,
        "a's evicted spans were fetched again"
    );
    // A layer that goes leaves the budget with its spans.
    let held = budget.bytes();
    drop(a);
    assert!(budget.bytes() < held);
    drop(b);
    assert_eq!((budget.bytes(), budget.spans()), (0, 0));
}

/// Spans an earlier process left on disk count in the budget when their
/// layer is opened again, and the oldest go if they do not fit.
#[test]
fn spans_already_on_disk_count_in_a_new_budget() {
    let layer = layer("pax-mixed.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    {
        let (first, _) = manager(&layer, layer.blob.clone(), Some(dir.path()));
        let first = first.with_memory_limit(0);
        let size = first.uncompressed_size();
        assert!(read_chunks(&first, 0, size, 65_536) == expected(&layer, 0, size));
    }
    let budget = crate::DiskBudget::new(400_000);
    let (second, _) = manager(&layer, layer.blob.clone(), Some(dir.path()));
    let second = second.with_memory_limit(0).with_disk_budget(&budget);
    assert!(budget.bytes() > 0 && budget.bytes() <= 400_000);
    let shared_pages = 2 * 4096 * second.span_count() as u64;
    assert!(allocated(dir.path()) <= 400_000 + shared_pages);
    let size = second.uncompressed_size();
    assert!(read_chunks(&second, 0, size, 65_536) == expected(&layer, 0, size));
}

/// Two managers of one layer in one process share its cache: what one
/// evicts, the other fetches again instead of reading a hole.
#[test]
fn managers_of_one_layer_share_its_disk_cache() {
    let layer = layer("pax-mixed.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    let (bounded, _) = manager(&layer, layer.blob.clone(), Some(dir.path()));
    let bounded = bounded.with_disk_limit(400_000).with_memory_limit(0);
    let (other, blob) = manager(&layer, layer.blob.clone(), Some(dir.path()));
    let other = other.with_memory_limit(0);
    let size = other.uncompressed_size();
    assert!(read_chunks(&other, 0, size, 65_536) == expected(&layer, 0, size));
    let fetched = blob.requests();
    assert!(read_chunks(&bounded, 0, size, 65_536) == expected(&layer, 0, size));
    assert!(LayerMetrics::get(&bounded.metrics().disk_evictions) > 0);
    assert!(read_chunks(&other, 0, size, 65_536) == expected(&layer, 0, size));
    assert!(
        blob.requests() > fetched,
        "evicted spans were fetched again"
    );
}

/// A layer released (its cache directory deleted) while a manager of it
/// lives on: a new manager of the layer caches on disk again.
#[test]
fn a_new_manager_after_the_cache_was_deleted_caches_on_disk_again() {
    let layer = layer("plain.tar");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("spans");
    let (old, _) = manager(&layer, layer.blob.clone(), Some(&cache));
    let size = old.uncompressed_size();
    assert!(read_chunks(&old, 0, size, 65_536) == expected(&layer, 0, size));
    std::fs::remove_dir_all(&cache).unwrap();
    let (new, blob) = manager(&layer, layer.blob.clone(), Some(&cache));
    assert!(read_chunks(&new, 0, size, 65_536) == expected(&layer, 0, size));
    assert!(
        blob.requests() > 0,
        "the new manager does not use the deleted files"
    );
    drop(old);
    drop(new);
    let (third, blob) = manager(&layer, layer.blob.clone(), Some(&cache));
    assert!(read_chunks(&third, 0, size, 65_536) == expected(&layer, 0, size));
    assert_eq!(blob.requests(), 0, "the new manager's spans are on disk");
}

/// Two zTOCs of one layer with different spans keep their own files in
/// one cache directory.
#[test]
fn span_geometries_of_one_layer_keep_their_own_cache_files() {
    let tar = synthetic_tar(3 << 20);
    let dir = tempfile::tempdir().unwrap();
    for span_size in [1 << 20, 300_000, 1 << 20] {
        let ztoc = uncompressed_ztoc(&tar, span_size);
        let blob = Arc::new(MemoryBlob::new(tar.clone()));
        let manager = SpanManager::new(&ztoc, blob, Some(dir.path().to_path_buf()))
            .unwrap()
            .with_memory_limit(0);
        let size = manager.uncompressed_size();
        let read = read_chunks(&manager, 0, size, 100_000);
        assert!(read[..] == tar[..size as usize], "{span_size}");
    }
    let layer_files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("layer-")
        })
        .count();
    assert_eq!(layer_files, 2);
}

/// The one file in `dir` whose name starts with `prefix`.
fn cache_file(dir: &Path, prefix: &str) -> std::path::PathBuf {
    let mut found = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix));
    let path = found
        .next()
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()));
    assert!(found.next().is_none(), "two {prefix}* in {}", dir.display());
    path
}

/// A blob whose reads never answer: readers of a span being fetched give up
/// after the wait bound instead of hanging.
#[test]
fn waiting_for_another_readers_fetch_is_bounded() {
    struct Stuck(std::sync::Mutex<bool>, std::sync::Condvar);
    impl crate::BlobReader for Stuck {
        fn read_range(&self, _: std::ops::Range<u64>) -> Result<Vec<u8>, BlobError> {
            let guard = self.0.lock().unwrap();
            let _unused = self
                .1
                .wait_timeout(guard, std::time::Duration::from_secs(2));
            Err(BlobError::of_kind(BlobErrorKind::Timeout))
        }
    }
    let layer = layer("plain.tar");
    let blob = Arc::new(Stuck(
        std::sync::Mutex::new(false),
        std::sync::Condvar::new(),
    ));
    let manager = SpanManager::new(&layer.ztoc, blob, None)
        .unwrap()
        .with_wait_bound(std::time::Duration::from_millis(300));
    let (offset, _) = layer.files[0];
    std::thread::scope(|scope| {
        let fetching = scope.spawn(|| manager.read(offset, &mut [0; 10]));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let started = std::time::Instant::now();
        let waited = manager.read(offset, &mut [0; 10]);
        assert!(
            matches!(waited, Err(Error::WaitTimeout { .. })),
            "{waited:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(matches!(fetching.join().unwrap(), Err(Error::Blob { .. })));
    });
    // After the failure, a new read fetches again (and fails the same way).
    assert!(LayerMetrics::get(&manager.metrics().fetch_failures) >= 1);
}

/// Prefetch (issue 13): a synthetic uncompressed layer of 16 spans of 64
/// KiB, and a blob whose background reads wait for a gate (and may fail).
#[allow(clippy::single_range_in_vec_init)] // span ranges, not element lists
mod prefetch {
    use std::ops::Range;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use super::{synthetic_tar, uncompressed_ztoc};
    use crate::{
        prefetch_order, BlobError, BlobErrorKind, BlobReader, LayerMetrics, MemoryBlob,
        PrefetchOptions, SpanManager,
    };
    use sochi_format::{PrefetchArtifact, PrefetchSpan, Ztoc};

    const SPAN: u64 = 64 << 10;

    struct Gated {
        inner: MemoryBlob,
        open: Mutex<bool>,
        opened: Condvar,
        background_started: AtomicU64,
        fail_background: bool,
    }

    impl Gated {
        fn new(data: Vec<u8>, open: bool, fail_background: bool) -> Arc<Gated> {
            Arc::new(Gated {
                inner: MemoryBlob::new(data),
                open: Mutex::new(open),
                opened: Condvar::new(),
                background_started: AtomicU64::new(0),
                fail_background,
            })
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }

        fn is_open(&self) -> bool {
            *self.open.lock().unwrap()
        }

        /// Waits until `n` background reads have started.
        fn wait_for_background(&self, n: u64) {
            while self.background_started.load(Ordering::SeqCst) < n {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl BlobReader for Gated {
        fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
            self.inner.read_range(range)
        }

        fn read_range_in_background(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
            self.background_started.fetch_add(1, Ordering::SeqCst);
            let guard = self.open.lock().unwrap();
            // Bounded, so that a broken test fails instead of hanging.
            let _guard = self
                .opened
                .wait_timeout_while(guard, Duration::from_secs(20), |open| !*open)
                .unwrap();
            if self.fail_background {
                return Err(BlobError::of_kind(BlobErrorKind::Transport));
            }
            self.inner.read_range(range)
        }
    }

    fn synthetic() -> (Ztoc, Vec<u8>) {
        let tar = synthetic_tar(16 * SPAN as usize - 3000);
        let ztoc = uncompressed_ztoc(&tar, SPAN);
        assert!(ztoc.compression.max_span_id >= 15);
        (ztoc, tar)
    }

    fn read_span(manager: &SpanManager, span: u64) -> Vec<u8> {
        let mut buf = vec![0; 100];
        let got = manager.read(span * SPAN + 10, &mut buf).unwrap();
        assert_eq!(got, 100);
        buf
    }

    fn options(concurrency: usize, request_bytes: u64) -> PrefetchOptions {
        PrefetchOptions {
            concurrency,
            request_bytes,
        }
    }

    #[test]
    fn prefetch_fetches_listed_spans_in_merged_requests() {
        let (ztoc, tar) = synthetic();
        let blob = Arc::new(MemoryBlob::new(tar.clone()));
        let manager = Arc::new(SpanManager::new(&ztoc, blob.clone(), None).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        // Two ranges and one overlapping the first: spans 2..=5 and 8.
        manager
            .prefetch(&[2..6, 8..9, 4..6], &options(4, 4 << 20), &stop)
            .unwrap();
        let m = manager.metrics();
        assert_eq!(LayerMetrics::get(&m.prefetch_requests), 2);
        assert_eq!(LayerMetrics::get(&m.prefetch_spans), 5);
        assert_eq!(LayerMetrics::get(&m.prefetch_bytes), 5 * SPAN);
        assert_eq!(blob.requests(), 2);
        for span in [2, 3, 4, 5, 8] {
            let start = (span * SPAN + 10) as usize;
            assert_eq!(read_span(&manager, span), tar[start..start + 100]);
        }
        assert_eq!(
            blob.requests(),
            2,
            "prefetched spans are read from the cache"
        );
        assert_eq!(LayerMetrics::get(&m.demand_requests), 0);
        // A request holds at most `request_bytes` (whole spans).
        let (ztoc, tar) = synthetic();
        let blob = Arc::new(MemoryBlob::new(tar));
        let manager = Arc::new(SpanManager::new(&ztoc, blob.clone(), None).unwrap());
        manager
            .prefetch(&[0..6], &options(2, 2 * SPAN), &stop)
            .unwrap();
        assert_eq!(LayerMetrics::get(&manager.metrics().prefetch_requests), 3);
        // Spans cached already are not fetched again.
        manager
            .prefetch(&[0..7], &options(2, 2 * SPAN), &stop)
            .unwrap();
        assert_eq!(LayerMetrics::get(&manager.metrics().prefetch_requests), 4);
        assert_eq!(blob.requests(), 4);
    }

    /// A blob that records which ranges were read in the background, and
    /// as what (a name shared with other layers' blobs).
    struct Recording {
        inner: MemoryBlob,
        name: &'static str,
        log: Arc<Mutex<Vec<(&'static str, u64)>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl BlobReader for Recording {
        fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
            self.inner.read_range(range)
        }

        fn read_range_in_background(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
            self.log
                .lock()
                .unwrap()
                .push((self.name, range.start / SPAN));
            let (open, opened) = &*self.gate;
            let guard = open.lock().unwrap();
            let _open = opened
                .wait_timeout_while(guard, Duration::from_secs(20), |open| !*open)
                .unwrap();
            self.inner.read_range(range)
        }
    }

    /// One queue for two layers: requests run lowest priority first across
    /// both, then in the order submitted; each layer's `done` runs once.
    #[test]
    fn a_prefetch_queue_runs_the_layers_requests_in_one_priority_order() {
        let (ztoc, tar) = synthetic();
        let log = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let layer = |name| {
            let blob = Arc::new(Recording {
                inner: MemoryBlob::new(tar.clone()),
                name,
                log: Arc::clone(&log),
                gate: Arc::clone(&gate),
            });
            Arc::new(SpanManager::new(&ztoc, blob, None).unwrap())
        };
        let (lower, upper) = (layer("lower"), layer("upper"));
        // One worker, held in its first request (the lowest priority)
        // until both layers are queued.
        let queue = crate::PrefetchQueue::new(options(1, SPAN));
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let counter = |done: &Arc<AtomicU64>| {
            let done = Arc::clone(done);
            move |outcome: crate::Result<()>| {
                outcome.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        };
        let a = queue.submit(
            Arc::clone(&lower),
            &[(0..1, 0), (5..6, 3), (9..10, 5)],
            Arc::clone(&stop),
            counter(&done),
        );
        let b = queue.submit(
            Arc::clone(&upper),
            &[(2..3, 1), (7..8, 4), (4..5, 2)],
            Arc::clone(&stop),
            counter(&done),
        );
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        a.wait();
        b.wait();
        assert_eq!(done.load(Ordering::SeqCst), 2);
        let order = log.lock().unwrap().clone();
        assert_eq!(
            order,
            [
                ("lower", 0),
                ("upper", 2),
                ("upper", 4),
                ("lower", 5),
                ("upper", 7),
                ("lower", 9)
            ]
        );
        assert_eq!(LayerMetrics::get(&lower.metrics().prefetch_spans), 3);
        // Nothing left to fetch: done at once.
        let c = queue.submit(
            Arc::clone(&lower),
            &[(0..1, 0)],
            Arc::clone(&stop),
            counter(&done),
        );
        c.wait();
        assert_eq!(done.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn prefetch_order_is_the_artifacts_with_lower_priority_first() {
        let range = |start_span, end_span, priority| PrefetchSpan {
            start_span,
            end_span,
            priority,
        };
        let artifact = PrefetchArtifact {
            version: "1.0".into(),
            prefetch_spans: vec![
                range(9, 9, 0),
                range(1, 2, 5),
                range(4, 4, -1),
                range(7, 8, 0),
            ],
        };
        assert_eq!(
            prefetch_order(&artifact),
            vec![(4..5, -1), (9..10, 0), (7..9, 0), (1..3, 5)]
        );
    }

    /// A read of a span being prefetched waits for that request: the blob
    /// is read once for the span.
    #[test]
    fn a_read_during_a_slow_prefetch_joins_it() {
        let (ztoc, tar) = synthetic();
        let blob = Gated::new(tar.clone(), false, false);
        let manager = Arc::new(SpanManager::new(&ztoc, blob.clone(), None).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|scope| {
            let prefetch = scope.spawn(|| manager.prefetch(&[3..4], &options(1, SPAN), &stop));
            blob.wait_for_background(1);
            let reader = scope.spawn(|| read_span(&manager, 3));
            // The reader is waiting on the prefetch's flight (or will be):
            // it must not fetch the span on its own.
            std::thread::sleep(Duration::from_millis(100));
            blob.open();
            let start = (3 * SPAN + 10) as usize;
            assert_eq!(reader.join().unwrap(), tar[start..start + 100]);
            prefetch.join().unwrap().unwrap();
        });
        assert_eq!(blob.inner.requests(), 1);
        assert_eq!(LayerMetrics::get(&manager.metrics().demand_requests), 0);
        assert_eq!(LayerMetrics::get(&manager.metrics().prefetch_requests), 1);
    }

    /// Reads of spans not listed, or listed but not started yet, do not
    /// wait behind the prefetch's queue.
    #[test]
    fn reads_are_not_held_up_behind_queued_prefetch_work() {
        let (ztoc, tar) = synthetic();
        let blob = Gated::new(tar.clone(), false, false);
        let manager = Arc::new(SpanManager::new(&ztoc, blob.clone(), None).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|scope| {
            // One request at a time, one span each: span 0 is fetching
            // (and stuck), spans 1..=5 are queued.
            let prefetch = scope.spawn(|| manager.prefetch(&[0..6], &options(1, SPAN), &stop));
            blob.wait_for_background(1);
            for span in [12, 4] {
                let start = (span * SPAN + 10) as usize;
                assert_eq!(read_span(&manager, span), tar[start..start + 100]);
            }
            assert!(
                !blob.is_open(),
                "the reads ended while the prefetch was stuck"
            );
            assert_eq!(LayerMetrics::get(&manager.metrics().demand_requests), 2);
            blob.open();
            prefetch.join().unwrap().unwrap();
        });
        // Span 4 was cached by the read: the prefetch skipped it.
        assert_eq!(LayerMetrics::get(&manager.metrics().prefetch_spans), 5);
    }

    /// A prefetch whose requests fail leaves a layer that reads as well,
    /// and a reader that joined a failing request fetches the span itself.
    #[test]
    fn a_layer_whose_prefetch_fails_still_serves_reads() {
        let (ztoc, tar) = synthetic();
        let blob = Gated::new(tar.clone(), false, true);
        let manager = Arc::new(SpanManager::new(&ztoc, blob.clone(), None).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|scope| {
            let prefetch = scope.spawn(|| manager.prefetch(&[2..4], &options(2, SPAN), &stop));
            blob.wait_for_background(1);
            let reader = scope.spawn(|| read_span(&manager, 2));
            std::thread::sleep(Duration::from_millis(100));
            blob.open();
            let start = (2 * SPAN + 10) as usize;
            assert_eq!(reader.join().unwrap(), tar[start..start + 100]);
            assert!(prefetch.join().unwrap().is_err());
        });
        for span in [2, 3, 7] {
            let start = (span * SPAN + 10) as usize;
            assert_eq!(read_span(&manager, span), tar[start..start + 100]);
        }
        assert_eq!(LayerMetrics::get(&manager.metrics().prefetch_spans), 0);
    }

    #[test]
    fn a_stopped_prefetch_ends_early() {
        let (ztoc, tar) = synthetic();
        let blob = Arc::new(MemoryBlob::new(tar));
        let manager = Arc::new(SpanManager::new(&ztoc, blob.clone(), None).unwrap());
        let stop = Arc::new(AtomicBool::new(true));
        assert!(matches!(
            manager.prefetch(&[0..16], &options(4, SPAN), &stop),
            Err(crate::Error::Stopped)
        ));
        assert_eq!(blob.requests(), 0);
    }
}
