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
//! - **One round trip per insert or update.** Each statement sent is a
//!   round trip to the connection's worker thread (a hand-over to another
//!   thread and back), which costs more than the statement itself. A
//!   transition goes as one batch: `BEGIN IMMEDIATE`, its statements,
//!   `COMMIT`. Its audit events are chained onto the head this store last
//!   wrote, and every statement is guarded on every condition of the
//!   transition (the head is still the stored one; the id is new, or the
//!   record is at the expected version with the same identity; the
//!   audit rows go in only if the record's statement wrote it), so the
//!   batch writes all of it or nothing and commits either way; a `SELECT`
//!   of `changes()` after each statement says what it did. No statement
//!   of it is an `INSERT .. SELECT` that reads its own table or writes one
//!   with triggers: SQLite would run it through a temporary table made
//!   for each write. A batch that wrote nothing
//!   (another process appended, a lost race, an unknown id) and a
//!   transition with no remembered head run
//!   again in two round trips: a batch that begins the transaction and
//!   holds the record's statement (for an insert, the risk aggregates'
//!   upserts too, which write only while the aggregates are kept: see
//!   migration 15) and the events' `INSERT`, guarded on the head, then
//!   `COMMIT` or `ROLLBACK`; when the guard wrote nothing the head is
//!   read and the chain redone under the same write lock. A statement
//!   that fails stops a batch before its `COMMIT`, and the transaction
//!   is rolled back. Writes keep one connection of their own
//!   (see `Writer`) instead of taking one from the pool and handing it
//!   back each time (the pool pings every connection handed back), and
//!   short reads (`get`, lists of up to 100, risk facts) use that
//!   connection too when no write holds or awaits it: its page cache is
//!   current. The pool does not ping a connection before handing it to a
//!   reader.
//! - **Compare-and-set in SQL.** `UPDATE .. WHERE id = ? AND version = ?`
//!   and the request's identity (requester, entitlement, creation time)
//!   unchanged; no row changed means a lost race ([`Error::Conflict`]), an
//!   unknown id ([`Error::NotFound`]) or an update that would change the
//!   identity (refused). Only what a transition can change is set, so an
//!   update rewrites the indexes on state and times, not the five that
//!   hold only identity columns (SQLite rewrites an index whenever an
//!   `UPDATE` sets one of its columns, whether its value changed or not).
//!   Any failure rolls the whole transition back, record and audit events
//!   alike.
//! - **Packed rows, plus query columns** (schema 13; issue #15: about a
//!   third of the bytes per grant of schema 12). Each [`RequestRecord`] is
//!   stored whole, so reads return exactly what was written, as its JSON
//!   compressed against a dictionary of its field names
//!   ([`crate::packed::pack_record`]: zstd; rows written before with
//!   deflate still read); each [`AuditRecord`] in its packed form
//!   ([`AuditRecord::to_packed`]: ids, time and seal as bytes, the rest
//!   compressed; no `seq`, `hash` or `prev_hash`, which the `seq` and
//!   `hash` columns and the row before already hold), its hash as 32
//!   bytes. Rows written before schema 13 keep their JSON (as bytes) and
//!   read as before ([`AuditRecord::from_stored_bytes`]): the chain's hash
//!   covers the record, never its stored form. The request id is its 16
//!   bytes; the columns `state`, `requester` (the exact subject id),
//!   `entitlement`, `created_at`, `due_at` ([`RequestRecord::due_at`]),
//!   and `ends_at` are written from the record and exist only to filter
//!   and sort, so no statement parses a body. (Schema 13's `duration`,
//!   `groups` and `context` columns are no longer written: risk review
//!   reads its aggregates since schema 14.) Times are integer
//!   nanoseconds since the epoch (years 1677 to 2262; others are refused
//!   on write, and a query bound outside them compares as the nearest end).
//! - **Indexes for what is queried.** Each read shape has one (tests check
//!   the plans); the reaper's due work reads a partial index of the rows
//!   that have due work (`due_at` is `NULL` in final states, nearly every
//!   row of a long-lived store). The indexes that hold the state serve
//!   one reader each and hold only its rows (schema 16): pending requests
//!   for the approver queue and the pending cap, revoked grants for
//!   start-up's running revocations. Issuing and activating a grant then
//!   move an entry in one index (the due work's), not four; lists write
//!   their states as literals, which SQLite needs to pick a partial index.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::risk_facts::{self, Contribution};
use super::sql::HeadHint;
use super::{
    check_versions, lease_until, sql, HistoryEntry, HistoryQuery, ListFilter, Prune, Store,
};
use super::{RiskFacts, RiskFactsQuery};
use crate::audit::{AuditAnchor, AuditEntry, AuditEvent, AuditRecord, GENESIS_HASH};
use crate::error::{Error, Result};
use crate::types::{RequestId, RequestRecord, State};

/// The schema version this build writes: the last entry of the migrations.
pub const SCHEMA_VERSION: i64 = 16;

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

/// SQL for an RFC 3339 text column as integer nanoseconds since the epoch
/// (migration 13), `NULL` for `NULL`. Any number of fractional digits and
/// any offset: the columns have nine digits and `Z`, but databases of
/// version 1 may hold other spellings. The seconds are taken without the
/// fraction, so times before 1970 are exact too.
/// The condition of the partial index `requests_revoked_ends` (migration
/// 16), which `list_sql` adds word for word to a filter within those
/// states: SQLite uses a partial index only for a query whose conditions
/// include (or plainly imply) the index's. Never edit: add a migration.
macro_rules! revoked_states {
    () => {
        "state IN ('revoking', 'revoked', 'revocation_failed')"
    };
}

/// The condition that the risk aggregates are kept (migration 15's
/// marker row), as every statement that reads or moves them asks it.
macro_rules! risk_kept {
    () => {
        "EXISTS (SELECT 1 FROM risk_upkeep WHERE id = 1)"
    };
}

/// An update's compare-and-set on the stored row (parameters `?6` to
/// `?10`: id, expected version, requester, entitlement, creation time).
macro_rules! update_cas {
    () => {
        "id = ?6 AND version = ?7 AND requester = ?8 AND entitlement = ?9 AND created_at = ?10"
    };
}

/// An insert's precondition: no request has its id (parameter `?7`).
macro_rules! new_id {
    () => {
        "NOT EXISTS (SELECT 1 FROM requests WHERE id = ?7)"
    };
}

/// The states [`revoked_states`] names.
const REVOKED_STATES: [State; 3] = [State::Revoking, State::Revoked, State::RevocationFailed];

macro_rules! text_to_nanos {
    ($column:literal) => {
        concat!(
            "(SELECT CASE WHEN t IS NULL THEN NULL WHEN substr(t, 20, 1) = '.' THEN
                unixepoch(substr(t, 1, 19) || ltrim(substr(t, 21), '0123456789')) * 1000000000
                + CAST(substr(substr(substr(t, 21), 1,
                    length(substr(t, 21)) - length(ltrim(substr(t, 21), '0123456789')))
                    || '000000000', 1, 9) AS INTEGER)
                ELSE unixepoch(t) * 1000000000 END FROM (SELECT ",
            $column,
            " AS t))"
        )
    };
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
    // number of indexes. (Version 14 drops it again: the aggregates keep
    // the durations.)
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
            COUNT_INSERT,
            COUNT_UPDATE,
            COUNT_DELETE,
        ],
    },
    // Version 13: fewer bytes per grant (a third of version 12's). Both
    // tables are rebuilt, every row copied:
    //
    // - `requests`: the id as its 16 bytes; times as integer nanoseconds
    //   since the epoch (8 bytes instead of 30 characters, in the table
    //   and in the six indexes that hold `created_at`); the body packed
    //   (`packed::pack_record`: JSON deflated against a dictionary of its
    //   field names); what risk review's facts read from the body
    //   (`duration`, `groups`, `context`) in columns of their own, so no
    //   statement parses a body. Bodies written before stay JSON (as
    //   bytes) and read as before.
    // - `requests_state_due` holds only rows with due work (`due_at` is
    //   NULL in final states, which are nearly all rows), and
    //   `requests_state_ends` only rows with a grant.
    // - `audit`: the hash as its 32 bytes and new bodies packed
    //   (`AuditRecord::to_packed`); bodies written before stay in their
    //   JSON form and verify exactly as before (the hash covers the
    //   record, not its stored form).
    //
    // The triggers of version 12 go with the old table and are made again.
    // Times outside the years 1677 to 2262 do not fit; no lifecycle has
    // them. Old rows are copied as they are (their bodies stay JSON), so
    // the file only shrinks for what is written from then on; the copy
    // runs in the opening transaction (about as long as writing every row
    // once), and the old tables' pages go to the free list: `VACUUM` gives
    // them back to the file system.
    Migration {
        version: 13,
        statements: &[
            "CREATE TABLE requests_13 (
            seq INTEGER PRIMARY KEY,
            id BLOB NOT NULL UNIQUE,
            version INTEGER NOT NULL CHECK (version > 0),
            state TEXT NOT NULL,
            requester TEXT NOT NULL,
            entitlement TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            due_at INTEGER,
            ends_at INTEGER,
            duration INTEGER,
            groups TEXT,
            context TEXT,
            body BLOB NOT NULL
        ) STRICT",
            concat!(
                "INSERT INTO requests_13 (seq, id, version, state, requester, entitlement,
                created_at, due_at, ends_at, duration, groups, context, body)
            SELECT seq, unhex(replace(id, '-', '')), version, state, requester, entitlement, ",
                text_to_nanos!("created_at"),
                ", ",
                text_to_nanos!("due_at"),
                ", ",
                text_to_nanos!("ends_at"),
                ",
                CASE WHEN json_valid(body) AND json_type(body, '$.request.duration') = 'integer'
                    THEN body ->> '$.request.duration' END,
                CASE WHEN json_valid(body) AND json_type(body, '$.requester.groups') = 'array'
                    AND json_array_length(body, '$.requester.groups') > 0
                    THEN body -> '$.requester.groups' END,
                CASE WHEN json_valid(body) AND json_type(body, '$.request.context') = 'object'
                    AND body -> '$.request.context' <> '{}'
                    THEN body -> '$.request.context' END,
                CAST(body AS BLOB)
            FROM requests"
            ),
            "DROP TABLE requests",
            "ALTER TABLE requests_13 RENAME TO requests",
            "CREATE INDEX requests_state_due ON requests (state, due_at) WHERE due_at IS NOT NULL",
            "CREATE INDEX requests_requester_created ON requests (requester, created_at)",
            "CREATE INDEX requests_created ON requests (created_at)",
            "CREATE INDEX requests_state_entitlement_created ON requests (state, entitlement, created_at)",
            "CREATE INDEX requests_requester_entitlement_duration ON requests (requester, entitlement, created_at, duration)",
            "CREATE INDEX requests_entitlement_created ON requests (entitlement, created_at)",
            "CREATE INDEX requests_requester_state_created ON requests (requester, state, created_at)",
            "CREATE INDEX requests_state_ends ON requests (state, ends_at) WHERE ends_at IS NOT NULL",
            COUNT_INSERT,
            COUNT_UPDATE,
            COUNT_DELETE,
            "CREATE TABLE audit_13 (
            seq INTEGER PRIMARY KEY CHECK (seq > 0),
            hash BLOB NOT NULL,
            body BLOB NOT NULL
        ) STRICT",
            // A hash that is not 64 lowercase hex digits (none is) keeps
            // its text as bytes, so that it reads back the same.
            "INSERT INTO audit_13 (seq, hash, body)
            SELECT seq,
                CASE WHEN length(hash) = 64 AND hash = lower(hash) AND unhex(hash) IS NOT NULL
                    THEN unhex(hash) ELSE CAST(hash AS BLOB) END,
                CAST(body AS BLOB)
            FROM audit",
            "DROP TABLE audit",
            "ALTER TABLE audit_13 RENAME TO audit",
        ],
    },    // Version 14: risk review's aggregates ([`Store::risk_facts`], see
    // `risk_facts.rs`): per requester and hour, per requester, entitlement
    // and duration, per requester and source, and per entitlement, group
    // and requester, each row a count of the requests held. Written by
    // `insert_in` and `prune_in` from the records in Rust (never by
    // triggers: the body is not for SQL to read), back-filled by
    // `risk_backfill` after these statements. The durations no longer come
    // from version 10's expression index, which every insert paid for:
    // the history lookups of one requester's entitlement get the plain
    // index back.
    Migration {
        version: RISK_MIGRATION,
        statements: &[
            "CREATE TABLE risk_hours (
            requester TEXT NOT NULL,
            hour INTEGER NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (requester, hour)
        ) STRICT, WITHOUT ROWID",
            "CREATE TABLE risk_durations (
            requester TEXT NOT NULL,
            entitlement TEXT NOT NULL,
            secs INTEGER NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (requester, entitlement, secs)
        ) STRICT, WITHOUT ROWID",
            "CREATE TABLE risk_sources (
            requester TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (requester, key, value)
        ) STRICT, WITHOUT ROWID",
            "CREATE TABLE risk_peers (
            entitlement TEXT NOT NULL,
            grp TEXT NOT NULL,
            requester TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (entitlement, grp, requester)
        ) STRICT, WITHOUT ROWID",
            "CREATE INDEX IF NOT EXISTS requests_requester_entitlement_created ON requests (requester, entitlement, created_at)",
            "DROP INDEX IF EXISTS requests_requester_entitlement_duration",
        ],
    },
    // Version 15: the risk aggregates are kept only where someone reads
    // them. A server without risk review paid four upserts (and four WAL
    // pages) on every insert for tables nothing read: about a tenth of
    // its time per grant (issue #15). `risk_upkeep` holds a row while the
    // aggregates are complete and kept: inserts and prunes move them only
    // then, decided in SQL inside their own write transaction, so a
    // process that never reads them and one that does can share a file.
    // Without the row the first `risk_facts` builds them from every
    // stored request (`keep_risk_in`, the back-fill of version 14) and
    // sets it. A database that already holds requests had them kept by
    // version 14's back-fill and every insert since: it goes on keeping
    // them (no surprise rebuild on the first submit after the upgrade).
    Migration {
        version: 15,
        statements: &[
            "CREATE TABLE risk_upkeep (id INTEGER PRIMARY KEY CHECK (id = 1)) STRICT",
            "INSERT INTO risk_upkeep (id) SELECT 1 WHERE EXISTS (SELECT 1 FROM requests)",
        ],
    },
    // Version 16: the three indexes that hold a request's state for one
    // reader each hold only the rows that reader asks for, so that issuing
    // and activating a grant (a state change) rewrite none of them: an
    // auto-approved grant used to move an entry in each of them on each
    // of its three writes (issue #15). `list_sql` writes the states of a
    // filter as literals, which SQLite needs to see that a query stays
    // within a partial index.
    //
    // - The approver queue (pending requests for some entitlements): only
    //   pending rows.
    // - The pending cap checked on every submit (one requester's pending
    //   requests): only pending rows. A requester's requests in other
    //   states read `requests_requester_created` and skip the others.
    // - Start-up's running revocations (`ends_after`): only rows being
    //   revoked or revoked, with a grant.
    Migration {
        version: 16,
        statements: &[
            "DROP INDEX IF EXISTS requests_state_entitlement_created",
            "DROP INDEX IF EXISTS requests_requester_state_created",
            "DROP INDEX IF EXISTS requests_state_ends",
            "CREATE INDEX IF NOT EXISTS requests_pending_entitlement
                ON requests (entitlement, created_at) WHERE state = 'pending'",
            "CREATE INDEX IF NOT EXISTS requests_pending_requester
                ON requests (requester, created_at) WHERE state = 'pending'",
            concat!(
                "CREATE INDEX IF NOT EXISTS requests_revoked_ends ON requests (state, ends_at) WHERE ",
                revoked_states!(),
                " AND ends_at IS NOT NULL"
            ),
        ],
    },
];

