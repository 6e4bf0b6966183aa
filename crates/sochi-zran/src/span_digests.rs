//! Span digests, computed while the compressed bytes stream past (spec §2.4,
//! §3.3).
//!
//! Span `i` covers compressed bytes `[in[i] - (bits[i] != 0), in[i+1])`, the
//! last span runs to the end of the blob, and the gzip header before
//! checkpoint 0 belongs to no span. Fed in stream order, that is: bytes
//! before the first checkpoint are dropped; at each checkpoint the running
//! digest is closed and a new one opened, starting with the partial byte
//! `in - 1` when `bits != 0` (which the previous span also covered).

use sha2::{Digest as _, Sha256};
use sochi_format::Sha256Digest;

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
}
