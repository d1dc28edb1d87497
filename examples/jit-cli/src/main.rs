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
//! `JIT_ACCESS_TOKEN_EXPIRES_AT` for token grants, and for a Google access
//! token (jit-gcp's token mode) also `CLOUDSDK_AUTH_ACCESS_TOKEN` (gcloud,
//! <https://cloud.google.com/sdk/docs/authorizing>) and
//! `GOOGLE_OAUTH_ACCESS_TOKEN` (Terraform's Google provider,
//! <https://registry.terraform.io/providers/hashicorp/google/latest/docs/guides/provider_reference>),
//! without the caller's `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`; `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and
//! `AWS_CREDENTIAL_EXPIRATION` for AWS grants (with `AWS_PROFILE` removed,
//! so a profile cannot shadow them). Assignments (an Azure role assignment,
//! a GCP binding) carry no secret: the child uses its own identity and is
//! told what it holds in `JIT_ACCESS_SCOPE` (the Azure scope or GCP
//! resource), `JIT_ACCESS_ROLE` (the role definition id or GCP role),
//! `JIT_ACCESS_ROLE_NAME` (a display name such as `Reader`, where known),
//! `JIT_ACCESS_PRINCIPAL` (the Entra object id or GCP member) and
//! `JIT_ACCESS_EXPIRES_AT`; one the server did not send is removed, never
//! inherited. `jit credentials ID` prints the same facts as lines (`--json`
//! for the JSON), and so does `jit request` when the grant is issued at
//! once. `JIT_TOKEN` is never passed on.
//!
//! `jit token-file ENTITLEMENT --for 1h --reason "..." --out PATH` writes
//! the access token alone to `PATH`, created `0600` under a temporary name
//! and renamed into place (never readable by others, never half-written),
//! for `gcloud --access-token-file PATH`. It prints the file and the end,
//! never the token.
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
//! # Archiving (admins)
//!
//! `jit admin archive --older-than 90d` has the server archive the
//! finished requests whose last change is older than that (its
//! `[retention] keep` without the flag), with their audit records, into
//! JSON Lines files in its `[retention] dir`, and prune them from its
//! store. It prints the files; each verifies on its own with `jit audit
//! verify --file FILE --key-file audit.key`, and the server's chain, which
//! now starts at the anchor the last file ends at, with `jit audit verify`.
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
//!
//! # Layout
//!
//! `commands` (the arguments and what each does), `client` (the server
//! connection and its typed answers), `credentials` (finding or requesting
//! a grant and handing its credentials to other programs), `cache`
//! (`credential-process`'s cache), `output` (tables and records). The JSON itself is defined once, in `jit_core::wire`.

use std::process::ExitCode;

use clap::Parser;

mod cache;
mod client;
mod commands;
mod credentials;
mod output;

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Fail {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
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
    match rt.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("jit: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
