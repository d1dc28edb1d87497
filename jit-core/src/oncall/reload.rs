//! [`RotaFile`]: a rota file that is read again when it changes, so a swap
//! or a dated override takes effect without restarting the broker.
//!
//! Rotas change every week (a swap, a holiday, a new member); a source
//! that read its file once would keep answering from last week's version
//! until someone restarted the service, which is what makes people hand out
//! standing access "until the rota is fixed". A [`RotaFile`] looks at the
//! file's modification time and length at most once per
//! [`check_every`](RotaFile::check_every) (at a submit that asks about a
//! schedule, never in the background) and reads it again when either
//! changed.
//!
//! # Contract
//!
//! - **A bad edit changes nothing.** A file that no longer reads or
//!   validates (a typo, a half-written save, a deleted file) keeps the
//!   rota last read in force; the error is logged at `warn` once per
//!   change of the file, with the line and field the parser names. The
//!   next good save takes effect.
//! - **The start is strict.** [`RotaFile::open`] fails as
//!   [`Rota::from_file`] does, so a host never starts without a rota.
//! - **Fails closed as every source does.** A schedule a new version no
//!   longer has is unknown: asking about it is an error, which the broker
//!   counts as not on call.
//! - The schedules the broker checks the policy against at build
//!   ([`OnCallSource::schedules`]) are those of the version read last.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{OnCallSource, Rota};
use crate::error::{ConfigError, Result};

/// How often a [`RotaFile`] looks at its file by default.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(10);

/// A rota file read again when it changes (see the [module](self)).
pub struct RotaFile {
    path: PathBuf,
    check_every: Duration,
    state: Mutex<Loaded>,
}

/// What a stat of the file says changed: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

struct Loaded {
    rota: Arc<Rota>,
    /// The stamp of the file last looked at (read or refused).
    stamp: Stamp,
    checked: Instant,
}

impl fmt::Debug for RotaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotaFile")
            .field("path", &self.path)
            .field("check_every", &self.check_every)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl RotaFile {
    /// Reads and validates the rota at `path` (an error stops the start),
    /// looking at the file again at most every [`DEFAULT_CHECK_EVERY`].
    pub fn open(path: impl AsRef<Path>) -> std::result::Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let before = stamp(&path);
        let rota = Rota::from_file(&path)?;
        Ok(Self {
            path,
            check_every: DEFAULT_CHECK_EVERY,
            state: Mutex::new(Loaded {
                rota: Arc::new(rota),
                stamp: before,
                checked: Instant::now(),
            }),
        })
    }

    /// Looks at the file at most this often (zero: at every question).
    pub fn check_every(mut self, every: Duration) -> Self {
        self.check_every = every;
        self
    }

    /// The rota in force, read again first if the file changed since it
    /// was last looked at and `check_every` has passed.
    pub fn current(&self) -> Arc<Rota> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= self.check_every {
            s.checked = Instant::now();
            let now = stamp(&self.path);
            if now != s.stamp {
                s.stamp = now;
                match Rota::from_file(&self.path) {
                    Ok(rota) => {
                        tracing::info!(path = %self.path.display(), "on-call rota read again");
                        s.rota = Arc::new(rota);
                    }
                    Err(e) => tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "on-call rota changed but does not read: the previous version stays in force"
                    ),
                }
            }
        }
        s.rota.clone()
    }
}

#[async_trait]
impl OnCallSource for RotaFile {
    fn name(&self) -> &str {
        "rota"
    }

    async fn on_call(&self, schedule: &str, at: DateTime<Utc>) -> Result<BTreeSet<String>> {
        // The version in force answers, with its own error for a schedule
        // it does not have.
        let rota = self.current();
        rota.on_call(schedule, at).await
    }

    fn schedules(&self) -> Option<BTreeSet<String>> {
        self.current().schedules()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn rota(who: &str) -> String {
        format!(
            r#"
[[schedules]]
id = "primary"
time_zone = "UTC"
[[schedules.weekly]]
from = "Mon 00:00"
until = "Sun 00:00"
subjects = ["{who}"]
"#
        )
    }

    fn write(path: &Path, text: &str) {
        // Through a rename, as editors and config management save.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    async fn who(source: &RotaFile) -> Result<BTreeSet<String>> {
        source
            .on_call("primary", "2026-12-09T12:00:00Z".parse().unwrap())
            .await
    }

    #[tokio::test]
    async fn a_changed_file_takes_effect_and_a_bad_edit_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rota.toml");
        write(&path, &rota("alice"));
        let source = RotaFile::open(&path).unwrap().check_every(Duration::ZERO);
        assert_eq!(who(&source).await.unwrap(), ["alice".to_string()].into());

        // A swap: the longer name changes the length even within one
        // tick of a coarse modification time.
        write(&path, &rota("bob-the-second"));
        assert_eq!(
            who(&source).await.unwrap(),
            ["bob-the-second".to_string()].into()
        );

        // A typo, then a deleted file: the last good rota stays in force.
        write(
            &path,
            &rota("bob-the-second").replace("UTC", "Mars/Olympus"),
        );
        assert_eq!(
            who(&source).await.unwrap(),
            ["bob-the-second".to_string()].into()
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            who(&source).await.unwrap(),
            ["bob-the-second".to_string()].into()
        );

        // Fixed: read again.
        write(&path, &rota("carol"));
        assert_eq!(who(&source).await.unwrap(), ["carol".to_string()].into());

        // A version without the schedule: asking about it fails (not on call).
        write(
            &path,
            &rota("carol").replace("id = \"primary\"", "id = \"secondary\""),
        );
        assert!(who(&source).await.is_err());
        assert_eq!(
            source.schedules().unwrap(),
            ["secondary".to_string()].into()
        );
    }

    #[tokio::test]
    async fn the_file_is_looked_at_at_most_every_check_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rota.toml");
        write(&path, &rota("alice"));
        let source = RotaFile::open(&path)
            .unwrap()
            .check_every(Duration::from_secs(3600));
        write(&path, &rota("bob-the-second"));
        assert_eq!(who(&source).await.unwrap(), ["alice".to_string()].into());
    }

    #[test]
    fn a_bad_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rota.toml");
        assert!(RotaFile::open(&path).is_err());
        write(&path, "[[schedules]]\nid = 1\n");
        assert!(RotaFile::open(&path).is_err());
    }
}
