//! The streaming tar reader: Go `archive/tar` `Reader.Next` over a
//! [`BufRead`], counting every byte it consumes (docs/format.md §3.5).
//!
//! Invariants, between calls:
//! - `position` is the number of bytes consumed from `inner` since `new`;
//!   nothing is read ahead of it (skips go through `fill_buf`/`consume`).
//! - While an entry is current, `data_remaining` of its data bytes and then
//!   `padding` bytes (to the next 512-byte boundary) follow `position`.
//!   `data_remaining + padding` is what the next [`TarReader::next_entry`]
//!   discards before it reads a header, as Go does.

use std::io::{self, BufRead};

use sochi_format::{format_mod_time, EntryType, FileMetadata};

use super::error::TarError;
use super::header::{self, Block, RawHeader, BLOCK_SIZE};
use super::pax::{self, PaxRecords};

/// Largest PAX `x` header data or GNU `L`/`K` long name accepted: Go's
/// `maxSpecialFileSize` (1 MiB). Bigger ones fail in Go too.
pub(crate) const MAX_SPECIAL_FILE_SIZE: u64 = 1 << 20;

/// The longest entry name quoted in an error message.
const MAX_NAME_IN_MESSAGE: usize = 256;

/// One entry as Go's tar reader returns it, placed in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// Offset of the entry's first header block, counting any PAX `x` or
    /// GNU `L`/`K` entries that precede its own header.
    ///
    /// This is where the previous entry's data and padding really ended.
    /// The reference does not store it but derives it from the previous
    /// zTOC entry (docs/format.md §1.2 step 4); the two agree unless the previous
    /// entry was a link, directory, device or fifo whose header claimed a
    /// non-zero size (Go reads no data for those, docs/format.md §3.5).
    pub header_offset: u64,
    /// The zTOC record for the entry. `uncompressed_offset` is the offset
    /// of its first data byte: the position right after its header blocks.
    pub metadata: FileMetadata,
}

/// What the meta entries (`x`, `L`, `K`) before an entry's own header
/// contributed to it.
#[derive(Debug, Default)]
struct MetaEntries {
    /// The records of the last `x` header: a later one replaces an earlier
    /// one whole, as in Go.
    pax_records: PaxRecords,
    /// Where that `x` header is, for errors about its records.
    pax_offset: u64,
    /// The last `L` long name, cut at its first NUL; empty if none.
    long_name: Vec<u8>,
    /// The last `K` long link name, cut at its first NUL; empty if none.
    long_link: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Entries may follow.
    Reading,
    /// `next_entry` returned `Ok(None)`; `position` is the end of archive.
    Done,
    /// An error was returned; like Go's sticky error, nothing more is read.
    Failed { offset: u64 },
}

/// A streaming reader of a tar archive with Go `archive/tar` semantics.
///
/// It reads the uncompressed layer stream once, front to back, never seeks
/// and never copies skipped data; memory is bounded by the 1 MiB limit on
/// PAX headers and GNU long names.
///
/// Call [`next_entry`](Self::next_entry) until it returns `Ok(None)`, then
/// [`position`](Self::position) is the zTOC's `uncompressed_archive_size`.
/// Between calls, [`read_data`](Self::read_data) reads the current entry's
/// data; whatever is left unread is skipped by the next call.
#[derive(Debug)]
pub struct TarReader<R: BufRead> {
    inner: R,
    position: u64,
    data_remaining: u64,
    padding: u64,
    state: State,
}

