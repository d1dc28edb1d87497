//! The in-process ledger of what a provider issued.
//!
//! A provider keeps one so that a repeated `issue` for the same grant
//! returns what the first one made (idempotency), so that `find` answers
//! without a remote call where the cloud cannot list by name, and so that
//! `revoke` knows details its caller's record may lack. It lives in the
//! process: after a restart it is empty, which each provider must make safe
//! (native expiry, revocation keyed by grant id, `find` at the cloud).
//! Entries are pruned once their access has been over for the retention.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::types::GrantId;

struct Entry<T> {
    value: T,
    expires_at: DateTime<Utc>,
}

/// See the [module docs](self).
pub struct Ledger<T> {
    retention: TimeDelta,
    entries: Mutex<HashMap<GrantId, Entry<T>>>,
}

impl<T> std::fmt::Debug for Ledger<T> {
    // Values may hold signing claims or session details: show only the size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field(
                "entries",
                &self.entries.lock().map(|m| m.len()).unwrap_or_default(),
            )
            .field("retention_secs", &self.retention.num_seconds())
            .finish()
    }
}

impl<T: Clone> Ledger<T> {
    /// An empty ledger keeping each entry until `retention` after its expiry.
    pub fn new(retention: Duration) -> Self {
        Self {
            retention: TimeDelta::from_std(retention).unwrap_or(TimeDelta::MAX),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<GrantId, Entry<T>>> {
        // Plain data, each change a single insert: a panic elsewhere cannot
        // leave it half-written.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prune(&self, map: &mut HashMap<GrantId, Entry<T>>, now: DateTime<Utc>) {
        let retention = self.retention;
        map.retain(|_, e| {
            e.expires_at
                .checked_add_signed(retention)
                .is_none_or(|until| until >= now)
        });
    }

    /// The entry for `grant`, if any.
    pub fn get(&self, grant: GrantId) -> Option<T> {
        self.lock().get(&grant).map(|e| e.value.clone())
    }

    /// The expiry recorded for `grant`, if any.
    pub fn expires_at(&self, grant: GrantId) -> Option<DateTime<Utc>> {
        self.lock().get(&grant).map(|e| e.expires_at)
    }

    /// Records `value` for `grant` (replacing an earlier entry) and prunes.
    pub fn insert(&self, grant: GrantId, value: T, expires_at: DateTime<Utc>, now: DateTime<Utc>) {
        let mut map = self.lock();
        self.prune(&mut map, now);
        map.insert(grant, Entry { value, expires_at });
    }

    /// Replaces `grant`'s entry with what `f` makes of the earlier one (if
    /// any), atomically, and returns it: for a repeated issue that must
    /// keep the later of two expiries.
    pub fn update(
        &self,
        grant: GrantId,
        now: DateTime<Utc>,
        f: impl FnOnce(Option<&T>) -> (T, DateTime<Utc>),
    ) -> T {
        let mut map = self.lock();
        self.prune(&mut map, now);
        let (value, expires_at) = f(map.get(&grant).map(|e| &e.value));
        map.insert(
            grant,
            Entry {
                value: value.clone(),
                expires_at,
            },
        );
        value
    }

    /// The entry for `grant`, or the one `make` builds, recorded under the
    /// same lock, so two concurrent issues of one grant get one entry.
    pub fn get_or_try_insert_with<E>(
        &self,
        grant: GrantId,
        now: DateTime<Utc>,
        make: impl FnOnce() -> Result<(T, DateTime<Utc>), E>,
    ) -> Result<T, E> {
        let mut map = self.lock();
        self.prune(&mut map, now);
        if let Some(e) = map.get(&grant) {
            return Ok(e.value.clone());
        }
        let (value, expires_at) = make()?;
        map.insert(
            grant,
            Entry {
                value: value.clone(),
                expires_at,
            },
        );
        Ok(value)
    }

    /// Forgets `grant`.
    pub fn remove(&self, grant: GrantId) -> Option<T> {
        self.lock().remove(&grant).map(|e| e.value)
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn entries_live_until_retention_after_expiry() {
        let ledger = Ledger::new(Duration::from_secs(60));
        let (a, b) = (GrantId::new(), GrantId::new());
        ledger.insert(a, "a", t(100), t(0));
        ledger.insert(b, "b", t(1000), t(0));
        // Pruning happens on writes; a is expired by 60 s exactly: kept.
        ledger.insert(GrantId::new(), "c", t(1000), t(160));
        assert_eq!(ledger.get(a), Some("a"));
        ledger.insert(GrantId::new(), "d", t(1000), t(161));
        assert_eq!(ledger.get(a), None);
        assert_eq!(ledger.get(b), Some("b"));
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn update_sees_the_earlier_entry() {
        let ledger = Ledger::new(Duration::from_secs(60));
        let g = GrantId::new();
        ledger.insert(g, 5, t(100), t(0));
        let kept = ledger.update(g, t(1), |prev| (prev.copied().unwrap_or(0).max(3), t(200)));
        assert_eq!(kept, 5);
        assert_eq!(ledger.expires_at(g), Some(t(200)));
    }

    #[test]
    fn get_or_insert_makes_once() {
        let ledger = Ledger::new(Duration::from_secs(60));
        let g = GrantId::new();
        let first: Result<_, ()> = ledger.get_or_try_insert_with(g, t(0), || Ok((1, t(100))));
        let second: Result<_, ()> = ledger.get_or_try_insert_with(g, t(0), || Ok((2, t(100))));
        assert_eq!((first, second), (Ok(1), Ok(1)));
        let failed: Result<i32, &str> =
            ledger.get_or_try_insert_with(GrantId::new(), t(0), || Err("no"));
        assert_eq!(failed, Err("no"));
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger.remove(g), Some(1));
        assert!(ledger.is_empty());
    }
}
