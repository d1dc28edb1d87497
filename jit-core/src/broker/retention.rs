//! Retention: finished records and the audit chain's prefix leave the hot
//! tables for an archive file that verifies on its own.
//!
//! # How a cut is chosen
//!
//! The audit chain is one sequence for every request, so what leaves it
//! must be a prefix (a suffix of a hash chain cannot verify without what
//! came before it; a prefix can, from its anchor). The cut `S` is the
//! largest `seq` such that every audit record up to `S` belongs to a
//! request that may go and every record of those requests is at or before
//! `S`. A request may go when it is in a final state, changed last before
//! the cut-off and its grant (if any) has ended. The walk stops at the first
//! audit record of a request that may not go: a long-pending request or a
//! grant whose revocation keeps failing holds back the archiving of
//! everything after it, never the other way round.
//!
//! Finding each request's last audit record does not read to the head.
//! Every audit record is written in the same compare-and-set as a change of
//! its request (tidying too), at the broker's clock, so a request that may
//! go has no record later than its own `updated_at`. Past the stop, the walk
//! reads on only until records are `LOOKAHEAD` (ten minutes) newer than the newest
//! request taken (the allowance for clocks of several replicas disagreeing),
//! so a run reads its batch and that margin, whatever the size of the hot
//! chain behind it: clearing a backlog in batches is linear, not quadratic.
//! Should a replica's clock be further off than the allowance, the cost is a
//! request whose later record stayed behind the cut: its record is pruned
//! with the rest, and the record left in the hot chain, which still
//! verifies from the new anchor, is archived by a later run as one without
//! a stored request. Nothing is lost and no chain breaks.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::Broker;
use crate::audit::{ArchiveSegment, AuditAnchor, AuditRecord};
use crate::error::{Error, Result};
use crate::store::Prune;
use crate::types::{RequestId, RequestRecord};

/// The most audit records read per page while planning.
const PAGE: usize = 1000;

/// How much newer than the newest request taken a record must be before the
/// walk stops looking for later records of the requests taken (see the
/// module docs): the clock skew tolerated between replicas.
const LOOKAHEAD: TimeDelta = TimeDelta::minutes(10);

/// What [`Broker::archive_finished`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveReport {
    /// The segment archived and pruned; `None` when nothing could go.
    pub segment: Option<ArchiveSegment>,
    /// The archive file written (`None` when nothing could go).
    pub path: Option<PathBuf>,
    /// Audit records archived and pruned.
    pub audit_records: u64,
}

/// A request as the plan sees it: may it go, and at which version.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Final, old enough, its grant ended: may go.
    Goes,
    /// Audit records without a stored request (none to delete): may go.
    Orphan,
    /// Live or recent: stops the walk.
    Stays,
}

#[derive(Serialize)]
struct RecordLine<'a> {
    record: &'a RequestRecord,
}

