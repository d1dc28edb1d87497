//! Early revocation through one inline deny policy on the role.
//!
//! STS sessions cannot be deleted. What IAM can do is deny: an identity
//! policy on the role is evaluated on every request its sessions make, so a
//! `Deny *` whose condition matches one session ends that session's access
//! (within IAM's propagation delay, typically seconds, documented as up to
//! minutes) while the role's other sessions keep working.
//!
//! # The document
//!
//! jit-aws owns one inline policy per role (default name `jit-revocations`):
//!
//! ```json
//! {"Version":"2012-10-17","Statement":[
//!   {"Sid":"JitRevokedUntil1767225600","Effect":"Deny","Action":"*","Resource":"*",
//!    "Condition":{"StringEquals":{"aws:userid":["AROAEXAMPLEROLEID1234:jit-0f5c...","..."]}}},
//!   {"Sid":"JitRevokeOlderSessions","Effect":"Deny","Action":"*","Resource":"*",
//!    "Condition":{"DateLessThan":{"aws:TokenIssueTime":"2026-01-01T00:00:00Z"}}}
//! ]}
//! ```
//!
//! - **Matching one session.** For a role session, `aws:userid` is
//!   `ROLE_ID:RoleSessionName`, exactly the `AssumedRoleId` that
//!   `AssumeRole` returns, which is what the deny names. The session name
//!   is derived from the grant id, so the condition matches exactly the
//!   sessions minted for that grant and nothing else. A record without it
//!   (rebuilt from the spec) takes the role id from a fresh `iam:GetRole`,
//!   never from the cache: a role deleted and recreated under the same name
//!   has a new id. It also works for a grant whose session no longer or
//!   never existed.
//! - **The right role.** IAM's role APIs take a bare role name and act in
//!   the caller's account; a role in another account is read and written
//!   through that account's management role
//!   ([`crate::AwsConfig::management_roles`]), and a role in an account with
//!   none is refused when the catalogue loads.
//! - **Pruning, and where the expiry lives.** Sessions are grouped into one
//!   statement per hour of expiry; the `Sid` carries the end of that hour as
//!   Unix seconds (`JitRevokedUntil<secs>`). Once that time (plus 5 minutes
//!   of clock skew) has passed, every session in it has expired at AWS, and
//!   the statement is dropped on the next write. The expiry is kept in the
//!   `Sid` rather than as a `DateLessThan aws:TokenIssueTime` condition
//!   because the `Sid` is never evaluated: the deny matches on `aws:userid`
//!   alone, which keeps its meaning obvious to a reviewer and evaluable by
//!   emulators that understand only `StringEquals`.
//! - **Role-wide revocation** ([`crate::AwsProvider::revoke_all_sessions`]):
//!   AWS's own "revoke active sessions" pattern, denying every session issued
//!   before now; it is dropped once no session issued before it can still be
//!   alive (12 hours, STS's longest session, plus the skew margin).
//! - **Size.** IAM limits the aggregate inline policy size of a role to
//!   10,240 non-whitespace characters. The document is written minified and
//!   measured before every write. Per-grant entries never use the room of
//!   the role-wide statement (`RevocationDoc::role_wide_room`), so that
//!   one can always be written. When an entry does not fit, expired entries
//!   are pruned first, then all entries are merged into one statement
//!   denied until the latest expiry (`RevocationDoc::compact`: a session
//!   is dead after its expiry, so denying it longer changes nothing). About
//!   140 concurrent revocations per role fit.
//! - **Full anyway.** [`jit_core::Provider::revoke_reporting`] (what the
//!   broker calls) then falls back to the role-wide deny and reports it as
//!   collateral: the broker records every other grant of the role that the
//!   deny certainly cut off as revoked, with the reason, in the audit
//!   trail. Plain [`jit_core::Provider::revoke`] fails instead (a typed
//!   error; the broker would show `RevocationFailed` and retry), so other
//!   grants are never cut off without a record.
//! - **Other statements** in the document (added by a person) are kept.
//!
//! # Concurrency
//!
//! IAM has no conditional write for inline policies: two processes that
//! read the document, add an entry and write it back can erase each
//! other's entry. So:
//!
//! - **Across processes** (broker replicas, the Lambda function's
//!   fail-closed revoke), with a lease store configured
//!   ([`crate::AwsProviderBuilder::lease_store`]), the whole
//!   read-merge-write-verify of one role runs under the lease
//!   `aws:revocations:<role arn>` in the shared store
//!   ([`jit_core::lease`]): one writer per role at a time. The lease is
//!   confirmed (renewed) between the read and each write, so a writer
//!   whose lease lapsed (a long pause) stops instead of overwriting the
//!   next holder's document; a lease that cannot be had within its wait is
//!   a retryable error, and the broker retries the revocation.
//! - **Without a lease store** only this process is serialised: this is
//!   safe for a single broker process only.
//! - **Within a process**, writes for one role are also serialised by an
//!   async mutex (so one process's tasks queue in memory, not on the lease);
//!   every STS and IAM call has an operation timeout
//!   ([`crate::AwsConfig::call_timeout`]), so a stalled call cannot hold it
//!   (or the lease) for ever.
//! - What this process wrote is remembered and, for [`CONSISTENCY_WINDOW`]
//!   after the write, merged into what it reads (against a stale read from
//!   IAM's eventual consistency). After that, IAM is the truth: a statement
//!   someone removed (an operator editing the policy) is logged and not
//!   re-added from memory. After each write the document is read back, and
//!   if another writer (one without the lease) replaced it, the
//!   merge-and-write is repeated (up to 5 times, then a retryable error).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use jit_core::lease::{Lease, LeaseOptions};
use jit_core::provider::retry::Backoff;
use jit_core::{Clock, Store};
use serde_json::{json, Map, Value};

