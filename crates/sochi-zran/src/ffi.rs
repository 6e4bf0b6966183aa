//! The zlib boundary: the only file of sochi with `unsafe` code.
//!
//! [`Inflater`] owns a boxed `z_stream` from `libz-rs-sys` (zlib-rs behind
//! the zlib C API). zlib checks that a stream has not moved since
//! `inflateInit2_` (it keeps a back pointer in its state), hence the box.
//!
//! Rules kept here (STYLE.md, "Unsafe: the zlib boundary"):
//! - every method makes exactly one zlib call and checks its return code;
//! - buffers come in as slices: `next_in`/`next_out` are set on entry, the
//!   amounts consumed and produced are read back on exit, and both pointers
//!   are cleared before the method returns, so no pointer outlives a call;
//! - every `unsafe` block says which invariant it relies on.

use std::ffi::{c_int, c_uint, CStr};
use std::fmt;

use libz_rs_sys as zlib;

/// `windowBits` for raw DEFLATE data with a 32 KiB window (zlib.h:
/// "windowBits can also be -8..-15 for raw inflate").
pub(crate) const RAW_DEFLATE: c_int = -15;

/// `windowBits` that accepts a gzip or a zlib header with a 32 KiB window
/// (zlib.h: "Add 32 to windowBits to enable zlib and gzip decoding with
/// automatic header detection"), i.e. 15 + 32. The reference uses it (spec
/// §3.2).
pub(crate) const AUTO_HEADER: c_int = 47;

/// zlib.h on `data_type` after `inflate`: "The Z_BLOCK option assists in
/// appending to or combining deflate streams. To assist in this, on return
/// inflate() always sets strm->data_type to the number of unused bits in the
/// last byte taken from strm->next_in, plus 64 if inflate() is currently
/// decoding the last block in the deflate stream, plus 128 if inflate()
/// returned immediately after decoding an end-of-block code or decoding the
/// complete header up to just before the first byte of the deflate stream."
const AT_BLOCK_BOUNDARY: c_int = 128;
/// See [`AT_BLOCK_BOUNDARY`]: "plus 64 if inflate() is currently decoding the
/// last block in the deflate stream".
const IN_LAST_BLOCK: c_int = 64;
/// See [`AT_BLOCK_BOUNDARY`]: "the number of unused bits in the last byte
/// taken from strm->next_in". At a block boundary zlib holds fewer than 8
/// such bits, so three bits carry the count.
const UNUSED_BITS_MASK: c_int = 7;
/// Everything below [`IN_LAST_BLOCK`]: zlib-rs reports its whole bit buffer
/// here. A value above [`UNUSED_BITS_MASK`] would mean the inflater holds
/// whole unused bytes, which a checkpoint cannot describe.
const BIT_COUNT_FIELD: c_int = IN_LAST_BLOCK - 1;

/// How `inflate` may stop early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// `Z_NO_FLUSH`: decompress as much as input and output allow.
    None,
    /// `Z_BLOCK`: also stop at every DEFLATE block boundary and right after
    /// a gzip/zlib header (zlib.h: "Z_BLOCK requests that inflate() stop if
    /// and when it gets to the next deflate block boundary").
    Block,
}

/// Why one `inflate` call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// `Z_OK`: progress was made; more input or output space may be needed.
    Progress,
    /// `Z_STREAM_END`: the end of the stream (for gzip/zlib: after the
    /// trailer was read and checked).
    StreamEnd,
    /// `Z_BUF_ERROR`: no progress was possible (zlib.h: "Z_BUF_ERROR is not
    /// fatal"); with all input given, this means the input is truncated.
    NoProgress,
    /// `Z_NEED_DICT`: a zlib stream asks for a preset dictionary.
    NeedDictionary,
}

/// What one `inflate` call did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    /// Bytes taken from the front of the input slice.
    pub(crate) consumed: usize,
    /// Bytes written to the front of the output slice.
    pub(crate) produced: usize,
    /// Why the call returned.
    pub(crate) status: Status,
    /// `data_type` after the call.
    pub(crate) data_type: DataType,
}

