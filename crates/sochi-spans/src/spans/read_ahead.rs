//! Read-ahead of a zstd:chunked layer: after a reader's fetch, the chunks
//! that follow in the blob are fetched in the background, one request of
//! up to [`READ_AHEAD_BYTES`] at a time, by one thread per layer.
//!
//! A chunk is a file, or a piece of one: reading a package's modules one
//! by one costs a round trip each (1,116 requests for the scipy image's
//! start), where a 4 MiB SOCI span brings the neighbours along. The files
//! of a directory lie side by side in the blob, so the next ones a reader
//! wants are mostly the next chunks. The reader's own request stays its
//! chunk: what comes along is a prefetch (counted as one, and taking the
//! blob's background turns), and a reader of a chunk it is fetching waits
//! for it instead of asking again.

use std::ops::Range;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Weak};

use super::SpanManager;

/// Compressed bytes fetched ahead after a reader's fetch.
pub(crate) const READ_AHEAD_BYTES: u64 = 1 << 20;

impl SpanManager {
    /// Starts the read-ahead thread of a zstd:chunked layer (nothing for
    /// other layers, or if started already). It ends when the manager is
    /// dropped.
    pub fn start_read_ahead(self: &Arc<Self>) {
        if !self.uncompressed_digests {
            return;
        }
        let (sender, receiver) = channel();
        if self.read_ahead.set(sender).is_err() {
            return;
        }
        let manager = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("sochi-read-ahead".into())
            .spawn(move || read_ahead(&manager, &receiver));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the read-ahead thread");
        }
    }

    /// Asks the read-ahead thread (if any) to fetch the chunks from span
    /// `from` on.
    pub(crate) fn read_ahead_from(&self, from: usize) {
        if let Some(sender) = self.read_ahead.get() {
            let _ = sender.send(from);
        }
    }

    /// The spans from `from` on within [`READ_AHEAD_BYTES`] (at least one).
    fn read_ahead_run(&self, from: usize) -> Range<usize> {
        let Some(first) = self.spans.get(from) else {
            return from..from;
        };
        let mut end = from + 1;
        while self.spans.get(end).is_some_and(|span| {
            span.end_compressed.saturating_sub(first.start_compressed) <= READ_AHEAD_BYTES
        }) {
            end += 1;
        }
        from..end
    }
}

fn read_ahead(manager: &Weak<SpanManager>, requests: &Receiver<usize>) {
    // Senders live in the manager: when it is dropped, `recv` fails.
    while let Ok(mut from) = requests.recv() {
        // Only the newest wish counts: a reader that moved on does not
        // want what it asked for before.
        while let Ok(newer) = requests.try_recv() {
            from = newer;
        }
        let Some(manager) = manager.upgrade() else {
            return;
        };
        let run = manager.read_ahead_run(from);
        if run.is_empty() || run.clone().all(|span| manager.is_cached(span)) {
            continue;
        }
        if let Err(error) = manager.prefetch_run(run.clone()) {
            tracing::debug!(spans = ?run, error = %sochi_format::error_chain(&error), "read-ahead failed");
        }
    }
}

/// The sender half kept by a manager.
pub(crate) type ReadAheadSender = Sender<usize>;
