//! Several OS processes against one moto and one shared store: concurrent
//! revocations of one role's grants from two broker processes (the
//! revocation policy's read-modify-write under a lease in PostgreSQL), and a
//! broker process that dies between `AssumeRole` and recording the grant,
//! restarted in a new process.
//!
//! The test binary re-executes itself: [`child_process_entry`] runs the
//! child's part when `JIT_PROCESS_ROLE` says so, and does nothing in a
//! normal test run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use jit_aws::{AwsConfig, AwsProvider};
use jit_core::store::{PostgresStore, SqliteStore, Store};
use jit_core::testing::postgres::TestSchema;
use jit_core::testing::FaultyStore;
use jit_core::{AccessRequest, Broker, ListFilter, Principal, State};

const ROLE: &str = "JIT_PROCESS_ROLE";
const GRANTS_PER_PROCESS: usize = 50;
/// Revocations per process and round.
const ROUND: usize = 10;

fn oncall(i: usize) -> Principal {
    Principal::new(&format!("dev{i}@example.com"))
        .unwrap()
        .with_group("oncall")
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("child needs `{k}`"))
}

/// This test binary again, running only [`child_process_entry`].
fn spawn_child(role: &str, vars: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_process_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .env("JIT_TEST_MOTO_URL", moto_url());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

async fn wait(mut child: Child) -> ExitStatus {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

async fn aws_provider(role_chaining: bool) -> jit_aws::AwsProviderBuilder {
    AwsProvider::builder(AwsConfig::default().with_role_chaining(role_chaining))
        .sdk_config(moto_sdk().await)
}

/// The child's part, selected by `JIT_PROCESS_ROLE`; without it this is
/// not a test of its own and returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_process_entry() {
    match std::env::var(ROLE).as_deref() {
        Ok("revoker") => revoker().await,
        Ok("crasher") => crasher().await,
        _ => {}
    }
}

/// Waits until both processes have reached the step `name` (and fails
/// after a minute: the other process has died).
async fn barrier(dir: &Path, name: &str, me: usize) {
    std::fs::write(dir.join(format!("{name}-{me}")), "").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(0..2).all(|i| dir.join(format!("{name}-{i}")).exists()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other process never reached `{name}`"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every `Revoked` grant in the store is denied in the role's policy.
async fn assert_all_revoked_are_denied(store: &dyn Store, role_arn: &str) -> usize {
    let sdk = moto_sdk().await;
    let denied = revocation_policy(&sdk, role_arn, "jit-revocations")
        .await
        .map(|p| denied_userids(&p))
        .unwrap_or_default();
    let records = store
        .list(&ListFilter {
            limit: 1000,
            states: vec![State::Revoked],
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let missing: Vec<String> = records
        .iter()
        .map(|r| {
            let issued = r.grant.as_ref().unwrap().issued.as_ref().unwrap();
            format!(
                "{}:{}",
                issued.details["role_id"].as_str().unwrap(),
                issued.external_id
            )
        })
        .filter(|userid| !denied.contains(userid))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} revoked sessions are not denied: {missing:?}",
        missing.len(),
        records.len()
    );
    records.len()
}

/// Issues 50 grants of the role, then revokes them in rounds of 10, each
/// round at the same time as the other process, with random pauses between
/// each read of the revocation policy and its write. After each round (both
/// processes done) the first process checks that every revoked session is
/// denied: a lost entry is caught before a later write of its own process
/// could put it back.
async fn revoker() {
    let store: Arc<dyn Store> = Arc::new(
        PostgresStore::builder(&env("JIT_PG_URL"))
            .schema(&env("JIT_PG_SCHEMA"))
            .max_connections(8)
            .connect()
            .await
            .unwrap(),
    );
    let role_arn = env("JIT_ROLE_ARN");
    let provider = aws_provider(false)
        .await
        .lease_store(store.clone())
        .revocation_write_delay(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let broker = Broker::builder(store.clone(), Arc::new(broker_catalogue(&role_arn)))
        .provider(Arc::new(provider))
        .auto_issue(true)
        .build()
        .unwrap();
    let me: usize = env("JIT_PROCESS_INDEX").parse().unwrap();
    let mut ids = Vec::new();
    for i in 0..GRANTS_PER_PROCESS {
        let who = oncall(me * 1000 + i);
        let out = broker
            .submit(
                &who,
                AccessRequest::new("aws-auto", "20m".parse().unwrap(), "incident"),
            )
            .await
            .unwrap();
        assert_eq!(out.record.state, State::Active);
        ids.push((who, out.record.id));
    }
    let dir = Path::new(&env("JIT_BARRIER")).to_path_buf();
    for (round, batch) in ids.chunks(ROUND).enumerate() {
        barrier(&dir, &format!("start-{round}"), me).await;
        let tasks: Vec<_> = batch
            .iter()
            .cloned()
            .map(|(who, id)| {
                let broker = broker.clone();
                tokio::spawn(async move { broker.revoke(&who, id, "incident over").await })
            })
            .collect();
        for t in tasks {
            let rec = t.await.unwrap().unwrap();
            assert_eq!(rec.state, State::Revoked);
        }
        barrier(&dir, &format!("end-{round}"), me).await;
        if me == 0 {
            let n = assert_all_revoked_are_denied(&*store, &role_arn).await;
            assert_eq!(n, 2 * ROUND * (round + 1));
        }
        barrier(&dir, &format!("checked-{round}"), me).await;
    }
}

/// Two broker processes on one PostgreSQL schema revoke 2 × 50 grants of
/// one role at once: every revoked session's `aws:userid` must be in the
/// role's policy at the end. Without the lease, the processes overwrite
/// each other's entries (IAM has no etag for inline policies).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_revoking_one_role_keep_every_entry() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 3600, &open_trust()).await;
    let schema = TestSchema::new().await;
    // Migrate once here, so the children do not both start on an empty schema.
    let store = schema.store().await;
    let barrier = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            spawn_child(
                "revoker",
                &[
                    ("JIT_PG_URL", schema.url().to_string()),
                    ("JIT_PG_SCHEMA", schema.name().to_string()),
                    ("JIT_ROLE_ARN", role_arn.clone()),
                    ("JIT_PROCESS_INDEX", i.to_string()),
                    ("JIT_BARRIER", barrier.path().display().to_string()),
                ],
            )
        })
        .collect();
    for c in children {
        let status = wait(c).await;
        assert!(status.success(), "a revoking process failed: {status}");
    }

    let records = store
        .list(&ListFilter {
            limit: 1000,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 2 * GRANTS_PER_PROCESS);
    let policy = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .expect("the role has a revocation policy");
    let denied = denied_userids(&policy);
    let mut missing = Vec::new();
    for r in &records {
        assert_eq!(r.state, State::Revoked, "{}", r.id);
        let issued = r.grant.as_ref().unwrap().issued.as_ref().unwrap();
        assert_eq!(issued.details["role_id"], role_id);
        let userid = format!("{role_id}:{}", issued.external_id);
        if !denied.contains(&userid) {
            missing.push(userid);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} revoked sessions are not denied: {missing:?}",
        missing.len(),
        records.len()
    );
    assert_eq!(denied.len(), 2 * GRANTS_PER_PROCESS);
    store.close().await;
    schema.drop_schema().await;
}

/// A broker process that dies after `AssumeRole` returned and before the
/// grant is recorded as issued.
async fn crasher() {
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(env("JIT_DB")).await.unwrap());
    let faulty = Arc::new(FaultyStore::new(sqlite));
    faulty.crash_on_updates_into(&[State::Active]);
    let provider = aws_provider(false).await.build().await.unwrap();
    let broker = Broker::builder(faulty, Arc::new(broker_catalogue(&env("JIT_ROLE_ARN"))))
        .provider(Arc::new(provider))
        .auto_issue(true)
        .build()
        .unwrap();
    let _ = broker
        .submit(
            &oncall(1),
            AccessRequest::new("aws-auto", "20m".parse().unwrap(), "incident"),
        )
        .await;
    panic!("the process should have died before recording the grant");
}

/// After a crash between `AssumeRole` and the `issued` commit, a new
/// process cannot find the session (STS lists none), but the reconciler
/// revokes it by its derived name: the deny is in the role's policy and
/// the grant is `Revoked`, not `Failed` as if nothing had been minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_after_assume_role_is_revoked_by_name_after_a_restart() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 3600, &open_trust()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jit.db");
    let status = wait(spawn_child(
        "crasher",
        &[
            ("JIT_DB", db.display().to_string()),
            ("JIT_ROLE_ARN", role_arn.clone()),
        ],
    ))
    .await;
    assert!(!status.success(), "the child was meant to crash: {status}");

    // The restart: a new process (this one) on the same file.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let stuck = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].state, State::Issuing, "it died mid-issue");
    assert!(
        revocation_policy(&sdk, &role_arn, "jit-revocations")
            .await
            .is_none(),
        "nothing denied yet"
    );
    let provider = aws_provider(false).await.build().await.unwrap();
    let broker = Broker::builder(store, Arc::new(broker_catalogue(&role_arn)))
        .provider(Arc::new(provider))
        .build()
        .unwrap();
    assert_eq!(broker.reconcile(true).await.unwrap(), 1);

    let rec = broker.get(stuck[0].id).await.unwrap();
    assert_eq!(rec.state, State::Revoked, "{:?}", rec.note);
    let grant = rec.grant.as_ref().unwrap();
    let session = jit_core::provider::external_name(grant.id);
    assert_eq!(grant.issued.as_ref().unwrap().external_id, session);
    let policy = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .expect("a revocation policy");
    assert_eq!(
        denied_userids(&policy),
        vec![format!("{role_id}:{session}")]
    );
    let audit = broker.audit_records().await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!(last.event.kind.as_str(), "reconciled");
    assert_eq!(last.event.details["outcome"], "not found, revoked by name");
    assert!(broker.verify_audit().await.unwrap().is_ok());
}

