//! FUSE worker threads serve at a raised CPU priority.
//!
//! Every file access under a lazy layer waits for a FUSE round trip: the
//! caller sleeps until a worker thread of this daemon is scheduled. On a
//! busy machine the workers queue behind whatever else runs, and a cold
//! `find` over the python test image took 0.33-0.45 s instead of
//! 0.19-0.21 s with two CPU hogs running (native ext4: 0.22-0.28 s); at
//! nice -10 the walk kept its idle speed. Background fetch and other
//! daemon threads keep the default priority.

use std::cell::Cell;

/// The nice value of a thread that answers FUSE requests.
pub(crate) const SERVING_NICE: i32 = -10;

thread_local! {
    static RAISED: Cell<bool> = const { Cell::new(false) };
}

/// Raises the calling thread to [`SERVING_NICE`], once per thread; best
/// effort (without `CAP_SYS_NICE` the thread keeps its priority).
pub(crate) fn serve_at_raised_priority() {
    if RAISED.get() {
        return;
    }
    RAISED.set(true);
    // On Linux a thread id names one thread for setpriority.
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), SERVING_NICE) {
        tracing::debug!(%error, "FUSE worker keeps its CPU priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_thread_is_raised_and_other_threads_are_not() {
        if !rustix::process::geteuid().is_root() {
            // A lower nice value needs CAP_SYS_NICE; without it the raise
            // is skipped by design (best effort), so there is nothing to see.
            eprintln!("skipped without root: raising a thread's priority needs CAP_SYS_NICE");
            return;
        }
        let nice_of_this_thread =
            || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let before = nice_of_this_thread();
        let (raised, other) = std::thread::scope(|scope| {
            let raised = scope
                .spawn(|| {
                    serve_at_raised_priority();
                    serve_at_raised_priority();
                    nice_of_this_thread()
                })
                .join()
                .unwrap();
            let other = scope.spawn(nice_of_this_thread).join().unwrap();
            (raised, other)
        });
        assert_eq!(raised, SERVING_NICE);
        assert_eq!(other, before);
        assert_eq!(nice_of_this_thread(), before);
    }
}
