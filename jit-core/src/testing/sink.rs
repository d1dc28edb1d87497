//! Checks of the [`AuditSink`] contract (see its docs) that a test can
//! observe from outside: `Ok` means kept. Not checked here: durability
//! across a power cut (the file sinks sync every line; no test pulls the
//! plug) and bounded time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Utc;

use crate::audit::{
    AuditCheckpoint, AuditEvent, AuditKey, AuditKeyring, AuditKind, AuditRecord, AuditSink,
    GENESIS_HASH,
};
use crate::types::{RequestId, State};

/// What a sink keeps: a records sink, a checkpoints sink, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keeps {
    /// Whether appended records are kept.
    pub records: bool,
    /// Whether checkpoints are kept.
    pub checkpoints: bool,
}

/// Appends a short chain and a checkpoint after each record. Each time a
/// call returns `Ok`, what `read_back` returns (every line the sink's
/// storage holds now: its file, say) already holds what was acknowledged,
/// unchanged and in order, and nothing the sink does not keep.
///
/// # Panics
///
/// When a call fails or the storage does not hold what was acknowledged.
pub async fn check_ok_means_kept<F>(sink: &dyn AuditSink, keeps: Keeps, read_back: F)
where
    F: Fn() -> Vec<String>,
{
    let keyring = AuditKeyring::new(AuditKey::generate());
    let request = RequestId::new();
    let mut prev = GENESIS_HASH.to_string();
    let (mut records, mut checkpoints) = (Vec::new(), Vec::new());
    for seq in 1..=3u64 {
        let r = AuditEvent::new(
            Utc::now(),
            AuditKind::Requested,
            request,
            "alice",
            State::Pending,
        )
        .chain(seq, &prev);
        prev = r.hash.clone();
        sink.append(&r).await.expect("append failed");
        records.push(r);
        assert_kept(&read_back(), keeps, &records, &checkpoints);
        let cp = keyring.checkpoint(seq, &prev, Utc::now());
        sink.checkpoint(&cp).await.expect("checkpoint failed");
        checkpoints.push(cp);
        assert_kept(&read_back(), keeps, &records, &checkpoints);
    }
}

fn assert_kept(
    lines: &[String],
    keeps: Keeps,
    records: &[AuditRecord],
    checkpoints: &[AuditCheckpoint],
) {
    let read_records: Vec<AuditRecord> = lines
        .iter()
        .filter(|l| AuditCheckpoint::from_json_line(l).is_none())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let read_checkpoints: Vec<AuditCheckpoint> = lines
        .iter()
        .filter_map(|l| AuditCheckpoint::from_json_line(l))
        .collect();
    let want_records = if keeps.records { records } else { &[] };
    let want_checkpoints = if keeps.checkpoints { checkpoints } else { &[] };
    assert_eq!(
        read_records, want_records,
        "the sink's storage does not hold the records it acknowledged"
    );
    assert_eq!(
        read_checkpoints, want_checkpoints,
        "the sink's storage does not hold the checkpoints it acknowledged"
    );
}
