//! Per-principal limits on new requests: how fast one verified subject may
//! submit (a [`governor`] keyed rate limiter, GCRA), keyed by the exact
//! subject the identity provider verified, never by IP address: many
//! people share an address, and one person can use many.
//!
//! The rate is per process (per replica with several on one database).
//! How many pending requests one subject may hold (`[limits]
//! max_pending_per_requester`) is the broker's cap
//! ([`jit_core::BrokerBuilder::max_pending_per_requester`]): it reads the
//! shared store, is checked only for a request that would wait for
//! approval, and answers the same `429 too_many_requests`.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jit_core::Principal;

use crate::config::Limits;
use crate::error::ApiError;

/// A refusal with `429 Too Many Requests`.
#[derive(Debug)]
pub struct TooMany {
    message: String,
    retry_after: Option<Duration>,
}

impl IntoResponse for TooMany {
    fn into_response(self) -> Response {
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            self.message,
        )
        .into_response();
        if let Some(d) = self.retry_after {
            // Whole seconds, rounded up: a client that waits that long gets through.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// The submit limits of one server process.
pub struct SubmitLimits {
    rate: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for SubmitLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitLimits")
            .field("rate", &self.rate.is_some())
            .finish()
    }
}

impl SubmitLimits {
    /// The rate from `[limits]`; a zero turns it off.
    pub fn new(limits: &Limits) -> Self {
        let rate = NonZeroU32::new(limits.submits_per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(limits.submit_burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        Self { rate }
    }

    /// Admits one new request (or extension) by `p`, or refuses it as too
    /// fast, with `Retry-After`.
    pub fn admit(&self, p: &Principal) -> Result<(), TooMany> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let key = p.id.as_str();
        if let Err(not_until) = rate.check_key(&key.to_string()) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(TooMany {
                message: format!(
                    "too many requests from `{key}`: slow down and retry in {}s",
                    wait.as_secs().max(1)
                ),
                retry_after: Some(wait),
            });
        }
        // Forget subjects that are back to a full burst, now and then.
        if rate.len() > 10_000 {
            rate.retain_recent();
        }
        Ok(())
    }
}
