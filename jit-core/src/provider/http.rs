//! An HTTP status (and `Retry-After`) to jit-core's error kinds, in one place.
//!
//! | status | kind |
//! | --- | --- |
//! | 429 | [`Error::Throttled`], with the asked-for wait |
//! | 503 with a `Retry-After` | [`Error::Throttled`] (the cloud said when to come back) |
//! | 408, 500, 502, 503, 504, other 5xx | [`Error::Unavailable`] |
//! | 400, 401, 403, 404, 409, 412, other 4xx | [`Error::ProviderRejected`] |
//!
//! 404, 409 and 412 need a provider's judgement before they become errors
//! (an already-removed assignment is a successful revoke; an etag mismatch
//! is a read-modify-write to retry), so providers classify with
//! [`StatusClass`] in their own error type first and convert what is left.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Error;

/// What an HTTP status means to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusClass {
    /// 2xx.
    Success,
    /// 429 (and 503 with `Retry-After`): slow down.
    Throttled,
    /// 408 and 5xx: try again later.
    Unavailable,
    /// 401 and 403: the broker's own identity lacks a permission or a valid token.
    Unauthorized,
    /// 404: the object (or the scope) does not exist.
    NotFound,
    /// 409 and 412: someone else changed the object, or it already exists.
    Conflict,
    /// Any other status: the request itself was refused.
    Rejected,
}

impl StatusClass {
    /// Classifies `status`; `retry_after` says whether the response asked for a wait.
    pub fn of(status: u16, retry_after: bool) -> Self {
        match status {
            200..=299 => Self::Success,
            429 => Self::Throttled,
            503 if retry_after => Self::Throttled,
            408 | 500..=599 => Self::Unavailable,
            401 | 403 => Self::Unauthorized,
            404 => Self::NotFound,
            409 | 412 => Self::Conflict,
            _ => Self::Rejected,
        }
    }

    /// Whether calling again later may succeed unchanged.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Throttled | Self::Unavailable)
    }
}

/// The jit-core error for a failed call: see the [module docs](self).
/// `message` is the cloud's own message (never a secret: callers must not
/// pass request headers or bodies carrying credentials).
pub fn error_for_status(
    provider: &str,
    operation: &'static str,
    status: u16,
    retry_after: Option<Duration>,
    message: String,
) -> Error {
    match StatusClass::of(status, retry_after.is_some()) {
        StatusClass::Throttled => Error::Throttled {
            provider: provider.to_string(),
            operation,
            retry_after,
        },
        StatusClass::Unavailable => Error::Unavailable {
            what: format!("provider `{provider}` ({operation})"),
            message: format!("status {status}: {message}"),
        },
        _ => Error::ProviderRejected {
            provider: provider.to_string(),
            operation,
            message: format!("status {status}: {message}"),
        },
    }
}

/// Parses a `Retry-After` value: whole seconds (`120`) or an HTTP date
/// (`Sun, 29 Nov 2026 20:00:00 GMT`, counted from `now`; a date in the
/// past is no wait). Anything else is `None`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The wait a response asks for, from its headers: `retry-after-ms` and
/// `x-ms-retry-after-ms` (milliseconds, Azure) before `retry-after`.
/// Header names are matched case-insensitively.
pub fn retry_after_from_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let mut plain = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("retry-after-ms")
            || name.eq_ignore_ascii_case("x-ms-retry-after-ms")
        {
            if let Ok(ms) = value.trim().parse::<u64>() {
                return Some(Duration::from_millis(ms));
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            plain = parse_retry_after(value, now);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-29T20:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn statuses_map_to_kinds() {
        let e = |s, ra| error_for_status("azure", "issue", s, ra, "m".into());
        assert!(matches!(
            e(429, Some(Duration::from_secs(7))),
            Error::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            e(429, None),
            Error::Throttled {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            e(503, Some(Duration::from_secs(1))),
            Error::Throttled { .. }
        ));
        for s in [408, 500, 502, 503, 504, 599] {
            assert!(matches!(e(s, None), Error::Unavailable { .. }), "{s}");
            assert!(e(s, None).is_transient());
        }
        for s in [400, 401, 403, 404, 409, 412, 422] {
            match e(s, None) {
                Error::ProviderRejected {
                    message, provider, ..
                } => {
                    assert_eq!(provider, "azure");
                    assert!(message.contains(&s.to_string()));
                }
                other => panic!("{s}: {other:?}"),
            }
        }
        assert_eq!(
            e(429, Some(Duration::from_secs(7))).retry_after_secs(),
            Some(7)
        );
        assert_eq!(e(429, None).http_status(), 429);
    }

    #[test]
    fn classes() {
        assert_eq!(StatusClass::of(204, false), StatusClass::Success);
        assert_eq!(StatusClass::of(412, false), StatusClass::Conflict);
        assert_eq!(StatusClass::of(404, false), StatusClass::NotFound);
        assert_eq!(StatusClass::of(403, false), StatusClass::Unauthorized);
        assert_eq!(StatusClass::of(503, false), StatusClass::Unavailable);
        assert!(StatusClass::of(503, true).is_transient());
        assert!(!StatusClass::of(409, false).is_transient());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after(" 120 ", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 20:00:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 19:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now()), None);
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(
            retry_after_from_headers(
                [("Retry-After", "10"), ("x-ms-retry-after-ms", "1500")],
                now()
            ),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after_from_headers([("RETRY-AFTER", "3")], now()),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after_from_headers([("x", "3")], now()), None);
    }
}
