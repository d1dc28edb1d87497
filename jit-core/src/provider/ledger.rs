//! The in-process ledger of what a provider issued.
//!
//! A provider keeps one so that a repeated `issue` for the same grant
//! returns what the first one made (idempotency), so that `find` answers
//! without a remote call where the cloud cannot list by name, and so that
//! `revoke` knows details its caller's record may lack. It lives in the
//! process: after a restart it is empty, which each provider must make safe
//! (native expiry, revocation keyed by grant id, `find` at the cloud).
//! Entries are pruned once their access has been over for the retention.
//! Pruning takes only the entries that are due, from an index by prune
//! time: it costs the same with ten entries or a million (it used to scan
//! every entry on every write, which at scale made each issue slower than
//! the last).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::types::GrantId;

struct Entry<T> {
    value: T,
    expires_at: DateTime<Utc>,
    /// When the entry goes: `None` when that is past the end of time.
    until: Option<DateTime<Utc>>,
}

/// The entries, and each one's prune time (`until`) in order.
struct Entries<T> {
    map: HashMap<GrantId, Entry<T>>,
    by_until: BTreeSet<(DateTime<Utc>, GrantId)>,
}

impl<T> Entries<T> {
    fn put(&mut self, grant: GrantId, entry: Entry<T>) {
        if let Some(until) = entry.until {
            self.by_until.insert((until, grant));
        }
        if let Some(old) = self.map.insert(grant, entry) {
            self.forget_until(grant, &old);
        }
    }

    fn take(&mut self, grant: GrantId) -> Option<Entry<T>> {
        let old = self.map.remove(&grant)?;
        self.forget_until(grant, &old);
        Some(old)
    }

    fn forget_until(&mut self, grant: GrantId, old: &Entry<T>) {
        let current = self.map.get(&grant).and_then(|e| e.until);
        if let Some(until) = old.until.filter(|u| Some(*u) != current) {
            self.by_until.remove(&(until, grant));
        }
    }
}

/// See the [module docs](self).
pub struct Ledger<T> {
    retention: TimeDelta,
    entries: Mutex<Entries<T>>,
}

impl<T> std::fmt::Debug for Ledger<T> {
    // Values may hold signing claims or session details: show only the size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field(
                "entries",
                &self.entries.lock().map(|m| m.map.len()).unwrap_or_default(),
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
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                by_until: BTreeSet::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<T>> {
        // Plain data, each change made before the lock is let go and
        // nothing in it panics: a panic elsewhere cannot leave it
        // half-written.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, value: T, expires_at: DateTime<Utc>) -> Entry<T> {
        Entry {
            value,
            expires_at,
            until: expires_at.checked_add_signed(self.retention),
        }
    }

    /// Drops the entries whose retention ended before `now`, earliest
    /// first, touching no other.
    fn prune(entries: &mut Entries<T>, now: DateTime<Utc>) {
        while let Some(&(until, grant)) = entries.by_until.first() {
            if until >= now {
                break;
            }
            entries.by_until.pop_first();
            entries.map.remove(&grant);
        }
    }

    /// The entry for `grant`, if any.
    pub fn get(&self, grant: GrantId) -> Option<T> {
        self.lock().map.get(&grant).map(|e| e.value.clone())
    }

    /// The expiry recorded for `grant`, if any.
    pub fn expires_at(&self, grant: GrantId) -> Option<DateTime<Utc>> {
        self.lock().map.get(&grant).map(|e| e.expires_at)
    }

    /// Records `value` for `grant` (replacing an earlier entry) and prunes.
    pub fn insert(&self, grant: GrantId, value: T, expires_at: DateTime<Utc>, now: DateTime<Utc>) {
        let mut entries = self.lock();
        Self::prune(&mut entries, now);
        let entry = self.entry(value, expires_at);
        entries.put(grant, entry);
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
        let mut entries = self.lock();
        Self::prune(&mut entries, now);
        let (value, expires_at) = f(entries.map.get(&grant).map(|e| &e.value));
        let entry = self.entry(value.clone(), expires_at);
        entries.put(grant, entry);
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
        let mut entries = self.lock();
        Self::prune(&mut entries, now);
        if let Some(e) = entries.map.get(&grant) {
            return Ok(e.value.clone());
        }
        let (value, expires_at) = make()?;
        let entry = self.entry(value.clone(), expires_at);
        entries.put(grant, entry);
        Ok(value)
    }

    /// Forgets `grant`.
    pub fn remove(&self, grant: GrantId) -> Option<T> {
        self.lock().take(grant).map(|e| e.value)
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.lock().map.len()
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

    /// A replaced entry is pruned by its new expiry, not its old one, and
    /// a removed one leaves nothing behind in the prune index.
    #[test]
    fn replaced_and_removed_entries_prune_by_what_is_kept() {
        let ledger = Ledger::new(Duration::from_secs(60));
        let (a, b, c) = (GrantId::new(), GrantId::new(), GrantId::new());
        ledger.insert(a, "a1", t(100), t(0));
        ledger.insert(a, "a2", t(1000), t(0));
        let kept = ledger.update(b, t(0), |_| ("b", t(100)));
        assert_eq!(kept, "b");
        ledger.update(b, t(0), |_| ("b", t(2000)));
        ledger.insert(c, "c", t(100), t(0));
        assert_eq!(ledger.remove(c), Some("c"));
        // Past a's and b's first expiries (and c's): both kept.
        ledger.insert(GrantId::new(), "x", t(5000), t(500));
        assert_eq!((ledger.get(a), ledger.get(b)), (Some("a2"), Some("b")));
        let inner = ledger.lock();
        assert_eq!(inner.by_until.len(), inner.map.len());
        drop(inner);
        // Past a's second expiry only.
        ledger.insert(GrantId::new(), "y", t(5000), t(1061));
        assert_eq!((ledger.get(a), ledger.get(b)), (None, Some("b")));
        // The same expiry twice (a repeated issue) keeps its index entry.
        ledger.update(b, t(1061), |_| ("b", t(2000)));
        ledger.insert(GrantId::new(), "z", t(5000), t(2061));
        assert_eq!(ledger.get(b), None);
        let inner = ledger.lock();
        assert_eq!(inner.by_until.len(), inner.map.len());
    }

    /// An expiry at the end of time is never pruned (and never overflows).
    #[test]
    fn an_entry_without_end_stays() {
        let ledger = Ledger::new(Duration::from_secs(60));
        let g = GrantId::new();
        ledger.insert(g, 1, DateTime::<Utc>::MAX_UTC, t(0));
        ledger.insert(GrantId::new(), 2, t(0), t(0));
        ledger.insert(GrantId::new(), 3, t(0), t(100_000));
        assert_eq!(ledger.get(g), Some(1));
        assert_eq!(ledger.len(), 2);
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
