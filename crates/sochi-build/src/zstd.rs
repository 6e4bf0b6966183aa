//! Multi-frame zstd layers (`pzstd`, zstd:chunked, any writer that cuts
//! its output into frames): a sochi zTOC variant, built only on request
//! because the reference and AWS Fargate cannot read it (docs/zstd.md).
//!
//! A zstd frame starts from an empty history, so every frame start is a
//! checkpoint that needs no window. The blob is read once: libzstd decodes
//! it in streaming mode, reporting each frame's end, and the decoded bytes
//! flow into the tar reader (the TOC). Spans are runs of whole frames: a
//! span closes at the first frame end at or past `span_size` uncompressed
//! bytes from its start, so every span but the last holds at least
//! `span_size` bytes. Spans tile the blob (frames that decode to nothing,
//! such as skippable frames, go with the span after them, or with the last
//! span at the end of the blob) and the uncompressed stream; digests are of
//! each span's compressed bytes, as for gzip.

use std::io::{self, BufRead, Read};

use sha2::{Digest as _, Sha256};
use sochi_format::{
    CompressionAlgorithm, CompressionInfo, FileMetadata, FrameZinfoWriter, Sha256Digest,
};
use sochi_tar::{TarError, TarReader};
use zstd::stream::raw::{Decoder, InBuffer, Operation as _, OutBuffer};

use crate::error::{Error, Result};

/// Why a zstd layer of one frame gets no zTOC (shown by `create` and
/// `convert` as the layer's skip reason).
pub(crate) const SINGLE_FRAME_REASON: &str =
    "a single zstd frame: nothing to seek to, the layer is unpacked";

/// Compressed bytes read from the blob at a time.
const INPUT_SIZE: usize = 1 << 20;

/// The TOC, the uncompressed archive size and the compression info of a
/// multi-frame zstd layer.
pub(crate) fn index_zstd(
    blob: &mut dyn Read,
    span_size: u64,
    name: &str,
) -> Result<(Vec<FileMetadata>, u64, CompressionInfo)> {
    let frames = FrameReader::new(blob, span_size).map_err(|source| Error::Io {
        context: format!("layer {name}: starting the zstd decoder"),
        source,
    })?;
    let mut tar = TarReader::new(frames);
    let mut toc = Vec::new();
    loop {
        match tar.next_entry() {
            Ok(Some(entry)) => toc.push(entry.metadata),
            Ok(None) => break,
            Err(error) => return Err(tar_error(error, name)),
        }
    }
    let mut frames = tar.into_inner();
    // Whatever follows the tar's end (padding, more frames) belongs to the
    // last span, which must decode to exactly its bytes.
    io::copy(&mut frames, &mut io::sink()).map_err(|source| Error::Io {
        context: format!("reading zstd layer {name}"),
        source,
    })?;
    let done = frames.finish();
    if done.compressed_size == 0 {
        return Err(Error::Invalid(format!("layer {name} is empty")));
    }
    if done.data_frames < 2 {
        return Err(Error::NotIndexable {
            layer: name.to_string(),
            reason: SINGLE_FRAME_REASON.to_string(),
        });
    }
    let mut zinfo = FrameZinfoWriter::new(false);
    let mut span_digests = Vec::with_capacity(done.spans.len());
    for span in &done.spans {
        zinfo
            .push(span.compressed.clone(), span.uncompressed_start)
            .map_err(|source| Error::Format {
                context: format!("layer {name}: recording the zstd spans"),
                source,
            })?;
        span_digests.push(span.digest);
    }
    let max_span_id = span_digests
        .len()
        .checked_sub(1)
        .and_then(|max| i32::try_from(max).ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "layer {name}: {} spans do not fit a zTOC",
                span_digests.len()
            ))
        })?;
    Ok((
        toc,
        // The whole decoded stream, not where the tar ended: a span manager
        // decodes the last span's frames in full and checks their length.
        done.uncompressed_size,
        CompressionInfo {
            algorithm: CompressionAlgorithm::Zstd,
            max_span_id,
            span_digests,
            checkpoints: zinfo.finish(),
        },
    ))
}

/// A tar error; an I/O error under it (libzstd's, or the blob's) is
/// reported as reading the layer.
fn tar_error(error: TarError, name: &str) -> Error {
    match error {
        TarError::Io(source) => Error::Io {
            context: format!("reading zstd layer {name}"),
            source,
        },
        error => Error::Tar {
            layer: name.to_string(),
            source: error,
        },
    }
}

/// One span found while decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FoundSpan {
    compressed: std::ops::Range<u64>,
    uncompressed_start: u64,
    digest: Sha256Digest,
}

/// A span boundary at a frame end, waiting for the next frame that decodes
/// to something: only then does a new span start there.
struct Boundary {
    compressed: u64,
    uncompressed: u64,
    /// The closing span's digest, its bytes ending at the boundary.
    digest: Sha256Digest,
}

/// What decoding the whole blob found.
struct Decoded {
    spans: Vec<FoundSpan>,
    compressed_size: u64,
    uncompressed_size: u64,
    /// Frames that decoded to at least one byte.
    data_frames: usize,
}