/// Migration 12's triggers, which keep `state_counts` (made again by 13
/// on the rebuilt table). Never edit: add a migration.
const COUNT_INSERT: &str = "CREATE TRIGGER requests_count_insert AFTER INSERT ON requests BEGIN
            INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
                ON CONFLICT (state) DO UPDATE SET n = n + 1;
        END";
const COUNT_UPDATE: &str = "CREATE TRIGGER requests_count_update AFTER UPDATE OF state ON requests
            WHEN OLD.state IS NOT NEW.state BEGIN
            UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
            INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
                ON CONFLICT (state) DO UPDATE SET n = n + 1;
        END";
const COUNT_DELETE: &str = "CREATE TRIGGER requests_count_delete AFTER DELETE ON requests BEGIN
            UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        END";

/// The list query after `select` (see [`Store::list`]).
fn list_sql<'a>(filter: &'a ListFilter, select: &str) -> QueryBuilder<'a, Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new(select);
    q.push(" FROM requests WHERE 1 = 1");
    if let Some(requester) = &filter.requester {
        q.push(" AND requester = ").push_bind(requester.clone());
    }
    if !filter.states.is_empty() {
        // Literals, not parameters: SQLite matches a query to a partial
        // index (migration 16) on what it sees when it prepares the
        // statement, and one state as `=` (it does not read a list of
        // one as that). The states are a closed set of fixed words.
        if let [one] = filter.states.as_slice() {
            q.push(" AND state = '").push(one.as_str()).push("'");
        } else {
            q.push(" AND state IN (");
            for (i, s) in filter.states.iter().enumerate() {
                q.push(if i == 0 { "'" } else { ", '" })
                    .push(s.as_str())
                    .push("'");
            }
            q.push(")");
        }
        if filter.states.iter().all(|s| REVOKED_STATES.contains(s)) {
            q.push(concat!(" AND ", revoked_states!()));
        }
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
        q.push(" AND ends_at > ").push_bind(nanos_bound(after));
    }
    q.push(" ORDER BY created_at DESC, seq DESC LIMIT ")
        .push_bind(sql::limit_i64(filter.effective_limit()));
    q
}

/// The due-work query after `select` (see [`Store::due`]; `states` is
/// not empty). `due_at IS NOT NULL` lets the partial index of migration
/// 13 serve it.
fn due_sql<'a>(
    states: &'a [State],
    now: DateTime<Utc>,
    limit: usize,
    select: &str,
) -> QueryBuilder<'a, Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new(select);
    q.push(" FROM requests WHERE state IN (");
    let mut sep = q.separated(", ");
    for s in states {
        sep.push_bind(s.as_str());
    }
    q.push(") AND due_at IS NOT NULL AND due_at <= ")
        .push_bind(nanos_bound(now))
        .push(" ORDER BY due_at, seq LIMIT ")
        .push_bind(sql::limit_i64(limit));
    q
}

/// The migration that creates risk review's aggregates; `migrate_in`
/// back-fills them after its statements.
const RISK_MIGRATION: i64 = 14;

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

/// Risk review's facts ([`Store::risk_facts`]) in one statement and one
/// row (the columns `RiskFacts::from_row` reads): primary-key reads of the
/// aggregate tables, and the burst count from the `(requester,
/// created_at)` index; the last column says whether the aggregates are
/// kept (without a row in `risk_upkeep` the others mean nothing). Parameters: `?1` requester, `?2` entitlement, `?3`
/// the burst window's start, `?4` the groups and `?5` the sources
/// (`[key, value]` pairs), both JSON arrays.
const FACTS_SQL: &str = concat!(
    "SELECT
    (SELECT group_concat(hour || ':' || n) FROM risk_hours WHERE requester = ?1),
    (SELECT group_concat(secs || ':' || n) FROM risk_durations
        WHERE requester = ?1 AND entitlement = ?2),
    (SELECT count(*) FROM requests WHERE requester = ?1 AND created_at >= ?3),
    EXISTS (SELECT 1 FROM json_each(?4) AS g CROSS JOIN risk_peers AS p
        WHERE p.entitlement = ?2 AND p.grp = g.value AND p.requester <> ?1),
    (SELECT coalesce(sum(EXISTS (SELECT 1 FROM risk_sources AS r
        WHERE r.requester = ?1 AND r.key = s.value ->> 0 AND r.value = s.value ->> 1) << s.key), 0)
        FROM json_each(?5) AS s),
    ",
    risk_kept!()
);

/// The four upserts that count one inserted request in while the
/// aggregates are kept (a row in `risk_upkeep`; without one, `p` is empty
/// and nothing is written), each after `WITH {all}p AS (...)`: `?1`
/// requester, `?2` hour, `?3` entitlement, `?4` seconds, `?5` the sources
/// as `[key, value]` pairs and `?6` the groups, both JSON arrays. No JSON
/// but the sources and groups.
const RISK_UPSERTS: [&str; 4] = [
    "INSERT INTO risk_hours (requester, hour, n) SELECT who, hour, 1 FROM p WHERE true
    ON CONFLICT (requester, hour) DO UPDATE SET n = n + 1",
    "INSERT INTO risk_durations (requester, entitlement, secs, n) SELECT who, ent, secs, 1 FROM p WHERE true
    ON CONFLICT (requester, entitlement, secs) DO UPDATE SET n = n + 1",
    "INSERT INTO risk_sources (requester, key, value, n)
    SELECT p.who, s.value ->> 0, s.value ->> 1, 1 FROM p, json_each(p.src) AS s WHERE true
    ON CONFLICT (requester, key, value) DO UPDATE SET n = n + 1",
    "INSERT INTO risk_peers (entitlement, grp, requester, n)
    SELECT p.ent, g.value, p.who, 1 FROM p, json_each(p.grps) AS g WHERE true
    ON CONFLICT (entitlement, grp, requester) DO UPDATE SET n = n + 1",
];

/// [`RISK_UPSERTS`] as statements of a batch, each starting `WITH {all}`
/// (see [`all_params`]; empty when the batch needs none) and counting
/// only when `guard` (SQL, empty for none) holds too. Every statement
/// names every parameter it binds through `p`, from `?1` on: sqlx binds
/// the statements of one query in turn and can leave a later statement's
/// parameters unbound when earlier ones skip some.
fn risk_sql(all: &str, guard: &str) -> String {
    let mut out = String::with_capacity(1600);
    for (i, upsert) in RISK_UPSERTS.iter().enumerate() {
        if i > 0 {
            out.push_str(";\n");
        }
        out.push_str("WITH ");
        if !all.is_empty() {
            out.push_str(all);
            out.push_str(", ");
        }
        out.push_str(concat!(
            "p AS (SELECT ?1 AS who, ?2 AS hour, ?3 AS ent, ?4 AS secs, ?5 AS src, ?6 AS grps
            WHERE ",
            risk_kept!()
        ));
        if !guard.is_empty() {
            out.push_str(" AND ");
            out.push_str(guard);
        }
        out.push_str(")\n");
        out.push_str(upsert);
    }
    out
}

/// A CTE (`_all AS (...)`) that mentions every parameter `?1` to `?n`
/// and that nothing reads: in front of each statement of a batch whose
/// statements use parameters far apart, it keeps sqlx from binding
/// any of them wrong (see [`risk_sql`]). SQLite never evaluates it.
fn all_params(n: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(16 + 5 * n);
    out.push_str("_all AS (SELECT ");
    for i in 1..=n {
        if i > 1 {
            out.push_str(", ");
        }
        let _ = write!(out, "?{i}");
    }
    out.push(')');
    out
}

/// [`RISK_UPSERTS`]' six parameters for one inserted record.
struct RiskRow<'a> {
    requester: &'a str,
    hour: i64,
    entitlement: &'a str,
    secs: i64,
    sources: String,
    groups: String,
}

impl<'a> RiskRow<'a> {
    fn of(record: &'a RequestRecord) -> Result<Self> {
        let c = Contribution::of(record);
        let encode = |v: serde_json::Result<String>| {
            v.map_err(|e| Error::Store(format!("cannot encode risk aggregates: {e}")))
        };
        let sources: Vec<(&str, &str)> = c
            .sources
            .iter()
            .map(|(k, v)| {
                (
                    risk_facts::SOURCE_KEYS.get(*k).copied().unwrap_or_default(),
                    *v,
                )
            })
            .collect();
        Ok(Self {
            requester: c.requester,
            hour: i64::from(c.hour()),
            entitlement: c.entitlement,
            secs: i64::try_from(c.secs).unwrap_or(i64::MAX),
            sources: encode(serde_json::to_string(&sources))?,
            groups: encode(serde_json::to_string(c.groups))?,
        })
    }
}

/// [`FACTS_SQL`] for `query` on `conn`; `None` when the aggregates are
/// not kept (see migration 15).
async fn facts_on<'c>(
    conn: impl sqlx::Executor<'c, Database = Sqlite>,
    query: &RiskFactsQuery,
) -> Result<Option<RiskFacts>> {
    let (groups, sources) = facts_params(query)?;
    let (hours, durations, since, peer, seen, kept): (
        Option<String>,
        Option<String>,
        i64,
        bool,
        i64,
        bool,
    ) = sqlx::query_as(FACTS_SQL)
        .bind(query.requester.as_str())
        .bind(query.entitlement.as_str())
        .bind(nanos_bound(query.since))
        .bind(groups)
        .bind(sources)
        .fetch_one(conn)
        .await
        .map_err(|e| db_error("read risk facts", e))?;
    if !kept {
        return Ok(None);
    }
    RiskFacts::from_row(
        query,
        hours.as_deref(),
        durations.as_deref(),
        since,
        peer,
        seen,
    )
    .map(Some)
}

