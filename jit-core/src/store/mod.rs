//! Durable state: lifecycle records and the audit chain.
//!
//! # Contract
//!
//! - [`Store::insert`] and [`Store::update`] write the record **and** append
//!   its audit events to the chain in one transaction: either both are durable
//!   or neither is. The store assigns `seq`, `prev_hash` and `hash`.
//! - [`Store::update`] is a compare-and-set: it succeeds only if the stored
//!   version equals `expected_version`, and the new record must carry
//!   `expected_version + 1`. A lost race is [`Error::Conflict`], never a silent
//!   overwrite. A request's identity (its requester's id, its entitlement,
//!   its creation time) never changes: an update that would change it is
//!   refused ([`Error::Store`]) and writes nothing. Stores index by it
//!   once, at insert.
//! - The audit chain is a single chain: appends are serialized.
//! - [`Store::due`] returns records in the given states whose
//!   [`RequestRecord::due_at`] is at or before `now`, earliest first.
//! - [`Store::prune`] removes archived finished records and the audit
//!   chain's prefix in one transaction and keeps an anchor
//!   ([`Store::audit_anchor`]) that the remaining chain links to.
//! - [`Store::claim_due`] is how the broker takes time-driven work: on a
//!   store shared by several broker replicas ([`Store::is_shared`]) each due
//!   record goes to one replica at a time, under a lease that lapses if that
//!   replica dies; single-process stores answer it with [`Store::due`].
//!
//! # Choosing a store by URL
//!
//! [`connect`] opens whichever store a URL names, so every place that takes
//! a store (the [`BrokerBuilder`](crate::BrokerBuilder), a server's
//! configuration) accepts the same strings: `memory:`, `sqlite://path/to/jit.db`
//! or `sqlite::memory:` (feature `sqlite`), and `postgres://` /
//! `postgresql://` URLs (feature `postgres`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{AuditAnchor, AuditEntry, AuditEvent, AuditRecord};
use crate::error::{ConfigError, Error, Result};
use crate::types::{GrantDuration, RequestId, RequestRecord, State};

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod risk_facts;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use risk_facts::{RiskFacts, RiskFactsQuery, SOURCE_KEYS};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// What to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only requests by exactly this subject id (`ALICE` is not `alice`:
    /// ownership is never folded, see [`Principal::is`](crate::Principal::is)).
    pub requester: Option<String>,
    /// Only requests in these states (any state when empty).
    pub states: Vec<State>,
    /// Only requests for this entitlement.
    pub entitlement: Option<String>,
    /// Only requests for one of these entitlements (any when empty). An
    /// approver's queue asks for the entitlements that approver may act on,
    /// so requests for other entitlements never crowd them out of `limit`.
    pub entitlements: Vec<String>,
    /// Only requests with a grant whose end is after this time (records
    /// without a grant never match). Start-up asks for the revoked grants
    /// still running this way, so the read is bounded by what is live, not
    /// by every grant ever revoked; the stores answer it from a
    /// `(state, ends_at)` index.
    pub ends_after: Option<DateTime<Utc>>,
    /// At most this many, newest first (100 when zero).
    pub limit: usize,
}

impl ListFilter {
    /// Whether a record matches (used by stores that filter in memory, and by tests).
    pub fn matches(&self, r: &RequestRecord) -> bool {
        self.requester
            .as_ref()
            .is_none_or(|q| q == r.requester.id.as_str())
            && (self.states.is_empty() || self.states.contains(&r.state))
            && self
                .entitlement
                .as_ref()
                .is_none_or(|e| *e == r.request.entitlement)
            && (self.entitlements.is_empty() || self.entitlements.contains(&r.request.entitlement))
            && self
                .ends_after
                .is_none_or(|t| r.ends_at().is_some_and(|end| end > t))
    }

    /// The effective limit.
    pub fn effective_limit(&self) -> usize {
        if self.limit == 0 {
            100
        } else {
            self.limit
        }
    }
}

