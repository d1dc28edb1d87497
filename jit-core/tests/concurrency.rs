//! 64 tasks racing approve/deny/cancel/revoke on one request, 200 rounds:
//! every round ends in exactly one consistent state, and the chain verifies.
//! (The race itself lives in `common/race.rs`; PostgreSQL runs it across two
//! replicas in `postgres.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use jit_core::{MemoryStore, Store};

async fn run(store: Arc<dyn Store>, rounds: usize) {
    let e = env_with_store(store);
    race::run(std::slice::from_ref(&e.broker), &e.provider, rounds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_on_memory_store() {
    run(Arc::new(MemoryStore::new()), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_on_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = jit_core::store::SqliteStore::open(dir.path().join("race.db"))
        .await
        .unwrap();
    run(Arc::new(store), 200).await;
}
