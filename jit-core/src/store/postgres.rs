//! PostgreSQL store: several broker replicas on one database.
//!
//! Every replica (a process with its own [`Broker`](crate::Broker) and
//! [`Reaper`](crate::Reaper)) opens its own [`PostgresStore`] on the same
//! database and schema. The database is the only thing they share, so every
//! rule that one process keeps with a mutex is kept here with a row lock.
//!
//! # Choices
//!
//! - **One transaction per transition, compare-and-set in SQL.** `insert` and
//!   `update` write the record and append its audit events in one
//!   transaction (`READ COMMITTED`). The update is
//!   `UPDATE requests .. WHERE id = $1 AND version = $2`: a writer that loses
//!   the race waits for the winner's row lock, then finds the version moved
//!   and changes nothing, which is [`Error::Conflict`] (or
//!   [`Error::NotFound`] for an unknown id). Any failure rolls back record
//!   and audit events alike.
//! - **One audit chain, serialized by a head row.** `audit_head` holds a
//!   single row (last `seq` and `hash`). A transition that appends events
//!   chains them after the head this store last wrote, and in one
//!   statement moves the head row from exactly that head to the new one
//!   and inserts the events only if it moved. When another replica has
//!   appended since (or a write of this one rolled back), the head did not
//!   move: the transition reads it with `SELECT .. FOR UPDATE` and chains
//!   its events again. Either way the head row's lock is held until commit
//!   (the guarded `UPDATE` waits for a writer holding it, then checks the
//!   newest committed head), so appends from every replica form one queue
//!   and never both chain onto the same head (a fork); a writer that rolls
//!   back leaves the head where it was. Reading `MAX(seq)` from the audit table instead would not do: two
//!   transactions could read the same maximum and only one insert would
//!   fail, as a conflict nobody asked for. The lock is taken after the
//!   record's own row lock, in every path, so the two locks cannot deadlock;
//!   transitions without events (intermediate states such as `Issuing`) do
//!   not take it at all.
//! - **Reaper work is claimed with `FOR UPDATE SKIP LOCKED` plus a lease.**
//!   [`Store::claim_due`] picks due rows that are not leased to another
//!   replica (or whose lease lapsed), skipping rows another claim is
//!   locking at that moment, and stamps them `lease_owner`/`lease_until` in
//!   the same statement. `SKIP LOCKED` alone would protect a row only while
//!   the claiming transaction is open, but the work behind a claim (an
//!   expiry: mark `Revoking`, call the provider, mark `Expired`) spans
//!   several transactions and a provider call, and must not be picked up by
//!   a second replica in between; a lease holds across all of that without
//!   keeping a transaction (and a pooled connection) open for the length of
//!   a provider call. `SKIP LOCKED` keeps concurrent claims from queueing
//!   behind each other, and PostgreSQL re-checks the lease condition on the
//!   newest row version after locking, so two claims never both win a row.
//!   Leases are neither checked nor cleared by `update` (user actions on a
//!   leased record proceed as usual and are still compare-and-set); they
//!   simply lapse.
//! - **A replica that dies** leaves its leases behind. Nothing is lost: its
//!   claimed rows are still due, and once `lease_until` has passed
//!   (compared with the claimer's clock) another replica's reaper claims
//!   and finishes them. Work that a dead replica had started is finished
//!   from the state it reached (a `Revoking` grant is revoked again, which
//!   providers accept idempotently). Its open transactions are rolled back
//!   by the server when the connection drops.
//! - **Versioned migrations under an advisory lock.** `schema_migrations`
//!   records every applied version; opening applies the missing ones in one
//!   transaction holding `pg_advisory_xact_lock`, so replicas starting at
//!   once apply each migration exactly once, and refuses a schema written
//!   by a newer version of this crate.
//! - **Records as text JSON, plus query columns.** The [`RequestRecord`] and
//!   [`AuditRecord`] bodies (the latter in their compact form,
//!   [`AuditRecord::to_stored`]) are stored as `TEXT`, byte for byte as written,
//!   so audit hashes recompute exactly (`JSONB` would reorder keys and
//!   reject `\u0000`). Timestamps in query columns are fixed-width RFC 3339
//!   UTC text with nanoseconds under the `"C"` collation, so text order is
//!   time order at full precision (`timestamptz` keeps microseconds only,
//!   and would make a record due up to a microsecond early).
//! - **Isolation by schema.** [`PostgresStoreBuilder::schema`] creates the
//!   schema if needed and pins `search_path` to it on every pooled
//!   connection (a startup parameter, so no extra round trip), so several
//!   deployments, or tests, share one database without seeing each other.
//! - **TLS from the URL, as libpq reads it.** Connections use rustls (on
//!   ring, the TLS stack the rest of the workspace uses) with the Mozilla
//!   root certificates. `sslmode=prefer` (the default) uses TLS when the
//!   server offers it; `sslmode=require` insists on it; `sslmode=verify-full`
//!   also checks the server's certificate and host name, against
//!   `sslrootcert=/path/ca.pem` for a private CA (Amazon RDS and Cloud SQL
//!   publish theirs). For a broker whose store holds who may do what, use
//!   `verify-full` across any network you do not own.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, SecondsFormat, TimeDelta, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row, Transaction};

use super::risk_facts::{self, Contribution};
use super::sql::HeadHint;
use super::{
    check_versions, lease_until, redact_url, sql, Claim, HistoryEntry, HistoryQuery, ListFilter,
    Prune, Store,
};
use super::{RiskFacts, RiskFactsQuery};
use crate::audit::{AuditAnchor, AuditEntry, AuditEvent, AuditRecord};
use crate::error::{Error, Result};
use crate::types::{RequestId, RequestRecord, State};

/// The schema version this build writes: the last entry of the migrations.
pub const SCHEMA_VERSION: i64 = 13;

/// Connections per store unless set: a replica's writers, readers and reaper.
const DEFAULT_POOL_SIZE: u32 = 10;
/// How long a caller waits for a pooled connection (or a new one).
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Key of the advisory lock that serializes migrations ("jit-core" in ASCII).
const MIGRATION_LOCK: i64 = 0x6a69_742d_636f_7265;

/// One schema step. Statements run in order inside the migration transaction.
struct Migration {
    version: i64,
    statements: &'static [&'static str],
}

