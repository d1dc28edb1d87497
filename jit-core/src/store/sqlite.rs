//! SQLite store: the embedded default, one file, no server.
//!
//! # Choices
//!
//! - **WAL journal mode.** Readers (`get`, `list`, `due`, `audit`) never block
//!   the writer and the writer never blocks them, so an approver page stays
//!   responsive while the reaper works.
//! - **`synchronous = FULL`.** Every commit is fsynced before it returns. A
//!   transition that the broker reported as done (and whose audit record it
//!   may already have handed to a sink) must survive a power cut; WAL with
//!   `NORMAL` could lose the last commits.
//! - **`BEGIN IMMEDIATE` per transition.** `insert` and `update` take the write
//!   lock before they read the chain head, so two writers (tasks, or other
//!   processes using the same file) never both chain onto the same head, and
//!   a transaction never has to be upgraded from reader to writer halfway
//!   (which SQLite can only answer with `SQLITE_BUSY`). Within one process an
//!   async mutex queues writers first, so they wait on a wake-up instead of
//!   SQLite's sleep-and-poll busy handler; the busy timeout then only covers
//!   other processes. A writer still waiting after the timeout gets
//!   [`Error::Unavailable`].
//! - **Few round trips per write.** Each statement is a round trip to the
//!   connection's worker thread, which on a busy machine costs more than
//!   the statement. A transition's audit events go in one `INSERT`, chained
//!   onto the head this store last wrote and guarded in SQL on that head
//!   still being the stored one; only when it is not (another process
//!   appended, a write rolled back) is the head read and the chain redone,
//!   under the same write lock. Writes keep one connection of their own
//!   (see `Writer`) instead of taking one from the pool and handing it
//!   back each time, and the pool does not ping a connection before
//!   handing it to a reader.
//! - **Compare-and-set in SQL.** `UPDATE .. WHERE id = ? AND version = ?`; no
//!   row changed means a lost race ([`Error::Conflict`]) or an unknown id
//!   ([`Error::NotFound`]). Any failure rolls the whole transition back,
//!   record and audit events alike.
//! - **Records as JSON, plus query columns.** The full [`RequestRecord`] is
//!   stored as JSON, so reads return exactly what was written, and each
//!   [`AuditRecord`] in its compact form ([`AuditRecord::to_stored`]: no
//!   `seq`, `hash` or `prev_hash` in the body, which the `seq` and `hash`
//!   columns and the row before already hold); the columns `state`, `requester` (the exact subject id),
//!   `entitlement`, `created_at` and `due_at` ([`RequestRecord::due_at`]) are
//!   recomputed on every write and exist only to filter and sort. Timestamps
//!   are RFC 3339 UTC text with nine fractional digits and `Z`, so text order
//!   is time order (years 0000 to 9999; others are refused).
//! - **Versioned migrations.** `schema_migrations` records every applied
//!   version; opening applies the missing ones in order, in one transaction,
//!   and refuses a database written by a newer version of this crate rather
//!   than guessing at its schema.
//! - **In-memory databases** (`sqlite::memory:`) use a pool of exactly one
//!   connection that is never recycled: the database lives as long as that
//!   connection does, and every caller sees the same one.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::sql::HeadHint;
use super::{
    check_versions, lease_until, sql, HistoryEntry, HistoryQuery, ListFilter, Prune, Store,
};
use super::{risk_facts, RiskFacts, RiskFactsQuery};
use crate::audit::{AuditAnchor, AuditEntry, AuditEvent, AuditRecord, GENESIS_HASH};
use crate::error::{Error, Result};
use crate::types::{RequestId, RequestRecord, State};

/// The schema version this build writes: the last entry of the migrations.
pub const SCHEMA_VERSION: i64 = 12;

/// How long a writer waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections for a file database: the one writers keep (see [`Writer`])
/// and four readers.
const FILE_POOL_SIZE: u32 = 5;

/// One schema step. Statements run in order inside the opening transaction.
struct Migration {
    version: i64,
    statements: &'static [&'static str],
}

