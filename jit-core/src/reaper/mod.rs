//! The reaper: the background task that keeps time-driven promises.
//!
//! Each tick it expires grants at their end (revoking at the provider where
//! expiry is not native), times out pending requests, issues approved
//! requests whose scheduled start has come, retries failed revocations,
//! settles grants a crash left in `Issuing`, and (with an audit key) sends
//! a signed checkpoint of the newest audit head this broker wrote
//! ([`Broker::checkpoint_audit`]). Every [`Reaper::tidy_every`] ticks
//! (and on the first) it also runs provider housekeeping
//! ([`Broker::tidy`], see `tidy.rs`): providers whose capabilities say so
//! remove what ended grants left at the cloud (GCP's expired conditional
//! bindings), each call bounded by [`Reaper::tidy_budget`], and every
//! removal is audited in its grant's trail as
//! [`AuditKind::Tidied`](crate::AuditKind::Tidied); a failure there is
//! logged and counted ([`ReapReport::tidy_failed`]) and never stops the
//! tick. The first tick after start
//! also hands revoked grants back to providers that keep revocations in
//! memory ([`Broker::restore_revocations`]), and, on a store this process
//! has to itself, reconciles every `Issuing` grant and finishes every
//! interrupted `Revoking` one at once ([`Broker::resume_revocations`]),
//! since none can be in flight yet; on a shared store those wait for the
//! reconcile grace, as another replica may be working on them.
//!
//! The work itself is the broker's ([`Broker::expire_due`],
//! [`Broker::settle_waiting`], [`Broker::retry_revocations`],
//! [`Broker::reconcile`]), written beside the reaper in `due.rs`: each kind
//! claims its due records and settles them one by one through one loop,
//! which logs, counts and skips a record that fails (rule 9) and hands what
//! this replica cannot do back to the others
//! ([`Broker::skipped_records`]).

mod due;
mod tidy;

pub use tidy::TidySummary;

use std::future::Future;
use std::time::Duration;

use crate::broker::Broker;
use crate::error::Result;

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Grants settled after a crash.
    pub reconciled: usize,
    /// Grants expired.
    pub expired: usize,
    /// Pending requests timed out, approved ones issued or expired.
    pub settled: usize,
    /// Revocations completed on retry.
    pub revoked: usize,
    /// Revoked grants handed back to their providers at start.
    pub restored: usize,
    /// Kinds of work that failed as a whole this tick (a store error, say);
    /// each was logged, and the tick went on with the others.
    pub failed: usize,
    /// Things provider housekeeping removed (on ticks that ran it).
    pub tidied: usize,
    /// Provider housekeeping calls, parts of them, or their audit writes
    /// that failed; each was logged, and the tick went on.
    pub tidy_failed: usize,
}

/// Background maintenance for a [`Broker`]. The host spawns [`Reaper::run`].
#[derive(Debug, Clone)]
pub struct Reaper {
    broker: Broker,
    interval: Duration,
    batch: usize,
    started: bool,
    restored: bool,
    tidy_every: u32,
    tidy_budget: usize,
    ticks: u64,
}

impl Reaper {
    /// A reaper ticking every 5 seconds.
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            interval: Duration::from_secs(5),
            batch: 500,
            started: false,
            restored: false,
            tidy_every: 60,
            tidy_budget: 20,
            ticks: 0,
        }
    }

    /// How often to tick.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How many records of each kind one tick handles.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Runs provider housekeeping ([`Broker::tidy`]) on the first tick and
    /// then every `ticks` ticks (default 60: every 5 minutes at the default
    /// interval; expired GCP bindings only need to be gone before a policy
    /// nears IAM's limits, not at once). Zero turns it off.
    pub fn tidy_every(mut self, ticks: u32) -> Self {
        self.tidy_every = ticks;
        self
    }

    /// The most remote work one provider's housekeeping may do per run
    /// (default 20; for jit-gcp, policy read-modify-writes), so a run
    /// never stalls the tick; the rest waits for the next run.
    pub fn tidy_budget(mut self, budget: usize) -> Self {
        self.tidy_budget = budget.max(1);
        self
    }

    /// One pass over all due work. The first call reconciles every `Issuing` grant.
    pub async fn tick(&mut self) -> Result<ReapReport> {
        let mut report = ReapReport::default();
        // One kind of work failing never stops the others (rule 9): a store
        // hiccup in reconciliation must not keep grants from expiring.
        let mut count = |work: &'static str, result: Result<usize>| match result {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(work, error = %e, "reaper work failed; the tick goes on with the rest");
                report.failed += 1;
                0
            }
        };
        let mut resumed = 0;
        if !self.restored {
            // Until it succeeds: a provider that keeps revocations in memory
            // would otherwise honour revoked grants again after a restart.
            match self.broker.restore_revocations().await {
                Ok(n) => {
                    self.restored = true;
                    report.restored = n;
                }
                Err(e) => {
                    count("restore revocations", Err(e));
                }
            }
        }
        if !self.started {
            resumed = count(
                "resume revocations",
                self.broker.resume_revocations(self.batch).await,
            );
        }
        let reconciled = count("reconcile", self.broker.reconcile(!self.started).await);
        self.started = true;
        let expired = count("expire", self.broker.expire_due(self.batch).await);
        let settled = count("settle", self.broker.settle_waiting(self.batch).await);
        let revoked = resumed
            + count(
                "retry revocations",
                self.broker.retry_revocations(self.batch).await,
            );
        // Bounds how many of the newest audit records could be cut off unseen.
        count(
            "checkpoint audit",
            self.broker.checkpoint_audit().await.map(|_| 0),
        );
        if self.tidy_every > 0 && self.ticks % u64::from(self.tidy_every) == 0 {
            // Last, after the grants that ended this tick were expired.
            let tidy = self.broker.tidy(self.tidy_budget).await;
            report.tidied = tidy.removed;
            report.tidy_failed = tidy.failed;
        }
        self.ticks = self.ticks.wrapping_add(1);
        report.reconciled = reconciled;
        report.expired = expired;
        report.settled = settled;
        report.revoked = revoked;
        Ok(report)
    }

    /// Ticks until `shutdown` completes. Errors are logged and retried next tick.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticker.tick() => {
                    match self.tick().await {
                        Ok(r) if r != ReapReport::default() => tracing::info!(?r, "reaper tick"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "reaper tick failed"),
                    }
                }
            }
        }
    }
}
