//! The tamper-evident audit log: a SHA-256 hash chain.
//!
//! Every record carries the hash of the record before it (`prev_hash`) and its
//! own hash over its canonical JSON form plus `prev_hash`. Editing a record
//! breaks its own hash; deleting or reordering records breaks the link or the
//! sequence. [`verify`] walks a chain and names the first broken record.
//!
//! The chain lives in the [`Store`](crate::store::Store): the record is
//! appended in the same transaction as the state change it describes, so a
//! state change without its audit record cannot exist. Extra [`AuditSink`]s
//! (a JSON Lines file, the function's log stream) receive a copy after the
//! commit; if one of them fails, the broker treats the operation as failed
//! (fail-closed) and takes back anything it minted.
//!
//! No secret value ever enters a record: records are built by the broker from
//! non-secret fields only, and [`Credentials`](crate::Credentials) has no
//! `Serialize` implementation that could leak into `details`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::types::{GrantId, RequestId, State};

/// The hash that the first record links to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A request was submitted.
    Requested,
    /// The policy decided.
    Decided,
    /// An approver approved.
    Approved,
    /// The policy or an approver denied.
    Denied,
    /// The requester cancelled.
    Cancelled,
    /// Credentials were minted.
    Issued,
    /// The provider refused to mint, or the grant could not be recorded.
    IssueFailed,
    /// Access was taken away early.
    Revoked,
    /// Access reached its end.
    Expired,
    /// Revocation keeps failing.
    RevocationFailed,
    /// A crash left a grant half done and the reconciler settled it.
    Reconciled,
    /// Nobody decided in time.
    TimedOut,
}

impl AuditKind {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Requested => "requested",
            AuditKind::Decided => "decided",
            AuditKind::Approved => "approved",
            AuditKind::Denied => "denied",
            AuditKind::Cancelled => "cancelled",
            AuditKind::Issued => "issued",
            AuditKind::IssueFailed => "issue_failed",
            AuditKind::Revoked => "revoked",
            AuditKind::Expired => "expired",
            AuditKind::RevocationFailed => "revocation_failed",
            AuditKind::Reconciled => "reconciled",
            AuditKind::TimedOut => "timed_out",
        }
    }
}

/// An event before it joins the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub kind: AuditKind,
    /// Which request.
    pub request_id: RequestId,
    /// Which grant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<GrantId>,
    /// Who did it (`reaper` for time-driven steps).
    pub actor: String,
    /// The request's state after the event.
    pub state: State,
    /// Non-secret details (decision, reasons, expiry, provider ids).
    #[serde(default)]
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A new event at `at`.
    pub fn new(
        at: DateTime<Utc>,
        kind: AuditKind,
        request_id: RequestId,
        actor: &str,
        state: State,
    ) -> Self {
        Self {
            at,
            kind,
            request_id,
            grant_id: None,
            actor: actor.to_string(),
            state,
            details: serde_json::Value::Null,
        }
    }

    /// Sets the grant id.
    pub fn grant(mut self, grant: Option<GrantId>) -> Self {
        self.grant_id = grant;
        self
    }

    /// Sets details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Joins the chain after `prev_hash` as record number `seq`.
    pub fn chain(self, seq: u64, prev_hash: &str) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            event: self,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1-based position in the chain.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this record's canonical JSON (hex).
    pub hash: String,
}

impl AuditRecord {
    /// Recomputes this record's hash from its content.
    pub fn compute_hash(&self) -> String {
        #[derive(Serialize)]
        struct Canonical<'a> {
            seq: u64,
            event: &'a AuditEvent,
            prev_hash: &'a str,
        }
        // serde_json maps are sorted (no `preserve_order`), struct fields have a
        // fixed order: the encoding is canonical for a given record.
        let body = serde_json::to_vec(&Canonical {
            seq: self.seq,
            event: &self.event,
            prev_hash: &self.prev_hash,
        })
        .unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(&body);
        hex::encode(h.finalize())
    }

    /// One JSON line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at position {position} (seq {seq}): {reason}")]
pub struct ChainBreak {
    /// 0-based index in the sequence given to [`verify`].
    pub position: usize,
    /// The `seq` field of that record.
    pub seq: u64,
    /// What is wrong.
    pub reason: ChainBreakReason,
}

/// What is wrong at a break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBreakReason {
    /// The record's content does not match its hash: it was edited.
    #[error("content does not match its hash (edited)")]
    HashMismatch,
    /// The record does not link to the one before: one was deleted, inserted or moved.
    #[error("does not link to the previous record (deleted, inserted or reordered)")]
    BrokenLink,
    /// The sequence number is not the next one.
    #[error("sequence number {found} where {expected} was expected")]
    Sequence {
        /// Expected seq.
        expected: u64,
        /// Found seq.
        found: u64,
    },
    /// A line could not be parsed.
    #[error("not a valid record: {0}")]
    Malformed(String),
}

