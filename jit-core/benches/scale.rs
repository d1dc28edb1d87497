//! How store operations grow with the number of grants stored (issue #15).
//!
//! Fills a memory store and a SQLite store with 10,000 and 100,000 grants
//! (and 1,000,000 when `JIT_SCALE_1M=1`: minutes of filling and gigabytes of
//! memory, so CI never runs it) and prints, per store and size, the mean
//! time of each operation **as a ratio to `get` in the same run**, plus
//! bytes per grant:
//!
//! - `due`: the reaper's due-work query (every non-final state, limit 100);
//! - `list/principal`: one requester's newest 100;
//! - `count_by_state`: the metrics' counts;
//! - `restore`: start-up's revoked grants still running
//!   (`ListFilter::ends_after`);
//! - `get`: one record by id (the unit).
//!
//! Bytes per grant: SQLite, the database file after a WAL checkpoint
//! divided by the grants (records and their indexes; the fill writes no
//! audit events, so the audit trail is **not** included); memory, the growth
//! of the process's resident set (`/proc/self/statm`) over the fill divided
//! by the grants: records, indexes and allocator overhead, measured, not
//! computed (Linux only; `n/a` elsewhere).
//!
//! The SQLite file lives in `$JIT_SCALE_DIR` (default: `/dev/shm` when it
//! exists, else the temp dir): a tmpfs makes the fill's 100,000 fsynced
//! commits quick; the reads measured are page-cache reads either way.
//!
//! `cargo bench -p jit-core --bench scale`
//! `JIT_SCALE_1M=1 cargo bench -p jit-core --bench scale`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use jit_core::store::SqliteStore;
use jit_core::{
    AccessRequest, Decision, Grant, GrantDuration, GrantId, ListFilter, MemoryStore, Principal,
    RequestId, RequestRecord, Revocation, State, Store, Verdict,
};
use sqlx::{ConnectOptions, Connection};

/// Distinct requesters: each holds `grants / PRINCIPALS` records.
const PRINCIPALS: usize = 1000;
/// Repetitions of each operation (means are printed).
const REPS: usize = 200;
const NON_FINAL: [State; 6] = [
    State::Pending,
    State::Approved,
    State::Issuing,
    State::Active,
    State::Revoking,
    State::RevocationFailed,
];

/// Grant `i` of a history: mostly finished (expired, revoked), a few live
/// (active, revoked but still running, pending), spread over `PRINCIPALS`
/// requesters and the last 90 days.
fn record(i: usize, n: usize, now: DateTime<Utc>) -> RequestRecord {
    let age = TimeDelta::seconds((90 * 86_400 * (n - i) / n) as i64);
    let created = now - age;
    let live = i + 200 >= n;
    let state = match (live, i % 10) {
        (true, 0..=3) => State::Active,
        (true, 4..=5) => State::Revoked,
        (true, 6) => State::Pending,
        (true, _) => State::Expired,
        (false, 0..=2) => State::Revoked,
        (false, 3) => State::Denied,
        (false, _) => State::Expired,
    };
    let ends = if live {
        now + TimeDelta::minutes(30)
    } else {
        created + TimeDelta::minutes(30)
    };
    let duration = GrantDuration::from_secs_i64(1800).unwrap();
    RequestRecord {
        id: RequestId::new(),
        version: 1,
        state,
        requester: Principal::new(&format!("user-{}", i % PRINCIPALS))
            .unwrap()
            .with_group("engineering"),
        request: AccessRequest::new(&format!("ent-{}", i % 50), duration, "investigate INC-1234"),
        decision: Decision {
            verdict: Verdict::AutoApprove,
            max_duration: duration,
            reasons: vec!["auto-approved".into()],
            risk: None,
        },
        entitlement: None,
        approvals: vec![],
        grant: (state != State::Pending && state != State::Denied).then(|| Grant {
            id: GrantId::new(),
            starts_at: created,
            ends_at: ends,
            issued: None,
        }),
        extends: None,
        revocation: (state == State::Revoked).then(|| Revocation {
            by: "carol".into(),
            reason: "done".into(),
            expiry: false,
            attempts: 0,
            last_error: None,
            next_attempt_at: created,
        }),
        pending_until: Some(now + TimeDelta::hours(1)),
        note: None,
        created_at: created,
        updated_at: created,
    }
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

async fn fill(store: &dyn Store, n: usize, now: DateTime<Utc>) -> Vec<RequestId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let r = record(i, n, now);
        store.insert(&r, &[]).await.unwrap();
        ids.push(r.id);
    }
    ids
}

