//! The reads that must wait — for a range request, a hash over a span found
//! on disk after a restart, a file's first-read check — run on one pool of
//! threads shared by every layer of the process, not on the layer's FUSE
//! threads. A layer's FUSE threads then only answer from memory: the tree,
//! and spans already here; so a layer needs one or two of them, and a layer
//! nobody reads costs two idle threads, not eight threads with their
//! request buffers (issue: 19 idle layers held 179 threads).
//!
//! Fairness: a layer has at most [`PER_LAYER`] reads running at once (its
//! further reads wait in its own queue), so a layer whose registry is slow
//! cannot take every worker while other layers' reads wait; workers are
//! started when work arrives and no worker is free, up to [`MAX_WORKERS`].

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// Threads of the pool at most (together, for all layers).
pub const MAX_WORKERS: usize = 64;

/// Reads of one layer running at once at most: what one layer had before,
/// as FUSE threads.
pub const PER_LAYER: usize = 8;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// One layer's place in the pool: its running count and its backlog.
#[derive(Default)]
pub(crate) struct LayerLane {
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    running: usize,
    backlog: VecDeque<Job>,
}

struct Queue {
    /// Jobs ready to run (their lane has room), oldest first.
    ready: VecDeque<(Arc<LayerLane>, Job)>,
    workers: usize,
    idle: usize,
}

/// The pool. One per process: [`ReadPool::global`].
pub struct ReadPool {
    queue: Mutex<Queue>,
    work: Condvar,
    max_workers: usize,
    per_layer: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A job that panicked poisons nothing we rely on: the counts it left
    // are fixed by the guard in `run`.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReadPool {
    /// A pool of at most `max_workers` threads, `per_layer` reads per lane.
    pub fn new(max_workers: usize, per_layer: usize) -> Arc<ReadPool> {
        Arc::new(ReadPool {
            queue: Mutex::new(Queue {
                ready: VecDeque::new(),
                workers: 0,
                idle: 0,
            }),
            work: Condvar::new(),
            max_workers: max_workers.max(1),
            per_layer: per_layer.max(1),
        })
    }

    /// The process's pool.
    pub fn global() -> &'static Arc<ReadPool> {
        static POOL: OnceLock<Arc<ReadPool>> = OnceLock::new();
        POOL.get_or_init(|| ReadPool::new(MAX_WORKERS, PER_LAYER))
    }

    /// Threads started so far.
    pub fn workers(&self) -> usize {
        lock(&self.queue).workers
    }

    /// Runs `job` on the pool as a read of `lane`'s layer.
    pub(crate) fn submit(self: &Arc<Self>, lane: &Arc<LayerLane>, job: Job) {
        {
            let mut state = lock(&lane.state);
            if state.running >= self.per_layer {
                state.backlog.push_back(job);
                return;
            }
            state.running += 1;
        }
        self.enqueue(Arc::clone(lane), job);
    }

    fn enqueue(self: &Arc<Self>, lane: Arc<LayerLane>, job: Job) {
        let mut queue = lock(&self.queue);
        queue.ready.push_back((lane, job));
        if queue.idle > 0 {
            self.work.notify_one();
            return;
        }
        if queue.workers < self.max_workers {
            let pool = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("sochi-read-{}", queue.workers))
                .spawn(move || pool.work_loop());
            match spawned {
                Ok(_) => queue.workers += 1,
                Err(error) => {
                    // The job waits for a busy worker instead.
                    tracing::warn!(%error, "could not start a read thread");
                }
            }
        }
    }

    fn work_loop(self: Arc<Self>) {
        loop {
            let (lane, job) = {
                let mut queue = lock(&self.queue);
                loop {
                    if let Some(next) = queue.ready.pop_front() {
                        break next;
                    }
                    queue.idle += 1;
                    queue = self
                        .work
                        .wait(queue)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    queue.idle -= 1;
                }
            };
            self.run(&lane, job);
        }
    }

    /// Runs `job`, then the lane's backlog while it has one: the lane
    /// keeps its place, so its running count stays as it was.
    fn run(&self, lane: &Arc<LayerLane>, job: Job) {
        let mut next = Some(job);
        while let Some(job) = next.take() {
            // A panicking read must not take the worker (and the lane's
            // count) with it; its reply is dropped, which answers EIO.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let mut state = lock(&lane.state);
            next = state.backlog.pop_front();
            if next.is_none() {
                state.running -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_slow_layer_does_not_hold_other_layers_reads() {
        let pool = ReadPool::new(4, 2);
        let slow = Arc::new(LayerLane::default());
        let fast = Arc::new(LayerLane::default());
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (done_tx, done_rx) = mpsc::channel();
        // Ten reads of the slow layer, each waiting until released.
        for n in 0..10 {
            let release = Arc::clone(&release_rx);
            let done = done_tx.clone();
            pool.submit(
                &slow,
                Box::new(move || {
                    let _ = lock(&release).recv();
                    let _ = done.send(("slow", n));
                }),
            );
        }
        // Only two of them hold workers: the fast layer's reads run.
        for n in 0..3 {
            let done = done_tx.clone();
            pool.submit(
                &fast,
                Box::new(move || {
                    let _ = done.send(("fast", n));
                }),
            );
        }
        for _ in 0..3 {
            let (layer, _) = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(layer, "fast");
        }
        assert!(pool.workers() <= 4);
        assert_eq!(lock(&slow.state).running, 2);
        assert_eq!(lock(&slow.state).backlog.len(), 8);
        // Released, all ten slow reads finish, in order within the layer.
        for _ in 0..10 {
            release_tx.send(()).unwrap();
        }
        let slow_done: Vec<_> = (0..10)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert!(slow_done.iter().all(|(layer, _)| *layer == "slow"));
        // The lane is released just after its last job sent its message.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&slow.state).running != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(lock(&slow.state).running, 0);
    }

    #[test]
    fn a_panicking_read_leaves_the_worker_and_the_lane_usable() {
        let pool = ReadPool::new(1, 1);
        let lane = Arc::new(LayerLane::default());
        let ran = Arc::new(AtomicUsize::new(0));
        let (done_tx, done_rx) = mpsc::channel();
        pool.submit(&lane, Box::new(|| panic!("a read that panics")));
        for _ in 0..3 {
            let ran = Arc::clone(&ran);
            let done = done_tx.clone();
            pool.submit(
                &lane,
                Box::new(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    let _ = done.send(());
                }),
            );
        }
        for _ in 0..3 {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        assert_eq!(pool.workers(), 1);
    }
}
