//! Named leases held in the shared [`Store`], for read-modify-writes of
//! things outside the store that have no compare-and-set of their own.
//!
//! IAM inline policies have no etag: two broker processes that read a role's
//! revocation policy, add an entry and write it back can each erase the
//! other's entry. A lease named after the document (`aws:revocations:<role
//! arn>`) makes one process at a time its writer. Any provider can use the
//! same helper for its own read-modify-writes.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn jit_core::Store>) -> jit_core::Result<()> {
//! use std::sync::Arc;
//! use jit_core::lease::{self, LeaseOptions};
//! use jit_core::SystemClock;
//!
//! let holder = lease::holder_id("aws");
//! let written = lease::with_lease(
//!     store,
//!     Arc::new(SystemClock),
//!     "aws:revocations:arn:aws:iam::123456789012:role/deploy",
//!     &holder,
//!     &LeaseOptions::default(),
//!     |lease| async move {
//!         // read ...
//!         lease.confirm().await?; // still ours: safe to write
//!         // write ...
//!         Ok::<_, jit_core::Error>(true)
//!     },
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Contract
//!
//! - [`Lease::acquire`] waits for the key with jittered, growing backoff and
//!   gives up after [`LeaseOptions::wait`] with [`Error::Unavailable`]
//!   (transient: the broker retries a revocation that failed this way).
//! - The work must call [`Lease::confirm`] right before each guarded write
//!   and stop when it fails: that is how a holder whose lease lapsed (a
//!   long pause, a slow call) learns it before it overwrites the next
//!   holder's work. Each write must finish well within
//!   [`LeaseOptions::ttl`] of its confirmation.
//! - [`with_lease`] releases the lease when the work returns, whatever it
//!   returned. If the work is cancelled (its future dropped) or the process
//!   dies, the lease lapses after `ttl`: nobody waits longer than that for
//!   a dead holder.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::Store;

/// How long a lease lasts and how long to wait for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long an acquired or confirmed lease lasts (default 30 s): the
    /// longest a dead holder can block the key, and the bound on the time
    /// between a confirmation and the end of the write it guards.
    pub ttl: Duration,
    /// How long [`Lease::acquire`] keeps trying (default 60 s).
    pub wait: Duration,
    /// The first pause between attempts (default 20 ms); it doubles up to
    /// `max_backoff`, with random jitter so waiters do not move in step.
    pub first_backoff: Duration,
    /// The longest pause between attempts (default 500 ms).
    pub max_backoff: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(60),
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// A unique holder id for this process (or broker): `<prefix>-<random uuid>`.
pub fn holder_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A lease held on one key. Cheap to clone; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Lease {
    inner: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    key: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// Takes the lease `key` for `holder`, waiting up to `options.wait`.
    /// A lease still held by someone else after that is
    /// [`Error::Unavailable`]; store errors are returned as they are.
    pub async fn acquire(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        key: &str,
        holder: &str,
        options: &LeaseOptions,
    ) -> Result<Lease> {
        let started = tokio::time::Instant::now();
        let mut pause = options.first_backoff;
        loop {
            if store
                .try_acquire_lease(key, holder, options.ttl, clock.now())
                .await?
            {
                return Ok(Lease {
                    inner: Arc::new(Held {
                        store,
                        clock,
                        key: key.to_string(),
                        holder: holder.to_string(),
                        ttl: options.ttl,
                    }),
                });
            }
            let waited = started.elapsed();
            if waited >= options.wait {
                return Err(Error::Unavailable {
                    what: format!("lease `{key}`"),
                    message: format!(
                        "another holder kept it for {}s; retry later",
                        waited.as_secs()
                    ),
                });
            }
            // Half to all of the pause, at random, and never past the deadline.
            let nanos = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
            let jittered = Duration::from_nanos(nanos / 2 + OsRng.next_u64() % (nanos / 2 + 1));
            tokio::time::sleep(jittered.min(options.wait - waited)).await;
            pause = (pause * 2).min(options.max_backoff);
        }
    }

    /// Renews the lease for another `ttl`; call it right before each write
    /// the lease guards. An error means the lease lapsed (someone else may
    /// hold it now, or may have held it since) and the write must not
    /// happen: [`Error::Unavailable`], so callers retry from a fresh read.
    pub async fn confirm(&self) -> Result<()> {
        let h = &self.inner;
        if h.store
            .renew_lease(&h.key, &h.holder, h.ttl, h.clock.now())
            .await?
        {
            Ok(())
        } else {
            Err(Error::Unavailable {
                what: format!("lease `{}`", h.key),
                message: "the lease lapsed before the write; retry from a fresh read".into(),
            })
        }
    }

    /// Gives the lease up. Returns whether it was still held (`false`: it
    /// had lapsed and perhaps been taken by another holder).
    pub async fn release(&self) -> Result<bool> {
        self.inner
            .store
            .release_lease(&self.inner.key, &self.inner.holder)
            .await
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Who holds it.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }
}