impl Broker {
    /// Archives finished requests whose last change is before `older_than`
    /// together with their audit records, then prunes them from the store.
    ///
    /// Writes one JSON Lines file into `dir`,
    /// `jit-archive-<first seq>-<last seq>.jsonl`: an [`ArchiveSegment`]
    /// line, the audit records (as [`Broker::export_audit`] writes them) and
    /// one `{"record": ...}` line per request. The file verifies on its own
    /// with [`ChainVerifier::verify_jsonl`](crate::audit::ChainVerifier::verify_jsonl)
    /// (`jit audit verify`), from the anchor it starts at to the anchor it
    /// ends at, signed with the audit key when the broker has one; the next
    /// archive starts where this one ends, and the store's chain verifies
    /// from the same anchor ([`Broker::verify_audit`]). At most about
    /// `max_records` requests go per call (more audit records may come with
    /// them); call again until the report's `segment` is `None`.
    ///
    /// # Contract
    ///
    /// - **Nothing live goes.** Only requests in a final state
    ///   ([`State::is_final`](crate::State::is_final)) whose grant's end has
    ///   passed; the store refuses the prune if any of them changed since
    ///   it was read ([`Store::prune`](crate::Store::prune)).
    /// - **Export first.** The file is written to a temporary name, synced,
    ///   renamed into place and its directory synced *before* the store is
    ///   asked to prune. A crash before the prune commits leaves the store
    ///   as it was and at most a file whose content is still in the store;
    ///   running again archives the same records again (into a file of the
    ///   same name when nothing else became due, which it replaces).
    /// - **Only a chain that verifies.** The records to archive are verified
    ///   first (with the audit key when the broker has one, from the current
    ///   anchor); a break fails the call with [`Error::AuditFailed`] and
    ///   nothing is written or pruned, so an anchor is never signed over an
    ///   edited chain.
    /// - **One prune at a time.** The store applies a prune only against
    ///   the anchor it was planned on; a concurrent run fails with
    ///   [`Error::Store`] and changes nothing, and can simply run again.
    ///   Writers are never blocked for longer than the delete takes.
    pub async fn archive_finished(
        &self,
        older_than: DateTime<Utc>,
        dir: &Path,
        max_records: usize,
    ) -> Result<ArchiveReport> {
        let store = self.inner.store.as_ref();
        let now = self.inner.clock.now();
        let older_than = older_than.min(now);
        let from = store
            .audit_anchor()
            .await?
            .unwrap_or_else(AuditAnchor::genesis);
        let max_records = max_records.max(1);

        // 1. Walk the chain after the anchor: keep the records until the first
        // one of a request that stays (or the batch is full), and note every
        // request's last record until the head.
        let mut fates: HashMap<RequestId, Fate> = HashMap::new();
        let mut records: HashMap<RequestId, RequestRecord> = HashMap::new();
        let mut last: HashMap<RequestId, u64> = HashMap::new();
        let mut kept: Vec<AuditRecord> = Vec::new();
        let mut taking = true;
        // The newest change of anything taken: no later record of theirs
        // can be much newer than this.
        let mut newest: Option<DateTime<Utc>> = None;
        let mut next = from.seq + 1;
        // A page about the size of a batch (five or so records a request),
        // so a small batch does not read a thousand records.
        let page_size = max_records.saturating_mul(8).clamp(64, PAGE);
        'walk: loop {
            let page = store.audit(next, page_size).await?;
            let Some(tail) = page.last() else { break };
            next = tail.seq + 1;
            for r in page {
                let q = r.event.request_id;
                if taking {
                    let fate = match fates.get(&q) {
                        Some(f) => *f,
                        None => {
                            let fate = match store.get(q).await? {
                                Some(rec) => {
                                    let fate = fate_of(&rec, older_than, now);
                                    if matches!(fate, Fate::Goes) {
                                        records.insert(q, rec);
                                    }
                                    fate
                                }
                                None if r.event.at < older_than => Fate::Orphan,
                                None => Fate::Stays,
                            };
                            fates.insert(q, fate);
                            fate
                        }
                    };
                    if matches!(fate, Fate::Stays) || records.len() > max_records {
                        taking = false;
                    } else {
                        let changed = records.get(&q).map_or(r.event.at, |rec| rec.updated_at);
                        newest = newest.max(Some(changed.max(r.event.at)));
                        last.insert(q, r.seq);
                        kept.push(r);
                        continue;
                    }
                }
                // Past the stop: only the requests already taken matter, and
                // none of them has a record much newer than `newest`.
                match newest {
                    Some(t) if r.event.at <= t + LOOKAHEAD => {}
                    _ => break 'walk,
                }
                if let Some(l) = last.get_mut(&q) {
                    *l = r.seq;
                }
            }
        }

        // Another run pruned meanwhile: what was read may start past `from`.
        let now_anchor = store
            .audit_anchor()
            .await?
            .unwrap_or_else(AuditAnchor::genesis);
        if now_anchor.seq != from.seq {
            return Err(Error::Store(format!(
                "the audit chain was pruned up to seq {} while this run read it (from seq {}): run it again",
                now_anchor.seq, from.seq
            )));
        }

