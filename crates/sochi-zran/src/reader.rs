//! [`CheckpointingReader`]: one pass over a gzip layer that yields the
//! uncompressed stream and, on the side, places zran checkpoints (docs/format.md §3.2)
//! and computes span digests (docs/format.md §2.4, §3.3).
//!
//! Buffers (all fixed-size, so memory stays bounded whatever the layer size;
//! only the zinfo blob grows, by 32,785 bytes per checkpoint):
//!
//! - `input`: compressed bytes read from the inner reader.
//!   `0 <= input_consumed <= input_filled <= input.len()`;
//!   `[0, input_consumed)` was inflated, `[input_consumed, input_filled)` is
//!   waiting for zlib. Once zlib has consumed it all, the buffer goes to the
//!   span hashing thread ([`BackgroundHasher`]) and a free one comes back.
//! - `output`: `WINDOW_SIZE` bytes of history followed by fresh output.
//!   `WINDOW_SIZE <= output_filled <= output.len()` and
//!   `output_read <= output_filled`; `output[output_filled - WINDOW_SIZE ..
//!   output_filled]` is always the last 32 KiB of the uncompressed stream
//!   (zeros before its start), which is exactly a checkpoint window (§2.2),
//!   so placing a checkpoint copies nothing but the window itself into the
//!   zinfo. When the buffer is full and the caller has read everything, the
//!   last 32 KiB slide to the front.

use std::fmt;
use std::io::{self, BufRead, Read};

use sochi_format::{GzipZinfoWriter, Sha256Digest, WINDOW_SIZE};

use crate::error::{Error, Result};
use crate::ffi::{Flush, Inflater, Status, Step, AUTO_HEADER};
use crate::span_digests::BackgroundHasher;

/// Compressed bytes read from the inner reader at a time.
const INPUT_SIZE: usize = 512 * 1024;
/// Uncompressed bytes produced between two slides of the history window.
const OUTPUT_SIZE: usize = 1024 * 1024;

/// The result of indexing one gzip layer.
#[derive(Clone, PartialEq, Eq)]
pub struct GzipLayerIndex {
    /// The v2 zinfo blob (docs/format.md §2.2): span size, then every checkpoint with
    /// its 32 KiB window. This is the zTOC's `checkpoints` vector.
    pub zinfo: Vec<u8>,
    /// SHA-256 of each span's compressed bytes, span 0 first (docs/format.md §2.4).
    pub span_digests: Vec<Sha256Digest>,
    /// Length of the gzip blob in bytes (`compressed_archive_size`).
    pub compressed_size: u64,
    /// Length of the whole uncompressed stream in bytes. (The zTOC's
    /// `uncompressed_archive_size` is where the tar reader stopped instead;
    /// docs/format.md §3.5.)
    pub uncompressed_size: u64,
    /// Number of checkpoints, equal to `span_digests.len()`.
    pub checkpoint_count: usize,
}

impl fmt::Debug for GzipLayerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GzipLayerIndex")
            .field("zinfo_len", &self.zinfo.len())
            .field("span_digests", &self.span_digests)
            .field("compressed_size", &self.compressed_size)
            .field("uncompressed_size", &self.uncompressed_size)
            .field("checkpoint_count", &self.checkpoint_count)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Inside a gzip member.
    Inflating,
    /// A member ended (trailer checked); next comes another member or EOF.
    BetweenMembers,
    /// The last member ended at EOF of the inner reader.
    Done,
    /// An error left the index incomplete; nothing more can be trusted.
    Failed,
}