/// Summary of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record (the head), to compare with a value kept elsewhere.
    pub head: String,
}

/// Verifies a whole chain from its first record.
pub fn verify<'a, I>(records: I) -> Result<ChainSummary, ChainBreak>
where
    I: IntoIterator<Item = &'a AuditRecord>,
{
    let mut prev = GENESIS_HASH.to_string();
    let mut count = 0u64;
    for (position, r) in records.into_iter().enumerate() {
        let expected_seq = position as u64 + 1;
        let brk = |reason| ChainBreak {
            position,
            seq: r.seq,
            reason,
        };
        if r.compute_hash() != r.hash {
            return Err(brk(ChainBreakReason::HashMismatch));
        }
        if r.prev_hash != prev {
            return Err(brk(ChainBreakReason::BrokenLink));
        }
        if r.seq != expected_seq {
            return Err(brk(ChainBreakReason::Sequence {
                expected: expected_seq,
                found: r.seq,
            }));
        }
        prev = r.hash.clone();
        count += 1;
    }
    Ok(ChainSummary {
        records: count,
        head: prev,
    })
}

/// Writes records as JSON Lines.
pub fn export_jsonl<'a, W: Write>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    mut out: W,
) -> std::io::Result<()> {
    for r in records {
        out.write_all(r.to_json_line().as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Verifies a JSON Lines export; a line that does not parse is a break at its position.
pub fn verify_jsonl<R: BufRead>(input: R) -> Result<ChainSummary, ChainBreak> {
    let mut records = Vec::new();
    for (position, line) in input.lines().enumerate() {
        let line = line.map_err(|e| ChainBreak {
            position,
            seq: 0,
            reason: ChainBreakReason::Malformed(e.to_string()),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let r: AuditRecord = serde_json::from_str(&line).map_err(|e| ChainBreak {
            position,
            seq: 0,
            reason: ChainBreakReason::Malformed(e.to_string()),
        })?;
        records.push(r);
    }
    verify(&records)
}

/// A copy of the chain kept outside the store. Appends are fail-closed.
#[async_trait]
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Appends one record; an error fails the operation that produced it.
    async fn append(&self, record: &AuditRecord) -> Result<()>;
}

/// Appends records as JSON Lines to a file, flushing and syncing each one.
#[derive(Debug)]
pub struct JsonlFileSink {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl JsonlFileSink {
    /// Opens (or creates) the file for appending.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::AuditFailed(format!("cannot open `{}`: {e}", path.display())))?;
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }
}

#[async_trait]
impl AuditSink for JsonlFileSink {
    async fn append(&self, record: &AuditRecord) -> Result<()> {
        let line = format!("{}\n", record.to_json_line());
        let mut f = self
            .file
            .lock()
            .map_err(|_| Error::AuditFailed("sink lock poisoned".into()))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::AuditFailed(format!("`{}`: {e}", self.path.display())))
    }
}

/// Writes each record as one JSON line to standard output (a function's log stream).
#[derive(Debug, Default)]
pub struct StdoutSink;

#[async_trait]
impl AuditSink for StdoutSink {
    async fn append(&self, record: &AuditRecord) -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", record.to_json_line())
            .and_then(|_| out.flush())
            .map_err(|e| Error::AuditFailed(format!("stdout: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        let rid = RequestId::new();
        (0..n)
            .map(|i| {
                let r = AuditEvent::new(
                    Utc::now(),
                    AuditKind::Requested,
                    rid,
                    &format!("user{i}"),
                    State::Pending,
                )
                .chain(i as u64 + 1, &prev);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let s = verify(&c).unwrap();
        assert_eq!(s.records, 5);
        assert_eq!(s.head, c[4].hash);
    }

    #[test]
    fn every_edit_delete_and_swap_is_found_at_its_position() {
        for i in 0..6 {
            let mut c = chain(6);
            c[i].event.actor = "mallory".into();
            assert_eq!(verify(&c).unwrap_err().position, i, "edit {i}");

            let mut c = chain(6);
            c.remove(i);
            if i < 5 {
                assert_eq!(verify(&c).unwrap_err().position, i, "delete {i}");
            } else {
                // Dropping the tail is only visible against a head kept elsewhere.
                assert_ne!(verify(&c).unwrap().head, chain(6)[5].hash);
            }
        }
        for i in 0..5 {
            let mut c = chain(6);
            c.swap(i, i + 1);
            assert_eq!(verify(&c).unwrap_err().position, i, "swap {i}");
        }
    }

    #[test]
    fn jsonl_roundtrip_and_malformed_line() {
        let c = chain(3);
        let mut buf = Vec::new();
        export_jsonl(&c, &mut buf).unwrap();
        assert_eq!(verify_jsonl(&buf[..]).unwrap().records, 3);
        let text = String::from_utf8(buf)
            .unwrap()
            .replacen("user1", "userX", 1);
        assert_eq!(verify_jsonl(text.as_bytes()).unwrap_err().position, 1);
    }
}