/// The lease is per role and taken before anything is read or written: a
/// role whose lease another process holds is not written, the revocation
/// fails with a retryable error, and it goes through once the lease is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_leased_by_another_process_is_not_written() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 3600, &open_trust()).await;
    let store: Arc<dyn Store> = Arc::new(jit_core::MemoryStore::new());
    let key = format!("aws:revocations:{role_arn}");
    assert!(store
        .try_acquire_lease(
            &key,
            "another-process",
            Duration::from_secs(60),
            chrono::Utc::now()
        )
        .await
        .unwrap());
    let provider = aws_provider(false)
        .await
        .lease_store(store.clone())
        .lease_options(jit_core::lease::LeaseOptions {
            wait: Duration::from_millis(300),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let clock = jit_core::ManualClock::starting_now();
    let broker = Broker::builder(store.clone(), Arc::new(broker_catalogue(&role_arn)))
        .provider(Arc::new(provider))
        .clock(Arc::new(clock.clone()))
        .auto_issue(true)
        .build()
        .unwrap();
    let who = oncall(7);
    let out = broker
        .submit(
            &who,
            AccessRequest::new("aws-auto", "20m".parse().unwrap(), "incident"),
        )
        .await
        .unwrap();
    let rec = broker
        .revoke(&who, out.record.id, "incident over")
        .await
        .unwrap();
    assert_ne!(
        rec.state,
        State::Revoked,
        "not revoked while leased elsewhere"
    );
    let err = rec.revocation.as_ref().unwrap().last_error.clone().unwrap();
    assert!(err.contains(&format!("lease `{key}`")), "{err}");
    assert!(
        revocation_policy(&sdk, &role_arn, "jit-revocations")
            .await
            .is_none(),
        "nothing written"
    );

    assert!(store.release_lease(&key, "another-process").await.unwrap());
    clock.advance(chrono::TimeDelta::minutes(5)); // the retry is due
    assert_eq!(broker.retry_revocations(10).await.unwrap(), 1);
    assert_eq!(broker.get(rec.id).await.unwrap().state, State::Revoked);
    let policy = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert_eq!(
        denied_userids(&policy),
        vec![format!(
            "{role_id}:{}",
            rec.grant.unwrap().issued.unwrap().external_id
        )]
    );
}
