//! How store operations grow with the number of grants stored, and how
//! many bytes a grant costs (issue #15).
//!
//! Fills a memory store and a SQLite store with 10,000 and 100,000 grants
//! (and 1,000,000 when `JIT_SCALE_1M=1`: an hour or more of filling and
//! gigabytes of memory, so CI never runs it) and prints, per store and size,
//! the mean time of each operation **as a ratio to `get` in the same run**,
//! plus bytes per grant:
//!
//! - `due`: the reaper's due-work query (every non-final state, limit 100);
//! - `list/principal`: one requester's newest 100;
//! - `count_by_state`: the metrics' counts;
//! - `restore`: start-up's revoked grants still running
//!   (`ListFilter::ends_after`);
//! - `get`: one record by id (the unit).
//!
//! The fill runs whole lifecycles through a broker (local Ed25519 tokens,
//! an audit key sealing every record, a manual clock spreading the grants
//! over the last 90 days), so the store holds what a real one does: each
//! record with its audit trail. Grant `i` is auto-approved, issued and
//! revoked by its requester (five audit records); the newest 200 stay live:
//! active (four records), revoked while their window runs, or pending an
//! approval (three records). 1,000 requesters, 50 entitlements.
//!
//! Bytes per grant: SQLite, the database file after a WAL checkpoint
//! divided by the grants (records, audit trail and every index: at 100,000
//! grants 99.8% of them are completed), with a line that splits it into the
//! `requests` table, the `audit` table and each index (SQLite's `dbstat`); memory, the growth of the process's
//! resident set (`/proc/self/statm`) over the fill divided by the grants:
//! records, audit trail, indexes and allocator overhead, measured, not
//! computed (Linux only; `n/a` elsewhere).
//!
//! Retention (SQLite, after the measurements above, since it deletes):
//! `Broker::archive_finished` of grants finished more than 45 days ago,
//! 1,000 per call, three calls, printed per archived grant and per call as
//! ratios to `get`, with the archive's bytes per grant.
//!
//! The SQLite file lives in `$JIT_SCALE_DIR` (default: `/dev/shm` when it
//! exists, else the temp dir): a tmpfs makes the fill's fsynced commits
//! quick; the reads measured are page-cache reads either way.
//!
//! `cargo bench -p jit-core --bench scale`
//! `JIT_SCALE_1M=1 cargo bench -p jit-core --bench scale`
//! `JIT_SCALE_SIZES=10000 cargo bench -p jit-core --bench scale` (sizes of your choice;
//! `JIT_SCALE_KEEP=1` keeps the SQLite file and prints where)
//! `JIT_SCALE_STORES=sqlite JIT_SCALE_SIZES=1000000 cargo bench -p jit-core --bench scale`
//! (one store only: `memory` or `sqlite`)
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
use jit_core::audit::{AuditKey, AuditKeyring};
use jit_core::local::{LocalKey, LocalProvider};
use jit_core::store::SqliteStore;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, ListFilter, ManualClock, MemoryStore, Principal,
    RequestId, State, Store,
};
use sqlx::{ConnectOptions, Connection};

/// Distinct requesters: each holds `grants / PRINCIPALS` records.
const PRINCIPALS: usize = 1000;
/// Entitlements requested (`ent-0` .. `ent-49`), all auto-approved.
const ENTITLEMENTS: usize = 50;
/// The newest grants that stay live.
const LIVE: usize = 200;
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

/// The audit key of every broker in the run (a bench, not a secret).
const BENCH_AUDIT_KEY: [u8; 32] = [7; 32];
/// Requests archived per `archive_finished` call in the retention case.
const ARCHIVE_BATCH: usize = 1000;
/// Calls measured in the retention case (consecutive batches).
const ARCHIVE_CALLS: u32 = 3;

/// 50 auto-approved entitlements on the local provider, and one that needs a lead.
fn catalogue() -> String {
    let mut c = String::new();
    for e in 0..ENTITLEMENTS {
        c.push_str(&format!(
            r#"
[[entitlements]]
id = "ent-{e}"
provider = "local"
max_duration = "1h"
target = {{ audience = "svc-{e}" }}
[entitlements.eligible]
groups = ["engineering"]
[entitlements.auto_approve]
max_duration = "1h"
"#
        ));
    }
    c.push_str(
        r#"
[[entitlements]]
id = "prod-admin"
provider = "local"
max_duration = "1h"
target = { audience = "prod" }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.approval]
groups = ["leads"]
quorum = 1
"#,
    );
    c
}