impl<R: BufRead> TarReader<R> {
    /// A reader over `inner`, which is positioned at the start of the
    /// archive (offset 0).
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            position: 0,
            data_remaining: 0,
            padding: 0,
            state: State::Reading,
        }
    }

    /// Bytes consumed from the stream so far.
    ///
    /// After [`next_entry`](Self::next_entry) returns `Ok(None)` this is the
    /// zTOC's `uncompressed_archive_size` (docs/format.md §0, hazard 6, §3.5): the end of
    /// the second zero block, or the end of the stream if it ended cleanly
    /// after an entry's data (or inside its padding) or after one zero
    /// block. Padding after the two zero blocks is not consumed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying stream, mutably. Reading from it moves the stream
    /// without the tar reader knowing, so its offsets are then off.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the underlying stream, positioned at [`position`](Self::position).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Advances to the next entry, first discarding what is left of the
    /// current entry's data and padding, as Go's `Reader.Next` does.
    ///
    /// Returns `Ok(None)` at the end of the archive, and again on every
    /// later call. PAX `x` headers and GNU `L`/`K` long names are applied to
    /// the entry that follows them and are not returned themselves.
    ///
    /// # Errors
    ///
    /// Whatever would make Go's `Next` fail (bad checksum, unparsable
    /// number, malformed PAX record, negative size, truncation) is
    /// [`TarError::Corrupt`]; an entry type the zTOC cannot hold (docs/format.md §3.5)
    /// is [`TarError::Unsupported`]; an oversized PAX header or long name is
    /// [`TarError::TooLarge`]. After an error every call fails.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        match self.state {
            State::Reading => {}
            State::Done => return Ok(None),
            State::Failed { offset } => return Err(stopped(offset)),
        }
        let result = self.read_next_entry();
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => self.state = State::Done,
            Err(_) => self.fail(),
        }
        result
    }

    /// Reads the current entry's data into `buf`; `Ok(0)` once it is all
    /// read (or `buf` is empty).
    ///
    /// Like Go, links, directories, devices and fifos have no data even if
    /// their header gives a size.
    ///
    /// # Errors
    ///
    /// [`TarError::Corrupt`] if the stream ends inside the data,
    /// [`TarError::Io`] if reading fails; either stops the reader.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        match self.state {
            State::Reading => {}
            State::Done => return Ok(0),
            State::Failed { offset } => return Err(stopped(offset)),
        }
        if self.data_remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.data_remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let read = self.read_some(&mut buf[..want]);
        let read = match read {
            Ok(0) => Err(self.truncated_data()),
            other => other,
        };
        match read {
            Ok(n) => {
                self.data_remaining -= n as u64;
                Ok(n)
            }
            Err(error) => {
                self.fail();
                Err(error)
            }
        }
    }

    fn fail(&mut self) {
        self.state = State::Failed {
            offset: self.position,
        };
    }

    /// Go's `Reader.next`: loop over meta entries (`x`, `L`, `K`) until a
    /// real entry, which gets their records and names.
    fn read_next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        let mut meta = MetaEntries::default();
        let mut header_offset: Option<u64> = None;
        loop {
            // Go discards the rest of the previous data (EOF there is an
            // error), then its padding, where EOF ends the archive cleanly
            // (`tryReadFull`; docs/format.md §3.5).
            self.skip_data()?;
            if !self.skip_padding()? {
                return Ok(None);
            }

            let block_offset = self.position;
            let entry_start = *header_offset.get_or_insert(block_offset);
            let Some(block) = self.read_block()? else {
                return Ok(None);
            };
            if header::is_zero_block(&block) {
                // One zero block, then a second one or a clean EOF, ends
                // the archive; anything else after it is an error.
                return match self.read_block()? {
                    None => Ok(None),
                    Some(next) if header::is_zero_block(&next) => Ok(None),
                    Some(_) => Err(TarError::corrupt(
                        block_offset + BLOCK_SIZE as u64,
                        "a zero block is followed by a non-zero block",
                    )),
                };
            }

            let raw = header::parse_block(&block, block_offset)?;
            // Go sets up the data section from the raw header before it
            // looks at the typeflag, so a negative size fails here already.
            self.start_data(raw.typeflag, raw.size, block_offset)?;
            match raw.typeflag {
                b'x' => {
                    let data = self.read_special(block_offset, "pax extended header")?;
                    // A second `x` header replaces the first one's records.
                    let records = pax::parse_pax(&data)
                        .map_err(|detail| TarError::corrupt(block_offset, detail))?;
                    meta.pax_records = records;
                    meta.pax_offset = block_offset;
                }
                b'L' => {
                    let data = self.read_special(block_offset, "gnu long name")?;
                    meta.long_name = header::parse_string(&data).to_vec();
                }
                b'K' => {
                    let data = self.read_special(block_offset, "gnu long link name")?;
                    meta.long_link = header::parse_string(&data).to_vec();
                }
                b'g' => {
                    // Go returns a global header as an entry of its own,
                    // with the records of any `x` header before it; the
                    // reference's zTOC builder then refuses the layer
                    // (docs/format.md §3.5), while containerd (and GNU tar) skip the
                    // entry and apply nothing of it. We skip it as
                    // containerd does: its records must parse (Go fails
                    // the layer otherwise), and what came before it is
                    // dropped with it. `git archive` writes one first.
                    let data = self.read_special(block_offset, "pax global header")?;
                    pax::parse_pax(&data)
                        .map_err(|detail| TarError::corrupt(block_offset, detail))?;
                    meta = MetaEntries::default();
                    header_offset = None;
                    continue;
                }
                _ => {
                    let metadata = self.finish_entry(raw, meta, block_offset)?;
                    return Ok(Some(TarEntry {
                        header_offset: entry_start,
                        metadata,
                    }));
                }
            }
        }
    }

    /// Applies PAX records, then GNU long names, to the entry's own header,
    /// in Go's order (`mergePAX`, then the long names win; docs/format.md §3.5).
    fn finish_entry(
        &mut self,
        raw: RawHeader,
        meta: MetaEntries,
        block_offset: u64,
    ) -> Result<FileMetadata, TarError> {
        let MetaEntries {
            pax_records: records,
            pax_offset,
            long_name,
            long_link,
        } = meta;
        let RawHeader {
            typeflag,
            mut name,
            mut linkname,
            mut size,
            mode,
            mut uid,
            mut gid,
            mtime,
            mut uname,
            mut gname,
            devmajor,
            devminor,
        } = raw;
        let mut mod_time = (mtime, 0u32);

        let bad_record = |key: &[u8], value: &[u8]| {
            TarError::corrupt(
                pax_offset,
                format!(
                    "pax record {} has an invalid value {}",
                    quote(key),
                    quote(value)
                ),
            )
        };
        for (key, value) in &records {
            // Go's mergePAX: an empty value keeps the header's own value.
            if value.is_empty() {
                continue;
            }
            match key.as_slice() {
                pax::PATH => name.clone_from(value),
                pax::LINKPATH => linkname.clone_from(value),
                pax::UNAME => uname.clone_from(value),
                pax::GNAME => gname.clone_from(value),
                pax::UID => uid = pax::parse_go_int(value).ok_or_else(|| bad_record(key, value))?,
                pax::GID => gid = pax::parse_go_int(value).ok_or_else(|| bad_record(key, value))?,
                pax::SIZE => {
                    size = pax::parse_go_int(value).ok_or_else(|| bad_record(key, value))?;
                }
                pax::MTIME => {
                    mod_time = pax::parse_pax_time(value).ok_or_else(|| bad_record(key, value))?;
                }
                // Not in the zTOC, but Go fails the entry if they do not parse.
                pax::ATIME | pax::CTIME => {
                    pax::parse_pax_time(value).ok_or_else(|| bad_record(key, value))?;
                }
                _ => {}
            }
        }
        if !long_name.is_empty() {
            name = long_name;
        }
        if !long_link.is_empty() {
            linkname = long_link;
        }
        // Legacy NUL typeflag: a directory if the name ends in '/', else a
        // regular file, judged on the final name (Go `TypeRegA`).
        let typeflag = match typeflag {
            0 if name.ends_with(b"/") => b'5',
            0 => b'0',
            other => other,
        };
        // The PAX size may differ from the header's: set the data up again.
        self.start_data(typeflag, size, block_offset)?;

        if pax::is_gnu_sparse(&records) {
            // Go would present the logical (expanded) size, which does not
            // match the bytes in the archive (docs/format.md §3.5).
            return Err(TarError::Unsupported {
                offset: block_offset,
                what: format!("gnu sparse file in pax format in entry {}", quote(&name)),
            });
        }
        let entry_type = match typeflag {
            b'0' => EntryType::Regular,
            b'1' => EntryType::Hardlink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::CharDevice,
            b'4' => EntryType::BlockDevice,
            b'5' => EntryType::Directory,
            b'6' => EntryType::Fifo,
            other => return Err(unsupported(block_offset, &name, other)),
        };

        let uncompressed_offset = i64::try_from(self.position)
            .map_err(|_| TarError::corrupt(self.position, "offset does not fit in an int64"))?;
        Ok(FileMetadata {
            name,
            entry_type,
            uncompressed_offset,
            uncompressed_size: size,
            linkname,
            mode,
            // The reference converts Go's int uid/gid with uint32(): wrap.
            uid: uid as u32,
            gid: gid as u32,
            uname,
            gname,
            mod_time: format_mod_time(mod_time.0, mod_time.1),
            devmajor,
            devminor,
            pax_records: records.into_iter().collect(),
        })
    }

    /// Go's `handleRegularFile`: how many data bytes follow the header.
    fn start_data(&mut self, typeflag: u8, size: i64, block_offset: u64) -> Result<(), TarError> {
        // Go's isHeaderOnlyType: these have no data whatever the size says.
        let header_only = matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
        let data = if header_only { 0 } else { size };
        let data = u64::try_from(data).map_err(|_| {
            TarError::corrupt(block_offset, format!("entry size {size} is negative"))
        })?;
        self.data_remaining = data;
        self.padding = data.wrapping_neg() % BLOCK_SIZE as u64;
        Ok(())
    }

    /// Reads the whole data of a PAX header or GNU long name (Go's
    /// `readSpecialFile`), refusing more than [`MAX_SPECIAL_FILE_SIZE`].
    fn read_special(&mut self, block_offset: u64, what: &str) -> Result<Vec<u8>, TarError> {
        let size = self.data_remaining;
        if size > MAX_SPECIAL_FILE_SIZE {
            return Err(TarError::TooLarge {
                offset: block_offset,
                what: format!("{what} of {size} bytes (limit {MAX_SPECIAL_FILE_SIZE})"),
            });
        }
        // At most 1 MiB, checked above.
        let mut data = vec![0u8; size as usize];
        let read = self.read_full(&mut data)?;
        self.data_remaining -= read as u64;
        if read < data.len() {
            return Err(self.truncated_data());
        }
        Ok(data)
    }

    fn skip_data(&mut self) -> Result<(), TarError> {
        let skipped = self.skip(self.data_remaining)?;
        self.data_remaining -= skipped;
        if self.data_remaining > 0 {
            return Err(self.truncated_data());
        }
        Ok(())
    }

    /// Skips the current padding; `false` if the stream ended inside it.
    fn skip_padding(&mut self) -> Result<bool, TarError> {
        let padding = std::mem::take(&mut self.padding);
        Ok(self.skip(padding)? == padding)
    }

    fn truncated_data(&self) -> TarError {
        TarError::corrupt(
            self.position,
            format!(
                "archive ends inside entry data, {} bytes short",
                self.data_remaining
            ),
        )
    }

    /// One header block; `None` on a clean EOF before its first byte.
    fn read_block(&mut self) -> Result<Option<Block>, TarError> {
        let mut block = [0u8; BLOCK_SIZE];
        match self.read_full(&mut block)? {
            0 => Ok(None),
            BLOCK_SIZE => Ok(Some(block)),
            read => Err(TarError::corrupt(
                self.position,
                format!("archive ends inside a header block, after {read} of its 512 bytes"),
            )),
        }
    }

    /// Skips up to `count` bytes; fewer only at EOF.
    fn skip(&mut self, count: u64) -> Result<u64, TarError> {
        let mut skipped = 0;
        while skipped < count {
            let available = buffered_len(&mut self.inner)?;
            if available == 0 {
                break;
            }
            let step = usize::try_from(count - skipped).map_or(available, |r| r.min(available));
            self.inner.consume(step);
            self.position += step as u64;
            skipped += step as u64;
        }
        Ok(skipped)
    }

    /// Fills `buf`; fewer bytes only at EOF.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            let read = self.read_some(&mut buf[filled..])?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        Ok(filled)
    }

    /// Copies what the stream has buffered (filling it if empty) into `buf`.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if buffered_len(&mut self.inner)? == 0 {
            return Ok(0);
        }
        // The buffer is filled now, so this returns it without reading.
        let available = self.inner.fill_buf()?;
        let read = available.len().min(buf.len());
        buf[..read].copy_from_slice(&available[..read]);
        self.inner.consume(read);
        self.position += read as u64;
        Ok(read)
    }
}

