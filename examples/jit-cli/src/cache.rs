//! `credential-process`'s cache: AWS tools run the process for every
//! command, and each fresh answer would mint an STS session (and an audit
//! record) for the same grant. A cached answer is used while it has at least
//! `--min-remaining` left and the server still says its grant is active (one
//! read, nothing minted), so a revoked grant is never handed out again.
//!
//! One file per server, identity and entitlement under `$JIT_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/jit`, else `~/.cache/jit`; the directory is 0700 and the
//! files 0600, like the AWS CLI's own `~/.aws/cli/cache`. Any problem with the
//! cache only means it is not used.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use jit_core::wire::{CredentialProcess, RequestAnswer};
use jit_core::{RequestId, State};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::client::Client;

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
        let _ = create_private_dir(dir)
            .and_then(|()| replace_private(&self.path, entry.to_string().as_bytes()));
    }
}

/// Writes `bytes` to `path` so that no one else can read them at any
/// moment: a new file created `0600` (`O_CREAT|O_EXCL`, so the umask can
/// only take bits away and an existing file or link is never followed),
/// then renamed over `path` in one step (a reader sees the old file or the
/// new one, never a half-written one). The temporary file is removed when
/// anything fails.
pub(crate) fn replace_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = write_private(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn token(claims: Value) -> String {
        let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", b(&json!({"alg": "EdDSA"})), b(&claims))
    }

    #[test]
    fn one_file_per_server_identity_and_entitlement() {
        let path =
            |server: &str, tok: &str, ent: &str| Cache::for_grant(server, tok, ent).map(|c| c.path);
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
