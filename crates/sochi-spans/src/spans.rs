//! The span manager: serves uncompressed bytes of one layer by fetching,
//! verifying, decompressing and caching whole spans (docs/format.md §3.7, §6.6).
//!
//! A read maps its uncompressed range to spans; each span comes from the
//! in-memory cache, else from the on-disk cache, else from the layer blob:
//! one [`BlobReader::read_range`] for a run of adjacent missing spans, the
//! SHA-256 of each span's compressed bytes checked against the zTOC before
//! any byte is used (one retry on mismatch), then inflated from its
//! checkpoint (gzip) or taken as is (tar).
//!
//! Inside this module a span is its index in `spans` (`usize`, what the
//! vectors and runs of spans are indexed by); what leaves it, errors and
//! metrics, names a [`SpanId`].
//!
//! Invariants:
//! - `spans.len() >= 1`; `spans[i]` holds span `i`'s geometry and digest,
//!   copied from the zTOC.
//! - A cached span, in memory or on disk, holds exactly
//!   `spans[i].uncompressed_len()` bytes decompressed from compressed bytes
//!   whose digest matched. On disk the bytes sit at their offsets in one
//!   file per layer with their SHA-256 beside them ([`disk`]), checked on
//!   first load; a bad entry counts as a miss and is overwritten by the
//!   next fetch.
//! - A span is fetched only by the reader that put its [`Flight`] in
//!   `flights`; other readers of that span wait on the flight, with a bound,
//!   instead of fetching it again. No lock is held while fetching: the
//!   flights map is locked only to look up, claim and release.
//! - A finished fetch stores its spans in the caches before it removes
//!   their flights, so a reader that finds no flight finds the span cached
//!   (or starts a fetch that another reader may duplicate, never corrupt).
//! - The memory cache ([`SpanMemory`], maybe shared by many layers) and
//!   `DiskIndex::bytes` stay within their limits after each insert (least
//!   recently used go first); a manager's spans leave the memory cache
//!   when it is dropped.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use sochi_format::{CheckpointRef, CompressionAlgorithm, Sha256Digest, SpanId, Zinfo, Ztoc};

use crate::blob::BlobReader;
use crate::error::{Error, Result};
use crate::load_order::LayerRecording;
use crate::memory::{LayerKey, SpanMemory};
use crate::metrics::LayerMetrics;

/// Default bound of the in-memory span cache, in uncompressed bytes.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;

/// Default bound of a reader's wait for a span that another reader is
/// fetching. The fetching reader's own wait is bounded by its
/// [`BlobReader`]; this only guards against a fetch that never ends.
pub const DEFAULT_WAIT_BOUND: Duration = Duration::from_secs(120);

/// How far from where the last read ended a read may start and still
/// continue a sequential streak (the kernel's readahead requests reach the
/// FUSE threads in any order). One position per layer: two sequential
/// readers of one layer at once look random, and get no
/// [`DISK_READ_AHEAD`].
const SEQUENTIAL_SLACK: u64 = 4 << 20;

/// How many bytes a streak of reads must have read before it counts as
/// sequential. Random reads that happen to land near each other must not
/// pull in 16 MiB each (bench/mount.sh's random reads: 0.29x of ext4 when
/// a single near read was enough).
const SEQUENTIAL_STREAK: u64 = 8 << 20;

/// How far ahead of a sequential reader disk-cached spans are read.
const DISK_READ_AHEAD: u64 = 16 << 20;

/// In a zstd:chunked layer, a read of a file
/// ([`SpanManager::read_in_file`]) that has to fetch also fetches the
/// file's following chunks, as long as the request stays within this many
/// compressed bytes: chunks are tens of KiB, and without it a file costs
/// a round trip per chunk. (SOCI spans do not end at files, and are big
/// enough already: their reads fetch what they touch, as before.)
const FILE_READ_AHEAD: u64 = 1 << 20;

/// One span's geometry (docs/format.md §2.4) and digest.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) start_compressed: u64,
    pub(crate) end_compressed: u64,
    pub(crate) start_uncompressed: u64,
    /// May be below `start_uncompressed` for the last span (see
    /// `sochi_format::SpanGeometry`); such a span holds no TOC data.
    pub(crate) end_uncompressed: u64,
    pub(crate) digest: Sha256Digest,
}

impl Span {
    pub(crate) fn uncompressed_len(&self) -> u64 {
        self.end_uncompressed
            .saturating_sub(self.start_uncompressed)
    }
}

/// Who made a range request: a reader, the prefetch of the layer's
/// prefetch artifact, or the background fetch. Each is counted apart
/// ([`LayerMetrics`]); prefetch and background requests take the blob's
/// background turns ([`BlobReader::read_range_in_background`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FetchKind {
    Demand,
    Prefetch,
    Background,
}

