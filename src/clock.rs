//! Wall-clock helpers: RFC 3339 UTC text for payloads and logs, microseconds for
//! rows and claim sequences.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as RFC 3339 UTC with seconds (`2026-11-29T18:00:00Z`).
pub(crate) fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}
