//! `jit`: the command-line client of the JIT vending server.
//!
//! The server URL and bearer token come from `--server`/`--token`, else
//! `JIT_SERVER`/`JIT_TOKEN`, else the config file (`$JIT_CONFIG`, or
//! `$XDG_CONFIG_HOME/jit/config.toml`, or `~/.config/jit/config.toml`):
//!
//! ```toml
//! server = "https://jit.example.com"
//! token = "eyJ..."
//! ```
//!
//! # Credentials for other programs
//!
//! `jit exec ENTITLEMENT --for 1h --reason "..." -- CMD ARGS` runs `CMD` with
//! the credentials in its environment only, reusing an active grant of yours
//! with at least a minute left: `JIT_ACCESS_TOKEN` and
//! `JIT_ACCESS_TOKEN_EXPIRES_AT` for token grants; `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and
//! `AWS_CREDENTIAL_EXPIRATION` for AWS grants (with `AWS_PROFILE` removed,
//! so a profile cannot shadow them). `JIT_TOKEN` is never passed on.
//!
//! For AWS tools that refresh credentials themselves, name the CLI as the
//! profile's credential process in `~/.aws/config`:
//!
//! ```ini
//! [profile prod-readonly]
//! credential_process = jit credential-process prod-readonly --for 1h --reason "on-call: INC-1234"
//! ```
//!
//! It prints the `credential_process` JSON (version 1) of an active grant of
//! yours with at least 15 minutes left (`--min-remaining`; SDKs refresh at
//! 15 minutes and refuse less than 10), or of a new one, waiting for
//! approval when the policy wants it. Nothing else goes to stdout.
//!
//! The AWS CLI runs the process for every command, so the answer is cached
//! (like the CLI's own `~/.aws/cli/cache`): one 0600 file per server,
//! identity and entitlement under `$JIT_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/jit`, else `~/.cache/jit`. A cached answer is used only
//! while it has `--min-remaining` left and the server says its grant is still
//! active (one read; nothing is minted or audited), so a revoked grant is
//! never handed out again. `--no-cache` skips it.
//!
//! # Verifying the audit chain
//!
//! `jit audit verify` asks the server (admins) and exits 1 naming the first
//! broken record. `jit audit verify --file audit.jsonl --key-file audit.key
//! --checkpoints audit-checkpoints.jsonl` checks an export (`GET /v1/audit`)
//! here, without the server or a token: the seals with the audit key
//! (repeat `--key-file` for keys rotated out) and the end of the chain
//! against the server's signed checkpoints, so that records edited and
//! re-hashed, or deleted from the end, by someone with database access are
//! found. Keep the checkpoint file where that someone cannot rewrite it.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success (`exec`: the command's own exit code) |
//! | 1 | error (not found, invalid state, server or network error) |
//! | 2 | usage error |
//! | 3 | denied or forbidden |
//! | 4 | timed out waiting for approval |
//! | 5 | authentication failed (missing, invalid or expired token) |

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser, Subcommand};
use jit_core::wire::{
    self, AuditVerification, CredentialProcess, CredentialsAnswer, CredentialsView, ErrorEnvelope,
    ExtendBody, ReasonBody, RequestAnswer, RequestList, SubmitBody, WhoAmI,
};
use jit_core::{RequestRecord, State};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Just-in-time access from the command line.
#[derive(Debug, Parser)]
#[command(name = "jit", version, after_help = EXIT_CODES)]
struct Cli {
    /// Server URL, e.g. http://127.0.0.1:8080
    #[arg(long, env = "JIT_SERVER", global = true)]
    server: Option<String>,
    /// OIDC bearer token.
    #[arg(long, env = "JIT_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 error, 2 usage, 3 denied/forbidden, 4 timed out waiting, 5 authentication failed. `exec` returns the command's exit code.";

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ask for an entitlement.
    Request {
        /// Entitlement id.
        entitlement: String,
        /// How long, e.g. 30m, 1h30m.
        #[arg(long = "for")]
        duration: String,
        /// Justification.
        #[arg(long)]
        reason: String,
        /// Ticket reference.
        #[arg(long)]
        ticket: Option<String>,
        /// Wait until the request is decided.
        #[arg(long)]
        wait: bool,
        /// Longest wait, e.g. 10m.
        #[arg(long, default_value = "15m")]
        timeout: String,
    },
    /// Show one request.
    Status {
        /// Request id.
        id: String,
        /// Wait until the request is decided.
        #[arg(long)]
        wait: bool,
        /// Longest wait.
        #[arg(long, default_value = "15m")]
        timeout: String,
    },
    /// List requests.
    #[command(group(ArgGroup::new("scope").args(["mine", "approvals", "all"])))]
    Ls {
        /// My own requests (the default).
        #[arg(long)]
        mine: bool,
        /// Requests waiting for my approval.
        #[arg(long)]
        approvals: bool,
        /// Every request (admins).
        #[arg(long)]
        all: bool,
        /// Only these states, comma-separated (e.g. pending,active).
        #[arg(long)]
        state: Option<String>,
    },
    /// Approve a request.
    Approve {
        /// Request id.
        id: String,
        /// Comment.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Withdraw your own request.
    Cancel {
        /// Request id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke an active grant early.
    Revoke {
        /// Request id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Ask for more time on an active grant.
    Extend {
        /// Request id.
        id: String,
        /// How much more.
        #[arg(long = "for")]
        duration: String,
        /// Justification.
        #[arg(long)]
        reason: String,
    },
    /// Print the credentials of your active grant (JSON).
    Credentials {
        /// Request id.
        id: String,
    },
    /// Run a command with an entitlement's credentials in its environment only.
    Exec {
        #[command(flatten)]
        want: WantArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print AWS `credential_process` JSON for an entitlement, reusing an
    /// active grant of yours with enough time left, else requesting one
    /// (and waiting for approval). For `~/.aws/config`:
    /// `credential_process = jit credential-process prod-readonly --for 1h --reason "..."`
    #[command(name = "credential-process")]
    CredentialProcess {
        #[command(flatten)]
        want: WantArgs,
        /// Reuse a grant only with at least this long left. AWS SDKs refresh
        /// `credential_process` credentials 15 minutes before they expire
        /// and refuse ones with less than 10 minutes left.
        #[arg(long, default_value = "15m")]
        min_remaining: String,
        /// Do not read or write the local cache (see the crate docs).
        #[arg(long)]
        no_cache: bool,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Who the server thinks you are.
    Whoami,
}

/// What `exec` and `credential-process` ask for when no active grant of
/// the caller's can be reused.
#[derive(Debug, clap::Args)]
struct WantArgs {
    /// Entitlement id.
    entitlement: String,
    /// How long, if a new grant is needed.
    #[arg(long = "for")]
    duration: String,
    /// Justification, if a new grant is needed.
    #[arg(long)]
    reason: String,
    /// Ticket reference.
    #[arg(long)]
    ticket: Option<String>,
    /// Longest wait for approval.
    #[arg(long, default_value = "15m")]
    timeout: String,
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Verify the audit chain: on the server (admins), or with `--file` an
    /// export here, without the server (an auditor's copy).
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// A JSON Lines export (`GET /v1/audit`, or a file sink) to verify here.
    #[arg(long)]
    file: Option<PathBuf>,
    /// An audit key file (64 hex digits) to check each record's seal;
    /// repeat it for previous keys after a rotation.
    #[arg(long = "key-file", requires = "file")]
    key_files: Vec<PathBuf>,
    /// Signed checkpoints (the server's checkpoint file), to catch records
    /// deleted from the end.
    #[arg(long, requires = "file")]
    checkpoints: Option<PathBuf>,
    /// Records before this seq may be unsealed (a chain older than its key).
    #[arg(long, requires = "file")]
    sealed_from: Option<u64>,
}

/// `jit audit verify --file`: the server's verifier, run on an export.
fn verify_offline(file: &std::path::Path, args: &VerifyArgs) -> Res<AuditVerification> {
    use jit_core::audit::{read_checkpoint_file, AuditKey, AuditKeyring, ChainVerifier};
    let mut verifier = ChainVerifier::new();
    let mut keys = args.key_files.iter();
    if let Some(first) = keys.next() {
        let key = |p: &PathBuf| AuditKey::from_file(p).map_err(|e| Fail::new(2, e.to_string()));
        let mut ring = AuditKeyring::new(key(first)?);
        for p in keys {
            ring = ring.with_previous(key(p)?);
        }
        verifier = verifier.keyring(ring);
    }
    if let Some(p) = &args.checkpoints {
        verifier =
            verifier.checkpoints(read_checkpoint_file(p).map_err(|e| Fail::new(2, e.to_string()))?);
    }
    if let Some(seq) = args.sealed_from {
        verifier = verifier.sealed_from(seq);
    }
    let input = std::fs::File::open(file)
        .map_err(|e| Fail::new(2, format!("cannot open `{}`: {e}", file.display())))?;
    Ok(AuditVerification::of(
        &verifier.verify_jsonl(std::io::BufReader::new(input)),
    ))
}

/// Prints a verification answer (the server's or `verify_offline`'s); exit 1 when broken.
fn print_verification(v: &AuditVerification, json: bool, quiet: bool) -> u8 {
    if json {
        println!("{}", wire::to_value(v));
    } else if !quiet {
        match v {
            AuditVerification::Verified {
                records,
                head,
                sealed,
                checkpoint,
                ..
            } => {
                let mut extra = String::new();
                if *sealed > 0 {
                    extra.push_str(&format!(", {sealed} sealed"));
                }
                if let Some(n) = checkpoint {
                    extra.push_str(&format!(", checkpoint at seq {n}"));
                }
                println!("audit chain verified: {records} records, head {head}{extra}");
            }
            AuditVerification::Broken { message, .. } => {
                println!("audit chain BROKEN: {message}");
            }
        }
    }
    u8::from(!v.is_ok())
}

/// `credential-process`'s cache: AWS tools run the process for every
/// command, and each fresh answer would mint an STS session (and an audit
/// record) for the same grant. A cached answer is used while it has at least
/// `--min-remaining` left and the server still says its grant is active (one
/// read, nothing minted), so a revoked grant is never handed out again.
///
/// One file per server, identity and entitlement under `$JIT_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/jit`, else `~/.cache/jit`; the directory is 0700 and the
/// files 0600, like the AWS CLI's own `~/.aws/cli/cache`. Any problem with the
/// cache only means it is not used.
mod cache {
    use std::path::PathBuf;
    use std::time::Duration;

    use base64::Engine as _;
    use jit_core::wire::{CredentialProcess, RequestAnswer};
    use jit_core::{RequestId, State};
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    use super::Client;

    /// What a cache file holds.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Entry {
        credential_process: CredentialProcess,
        request_id: RequestId,
    }

    pub struct Cache {
        path: PathBuf,
    }

    fn dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("JIT_CACHE_DIR") {
            return Some(d.into());
        }
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("jit"))
    }

    /// Who the token says its holder is (unverified: it only names a cache
    /// file of the holder's own), else the token's digest.
    fn identity(token: &str) -> String {
        let claims = token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        match claims {
            Some(c) if c["sub"].is_string() => format!("{}|{}", c["iss"], c["sub"]),
            _ => hex(&Sha256::digest(token.as_bytes())),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    impl Cache {
        pub fn for_grant(server: &str, token: &str, entitlement: &str) -> Option<Self> {
            let key = format!("{server}\n{}\n{entitlement}", identity(token));
            let name = hex(&Sha256::digest(key.as_bytes())[..16]);
            Some(Self {
                path: dir()?.join(format!("{name}.json")),
            })
        }

        /// The cached answer, if it has `min_remaining` left and its grant is active.
        pub async fn fresh(
            &self,
            client: &Client,
            min_remaining: Duration,
        ) -> Option<CredentialProcess> {
            let text = std::fs::read_to_string(&self.path).ok()?;
            let entry: Entry = serde_json::from_str(&text).ok()?;
            let ends = entry.credential_process.expires_at()?;
            let soon = chrono::Utc::now() + chrono::TimeDelta::from_std(min_remaining).ok()?;
            let active = ends > soon
                && client
                    .get::<RequestAnswer>(&format!("/v1/requests/{}", entry.request_id))
                    .await
                    .is_ok_and(|r| r.body.request.state == State::Active);
            if active {
                Some(entry.credential_process)
            } else {
                let _ = std::fs::remove_file(&self.path);
                None
            }
        }

        /// Writes the answer: a private file, renamed into place.
        pub fn store(&self, request_id: RequestId, doc: &CredentialProcess) {
            let Some(dir) = self.path.parent() else {
                return;
            };
            let entry = jit_core::wire::to_value(&Entry {
                credential_process: doc.clone(),
                request_id,
            });
            let tmp = self
                .path
                .with_extension(format!("tmp{}", std::process::id()));
            let written = create_private_dir(dir)
                .and_then(|()| write_private(&tmp, entry.to_string().as_bytes()))
                .and_then(|()| std::fs::rename(&tmp, &self.path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir)
    }

    fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        o.open(path)?.write_all(bytes)
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use serde_json::json;

        use super::*;

        fn token(claims: Value) -> String {
            let b =
                |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!("{}.{}.sig", b(&json!({"alg": "EdDSA"})), b(&claims))
        }

        #[test]
        fn one_file_per_server_identity_and_entitlement() {
            let path = |server: &str, tok: &str, ent: &str| {
                Cache::for_grant(server, tok, ent).map(|c| c.path)
            };
            let a1 = token(json!({"iss": "idp", "sub": "alice", "exp": 1}));
            let a2 = token(json!({"iss": "idp", "sub": "alice", "exp": 2}));
            let b = token(json!({"iss": "idp", "sub": "bob", "exp": 1}));
            // A renewed token of the same person finds the same file.
            assert_eq!(path("s", &a1, "e"), path("s", &a2, "e"));
            assert_ne!(path("s", &a1, "e"), path("s", &b, "e"));
            assert_ne!(path("s", &a1, "e"), path("s", &a1, "f"));
            assert_ne!(path("s", &a1, "e"), path("t", &a1, "e"));
            // An opaque token is keyed by its digest, never written out.
            let opaque = path("s", "opaque-secret", "e").unwrap();
            assert!(!opaque.to_string_lossy().contains("opaque-secret"));
        }
    }
}

/// A failure with its exit code.
#[derive(Debug)]
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

type Res<T> = Result<T, Fail>;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("JIT_CONFIG") {
        return Some(p.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("jit").join("config.toml"))
}

fn file_config() -> Res<FileConfig> {
    let Some(p) = config_path() else {
        return Ok(FileConfig::default());
    };
    match std::fs::read_to_string(&p) {
        Ok(t) => toml::from_str(&t).map_err(|e| Fail::new(2, format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(Fail::new(2, format!("cannot read {}: {e}", p.display()))),
    }
}

/// Parses `90s`, `15m`, `1h30m`, `2d`.
fn parse_wait(s: &str) -> Res<Duration> {
    let bad = || {
        Fail::new(
            2,
            format!("`{s}` is not a duration: use forms like 30s, 15m, 1h"),
        )
    };
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// A typed answer and the JSON it came from (printed as is by `--json`).
struct Reply<T> {
    body: T,
    raw: Value,
}

impl Client {
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Res<Reply<T>> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Fail::new(1, format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Fail::new(1, format!("reading the answer: {e}")))?;
        if status.is_success() {
            let raw: Value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| Fail::new(1, format!("the server sent invalid JSON: {e}")))?
            };
            let body = serde_json::from_value(raw.clone())
                .map_err(|e| Fail::new(1, format!("the server sent an unexpected answer: {e}")))?;
            return Ok(Reply { body, raw });
        }
        let envelope = serde_json::from_str::<ErrorEnvelope>(&text).ok();
        let msg = envelope
            .as_ref()
            .map(|e| e.error.message.clone())
            .unwrap_or_else(|| format!("HTTP {status}"));
        let code = match status.as_u16() {
            401 => 5,
            403 => 3,
            _ => 1,
        };
        let reasons: String = envelope
            .iter()
            .flat_map(|e| e.reasons())
            .map(|x| format!("\n  - {x}"))
            .collect();
        Err(Fail::new(code, format!("{msg}{reasons}")))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Res<Reply<T>> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Res<Reply<T>> {
        self.call(reqwest::Method::POST, path, Some(wire::to_value(body)))
            .await
    }
}

fn ends(r: &RequestRecord) -> String {
    r.grant
        .as_ref()
        .map(|g| g.ends_at.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_table(rows: &[RequestRecord]) {
    println!(
        "{:<36}  {:<18}  {:<20}  {:<16}  {:<8}  ENDS (UTC)",
        "ID", "STATE", "ENTITLEMENT", "REQUESTER", "FOR"
    );
    for r in rows {
        println!(
            "{:<36}  {:<18}  {:<20}  {:<16}  {:<8}  {}",
            r.id.to_string(),
            r.state.to_string(),
            r.request.entitlement,
            r.requester.id.to_string(),
            format!("{}s", r.request.duration.as_secs()),
            ends(r)
        );
    }
}

fn print_record(r: &RequestRecord) {
    println!("request      {}", r.id);
    println!("state        {}", r.state);
    println!("entitlement  {}", r.request.entitlement);
    println!("requester    {}", r.requester.id);
    for x in &r.decision.reasons {
        println!("policy       {x}");
    }
    for a in &r.approvals {
        println!("approved by  {}", a.approver.id);
    }
    if r.grant.is_some() {
        println!("grant ends   {} UTC", ends(r));
    }
    if let Some(n) = &r.note {
        println!("note         {n}");
    }
}

fn emit(json: bool, reply: &Reply<RequestAnswer>) {
    if json {
        println!("{}", reply.raw);
    } else {
        let r = &reply.body.request;
        print_record(r);
        if reply.body.credentials.is_some() {
            println!(
                "credentials  issued; `jit credentials {}` prints them",
                r.id
            );
        }
    }
}

const WAITING: [State; 3] = [State::Pending, State::Approved, State::Issuing];

/// Polls until the request leaves the waiting states; a spinner on a TTY,
/// plain lines otherwise.
async fn wait_for(c: &Client, id: &str, timeout: Duration) -> Res<Reply<RequestAnswer>> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let spinner = tty.then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    let mut last = String::new();
    let out = loop {
        let v = c
            .get::<RequestAnswer>(&format!("/v1/requests/{id}"))
            .await?;
        let state = v.body.request.state.to_string();
        if !WAITING.contains(&v.body.request.state) {
            break Ok(v);
        }
        if state != last {
            let msg = format!("request {id}: {state}, waiting for approval");
            match &spinner {
                Some(pb) => pb.set_message(msg),
                None => eprintln!("{msg}"),
            }
            last = state;
        }
        if started.elapsed() >= timeout {
            break Err(Fail::new(
                4,
                format!(
                    "timed out after {}s waiting for request {id}",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(if tty { 1000 } else { 500 })).await;
    };
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    out
}

fn final_code(r: &RequestRecord) -> Res<()> {
    match r.state {
        State::Denied => Err(Fail::new(3, format!("request {} was denied", r.id))),
        State::TimedOut => Err(Fail::new(4, format!("request {} timed out", r.id))),
        State::Cancelled | State::Failed => {
            Err(Fail::new(1, format!("request {} is {}", r.id, r.state)))
        }
        _ => Ok(()),
    }
}

fn submit_body(
    entitlement: &str,
    duration: &str,
    reason: &str,
    ticket: &Option<String>,
) -> SubmitBody {
    SubmitBody {
        entitlement: entitlement.into(),
        duration: duration.into(),
        justification: reason.into(),
        ticket: ticket.clone(),
        start_at: None,
    }
}

/// An active grant of mine for the entitlement with at least
/// `min_remaining` left (the one ending last), else a new request (waited for).
async fn grant_for(
    c: &Client,
    w: &WantArgs,
    min_remaining: Duration,
) -> Res<(String, CredentialsView)> {
    let WantArgs {
        entitlement,
        duration,
        reason,
        ticket,
        timeout,
    } = w;
    let timeout = parse_wait(timeout)?;
    let mine = c
        .get::<RequestList>(&format!(
            "/v1/requests?scope=mine&state=active&entitlement={entitlement}"
        ))
        .await?;
    let soon = chrono::Utc::now()
        + chrono::TimeDelta::from_std(min_remaining).unwrap_or(chrono::TimeDelta::MAX);
    let reusable = mine
        .body
        .requests
        .iter()
        .filter_map(|r| {
            let ends = r.grant.as_ref()?.ends_at;
            (ends > soon).then_some((ends, r))
        })
        .max_by_key(|(ends, _)| *ends);
    if let Some((_, r)) = reusable {
        let id = r.id.to_string();
        match c
            .get::<CredentialsAnswer>(&format!("/v1/requests/{id}/credentials"))
            .await
        {
            Ok(creds) => return Ok((id, creds.body.credentials)),
            // Revoked or expired meanwhile, or too little time left for the
            // provider to mint again (AWS: 15 minutes): ask anew.
            Err(f) if f.code == 1 => {}
            Err(f) => return Err(f),
        }
    }
    let out = c
        .post::<RequestAnswer>(
            "/v1/requests",
            &submit_body(entitlement, duration, reason, ticket),
        )
        .await?
        .body;
    let id = out.request.id.to_string();
    if let Some(cr) = out.credentials {
        return Ok((id, cr));
    }
    let done = wait_for(c, &id, timeout).await?;
    final_code(&done.body.request)?;
    let creds = c
        .get::<CredentialsAnswer>(&format!("/v1/requests/{id}/credentials"))
        .await?;
    Ok((id, creds.body.credentials))
}

/// The AWS credentials of a view, every part present.
fn aws_creds(creds: &CredentialsView) -> Res<CredentialProcess> {
    let doc = creds
        .to_credentials()
        .and_then(|c| CredentialProcess::from_credentials(&c))
        .ok_or_else(|| {
            Fail::new(
                1,
                format!(
                    "the entitlement's credentials are of kind `{}`, not `aws`",
                    creds.kind()
                ),
            )
        })?;
    for (k, v) in [
        ("access_key_id", doc.access_key_id.as_str()),
        ("secret_access_key", doc.secret_access_key.expose()),
        ("session_token", doc.session_token.expose()),
    ] {
        if v.is_empty() {
            return Err(Fail::new(
                1,
                format!("the server's aws credentials lack `{k}`"),
            ));
        }
    }
    Ok(doc)
}

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and
/// `AWS_CREDENTIAL_EXPIRATION`, as every AWS SDK and the CLI read them.
fn aws_env(creds: &CredentialsView) -> Res<[(&'static str, String); 4]> {
    let a = aws_creds(creds)?;
    Ok([
        ("AWS_ACCESS_KEY_ID", a.access_key_id.clone()),
        (
            "AWS_SECRET_ACCESS_KEY",
            a.secret_access_key.expose().to_string(),
        ),
        ("AWS_SESSION_TOKEN", a.session_token.expose().to_string()),
        ("AWS_CREDENTIAL_EXPIRATION", a.expiration.clone()),
    ])
}

/// The `credential_process` protocol, version 1 (jit-core's one definition).
fn credential_process_json(creds: &CredentialsView) -> Res<CredentialProcess> {
    aws_creds(creds)
}

fn exec(id: &str, creds: &CredentialsView, command: &[String]) -> Res<u8> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Fail::new(2, "no command given"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    // The caller's own OIDC token is not the child's business.
    cmd.env_remove("JIT_TOKEN");
    cmd.env("JIT_REQUEST_ID", id);
    // The RFC 3339 form the server sends.
    let expires = |t: chrono::DateTime<chrono::Utc>| {
        wire::to_value(&t).as_str().unwrap_or_default().to_string()
    };
    match creds {
        CredentialsView::LocalToken { token, expires_at }
        | CredentialsView::AccessToken { token, expires_at } => {
            cmd.env("JIT_ACCESS_TOKEN", token.expose());
            cmd.env("JIT_ACCESS_TOKEN_EXPIRES_AT", expires(*expires_at));
        }
        CredentialsView::Assignment { expires_at, .. } => {
            cmd.env("JIT_ACCESS_EXPIRES_AT", expires(*expires_at));
        }
        CredentialsView::Aws { .. } => {
            // A profile named in the environment would win over these in
            // some SDKs (botocore drops its environment provider when a
            // profile is set explicitly), so the child gets neither.
            for k in ["AWS_PROFILE", "AWS_DEFAULT_PROFILE"] {
                cmd.env_remove(k);
            }
            for (k, v) in aws_env(creds)? {
                cmd.env(k, v);
            }
        }
        other => {
            return Err(Fail::new(
                1,
                format!(
                    "credentials of kind `{}` cannot be put into an environment yet",
                    other.kind()
                ),
            ))
        }
    }
    let status = cmd
        .status()
        .map_err(|e| Fail::new(1, format!("cannot run `{program}`: {e}")))?;
    if let Some(c) = status.code() {
        return Ok(c.clamp(0, 255) as u8);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return Ok((128 + sig).clamp(0, 255) as u8);
        }
    }
    Ok(1)
}

async fn run(cli: Cli) -> Res<u8> {
    if let Cmd::Audit {
        cmd: AuditCmd::Verify(args),
    } = &cli.cmd
    {
        if let Some(file) = &args.file {
            return Ok(print_verification(
                &verify_offline(file, args)?,
                cli.json,
                false,
            ));
        }
    }
    let file = file_config()?;
    let base = cli
        .server
        .or(file.server)
        .ok_or_else(|| Fail::new(2, "no server: use --server, JIT_SERVER or the config file"))?;
    let token = cli
        .token
        .or(file.token)
        .ok_or_else(|| Fail::new(5, "no token: use --token, JIT_TOKEN or the config file"))?;
    let c = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Fail::new(1, e.to_string()))?,
        base: base.trim_end_matches('/').to_string(),
        token,
    };
    let json = cli.json;
    match cli.cmd {
        Cmd::Request {
            entitlement,
            duration,
            reason,
            ticket,
            wait,
            timeout,
        } => {
            let timeout = parse_wait(&timeout)?;
            let out = c
                .post::<RequestAnswer>(
                    "/v1/requests",
                    &submit_body(&entitlement, &duration, &reason, &ticket),
                )
                .await?;
            if wait && WAITING.contains(&out.body.request.state) {
                let id = out.body.request.id.to_string();
                let done = wait_for(&c, &id, timeout).await?;
                emit(json, &done);
                final_code(&done.body.request)?;
            } else {
                emit(json, &out);
            }
        }
        Cmd::Status { id, wait, timeout } => {
            let v = if wait {
                wait_for(&c, &id, parse_wait(&timeout)?).await?
            } else {
                c.get(&format!("/v1/requests/{id}")).await?
            };
            emit(json, &v);
            if wait {
                final_code(&v.body.request)?;
            }
        }
        Cmd::Ls {
            approvals,
            all,
            state,
            ..
        } => {
            let scope = if approvals {
                "approvals"
            } else if all {
                "all"
            } else {
                "mine"
            };
            let mut path = format!("/v1/requests?scope={scope}");
            if let Some(st) = state {
                path.push_str(&format!("&state={st}"));
            }
            let v = c.get::<RequestList>(&path).await?;
            if json {
                println!("{}", v.raw);
            } else {
                print_table(&v.body.requests);
            }
        }
        Cmd::Approve { id, comment } => {
            let v = c
                .post(
                    &format!("/v1/requests/{id}/approve"),
                    &ReasonBody::comment(comment.unwrap_or_default()),
                )
                .await?;
            emit(json, &v);
        }
        Cmd::Deny { id, reason } => {
            let v = c
                .post(
                    &format!("/v1/requests/{id}/deny"),
                    &ReasonBody::reason(reason),
                )
                .await?;
            emit(json, &v);
        }
        Cmd::Cancel { id, reason } => {
            let v = c
                .post(
                    &format!("/v1/requests/{id}/cancel"),
                    &ReasonBody::reason(reason.unwrap_or_default()),
                )
                .await?;
            emit(json, &v);
        }
        Cmd::Revoke { id, reason } => {
            let v = c
                .post(
                    &format!("/v1/requests/{id}/revoke"),
                    &ReasonBody::reason(reason),
                )
                .await?;
            emit(json, &v);
        }
        Cmd::Extend {
            id,
            duration,
            reason,
        } => {
            let v = c
                .post(
                    &format!("/v1/requests/{id}/extend"),
                    &ExtendBody {
                        duration,
                        justification: reason,
                    },
                )
                .await?;
            emit(json, &v);
        }
        Cmd::Credentials { id } => {
            let v = c
                .get::<CredentialsAnswer>(&format!("/v1/requests/{id}/credentials"))
                .await?;
            println!("{:#}", v.raw["credentials"]);
        }
        Cmd::Exec { want, command } => {
            let (id, creds) = grant_for(&c, &want, Duration::from_secs(60)).await?;
            return exec(&id, &creds, &command);
        }
        Cmd::CredentialProcess {
            want,
            min_remaining,
            no_cache,
        } => {
            let min_remaining = parse_wait(&min_remaining)?;
            let cache = (!no_cache)
                .then(|| cache::Cache::for_grant(&c.base, &c.token, &want.entitlement))
                .flatten();
            let cached = match &cache {
                Some(cache) => cache.fresh(&c, min_remaining).await,
                None => None,
            };
            let doc = match cached {
                Some(doc) => doc,
                None => {
                    let (id, creds) = grant_for(&c, &want, min_remaining).await?;
                    let doc = credential_process_json(&creds)?;
                    if let (Some(cache), Ok(id)) = (&cache, id.parse()) {
                        cache.store(id, &doc);
                    }
                    doc
                }
            };
            // stdout carries this one line and nothing else: the SDK parses it.
            println!("{}", doc.to_json().expose());
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify(_),
        } => {
            let v = c.get::<AuditVerification>("/v1/audit/verify").await?;
            // `--json` prints the server's answer as it came.
            if json {
                println!("{}", v.raw);
            }
            if print_verification(&v.body, false, json) != 0 {
                return Ok(1);
            }
        }
        Cmd::Whoami => {
            let v = c.get::<WhoAmI>("/v1/whoami").await?;
            if json {
                println!("{}", v.raw);
            } else {
                println!(
                    "{} (groups: {}){}",
                    v.body.principal.id,
                    wire::to_value(&v.body.principal.groups),
                    if v.body.admin { ", admin" } else { "" }
                );
            }
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jit: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("jit: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn waits_parse_and_bad_ones_are_usage_errors() {
        assert_eq!(parse_wait("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_wait("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in ["", "10", "5x", "m"] {
            assert_eq!(parse_wait(bad).unwrap_err().code, 2, "{bad}");
        }
    }

    fn view(v: serde_json::Value) -> CredentialsView {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn aws_credentials_become_credential_process_json_and_env() {
        // What the server sends (`CredentialsView`), parsed as the CLI does.
        let creds = view(serde_json::json!({
            "kind": "aws", "access_key_id": "ASIAEXAMPLE", "secret_access_key": "sk",
            "session_token": "st", "expires_at": "2026-11-29T12:00:00Z",
        }));
        let doc = credential_process_json(&creds).unwrap();
        assert_eq!(
            doc.to_json().expose(),
            r#"{"AccessKeyId":"ASIAEXAMPLE","Expiration":"2026-11-29T12:00:00Z","SecretAccessKey":"sk","SessionToken":"st","Version":1}"#
        );
        let env = aws_env(&creds).unwrap();
        assert_eq!(env[0], ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE".to_string()));
        assert_eq!(
            env[3],
            (
                "AWS_CREDENTIAL_EXPIRATION",
                "2026-11-29T12:00:00Z".to_string()
            )
        );

        let token = view(serde_json::json!({"kind": "local_token", "token": "t",
                                             "expires_at": "2026-11-29T12:00:00Z"}));
        let err = credential_process_json(&token).unwrap_err();
        assert!(
            err.message.contains("kind `local_token`, not `aws`"),
            "{}",
            err.message
        );
        let partial = view(serde_json::json!({
            "kind": "aws", "access_key_id": "ASIAEXAMPLE", "secret_access_key": "sk",
            "session_token": "", "expires_at": "2026-11-29T12:00:00Z",
        }));
        let err = aws_env(&partial).unwrap_err();
        assert!(
            err.message.contains("lack `session_token`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn error_envelopes_give_the_message_and_reasons() {
        // The server's and the Lambda function's error shape (`ErrorEnvelope`).
        let answer = serde_json::json!({"error": {"code": "denied", "message": "denied by policy: no",
                                                  "details": {"reasons": ["no", "really"]}}});
        let e: ErrorEnvelope = serde_json::from_value(answer).unwrap();
        assert_eq!(e.reasons(), ["no", "really"]);
        assert_eq!(e.error.code, "denied");
    }

    #[test]
    fn cli_parses_exec_with_its_command() {
        let cli = Cli::try_parse_from([
            "jit", "exec", "demo-api", "--for", "10m", "--reason", "x", "--", "env", "-0",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Exec { command, want } => {
                assert_eq!(command, ["env", "-0"]);
                assert_eq!(want.entitlement, "demo-api");
            }
            other => panic!("{other:?}"),
        }
        // Two scopes at once is a usage error.
        assert!(Cli::try_parse_from(["jit", "ls", "--mine", "--all"]).is_err());
    }
}
