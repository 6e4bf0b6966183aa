//! The background fetch: after a mount, the rest of the layer streams in
//! behind the reads (docs/format.md §6.7, done differently).
//!
//! The reference fetches one span per 500 ms across all layers. Here each
//! layer is read front to back in range requests of about
//! [`BackgroundOptions::chunk_bytes`], back to back, so it goes as fast as
//! the link carries; before each request it waits until no read has been
//! fetching for [`BackgroundOptions::idle`], so reads are served first and
//! a starting container is not slowed by its own background fetch.
//!
//! Reading the blob in order also gives its whole digest: when the last
//! byte is in, the SHA-256 of the blob must equal the layer digest, which
//! checks the zTOC against the layer as a whole (each span was already
//! checked against its own digest). A `verified` file in the cache dir
//! records that, so a later manager does not fetch the layer again.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sochi_format::Sha256Digest;

use crate::error::{Error, Result};
use crate::metrics::LayerMetrics;
use crate::SpanManager;

/// Name of the marker file in the span cache dir.
const VERIFIED: &str = "verified";

/// How a background fetch paces itself.
#[derive(Clone, Debug)]
pub struct BackgroundOptions {
    /// Aim for range requests of this many compressed bytes (whole spans;
    /// at least one span).
    pub chunk_bytes: u64,
    /// Fetch only after reads have fetched nothing for this long.
    pub idle: Duration,
    /// Attempts per request before the background fetch gives up.
    pub attempts: u32,
    /// First pause after a failed request; doubled after each failure.
    pub backoff: Duration,
    /// Wait this long after the start before fetching anything: a layer
    /// is mounted for a container about to start, whose reads come first
    /// (the reference's `silence_period_msec`).
    pub start_delay: Duration,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        BackgroundOptions {
            chunk_bytes: 4 << 20,
            idle: Duration::from_millis(200),
            attempts: 5,
            backoff: Duration::from_millis(250),
            start_delay: Duration::from_secs(1),
        }
    }
}

impl SpanManager {
    /// Whether an earlier background fetch read the whole blob and found
    /// it to be `layer_digest` (recorded in the span cache dir).
    pub fn is_verified(&self, layer_digest: &str) -> bool {
        let Some(dir) = &self.cache_dir else {
            return false;
        };
        fs::read_to_string(dir.join(VERIFIED)).is_ok_and(|text| text.trim() == layer_digest)
    }

    /// Reads the whole layer blob (`blob_size` bytes) front to back, puts
    /// every span not yet cached into the disk cache, and checks the
    /// blob's digest against `layer_digest`. Returns early with
    /// [`Error::Stopped`] once `stop` is set. Without a disk cache it only
    /// checks the digest.
    pub fn fetch_all(
        &self,
        layer_digest: &str,
        blob_size: u64,
        options: &BackgroundOptions,
        stop: &AtomicBool,
    ) -> Result<()> {
        if self.is_verified(layer_digest) {
            self.metrics.background_complete.store(1, Ordering::Relaxed);
            return Ok(());
        }
        sleep_unless_stopped(options.start_delay, stop)?;
        let mut hasher = Sha256::new();
        let mut pos = 0u64;
        let mut next = 0usize;
        let count = self.spans.len();
        while next < count || pos < blob_size {
            self.wait_for_quiet(options.idle, stop)?;
            // Held through the request, the inflating and the writing: the
            // buffers of a chunk (its compressed bytes and inflated spans,
            // about 8 MiB) live only while a slot is held.
            let _slot = background_slot(stop)?;
            // The run of spans of this request, and its byte range. Spans of
            // a gzip layer may share a byte, so a request may start before
            // `pos`; only bytes from `pos` on are hashed.
            let run_start = next;
            let (request_start, mut end) = match self.spans.get(next) {
                Some(first) => {
                    let start = first.start_compressed.min(pos);
                    next += 1;
                    while next < count
                        && self.spans[next].end_compressed - start <= options.chunk_bytes
                    {
                        next += 1;
                    }
                    (start, self.spans[next - 1].end_compressed)
                }
                None => (pos, blob_size),
            };
            if next == count {
                end = end.max(blob_size);
            }
            let bytes = self.fetch_chunk(request_start..end, run_start..next, options, stop)?;
            let hashed_from =
                usize::try_from(pos - request_start).map_err(|_| self.corrupt(run_start))?;
            hasher.update(bytes.get(hashed_from..).unwrap_or_default());
            for span in run_start..next {
                if self.cache_dir.is_none() || self.is_cached(span) {
                    continue;
                }
                let compressed = self.compressed_slice(span, request_start, &bytes)?;
                let data = self.inflate(span, compressed)?;
                self.store(span, &data, false)?;
                LayerMetrics::add(&self.metrics.background_spans, 1);
            }
            pos = end;
        }
        let actual = Sha256Digest(hasher.finalize().into()).to_string();
        if actual != layer_digest {
            return Err(Error::LayerDigestMismatch {
                expected: layer_digest.to_string(),
                actual,
            });
        }
        if let Some(dir) = &self.cache_dir {
            let path = dir.join(VERIFIED);
            fs::write(&path, layer_digest).map_err(|source| Error::CacheIo { path, source })?;
        }
        self.metrics.background_complete.store(1, Ordering::Relaxed);
        Ok(())
    }

