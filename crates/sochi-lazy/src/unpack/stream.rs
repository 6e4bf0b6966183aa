//! The byte streams under an unpack: the blob (counted, optionally hashed),
//! its decompression, and the uncompressed stream (hashed for the
//! `diff_id`), with the positions an error message needs.
//!
//! gzip goes through `sochi-zran`, the inflater the index builder uses, so
//! that a corrupt layer gets the same message from `create` and from an
//! unpack: zlib's own words ("incorrect length check" is not a CRC error)
//! at a compressed offset.
//!
//! zstd goes through libzstd (the `zstd` crate), which decodes every frame
//! of the blob and skips skippable frames: zstd:chunked keeps its table of
//! contents in one at the end (docs/zstd.md). libzstd, not the pure-Rust
//! `ruzstd`, because it is about four times faster here (docs/zstd.md has
//! the numbers); the workspace builds C already (aws-lc).

use std::io::{self, BufRead, BufReader, Read};

use sha2::{Digest as _, Sha256};
use sochi_format::LayerCompression;
use sochi_zran::CheckpointingReader;

use super::{UnpackError, ZstdError};

/// Input buffer of a plain tar layer.
const PLAIN_BUFFER: usize = 256 * 1024;

/// Input and output buffers of a zstd layer: libzstd's recommended input
/// size is 128 KiB (`ZSTD_DStreamInSize`); more only delays error offsets.
const ZSTD_BUFFER: usize = 128 * 1024;

/// The blob as read: bytes counted, and hashed when a digest is expected.
pub(super) struct BlobReader<R> {
    inner: R,
    read: u64,
    hasher: Option<Sha256>,
    /// Whether a read of `inner` failed: an error coming out of the zstd
    /// decoder is then the blob's, not corrupt data.
    failed: bool,
}

impl<R: Read> BlobReader<R> {
    pub(super) fn new(inner: R, hash: bool) -> BlobReader<R> {
        BlobReader {
            inner,
            read: 0,
            hasher: hash.then(Sha256::new),
            failed: false,
        }
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| self.failed = true)?;
        if let (Some(hasher), Some(bytes)) = (&mut self.hasher, buf.get(..n)) {
            hasher.update(bytes);
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// The uncompressed tar stream of a layer.
pub(super) enum Decoder<R: Read> {
    /// gzip, inflated by `sochi-zran` (no checkpoints but the first).
    Gzip(Box<CheckpointingReader<BlobReader<R>>>),
    /// A plain tar: the blob itself.
    Plain(BufReader<BlobReader<R>>),
    /// zstd, decoded by libzstd.
    Zstd(Box<BufReader<ZstdStream<R>>>),
}

impl<R: Read> Decoder<R> {
    /// A decoder for `blob` compressed as `compression`.
    pub(super) fn new(
        blob: BlobReader<R>,
        compression: LayerCompression,
    ) -> Result<Decoder<R>, UnpackError> {
        Ok(match compression {
            // A span size no layer reaches: one checkpoint, at the start.
            LayerCompression::Gzip => Decoder::Gzip(Box::new(
                CheckpointingReader::new(blob, u64::MAX >> 1).map_err(|source| {
                    UnpackError::Gzip {
                        uncompressed_offset: 0,
                        source,
                    }
                })?,
            )),
            LayerCompression::Uncompressed => {
                Decoder::Plain(BufReader::with_capacity(PLAIN_BUFFER, blob))
            }
            LayerCompression::Zstd => {
                let input = BufReader::with_capacity(ZSTD_BUFFER, blob);
                let decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(|error| {
                    UnpackError::Zstd {
                        uncompressed_offset: 0,
                        source: ZstdError {
                            compressed_read: 0,
                            message: error.to_string(),
                        },
                    }
                })?;
                Decoder::Zstd(Box::new(BufReader::with_capacity(
                    ZSTD_BUFFER,
                    ZstdStream { decoder },
                )))
            }
        })
    }

    /// Compressed bytes consumed so far: for gzip what the inflater took
    /// (it runs ahead of the tar reader by at most one buffer), for zstd
    /// and a plain tar the blob bytes read (zstd's input buffer included).
    pub(super) fn compressed_read(&self) -> u64 {
        match self {
            Decoder::Gzip(reader) => reader.compressed_position(),
            Decoder::Plain(reader) => reader.get_ref().read,
            Decoder::Zstd(reader) => reader.get_ref().blob().read,
        }
    }

    /// Whether offsets in the compressed and the uncompressed stream
    /// differ (a compressed layer).
    pub(super) fn is_compressed(&self) -> bool {
        matches!(self, Decoder::Gzip(_) | Decoder::Zstd(_))
    }

    /// Blob bytes read, and their SHA-256 if it was asked for.
    pub(super) fn blob_digest(self) -> (u64, Option<[u8; 32]>) {
        let blob = match self {
            Decoder::Gzip(reader) => reader.into_inner(),
            Decoder::Plain(reader) => reader.into_inner(),
            Decoder::Zstd(reader) => reader.into_inner().decoder.finish().into_inner(),
        };
        (blob.read, blob.hasher.map(|h| h.finalize().into()))
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(reader) => reader.read(buf),
            Decoder::Plain(reader) => reader.read(buf),
            Decoder::Zstd(reader) => reader.read(buf),
        }
    }
}

impl<R: Read> BufRead for Decoder<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Decoder::Gzip(reader) => reader.fill_buf(),
            Decoder::Plain(reader) => reader.fill_buf(),
            Decoder::Zstd(reader) => reader.fill_buf(),
        }
    }

    fn consume(&mut self, amt: usize) {
        match self {
            Decoder::Gzip(reader) => reader.consume(amt),
            Decoder::Plain(reader) => reader.consume(amt),
            Decoder::Zstd(reader) => reader.consume(amt),
        }
    }
}