/// How many bytes `reader` has buffered, filling its buffer if it is
/// empty; 0 means EOF. Retries when interrupted, like `Read::read_exact`.
fn buffered_len<R: BufRead>(reader: &mut R) -> io::Result<usize> {
    loop {
        match reader.fill_buf() {
            Ok(buf) => return Ok(buf.len()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
}

fn stopped(offset: u64) -> TarError {
    TarError::corrupt(offset, "the tar reader stopped at an earlier error")
}

fn unsupported(offset: u64, name: &[u8], typeflag: u8) -> TarError {
    let kind = match typeflag {
        b'g' => "pax global header",
        b'S' => "gnu sparse file",
        b'7' => "contiguous file",
        b'V' => "gnu volume header",
        b'M' => "gnu multi-volume continuation",
        b'D' => "gnu dump directory",
        b'N' => "gnu long name list",
        _ => "entry type",
    };
    let flag = if typeflag.is_ascii_graphic() {
        format!("'{}'", char::from(typeflag))
    } else {
        format!("0x{typeflag:02x}")
    };
    TarError::Unsupported {
        offset,
        what: format!("{kind} (typeflag {flag}) in entry {}", quote(name)),
    }
}

/// Bytes from the archive for a message: lossy UTF-8, quoted, cut if long.
fn quote(name: &[u8]) -> String {
    let shown = &name[..name.len().min(MAX_NAME_IN_MESSAGE)];
    let ellipsis = if shown.len() < name.len() { "..." } else { "" };
    format!("{:?}{ellipsis}", String::from_utf8_lossy(shown))
}
