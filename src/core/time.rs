//! Event time: milliseconds since the Unix epoch, parsed from and printed as RFC 3339.
//!
//! The engine never reads a clock; every instant it sees is an [`EventTime`] handed in
//! by the caller (an event's `timestamp`, `replay --until`, or later the wall clock).
//! Parsing is hand-written because it runs once per input event on the hot path; it is
//! cross-checked against the `time` crate by a property test.

use std::fmt;

/// An instant in event time, in whole milliseconds since 1970-01-01T00:00:00Z.
///
/// Sub-millisecond fractions in the input are truncated (the fraction is always
/// non-negative in RFC 3339, so truncation is a floor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(i64);

/// A non-negative length of event time, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(i64);

/// An [`EventTime`] in six bytes, for the times kept per customer: milliseconds since
/// the Unix epoch as a 48-bit signed integer, from year -2488 to 6429 (an instant
/// beyond is clamped to the end of the range). Byte-aligned, so that a customer's four
/// times and three small fields take 27 bytes, not 32 or 40.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Instant48([u8; 6]);

impl Instant48 {
    pub const MIN_MILLIS: i64 = -(1 << 47);
    pub const MAX_MILLIS: i64 = (1 << 47) - 1;
    /// "Not recorded": the one value [`Instant48::at`] never makes.
    pub const UNKNOWN: Instant48 = Instant48::from_millis(Self::MIN_MILLIS);

    const fn from_millis(millis: i64) -> Self {
        let bytes = millis.to_le_bytes();
        Instant48([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]])
    }

    pub fn at(time: EventTime) -> Self {
        Self::from_millis(time.as_millis().clamp(Self::MIN_MILLIS + 1, Self::MAX_MILLIS))
    }

    pub fn time(self) -> EventTime {
        let [a, b, c, d, e, f] = self.0;
        // Sign-extended from bit 47.
        EventTime::from_millis(i64::from_le_bytes([a, b, c, d, e, f, 0, 0]) << 16 >> 16)
    }

    pub fn known(self) -> Option<EventTime> {
        (self != Self::UNKNOWN).then(|| self.time())
    }
}

impl EventTime {
    /// Earlier than any parseable timestamp; the watermark before any event.
    pub const MIN: EventTime = EventTime(i64::MIN);
    /// Later than any parseable timestamp; "never" where a next instant is awaited.
    pub const MAX: EventTime = EventTime(i64::MAX);