/// Acquires `key` (see [`Lease::acquire`]), runs `work` with the lease, and
/// releases it whatever `work` returned. `work` must [`Lease::confirm`]
/// before each write it guards. A failed release is logged, not returned:
/// the work is done, and the lease lapses by itself.
pub async fn with_lease<T, E, F, Fut>(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    key: &str,
    holder: &str,
    options: &LeaseOptions,
    work: F,
) -> std::result::Result<T, E>
where
    E: From<Error>,
    F: FnOnce(Lease) -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let lease = Lease::acquire(store, clock, key, holder, options).await?;
    let out = work(lease.clone()).await;
    match lease.release().await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(key, holder, "lease lapsed before the work finished")
        }
        Err(e) => {
            tracing::warn!(key, holder, error = %e, "could not release lease; it lapses by itself")
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::MemoryStore;
    use chrono::TimeDelta;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn quick() -> LeaseOptions {
        LeaseOptions {
            ttl: Duration::from_secs(30),
            wait: Duration::from_millis(200),
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn work_runs_under_the_lease_and_releases_it() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::starting_now());
        let out: Result<u32> = with_lease(store.clone(), clock.clone(), "k", "a", &quick(), |l| {
            let store = store.clone();
            let now = clock.now();
            async move {
                assert!(
                    !store
                        .try_acquire_lease("k", "b", Duration::from_secs(1), now)
                        .await?
                );
                l.confirm().await?;
                Ok(7)
            }
        })
        .await;
        assert_eq!(out.unwrap(), 7);
        assert!(store
            .try_acquire_lease("k", "b", Duration::from_secs(1), clock.now())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn released_even_when_the_work_fails() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::starting_now());
        let out: Result<()> = with_lease(
            store.clone(),
            clock.clone(),
            "k",
            "a",
            &quick(),
            |_| async { Err(Error::Store("boom".into())) },
        )
        .await;
        assert!(matches!(out, Err(Error::Store(_))));
        assert!(store
            .try_acquire_lease("k", "b", Duration::from_secs(1), clock.now())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_held_key_is_unavailable_after_the_wait() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::starting_now());
        assert!(store
            .try_acquire_lease("k", "other", Duration::from_secs(30), clock.now())
            .await
            .unwrap());
        let ran = AtomicUsize::new(0);
        let out: Result<()> = with_lease(store, clock, "k", "a", &quick(), |_| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await;
        let err = out.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert!(err.is_transient());
        assert!(err.to_string().contains("lease `k`"), "{err}");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the work never ran");
    }

    #[tokio::test]
    async fn a_waiter_gets_the_key_once_the_holder_releases() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::starting_now());
        let first = Lease::acquire(store.clone(), clock.clone(), "k", "a", &quick())
            .await
            .unwrap();
        let waiter = {
            let (store, clock) = (store.clone(), clock.clone());
            tokio::spawn(async move {
                let mut o = quick();
                o.wait = Duration::from_secs(5);
                Lease::acquire(store, clock, "k", "b", &o).await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(first.release().await.unwrap());
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(second.holder(), "b");
    }

    #[tokio::test]
    async fn a_lapsed_lease_cannot_confirm() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = ManualClock::starting_now();
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let lease = Lease::acquire(store.clone(), shared.clone(), "k", "a", &quick())
            .await
            .unwrap();
        lease.confirm().await.unwrap();
        clock.advance(TimeDelta::seconds(31));
        // Someone else takes the lapsed key and gives it back: the first
        // holder must still not write.
        assert!(store
            .try_acquire_lease("k", "b", Duration::from_secs(1), shared.now())
            .await
            .unwrap());
        assert!(store.release_lease("k", "b").await.unwrap());
        let err = lease.confirm().await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert!(!lease.release().await.unwrap());
    }

    #[test]
    fn holder_ids_are_unique() {
        let (a, b) = (holder_id("aws"), holder_id("aws"));
        assert_ne!(a, b);
        assert!(a.starts_with("aws-"));
    }
}
