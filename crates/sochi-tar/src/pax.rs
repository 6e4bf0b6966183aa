//! PAX extended header records (`x` entries), parsed and applied the way
//! Go's `archive/tar` does (`parsePAX`, `parsePAXRecord`, `mergePAX`,
//! `parsePAXTime`; docs/format.md §3.5).

use std::collections::BTreeMap;

/// The records of one `x` header, keyed and sorted bytewise. A later record
/// with the same key replaces an earlier one, as in Go's map. Records with
/// empty values are kept (Go keeps them in `PAXRecords`) but override
/// nothing.
pub(crate) type PaxRecords = BTreeMap<Vec<u8>, Vec<u8>>;

pub(crate) const PATH: &[u8] = b"path";
pub(crate) const LINKPATH: &[u8] = b"linkpath";
pub(crate) const UNAME: &[u8] = b"uname";
pub(crate) const GNAME: &[u8] = b"gname";
pub(crate) const UID: &[u8] = b"uid";
pub(crate) const GID: &[u8] = b"gid";
pub(crate) const SIZE: &[u8] = b"size";
pub(crate) const MTIME: &[u8] = b"mtime";
pub(crate) const ATIME: &[u8] = b"atime";
pub(crate) const CTIME: &[u8] = b"ctime";

const GNU_SPARSE_OFFSET: &[u8] = b"GNU.sparse.offset";
const GNU_SPARSE_NUMBYTES: &[u8] = b"GNU.sparse.numbytes";
const GNU_SPARSE_MAP: &[u8] = b"GNU.sparse.map";
const GNU_SPARSE_MAJOR: &[u8] = b"GNU.sparse.major";
const GNU_SPARSE_MINOR: &[u8] = b"GNU.sparse.minor";

/// Go's `strconv.ParseInt(s, 10, 64)`: an optional `+` or `-`, then one or
/// more ASCII digits, in range of an `i64`.
pub(crate) fn parse_go_int(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut magnitude: i128 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude * 10 + i128::from(c - b'0');
        if magnitude > 1 << 63 {
            return None;
        }
    }
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// Go's `parsePAXTime`: `seconds[.fraction]`, as Unix seconds and
/// nanoseconds normalized like `time.Unix` (nanos in `0..1e9`).
///
/// The fraction keeps its first nine digits (longer ones are truncated, not
/// rounded). A negative time subtracts the fraction: `-1.5` is 1.5 seconds
/// before the epoch, `(-2, 500_000_000)`. A time Go would wrap around is
/// returned as `i64::MIN` seconds, which formats as no time at all, as the
/// wrapped Go value does.
pub(crate) fn parse_pax_time(s: &[u8]) -> Option<(i64, u32)> {
    let (secs_text, fraction) = match s.iter().position(|&c| c == b'.') {
        Some(dot) => (&s[..dot], &s[dot + 1..]),
        None => (s, &[][..]),
    };
    let secs = parse_go_int(secs_text)?;
    if fraction.is_empty() {
        return Some((secs, 0));
    }
    if !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let digit = fraction.get(i).map_or(0, |c| u32::from(c - b'0'));
        nanos = nanos * 10 + digit;
    }
    if secs_text.first() == Some(&b'-') && nanos > 0 {
        // time.Unix(secs, -nanos) borrows one second.
        return Some(match secs.checked_sub(1) {
            Some(secs) => (secs, 1_000_000_000 - nanos),
            None => (i64::MIN, 0),
        });
    }
    Some((secs, nanos))
}

/// Parses the data of a PAX `x` (or `g`) header into its records.
///
/// Errors (Go's `ErrHeader`) are returned as text for the caller to place.
/// GNU sparse 0.0 `GNU.sparse.offset`/`GNU.sparse.numbytes` pairs are folded
/// into one `GNU.sparse.map` record, as Go does.
pub(crate) fn parse_pax(data: &[u8]) -> Result<PaxRecords, String> {
    let mut records = PaxRecords::new();
    let mut sparse_map: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let consumed = data.len() - rest.len();
        let (key, value, residual) = parse_record(rest)
            .ok_or_else(|| format!("invalid pax record at byte {consumed} of the pax data"))?;
        rest = residual;
        if key == GNU_SPARSE_OFFSET || key == GNU_SPARSE_NUMBYTES {
            // Offsets and sizes must alternate, starting with an offset.
            let expected = [GNU_SPARSE_OFFSET, GNU_SPARSE_NUMBYTES][sparse_map.len() % 2];
            if key != expected || value.contains(&b',') {
                return Err("invalid gnu sparse 0.0 map in pax records".to_string());
            }
            sparse_map.push(value);
        } else {
            records.insert(key.to_vec(), value.to_vec());
        }
    }
    if !sparse_map.is_empty() {
        records.insert(GNU_SPARSE_MAP.to_vec(), sparse_map.join(&b","[..]));
    }
    Ok(records)
}

