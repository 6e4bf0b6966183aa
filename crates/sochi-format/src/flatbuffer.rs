//! A small, bounded FlatBuffers reader, shared by the zTOC decoder and the
//! uncompressed-layer zinfo (docs/format.md §1.1–§1.3).
//!
//! It never trusts a number from the buffer: every offset, length and
//! vtable entry is checked against the buffer before use, arithmetic is
//! checked, and every failure is an [`Error::Corrupt`] naming the table and
//! field being read and the byte offset where it went wrong. We do not use
//! the `flatbuffers` crate's accessors, which index without checks.

use crate::error::{Error, Result};

/// Size of a FlatBuffers `uoffset`/`soffset`/vector length.
pub(crate) const OFFSET_SIZE: usize = 4;
/// The vtable offset of FlatBuffers field `slot`.
pub(crate) fn vtable_offset(slot: u16) -> flatbuffers::VOffsetT {
    4 + 2 * slot
}

/// A bounds-checked view of a FlatBuffers buffer.
#[derive(Clone, Copy)]
pub(crate) struct FlatBuffer<'a> {
    buf: &'a [u8],
    /// The structure being read, for error messages ("ztoc", "zinfo").
    what: &'static str,
}

impl<'a> FlatBuffer<'a> {
    /// Wraps `buf`; errors will name `what`.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        FlatBuffer { buf, what }
    }

    /// An [`Error::Corrupt`] for this buffer.
    pub(crate) fn corrupt(&self, offset: usize, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            what: self.what,
            offset,
            detail: detail.into(),
        }
    }

    /// `len` bytes at `at`, or an error naming `field`.
    fn bytes(&self, at: usize, len: usize, field: &str) -> Result<&'a [u8]> {
        at.checked_add(len)
            .and_then(|end| self.buf.get(at..end))
            .ok_or_else(|| {
                self.corrupt(
                    at,
                    format!(
                        "{field}: {len} bytes at offset {at} run past the end of the buffer ({} bytes)",
                        self.buf.len()
                    ),
                )
            })
    }

    fn array<const N: usize>(&self, at: usize, field: &str) -> Result<[u8; N]> {
        let bytes = self.bytes(at, N, field)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.corrupt(at, format!("{field}: short read")))
    }

    fn u16_at(&self, at: usize, field: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(at, field)?))
    }

    fn u32_at(&self, at: usize, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(at, field)?))
    }

    /// Follows the `uoffset` stored at `at` (offsets are relative to where
    /// they are stored).
    fn follow(&self, at: usize, field: &str) -> Result<usize> {
        let relative = self.u32_at(at, field)?;
        usize::try_from(relative)
            .ok()
            .and_then(|relative| at.checked_add(relative))
            .filter(|&target| target < self.buf.len())
            .ok_or_else(|| {
                self.corrupt(
                    at,
                    format!(
                        "{field}: offset {relative} points past the end of the buffer ({} bytes)",
                        self.buf.len()
                    ),
                )
            })
    }

    /// The root table (the buffer has no size prefix and no identifier).
    pub(crate) fn root(&self, name: &'static str) -> Result<Table<'a>> {
        let pos = self.follow(0, "root offset")?;
        self.table_at(pos, name)
    }

    fn table_at(&self, pos: usize, name: &'static str) -> Result<Table<'a>> {
        let soffset = i32::from_le_bytes(self.array(pos, name)?);
        let vtable = i64::try_from(pos)
            .ok()
            .and_then(|pos| pos.checked_sub(i64::from(soffset)))
            .and_then(|vtable| usize::try_from(vtable).ok())
            .ok_or_else(|| {
                self.corrupt(
                    pos,
                    format!("{name}: vtable offset {soffset} is out of range"),
                )
            })?;
        let vtable_len = usize::from(self.u16_at(vtable, name)?);
        let object_len = usize::from(self.u16_at(vtable.saturating_add(2), name)?);
        if vtable_len < 4 || vtable_len % 2 != 0 {
            return Err(self.corrupt(vtable, format!("{name}: bad vtable length {vtable_len}")));
        }
        self.bytes(vtable, vtable_len, name)?;
        if object_len < OFFSET_SIZE {
            return Err(self.corrupt(vtable, format!("{name}: bad table length {object_len}")));
        }
        self.bytes(pos, object_len, name)?;
        Ok(Table {
            fb: *self,
            pos,
            vtable,
            vtable_len,
            object_len,
            name,
        })
    }
}

/// One FlatBuffers table, its vtable already checked to lie in the buffer.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    fb: FlatBuffer<'a>,
    /// Where the table starts (its `soffset` to the vtable).
    pos: usize,
    vtable: usize,
    /// Vtable length in bytes, at least 4 and even.
    vtable_len: usize,
    /// Inline table length in bytes, at least 4.
    object_len: usize,
    name: &'static str,
}

