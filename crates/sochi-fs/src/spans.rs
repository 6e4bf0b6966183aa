//! The span manager: serves uncompressed bytes of one layer by fetching,
//! verifying, decompressing and caching whole spans (spec §3.7, §6.6).
//!
//! A read maps its uncompressed range to spans; each span comes from the
//! in-memory cache, else from the on-disk cache, else from the layer blob:
//! one [`BlobReader::read_range`] for a run of adjacent missing spans, the
//! SHA-256 of each span's compressed bytes checked against the zTOC before
//! any byte is used (one retry on mismatch), then inflated from its
//! checkpoint (gzip) or taken as is (tar).
//!
//! Invariants:
//! - `spans.len() >= 1` and `fetch_locks.len() == spans.len()`; `spans[i]`
//!   holds span `i`'s geometry and digest, copied from the zTOC.
//! - A cached span, in memory or on disk, holds exactly
//!   `spans[i].uncompressed_len()` bytes decompressed from compressed bytes
//!   whose digest matched. A disk entry is the SHA-256 of those bytes
//!   followed by the bytes, checked on load; a bad entry counts as a miss
//!   and is overwritten by the next fetch.
//! - A span is fetched only while its fetch lock is held and after a second
//!   cache look-up under that lock, so concurrent readers of one span share
//!   one fetch. Locks are taken in ascending span order, so no deadlock.
//! - `MemoryCache::bytes` is the sum of the cached lengths; after each
//!   insert it is at most the memory limit (least recently used go first).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sochi_format::{CheckpointRef, CompressionAlgorithm, Sha256Digest, Zinfo, Ztoc};

use crate::blob::BlobReader;
use crate::error::{Error, Result};

/// Default bound of the in-memory span cache, in uncompressed bytes.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;

/// Size of the SHA-256 that heads each on-disk cache file.
const DISK_DIGEST_LEN: usize = 32;

/// One span's geometry (spec §2.4) and digest.
#[derive(Clone, Copy, Debug)]
struct Span {
    start_compressed: u64,
    end_compressed: u64,
    start_uncompressed: u64,
    /// May be below `start_uncompressed` for the last span (see
    /// `sochi_format::SpanGeometry`); such a span holds no TOC data.
    end_uncompressed: u64,
    digest: Sha256Digest,
}

impl Span {
    fn uncompressed_len(&self) -> u64 {
        self.end_uncompressed
            .saturating_sub(self.start_uncompressed)
    }
}

/// Uncompressed spans by id, each with the tick of its last use.
#[derive(Default)]
struct MemoryCache {
    entries: HashMap<usize, (Arc<[u8]>, u64)>,
    bytes: u64,
    tick: u64,
}

impl MemoryCache {
    fn get(&mut self, span: usize) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(&span)?;
        entry.1 = tick;
        Some(Arc::clone(&entry.0))
    }

    fn insert(&mut self, span: usize, data: Arc<[u8]>, limit: u64) {
        self.tick += 1;
        self.bytes += data.len() as u64;
        if let Some((old, _)) = self.entries.insert(span, (data, self.tick)) {
            self.bytes = self.bytes.saturating_sub(old.len() as u64);
        }
        while self.bytes > limit {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, tick))| *tick)
                .map(|(span, _)| *span)
            else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(old.len() as u64);
            }
        }
    }
}

/// Reads a layer's uncompressed bytes lazily, span by span, through a
/// [`BlobReader`], with a bounded memory cache and an optional disk cache.
pub struct SpanManager {
    algorithm: CompressionAlgorithm,
    /// The zTOC's zinfo blob, parsed again for each fetch (cheap next to a
    /// range request) because [`Zinfo`] borrows.
    zinfo: Vec<u8>,
    spans: Vec<Span>,
    uncompressed_size: u64,
    blob: Arc<dyn BlobReader>,
    /// One file per span, named by its decimal id (spec §6.6).
    cache_dir: Option<PathBuf>,
    memory: Mutex<MemoryCache>,
    memory_limit: u64,
    fetch_locks: Vec<Mutex<()>>,
    fetched_bytes: AtomicU64,
    /// Makes temp file names unique within this process.
    temp_counter: AtomicU64,
}

