//! What the SQL stores share, whatever the engine: the `requests` columns a
//! record maps to, timestamp text that orders like time, decoding stored
//! JSON, chaining audit events after a head, and the errors a missed write
//! means. The SQL itself, and how each engine locks the audit head, stay in
//! [`super::sqlite`] and [`super::postgres`].

use chrono::{DateTime, Datelike, SecondsFormat, Utc};

use crate::audit::{AuditAnchor, AuditEntry, AuditEvent, AuditRecord, GENESIS_HASH};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

use super::HistoryEntry;
use crate::types::{GrantDuration, RequestId, RequestRecord, State};

/// Fixed-width RFC 3339 UTC text, so that text order is time order (in
/// PostgreSQL under the "C" collation the columns use).
pub(crate) fn timestamp(t: DateTime<Utc>, engine: &str) -> Result<String> {
    if !(0..=9999).contains(&t.year()) {
        return Err(Error::Store(format!(
            "timestamp `{t}` is outside the years 0000 to 9999 that the {engine} store can order"
        )));
    }
    Ok(t.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

/// A count or version as the engines' `BIGINT`.
pub(crate) fn to_i64(v: u64, what: &str, engine: &str) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| Error::Store(format!("{what} {v} does not fit the {engine} store")))
}

/// A `LIMIT`: anything larger than `i64::MAX` is no limit.
pub(crate) fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The columns of one `requests` row as PostgreSQL stores them, and as
/// SQLite did before its schema 13 (its tests write such rows); the lease
/// columns are never written from a record.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct Columns {
    pub(crate) id: String,
    pub(crate) version: i64,
    pub(crate) state: &'static str,
    pub(crate) requester: String,
    pub(crate) entitlement: String,
    pub(crate) created_at: String,
    pub(crate) due_at: Option<String>,
    /// The grant's end ([`RequestRecord::ends_at`]), for
    /// [`ListFilter::ends_after`](super::ListFilter::ends_after).
    pub(crate) ends_at: Option<String>,
    pub(crate) body: String,
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl Columns {
    pub(crate) fn of(r: &RequestRecord, engine: &str) -> Result<Self> {
        Ok(Self {
            id: r.id.to_string(),
            version: to_i64(r.version, "version", engine)?,
            state: r.state.as_str(),
            requester: r.requester.id.as_str().to_string(),
            entitlement: r.request.entitlement.clone(),
            created_at: timestamp(r.created_at, engine)?,
            due_at: r.due_at().map(|t| timestamp(t, engine)).transpose()?,
            ends_at: r.ends_at().map(|t| timestamp(t, engine)).transpose()?,
            body: serde_json::to_string(r)
                .map_err(|e| Error::Store(format!("cannot encode request `{}`: {e}", r.id)))?,
        })
    }
}

/// A stored request body (PostgreSQL: JSON text).
#[cfg(feature = "postgres")]
pub(crate) fn decode_record(body: &str) -> Result<RequestRecord> {
    serde_json::from_str(body)
        .map_err(|e| Error::Store(format!("stored request is not valid: {e}")))
}

/// The stored audit rows `(seq, hash, body)` (any stored form: see
/// [`AuditRecord::from_stored_bytes`]) read from `from - 1` on (in
/// `seq` order) as entries from `from` on: each compact body gets the
/// hash of the row before it as its `prev_hash` (see
/// [`AuditRecord::from_stored`]); the first one, when the row before was
/// not read, the anchor's hash (or the genesis hash at `seq` 1). A row
/// whose predecessor is missing gets the genesis hash, so it no longer
/// matches its own: the gap shows as a break. A body that does not decode
/// is named, not an error, so that one bad row cannot stop verification.
pub(crate) fn audit_entries_from_rows<B: AsRef<[u8]>>(
    rows: Vec<(i64, String, B)>,
    from: u64,
    anchor: Option<&AuditAnchor>,
) -> Vec<AuditEntry> {
    let mut prev: Option<(u64, String)> = anchor.map(|a| (a.seq, a.hash.clone()));
    let mut out = Vec::with_capacity(rows.len());
    for (seq, hash, body) in rows {
        let seq = u64::try_from(seq).unwrap_or(0);
        let prev_hash = match &prev {
            Some((p, h)) if *p + 1 == seq => h.clone(),
            _ => GENESIS_HASH.to_string(),
        };
        if seq >= from {
            out.push(
                match AuditRecord::from_stored_bytes(seq, &hash, &prev_hash, body.as_ref()) {
                    Ok(r) => AuditEntry::Record(r),
                    Err(e) => AuditEntry::Undecodable {
                        seq,
                        error: format!("stored audit record is not valid: {e}"),
                    },
                },
            );
        }
        prev = Some((seq, hash));
    }
    out
}

/// The fields of a stored request body that a [`HistoryEntry`] holds;
/// serde skips the rest without building it.
#[derive(serde::Deserialize)]
struct HistoryBody {
    id: RequestId,
    state: State,
    requester: HistoryRequester,
    request: HistoryRequest,
    created_at: DateTime<Utc>,
}

#[derive(serde::Deserialize)]
struct HistoryRequester {
    id: String,
    #[serde(default)]
    groups: BTreeSet<String>,
}

#[derive(serde::Deserialize)]
struct HistoryRequest {
    entitlement: String,
    duration: GrantDuration,
    #[serde(default)]
    context: BTreeMap<String, String>,
}