/// The `data_type` field after `inflate`, decoded with the names above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataType(c_int);

impl DataType {
    /// Inflate stopped right after an end-of-block code or a header.
    pub(crate) fn at_block_boundary(self) -> bool {
        self.0 & AT_BLOCK_BOUNDARY != 0
    }

    /// The block being (or just) decoded is the last of the stream.
    pub(crate) fn in_last_block(self) -> bool {
        self.0 & IN_LAST_BLOCK != 0
    }

    /// Unused bits of the last input byte taken, or `None` if zlib reports
    /// more than 7 (it never should at a block boundary).
    pub(crate) fn unused_bits(self) -> Option<u8> {
        let bits = self.0 & BIT_COUNT_FIELD;
        if bits > UNUSED_BITS_MASK {
            return None;
        }
        u8::try_from(bits & UNUSED_BITS_MASK).ok()
    }
}

/// A zlib call returned a code we treat as failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ZlibFailure {
    /// The zlib function, e.g. `"inflatePrime"`.
    pub(crate) call: &'static str,
    /// Its return code, e.g. -3.
    pub(crate) code: i32,
    /// zlib's `msg`, if it set one (e.g. "invalid distance too far back").
    pub(crate) message: Option<String>,
}

impl ZlibFailure {
    /// The code means the input data is corrupt (`Z_DATA_ERROR`).
    pub(crate) fn is_data_error(&self) -> bool {
        self.code == zlib::Z_DATA_ERROR
    }
}

/// The symbolic name of a zlib return code.
pub(crate) fn code_name(code: i32) -> &'static str {
    match code {
        zlib::Z_OK => "Z_OK",
        zlib::Z_STREAM_END => "Z_STREAM_END",
        zlib::Z_NEED_DICT => "Z_NEED_DICT",
        zlib::Z_ERRNO => "Z_ERRNO",
        zlib::Z_STREAM_ERROR => "Z_STREAM_ERROR",
        zlib::Z_DATA_ERROR => "Z_DATA_ERROR",
        zlib::Z_MEM_ERROR => "Z_MEM_ERROR",
        zlib::Z_BUF_ERROR => "Z_BUF_ERROR",
        zlib::Z_VERSION_ERROR => "Z_VERSION_ERROR",
        _ => "unknown zlib code",
    }
}

impl fmt::Display for ZlibFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} returned {} ({})",
            self.call,
            self.code,
            code_name(self.code)
        )?;
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

/// An inflate stream.
///
/// Invariants: `stream` was initialised by `inflateInit2_` in [`new`] and is
/// ended exactly once, in `Drop`; it never moves (it is boxed and the box is
/// never replaced); `next_in` and `next_out` are null between calls.
///
/// [`new`]: Inflater::new
pub(crate) struct Inflater {
    stream: Box<zlib::z_stream>,
}

impl Inflater {
    /// `inflateInit2_` with `window_bits` ([`RAW_DEFLATE`] or
    /// [`AUTO_HEADER`]).
    pub(crate) fn new(window_bits: c_int) -> Result<Self, ZlibFailure> {
        // `z_stream::default()` has null buffers and, with the
        // `rust-allocator` feature, zlib-rs's allocator in zalloc/zfree.
        let mut stream = Box::<zlib::z_stream>::default();
        let stream_size = c_int::try_from(std::mem::size_of::<zlib::z_stream>())
            .map_err(|_| failure("inflateInit2_", zlib::Z_VERSION_ERROR, None))?;
        // SAFETY: `stream` points to a valid, boxed (so pinned for its whole
        // life) `z_stream` whose zalloc/zfree/opaque hold valid values, and
        // `zlibVersion()` returns a pointer to a static NUL-terminated string.
        let code = unsafe {
            zlib::inflateInit2_(&mut *stream, window_bits, zlib::zlibVersion(), stream_size)
        };
        if code != zlib::Z_OK {
            // inflateInit2_ frees what it allocated when it fails, so the
            // stream must not reach `Drop` (which would call inflateEnd on
            // an uninitialised state; harmless in zlib, but not promised).
            return Err(failure("inflateInit2_", code, None));
        }
        Ok(Inflater { stream })
    }