async fn mean<F, Fut>(mut op: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..REPS / 10 {
        op(i).await;
    }
    let start = Instant::now();
    for i in 0..REPS {
        op(i).await;
    }
    start.elapsed() / REPS as u32
}

async fn measure(
    name: &str,
    store: &dyn Store,
    ids: &[RequestId],
    now: DateTime<Utc>,
    bytes: Option<f64>,
) {
    let get = mean(|i| async move {
        let id = ids[(i * 7919) % ids.len()];
        assert!(store.get(id).await.unwrap().is_some());
    })
    .await;
    let due = mean(|_| async move {
        let _ = store.due(&NON_FINAL, now, 100).await.unwrap();
    })
    .await;
    let list = mean(|i| async move {
        let f = ListFilter {
            requester: Some(format!("user-{}", i % PRINCIPALS)),
            limit: 100,
            ..ListFilter::default()
        };
        assert!(!store.list(&f).await.unwrap().is_empty());
    })
    .await;
    let count = mean(|_| async move {
        let _ = store.count_by_state().await.unwrap();
    })
    .await;
    let restore = mean(|_| async move {
        let f = ListFilter {
            states: vec![State::Revoked, State::Revoking, State::RevocationFailed],
            ends_after: Some(now),
            limit: 10_000,
            ..ListFilter::default()
        };
        assert!(!store.list(&f).await.unwrap().is_empty());
    })
    .await;
    let ratio = |d: Duration| d.as_secs_f64() / get.as_secs_f64();
    println!(
        "{name:<8} {:>9} | due {:>7.2}x | list/principal {:>7.2}x | count_by_state {:>9.2}x | restore {:>7.2}x | get 1x ({:.1} µs) | {}",
        ids.len(),
        ratio(due),
        ratio(list),
        ratio(count),
        ratio(restore),
        get.as_secs_f64() * 1e6,
        bytes.map_or("n/a".into(), |b| format!("{b:.0} B/grant")),
    );
}

fn sqlite_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("JIT_SCALE_DIR") {
        return PathBuf::from(d);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

async fn run(n: usize) {
    let now = Utc::now();

    let before = resident_bytes();
    let memory = Arc::new(MemoryStore::new());
    let ids = fill(&*memory, n, now).await;
    let grown = before
        .zip(resident_bytes())
        .map(|(b, a)| a.saturating_sub(b) as f64 / n as f64);
    measure("memory", &*memory, &ids, now, grown).await;
    drop(memory);

    let dir = tempfile::tempdir_in(sqlite_dir()).unwrap();
    let path = dir.path().join("scale.db");
    let url = format!("sqlite://{}", path.display());
    let sqlite = SqliteStore::connect(&url).await.unwrap();
    let ids = fill(&sqlite, n, now).await;
    sqlite.close().await;
    {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let sqlite = SqliteStore::connect(&url).await.unwrap();
    measure("sqlite", &sqlite, &ids, now, Some(size as f64 / n as f64)).await;
    sqlite.close().await;
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; only `cargo bench` runs it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sizes = vec![10_000, 100_000];
    if std::env::var("JIT_SCALE_1M").is_ok_and(|v| v == "1") {
        sizes.push(1_000_000);
    }
    println!("ratios are mean time per operation / mean time of `get`, same store, same run");
    for n in sizes {
        rt.block_on(run(n));
    }
}
