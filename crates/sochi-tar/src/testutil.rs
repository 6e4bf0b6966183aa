//! A tiny tar writer for tests: just enough to build headers of every
//! format byte by byte, including broken ones.

use super::header::BLOCK_SIZE;

pub(crate) const NAME: usize = 0;
pub(crate) const MODE: (usize, usize) = (100, 108);
pub(crate) const UID: (usize, usize) = (108, 116);
pub(crate) const GID: (usize, usize) = (116, 124);
pub(crate) const SIZE: (usize, usize) = (124, 136);
pub(crate) const MTIME: (usize, usize) = (136, 148);
pub(crate) const CHECKSUM: usize = 148;
pub(crate) const TYPEFLAG: usize = 156;
pub(crate) const LINKNAME: usize = 157;
pub(crate) const MAGIC: usize = 257;
pub(crate) const UNAME: usize = 265;
pub(crate) const GNAME: usize = 297;
pub(crate) const DEVMAJOR: (usize, usize) = (329, 337);
pub(crate) const DEVMINOR: (usize, usize) = (337, 345);
pub(crate) const PREFIX: usize = 345;
pub(crate) const GNU_ATIME: usize = 345;
pub(crate) const STAR_TRAILER: usize = 508;

/// The mtime every built header gets unless set: 2023-11-14T22:13:20Z.
pub(crate) const MTIME_DEFAULT: u64 = 1_700_000_000;

/// One header block under construction.
#[derive(Clone)]
pub(crate) struct Header {
    block: [u8; BLOCK_SIZE],
}

impl Header {
    fn base(name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut header = Header {
            block: [0; BLOCK_SIZE],
        };
        header
            .bytes(NAME, name)
            .octal(MODE, 0o644)
            .octal(UID, 0)
            .octal(GID, 0)
            .octal(SIZE, size)
            .octal(MTIME, MTIME_DEFAULT)
            .typeflag(typeflag);
        header
    }

    /// A USTAR/PAX header (`ustar\0` `00`) owned by root.
    pub(crate) fn ustar(name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut header = Self::base(name, typeflag, size);
        header
            .bytes(MAGIC, b"ustar\x0000")
            .bytes(UNAME, b"root")
            .bytes(GNAME, b"root")
            .octal(DEVMAJOR, 0)
            .octal(DEVMINOR, 0);
        header
    }

    /// A GNU header (`ustar ` ` \0`) owned by root.
    pub(crate) fn gnu(name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut header = Self::base(name, typeflag, size);
        header
            .bytes(MAGIC, b"ustar  \x00")
            .bytes(UNAME, b"root")
            .bytes(GNAME, b"root");
        header
    }

    /// A V7 header (no magic).
    pub(crate) fn v7(name: &[u8], typeflag: u8, size: u64) -> Self {
        Self::base(name, typeflag, size)
    }

    /// Writes `value` at `offset`.
    pub(crate) fn bytes(&mut self, offset: usize, value: &[u8]) -> &mut Self {
        self.block[offset..offset + value.len()].copy_from_slice(value);
        self
    }

    /// Writes a zero-padded octal number ending in NUL, as GNU tar does.
    pub(crate) fn octal(&mut self, (start, end): (usize, usize), value: u64) -> &mut Self {
        let width = end - start - 1;
        let text = format!("{value:0width$o}");
        assert_eq!(
            text.len(),
            width,
            "{value} does not fit in {width} octal digits"
        );
        self.block[start..end - 1].copy_from_slice(text.as_bytes());
        self.block[end - 1] = 0;
        self
    }

    /// Writes a GNU base-256 number (two's complement, top bit set).
    pub(crate) fn base256(&mut self, (start, end): (usize, usize), value: i64) -> &mut Self {
        let width = end - start;
        let fill = if value < 0 { 0xff } else { 0 };
        self.block[start..end].fill(fill);
        let bytes = value.to_be_bytes();
        self.block[end - 8..end].copy_from_slice(&bytes);
        self.block[start] |= 0x80;
        assert!(width >= 8);
        self
    }

    pub(crate) fn typeflag(&mut self, typeflag: u8) -> &mut Self {
        self.block[TYPEFLAG] = typeflag;
        self
    }

    pub(crate) fn linkname(&mut self, linkname: &[u8]) -> &mut Self {
        self.bytes(LINKNAME, linkname)
    }

    /// The block with a correct (unsigned) checksum.
    pub(crate) fn build(&self) -> [u8; BLOCK_SIZE] {
        let mut block = self.block;
        block[CHECKSUM..CHECKSUM + 8].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        block[CHECKSUM..CHECKSUM + 8].copy_from_slice(text.as_bytes());
        block
    }
}

/// Zeros to the next block boundary after `len` bytes.
pub(crate) fn padding(len: usize) -> Vec<u8> {
    vec![0; (BLOCK_SIZE - len % BLOCK_SIZE) % BLOCK_SIZE]
}

/// A header followed by its data and padding.
pub(crate) fn entry(header: &Header, data: &[u8]) -> Vec<u8> {
    let mut out = header.build().to_vec();
    out.extend_from_slice(data);
    out.extend(padding(data.len()));
    out
}

/// One PAX record, `"%d %s=%s\n"` with the length counting itself.
pub(crate) fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut length = body + 1;
    while format!("{length}").len() + body != length {
        length += 1;
    }
    let mut out = format!("{length} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// A PAX `x` entry holding `records`.
pub(crate) fn pax_entry(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let data: Vec<u8> = records
        .iter()
        .flat_map(|(key, value)| pax_record(key, value))
        .collect();
    entry(
        &Header::ustar(b"PaxHeaders/x", b'x', data.len() as u64),
        &data,
    )
}

/// A GNU long name (`L`) or long link (`K`) entry; GNU tar NUL-terminates.
pub(crate) fn gnu_long(typeflag: u8, name: &[u8]) -> Vec<u8> {
    let mut data = name.to_vec();
    data.push(0);
    entry(
        &Header::gnu(b"././@LongLink", typeflag, data.len() as u64),
        &data,
    )
}

/// The end-of-archive marker: two zero blocks.
pub(crate) fn end_of_archive() -> Vec<u8> {
    vec![0; 2 * BLOCK_SIZE]
}

/// Concatenates parts of an archive.
pub(crate) fn archive(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}
