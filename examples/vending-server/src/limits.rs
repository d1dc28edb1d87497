//! Per-principal limits on new requests: how fast one verified subject may
//! submit (a [`governor`] keyed rate limiter, GCRA), and how many pending
//! requests one subject may hold. Both are keyed by the exact subject the
//! identity provider verified, never by IP address: many people share an
//! address, and one person can use many.
//!
//! The limits are per process. With several replicas on one database the
//! rate is per replica; the pending cap reads the shared store, so it holds
//! across replicas up to requests submitted at the same moment.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jit_core::{Broker, ListFilter, Principal, State};

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
    max_pending: usize,
    /// With a pending cap, one submit at a time per subject, so parallel
    /// submits cannot race past the cap (entries go when no submit holds them).
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for SubmitLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitLimits")
            .field("rate", &self.rate.is_some())
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}

/// Held while one subject's submit runs; see [`SubmitLimits::admit`].
pub struct Admitted<'a> {
    limits: &'a SubmitLimits,
    key: String,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        drop(self.lock.take());
        if let Ok(mut m) = self.limits.in_flight.lock() {
            // Only the map holds it: nobody else is submitting as this subject.
            if m.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
                m.remove(&self.key);
            }
        }
    }
}

impl SubmitLimits {
    /// The limits from `[limits]`; a zero turns one off.
    pub fn new(limits: &Limits) -> Self {
        let rate = NonZeroU32::new(limits.submits_per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(limits.submit_burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        Self {
            rate,
            max_pending: limits.max_pending_per_requester,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one new request by `p`, or refuses it: too fast (with
    /// `Retry-After`), or too many pending. Hold the result until the
    /// request is stored.
    pub async fn admit(&self, broker: &Broker, p: &Principal) -> Result<Admitted<'_>, Response> {
        let key = p.id.as_str().to_string();
        if let Some(rate) = &self.rate {
            if let Err(not_until) = rate.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(TooMany {
                    message: format!(
                        "too many requests from `{key}`: slow down and retry in {}s",
                        wait.as_secs().max(1)
                    ),
                    retry_after: Some(wait),
                }
                .into_response());
            }
            // Forget subjects that are back to a full burst, now and then.
            if rate.len() > 10_000 {
                rate.retain_recent();
            }
        }
        if self.max_pending == 0 {
            return Ok(Admitted {
                limits: self,
                key,
                lock: None,
            });
        }
        let lock = {
            let mut m = self
                .in_flight
                .lock()
                .map_err(|_| ApiError::from(jit_core::Error::Store("lock poisoned".into())))
                .map_err(IntoResponse::into_response)?;
            m.entry(key.clone()).or_default().clone()
        };
        let admitted = Admitted {
            limits: self,
            key,
            lock: Some(lock.lock_owned().await),
        };
        {
            let pending = broker
                .list(&ListFilter {
                    requester: Some(p.id.to_string()),
                    states: vec![State::Pending],
                    limit: self.max_pending,
                    ..ListFilter::default()
                })
                .await
                .map_err(|e| ApiError::from(e).into_response())?;
            if pending.len() >= self.max_pending {
                return Err(TooMany {
                    message: format!(
                        "`{}` already has {} pending requests, the most one person may hold: cancel one or wait for decisions",
                        admitted.key, self.max_pending
                    ),
                    retry_after: None,
                }
                .into_response());
            }
        }
        Ok(admitted)
    }
}
