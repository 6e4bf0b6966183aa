//! The prefetch of a layer's prefetch artifact (docs/format.md §3.8,
//! §6.8, done differently): its spans are fetched at once after the
//! mount, in the artifact's order, with a few range requests in flight.
//!
//! The reference resolves the spans before the mount returns. Here the
//! mount does not wait: the prefetch runs behind the container's first
//! reads, and a read of a span being prefetched waits on that fetch (its
//! [`Flight`]) instead of fetching the span again. Spans are claimed only
//! when their request starts, so a read of a span still queued (or of a
//! span not listed) fetches it at once, as any read does.
//!
//! Turns: prefetch requests go through
//! [`BlobReader::read_range_in_background`](crate::BlobReader::read_range_in_background),
//! the background class of the registry's per-host turns, never a reader's
//! turn. A third class would let a prefetch go past a background fetch of
//! another layer, but it would also add a third bound to size, and a
//! layer's own background fetch starts only after its prefetch anyway;
//! what matters is that readers' turns stay free for readers.
//!
//! Invariants: a prefetch worker claims a span only if no flight holds it
//! and it is not cached, under the flights lock, like a reader
//! (`SpanManager::obtain`); it stores the spans (memory and disk) before it
//! publishes them. A failed prefetch flight sends its waiters back to
//! fetch the span themselves.

use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sochi_format::PrefetchArtifact;

use super::{Claim, FetchKind, Flight, PrefetchQueue, SpanManager};
use crate::error::{Error, Result};
use crate::metrics::LayerMetrics;

/// How a prefetch runs.
#[derive(Clone, Debug)]
pub struct PrefetchOptions {
    /// Range requests in flight at once for this layer (at least 1).
    pub concurrency: usize,
    /// Adjacent spans are merged into requests of up to this many
    /// compressed bytes (at least one span per request).
    pub request_bytes: u64,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        PrefetchOptions {
            concurrency: 4,
            request_bytes: 4 << 20,
        }
    }
}

/// Half-open span ranges to prefetch, each with its priority (lower
/// first), in the order they are fetched.
pub type PrefetchRanges = Vec<(Range<usize>, i64)>;

/// The span ranges of `artifact` in the order they are fetched, each
/// with its priority: the artifact's order, lower `priority` first (a
/// stable sort), as half-open ranges. Ranges that start below span 0 or
/// end before they start are skipped
/// ([`PrefetchArtifact::validate_against`] refuses them before this is
/// called).
pub fn prefetch_order(artifact: &PrefetchArtifact) -> PrefetchRanges {
    let mut ranges: Vec<_> = artifact.prefetch_spans.iter().collect();
    ranges.sort_by_key(|range| range.priority);
    ranges
        .into_iter()
        .filter_map(|range| {
            let start = usize::try_from(range.start_span).ok()?;
            let end = usize::try_from(range.end_span).ok()?;
            (start <= end).then(|| (start..end.saturating_add(1), range.priority))
        })
        .collect()
}

impl SpanManager {
    /// Fetches the spans of `ranges` (in that order, each span once) into
    /// the caches through a [`PrefetchQueue`] of its own, with up to
    /// [`PrefetchOptions::concurrency`] requests in flight; spans already
    /// cached or being fetched are skipped. Returns when every request has
    /// ended: [`Error::Stopped`] if `stop` was set, else the first failure
    /// (a failed request does not stop the others).
    pub fn prefetch(
        self: &Arc<Self>,
        ranges: &[Range<usize>],
        options: &PrefetchOptions,
        stop: &Arc<AtomicBool>,
    ) -> Result<()> {
        let ranges: PrefetchRanges = ranges.iter().cloned().zip(0..).collect();
        let (sender, outcome) = std::sync::mpsc::channel();
        let job = PrefetchQueue::new(options.clone()).submit(
            Arc::clone(self),
            &ranges,
            Arc::clone(stop),
            move |result| {
                let _ = sender.send(result);
            },
        );
        job.wait();
        outcome.recv().unwrap_or(Err(Error::Stopped))
    }

    /// The requests of a prefetch: runs of adjacent spans of `ranges`, in
    /// order, each span once, each run at most `request_bytes` of
    /// compressed bytes (or one span), spans past the layer's end left
    /// out; each with the priority of the range it comes from.
    pub(crate) fn prefetch_requests(
        &self,
        ranges: &[(Range<usize>, i64)],
        request_bytes: u64,
    ) -> Vec<(Range<usize>, i64)> {
        let count = self.spans.len();
        let mut seen = vec![false; count];
        let mut requests: Vec<(Range<usize>, i64)> = Vec::new();
        for (range, priority) in ranges {
            let priority = *priority;
            let mut current: Option<Range<usize>> = None;
            let (from, to) = (range.start.min(count), range.end.min(count));
            for (span, seen) in seen.iter_mut().enumerate().take(to).skip(from) {
                if *seen {
                    if let Some(run) = current.take() {
                        requests.push((run, priority));
                    }
                    continue;
                }
                *seen = true;
                current = match current.take() {
                    Some(run)
                        if run.end == span
                            && self.spans[span].end_compressed
                                - self.spans[run.start].start_compressed
                                <= request_bytes =>
                    {
                        Some(run.start..span + 1)
                    }
                    Some(run) => {
                        requests.push((run, priority));
                        Some(span..span + 1)
                    }
                    None => Some(span..span + 1),
                };
            }
            requests.extend(current.map(|run| (run, priority)));
        }
        requests
    }

    /// Claims the spans of `run` that nobody fetches and that are not
    /// cached, fetches each claimed stretch with one request, stores and
    /// publishes it.
    pub(crate) fn prefetch_run(&self, run: Range<usize>) -> Result<()> {
        let claims = {
            let mut flights = self.flights.lock();
            let mut claims = Vec::new();
            let mut stretch: Option<(usize, Vec<Arc<Flight>>)> = None;
            for span in run.clone() {
                if flights.contains_key(&span) || self.is_cached(span) {
                    if let Some((start, claimed)) = stretch.take() {
                        claims.push(Claim::new(self, start..span, claimed));
                    }
                    continue;
                }
                let flight = Arc::new(Flight::new(true));
                flights.insert(span, Arc::clone(&flight));
                match &mut stretch {
                    Some((_, claimed)) => claimed.push(flight),
                    None => stretch = Some((span, vec![flight])),
                }
            }
            if let Some((start, claimed)) = stretch {
                claims.push(Claim::new(self, start..run.end, claimed));
            }
            claims
        };
        let mut result = Ok(());
        for claim in claims {
            match self.fetch(claim.run.clone(), FetchKind::Prefetch) {
                Ok(data) => {
                    for (span, data) in claim.run.clone().zip(&data) {
                        if let Err(error) = self.store(span, data, true) {
                            tracing::warn!(span, error = %sochi_format::error_chain(&error), "span cache write failed");
                        }
                    }
                    claim.publish(&data);
                }
                Err(error) => {
                    LayerMetrics::add(&self.metrics.fetch_failures, 1);
                    claim.fail(&error);
                    if result.is_ok() {
                        result = Err(error);
                    }
                }
            }
        }
        result
    }
}
