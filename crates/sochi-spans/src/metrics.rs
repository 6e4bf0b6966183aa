//! Counters of one lazy layer, rendered in the Prometheus text format.
//!
//! Everything is a relaxed atomic: the numbers are for humans and
//! dashboards, and tests read them only after the work they count is done.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the read-latency buckets, in microseconds (powers of 4
/// from 16 µs to about 67 s: a cached read lands in the first buckets, a
/// read that waits on the registry in the middle ones).
const LATENCY_BUCKETS_US: [u64; 12] = [
    16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216,
    67_108_864,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(bucket) = LATENCY_BUCKETS_US.iter().position(|&bound| us <= bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let seconds = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{seconds}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The layer has no prefetch artifact (or prefetch is off).
pub const PREFETCH_NONE: u64 = 0;
/// The prefetch is fetching.
pub const PREFETCH_RUNNING: u64 = 1;
/// Every listed span was fetched.
pub const PREFETCH_DONE: u64 = 2;
/// Some request failed, or the artifact was refused.
pub const PREFETCH_FAILED: u64 = 3;

/// The name of a `PREFETCH_*` state, for `--json` output.
pub fn prefetch_state_name(state: u64) -> &'static str {
    match state {
        PREFETCH_RUNNING => "running",
        PREFETCH_DONE => "done",
        PREFETCH_FAILED => "failed",
        _ => "none",
    }
}

/// Why a layer's prefetch artifact was refused (the layer mounts without
/// it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchRefusal {
    /// Its blob could not be fetched, or did not match its digest or size.
    Fetch,
    /// Larger than `sochi_format::MAX_PREFETCH_ARTIFACT_SIZE`.
    TooBig,
    /// Not the JSON of a prefetch artifact, a version other than 1.0, or
    /// no ranges.
    Invalid,
    /// Names spans the layer does not have.
    OutOfRange,
}