/// [`FACTS_SQL`]'s groups and sources, as JSON arrays.
fn facts_params(query: &RiskFactsQuery) -> Result<(String, String)> {
    let encode = |v: serde_json::Result<String>| {
        v.map_err(|e| Error::Store(format!("cannot encode a risk facts query: {e}")))
    };
    Ok((
        encode(serde_json::to_string(&query.groups))?,
        encode(serde_json::to_string(&query.sources))?,
    ))
}

/// Moves the aggregates by `Deltas` (one statement per table, one round
/// trip): `?1` is a JSON object whose `h`, `d`, `s` and `p` arrays hold
/// each table's `[key..., delta]` rows, upserted. (One parameter that
/// every statement names: sqlx binds the statements of one query in turn
/// and skips a later statement's parameter when the ones before it are
/// unused there.)
const APPLY_SQL: &str = "INSERT INTO risk_hours (requester, hour, n)
        SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1, '$.h') WHERE true
        ON CONFLICT (requester, hour) DO UPDATE SET n = n + excluded.n;
    INSERT INTO risk_durations (requester, entitlement, secs, n)
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1, '$.d') WHERE true
        ON CONFLICT (requester, entitlement, secs) DO UPDATE SET n = n + excluded.n;
    INSERT INTO risk_sources (requester, key, value, n)
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1, '$.s') WHERE true
        ON CONFLICT (requester, key, value) DO UPDATE SET n = n + excluded.n;
    INSERT INTO risk_peers (entitlement, grp, requester, n)
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1, '$.p') WHERE true
        ON CONFLICT (entitlement, grp, requester) DO UPDATE SET n = n + excluded.n";

/// After a prune's [`APPLY_SQL`]: the rows it took to zero go (the same
/// parameter names them).
const SWEEP_SQL: &str = "DELETE FROM risk_hours WHERE n <= 0
        AND (requester, hour) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1, '$.h'));
    DELETE FROM risk_durations WHERE n <= 0 AND (requester, entitlement, secs)
        IN (SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1, '$.d'));
    DELETE FROM risk_sources WHERE n <= 0 AND (requester, key, value)
        IN (SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1, '$.s'));
    DELETE FROM risk_peers WHERE n <= 0 AND (entitlement, grp, requester)
        IN (SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1, '$.p'))";

/// Applies `deltas` inside the caller's write transaction.
async fn apply_risk(conn: &mut SqliteConnection, deltas: &risk_facts::Deltas) -> Result<()> {
    use serde_json::json;
    if deltas.is_empty() {
        return Ok(());
    }
    let rows = json!({
        "h": deltas.hours.iter().map(|((who, h), n)| json!([who, h, n])).collect::<Vec<_>>(),
        "d": deltas
            .durations
            .iter()
            .map(|((who, ent, secs), n)| json!([who, ent, secs, n]))
            .collect::<Vec<_>>(),
        "s": deltas
            .sources
            .iter()
            .map(|((who, k, v), n)| json!([who, k, v, n]))
            .collect::<Vec<_>>(),
        "p": deltas
            .peers
            .iter()
            .map(|((ent, g, who), n)| json!([ent, g, who, n]))
            .collect::<Vec<_>>(),
    })
    .to_string();
    let statements: &[&str] = if deltas.takes_away() {
        &[APPLY_SQL, SWEEP_SQL]
    } else {
        &[APPLY_SQL]
    };
    for text in statements {
        sqlx::query(text)
            .bind(&rows)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("update risk aggregates", e))?;
    }
    Ok(())
}

/// Migration 14's back-fill: the aggregates of every stored request, from
/// its body (a body that does not decode adds nothing, and a prune of it
/// takes nothing away: the same rule both ways), a page of requests at a
/// time.
async fn risk_backfill(conn: &mut SqliteConnection) -> Result<()> {
    let mut after = 0i64;
    loop {
        let rows = sqlx::query("SELECT seq, body FROM requests WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(sql::limit_i64(BACKFILL_PAGE))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| db_error("read requests for risk aggregates", e))?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last
            .try_get("seq")
            .map_err(|e| db_error("read requests for risk aggregates", e))?;
        let mut deltas = risk_facts::Deltas::default();
        for r in rows.iter().filter_map(decoded_for_risk) {
            deltas.add(&Contribution::of(&r), 1);
        }
        apply_risk(conn, &deltas).await?;
    }
}

/// Whether the risk aggregates are kept (migration 15's marker).
async fn risk_kept_in(conn: &mut SqliteConnection) -> Result<bool> {
    sqlx::query_scalar(concat!("SELECT ", risk_kept!()))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db_error("read risk upkeep", e))
}

/// Inside a write transaction: builds the risk aggregates from every
/// stored request and keeps them from then on, unless they are kept
/// already (another caller, or another process, built them first).
async fn keep_risk_in(conn: &mut SqliteConnection) -> Result<()> {
    if risk_kept_in(conn).await? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    // Rows left from an earlier time they were kept are stale.
    sqlx::query(
        "DELETE FROM risk_hours; DELETE FROM risk_durations;
        DELETE FROM risk_sources; DELETE FROM risk_peers;",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error("clear risk aggregates", e))?;
    risk_backfill(conn).await?;
    sqlx::query("INSERT INTO risk_upkeep (id) VALUES (1)")
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("keep risk aggregates", e))?;
    tracing::info!(
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "risk review: aggregates built from the stored requests; kept from now on"
    );
    Ok(())
}

/// Requests [`risk_backfill`] reads and counts at a time.
const BACKFILL_PAGE: usize = 2000;

/// A stored request for the aggregates; `None` (logged) when its body
/// does not decode.
fn decoded_for_risk(row: &sqlx::sqlite::SqliteRow) -> Option<RequestRecord> {
    match decode_record(row) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "risk aggregates: a stored request does not decode; not counted");
            None
        }
    }
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
    /// Shared with the task that builds the risk aggregates
    /// ([`SqliteStore::keep_risk`]), which outlives a caller that stops waiting.
    write: Arc<tokio::sync::Mutex<Writer>>,
    /// The audit head this store last wrote (see [`HeadHint`]).
    head: HeadHint,
    /// Whether the risk aggregates were not kept when this store last
    /// looked (migration 15): inserts then leave their upserts out of the
    /// one-round-trip batch, guarded in SQL on that still being so.
    risk_off: AtomicBool,
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
            write: Arc::new(tokio::sync::Mutex::new(Writer::default())),
            head: HeadHint::default(),
            risk_off: AtomicBool::new(false),
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
        let mut writer = self.write.lock().await;
        if writer.open {
            writer.discard();
        }
        writer.conn = None;
        drop(writer);
        self.pool.close().await;
    }

    /// Applies the missing migrations in one write transaction.
    async fn migrate(&self) -> Result<()> {
        let mut writer = self.write.lock().await;
        let mut tx = self.begin_write(&mut writer).await?;
        let result = match migrate_in(&mut tx).await {
            Ok(()) => risk_kept_in(&mut tx).await,
            Err(e) => Err(e),
        }
        .map(|kept| self.risk_off.store(!kept, Ordering::Relaxed));
        let out = finish(tx, result, "migrate").await;
        writer.settle(out)
    }

    /// The writers' connection when no write holds it or waits for it and
    /// it holds no transaction, for a short read. Its page cache is
    /// current (a pooled reader's is stale after every write, and
    /// reloading it costs more than a short read), and it goes back to no
    /// pool (which pings a connection on every return: a round trip to its
    /// worker thread). Writers waiting for the lock come first: the
    /// lock is fair, so a read only takes it when nobody waits.
    fn idle_writer(&self) -> Option<tokio::sync::MutexGuard<'_, Writer>> {
        self.write
            .try_lock()
            .ok()
            .filter(|w| w.conn.is_some() && !w.open)
    }

    /// `BEGIN IMMEDIATE` on the writers' connection (taken from the pool
    /// when there is none yet), or for an in-memory database on its one
    /// pooled connection.
    async fn begin_write<'w>(&self, writer: &'w mut Writer) -> Result<Transaction<'w, Sqlite>> {
        writer.begin(&self.pool, self.memory).await
    }

    /// The writers' connection (see [`Writer::conn_from`]).
    async fn writer_conn<'w>(
        &self,
        writer: &'w mut Writer,
    ) -> Result<&'w mut sqlx::pool::PoolConnection<Sqlite>> {
        writer.conn_from(&self.pool).await
    }

    /// [`FACTS_SQL`] on the writers' connection when no write holds it
    /// (its page cache is current: a pooled reader's is stale after every
    /// write, and reloading it cost more than the read), else on a pooled
    /// one; never waits for a writer.
    async fn read_facts(&self, query: &RiskFactsQuery) -> Result<Option<RiskFacts>> {
        if let Some(mut writer) = self.idle_writer() {
            if let Some(conn) = writer.conn.as_mut() {
                let out = facts_on(&mut **conn, query).await;
                return writer.settle(out);
            }
        }
        facts_on(&self.pool, query).await
    }

    /// Builds the risk aggregates and keeps them from then on (see
    /// migration 15), on a task of its own: a caller that stops waiting
    /// (risk review's timeout) does not undo the work, which on a large
    /// database takes a while, so the next caller finds it done instead of
    /// starting it again. Writes queue behind it as behind any write.
    async fn keep_risk(&self) -> Result<()> {
        let (pool, memory, write) = (self.pool.clone(), self.memory, self.write.clone());
        let task = tokio::spawn(async move {
            let mut writer = write.lock_owned().await;
            let mut tx = writer.begin(&pool, memory).await?;
            let result = keep_risk_in(&mut tx).await;
            let out = finish(tx, result, "build risk aggregates").await;
            writer.settle(out)
        });
        task.await
            .map_err(|e| Error::Store(format!("building the risk aggregates stopped: {e}")))??;
        self.risk_off.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// An insert or an update on a file database in one round trip
    /// (`commit_once`) when its events chain onto the head this store
    /// remembers and nothing has changed under it; else (or when that
    /// wrote nothing) in two (`BEGIN IMMEDIATE` sent with the transition's
    /// batch, then `COMMIT` or `ROLLBACK`). On an in-memory database in
    /// three, through an sqlx transaction on its one pooled connection.
    async fn transition(
        &self,
        t: Transition<'_>,
        events: &[AuditEvent],
        op: &str,
    ) -> Result<Vec<AuditRecord>> {
        let mut writer = self.write.lock().await;
        if self.memory {
            let mut tx = self.begin_write(&mut writer).await?;
            let result = t.run(&mut tx, "", events, &self.head).await;
            let out = finish(tx, result, op).await;
            return writer.settle(out);
        }
        self.writer_conn(&mut writer).await?;
        let w = &mut *writer;
        let Some(conn) = w.conn.as_mut() else {
            return Err(Error::Store("sqlite: no connection for writing".into()));
        };
        // From here until COMMIT or ROLLBACK has answered, the connection
        // may hold an open transaction.
        w.open = true;
        let risk_off = self.risk_off.load(Ordering::Relaxed);
        match commit_once(conn, &t, events, &self.head, risk_off).await {
            Ok(Some(records)) => {
                w.open = false;
                return writer.settle(Ok(records));
            }
            // Nothing written (and committed), or not tried. The full path
            // upserts the aggregates whenever they are kept; an insert
            // looks again for the next one-round-trip insert (the marker
            // may be why this one wrote nothing).
            Ok(None) => {
                if matches!(t, Transition::Insert(_)) {
                    let kept = risk_kept_in(conn).await;
                    self.risk_off
                        .store(matches!(kept, Ok(false)), Ordering::Relaxed);
                }
            }
            Err(e) => {
                if sqlx::query("ROLLBACK").execute(&mut **conn).await.is_ok() {
                    w.open = false;
                }
                return writer.settle(Err(e));
            }
        }
        let result = t.run(conn, "BEGIN IMMEDIATE;\n", events, &self.head).await;
        let out = match result {
            Ok(v) => match sqlx::query("COMMIT").execute(&mut **conn).await {
                Ok(_) => {
                    w.open = false;
                    Ok(v)
                }
                Err(e) => Err(db_error(&format!("commit {op}"), e)),
            },
            Err(e) => {
                // Fails when the batch failed before its BEGIN took
                // effect: the connection is then discarded, which is
                // rare and always safe.
                if sqlx::query("ROLLBACK").execute(&mut **conn).await.is_ok() {
                    w.open = false;
                }
                Err(e)
            }
        };
        writer.settle(out)
    }
}

/// A write that [`SqliteStore::transition`] runs.
enum Transition<'a> {
    Insert(&'a RequestRecord),
    Update(u64, &'a RequestRecord),
}

impl Transition<'_> {
    /// The transition's statements on `conn`, `begin` in front of its
    /// first batch.
    async fn run(
        &self,
        conn: &mut SqliteConnection,
        begin: &str,
        events: &[AuditEvent],
        hint: &HeadHint,
    ) -> Result<Vec<AuditRecord>> {
        match *self {
            Transition::Insert(record) => insert_in(conn, begin, record, events, hint).await,
            Transition::Update(expected, record) => {
                update_in(conn, begin, expected, record, events, hint).await
            }
        }
    }
}