impl SpanManager {
    /// A span manager for the layer `ztoc` describes, reading the layer
    /// from `blob` and keeping spans in memory and, if given, as files in
    /// `cache_dir` (created if missing).
    pub fn new(
        ztoc: &Ztoc,
        blob: Arc<dyn BlobReader>,
        cache_dir: Option<PathBuf>,
    ) -> Result<SpanManager> {
        let geometry = ztoc.span_geometry()?;
        let invalid = |detail: String| {
            Error::Ztoc(sochi_format::Error::Invalid {
                what: "ztoc",
                detail,
            })
        };
        let digests = &ztoc.compression.span_digests;
        if digests.len() != geometry.span_count() {
            return Err(invalid(format!(
                "{} span digests for {} spans",
                digests.len(),
                geometry.span_count()
            )));
        }
        let spans = digests
            .iter()
            .enumerate()
            .map(|(span, digest)| {
                match (
                    geometry.start_compressed(span),
                    geometry.end_compressed(span),
                    geometry.start_uncompressed(span),
                    geometry.end_uncompressed(span),
                ) {
                    (Some(start_compressed), Some(end_compressed), Some(start), Some(end))
                        if start_compressed <= end_compressed =>
                    {
                        Ok(Span {
                            start_compressed,
                            end_compressed,
                            start_uncompressed: start,
                            end_uncompressed: end,
                            digest: *digest,
                        })
                    }
                    _ => Err(invalid(format!("span {span} has no valid extent"))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(dir) = &cache_dir {
            fs::create_dir_all(dir).map_err(|source| Error::CacheIo {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(SpanManager {
            algorithm: geometry.algorithm(),
            zinfo: ztoc.compression.checkpoints.clone(),
            fetch_locks: spans.iter().map(|_| Mutex::new(())).collect(),
            spans,
            uncompressed_size: geometry.uncompressed_archive_size(),
            blob,
            cache_dir,
            memory: Mutex::new(MemoryCache::default()),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            fetched_bytes: AtomicU64::new(0),
            temp_counter: AtomicU64::new(0),
        })
    }

    /// Bounds the in-memory cache to `bytes` of uncompressed spans
    /// (default [`DEFAULT_MEMORY_LIMIT`]).
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Number of spans of the layer.
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// Size of the uncompressed tar (where the tar reader saw its end).
    pub fn uncompressed_size(&self) -> u64 {
        self.uncompressed_size
    }

    /// Compressed bytes fetched from the blob so far (retries included).
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes.load(Ordering::Relaxed)
    }

    /// Number of spans held in the in-memory cache now.
    pub fn cached_spans(&self) -> usize {
        self.memory.lock().entries.len()
    }

    /// Reads uncompressed layer bytes at `offset` into `buf`; returns how
    /// many were read: `buf.len()` clamped to the end of the layer.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.uncompressed_size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.uncompressed_size - offset);
        let end = offset + len;
        // Spec §3.7, skipping the span that only the exclusive end touches.
        let first = self.span_of(offset);
        let last = self.span_of(end - 1);
        let mut written = 0usize;
        let mut span = first;
        while span <= last {
            for data in self.obtain(span, last)? {
                let info = self.span(span)?;
                let from = offset.max(info.start_uncompressed) - info.start_uncompressed;
                let to = end
                    .min(info.end_uncompressed)
                    .saturating_sub(info.start_uncompressed);
                if from < to {
                    let piece = usize::try_from(from)
                        .ok()
                        .zip(usize::try_from(to).ok())
                        .and_then(|(from, to)| data.get(from..to))
                        .ok_or_else(|| self.corrupt(span))?;
                    let target = buf
                        .get_mut(written..written + piece.len())
                        .ok_or_else(|| self.corrupt(span))?;
                    target.copy_from_slice(piece);
                    written += piece.len();
                }
                span += 1;
            }
        }
        debug_assert_eq!(written as u64, len);
        Ok(written)
    }

    /// The span holding uncompressed `offset`: the last one starting at or
    /// before it (span starts strictly increase).
    fn span_of(&self, offset: u64) -> usize {
        self.spans
            .partition_point(|span| span.start_uncompressed <= offset)
            .saturating_sub(1)
    }

    fn span(&self, span: usize) -> Result<&Span> {
        self.spans.get(span).ok_or_else(|| self.corrupt(span))
    }

    fn corrupt(&self, span: usize) -> Error {
        Error::Ztoc(sochi_format::Error::Invalid {
            what: "ztoc",
            detail: format!("span {span} does not hold the bytes its geometry says"),
        })
    }

    /// The uncompressed bytes of `span` and maybe of following spans up to
    /// `last` that were fetched with it: a non-empty run starting at `span`.
    fn obtain(&self, span: usize, last: usize) -> Result<Vec<Arc<[u8]>>> {
        if let Some(data) = self.cached(span)? {
            return Ok(vec![data]);
        }
        let lock = self
            .fetch_locks
            .get(span)
            .ok_or_else(|| self.corrupt(span))?;
        let mut guards = vec![lock.lock()];
        // Another reader may have fetched it while we waited.
        if let Some(data) = self.cached(span)? {
            return Ok(vec![data]);
        }
        // Extend the run over adjacent missing spans nobody else is fetching.
        let mut end = span + 1;
        while end <= last {
            let Some(guard) = self.fetch_locks.get(end).and_then(Mutex::try_lock) else {
                break;
            };
            if self.cached(end)?.is_some() {
                break;
            }
            guards.push(guard);
            end += 1;
        }
        let run = self.fetch(span..end)?;
        for (id, data) in (span..end).zip(&run) {
            self.store(id, data)?;
        }
        drop(guards);
        Ok(run)
    }

    /// `span` from memory, else from disk (then kept in memory too).
    fn cached(&self, span: usize) -> Result<Option<Arc<[u8]>>> {
        if let Some(data) = self.memory.lock().get(span) {
            return Ok(Some(data));
        }
        let Some(dir) = &self.cache_dir else {
            return Ok(None);
        };
        let path = dir.join(span.to_string());
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::CacheIo { path, source }),
        };
        let expected_len = self.span(span)?.uncompressed_len();
        let (digest, data) = bytes.split_at(DISK_DIGEST_LEN.min(bytes.len()));
        if data.len() as u64 != expected_len || Sha256Digest::of(data).0[..] != *digest {
            return Ok(None);
        }
        let data: Arc<[u8]> = Arc::from(data);
        self.memory
            .lock()
            .insert(span, Arc::clone(&data), self.memory_limit);
        Ok(Some(data))
    }

    /// Keeps a freshly fetched span in memory and, if configured, on disk
    /// (written to a temp file, then renamed into place).
    fn store(&self, span: usize, data: &Arc<[u8]>) -> Result<()> {
        self.memory
            .lock()
            .insert(span, Arc::clone(data), self.memory_limit);
        let Some(dir) = &self.cache_dir else {
            return Ok(());
        };
        let counter = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!("wip-{span}-{}-{counter}", std::process::id()));
        let written = fs::File::create(&temp).and_then(|mut file| {
            file.write_all(&Sha256Digest::of(data).0)?;
            file.write_all(data)
        });
        let path = dir.join(span.to_string());
        let result = written.and_then(|()| fs::rename(&temp, &path));
        result.map_err(|source| {
            let _ = fs::remove_file(&temp);
            Error::CacheIo { path, source }
        })
    }

    /// Fetches spans `run` with one range read, verifies every span's
    /// digest (one retry of the whole read on mismatch), and decompresses.
    fn fetch(&self, run: Range<usize>) -> Result<Vec<Arc<[u8]>>> {
        let first = *self.span(run.start)?;
        let last = *self.span(run.end.saturating_sub(1))?;
        let (start, end) = (first.start_compressed, last.end_compressed);
        let mut retried = false;
        let bytes = loop {
            let bytes = self
                .blob
                .read_range(start..end)
                .map_err(|source| Error::Blob { start, end, source })?;
            self.fetched_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if bytes.len() as u64 != end - start {
                return Err(Error::BlobLength {
                    start,
                    end,
                    actual: bytes.len(),
                });
            }
            match self.verify(run.clone(), start, &bytes) {
                Ok(()) => break bytes,
                Err(_) if !retried => retried = true,
                Err(error) => return Err(error),
            }
        };
        let zinfo = Zinfo::parse(self.algorithm, &self.zinfo)?;
        run.map(|span| {
            let compressed = self.compressed_slice(span, start, &bytes)?;
            self.decompress(&zinfo, span, compressed)
        })
        .collect()
    }

    /// The bytes of `span` within `bytes`, which start at blob offset `start`.
    fn compressed_slice<'b>(&self, span: usize, start: u64, bytes: &'b [u8]) -> Result<&'b [u8]> {
        let info = self.span(span)?;
        usize::try_from(info.start_compressed - start)
            .ok()
            .zip(usize::try_from(info.end_compressed - start).ok())
            .and_then(|(from, to)| bytes.get(from..to))
            .ok_or_else(|| self.corrupt(span))
    }