/// A fetch in progress that other readers of its span wait for.
#[derive(Default)]
struct Flight {
    /// `None` until the fetch ends; then the span or why it failed.
    outcome: Mutex<Option<std::result::Result<Arc<[u8]>, String>>>,
    done: Condvar,
    /// A prefetch's flight: when it fails, a reader waiting on it fetches
    /// the span itself instead of failing (the prefetch was not its read).
    prefetch: bool,
}

impl Flight {
    fn new(prefetch: bool) -> Flight {
        Flight {
            prefetch,
            ..Flight::default()
        }
    }

    fn finish(&self, outcome: std::result::Result<Arc<[u8]>, String>) {
        let mut slot = self.outcome.lock();
        if slot.is_none() {
            *slot = Some(outcome);
        }
        self.done.notify_all();
    }

    fn wait(&self, span: usize, bound: Duration) -> Result<Arc<[u8]>> {
        let deadline = Instant::now() + bound;
        let mut slot = self.outcome.lock();
        loop {
            match &*slot {
                Some(Ok(data)) => return Ok(Arc::clone(data)),
                Some(Err(message)) => {
                    return Err(Error::SharedFetch {
                        span: SpanId(span),
                        message: message.clone(),
                    })
                }
                None => {
                    if self.done.wait_until(&mut slot, deadline).timed_out() && slot.is_none() {
                        return Err(Error::WaitTimeout {
                            span: SpanId(span),
                            waited: bound,
                        });
                    }
                }
            }
        }
    }
}

/// The spans one reader (or prefetch worker) claimed to fetch. Dropping
/// it without [`Claim::publish`] (an error, a panic) fails the flights so
/// that no waiter waits for nothing, and releases them.
///
/// The flights leave the map before they finish: a waiter woken by a
/// failed prefetch flight that looks again finds no flight and fetches
/// the span itself; after a publish the spans are already cached.
struct Claim<'m> {
    manager: &'m SpanManager,
    run: Range<usize>,
    flights: Vec<Arc<Flight>>,
    published: bool,
    released: bool,
}

impl Claim<'_> {
    fn new(manager: &SpanManager, run: Range<usize>, flights: Vec<Arc<Flight>>) -> Claim<'_> {
        Claim {
            manager,
            run,
            flights,
            published: false,
            released: false,
        }
    }

    fn publish(mut self, data: &[Arc<[u8]>]) {
        self.release();
        for (flight, data) in self.flights.iter().zip(data) {
            flight.finish(Ok(Arc::clone(data)));
        }
        self.published = true;
    }

    fn fail(mut self, error: &Error) {
        self.release();
        let message = sochi_format::error_chain(error);
        for flight in &self.flights {
            flight.finish(Err(message.clone()));
        }
        self.published = true;
    }

    /// Removes this claim's flights from the map (once: another reader may
    /// have claimed the spans since).
    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let mut flights = self.manager.flights.lock();
        for span in self.run.clone() {
            flights.remove(&span);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.release();
        if !self.published {
            for flight in &self.flights {
                flight.finish(Err("the fetching reader stopped".into()));
            }
        }
    }
}

/// Reads a layer's uncompressed bytes lazily, span by span, through a
/// [`BlobReader`], with a bounded memory cache and an optional bounded disk
/// cache.
pub struct SpanManager {
    algorithm: CompressionAlgorithm,
    /// The span digests are of the uncompressed spans (zstd:chunked,
    /// whose table gives chunk digests): checked after decoding.
    uncompressed_digests: bool,
    /// The zTOC's zinfo blob, parsed again for each fetch (cheap next to a
    /// range request) because [`Zinfo`] borrows.
    zinfo: ZinfoBytes,
    pub(crate) spans: Vec<Span>,
    uncompressed_size: u64,
    pub(crate) blob: Arc<dyn BlobReader>,
    /// The layer's cache directory: its span cache files (see
    /// [`disk`]) and the background fetch's record of a verified blob.
    pub(crate) cache_dir: Option<PathBuf>,
    /// The in-memory span cache, maybe shared with other layers, and this
    /// layer's key in it.
    memory: Arc<SpanMemory>,
    memory_key: LayerKey,
    memory_shared: bool,
    /// This layer's cap within `memory`.
    memory_limit: u64,
    disk: Option<disk::DiskUse>,
    flights: Mutex<HashMap<usize, Arc<Flight>>>,
    wait_bound: Duration,
    pub(crate) metrics: Arc<LayerMetrics>,
    /// Fetches for readers in progress now, and when the last one ended
    /// (milliseconds since `created`): the background fetch yields to them.
    pub(crate) demand_in_flight: AtomicUsize,
    pub(crate) last_demand_ms: AtomicU64,
    pub(crate) created: Instant,
    /// Where the last read ended: a read starting near it continues the
    /// streak of `sequential_bytes` read so far.
    last_read_end: AtomicU64,
    sequential_bytes: AtomicU64,
    /// Disk-cached spans lately advised to the kernel for readahead.
    advised: Mutex<Range<u64>>,
    /// Where reads are recorded for a load order, once set.
    pub(crate) recording: OnceLock<Arc<LayerRecording>>,
    /// The read-ahead thread of a zstd:chunked layer, once started
    /// ([`read_ahead`]).
    read_ahead: OnceLock<read_ahead::ReadAheadSender>,
}