/// Reads a gzip (or zlib) stream, yields its uncompressed bytes through
/// [`Read`] and [`BufRead`], and builds the layer's zran index on the way.
///
/// Checkpoints follow the reference exactly (docs/format.md §3.2): inflate with
/// `windowBits` 47 and `Z_BLOCK`, and after each call place a checkpoint if
/// zlib stopped at a block boundary (or right after a header) that does not
/// end the last block, and either no output has been produced yet or more
/// than `span_size` bytes were produced since the last checkpoint.
/// Concatenated gzip members are followed; anything after the last member is
/// an error, as are truncation and CRC/length mismatches.
///
/// Errors from `Read`/`BufRead` are [`io::Error`]s wrapping an [`Error`];
/// [`Error::from_io`] gets it back.
///
/// Costs: one helper thread that hashes the compressed bytes (so hashing
/// overlaps inflating), about 3 MiB of fixed buffers, and the zinfo blob,
/// which grows by 32,785 bytes per checkpoint.
///
/// ```
/// # fn main() -> Result<(), sochi_zran::Error> {
/// use std::io::Read as _;
/// // "hello\n", gzip -6.
/// let gz = [
///     0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9,
///     0xc9, 0xe7, 0x02, 0x00, 0x20, 0x30, 0x3a, 0x36, 0x06, 0x00, 0x00, 0x00,
/// ];
/// let mut reader = sochi_zran::CheckpointingReader::new(&gz[..], 4 << 20)?;
/// let mut text = String::new();
/// reader.read_to_string(&mut text).map_err(sochi_zran::Error::from_io)?;
/// assert_eq!(text, "hello\n");
/// let index = reader.finish()?;
/// assert_eq!(index.checkpoint_count, 1);
/// assert_eq!(index.compressed_size, 26);
/// # Ok(())
/// # }
/// ```
pub struct CheckpointingReader<R> {
    inner: R,
    inflater: Inflater,
    state: State,
    span_size: u64,
    zinfo: GzipZinfoWriter,
    hasher: BackgroundHasher,

    input: Box<[u8]>,
    input_consumed: usize,
    input_filled: usize,
    inner_eof: bool,
    /// The last compressed byte given to zlib (the partial byte of a
    /// checkpoint with `bits != 0`).
    last_input_byte: Option<u8>,

    output: Box<[u8]>,
    output_read: usize,
    output_filled: usize,

    /// Compressed bytes consumed by zlib (`totin`).
    total_in: u64,
    /// Uncompressed bytes produced by zlib (`totout`).
    total_out: u64,
    /// `out` of the last checkpoint (`last`), 0 before the first.
    last_checkpoint_out: u64,
    /// Compressed offset where the current member starts.
    member_start: u64,
    /// Whether the current member's header has been read (zlib stopped at
    /// its first boundary).
    member_header_done: bool,
    /// Index of the current gzip member, 0 for the first.
    member_index: u64,
}

impl<R: Read> CheckpointingReader<R> {
    /// Starts indexing the gzip stream `inner` with checkpoints at least
    /// `span_size` uncompressed bytes apart (0: at every block boundary).
    pub fn new(inner: R, span_size: u64) -> Result<Self> {
        let zinfo_span_size =
            i64::try_from(span_size).map_err(|_| Error::SpanSizeTooLarge { span_size })?;
        let inflater =
            Inflater::new(AUTO_HEADER).map_err(|failure| Error::from_zlib(failure, 0))?;
        let (hasher, input) = BackgroundHasher::new(INPUT_SIZE)?;
        Ok(CheckpointingReader {
            inner,
            inflater,
            state: State::Inflating,
            span_size,
            zinfo: GzipZinfoWriter::new(zinfo_span_size),
            hasher,
            input,
            input_consumed: 0,
            input_filled: 0,
            inner_eof: false,
            last_input_byte: None,
            output: vec![0; WINDOW_SIZE + OUTPUT_SIZE].into_boxed_slice(),
            output_read: WINDOW_SIZE,
            output_filled: WINDOW_SIZE,
            total_in: 0,
            total_out: 0,
            last_checkpoint_out: 0,
            member_start: 0,
            member_header_done: false,
            member_index: 0,
        })
    }

    /// Compressed bytes consumed so far by the inflater.
    pub fn compressed_position(&self) -> u64 {
        self.total_in
    }

