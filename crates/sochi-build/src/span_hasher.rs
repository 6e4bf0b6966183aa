//! Span digests of an uncompressed layer, computed while the tar reader
//! consumes it.
//!
//! Spans of a tar layer are fixed slices `[i × span_size, (i+1) × span_size)`
//! of the blob, the last one running to the end (docs/format.md §2.4), so hashing is a
//! matter of cutting the consumed bytes at multiples of the span size.

use std::io::{self, BufRead, Read};

use sha2::{Digest as _, Sha256};
use sochi_format::Sha256Digest;

const BUFFER_SIZE: usize = 1 << 20;

/// A `BufRead` over a tar blob that hashes every byte consumed, per span.
///
/// Invariant: `start <= end <= buffer.len()`; bytes `[start, end)` are
/// buffered and not yet consumed (nor hashed).
pub(crate) struct SpanHasher<R> {
    inner: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    span_size: u64,
    consumed: u64,
    current: Sha256,
    digests: Vec<Sha256Digest>,
}

impl<R: Read> SpanHasher<R> {
    /// `span_size` must be non-zero.
    pub(crate) fn new(inner: R, span_size: u64) -> Self {
        SpanHasher {
            inner,
            buffer: vec![0; BUFFER_SIZE],
            start: 0,
            end: 0,
            span_size: span_size.max(1),
            consumed: 0,
            current: Sha256::new(),
            digests: Vec::new(),
        }
    }

    fn hash(&mut self, mut bytes_start: usize, bytes_end: usize) {
        while bytes_start < bytes_end {
            let in_span = self.consumed % self.span_size;
            let room = (self.span_size - in_span) as usize;
            let take = room.min(bytes_end - bytes_start);
            self.current
                .update(&self.buffer[bytes_start..bytes_start + take]);
            bytes_start += take;
            self.consumed += take as u64;
            if self.consumed.is_multiple_of(self.span_size) {
                let done = std::mem::take(&mut self.current);
                self.digests.push(Sha256Digest(done.finalize().into()));
            }
        }
    }

    /// Reads to the end of the blob; returns the span digests and blob size.
    pub(crate) fn finish(mut self) -> io::Result<(Vec<Sha256Digest>, u64)> {
        loop {
            let n = self.fill_buf()?.len();
            if n == 0 {
                break;
            }
            self.consume(n);
        }
        if !self.consumed.is_multiple_of(self.span_size) {
            let done = std::mem::take(&mut self.current);
            self.digests.push(Sha256Digest(done.finalize().into()));
        }
        Ok((self.digests, self.consumed))
    }
}

impl<R: Read> Read for SpanHasher<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for SpanHasher<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            loop {
                match self.inner.read(&mut self.buffer) {
                    Ok(n) => {
                        self.end = n;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buffer[self.start..self.end])
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.end - self.start);
        self.hash(self.start, self.start + amount);
        self.start += amount;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cut_at_multiples() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let (digests, size) = SpanHasher::new(&data[..], 4096).finish().unwrap();
        assert_eq!(size, 10_000);
        let expected: Vec<_> = data.chunks(4096).map(Sha256Digest::of).collect();
        assert_eq!(digests, expected);
        let (digests, _) = SpanHasher::new(&data[..8192], 4096).finish().unwrap();
        assert_eq!(digests.len(), 2);
    }
}
