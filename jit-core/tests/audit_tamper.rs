//! The audit chain against an insider who can write the database, in the
//! form that attacker would use it: SQL straight on the `audit` table of a
//! real SQLite file and a real PostgreSQL schema, with the library's own
//! hash function to recompute the chain.
//!
//! - deleting the last records verifies as a hash chain, and with the seals,
//!   but not against a checkpoint the broker wrote to a file outside the store;
//! - editing a record and recomputing every later hash verifies without the
//!   audit key, but not with it (bad seal, or a missing one once stripped);
//! - a row that is not valid JSON is named as the broken record, not an error;
//! - after a key rotation, records sealed by the old key still verify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use jit_core::audit::{
    read_checkpoint_file, AuditKey, AuditKeyring, ChainBreak, ChainBreakReason, ChainVerifier,
    CheckpointFileSink,
};
use jit_core::store::SqliteStore;
use jit_core::testing::TestProvider;
use jit_core::{AuditRecord, Broker, CataloguePolicy, Reaper, Store};

/// Raw access to the `audit` table, as an attacker with a database login has it.
#[async_trait]
trait AuditTable: Send + Sync {
    async fn rows(&self) -> Vec<(i64, String)>;
    async fn write(&self, seq: i64, hash: &str, body: &str);
    async fn delete_from(&self, seq: i64);
    async fn set_body(&self, seq: i64, body: &str);
}

/// SQLite keeps hashes as their 32 bytes and bodies as bytes (packed, or
/// JSON as written before packing, which the attacker writes).
struct Sqlite(sqlx::SqlitePool);

#[async_trait]
impl AuditTable for Sqlite {
    async fn rows(&self) -> Vec<(i64, String)> {
        sqlx::query_as("SELECT seq, hex(body) FROM audit ORDER BY seq")
            .fetch_all(&self.0)
            .await
            .unwrap()
    }
    async fn write(&self, seq: i64, hash: &str, body: &str) {
        sqlx::query("UPDATE audit SET hash = ?, body = ? WHERE seq = ?")
            .bind(hex::decode(hash).unwrap())
            .bind(body.as_bytes())
            .bind(seq)
            .execute(&self.0)
            .await
            .unwrap();
    }
    async fn delete_from(&self, seq: i64) {
        sqlx::query("DELETE FROM audit WHERE seq >= ?")
            .bind(seq)
            .execute(&self.0)
            .await
            .unwrap();
    }
    async fn set_body(&self, seq: i64, body: &str) {
        sqlx::query("UPDATE audit SET body = ? WHERE seq = ?")
            .bind(body.as_bytes())
            .bind(seq)
            .execute(&self.0)
            .await
            .unwrap();
    }
}

