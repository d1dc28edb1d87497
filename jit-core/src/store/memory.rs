//! An in-memory store for tests and single-process demos. Nothing survives a restart.
//!
//! # Indexes
//!
//! Every operation runs under one mutex, so a scan of every record blocks
//! every writer for its whole length. The store therefore keeps the same
//! indexes the SQL stores have, updated in the same critical section as the
//! record: by state and due time (the reaper's [`Store::due`]), by state and
//! grant end (start-up's [`ListFilter::ends_after`]), by state (counts and
//! state-filtered lists), by exact requester id (a principal's list) and
//! by entitlement (risk review's peers, [`Store::history`]).
//! Each is ordered by the insertion sequence, which is also the order
//! [`Store::list`] returns (newest first), so a list reads its index
//! backwards and stops at its limit. Risk review's aggregates
//! ([`Store::risk_facts`], see `risk_facts.rs`) are kept beside them, added
//! on insert and taken out on prune in the same critical section.
//!
//! # Bytes
//!
//! Records are kept as their JSON and audit records in the compact form
//! the SQL stores keep ([`AuditRecord::to_stored`]), decoded when read: a
//! decoded record's strings, sets and JSON maps take several times the
//! bytes of its text, and a store that may hold a million grants (the
//! Lambda function's default) pays that for each.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::risk_facts::{Contribution, Profiles};
use super::{check_versions, lease_until, HistoryEntry, HistoryQuery, ListFilter, Prune, Store};
use super::{RiskFacts, RiskFactsQuery};
use crate::audit::{AuditAnchor, AuditEvent, AuditRecord, GENESIS_HASH};
use crate::error::{Error, Result};
use crate::types::{RequestId, RequestRecord, State};

/// Insertion sequence: the position in [`Inner::order`].
type Seq = usize;

#[derive(Debug, Default)]
struct Inner {
    /// Each record with its insertion sequence.
    records: HashMap<RequestId, Row>,
    /// Ids by insertion sequence.
    order: Vec<RequestId>,
    /// `(state, due_at, seq)` of every record with a due time.
    by_due: BTreeSet<(State, DateTime<Utc>, Seq)>,
    /// `(state, ends_at, seq)` of every record with a grant.
    by_end: BTreeSet<(State, DateTime<Utc>, Seq)>,
    /// Insertion sequences by state.
    by_state: HashMap<State, BTreeSet<Seq>>,
    /// Insertion sequences by exact requester id.
    by_requester: HashMap<String, BTreeSet<Seq>>,
    /// Insertion sequences by entitlement.
    by_entitlement: HashMap<String, BTreeSet<Seq>>,
    /// The audit chain after `anchor`, record `anchor.seq + 1` first.
    audit: Vec<Kept>,
    /// Where the chain starts once it was pruned.
    anchor: Option<AuditAnchor>,
    /// Lease key -> (holder, end).
    leases: HashMap<String, (String, DateTime<Utc>)>,
    /// Risk review's aggregates of every record held ([`Store::risk_facts`]).
    risk: Profiles,
}

/// One request as the memory store keeps it: the record as JSON (about a
/// kilobyte, where the decoded record's strings, sets and maps take
/// several), with what a compare-and-set and a prune check beside it.
#[derive(Debug)]
struct Row {
    seq: Seq,
    version: u64,
    state: State,
    body: Box<str>,
}

impl Row {
    fn of(seq: Seq, r: &RequestRecord) -> Result<Self> {
        Ok(Self {
            seq,
            version: r.version,
            state: r.state,
            body: serde_json::to_string(r)
                .map_err(|e| Error::Store(format!("cannot encode request `{}`: {e}", r.id)))?
                .into_boxed_str(),
        })
    }

    fn decode(&self) -> Result<RequestRecord> {
        serde_json::from_str(&self.body)
            .map_err(|e| Error::Store(format!("stored request is not valid: {e}")))
    }
}

/// One audit record as the memory store keeps it: the hash as bytes and
/// the compact body of [`AuditRecord::to_stored`] (a few hundred bytes,
/// where the decoded record, its `details` a tree of maps, takes several
/// kilobytes of heap).
#[derive(Debug)]
struct Kept {
    hash: [u8; 32],
    body: Box<str>,
}

impl Inner {
    /// The `seq` of the record before `audit[0]`.
    fn base(&self) -> u64 {
        self.anchor.as_ref().map_or(0, |a| a.seq)
    }

