//! Faults injected by rule: the next N requests that match answer with a
//! chosen status, arrive late, or lose their connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::RecordedRequest;

/// Which requests a [`Fault`] applies to.
#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Contains(String),
}

#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Answer with the fault's status, headers and body.
    Respond,
    /// Close the connection without an answer.
    Drop,
    /// Let the routes answer (after the delay).
    Pass,
}

/// A caller's extra condition on a request (see [`Fault::when`]).
#[derive(Clone)]
struct Predicate(Arc<dyn Fn(&RecordedRequest) -> bool + Send + Sync>);

impl std::fmt::Debug for Predicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Predicate(..)")
    }
}

#[derive(Debug, Clone)]
enum RetryAfter {
    Seconds(u64),
    /// An HTTP-date this far ahead of the fake's clock.
    DateIn(Duration),
}

/// A rule for the next requests that match: by default every method and
/// path, once.
///
/// ```
/// # use jit_core::testing::fake::Fault;
/// # use std::time::Duration;
/// // The next two PUTs under /subscriptions/ are throttled.
/// let f = Fault::respond(429)
///     .method("PUT")
///     .path_prefix("/subscriptions/")
///     .times(2)
///     .retry_after_secs(7)
///     .json(serde_json::json!({"error": {"code": "TooManyRequests"}}));
/// // The next token request loses its connection after 50 ms.
/// let g = Fault::drop_connection().path_contains("/oauth2/").delayed(Duration::from_millis(50));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a fault does nothing until given to `FakeServer::inject`"]
pub struct Fault {
    method: Option<String>,
    path: PathMatch,
    when: Option<Predicate>,
    skip: usize,
    times: usize,
    pub(crate) action: Action,
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
    retry_after: Option<RetryAfter>,
    pub(crate) delay: Option<Duration>,
}

impl Fault {
    fn new(action: Action, status: u16) -> Self {
        Self {
            method: None,
            path: PathMatch::Any,
            when: None,
            skip: 0,
            times: 1,
            action,
            status,
            body: Vec::new(),
            headers: Vec::new(),
            retry_after: None,
            delay: None,
        }
    }

    /// Answers with `status` (and an empty body unless [`body`](Self::body)
    /// or [`json`](Self::json) says otherwise); the routes never see it.
    pub fn respond(status: u16) -> Self {
        Self::new(Action::Respond, status)
    }

    /// Closes the connection without answering (the client sees a reset or
    /// an incomplete message, as when a load balancer drops it).
    pub fn drop_connection() -> Self {
        Self::new(Action::Drop, 0)
    }

    /// Lets the routes answer, `delay` late (a slow service, for client
    /// timeouts). Real time: the fake's clock does not move.
    pub fn pass_after(delay: Duration) -> Self {
        let mut f = Self::new(Action::Pass, 0);
        f.delay = Some(delay);
        f
    }

    /// Only requests with this method (case-insensitive).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests to exactly this path (as sent, percent-encoded, no query).
    pub fn path(mut self, path: &str) -> Self {
        self.path = PathMatch::Exact(path.to_string());
        self
    }

