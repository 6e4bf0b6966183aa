//! One prefetch queue for the layers of an image: their prefetch
//! requests in one order, lowest `priority` first (a load order's
//! first-use order across layers), then in the order submitted, run by
//! up to [`PrefetchOptions::concurrency`] workers.
//!
//! Each layer prefetching on its own would run the layers side by side,
//! so the first spans a container needs (its interpreter, in the bottom
//! layer) would share the link with the last ones (its data, in the top
//! layer). With one queue, what is needed first is fetched first.
//!
//! Workers are threads started on demand and ended when the queue is
//! empty; a submission ([`PrefetchJob`]) ends when its last request has,
//! and calls its `done` with the first failure, if any.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::{PrefetchOptions, SpanManager};
use crate::error::{Error, Result};

type Done = Box<dyn FnOnce(Result<()>) + Send>;

/// The prefetch requests of the layers of one image, in priority order.
pub struct PrefetchQueue {
    options: PrefetchOptions,
    state: Mutex<QueueState>,
}

impl std::fmt::Debug for PrefetchQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("PrefetchQueue")
            .field("pending", &state.pending.len())
            .field("workers", &state.workers)
            .finish()
    }
}

#[derive(Default)]
struct QueueState {
    pending: BinaryHeap<Pending>,
    workers: usize,
    next_seq: u64,
}

struct Pending {
    priority: i64,
    seq: u64,
    run: Range<usize>,
    job: Arc<PrefetchJob>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.priority, self.seq) == (other.priority, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// The heap pops its greatest: the lowest priority, then the earliest.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .priority
            .cmp(&self.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

/// One layer's submission to a [`PrefetchQueue`].
pub struct PrefetchJob {
    spans: Arc<SpanManager>,
    stop: Arc<AtomicBool>,
    remaining: AtomicUsize,
    failure: Mutex<Option<Error>>,
    done: Mutex<Option<Done>>,
    finished: Mutex<bool>,
    finished_signal: Condvar,
}

impl std::fmt::Debug for PrefetchJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchJob")
            .field("remaining", &self.remaining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl PrefetchJob {
    /// Waits until every request of this job has ended (or been dropped
    /// because `stop` was set) and its `done` has run.
    pub fn wait(&self) {
        let mut finished = self.finished.lock();
        while !*finished {
            self.finished_signal.wait(&mut finished);
        }
    }

    /// One request ended (`outcome`); the last one finishes the job.
    fn request_ended(&self, outcome: Result<()>) {
        if let Err(error) = outcome {
            let mut failure = self.failure.lock();
            if failure.is_none() {
                *failure = Some(error);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let outcome = if self.stop.load(Ordering::Relaxed) {
            Err(Error::Stopped)
        } else {
            self.failure.lock().take().map_or(Ok(()), Err)
        };
        if let Some(done) = self.done.lock().take() {
            done(outcome);
        }
        *self.finished.lock() = true;
        self.finished_signal.notify_all();
    }
}

impl PrefetchQueue {
    /// An empty queue whose requests follow `options`.
    pub fn new(options: PrefetchOptions) -> Arc<PrefetchQueue> {
        Arc::new(PrefetchQueue {
            options,
            state: Mutex::new(QueueState::default()),
        })
    }

    /// Queues the prefetch of `ranges` (span ranges with their priorities)
    /// of the layer `spans`; `done` runs once every request has ended,
    /// with the first failure, or [`Error::Stopped`] if `stop` was set.
    pub fn submit(
        self: &Arc<Self>,
        spans: Arc<SpanManager>,
        ranges: &[(Range<usize>, i64)],
        stop: Arc<AtomicBool>,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Arc<PrefetchJob> {
        let requests = spans.prefetch_requests(ranges, self.options.request_bytes);
        let job = Arc::new(PrefetchJob {
            spans,
            stop,
            remaining: AtomicUsize::new(requests.len()),
            failure: Mutex::new(None),
            done: Mutex::new(Some(Box::new(done))),
            finished: Mutex::new(false),
            finished_signal: Condvar::new(),
        });
        if requests.is_empty() {
            // Nothing left to fetch: done at once.
            job.remaining.store(1, Ordering::Relaxed);
            job.request_ended(Ok(()));
            return job;
        }
        let start = {
            let mut state = self.state.lock();
            for (run, priority) in requests {
                let seq = state.next_seq;
                state.next_seq += 1;
                state.pending.push(Pending {
                    priority,
                    seq,
                    run,
                    job: Arc::clone(&job),
                });
            }
            let wanted = self.options.concurrency.max(1).min(state.pending.len());
            let start = wanted.saturating_sub(state.workers);
            state.workers += start;
            start
        };
        for _ in 0..start {
            let queue = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("sochi-prefetch".into())
                .spawn(move || queue.work());
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start a prefetch worker");
                self.worker_lost();
            }
        }
        job
    }

    /// A worker could not start: if none is left, the queued requests end
    /// as failed (their layers' reads fetch what they need).
    fn worker_lost(&self) {
        let orphans: Vec<Pending> = {
            let mut state = self.state.lock();
            state.workers -= 1;
            if state.workers > 0 {
                return;
            }
            state.pending.drain().collect()
        };
        for pending in orphans {
            pending.job.request_ended(Err(Error::Stopped));
        }
    }

    fn work(&self) {
        loop {
            let next = {
                let mut state = self.state.lock();
                match state.pending.pop() {
                    Some(next) => next,
                    None => {
                        state.workers -= 1;
                        return;
                    }
                }
            };
            let job = &next.job;
            let outcome = if job.stop.load(Ordering::Relaxed) {
                Err(Error::Stopped)
            } else {
                job.spans.prefetch_run(next.run.clone())
            };
            if let Err(error) = &outcome {
                if !matches!(error, Error::Stopped) {
                    tracing::debug!(spans = ?next.run, error = %sochi_format::error_chain(error), "prefetch request failed");
                }
            }
            job.request_ended(outcome);
        }
    }
}