    fn verify(&self, run: Range<usize>, start: u64, bytes: &[u8]) -> Result<()> {
        for span in run {
            let actual = Sha256Digest::of(self.compressed_slice(span, start, bytes)?);
            let expected = self.span(span)?.digest;
            if actual != expected {
                return Err(Error::SpanDigestMismatch {
                    span,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }

    fn decompress(&self, zinfo: &Zinfo<'_>, span: usize, compressed: &[u8]) -> Result<Arc<[u8]>> {
        let len =
            usize::try_from(self.span(span)?.uncompressed_len()).map_err(|_| self.corrupt(span))?;
        match zinfo {
            Zinfo::Tar(_) => compressed
                .get(..len)
                .map(Arc::from)
                .ok_or_else(|| self.corrupt(span)),
            Zinfo::Gzip(gzip) => {
                let checkpoint: CheckpointRef<'_> =
                    gzip.checkpoint(span).ok_or_else(|| self.corrupt(span))?;
                let mut out = vec![0; len];
                sochi_zran::inflate_span(checkpoint, compressed, 0, &mut out)
                    .map_err(|source| Error::Inflate { span, source })?;
                Ok(Arc::from(out))
            }
        }
    }
}

impl std::fmt::Debug for SpanManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanManager")
            .field("algorithm", &self.algorithm)
            .field("spans", &self.spans.len())
            .field("uncompressed_size", &self.uncompressed_size)
            .field("cache_dir", &self.cache_dir)
            .field("memory_limit", &self.memory_limit)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