    /// One `inflate` call from `input` into `output`.
    ///
    /// Slices longer than `u32::MAX` are used only up to `u32::MAX` bytes,
    /// the most one zlib call can take; the caller sees that in `consumed`
    /// and `produced`.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        flush: Flush,
    ) -> Result<Step, ZlibFailure> {
        let avail_in = clamp_len(input.len());
        let avail_out = clamp_len(output.len());
        let flush = match flush {
            Flush::None => zlib::Z_NO_FLUSH,
            Flush::Block => zlib::Z_BLOCK,
        };
        self.stream.next_in = input.as_ptr();
        self.stream.avail_in = avail_in;
        self.stream.next_out = output.as_mut_ptr();
        self.stream.avail_out = avail_out;
        // SAFETY: the stream was initialised by `new` and has not moved;
        // next_in/avail_in describe `input` (borrowed for this call) and
        // next_out/avail_out describe `output` (exclusively borrowed for this
        // call), both clamped to their lengths. zlib writes only within
        // `output` and reads only within `input`.
        let code = unsafe { zlib::inflate(&mut *self.stream, flush) };
        let consumed = (avail_in - self.stream.avail_in) as usize;
        let produced = (avail_out - self.stream.avail_out) as usize;
        self.clear_buffers();
        let status = match code {
            zlib::Z_OK => Status::Progress,
            zlib::Z_STREAM_END => Status::StreamEnd,
            zlib::Z_BUF_ERROR => Status::NoProgress,
            zlib::Z_NEED_DICT => Status::NeedDictionary,
            _ => return Err(failure("inflate", code, self.message())),
        };
        Ok(Step {
            consumed,
            produced,
            status,
            data_type: DataType(self.stream.data_type),
        })
    }

    /// `inflatePrime`: insert the low `bits` bits of `value` into the input
    /// bit buffer (zlib.h: "used to start inflating at a bit position in the
    /// middle of a byte"). Only for raw inflate, before the first `inflate`.
    pub(crate) fn prime(&mut self, bits: u8, value: u8) -> Result<(), ZlibFailure> {
        // SAFETY: the stream was initialised by `new` and has not moved;
        // inflatePrime touches no buffers.
        let code =
            unsafe { zlib::inflatePrime(&mut *self.stream, c_int::from(bits), c_int::from(value)) };
        check("inflatePrime", code, self.message())
    }

    /// `inflateSetDictionary` (zlib.h: "For raw inflate, this function can
    /// be called at any time to set the dictionary").
    pub(crate) fn set_dictionary(&mut self, dictionary: &[u8]) -> Result<(), ZlibFailure> {
        let length = c_uint::try_from(dictionary.len())
            .map_err(|_| failure("inflateSetDictionary", zlib::Z_STREAM_ERROR, None))?;
        // SAFETY: the stream was initialised by `new` and has not moved;
        // `dictionary` is valid for reads of `length` bytes during the call,
        // and zlib copies it into its own window (keeps no pointer).
        let code =
            unsafe { zlib::inflateSetDictionary(&mut *self.stream, dictionary.as_ptr(), length) };
        check("inflateSetDictionary", code, self.message())
    }

    /// `inflateReset2`: start a new stream with `window_bits`, keeping the
    /// allocation. Clears zlib's window.
    pub(crate) fn reset(&mut self, window_bits: c_int) -> Result<(), ZlibFailure> {
        // SAFETY: the stream was initialised by `new` and has not moved;
        // inflateReset2 touches no buffers.
        let code = unsafe { zlib::inflateReset2(&mut *self.stream, window_bits) };
        check("inflateReset2", code, self.message())
    }

    /// Null the buffer pointers so nothing dangles between calls.
    fn clear_buffers(&mut self) {
        self.stream.next_in = std::ptr::null();
        self.stream.avail_in = 0;
        self.stream.next_out = std::ptr::null_mut();
        self.stream.avail_out = 0;
    }

    /// zlib's `msg`, copied out.
    fn message(&self) -> Option<String> {
        let msg = self.stream.msg;
        if msg.is_null() {
            return None;
        }
        // SAFETY: zlib (and zlib-rs) only ever store pointers to static,
        // NUL-terminated strings in `msg`; it is non-null here.
        let text = unsafe { CStr::from_ptr(msg) };
        Some(text.to_string_lossy().into_owned())
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `new` (an `Inflater` exists
        // only after a successful inflateInit2_), has not moved, and is
        // ended only here. Its return code cannot be acted on in `drop`.
        unsafe {
            zlib::inflateEnd(&mut *self.stream);
        }
    }
}

