//! Inflating one span from its checkpoint (docs/format.md §2.5).

use sochi_format::{CheckpointRef, WINDOW_SIZE};

use crate::error::{Error, Result};
use crate::ffi::{Flush, Inflater, Status, AUTO_HEADER, RAW_DEFLATE};

/// Size of the gzip member trailer (CRC32 + ISIZE), skipped by hand when a
/// member ends while the inflater is still in raw mode.
const GZIP_TRAILER_SIZE: usize = 8;

/// Scratch space for discarding `skip` bytes when `out` is too small to
/// serve as scratch itself.
const SKIP_SCRATCH_SIZE: usize = 32 * 1024;

/// Inflates uncompressed bytes of one span, starting at `checkpoint`.
///
/// `compressed` is the span's compressed bytes `[StartCompressed,
/// EndCompressed)` (docs/format.md §2.4): when `checkpoint.bits != 0` it starts with the
/// partial byte `compressed_offset - 1`. The first `skip` uncompressed bytes
/// of the span are discarded, then `out` is filled exactly.
///
/// Following the reference: raw inflate, prime the partial byte's bits, set
/// the dictionary to the window (always), and when a gzip member ends while
/// output is still needed, skip its 8-byte trailer by hand the first time and
/// continue in gzip mode (`windowBits` 47) from the next member's header.
///
/// Errors if the checkpoint is malformed, if `compressed` ends before `out` is
/// full ([`Error::Truncated`]) or if the data is corrupt; never writes bytes
/// that zlib did not decode. (A wrong but well-formed window cannot be
/// detected: the span's data is decoded against whatever window is given.)
// Long: one FFI loop over a single zlib stream, read top to bottom beside
// the reference; its state (position, bytes to skip, filled, raw or gzip
// mode) is shared by every step, and split up it would travel as a bundle
// of mutable references.
pub fn inflate_span(
    checkpoint: CheckpointRef<'_>,
    compressed: &[u8],
    skip: u64,
    out: &mut [u8],
) -> Result<()> {
    let invalid = |detail| Error::InvalidCheckpoint {
        compressed_offset: checkpoint.compressed_offset,
        detail,
    };
    if checkpoint.bits > 7 {
        return Err(invalid("bits is more than 7"));
    }
    if checkpoint.window.len() != WINDOW_SIZE {
        return Err(invalid("window is not 32768 bytes"));
    }
    let has_partial_byte = checkpoint.bits != 0;
    let start = checkpoint
        .compressed_offset
        .checked_sub(u64::from(has_partial_byte))
        .ok_or_else(|| invalid("bits is not 0 at compressed offset 0"))?;
    let offset_of = |position: usize| start + position as u64;

    let mut inflater = Inflater::new(RAW_DEFLATE).map_err(|f| Error::from_zlib(f, start))?;
    let mut position = 0;
    if has_partial_byte {
        let byte = *compressed
            .first()
            .ok_or(Error::Truncated { offset: start })?;
        // The span's first `bits` bits are the high bits of the partial byte.
        inflater
            .prime(checkpoint.bits, byte >> (8 - checkpoint.bits))
            .map_err(|f| Error::from_zlib(f, start))?;
        position = 1;
    }
    inflater
        .set_dictionary(checkpoint.window)
        .map_err(|f| Error::from_zlib(f, start))?;

    let mut scratch = Vec::new();
    let mut to_skip = skip;
    let mut filled = 0;
    let mut raw = true;
    while to_skip > 0 || filled < out.len() {
        let destination: &mut [u8] = if to_skip > 0 {
            let want = usize::try_from(to_skip).unwrap_or(usize::MAX);
            if out.len() >= SKIP_SCRATCH_SIZE {
                let len = want.min(out.len());
                &mut out[..len]
            } else {
                scratch.resize(SKIP_SCRATCH_SIZE, 0);
                let len = want.min(scratch.len());
                &mut scratch[..len]
            }
        } else {
            &mut out[filled..]
        };
        let step = inflater
            .inflate(&compressed[position..], destination, Flush::None)
            .map_err(|f| Error::from_zlib(f, offset_of(position)))?;
        position += step.consumed;
        if to_skip > 0 {
            to_skip -= step.produced as u64;
        } else {
            filled += step.produced;
        }
        match step.status {
            Status::Progress => {}
            Status::StreamEnd => {
                if to_skip == 0 && filled == out.len() {
                    break;
                }
                if raw {
                    // The raw inflater stops before the member's trailer.
                    if compressed.len() - position < GZIP_TRAILER_SIZE {
                        return Err(Error::Truncated {
                            offset: offset_of(compressed.len()),
                        });
                    }
                    position += GZIP_TRAILER_SIZE;
                    raw = false;
                }
                inflater
                    .reset(AUTO_HEADER)
                    .map_err(|f| Error::from_zlib(f, offset_of(position)))?;
            }
            Status::NoProgress => {
                if position < compressed.len() {
                    return Err(Error::ZlibContract {
                        call: "inflate",
                        detail: "no progress with input and output space available",
                    });
                }
                return Err(Error::Truncated {
                    offset: offset_of(position),
                });
            }
            Status::NeedDictionary => {
                return Err(Error::NeedsDictionary {
                    offset: offset_of(position),
                })
            }
        }
    }
    Ok(())
}

/// [`inflate_span`] into a new vector of `len` bytes (from the span start).
pub fn inflate_span_to_vec(
    checkpoint: CheckpointRef<'_>,
    compressed: &[u8],
    len: usize,
) -> Result<Vec<u8>> {
    let mut out = vec![0; len];
    inflate_span(checkpoint, compressed, 0, &mut out)?;
    Ok(out)
}