/// Every migration, ascending by version. Never edit a released entry: add one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        statements: &[
            // `seq` is the insertion order (`list` and `due` tie-break).
            r#"CREATE TABLE requests (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            version BIGINT NOT NULL CHECK (version > 0),
            state TEXT NOT NULL,
            requester TEXT NOT NULL,
            entitlement TEXT NOT NULL,
            created_at TEXT COLLATE "C" NOT NULL,
            due_at TEXT COLLATE "C",
            lease_owner TEXT,
            lease_until TEXT COLLATE "C",
            body TEXT NOT NULL
        )"#,
            "CREATE INDEX requests_state_due ON requests (state, due_at) WHERE due_at IS NOT NULL",
            "CREATE INDEX requests_requester_created ON requests (requester, created_at)",
            "CREATE INDEX requests_created ON requests (created_at)",
            "CREATE TABLE audit (
            seq BIGINT PRIMARY KEY CHECK (seq > 0),
            hash TEXT NOT NULL,
            body TEXT NOT NULL
        )",
            // The chain head: the one row every append locks (see the module docs).
            "CREATE TABLE audit_head (
            id SMALLINT PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL CHECK (seq >= 0),
            hash TEXT NOT NULL
        )",
            // `GENESIS_HASH`: 64 zeros (a unit test keeps them equal).
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, repeat('0', 64))",
        ],
    },
    Migration {
        version: 2,
        statements: &[
            // Version 1 stored the requester folded (NFKC, lowercase), so `ALICE`
            // listed `alice`'s requests. Ownership is the exact subject id: take it
            // back from the record itself.
            "UPDATE requests SET requester = (body::jsonb -> 'requester' ->> 'id')",
        ],
    },
    // (Version 3 was never released: numbers were handed out to parallel
    // changes, and gaps are allowed.)
    // Version 4: the approver queue (pending requests of a set of
    // entitlements, newest first) and the metrics' count by state read this
    // index instead of the whole table.
    Migration {
        version: 4,
        statements: &[
            "CREATE INDEX requests_state_entitlement_created ON requests (state, entitlement, created_at)",
        ],
    },
    Migration {
        version: 5,
        statements: &[
            // Named leases ([`Store::try_acquire_lease`]): one row per key held.
            r#"CREATE TABLE leases (
            key TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until TEXT COLLATE "C" NOT NULL
        )"#,
        ],
    },
    // Version 6: start-up's revoked grants that are still running
    // (`ListFilter::ends_after`) read an index bounded by the grant's end
    // instead of every revoked row ever stored. Existing rows get the column
    // from their body: chrono writes 0, 3, 6 or 9 fractional digits, the
    // column always has nine (see `sql::timestamp`), so text order stays
    // time order.
    Migration {
        version: 6,
        statements: &[
            r#"ALTER TABLE requests ADD COLUMN ends_at TEXT COLLATE "C""#,
            "UPDATE requests SET ends_at = (
            SELECT CASE
                WHEN t IS NULL THEN NULL
                WHEN length(t) = 20 THEN substr(t, 1, 19) || '.000000000Z'
                ELSE substr(t, 1, 19) || '.' || substr(substr(t, 21, length(t) - 21) || '000000000', 1, 9) || 'Z'
            END
            FROM (SELECT body::jsonb -> 'grant' ->> 'ends_at' AS t) AS g
        )",
            "CREATE INDEX requests_state_ends ON requests (state, ends_at) WHERE ends_at IS NOT NULL",
        ],
    },
    // Version 7: retention. The anchor the audit chain starts from once
    // its prefix was archived and pruned (`Store::prune`): one row, seq 0
    // (nothing pruned) until the first prune, locked by each prune so that
    // two never both apply; `body` is the anchor as JSON.
    Migration {
        version: 7,
        statements: &[
            "CREATE TABLE audit_anchor (
            id SMALLINT PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL CHECK (seq >= 0),
            hash TEXT NOT NULL,
            body TEXT
        )",
            "INSERT INTO audit_anchor (id, seq, hash, body) VALUES (1, 0, repeat('0', 64), NULL)",
        ],
    },
    // Version 8: risk review's history lookups ([`Store::history`]): one
    // requester's requests for one entitlement, and an entitlement's
    // requests by anyone (a requester's peers), newest first. One
    // requester's requests of any entitlement read `requests_requester_created`.
    Migration {
        version: 8,
        statements: &[
            "CREATE INDEX requests_requester_entitlement_created ON requests (requester, entitlement, created_at)",
            "CREATE INDEX requests_entitlement_created ON requests (entitlement, created_at)",
        ],
    },
    // Version 9: one requester's requests in one state, newest first (the
    // broker's pending cap on every submit): without it the cap reads the
    // requester's whole history through `requests_requester_created`.
    Migration {
        version: 9,
        statements: &[
            "CREATE INDEX requests_requester_state_created ON requests (requester, state, created_at)",
        ],
    },
    // Version 12: `count_by_state` (scraped by `/metrics` every few seconds)
    // sums a few hundred counter rows instead of counting every index
    // entry (measured at 1M rows: an index-only `count(*) GROUP BY state`
    // 170 to 240 ms, the counters 0.2 ms; see BENCHMARKS.md). Triggers keep the counts in the transaction that inserts,
    // changes the state of or prunes a record, so a rollback takes the
    // count back with it and no code path can forget one.
    //
    // Counters are sharded by the writing connection (`pg_backend_pid() %
    // 64`): with one row per state, every replica's transitions would queue
    // on the same few rows. A shard's count alone means nothing (a record
    // inserted through one connection and approved through another leaves
    // -1 in the second one's `Pending` shard); the sum per state is exact.
    // The update trigger takes its two rows in state order so that two
    // connections sharing a shard never wait on each other in a cycle.
    // Prunes delete in batches, so their trigger runs once per statement
    // over the deleted rows. The table is locked against writers while the
    // triggers are created and the counts back-filled, so no write falls
    // between the count and the first trigger.
    Migration {
        version: 12,
        statements: &[
            "LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE",
            "CREATE TABLE state_counts (
            state TEXT NOT NULL,
            shard SMALLINT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (state, shard)
        )",
            "CREATE FUNCTION jit_count_add(s TEXT, delta BIGINT) RETURNS void
            LANGUAGE sql AS $$
            INSERT INTO state_counts (state, shard, n)
            VALUES (s, (pg_backend_pid() % 64)::SMALLINT, delta)
            ON CONFLICT (state, shard) DO UPDATE SET n = state_counts.n + EXCLUDED.n
        $$",
            "CREATE FUNCTION jit_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM jit_count_add(NEW.state, 1);
            RETURN NULL;
        END $$",
            "CREATE FUNCTION jit_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.state < NEW.state THEN
                PERFORM jit_count_add(OLD.state, -1);
                PERFORM jit_count_add(NEW.state, 1);
            ELSE
                PERFORM jit_count_add(NEW.state, 1);
                PERFORM jit_count_add(OLD.state, -1);
            END IF;
            RETURN NULL;
        END $$",
            "CREATE FUNCTION jit_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO state_counts (state, shard, n)
            SELECT state, (pg_backend_pid() % 64)::SMALLINT, -COUNT(*) FROM gone
            GROUP BY state ORDER BY state
            ON CONFLICT (state, shard) DO UPDATE SET n = state_counts.n + EXCLUDED.n;
            RETURN NULL;
        END $$",
            "CREATE TRIGGER requests_count_insert AFTER INSERT ON requests
            FOR EACH ROW EXECUTE FUNCTION jit_count_insert()",
            "CREATE TRIGGER requests_count_update AFTER UPDATE OF state ON requests
            FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
            EXECUTE FUNCTION jit_count_update()",
            "CREATE TRIGGER requests_count_delete AFTER DELETE ON requests
            REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION jit_count_delete()",
            "INSERT INTO state_counts (state, shard, n)
            SELECT state, 0, COUNT(*) FROM requests GROUP BY state",
        ],
    },
    // Version 13: risk review's aggregates ([`Store::risk_facts`], see
    // `risk_facts.rs`): per requester and hour, per requester, entitlement
    // and duration, per requester and source, and per entitlement, group
    // and requester, each row a count of the requests held. Written by
    // `insert_in` and `prune_in` from the records in Rust, as upserts (two
    // replicas inserting for one requester at once queue on the row, and
    // both count), and back-filled by `risk_backfill` after these
    // statements with the table locked against writers, as version 12 does.
    Migration {
        version: RISK_MIGRATION,
        statements: &[
            "LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE",
            "CREATE TABLE risk_hours (
            requester TEXT NOT NULL,
            hour SMALLINT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (requester, hour)
        )",
            "CREATE TABLE risk_durations (
            requester TEXT NOT NULL,
            entitlement TEXT NOT NULL,
            secs BIGINT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (requester, entitlement, secs)
        )",
            "CREATE TABLE risk_sources (
            requester TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (requester, key, value)
        )",
            "CREATE TABLE risk_peers (
            entitlement TEXT NOT NULL,
            grp TEXT NOT NULL,
            requester TEXT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (entitlement, grp, requester)
        )",
        ],
    },
];

