//! A PostgreSQL server for tests and benchmarks (features `testing` and
//! `postgres`), found the way users expect, once per process:
//!
//! 1. `JIT_TEST_POSTGRES_URL`, if set (it must accept connections: a wrong
//!    URL fails, it does not fall back);
//! 2. else the local server at `127.0.0.1:5432`, database `test`, as user
//!    `postgres` and then `root` (trust authentication);
//! 3. else a throwaway cluster started from the machine's PostgreSQL
//!    binaries (`initdb` and `pg_ctl` on `PATH` or under
//!    `/usr/lib/postgresql/*/bin`) in a temporary folder on a free port,
//!    stopped and deleted when the test process exits.
//!
//! With none of these, [`server_url`] panics naming what to install: a test
//! that needs PostgreSQL fails, it never passes by skipping.
//!
//! Each test takes a [`TestSchema`] of its own, so tests (and concurrent test
//! runs) sharing one server never see each other's data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;

use crate::store::postgres::{PostgresStore, PostgresStoreBuilder};
use crate::store::redact_url;
use crate::types::RequestId;

/// The variable that names a server explicitly.
pub const URL_ENV: &str = "JIT_TEST_POSTGRES_URL";

/// The local server, tried as these users in order.
pub const LOCAL_URLS: [&str; 2] = [
    "postgres://postgres@127.0.0.1:5432/test",
    "postgres://root@127.0.0.1:5432/test",
];

/// Test schemas are named `jit_test_<unix seconds>_<random>`; those older
/// than this were left by a crashed run and are dropped.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// The server in use and how it was found.
#[derive(Debug)]
pub struct Server {
    /// Where to connect (no password for the local and throwaway servers).
    pub url: String,
    /// How it was found, for messages.
    pub source: String,
    /// Kept alive for the process; its watchdog stops it at exit.
    _cluster: Option<Cluster>,
}

static SERVER: OnceCell<Result<Server, String>> = OnceCell::const_new();

/// The server for this process (found on first use; see the module docs).
///
/// # Panics
///
/// When no server can be found or started, with what to install or set.
pub async fn server() -> &'static Server {
    match SERVER.get_or_init(find).await {
        Ok(server) => server,
        Err(why) => panic!("{why}"),
    }
}

/// The URL of [`server`].
pub async fn server_url() -> &'static str {
    &server().await.url
}

async fn accepts(url: &str) -> Result<(), String> {
    let attempt = async {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5s".into()),
    }
}

async fn find() -> Result<Server, String> {
    let server = find_server().await?;
    sweep_stale_schemas(&server.url).await;
    Ok(server)
}

async fn find_server() -> Result<Server, String> {
    if let Ok(url) = std::env::var(URL_ENV) {
        return match accepts(&url).await {
            Ok(()) => Ok(Server {
                source: format!("{URL_ENV}={}", redact_url(&url)),
                url,
                _cluster: None,
            }),
            Err(e) => Err(format!(
                "{URL_ENV}=`{}` does not accept connections: {e}",
                redact_url(&url)
            )),
        };
    }
    let mut tried = Vec::new();
    for url in LOCAL_URLS {
        match accepts(url).await {
            Ok(()) => {
                return Ok(Server {
                    url: url.to_string(),
                    source: format!("local server {url}"),
                    _cluster: None,
                })
            }
            Err(e) => tried.push(format!("{url}: {e}")),
        }
    }
    let started = tokio::task::spawn_blocking(Cluster::start)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match started {
        Ok(cluster) => Ok(Server {
            url: cluster.url.clone(),
            source: format!("throwaway cluster in {}", cluster.dir.display()),
            _cluster: Some(cluster),
        }),
        Err(why) => Err(format!(
            "no PostgreSQL server for the tests. {URL_ENV} is not set; the local server does not answer ({}); and no throwaway cluster could be started: {why}. \
             Set {URL_ENV}=postgres://user@host:port/database, or run a local server on 127.0.0.1:5432 with trust authentication and a database `test`, \
             or install the PostgreSQL server binaries `initdb` and `pg_ctl` (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`)",
            tried.join("; ")
        )),
    }
}

/// Drops test schemas that a crashed or killed run left behind.
async fn sweep_stale_schemas(url: &str) {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return;
    };
    let names: Vec<String> = sqlx::query_scalar(
        r"SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE 'jit\_test\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for name in names {
        let created = name
            .strip_prefix("jit_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|c| c + STALE_AFTER.as_secs() < now) {
            // Another run may be sweeping too: failures do not matter.
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&mut conn)
                .await;
        }
    }
}

/// A schema of its own on the test server, for one test.
///
/// Call [`TestSchema::drop_schema`] at the end; a schema left by a panicking
/// test is swept by a later run after an hour.
#[derive(Debug)]
pub struct TestSchema {
    url: &'static str,
    name: String,
}

impl TestSchema {
    /// A fresh, unique schema name on [`server`] (created by the first store opened on it).
    pub async fn new() -> Self {
        let url = server_url().await;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let random = RequestId::new().0.simple().to_string();
        Self {
            url,
            name: format!("jit_test_{secs}_{}", &random[..12]),
        }
    }

    /// The schema name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server URL (the schema is not part of it).
    pub fn url(&self) -> &str {
        self.url
    }

    /// A store builder for this schema (a small pool: many tests run at once).
    pub fn builder(&self) -> PostgresStoreBuilder {
        PostgresStore::builder(self.url)
            .schema(&self.name)
            .max_connections(8)
    }