async fn sqlite(dir: &Path) -> (Arc<dyn Store>, Box<dyn AuditTable>) {
    let path = dir.join("jit.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    (Arc::new(store), Box::new(Sqlite(raw)))
}

fn keyring() -> AuditKeyring {
    AuditKeyring::new(AuditKey::generate())
}

fn broker(store: Arc<dyn Store>, keyring: Option<&AuditKeyring>, checkpoints: &Path) -> Broker {
    let policy = Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    let mut b = Broker::builder(store, policy)
        .provider(Arc::new(TestProvider::new("test")))
        .provider(Arc::new(
            TestProvider::new("manual-expiry").without_native_expiry(),
        ))
        .audit_sink(Arc::new(CheckpointFileSink::open(checkpoints).unwrap()))
        .checkpoint_every(1);
    if let Some(k) = keyring {
        b = b.audit_keyring(k.clone());
    }
    b.build().unwrap()
}

/// A realistic history: an auto-approved grant, a two-lead approval, a revocation.
async fn history(broker: &Broker) -> usize {
    let alice = user("alice");
    let a = broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap()
        .record
        .id;
    let p = broker
        .submit(&alice, req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    broker.approve(&lead("carol"), p, "ok").await.unwrap();
    broker.approve(&lead("dave"), p, "ok").await.unwrap();
    broker.revoke(&alice, a, "done").await.unwrap();
    Reaper::new(broker.clone()).tick().await.unwrap();
    let n = broker.audit_records().await.unwrap().len();
    assert!(n >= 10, "a realistic chain: {n} records");
    n
}

fn with_checkpoints(keyring: &AuditKeyring, file: &Path) -> ChainVerifier {
    ChainVerifier::new()
        .keyring(keyring.clone())
        .checkpoints(read_checkpoint_file(file).unwrap())
}

async fn verify_with(broker: &Broker, v: &ChainVerifier) -> Result<u64, ChainBreak> {
    broker
        .verify_audit_with(v)
        .await
        .unwrap()
        .map(|s| s.records)
}

// ---- the scenarios, on any engine ----

async fn truncation_is_caught_by_a_checkpoint(store: Arc<dyn Store>, table: &dyn AuditTable) {
    let dir = tempfile::tempdir().unwrap();
    let cps = dir.path().join("checkpoints.jsonl");
    let k = keyring();
    let b = broker(store, Some(&k), &cps);
    let n = history(&b).await as u64;
    assert_eq!(verify_with(&b, &with_checkpoints(&k, &cps)).await, Ok(n));

    // The insider deletes the last two records.
    table.delete_from(n as i64 - 1).await;

    // What remains is a valid chain, every seal included: only the
    // checkpoint kept outside the store can tell.
    assert_eq!(
        b.verify_audit().await.unwrap().map(|s| s.records),
        Ok(n - 2)
    );
    let brk = verify_with(&b, &with_checkpoints(&k, &cps))
        .await
        .unwrap_err();
    assert_eq!(
        (brk.position as u64, brk.seq, brk.reason),
        (
            n - 2,
            n - 1,
            ChainBreakReason::Truncated {
                checkpoint: n,
                records: n - 2
            }
        )
    );
}

/// Edits the `approved` record by `carol` to name another approver and
/// recomputes every hash from there on; returns that record's position.
async fn rehash_after_edit(table: &dyn AuditTable, store: &dyn Store, strip_seals: bool) -> usize {
    let rows = table.rows().await;
    // Rows are stored compactly (without `prev_hash`): read the records
    // through the store, and write each back whole, which stores accept too.
    let mut chain: Vec<AuditRecord> = jit_core::store::audit_all(store).await.unwrap();
    assert_eq!(chain.len(), rows.len());
    let at = chain
        .iter()
        .position(|r| r.event.kind.as_str() == "approved" && r.event.actor == "carol")
        .unwrap();
    chain[at].event.actor = "root-admin".into();
    for i in at..chain.len() {
        if i > 0 {
            chain[i].prev_hash = chain[i - 1].hash.clone();
        }
        chain[i].hash = chain[i].compute_hash();
        if strip_seals {
            chain[i].mac = None;
        }
        table
            .write(
                rows[i].0,
                &chain[i].hash,
                &serde_json::to_string(&chain[i]).unwrap(),
            )
            .await;
    }
    at
}

async fn rehash_is_caught_by_the_seals(
    store: Arc<dyn Store>,
    table: &dyn AuditTable,
    strip_seals: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let cps = dir.path().join("checkpoints.jsonl");
    let k = keyring();
    let b = broker(store.clone(), Some(&k), &cps);
    let n = history(&b).await as u64;

    let at = rehash_after_edit(table, &*store, strip_seals).await;

    // Against the hash chain alone the rewrite passes: this is the attack.
    let unkeyed = broker(store, None, &cps);
    assert_eq!(
        unkeyed.verify_audit().await.unwrap().map(|s| s.records),
        Ok(n)
    );
    // With the key it fails at the edited record.
    let brk = b.verify_audit().await.unwrap().unwrap_err();
    let expected = if strip_seals {
        ChainBreakReason::MissingMac
    } else {
        ChainBreakReason::BadMac
    };
    assert_eq!(
        (brk.position, brk.seq, brk.reason),
        (at, at as u64 + 1, expected)
    );
    // Without the key but with the checkpoints, the rewrite shows too, at
    // the first checkpoint after the edit.
    let trusted = ChainVerifier::new().checkpoints(read_checkpoint_file(&cps).unwrap());
    let brk = verify_with(&b, &trusted).await.unwrap_err();
    match brk.reason {
        ChainBreakReason::CheckpointMismatch { checkpoint } => {
            assert!(checkpoint > at as u64 && checkpoint <= n, "{brk}");
            assert_eq!(brk.seq, checkpoint);
        }
        other => panic!("{other}"),
    }
}

async fn an_invalid_row_is_named(store: Arc<dyn Store>, table: &dyn AuditTable) {
    let dir = tempfile::tempdir().unwrap();
    let k = keyring();
    let b = broker(store, Some(&k), &dir.path().join("cp.jsonl"));
    history(&b).await;
    table.set_body(3, "{\"seq\": 3, not json").await;
    let brk = b.verify_audit().await.unwrap().unwrap_err();
    assert_eq!((brk.position, brk.seq), (2, 3), "{brk}");
    assert!(
        matches!(brk.reason, ChainBreakReason::Malformed(_)),
        "{brk}"
    );
}

// ---- SQLite ----

#[tokio::test]
async fn sqlite_truncated_audit_table_fails_against_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (store, table) = sqlite(dir.path()).await;
    truncation_is_caught_by_a_checkpoint(store, &*table).await;
}

#[tokio::test]
async fn sqlite_rehashed_audit_table_fails_on_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let (store, table) = sqlite(dir.path()).await;
    rehash_is_caught_by_the_seals(store, &*table, false).await;
}