/// One retention cut, as [`Store::prune`] applies it: the finished records
/// archived and the audit chain's prefix up to a new anchor. Built by
/// [`Broker::archive_finished`](crate::Broker::archive_finished), which
/// exports all of it before asking the store to prune.
#[derive(Debug, Clone, PartialEq)]
pub struct Prune {
    /// The anchor's `seq` the plan was made against (0 before any prune):
    /// a store holding another anchor refuses the prune.
    pub after: u64,
    /// The new anchor: the last audit record pruned (`seq` and hash),
    /// signed when a key is configured. Every audit record up to its `seq`
    /// is pruned.
    pub anchor: AuditAnchor,
    /// The records to delete, each with the version it was archived at.
    pub records: Vec<(RequestId, u64)>,
}

/// The most entries one [`Store::history`] call returns.
pub const MAX_HISTORY: usize = 1000;

/// Which past requests to read for risk review ([`Store::history`]): a
/// requester's, an entitlement's, or one requester's for one entitlement,
/// newest first. At least one of `requester` and `entitlement` is set, so
/// every lookup reads an index bounded by one principal or one entitlement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only requests by exactly this subject id.
    pub requester: Option<String>,
    /// Only requests for this entitlement.
    pub entitlement: Option<String>,
    /// Leave out requests by exactly this subject id (a requester's peers).
    pub exclude_requester: Option<String>,
    /// At most this many, newest first (100 when zero, [`MAX_HISTORY`] at most).
    pub limit: usize,
}

impl HistoryQuery {
    /// One requester's requests, newest first.
    pub fn of_requester(requester: &str, limit: usize) -> Self {
        Self {
            requester: Some(requester.to_string()),
            limit,
            ..Self::default()
        }
    }

    /// One entitlement's requests, newest first.
    pub fn of_entitlement(entitlement: &str, limit: usize) -> Self {
        Self {
            entitlement: Some(entitlement.to_string()),
            limit,
            ..Self::default()
        }
    }

    /// Narrows to one entitlement.
    pub fn for_entitlement(mut self, entitlement: &str) -> Self {
        self.entitlement = Some(entitlement.to_string());
        self
    }

    /// Leaves out one requester.
    pub fn excluding(mut self, requester: &str) -> Self {
        self.exclude_requester = Some(requester.to_string());
        self
    }

    /// The effective limit: 100 when zero, at most [`MAX_HISTORY`].
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(MAX_HISTORY),
        }
    }

    /// Checks the query names a requester or an entitlement.
    pub fn check(&self) -> Result<()> {
        if self.requester.is_none() && self.entitlement.is_none() {
            return Err(Error::Store(
                "a history query names a requester or an entitlement".into(),
            ));
        }
        Ok(())
    }

    /// Whether an entry matches (stores that filter in memory, and tests).
    pub fn matches(&self, e: &HistoryEntry) -> bool {
        self.requester.as_ref().is_none_or(|r| *r == e.requester)
            && self
                .entitlement
                .as_ref()
                .is_none_or(|x| *x == e.entitlement)
            && self
                .exclude_requester
                .as_ref()
                .is_none_or(|r| *r != e.requester)
    }
}

/// One past request as risk review sees it: who, what, when, how long and
/// from where; no justification, ticket or grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The request.
    pub id: RequestId,
    /// Its state now.
    pub state: State,
    /// The requester's exact subject id.
    pub requester: String,
    /// The requester's groups when they asked.
    pub groups: BTreeSet<String>,
    /// The entitlement.
    pub entitlement: String,
    /// The duration asked for.
    pub duration: GrantDuration,
    /// The request context (client, IP, user agent...).
    pub context: BTreeMap<String, String>,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
}

impl From<&RequestRecord> for HistoryEntry {
    fn from(r: &RequestRecord) -> Self {
        Self {
            id: r.id,
            state: r.state,
            requester: r.requester.id.as_str().to_string(),
            groups: r.requester.groups.clone(),
            entitlement: r.request.entitlement.clone(),
            duration: r.request.duration,
            context: r.request.context.clone(),
            created_at: r.created_at,
        }
    }
}

