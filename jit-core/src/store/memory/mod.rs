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
//! The Lambda function keeps its grants here by default, so a grant must
//! cost little: about 900 bytes each at a million grants, indexes and
//! allocator overhead included (the scale bench's figure; see
//! `BENCHMARKS.md`, "Memory store: packed records and audit records").
//! Nothing is kept decoded: a decoded record's strings, sets and JSON maps
//! take several times the bytes of its text. What is kept:
//!
//! - each record packed (the private `pack` module): ids, times and hashes as bytes,
//!   strings and subtrees that several requests repeat (a requester and
//!   their groups, the decision and its reasons, the entitlement the
//!   record copies, an approval's details) kept once and shared by number,
//!   the request's own id and grant id in one byte each;
//! - the audit chain packed back to back in pages of 1,024 records (one
//!   allocation per page, not per record), each record its owner, its
//!   seal and its event packed the same way; one record in 16 keeps its
//!   hash and the others' are computed again when read (see `Chain`);
//! - indexes of 32-bit insertion sequences, keyed by state and time or by
//!   the number of a shared string (a requester, an entitlement), never by
//!   a copy of it.
//!
//! Everything reads back exactly as it was written: a record's `get`
//! returns what was inserted, and [`Store::audit`] returns the records
//! (hashes and seals included) the appends returned. Shared entries count
//! their users and go when the last one does, so a [`Store::prune`] gives
//! the memory back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::risk_facts::{Contribution, Profiles};
use super::{check_versions, lease_until, HistoryEntry, HistoryQuery, ListFilter, Prune, Store};
use super::{RiskFacts, RiskFactsQuery};
use crate::audit::{AuditAnchor, AuditEvent, AuditMac, AuditRecord, GENESIS_HASH};
use crate::error::{Error, Result};
use crate::types::{RequestId, RequestRecord, State};

mod pack;

use pack::{Owner, Pack};

/// Insertion sequence: the position in [`Inner::rows`].
type Seq = u32;

#[derive(Default)]
struct Inner {
    /// The strings and subtrees packed records and audit records share.
    pack: Pack,
    /// Each record by insertion sequence (`None` once pruned).
    rows: Vec<Option<Row>>,
    /// The ids each record's packed values (and its audit records') stand
    /// for in a byte, by insertion sequence; kept after a prune, as audit
    /// records may outlive their request.
    owners: Vec<Owner>,
    /// Insertion sequences by request id.
    ids: HashMap<RequestId, Seq>,
    /// `(state, due_at, seq)` of every record with a due time.
    by_due: BTreeSet<(State, DateTime<Utc>, Seq)>,
    /// `(state, ends_at, seq)` of every record with a grant.
    by_end: BTreeSet<(State, DateTime<Utc>, Seq)>,
    /// Insertion sequences by state.
    by_state: HashMap<State, BTreeSet<Seq>>,
    /// Insertion sequences by exact requester id (its number in `pack`,
    /// which the index holds a use of).
    by_requester: HashMap<u32, BTreeSet<Seq>>,
    /// Insertion sequences by entitlement (its number in `pack`).
    by_entitlement: HashMap<u32, BTreeSet<Seq>>,
    /// The audit chain after `anchor`, record `anchor.seq + 1` first.
    audit: Chain,
    /// Where the chain starts once it was pruned.
    anchor: Option<AuditAnchor>,
    /// Lease key -> (holder, end).
    leases: HashMap<String, (String, DateTime<Utc>)>,
    /// Risk review's aggregates of every record held ([`Store::risk_facts`]).
    risk: Profiles,
}

/// One request as the memory store keeps it: the record packed (see
/// [`pack`]), with what a compare-and-set and a prune check beside it.
struct Row {
    version: u64,
    state: State,
    body: Box<[u8]>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("stored {what} is not valid: {e}"))
}

fn encode_record(r: &RequestRecord) -> Result<Value> {
    serde_json::to_value(r)
        .map_err(|e| Error::Store(format!("cannot encode request `{}`: {e}", r.id)))
}

impl Row {
    fn value(&self, pack: &Pack, owner: &Owner) -> Result<Value> {
        pack.unpack(&self.body, owner)
            .map_err(|e| corrupt("request", e))
    }

    fn decode(&self, pack: &Pack, owner: &Owner) -> Result<RequestRecord> {
        serde_json::from_value(self.value(pack, owner)?).map_err(|e| corrupt("request", e))
    }
}