/// The migration that creates risk review's aggregates; `migrate_in`
/// back-fills them after its statements.
const RISK_MIGRATION: i64 = 13;

/// Risk review's facts ([`Store::risk_facts`]) in one statement and one
/// row (the columns `RiskFacts::from_row` reads): primary-key reads of the
/// aggregate tables, and the burst count from the `(requester,
/// created_at)` index. Parameters: `$1` requester, `$2` entitlement, `$3`
/// the burst window's start, `$4` the groups, `$5` and `$6` the sources'
/// keys and values.
const FACTS_SQL: &str = "SELECT
    (SELECT string_agg(hour || ':' || n, ',') FROM risk_hours WHERE requester = $1),
    (SELECT string_agg(secs || ':' || n, ',') FROM risk_durations
        WHERE requester = $1 AND entitlement = $2),
    (SELECT count(*) FROM requests WHERE requester = $1 AND created_at >= $3),
    EXISTS (SELECT 1 FROM risk_peers
        WHERE entitlement = $2 AND grp = ANY($4) AND requester <> $1),
    (SELECT coalesce(sum(CASE WHEN EXISTS (SELECT 1 FROM risk_sources AS r
        WHERE r.requester = $1 AND r.key = s.k AND r.value = s.v)
        THEN 1::bigint << (s.i - 1)::int ELSE 0 END), 0)::bigint
        FROM unnest($5::text[], $6::text[]) WITH ORDINALITY AS s(k, v, i))";

/// Moves the aggregates by `Deltas` in one statement: one upsert per
/// table, each from arrays in primary-key order (so concurrent writers
/// lock rows in the same order).
const APPLY_SQL: &str = "WITH h AS (
        INSERT INTO risk_hours (requester, hour, n)
        SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[])
        ON CONFLICT (requester, hour) DO UPDATE SET n = risk_hours.n + EXCLUDED.n
    ), d AS (
        INSERT INTO risk_durations (requester, entitlement, secs, n)
        SELECT * FROM unnest($4::text[], $5::text[], $6::bigint[], $7::bigint[])
        ON CONFLICT (requester, entitlement, secs) DO UPDATE SET n = risk_durations.n + EXCLUDED.n
    ), s AS (
        INSERT INTO risk_sources (requester, key, value, n)
        SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::bigint[])
        ON CONFLICT (requester, key, value) DO UPDATE SET n = risk_sources.n + EXCLUDED.n
    ), p AS (
        INSERT INTO risk_peers (entitlement, grp, requester, n)
        SELECT * FROM unnest($12::text[], $13::text[], $14::text[], $15::bigint[])
        ON CONFLICT (entitlement, grp, requester) DO UPDATE SET n = risk_peers.n + EXCLUDED.n
    ) SELECT 1";

/// After a prune's [`APPLY_SQL`]: the rows it took to zero go.
const SWEEP_SQL: &str = "WITH h AS (DELETE FROM risk_hours WHERE n <= 0 AND requester = ANY($1)),
    d AS (DELETE FROM risk_durations WHERE n <= 0 AND requester = ANY($1)),
    s AS (DELETE FROM risk_sources WHERE n <= 0 AND requester = ANY($1)),
    p AS (DELETE FROM risk_peers WHERE n <= 0 AND entitlement = ANY($2))
    SELECT 1";