use crate::client::{self, AwsClients};
use crate::error::AwsError;

/// `Sid` prefix of a per-grant statement; the rest is the hour's end in Unix seconds.
pub const SID_REVOKED_UNTIL: &str = "JitRevokedUntil";
/// `Sid` of the role-wide statement.
pub const SID_OLDER_SESSIONS: &str = "JitRevokeOlderSessions";
/// Clock skew allowed before a statement is considered expired.
pub const PRUNE_MARGIN: Duration = Duration::from_secs(300);
/// Granularity of the expiry buckets.
pub const BUCKET: i64 = 3600;
/// Longest life of a session issued before a role-wide revocation.
const LONGEST_SESSION: TimeDelta = TimeDelta::hours(12);
const ATTEMPTS: usize = 5;
/// Between read-merge-write-verify rounds: 200, 400, 800, 1600 ms, jittered
/// so that two processes that lost the same round do not collide again.
const REWRITE_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(2)).with_jitter(true);
/// How long what this process wrote is merged into what it reads: long
/// enough to outlast IAM's eventual consistency (a read that does not yet
/// show our own write), short enough that an operator's deliberate removal
/// of a statement is not undone from memory later on.
pub const CONSISTENCY_WINDOW: Duration = Duration::from_secs(120);

/// The parsed revocation document.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RevocationDoc {
    /// Hour end (Unix seconds) → `aws:userid` values revoked in that bucket.
    pub buckets: BTreeMap<i64, BTreeSet<String>>,
    /// Sessions issued before this instant are denied.
    pub older_than: Option<DateTime<Utc>>,
    /// Statements jit-aws did not write, kept as they are.
    pub foreign: Vec<Value>,
}

fn bucket_of(expires_at: DateTime<Utc>) -> i64 {
    let t = expires_at.timestamp();
    // Round up so the bucket never ends before a session in it.
    t.div_euclid(BUCKET) * BUCKET + if t.rem_euclid(BUCKET) == 0 { 0 } else { BUCKET }
}

fn margin() -> TimeDelta {
    TimeDelta::seconds(PRUNE_MARGIN.as_secs() as i64)
}

