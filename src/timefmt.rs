//! UTC time formatting without a calendar dependency: inbox stamps, RFC 3339 strings and
//! RFC 5322 dates (AS2 and MDN `Date:` fields). One calendar routine serves them all.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    system_time_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of `t` (negative before 1970).
pub fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The `SystemTime` of `ms` milliseconds since the epoch.
pub fn ms_to_system_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
    }
}

/// Calendar fields of a UTC instant.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    milli: u32,
}

fn civil(ms: i64) -> Civil {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Howard Hinnant's days-from-civil inverse: exact for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3_600_000) as u32,
        minute: (rem / 60_000 % 60) as u32,
        second: (rem / 1000 % 60) as u32,
        milli: (rem % 1000) as u32,
    }
}

/// `YYYYMMDDTHHMMSS.mmmZ`: ISO 8601 basic format, UTC, milliseconds. Sorts as a string.
pub fn stamp(ms: i64) -> String {
    let c = civil(ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli
    )
}

/// A stamp that also separates things named in the same millisecond:
/// `YYYYMMDDTHHMMSS.mmmZ-xxxxxx` (six random lowercase hex digits).
pub fn unique_stamp(ms: i64) -> String {
    let mut r = [0u8; 3];
    // The suffix only separates names made in the same millisecond; should the RNG fail, a
    // less random suffix still yields a valid stamp.
    if openssl::rand::rand_bytes(&mut r).is_err() {
        r = [(ms & 0xff) as u8, (ms >> 8 & 0xff) as u8, 0];
    }
    format!("{}-{:02x}{:02x}{:02x}", stamp(ms), r[0], r[1], r[2])
}

/// An RFC 5322 date of `unix_secs` (`Tue, 04 Jan 2022 13:57:06 +0000`), for `Date:`.
pub fn rfc5322(unix_secs: i64) -> String {
    let c = civil(unix_secs.saturating_mul(1000));
    let days_since_epoch = unix_secs.div_euclid(86_400);
    // 1970-01-01 was a Thursday.
    let weekday =
        ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days_since_epoch.rem_euclid(7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(c.month as usize).saturating_sub(1).min(11)];
    format!(
        "{weekday}, {:02} {month} {} {:02}:{:02}:{:02} +0000",
        c.day, c.year, c.hour, c.minute, c.second
    )
}

/// RFC 3339 with milliseconds, UTC: `2026-11-28T03:15:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let c = civil(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_instants() {
        assert_eq!(stamp(0), "19700101T000000.000Z");
        // 2026-11-28T03:15:00.123Z
        assert_eq!(rfc3339(1_795_835_700_123), "2026-11-28T03:15:00.123Z");
        // Leap day.
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc5322_dates() {
        assert_eq!(rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(1_641_304_626), "Tue, 04 Jan 2022 13:57:06 +0000");
        assert_eq!(rfc5322(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322(-1), "Wed, 31 Dec 1969 23:59:59 +0000");
    }

    #[test]
    fn stamps_sort_like_times() {
        let times = [0i64, 999, 1000, 59_999, 86_400_000, 1_795_835_700_123];
        for w in times.windows(2) {
            assert!(stamp(w[0]) < stamp(w[1]));
        }
    }
}