/// Every migration, ascending by version. Never edit a released entry: add one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        statements: &[
            // `seq` is the insertion order (`list` tie-break); an explicit
            // INTEGER PRIMARY KEY keeps it stable across VACUUM.
            "CREATE TABLE requests (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            version INTEGER NOT NULL CHECK (version > 0),
            state TEXT NOT NULL,
            requester TEXT NOT NULL,
            entitlement TEXT NOT NULL,
            created_at TEXT NOT NULL,
            due_at TEXT,
            body TEXT NOT NULL
        ) STRICT",
            "CREATE INDEX requests_state_due ON requests (state, due_at)",
            "CREATE INDEX requests_requester_created ON requests (requester, created_at)",
            "CREATE INDEX requests_created ON requests (created_at)",
            "CREATE TABLE audit (
            seq INTEGER PRIMARY KEY CHECK (seq > 0),
            hash TEXT NOT NULL,
            body TEXT NOT NULL
        ) STRICT",
        ],
    },
    Migration {
        version: 2,
        statements: &[
            // Version 1 stored the requester folded (NFKC, lowercase), so `ALICE`
            // listed `alice`'s requests. Ownership is the exact subject id: take it
            // back from the record itself.
            "UPDATE requests SET requester = json_extract(body, '$.requester.id')",
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
            "CREATE TABLE leases (
            key TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until TEXT NOT NULL
        ) STRICT",
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
            "ALTER TABLE requests ADD COLUMN ends_at TEXT",
            "UPDATE requests SET ends_at = (
            SELECT CASE
                WHEN t IS NULL THEN NULL
                WHEN length(t) = 20 THEN substr(t, 1, 19) || '.000000000Z'
                ELSE substr(t, 1, 19) || '.' || substr(substr(t, 21, length(t) - 21) || '000000000', 1, 9) || 'Z'
            END
            FROM (SELECT json_extract(body, '$.grant.ends_at') AS t)
        )",
            "CREATE INDEX requests_state_ends ON requests (state, ends_at)",
        ],
    },
    // Version 7: retention. The anchor the audit chain starts from once
    // its prefix was archived and pruned (`Store::prune`): one row, seq 0
    // (nothing pruned) until the first prune; `body` is the anchor as JSON.
    Migration {
        version: 7,
        statements: &[
            "CREATE TABLE audit_anchor (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL CHECK (seq >= 0),
            hash TEXT NOT NULL,
            body TEXT
        ) STRICT",
            "INSERT INTO audit_anchor (id, seq, hash, body) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL)",
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
    // Version 10: risk review's facts ([`Store::risk_facts`]) take a
    // requester's durations for an entitlement from the index instead of
    // parsing each body. The index replaces version 8's
    // `(requester, entitlement, created_at)` one, which it extends (the
    // history lookups read it the same way), so the table keeps the same
    // number of indexes. The expression must stay exactly `DURATION`'s.
    Migration {
        version: 10,
        statements: &[
            "CREATE INDEX requests_requester_entitlement_duration ON requests (requester, entitlement, created_at, (CASE WHEN json_valid(body) THEN body ->> '$.request.duration' END))",
            "DROP INDEX requests_requester_entitlement_created",
        ],
    },
    // Version 12: `count_by_state` (scraped by `/metrics` every few seconds)
    // reads one row per state instead of counting a million index entries.
    // Triggers keep the counts in the transaction that inserts, changes the
    // state of or prunes a record, so a rollback takes the count back with
    // it and no code path can forget one. SQLite has one writer at a time,
    // so one row per state is no hot spot. The counts are back-filled from
    // the rows the migration finds.
    Migration {
        version: 12,
        statements: &[
            "CREATE TABLE state_counts (
            state TEXT PRIMARY KEY,
            n INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID",
            "INSERT INTO state_counts (state, n) SELECT state, COUNT(*) FROM requests GROUP BY state",
            "CREATE TRIGGER requests_count_insert AFTER INSERT ON requests BEGIN
            INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
                ON CONFLICT (state) DO UPDATE SET n = n + 1;
        END",
            "CREATE TRIGGER requests_count_update AFTER UPDATE OF state ON requests
            WHEN OLD.state IS NOT NEW.state BEGIN
            UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
            INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
                ON CONFLICT (state) DO UPDATE SET n = n + 1;
        END",
            "CREATE TRIGGER requests_count_delete AFTER DELETE ON requests BEGIN
            UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        END",
        ],
    },
];

/// The history query after `select`. Only the filters in use appear in the
/// SQL, so each shape reads its index (a test checks the plans).
fn history_sql<'a>(query: &'a HistoryQuery, select: &str) -> QueryBuilder<'a, Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new(select);
    q.push(" FROM requests WHERE 1 = 1");
    if let Some(requester) = &query.requester {
        q.push(" AND requester = ").push_bind(requester.as_str());
    }
    if let Some(entitlement) = &query.entitlement {
        q.push(" AND entitlement = ")
            .push_bind(entitlement.as_str());
    }
    if let Some(other) = &query.exclude_requester {
        q.push(" AND requester <> ").push_bind(other.as_str());
    }
    q.push(" ORDER BY created_at DESC LIMIT ")
        .push_bind(sql::limit_i64(query.effective_limit()));
    q
}

/// Risk review's facts ([`Store::risk_facts`]) in one statement, for
/// `sources` sources and with or without the peer lookup. Parameters:
/// `?1` requester, `?2` entitlement, `?3` `?4` `?5` the three windows,
/// `?6` the burst window's start, then the groups as a JSON array (with
/// peers), then each source's key and value.
///
/// Each window is a `LIMIT` on an index read newest first. The hours and
/// the burst count come from `created_at` in the
/// `(requester, created_at)` index alone; the entitlement count from the
/// `(requester, entitlement, created_at)` index alone; bodies are read
/// only for the durations (the entitlement window), for the sources (the
/// recent window, until the value is found) and for groups (the peer
/// window, until a peer is found). A body that is not JSON adds nothing
/// and fails nothing.
fn facts_sql(sources: usize, peers: bool) -> String {
    let hours: String = (0..24)
        .map(|h| format!(", coalesce(sum(h = {h}), 0)"))
        .collect();
    // After the windows' columns, in the order `risk_facts::from_columns`
    // reads: one per source, then the peer. Each `EXISTS` tests the
    // window's rows one at a time in a correlated subquery, so the window
    // stays a co-routine read newest first and stops at the first match;
    // a join with `json_each` would materialize all of it, bodies and all
    // (ten times slower on the bench's history).
    let mut facts = String::new();
    let mut next = if peers { 8 } else { 7 };
    for _ in 0..sources {
        facts.push_str(&format!(
            ", EXISTS (SELECT 1 FROM (SELECT body FROM requests WHERE requester = ?1
                ORDER BY created_at DESC LIMIT ?3) AS w
                WHERE EXISTS (SELECT 1 FROM json_each({VALID_W}, '$.request.context')
                    WHERE key = ?{} AND value = ?{}))",
            next,
            next + 1
        ));
        next += 2;
    }
    facts.push_str(&if peers {
        format!(
            ", EXISTS (SELECT 1 FROM (SELECT body FROM requests WHERE entitlement = ?2
                AND requester <> ?1 ORDER BY created_at DESC LIMIT ?5) AS p
                WHERE EXISTS (SELECT 1 FROM json_each({VALID_P}, '$.requester.groups')
                    WHERE value IN (SELECT value FROM json_each(?7))))"
        )
    } else {
        ", 0".to_string()
    });
    format!(
        "SELECT m.*, e.n, d.n, d.median{facts} FROM
        (SELECT count(*), coalesce(sum(created_at >= ?6), 0){hours}
         FROM (SELECT created_at, CAST(substr(created_at, 12, 2) AS INTEGER) AS h
               FROM requests WHERE requester = ?1 ORDER BY created_at DESC LIMIT ?3)) AS m,
        (SELECT count(*) AS n
         FROM (SELECT 1 FROM requests WHERE requester = ?1 AND entitlement = ?2
               ORDER BY created_at DESC LIMIT ?4)) AS e,
        (SELECT count(*) AS n, max(CASE WHEN rn = (c + 1) / 2 THEN d END) AS median
         FROM (SELECT d, row_number() OVER (ORDER BY d) AS rn, count(*) OVER () AS c
               FROM (SELECT {DURATION} AS d
                     FROM requests WHERE requester = ?1 AND entitlement = ?2
                     ORDER BY created_at DESC LIMIT ?4)
               WHERE typeof(d) = 'integer')) AS d"
    )
}

