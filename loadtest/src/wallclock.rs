//! Wall-clock timestamps for response bodies (`created`, `created_at`). Labels only:
//! all waiting goes through `tokio::time`, so a paused test clock is unaffected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub(crate) fn unix_secs() -> u64 {
    unix_time().as_secs()
}

/// RFC 3339 in UTC with microseconds, as Ollama writes `created_at`.
pub(crate) fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        since_epoch.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`,
/// so we need no date crate for one timestamp format.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        // A leap day, and a time with every field non-zero.
        assert_eq!(
            rfc3339(Duration::from_secs(1_709_164_800)),
            "2024-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(Duration::new(951_827_696, 123_456_000)),
            "2000-02-29T12:34:56.123456Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(1_735_689_599)),
            "2024-12-31T23:59:59.000000Z"
        );
    }
}