/// Applies `deltas` inside the caller's transaction.
async fn apply_risk(conn: &mut PgConnection, deltas: &risk_facts::Deltas) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    fn cols<'a, K: 'a, A, B, C>(
        rows: impl Iterator<Item = (&'a K, &'a i64)>,
        split: impl Fn(&'a K) -> (A, B, C),
    ) -> (Vec<A>, Vec<B>, Vec<C>, Vec<i64>) {
        let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, n) in rows {
            let (a, b, c) = split(k);
            out.0.push(a);
            out.1.push(b);
            out.2.push(c);
            out.3.push(*n);
        }
        out
    }
    let (h_who, h_hour, _, h_n) = cols(deltas.hours.iter(), |(who, h)| {
        (who.as_str(), i16::try_from(*h).unwrap_or(0), ())
    });
    let (d_who, d_ent, d_secs, d_n) = cols(deltas.durations.iter(), |(who, ent, secs)| {
        (who.as_str(), ent.as_str(), *secs)
    });
    let (s_who, s_key, s_value, s_n) = cols(deltas.sources.iter(), |(who, k, v)| {
        (who.as_str(), k.as_str(), v.as_str())
    });
    let (p_ent, p_grp, p_who, p_n) = cols(deltas.peers.iter(), |(ent, g, who)| {
        (ent.as_str(), g.as_str(), who.as_str())
    });
    sqlx::query(APPLY_SQL)
        .bind(&h_who)
        .bind(&h_hour)
        .bind(&h_n)
        .bind(&d_who)
        .bind(&d_ent)
        .bind(&d_secs)
        .bind(&d_n)
        .bind(&s_who)
        .bind(&s_key)
        .bind(&s_value)
        .bind(&s_n)
        .bind(&p_ent)
        .bind(&p_grp)
        .bind(&p_who)
        .bind(&p_n)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("update risk aggregates", e))?;
    if deltas.takes_away() {
        let mut who: Vec<&str> = h_who.clone();
        who.dedup();
        let mut ents: Vec<&str> = p_ent.clone();
        ents.dedup();
        sqlx::query(SWEEP_SQL)
            .bind(&who)
            .bind(&ents)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("update risk aggregates", e))?;
    }
    Ok(())
}

/// Migration 13's back-fill: the aggregates of every stored request, from
/// its body (a body that does not decode adds nothing, and a prune of it
/// takes nothing away: the same rule both ways), a page at a time.
async fn risk_backfill(conn: &mut PgConnection) -> Result<()> {
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, body FROM requests WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(sql::limit_i64(BACKFILL_PAGE))
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| db_error("read requests for risk aggregates", e))?;
        let Some((last, _)) = rows.last() else {
            return Ok(());
        };
        after = *last;
        let mut deltas = risk_facts::Deltas::default();
        for r in rows.iter().filter_map(|(_, body)| decoded_for_risk(body)) {
            deltas.add(&Contribution::of(&r), 1);
        }
        apply_risk(conn, &deltas).await?;
    }
}

/// Requests [`risk_backfill`] reads and counts at a time.
const BACKFILL_PAGE: usize = 2000;

/// A stored request for the aggregates; `None` (logged) when its body
/// does not decode.
fn decoded_for_risk(body: &str) -> Option<RequestRecord> {
    match sql::decode_record(body) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "risk aggregates: a stored request does not decode; not counted");
            None
        }
    }
}

/// [`Store`] on a PostgreSQL database, shared by any number of broker replicas.
///
/// ```no_run
/// # async fn demo() -> jit_core::Result<()> {
/// use jit_core::store::PostgresStore;
/// let store = PostgresStore::connect("postgres://jit@db.internal/jit").await?;
/// let isolated = PostgresStore::builder("postgres://jit@db.internal/jit")
///     .schema("jit_staging")
///     .max_connections(20)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
pub struct PostgresStore {
    pool: PgPool,
    location: String,
    schema: Option<String>,
    /// The audit head this store last wrote (see [`HeadHint`]).
    head: HeadHint,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Options for [`PostgresStore`]; finish with [`PostgresStoreBuilder::connect`].
pub struct PostgresStoreBuilder {
    url: String,
    schema: Option<String>,
    max_connections: u32,
    acquire_timeout: Duration,
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl PostgresStoreBuilder {
    /// Keeps every table in this schema, created if missing: 1 to 63
    /// characters of `[a-z0-9_]`, not starting with a digit or `pg_`.
    /// Without it, tables go where the URL's `search_path` says (usually
    /// `public`).
    pub fn schema(mut self, name: &str) -> Self {
        self.schema = Some(name.to_string());
        self
    }

    /// At most this many connections (default 10, at least 1).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long a call waits for a connection before it fails with
    /// [`Error::Unavailable`] (default 30 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Connects, creates the schema if one was named, and brings the tables
    /// up to date. An unreachable server is [`Error::Unavailable`].
    pub async fn connect(self) -> Result<PostgresStore> {
        let location = redact_url(&self.url);
        if let Some(schema) = &self.schema {
            check_schema_name(schema)?;
        }
        let mut options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| Error::Store(format!("invalid postgres url `{location}`: {e}")))?;
        if options.get_application_name().is_none() {
            // Lets a DBA tell broker sessions apart in `pg_stat_activity`.
            options = options.application_name("jit-core");
        }
        if let Some(schema) = &self.schema {
            // Only this schema: a table that is missing from it is an error,
            // never silently found (or created) in `public`.
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|e| db_error(&format!("connect to `{location}`"), e))?;
        let store = PostgresStore {
            pool,
            location,
            schema: self.schema,
            head: HeadHint::default(),
        };
        store.migrate().await?;
        Ok(store)
    }
}

fn check_schema_name(name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::Store(format!(
            "schema name `{name}` is not valid: use 1 to 63 characters of `[a-z0-9_]`, not starting with a digit or `pg_`"
        )))
    }
}

impl PostgresStore {
    /// Connects with default options (see [`PostgresStore::builder`]), for
    /// example `postgres://jit@db.internal:5432/jit`. The tables go where
    /// the URL's `search_path` says (add
    /// `?options=-csearch_path%3Dmy_schema` to pick an existing schema).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Options: a schema of its own, pool size, timeouts.
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.to_string(),
            schema: None,
            max_connections: DEFAULT_POOL_SIZE,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        }
    }

    /// The URL the store was opened with, password redacted.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The schema named with [`PostgresStoreBuilder::schema`], if any.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("read schema version", e))?;
        Ok(v.unwrap_or(0))
    }

    /// Closes every connection, waiting for them to finish. Later calls fail.
    /// Leases this replica holds stay until they lapse.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies the missing migrations in one transaction, one replica at a time.
    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        let result = migrate_in(&mut tx, self.schema.as_deref()).await;
        finish(tx, result, "migrate").await
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(|e| db_error("begin transaction", e))
    }
}