/// A stored request body (JSON, or packed: see
/// [`crate::packed::record_json`]) as a history entry; `None` (logged)
/// when it does not decode, so one bad row never hides the rest (rule 9
/// of the design).
pub(crate) fn decode_history(body: &[u8]) -> Option<HistoryEntry> {
    let json = match crate::packed::record_json(body) {
        Ok(json) => json,
        Err(e) => {
            tracing::warn!(error = %e, "history: a stored request does not unpack; skipped");
            return None;
        }
    };
    match serde_json::from_slice::<HistoryBody>(&json) {
        Ok(b) => Some(HistoryEntry {
            id: b.id,
            state: b.state,
            requester: b.requester.id,
            groups: b.requester.groups,
            entitlement: b.request.entitlement,
            duration: b.request.duration,
            context: b.request.context,
            created_at: b.created_at,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "history: a stored request does not decode; skipped");
            None
        }
    }
}

/// A stored anchor body.
pub(crate) fn decode_anchor(body: &str) -> Result<AuditAnchor> {
    serde_json::from_str(body)
        .map_err(|e| Error::Store(format!("stored audit anchor is not valid: {e}")))
}

/// An anchor as stored.
pub(crate) fn encode_anchor(anchor: &AuditAnchor) -> Result<String> {
    serde_json::to_string(anchor)
        .map_err(|e| Error::Store(format!("cannot encode audit anchor: {e}")))
}

/// The records of a page of audit entries, or the first undecodable row as
/// an error: [`Store::audit`](super::Store::audit) of the SQL stores, read
/// through their `audit_entries` so each engine has one audit query.
pub(crate) fn audit_records(entries: Vec<AuditEntry>) -> Result<Vec<AuditRecord>> {
    entries
        .into_iter()
        .map(|e| match e {
            AuditEntry::Record(r) => Ok(r),
            AuditEntry::Undecodable { seq, error } => Err(Error::Store(format!(
                "stored audit record {seq} is not valid: {error}"
            ))),
        })
        .collect()
}

/// Audit events chained after a head, ready to store.
pub(crate) struct Chained<B> {
    /// The records, in order.
    pub(crate) records: Vec<AuditRecord>,
    /// Each record's stored body, in the engine's form.
    pub(crate) bodies: Vec<B>,
    /// Each record's `seq`, as the engines store it.
    pub(crate) seqs: Vec<i64>,
}

impl<B> Chained<B> {
    /// The new head: the last record's `seq` and hash.
    pub(crate) fn head(&self) -> Option<(i64, &str)> {
        Some((*self.seqs.last()?, self.records.last()?.hash.as_str()))
    }
}

/// The audit chain's newest `(seq, hash)` as this store last wrote it: a
/// hint that spares each write transaction a read of the head. It is never
/// trusted: the first audit insert of a transaction is guarded on the
/// stored head still being this one (another process may have appended, a
/// transaction that wrote it may have rolled back), and when it is not,
/// the head is read and the events are chained again.
#[derive(Debug, Default)]
pub(crate) struct HeadHint(pub(super) std::sync::Mutex<Option<(i64, String)>>);

impl HeadHint {
    pub(crate) fn get(&self) -> Option<(i64, String)> {
        self.0.lock().ok().and_then(|h| h.clone())
    }

    pub(crate) fn set<B>(&self, chained: &Chained<B>) {
        if let Ok(mut h) = self.0.lock() {
            *h = chained.head().map(|(seq, hash)| (seq, hash.to_string()));
        }
    }
}

/// Chains `events` after the head `(seq, hash)` read from the store (`seq`
/// 0 and the genesis hash for an empty chain), each record's body made by
/// `body` (the engine's stored form).
pub(crate) fn chain<B>(
    events: &[AuditEvent],
    head_seq: i64,
    head_hash: &str,
    engine: &str,
    body: impl Fn(&AuditRecord) -> B,
) -> Result<Chained<B>> {
    let mut seq = u64::try_from(head_seq)
        .map_err(|_| Error::Store(format!("stored audit seq {head_seq} is negative")))?;
    let mut prev = head_hash.to_string();
    let mut out = Chained {
        records: Vec::with_capacity(events.len()),
        bodies: Vec::with_capacity(events.len()),
        seqs: Vec::with_capacity(events.len()),
    };
    for e in events {
        seq += 1;
        let r = e.clone().chain(seq, &prev);
        out.bodies.push(body(&r));
        out.seqs.push(to_i64(seq, "audit seq", engine)?);
        prev.clone_from(&r.hash);
        out.records.push(r);
    }
    Ok(out)
}

/// What an `INSERT .. ON CONFLICT DO NOTHING` that inserted nothing means.
pub(crate) fn insert_conflict(record: &RequestRecord) -> Error {
    Error::Conflict {
        request: record.id,
        expected: 0,
    }
}

/// What a compare-and-set `UPDATE` that changed nothing means: the version
/// moved (a conflict), or there is no such request.
pub(crate) fn missed_update(record: &RequestRecord, expected_version: u64, exists: bool) -> Error {
    if exists {
        Error::Conflict {
            request: record.id,
            expected: expected_version,
        }
    } else {
        Error::request_not_found(record.id)
    }
}

/// A prune planned against another anchor than the one stored.
pub(crate) fn stale_prune(current: u64, planned: u64) -> Error {
    Error::Store(format!(
        "the audit chain was pruned up to seq {current} since this prune was planned (after seq {planned}): plan it again"
    ))
}

/// A prune whose anchor does not name a stored record with its hash.
pub(crate) fn anchor_mismatch(seq: u64) -> Error {
    Error::Store(format!(
        "audit record {seq} is not stored with the hash the prune's anchor names: plan it again"
    ))
}