/// A request's duration as migration 10 indexes it
/// (`requests_requester_entitlement_duration`): the facts query spells it
/// exactly so, and SQLite then reads it from the index instead of parsing
/// the body (an indexed expression; `json_extract` is not matched so, the
/// `->>` operator is). `NULL` for a body that is not JSON.
const DURATION: &str = "(CASE WHEN json_valid(body) THEN body ->> '$.request.duration' END)";
/// A window row's body, or an empty object when it is not JSON.
const VALID_W: &str = "CASE WHEN json_valid(w.body) THEN w.body ELSE '{}' END";
/// A peer row's body, or an empty object when it is not JSON.
const VALID_P: &str = "CASE WHEN json_valid(p.body) THEN p.body ELSE '{}' END";

/// [`facts_sql`] (or a statement with its parameters) with `query`'s values bound.
fn bind_facts<'q>(
    text: &'q str,
    query: &'q RiskFactsQuery,
) -> Result<sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>> {
    let window = |n: usize| sql::limit_i64(RiskFactsQuery::window(n));
    let mut q = sqlx::query(text)
        .bind(query.requester.as_str())
        .bind(query.entitlement.as_str())
        .bind(window(query.recent))
        .bind(window(query.entitlement_recent))
        .bind(window(query.peers_recent))
        .bind(risk_facts::since_text(query.since));
    if !query.groups.is_empty() {
        let groups = serde_json::to_string(&query.groups)
            .map_err(|e| Error::Store(format!("cannot encode groups: {e}")))?;
        q = q.bind(groups);
    }
    for (key, value) in &query.sources {
        q = q.bind(key.as_str()).bind(value.as_str());
    }
    Ok(q)
}

/// Creates a missing database file readable by its owner only (0600 on
/// Unix), before SQLite opens it: it holds every request and the audit
/// chain. SQLite gives the `-wal` and `-shm` files it creates beside it the
/// same mode. An existing file keeps its mode.
fn create_private(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Store(format!(
            "cannot create `{}`: {e}",
            path.display()
        ))),
    }
}

/// [`Store`] on a SQLite database file (or an in-memory database).
///
/// ```no_run
/// # async fn demo() -> jit_core::Result<()> {
/// use jit_core::store::SqliteStore;
/// let store = SqliteStore::open("/var/lib/jit/jit.db").await?;
/// let same = SqliteStore::connect("sqlite:///var/lib/jit/jit.db").await?;
/// let scratch = SqliteStore::connect("sqlite::memory:").await?;
/// # Ok(()) }
/// ```
pub struct SqliteStore {
    pool: SqlitePool,
    location: String,
    memory: bool,
    /// Queues this process's writers ahead of SQLite's write lock (see the
    /// module docs), and holds their connection.
    write: tokio::sync::Mutex<Writer>,
    /// The audit head this store last wrote (see [`HeadHint`]).
    head: HeadHint,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file at `path` and brings
    /// its schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        create_private(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::with_options(options, path.display().to_string(), false, BUSY_TIMEOUT).await
    }

    /// Opens a database by URL: `sqlite://path/to/file.db` (created if
    /// missing unless the URL sets `mode`), `sqlite:///absolute/path.db`, or
    /// `sqlite::memory:` for a private in-memory database. A read-only URL
    /// (`mode=ro`, for inspection or audit verification) opens only a
    /// database whose schema is already current, and every write fails.
    pub async fn connect(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                Error::Store(format!(
                    "`{url}` is not a sqlite url: use `sqlite://path/to/file.db` or `sqlite::memory:`"
                ))
            })?;
        let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
        let has_param = |key: &str, value: Option<&str>| {
            params.split('&').any(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                k == key && value.is_none_or(|want| v == want)
            })
        };
        let memory = database == ":memory:" || has_param("mode", Some("memory"));
        if !memory && database.is_empty() {
            // SQLite would open a private temporary file per connection.
            return Err(Error::Store(format!(
                "sqlite url `{url}` names no database file"
            )));
        }
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Store(format!("invalid sqlite url `{url}`: {e}")))?;
        if !memory && !has_param("mode", None) {
            create_private(options.get_filename())?;
            options = options.create_if_missing(true);
        }
        Self::with_options(options, url.to_string(), memory, BUSY_TIMEOUT).await
    }

    async fn with_options(
        options: SqliteConnectOptions,
        location: String,
        memory: bool,
        busy_timeout: Duration,
    ) -> Result<Self> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        let pool = if memory {
            // The database dies with its last connection: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(FILE_POOL_SIZE)
        }
        // The pool's default pings every connection it hands out, a round
        // trip to the connection's worker thread on every read and write;
        // a SQLite connection is a file handle in this process, with no
        // peer that could have hung up. (Returning one still pings it,
        // which flushes the rollback of a transaction dropped halfway.)
        .test_before_acquire(false)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| db_error(&format!("open `{location}`"), e))?;
        let store = Self {
            pool,
            location,
            memory,
            write: tokio::sync::Mutex::new(Writer::default()),
            head: HeadHint::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The path or URL the store was opened with.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the database lives in memory only (gone when the store is dropped).
    pub fn is_memory(&self) -> bool {
        self.memory
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
    pub async fn close(&self) {
        // The pool waits for every connection to come back, the writers' too.
        self.write.lock().await.conn = None;
        self.pool.close().await;
    }

    /// Applies the missing migrations in one write transaction.
    async fn migrate(&self) -> Result<()> {
        let mut writer = self.write.lock().await;
        let mut tx = self.begin_write(&mut writer).await?;
        let result = migrate_in(&mut tx).await;
        let out = finish(tx, result, "migrate").await;
        writer.settle(out)
    }

    /// `BEGIN IMMEDIATE` on the writers' connection (taken from the pool
    /// when there is none yet), or for an in-memory database on its one
    /// pooled connection.
    async fn begin_write<'w>(&self, writer: &'w mut Writer) -> Result<Transaction<'w, Sqlite>> {
        let begin = |e| db_error("begin transaction", e);
        if self.memory {
            return self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(begin);
        }
        let conn = match &mut writer.conn {
            Some(conn) => conn,
            slot => slot.insert(
                self.pool
                    .acquire()
                    .await
                    .map_err(|e| db_error("acquire a connection for writing", e))?,
            ),
        };
        sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE")
            .await
            .map_err(begin)
    }
}