async fn migrate_in(conn: &mut PgConnection, schema: Option<&str>) -> Result<()> {
    // Released at commit or rollback; replicas starting at once queue here.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("take the migration lock", e))?;
    if let Some(schema) = schema {
        // The name was checked against `[a-z0-9_]`: safe to splice.
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(&format!("create schema `{schema}`"), e))?;
    }
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error("create schema_migrations", e))?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db_error("read schema version", e))?;
    let current = current.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(Error::Store(format!(
            "database schema version {current} is newer than version {SCHEMA_VERSION} known to this build: upgrade jit-core to open it"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        for statement in m.statements {
            sqlx::query(statement)
                .execute(&mut *conn)
                .await
                .map_err(|e| db_error(&format!("apply migration {}", m.version), e))?;
        }
        if m.version == RISK_MIGRATION {
            risk_backfill(&mut *conn).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(m.version)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(&format!("record migration {}", m.version), e))?;
    }
    Ok(())
}

/// Commits on success; on failure rolls back now (instead of on drop, which
/// would leave the locks held until the connection is reused) and returns the
/// first error.
async fn finish<T>(tx: Transaction<'static, Postgres>, result: Result<T>, op: &str) -> Result<T> {
    match result {
        Ok(v) => {
            tx.commit()
                .await
                .map_err(|e| db_error(&format!("commit {op}"), e))?;
            Ok(v)
        }
        Err(e) => {
            // A failed rollback leaves nothing committed either; the caller needs the cause.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Maps a sqlx error: a lost connection, a full server, lock and
/// serialization failures and pool exhaustion are transient
/// ([`Error::Unavailable`]); everything else is [`Error::Store`].
fn db_error(op: &str, e: sqlx::Error) -> Error {
    let transient = match &e {
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // Class 08: connection exception; 40001 serialization failure;
            // 40P01 deadlock; 53: insufficient resources; 55P03 lock not
            // available; 57P01-57P03: shutdown, crash recovery, starting up.
            c.starts_with("08")
                || c.starts_with("53")
                || matches!(
                    &*c,
                    "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03"
                )
        }),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    if transient {
        Error::Unavailable {
            what: "postgres store".into(),
            message: format!("{op}: {e}"),
        }
    } else {
        Error::Store(format!("postgres {op}: {e}"))
    }
}

const ENGINE: &str = "postgres";

fn timestamp(t: DateTime<Utc>) -> Result<String> {
    sql::timestamp(t, ENGINE)
}

/// A query bound: times past the year 9999 compare after every stored time.
fn bound(t: DateTime<Utc>) -> String {
    if t.year() > 9999 {
        "9999-12-31T23:59:59.999999999Z~".to_string()
    } else if t.year() < 0 {
        // Sorts before every digit.
        " ".to_string()
    } else {
        t.to_rfc3339_opts(SecondsFormat::Nanos, true)
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    sql::to_i64(v, what, ENGINE)
}

fn state_names(states: &[State]) -> Vec<String> {
    states.iter().map(|s| s.as_str().to_string()).collect()
}

fn decode_record(row: &PgRow) -> Result<RequestRecord> {
    let body: String = row
        .try_get("body")
        .map_err(|e| db_error("read request", e))?;
    sql::decode_record(&body)
}

/// Chains `events` after the head, holding the head row's lock until the
/// transaction ends. Must run inside the transition's transaction. The
/// head comes from `hint` when it is still the stored one (one statement
/// then moves the head and writes the events), else from a locking read.
async fn append_in(
    conn: &mut PgConnection,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((seq, hash)) = hint.get() {
        let chained = sql::chain(events, seq, &hash, ENGINE, AuditRecord::to_stored)?;
        if insert_chained(conn, &chained, Some((seq, &hash))).await? {
            hint.set(&chained);
            return Ok(chained.records);
        }
    }
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error("lock the audit head", e))?;
    let Some((seq, hash)) = head else {
        return Err(Error::Store(
            "the audit head row is missing: the schema was altered outside jit-core".into(),
        ));
    };
    let chained = sql::chain(events, seq, &hash, ENGINE, AuditRecord::to_stored)?;
    // The head row is locked since it was read: nothing to guard against.
    if !insert_chained(conn, &chained, None).await? {
        return Err(Error::Store("the audit head did not move".into()));
    }
    hint.set(&chained);
    Ok(chained.records)
}

/// Writes the chained rows and moves the head to the last of them, in one
/// round trip. With `after`, only if the stored head is exactly `after`:
/// the `UPDATE` takes the head row's lock (waiting for a writer that holds
/// it) and then checks the newest committed head, so two transactions
/// never both chain onto one head; `false` when it was not, with nothing
/// written.
async fn insert_chained(
    conn: &mut PgConnection,
    chained: &sql::Chained<String>,
    after: Option<(i64, &str)>,
) -> Result<bool> {
    let Some((seq, prev)) = chained.head() else {
        return Ok(true);
    };
    let hashes: Vec<&str> = chained.records.iter().map(|r| r.hash.as_str()).collect();
    let written = match after {
        None => sqlx::query(
            "WITH appended AS (
                INSERT INTO audit (seq, hash, body)
                SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[])
            )
            UPDATE audit_head SET seq = $4, hash = $5 WHERE id = 1",
        )
        .bind(&chained.seqs)
        .bind(&hashes)
        .bind(&chained.bodies)
        .bind(seq)
        .bind(prev),
        // The rows are written only when the head moved from `after`.
        Some((after_seq, after_hash)) => sqlx::query(
            "WITH moved AS (
                UPDATE audit_head SET seq = $4, hash = $5
                WHERE id = 1 AND seq = $6 AND hash = $7
                RETURNING 1
            )
            INSERT INTO audit (seq, hash, body)
            SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[])
            WHERE EXISTS (SELECT 1 FROM moved)",
        )
        .bind(&chained.seqs)
        .bind(&hashes)
        .bind(&chained.bodies)
        .bind(seq)
        .bind(prev)
        .bind(after_seq)
        .bind(after_hash),
    }
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error("append audit records", e))?
    .rows_affected();
    match after {
        None => Ok(written == 1),
        Some(_) if written == 0 => Ok(false),
        Some(_) if written == chained.seqs.len() as u64 => Ok(true),
        Some(_) => Err(Error::Store(format!(
            "postgres append audit records: {written} of {} rows written",
            chained.seqs.len()
        ))),
    }
}