impl RevocationDoc {
    /// Parses a document; statements that are not jit-aws's are kept as foreign.
    pub fn parse(text: &str) -> Result<Self, AwsError> {
        let bad = |m: &str| AwsError::Rejected {
            call: "iam:GetRolePolicy",
            code: "UnreadableRevocationPolicy".into(),
            message: Some(m.to_string()),
        };
        let v: Value = serde_json::from_str(text).map_err(|_| bad("the policy is not JSON"))?;
        let statements = match v.get("Statement") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(o @ Value::Object(_)) => vec![o.clone()],
            Some(_) => return Err(bad("`Statement` is neither a list nor an object")),
        };
        let mut doc = RevocationDoc::default();
        for s in statements {
            let sid = s.get("Sid").and_then(Value::as_str).unwrap_or_default();
            if let Some(secs) = sid
                .strip_prefix(SID_REVOKED_UNTIL)
                .and_then(|n| n.parse::<i64>().ok())
            {
                let ids = s
                    .pointer("/Condition/StringEquals/aws:userid")
                    .map(|v| match v {
                        Value::String(x) => vec![x.clone()],
                        Value::Array(a) => a
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect(),
                        _ => Vec::new(),
                    })
                    .unwrap_or_default();
                doc.buckets.entry(secs).or_default().extend(ids);
            } else if sid == SID_OLDER_SESSIONS {
                let at = s
                    .pointer("/Condition/DateLessThan/aws:TokenIssueTime")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                doc.older_than = doc.older_than.max(at);
            } else {
                doc.foreign.push(s);
            }
        }
        Ok(doc)
    }

    /// The minified document.
    pub fn render(&self) -> String {
        let mut statements: Vec<Value> = self.foreign.clone();
        for (until, ids) in &self.buckets {
            if ids.is_empty() {
                continue;
            }
            let ids: Vec<&String> = ids.iter().collect();
            let cond = if ids.len() == 1 {
                json!(ids[0])
            } else {
                json!(ids)
            };
            statements.push(json!({
                "Sid": format!("{SID_REVOKED_UNTIL}{until}"),
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:userid": cond}},
            }));
        }
        if let Some(t) = self.older_than {
            statements.push(json!({
                "Sid": SID_OLDER_SESSIONS,
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"DateLessThan": {"aws:TokenIssueTime": t.to_rfc3339_opts(SecondsFormat::Secs, true)}},
            }));
        }
        let mut doc = Map::new();
        doc.insert("Version".into(), json!("2012-10-17"));
        doc.insert("Statement".into(), Value::Array(statements));
        Value::Object(doc).to_string()
    }

    /// Whether nothing is left to deny.
    pub fn is_empty(&self) -> bool {
        self.foreign.is_empty()
            && self.older_than.is_none()
            && self.buckets.values().all(BTreeSet::is_empty)
    }

    /// The size IAM counts: characters that are not whitespace.
    pub fn size(&self) -> usize {
        self.render().chars().filter(|c| !c.is_whitespace()).count()
    }

    /// Whether the session is denied until at least `expires_at`.
    pub fn covers(&self, userid: &str, expires_at: DateTime<Utc>) -> bool {
        let need = bucket_of(expires_at);
        self.buckets
            .range(need..)
            .any(|(_, ids)| ids.contains(userid))
    }

    /// Adds a session, denied until the end of its expiry's hour.
    pub fn add(&mut self, userid: &str, expires_at: DateTime<Utc>) {
        if !self.covers(userid, expires_at) {
            self.buckets
                .entry(bucket_of(expires_at))
                .or_default()
                .insert(userid.to_string());
        }
    }

    /// Drops what can no longer match a live session.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let cutoff = (now - margin()).timestamp();
        self.buckets
            .retain(|until, ids| *until >= cutoff && !ids.is_empty());
        if let Some(t) = self.older_than {
            if t + LONGEST_SESSION + margin() < now {
                self.older_than = None;
            }
        }
    }

    /// Everything in `other` added to `self` (union; the later role-wide time).
    pub fn merge(&mut self, other: &RevocationDoc) {
        for (until, ids) in &other.buckets {
            self.buckets
                .entry(*until)
                .or_default()
                .extend(ids.iter().cloned());
        }
        self.older_than = self.older_than.max(other.older_than);
        for s in &other.foreign {
            if !self.foreign.contains(s) {
                self.foreign.push(s.clone());
            }
        }
    }

    /// The room the role-wide statement needs (with its separating comma).
    /// Per-grant entries never use it, so the role-wide deny, the fallback
    /// when per-grant room runs out, can always be written.
    pub fn role_wide_room() -> usize {
        // Every RFC 3339 second has the same length.
        let with = RevocationDoc {
            older_than: DateTime::<Utc>::from_timestamp(0, 0),
            ..RevocationDoc::default()
        };
        with.size() - RevocationDoc::default().size() + 1
    }

    /// The size budget for this document under `limit`: the role-wide
    /// statement's room is held back while it is absent.
    pub fn budget(&self, limit: usize) -> usize {
        if self.older_than.is_some() {
            limit
        } else {
            limit.saturating_sub(Self::role_wide_room())
        }
    }

    /// Shrinks the document to fit `budget` where that keeps its meaning
    /// for every live session: all per-grant entries move into one
    /// statement denied until the latest expiry among them. A session is
    /// dead at AWS after its expiry, so denying its `aws:userid` longer
    /// changes nothing; it only keeps the entry until the last of them can
    /// be pruned. Call after [`RevocationDoc::prune`] (expired entries go
    /// first). Does nothing when the document already fits.
    pub fn compact(&mut self, budget: usize) {
        if self.size() <= budget || self.buckets.len() < 2 {
            return;
        }
        let Some(latest) = self.buckets.keys().next_back().copied() else {
            return;
        };
        let mut all = BTreeSet::new();
        for ids in std::mem::take(&mut self.buckets).into_values() {
            all.extend(ids);
        }
        self.buckets.insert(latest, all);
    }

    /// Whether `self` contains everything `other` does (ignoring pruned parts).
    fn includes(&self, other: &RevocationDoc) -> bool {
        // An entry denied until a later hour (after compaction) counts.
        other.buckets.iter().all(|(until, ids)| {
            ids.iter()
                .all(|id| self.buckets.range(until..).any(|(_, s)| s.contains(id)))
        }) && (other.older_than.is_none() || self.older_than >= other.older_than)
    }
}

