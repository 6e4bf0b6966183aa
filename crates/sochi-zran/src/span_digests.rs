//! Span digests, computed while the compressed bytes stream past (docs/format.md §2.4,
//! §3.3).
//!
//! Span `i` covers compressed bytes `[in[i] - (bits[i] != 0), in[i+1])`, the
//! last span runs to the end of the blob, and the gzip header before
//! checkpoint 0 belongs to no span. Fed in stream order, that is: bytes
//! before the first checkpoint are dropped; at each checkpoint the running
//! digest is closed and a new one opened, starting with the partial byte
//! `in - 1` when `bits != 0` (which the previous span also covered).
//!
//! [`BackgroundHasher`] does this on a worker thread, so hashing (about a
//! tenth of the indexing time with SHA-NI) overlaps inflating: the reader
//! hands over each input buffer once zlib has consumed it, with the buffer
//! offsets where checkpoints fell, and gets a free buffer back. At most
//! [`BUFFERS`] buffers exist, so memory stays bounded.

use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::{self, JoinHandle};

use sha2::{Digest as _, Sha256};
use sochi_format::Sha256Digest;

use crate::error::{Error, Result};

/// Input buffers in circulation: one being inflated, the rest queued for or
/// being hashed.
const BUFFERS: usize = 4;

/// Running SHA-256 of the current span plus the digests of closed spans.
///
/// Invariant: `current` is `None` exactly until the first checkpoint.
#[derive(Default)]
pub(crate) struct SpanHasher {
    current: Option<Sha256>,
    digests: Vec<Sha256Digest>,
}

impl SpanHasher {
    /// Feeds the next compressed bytes of the stream.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        if let Some(current) = &mut self.current {
            current.update(bytes);
        }
    }

    /// A checkpoint: closes the current span (if any) and opens the next,
    /// beginning with `partial_byte` (byte `in - 1` when `bits != 0`).
    pub(crate) fn start_span(&mut self, partial_byte: Option<u8>) {
        if let Some(current) = self.current.take() {
            self.digests.push(Sha256Digest(current.finalize().into()));
        }
        let mut next = Sha256::new();
        if let Some(byte) = partial_byte {
            next.update([byte]);
        }
        self.current = Some(next);
    }

    /// Closes the last span and returns all digests, span 0 first.
    pub(crate) fn finish(mut self) -> Vec<Sha256Digest> {
        if let Some(current) = self.current.take() {
            self.digests.push(Sha256Digest(current.finalize().into()));
        }
        self.digests
    }
}

/// A span starts at `offset` in a handed-over buffer, beginning with
/// `partial_byte`.
#[derive(Clone, Copy, Debug)]
struct SpanStart {
    offset: usize,
    partial_byte: Option<u8>,
}

/// One consumed input buffer: hash `range`, opening spans at `span_starts`.
struct Chunk {
    buffer: Box<[u8]>,
    range: Range<usize>,
    span_starts: Vec<SpanStart>,
}

/// Hashes spans on a worker thread, fed with whole input buffers.
pub(crate) struct BackgroundHasher {
    /// `None` once finished.
    chunks: Option<SyncSender<Chunk>>,
    free: Receiver<Box<[u8]>>,
    worker: Option<JoinHandle<Vec<Sha256Digest>>>,
    buffer_size: usize,
    buffers_made: usize,
    /// Span starts in the buffer currently being inflated.
    span_starts: Vec<SpanStart>,
}

impl BackgroundHasher {
    /// Starts the worker; returns it and the first input buffer.
    pub(crate) fn new(buffer_size: usize) -> Result<(Self, Box<[u8]>)> {
        let (chunk_sender, chunk_receiver) = mpsc::sync_channel::<Chunk>(BUFFERS - 2);
        let (free_sender, free) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("sochi-span-hash".to_owned())
            .spawn(move || {
                let mut hasher = SpanHasher::default();
                for chunk in chunk_receiver {
                    let mut position = chunk.range.start;
                    for start in chunk.span_starts {
                        hasher.update(&chunk.buffer[position..start.offset]);
                        hasher.start_span(start.partial_byte);
                        position = start.offset;
                    }
                    hasher.update(&chunk.buffer[position..chunk.range.end]);
                    // The reader may be gone already; then the buffer drops.
                    let _ = free_sender.send(chunk.buffer);
                }
                hasher.finish()
            })
            .map_err(|source| Error::Io { source })?;
        let hasher = BackgroundHasher {
            chunks: Some(chunk_sender),
            free,
            worker: Some(worker),
            buffer_size,
            buffers_made: 1,
            span_starts: Vec::new(),
        };
        Ok((hasher, vec![0; buffer_size].into_boxed_slice()))
    }

