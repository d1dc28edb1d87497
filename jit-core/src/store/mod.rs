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
//!   overwrite.
//! - The audit chain is a single chain: appends are serialized.
//! - [`Store::due`] returns records in the given states whose
//!   [`RequestRecord::due_at`] is at or before `now`, earliest first.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{AuditEvent, AuditRecord};
use crate::error::{Error, Result};
use crate::types::{RequestId, RequestRecord, State};

pub mod memory;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// What to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only requests by this principal (compared in canonical form).
    pub requester: Option<String>,
    /// Only requests in these states (any state when empty).
    pub states: Vec<State>,
    /// Only requests for this entitlement.
    pub entitlement: Option<String>,
    /// At most this many, newest first (100 when zero).
    pub limit: usize,
}

impl ListFilter {
    /// Whether a record matches (used by stores that filter in memory, and by tests).
    pub fn matches(&self, r: &RequestRecord) -> bool {
        self.requester
            .as_ref()
            .is_none_or(|q| crate::types::canonical_identity(q) == r.requester.id.canonical())
            && (self.states.is_empty() || self.states.contains(&r.state))
            && self
                .entitlement
                .as_ref()
                .is_none_or(|e| *e == r.request.entitlement)
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
    /// `expected_version`, and appends the events, atomically.
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
}

/// Checks the CAS preconditions every store shares.
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

/// Reads the whole chain in pages.
pub async fn audit_all(store: &dyn Store) -> Result<Vec<AuditRecord>> {
    let mut out = Vec::new();
    loop {
        let page = store.audit(out.len() as u64 + 1, 1000).await?;
        let done = page.len() < 1000;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}
