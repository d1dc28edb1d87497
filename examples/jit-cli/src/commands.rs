//! The command line: its arguments, and what each command does.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser, Subcommand};
use jit_core::wire::{
    self, ArchiveAnswer, ArchiveBody, AuditVerification, CredentialsAnswer, ExtendBody, ReasonBody,
    RequestAnswer, RequestList, SubmitBody, WhoAmI,
};
use jit_core::{RequestRecord, State};

use crate::cache;
use crate::client::{file_config, Client, Reply};
use crate::credentials::{credential_process_json, exec, grant_for, write_token_file};
use crate::output::{assignment_lines, emit, print_table, print_verification};
use crate::{Fail, Res};

/// Just-in-time access from the command line.
#[derive(Debug, Parser)]
#[command(name = "jit", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
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

pub(crate) const EXIT_CODES: &str = "Exit codes: 0 ok, 1 error, 2 usage, 3 denied/forbidden, 4 timed out waiting, 5 authentication failed. `exec` returns the command's exit code.";

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
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
    /// Print the credentials of your active grant: JSON, or for an
    /// `assignment` (Azure role assignment, GCP binding: nothing secret) the
    /// scope, role, principal and end as lines unless `--json`.
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
    /// Write the access token of an entitlement (jit-gcp's token mode, or a
    /// local token) to a private file (0600 from the moment it exists,
    /// replaced whole), reusing an active grant of yours with at least a
    /// minute left, else requesting one. For
    /// `gcloud --access-token-file PATH` (or `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`).
    /// Prints the file and the token's end; never the token.
    #[command(name = "token-file")]
    TokenFile {
        #[command(flatten)]
        want: WantArgs,
        /// Where to write the token.
        #[arg(long)]
        out: PathBuf,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Server administration (admins).
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Who the server thinks you are.
    Whoami,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCmd {
    /// Archive finished requests and their audit records out of the
    /// server's store, into its `[retention] dir` (JSON Lines files that
    /// `jit audit verify --file` checks on their own), and prune them.
    Archive {
        /// Finished requests whose last change is older than this go, e.g.
        /// 90d; the server's `[retention] keep` when absent.
        #[arg(long)]
        older_than: Option<String>,
    },
}

/// What `exec` and `credential-process` ask for when no active grant of
/// the caller's can be reused.
#[derive(Debug, clap::Args)]
pub(crate) struct WantArgs {
    /// Entitlement id.
    pub(crate) entitlement: String,
    /// How long, if a new grant is needed.
    #[arg(long = "for")]
    pub(crate) duration: String,
    /// Justification, if a new grant is needed.
    #[arg(long)]
    pub(crate) reason: String,
    /// Ticket reference.
    #[arg(long)]
    pub(crate) ticket: Option<String>,
    /// Longest wait for approval.
    #[arg(long, default_value = "15m")]
    pub(crate) timeout: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Verify the audit chain: on the server (admins), or with `--file` an
    /// export here, without the server (an auditor's copy).
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
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
pub(crate) fn verify_offline(file: &std::path::Path, args: &VerifyArgs) -> Res<AuditVerification> {
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

/// Parses `90s`, `15m`, `1h30m`, `2d`.
pub(crate) fn parse_wait(s: &str) -> Res<Duration> {
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

pub(crate) const WAITING: [State; 3] = [State::Pending, State::Approved, State::Issuing];

/// Polls until the request leaves the waiting states; a spinner on a TTY,
/// plain lines otherwise.
pub(crate) async fn wait_for(c: &Client, id: &str, timeout: Duration) -> Res<Reply<RequestAnswer>> {
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

pub(crate) fn final_code(r: &RequestRecord) -> Res<()> {
    match r.state {
        State::Denied => Err(Fail::new(3, format!("request {} was denied", r.id))),
        State::TimedOut => Err(Fail::new(4, format!("request {} timed out", r.id))),
        State::Cancelled | State::Failed => {
            Err(Fail::new(1, format!("request {} is {}", r.id, r.state)))
        }
        _ => Ok(()),
    }
}

pub(crate) fn submit_body(
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

pub(crate) async fn run(cli: Cli) -> Res<u8> {
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
            match assignment_lines(&v.body.credentials).filter(|_| !json) {
                Some(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                }
                None => println!("{:#}", v.raw["credentials"]),
            }
        }
        Cmd::Exec { want, command } => {
            let (id, creds) = grant_for(&c, &want, Duration::from_secs(60)).await?;
            return exec(&id, &creds, &command);
        }
        Cmd::TokenFile { want, out } => {
            let (id, creds) = grant_for(&c, &want, Duration::from_secs(60)).await?;
            write_token_file(&creds, &out)?;
            let ends = wire::to_value(&creds.expires_at());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"request": id, "file": out, "expires_at": ends})
                );
            } else {
                println!(
                    "token of request {id} written to {} (until {})",
                    out.display(),
                    ends.as_str().unwrap_or_default()
                );
            }
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
        Cmd::Admin {
            cmd: AdminCmd::Archive { older_than },
        } => {
            if let Some(t) = &older_than {
                // A typo is a usage error here, not a run with the default.
                jit_core::types::parse_duration(t)
                    .map_err(|e| Fail::new(2, format!("--older-than `{t}`: {e}")))?;
            }
            let body = ArchiveBody { older_than };
            let v = c.post::<ArchiveAnswer>("/v1/admin/archive", &body).await?;
            if json {
                println!("{}", v.raw);
            } else {
                let a = &v.body;
                println!(
                    "archived {} requests and {} audit records finished before {}",
                    a.requests,
                    a.audit_records,
                    a.cut_off.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                for f in &a.archives {
                    println!(
                        "  {} (audit {}..={}, {} requests)",
                        f.path, f.from_seq, f.to_seq, f.requests
                    );
                }
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
        let cli = Cli::try_parse_from([
            "jit",
            "token-file",
            "gcp-deployer",
            "--for",
            "30m",
            "--reason",
            "x",
            "--out",
            "/tmp/t",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::TokenFile { want, out } => {
                assert_eq!(want.entitlement, "gcp-deployer");
                assert_eq!(out, PathBuf::from("/tmp/t"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["jit", "token-file", "e", "--for", "1m", "--reason", "x"])
                .is_err()
        );
        // Two scopes at once is a usage error.
        assert!(Cli::try_parse_from(["jit", "ls", "--mine", "--all"]).is_err());
    }
}