        // 2. The cut: the last point where every request seen so far has
        // all its records behind it.
        let mut cut = None;
        let mut reach = 0u64;
        for (i, r) in kept.iter().enumerate() {
            reach = reach.max(last.get(&r.event.request_id).copied().unwrap_or(r.seq));
            if reach == r.seq {
                cut = Some(i);
            }
        }
        let Some(cut) = cut else {
            return Ok(ArchiveReport {
                segment: None,
                path: None,
                audit_records: 0,
            });
        };
        kept.truncate(cut + 1);
        let mut seen = HashSet::new();
        let going: Vec<&RequestRecord> = kept
            .iter()
            .filter(|r| seen.insert(r.event.request_id))
            .filter_map(|r| records.get(&r.event.request_id))
            .collect();
        let head = kept.last().map(|r| (r.seq, r.hash.clone()));
        let Some((to_seq, to_hash)) = head else {
            return Ok(ArchiveReport {
                segment: None,
                path: None,
                audit_records: 0,
            });
        };
        // Never sign an anchor over a chain that does not verify: that would
        // bless an edit (and the hot chain would verify from it).
        if let Err(brk) = self.audit_verifier().anchor(from.clone()).verify(&kept) {
            return Err(Error::AuditFailed(format!(
                "not archiving: the stored chain does not verify: {brk}"
            )));
        }
        let to = AuditAnchor::new(to_seq, &to_hash, now, self.inner.audit_keyring.as_ref());
        let segment = ArchiveSegment {
            from: from.clone(),
            to: Some(to.clone()),
            records: going.len() as u64,
        };

        // 3. Export, durably, before anything is deleted.
        let path = dir.join(format!(
            "jit-archive-{:012}-{:012}.jsonl",
            from.seq + 1,
            to_seq
        ));
        write_archive(&path, &segment, &kept, &going)?;

        // 4. Prune, in one transaction, only what was exported.
        store
            .prune(&Prune {
                after: from.seq,
                anchor: to,
                records: going.iter().map(|r| (r.id, r.version)).collect(),
            })
            .await?;
        tracing::info!(
            from = from.seq + 1,
            to = to_seq,
            requests = going.len(),
            path = %path.display(),
            "archived and pruned finished requests"
        );
        Ok(ArchiveReport {
            segment: Some(segment),
            path: Some(path),
            audit_records: kept.len() as u64,
        })
    }
}

fn fate_of(rec: &RequestRecord, older_than: DateTime<Utc>, now: DateTime<Utc>) -> Fate {
    let ended = rec.ends_at().is_none_or(|end| end <= now);
    if rec.state.is_final() && rec.updated_at < older_than && ended {
        Fate::Goes
    } else {
        Fate::Stays
    }
}

/// Writes the archive under a temporary name, syncs it, renames it into
/// place and syncs the directory, so that once this returns the file
/// survives a crash.
fn write_archive(
    path: &Path,
    segment: &ArchiveSegment,
    audit: &[AuditRecord],
    records: &[&RequestRecord],
) -> Result<()> {
    let fail = |e: std::io::Error| {
        Error::AuditFailed(format!("cannot write archive `{}`: {e}", path.display()))
    };
    let tmp = path.with_extension("jsonl.tmp");
    {
        let file = std::fs::File::create(&tmp).map_err(fail)?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "{}", segment.to_json_line()).map_err(fail)?;
        for r in audit {
            writeln!(out, "{}", r.to_json_line()).map_err(fail)?;
        }
        for r in records {
            let line = serde_json::to_string(&RecordLine { record: r }).map_err(|e| {
                Error::AuditFailed(format!("cannot encode request `{}`: {e}", r.id))
            })?;
            writeln!(out, "{line}").map_err(fail)?;
        }
        let file = out.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(parent) = path.parent() {
        // A directory sync makes the rename durable (POSIX); where a
        // directory cannot be opened (Windows) the rename is as durable as
        // the platform makes it.
        if let Ok(d) = std::fs::File::open(parent) {
            d.sync_all().map_err(fail)?;
        }
    }
    Ok(())
}