impl<'a> Table<'a> {
    /// Where the table starts in the buffer.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Inline size in bytes, for the decoding budget.
    pub(crate) fn object_len(&self) -> usize {
        self.object_len
    }

    /// An [`Error::Corrupt`] about this table.
    pub(crate) fn corrupt(&self, offset: usize, detail: impl Into<String>) -> Error {
        self.fb.corrupt(offset, detail)
    }

    /// Position of the inline value of field `slot` (`size` bytes), or
    /// `None` when the field is absent (the reader then uses the default).
    pub(crate) fn field(&self, slot: u16, size: usize, field: &str) -> Result<Option<usize>> {
        let entry = 4 + 2 * usize::from(slot);
        if entry + 2 > self.vtable_len {
            return Ok(None);
        }
        let voffset = usize::from(self.fb.u16_at(self.vtable + entry, field)?);
        if voffset == 0 {
            return Ok(None);
        }
        // The value must lie inside the table, after its vtable offset.
        if voffset < OFFSET_SIZE || voffset.saturating_add(size) > self.object_len {
            return Err(self.corrupt(
                self.vtable + entry,
                format!(
                    "{}.{field}: field offset {voffset} is outside the table ({} bytes)",
                    self.name, self.object_len
                ),
            ));
        }
        Ok(Some(self.pos + voffset))
    }

    fn scalar<const N: usize>(&self, slot: u16, field: &str) -> Result<Option<(usize, [u8; N])>> {
        match self.field(slot, N, field)? {
            None => Ok(None),
            Some(at) => Ok(Some((at, self.fb.array(at, field)?))),
        }
    }

    /// An `int64` field and where it is stored (`None` when absent).
    pub(crate) fn i64(&self, slot: u16, field: &str, default: i64) -> Result<(i64, Option<usize>)> {
        Ok(match self.scalar::<8>(slot, field)? {
            Some((at, bytes)) => (i64::from_le_bytes(bytes), Some(at)),
            None => (default, None),
        })
    }

    /// An `int32` field and where it is stored.
    pub(crate) fn i32(&self, slot: u16, field: &str, default: i32) -> Result<(i32, Option<usize>)> {
        Ok(match self.scalar::<4>(slot, field)? {
            Some((at, bytes)) => (i32::from_le_bytes(bytes), Some(at)),
            None => (default, None),
        })
    }

    /// A `uint32` field.
    pub(crate) fn u32(&self, slot: u16, field: &str, default: u32) -> Result<u32> {
        Ok(match self.scalar::<4>(slot, field)? {
            Some((_, bytes)) => u32::from_le_bytes(bytes),
            None => default,
        })
    }

    /// An `int8` (FlatBuffers `byte`) field and where it is stored.
    pub(crate) fn i8(&self, slot: u16, field: &str, default: i8) -> Result<(i8, Option<usize>)> {
        Ok(match self.scalar::<1>(slot, field)? {
            Some((at, bytes)) => (i8::from_le_bytes(bytes), Some(at)),
            None => (default, None),
        })
    }

    /// Where the offset field `slot` points, if present.
    fn target(&self, slot: u16, field: &str) -> Result<Option<usize>> {
        match self.field(slot, OFFSET_SIZE, field)? {
            None => Ok(None),
            Some(at) => self.fb.follow(at, field).map(Some),
        }
    }