/// The connection this process writes through, for a file database. Kept
/// rather than handed back to the pool after each write: the pool pings a
/// connection it takes back (a round trip to its worker thread, on a task
/// of its own), three times per grant. Inserts and updates begin their
/// transaction in the same round trip as their first statements, outside
/// sqlx's transaction type: while one runs, [`Writer::open`] is set, and
/// a connection that may still hold a transaction (a write whose future
/// was dropped halfway, a `COMMIT` or `ROLLBACK` that failed) is never
/// used again or handed back to the pool: it is detached and closed,
/// which rolls back whatever it held. Other writes use an sqlx
/// transaction, which queues its rollback on the connection when dropped
/// halfway. After any other failure than a lost race the connection goes
/// back to the pool (which checks it) and the next write takes another.
/// An in-memory database has one connection, shared with the readers, so
/// its writes take it from the pool each time.
#[derive(Default)]
struct Writer {
    conn: Option<sqlx::pool::PoolConnection<Sqlite>>,
    /// The connection may hold a transaction that nothing will end.
    open: bool,
}

/// sqlx hands a pooled connection back to its pool on a Tokio task, and
/// panics when there is no runtime. The writers' connection is kept for the
/// life of the store, so a store dropped after its runtime has gone (a
/// `main` that returns, a bench, a CLI) would panic in that drop. Without a
/// runtime the connection is detached from the pool and closed here
/// instead; with one it goes back to the pool as usual, unless it may
/// hold a transaction.
impl Drop for Writer {
    fn drop(&mut self) {
        if self.open || tokio::runtime::Handle::try_current().is_err() {
            self.discard();
        }
    }
}

impl Writer {
    /// `BEGIN IMMEDIATE` on the writers' connection (taken from `pool`
    /// when there is none yet), or for an in-memory database on its one
    /// pooled connection.
    async fn begin(&mut self, pool: &SqlitePool, memory: bool) -> Result<Transaction<'_, Sqlite>> {
        let begin = |e| db_error("begin transaction", e);
        if memory {
            return pool.begin_with("BEGIN IMMEDIATE").await.map_err(begin);
        }
        let conn = self.conn_from(pool).await?;
        sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE")
            .await
            .map_err(begin)
    }

    /// The writers' connection, taken from `pool` when there is none (or
    /// when the one there may still hold a transaction: see
    /// [`Writer::open`]).
    async fn conn_from(
        &mut self,
        pool: &SqlitePool,
    ) -> Result<&mut sqlx::pool::PoolConnection<Sqlite>> {
        if self.open {
            self.discard();
        }
        Ok(match &mut self.conn {
            Some(conn) => conn,
            slot => slot.insert(
                pool.acquire()
                    .await
                    .map_err(|e| db_error("acquire a connection for writing", e))?,
            ),
        })
    }

    /// Passes `out` through, letting go of the connection after a failure
    /// that may have come from the connection itself, and never handing
    /// back to the pool one that may hold a transaction.
    fn settle<T>(&mut self, out: Result<T>) -> Result<T> {
        if self.open {
            self.discard();
        } else if matches!(out, Err(Error::Store(_))) {
            self.conn = None;
        }
        out
    }

    /// Closes the connection outside the pool: whatever transaction it
    /// held is rolled back, and no reader ever gets it.
    fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
        self.open = false;
    }
}

async fn migrate_in(conn: &mut SqliteConnection) -> Result<()> {
    migrate_up_to(conn, SCHEMA_VERSION).await
}

/// Applies the missing migrations up to `last` (a test builds a database
/// of an older version with it).
async fn migrate_up_to(conn: &mut SqliteConnection, last: i64) -> Result<()> {
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
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= last)
    {
        for statement in m.statements {
            sqlx::query(statement)
                .execute(&mut *conn)
                .await
                .map_err(|e| db_error(&format!("apply migration {}", m.version), e))?;
        }
        if m.version == RISK_MIGRATION {
            risk_backfill(&mut *conn).await?;
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
    let body: &[u8] = row
        .try_get("body")
        .map_err(|e| db_error("read request", e))?;
    crate::packed::unpack_record(body)
        .map_err(|e| Error::Store(format!("stored request is not valid: {e}")))
}

/// A time as the `requests` columns hold it: nanoseconds since the epoch
/// (migration 13), so integer order is time order. Times outside the
/// years 1677 to 2262 do not fit and are refused.
fn nanos(t: DateTime<Utc>) -> Result<i64> {
    t.timestamp_nanos_opt().ok_or_else(|| {
        Error::Store(format!(
            "timestamp `{t}` is outside the years 1677 to 2262 that the {ENGINE} store can order"
        ))
    })
}

/// A time to compare the `requests` columns with: [`nanos`], or the
/// nearest end of its range for a time outside it (later or earlier than
/// any stored one, so the comparison still holds).
fn nanos_bound(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// A request id as the `id` column holds it: its 16 bytes.
fn id_bytes(id: RequestId) -> [u8; 16] {
    id.0.into_bytes()
}

/// An audit hash as the `audit.hash` column holds it (migration 13): 64
/// lowercase hex digits as their 32 bytes, anything else (never written)
/// as its text, so that [`hash_text`] gives back exactly what was stored.
fn hash_bytes(hash: &str) -> Vec<u8> {
    let mut out = [0u8; 32];
    if hash.len() == 64
        && hash.bytes().all(|b| !b.is_ascii_uppercase())
        && hex::decode_to_slice(hash, &mut out).is_ok()
    {
        out.to_vec()
    } else {
        hash.as_bytes().to_vec()
    }
}

/// An `audit.hash` column's value as the hash's text (see [`hash_bytes`]).
fn hash_text(stored: &[u8]) -> String {
    if stored.len() == 32 {
        hex::encode(stored)
    } else {
        String::from_utf8_lossy(stored).into_owned()
    }
}

/// A record's columns as stored (schema 13). The `duration`, `groups`
/// and `context` columns that schema 13 added for risk review are no
/// longer written (NULL): since the aggregates (14) nothing reads them,
/// and dropping them would rewrite the whole table.
struct Columns {
    id: [u8; 16],
    version: i64,
    state: &'static str,
    created_at: i64,
    due_at: Option<i64>,
    ends_at: Option<i64>,
    body: Vec<u8>,
}

impl Columns {
    fn of(r: &RequestRecord) -> Result<Self> {
        Ok(Self {
            id: id_bytes(r.id),
            version: to_i64(r.version, "version")?,
            state: r.state.as_str(),
            created_at: nanos(r.created_at)?,
            due_at: r.due_at().map(nanos).transpose()?,
            ends_at: r.ends_at().map(nanos).transpose()?,
            body: crate::packed::pack_record(r).map_err(|e| Error::Store(e.to_string()))?,
        })
    }
}

/// The longest list read on the writers' connection (see
/// [`Store::list`] for [`SqliteStore`]).
const SMALL_LIST: usize = 100;

/// Audit rows one `INSERT` writes at most (three binds each, well under
/// SQLite's limit on bound parameters).
const AUDIT_ROWS_PER_INSERT: usize = 200;

/// Inserts the chained rows, in as few statements as possible, unguarded:
/// for a caller that holds the write lock since it read the head.
async fn insert_chained(
    conn: &mut SqliteConnection,
    chained: &sql::Chained<Vec<u8>>,
) -> Result<()> {
    let rows: Vec<_> = chained
        .seqs
        .iter()
        .zip(&chained.records)
        .zip(&chained.bodies)
        .collect();
    for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit (seq, hash, body) SELECT column1, column2, column3 FROM (VALUES ",
        );
        let mut values = q.separated(", ");
        for ((seq, r), body) in chunk {
            values
                .push("(")
                .push_bind_unseparated(**seq)
                .push_unseparated(", ")
                .push_bind_unseparated(hash_bytes(&r.hash))
                .push_unseparated(", ")
                .push_bind_unseparated(body.as_slice())
                .push_unseparated(")");
        }
        q.push(")");
        let inserted = q
            .build()
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("append audit records", e))?
            .rows_affected();
        if inserted != chunk.len() as u64 {
            return Err(Error::Store(format!(
                "sqlite append audit records: {inserted} of {} rows written",
                chunk.len()
            )));
        }
    }
    Ok(())
}

/// A transition's audit events chained onto the head this store last
/// wrote (`hint`), to go in the transition's batch under a guard on that
/// head; `None` when there is no hint or too many events for one
/// statement (then [`append_after_read`] writes them).
fn plan_audit(events: &[AuditEvent], hint: &HeadHint) -> Result<Option<Planned>> {
    if events.is_empty() || events.len() > AUDIT_ROWS_PER_INSERT {
        return Ok(None);
    }
    let Some((seq, hash)) = hint.get() else {
        return Ok(None);
    };
    let chained = sql::chain(events, seq, &hash, ENGINE, AuditRecord::to_packed)?;
    Ok(Some(Planned {
        chained,
        after: (seq, hash_bytes(&hash)),
    }))
}

/// Audit rows chained onto a remembered head (see [`plan_audit`]).
struct Planned {
    chained: sql::Chained<Vec<u8>>,
    /// The head they follow: its `seq` and stored hash.
    after: (i64, Vec<u8>),
}

impl Planned {
    /// The `INSERT` of these rows, its parameters numbered from `first`
    /// (each row's seq, hash and body, then the head's seq and hash; see
    /// [`Planned::bind`]), writing every row only if `guard` (SQL) holds,
    /// followed by a row `(1, rows written)`. `guard` is
    /// [`Planned::head_guard`] or a condition that implies it.
    fn push_sql(&self, sql: &mut String, first: usize, guard: &str) {
        use std::fmt::Write as _;
        sql.push_str(
            "INSERT INTO audit (seq, hash, body) SELECT column1, column2, column3 FROM (VALUES ",
        );
        let rows = self.chained.records.len();
        for i in 0..rows {
            let p = first + 3 * i;
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "(?{p}, ?{}, ?{})", p + 1, p + 2);
        }
        sql.push_str(") WHERE ");
        sql.push_str(guard);
        sql.push_str(";\nSELECT 1, changes()");
    }

    /// Parameters [`Planned::push_sql`] binds when numbered from `first`.
    fn params(&self, first: usize) -> usize {
        3 * self.chained.records.len() + 2 + first - 1
    }

    /// SQL that holds while the stored head (the newest row, or the
    /// anchor when every row was pruned) is exactly the one these rows
    /// follow and nothing comes after it (parameters numbered from
    /// `first`, as [`Planned::push_sql`] binds them).
    fn head_guard(&self, first: usize) -> String {
        let rows = self.chained.records.len();
        let (seq, hash) = (first + 3 * rows, first + 3 * rows + 1);
        format!(
            "NOT EXISTS (SELECT 1 FROM audit WHERE seq > ?{seq})
            AND COALESCE((SELECT hash FROM audit WHERE seq = ?{seq}),
                (SELECT unhex(hash) FROM audit_anchor WHERE id = 1 AND seq = ?{seq})) = ?{hash}"
        )
    }

    /// Binds [`Planned::push_sql`]'s parameters, in order.
    fn bind<'q>(&'q self, mut q: BatchQuery<'q>) -> BatchQuery<'q> {
        for ((seq, r), body) in self
            .chained
            .seqs
            .iter()
            .zip(&self.chained.records)
            .zip(&self.chained.bodies)
        {
            q = q.bind(*seq).bind(hash_bytes(&r.hash)).bind(body.as_slice());
        }
        q.bind(self.after.0).bind(self.after.1.as_slice())
    }
}

/// A transition's batch: `begin`, its own statements (parameters `?1` to
/// `?{own_params}`), then `planned`'s audit `INSERT` (parameters after
/// those, see [`Planned::push_sql`]). One string, written once.
fn batch_sql(begin: &str, own: &[&str], own_params: usize, planned: Option<&Planned>) -> String {
    let mut batch = String::with_capacity(4096);
    batch.push_str(begin);
    for (i, statement) in own.iter().enumerate() {
        if i > 0 {
            batch.push_str(";\n");
        }
        batch.push_str(statement);
    }
    if let Some(p) = planned {
        batch.push_str(";\n");
        p.push_sql(&mut batch, own_params + 1, &p.head_guard(own_params + 1));
    }
    batch
}

/// Sends a batch made by [`batch_sql`] (its own parameters bound in `q`)
/// in one round trip; see [`batch_outcome`] for what it returns.
async fn run_batch<'q>(
    conn: &mut SqliteConnection,
    q: BatchQuery<'q>,
    planned: Option<&'q Planned>,
    op: &str,
) -> Result<(bool, usize)> {
    let q = match planned {
        Some(p) => p.bind(q),
        None => q,
    };
    let rows = q.fetch_all(conn).await.map_err(|e| db_error(op, e))?;
    batch_outcome(&rows, op)
}