    /// One background request, verified span by span; failed requests and
    /// digest mismatches are tried again with a growing pause.
    fn fetch_chunk(
        &self,
        range: std::ops::Range<u64>,
        spans: std::ops::Range<usize>,
        options: &BackgroundOptions,
        stop: &AtomicBool,
    ) -> Result<Vec<u8>> {
        let mut pause = options.backoff;
        let mut attempt = 1;
        loop {
            let outcome = self
                .fetch_range(range.clone(), crate::spans::FetchKind::Background)
                .and_then(|bytes| {
                    self.verify(spans.clone(), range.start, &bytes)
                        .map(|()| bytes)
                });
            match outcome {
                Ok(bytes) => return Ok(bytes),
                Err(error) if attempt >= options.attempts.max(1) => return Err(error),
                Err(error) => {
                    if matches!(error, Error::SpanDigestMismatch { .. }) {
                        LayerMetrics::add(&self.metrics.digest_mismatches, 1);
                    }
                    tracing::debug!(error = %error, attempt, "background fetch request failed");
                    sleep_unless_stopped(pause, stop)?;
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }

    /// Returns once no read has fetched for `idle`.
    fn wait_for_quiet(&self, idle: Duration, stop: &AtomicBool) -> Result<()> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Stopped);
            }
            let busy = self.demand_in_flight.load(Ordering::Relaxed) > 0 || {
                let last = self.last_demand_ms.load(Ordering::Relaxed);
                let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
                last != 0
                    && now.saturating_sub(last)
                        < u64::try_from(idle.as_millis()).unwrap_or(u64::MAX)
            };
            if !busy {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Background fetches of the process working at once at most: each
/// holds a chunk's buffers while it fetches, inflates and writes, so that
/// seventy-four layers fetching in the background at once (bench/load.sh)
/// held 320 MiB; with a few at a time they take turns, and the link is as
/// busy as before.
fn background_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// A held background slot; given back when dropped.
struct BackgroundSlot;

static SLOTS_BUSY: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static SLOT_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// Waits for a background slot (or `stop`).
fn background_slot(stop: &AtomicBool) -> Result<BackgroundSlot> {
    let limit = background_slots();
    let mut busy = SLOTS_BUSY.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        if *busy < limit {
            *busy += 1;
            return Ok(BackgroundSlot);
        }
        busy = SLOT_FREED
            .wait_timeout(busy, Duration::from_millis(50))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

impl Drop for BackgroundSlot {
    fn drop(&mut self) {
        let mut busy = SLOTS_BUSY.lock().unwrap_or_else(|e| e.into_inner());
        *busy = busy.saturating_sub(1);
        SLOT_FREED.notify_one();
    }
}

/// Sleeps `pause`, waking early with [`Error::Stopped`] once `stop` is set.
fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + pause;
    while Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        std::thread::sleep(Duration::from_millis(20).min(pause));
    }
    Ok(())
}
