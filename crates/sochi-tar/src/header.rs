//! One 512-byte tar header block, parsed the way Go's `archive/tar`
//! `Reader.readHeader` does (docs/format.md §3.5).
//!
//! Go first checks the checksum, then guesses the format from the magic
//! bytes, and the format decides which fields exist:
//!
//! | magic (257..263) | version / trailer | format | prefix joined to name |
//! |---|---|---|---|
//! | `ustar\0` | trailer `tar\0` at 508 | STAR | 131-byte STAR prefix |
//! | `ustar\0` | any | USTAR or PAX | 155-byte USTAR prefix |
//! | `ustar ` | version ` \0` | GNU | none (see [`gnu_prefix_fallback`]) |
//! | anything else | | V7 | none; no uname/gname/devices |

use super::error::TarError;

/// Size of a tar block; headers and data are aligned to it.
pub(crate) const BLOCK_SIZE: usize = 512;

/// A raw header block.
pub(crate) type Block = [u8; BLOCK_SIZE];

// Field positions, from Go's archive/tar format.go.
const NAME: (usize, usize) = (0, 100);
const MODE: (usize, usize) = (100, 108);
const UID: (usize, usize) = (108, 116);
const GID: (usize, usize) = (116, 124);
const SIZE: (usize, usize) = (124, 136);
const MTIME: (usize, usize) = (136, 148);
const CHECKSUM: (usize, usize) = (148, 156);
const TYPEFLAG: usize = 156;
const LINKNAME: (usize, usize) = (157, 257);
const MAGIC: (usize, usize) = (257, 263);
const VERSION: (usize, usize) = (263, 265);
const UNAME: (usize, usize) = (265, 297);
const GNAME: (usize, usize) = (297, 329);
const DEVMAJOR: (usize, usize) = (329, 337);
const DEVMINOR: (usize, usize) = (337, 345);
const USTAR_PREFIX: (usize, usize) = (345, 500);
const STAR_PREFIX: (usize, usize) = (345, 476);
const STAR_ATIME: (usize, usize) = (476, 488);
const STAR_CTIME: (usize, usize) = (488, 500);
const STAR_TRAILER: (usize, usize) = (508, 512);
const GNU_ATIME: (usize, usize) = (345, 357);
const GNU_CTIME: (usize, usize) = (357, 369);

const MAGIC_USTAR: &[u8] = b"ustar\0";
const MAGIC_GNU: &[u8] = b"ustar ";
const VERSION_GNU: &[u8] = b" \0";
const TRAILER_STAR: &[u8] = b"tar\0";

/// The formats Go tells apart by magic (its `Format` guess in `getFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    V7,
    /// USTAR or PAX: they share the magic.
    Ustar,
    Star,
    Gnu,
}

/// The fields of one header block, before PAX records or GNU long names
/// are applied. Numbers are Go's `int64` values.
#[derive(Clone, Debug)]
pub(crate) struct RawHeader {
    pub(crate) typeflag: u8,
    /// `prefix + "/" + name` where the format has a prefix.
    pub(crate) name: Vec<u8>,
    pub(crate) linkname: Vec<u8>,
    pub(crate) size: i64,
    pub(crate) mode: i64,
    pub(crate) uid: i64,
    pub(crate) gid: i64,
    pub(crate) mtime: i64,
    pub(crate) uname: Vec<u8>,
    pub(crate) gname: Vec<u8>,
    pub(crate) devmajor: i64,
    pub(crate) devminor: i64,
}

fn field(block: &Block, (start, end): (usize, usize)) -> &[u8] {
    &block[start..end]
}

/// Whether the block is all zeros (an end-of-archive marker).
pub(crate) fn is_zero_block(block: &Block) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Go's `parseString`: the bytes up to the first NUL, or all of them.
pub(crate) fn parse_string(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(end) => &bytes[..end],
        None => bytes,
    }
}

/// Go's `parseOctal`: trim spaces and NULs on both sides, cut at a NUL,
/// then an unsigned octal number (no sign, no prefix). Empty means 0.
pub(crate) fn parse_octal(bytes: &[u8]) -> Option<i64> {
    let is_pad = |b: &u8| *b == b' ' || *b == 0;
    let start = bytes.iter().position(|b| !is_pad(b));
    let Some(start) = start else {
        return Some(0);
    };
    let end = bytes
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |e| e + 1);
    let digits = parse_string(&bytes[start..end]);
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &c in digits {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
    }
    // Go returns int64(x): a wrap, though no tar field is wide enough.
    Some(value as i64)
}

/// Go's `parseNumeric`: base-256 (GNU, two's complement, big-endian) when
/// the first byte has its top bit set, else [`parse_octal`].
pub(crate) fn parse_numeric(bytes: &[u8]) -> Option<i64> {
    match bytes.first() {
        Some(&first) if first & 0x80 != 0 => {
            // -a-1 == ^a: invert a negative number's bytes and read it as
            // unsigned (Go's identity), ignoring the marker bit.
            let invert: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
            let mut value: u64 = 0;
            for (i, &b) in bytes.iter().enumerate() {
                let mut c = b ^ invert;
                if i == 0 {
                    c &= 0x7f;
                }
                if value >> 56 > 0 {
                    return None;
                }
                value = (value << 8) | u64::from(c);
            }
            if value >> 63 > 0 {
                return None;
            }
            let value = value as i64; // < 2^63, checked above
            Some(if invert == 0xff { !value } else { value })
        }
        _ => parse_octal(bytes),
    }
}