/// What a transition's batch did, from the rows `(0, n)` after its record
/// statement and `(1, n)` after its audit `INSERT`, `n` their `changes()`:
/// whether the record changed, and how many audit rows went in. (Not
/// `RETURNING`: SQLite gathers a statement's returned rows in a temporary
/// table it makes and drops each time, which cost more than the rows.)
fn batch_outcome(rows: &[sqlx::sqlite::SqliteRow], op: &str) -> Result<(bool, usize)> {
    let (mut changed, mut audited) = (false, 0);
    for row in rows {
        let kind: i64 = row.try_get(0).map_err(|e| db_error(op, e))?;
        let n: i64 = row.try_get(1).map_err(|e| db_error(op, e))?;
        let n = usize::try_from(n).unwrap_or(0);
        match kind {
            0 => changed = n > 0,
            _ => audited += n,
        }
    }
    Ok((changed, audited))
}

/// The audit part of a transition whose record statement succeeded:
/// `planned`'s rows when its batch wrote them all, else (no plan, or the
/// head had moved and the guard wrote none) the events chained after the
/// head read now.
async fn finish_audit(
    conn: &mut SqliteConnection,
    events: &[AuditEvent],
    hint: &HeadHint,
    planned: Option<Planned>,
    audited: usize,
) -> Result<Vec<AuditRecord>> {
    match planned {
        Some(p) if audited == p.chained.records.len() => {
            hint.set(&p.chained);
            Ok(p.chained.records)
        }
        Some(p) if audited != 0 => Err(Error::Store(format!(
            "sqlite append audit records: {audited} of {} rows written",
            p.chained.records.len()
        ))),
        _ => append_after_read(conn, events, hint).await,
    }
}

/// Chains `events` after the head read from the database. Must run inside
/// a write transaction: the write lock is held since the head was read, so
/// nothing can append in between.
async fn append_after_read(
    conn: &mut SqliteConnection,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // The newest record, else (everything was pruned) the anchor.
    let head: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, hash FROM (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1)
         UNION ALL SELECT seq, unhex(hash) FROM audit_anchor WHERE id = 1
         ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| db_error("read audit head", e))?;
    let (seq, hash) = head.map_or_else(
        || (0, GENESIS_HASH.to_string()),
        |(seq, hash)| (seq, hash_text(&hash)),
    );
    let chained = sql::chain(events, seq, &hash, ENGINE, AuditRecord::to_packed)?;
    insert_chained(&mut *conn, &chained).await?;
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
    let hash: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM audit WHERE seq = ?")
        .bind(at)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error("read audit record", e))?;
    if hash.map(|h| hash_text(&h)).as_deref() != Some(prune.anchor.hash.as_str()) {
        return Err(sql::anchor_mismatch(prune.anchor.seq));
    }
    let kept = risk_kept_in(conn).await?;
    let mut risk = risk_facts::Deltas::default();
    for (id, version) in &prune.records {
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM requests WHERE id = ");
        q.push_bind(id_bytes(*id).to_vec())
            .push(" AND version = ")
            .push_bind(to_i64(*version, "version")?)
            .push(" AND state IN (");
        let mut states = q.separated(", ");
        for s in State::ALL.iter().filter(|s| s.is_final()) {
            states.push_bind(s.as_str());
        }
        q.push(") RETURNING body");
        let deleted = q
            .build()
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error("prune request", e))?;
        let Some(row) = deleted else {
            return Err(Error::Conflict {
                request: *id,
                expected: *version,
            });
        };
        // What its insert (or a back-fill) counted in, counted out; while
        // they are not kept, whoever builds them next will not count it.
        if kept {
            if let Some(r) = decoded_for_risk(&row) {
                risk.add(&Contribution::of(&r), -1);
            }
        }
    }
    apply_risk(conn, &risk).await?;
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

/// The request's row of an insert (parameters `?7` to `?15`, after
/// the risk upserts' six), followed by a row `(0, 1)` when it was inserted.
const INSERT_REQUEST_SQL: &str = "INSERT INTO requests
        (id, version, state, requester, entitlement, created_at, due_at, ends_at, body)
    VALUES (?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
    ON CONFLICT (id) DO NOTHING;
    SELECT 0, changes()";

/// [`UPDATE_REQUEST_SQL`]'s `UPDATE`.
macro_rules! update_request {
    () => {
        concat!(
            "UPDATE requests
    SET version = ?1, state = ?2, due_at = ?3, ends_at = ?4, body = ?5
    WHERE ",
            update_cas!()
        )
    };
}

/// The compare-and-set of an update (parameters `?1` to `?10`), followed
/// by a row `(0, 1)` when it changed the record. Only what a transition can change
/// is set: the columns of a request's identity (requester, entitlement,
/// creation time) are compared instead, so the indexes that hold only
/// them are not rewritten (SQLite rewrites every index on a column an
/// `UPDATE` sets, changed or not).
const UPDATE_REQUEST_SQL: &str = concat!(update_request!(), ";\n    SELECT 0, changes()");

/// An insert's precondition (parameter `?7`, the id).
const INSERT_PRECONDITION: &str = new_id!();

/// The transition whole in one round trip, `COMMIT` included, when its
/// events (if any) chain onto the head this store remembers: each
/// statement writes only if every condition of the transition holds, so
/// the batch writes all of it or nothing, and commits either way.
///
/// - An insert: the risk upserts if the id is new and the head is the
///   remembered one, then the record if the head is the remembered one
///   (`OR IGNORE` for a taken id).
/// - An update: the compare-and-set if the record is at the expected
///   version with the same identity and the head is the remembered one.
/// - Then the audit rows, if that statement wrote the record
///   (`changes()`).
///
/// The record goes first because the audit `INSERT` then reads no table:
/// an `INSERT .. SELECT` that reads its own table (as a guard on the head
/// would), or that writes a table with row triggers (as `requests` has),
/// makes SQLite copy the rows to a temporary table first, a table created
/// and dropped for every write. So the record's `INSERT` is `VALUES` too,
/// its guard folded into its id.
///
/// Returns the records when it wrote them; `None` when it did not try (no
/// remembered head, too many events) or wrote nothing (a lost race, an
/// unknown or taken id, a changed identity, a head another process
/// moved): [`Transition::run`] then runs it in full and tells which. A
/// statement that fails stops the batch before its `COMMIT`: the caller
/// rolls back.
async fn commit_once(
    conn: &mut SqliteConnection,
    t: &Transition<'_>,
    events: &[AuditEvent],
    hint: &HeadHint,
    risk_off: bool,
) -> Result<Option<Vec<AuditRecord>>> {
    let planned = plan_audit(events, hint)?;
    if planned.is_none() && !events.is_empty() {
        return Ok(None);
    }
    let planned = planned.as_ref();
    let (record, own) = match *t {
        Transition::Insert(r) => (r, 15),
        Transition::Update(_, r) => (r, 10),
    };
    let c = Columns::of(record)?;
    let all = all_params(planned.map_or(own, |p| p.params(own + 1)));
    let head = planned.map(|p| p.head_guard(own + 1));
    let mut sql = String::with_capacity(8192);
    sql.push_str("BEGIN IMMEDIATE;\n");
    if matches!(t, Transition::Insert(_)) && !risk_off {
        let guard = match &head {
            Some(h) => format!("{INSERT_PRECONDITION} AND {h}"),
            None => INSERT_PRECONDITION.to_string(),
        };
        sql.push_str(&risk_sql(&all, &guard));
        sql.push_str(";\n");
    }
    sql.push_str("WITH ");
    sql.push_str(&all);
    sql.push(' ');
    // The record's own guards. An insert is `VALUES`, not `SELECT ..
    // WHERE`: SQLite runs an `INSERT .. SELECT` into a table with row
    // triggers (`state_counts`' here) through a temporary table made for
    // each statement. Its guard instead makes the id NULL, a row that
    // `OR IGNORE` skips like a taken id (as it would a failed `CHECK`:
    // then nothing is written and the two-round-trip path, which reports
    // such errors, runs).
    let head = head.as_deref();
    match *t {
        Transition::Insert(_) => {
            sql.push_str(
                "INSERT OR IGNORE INTO requests
                (id, version, state, requester, entitlement, created_at, due_at, ends_at, body)
            VALUES (CASE WHEN ",
            );
            sql.push_str(if risk_off {
                concat!("NOT ", risk_kept!())
            } else {
                "1"
            });
            if let Some(h) = head {
                sql.push_str(" AND ");
                sql.push_str(h);
            }
            sql.push_str(" THEN ?7 END, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)");
        }
        Transition::Update(..) => {
            sql.push_str(update_request!());
            if let Some(h) = head {
                sql.push_str(" AND ");
                sql.push_str(h);
            }
        }
    }
    sql.push_str(";\nSELECT 0, changes()");
    if let Some(p) = planned {
        sql.push_str(";\nWITH ");
        sql.push_str(&all);
        sql.push(' ');
        p.push_sql(&mut sql, own + 1, "changes() = 1");
    }
    sql.push_str(";\nCOMMIT");
    let risk;
    let q = match *t {
        Transition::Insert(r) => {
            risk = RiskRow::of(r)?;
            bind_insert(sqlx::query(&sql), &risk, &c, r)
        }
        Transition::Update(expected, r) => {
            bind_update(sqlx::query(&sql), &c, to_i64(expected, "version")?, r)
        }
    };
    let (changed, audited) = run_batch(conn, q, planned, "write request").await?;
    let expected = planned.map_or(0, |p| p.chained.records.len());
    match (changed, audited) {
        (true, n) if n == expected => {
            let records = planned.map(|p| {
                hint.set(&p.chained);
                p.chained.records.clone()
            });
            Ok(Some(records.unwrap_or_default()))
        }
        (false, 0) => Ok(None),
        (changed, n) => {
            // Cannot happen: every statement is guarded on the others.
            tracing::error!(
                changed,
                audited = n,
                expected,
                "sqlite: a transition's batch wrote part of itself"
            );
            Err(Error::Store(format!(
                "sqlite {}: the batch wrote the record: {changed}, and {n} of {expected} audit records",
                record.id
            )))
        }
    }
}

/// A query of this module's batches.
type BatchQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// An insert's own parameters, `?1` to `?15`: the risk upserts' six
/// ([`RiskRow`]), then the record's nine.
fn bind_insert<'q>(
    q: BatchQuery<'q>,
    risk: &'q RiskRow<'q>,
    c: &'q Columns,
    record: &'q RequestRecord,
) -> BatchQuery<'q> {
    q.bind(risk.requester)
        .bind(risk.hour)
        .bind(risk.entitlement)
        .bind(risk.secs)
        .bind(risk.sources.as_str())
        .bind(risk.groups.as_str())
        .bind(c.id.as_slice())
        .bind(c.version)
        .bind(c.state)
        .bind(record.requester.id.as_str())
        .bind(record.request.entitlement.as_str())
        .bind(c.created_at)
        .bind(c.due_at)
        .bind(c.ends_at)
        .bind(c.body.as_slice())
}

/// An update's own parameters, `?1` to `?10` (see [`UPDATE_REQUEST_SQL`]).
fn bind_update<'q>(
    q: BatchQuery<'q>,
    c: &'q Columns,
    expected: i64,
    record: &'q RequestRecord,
) -> BatchQuery<'q> {
    q.bind(c.version)
        .bind(c.state)
        .bind(c.due_at)
        .bind(c.ends_at)
        .bind(c.body.as_slice())
        .bind(c.id.as_slice())
        .bind(expected)
        .bind(record.requester.id.as_str())
        .bind(record.request.entitlement.as_str())
        .bind(c.created_at)
}

/// Inserts the record, counts it in the risk aggregates and appends its
/// events: one round trip to the connection's worker (one batch of
/// statements, after `begin`) when the audit head is the one this store
/// last wrote.
async fn insert_in(
    conn: &mut SqliteConnection,
    begin: &str,
    record: &RequestRecord,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    let c = Columns::of(record)?;
    let risk = RiskRow::of(record)?;
    let planned = plan_audit(events, hint)?;
    let risk_sql = risk_sql("", "");
    let batch = batch_sql(
        begin,
        &[risk_sql.as_str(), INSERT_REQUEST_SQL],
        15,
        planned.as_ref(),
    );
    let q = bind_insert(sqlx::query(&batch), &risk, &c, record);
    let (inserted, audited) = run_batch(conn, q, planned.as_ref(), "insert request").await?;
    if !inserted {
        return Err(sql::insert_conflict(record));
    }
    finish_audit(conn, events, hint, planned, audited).await
}