    /// Only requests whose path starts with `prefix`.
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path = PathMatch::Prefix(prefix.to_string());
        self
    }

    /// Only requests whose path contains `part`.
    pub fn path_contains(mut self, part: &str) -> Self {
        self.path = PathMatch::Contains(part.to_string());
        self
    }

    /// Only requests for which `predicate` holds, beyond method and path:
    /// a header, a query parameter, a body field (the PIM request whose
    /// `requestType` is `AdminRemove`). It sees the request as recorded,
    /// so secret values are already redacted.
    pub fn when(
        mut self,
        predicate: impl Fn(&RecordedRequest) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.when = Some(Predicate(Arc::new(predicate)));
        self
    }

    /// Applies to the next `n` matching requests (default 1), then never again.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    /// Lets the first `n` matching requests through untouched, then applies
    /// (the second `setIamPolicy` conflicts, not the first).
    pub fn skip(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    /// The answer's body, as `text/plain`.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into().into_bytes();
        self.set_header("content-type", "text/plain; charset=utf-8");
        self
    }

    /// The answer's body, as `application/json`.
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.set_header("content-type", "application/json");
        self
    }

    /// An extra header on the answer.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `Retry-After: <n>` (seconds) on the answer.
    pub fn retry_after_secs(mut self, n: u64) -> Self {
        self.retry_after = Some(RetryAfter::Seconds(n));
        self
    }

    /// `Retry-After: <HTTP-date>`, `after` ahead of the fake's clock at the
    /// time of the answer.
    pub fn retry_after_date(mut self, after: Duration) -> Self {
        self.retry_after = Some(RetryAfter::DateIn(after));
        self
    }

    /// Waits `delay` (real time) before answering or dropping.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    fn matches(&self, req: &RecordedRequest) -> bool {
        if self
            .method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(&req.method))
        {
            return false;
        }
        let path = req.path.as_str();
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Contains(p) => path.contains(p.as_str()),
        };
        path_ok && self.when.as_ref().is_none_or(|w| (w.0)(req))
    }

    /// The `Retry-After` value at `now`, if any.
    pub(crate) fn retry_after_value(&self, now: DateTime<Utc>) -> Option<String> {
        match self.retry_after.as_ref()? {
            RetryAfter::Seconds(n) => Some(n.to_string()),
            RetryAfter::DateIn(d) => {
                let at = now + chrono::TimeDelta::from_std(*d).unwrap_or(chrono::TimeDelta::zero());
                // IMF-fixdate (RFC 9110 section 5.6.7).
                Some(at.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            }
        }
    }
}

/// A fault given to a server: how often it has fired, how often it will.
#[derive(Debug, Clone)]
pub struct FaultHandle(Arc<Armed>);

#[derive(Debug)]
pub(crate) struct Armed {
    pub(crate) fault: Fault,
    skip: AtomicUsize,
    remaining: AtomicUsize,
    fired: AtomicUsize,
}

impl FaultHandle {
    /// Requests it has answered so far.
    pub fn fired(&self) -> usize {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Requests it will still answer.
    pub fn remaining(&self) -> usize {
        self.0.remaining.load(Ordering::SeqCst)
    }

    /// Stops it now, whatever is left.
    pub fn disarm(&self) {
        self.0.remaining.store(0, Ordering::SeqCst);
    }
}

/// The server's rules, in the order they were given.
#[derive(Debug, Default)]
pub(crate) struct Faults(Mutex<Vec<Arc<Armed>>>);

impl Faults {
    pub(crate) fn add(&self, fault: Fault) -> FaultHandle {
        let armed = Arc::new(Armed {
            skip: AtomicUsize::new(fault.skip),
            remaining: AtomicUsize::new(fault.times),
            fired: AtomicUsize::new(0),
            fault,
        });
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|a| a.remaining.load(Ordering::SeqCst) > 0);
        all.push(armed.clone());
        FaultHandle(armed)
    }

    pub(crate) fn clear(&self) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for a in all.iter() {
            a.remaining.store(0, Ordering::SeqCst);
        }
        all.clear();
    }

    /// The first live rule that matches, charged one use. Under the lock, so
    /// concurrent requests never take more uses than were given.
    pub(crate) fn take(&self, req: &RecordedRequest) -> Option<Arc<Armed>> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // `disarm` does not take the lock: charge with a checked decrement.
        let dec = |n: &AtomicUsize| {
            n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        let hit = all.iter().find(|a| {
            if a.remaining.load(Ordering::SeqCst) == 0 || !a.fault.matches(req) {
                return false;
            }
            // A request this rule lets through may still meet a later rule.
            if dec(&a.skip) {
                return false;
            }
            dec(&a.remaining)
        })?;
        hit.fired.fetch_add(1, Ordering::SeqCst);
        Some(hit.clone())
    }
}