    /// A sub-table field.
    pub(crate) fn table(
        &self,
        slot: u16,
        field: &str,
        name: &'static str,
    ) -> Result<Option<Table<'a>>> {
        match self.target(slot, field)? {
            None => Ok(None),
            Some(pos) => self.fb.table_at(pos, name).map(Some),
        }
    }

    /// A vector field of `elem_size`-byte elements.
    pub(crate) fn vector(
        &self,
        slot: u16,
        field: &'static str,
        elem_size: usize,
    ) -> Result<Option<Vector<'a>>> {
        match self.target(slot, field)? {
            None => Ok(None),
            Some(pos) => Vector::at(self.fb, pos, elem_size, field).map(Some),
        }
    }

    /// A string field as raw bytes (FlatBuffers strings are byte vectors;
    /// tar names need not be UTF-8).
    pub(crate) fn string(&self, slot: u16, field: &'static str) -> Result<Option<&'a [u8]>> {
        match self.target(slot, field)? {
            None => Ok(None),
            Some(pos) => string_at(self.fb, pos, field).map(Some),
        }
    }

    /// The error for a required field that is absent.
    pub(crate) fn missing(&self, field: &str) -> Error {
        self.corrupt(
            self.pos,
            format!("{}.{field}: required field is missing", self.name),
        )
    }
}

/// A vector whose elements were checked to lie in the buffer.
#[derive(Clone, Copy)]
pub(crate) struct Vector<'a> {
    fb: FlatBuffer<'a>,
    /// The element bytes (after the length prefix).
    bytes: &'a [u8],
    /// Where the elements start in the buffer.
    start: usize,
    len: usize,
    field: &'static str,
}

impl<'a> Vector<'a> {
    fn at(fb: FlatBuffer<'a>, pos: usize, elem_size: usize, field: &'static str) -> Result<Self> {
        let count = fb.u32_at(pos, field)?;
        let start = pos + OFFSET_SIZE; // cannot overflow: pos + 4 was just read
        let too_long = || {
            fb.corrupt(
                pos,
                format!(
                    "{field}: vector of {count} elements runs past the end of the buffer ({} bytes)",
                    fb.buf.len()
                ),
            )
        };
        let len = usize::try_from(count).map_err(|_| too_long())?;
        let byte_len = len.checked_mul(elem_size).ok_or_else(too_long)?;
        let bytes = fb.bytes(start, byte_len, field).map_err(|_| too_long())?;
        Ok(Vector {
            fb,
            bytes,
            start,
            len,
            field,
        })
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Where the first element is stored.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// The element bytes of a vector of bytes.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Where element `index` of an offset vector points.
    fn target(&self, index: usize) -> Result<usize> {
        let at = index
            .checked_mul(OFFSET_SIZE)
            .and_then(|rel| self.start.checked_add(rel))
            .ok_or_else(|| {
                self.fb
                    .corrupt(self.start, format!("{}[{index}]: out of range", self.field))
            })?;
        self.fb.follow(at, self.field)
    }

    /// Element `index` of a vector of tables.
    pub(crate) fn table(&self, index: usize, name: &'static str) -> Result<Table<'a>> {
        let pos = self.target(index)?;
        self.fb.table_at(pos, name)
    }

    /// Element `index` of a vector of strings, as raw bytes.
    pub(crate) fn string(&self, index: usize) -> Result<&'a [u8]> {
        let pos = self.target(index)?;
        string_at(self.fb, pos, self.field)
    }
}

/// The string at `pos`: a byte vector followed by a NUL, which every
/// FlatBuffers writer emits and the official verifier requires. Requiring it
/// also means a zTOC cut short by even one byte is refused.
fn string_at<'a>(fb: FlatBuffer<'a>, pos: usize, field: &'static str) -> Result<&'a [u8]> {
    let vector = Vector::at(fb, pos, 1, field)?;
    let end = vector.start.saturating_add(vector.len);
    if fb.buf.get(end) != Some(&0) {
        return Err(fb.corrupt(end, format!("{field}: string is not NUL-terminated")));
    }
    Ok(vector.bytes)
}