    pub const fn from_millis(millis: i64) -> Self {
        EventTime(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + span`, saturating instead of overflowing.
    #[must_use]
    pub const fn plus(self, span: Span) -> EventTime {
        EventTime(self.0.saturating_add(span.0))
    }

    /// `self - span`, saturating instead of overflowing.
    #[must_use]
    pub const fn minus(self, span: Span) -> EventTime {
        EventTime(self.0.saturating_sub(span.0))
    }

    /// Parses an RFC 3339 date-time with a mandatory offset (`Z` or `±HH:MM`).
    ///
    /// Accepts `T`/`t` as the separator, `Z`/`z` for UTC, any number of fraction digits.
    /// Rejects a leap second (`:60`), impossible dates and years outside 0000-9999.
    pub fn parse_rfc3339(text: &str) -> Option<EventTime> {
        let b = text.as_bytes();
        if b.len() < 20 {
            return None;
        }
        let year = digits(b, 0, 4)?;
        let month = digits(b, 5, 2)?;
        let day = digits(b, 8, 2)?;
        let hour = digits(b, 11, 2)?;
        let minute = digits(b, 14, 2)?;
        let second = digits(b, 17, 2)?;
        if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
            return None;
        }
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let mut pos = 19;
        let mut millis = 0i64;
        if b[pos] == b'.' {
            pos += 1;
            let start = pos;
            while pos < b.len() && b[pos].is_ascii_digit() {
                if pos - start < 3 {
                    millis = millis * 10 + i64::from(b[pos] - b'0');
                }
                pos += 1;
            }
            let fraction_digits = pos - start;
            if fraction_digits == 0 {
                return None;
            }
            for _ in fraction_digits..3 {
                millis *= 10;
            }
        }
        let offset_minutes = match b.get(pos..)? {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let hours = digits(b, pos + 1, 2)?;
                let minutes = digits(b, pos + 4, 2)?;
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let magnitude = hours * 60 + minutes;
                if *sign == b'-' {
                    -magnitude
                } else {
                    magnitude
                }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let local_seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
        let utc_seconds = local_seconds - offset_minutes * 60;
        Some(EventTime(utc_seconds * 1_000 + millis))
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, millisecond precision) into `buf`.
    pub fn write_rfc3339(self, buf: &mut [u8; 24]) -> &str {
        let millis = self.0.rem_euclid(1_000);
        let seconds = self.0.div_euclid(1_000);
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        // Years outside 0..=9999 cannot come from parsed input, only from arithmetic
        // on its extremes; clamp so the output stays a fixed-width RFC 3339 string.
        let year = year.clamp(0, 9_999);
        put(buf, 0, year, 4);
        buf[4] = b'-';
        put(buf, 5, month, 2);
        buf[7] = b'-';
        put(buf, 8, day, 2);
        buf[10] = b'T';
        put(buf, 11, second_of_day / 3_600, 2);
        buf[13] = b':';
        put(buf, 14, second_of_day / 60 % 60, 2);
        buf[16] = b':';
        put(buf, 17, second_of_day % 60, 2);
        buf[19] = b'.';
        put(buf, 20, millis, 3);
        buf[23] = b'Z';
        std::str::from_utf8(buf).expect("only ASCII digits and separators were written")
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.write_rfc3339(&mut [0; 24]))
    }
}

impl Span {
    pub const ZERO: Span = Span(0);

    pub const fn from_millis(millis: i64) -> Self {
        Span(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The span as a `std` duration, for the shell's timers.
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.unsigned_abs())
    }
}

impl TryFrom<std::time::Duration> for Span {
    type Error = std::num::TryFromIntError;

    fn try_from(duration: std::time::Duration) -> Result<Self, Self::Error> {
        i64::try_from(duration.as_millis()).map(Span)
    }
}

fn digits(b: &[u8], at: usize, count: usize) -> Option<i64> {
    let mut value = 0i64;
    for &c in b.get(at..at + count)? {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(c - b'0');
    }
    Some(value)
}

fn put(buf: &mut [u8], at: usize, mut value: i64, width: usize) {
    for i in (0..width).rev() {
        buf[at + i] = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl EventTime {
    /// The UTC calendar month this instant falls in: `(year, month)`.
    pub fn utc_month(self) -> (i64, i64) {
        let (year, month, _) = civil_from_days(self.0.div_euclid(86_400_000));
        (year, month)
    }

    /// The ISO 8601 week this instant falls in (UTC): `(week-based year, week)`. Weeks
    /// start on Monday; week 1 is the week with the year's first Thursday.
    pub fn iso_week(self) -> (i64, i64) {
        let days = self.0.div_euclid(86_400_000);
        // 1970-01-01 was a Thursday: Monday is 0.
        let weekday = (days + 3).rem_euclid(7);
        let thursday = days - weekday + 3;
        let (year, _, _) = civil_from_days(thursday);
        (year, (thursday - days_from_civil(year, 1, 1)) / 7 + 1)
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Option<i64> {
        EventTime::parse_rfc3339(text).map(EventTime::as_millis)
    }

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(parse("1970-01-01T00:00:00.123456789Z"), Some(123));
        assert_eq!(parse("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse("1969-12-31T23:30:00-00:30"), Some(0));
        assert_eq!(parse("2024-02-29t12:00:00z"), Some(1_709_208_000_000));
        assert_eq!(parse("1969-12-31T23:59:59.999Z"), Some(-1));
    }

    #[test]
    fn rejects_what_rfc3339_does_not_allow() {
        for bad in [
            "",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:60Z",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00Z ",
            "1700000000",
            "２０２４-01-01T00:00:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} must be rejected");
        }
    }

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(EventTime(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(EventTime(-1).to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            EventTime(1_709_208_000_123).to_string(),
            "2024-02-29T12:00:00.123Z"
        );
    }

    proptest! {
        #[test]
        fn agrees_with_the_time_crate(
            seconds in -62_135_596_800i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            offset_minutes in -1439i32..=1439,
        ) {
            use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};
            let offset = UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap();
            let instant = OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                + time::Duration::nanoseconds(i64::from(nanos));
            let Ok(text) = instant.to_offset(offset).format(&Rfc3339) else {
                return Ok(()); // local year outside 0000-9999
            };
            let expected = seconds * 1_000 + i64::from(nanos / 1_000_000);
            prop_assert_eq!(parse(&text), Some(expected), "{}", text);
            let printed = EventTime(expected).to_string();
            let reparsed = OffsetDateTime::parse(&printed, &Rfc3339).unwrap();
            prop_assert_eq!(reparsed.unix_timestamp(), seconds);
            let utc = OffsetDateTime::from_unix_timestamp(seconds).unwrap();
            prop_assert_eq!(EventTime(expected).utc_month(), (i64::from(utc.year()), i64::from(u8::from(utc.month()))));
            let (iso_year, iso_week, _) = utc.to_iso_week_date();
            prop_assert_eq!(EventTime(expected).iso_week(), (i64::from(iso_year), i64::from(iso_week)));
        }
    }
}