/// Who takes due work with [`Store::claim_due`], and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The claiming broker replica ([`Broker::replica_id`](crate::Broker::replica_id)).
    pub owner: String,
    /// The claimer's current time: leases that end at or before it have lapsed.
    pub now: DateTime<Utc>,
    /// How long claimed records stay with `owner` (from `now`).
    pub lease: Duration,
}

/// Durable state for the broker. Object safe: use it as `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Inserts a new record (its version must be 1) and appends its events, atomically.
    async fn insert(
        &self,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>>;

    /// Compare-and-set: replaces the record if the stored version is
    /// `expected_version`, and appends the events, atomically. The
    /// record's requester id, entitlement and creation time must be the
    /// stored ones (see the module's contract).
    async fn update(
        &self,
        expected_version: u64,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>>;

    /// One record.
    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>>;

    /// Records matching the filter, newest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<RequestRecord>>;

    /// Records in `states` due at or before `now`, earliest first, at most `limit`.
    async fn due(
        &self,
        states: &[State],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>>;

    /// Audit records with `seq >= from_seq`, in order, at most `limit`.
    async fn audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>>;

    /// Like [`Store::audit`], but a stored row that does not decode is
    /// returned as [`AuditEntry::Undecodable`] instead of failing the whole
    /// read, so that verification can name it. The default, right for
    /// stores that cannot hold such a row, wraps [`Store::audit`]; wrappers
    /// must forward it.
    async fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        Ok(self
            .audit(from_seq, limit)
            .await?
            .into_iter()
            .map(AuditEntry::Record)
            .collect())
    }

    /// Takes due work: like [`Store::due`] (records in `states` due at or
    /// before `due_by`, earliest first, at most `limit`), but on a store that
    /// several broker replicas share, each returned record is leased to
    /// `claim.owner` until `claim.now + claim.lease`.
    ///
    /// # Contract
    ///
    /// - A record leased to another owner is not returned until that lease
    ///   has lapsed (its end is at or before `claim.now`); the owner itself
    ///   may claim it again at any time (renewing the lease).
    /// - Two concurrent claims never return the same record to two owners.
    /// - A claim is not a lock: it never blocks [`Store::update`], and
    ///   updates neither check nor clear it. It keeps other *reapers* away
    ///   while the owner works (including across the intermediate states
    ///   of its work, such as `Revoking` during an expiry), and it lapses
    ///   unless the owner hands it back with [`Store::release_claims`]. If
    ///   the owner dies, the work is picked up by another replica once the
    ///   lease lapses.
    /// - Lease times are compared with `claim.now`, the claimers' clocks:
    ///   replicas need clocks that agree to well within a lease.
    ///
    /// The default, right for single-process stores, ignores `claim` and
    /// returns [`Store::due`]: one process has one reaper.
    async fn claim_due(
        &self,
        states: &[State],
        due_by: DateTime<Utc>,
        limit: usize,
        claim: &Claim,
    ) -> Result<Vec<RequestRecord>> {
        let _ = claim;
        self.due(states, due_by, limit).await
    }

    /// Hands back claims `claim.owner` took but will not work on (a record
    /// it cannot handle: an entitlement or provider this replica does not
    /// know, a record it could not decode), so another replica can.
    ///
    /// # Contract
    ///
    /// - Each listed record still leased to `claim.owner` becomes claimable
    ///   at once by every *other* owner; `claim.owner` itself does not get
    ///   it back from [`Store::claim_due`] until `claim.now + claim.lease`,
    ///   so a replica that cannot do a piece of work does not keep taking it
    ///   ahead of replicas that can. Records leased to someone else are left
    ///   alone.
    /// - The default, right for single-process stores where claims are not
    ///   recorded, does nothing.
    async fn release_claims(&self, ids: &[RequestId], claim: &Claim) -> Result<()> {
        let _ = (ids, claim);
        Ok(())
    }

    /// Past requests for risk review, newest first (see [`HistoryQuery`]).
    ///
    /// # Contract
    ///
    /// Read-only; returns at most [`HistoryQuery::effective_limit`] entries
    /// matching the query, the newest by `created_at` first. A query that
    /// names neither a requester nor an entitlement is an error. The SQL
    /// stores answer from the `(requester, created_at)`,
    /// `(requester, entitlement, created_at)` and `(entitlement,
    /// created_at)` indexes and decode only the fields an entry holds; a
    /// row that does not decode is logged and skipped (rule 9 of the
    /// design). The default, for wrappers and stores without such indexes,
    /// lists with [`Store::list`] and filters: correct, but slower, and it
    /// may return fewer than the limit when it leaves a requester out.
    /// Wrappers should forward it.
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        query.check()?;
        let limit = query.effective_limit();
        let records = self
            .list(&ListFilter {
                requester: query.requester.clone(),
                entitlement: query.entitlement.clone(),
                limit,
                ..ListFilter::default()
            })
            .await?;
        Ok(records
            .iter()
            .map(HistoryEntry::from)
            .filter(|e| query.matches(e))
            .take(limit)
            .collect())
    }

    /// The facts risk review scores one request on, from every request
    /// the store holds (see [`RiskFactsQuery`] and the aggregates they are
    /// kept in, in `risk_facts.rs`).
    ///
    /// # Contract
    ///
    /// Read-only. The facts are what [`RiskFacts::from_history`] makes of
    /// every request of the requester and every request for the
    /// entitlement by someone else that the store holds, each as it was
    /// submitted; a store may compute them any way it likes but must agree
    /// with that (the conformance suite's `check_risk_facts` and
    /// `check_risk_aggregates` compare the two), including right after an
    /// insert, under concurrent inserts of one requester, and after a
    /// [`Store::prune`] (a pruned request no longer counts). A query
    /// without a requester or an entitlement, or asking about a source key
    /// outside [`SOURCE_KEYS`], is an error.
    ///
    /// The memory, SQLite and PostgreSQL stores keep aggregates that the
    /// insert and the prune move in their own transactions, so an answer
    /// is a few primary-key reads plus one index range count (the burst),
    /// whatever the history's size. The default reads the two history
    /// lookups of [`RiskFactsQuery::history_queries`] and computes the
    /// facts: exact up to [`MAX_HISTORY`] requests each, of the newest
    /// beyond; right for wrappers (which should forward it, so the wrapped
    /// store's answer is used) and small third-party stores.
    async fn risk_facts(&self, query: &RiskFactsQuery) -> Result<RiskFacts> {
        query.check()?;
        let (mine, peers) = query.history_queries();
        let mine = self.history(&mine).await?;
        let peers = match peers {
            Some(q) => self.history(&q).await?,
            None => Vec::new(),
        };
        Ok(RiskFacts::from_history(query, &mine, &peers))
    }

    /// How many records are in each state: every state of [`State::ALL`]
    /// once, in that order, zero where there are none. For metrics and
    /// dashboards, which call it often.
    ///
    /// # Contract
    ///
    /// Counts every record, with no limit, exactly: a count moves in the
    /// same transaction as the insert, transition or prune that moves it,
    /// so it never counts a write that was rolled back. Stores answer it
    /// without reading the records: the memory store from its state index,
    /// the SQL stores from counts that triggers keep per state (migration
    /// 12; on PostgreSQL sharded per connection so that replicas do not
    /// queue on one row, and summed here). The default, for stores without
    /// either, lists every state in full and counts: correct, but reads
    /// every record.
    async fn count_by_state(&self) -> Result<Vec<(State, u64)>> {
        let mut out = Vec::with_capacity(State::ALL.len());
        for s in State::ALL {
            let n = self
                .list(&ListFilter {
                    states: vec![s],
                    limit: usize::MAX,
                    ..ListFilter::default()
                })
                .await?
                .len();
            out.push((s, n as u64));
        }
        Ok(out)
    }

    /// The anchor the stored audit chain starts from: `None` until a
    /// [`Store::prune`] cut the chain; then records before `anchor.seq + 1`
    /// are gone (archived) and the first one kept links to `anchor.hash`.
    /// Wrappers must forward it.
    async fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        Ok(None)
    }

    /// Deletes archived finished records and the audit chain up to a new
    /// anchor, and stores that anchor, in one transaction.
    ///
    /// # Contract
    ///
    /// - **All or nothing.** Either every listed record and every audit
    ///   record with `seq <= prune.anchor.seq` is gone and the anchor is
    ///   stored, or nothing changed and the call fails.
    /// - **Only what was archived.** Each listed record must still exist at
    ///   the listed version and in a final state ([`State::is_final`]);
    ///   otherwise the prune is refused ([`Error::Conflict`]). Nothing live
    ///   is ever deleted, and a record that changed since it was exported is
    ///   not lost.
    /// - **Planned against the current anchor.** The stored anchor's `seq`
    ///   must be `prune.after` (0 when none), and the stored record
    ///   `prune.anchor.seq` must have `prune.anchor.hash`; otherwise the
    ///   prune is refused ([`Error::Store`]). Two concurrent prunes never
    ///   both apply; the loser changes nothing and can plan again.
    /// - **The chain continues.** Appends after a prune keep numbering from
    ///   the head, even when every record was pruned; [`Store::audit`] reads
    ///   from the first record kept.
    /// - Concurrent writers are not blocked for longer than the deletes take,
    ///   and records they append (after the anchor) are never touched.
    ///
    /// The default refuses with [`Error::Store`]: a store that cannot prune
    /// must not pretend to.
    async fn prune(&self, prune: &Prune) -> Result<()> {
        let _ = prune;
        Err(Error::Store(format!(
            "store {self:?} cannot prune: use a memory, sqlite or postgres store"
        )))
    }

    /// Whether several broker processes may use this store at once (default
    /// false). The broker then never assumes that work in flight was left
    /// by a crash of its own: another replica may be doing it.
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the named lease `key` for `holder` until `now + ttl`, or
    /// renews it if `holder` already holds it. Returns whether `holder`
    /// holds it now; `false` changes nothing.
    ///
    /// Leases guard read-modify-writes of things outside the store that have
    /// no compare-and-set of their own (an IAM inline policy): whoever holds
    /// `aws:revocations:<role>` is the only writer of that role's policy.
    /// Use them through [`crate::lease`], which waits, renews and releases.
    ///
    /// # Contract
    ///
    /// - **One holder at a time**, across every process sharing the store:
    ///   the lease is free, lapsed (its end is at or before `now`) or held
    ///   by `holder`, else the answer is `false`. Concurrent calls for one
    ///   key never both get `true` for different holders.
    /// - **It expires by time**, so a holder that died blocks the key for
    ///   at most `ttl`. Nothing ever waits on a lease inside the store.
    /// - **`holder` is unique** per process (or broker) and never reused
    ///   by another ([`crate::lease::holder_id`] makes one).
    /// - **Fencing is the holder's job.** A lease is not a lock on the
    ///   thing it guards: a holder whose lease lapsed must learn it before
    ///   it writes. It calls [`Store::renew_lease`] right before each
    ///   guarded write, stops if that says `false`, and finishes the write
    ///   well within `ttl` of the renewal.
    /// - Times are the callers' clocks (`now`): processes sharing leases
    ///   need clocks that agree to well within `ttl`.
    ///
    /// The default refuses with [`Error::Store`]: a store without leases
    /// must not pretend to exclude anyone.
    async fn try_acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let _ = (holder, ttl, now);
        Err(no_leases(self, key))
    }

    /// Extends a lease `holder` holds without a break: succeeds only if it
    /// has not lapsed at `now` (and so nobody else can have taken it since
    /// it was acquired); its end moves to `now + ttl`. `false` means the
    /// holder lost it and must not write (see the fencing rule of
    /// [`Store::try_acquire_lease`]). Default: refused like acquiring.
    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let _ = (holder, ttl, now);
        Err(no_leases(self, key))
    }

    /// Gives up a lease before it lapses. Returns whether `holder` held
    /// it; another holder's lease is never released (`false`, nothing
    /// changed). Default: refused like acquiring.
    async fn release_lease(&self, key: &str, holder: &str) -> Result<bool> {
        let _ = holder;
        Err(no_leases(self, key))
    }
}