/// One change to apply.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Deny one session until its expiry.
    Session {
        userid: String,
        expires_at: DateTime<Utc>,
    },
    /// Deny every session issued before the instant.
    OlderThan(DateTime<Utc>),
}

/// The shared store whose leases serialise writers across processes.
#[derive(Debug, Clone)]
pub(crate) struct LeaseConfig {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// This provider's holder id, unique per process.
    pub holder: String,
    pub options: LeaseOptions,
}

/// The lease key of a role's revocation policy.
pub(crate) fn lease_key(role_arn: &str) -> String {
    format!("aws:revocations:{role_arn}")
}

/// Per-role locks and what this process has written.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    pub locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per role: the document this process last wrote, and when.
    pub written: Mutex<HashMap<String, (RevocationDoc, DateTime<Utc>)>>,
    /// Cross-process writers: `None` is single-process only (see the module docs).
    pub lease: Option<LeaseConfig>,
    /// Test-only fault injection: a random pause of up to this long
    /// between reading the document and writing it.
    #[cfg(feature = "testing")]
    pub write_delay: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where and how to write.
pub(crate) struct Target<'a> {
    pub clients: &'a AwsClients,
    /// The role's ARN: names its lease.
    pub role_arn: &'a str,
    pub role_name: &'a str,
    pub policy_name: &'a str,
    pub limit: usize,
}