/// Audit records per [`Page`].
const PAGE: usize = 1024;
/// One audit record in this many keeps its hash (see [`Chain`]).
const HASH_EVERY: usize = 16;

/// The audit chain's records, packed back to back in pages of [`PAGE`]
/// records: each is its hash (32 bytes) if it keeps one, its owner (a
/// varint: the request's insertion sequence + 1, 0 for a request the store
/// does not hold), then its seal and its event packed (see [`pack`]). One
/// allocation per page, not per record.
///
/// A record's hash is a function of its content and the hash before it
/// ([`AuditRecord::compute_hash`]), and what is read back is exactly what
/// was written: so only one record in [`HASH_EVERY`] (by its position in
/// the pages, which a prune does not change) keeps its hash, and the
/// others' are computed again when read, from the nearest kept hash (or
/// the anchor's) onwards: a read of the chain computes one hash per
/// record, a single record at most [`HASH_EVERY`] of them. The head's
/// hash, which every append links to, is kept as well. The seals, which
/// cover the hashes, still check that the hashes read back are the ones
/// written.
#[derive(Default)]
struct Chain {
    pages: VecDeque<Page>,
    /// Records pruned from the front of the first page.
    skip: usize,
    /// Records kept.
    len: usize,
    /// The last record's hash.
    head: Option<[u8; 32]>,
}

#[derive(Default)]
struct Page {
    bytes: Vec<u8>,
    /// Where each record ends in `bytes`.
    ends: Vec<u32>,
}

impl Chain {
    /// The page to append to (a new one when the last is full).
    fn tail(&mut self) -> &mut Page {
        if self.pages.back().is_none_or(|p| p.ends.len() >= PAGE) {
            if let Some(full) = self.pages.back_mut() {
                full.bytes.shrink_to_fit();
            }
            self.pages.push_back(Page::default());
        }
        let last = self.pages.len() - 1;
        &mut self.pages[last]
    }

    /// Whether the record at position `k` in the pages keeps its hash.
    fn keeps_hash(k: usize) -> bool {
        k % HASH_EVERY == HASH_EVERY - 1
    }

    /// Whether the next record appended keeps its hash.
    fn next_keeps_hash(&self) -> bool {
        Self::keeps_hash(self.skip + self.len)
    }

    /// Record `i` of those kept (0 is the first after the anchor): its
    /// hash if it keeps one, and the rest.
    fn get(&self, i: usize) -> Option<(Option<[u8; 32]>, &[u8])> {
        if i >= self.len {
            return None;
        }
        let k = i + self.skip;
        let page = self.pages.get(k / PAGE)?;
        let j = k % PAGE;
        let start = match j.checked_sub(1) {
            Some(before) => *page.ends.get(before)? as usize,
            None => 0,
        };
        let entry = page.bytes.get(start..*page.ends.get(j)? as usize)?;
        if Self::keeps_hash(k) {
            let (hash, rest) = entry.split_at_checked(32)?;
            Some((hash.try_into().ok(), rest))
        } else {
            Some((None, entry))
        }
    }

    /// Drops the first `n` records, giving back their uses of `pack`.
    fn drain_front(&mut self, n: usize, pack: &mut Pack) -> Result<()> {
        for i in 0..n.min(self.len) {
            if let Some((_, entry)) = self.get(i) {
                let mut r = pack::Reader {
                    bytes: entry,
                    at: 0,
                };
                r.varint().map_err(|e| corrupt("audit record", e))?;
                pack.release(r.bytes.get(r.at..).unwrap_or_default())
                    .map_err(|e| corrupt("audit record", e))?;
            }
        }
        self.skip += n.min(self.len);
        self.len -= n.min(self.len);
        while self.skip >= PAGE && !self.pages.is_empty() {
            self.pages.pop_front();
            self.skip -= PAGE;
        }
        Ok(())
    }
}

impl Inner {
    /// The `seq` of the record before the first audit record kept.
    fn base(&self) -> u64 {
        self.anchor.as_ref().map_or(0, |a| a.seq)
    }

    fn head_hash(&self) -> String {
        match (self.audit.head, self.audit.len, &self.anchor) {
            (Some(head), 1.., _) => hex::encode(head),
            (_, _, Some(a)) => a.hash.clone(),
            _ => GENESIS_HASH.to_string(),
        }
    }

