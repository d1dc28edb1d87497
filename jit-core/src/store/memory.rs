//! An in-memory store for tests and single-process demos. Nothing survives a restart.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{check_versions, lease_until, ListFilter, Store};
use crate::audit::{AuditEvent, AuditRecord, GENESIS_HASH};
use crate::error::{Error, Result};
use crate::types::{RequestId, RequestRecord, State};

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<RequestId, RequestRecord>,
    order: Vec<RequestId>,
    audit: Vec<AuditRecord>,
    /// Lease key -> (holder, end).
    leases: HashMap<String, (String, DateTime<Utc>)>,
}

impl Inner {
    fn append(&mut self, events: &[AuditEvent]) -> Vec<AuditRecord> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let prev = self
                .audit
                .last()
                .map(|r| r.hash.clone())
                .unwrap_or_else(|| GENESIS_HASH.to_string());
            let r = e.clone().chain(self.audit.len() as u64 + 1, &prev);
            self.audit.push(r.clone());
            out.push(r);
        }
        out
    }
}

/// In-memory [`Store`]. One mutex makes every transition atomic.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::Store("memory store lock poisoned".into()))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(
        &self,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(0, record)?;
        let mut g = self.lock()?;
        if g.records.contains_key(&record.id) {
            return Err(Error::Conflict {
                request: record.id,
                expected: 0,
            });
        }
        g.records.insert(record.id, record.clone());
        g.order.push(record.id);
        Ok(g.append(events))
    }

    async fn update(
        &self,
        expected_version: u64,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(expected_version, record)?;
        let mut g = self.lock()?;
        let current = g
            .records
            .get(&record.id)
            .ok_or_else(|| Error::request_not_found(record.id))?;
        if current.version != expected_version {
            return Err(Error::Conflict {
                request: record.id,
                expected: expected_version,
            });
        }
        g.records.insert(record.id, record.clone());
        Ok(g.append(events))
    }

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        Ok(self.lock()?.records.get(&id).cloned())
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<RequestRecord>> {
        let g = self.lock()?;
        Ok(g.order
            .iter()
            .rev()
            .filter_map(|id| g.records.get(id))
            .filter(|r| filter.matches(r))
            .take(filter.effective_limit())
            .cloned()
            .collect())
    }

    async fn due(
        &self,
        states: &[State],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>> {
        let g = self.lock()?;
        let mut v: Vec<_> = g
            .records
            .values()
            .filter(|r| states.contains(&r.state) && r.due_at().is_some_and(|d| d <= now))
            .cloned()
            .collect();
        v.sort_by_key(|r| r.due_at());
        v.truncate(limit);
        Ok(v)
    }

    async fn count_by_state(&self) -> Result<Vec<(State, u64)>> {
        let g = self.lock()?;
        let mut out: Vec<(State, u64)> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for r in g.records.values() {
            if let Some((_, n)) = out.iter_mut().find(|(s, _)| *s == r.state) {
                *n += 1;
            }
        }
        Ok(out)
    }

    async fn audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let g = self.lock()?;
        let start = from_seq.saturating_sub(1) as usize;
        Ok(g.audit.iter().skip(start).take(limit).cloned().collect())
    }

    async fn try_acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let until = lease_until(now, ttl)?;
        let mut g = self.lock()?;
        let free = g
            .leases
            .get(key)
            .is_none_or(|(h, end)| h == holder || *end <= now);
        if free {
            g.leases
                .insert(key.to_string(), (holder.to_string(), until));
        }
        Ok(free)
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let until = lease_until(now, ttl)?;
        let mut g = self.lock()?;
        match g.leases.get_mut(key) {
            Some((h, end)) if h == holder && *end > now => {
                *end = until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<bool> {
        let mut g = self.lock()?;
        let held = g.leases.get(key).is_some_and(|(h, _)| h == holder);
        if held {
            g.leases.remove(key);
        }
        Ok(held)
    }
}
