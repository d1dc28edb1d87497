//! Backoff and bounded retries, for every provider alike.
//!
//! Two loops every cloud needs: a read-modify-write retried when someone
//! else wrote in between (GCP's policy etag, Azure's role assignment
//! conflicts), and a call retried when the cloud throttles (429 with
//! `Retry-After`). Both are bounded: after `max_attempts` the last error is
//! returned and the broker's own retry (with its audit trail) takes over.
//! A `Retry-After` longer than the backoff's maximum is not slept through
//! inside a call either: the error goes back to the caller at once.

use std::future::Future;
use std::time::Duration;

use rand_core::{OsRng, RngCore};

use crate::error::Error;

/// Exponential backoff: `initial · 2^attempt`, at most `max`, with
/// optional "equal jitter" (a random point in the upper half of the step),
/// so that replicas retrying the same conflict do not collide again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: bool,
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s, jittered.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5)).with_jitter(true)
    }
}

impl Backoff {
    /// Doubling from `initial` up to `max`, without jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < initial.as_nanos() {
            initial
        } else {
            max
        };
        Self {
            initial,
            max,
            jitter: false,
        }
    }

    /// Turns jitter on or off.
    pub const fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay, and the longest `Retry-After` slept through.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before retry number `attempt + 1` (attempt 0 is the first
    /// retry). Without jitter exactly `min(initial · 2^attempt, max)`; with
    /// jitter between half of that and all of it.
    pub fn delay(&self, attempt: u32) -> Duration {
        let step = self
            .initial
            .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        if !self.jitter || step.is_zero() {
            return step;
        }
        let half = step / 2;
        let span = (step - half).as_nanos().max(1) as u64;
        half + Duration::from_nanos(OsRng.next_u64() % span)
    }
}

/// The delay an error asks for (a throttle's `Retry-After`). Implemented
/// for [`Error`]; a provider's private error type implements it so that
/// [`retry_on`] can run before the error is converted.
pub trait RetryAfter {
    /// The wait the remote side asked for, if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl RetryAfter for Error {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Runs `op` until it succeeds, fails with an error `retryable` refuses,
/// or `max_attempts` calls have been made (at least one), waiting
/// [`Backoff::delay`] between calls, or the error's
/// [`RetryAfter::retry_after`] when longer. An asked-for wait above
/// [`Backoff::max`] ends the loop with that error at once.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use jit_core::provider::retry::{retry_on, Backoff};
/// use jit_core::Error;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let calls = AtomicU32::new(0);
/// let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(10));
/// let out = retry_on(&backoff, 5, Error::is_transient, || async {
///     if calls.fetch_add(1, Ordering::SeqCst) < 2 {
///         Err(Error::Unavailable { what: "fake".into(), message: "busy".into() })
///     } else {
///         Ok("written")
///     }
/// })
/// .await;
/// assert_eq!(out.unwrap(), "written");
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # });
/// ```
pub async fn retry_on<T, E, Fut>(
    backoff: &Backoff,
    max_attempts: u32,
    retryable: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Fut,
) -> Result<T, E>
where
    E: RetryAfter,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0u32;
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        attempt += 1;
        if attempt >= max_attempts.max(1) || !retryable(&err) {
            return Err(err);
        }
        let asked = err.retry_after();
        if asked.is_some_and(|d| d > backoff.max()) {
            return Err(err);
        }
        let wait = backoff.delay(attempt - 1).max(asked.unwrap_or_default());
        tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, "retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let got: Vec<_> = (0..6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(200), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_jitter(true);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = b.delay(2);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter must vary");
    }

    fn throttled(after: Option<Duration>) -> Error {
        Error::Throttled {
            provider: "p".into(),
            operation: "issue",
            retry_after: after,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_and_honours_retry_after() {
        let calls = AtomicU32::new(0);
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(5));
        let start = tokio::time::Instant::now();
        let out: Result<(), _> = retry_on(&b, 3, Error::is_transient, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(throttled(Some(Duration::from_secs(2))))
        })
        .await;
        assert!(matches!(out, Err(Error::Throttled { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Two waits of the asked-for 2 s, not the 10 ms backoff.
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_maximum_returns_at_once() {
        let calls = AtomicU32::new(0);
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(5));
        let out: Result<(), _> = retry_on(&b, 5, Error::is_transient, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(throttled(Some(Duration::from_secs(60))))
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = retry_on(&Backoff::default(), 5, Error::is_transient, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::AuditFailed("x".into()))
        })
        .await;
        assert!(matches!(out, Err(Error::AuditFailed(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
