//! Recording a load order: the spans an image's readers touch, in the
//! order of first use, from the first mount until the readers have been
//! quiet for a while ([`RecordOptions`]).
//!
//! One [`LoadRecorder`] per image; each lazy layer of it holds a
//! [`LayerRecording`] ([`SpanManager::record_load_order`]), which its
//! reads call with the spans they touch. A span already seen costs one
//! atomic load, so recording stays on; a new one takes the recorder's
//! lock once. Only readers' reads count: prefetch and background fetch do
//! not go through [`SpanManager::read`], and a read served from a cache
//! counts as much as one that fetched (what matters is what the
//! container asked for, not what was missing).
//!
//! A layer shared by two images records into the recorder of the image
//! that mounted it first: the FUSE layer cannot tell which container
//! reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sochi_format::{LoadLayer, LoadOrder, LoadRun, LOAD_ORDER_VERSION};

use crate::spans::SpanManager;

/// When a recording ends.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// Ends once no new span was read for this long (after the first read).
    pub quiet: Duration,
    /// Ends this long after the first read, quiet or not.
    pub max_duration: Duration,
    /// Ends before the runs would exceed this many.
    pub max_runs: usize,
    /// Given up if nothing was read this long after the first mount.
    pub max_wait: Duration,
}

impl Default for RecordOptions {
    fn default() -> Self {
        RecordOptions {
            quiet: Duration::from_secs(5),
            max_duration: Duration::from_secs(300),
            max_runs: 50_000,
            max_wait: Duration::from_secs(3600),
        }
    }
}

/// Why a recording ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordEnd {
    /// The readers went quiet ([`RecordOptions::quiet`]).
    Quiet,
    /// The command that was recorded exited.
    Exited,
    /// [`RecordOptions::max_duration`] passed.
    TimeBound,
    /// [`RecordOptions::max_runs`] reached.
    SizeBound,
    /// Nothing was read within [`RecordOptions::max_wait`].
    NothingRead,
    /// The daemon stopped.
    Shutdown,
}

impl RecordEnd {
    /// Its name in the load order's `ended` field.
    pub fn name(self) -> &'static str {
        match self {
            RecordEnd::Quiet => "quiet",
            RecordEnd::Exited => "exited",
            RecordEnd::TimeBound => "time bound",
            RecordEnd::SizeBound => "size bound",
            RecordEnd::NothingRead => "nothing read",
            RecordEnd::Shutdown => "shutdown",
        }
    }

    /// Whether the recording saw the whole start.
    pub fn is_complete(self) -> bool {
        matches!(self, RecordEnd::Quiet | RecordEnd::Exited)
    }
}

/// The load order of one image, being recorded.
#[derive(Debug)]
pub struct LoadRecorder {
    image: String,
    manifest: Option<String>,
    options: RecordOptions,
    started: Instant,
    stopped: AtomicBool,
    state: Mutex<RecorderState>,
}

#[derive(Debug, Default)]
struct RecorderState {
    layers: Vec<LoadLayer>,
    runs: Vec<LoadRun>,
    first_read: Option<Instant>,
    last_new: Option<Instant>,
    ended: Option<(RecordEnd, Duration)>,
}

impl LoadRecorder {
    /// A recorder for `image` (its manifest digest if known), starting now.
    pub fn new(image: &str, manifest: Option<&str>, options: RecordOptions) -> Arc<LoadRecorder> {
        Arc::new(LoadRecorder {
            image: image.to_string(),
            manifest: manifest.map(str::to_string),
            options,
            started: Instant::now(),
            stopped: AtomicBool::new(false),
            state: Mutex::new(RecorderState::default()),
        })
    }