    /// A checkpoint at `offset` of the current buffer (the span starts with
    /// `partial_byte`, which sits just before `offset`, when `bits != 0`).
    pub(crate) fn start_span(&mut self, offset: usize, partial_byte: Option<u8>) {
        self.span_starts.push(SpanStart {
            offset,
            partial_byte,
        });
    }

    /// Hands over the consumed `buffer` (its bytes `range` belong to the
    /// stream) and returns an empty buffer to read into next.
    pub(crate) fn hand_over(
        &mut self,
        buffer: Box<[u8]>,
        range: Range<usize>,
    ) -> Result<Box<[u8]>> {
        self.send(buffer, range)?;
        match self.free.try_recv() {
            Ok(free) => return Ok(free),
            Err(TryRecvError::Disconnected) => return Err(worker_gone()),
            Err(TryRecvError::Empty) => {}
        }
        if self.buffers_made < BUFFERS {
            self.buffers_made += 1;
            return Ok(vec![0; self.buffer_size].into_boxed_slice());
        }
        self.free.recv().map_err(|_| worker_gone())
    }

    /// Hands over the last buffer and returns all span digests.
    pub(crate) fn finish(
        mut self,
        buffer: Box<[u8]>,
        range: Range<usize>,
    ) -> Result<Vec<Sha256Digest>> {
        self.send(buffer, range)?;
        // Closing the channel ends the worker's loop.
        self.chunks = None;
        let worker = self.worker.take().ok_or_else(worker_gone)?;
        worker.join().map_err(|_| worker_gone())
    }

    fn send(&mut self, buffer: Box<[u8]>, range: Range<usize>) -> Result<()> {
        let chunk = Chunk {
            buffer,
            range,
            span_starts: std::mem::take(&mut self.span_starts),
        };
        self.chunks
            .as_ref()
            .ok_or_else(worker_gone)?
            .send(chunk)
            .map_err(|_| worker_gone())
    }
}

fn worker_gone() -> Error {
    Error::Io {
        source: std::io::Error::other("the span hashing thread stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_in_no_span_and_partial_bytes_overlap() {
        let blob = b"HEADERabcdefghij";
        let mut hasher = SpanHasher::default();
        hasher.update(&blob[..6]);
        hasher.start_span(None); // checkpoint 0 at in = 6
        hasher.update(&blob[6..10]);
        hasher.start_span(Some(blob[9])); // checkpoint 1 at in = 10, bits != 0
        hasher.update(&blob[10..]);
        let digests = hasher.finish();
        assert_eq!(
            digests,
            vec![
                Sha256Digest(Sha256::digest(b"abcd").into()),
                Sha256Digest(Sha256::digest(b"defghij").into()),
            ]
        );
    }

    #[test]
    fn no_checkpoint_means_no_span() {
        let mut hasher = SpanHasher::default();
        hasher.update(b"whatever");
        assert!(hasher.finish().is_empty());
    }

    #[test]
    fn background_hasher_matches_inline_hashing() {
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        // Checkpoints at 10 (bits 0), 3000 (bits 5), 3001 (bits 0), 7999 (bits 1).
        let cuts = [(10, false), (3000, true), (3001, false), (7999, true)];
        let mut inline = SpanHasher::default();
        let mut position = 0;
        for &(at, partial) in &cuts {
            inline.update(&blob[position..at]);
            inline.start_span(partial.then(|| blob[at - 1]));
            position = at;
        }
        inline.update(&blob[position..]);
        let expected = inline.finish();

        // The same through 1000-byte buffers, many more than BUFFERS.
        let (mut hasher, mut buffer) = BackgroundHasher::new(1000).unwrap();
        let mut cut = cuts.iter().peekable();
        for (index, piece) in blob.chunks(1000).enumerate() {
            buffer[..piece.len()].copy_from_slice(piece);
            while let Some(&&(at, partial)) = cut.peek() {
                if at >= index * 1000 + piece.len() || at < index * 1000 {
                    break;
                }
                hasher.start_span(at - index * 1000, partial.then(|| blob[at - 1]));
                cut.next();
            }
            if index * 1000 + piece.len() == blob.len() {
                let digests = hasher.finish(buffer, 0..piece.len()).unwrap();
                assert_eq!(digests, expected);
                return;
            }
            buffer = hasher.hand_over(buffer, 0..piece.len()).unwrap();
        }
        unreachable!();
    }
}