/// Where and how much a [`SpanManager`] caches, and how long its readers
/// wait for each other.
#[derive(Clone, Debug)]
pub struct SpanStoreConfig {
    /// The on-disk cache of the layer (created if missing); `None` for
    /// memory only.
    pub cache_dir: Option<PathBuf>,
    /// Bound of this layer's spans in memory, in uncompressed bytes.
    pub memory_limit: u64,
    /// The in-memory cache to share with other layers (a node-wide
    /// budget); `None`: a cache of the layer's own, of `memory_limit`.
    pub memory: Option<Arc<SpanMemory>>,
    /// Bound of the on-disk cache, in uncompressed bytes (`None`:
    /// unbounded).
    pub disk_limit: Option<u64>,
    /// A bound shared with other layers' disk caches (a node-wide
    /// budget), besides `disk_limit`.
    pub disk_budget: Option<Arc<DiskBudget>>,
    /// Bound of a reader's wait for a span another reader is fetching.
    pub wait_bound: Duration,
}

impl Default for SpanStoreConfig {
    fn default() -> Self {
        SpanStoreConfig {
            cache_dir: None,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            memory: None,
            disk_limit: None,
            disk_budget: None,
            wait_bound: DEFAULT_WAIT_BOUND,
        }
    }
}

/// Where a manager finds its zinfo: a copy of its own, or the zTOC that the
/// layer's filesystem holds anyway (a gzip checkpoint carries a 32 KiB
/// window: 2.6 MiB for a 340 MB layer, not to be held twice).
enum ZinfoBytes {
    Owned(Vec<u8>),
    Shared(Arc<Ztoc>),
}

impl ZinfoBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            ZinfoBytes::Owned(bytes) => bytes,
            ZinfoBytes::Shared(ztoc) => &ztoc.compression.checkpoints,
        }
    }
}

impl SpanManager {
    /// [`SpanManager::new`] with the caches and bounds of `config`, sharing
    /// `ztoc`'s checkpoints instead of copying them.
    pub fn open(
        ztoc: &Arc<Ztoc>,
        blob: Arc<dyn BlobReader>,
        config: &SpanStoreConfig,
    ) -> Result<SpanManager> {
        let mut spans = SpanManager::new(ztoc, blob, config.cache_dir.clone())?;
        spans.zinfo = ZinfoBytes::Shared(Arc::clone(ztoc));
        let mut spans = spans
            .with_memory_limit(config.memory_limit)
            .with_wait_bound(config.wait_bound);
        if let Some(memory) = &config.memory {
            spans = spans.with_shared_memory(Arc::clone(memory));
        }
        if let Some(limit) = config.disk_limit {
            spans = spans.with_disk_limit(limit);
        }
        if let Some(budget) = &config.disk_budget {
            spans = spans.with_disk_budget(budget);
        }
        Ok(spans)
    }

    /// A span manager for the layer `ztoc` describes, reading the layer
    /// from `blob` and keeping spans in memory and, if given, as files in
    /// `cache_dir` (created if missing; spans already there from an earlier
    /// manager of the same layer are used once their hash checks out).
    pub fn new(
        ztoc: &Ztoc,
        blob: Arc<dyn BlobReader>,
        cache_dir: Option<PathBuf>,
    ) -> Result<SpanManager> {
        let geometry = ztoc.span_geometry()?;
        let uncompressed_digests =
            matches!(geometry.zinfo(), Zinfo::Zstd(zstd) if zstd.uncompressed_digests());
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
                    geometry.start_compressed(SpanId(span)),
                    geometry.end_compressed(SpanId(span)),
                    geometry.start_uncompressed(SpanId(span)),
                    geometry.end_uncompressed(SpanId(span)),
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
        let disk = match &cache_dir {
            Some(dir) => Some(disk::DiskCache::open(dir, &spans)?),
            None => None,
        };
        let memory = SpanMemory::new(DEFAULT_MEMORY_LIMIT);
        let memory_key = memory.register();
        Ok(SpanManager {
            algorithm: geometry.algorithm(),
            uncompressed_digests,
            zinfo: ZinfoBytes::Owned(ztoc.compression.checkpoints.clone()),
            spans,
            uncompressed_size: geometry.uncompressed_archive_size(),
            blob,
            cache_dir,
            memory_key,
            memory,
            memory_shared: false,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            disk,
            flights: Mutex::new(HashMap::new()),
            wait_bound: DEFAULT_WAIT_BOUND,
            metrics: Arc::new(LayerMetrics::default()),
            demand_in_flight: AtomicUsize::new(0),
            last_demand_ms: AtomicU64::new(0),
            created: Instant::now(),
            last_read_end: AtomicU64::new(u64::MAX),
            sequential_bytes: AtomicU64::new(0),
            advised: Mutex::new(0..0),
            recording: OnceLock::new(),
            read_ahead: OnceLock::new(),
        })
    }

