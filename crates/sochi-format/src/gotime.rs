//! Go's text form of a `time.Time`, for the zTOC `mod_time` field.
//!
//! The reference writes `mod_time` with Go `time.Time.MarshalText`, which is
//! RFC 3339 with up to nine fractional digits, trailing zeros trimmed
//! (layout `2006-01-02T15:04:05.999999999Z07:00`), and refuses years outside
//! `0..=9999`; the reference ignores that error and stores an empty string
//! (docs/format.md §1.1, notes on `mod_time`). We always write UTC (`Z`), as the
//! reference does when it runs with `TZ` unset (docs/format.md §0, hazard 8).
//!
//! Calendar arithmetic is the proleptic Gregorian calendar, done with
//! Howard Hinnant's days-from-civil algorithms, like Go's own `time` package.

const NANOS_PER_SECOND: i128 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// Days from 0000-03-01 to 1970-01-01.
const DAYS_0000_03_01_TO_EPOCH: i64 = 719_468;
const DAYS_PER_ERA: i64 = 146_097;
/// Go's `MarshalText` refuses any year that does not print as four digits.
const MAX_YEAR: i64 = 9999;

/// Formats a Unix time the way Go's `time.Unix(seconds, nanos).UTC().MarshalText()`
/// does: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, with the fraction trimmed of
/// trailing zeros (and omitted when zero).
///
/// `nanos` of one second or more carry into the seconds, as in Go's
/// `time.Unix`. A time whose year falls outside `0..=9999` yields the empty
/// string: Go's `MarshalText` fails there and the reference stores `""`
/// (docs/format.md §1.1).
///
/// ```
/// use sochi_format::format_mod_time;
/// assert_eq!(format_mod_time(1_700_000_000, 123_456_789), "2023-11-14T22:13:20.123456789Z");
/// assert_eq!(format_mod_time(0, 500_000_000), "1970-01-01T00:00:00.5Z");
/// assert_eq!(format_mod_time(253_402_300_800, 0), ""); // year 10000
/// ```
pub fn format_mod_time(seconds: i64, nanos: u32) -> String {
    // i128 so that carrying nanos into an extreme `seconds` cannot overflow.
    let total = i128::from(seconds) * NANOS_PER_SECOND + i128::from(nanos);
    let secs = total.div_euclid(NANOS_PER_SECOND);
    let nanos = total.rem_euclid(NANOS_PER_SECOND);
    let Ok(secs) = i64::try_from(secs) else {
        return String::new();
    };
    let days = secs.div_euclid(SECONDS_PER_DAY);
    let second_of_day = secs.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    if !(0..=MAX_YEAR).contains(&year) {
        return String::new();
    }
    let hour = second_of_day / 3600;
    let minute = second_of_day / 60 % 60;
    let second = second_of_day % 60;
    let mut text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Parses RFC 3339 text as Go's `time.Parse(time.RFC3339, text)` does on its
/// fast path, returning Unix seconds and nanoseconds (`0..1_000_000_000`).
///
/// Accepted: `YYYY-MM-DDTHH:MM:SS`, then optionally `.` and one or more
/// digits (digits past the ninth are dropped, as Go does), then `Z` or
/// `+hh:mm` / `-hh:mm` (hours `00..=23`). Fields are range-checked like Go
/// (the day against the month's length, seconds `00..=59`). Anything else,
/// including the empty string the reference writes for out-of-range years,
/// gives `None`.
///
/// ```
/// use sochi_format::parse_mod_time;
/// assert_eq!(parse_mod_time("2023-11-14T22:13:20.123456789Z"), Some((1_700_000_000, 123_456_789)));
/// assert_eq!(parse_mod_time("1970-01-01T01:00:00+01:00"), Some((0, 0)));
/// assert_eq!(parse_mod_time(""), None);
/// ```
pub fn parse_mod_time(text: &str) -> Option<(i64, u32)> {
    let s = text.as_bytes();
    if s.len() < "2006-01-02T15:04:05".len() {
        return None;
    }
    let year = parse_digits(&s[0..4], 0, 9999)?;
    let month = parse_digits(&s[5..7], 1, 12)?;
    let day = parse_digits(&s[8..10], 1, days_in_month(year, month))?;
    let hour = parse_digits(&s[11..13], 0, 23)?;
    let minute = parse_digits(&s[14..16], 0, 59)?;
    let second = parse_digits(&s[17..19], 0, 59)?;
    if !(s[4] == b'-' && s[7] == b'-' && s[10] == b'T' && s[13] == b':' && s[16] == b':') {
        return None;
    }
    let mut rest = &s[19..];

    let mut nanos: u32 = 0;
    if rest.len() >= 2 && rest[0] == b'.' && rest[1].is_ascii_digit() {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        // Go keeps the first nine digits and drops the rest (parseNanoseconds).
        let mut scale = 100_000_000u32;
        for &c in rest[1..].iter().take(digits.min(9)) {
            nanos += u32::from(c - b'0') * scale;
            scale /= 10;
        }
        rest = &rest[1 + digits..];
    }

    let offset_seconds = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = parse_digits(&[*h1, *h2], 0, 23)?;
            let minutes = parse_digits(&[*m1, *m2], 0, 59)?;
            let offset = (hours * 60 + minutes) * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let seconds = days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second - offset_seconds;
    Some((seconds, nanos))
}

/// Parses ASCII decimal digits and checks `min..=max`, like the `parseUint`
/// helper of Go's RFC 3339 fast path.
fn parse_digits(digits: &[u8], min: i64, max: i64) -> Option<i64> {
    let mut value: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(c - b'0');
    }
    (min..=max).contains(&value).then_some(value)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month `1..=12`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count years from March so that the leap day is the last day of a year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - DAYS_0000_03_01_TO_EPOCH
}