/// [`Store::prune`] inside a transaction (see its contract). The anchor
/// row's lock makes concurrent prunes queue; appends never wait for it
/// (they lock `audit_head`, and only rows after the anchor are theirs).
async fn prune_in(conn: &mut PgConnection, prune: &Prune) -> Result<()> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM audit_anchor WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error("lock the audit anchor", e))?;
    let current = u64::try_from(current.unwrap_or(0)).unwrap_or(0);
    if current != prune.after {
        return Err(sql::stale_prune(current, prune.after));
    }
    let at = to_i64(prune.anchor.seq, "audit seq")?;
    let hash: Option<String> = sqlx::query_scalar("SELECT hash FROM audit WHERE seq = $1")
        .bind(at)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error("read audit record", e))?;
    if hash.as_deref() != Some(prune.anchor.hash.as_str()) {
        return Err(sql::anchor_mismatch(prune.anchor.seq));
    }
    let ids: Vec<String> = prune.records.iter().map(|(id, _)| id.to_string()).collect();
    let versions = prune
        .records
        .iter()
        .map(|(_, v)| to_i64(*v, "version"))
        .collect::<Result<Vec<i64>>>()?;
    let finals: Vec<String> = State::ALL
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str().to_string())
        .collect();
    let deleted: Vec<(String, String)> = sqlx::query_as(
        "DELETE FROM requests r USING UNNEST($1::TEXT[], $2::BIGINT[]) AS p(id, version)
         WHERE r.id = p.id AND r.version = p.version AND r.state = ANY($3)
         RETURNING r.id, r.body",
    )
    .bind(&ids)
    .bind(&versions)
    .bind(&finals)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| db_error("prune requests", e))?;
    if deleted.len() != prune.records.len() {
        let gone: std::collections::HashSet<&str> =
            deleted.iter().map(|(id, _)| id.as_str()).collect();
        if let Some((id, version)) = prune
            .records
            .iter()
            .find(|(id, _)| !gone.contains(id.to_string().as_str()))
        {
            return Err(Error::Conflict {
                request: *id,
                expected: *version,
            });
        }
    }
    // What their inserts (or migration 13) counted in, counted out.
    let mut risk = risk_facts::Deltas::default();
    for r in deleted
        .iter()
        .filter_map(|(_, body)| decoded_for_risk(body))
    {
        risk.add(&Contribution::of(&r), -1);
    }
    apply_risk(conn, &risk).await?;
    sqlx::query("DELETE FROM audit WHERE seq <= $1")
        .bind(at)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("prune audit records", e))?;
    sqlx::query("UPDATE audit_anchor SET seq = $1, hash = $2, body = $3 WHERE id = 1")
        .bind(at)
        .bind(&prune.anchor.hash)
        .bind(sql::encode_anchor(&prune.anchor)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("store audit anchor", e))?;
    Ok(())
}

async fn insert_in(
    conn: &mut PgConnection,
    record: &RequestRecord,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    let c = sql::Columns::of(record, ENGINE)?;
    let inserted = sqlx::query(
        "INSERT INTO requests (id, version, state, requester, entitlement, created_at, due_at, ends_at, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(c.id)
    .bind(c.version)
    .bind(c.state)
    .bind(c.requester)
    .bind(c.entitlement)
    .bind(c.created_at)
    .bind(c.due_at)
    .bind(c.ends_at)
    .bind(c.body)
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error("insert request", e))?
    .rows_affected();
    if inserted == 0 {
        return Err(sql::insert_conflict(record));
    }
    let mut risk = risk_facts::Deltas::default();
    risk.add(&Contribution::of(record), 1);
    apply_risk(conn, &risk).await?;
    append_in(conn, events, hint).await
}