#[tokio::test]
async fn sqlite_rehashed_audit_table_with_seals_stripped_fails_on_the_missing_seal() {
    let dir = tempfile::tempdir().unwrap();
    let (store, table) = sqlite(dir.path()).await;
    rehash_is_caught_by_the_seals(store, &*table, true).await;
}

#[tokio::test]
async fn sqlite_invalid_json_row_is_named_as_broken() {
    let dir = tempfile::tempdir().unwrap();
    let (store, table) = sqlite(dir.path()).await;
    an_invalid_row_is_named(store, &*table).await;
}

#[tokio::test]
async fn records_sealed_before_a_key_rotation_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite(dir.path()).await;
    let cps = dir.path().join("checkpoints.jsonl");
    let old_hex = AuditKey::generate().to_hex();
    let old = AuditKeyring::new(AuditKey::from_hex(&old_hex).unwrap());
    let n1 = history(&broker(store.clone(), Some(&old), &cps)).await;

    let new_hex = AuditKey::generate().to_hex();
    let rotated = AuditKeyring::new(AuditKey::from_hex(&new_hex).unwrap())
        .with_previous(AuditKey::from_hex(&old_hex).unwrap());
    let b = broker(store.clone(), Some(&rotated), &cps);
    let n = history(&b).await;
    let records = b.audit_records().await.unwrap();
    assert_eq!(
        records[0].mac.as_ref().unwrap().key_id,
        old.current_id(),
        "sealed by the old key"
    );
    assert_eq!(
        records[n - 1].mac.as_ref().unwrap().key_id,
        rotated.current_id(),
        "new records are sealed by the new key only"
    );
    let s = b
        .verify_audit_with(&with_checkpoints(&rotated, &cps))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.records, s.sealed), (n as u64, n as u64));
    assert!(s.checkpoint.unwrap() > n1 as u64);

    // Dropping the old key from the keyring names it.
    let brk = broker(
        store,
        Some(&AuditKeyring::new(AuditKey::from_hex(&new_hex).unwrap())),
        &cps,
    )
    .verify_audit()
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(
        (brk.position, brk.reason),
        (
            0,
            ChainBreakReason::UnknownKey {
                key_id: old.current_id().to_string()
            }
        )
    );
}

#[tokio::test]
async fn checkpoints_go_to_the_file_every_n_records_and_every_tick() {
    let dir = tempfile::tempdir().unwrap();
    let cps = dir.path().join("checkpoints.jsonl");
    let hex = AuditKey::generate().to_hex();
    let k = AuditKeyring::new(AuditKey::from_hex(&hex).unwrap());
    let policy = Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    let b = Broker::builder(Arc::new(jit_core::MemoryStore::new()), policy)
        .provider(Arc::new(TestProvider::new("test")))
        .provider(Arc::new(TestProvider::new("manual-expiry")))
        .audit_sink(Arc::new(CheckpointFileSink::open(&cps).unwrap()))
        .audit_keyring(k.clone())
        .checkpoint_every(1000)
        .build()
        .unwrap();
    b.submit(&user("alice"), req("dev-read", "10m"))
        .await
        .unwrap();
    assert!(read_checkpoint_file(&cps).unwrap().is_empty());
    Reaper::new(b.clone()).tick().await.unwrap();
    let written = read_checkpoint_file(&cps).unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].seq, 4);
    assert_eq!(written[0].key_id, k.current_id());
    // Nothing new: no second checkpoint.
    Reaper::new(b.clone()).tick().await.unwrap();
    assert_eq!(read_checkpoint_file(&cps).unwrap().len(), 1);
    // The key's bytes show nowhere: not in the broker, not in a checkpoint.
    let shown = format!("{b:?} {k:?} {:?} {}", written[0], written[0].to_json_line());
    assert!(
        !shown.contains(hex.as_str()) && !shown.contains(&hex[..16]),
        "{shown}"
    );
}