/// libzstd's decoder over the blob, whose errors say whose they are: the
/// blob's pass through as they are, anything else is corrupt zstd data
/// and comes out as a [`ZstdError`] (inside the `io::Error`) with the
/// compressed bytes read by then. A blob that ends inside a frame is
/// libzstd's "incomplete frame".
pub(super) struct ZstdStream<R: Read> {
    decoder: zstd::stream::read::Decoder<'static, BufReader<BlobReader<R>>>,
}

impl<R: Read> ZstdStream<R> {
    fn blob(&self) -> &BlobReader<R> {
        self.decoder.get_ref().get_ref()
    }
}

impl<R: Read> Read for ZstdStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decoder.read(buf).map_err(|error| {
            let blob = self.blob();
            if blob.failed {
                error
            } else {
                io::Error::other(ZstdError {
                    compressed_read: blob.read,
                    message: error.to_string(),
                })
            }
        })
    }
}

/// The uncompressed stream, hashed as the tar reader consumes it: the
/// layer's `diff_id` is the SHA-256 of all of it, end-of-archive padding
/// and anything after it included.
pub(super) struct DiffHasher<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: BufRead> DiffHasher<R> {
    pub(super) fn new(inner: R) -> DiffHasher<R> {
        DiffHasher {
            inner,
            hasher: Sha256::new(),
        }
    }

    pub(super) fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads what is left of the stream and returns the inner reader and
    /// the digest of everything.
    pub(super) fn finish(mut self) -> io::Result<(R, [u8; 32])> {
        loop {
            let n = self.fill_buf()?.len();
            if n == 0 {
                break;
            }
            self.consume(n);
        }
        Ok((self.inner, self.hasher.finalize().into()))
    }
}

impl<R: BufRead> Read for DiffHasher<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        if let (Some(out), Some(bytes)) = (buf.get_mut(..n), available.get(..n)) {
            out.copy_from_slice(bytes);
        }
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for DiffHasher<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        // The bytes handed out by the last fill_buf are still buffered:
        // asking again reads nothing and gives them back.
        if let Ok(buffered) = self.inner.fill_buf() {
            if let Some(bytes) = buffered.get(..amt) {
                self.hasher.update(bytes);
            }
        }
        self.inner.consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_hasher_hashes_exactly_what_is_consumed() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = DiffHasher::new(BufReader::with_capacity(1000, &data[..]));
        let mut first = [0; 777];
        reader.read_exact(&mut first).unwrap();
        let buffered = reader.fill_buf().unwrap().len();
        reader.consume(buffered.min(10));
        let (_, digest) = reader.finish().unwrap();
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