impl PrefetchRefusal {
    /// Every reason, in the order of [`LayerMetrics::prefetch_refused`].
    pub const ALL: [PrefetchRefusal; 4] = [
        PrefetchRefusal::Fetch,
        PrefetchRefusal::TooBig,
        PrefetchRefusal::Invalid,
        PrefetchRefusal::OutOfRange,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            PrefetchRefusal::Fetch => "fetch",
            PrefetchRefusal::TooBig => "too_big",
            PrefetchRefusal::Invalid => "invalid",
            PrefetchRefusal::OutOfRange => "out_of_range",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one layer fetched, served and cached.
#[derive(Debug, Default)]
pub struct LayerMetrics {
    /// Range requests made for reads (one per run of adjacent spans).
    pub demand_requests: AtomicU64,
    /// Compressed bytes those requests returned.
    pub demand_bytes: AtomicU64,
    /// Spans fetched for reads.
    pub demand_spans: AtomicU64,
    /// Range requests made by the prefetch (the prefetch artifact's spans).
    pub prefetch_requests: AtomicU64,
    /// Compressed bytes the prefetch read.
    pub prefetch_bytes: AtomicU64,
    /// Spans the prefetch put in the cache.
    pub prefetch_spans: AtomicU64,
    /// The prefetch's state, one of the `PREFETCH_*` constants.
    pub prefetch_state: AtomicU64,
    /// Prefetch artifacts refused, by reason (index: [`PrefetchRefusal`]).
    pub prefetch_refused: [AtomicU64; PrefetchRefusal::ALL.len()],
    /// Range requests made by the background fetch.
    pub background_requests: AtomicU64,
    /// Compressed bytes the background fetch read.
    pub background_bytes: AtomicU64,
    /// Spans the background fetch put in the cache.
    pub background_spans: AtomicU64,
    /// 1 once the background fetch has read the whole blob and its digest
    /// matched.
    pub background_complete: AtomicU64,
    /// Background fetch attempts that failed.
    pub background_failures: AtomicU64,
    /// Span fetches whose bytes did not match the zTOC digest.
    pub digest_mismatches: AtomicU64,
    /// Span fetches that failed (network, length, digest after retry).
    pub fetch_failures: AtomicU64,
    /// Span look-ups served from memory.
    pub memory_hits: AtomicU64,
    /// Span look-ups served from the disk cache.
    pub disk_hits: AtomicU64,
    /// Disk-cached spans read ahead of a sequential reader.
    pub disk_read_ahead: AtomicU64,
    /// Span look-ups that had to fetch (or wait for another reader's fetch).
    pub misses: AtomicU64,
    /// Spans evicted from the disk cache to keep it under its bound.
    pub disk_evictions: AtomicU64,
    /// File reads served (FUSE `read`).
    pub reads: AtomicU64,
    /// Bytes those reads returned.
    pub read_bytes: AtomicU64,
    /// File reads that failed.
    pub read_failures: AtomicU64,
    /// Files whose tar header failed verification on first read.
    pub verification_failures: AtomicU64,
    /// Latency of file reads.
    pub read_latency: Histogram,
    /// Microseconds that reads' and the prefetch's span fetches spent
    /// waiting on the blob, checking span digests and inflating, in the
    /// order of [`FETCH_STAGES`].
    pub stage_micros: [AtomicU64; 3],
}

/// The stages of a span fetch, as the `stage` label names them.
pub const FETCH_STAGES: [&str; 3] = ["fetch", "verify", "inflate"];

impl LayerMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a refused prefetch artifact.
    pub fn refuse_prefetch(&self, reason: PrefetchRefusal) {
        if let Some(counter) = self.prefetch_refused.get(reason.index()) {
            Self::add(counter, 1);
        }
        self.prefetch_state
            .store(PREFETCH_FAILED, Ordering::Relaxed);
    }

    /// The current value of `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Appends this layer's metrics to `out`, labelled with `labels` (the
    /// inside of the braces, e.g. `layer="sha256:…"`). `spans` and
    /// `compressed_size` describe the layer.
    // Long: one flat table of the 22 counter rows in exposition order;
    // split up, a family's rows (demand/background, memory/disk/miss)
    // would no longer sit side by side.
    pub fn render(&self, out: &mut String, labels: &str, spans: u64, compressed_size: u64) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows: [(&str, &str, String, u64); 22] = [
            (
                "sochi_layer_fetch_requests_total",
                "counter",
                format!("{labels},kind=\"demand\""),
                g(&self.demand_requests),
            ),
            (
                "sochi_layer_fetch_requests_total",
                "counter",
                format!("{labels},kind=\"prefetch\""),
                g(&self.prefetch_requests),
            ),
            (
                "sochi_layer_fetch_requests_total",
                "counter",
                format!("{labels},kind=\"background\""),
                g(&self.background_requests),
            ),
            (
                "sochi_layer_fetched_bytes_total",
                "counter",
                format!("{labels},kind=\"demand\""),
                g(&self.demand_bytes),
            ),
            (
                "sochi_layer_fetched_bytes_total",
                "counter",
                format!("{labels},kind=\"prefetch\""),
                g(&self.prefetch_bytes),
            ),
            (
                "sochi_layer_fetched_bytes_total",
                "counter",
                format!("{labels},kind=\"background\""),
                g(&self.background_bytes),
            ),
            (
                "sochi_layer_fetched_spans_total",
                "counter",
                format!("{labels},kind=\"demand\""),
                g(&self.demand_spans),
            ),
            (
                "sochi_layer_fetched_spans_total",
                "counter",
                format!("{labels},kind=\"prefetch\""),
                g(&self.prefetch_spans),
            ),
            (
                "sochi_layer_fetched_spans_total",
                "counter",
                format!("{labels},kind=\"background\""),
                g(&self.background_spans),
            ),
            (
                "sochi_prefetch_state",
                "gauge",
                labels.to_string(),
                g(&self.prefetch_state),
            ),
            (
                "sochi_span_cache_lookups_total",
                "counter",
                format!("{labels},result=\"memory\""),
                g(&self.memory_hits),
            ),
            (
                "sochi_span_cache_lookups_total",
                "counter",
                format!("{labels},result=\"disk\""),
                g(&self.disk_hits),
            ),
            (
                "sochi_span_cache_lookups_total",
                "counter",
                format!("{labels},result=\"miss\""),
                g(&self.misses),
            ),
            (
                "sochi_span_cache_read_ahead_spans_total",
                "counter",
                labels.to_string(),
                g(&self.disk_read_ahead),
            ),
            (
                "sochi_span_cache_evictions_total",
                "counter",
                labels.to_string(),
                g(&self.disk_evictions),
            ),
            (
                "sochi_span_digest_mismatches_total",
                "counter",
                labels.to_string(),
                g(&self.digest_mismatches),
            ),
            (
                "sochi_span_fetch_failures_total",
                "counter",
                labels.to_string(),
                g(&self.fetch_failures),
            ),
            (
                "sochi_background_fetch_complete",
                "gauge",
                labels.to_string(),
                g(&self.background_complete),
            ),
            (
                "sochi_background_fetch_failures_total",
                "counter",
                labels.to_string(),
                g(&self.background_failures),
            ),
            (
                "sochi_reads_total",
                "counter",
                labels.to_string(),
                g(&self.reads),
            ),
            (
                "sochi_read_bytes_total",
                "counter",
                labels.to_string(),
                g(&self.read_bytes),
            ),
            (
                "sochi_read_failures_total",
                "counter",
                labels.to_string(),
                g(&self.read_failures),
            ),
        ];
        for (name, _, row_labels, value) in rows {
            let _ = writeln!(out, "{name}{{{row_labels}}} {value}");
        }
        for (reason, counter) in PrefetchRefusal::ALL.iter().zip(&self.prefetch_refused) {
            let _ = writeln!(
                out,
                "sochi_prefetch_refused_total{{{labels},reason=\"{}\"}} {}",
                reason.label(),
                g(counter)
            );
        }
        let _ = writeln!(
            out,
            "sochi_verification_failures_total{{{labels}}} {}",
            g(&self.verification_failures)
        );
        let _ = writeln!(out, "sochi_layer_spans{{{labels}}} {spans}");
        let _ = writeln!(out, "sochi_layer_size_bytes{{{labels}}} {compressed_size}");
        for (stage, micros) in FETCH_STAGES.iter().zip(&self.stage_micros) {
            let _ = writeln!(
                out,
                "sochi_span_stage_seconds_total{{{labels},stage=\"{stage}\"}} {}",
                g(micros) as f64 / 1e6
            );
        }
        self.read_latency
            .render(out, "sochi_read_duration_seconds", labels);
    }