/// A `BufRead` of the decoded layer that finds the frames and cuts the
/// spans as the tar reader pulls bytes through it.
///
/// Invariants: `input_start <= input_end <= input.len()` and
/// `output_start <= output_end <= output.len()`; `compressed` counts the
/// blob bytes libzstd has consumed (every one of them hashed into
/// `current`, and into `next` too while `boundary` is set), `uncompressed`
/// the bytes it has produced.
struct FrameReader<R> {
    inner: R,
    decoder: Decoder<'static>,
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    blob_ended: bool,
    output: Vec<u8>,
    output_start: usize,
    output_end: usize,
    span_size: u64,
    compressed: u64,
    uncompressed: u64,
    /// The current span starts here (compressed, uncompressed).
    span_start: (u64, u64),
    current: Sha256,
    next: Sha256,
    boundary: Option<Boundary>,
    spans: Vec<FoundSpan>,
    /// libzstd has consumed bytes of a frame it has not finished.
    in_frame: bool,
    frame_output: u64,
    data_frames: usize,
}

impl<R: Read> FrameReader<R> {
    fn new(inner: R, span_size: u64) -> io::Result<Self> {
        Ok(FrameReader {
            inner,
            decoder: Decoder::new()?,
            input: vec![0; INPUT_SIZE],
            input_start: 0,
            input_end: 0,
            blob_ended: false,
            // One output buffer of libzstd's recommended size would do;
            // larger means fewer calls per span.
            output: vec![0; 1 << 20],
            output_start: 0,
            output_end: 0,
            span_size,
            compressed: 0,
            uncompressed: 0,
            span_start: (0, 0),
            current: Sha256::new(),
            next: Sha256::new(),
            boundary: None,
            spans: Vec::new(),
            in_frame: false,
            frame_output: 0,
            data_frames: 0,
        })
    }

    /// Decodes until some output is ready or the blob has ended cleanly.
    /// Returns false at the end.
    fn decode_more(&mut self) -> io::Result<bool> {
        while self.output_start == self.output_end {
            if self.input_start == self.input_end {
                if !self.blob_ended {
                    let n = self.inner.read(&mut self.input)?;
                    self.input_start = 0;
                    self.input_end = n;
                    self.blob_ended = n == 0;
                    continue;
                }
                if self.in_frame {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "zstd: the blob ends inside a frame, at compressed offset {}",
                            self.compressed
                        ),
                    ));
                }
                return Ok(false);
            }
            self.step()?;
        }
        Ok(true)
    }

    /// One libzstd call on the buffered input.
    fn step(&mut self) -> io::Result<()> {
        let mut input = InBuffer::around(&self.input[self.input_start..self.input_end]);
        let mut output = OutBuffer::around(&mut self.output[..]);
        let hint = self.decoder.run(&mut input, &mut output).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "zstd: {error}, in the frame at or before compressed offset {}",
                    self.compressed
                ),
            )
        })?;
        let consumed = input.pos();
        let produced = output.pos();
        let bytes = &self.input[self.input_start..self.input_start + consumed];
        self.current.update(bytes);
        if self.boundary.is_some() {
            self.next.update(bytes);
        }
        if produced > 0 {
            // libzstd stops at a frame's end, so these bytes all come from
            // the frame after a pending boundary: the new span starts.
            if let Some(boundary) = self.boundary.take() {
                self.spans.push(FoundSpan {
                    compressed: self.span_start.0..boundary.compressed,
                    uncompressed_start: self.span_start.1,
                    digest: boundary.digest,
                });
                self.span_start = (boundary.compressed, boundary.uncompressed);
                self.current = std::mem::take(&mut self.next);
            }
        }
        self.input_start += consumed;
        self.compressed += consumed as u64;
        self.uncompressed += produced as u64;
        self.frame_output += produced as u64;
        self.output_start = 0;
        self.output_end = produced;
        self.in_frame |= consumed > 0;
        // A hint of 0: a frame has been decoded and flushed in full, and
        // libzstd has consumed nothing past its end (zstd.h,
        // ZSTD_decompressStream).
        if hint == 0 && self.in_frame {
            self.in_frame = false;
            if self.frame_output > 0 {
                self.data_frames += 1;
            }
            self.frame_output = 0;
            if self.boundary.is_none() && self.uncompressed - self.span_start.1 >= self.span_size {
                self.boundary = Some(Boundary {
                    compressed: self.compressed,
                    uncompressed: self.uncompressed,
                    digest: Sha256Digest(self.current.clone().finalize().into()),
                });
                self.next = Sha256::new();
            }
        }
        Ok(())
    }

    /// The spans, once the reader has returned end of stream. A boundary
    /// still pending has only empty frames after it: they stay in the last
    /// span, whose digest (`current`) has them.
    fn finish(mut self) -> Decoded {
        self.spans.push(FoundSpan {
            compressed: self.span_start.0..self.compressed,
            uncompressed_start: self.span_start.1,
            digest: Sha256Digest(self.current.finalize().into()),
        });
        Decoded {
            spans: self.spans,
            compressed_size: self.compressed,
            uncompressed_size: self.uncompressed,
            data_frames: self.data_frames,
        }
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for FrameReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if !self.decode_more()? {
            return Ok(&[]);
        }
        Ok(&self.output[self.output_start..self.output_end])
    }

    fn consume(&mut self, amount: usize) {
        self.output_start = (self.output_start + amount).min(self.output_end);
    }
}

#[cfg(test)]
mod tests;