/// Go's `getFormat`: checksum first (unsigned or signed byte sum with the
/// checksum field counted as spaces), then the magic.
fn format_of(block: &Block, offset: u64) -> Result<Format, TarError> {
    let stored = parse_octal(field(block, CHECKSUM))
        .ok_or_else(|| TarError::corrupt(offset, "header checksum field is not an octal number"))?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (CHECKSUM.0..CHECKSUM.1).contains(&i) {
            b' '
        } else {
            b
        };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && stored != signed {
        return Err(TarError::corrupt(
            offset,
            format!(
                "header checksum mismatch: stored {stored}, computed {unsigned} (unsigned) \
                 or {signed} (signed)"
            ),
        ));
    }
    let magic = field(block, MAGIC);
    Ok(
        if magic == MAGIC_USTAR && field(block, STAR_TRAILER) == TRAILER_STAR {
            Format::Star
        } else if magic == MAGIC_USTAR {
            Format::Ustar
        } else if magic == MAGIC_GNU && field(block, VERSION) == VERSION_GNU {
            Format::Gnu
        } else {
            Format::V7
        },
    )
}

/// Parses one non-zero header block at `offset` (used in messages).
pub(crate) fn parse_block(block: &Block, offset: u64) -> Result<RawHeader, TarError> {
    let format = format_of(block, offset)?;
    let numeric = |name: &str, range: (usize, usize)| {
        parse_numeric(field(block, range)).ok_or_else(|| {
            TarError::corrupt(
                offset,
                format!("header field `{name}` is not a valid number"),
            )
        })
    };

    let mut header = RawHeader {
        typeflag: block[TYPEFLAG],
        name: parse_string(field(block, NAME)).to_vec(),
        linkname: parse_string(field(block, LINKNAME)).to_vec(),
        size: numeric("size", SIZE)?,
        mode: numeric("mode", MODE)?,
        uid: numeric("uid", UID)?,
        gid: numeric("gid", GID)?,
        mtime: numeric("mtime", MTIME)?,
        uname: Vec::new(),
        gname: Vec::new(),
        devmajor: 0,
        devminor: 0,
    };
    if format == Format::V7 {
        return Ok(header);
    }

    // Every format but V7 has the USTAR owner names and device numbers, and
    // Go parses the device numbers whatever the typeflag.
    header.uname = parse_string(field(block, UNAME)).to_vec();
    header.gname = parse_string(field(block, GNAME)).to_vec();
    header.devmajor = numeric("devmajor", DEVMAJOR)?;
    header.devminor = numeric("devminor", DEVMINOR)?;

    let prefix: &[u8] = match format {
        Format::Ustar => parse_string(field(block, USTAR_PREFIX)),
        Format::Star => {
            // Go parses STAR atime/ctime with the header's own parser, so a
            // bad value there fails the header.
            numeric("atime", STAR_ATIME)?;
            numeric("ctime", STAR_CTIME)?;
            parse_string(field(block, STAR_PREFIX))
        }
        Format::Gnu => gnu_prefix_fallback(block),
        Format::V7 => &[],
    };
    if !prefix.is_empty() {
        let mut name = Vec::with_capacity(prefix.len() + 1 + header.name.len());
        name.extend_from_slice(prefix);
        name.push(b'/');
        name.extend_from_slice(&header.name);
        header.name = name;
    }
    Ok(header)
}

/// The prefix Go joins to a GNU-format name: none, unless the GNU atime or
/// ctime field (where USTAR has its prefix) does not parse as a number.
/// Then Go assumes a pre-Go-1.8 writer that put a USTAR prefix there, and
/// uses it if it is ASCII (golang.org/issues/12594, 21005). A field whose
/// first byte is NUL is not parsed at all.
fn gnu_prefix_fallback(block: &Block) -> &[u8] {
    let unparsable = |range| {
        let bytes = field(block, range);
        bytes[0] != 0 && parse_numeric(bytes).is_none()
    };
    if unparsable(GNU_ATIME) || unparsable(GNU_CTIME) {
        let prefix = parse_string(field(block, USTAR_PREFIX));
        if prefix.is_ascii() {
            return prefix;
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields_are_trimmed_like_go() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"  644 \0"), Some(0o644));
        assert_eq!(parse_octal(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"        "), Some(0));
        assert_eq!(parse_octal(b"12\0 34"), Some(0o12));
        assert_eq!(parse_octal(b"1 2"), None);
        assert_eq!(parse_octal(b"89"), None);
        assert_eq!(parse_octal(b"+12"), None);
        assert_eq!(parse_octal(b"-12"), None);
        // Go reads 64-bit octal and then wraps to int64.
        assert_eq!(parse_octal(b"1777777777777777777777"), Some(-1));
        assert_eq!(parse_octal(b"2000000000000000000000"), None);
    }

    #[test]
    fn base256_numbers_are_twos_complement() {
        assert_eq!(
            parse_numeric(&[0x80, 0, 0, 0, 0, 0x2d, 0xc6, 0xc0]),
            Some(3_000_000)
        );
        assert_eq!(parse_numeric(&[0xff; 8]), Some(-1));
        assert_eq!(
            parse_numeric(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
            Some(-2)
        );
        // Nine significant bytes overflow an int64.
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[3] = 1;
        assert_eq!(parse_numeric(&big), None);
        // 2^63 does not fit either.
        let mut edge = [0u8; 12];
        edge[0] = 0x80;
        edge[4] = 0x80;
        assert_eq!(parse_numeric(&edge), None);
        edge[4] = 0x7f;
        assert_eq!(parse_numeric(&edge), Some(0x7f00_0000_0000_0000));
    }
}