    /// Counts `elapsed` against fetch stage `stage` (an index of
    /// [`FETCH_STAGES`]).
    pub fn add_stage(&self, stage: usize, elapsed: Duration) {
        if let Some(counter) = self.stage_micros.get(stage) {
            Self::add(
                counter,
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            );
        }
    }

    /// `# HELP`/`# TYPE` lines for the families [`LayerMetrics::render`]
    /// writes; emit once before the layers' rows.
    pub fn render_help(out: &mut String) {
        let families = [
            (
                "sochi_layer_fetch_requests_total",
                "counter",
                "Range requests to the layer blob.",
            ),
            (
                "sochi_layer_fetched_bytes_total",
                "counter",
                "Compressed bytes fetched from the layer blob.",
            ),
            (
                "sochi_layer_fetched_spans_total",
                "counter",
                "Spans fetched from the layer blob.",
            ),
            (
                "sochi_prefetch_state",
                "gauge",
                "Prefetch of the layer's prefetch artifact: 0 none, 1 running, 2 done, 3 failed or refused.",
            ),
            (
                "sochi_prefetch_refused_total",
                "counter",
                "Prefetch artifacts refused, by reason (the layer mounts without them).",
            ),
            (
                "sochi_span_cache_lookups_total",
                "counter",
                "Span look-ups by where the span was found.",
            ),
            (
                "sochi_span_cache_read_ahead_spans_total",
                "counter",
                "Disk-cached spans read ahead of a sequential reader.",
            ),
            (
                "sochi_span_cache_evictions_total",
                "counter",
                "Spans evicted from the disk cache.",
            ),
            (
                "sochi_span_digest_mismatches_total",
                "counter",
                "Fetched spans whose digest did not match the zTOC.",
            ),
            (
                "sochi_span_fetch_failures_total",
                "counter",
                "Span fetches that failed.",
            ),
            (
                "sochi_background_fetch_complete",
                "gauge",
                "1 once the whole layer is fetched and its digest checked.",
            ),
            (
                "sochi_background_fetch_failures_total",
                "counter",
                "Failed background fetch attempts.",
            ),
            ("sochi_reads_total", "counter", "File reads served."),
            (
                "sochi_read_bytes_total",
                "counter",
                "Bytes returned by file reads.",
            ),
            (
                "sochi_read_failures_total",
                "counter",
                "File reads that failed.",
            ),
            (
                "sochi_verification_failures_total",
                "counter",
                "Files whose tar header did not match the zTOC.",
            ),
            ("sochi_layer_spans", "gauge", "Spans of the layer."),
            (
                "sochi_layer_size_bytes",
                "gauge",
                "Compressed size of the layer.",
            ),
            (
                "sochi_span_stage_seconds_total",
                "counter",
                "Time span fetches for reads and prefetch spent waiting on the blob, verifying and inflating.",
            ),
            (
                "sochi_read_duration_seconds",
                "histogram",
                "Latency of file reads.",
            ),
        ];
        for (name, kind, help) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = LayerMetrics::default();
        LayerMetrics::add(&metrics.demand_requests, 2);
        metrics.read_latency.observe(Duration::from_micros(10));
        metrics.read_latency.observe(Duration::from_millis(2));
        let mut out = String::new();
        LayerMetrics::render_help(&mut out);
        metrics.render(&mut out, "layer=\"sha256:ab\"", 3, 100);
        assert!(
            out.contains("sochi_layer_fetch_requests_total{layer=\"sha256:ab\",kind=\"demand\"} 2")
        );
        assert!(out
            .contains("sochi_read_duration_seconds_bucket{layer=\"sha256:ab\",le=\"0.000016\"} 1"));
        assert!(out
            .contains("sochi_read_duration_seconds_bucket{layer=\"sha256:ab\",le=\"0.004096\"} 2"));
        assert!(out.contains("sochi_read_duration_seconds_count{layer=\"sha256:ab\"} 2"));
        assert!(out.contains("sochi_layer_spans{layer=\"sha256:ab\"} 3"));
    }
}