/// The connection this process writes through, for a file database. Kept
/// rather than handed back to the pool after each write: the pool pings a
/// connection it takes back (a round trip to its worker thread, on a task
/// of its own), three times per grant. A transaction dropped halfway
/// leaves its rollback queued on the connection, which runs it before the
/// next statement; after any other failure than a lost race the
/// connection goes back to the pool (which checks it) and the next write
/// takes another. An in-memory database has one connection, shared with
/// the readers, so its writes take it from the pool each time.
#[derive(Default)]
struct Writer {
    conn: Option<sqlx::pool::PoolConnection<Sqlite>>,
}

/// sqlx hands a pooled connection back to its pool on a Tokio task, and
/// panics when there is no runtime. The writers' connection is kept for the
/// life of the store, so a store dropped after its runtime has gone (a
/// `main` that returns, a bench, a CLI) would panic in that drop. Without a
/// runtime the connection is detached from the pool and closed here
/// instead; with one it goes back to the pool as usual.
impl Drop for Writer {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            if let Some(conn) = self.conn.take() {
                drop(conn.detach());
            }
        }
    }
}

impl Writer {
    /// Passes `out` through, letting go of the connection after a failure
    /// that may have come from the connection itself.
    fn settle<T>(&mut self, out: Result<T>) -> Result<T> {
        if matches!(out, Err(Error::Store(_))) {
            self.conn = None;
        }
        out
    }
}

async fn migrate_in(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TEXT NOT NULL
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
        // Wall time on purpose: this is operator metadata, not lifecycle state.
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
            .bind(m.version)
            .bind(timestamp(Utc::now())?)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(&format!("record migration {}", m.version), e))?;
    }
    Ok(())
}

/// Commits on success; on failure rolls back now (instead of on drop) so the
/// next writer does not find the lock still held, and returns the first error.
async fn finish<T>(tx: Transaction<'_, Sqlite>, result: Result<T>, op: &str) -> Result<T> {
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

/// Maps a sqlx error: lock contention and pool exhaustion are transient
/// ([`Error::Unavailable`]), everything else is [`Error::Store`].
fn db_error(op: &str, e: sqlx::Error) -> Error {
    let busy = match &e {
        // Primary result codes 5 (SQLITE_BUSY) and 6 (SQLITE_LOCKED), with any extended code.
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        sqlx::Error::PoolTimedOut => true,
        _ => false,
    };
    if busy {
        Error::Unavailable {
            what: "sqlite store".into(),
            message: format!("{op}: {e}"),
        }
    } else {
        Error::Store(format!("sqlite {op}: {e}"))
    }
}

const ENGINE: &str = "sqlite";

fn timestamp(t: DateTime<Utc>) -> Result<String> {
    sql::timestamp(t, ENGINE)
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    sql::to_i64(v, what, ENGINE)
}

fn decode_record(row: &sqlx::sqlite::SqliteRow) -> Result<RequestRecord> {
    let body: String = row
        .try_get("body")
        .map_err(|e| db_error("read request", e))?;
    sql::decode_record(&body)
}

/// Audit rows one `INSERT` writes at most (three binds each, well under
/// SQLite's limit on bound parameters).
const AUDIT_ROWS_PER_INSERT: usize = 200;

/// Inserts the chained rows, in as few statements as possible. With
/// `after`, the first statement inserts only if the stored head (the newest
/// row, or the anchor when every row was pruned) is exactly `after` and
/// nothing follows it; `false` when it was not, with nothing written.
async fn insert_chained(
    conn: &mut SqliteConnection,
    chained: &sql::Chained,
    after: Option<(i64, &str)>,
) -> Result<bool> {
    let rows: Vec<_> = chained
        .seqs
        .iter()
        .zip(&chained.records)
        .zip(&chained.bodies)
        .collect();
    for (i, chunk) in rows.chunks(AUDIT_ROWS_PER_INSERT).enumerate() {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit (seq, hash, body) SELECT column1, column2, column3 FROM (VALUES ",
        );
        let mut values = q.separated(", ");
        for ((seq, r), body) in chunk {
            values
                .push("(")
                .push_bind_unseparated(**seq)
                .push_unseparated(", ")
                .push_bind_unseparated(r.hash.as_str())
                .push_unseparated(", ")
                .push_bind_unseparated(body.as_str())
                .push_unseparated(")");
        }
        q.push(")");
        let guard = after.filter(|_| i == 0);
        if let Some((seq, hash)) = guard {
            q.push(" WHERE NOT EXISTS (SELECT 1 FROM audit WHERE seq > ")
                .push_bind(seq)
                .push(") AND COALESCE((SELECT hash FROM audit WHERE seq = ")
                .push_bind(seq)
                .push("), (SELECT hash FROM audit_anchor WHERE id = 1 AND seq = ")
                .push_bind(seq)
                .push(")) = ")
                .push_bind(hash);
        }
        let inserted = q
            .build()
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("append audit records", e))?
            .rows_affected();
        if inserted == 0 && guard.is_some() {
            return Ok(false);
        }
        if inserted != chunk.len() as u64 {
            return Err(Error::Store(format!(
                "sqlite append audit records: {inserted} of {} rows written",
                chunk.len()
            )));
        }
    }
    Ok(true)
}

