//! Credentials for other programs: an active grant of the caller's or a
//! new one, in a child's environment or as `credential_process` JSON.

use std::time::Duration;

use jit_core::wire::{
    self, CredentialProcess, CredentialsAnswer, CredentialsView, RequestAnswer, RequestList,
};

use crate::client::Client;
use crate::commands::{final_code, parse_wait, submit_body, wait_for, WantArgs};
use crate::{Fail, Res};

/// An active grant of mine for the entitlement with at least
/// `min_remaining` left (the one ending last), else a new request (waited for).
pub(crate) async fn grant_for(
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
pub(crate) fn aws_creds(creds: &CredentialsView) -> Res<CredentialProcess> {
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
pub(crate) fn aws_env(creds: &CredentialsView) -> Res<[(&'static str, String); 4]> {
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

/// A Google OAuth access token (jit-gcp's token mode) under the names
/// Google's tools read:
///
/// - `CLOUDSDK_AUTH_ACCESS_TOKEN`: the gcloud CLI uses it instead of its
///   stored credentials (<https://cloud.google.com/sdk/docs/authorizing>);
/// - `GOOGLE_OAUTH_ACCESS_TOKEN`: Terraform's Google provider reads it as
///   its `access_token` setting
///   (<https://registry.terraform.io/providers/hashicorp/google/latest/docs/guides/provider_reference>).
pub(crate) fn google_env(token: &str) -> [(&'static str, String); 2] {
    [
        ("CLOUDSDK_AUTH_ACCESS_TOKEN", token.to_string()),
        ("GOOGLE_OAUTH_ACCESS_TOKEN", token.to_string()),
    ]
}

/// Writes an access token to `path` for `gcloud --access-token-file`
/// (<https://cloud.google.com/sdk/gcloud/reference#--access-token-file>):
/// the token alone, in a file only its owner can read from the moment it
/// exists ([`crate::cache::replace_private`]). Only access-token
/// credentials (`access_token`, `local_token`) can be written.
pub(crate) fn write_token_file(creds: &CredentialsView, path: &std::path::Path) -> Res<()> {
    let token = match creds {
        CredentialsView::AccessToken { token, .. } | CredentialsView::LocalToken { token, .. } => {
            token
        }
        other => {
            return Err(Fail::new(
                1,
                format!(
                    "credentials of kind `{}` are not an access token",
                    other.kind()
                ),
            ))
        }
    };
    crate::cache::replace_private(path, token.expose().as_bytes()).map_err(|e| {
        Fail::new(
            1,
            format!("cannot write the token file `{}`: {e}", path.display()),
        )
    })
}

/// The `credential_process` protocol, version 1 (jit-core's one definition).
pub(crate) fn credential_process_json(creds: &CredentialsView) -> Res<CredentialProcess> {
    aws_creds(creds)
}

/// The variables `jit exec` gives a child for an `assignment` (access on
/// the child's own identity, nothing secret): where, which role, for whom,
/// until when. `None`: the server did not say (an older server, or a
/// provider without that field); the variable is then removed.
pub(crate) fn assignment_env(creds: &CredentialsView) -> Vec<(&'static str, Option<String>)> {
    let CredentialsView::Assignment {
        scope,
        role,
        role_name,
        principal,
        expires_at,
        ..
    } = creds
    else {
        return Vec::new();
    };
    vec![
        ("JIT_ACCESS_SCOPE", scope.clone()),
        ("JIT_ACCESS_ROLE", role.clone()),
        ("JIT_ACCESS_ROLE_NAME", role_name.clone()),
        ("JIT_ACCESS_PRINCIPAL", principal.clone()),
        (
            "JIT_ACCESS_EXPIRES_AT",
            wire::to_value(expires_at).as_str().map(str::to_string),
        ),
    ]
}

pub(crate) fn exec(id: &str, creds: &CredentialsView, command: &[String]) -> Res<u8> {
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
        CredentialsView::LocalToken { token, expires_at } => {
            cmd.env("JIT_ACCESS_TOKEN", token.expose());
            cmd.env("JIT_ACCESS_TOKEN_EXPIRES_AT", expires(*expires_at));
        }
        CredentialsView::AccessToken { token, expires_at } => {
            cmd.env("JIT_ACCESS_TOKEN", token.expose());
            cmd.env("JIT_ACCESS_TOKEN_EXPIRES_AT", expires(*expires_at));
            for (k, v) in google_env(token.expose()) {
                cmd.env(k, v);
            }
            // A token file named in the caller's environment would compete
            // with the token given here.
            cmd.env_remove("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE");
        }
        CredentialsView::Assignment { .. } => {
            for (k, v) in assignment_env(creds) {
                match v {
                    Some(v) => cmd.env(k, v),
                    // Never a value inherited from jit's own environment
                    // that this grant did not set.
                    None => cmd.env_remove(k),
                };
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("jit-cli-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[cfg(unix)]
    #[test]
    fn exec_gives_a_google_token_to_gcloud_and_terraform_only() {
        let google = view(
            serde_json::json!({"kind": "access_token", "token": "ya29.secret",
                                              "expires_at": "2026-11-29T12:00:00Z"}),
        );
        let dir = temp_dir();
        let out = dir.join("env");
        let script = format!("env > {}", out.display());
        let sh = |c: &CredentialsView| {
            let code = exec("r-1", c, &["sh".into(), "-c".into(), script.clone()]).unwrap();
            assert_eq!(code, 0);
            std::fs::read_to_string(&out).unwrap()
        };
        let env = sh(&google);
        for line in [
            "JIT_ACCESS_TOKEN=ya29.secret",
            "CLOUDSDK_AUTH_ACCESS_TOKEN=ya29.secret",
            "GOOGLE_OAUTH_ACCESS_TOKEN=ya29.secret",
            "JIT_ACCESS_TOKEN_EXPIRES_AT=2026-11-29T12:00:00Z",
            "JIT_REQUEST_ID=r-1",
        ] {
            assert!(env.lines().any(|l| l == line), "{line} missing");
        }
        assert!(!env.contains("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE="));
        // A local token is not a Google token: Google's tools never see it.
        let local = view(
            serde_json::json!({"kind": "local_token", "token": "jit.local",
                                             "expires_at": "2026-11-29T12:00:00Z"}),
        );
        let env = sh(&local);
        assert!(env.lines().any(|l| l == "JIT_ACCESS_TOKEN=jit.local"));
        assert!(!env.contains("CLOUDSDK_AUTH_ACCESS_TOKEN="));
        assert!(!env.contains("GOOGLE_OAUTH_ACCESS_TOKEN="));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_token_file_is_private_from_the_start_and_replaced_whole() {
        let dir = temp_dir();
        let path = dir.join("gcp-token");
        std::fs::write(&path, "old token, world readable").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let google = view(
            serde_json::json!({"kind": "access_token", "token": "ya29.secret",
                                              "expires_at": "2026-11-29T12:00:00Z"}),
        );
        write_token_file(&google, &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ya29.secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        // Nothing left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["gcp-token"]);
        // Other kinds are refused without writing; a bad path is an error.
        let aws = view(serde_json::json!({
            "kind": "aws", "access_key_id": "ASIAEXAMPLE", "secret_access_key": "sk",
            "session_token": "st", "expires_at": "2026-11-29T12:00:00Z",
        }));
        let e = write_token_file(&aws, &dir.join("aws")).unwrap_err();
        assert!(e.message.contains("not an access token"), "{}", e.message);
        assert!(!dir.join("aws").exists());
        let e = write_token_file(&google, &dir.join("missing/dir/token")).unwrap_err();
        assert!(e.message.contains("cannot write"), "{}", e.message);
        assert!(!e.message.contains("ya29.secret"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn view(v: serde_json::Value) -> CredentialsView {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn assignments_become_scope_role_principal_and_end_variables() {
        let creds = view(serde_json::json!({
            "kind": "assignment", "description": "role `Reader` at `/subscriptions/s`",
            "scope": "/subscriptions/s", "role": "/providers/Microsoft.Authorization/roleDefinitions/r",
            "role_name": "Reader", "principal": "a3bb8764-cb92-4276-9d2a-ca1e895e55ea",
            "expires_at": "2026-11-29T12:00:00Z",
        }));
        let env = assignment_env(&creds);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(get("JIT_ACCESS_SCOPE").as_deref(), Some("/subscriptions/s"));
        assert_eq!(
            get("JIT_ACCESS_ROLE").as_deref(),
            Some("/providers/Microsoft.Authorization/roleDefinitions/r")
        );
        assert_eq!(get("JIT_ACCESS_ROLE_NAME").as_deref(), Some("Reader"));
        assert_eq!(
            get("JIT_ACCESS_PRINCIPAL").as_deref(),
            Some("a3bb8764-cb92-4276-9d2a-ca1e895e55ea")
        );
        assert_eq!(
            get("JIT_ACCESS_EXPIRES_AT").as_deref(),
            Some("2026-11-29T12:00:00Z")
        );
        // An older server's answer: the end only; the rest is unset, never
        // left as inherited.
        let old = view(serde_json::json!({
            "kind": "assignment", "description": "x", "expires_at": "2026-11-29T12:00:00Z",
        }));
        let env = assignment_env(&old);
        assert_eq!(env.len(), 5);
        for (k, v) in &env {
            assert_eq!(v.is_some(), *k == "JIT_ACCESS_EXPIRES_AT", "{k}");
        }
        // Other kinds have none of these.
        let token = view(serde_json::json!({"kind": "local_token", "token": "t",
                                             "expires_at": "2026-11-29T12:00:00Z"}));
        assert!(assignment_env(&token).is_empty());
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
}