fn no_leases(store: &(impl Store + ?Sized), key: &str) -> Error {
    Error::Store(format!(
        "store {store:?} keeps no leases, so lease `{key}` cannot be taken: use a memory, sqlite or postgres store"
    ))
}

/// A lease's end: `now + ttl`, or a store error when that is out of range.
pub(crate) fn lease_until(now: DateTime<Utc>, ttl: Duration) -> Result<DateTime<Utc>> {
    chrono::TimeDelta::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .ok_or_else(|| {
            Error::Store(format!(
                "lease of {}s from `{now}` is out of range",
                ttl.as_secs()
            ))
        })
}

/// Opens the store that `url` names.
///
/// | URL | store | feature |
/// | --- | --- | --- |
/// | `memory:` | [`MemoryStore`] (nothing survives a restart) | |
/// | `sqlite://path/to/jit.db`, `sqlite:///abs/jit.db`, `sqlite::memory:` | `SqliteStore` | `sqlite` |
/// | `postgres://user@host/db`, `postgresql://...` | `PostgresStore` | `postgres` |
///
/// A scheme this build cannot open is [`ConfigError::StoreUrl`], naming the
/// feature to enable; passwords in the URL never appear in errors.
///
/// ```no_run
/// # async fn demo() -> jit_core::Result<()> {
/// let store = jit_core::store::connect("sqlite:///var/lib/jit/jit.db").await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    let scheme = url.split_once(':').map_or("", |(s, _)| s);
    match scheme.to_ascii_lowercase().as_str() {
        "memory" => {
            if url.eq_ignore_ascii_case("memory:") || url.eq_ignore_ascii_case("memory://") {
                Ok(Arc::new(MemoryStore::new()))
            } else {
                Err(store_url_error(url, "a memory store takes no path: use `memory:`"))
            }
        }
        "sqlite" => open_sqlite(url).await,
        "postgres" | "postgresql" => open_postgres(url).await,
        _ => Err(store_url_error(
            url,
            "use `memory:`, `sqlite://path/to/jit.db`, `sqlite::memory:` or `postgres://user@host/database`",
        )),
    }
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(url: &str) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqliteStore::connect(url).await?))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(url: &str) -> Result<Arc<dyn Store>> {
    Err(store_url_error(
        url,
        "this build has no sqlite store: enable the `sqlite` feature of jit-core",
    ))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(PostgresStore::connect(url).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str) -> Result<Arc<dyn Store>> {
    Err(store_url_error(
        url,
        "this build has no postgres store: enable the `postgres` feature of jit-core",
    ))
}

fn store_url_error(url: &str, message: &str) -> Error {
    Error::Config(ConfigError::StoreUrl {
        url: redact_url(url),
        message: message.to_string(),
    })
}

/// `url` with any password replaced by `***`: in the user info
/// (`user:secret@host`) and in query parameters whose name contains
/// `password` (`?password=secret`). Safe to log and to put in errors.
///
/// The user info runs to the last `@` before the query, so a password with
/// an unescaped `/` or `@` is hidden too.
pub fn redact_url(url: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (url, None),
    };
    let mut out = match main.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user_info, host)) if user_info.contains(':') => {
                let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
                format!("{scheme}://{user}:***@{host}")
            }
            _ => main.to_string(),
        },
        None => main.to_string(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// Counts by state name, as the SQL stores group them, in [`State::ALL`]
/// order. A state name this build does not know (written by a newer one) is
/// logged and left out (rule 9 of the design): it never hides the others.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn counts_from_rows(rows: Vec<(String, i64)>) -> Vec<(State, u64)> {
    let mut out: Vec<(State, u64)> = State::ALL.iter().map(|s| (*s, 0)).collect();
    for (name, n) in rows {
        match out.iter_mut().find(|(s, _)| s.as_str() == name) {
            Some((_, count)) => *count = u64::try_from(n).unwrap_or(0),
            None => tracing::warn!(state = %name, count = n, "records in an unknown state"),
        }
    }
    out
}