    /// Bounds this layer's spans in memory to `bytes` (default
    /// [`DEFAULT_MEMORY_LIMIT`]); a cache of its own gets that limit too.
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = bytes;
        if !self.memory_shared {
            self.memory = SpanMemory::new(bytes);
            self.memory_key = self.memory.register();
        }
        self
    }

    /// Keeps this layer's spans in `memory`, shared with other layers under
    /// its limit (evicting across layers by recency), besides this layer's
    /// own cap ([`SpanManager::with_memory_limit`]).
    pub fn with_shared_memory(mut self, memory: Arc<SpanMemory>) -> Self {
        self.memory.remove_layer(self.memory_key);
        self.memory_key = memory.register();
        self.memory = memory;
        self.memory_shared = true;
        self
    }

    /// Bounds the on-disk cache to `bytes` of uncompressed spans (default:
    /// unbounded); the least recently used spans are deleted first.
    pub fn with_disk_limit(self, bytes: u64) -> Self {
        if let Some(disk) = &self.disk {
            disk.limit_to(bytes);
        }
        self
    }

    /// Counts this layer's disk cache into `budget`, shared with other
    /// layers: past its limit the least recently used span of any of them
    /// is deleted. Without a disk cache, nothing.
    pub fn with_disk_budget(self, budget: &Arc<DiskBudget>) -> Self {
        if let Some(disk) = &self.disk {
            disk.join_budget(budget);
        }
        self
    }

    /// Bounds how long a reader waits for a span another reader is fetching
    /// (default [`DEFAULT_WAIT_BOUND`]).
    pub fn with_wait_bound(mut self, bound: Duration) -> Self {
        self.wait_bound = bound;
        self
    }

    /// Counts into `metrics` instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<LayerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The layer's counters.
    pub fn metrics(&self) -> &Arc<LayerMetrics> {
        &self.metrics
    }

    /// Number of spans of the layer.
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// Size of the uncompressed tar (where the tar reader saw its end).
    pub fn uncompressed_size(&self) -> u64 {
        self.uncompressed_size
    }

    /// Compressed bytes fetched from the blob so far for reads, by the
    /// prefetch and by the background fetch (retries included).
    pub fn fetched_bytes(&self) -> u64 {
        LayerMetrics::get(&self.metrics.demand_bytes)
            + LayerMetrics::get(&self.metrics.prefetch_bytes)
            + LayerMetrics::get(&self.metrics.background_bytes)
    }

    /// Number of spans held in the in-memory cache now.
    pub fn cached_spans(&self) -> usize {
        self.memory.layer_spans(self.memory_key)
    }

    /// Compressed size of the spans held locally (memory or disk): what the
    /// reference's status file calls `fetchedSize`.
    pub fn resident_compressed_bytes(&self) -> u64 {
        self.spans
            .iter()
            .enumerate()
            .filter(|(id, _)| self.in_memory(*id) || self.on_disk(*id))
            .map(|(_, span)| span.end_compressed - span.start_compressed)
            .sum()
    }

    /// Whether a read of `offset..offset + len` would find every span it
    /// touches here: in memory, or on disk and checked by this manager, so
    /// that it waits for no fetch and hashes nothing. (A span may be evicted
    /// in between: the read then fetches it, as any read would.)
    pub fn is_resident(&self, offset: u64, len: u64) -> bool {
        if offset >= self.uncompressed_size || len == 0 {
            return true;
        }
        let end = offset + len.min(self.uncompressed_size - offset);
        (self.span_of(offset)..=self.span_of(end - 1)).all(|span| {
            self.memory.contains(self.memory_key, span)
                || self
                    .disk
                    .as_ref()
                    .is_some_and(|disk| disk.is_verified(span))
        })
    }

    /// Reads uncompressed layer bytes at `offset` into `buf`; returns how
    /// many were read: `buf.len()` clamped to the end of the layer.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_in_file(offset, buf, 0)
    }

    /// [`SpanManager::read`] for a reader of a file whose data ends at
    /// uncompressed `file_end`: in a zstd:chunked layer a fetch takes the
    /// file's following chunks along ([`FILE_READ_AHEAD`]).
    pub fn read_in_file(&self, offset: u64, buf: &mut [u8], file_end: u64) -> Result<usize> {
        let file_end = if self.uncompressed_digests {
            file_end
        } else {
            0
        };
        if offset >= self.uncompressed_size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.uncompressed_size - offset);
        let end = offset + len;
        // Spec §3.7, skipping the span that only the exclusive end touches.
        let first = self.span_of(offset);
        let last = self.span_of(end - 1);
        if let Some(recording) = self.recording.get() {
            for (span, info) in self.spans.iter().enumerate().take(last + 1).skip(first) {
                recording.touch(span, info.start_uncompressed, info.end_uncompressed);
            }
        }
        let previous_end = self.last_read_end.swap(end, Ordering::Relaxed);
        let streak = if previous_end.abs_diff(offset) <= SEQUENTIAL_SLACK {
            self.sequential_bytes.fetch_add(len, Ordering::Relaxed) + len
        } else {
            self.sequential_bytes.store(len, Ordering::Relaxed);
            len
        };
        let mut written = 0usize;
        let mut span = first;
        while span <= last {
            // Spans already here are copied from memory or read in place
            // from the disk cache; the first missing one starts a fetch.
            let (from, to) = self.piece_of(span, offset, end)?;
            let piece_len = usize::try_from(to - from).map_err(|_| self.corrupt(span))?;
            let target = buf
                .get_mut(written..written + piece_len)
                .ok_or_else(|| self.corrupt(span))?;
            if piece_len == 0 || self.read_cached_slice(span, from, target)? {
                written += piece_len;
                span += 1;
                continue;
            }
            for data in self.obtain(span, last, file_end)? {
                let (from, to) = self.piece_of(span, offset, end)?;
                let piece = usize::try_from(from)
                    .ok()
                    .zip(usize::try_from(to).ok())
                    .and_then(|(from, to)| data.get(from..to))
                    .ok_or_else(|| self.corrupt(span))?;
                buf.get_mut(written..written + piece.len())
                    .ok_or_else(|| self.corrupt(span))?
                    .copy_from_slice(piece);
                written += piece.len();
                span += 1;
            }
        }
        debug_assert_eq!(written as u64, len);
        // A sequential reader that just entered a new span.
        if streak >= SEQUENTIAL_STREAK && self.span_of(previous_end.saturating_sub(1)) != last {
            self.read_ahead_on_disk(last);
        }
        Ok(written)
    }

    /// The part of `span` that the read `offset..end` covers, relative to
    /// the span's start (empty when it covers none).
    fn piece_of(&self, span: usize, offset: u64, end: u64) -> Result<(u64, u64)> {
        let info = self.span(span)?;
        let from = offset.max(info.start_uncompressed) - info.start_uncompressed;
        let to = end
            .min(info.end_uncompressed)
            .saturating_sub(info.start_uncompressed);
        Ok((from, to.max(from)))
    }

    /// Fills `target` with bytes of `span` from `from` on if the span is
    /// in memory, or on disk and already checked by this manager (then
    /// only the bytes asked for are read). `false`: not here.
    fn read_cached_slice(&self, span: usize, from: u64, target: &mut [u8]) -> Result<bool> {
        let start = usize::try_from(from).map_err(|_| self.corrupt(span))?;
        if let Some(data) = self.memory.get(self.memory_key, span) {
            let piece = data
                .get(start..start + target.len())
                .ok_or_else(|| self.corrupt(span))?;
            target.copy_from_slice(piece);
            LayerMetrics::add(&self.metrics.memory_hits, 1);
            return Ok(true);
        }
        let Some(disk) = &self.disk else {
            return Ok(false);
        };
        let read = disk.read_in_place(span, self.span(span)?, from, target);
        if read {
            LayerMetrics::add(&self.metrics.disk_hits, 1);
        }
        Ok(read)
    }

    /// Asks the kernel to read the disk-cached spans in the
    /// [`DISK_READ_AHEAD`] bytes after `span` now (`POSIX_FADV_WILLNEED`),
    /// for a sequential reader: FUSE threads take the kernel's readahead
    /// requests in any order, which the readahead of the cache file takes
    /// for random reads.
    fn read_ahead_on_disk(&self, span: usize) {
        let (Some(disk), Some(from)) = (
            &self.disk,
            self.spans.get(span).map(|span| span.end_uncompressed),
        ) else {
            return;
        };
        let until = from.saturating_add(DISK_READ_AHEAD);
        let (range, count) = {
            // `advised` is the uncompressed range already advised for this
            // reader. One that went back (starting over, maybe after the
            // kernel dropped the pages) or away starts a new range.
            let mut advised = self.advised.lock();
            if from <= advised.start
                || advised.end < from
                || advised.end > until.saturating_add(DISK_READ_AHEAD)
            {
                *advised = from..from;
            }
            // The first span not advised yet: the first starting at or
            // after the advised range's end; then the run of cached spans.
            let first = self
                .spans
                .partition_point(|info| info.start_uncompressed < advised.end);
            let mut next = first;
            let start = advised.end;
            while let Some(info) = self.spans.get(next) {
                if info.start_uncompressed >= until || !disk.contains(next) {
                    break;
                }
                advised.end = info.end_uncompressed;
                next += 1;
            }
            (start..advised.end, next - first)
        };
        // Best effort: a span evicted meanwhile is simply not read.
        disk.advise(range);
        LayerMetrics::add(&self.metrics.disk_read_ahead, count as u64);
    }

    /// The span holding uncompressed `offset`: the last one starting at or
    /// before it (span starts strictly increase).
    fn span_of(&self, offset: u64) -> usize {
        self.spans
            .partition_point(|span| span.start_uncompressed <= offset)
            .saturating_sub(1)
    }

    pub(crate) fn span(&self, span: usize) -> Result<&Span> {
        self.spans.get(span).ok_or_else(|| self.corrupt(span))
    }

    pub(crate) fn corrupt(&self, span: usize) -> Error {
        Error::Ztoc(sochi_format::Error::Invalid {
            what: "ztoc",
            detail: format!("span {span} does not hold the bytes its geometry says"),
        })
    }

    /// The uncompressed bytes of `span` and maybe of following spans up to
    /// `last` (or, read ahead, up to `file_end`) that were fetched with it:
    /// a non-empty run starting at `span`.
    fn obtain(&self, span: usize, last: usize, file_end: u64) -> Result<Vec<Arc<[u8]>>> {
        if let Some(data) = self.cached(span)? {
            return Ok(vec![data]);
        }
        LayerMetrics::add(&self.metrics.misses, 1);
        // A prefetch that failed is no reason for this read to fail: the
        // reader then fetches the span itself (a bounded number of times,
        // in case another prefetch claims it again meanwhile).
        let mut prefetch_failures = 0;
        let claim = loop {
            let mut flights = self.flights.lock();
            if let Some(flight) = flights.get(&span) {
                let flight = Arc::clone(flight);
                drop(flights);
                match flight.wait(span, self.wait_bound) {
                    Ok(data) => return Ok(vec![data]),
                    Err(Error::SharedFetch { .. }) if flight.prefetch && prefetch_failures < 3 => {
                        prefetch_failures += 1;
                        if let Some(data) = self.cached(span)? {
                            return Ok(vec![data]);
                        }
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            // Extend the run over adjacent spans that nobody is fetching and
            // that are not cached (an in-memory check: no I/O under the lock).
            let mut end = span + 1;
            let free =
                |id: usize| !flights.contains_key(&id) && !self.in_memory(id) && !self.on_disk(id);
            while end <= last && free(end) {
                end += 1;
            }
            // Then the rest of the file, within the read-ahead bound.
            let start = self.spans.get(span).map_or(0, |s| s.start_compressed);
            while self.spans.get(end).is_some_and(|next| {
                next.end_uncompressed <= file_end
                    && next.end_compressed.saturating_sub(start) <= FILE_READ_AHEAD
            }) && free(end)
            {
                end += 1;
            }
            let mut claimed = Vec::with_capacity(end - span);
            for id in span..end {
                let flight = Arc::new(Flight::new(false));
                flights.insert(id, Arc::clone(&flight));
                claimed.push(flight);
            }
            break Claim::new(self, span..end, claimed);
        };
        // A fetch may have ended between the cache look-up and the claim
        // (for a longer run, a rare duplicate fetch is cheaper than undoing
        // the claim).
        if claim.run.len() == 1 {
            if let Some(data) = self.cached(span)? {
                claim.publish(std::slice::from_ref(&data));
                return Ok(vec![data]);
            }
        }
        self.demand_in_flight.fetch_add(1, Ordering::Relaxed);
        let fetched = self.fetch(claim.run.clone(), FetchKind::Demand);
        self.demand_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.last_demand_ms.store(
            u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if fetched.is_ok() {
            self.read_ahead_from(claim.run.end);
        }
        match fetched {
            Ok(run) => {
                for (id, data) in claim.run.clone().zip(&run) {
                    // A failed disk write still leaves the span in memory.
                    if let Err(error) = self.store(id, data, true) {
                        tracing::warn!(span = id, error = %sochi_format::error_chain(&error), "span cache write failed");
                    }
                }
                claim.publish(&run);
                Ok(run)
            }
            Err(error) => {
                LayerMetrics::add(&self.metrics.fetch_failures, 1);
                claim.fail(&error);
                Err(error)
            }
        }
    }

    /// Whether `span` is cached in memory or on disk (no I/O).
    pub(crate) fn is_cached(&self, span: usize) -> bool {
        self.in_memory(span) || self.on_disk(span)
    }

    /// Whether `span` is in the memory cache (not marked as used).
    fn in_memory(&self, span: usize) -> bool {
        self.memory.contains(self.memory_key, span)
    }

    /// Whether `span` is in the disk cache (no I/O).
    fn on_disk(&self, span: usize) -> bool {
        self.disk.as_ref().is_some_and(|disk| disk.contains(span))
    }

    /// `span` from memory, else from disk (then kept in memory too).
    fn cached(&self, span: usize) -> Result<Option<Arc<[u8]>>> {
        if let Some(data) = self.memory.get(self.memory_key, span) {
            LayerMetrics::add(&self.metrics.memory_hits, 1);
            return Ok(Some(data));
        }
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        let Some(data) = disk.load(span, self.span(span)?) else {
            return Ok(None);
        };
        LayerMetrics::add(&self.metrics.disk_hits, 1);
        self.memory
            .insert(self.memory_key, span, Arc::clone(&data), self.memory_limit);
        Ok(Some(data))
    }

    /// Keeps a verified span in memory (if `in_memory`) and, if configured,
    /// on disk, evicting the least recently used spans past the disk bound.
    pub(crate) fn store(&self, span: usize, data: &Arc<[u8]>, in_memory: bool) -> Result<()> {
        if in_memory {
            self.memory
                .insert(self.memory_key, span, Arc::clone(data), self.memory_limit);
        }
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let evicted = disk.store(span, &self.spans, data)?;
        LayerMetrics::add(&self.metrics.disk_evictions, evicted as u64);
        Ok(())
    }

    /// Fetches spans `run` with one range read, verifies every span's
    /// digest (one retry of the whole read on mismatch), and decompresses.
    fn fetch(&self, run: Range<usize>, kind: FetchKind) -> Result<Vec<Arc<[u8]>>> {
        let first = *self.span(run.start)?;
        let last = *self.span(run.end.saturating_sub(1))?;
        let (start, end) = (first.start_compressed, last.end_compressed);
        let mut retried = false;
        // Background fetches are not timed: they are not what a reader waits on.
        let timed = !matches!(kind, FetchKind::Background);
        let mut clock = Instant::now();
        let mut lap = |metrics: &LayerMetrics, stage: usize| {
            if timed {
                metrics.add_stage(stage, clock.elapsed());
                clock = Instant::now();
            }
        };
        let zinfo = Zinfo::parse(self.algorithm, self.zinfo.bytes())?;
        let spans = loop {
            let bytes = self.fetch_range(start..end, kind)?;
            lap(&self.metrics, 0);
            let verified = self.verify(run.clone(), start, &bytes);
            lap(&self.metrics, 1);
            // Chunks of zstd:chunked are checked as they are decoded.
            let decoded = verified.and_then(|()| {
                run.clone()
                    .map(|span| {
                        let compressed = self.compressed_slice(span, start, &bytes)?;
                        self.decompress(&zinfo, span, compressed)
                    })
                    .collect::<Result<Vec<_>>>()
            });
            lap(&self.metrics, 2);
            match decoded {
                Ok(spans) => break spans,
                Err(error) if error.is_bad_bytes() => {
                    LayerMetrics::add(&self.metrics.digest_mismatches, 1);
                    if retried {
                        return Err(error);
                    }
                    // The blob may be a registry or a local file: the bytes
                    // are read once more from wherever they came.
                    tracing::warn!(spans = ?run, error = %error, "span digest mismatch; reading these spans from the layer blob once more");
                    retried = true;
                }
                Err(error) => return Err(error),
            }
        };
        match kind {
            FetchKind::Demand => LayerMetrics::add(&self.metrics.demand_spans, run.len() as u64),
            FetchKind::Prefetch => {
                LayerMetrics::add(&self.metrics.prefetch_spans, run.len() as u64)
            }
            // Counted by the background fetch as it caches them.
            FetchKind::Background => {}
        }
        Ok(spans)
    }

    /// Exactly `range` of the blob, counted as a `kind` read.
    pub(crate) fn fetch_range(&self, range: Range<u64>, kind: FetchKind) -> Result<Vec<u8>> {
        let (start, end) = (range.start, range.end);
        let (requests, bytes_counter) = match kind {
            FetchKind::Demand => (&self.metrics.demand_requests, &self.metrics.demand_bytes),
            FetchKind::Prefetch => (
                &self.metrics.prefetch_requests,
                &self.metrics.prefetch_bytes,
            ),
            FetchKind::Background => (
                &self.metrics.background_requests,
                &self.metrics.background_bytes,
            ),
        };
        LayerMetrics::add(requests, 1);
        // Prefetch requests take the background turns, never a reader's:
        // see `prefetch`.
        let read = match kind {
            FetchKind::Demand => self.blob.read_range(range),
            FetchKind::Prefetch | FetchKind::Background => {
                self.blob.read_range_in_background(range)
            }
        };
        let bytes = read.map_err(|source| Error::Blob { start, end, source })?;
        LayerMetrics::add(bytes_counter, bytes.len() as u64);
        if bytes.len() as u64 != end - start {
            return Err(Error::BlobLength {
                start,
                end,
                actual: bytes.len(),
            });
        }
        Ok(bytes)
    }

    /// The bytes of `span` within `bytes`, which start at blob offset `start`.
    pub(crate) fn compressed_slice<'b>(
        &self,
        span: usize,
        start: u64,
        bytes: &'b [u8],
    ) -> Result<&'b [u8]> {
        let info = self.span(span)?;
        info.start_compressed
            .checked_sub(start)
            .and_then(|from| usize::try_from(from).ok())
            .zip(usize::try_from(info.end_compressed - start).ok())
            .and_then(|(from, to)| bytes.get(from..to))
            .ok_or_else(|| self.corrupt(span))
    }

    pub(crate) fn verify(&self, run: Range<usize>, start: u64, bytes: &[u8]) -> Result<()> {
        if self.uncompressed_digests {
            return Ok(());
        }
        for span in run {
            let actual = Sha256Digest::of(self.compressed_slice(span, start, bytes)?);
            let expected = self.span(span)?.digest;
            if actual != expected {
                return Err(Error::SpanDigestMismatch {
                    span: SpanId(span),
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Decompresses verified span bytes.
    pub(crate) fn inflate(&self, span: usize, compressed: &[u8]) -> Result<Arc<[u8]>> {
        let zinfo = Zinfo::parse(self.algorithm, self.zinfo.bytes())?;
        self.decompress(&zinfo, span, compressed)
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
                let mut out = zeroed_span(len);
                let buffer = Arc::get_mut(&mut out).ok_or_else(|| self.corrupt(span))?;
                sochi_zran::inflate_span(checkpoint, compressed, 0, buffer).map_err(|source| {
                    Error::Inflate {
                        span: SpanId(span),
                        source,
                    }
                })?;
                Ok(out)
            }
            Zinfo::Zstd(_) => {
                let mut out = zeroed_span(len);
                let buffer = Arc::get_mut(&mut out).ok_or_else(|| self.corrupt(span))?;
                let zstd_error = |detail: String| Error::Zstd {
                    span: SpanId(span),
                    detail,
                };
                // Every frame of the span, skippable ones skipped; more
                // output than the span holds is an error, not a bigger
                // buffer.
                sochi_zran::decode_zstd_span(compressed, buffer).map_err(|error| match error {
                    sochi_zran::Error::Zstd { detail } => zstd_error(detail),
                    other => zstd_error(other.to_string()),
                })?;
                if self.uncompressed_digests {
                    let actual = Sha256Digest::of(buffer);
                    let expected = self.span(span)?.digest;
                    if actual != expected {
                        return Err(Error::ChunkDigestMismatch {
                            span: SpanId(span),
                            expected,
                            actual,
                        });
                    }
                }
                Ok(out)
            }
        }
    }
}

/// A zeroed buffer for one span's uncompressed bytes, made where the
/// span is then shared from. (A `Vec` filled first and turned into an
/// `Arc<[u8]>` is copied whole into a second allocation: per 4 MiB span
/// one more copy and a thousand more page faults, for every span
/// inflated or read back from disk.)
fn zeroed_span(len: usize) -> Arc<[u8]> {
    std::iter::repeat_n(0u8, len).collect()
}

impl Drop for SpanManager {
    fn drop(&mut self) {
        // A shared cache outlives its layers: an unmounted layer's spans
        // would otherwise hold the budget until evicted.
        self.memory.remove_layer(self.memory_key);
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
mod chunked_tests;
#[cfg(test)]
mod tests;

mod budget;
mod disk;
mod prefetch;
mod queue;
mod read_ahead;

pub use budget::DiskBudget;
pub use prefetch::{prefetch_order, PrefetchOptions, PrefetchRanges};
pub use queue::{PrefetchJob, PrefetchQueue};
