//! Retention: the server's way to run
//! [`Broker::archive_finished`](jit_core::Broker::archive_finished).
//!
//! Operators of Vault or Teleport expect two things: a setting that keeps
//! the hot store at a window (`[retention] keep = "90d"`, `every = "1h"`),
//! and a command an admin can run now (`jit admin archive`, which calls
//! `POST /v1/admin/archive`). Both run the same code here, one run at a
//! time per server; a run loops over batches until nothing more is old
//! enough. Where files go is the server's configuration, never the
//! caller's: an admin API that wrote to a path it was given would let a
//! stolen admin token write files anywhere the server may.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use jit_core::wire::{ArchiveAnswer, ArchiveFile};
use jit_core::Broker;

use crate::config::RetentionConfig;

/// Batches one run archives at most: a run ends even while writers keep
/// finishing requests faster than it archives them.
const MAX_BATCHES: usize = 10_000;

/// `[retention]`, checked.
#[derive(Debug)]
pub struct Retention {
    dir: PathBuf,
    keep: Duration,
    every: Option<Duration>,
    batch: usize,
    /// One run at a time: two would plan against the same anchor and one
    /// would be refused by the store.
    running: tokio::sync::Mutex<()>,
}

fn duration(key: &str, text: &str) -> Result<Duration, String> {
    jit_core::types::parse_duration(text)
        .map_err(|e| format!("retention: `{key}` = `{}`: {e}", text.escape_debug()))
}

impl Retention {
    /// Checks `[retention]` and creates its directory (`0700`); `None`
    /// without a `dir` (then `every` is an error: there would be nowhere
    /// to write).
    pub fn from_config(c: &RetentionConfig) -> Result<Option<Arc<Self>>, String> {
        let Some(dir) = &c.dir else {
            if c.every.is_some() {
                return Err("retention: `every` needs `dir`, where archives go".into());
            }
            return Ok(None);
        };
        let keep = duration("keep", &c.keep)?;
        let every = c
            .every
            .as_deref()
            .map(|e| duration("every", e))
            .transpose()?;
        if every.is_some_and(|e| e.is_zero()) {
            return Err("retention: `every` must be more than 0s".into());
        }
        if c.batch == 0 {
            return Err("retention: `batch` must be at least 1".into());
        }
        create_private_dir(dir)?;
        Ok(Some(Arc::new(Self {
            dir: dir.clone(),
            keep,
            every,
            batch: c.batch,
            running: tokio::sync::Mutex::new(()),
        })))
    }

    /// The configured `keep`.
    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// The configured schedule, if any.
    pub fn every(&self) -> Option<Duration> {
        self.every
    }

    /// Archives and prunes every finished request whose last change is
    /// older than `older_than` (by the broker's clock), batch by batch.
    /// Each batch is its own file and its own prune transaction: when a
    /// later batch fails, the earlier ones stay archived (and are logged),
    /// and running again continues from there.
    pub async fn archive(
        &self,
        broker: &Broker,
        older_than: Duration,
    ) -> jit_core::Result<ArchiveAnswer> {
        let _one = self.running.lock().await;
        let age = TimeDelta::from_std(older_than).map_err(|_| {
            jit_core::Error::Store(format!(
                "retention: `older_than` of {}s is out of range",
                older_than.as_secs()
            ))
        })?;
        let now = broker.clock().now();
        let cut_off = now
            .checked_sub_signed(age)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let mut answer = ArchiveAnswer {
            cut_off,
            requests: 0,
            audit_records: 0,
            archives: Vec::new(),
        };
        for _ in 0..MAX_BATCHES {
            let report = match broker
                .archive_finished(cut_off, &self.dir, self.batch)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    if !answer.archives.is_empty() {
                        tracing::warn!(
                            error = %e,
                            archived = answer.requests,
                            files = answer.archives.len(),
                            "retention run stopped after archiving some batches"
                        );
                    }
                    return Err(e);
                }
            };
            let (Some(segment), Some(path)) = (report.segment, report.path) else {
                break;
            };
            let to_seq = segment.to.as_ref().map_or(segment.from.seq, |a| a.seq);
            answer.requests += segment.records;
            answer.audit_records += report.audit_records;
            answer.archives.push(ArchiveFile {
                path: path.display().to_string(),
                from_seq: segment.from.seq + 1,
                to_seq,
                requests: segment.records,
                audit_records: report.audit_records,
            });
        }
        Ok(answer)
    }

    /// Archives with `keep` every `every` until `stop` resolves (returns at
    /// once without a schedule). A failed run is logged and retried at the
    /// next tick: the store is never left half-pruned by one. The first run
    /// is one period after the start.
    pub async fn run_every(
        self: Arc<Self>,
        broker: Broker,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let Some(every) = self.every else { return };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            // Shutdown does not wait for a long run: a run cut off before
            // its prune commits leaves the store as it was (and at most an
            // archive file whose content is still in the store).
            let run = tokio::select! {
                () = &mut stop => return,
                r = self.archive(&broker, self.keep) => r,
            };
            match run {
                Ok(a) if a.requests > 0 || a.audit_records > 0 => tracing::info!(
                    requests = a.requests,
                    audit_records = a.audit_records,
                    files = a.archives.len(),
                    "retention: archived finished requests"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "retention run failed; retrying at the next tick")
                }
            }
        }
    }
}

/// Creates `dir` (and its parents) readable by the server's user only: the
/// archives hold every request and audit record that left the store.
fn create_private_dir(dir: &std::path::Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("retention: cannot create `{}`: {e}", dir.display());
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(fail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = |dir: Option<PathBuf>, keep: &str, every: Option<&str>, batch| RetentionConfig {
            dir,
            keep: keep.into(),
            every: every.map(str::to_string),
            batch,
        };
        assert!(Retention::from_config(&RetentionConfig::default())
            .unwrap()
            .is_none());
        let target = dir.path().join("a/b");
        let r = Retention::from_config(&c(Some(target.clone()), "30d", Some("1h"), 10))
            .unwrap()
            .unwrap();
        assert_eq!(r.keep(), Duration::from_secs(30 * 86_400));
        assert_eq!(r.every(), Some(Duration::from_secs(3600)));
        assert!(target.is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        for (bad, says) in [
            (c(None, "90d", Some("1h"), 10), "needs `dir`"),
            (c(Some(target.clone()), "ninety", None, 10), "`keep`"),
            (c(Some(target.clone()), "90d", Some("-1h"), 10), "`every`"),
            (
                c(Some(target.clone()), "90d", Some("0s"), 10),
                "more than 0s",
            ),
            (c(Some(target.clone()), "90d", None, 0), "`batch`"),
        ] {
            let err = Retention::from_config(&bad).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
