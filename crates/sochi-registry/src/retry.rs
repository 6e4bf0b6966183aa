//! When and how long to wait before trying a request again.
//!
//! Retried: connection errors and timeouts, `408`, `429` and `5xx` (but not
//! `501 Not Implemented` and `505 HTTP Version Not Supported`, which will not
//! change). Never retried: other `4xx` (a `401` gets one re-authentication,
//! in the client). The wait is exponential backoff with jitter, or the
//! server's `Retry-After` (seconds or HTTP-date), both capped at the
//! configured maximum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Retry budget and wait bounds.
///
/// Invariant: `min_wait <= max_wait` (the constructor swaps them if not).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub max_retries: u32,
    min_wait: Duration,
    max_wait: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32, min_wait: Duration, max_wait: Duration) -> RetryPolicy {
        let (min_wait, max_wait) = if min_wait <= max_wait {
            (min_wait, max_wait)
        } else {
            (max_wait, min_wait)
        };
        RetryPolicy {
            max_retries,
            min_wait,
            max_wait,
        }
    }

    /// The wait before retry number `attempt` (0 for the first retry):
    /// `min_wait * 2^attempt`, capped at `max_wait`, then a uniformly random
    /// value in `[half of that, that]` ("equal jitter"), so that clients
    /// that failed together do not come back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .min_wait
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max_wait);
        let half = base / 2;
        let spread = base.saturating_sub(half).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            next_random() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// The wait before retry `attempt`: the server's `Retry-After` if it
    /// sent one (capped at `max_wait`), else [`RetryPolicy::backoff`].
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.max_wait),
            None => self.backoff(attempt),
        }
    }
}

/// Whether a response status is worth another try.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || ((500..=599).contains(&status) && !matches!(status, 501 | 505))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110
/// §10.2.3), relative to `now`. A date in the past means "now".
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A small splitmix64 generator for jitter; it need not be secure, only
/// differ between processes and calls.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut seed = STATE.load(Ordering::Relaxed);
    if seed == 0 {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        seed = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
        STATE.store(seed, Ordering::Relaxed);
    }
    let mut z = STATE
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds_and_grows() {
        let p = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let base = (Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(2));
            for _ in 0..50 {
                let d = p.backoff(attempt);
                assert!(
                    d >= base / 2 && d <= base,
                    "attempt {attempt}: {d:?} not in [{:?}, {base:?}]",
                    base / 2
                );
            }
        }
        let zero = RetryPolicy::new(1, Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.backoff(3), Duration::ZERO);
        let swapped = RetryPolicy::new(1, Duration::from_secs(4), Duration::from_secs(1));
        assert!(swapped.backoff(0) <= Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_capped() {
        let p = RetryPolicy::new(5, Duration::from_millis(1), Duration::from_secs(10));
        assert_eq!(
            p.wait(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.wait(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 405, 416, 501, 505] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }
}