    /// The image it records.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Whether it has ended.
    pub fn is_ended(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Ends the recording (the first end counts).
    pub fn end(&self, why: RecordEnd) {
        let mut state = self.state.lock();
        if state.ended.is_none() {
            state.ended = Some((why, self.started.elapsed()));
            self.stopped.store(true, Ordering::Relaxed);
            tracing::info!(image = %self.image, ended = why.name(), runs = state.runs.len(), "load order recorded");
        }
    }

    /// Ends the recording if one of its bounds says so; returns why, once
    /// it has ended.
    pub fn poll(&self) -> Option<RecordEnd> {
        let why = {
            let state = self.state.lock();
            if let Some((why, _)) = state.ended {
                return Some(why);
            }
            match (state.first_read, state.last_new) {
                (Some(first), _) if first.elapsed() >= self.options.max_duration => {
                    Some(RecordEnd::TimeBound)
                }
                (Some(_), Some(last)) if last.elapsed() >= self.options.quiet => {
                    Some(RecordEnd::Quiet)
                }
                (None, _) if self.started.elapsed() >= self.options.max_wait => {
                    Some(RecordEnd::NothingRead)
                }
                _ => None,
            }
        };
        if let Some(why) = why {
            self.end(why);
        }
        why
    }

    /// The load order so far (or as it ended).
    pub fn load_order(&self) -> LoadOrder {
        let state = self.state.lock();
        let (ended, duration) = match state.ended {
            Some((why, duration)) => (Some(why), duration),
            None => (None, self.started.elapsed()),
        };
        LoadOrder {
            version: LOAD_ORDER_VERSION,
            image: self.image.clone(),
            manifest: self.manifest.clone(),
            command: Vec::new(),
            complete: ended.is_some_and(RecordEnd::is_complete),
            ended: ended.map_or("recording", RecordEnd::name).to_string(),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            layers: state.layers.clone(),
            runs: state.runs.clone(),
        }
    }

    /// Records a first read of `span` (at `start..end` uncompressed) of
    /// `layer`.
    fn first_use(&self, layer: &str, span: u64, start: u64, end: u64) {
        let mut state = self.state.lock();
        if state.ended.is_some() {
            return;
        }
        let now = Instant::now();
        state.first_read.get_or_insert(now);
        state.last_new = Some(now);
        if let Some(run) = state.runs.last_mut() {
            if run.layer == layer && run.end_span.checked_add(1) == Some(span) {
                run.end_span = span;
                run.end_offset = end.max(run.end_offset);
                return;
            }
        }
        if state.runs.len() >= self.options.max_runs {
            drop(state);
            self.end(RecordEnd::SizeBound);
            return;
        }
        let at_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        state.runs.push(LoadRun {
            layer: layer.to_string(),
            start_span: span,
            end_span: span,
            start_offset: start,
            end_offset: end,
            at_ms,
        });
    }
}

/// One layer's part of a [`LoadRecorder`]: which of its spans were read.
#[derive(Debug)]
pub struct LayerRecording {
    recorder: Arc<LoadRecorder>,
    layer: String,
    seen: Vec<AtomicU64>,
}

impl LayerRecording {
    /// Notes a read of `span` (`start..end` uncompressed).
    pub(crate) fn touch(&self, span: usize, start: u64, end: u64) {
        let Some(word) = self.seen.get(span / 64) else {
            return;
        };
        let bit = 1u64 << (span % 64);
        if word.load(Ordering::Relaxed) & bit != 0 || self.recorder.is_ended() {
            return;
        }
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.recorder
                .first_use(&self.layer, span as u64, start, end);
        }
    }
}

impl SpanManager {
    /// Records this layer's reads (as `layer`, its digest) into
    /// `recorder` from now on. `false`: it already records into one.
    pub fn record_load_order(&self, recorder: &Arc<LoadRecorder>, layer: &str) -> bool {
        let count = self.span_count();
        let recording = Arc::new(LayerRecording {
            recorder: Arc::clone(recorder),
            layer: layer.to_string(),
            seen: (0..count.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        });
        if self.recording.set(recording).is_err() {
            return false;
        }
        recorder.state.lock().layers.push(LoadLayer {
            digest: layer.to_string(),
            span_count: count as u64,
            uncompressed_size: self.uncompressed_size(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(options: RecordOptions) -> (Arc<LoadRecorder>, LayerRecording, LayerRecording) {
        let recorder = LoadRecorder::new("img", None, options);
        let layer = |name: &str| LayerRecording {
            recorder: Arc::clone(&recorder),
            layer: name.to_string(),
            seen: (0..2).map(|_| AtomicU64::new(0)).collect(),
        };
        let (a, b) = (layer("sha256:a"), layer("sha256:b"));
        (recorder, a, b)
    }

    #[test]
    fn runs_follow_first_use_across_layers() {
        let (recorder, a, b) = recorder(RecordOptions::default());
        a.touch(3, 30, 40);
        a.touch(4, 40, 50);
        a.touch(3, 30, 40); // seen: no new run
        b.touch(0, 0, 10);
        a.touch(5, 50, 60); // after another layer: a new run
        a.touch(200, 0, 1); // past the layer's spans: ignored
        let order = recorder.load_order();
        let runs: Vec<_> = order
            .runs
            .iter()
            .map(|r| {
                (
                    r.layer.as_str(),
                    r.start_span,
                    r.end_span,
                    r.start_offset,
                    r.end_offset,
                )
            })
            .collect();
        assert_eq!(
            runs,
            [
                ("sha256:a", 3, 4, 30, 50),
                ("sha256:b", 0, 0, 0, 10),
                ("sha256:a", 5, 5, 50, 60)
            ]
        );
        assert_eq!(order.ended, "recording");
        assert!(!order.complete);
    }

    #[test]
    fn ends_when_quiet_and_then_records_nothing() {
        let (recorder, a, _) = recorder(RecordOptions {
            quiet: Duration::ZERO,
            ..RecordOptions::default()
        });
        assert_eq!(recorder.poll(), None, "nothing read yet: not quiet");
        a.touch(1, 10, 20);
        assert_eq!(recorder.poll(), Some(RecordEnd::Quiet));
        a.touch(2, 20, 30);
        let order = recorder.load_order();
        assert_eq!(order.runs.len(), 1);
        assert!(order.complete);
        assert_eq!(order.ended, "quiet");
    }

    #[test]
    fn a_size_bound_ends_it_incomplete() {
        let (recorder, a, _) = recorder(RecordOptions {
            max_runs: 2,
            ..RecordOptions::default()
        });
        for span in [1, 3, 5, 7] {
            a.touch(span, 0, 1);
        }
        let order = recorder.load_order();
        assert_eq!(order.runs.len(), 2);
        assert_eq!(order.ended, "size bound");
        assert!(!order.complete);
    }
}