/// Chains `events` after the current head. Must run inside a write
/// transaction. The head comes from `hint` when it is still current (one
/// statement writes the events), else from a read.
async fn append_in(
    conn: &mut SqliteConnection,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((seq, hash)) = hint.get() {
        let chained = sql::chain(events, seq, &hash, ENGINE)?;
        if insert_chained(conn, &chained, Some((seq, &hash))).await? {
            hint.set(&chained);
            return Ok(chained.records);
        }
    }
    // The newest record, else (everything was pruned) the anchor.
    let head: Option<(i64, String)> = sqlx::query_as(
        "SELECT seq, hash FROM (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1)
         UNION ALL SELECT seq, hash FROM audit_anchor WHERE id = 1
         ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| db_error("read audit head", e))?;
    let (seq, hash) = head.unwrap_or_else(|| (0, GENESIS_HASH.to_string()));
    let chained = sql::chain(events, seq, &hash, ENGINE)?;
    // The write lock is held since the head was read: nothing to guard against.
    insert_chained(conn, &chained, None).await?;
    hint.set(&chained);
    Ok(chained.records)
}

/// The stored anchor, `None` before the first prune.
async fn anchor_in(conn: &mut SqliteConnection) -> Result<Option<AuditAnchor>> {
    let row: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT seq, body FROM audit_anchor WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error("read audit anchor", e))?;
    match row {
        Some((seq, Some(body))) if seq > 0 => Ok(Some(sql::decode_anchor(&body)?)),
        _ => Ok(None),
    }
}

/// [`Store::prune`] inside a write transaction (see its contract).
async fn prune_in(conn: &mut SqliteConnection, prune: &Prune) -> Result<()> {
    let current = anchor_in(conn).await?.map_or(0, |a| a.seq);
    if current != prune.after {
        return Err(sql::stale_prune(current, prune.after));
    }
    let at = to_i64(prune.anchor.seq, "audit seq")?;
    let hash: Option<String> = sqlx::query_scalar("SELECT hash FROM audit WHERE seq = ?")
        .bind(at)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error("read audit record", e))?;
    if hash.as_deref() != Some(prune.anchor.hash.as_str()) {
        return Err(sql::anchor_mismatch(prune.anchor.seq));
    }
    for (id, version) in &prune.records {
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM requests WHERE id = ");
        q.push_bind(id.to_string())
            .push(" AND version = ")
            .push_bind(to_i64(*version, "version")?)
            .push(" AND state IN (");
        let mut states = q.separated(", ");
        for s in State::ALL.iter().filter(|s| s.is_final()) {
            states.push_bind(s.as_str());
        }
        q.push(")");
        let deleted = q
            .build()
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("prune request", e))?
            .rows_affected();
        if deleted != 1 {
            return Err(Error::Conflict {
                request: *id,
                expected: *version,
            });
        }
    }
    sqlx::query("DELETE FROM audit WHERE seq <= ?")
        .bind(at)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("prune audit records", e))?;
    sqlx::query("UPDATE audit_anchor SET seq = ?, hash = ?, body = ? WHERE id = 1")
        .bind(at)
        .bind(&prune.anchor.hash)
        .bind(sql::encode_anchor(&prune.anchor)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("store audit anchor", e))?;
    Ok(())
}