// ---- PostgreSQL ----

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use jit_core::testing::postgres::TestSchema;

    /// The attacker keeps `audit_head` in step, as someone hiding their
    /// tracks would (else the next append would leave a gap).
    struct Pg {
        pool: sqlx::PgPool,
        schema: String,
    }

    impl Pg {
        async fn sync_head(&self) {
            sqlx::query(&format!(
                "UPDATE {s}.audit_head SET seq = COALESCE((SELECT MAX(seq) FROM {s}.audit), 0),
                   hash = COALESCE((SELECT hash FROM {s}.audit ORDER BY seq DESC LIMIT 1), repeat('0', 64))
                 WHERE id = 1",
                s = self.schema
            ))
            .execute(&self.pool)
            .await
            .unwrap();
        }
    }

    #[async_trait]
    impl AuditTable for Pg {
        async fn rows(&self) -> Vec<(i64, String)> {
            sqlx::query_as(&format!(
                "SELECT seq, body FROM {}.audit ORDER BY seq",
                self.schema
            ))
            .fetch_all(&self.pool)
            .await
            .unwrap()
        }
        async fn write(&self, seq: i64, hash: &str, body: &str) {
            sqlx::query(&format!(
                "UPDATE {}.audit SET hash = $1, body = $2 WHERE seq = $3",
                self.schema
            ))
            .bind(hash)
            .bind(body)
            .bind(seq)
            .execute(&self.pool)
            .await
            .unwrap();
            self.sync_head().await;
        }
        async fn delete_from(&self, seq: i64) {
            sqlx::query(&format!(
                "DELETE FROM {}.audit WHERE seq >= $1",
                self.schema
            ))
            .bind(seq)
            .execute(&self.pool)
            .await
            .unwrap();
            self.sync_head().await;
        }
        async fn set_body(&self, seq: i64, body: &str) {
            sqlx::query(&format!(
                "UPDATE {}.audit SET body = $1 WHERE seq = $2",
                self.schema
            ))
            .bind(body)
            .bind(seq)
            .execute(&self.pool)
            .await
            .unwrap();
        }
    }

    async fn pg() -> (TestSchema, Arc<dyn Store>, Pg) {
        let schema = TestSchema::new().await;
        let store: Arc<dyn Store> = Arc::new(schema.store().await);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(schema.url())
            .await
            .unwrap();
        let table = Pg {
            pool,
            schema: schema.name().to_string(),
        };
        (schema, store, table)
    }

    #[tokio::test]
    async fn postgres_truncated_audit_table_fails_against_a_checkpoint() {
        let (schema, store, table) = pg().await;
        truncation_is_caught_by_a_checkpoint(store, &table).await;
        schema.drop_schema().await;
    }

    #[tokio::test]
    async fn postgres_rehashed_audit_table_fails_on_the_seal() {
        let (schema, store, table) = pg().await;
        rehash_is_caught_by_the_seals(store, &table, false).await;
        schema.drop_schema().await;
    }

    #[tokio::test]
    async fn postgres_rehashed_audit_table_with_seals_stripped_fails_on_the_missing_seal() {
        let (schema, store, table) = pg().await;
        rehash_is_caught_by_the_seals(store, &table, true).await;
        schema.drop_schema().await;
    }

    #[tokio::test]
    async fn postgres_invalid_json_row_is_named_as_broken() {
        let (schema, store, table) = pg().await;
        an_invalid_row_is_named(store, &table).await;
        schema.drop_schema().await;
    }
}