/// The compare-and-set and the events, one batch like [`insert_in`]'s.
async fn update_in(
    conn: &mut SqliteConnection,
    begin: &str,
    expected_version: u64,
    record: &RequestRecord,
    events: &[AuditEvent],
    hint: &HeadHint,
) -> Result<Vec<AuditRecord>> {
    let c = Columns::of(record)?;
    let expected = to_i64(expected_version, "version")?;
    let planned = plan_audit(events, hint)?;
    let batch = batch_sql(begin, &[UPDATE_REQUEST_SQL], 10, planned.as_ref());
    let q = bind_update(sqlx::query(&batch), &c, expected, record);
    let (updated, audited) = run_batch(conn, q, planned.as_ref(), "update request").await?;
    if !updated {
        // Rolled back by the caller, with any audit rows the batch wrote.
        let stored: Option<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT version, requester, entitlement, created_at FROM requests WHERE id = ?",
        )
        .bind(c.id.as_slice())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error("read request", e))?;
        return Err(match stored {
            Some((version, requester, entitlement, created_at))
                if version == expected
                    && (requester.as_str(), entitlement.as_str(), created_at)
                        != (
                            record.requester.id.as_str(),
                            record.request.entitlement.as_str(),
                            c.created_at,
                        ) =>
            {
                super::identity_changed(record)
            }
            stored => sql::missed_update(record, expected_version, stored.is_some()),
        });
    }
    finish_audit(conn, events, hint, planned, audited).await
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(
        &self,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(0, record)?;
        self.transition(Transition::Insert(record), events, "insert")
            .await
    }

    async fn update(
        &self,
        expected_version: u64,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        check_versions(expected_version, record)?;
        self.transition(
            Transition::Update(expected_version, record),
            events,
            "update",
        )
        .await
    }

    /// On the writers' connection when it is idle (no write holds or
    /// awaits it, it holds no transaction), else on a pooled one.
    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        let id = id_bytes(id);
        let q = sqlx::query("SELECT body FROM requests WHERE id = ?").bind(id.as_slice());
        let row = match self.idle_writer() {
            Some(mut writer) => {
                let out = match writer.conn.as_mut() {
                    Some(conn) => q.fetch_optional(&mut **conn).await,
                    None => q.fetch_optional(&self.pool).await,
                }
                .map_err(|e| db_error("get request", e));
                writer.settle(out)?
            }
            None => q
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("get request", e))?,
        };
        row.as_ref().map(decode_record).transpose()
    }

    /// Lists of at most 100 records (`SMALL_LIST`: the broker's pending cap
    /// on every submit, a page of a user's requests) on the writers'
    /// connection when it is idle, longer ones on a pooled connection,
    /// where they never hold up a write.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<RequestRecord>> {
        let mut q = list_sql(filter, "SELECT body");
        let writer = (filter.effective_limit() <= SMALL_LIST)
            .then(|| self.idle_writer())
            .flatten();
        let rows = match writer {
            Some(mut writer) => {
                let out = match writer.conn.as_mut() {
                    Some(conn) => q.build().fetch_all(&mut **conn).await,
                    None => q.build().fetch_all(&self.pool).await,
                }
                .map_err(|e| db_error("list requests", e));
                writer.settle(out)?
            }
            None => q
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("list requests", e))?,
        };
        rows.iter().map(decode_record).collect()
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        query.check()?;
        let rows: Vec<(Vec<u8>,)> = history_sql(query, "SELECT body")
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("read request history", e))?;
        Ok(rows
            .iter()
            .filter_map(|(body,)| sql::decode_history(body))
            .collect())
    }

    /// Never waits for a writer, except the first read of a database
    /// whose aggregates are not kept (see migration 15): it builds them
    /// first, once.
    async fn risk_facts(&self, query: &RiskFactsQuery) -> Result<RiskFacts> {
        query.check()?;
        if let Some(facts) = self.read_facts(query).await? {
            return Ok(facts);
        }
        self.keep_risk().await?;
        self.read_facts(query)
            .await?
            .ok_or_else(|| Error::Store("risk aggregates are not kept after building them".into()))
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
        due_sql(states, now, limit, "SELECT body")
            .build()
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
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash, body FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?")
                .bind(i64::try_from(from_seq.saturating_sub(1)).unwrap_or(i64::MAX))
                .bind(sql::limit_i64(limit.saturating_add(1)))
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| db_error("read audit records", e))?;
        let rows = rows
            .into_iter()
            .map(|(seq, hash, body)| (seq, hash_text(&hash), body))
            .collect();
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
                "requests_requester_entitlement_created",
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

    /// The reaper's due work reads the partial index of rows with due work
    /// (migration 13); start-up's running revocations, the pending cap and
    /// the approver queue read the partial indexes of migration 16: none
    /// scans the table.
    #[tokio::test]
    async fn due_work_and_running_revocations_read_their_partial_indexes() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let states = [State::Pending, State::Active, State::Revoking];
        let restore = ListFilter {
            states: vec![State::Revoked, State::Revoking, State::RevocationFailed],
            ends_after: Some(Utc::now()),
            limit: 10_000,
            ..ListFilter::default()
        };
        let pending_cap = ListFilter {
            requester: Some("alice".into()),
            states: vec![State::Pending],
            limit: 5,
            ..ListFilter::default()
        };
        let queue = ListFilter {
            states: vec![State::Pending],
            entitlements: vec!["db".into(), "web".into()],
            ..ListFilter::default()
        };
        for (mut q, index) in [
            (
                due_sql(&states, Utc::now(), 100, "EXPLAIN QUERY PLAN SELECT body"),
                "requests_state_due",
            ),
            (
                list_sql(&restore, "EXPLAIN QUERY PLAN SELECT body"),
                "requests_revoked_ends",
            ),
            (
                list_sql(&pending_cap, "EXPLAIN QUERY PLAN SELECT body"),
                "requests_pending_requester",
            ),
            (
                list_sql(&queue, "EXPLAIN QUERY PLAN SELECT body"),
                "requests_pending_entitlement",
            ),
        ] {
            let rows: Vec<(i64, i64, i64, String)> =
                q.build_query_as().fetch_all(&store.pool).await.unwrap();
            let plan = rows
                .iter()
                .map(|r| r.3.as_str())
                .collect::<Vec<_>>()
                .join(" | ");
            assert!(plan.contains(&format!("INDEX {index} ")), "{plan}");
            assert!(!plan.contains("SCAN requests"), "{plan}");
        }
        let indexes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, \"partial\" FROM pragma_index_list('requests') WHERE name IN
             ('requests_state_due', 'requests_revoked_ends', 'requests_pending_requester',
              'requests_pending_entitlement')",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(indexes.len(), 4);
        assert!(
            indexes.iter().all(|(_, partial)| *partial == 1),
            "{indexes:?}"
        );
    }

    /// Risk facts are primary-key reads of the aggregate tables and one
    /// range of the `(requester, created_at)` index (the burst): no scan
    /// of a table, no row of `requests` read, no sort.
    #[tokio::test]
    async fn risk_facts_read_primary_keys() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {FACTS_SQL}"))
                .bind("bob")
                .bind("db")
                .bind(0_i64)
                .bind(r#"["eng"]"#)
                .bind(r#"[["ip", "10.0.0.1"]]"#)
                .fetch_all(&store.pool)
                .await
                .unwrap();
        let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        let shown = plan.join(" | ");
        // Each aggregate by its primary key; the peers one group at a time
        // (entitlement and group), never every peer of the entitlement.
        for search in [
            "SEARCH risk_hours USING PRIMARY KEY (requester=?)",
            "SEARCH risk_durations USING PRIMARY KEY (requester=? AND entitlement=?)",
            "SEARCH p USING PRIMARY KEY (entitlement=? AND grp=?)",
            "SEARCH r USING PRIMARY KEY (requester=? AND key=? AND value=?)",
        ] {
            assert!(plan.contains(&search), "{search}: {shown}");
        }
        assert!(
            shown.contains("SEARCH requests USING COVERING INDEX requests_requester_created "),
            "{shown}"
        );
        assert!(
            !plan
                .iter()
                .any(|l| l.starts_with("SCAN requests") || l.starts_with("SCAN risk_")),
            "{shown}"
        );
        assert!(!shown.contains("TEMP B-TREE"), "{shown}");
    }

    /// Risk facts read on the writers' connection when it is free, and on
    /// a pooled one while a write holds it: the same answer either way,
    /// and never a wait for the writer (the 30 s bound only keeps a
    /// regression from hanging the suite).
    #[tokio::test]
    async fn risk_facts_never_wait_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("jit.db")).await.unwrap();
        let r = record();
        store.insert(&r, &[]).await.unwrap();
        let q = RiskFactsQuery::new("alice", "db-admin");
        let free = store.risk_facts(&q).await.unwrap();
        assert_eq!(free.entitlement_requests, 1, "{free:?}");
        let held = store.write.lock().await;
        assert!(held.conn.is_some(), "the writers keep their connection");
        let busy = tokio::time::timeout(Duration::from_secs(30), store.risk_facts(&q))
            .await
            .expect("risk facts waited for the writer")
            .unwrap();
        drop(held);
        assert_eq!(busy, free);
    }

    /// A prune counts a request out from its body; one whose body no
    /// longer decodes is logged and stays counted, and the prune goes
    /// ahead (retention is not held up by one bad row).
    #[tokio::test]
    async fn a_prune_of_a_body_that_is_not_json_still_prunes() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let mut made = Vec::new();
        for _ in 0..2 {
            let mut r = record();
            r.state = State::Expired;
            let events = [crate::audit::AuditEvent::new(
                r.created_at,
                AuditKind::Requested,
                r.id,
                "alice",
                r.state,
            )];
            store.insert(&r, &events).await.unwrap();
            made.push(r);
        }
        // Read once, so that the aggregates are kept (migration 15).
        let q = RiskFactsQuery::new("alice", "db-admin");
        assert_eq!(store.risk_facts(&q).await.unwrap().requests, 2);
        sqlx::query("UPDATE requests SET body = X'7b7b' WHERE id = ?")
            .bind(id_bytes(made[1].id).as_slice())
            .execute(&store.pool)
            .await
            .unwrap();
        let head = crate::store::audit_all(&store).await.unwrap();
        let head = head.last().unwrap();
        store
            .prune(&Prune {
                after: 0,
                anchor: AuditAnchor::new(head.seq, &head.hash, Utc::now(), None),
                records: made.iter().map(|r| (r.id, r.version)).collect(),
            })
            .await
            .unwrap();
        let facts = store
            .risk_facts(&RiskFactsQuery::new("alice", "db-admin"))
            .await
            .unwrap();
        assert_eq!(facts.requests, 1, "{facts:?}");
        assert_eq!(facts.entitlement_requests, 1, "{facts:?}");
    }

    async fn count(store: &SqliteStore, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    /// The counts in the four aggregate tables, added up.
    async fn aggregate_rows(store: &SqliteStore) -> i64 {
        count(
            store,
            "SELECT (SELECT coalesce(sum(n), 0) FROM risk_hours)
                + (SELECT coalesce(sum(n), 0) FROM risk_durations)
                + (SELECT coalesce(sum(n), 0) FROM risk_sources)
                + (SELECT coalesce(sum(n), 0) FROM risk_peers)",
        )
        .await
    }

    /// A new database keeps no risk aggregates until risk review first
    /// reads them (a server without an assessor never pays for them); that
    /// read builds them from every stored request, and from then on every
    /// insert and prune moves them, including those of another store on the
    /// same file that never read them itself.
    #[tokio::test]
    async fn risk_aggregates_are_kept_from_their_first_read_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jit.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let other = SqliteStore::open(&path).await.unwrap();
        let expired = |who: &str| {
            let mut r = record();
            r.requester = Principal::new(who).unwrap().with_group("eng");
            r.state = State::Expired;
            r
        };
        let event = |r: &RequestRecord| {
            [crate::audit::AuditEvent::new(
                r.created_at,
                AuditKind::Requested,
                r.id,
                r.requester.id.as_str(),
                r.state,
            )]
        };
        let mut made = Vec::new();
        for who in ["alice", "alice", "bob"] {
            let r = expired(who);
            // The last through the other store, so that it remembers the
            // audit head and writes its next insert in one round trip,
            // believing the aggregates are not kept (see below).
            let s = if who == "bob" { &other } else { &store };
            s.insert(&r, &event(&r)).await.unwrap();
            made.push(r);
        }
        assert_eq!(count(&store, "SELECT count(*) FROM risk_upkeep").await, 0);
        assert_eq!(
            aggregate_rows(&store).await,
            0,
            "nothing kept before a read"
        );

        // A prune while they are not kept takes nothing away from them.
        let head = crate::store::audit_all(&store).await.unwrap();
        let head = head.last().unwrap();
        store
            .prune(&Prune {
                after: 0,
                anchor: AuditAnchor::new(head.seq, &head.hash, Utc::now(), None),
                records: vec![(made[0].id, made[0].version)],
            })
            .await
            .unwrap();
        assert_eq!(aggregate_rows(&store).await, 0);

        // A read that gives up at once leaves them built or not built,
        // never half: the next read answers from every stored request.
        let alice = RiskFactsQuery {
            groups: ["eng".to_string()].into(),
            ..RiskFactsQuery::new("alice", "db-admin")
        };
        let _ = tokio::time::timeout(Duration::from_micros(1), store.risk_facts(&alice)).await;
        let facts = store.risk_facts(&alice).await.unwrap();
        assert_eq!(
            (facts.requests, facts.entitlement_requests, facts.peer_used),
            (1, 1, true),
            "the pruned request is not counted, bob's counts as a peer: {facts:?}"
        );
        assert_eq!(count(&store, "SELECT count(*) FROM risk_upkeep").await, 1);
        let built = aggregate_rows(&store).await;
        assert!(built > 0);

        // Kept from now on, by the other store's inserts too, though it
        // opened the file before they were kept: its one-round-trip insert
        // without the upserts is guarded on their not being kept.
        let r = expired("alice");
        other.insert(&r, &event(&r)).await.unwrap();
        made.push(r);
        assert!(
            aggregate_rows(&store).await > built,
            "the insert counted in"
        );
        assert_eq!(store.risk_facts(&alice).await.unwrap().requests, 2);
        let head = crate::store::audit_all(&other).await.unwrap();
        let head = head.last().unwrap();
        let after = other.audit_anchor().await.unwrap().map_or(0, |a| a.seq);
        other
            .prune(&Prune {
                after,
                anchor: AuditAnchor::new(head.seq, &head.hash, Utc::now(), None),
                records: vec![(made[1].id, made[1].version), (made[3].id, made[3].version)],
            })
            .await
            .unwrap();
        let facts = store.risk_facts(&alice).await.unwrap();
        assert_eq!(
            (facts.requests, facts.entitlement_requests),
            (0, 0),
            "the prune counted out: {facts:?}"
        );
    }

    /// Migration 15 on a database that holds requests keeps the
    /// aggregates that version 14 built (no rebuild on the first read after
    /// the upgrade); on an empty one, nothing is kept until a read.
    #[tokio::test]
    async fn migration_15_keeps_the_aggregates_of_a_database_in_use() {
        let dir = tempfile::tempdir().unwrap();
        for (name, requests) in [("used.db", 1), ("empty.db", 0)] {
            let path = dir.path().join(name);
            // A version 14 database, written as version 14 did: each
            // request with its aggregates.
            let mut conn = old_database(&path, 14).await;
            for _ in 0..requests {
                let r = record();
                let c = Columns::of(&r).unwrap();
                sqlx::query(
                    "INSERT INTO requests (id, version, state, requester, entitlement, created_at, body)
                     VALUES (?, 1, 'pending', 'alice', 'db-admin', ?, ?)",
                )
                .bind(c.id.as_slice())
                .bind(c.created_at)
                .bind(c.body.as_slice())
                .execute(&mut conn)
                .await
                .unwrap();
                sqlx::query("INSERT INTO risk_hours (requester, hour, n) VALUES ('alice', 3, 1)")
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            drop(conn);
            let store = SqliteStore::open(&path).await.unwrap();
            assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
            assert_eq!(
                count(&store, "SELECT count(*) FROM risk_upkeep").await,
                requests,
                "{name}"
            );
            assert_eq!(
                aggregate_rows(&store).await,
                requests,
                "{name}: not rebuilt"
            );
        }
    }

    /// The one-round-trip write (`commit_once`) writes a transition whole
    /// or not at all: it writes and remembers the head when every
    /// condition holds, and writes nothing (no record, no audit row, no
    /// aggregate) when the id is taken, the version or identity has moved,
    /// or another process appended to the chain; the full path then
    /// writes it or says why not.
    #[tokio::test]
    async fn a_write_in_one_round_trip_is_whole_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jit.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let other = SqliteStore::open(&path).await.unwrap();
        let q = RiskFactsQuery::new("alice", "db-admin");
        assert_eq!(store.risk_facts(&q).await.unwrap().requests, 0);
        let event = |r: &RequestRecord| {
            crate::audit::AuditEvent::new(
                r.updated_at,
                AuditKind::Requested,
                r.id,
                "alice",
                r.state,
            )
        };
        // The first write reads the head; from then on the store remembers it.
        let first = record();
        store.insert(&first, &[event(&first)]).await.unwrap();
        let state = || async {
            (
                count(&store, "SELECT count(*) FROM audit").await,
                count(&store, "SELECT count(*) FROM requests").await,
                aggregate_rows(&store).await,
            )
        };
        async fn once_on(
            store: &SqliteStore,
            t: Transition<'_>,
            events: Vec<crate::audit::AuditEvent>,
        ) -> Result<Option<Vec<AuditRecord>>> {
            let mut writer = store.write.lock().await;
            let conn = writer.conn_from(&store.pool).await.unwrap();
            let risk_off = store.risk_off.load(Ordering::Relaxed);
            commit_once(conn, &t, &events, &store.head, risk_off).await
        }
        let once = |t, events| once_on(&store, t, events);

        let r = record();
        let written = once(Transition::Insert(&r), vec![event(&r), event(&r)])
            .await
            .unwrap()
            .expect("written in one round trip");
        assert_eq!(written.len(), 2);
        assert_eq!(store.get(r.id).await.unwrap().unwrap(), r);
        let before = state().await;
        assert_eq!(before.1, 2);
        let mut next = r.clone();
        next.version = 2;
        next.state = State::Cancelled;
        let written = once(Transition::Update(1, &next), vec![event(&next)])
            .await
            .unwrap()
            .expect("written in one round trip");
        assert_eq!(written.len(), 1);
        assert_eq!(store.get(r.id).await.unwrap().unwrap(), next);
        let before = (before.0 + 1, before.1, before.2);
        assert_eq!(state().await, before);

        // Each condition failing: nothing written.
        let mut taken = record();
        taken.id = r.id;
        let mut stale = next.clone();
        stale.version = 3;
        stale.state = State::Approved;
        let mut moved = next.clone();
        moved.version = 3;
        moved.requester = Principal::new("mallory").unwrap();
        for (what, t, e) in [
            ("a taken id", Transition::Insert(&taken), event(&taken)),
            (
                "a stale version",
                Transition::Update(1, &stale),
                event(&stale),
            ),
            (
                "another requester",
                Transition::Update(2, &moved),
                event(&moved),
            ),
        ] {
            assert!(once(t, vec![e]).await.unwrap().is_none(), "{what}");
            assert_eq!(state().await, before, "{what}");
            assert_eq!(store.get(r.id).await.unwrap().unwrap(), next, "{what}");
        }
        // Another process writes the record, with an event exactly like
        // the one this store is about to chain at the same place: the
        // stored copy must not pass for this store's own.
        let mut theirs = next.clone();
        theirs.version = 3;
        other.update(2, &theirs, &[event(&theirs)]).await.unwrap();
        let mut mine = theirs.clone();
        mine.version = 4;
        mine.note = Some("mine".into());
        let before = state().await;
        assert!(once(Transition::Update(3, &mine), vec![event(&mine)])
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            state().await,
            before,
            "nothing written on an identical event"
        );
        assert_eq!(store.get(r.id).await.unwrap().unwrap(), theirs);
        store.update(3, &mine, &[event(&mine)]).await.unwrap();
        crate::audit::verify(&crate::store::audit_all(&store).await.unwrap()).unwrap();

        // Another process appends: the remembered head is stale.
        let theirs = record();
        other.insert(&theirs, &[event(&theirs)]).await.unwrap();
        let before = state().await;
        let mine = record();
        assert!(once(Transition::Insert(&mine), vec![event(&mine)])
            .await
            .unwrap()
            .is_none());
        assert_eq!(state().await, before, "nothing written on a moved head");
        // The full path writes it after the other process's records.
        store.insert(&mine, &[event(&mine)]).await.unwrap();
        let chain = crate::store::audit_all(&store).await.unwrap();
        crate::audit::verify(&chain).unwrap();
        assert_eq!(chain.last().unwrap().event.request_id, mine.id);
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
                ticket: None,
                on_call: None,
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

    /// Inserts and updates begin their transaction in the batch they send
    /// (outside sqlx's transaction type). A write whose future is dropped
    /// halfway may leave a transaction open on the writers' connection:
    /// that connection must never be used again or reach the pool. The
    /// dropped write is all or nothing (it may have committed, if its
    /// `COMMIT` was already sent: cancelling cannot take that back), the
    /// next write and the readers go on, and the chain stays whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_dropped_halfway_is_all_or_nothing_and_blocks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("dropped.db"))
            .await
            .unwrap();
        let r = record();
        store.insert(&r, &events_for(&r, 1)).await.unwrap();
        let (mut version, mut records) = (1u64, 1u64);
        let mut outcomes = (0, 0);
        for round in 0..40 {
            let mut dropped = r.clone();
            dropped.version = version + 1;
            dropped.note = Some(format!("dropped {round}"));
            let events = events_for(&dropped, 2);
            let write = store.update(version, &dropped, &events);
            // Polled once: it sends its batch (or, on a quick worker,
            // its COMMIT) and waits for the answer.
            let finished = tokio::select! {
                biased;
                out = write => Some(out),
                _ = std::future::ready(()) => None,
            };
            if let Some(out) = finished {
                // A quick worker answered within the one poll: an ordinary
                // write, whole.
                out.unwrap();
                version += 1;
                records += 2;
                continue;
            }
            assert!(
                store.write.lock().await.open,
                "round {round}: not marked open"
            );
            // The next write, from the version the dropped one started
            // from: it finds the dropped one either whole or not at all.
            let mut kept = r.clone();
            kept.note = Some(format!("kept {round}"));
            let next = |expected: u64, kept: &mut RequestRecord| {
                kept.version = expected + 1;
                let kept = kept.clone();
                let store = &store;
                async move {
                    tokio::time::timeout(
                        Duration::from_secs(20),
                        store.update(expected, &kept, &events_for(&kept, 1)),
                    )
                    .await
                    .expect("the next write waited on the dropped one's transaction")
                }
            };
            match next(version, &mut kept).await {
                Ok(_) => {
                    outcomes.0 += 1;
                    version += 1;
                    records += 1;
                }
                Err(Error::Conflict { .. }) => {
                    // The dropped write committed: all of it.
                    assert_eq!(store.get(r.id).await.unwrap(), Some(dropped.clone()));
                    assert_eq!(verified(&store).await.records, records + 2);
                    outcomes.1 += 1;
                    next(version + 1, &mut kept).await.unwrap();
                    version += 2;
                    records += 3;
                }
                Err(e) => panic!("round {round}: {e}"),
            }
            assert_eq!(store.get(r.id).await.unwrap(), Some(kept));
            assert_eq!(verified(&store).await.records, records);
        }
        assert!(outcomes.0 + outcomes.1 > 0, "no write was dropped halfway");
        // The readers were never handed the open transaction.
        let counts = store.count_by_state().await.unwrap();
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 1);
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

    /// A database file at schema `version`, as a build of that version
    /// left it (the migrations up to it), and a connection to it.
    async fn old_database(path: &Path, version: i64) -> SqliteConnection {
        let mut conn = SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        migrate_up_to(&mut conn, version).await.unwrap();
        conn
    }

    /// `r` as versions 1 to 12 wrote it: text id and times, JSON body
    /// (`ends_at` from version 6 on).
    async fn insert_old(conn: &mut SqliteConnection, r: &RequestRecord, ends_at: bool) {
        let c = sql::Columns::of(r, ENGINE).unwrap();
        let (cols, marks) = if ends_at {
            (", ends_at", ", ?")
        } else {
            ("", "")
        };
        let mut q = sqlx::query_as::<_, (i64,)>(Box::leak(
            format!(
                "INSERT INTO requests (id, version, state, requester, entitlement, created_at, due_at, body{cols})
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?{marks}) RETURNING seq"
            )
            .into_boxed_str(),
        ))
        .bind(c.id)
        .bind(c.version)
        .bind(c.state)
        .bind(c.requester)
        .bind(c.entitlement)
        .bind(c.created_at)
        .bind(c.due_at)
        .bind(c.body);
        if ends_at {
            q = q.bind(c.ends_at);
        }
        q.fetch_one(&mut *conn).await.unwrap();
    }

    /// Rows written before version 6 get `ends_at` from their body, with
    /// the nine fractional digits new writes have, whatever number of
    /// digits chrono wrote there (and version 13 turns them into the
    /// exact nanoseconds); rows without a grant stay NULL.
    #[tokio::test]
    async fn migration_6_fills_ends_at_from_the_body() {
        use crate::types::{Grant, GrantId};
        use chrono::Timelike;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        let mut conn = old_database(&path, 5).await;
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
            insert_old(&mut conn, &r, false).await;
            written.push(r);
        }
        let no_grant = record();
        insert_old(&mut conn, &no_grant, false).await;
        conn.close().await.unwrap();

        let store = SqliteStore::open(&path).await.unwrap();
        for r in &written {
            let column: Option<i64> =
                sqlx::query_scalar("SELECT ends_at FROM requests WHERE id = ?")
                    .bind(id_bytes(r.id).as_slice())
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
            assert_eq!(column, Some(nanos(r.ends_at().unwrap()).unwrap()));
        }
        let column: Option<i64> = sqlx::query_scalar("SELECT ends_at FROM requests WHERE id = ?")
            .bind(id_bytes(no_grant.id).as_slice())
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(column, None);
        // And the bound reads them: ends after the first, not after the last.
        let after = |t| ListFilter {
            ends_after: Some(t),
            ..ListFilter::default()
        };
        let first = written[0].ends_at().unwrap();
        assert_eq!(store.list(&after(first)).await.unwrap().len(), 3);
        let last = written[3].ends_at().unwrap();
        assert!(store.list(&after(last)).await.unwrap().is_empty());
    }

    /// A database written before version 12 gets its counts back-filled
    /// from the rows it holds, and the triggers keep them from then on.
    #[tokio::test]
    async fn migration_12_backfills_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v11.db");
        let mut conn = old_database(&path, 11).await;
        for state in [
            State::Pending,
            State::Pending,
            State::Active,
            State::Revoked,
            State::Expired,
        ] {
            let mut r = record();
            r.state = state;
            insert_old(&mut conn, &r, true).await;
        }
        conn.close().await.unwrap();

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

    /// Migration 14 counts every request already stored, the same as
    /// inserting them would have (a body that does not decode adds
    /// nothing), and inserts after it keep counting.
    #[tokio::test]
    async fn migration_14_backfills_the_risk_aggregates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jit.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let mut made = Vec::new();
        for (who, ent, secs, ip) in [
            ("alice", "db", 600, "10.0.0.1"),
            ("alice", "db", 60, "10.0.0.2"),
            ("alice", "web", 60, "10.0.0.1"),
            ("bob", "db", 60, "10.0.0.3"),
            ("bob", "db", 60, "10.0.0.3"),
        ] {
            let mut r = record();
            r.requester = Principal::new(who).unwrap().with_group("eng");
            r.request.entitlement = ent.into();
            r.request.duration = GrantDuration::from_secs_i64(secs).unwrap();
            r.request.context.insert("ip".into(), ip.into());
            store.insert(&r, &[]).await.unwrap();
            made.push(r);
        }
        let queries: Vec<RiskFactsQuery> = [("alice", "db"), ("alice", "web"), ("bob", "db")]
            .iter()
            .map(|(who, ent)| RiskFactsQuery {
                groups: ["eng".to_string()].into(),
                sources: vec![("ip".into(), "10.0.0.1".into())],
                since: made[0].created_at,
                ..RiskFactsQuery::new(who, ent)
            })
            .collect();
        let mut inserted = Vec::new();
        for q in &queries {
            inserted.push(store.risk_facts(q).await.unwrap());
        }
        assert_eq!(inserted[0].entitlement_requests, 2, "{:?}", inserted[0]);
        // As a version 12 database would hold them: no aggregates, and
        // one body that does not decode.
        for stmt in [
            "DROP TABLE risk_hours",
            "DROP TABLE risk_durations",
            "DROP TABLE risk_sources",
            "DROP TABLE risk_peers",
            "DROP TABLE risk_upkeep",
            "DELETE FROM schema_migrations WHERE version >= 14",
        ] {
            sqlx::query(stmt).execute(&store.pool).await.unwrap();
        }
        store.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        for (q, before) in queries.iter().zip(&inserted) {
            assert_eq!(&store.risk_facts(q).await.unwrap(), before, "{q:?}");
        }
        let mut late = made[3].clone();
        late.id = RequestId::new();
        store.insert(&late, &[]).await.unwrap();
        let bob = store.risk_facts(&queries[2]).await.unwrap();
        assert_eq!(bob.entitlement_requests, 3, "{bob:?}");

        // A body that does not decode is not counted by the back-fill.
        sqlx::query("UPDATE requests SET body = X'7b7b' WHERE id = ?")
            .bind(id_bytes(made[0].id).as_slice())
            .execute(&store.pool)
            .await
            .unwrap();
        for stmt in [
            "DELETE FROM risk_hours",
            "DELETE FROM risk_durations",
            "DELETE FROM risk_sources",
            "DELETE FROM risk_peers",
        ] {
            sqlx::query(stmt).execute(&store.pool).await.unwrap();
        }
        let mut conn = store.pool.acquire().await.unwrap();
        risk_backfill(&mut conn).await.unwrap();
        drop(conn);
        let alice = store.risk_facts(&queries[0]).await.unwrap();
        assert_eq!(
            (alice.requests, alice.entitlement_requests),
            (2, 1),
            "{alice:?}"
        );
    }

    /// A version 12 database with requests and an audit chain in it
    /// (hex hashes, JSON bodies in both stored audit forms) migrates to
    /// the packed layout: every record reads back as written, every query
    /// finds what it found, the old chain verifies with the same head, and
    /// records appended after it (packed, binary hashes) chain onto it.
    #[tokio::test]
    async fn migration_13_packs_a_version_12_database_and_keeps_its_chain() {
        use crate::types::{Grant, GrantId};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v12.db");
        let mut conn = old_database(&path, 12).await;
        let now = Utc::now();
        let mut records = Vec::new();
        for (i, state) in [
            State::Pending,
            State::Active,
            State::Revoked,
            State::Revoked,
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = record();
            r.requester = Principal::new(if i < 3 { "alice" } else { "bob" })
                .unwrap()
                .with_group("eng");
            r.request.context.insert("ip".into(), format!("10.0.0.{i}"));
            r.created_at = now - chrono::TimeDelta::minutes(10 - i as i64);
            r.state = state;
            if state != State::Pending {
                r.pending_until = None;
                r.grant = Some(Grant {
                    id: GrantId::new(),
                    starts_at: r.created_at,
                    ends_at: now + chrono::TimeDelta::minutes(i as i64),
                    issued: None,
                });
            }
            insert_old(&mut conn, &r, true).await;
            records.push(r);
        }
        // The audit chain as version 12 wrote it: hex hashes, compact JSON
        // bodies, and one whole record (the form before the compact one).
        let events: Vec<AuditEvent> = records
            .iter()
            .map(|r| {
                AuditEvent::new(r.created_at, AuditKind::Requested, r.id, "alice", r.state)
                    .details(serde_json::json!({ "ip": r.request.context["ip"] }))
            })
            .collect();
        let old = sql::chain(&events, 0, GENESIS_HASH, ENGINE, AuditRecord::to_stored).unwrap();
        for (i, (r, body)) in old.records.iter().zip(&old.bodies).enumerate() {
            let body = if i == 1 {
                r.to_json_line()
            } else {
                body.clone()
            };
            sqlx::query("INSERT INTO audit (seq, hash, body) VALUES (?, ?, ?)")
                .bind(r.seq as i64)
                .bind(&r.hash)
                .bind(body)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        for r in &records {
            assert_eq!(store.get(r.id).await.unwrap().as_ref(), Some(r));
        }
        let alice = ListFilter {
            requester: Some("alice".into()),
            ..ListFilter::default()
        };
        let listed: Vec<RequestId> = store
            .list(&alice)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, [records[2].id, records[1].id, records[0].id]);
        let due = store
            .due(&[State::Pending], now + chrono::TimeDelta::minutes(1), 10)
            .await
            .unwrap();
        assert_eq!(due, [records[0].clone()]);
        let running = ListFilter {
            states: vec![State::Revoked],
            ends_after: Some(now + chrono::TimeDelta::seconds(150)),
            ..ListFilter::default()
        };
        assert_eq!(store.list(&running).await.unwrap(), [records[3].clone()]);
        let history = store
            .history(&HistoryQuery::of_requester("alice", 10))
            .await
            .unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(history[0].context["ip"], "10.0.0.2");
        let facts = store
            .risk_facts(&RiskFactsQuery {
                groups: ["eng".to_string()].into(),
                sources: vec![
                    ("ip".into(), "10.0.0.1".into()),
                    ("ip".into(), "9.9.9.9".into()),
                ],
                ..RiskFactsQuery::new("alice", "db-admin")
            })
            .await
            .unwrap();
        assert_eq!(
            (facts.requests, facts.entitlement_requests),
            (3, 3),
            "{facts:?}"
        );
        assert_eq!(facts.sources_seen, [true, false]);
        assert!(facts.peer_used, "bob shares a group: {facts:?}");
        let count = |s: State| {
            let counts = state_counts(&store);
            async move { counts.await.into_iter().find(|(c, _)| *c == s).unwrap().1 }
        };
        assert_eq!(count(State::Revoked).await, 2);

        // The old chain verifies with its head unchanged.
        let summary = verified(&store).await;
        assert_eq!(summary.records, 4);
        assert_eq!(summary.head, old.records[3].hash);
        // Appends chain onto it, packed, and the whole chain verifies.
        let mut next = records[0].clone();
        next.version = 2;
        next.state = State::Cancelled;
        next.pending_until = None;
        let ev = AuditEvent::new(now, AuditKind::Cancelled, next.id, "alice", next.state)
            .details(serde_json::json!({ "reason": "no longer needed" }));
        let appended = store.update(1, &next, &[ev]).await.unwrap();
        assert_eq!(appended[0].prev_hash, old.records[3].hash);
        let summary = verified(&store).await;
        assert_eq!(
            (summary.records, summary.head),
            (5, appended[0].hash.clone())
        );
        let stored: Vec<(i64, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash, body FROM audit ORDER BY seq")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert!(stored.iter().all(|(_, hash, _)| hash.len() == 32));
        let firsts: Vec<u8> = stored.iter().map(|(_, _, body)| body[0]).collect();
        assert_eq!(firsts, [b'[', b'{', b'[', b'[', 0x02]);
        assert_eq!(store.get(next.id).await.unwrap(), Some(next));
        assert_eq!(count(State::Revoked).await, 2);
        assert_eq!(count(State::Cancelled).await, 1);
    }

    async fn state_counts(store: &SqliteStore) -> Vec<(State, u64)> {
        store.count_by_state().await.unwrap()
    }

    /// Migration 13 reads every RFC 3339 spelling a text column may hold
    /// (any number of fractional digits, `Z` or an offset, before 1970)
    /// as the exact nanoseconds chrono reads from it.
    #[tokio::test]
    async fn migration_13_reads_any_rfc3339_spelling() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        for text in [
            "2024-05-06T07:08:09.123456789Z",
            "2024-05-06T07:08:09Z",
            "2024-05-06T07:08:09.5Z",
            "2024-05-06T07:08:09.120+00:00",
            "2024-05-06T09:08:09.000001+02:00",
            "1969-12-31T23:59:59.999999999Z",
            "1950-01-01T00:00:00.25Z",
        ] {
            let got: Option<i64> = sqlx::query_scalar(concat!("SELECT ", text_to_nanos!("?")))
                .bind(text)
                .fetch_one(&store.pool)
                .await
                .unwrap();
            let want = DateTime::parse_from_rfc3339(text).unwrap().to_utc();
            assert_eq!(got, Some(nanos(want).unwrap()), "{text}");
        }
        let none: Option<i64> = sqlx::query_scalar(concat!("SELECT ", text_to_nanos!("?")))
            .bind(None::<String>)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(none, None);
    }

    /// Stored times are exact nanoseconds, in order also before 1970; a
    /// time the column cannot hold is refused on write, and a query bound
    /// outside the range still compares right.
    #[tokio::test]
    async fn times_are_nanoseconds_and_out_of_range_ones_are_refused() {
        let before = DateTime::parse_from_rfc3339("1969-12-31T23:59:59.999999999Z")
            .unwrap()
            .to_utc();
        let after = DateTime::parse_from_rfc3339("1970-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        assert!(nanos(before).unwrap() < nanos(after).unwrap());
        assert_eq!(nanos(before).unwrap(), -1);
        let far = DateTime::parse_from_rfc3339("2300-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        assert!(matches!(nanos(far), Err(Error::Store(_))));
        assert_eq!(nanos_bound(far), i64::MAX);
        let long_ago = DateTime::parse_from_rfc3339("1600-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(nanos_bound(long_ago), i64::MIN);

        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let mut r = record();
        r.created_at = far;
        assert!(matches!(store.insert(&r, &[]).await, Err(Error::Store(_))));
        let r = record();
        store.insert(&r, &[]).await.unwrap();
        assert_eq!(store.due(&[State::Pending], far, 10).await.unwrap(), [r]);
    }
}