/// `len` as a zlib `uInt`, at most `u32::MAX`.
fn clamp_len(len: usize) -> c_uint {
    c_uint::try_from(len).unwrap_or(c_uint::MAX)
}

fn failure(call: &'static str, code: c_int, message: Option<String>) -> ZlibFailure {
    ZlibFailure {
        call,
        code,
        message,
    }
}

fn check(call: &'static str, code: c_int, message: Option<String>) -> Result<(), ZlibFailure> {
    if code == zlib::Z_OK {
        Ok(())
    } else {
        Err(failure(call, code, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn inflates_gzip_with_auto_header() {
        let data = b"hello hello hello hello".repeat(100);
        let compressed = gzip(&data);
        let mut inflater = Inflater::new(AUTO_HEADER).unwrap();
        let mut out = vec![0u8; data.len() + 10];
        let step = inflater
            .inflate(&compressed, &mut out, Flush::None)
            .unwrap();
        assert_eq!(step.status, Status::StreamEnd);
        assert_eq!(step.consumed, compressed.len());
        assert_eq!(&out[..step.produced], &data[..]);
    }

    #[test]
    fn z_block_stops_after_the_header_at_a_boundary() {
        let compressed = gzip(b"abc");
        let mut inflater = Inflater::new(AUTO_HEADER).unwrap();
        let mut out = [0u8; 16];
        let step = inflater
            .inflate(&compressed, &mut out, Flush::Block)
            .unwrap();
        assert_eq!(step.consumed, 10);
        assert_eq!(step.produced, 0);
        assert!(step.data_type.at_block_boundary());
        assert!(!step.data_type.in_last_block());
        assert_eq!(step.data_type.unused_bits(), Some(0));
    }

    #[test]
    fn garbage_is_a_data_error_with_a_message() {
        let mut inflater = Inflater::new(AUTO_HEADER).unwrap();
        let mut out = [0u8; 16];
        let err = inflater
            .inflate(b"this is not gzip", &mut out, Flush::Block)
            .unwrap_err();
        assert!(err.is_data_error(), "{err}");
        assert_eq!(err.call, "inflate");
        assert!(
            err.to_string()
                .starts_with("inflate returned -3 (Z_DATA_ERROR)"),
            "{err}"
        );
    }

    #[test]
    fn prime_with_too_many_bits_is_a_stream_error() {
        let mut inflater = Inflater::new(RAW_DEFLATE).unwrap();
        let err = inflater.prime(17, 0).unwrap_err();
        assert_eq!(err.to_string(), "inflatePrime returned -2 (Z_STREAM_ERROR)");
    }

    #[test]
    fn bad_window_bits_fail_init_and_reset() {
        assert!(Inflater::new(3).is_err());
        let mut inflater = Inflater::new(RAW_DEFLATE).unwrap();
        let err = inflater.reset(99).unwrap_err();
        assert_eq!(err.call, "inflateReset2");
    }

    #[test]
    fn empty_buffers_make_no_progress() {
        let mut inflater = Inflater::new(RAW_DEFLATE).unwrap();
        let step = inflater.inflate(&[], &mut [0u8; 4], Flush::None).unwrap();
        assert_eq!(step.status, Status::NoProgress);
        assert_eq!((step.consumed, step.produced), (0, 0));
    }
}