    /// The hash the record before record `i` links to: the anchor's (or
    /// genesis) for the first, else that record's, kept or computed from
    /// the nearest kept one.
    fn hash_before(&self, i: usize) -> Result<String> {
        let Some(last) = i.checked_sub(1) else {
            return Ok(self
                .anchor
                .as_ref()
                .map_or_else(|| GENESIS_HASH.to_string(), |a| a.hash.clone()));
        };
        if last + 1 == self.audit.len {
            return Ok(self.head_hash());
        }
        // The nearest record at or before `last` that keeps its hash.
        let mut from = last;
        let mut prev = loop {
            match self.audit.get(from) {
                Some((Some(hash), _)) => break hex::encode(hash),
                Some((None, _)) if from > 0 => from -= 1,
                _ => break self.hash_before(0)?,
            }
        };
        if self.audit.get(from).is_some_and(|(kept, _)| kept.is_none()) {
            // `from` is 0 and keeps no hash: start with it.
            from = 0;
        } else {
            from += 1;
        }
        for m in from..=last {
            prev = self.audit_record(m, &prev)?.hash;
        }
        Ok(prev)
    }

    /// Appends `events` to the chain. Each event is encoded before
    /// anything changes, so a failure leaves the chain as it was.
    fn append(&mut self, events: &[AuditEvent]) -> Result<Vec<AuditRecord>> {
        let values = events
            .iter()
            .map(|e| {
                serde_json::to_value(e)
                    .map_err(|err| Error::Store(format!("cannot encode an audit event: {err}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(events.len());
        for (e, event) in events.iter().zip(values) {
            let prev = self.head_hash();
            let r = e
                .clone()
                .chain(self.base() + self.audit.len as u64 + 1, &prev);
            let mut hash = [0u8; 32];
            // `compute_hash` writes 64 hexadecimal digits: this cannot fail.
            let _ = hex::decode_to_slice(&r.hash, &mut hash);
            let mac = match &r.mac {
                Some(m) => serde_json::json!({ "key_id": m.key_id, "tag": m.tag }),
                None => Value::Null,
            };
            let (seq, owner) = match self.ids.get(&e.request_id) {
                Some(seq) => (
                    u64::from(*seq) + 1,
                    self.owners.get(*seq as usize).copied().unwrap_or_default(),
                ),
                None => (0, Owner::default()),
            };
            let keep = self.audit.next_keeps_hash();
            let page = self.audit.tail();
            if keep {
                page.bytes.extend_from_slice(&hash);
            }
            pack::varint(seq, &mut page.bytes);
            self.pack.pack_into(&mac, owner, &mut page.bytes);
            self.pack.pack_into(&event, owner, &mut page.bytes);
            // A page of 1,024 records stays far below 4 GiB.
            page.ends
                .push(u32::try_from(page.bytes.len()).unwrap_or(u32::MAX));
            self.audit.len += 1;
            self.audit.head = Some(hash);
            out.push(r);
        }
        Ok(out)
    }

    /// Audit record `i` of those kept, read back: the seal and event
    /// unpacked, `prev_hash` the record before's, the hash kept or
    /// computed.
    fn audit_record(&self, i: usize, prev_hash: &str) -> Result<AuditRecord> {
        let seq = self.base() + i as u64 + 1;
        let bad = |e: &dyn std::fmt::Display| corrupt(&format!("audit record {seq}"), e);
        let (hash, packed) = self.audit.get(i).ok_or_else(|| bad(&"it is missing"))?;
        let mut r = pack::Reader {
            bytes: packed,
            at: 0,
        };
        let owner = match r.varint().map_err(|e| bad(&e))?.checked_sub(1) {
            Some(seq) => usize::try_from(seq)
                .ok()
                .and_then(|seq| self.owners.get(seq))
                .copied()
                .ok_or_else(|| bad(&"its request is missing"))?,
            None => Owner::default(),
        };
        let packed = packed.get(r.at..).unwrap_or_default();
        let (mac, rest) = self
            .pack
            .unpack_prefix(packed, &owner)
            .map_err(|e| bad(&e))?;
        let event = self.pack.unpack(rest, &owner).map_err(|e| bad(&e))?;
        let mut record = AuditRecord {
            seq,
            event: serde_json::from_value(event).map_err(|e| bad(&e))?,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
            mac: serde_json::from_value::<Option<AuditMac>>(mac).map_err(|e| bad(&e))?,
        };
        record.hash = match hash {
            Some(hash) => hex::encode(hash),
            None => record.compute_hash(),
        };
        Ok(record)
    }

    /// Records `from_seq..` (at most `limit`), decoded.
    fn audit_from(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let base = self.base();
        let start = usize::try_from(from_seq.saturating_sub(base + 1)).unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(self.audit.len);
        if start >= end {
            return Ok(Vec::new());
        }
        let mut prev = self.hash_before(start)?;
        let mut out = Vec::with_capacity(end.saturating_sub(start));
        for i in start..end {
            let r = self.audit_record(i, &prev)?;
            prev.clone_from(&r.hash);
            out.push(r);
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
        let requester = self.pack.hold_text(r.requester.id.as_str());
        self.by_requester.entry(requester).or_default().insert(seq);
        let entitlement = self.pack.hold_text(&r.request.entitlement);
        self.by_entitlement
            .entry(entitlement)
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
        for (index, key) in [
            (&mut self.by_requester, r.requester.id.as_str()),
            (&mut self.by_entitlement, r.request.entitlement.as_str()),
        ] {
            let Some(id) = self.pack.text_id(key) else {
                continue;
            };
            if let Some(set) = index.get_mut(&id) {
                if set.remove(&seq) {
                    if set.is_empty() {
                        index.remove(&id);
                    }
                    self.pack.drop_text(id);
                }
            }
        }
    }

    fn row(&self, seq: Seq) -> Option<&Row> {
        self.rows.get(seq as usize).and_then(Option::as_ref)
    }

    fn by_id(&self, id: &RequestId) -> Option<(Seq, &Row)> {
        let seq = *self.ids.get(id)?;
        Some((seq, self.row(seq)?))
    }

    fn owner(&self, seq: Seq) -> Owner {
        self.owners.get(seq as usize).copied().unwrap_or_default()
    }

    fn record(&self, seq: Seq) -> Option<Result<RequestRecord>> {
        self.row(seq)
            .map(|row| row.decode(&self.pack, &self.owner(seq)))
    }

    /// The insertion sequences by requester (or entitlement) `key`.
    fn keyed<'a>(
        &'a self,
        index: &'a HashMap<u32, BTreeSet<Seq>>,
        key: &str,
    ) -> Option<&'a BTreeSet<Seq>> {
        index.get(&self.pack.text_id(key)?)
    }

    /// The insertion sequences `filter` may match, newest first: from the
    /// narrowest index the filter allows, lazily, so a list stops reading
    /// at its limit. Every candidate is still checked with
    /// [`ListFilter::matches`].
    fn candidates<'a>(&'a self, filter: &ListFilter) -> Box<dyn Iterator<Item = Seq> + 'a> {
        if let Some(requester) = &filter.requester {
            return match self.keyed(&self.by_requester, requester) {
                Some(set) => Box::new(set.iter().rev().copied()),
                None => Box::new(std::iter::empty()),
            };
        }
        if filter.states.is_empty() {
            let n = Seq::try_from(self.rows.len()).unwrap_or(Seq::MAX);
            return Box::new((0..n).rev());
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
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    /// Sizes, never contents: records hold justifications, ticket ids and
    /// request context that do not belong in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("MemoryStore");
        // `try_lock`: a `Debug` while the lock is held must not deadlock.
        if let Ok(g) = self.inner.try_lock() {
            d.field("requests", &g.ids.len())
                .field("audit_records", &g.audit.len)
                .field("pack", &g.pack);
        }
        d.finish_non_exhaustive()
    }
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
        if g.ids.contains_key(&record.id) {
            return Err(Error::Conflict {
                request: record.id,
                expected: 0,
            });
        }
        let seq = Seq::try_from(g.rows.len())
            .map_err(|_| Error::Store("the memory store holds 4 billion requests".into()))?;
        let value = encode_record(record)?;
        // The owner first: the record's values and its events use its ids.
        g.owners.push(Owner {
            id: Some(record.id.0),
            grant: record.grant.as_ref().map(|grant| grant.id.0),
        });
        g.ids.insert(record.id, seq);
        let written = match g.append(events) {
            Ok(written) => written,
            Err(e) => {
                g.ids.remove(&record.id);
                g.owners.pop();
                return Err(e);
            }
        };
        let inner = &mut *g;
        let body = inner.pack.pack(&value, inner.owner(seq));
        inner.rows.push(Some(Row {
            version: record.version,
            state: record.state,
            body,
        }));
        inner.index(seq, record);
        inner.risk.add(&Contribution::of(record));
        Ok(written)
    }

    async fn update(
        &self,
        expected_version: u64,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(expected_version, record)?;
        let mut g = self.lock()?;
        let (seq, current) = g
            .by_id(&record.id)
            .ok_or_else(|| Error::request_not_found(record.id))?;
        if current.version != expected_version {
            return Err(Error::Conflict {
                request: record.id,
                expected: expected_version,
            });
        }
        let old = current.decode(&g.pack, &g.owner(seq))?;
        if (&old.requester.id, &old.request.entitlement, old.created_at)
            != (
                &record.requester.id,
                &record.request.entitlement,
                record.created_at,
            )
        {
            return Err(super::identity_changed(record));
        }
        let value = encode_record(record)?;
        // An owner's grant is set once (values packed with it must read
        // back with it); a later grant id is kept whole.
        if let (Some(owner), Some(grant)) = (g.owners.get_mut(seq as usize), &record.grant) {
            if owner.grant.is_none() {
                owner.grant = Some(grant.id.0);
            }
        }
        let written = g.append(events)?;
        let inner = &mut *g;
        let row = Row {
            version: record.version,
            state: record.state,
            body: inner.pack.pack(&value, inner.owner(seq)),
        };
        if let Some(Some(old_row)) = inner
            .rows
            .get_mut(seq as usize)
            .map(|slot| slot.replace(row))
        {
            inner
                .pack
                .release(&old_row.body)
                .map_err(|e| corrupt("request", e))?;
        }
        inner.unindex(seq, &old);
        inner.index(seq, record);
        Ok(written)
    }

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        let g = self.lock()?;
        g.by_id(&id)
            .map(|(seq, row)| row.decode(&g.pack, &g.owner(seq)))
            .transpose()
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
            (Some(r), _) => g.keyed(&g.by_requester, r),
            (None, Some(e)) => g.keyed(&g.by_entitlement, e),
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
            && cut <= g.audit.len
            && g.hash_before(cut)? == prune.anchor.hash;
        if !matches {
            return Err(Error::Store(format!(
                "audit record {} is not stored with the hash the prune's anchor names: plan it again",
                prune.anchor.seq
            )));
        }
        // Check (and decode) everything before changing anything.
        let mut going = Vec::with_capacity(prune.records.len());
        for (id, version) in &prune.records {
            match g.by_id(id) {
                Some((seq, row)) if row.version == *version && row.state.is_final() => {
                    going.push((seq, row.decode(&g.pack, &g.owner(seq))?));
                }
                _ => {
                    return Err(Error::Conflict {
                        request: *id,
                        expected: *version,
                    })
                }
            }
        }
        // A request listed twice is deleted once.
        going.sort_unstable_by_key(|(seq, _)| *seq);
        going.dedup_by_key(|(seq, _)| *seq);
        let inner = &mut *g;
        for (seq, r) in going {
            inner.ids.remove(&r.id);
            if let Some(row) = inner.rows.get_mut(seq as usize).and_then(Option::take) {
                inner
                    .pack
                    .release(&row.body)
                    .map_err(|e| corrupt("request", e))?;
            }
            inner.unindex(seq, &r);
            inner.risk.remove(&Contribution::of(&r));
        }
        inner.audit.drain_front(cut, &mut inner.pack)?;
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
    use crate::audit::{AuditKey, AuditKeyring, AuditKind};
    use crate::types::{
        AccessRequest, Decision, Grant, GrantDuration, GrantId, Principal, Verdict,
    };
    use crate::types::{IssuedGrant, Revocation};
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
        assert!(store
            .list(&list("alice", vec![State::Pending]))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .list(&list("alice", vec![State::Active]))
                .await
                .unwrap(),
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

    /// Records and audit records read back exactly as they were written,
    /// from the first request (everything inline) to later ones (strings
    /// and subtrees shared, the request's own ids in a byte): ids, times,
    /// hashes, seals, floats and nested details. The chain links and
    /// hashes as written; pruning every request empties the shared
    /// tables; the store's `Debug` shows no contents.
    #[tokio::test]
    async fn packed_records_and_audit_records_read_back_exactly() {
        const SECRET: &str = "SECRET-justification-7f3a";
        let store = MemoryStore::new();
        let keyring = AuditKeyring::new(AuditKey::from_bytes([9; 32]));
        let now = Utc::now();
        let (mut records, mut written) = (Vec::new(), Vec::new());
        for i in 0..5 {
            let at = now - TimeDelta::minutes(10 - i);
            let mut r = pending(&format!("user-{}@example.com", i % 2), at);
            r.request = AccessRequest::new("db", GrantDuration::from_secs_i64(60).unwrap(), SECRET)
                .with_ticket(&format!("INC-{i}"))
                .with_context("ip", "203.0.113.9");
            r.requester = r.requester.with_group("engineering");
            let event = |r: &RequestRecord, kind: AuditKind, actor: &str| {
                AuditEvent::new(r.updated_at, kind, r.id, actor, r.state)
                    .grant(r.grant.as_ref().map(|g| g.id))
                    .sealed_with(Some(&keyring))
            };
            written.extend(
                store
                    .insert(
                        &r,
                        &[
                            event(&r, AuditKind::Requested, "user").details(serde_json::json!({
                                "justification": SECRET,
                                "ratio": 0.1,
                                "tiny": -3.5e-7,
                                "big": u64::MAX,
                                "neg": i64::MIN,
                                "nested": {"list": [1, null, true, "x"], "at": at},
                                "request": r.id,
                            })),
                        ],
                    )
                    .await
                    .unwrap(),
            );
            let grant = GrantId::new();
            let mut active = r.clone();
            active.version = 2;
            active.state = State::Active;
            active.pending_until = None;
            active.updated_at = at + TimeDelta::seconds(1);
            active.grant = Some(Grant {
                id: grant,
                starts_at: active.updated_at,
                ends_at: active.updated_at + TimeDelta::minutes(5),
                issued: Some(IssuedGrant {
                    provider: "local".into(),
                    external_id: format!("jit-{}", grant.0.simple()),
                    expires_at: active.updated_at + TimeDelta::minutes(5),
                    details: serde_json::json!({"jti": grant, "kid": "k1", "weight": 1.5}),
                }),
            });
            written.extend(
                store
                    .update(
                        1,
                        &active,
                        &[event(&active, AuditKind::Issued, "jit-broker").details(
                            serde_json::json!({"jti": grant, "expires_at": active.ends_at()}),
                        )],
                    )
                    .await
                    .unwrap(),
            );
            let mut revoked = active.clone();
            revoked.version = 3;
            revoked.state = State::Revoked;
            revoked.updated_at = at + TimeDelta::seconds(2);
            revoked.revocation = Some(Revocation {
                by: "user".into(),
                reason: "done".into(),
                expiry: false,
                attempts: 0,
                last_error: None,
                next_attempt_at: revoked.updated_at,
            });
            written.extend(
                store
                    .update(
                        2,
                        &revoked,
                        &[event(&revoked, AuditKind::Revoked, "user")
                            .details(serde_json::json!({"reason": "done", "attempts": 0}))],
                    )
                    .await
                    .unwrap(),
            );
            records.push(revoked);
        }
        for r in &records {
            assert_eq!(store.get(r.id).await.unwrap().as_ref(), Some(r));
        }
        let stored = crate::store::audit_all(&store).await.unwrap();
        assert_eq!(stored, written);
        // One at a time: each hash not kept is computed from the nearest kept.
        for w in &written {
            assert_eq!(store.audit(w.seq, 1).await.unwrap(), vec![w.clone()]);
        }
        let mut prev = GENESIS_HASH.to_string();
        for r in &stored {
            assert_eq!(
                (&r.prev_hash, &r.hash),
                (&prev, &r.compute_hash()),
                "{}",
                r.seq
            );
            keyring
                .check(r.mac.as_ref().unwrap(), r.seq, &r.hash)
                .unwrap();
            prev.clone_from(&r.hash);
        }
        {
            let g = store.lock().unwrap();
            let (first, last) = (&g.rows[0], &g.rows[4]);
            assert!(
                last.as_ref().unwrap().body.len() < first.as_ref().unwrap().body.len(),
                "later records share what earlier ones repeat"
            );
        }

        let shown = format!("{store:?}");
        for hidden in [SECRET, "INC-", "203.0.113.9", "user-0"] {
            assert!(!shown.contains(hidden), "{shown}");
        }
        assert!(shown.contains("requests: 5"), "{shown}");

        let head = stored.last().unwrap();
        store
            .prune(&Prune {
                after: 0,
                anchor: AuditAnchor::new(head.seq, &head.hash, now, None),
                records: records.iter().map(|r| (r.id, r.version)).collect(),
            })
            .await
            .unwrap();
        assert!(store.lock().unwrap().pack.is_empty(), "{:?}", store);
        assert!(store.audit(1, 10).await.unwrap().is_empty());
    }
}