/// Go's `parsePAXRecord`: `"%d %s=%s\n"`, where the decimal length counts
/// the whole record. Returns key, value and the remaining input.
fn parse_record(s: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let space = s.iter().position(|&c| c == b' ')?;
    let length = parse_go_int(&s[..space])?;
    let length = usize::try_from(length).ok()?;
    if length < 5 || length > s.len() || length <= space + 1 {
        return None;
    }
    let record = &s[space + 1..length - 1];
    if s[length - 1] != b'\n' {
        return None;
    }
    let equals = record.iter().position(|&c| c == b'=')?;
    let (key, value) = (&record[..equals], &record[equals + 1..]);
    if key.is_empty() {
        return None;
    }
    // Go's validPAXRecord: NUL is refused in the values that become header
    // strings, and in every other key.
    let has_nul = |b: &[u8]| b.contains(&0);
    let valid = match key {
        PATH | LINKPATH | UNAME | GNAME => !has_nul(value),
        _ => !has_nul(key),
    };
    valid.then_some((key, value, &s[length..]))
}

/// Whether Go would read the entry as a PAX-format GNU sparse file
/// (`readGNUSparsePAXHeaders`): version 0.0, 0.1 or 1.0 named by
/// `GNU.sparse.major`/`minor`, or a `GNU.sparse.map` with no version.
/// Unknown versions are read as plain files by Go, and so by us.
pub(crate) fn is_gnu_sparse(records: &PaxRecords) -> bool {
    let get = |key: &[u8]| records.get(key).map_or(&[][..], Vec::as_slice);
    match (get(GNU_SPARSE_MAJOR), get(GNU_SPARSE_MINOR)) {
        (b"0", b"0" | b"1") | (b"1", b"0") => true,
        (b"", b"") => !get(GNU_SPARSE_MAP).is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_ints_take_a_sign_and_refuse_the_rest() {
        assert_eq!(parse_go_int(b"42"), Some(42));
        assert_eq!(parse_go_int(b"+42"), Some(42));
        assert_eq!(parse_go_int(b"-42"), Some(-42));
        assert_eq!(parse_go_int(b"0042"), Some(42));
        assert_eq!(parse_go_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_go_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_go_int(b"9223372036854775808"), None);
        assert_eq!(
            parse_go_int(b"99999999999999999999999999999999999999999999"),
            None
        );
        for bad in [
            &b""[..],
            b"-",
            b"+",
            b" 1",
            b"1 ",
            b"1_000",
            b"0x10",
            b"1.0",
        ] {
            assert_eq!(parse_go_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pax_times_follow_go() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.1234567899"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"1700000000."), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"-0.25"), Some((-1, 750_000_000)));
        assert_eq!(parse_pax_time(b"-1.0"), Some((-1, 0)));
        assert_eq!(
            parse_pax_time(b"-9223372036854775808.5"),
            Some((i64::MIN, 0))
        );
        for bad in [&b""[..], b".5", b"1.5.", b"1.-5", b"1.5e3", b"x", b"1.+5"] {
            assert_eq!(parse_pax_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn records_are_length_prefixed() {
        let records = parse_pax(b"11 path=a/\n13 mtime=1.5\n").unwrap();
        assert_eq!(records.get(PATH).map(Vec::as_slice), Some(&b"a/"[..]));
        assert_eq!(records.get(MTIME).map(Vec::as_slice), Some(&b"1.5"[..]));
        // Values may hold '=' and newlines; the length decides.
        let records = parse_pax(b"13 k=a=b\nc=d\n").unwrap();
        assert_eq!(
            records.get(&b"k"[..]).map(Vec::as_slice),
            Some(&b"a=b\nc=d"[..])
        );
        // A later record replaces an earlier one; empty values are kept.
        let records = parse_pax(b"8 k=one\n8 k=two\n5 e=\n").unwrap();
        assert_eq!(records.get(&b"k"[..]).map(Vec::as_slice), Some(&b"two"[..]));
        assert_eq!(records.get(&b"e"[..]).map(Vec::as_slice), Some(&b""[..]));
    }

    #[test]
    fn malformed_records_are_refused() {
        for bad in [
            &b"10 path=ab\n"[..], // length one short: no newline where it ends
            b"12 path=a/\n",      // length past the end
            b"4 k=\n",            // below Go's minimum of 5
            b"path=a\n",          // no length
            b"11path=a/\n",       // no space
            b"9 patha/\n",        // no '='
            b"6 =ab\n",           // empty key
            b"11 path=\0/\n",     // NUL in a path
            b"8 k\0=ab\n",        // NUL in a key
            b"-5 a=b\n",
            b"3 a\n",
        ] {
            assert!(parse_pax(bad).is_err(), "{bad:?}");
        }
        // NUL is fine in other values (binary xattrs).
        assert!(parse_pax(b"8 k=\0\x01\x02\n").is_ok());
    }

    #[test]
    fn gnu_sparse_records_are_detected_like_go() {
        let sparse = |data: &[u8]| is_gnu_sparse(&parse_pax(data).unwrap());
        assert!(sparse(b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n"));
        assert!(sparse(b"22 GNU.sparse.major=0\n22 GNU.sparse.minor=1\n"));
        assert!(sparse(
            b"23 GNU.sparse.offset=0\n25 GNU.sparse.numbytes=5\n"
        ));
        assert!(sparse(b"22 GNU.sparse.map=0,5\n"));
        // Unknown versions are plain files to Go.
        assert!(!sparse(
            b"22 GNU.sparse.major=2\n22 GNU.sparse.minor=0\n22 GNU.sparse.map=0,5\n"
        ));
        assert!(!sparse(b"11 path=a/\n"));
        // Offsets and sizes must alternate.
        assert!(parse_pax(b"25 GNU.sparse.numbytes=5\n").is_err());
    }
}