fn broker(store: Arc<dyn Store>, clock: &ManualClock) -> Broker {
    Broker::builder(
        store,
        Arc::new(CataloguePolicy::from_toml_str(&catalogue()).unwrap()),
    )
    .provider(Arc::new(
        LocalProvider::builder(LocalKey::generate())
            .issuer("scale")
            .clock(Arc::new(clock.clone()))
            .build(),
    ))
    // One key for the whole run, so the retention case's broker verifies
    // the seals the fill's broker wrote.
    .audit_keyring(AuditKeyring::new(AuditKey::from_bytes(BENCH_AUDIT_KEY)))
    .clock(Arc::new(clock.clone()))
    .build()
    .unwrap()
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Grant `i` of `n`: created `90 days * (n - i) / n` before `now`, or
/// `n - i` seconds before for the newest (live) ones.
async fn lifecycle(
    b: &Broker,
    clock: &ManualClock,
    i: usize,
    n: usize,
    now: DateTime<Utc>,
) -> RequestId {
    let live = i + LIVE >= n;
    // The history over 90 days; the live grants in the last minutes.
    let age = if live {
        n - i
    } else {
        90 * 86_400 * (n - i) / n
    };
    let created = now - TimeDelta::seconds(age as i64);
    clock.set(created);
    let who = Principal::new(&format!("user-{}@example.com", i % PRINCIPALS))
        .unwrap()
        .with_group("engineering");
    let entitlement = if live && i % 10 == 6 {
        "prod-admin".to_string()
    } else {
        format!("ent-{}", i % ENTITLEMENTS)
    };
    let req = AccessRequest::new(&entitlement, "30m".parse().unwrap(), "investigate INC-1234")
        .with_ticket(&format!("INC-{}", 1000 + i % 9000));
    let id = b.submit(&who, req).await.unwrap().record.id;
    if !live || matches!(i % 10, 4 | 5) {
        clock.set(created + TimeDelta::seconds(30));
        b.revoke(&who, id, "done").await.unwrap();
    }
    id
}

async fn fill(store: Arc<dyn Store>, n: usize, now: DateTime<Utc>) -> Vec<RequestId> {
    let clock = ManualClock::new(now);
    let b = broker(store, &clock);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(lifecycle(&b, &clock, i, n, now).await);
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
            requester: Some(format!("user-{}@example.com", i % PRINCIPALS)),
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

/// Retention: `Broker::archive_finished` of grants finished more than 45
/// days ago (about half of the fill), [`ARCHIVE_BATCH`] requests per call,
/// [`ARCHIVE_CALLS`] consecutive calls, each writing its archive file
/// (synced) and pruning in one transaction. Printed per archived grant and
/// per call, as ratios to `get` measured on the same store just before,
/// and the counts checked against what was pruned. Runs last: it deletes.
async fn retention(url: &str, ids: &[RequestId], now: DateTime<Utc>) {
    let shared = Arc::new(SqliteStore::connect(url).await.unwrap());
    let store = &*shared;
    let get = mean(|i| async move {
        let id = ids[(i * 7919) % ids.len()];
        assert!(store.get(id).await.unwrap().is_some());
    })
    .await;
    let total = |c: &[(State, u64)]| c.iter().map(|(_, n)| n).sum::<u64>();
    let counted = total(&store.count_by_state().await.unwrap());
    let clock = ManualClock::new(now);
    let b = broker(shared.clone(), &clock);
    let dir = tempfile::tempdir_in(sqlite_dir()).unwrap();
    let cut_off = now - TimeDelta::days(45);
    let (mut archived, mut audit, mut spent) = (0u64, 0u64, Duration::ZERO);
    let mut bytes = 0u64;
    for _ in 0..ARCHIVE_CALLS {
        let start = Instant::now();
        let report = b
            .archive_finished(cut_off, dir.path(), ARCHIVE_BATCH)
            .await
            .unwrap();
        spent += start.elapsed();
        let (Some(segment), Some(path)) = (report.segment, report.path) else {
            break;
        };
        archived += segment.records;
        audit += report.audit_records;
        bytes += std::fs::metadata(&path).unwrap().len();
    }
    assert!(archived > 0, "nothing was old enough to archive");
    assert_eq!(
        total(&store.count_by_state().await.unwrap()),
        counted - archived,
        "counts follow the prune"
    );
    let per_grant = spent.as_secs_f64() / archived as f64;
    let per_call = spent.as_secs_f64() / f64::from(ARCHIVE_CALLS);
    println!(
        "{:<8} {:>9} | archive {} grants ({} audit records) in {} calls: {:.2}x get per grant, {:.0}x get per call ({:.1} ms) | archive {:.0} B/grant | get 1x ({:.1} µs)",
        "sqlite",
        ids.len(),
        archived,
        audit,
        ARCHIVE_CALLS,
        per_grant / get.as_secs_f64(),
        per_call / get.as_secs_f64(),
        per_call * 1e3,
        bytes as f64 / archived as f64,
        get.as_secs_f64() * 1e6,
    );
    drop(b);
    store.close().await;
}

/// Where the SQLite file's bytes go, per grant: each table and index
/// (pages it holds, free space in them included), from the `dbstat`
/// virtual table, largest first.
async fn breakdown(conn: &mut sqlx::SqliteConnection, n: usize) {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, SUM(pgsize) AS bytes FROM dbstat GROUP BY name ORDER BY bytes DESC",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let per = |b: i64| b as f64 / n as f64;
    let table = |t: &str| {
        rows.iter()
            .find(|(name, _)| name == t)
            .map_or(0.0, |r| per(r.1))
    };
    let indexes: f64 = rows
        .iter()
        .filter(|(name, _)| name != "requests" && name != "audit")
        .map(|r| per(r.1))
        .sum();
    println!(
        "sqlite   {n:>9} | B/grant: requests {:.0}, audit {:.0}, indexes and the rest {:.0} | {}",
        table("requests"),
        table("audit"),
        indexes,
        rows.iter()
            .filter(|(name, _)| name != "requests" && name != "audit")
            .map(|(name, b)| format!("{name} {:.0}", per(*b)))
            .collect::<Vec<_>>()
            .join(", "),
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

/// Whether `JIT_SCALE_STORES` (a comma list of `memory`, `sqlite`; both
/// when unset) selects `store`.
fn selected(store: &str) -> bool {
    std::env::var("JIT_SCALE_STORES")
        .ok()
        .is_none_or(|list| list.split(',').any(|s| s.trim() == store))
}

async fn run(n: usize) {
    let now = Utc::now();

    if selected("memory") {
        let before = resident_bytes();
        let memory = Arc::new(MemoryStore::new());
        let ids = fill(memory.clone(), n, now).await;
        let grown = before
            .zip(resident_bytes())
            .map(|(b, a)| a.saturating_sub(b) as f64 / n as f64);
        measure("memory", &*memory, &ids, now, grown).await;
        drop(memory);
    }
    if !selected("sqlite") {
        return;
    }

    let dir = tempfile::tempdir_in(sqlite_dir()).unwrap();
    let path = dir.path().join("scale.db");
    let url = format!("sqlite://{}", path.display());
    let sqlite = Arc::new(SqliteStore::connect(&url).await.unwrap());
    let ids = fill(sqlite.clone(), n, now).await;
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
        breakdown(&mut conn, n).await;
        conn.close().await.unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let sqlite = SqliteStore::connect(&url).await.unwrap();
    measure("sqlite", &sqlite, &ids, now, Some(size as f64 / n as f64)).await;
    sqlite.close().await;
    retention(&url, &ids, now).await;
    if std::env::var("JIT_SCALE_KEEP").is_ok_and(|v| v == "1") {
        // To look inside with `sqlite3`.
        println!("kept {}", dir.keep().join("scale.db").display());
    }
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
    if let Ok(list) = std::env::var("JIT_SCALE_SIZES") {
        sizes = list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
    }
    println!("ratios are mean time per operation / mean time of `get`, same store, same run");
    for n in sizes {
        rt.block_on(run(n));
    }
}