    fn head_hash(&self) -> String {
        match (self.audit.last(), &self.anchor) {
            (Some(k), _) => hex::encode(k.hash),
            (None, Some(a)) => a.hash.clone(),
            (None, None) => GENESIS_HASH.to_string(),
        }
    }

    fn append(&mut self, events: &[AuditEvent]) -> Vec<AuditRecord> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let prev = self.head_hash();
            let r = e
                .clone()
                .chain(self.base() + self.audit.len() as u64 + 1, &prev);
            let mut hash = [0u8; 32];
            // `compute_hash` writes 64 hexadecimal digits: this cannot fail.
            let _ = hex::decode_to_slice(&r.hash, &mut hash);
            self.audit.push(Kept {
                hash,
                body: r.to_stored().into_boxed_str(),
            });
            out.push(r);
        }
        out
    }

    /// Records `from_seq..` (at most `limit`), decoded.
    fn audit_from(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let base = self.base();
        let start = usize::try_from(from_seq.saturating_sub(base + 1)).unwrap_or(usize::MAX);
        let mut prev = match start.checked_sub(1).and_then(|i| self.audit.get(i)) {
            Some(k) => hex::encode(k.hash),
            None => self
                .anchor
                .as_ref()
                .map_or_else(|| GENESIS_HASH.to_string(), |a| a.hash.clone()),
        };
        let mut out = Vec::new();
        for (i, k) in self.audit.iter().enumerate().skip(start).take(limit) {
            let hash = hex::encode(k.hash);
            let seq = base + i as u64 + 1;
            out.push(
                AuditRecord::from_stored(seq, &hash, &prev, &k.body).map_err(|e| {
                    Error::Store(format!("stored audit record {seq} is not valid: {e}"))
                })?,
            );
            prev = hash;
        }
        Ok(out)
    }

    fn index(&mut self, seq: Seq, r: &RequestRecord) {
        if let Some(due) = r.due_at() {
            self.by_due.insert((r.state, due, seq));
        }
        if let Some(end) = r.ends_at() {
            self.by_end.insert((r.state, end, seq));
        }
        self.by_state.entry(r.state).or_default().insert(seq);
        self.by_requester
            .entry(r.requester.id.as_str().to_string())
            .or_default()
            .insert(seq);
        self.by_entitlement
            .entry(r.request.entitlement.clone())
            .or_default()
            .insert(seq);
    }

    fn unindex(&mut self, seq: Seq, r: &RequestRecord) {
        if let Some(due) = r.due_at() {
            self.by_due.remove(&(r.state, due, seq));
        }
        if let Some(end) = r.ends_at() {
            self.by_end.remove(&(r.state, end, seq));
        }
        if let Some(set) = self.by_state.get_mut(&r.state) {
            set.remove(&seq);
        }
        let requester = r.requester.id.as_str();
        if let Some(set) = self.by_requester.get_mut(requester) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_requester.remove(requester);
            }
        }
        let entitlement = r.request.entitlement.as_str();
        if let Some(set) = self.by_entitlement.get_mut(entitlement) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_entitlement.remove(entitlement);
            }
        }
    }

    fn record(&self, seq: Seq) -> Option<Result<RequestRecord>> {
        self.order
            .get(seq)
            .and_then(|id| self.records.get(id))
            .map(Row::decode)
    }

    /// The insertion sequences `filter` may match, newest first: from the
    /// narrowest index the filter allows, lazily, so a list stops reading
    /// at its limit. Every candidate is still checked with
    /// [`ListFilter::matches`].
    fn candidates<'a>(&'a self, filter: &ListFilter) -> Box<dyn Iterator<Item = Seq> + 'a> {
        if let Some(requester) = &filter.requester {
            return match self.by_requester.get(requester) {
                Some(set) => Box::new(set.iter().rev().copied()),
                None => Box::new(std::iter::empty()),
            };
        }
        if filter.states.is_empty() {
            return Box::new((0..self.order.len()).rev());
        }
        let mut states = filter.states.clone();
        states.sort_unstable();
        states.dedup();
        if let Some(after) = filter.ends_after {
            // Bounded by the grants still running, whatever ended before.
            let mut seqs: Vec<Seq> = states
                .iter()
                .flat_map(|s| {
                    self.by_end
                        .range((*s, after, Seq::MAX)..)
                        .take_while(move |(state, _, _)| state == s)
                        .map(|(_, _, seq)| *seq)
                })
                .collect();
            seqs.sort_unstable_by(|a, b| b.cmp(a));
            return Box::new(seqs.into_iter());
        }
        let sets: Vec<_> = states
            .iter()
            .filter_map(|s| self.by_state.get(s))
            .map(|set| set.iter().rev().copied().peekable())
            .collect();
        Box::new(NewestFirst(sets))
    }
}