    /// Uncompressed bytes handed to the caller so far (through `read` or
    /// `consume`).
    pub fn uncompressed_position(&self) -> u64 {
        self.total_out - (self.output_filled - self.output_read) as u64
    }

    /// Gives back the compressed stream, positioned wherever the inflater
    /// stopped reading it (it reads ahead in chunks of 512 KiB).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Checkpoints placed so far.
    pub fn checkpoint_count(&self) -> usize {
        self.zinfo.len()
    }

    /// Reads (and discards) whatever the caller has not read, up to the end
    /// of the inner reader, and returns the index.
    pub fn finish(mut self) -> Result<GzipLayerIndex> {
        loop {
            self.output_read = self.output_filled;
            if self.state == State::Done {
                break;
            }
            self.produce()?;
        }
        let checkpoint_count = self.zinfo.len();
        let span_digests = self.hasher.finish(self.input, 0..self.input_consumed)?;
        debug_assert_eq!(span_digests.len(), checkpoint_count);
        Ok(GzipLayerIndex {
            zinfo: self.zinfo.finish(),
            span_digests,
            compressed_size: self.total_in,
            uncompressed_size: self.total_out,
            checkpoint_count,
        })
    }

    /// Inflates until some output is available to the caller or the stream
    /// is done. Requires `output_read == output_filled`.
    fn produce(&mut self) -> Result<()> {
        debug_assert_eq!(self.output_read, self.output_filled);
        loop {
            match self.state {
                State::Done => return Ok(()),
                State::Failed => return Err(Error::UsedAfterError),
                State::BetweenMembers => {
                    if !self.next_member()? {
                        return Ok(());
                    }
                }
                State::Inflating => {}
            }
            if self.input_consumed == self.input_filled && !self.inner_eof {
                // Errors of the inner reader leave the state consistent: the
                // caller may retry.
                self.refill()?;
            }
            let produced = self.step().inspect_err(|_| self.state = State::Failed)?;
            if produced > 0 {
                return Ok(());
            }
        }
    }

    /// One inflate call and its bookkeeping; returns the bytes produced.
    fn step(&mut self) -> Result<usize> {
        if self.output_filled == self.output.len() {
            // Slide the history to the front (the caller has read it all).
            self.output
                .copy_within(self.output_filled - WINDOW_SIZE..self.output_filled, 0);
            self.output_read = WINDOW_SIZE;
            self.output_filled = WINDOW_SIZE;
        }
        let input = &self.input[self.input_consumed..self.input_filled];
        let result =
            self.inflater
                .inflate(input, &mut self.output[self.output_filled..], Flush::Block);
        let step: Step = match result {
            Ok(step) => step,
            Err(failure) => {
                if failure.is_data_error() && self.in_trailing_data() {
                    return Err(Error::TrailingData {
                        offset: self.member_start,
                    });
                }
                return Err(Error::from_zlib(failure, self.total_in));
            }
        };
        if step.consumed > 0 {
            self.last_input_byte = Some(input[step.consumed - 1]);
        }
        self.input_consumed += step.consumed;
        self.total_in += step.consumed as u64;
        self.output_filled += step.produced;
        self.total_out += step.produced as u64;

        match step.status {
            Status::Progress | Status::NoProgress => {
                let data_type = step.data_type;
                if data_type.at_block_boundary() {
                    self.member_header_done = true;
                    // Spec §3.2 places a checkpoint whenever totout == 0;
                    // a stream with no output before its first block
                    // boundary (an empty first member, a sync flush) would
                    // get a second one at 0 and an empty span the
                    // snapshotter refuses (§1.3). The first one serves.
                    let at_start = self.total_out == 0 && self.zinfo.is_empty();
                    if !data_type.in_last_block()
                        && (at_start || self.total_out - self.last_checkpoint_out > self.span_size)
                    {
                        let bits = data_type.unused_bits().ok_or(Error::ZlibContract {
                            call: "inflate",
                            detail: "more than 7 unused bits at a block boundary",
                        })?;
                        self.checkpoint(bits)?;
                    }
                }
                if step.status == Status::NoProgress {
                    if self.input_consumed < self.input_filled {
                        return Err(Error::ZlibContract {
                            call: "inflate",
                            detail: "no progress with input and output space available",
                        });
                    }
                    if self.inner_eof {
                        if self.in_trailing_data() {
                            return Err(Error::TrailingData {
                                offset: self.member_start,
                            });
                        }
                        return Err(Error::Truncated {
                            offset: self.total_in,
                        });
                    }
                }
            }
            Status::StreamEnd => self.state = State::BetweenMembers,
            Status::NeedDictionary => {
                return Err(Error::NeedsDictionary {
                    offset: self.total_in,
                })
            }
        }
        Ok(step.produced)
    }