/// The proleptic Gregorian `(year, month, day)` of a count of days since
/// 1970-01-01. Exact for any `days` an `i64` count of seconds can produce.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + DAYS_0000_03_01_TO_EPOCH;
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z - era * DAYS_PER_ERA; // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_formatted_without_fraction() {
        assert_eq!(format_mod_time(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_mod_time("1970-01-01T00:00:00Z"), Some((0, 0)));
    }

    #[test]
    fn fractions_are_trimmed_of_trailing_zeros() {
        assert_eq!(format_mod_time(1_700_000_000, 0), "2023-11-14T22:13:20Z");
        assert_eq!(
            format_mod_time(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            format_mod_time(1_700_000_000, 120_000_000),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(
            format_mod_time(1_700_000_000, 1),
            "2023-11-14T22:13:20.000000001Z"
        );
    }

    #[test]
    fn nanos_of_a_second_or_more_carry_into_seconds() {
        assert_eq!(format_mod_time(0, 1_500_000_000), "1970-01-01T00:00:01.5Z");
        assert_eq!(format_mod_time(-1, 1_000_000_000), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn negative_times_count_back_from_the_epoch() {
        assert_eq!(format_mod_time(-1, 0), "1969-12-31T23:59:59Z");
        // Go's time.Unix(-2, 500000000): half a second before -1.
        assert_eq!(format_mod_time(-2, 500_000_000), "1969-12-31T23:59:58.5Z");
        assert_eq!(format_mod_time(-86_400 * 365, 0), "1969-01-01T00:00:00Z");
        assert_eq!(
            parse_mod_time("1969-12-31T23:59:58.5Z"),
            Some((-2, 500_000_000))
        );
    }

    #[test]
    fn year_range_is_0_to_9999() {
        // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z are the limits.
        assert_eq!(format_mod_time(-62_167_219_200, 0), "0000-01-01T00:00:00Z");
        assert_eq!(format_mod_time(-62_167_219_201, 999_999_999), "");
        assert_eq!(
            format_mod_time(253_402_300_799, 999_999_999),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert_eq!(format_mod_time(253_402_300_800, 0), "");
        assert_eq!(format_mod_time(i64::MAX, 999_999_999), "");
        assert_eq!(format_mod_time(i64::MIN, 0), "");
        assert_eq!(
            parse_mod_time("0000-01-01T00:00:00Z"),
            Some((-62_167_219_200, 0))
        );
        assert_eq!(
            parse_mod_time("9999-12-31T23:59:59Z"),
            Some((253_402_300_799, 0))
        );
        assert_eq!(parse_mod_time("10000-01-01T00:00:00Z"), None);
    }

    #[test]
    fn leap_days_follow_the_gregorian_rules() {
        assert_eq!(format_mod_time(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(format_mod_time(-2_203_891_200, 0), "1900-03-01T00:00:00Z");
        assert_eq!(parse_mod_time("1900-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_mod_time("2000-02-29T00:00:00Z"),
            Some((951_782_400, 0))
        );
        // 0000 is a leap year in the proleptic Gregorian calendar.
        assert!(parse_mod_time("0000-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn offsets_are_applied() {
        assert_eq!(parse_mod_time("1970-01-01T01:00:00+01:00"), Some((0, 0)));
        assert_eq!(parse_mod_time("1969-12-31T19:30:00-04:30"), Some((0, 0)));
        assert_eq!(parse_mod_time("1970-01-01T00:00:00+24:00"), None);
        assert_eq!(parse_mod_time("1970-01-01T00:00:00+01:60"), None);
        assert_eq!(parse_mod_time("1970-01-01T00:00:00+0100"), None);
    }

    #[test]
    fn malformed_text_is_refused() {
        for text in [
            "",
            "2023-11-14",
            "2023-11-14 22:13:20Z",
            "2023-11-14t22:13:20Z",
            "2023-11-14T22:13:20z",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-11-31T22:13:20Z",
            "2023-11-14T24:13:20Z",
            "2023-11-14T22:13:60Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20.5",
            "+023-11-14T22:13:20Z",
            "2023-11-14T22:13:20ZZ",
        ] {
            assert_eq!(parse_mod_time(text), None, "{text:?}");
        }
    }

    #[test]
    fn fraction_digits_past_nine_are_dropped_like_go() {
        assert_eq!(
            parse_mod_time("2023-11-14T22:13:20.1234567899Z"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(
            parse_mod_time("2023-11-14T22:13:20.5Z"),
            Some((1_700_000_000, 500_000_000))
        );
    }

    #[test]
    fn format_and_parse_round_trip() {
        let mut seconds: i64 = -62_167_219_200;
        while seconds < 253_402_300_800 {
            for nanos in [0, 1, 10, 999_999_999, 500_000_000] {
                let text = format_mod_time(seconds, nanos);
                assert_eq!(parse_mod_time(&text), Some((seconds, nanos)), "{text}");
            }
            seconds += 7_777_777;
        }
    }
}