/// Merges per-state sequences, each newest first, into one newest first
/// (a record is in one state, so the inputs never share a sequence).
struct NewestFirst<I: Iterator<Item = Seq>>(Vec<std::iter::Peekable<I>>);

impl<I: Iterator<Item = Seq>> Iterator for NewestFirst<I> {
    type Item = Seq;

    fn next(&mut self) -> Option<Seq> {
        let newest = self
            .0
            .iter_mut()
            .enumerate()
            .filter_map(|(i, it)| it.peek().map(|seq| (*seq, i)))
            .max()?;
        self.0.get_mut(newest.1).and_then(Iterator::next)
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
        let seq = g.order.len();
        let row = Row::of(seq, record)?;
        g.records.insert(record.id, row);
        g.order.push(record.id);
        g.index(seq, record);
        g.risk.add(&Contribution::of(record));
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
        let old = current.decode()?;
        let seq = current.seq;
        let row = Row::of(seq, record)?;
        g.records.insert(record.id, row);
        g.unindex(seq, &old);
        g.index(seq, record);
        Ok(g.append(events))
    }

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        self.lock()?.records.get(&id).map(Row::decode).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<RequestRecord>> {
        let g = self.lock()?;
        let mut out = Vec::new();
        for r in g.candidates(filter).filter_map(|seq| g.record(seq)) {
            if out.len() >= filter.effective_limit() {
                break;
            }
            let r = r?;
            if filter.matches(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        query.check()?;
        let g = self.lock()?;
        // The narrower index: the requester's requests, else the entitlement's.
        let key = match (&query.requester, &query.entitlement) {
            (Some(r), _) => g.by_requester.get(r),
            (None, Some(e)) => g.by_entitlement.get(e),
            (None, None) => None,
        };
        let Some(seqs) = key else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for r in seqs.iter().rev().filter_map(|seq| g.record(*seq)) {
            if out.len() >= query.effective_limit() {
                break;
            }
            let e = HistoryEntry::from(&r?);
            if query.matches(&e) {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn risk_facts(&self, query: &RiskFactsQuery) -> Result<RiskFacts> {
        query.check()?;
        Ok(self.lock()?.risk.facts(query))
    }

    async fn due(
        &self,
        states: &[State],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>> {
        let g = self.lock()?;
        // The first `limit` due of each state hold the first `limit` of all.
        let mut keys: Vec<(DateTime<Utc>, Seq)> = states
            .iter()
            .flat_map(|s| {
                g.by_due
                    .range((*s, DateTime::<Utc>::MIN_UTC, 0)..=(*s, now, Seq::MAX))
                    .take(limit)
                    .map(|(_, due, seq)| (*due, *seq))
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .take(limit)
            .filter_map(|(_, seq)| g.record(seq))
            .collect()
    }

    async fn count_by_state(&self) -> Result<Vec<(State, u64)>> {
        let g = self.lock()?;
        Ok(State::ALL
            .iter()
            .map(|s| (*s, g.by_state.get(s).map_or(0, |set| set.len() as u64)))
            .collect())
    }

    async fn audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.lock()?.audit_from(from_seq, limit)
    }

    async fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        Ok(self.lock()?.anchor.clone())
    }

    async fn prune(&self, prune: &Prune) -> Result<()> {
        let mut g = self.lock()?;
        let base = g.base();
        if base != prune.after {
            return Err(Error::Store(format!(
                "the audit chain was pruned up to seq {base} since this prune was planned (after seq {}): plan it again",
                prune.after
            )));
        }
        let cut = usize::try_from(prune.anchor.seq.saturating_sub(base)).unwrap_or(usize::MAX);
        let matches = cut > 0
            && prune.anchor.seq > base
            && g.audit
                .get(cut - 1)
                .is_some_and(|k| hex::encode(k.hash) == prune.anchor.hash);
        if !matches {
            return Err(Error::Store(format!(
                "audit record {} is not stored with the hash the prune's anchor names: plan it again",
                prune.anchor.seq
            )));
        }
        // Check (and decode) everything before changing anything.
        let mut going = Vec::with_capacity(prune.records.len());
        for (id, version) in &prune.records {
            match g.records.get(id) {
                Some(row) if row.version == *version && row.state.is_final() => {
                    going.push((row.seq, row.decode()?));
                }
                _ => {
                    return Err(Error::Conflict {
                        request: *id,
                        expected: *version,
                    })
                }
            }
        }
        for (seq, r) in going {
            g.records.remove(&r.id);
            g.unindex(seq, &r);
            g.risk.remove(&Contribution::of(&r));
        }
        g.audit.drain(..cut);
        g.anchor = Some(prune.anchor.clone());
        Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::types::{
        AccessRequest, Decision, Grant, GrantDuration, GrantId, Principal, Verdict,
    };
    use chrono::TimeDelta;

    fn pending(who: &str, now: DateTime<Utc>) -> RequestRecord {
        RequestRecord {
            id: RequestId::new(),
            version: 1,
            state: State::Pending,
            requester: Principal::new(who).unwrap(),
            request: AccessRequest::new("db", GrantDuration::from_secs_i64(60).unwrap(), "x"),
            decision: Decision {
                verdict: Verdict::AutoApprove,
                max_duration: GrantDuration::from_secs_i64(60).unwrap(),
                reasons: vec![],
                risk: None,
                ticket: None,
                on_call: None,
            },
            entitlement: None,
            approvals: vec![],
            grant: None,
            extends: None,
            revocation: None,
            pending_until: Some(now),
            note: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// A transition moves the record in every index: nothing answers from
    /// where it was, everything from where it is.
    #[tokio::test]
    async fn updates_move_records_between_indexes() {
        let store = MemoryStore::new();
        let now = Utc::now();
        let r = pending("alice", now - TimeDelta::minutes(1));
        let other = pending("bob", now - TimeDelta::minutes(2));
        store.insert(&r, &[]).await.unwrap();
        store.insert(&other, &[]).await.unwrap();
        let ids = |v: Vec<RequestRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.due(&[State::Pending], now, 10).await.unwrap()),
            vec![other.id, r.id]
        );

        let mut active = r.clone();
        active.version = 2;
        active.state = State::Active;
        active.requester = Principal::new("ALICE").unwrap();
        active.grant = Some(Grant {
            id: GrantId::new(),
            starts_at: now,
            ends_at: now + TimeDelta::minutes(5),
            issued: None,
        });
        store.update(1, &active, &[]).await.unwrap();

        assert_eq!(
            ids(store.due(&[State::Pending], now, 10).await.unwrap()),
            vec![other.id]
        );
        assert!(store
            .due(&[State::Active], now, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            ids(store
                .due(&[State::Active], now + TimeDelta::minutes(5), 10)
                .await
                .unwrap()),
            vec![r.id]
        );
        let list = |requester: &str, states: Vec<State>| ListFilter {
            requester: Some(requester.into()),
            states,
            ..ListFilter::default()
        };
        assert!(store.list(&list("alice", vec![])).await.unwrap().is_empty());
        assert_eq!(
            store.list(&list("ALICE", vec![])).await.unwrap(),
            vec![active.clone()]
        );
        let by_state = |states: Vec<State>| ListFilter {
            states,
            ..ListFilter::default()
        };
        assert_eq!(
            ids(store.list(&by_state(vec![State::Pending])).await.unwrap()),
            vec![other.id]
        );
        assert_eq!(
            ids(store
                .list(&by_state(vec![State::Pending, State::Active]))
                .await
                .unwrap()),
            vec![other.id, r.id],
            "newest (last inserted) first across states"
        );
        let counts = store.count_by_state().await.unwrap();
        let count = |s: State| counts.iter().find(|(c, _)| *c == s).unwrap().1;
        assert_eq!((count(State::Pending), count(State::Active)), (1, 1));
        let live = ListFilter {
            states: vec![State::Active],
            ends_after: Some(now),
            ..ListFilter::default()
        };
        assert_eq!(ids(store.list(&live).await.unwrap()), vec![r.id]);
        let later = ListFilter {
            ends_after: Some(now + TimeDelta::minutes(5)),
            ..live
        };
        assert!(store.list(&later).await.unwrap().is_empty());
    }
}