async fn update_in(
    conn: &mut PgConnection,
    expected_version: u64,
    record: &RequestRecord,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    let c = sql::Columns::of(record, ENGINE)?;
    let id = c.id.clone();
    let expected = to_i64(expected_version, "version")?;
    // The identity columns are compared, not set (see the store contract).
    let updated = sqlx::query(
        "UPDATE requests
         SET version = $1, state = $2, due_at = $6, ends_at = $7, body = $8
         WHERE id = $9 AND version = $10
            AND requester = $3 AND entitlement = $4 AND created_at = $5",
    )
    .bind(c.version)
    .bind(c.state)
    .bind(c.requester)
    .bind(c.entitlement)
    .bind(c.created_at)
    .bind(c.due_at)
    .bind(c.ends_at)
    .bind(c.body)
    .bind(c.id)
    .bind(expected)
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error("update request", e))?
    .rows_affected();
    if updated == 0 {
        let stored: Option<(i64, bool)> = sqlx::query_as(
            "SELECT version, requester = $2 AND entitlement = $3 AND created_at = $4
             FROM requests WHERE id = $1",
        )
        .bind(id)
        .bind(record.requester.id.as_str())
        .bind(record.request.entitlement.as_str())
        .bind(sql::timestamp(record.created_at, ENGINE)?)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error("read request", e))?;
        return Err(match stored {
            Some((version, false)) if version == expected => super::identity_changed(record),
            stored => sql::missed_update(record, expected_version, stored.is_some()),
        });
    }
    append_in(conn, events, hint).await
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert(
        &self,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(0, record)?;
        let mut tx = self.begin().await?;
        let result = insert_in(&mut tx, record, events, &self.head).await;
        finish(tx, result, "insert").await
    }

    async fn update(
        &self,
        expected_version: u64,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(expected_version, record)?;
        let mut tx = self.begin().await?;
        let result = update_in(&mut tx, expected_version, record, events, &self.head).await;
        finish(tx, result, "update").await
    }

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        sqlx::query("SELECT body FROM requests WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("get request", e))?
            .as_ref()
            .map(decode_record)
            .transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<RequestRecord>> {
        // Only the filters in use appear in the SQL, so each shape gets a
        // plan that can use its index (a catch-all `$1 IS NULL OR ..` could not).
        let mut q = QueryBuilder::<Postgres>::new("SELECT body FROM requests WHERE TRUE");
        if let Some(requester) = &filter.requester {
            q.push(" AND requester = ").push_bind(requester.clone());
        }
        if !filter.states.is_empty() {
            q.push(" AND state = ANY(")
                .push_bind(state_names(&filter.states))
                .push(")");
        }
        if let Some(entitlement) = &filter.entitlement {
            q.push(" AND entitlement = ").push_bind(entitlement.clone());
        }
        if !filter.entitlements.is_empty() {
            q.push(" AND entitlement = ANY(")
                .push_bind(filter.entitlements.clone())
                .push(")");
        }
        if let Some(after) = filter.ends_after {
            q.push(" AND ends_at > ").push_bind(timestamp(after)?);
        }
        q.push(" ORDER BY created_at DESC, seq DESC LIMIT ")
            .push_bind(sql::limit_i64(filter.effective_limit()));
        q.build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("list requests", e))?
            .iter()
            .map(decode_record)
            .collect()
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        query.check()?;
        // Only the filters in use appear in the SQL, so each shape reads its index.
        let mut q = QueryBuilder::<Postgres>::new("SELECT body FROM requests WHERE TRUE");
        if let Some(requester) = &query.requester {
            q.push(" AND requester = ").push_bind(requester.clone());
        }
        if let Some(entitlement) = &query.entitlement {
            q.push(" AND entitlement = ").push_bind(entitlement.clone());
        }
        if let Some(other) = &query.exclude_requester {
            q.push(" AND requester <> ").push_bind(other.clone());
        }
        q.push(" ORDER BY created_at DESC LIMIT ")
            .push_bind(sql::limit_i64(query.effective_limit()));
        let rows: Vec<(String,)> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("read request history", e))?;
        Ok(rows
            .iter()
            .filter_map(|(body,)| sql::decode_history(body.as_bytes()))
            .collect())
    }

    async fn risk_facts(&self, query: &RiskFactsQuery) -> Result<RiskFacts> {
        query.check()?;
        let groups: Vec<&str> = query.groups.iter().map(String::as_str).collect();
        let keys: Vec<&str> = query.sources.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<&str> = query.sources.iter().map(|(_, v)| v.as_str()).collect();
        let (hours, durations, since, peer, seen): (
            Option<String>,
            Option<String>,
            i64,
            bool,
            i64,
        ) = sqlx::query_as(FACTS_SQL)
            .bind(query.requester.as_str())
            .bind(query.entitlement.as_str())
            .bind(risk_facts::since_text(query.since))
            .bind(&groups)
            .bind(&keys)
            .bind(&values)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("read risk facts", e))?;
        RiskFacts::from_row(
            query,
            hours.as_deref(),
            durations.as_deref(),
            since,
            peer,
            seen,
        )
    }

    async fn count_by_state(&self) -> Result<Vec<(State, u64)>> {
        let rows: Vec<(String, i64)> =
            // Kept by migration 12's triggers: a few counter rows per state.
            sqlx::query_as("SELECT state, SUM(n)::BIGINT FROM state_counts GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("count requests by state", e))?;
        Ok(super::counts_from_rows(rows))
    }

    async fn due(
        &self,
        states: &[State],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>> {
        if states.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        sqlx::query(
            "SELECT body FROM requests
             WHERE state = ANY($1) AND due_at IS NOT NULL AND due_at <= $2
             ORDER BY due_at, seq
             LIMIT $3",
        )
        .bind(state_names(states))
        .bind(bound(now))
        .bind(sql::limit_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("read due requests", e))?
        .iter()
        .map(decode_record)
        .collect()
    }

    async fn audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        sql::audit_records(self.audit_entries(from_seq, limit).await?)
    }

    async fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One statement, so one snapshot: the anchor and the rows from the
        // one before `from_seq` (whose hash the first compact row links to).
        let rows: Vec<(bool, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT TRUE, seq, hash, body FROM audit_anchor WHERE id = 1
             UNION ALL
             SELECT FALSE, seq, hash, body FROM
                 (SELECT seq, hash, body FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2) AS page
             ORDER BY 1 DESC, 2",
        )
        .bind(i64::try_from(from_seq.saturating_sub(1)).unwrap_or(i64::MAX))
        .bind(sql::limit_i64(limit.saturating_add(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("read audit records", e))?;
        let mut anchor = None;
        let mut page = Vec::with_capacity(rows.len());
        for (is_anchor, seq, hash, body) in rows {
            match (is_anchor, body) {
                (true, Some(body)) if seq > 0 => anchor = Some(sql::decode_anchor(&body)?),
                (true, _) => {}
                (false, body) => page.push((seq, hash, body.unwrap_or_default())),
            }
        }
        let mut out = sql::audit_entries_from_rows(page, from_seq, anchor.as_ref());
        out.truncate(limit);
        Ok(out)
    }

    async fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        let row: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT seq, body FROM audit_anchor WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("read audit anchor", e))?;
        match row {
            Some((seq, Some(body))) if seq > 0 => Ok(Some(sql::decode_anchor(&body)?)),
            _ => Ok(None),
        }
    }

    async fn prune(&self, prune: &Prune) -> Result<()> {
        let mut tx = self.begin().await?;
        let result = prune_in(&mut tx, prune).await;
        finish(tx, result, "prune").await
    }

    /// One statement (so one transaction): lock due rows that nobody else
    /// holds, skipping rows another claim is locking, and lease them. See
    /// the module docs for why both `SKIP LOCKED` and a lease.
    async fn claim_due(
        &self,
        states: &[State],
        due_by: DateTime<Utc>,
        limit: usize,
        claim: &Claim,
    ) -> Result<Vec<RequestRecord>> {
        if states.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let until = TimeDelta::from_std(claim.lease)
            .ok()
            .and_then(|lease| claim.now.checked_add_signed(lease))
            .ok_or_else(|| {
                Error::Store(format!(
                    "lease of {}s from `{}` is out of range",
                    claim.lease.as_secs(),
                    claim.now
                ))
            })?;
        let rows = sqlx::query(
            "WITH picked AS (
                SELECT seq FROM requests
                WHERE state = ANY($1) AND due_at IS NOT NULL AND due_at <= $2
                  AND (lease_until IS NULL OR lease_until <= $3 OR lease_owner = $4
                       -- handed back by another owner (`release_claims`)
                       OR (lease_owner LIKE '!%' AND lease_owner <> '!' || $4))
                ORDER BY due_at, seq
                LIMIT $5
                FOR UPDATE SKIP LOCKED
            )
            UPDATE requests AS r SET lease_owner = $4, lease_until = $6
            FROM picked WHERE r.seq = picked.seq
            RETURNING r.seq, r.due_at, r.body",
        )
        .bind(state_names(states))
        .bind(bound(due_by))
        .bind(timestamp(claim.now)?)
        .bind(&claim.owner)
        .bind(sql::limit_i64(limit))
        .bind(timestamp(until)?)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("claim due requests", e))?;
        // `RETURNING` has no order: restore earliest first.
        let mut claimed = rows
            .iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq").map_err(|e| db_error("read claim", e))?;
                let due: Option<String> = row
                    .try_get("due_at")
                    .map_err(|e| db_error("read claim", e))?;
                Ok((due, seq, decode_record(row)?))
            })
            .collect::<Result<Vec<_>>>()?;
        claimed.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        Ok(claimed.into_iter().map(|(_, _, r)| r).collect())
    }

    async fn release_claims(&self, ids: &[RequestId], claim: &Claim) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let until = TimeDelta::from_std(claim.lease)
            .ok()
            .and_then(|lease| claim.now.checked_add_signed(lease))
            .unwrap_or(claim.now);
        // `!owner` until the lease's end: free for every other owner, not
        // for this one (see the contract).
        sqlx::query(
            "UPDATE requests SET lease_owner = '!' || $2, lease_until = $3
             WHERE id = ANY($1) AND lease_owner = $2",
        )
        .bind(ids.iter().map(ToString::to_string).collect::<Vec<_>>())
        .bind(&claim.owner)
        .bind(timestamp(until)?)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("release claims", e))?;
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// One upsert. Two replicas inserting the same key at once: one inserts,
    /// the other waits for its row lock and then evaluates the `WHERE` on
    /// the row the first wrote, so at most one of them gets it.
    async fn try_acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let until = timestamp(lease_until(now, ttl)?)?;
        let changed = sqlx::query(
            "INSERT INTO leases (key, holder, until) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
             WHERE leases.holder = EXCLUDED.holder OR leases.until <= $4",
        )
        .bind(key)
        .bind(holder)
        .bind(until)
        .bind(bound(now))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("acquire lease", e))?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let until = timestamp(lease_until(now, ttl)?)?;
        let changed = sqlx::query(
            "UPDATE leases SET until = $1 WHERE key = $2 AND holder = $3 AND until > $4",
        )
        .bind(until)
        .bind(key)
        .bind(holder)
        .bind(bound(now))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("renew lease", e))?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<bool> {
        let changed = sqlx::query("DELETE FROM leases WHERE key = $1 AND holder = $2")
            .bind(key)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("release lease", e))?
            .rows_affected();
        Ok(changed == 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::audit::GENESIS_HASH;

    #[cfg(feature = "testing")]
    fn events_for(r: &RequestRecord, n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|_| {
                AuditEvent::new(
                    r.created_at,
                    crate::audit::AuditKind::Requested,
                    r.id,
                    "alice",
                    r.state,
                )
            })
            .collect()
    }

    #[cfg(feature = "testing")]
    async fn verified(store: &PostgresStore) -> crate::audit::ChainSummary {
        let entries = crate::store::audit_entries_all(store).await.unwrap();
        crate::audit::ChainVerifier::new()
            .verify_entries(&entries)
            .unwrap()
    }

    /// The audit head a store remembers is only a hint: another replica
    /// appending, a rolled-back write, or a wrong hash in it never puts a
    /// record on the wrong predecessor or at a taken `seq`, and the head
    /// row always names the newest record.
    #[cfg(feature = "testing")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_audit_head_hint_is_caught_and_the_chain_stays_whole() {
        use crate::testing::postgres::TestSchema;
        use crate::testing::store::sample_record;
        let record = || sample_record("alice", "db", State::Pending, Utc::now());
        let schema = TestSchema::new().await;
        let a = schema.store().await;
        let b = schema.store().await;
        let mut written = 0;
        for (store, n) in [(&a, 3), (&a, 1), (&b, 2), (&a, 3), (&b, 1), (&a, 1)] {
            let r = record();
            let recs = store.insert(&r, &events_for(&r, n)).await.unwrap();
            assert_eq!(recs.first().unwrap().seq, written + 1);
            written += n as u64;
            assert_eq!(verified(&a).await.records, written);
        }
        // The hint is what the last write left.
        let head = verified(&a).await.head;
        assert_eq!(a.head.get(), Some((written as i64, head.clone())));
        for bad in [
            // A write that was rolled back after chaining.
            (written as i64 + 1, head.clone()),
            // The right seq with another hash.
            (written as i64, GENESIS_HASH.to_string()),
            // Behind the chain.
            (1, head.clone()),
        ] {
            *a.head.0.lock().unwrap() = Some(bad);
            let r = record();
            let recs = a.insert(&r, &events_for(&r, 2)).await.unwrap();
            assert_eq!(recs[0].seq, written + 1);
            written += 2;
            let summary = verified(&a).await;
            assert_eq!(summary.records, written);
            assert_eq!(summary.head, recs[1].hash);
        }
        let stored: (i64, String) = sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&a.pool)
            .await
            .unwrap();
        assert_eq!(stored, (written as i64, verified(&b).await.head));
        a.close().await;
        b.close().await;
        schema.drop_schema().await;
    }

    #[test]
    fn migrations_ascend_and_end_at_schema_version() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS.first().map(|m| m.version), Some(1));
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }

    #[test]
    fn the_seeded_head_is_the_genesis_hash() {
        assert_eq!(GENESIS_HASH, "0".repeat(64));
        assert!(MIGRATIONS[0]
            .statements
            .iter()
            .any(|s| s.contains("repeat('0', 64)")));
    }

    #[test]
    fn schema_names_are_checked() {
        for good in ["jit", "jit_test_1", "_x", &"a".repeat(63)] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Jit",
            "1jit",
            "pg_jit",
            "jit-test",
            "jit; DROP TABLE requests",
            "jit\"x",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(check_schema_name(bad), Err(Error::Store(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_sort_as_text_and_bounds_cover_every_year() {
        let a = DateTime::parse_from_rfc3339("2024-01-01T00:00:00.000000001Z")
            .unwrap()
            .to_utc();
        let b = DateTime::parse_from_rfc3339("2024-01-01T00:00:00.000000002Z")
            .unwrap()
            .to_utc();
        assert!(timestamp(a).unwrap() < timestamp(b).unwrap());
        let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999999Z")
            .unwrap()
            .to_utc();
        let beyond = far + TimeDelta::days(400);
        assert!(matches!(timestamp(beyond), Err(Error::Store(_))));
        assert!(bound(beyond) > timestamp(far).unwrap());
        let early = DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        assert!(bound(early - TimeDelta::days(400)) < timestamp(early).unwrap());
    }

    #[test]
    fn connection_errors_are_transient() {
        let io = db_error(
            "connect",
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        assert!(matches!(io, Error::Unavailable { .. }), "{io:?}");
        assert!(matches!(
            db_error("acquire", sqlx::Error::PoolTimedOut),
            Error::Unavailable { .. }
        ));
        assert!(matches!(
            db_error("decode", sqlx::Error::RowNotFound),
            Error::Store(_)
        ));
    }
}