impl Revocations {
    /// Merges what this process wrote for the role into `next`, if it wrote
    /// it within [`CONSISTENCY_WINDOW`] (IAM may not show it yet). Older
    /// writes are not re-added: IAM has had time to show them, so their
    /// absence is someone's removal (an operator editing the policy), which
    /// is logged and respected instead of silently undone.
    fn merge_recent_writes(
        &self,
        t: &Target<'_>,
        current: &RevocationDoc,
        next: &mut RevocationDoc,
        now: DateTime<Utc>,
    ) {
        let mut written = lock(&self.written);
        let Some((mine, at)) = written.get(t.role_name) else {
            return;
        };
        let window = TimeDelta::seconds(CONSISTENCY_WINDOW.as_secs() as i64);
        if now - *at < window {
            next.merge(mine);
            return;
        }
        let mut live = mine.clone();
        live.prune(now);
        if !current.includes(&live) {
            tracing::warn!(
                role = t.role_name,
                policy = t.policy_name,
                "statements this process wrote to the revocation policy were removed by someone else; not re-adding them"
            );
        }
        written.remove(t.role_name);
    }

    fn role_lock(&self, role: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks)
            .entry(role.to_string())
            .or_default()
            .clone()
    }

    /// Applies a change with read-merge-write-verify, under the role's
    /// lease when a lease store is configured (see the module docs).
    /// Returns `Ok(false)` when the role no longer exists (its sessions
    /// cannot work either).
    pub async fn apply(
        &self,
        t: &Target<'_>,
        change: &Change,
        now: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        let role_lock = self.role_lock(t.role_arn);
        let _guard = role_lock.lock().await;
        match &self.lease {
            None => self.apply_held(t, change, now, None).await,
            Some(l) => {
                jit_core::lease::with_lease(
                    l.store.clone(),
                    l.clock.clone(),
                    &lease_key(t.role_arn),
                    &l.holder,
                    &l.options,
                    |lease| self.apply_held(t, change, now, Some(lease)),
                )
                .await
            }
        }
    }

    /// Test-only: the injected pause between read and write.
    async fn pause_before_write(&self) {
        #[cfg(feature = "testing")]
        if let Some(max) = self.write_delay {
            let max = u64::try_from(max.as_micros()).unwrap_or(u64::MAX).max(1);
            let r = u64::from_le_bytes(
                uuid::Uuid::new_v4().as_bytes()[..8]
                    .try_into()
                    .unwrap_or_default(),
            );
            tokio::time::sleep(Duration::from_micros(r % max)).await;
        }
    }

    /// The read-merge-write-verify, with this process's role lock (and the
    /// lease, if any) held.
    async fn apply_held(
        &self,
        t: &Target<'_>,
        change: &Change,
        now: DateTime<Utc>,
        lease: Option<Lease>,
    ) -> Result<bool, AwsError> {
        let mut want = RevocationDoc::default();
        match change {
            Change::Session { userid, expires_at } => want.add(userid, *expires_at),
            Change::OlderThan(at) => want.older_than = Some(*at),
        }
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(REWRITE_BACKOFF.delay(attempt as u32 - 1)).await;
            }
            let current = match client::get_role_policy(t.clients, t.role_name, t.policy_name).await
            {
                Ok(Some(text)) => RevocationDoc::parse(&text)?,
                Ok(None) => RevocationDoc::default(),
                Err(e) if e.is_no_such_entity() => return Ok(false),
                Err(e) => return Err(e),
            };
            let mut next = current.clone();
            self.merge_recent_writes(t, &current, &mut next, now);
            next.merge(&want);
            next.prune(now);
            let budget = match change {
                Change::Session { .. } => next.budget(t.limit),
                Change::OlderThan(_) => t.limit,
            };
            next.compact(budget);
            if attempt == 0 && next == current && current.includes(&want) {
                // Already in force: idempotent, no write.
                return Ok(true);
            }
            let size = next.size();
            if size > budget {
                return Err(AwsError::RevocationPolicyFull {
                    role: t.role_name.to_string(),
                    policy: t.policy_name.to_string(),
                    size,
                    limit: t.limit,
                    reserved: t.limit - budget,
                });
            }
            self.pause_before_write().await;
            if let Some(lease) = &lease {
                // Still ours: nobody else has written since our read.
                lease.confirm().await?;
            }
            let written = if next.is_empty() {
                client::delete_role_policy(t.clients, t.role_name, t.policy_name).await
            } else {
                client::put_role_policy(t.clients, t.role_name, t.policy_name, &next.render()).await
            };
            match written {
                Ok(()) => {}
                Err(e) if e.is_no_such_entity() => return Ok(false),
                Err(AwsError::Rejected { code, .. }) if code == "LimitExceeded" => {
                    return Err(AwsError::RevocationPolicyFull {
                        role: t.role_name.to_string(),
                        policy: t.policy_name.to_string(),
                        size,
                        limit: t.limit,
                        reserved: t.limit - budget,
                    })
                }
                Err(e) => return Err(e),
            }
            lock(&self.written).insert(t.role_name.to_string(), (next.clone(), now));
            // Read back: another replica may have replaced the document in between.
            let back = match client::get_role_policy(t.clients, t.role_name, t.policy_name).await? {
                Some(text) => RevocationDoc::parse(&text)?,
                None => RevocationDoc::default(),
            };
            let mut pruned_want = want.clone();
            pruned_want.prune(now);
            if back.includes(&pruned_want) {
                return Ok(true);
            }
            tracing::warn!(
                role = t.role_name,
                attempt,
                "revocation policy changed under us; merging again"
            );
        }
        Err(AwsError::RevocationContended {
            role: t.role_name.to_string(),
            policy: t.policy_name.to_string(),
            attempts: ATTEMPTS,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn buckets_round_up_to_the_hour() {
        assert_eq!(
            bucket_of(t("2026-01-01T00:00:00Z")),
            t("2026-01-01T00:00:00Z").timestamp()
        );
        assert_eq!(
            bucket_of(t("2026-01-01T00:00:01Z")),
            t("2026-01-01T01:00:00Z").timestamp()
        );
        assert_eq!(
            bucket_of(t("2026-01-01T00:59:59Z")),
            t("2026-01-01T01:00:00Z").timestamp()
        );
    }

    #[test]
    fn render_parse_round_trip_and_foreign_statements_survive() {
        let mut d = RevocationDoc::default();
        d.add("AROA1:jit-a", t("2026-01-01T00:10:00Z"));
        d.add("AROA1:jit-b", t("2026-01-01T00:20:00Z"));
        d.add("AROA1:jit-c", t("2026-01-01T05:00:00Z"));
        d.older_than = Some(t("2026-01-01T00:00:00Z"));
        d.foreign
            .push(json!({"Sid": "Human", "Effect": "Deny", "Action": "s3:*", "Resource": "*"}));
        let text = d.render();
        assert!(!text.contains(' '), "{text}");
        let back = RevocationDoc::parse(&text).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.buckets.len(), 2);
        let v: Value = serde_json::from_str(&text).unwrap();
        let first = &v["Statement"][1];
        assert_eq!(
            first["Sid"],
            format!("JitRevokedUntil{}", t("2026-01-01T01:00:00Z").timestamp())
        );
        assert_eq!(first["Effect"], "Deny");
        assert_eq!(
            first["Condition"]["StringEquals"]["aws:userid"],
            json!(["AROA1:jit-a", "AROA1:jit-b"])
        );
        // A single entry is a plain string, which every evaluator understands.
        assert_eq!(
            v["Statement"][2]["Condition"]["StringEquals"]["aws:userid"],
            json!("AROA1:jit-c")
        );
        assert_eq!(
            v["Statement"][3]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn add_is_idempotent_and_covers_later_buckets() {
        let mut d = RevocationDoc::default();
        d.add("A:x", t("2026-01-01T03:00:00Z"));
        let once = d.clone();
        d.add("A:x", t("2026-01-01T03:00:00Z"));
        d.add("A:x", t("2026-01-01T02:00:00Z"));
        assert_eq!(d, once);
        assert!(d.covers("A:x", t("2026-01-01T01:00:00Z")));
        assert!(!d.covers("A:x", t("2026-01-01T04:00:00Z")));
        assert!(!d.covers("A:y", t("2026-01-01T01:00:00Z")));
    }

    #[test]
    fn prune_drops_only_what_has_expired() {
        let mut d = RevocationDoc::default();
        d.add("A:old", t("2026-01-01T00:30:00Z"));
        d.add("A:new", t("2026-01-01T02:30:00Z"));
        d.older_than = Some(t("2026-01-01T00:00:00Z"));
        // 01:00 bucket + 5 min margin: kept at 01:04, dropped at 01:06.
        d.prune(t("2026-01-01T01:04:00Z"));
        assert!(d.covers("A:old", t("2026-01-01T00:30:00Z")));
        d.prune(t("2026-01-01T01:06:00Z"));
        assert!(!d.covers("A:old", t("2026-01-01T00:30:00Z")));
        assert!(d.covers("A:new", t("2026-01-01T02:30:00Z")));
        assert!(d.older_than.is_some());
        d.prune(t("2026-01-01T12:06:00Z"));
        assert!(d.older_than.is_none());
        assert!(d.is_empty());
    }

    #[test]
    fn merge_is_a_union() {
        let mut a = RevocationDoc::default();
        a.add("A:1", t("2026-01-01T00:30:00Z"));
        let mut b = RevocationDoc::default();
        b.add("A:2", t("2026-01-01T00:30:00Z"));
        b.older_than = Some(t("2026-01-01T00:00:00Z"));
        a.merge(&b);
        assert!(a.includes(&b));
        assert!(a.covers("A:1", t("2026-01-01T00:30:00Z")));
    }

    #[test]
    fn about_140_sessions_fit_the_iam_limit() {
        let mut d = RevocationDoc::default();
        let base = t("2026-01-01T00:00:00Z");
        let mut n = 0;
        loop {
            let mut next = d.clone();
            // Spread over 12 hourly buckets: the worst realistic overhead.
            next.add(
                &format!("AROA{:017}:jit-{:032x}", 0, n),
                base + TimeDelta::minutes(5 * (n % 144) as i64),
            );
            if next.size() > 10_240 {
                break;
            }
            d = next;
            n += 1;
        }
        assert!(n >= 140, "only {n} fit");
    }

    // Regression (issue 10 item 3): per-grant entries could fill the whole
    // limit, after which the role-wide deny did not fit either.
    #[test]
    fn a_list_filled_to_its_budget_still_takes_the_role_wide_statement() {
        let limit = 2_000;
        let base = t("2026-01-01T00:00:00Z");
        let mut d = RevocationDoc::default();
        for n in 0.. {
            let mut next = d.clone();
            next.add(
                &format!("AROA{:017}:jit-{:032x}", 0, n),
                base + TimeDelta::minutes(50 * (n % 12) as i64),
            );
            next.compact(next.budget(limit));
            if next.size() > next.budget(limit) {
                break;
            }
            d = next;
        }
        assert!(d.size() <= limit - RevocationDoc::role_wide_room());
        d.older_than = Some(base);
        assert!(d.size() <= limit, "{} > {limit}", d.size());
        // With the statement present, its room is no longer held back.
        assert_eq!(d.budget(limit), limit);
    }

    #[test]
    fn compaction_merges_buckets_into_the_latest_and_keeps_every_denial() {
        let mut d = RevocationDoc::default();
        let ids: Vec<String> = (0..6).map(|n| format!("AROA1:jit-{n}")).collect();
        for (n, id) in ids.iter().enumerate() {
            d.add(id, t("2026-01-01T00:30:00Z") + TimeDelta::hours(n as i64));
        }
        let before = d.size();
        let wide = d.clone();
        d.compact(before);
        assert_eq!(d, wide, "a document that fits is left alone");
        d.compact(before - 1);
        assert_eq!(d.buckets.len(), 1);
        assert!(d.size() < before);
        assert!(d.includes(&wide));
        for id in &ids {
            assert!(d.covers(id, t("2026-01-01T05:30:00Z")));
        }
        let back = RevocationDoc::parse(&d.render()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn garbage_is_an_error_not_a_reset() {
        assert!(RevocationDoc::parse("not json").is_err());
        assert!(RevocationDoc::parse(r#"{"Statement": 3}"#).is_err());
        assert!(RevocationDoc::parse(r#"{"Version":"2012-10-17"}"#)
            .unwrap()
            .is_empty());
    }
}