async fn insert_in(
    conn: &mut SqliteConnection,
    record: &RequestRecord,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    let c = sql::Columns::of(record, ENGINE)?;
    let inserted = sqlx::query(
        "INSERT INTO requests (id, version, state, requester, entitlement, created_at, due_at, ends_at, body)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
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
    append_in(conn, events, hint).await
}

async fn update_in(
    conn: &mut SqliteConnection,
    expected_version: u64,
    record: &RequestRecord,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    let c = sql::Columns::of(record, ENGINE)?;
    let id = c.id.clone();
    let updated = sqlx::query(
        "UPDATE requests
         SET version = ?, state = ?, requester = ?, entitlement = ?, created_at = ?, due_at = ?, ends_at = ?, body = ?
         WHERE id = ? AND version = ?",
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
    .bind(to_i64(expected_version, "version")?)
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error("update request", e))?
    .rows_affected();
    if updated == 0 {
        let exists = sqlx::query("SELECT 1 FROM requests WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error("read request", e))?
            .is_some();
        return Err(sql::missed_update(record, expected_version, exists));
    }
    append_in(conn, events, hint).await
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(
        &self,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(0, record)?;
        let mut writer = self.write.lock().await;
        let mut tx = self.begin_write(&mut writer).await?;
        let result = insert_in(&mut tx, record, events, &self.head).await;
        let out = finish(tx, result, "insert").await;
        writer.settle(out)
    }

    async fn update(
        &self,
        expected_version: u64,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(expected_version, record)?;
        let mut writer = self.write.lock().await;
        let mut tx = self.begin_write(&mut writer).await?;
        let result = update_in(&mut tx, expected_version, record, events, &self.head).await;
        let out = finish(tx, result, "update").await;
        writer.settle(out)
    }

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        sqlx::query("SELECT body FROM requests WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("get request", e))?
            .as_ref()
            .map(decode_record)
            .transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<RequestRecord>> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT body FROM requests WHERE 1 = 1");
        if let Some(requester) = &filter.requester {
            q.push(" AND requester = ").push_bind(requester.clone());
        }
        if !filter.states.is_empty() {
            q.push(" AND state IN (");
            let mut states = q.separated(", ");
            for s in &filter.states {
                states.push_bind(s.as_str());
            }
            q.push(")");
        }
        if let Some(entitlement) = &filter.entitlement {
            q.push(" AND entitlement = ").push_bind(entitlement.clone());
        }
        if !filter.entitlements.is_empty() {
            q.push(" AND entitlement IN (");
            let mut ents = q.separated(", ");
            for e in &filter.entitlements {
                ents.push_bind(e.clone());
            }
            q.push(")");
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
        let rows: Vec<(String,)> = history_sql(query, "SELECT body")
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("read request history", e))?;
        Ok(rows
            .iter()
            .filter_map(|(body,)| sql::decode_history(body))
            .collect())
    }

    async fn risk_facts(&self, query: &RiskFactsQuery) -> Result<RiskFacts> {
        query.check()?;
        let text = facts_sql(query.sources.len(), !query.groups.is_empty());
        let row = bind_facts(&text, query)?
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("read risk facts", e))?;
        let cols = (0..row.len())
            .map(|i| row.try_get::<Option<i64>, _>(i))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| db_error("read risk facts", e))?;
        risk_facts::from_columns(query, &cols)
    }

    async fn count_by_state(&self) -> Result<Vec<(State, u64)>> {
        let rows: Vec<(String, i64)> =
            // Kept by migration 12's triggers: one row per state.
            sqlx::query_as("SELECT state, n FROM state_counts")
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
        let mut q = QueryBuilder::<Sqlite>::new("SELECT body FROM requests WHERE state IN (");
        let mut sep = q.separated(", ");
        for s in states {
            sep.push_bind(s.as_str());
        }
        q.push(") AND due_at IS NOT NULL AND due_at <= ")
            .push_bind(timestamp(now)?)
            .push(" ORDER BY due_at, seq LIMIT ")
            .push_bind(sql::limit_i64(limit));
        q.build()
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
        // One read: the anchor and the rows from the one before `from_seq`
        // (whose hash the first compact row links to).
        let mut conn = self
            .pool
            .begin()
            .await
            .map_err(|e| db_error("begin read", e))?;
        let anchor = anchor_in(&mut conn).await?;
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT seq, hash, body FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?")
                .bind(i64::try_from(from_seq.saturating_sub(1)).unwrap_or(i64::MAX))
                .bind(sql::limit_i64(limit.saturating_add(1)))
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| db_error("read audit records", e))?;
        let _ = conn.rollback().await;
        let mut out = sql::audit_entries_from_rows(rows, from_seq, anchor.as_ref());
        out.truncate(limit);
        Ok(out)
    }

    async fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("read audit anchor", e))?;
        anchor_in(&mut conn).await
    }

    async fn prune(&self, prune: &Prune) -> Result<()> {
        let mut writer = self.write.lock().await;
        let mut tx = self.begin_write(&mut writer).await?;
        let result = prune_in(&mut tx, prune).await;
        let out = finish(tx, result, "prune").await;
        writer.settle(out)
    }

    /// One upsert: inserts the row, or takes it over when it is this
    /// holder's or has lapsed; a row held by someone else is left alone
    /// (no row changed).
    async fn try_acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let until = timestamp(lease_until(now, ttl)?)?;
        let _writer = self.write.lock().await;
        let changed = sqlx::query(
            "INSERT INTO leases (key, holder, until) VALUES (?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE leases.holder = excluded.holder OR leases.until <= ?",
        )
        .bind(key)
        .bind(holder)
        .bind(until)
        .bind(timestamp(now)?)
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
        let _writer = self.write.lock().await;
        let changed =
            sqlx::query("UPDATE leases SET until = ? WHERE key = ? AND holder = ? AND until > ?")
                .bind(until)
                .bind(key)
                .bind(holder)
                .bind(timestamp(now)?)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("renew lease", e))?
                .rows_affected();
        Ok(changed == 1)
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<bool> {
        let _writer = self.write.lock().await;
        let changed = sqlx::query("DELETE FROM leases WHERE key = ? AND holder = ?")
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
    use crate::audit::AuditKind;
    use crate::types::{AccessRequest, Decision, GrantDuration, Principal, Verdict};
    use sqlx::Connection;

    /// Each history shape reads its index, never the whole table, and
    /// needs no sort (the index gives the order).
    #[tokio::test]
    async fn history_lookups_read_their_indexes() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        for (query, index) in [
            (
                HistoryQuery::of_requester("bob", 200),
                "requests_requester_created",
            ),
            (
                HistoryQuery::of_requester("bob", 50).for_entitlement("db"),
                "requests_requester_entitlement_duration",
            ),
            (
                HistoryQuery::of_entitlement("db", 200).excluding("bob"),
                "requests_entitlement_created",
            ),
        ] {
            let rows: Vec<(i64, i64, i64, String)> =
                history_sql(&query, "EXPLAIN QUERY PLAN SELECT body")
                    .build_query_as()
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
            let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
            let plan = plan.join(" | ");
            assert!(
                plan.contains(&format!("INDEX {index} ")),
                "{query:?}: {plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{query:?}: {plan}");
        }
    }

    /// Risk facts read the history indexes and never the whole table:
    /// the hours, burst and first-request counts from covering indexes
    /// alone (no row read), the rest from the same indexes newest first.
    #[tokio::test]
    async fn risk_facts_read_their_indexes() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let bare = RiskFactsQuery::new("bob", "db");
        let full = RiskFactsQuery {
            groups: ["eng".to_string()].into(),
            sources: vec![
                ("ip".into(), "10.0.0.1".into()),
                ("client".into(), "cli".into()),
            ],
            ..bare.clone()
        };
        for query in [bare, full] {
            let text = format!(
                "EXPLAIN QUERY PLAN {}",
                facts_sql(query.sources.len(), !query.groups.is_empty())
            );
            let rows = bind_facts(&text, &query)
                .unwrap()
                .fetch_all(&store.pool)
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>(3)).collect();
            let shown = plan.join(" | ");
            assert!(
                plan.iter()
                    .all(|line| !line.contains("requests") || line.contains("INDEX")),
                "a scan of the table: {shown}"
            );
            // Hours, burst and the entitlement count from the indexes
            // alone (no row read); the durations from migration 10's.
            for covered in [
                "COVERING INDEX requests_requester_created ",
                "COVERING INDEX requests_requester_entitlement_duration ",
                "USING INDEX requests_requester_entitlement_duration ",
            ] {
                assert!(shown.contains(covered), "{covered}: {shown}");
            }
            // The windows come in index order; the one sort is the
            // median's, of at most the entitlement window's durations.
            assert_eq!(shown.matches("TEMP B-TREE").count(), 1, "{shown}");
            // The windows that read bodies are co-routines that stop at
            // the first match, never materialized.
            assert!(!shown.contains("MATERIALIZE w"), "{shown}");
            assert!(!shown.contains("MATERIALIZE p"), "{shown}");
            let peers = shown.contains("INDEX requests_entitlement_created ");
            assert_eq!(peers, !query.groups.is_empty(), "{shown}");
        }
    }

    /// The durations come out of migration 10's index: the statement runs
    /// no JSON function per row (SQLite reads the indexed expression's
    /// value instead of parsing the body), which holds only while
    /// `DURATION` is spelled exactly as the index's expression.
    #[tokio::test]
    async fn risk_durations_are_read_from_the_index() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let text = format!(
            "EXPLAIN SELECT {DURATION} FROM requests WHERE requester = ?1 AND entitlement = ?2
             ORDER BY created_at DESC LIMIT 50"
        );
        let ops: Vec<(String, Option<String>)> = sqlx::query(&text)
            .bind("bob")
            .bind("db")
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<String, _>(1), r.try_get::<String, _>(5).ok()))
            .collect();
        assert!(
            ops.iter().any(|(op, _)| op == "DeferredSeek"),
            "not an index read: {ops:?}"
        );
        assert!(
            !ops.iter().any(|(op, _)| op == "Function"),
            "parses bodies: {ops:?}"
        );
    }

    /// A stored body that is not JSON (rule 9 of the design) neither
    /// fails the facts nor adds a duration, a source or a peer: its row
    /// still counts in the windows, which come from the indexed columns.
    #[tokio::test]
    async fn risk_facts_survive_a_body_that_is_not_json() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let mut made = Vec::new();
        for who in ["alice", "alice", "bob"] {
            let mut r = record();
            r.requester = Principal::new(who).unwrap().with_group("eng");
            r.request.context.insert("ip".into(), "10.0.0.1".into());
            store.insert(&r, &[]).await.unwrap();
            made.push(r);
        }
        for r in &made[1..] {
            sqlx::query("UPDATE requests SET body = 'not json' WHERE id = ?")
                .bind(r.id.to_string())
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let query = RiskFactsQuery {
            groups: ["eng".to_string()].into(),
            sources: vec![
                ("ip".into(), "10.0.0.1".into()),
                ("ip".into(), "10.0.0.2".into()),
            ],
            ..RiskFactsQuery::new("alice", "db-admin")
        };
        let facts = store.risk_facts(&query).await.unwrap();
        assert_eq!(
            (facts.recent, facts.entitlement_requests),
            (2, 2),
            "{facts:?}"
        );
        assert_eq!(facts.durations, 1, "{facts:?}");
        assert_eq!(facts.median_duration, Some(Duration::from_secs(60)));
        assert_eq!(facts.sources_seen, [true, false]);
        assert!(!facts.peer_used, "bob's groups are unreadable: {facts:?}");
    }

    fn record() -> RequestRecord {
        let now = Utc::now();
        RequestRecord {
            id: RequestId::new(),
            version: 1,
            state: State::Pending,
            requester: Principal::new("alice").unwrap(),
            request: AccessRequest::new("db-admin", GrantDuration::from_secs_i64(60).unwrap(), "x"),
            decision: Decision {
                verdict: Verdict::AutoApprove,
                max_duration: GrantDuration::from_secs_i64(60).unwrap(),
                reasons: vec![],
                risk: None,
            },
            entitlement: None,
            approvals: vec![],
            grant: None,
            extends: None,
            revocation: None,
            pending_until: Some(now),
            note: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn migrations_ascend_and_end_at_schema_version() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS.first().map(|m| m.version), Some(1));
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }

    #[test]
    fn timestamps_sort_as_text_and_refuse_unorderable_years() {
        let a = DateTime::parse_from_rfc3339("2024-01-01T00:00:00.9Z")
            .unwrap()
            .to_utc();
        let b = DateTime::parse_from_rfc3339("2024-01-01T00:00:01Z")
            .unwrap()
            .to_utc();
        let (ta, tb) = (timestamp(a).unwrap(), timestamp(b).unwrap());
        assert_eq!(ta, "2024-01-01T00:00:00.900000000Z");
        assert!(ta < tb);
        let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
            .unwrap()
            .to_utc()
            + chrono::TimeDelta::days(1);
        assert!(matches!(timestamp(far), Err(Error::Store(_))));
    }

    #[tokio::test]
    async fn connections_use_full_sync_foreign_keys_and_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!((sync, fk, busy), (2, 1, 5000));
    }

    #[tokio::test]
    async fn a_write_lock_held_elsewhere_is_unavailable_and_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let store = SqliteStore::with_options(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
            "busy".into(),
            false,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        // Another "process" holds the write lock.
        let mut other =
            sqlx::SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path))
                .await
                .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();

        let r = record();
        let ev = AuditEvent::new(
            r.created_at,
            AuditKind::Requested,
            r.id,
            "alice",
            State::Pending,
        );
        let err = store
            .insert(&r, std::slice::from_ref(&ev))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert!(err.is_transient());

        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        assert_eq!(store.get(r.id).await.unwrap(), None);
        assert!(store.audit(1, 10).await.unwrap().is_empty());
        // And the store works again once the lock is gone.
        assert_eq!(store.insert(&r, &[ev]).await.unwrap().len(), 1);
    }

    fn events_for(r: &RequestRecord, n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|_| AuditEvent::new(r.created_at, AuditKind::Requested, r.id, "alice", r.state))
            .collect()
    }

    async fn verified(store: &SqliteStore) -> crate::audit::ChainSummary {
        let entries = crate::store::audit_entries_all(store).await.unwrap();
        crate::audit::ChainVerifier::new()
            .verify_entries(&entries)
            .unwrap()
    }

    /// The audit head a store remembers is only a hint: another process
    /// appending, a rolled-back write, or a wrong hash in it never puts
    /// a record on the wrong predecessor or at a taken `seq`.
    #[tokio::test]
    async fn a_stale_audit_head_hint_is_caught_and_the_chain_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.db");
        let a = SqliteStore::open(&path).await.unwrap();
        let b = SqliteStore::open(&path).await.unwrap();
        let mut written = 0;
        for (store, n) in [(&a, 3), (&a, 1), (&b, 2), (&a, 3), (&b, 1), (&a, 1)] {
            let r = record();
            let recs = store.insert(&r, &events_for(&r, n)).await.unwrap();
            assert_eq!(recs.first().unwrap().seq, written + 1);
            written += n as u64;
            assert_eq!(verified(&a).await.records, written);
        }
        let head = verified(&a).await.head;
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
        // More rows than one statement writes.
        let r = record();
        let n = AUDIT_ROWS_PER_INSERT * 2 + 5;
        let recs = b.insert(&r, &events_for(&r, n)).await.unwrap();
        assert_eq!(recs.len(), n);
        assert_eq!(verified(&a).await.records, written + n as u64);
    }

    /// A store whose writers' connection is kept (every file store after
    /// its first write) can be dropped after its runtime is gone.
    #[test]
    fn a_store_outlives_its_runtime_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(async {
            let store = SqliteStore::open(&path).await.unwrap();
            let r = record();
            store.insert(&r, &events_for(&r, 1)).await.unwrap();
            assert!(store.write.lock().await.conn.is_some(), "writer kept");
            store
        });
        drop(rt);
        drop(store);
        // The file is whole and opens again.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = SqliteStore::open(&path).await.unwrap();
            assert_eq!(verified(&store).await.records, 1);
        });
    }

    #[tokio::test]
    async fn urls_are_checked() {
        for bad in ["postgres://localhost/jit", "sqlite://", "sqlite:", "jit.db"] {
            let err = SqliteStore::connect(bad).await.unwrap_err();
            assert!(matches!(err, Error::Store(_)), "{bad}: {err:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url.db");
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert!(path.exists());
        assert!(!store.is_memory());
        let r = record();
        store.insert(&r, &[]).await.unwrap();
        let ro = SqliteStore::connect(&format!("sqlite://{}?mode=ro", path.display()))
            .await
            .unwrap();
        assert_eq!(ro.get(r.id).await.unwrap(), Some(r.clone()));
        let mut next = r.clone();
        next.version = 2;
        let err = ro.update(1, &next, &[]).await.unwrap_err();
        assert!(matches!(err, Error::Store(_)), "{err:?}");
        assert_eq!(store.get(r.id).await.unwrap(), Some(r));
        assert!(SqliteStore::connect("sqlite::memory:")
            .await
            .unwrap()
            .is_memory());
        assert!(SqliteStore::connect("sqlite://?mode=memory")
            .await
            .unwrap()
            .is_memory());
    }

    /// Rows written before version 6 get `ends_at` from their body, with
    /// the nine fractional digits new writes have, whatever number of
    /// digits chrono wrote there; rows without a grant stay NULL.
    #[tokio::test]
    async fn migration_6_fills_ends_at_from_the_body() {
        use crate::types::{Grant, GrantId};
        use chrono::Timelike;

        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let base = Utc::now().with_nanosecond(0).unwrap();
        let mut written = Vec::new();
        for nanos in [0, 5_000_000, 123_456_000, 123_456_789] {
            let mut r = record();
            r.grant = Some(Grant {
                id: GrantId::new(),
                starts_at: base,
                ends_at: base.with_nanosecond(nanos).unwrap(),
                issued: None,
            });
            store.insert(&r, &[]).await.unwrap();
            written.push(r);
        }
        let no_grant = record();
        store.insert(&no_grant, &[]).await.unwrap();
        // As a version 5 database would hold them.
        sqlx::query("UPDATE requests SET ends_at = NULL")
            .execute(&store.pool)
            .await
            .unwrap();
        let backfill = MIGRATIONS
            .iter()
            .find(|m| m.version == 6)
            .unwrap()
            .statements[1];
        sqlx::query(backfill).execute(&store.pool).await.unwrap();
        for r in &written {
            let column: Option<String> =
                sqlx::query_scalar("SELECT ends_at FROM requests WHERE id = ?")
                    .bind(r.id.to_string())
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
            let expected = timestamp(r.ends_at().unwrap()).unwrap();
            assert_eq!(column.as_deref(), Some(expected.as_str()));
        }
        let column: Option<String> =
            sqlx::query_scalar("SELECT ends_at FROM requests WHERE id = ?")
                .bind(no_grant.id.to_string())
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(column, None);
    }

    /// A database written before version 12 gets its counts back-filled
    /// from the rows it holds, and the triggers keep them from then on.
    #[tokio::test]
    async fn migration_12_backfills_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jit.db");
        let store = SqliteStore::open(&path).await.unwrap();
        for state in [
            State::Pending,
            State::Pending,
            State::Active,
            State::Revoked,
        ] {
            let mut r = record();
            r.state = state;
            store.insert(&r, &[]).await.unwrap();
        }
        // As a version 11 database would hold them: no table, no triggers.
        for stmt in [
            "DROP TRIGGER requests_count_insert",
            "DROP TRIGGER requests_count_update",
            "DROP TRIGGER requests_count_delete",
            "DROP TABLE state_counts",
            "DELETE FROM schema_migrations WHERE version = 12",
        ] {
            sqlx::query(stmt).execute(&store.pool).await.unwrap();
        }
        let mut late = record();
        late.state = State::Expired;
        store.insert(&late, &[]).await.unwrap();
        store.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        let count = |counts: &[(State, u64)], s: State| {
            counts.iter().find(|(c, _)| *c == s).map(|(_, n)| *n)
        };
        let counts = store.count_by_state().await.unwrap();
        assert_eq!(count(&counts, State::Pending), Some(2));
        assert_eq!(count(&counts, State::Active), Some(1));
        assert_eq!(count(&counts, State::Revoked), Some(1));
        assert_eq!(count(&counts, State::Expired), Some(1));
        assert_eq!(count(&counts, State::Approved), Some(0));
        let mut more = record();
        more.state = State::Expired;
        store.insert(&more, &[]).await.unwrap();
        let counts = store.count_by_state().await.unwrap();
        assert_eq!(count(&counts, State::Expired), Some(2));
    }
}