/// Checks the CAS preconditions every store shares.
/// An update that would change a stored request's identity: its
/// requester, entitlement or creation time (see [`Store::update`]).
pub(crate) fn identity_changed(record: &RequestRecord) -> Error {
    Error::Store(format!(
        "request `{}`: an update may not change its requester, entitlement or creation time",
        record.id
    ))
}

pub(crate) fn check_versions(expected_version: u64, record: &RequestRecord) -> Result<()> {
    if record.version != expected_version + 1 {
        return Err(Error::Store(format!(
            "record `{}` must carry version {} (expected + 1), not {}",
            record.id,
            expected_version + 1,
            record.version
        )));
    }
    Ok(())
}

/// Reads every stored audit row in pages, undecodable ones included (see
/// [`Store::audit_entries`]). Pages follow the stored `seq`, so a gap
/// left by a deleted row does not end the read early; the read starts
/// after the store's anchor ([`Store::audit_anchor`]).
pub async fn audit_entries_all(store: &dyn Store) -> Result<Vec<AuditEntry>> {
    const PAGE: usize = 1000;
    let first = store.audit_anchor().await?.map_or(1, |a| a.seq + 1);
    let mut out: Vec<AuditEntry> = Vec::new();
    loop {
        let from = out.last().map_or(first, |e| e.seq().saturating_add(1));
        let page = store.audit_entries(from, PAGE).await?;
        let done = page.len() < PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// Reads the whole stored chain in pages (from the first record after the
/// store's anchor, if it was pruned).
pub async fn audit_all(store: &dyn Store) -> Result<Vec<AuditRecord>> {
    let first = store.audit_anchor().await?.map_or(1, |a| a.seq + 1);
    let mut out: Vec<AuditRecord> = Vec::new();
    loop {
        let from = out.last().map_or(first, |r| r.seq.saturating_add(1));
        let page = store.audit(from, 1000).await?;
        let done = page.len() < 1000;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn urls_are_redacted() {
        for (url, shown) in [
            (
                "postgres://jit:hunter2@db.internal:5432/jit",
                "postgres://jit:***@db.internal:5432/jit",
            ),
            (
                "postgresql://jit:p%40ss:w@rd@db/jit?sslmode=require",
                "postgresql://jit:***@db/jit?sslmode=require",
            ),
            (
                "postgres://db/jit?user=jit&password=hunter2&sslpassword=x",
                "postgres://db/jit?user=jit&password=***&sslpassword=***",
            ),
            ("postgres://jit@db/jit", "postgres://jit@db/jit"),
            ("postgres://u:pa/ss@db/jit", "postgres://u:***@db/jit"),
            ("sqlite:///home/a@b/jit.db", "sqlite:///home/a@b/jit.db"),
            ("sqlite:///var/lib/jit.db", "sqlite:///var/lib/jit.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("memory:", "memory:"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[tokio::test]
    async fn unknown_schemes_are_config_errors_without_secrets() {
        for url in [
            "mysql://root:hunter2@db/jit",
            "jit.db",
            "",
            "memory:/tmp/x",
            "redis://:hunter2@cache",
        ] {
            let err = connect(url).await.map(|_| ()).unwrap_err();
            match &err {
                Error::Config(ConfigError::StoreUrl { .. }) => {}
                other => panic!("{url}: {other:?}"),
            }
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[tokio::test]
    async fn memory_urls_open_a_memory_store() {
        for url in ["memory:", "memory://", "MEMORY:"] {
            let store = connect(url).await.unwrap();
            assert!(format!("{store:?}").starts_with("MemoryStore"), "{url}");
            assert!(!store.is_shared());
        }
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_urls_open_a_sqlite_store() {
        let store = connect("sqlite::memory:").await.unwrap();
        assert!(format!("{store:?}").starts_with("SqliteStore"));
        assert!(!store.is_shared());
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn postgres_urls_name_the_missing_feature() {
        let err = connect("postgres://jit:hunter2@localhost/jit")
            .await
            .map(|_| ())
            .unwrap_err();
        let shown = err.to_string();
        assert!(
            matches!(err, Error::Config(ConfigError::StoreUrl { .. })),
            "{err:?}"
        );
        assert!(shown.contains("`postgres` feature"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