    /// After a member: finds out whether another follows (then resets the
    /// inflater, docs/format.md §3.2 "multi-member") or the stream is done. Returns
    /// whether inflating continues.
    fn next_member(&mut self) -> Result<bool> {
        if self.input_consumed == self.input_filled && !self.inner_eof {
            self.refill()?;
        }
        if self.input_consumed == self.input_filled {
            // EOF right after a member: done. (`finish` hashes the rest.)
            self.state = State::Done;
            return Ok(false);
        }
        if let Err(failure) = self.inflater.reset(AUTO_HEADER) {
            self.state = State::Failed;
            return Err(Error::from_zlib(failure, self.total_in));
        }
        self.member_start = self.total_in;
        self.member_header_done = false;
        self.member_index += 1;
        self.state = State::Inflating;
        Ok(true)
    }

    /// Whether a failure now means "bytes after the last member that are
    /// not a member" rather than a broken member.
    fn in_trailing_data(&self) -> bool {
        self.member_index > 0 && !self.member_header_done
    }

    /// Places a checkpoint at the current position.
    fn checkpoint(&mut self, bits: u8) -> Result<()> {
        let partial_byte = if bits == 0 {
            None
        } else {
            Some(self.last_input_byte.ok_or(Error::Corrupt {
                offset: self.total_in,
                detail: "block boundary with unused bits before any input".to_owned(),
            })?)
        };
        self.hasher.start_span(self.input_consumed, partial_byte);
        let window = &self.output[self.output_filled - WINDOW_SIZE..self.output_filled];
        self.zinfo
            .push(self.total_in, self.total_out, bits, window)?;
        self.last_checkpoint_out = self.total_out;
        Ok(())
    }

    /// Hands the consumed input buffer to the hashing thread, then reads the
    /// next chunk from the inner reader. Requires all input consumed.
    fn refill(&mut self) -> Result<()> {
        debug_assert_eq!(self.input_consumed, self.input_filled);
        if self.input_consumed > 0 {
            let consumed = std::mem::take(&mut self.input);
            self.input = self
                .hasher
                .hand_over(consumed, 0..self.input_consumed)
                .inspect_err(|_| self.state = State::Failed)?;
            self.input_consumed = 0;
            self.input_filled = 0;
        }
        loop {
            match self.inner.read(&mut self.input) {
                Ok(0) => {
                    self.inner_eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.input_filled = n.min(self.input.len());
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Io { source }),
            }
        }
    }
}

impl<R: Read> Read for CheckpointingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for CheckpointingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.output_read == self.output_filled {
            self.produce().map_err(Error::into_io)?;
        }
        Ok(&self.output[self.output_read..self.output_filled])
    }

    fn consume(&mut self, amt: usize) {
        self.output_read = (self.output_read + amt).min(self.output_filled);
    }
}

impl<R> fmt::Debug for CheckpointingReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointingReader")
            .field("state", &self.state)
            .field("span_size", &self.span_size)
            .field("compressed_position", &self.total_in)
            .field("uncompressed_produced", &self.total_out)
            .field("checkpoints", &self.zinfo.len())
            .finish_non_exhaustive()
    }
}