    /// Like [`TestSchema::builder`], but sessions do not wait for the WAL
    /// flush at commit (`synchronous_commit = off`). Locks, visibility and
    /// ordering are unchanged, only a server crash could lose the last
    /// commits: for tests that push thousands of transitions through to
    /// check concurrency, not durability, on machines with slow fsync.
    pub fn bulk_builder(&self) -> PostgresStoreBuilder {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        PostgresStore::builder(&format!(
            "{}{sep}options=-csynchronous_commit%3Doff",
            self.url
        ))
        .schema(&self.name)
        .max_connections(8)
    }

    /// A new store (its own pool) on this schema: call twice for two replicas.
    pub async fn store(&self) -> PostgresStore {
        self.builder()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot open the test schema `{}`: {e}", self.name))
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        let mut conn = PgConnection::connect(self.url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// A PostgreSQL cluster in a temporary folder, from the machine's binaries.
#[derive(Debug)]
pub struct Cluster {
    url: String,
    dir: PathBuf,
    pg_ctl: PathBuf,
    run_as: Option<String>,
}

impl Cluster {
    /// Creates and starts a cluster on a free port of 127.0.0.1, with trust
    /// authentication for user `postgres` (database `postgres`). A watchdog
    /// process stops it and deletes its folder when this process exits.
    ///
    /// When running as root (which `initdb` refuses), the cluster runs as the
    /// `postgres` system user through `runuser`. Blocking: call it from
    /// `spawn_blocking` in async code. The error says what is missing.
    pub fn start() -> Result<Cluster, String> {
        let initdb = find_binary("initdb").ok_or(
            "`initdb` was not found on PATH or under /usr/lib/postgresql/*/bin".to_string(),
        )?;
        let pg_ctl = initdb
            .parent()
            .map(|dir| dir.join("pg_ctl"))
            .filter(|p| p.is_file())
            .or_else(|| find_binary("pg_ctl"))
            .ok_or("`pg_ctl` was not found next to `initdb` or on PATH".to_string())?;
        let run_as = if running_as_root() {
            if run(Command::new("id").args(["-u", "postgres"])).is_err() {
                return Err("running as root, which `initdb` refuses, and there is no `postgres` user to run the cluster as".into());
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let random = RequestId::new().0.simple().to_string();
        let dir =
            std::env::temp_dir().join(format!("jit-pg-{}-{}", std::process::id(), &random[..8]));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let cluster = Cluster {
            url: String::new(),
            dir,
            pg_ctl,
            run_as,
        };
        // From here on, the watchdog cleans up even if starting fails.
        cluster.spawn_watchdog()?;
        if let Some(user) = &cluster.run_as {
            run(Command::new("chown").arg(user).arg(&cluster.dir))?;
        }
        let data = cluster.dir.join("data");
        cluster.run_pg(
            &initdb,
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        let port = free_port()?;
        let server_options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k '{}' -c fsync=off -c max_connections=200",
            cluster.dir.display()
        );
        let log = cluster.dir.join("server.log");
        cluster
            .run_pg(
                &cluster.pg_ctl,
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "-o".as_ref(),
                    server_options.as_ref(),
                    "start".as_ref(),
                ],
            )
            .map_err(|e| {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                format!("{e}; server log: {tail}")
            })?;
        Ok(Cluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            ..cluster
        })
    }

    /// Where to connect.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server now (the watchdog still deletes the folder at exit).
    pub fn stop(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        self.run_pg(
            &self.pg_ctl,
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    /// The command line that runs `program` as the cluster's owner.
    fn argv(&self, program: &Path) -> Vec<OsString> {
        let mut argv: Vec<OsString> = match &self.run_as {
            Some(user) => ["runuser", "-u", user, "--"].map(OsString::from).to_vec(),
            None => Vec::new(),
        };
        argv.push(program.into());
        argv
    }

    fn run_pg(&self, program: &Path, args: &[&OsStr]) -> Result<(), String> {
        let argv = self.argv(program);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]).args(args);
        run(&mut c)
    }

    /// A detached shell that waits for this process to end, then stops the
    /// server and deletes the folder (the test harness has no teardown hook).
    fn spawn_watchdog(&self) -> Result<(), String> {
        let mut stop = self.argv(&self.pg_ctl);
        stop.extend(
            [
                "-D".into(),
                self.dir.join("data").into(),
                "-m".into(),
                "immediate".into(),
                "stop".into(),
            ]
            .into_iter()
            .map(|a: OsString| a),
        );
        Command::new("sh")
            .arg("-c")
            .arg(r#"pid=$1; dir=$2; shift 2; while kill -0 "$pid" 2>/dev/null; do sleep 1; done; "$@"; rm -rf "$dir""#)
            .arg("jit-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .args(stop)
            // No inherited pipes: the harness must not wait for the watchdog.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| format!("cannot start the cluster watchdog: {e}"))
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{:?}`: {e}", command.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{:?}` failed ({}): {}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `initdb` and `pg_ctl` can be found (so [`Cluster::start`] should work).
pub fn binaries_installed() -> bool {
    find_binary("initdb").is_some() && find_binary("pg_ctl").is_some()
}

/// `name` on PATH, else in the newest `/usr/lib/postgresql/<version>/bin`.
fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    on_path
        .into_iter()
        .chain(versioned.into_iter().map(|(_, dir)| dir))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether the effective user id is 0 (Linux; elsewhere assumed not).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}
