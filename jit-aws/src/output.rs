//! The forms AWS tools read credentials in.
//!
//! Every function takes [`Credentials::Aws`] and returns the secret text in
//! a [`Secret`] (zeroized on drop, `Debug` redacted): print it only where it
//! must leave the process (the stdout of a `credential_process`, a child's
//! environment, a credentials file the user asked for).
//!
//! - [`credential_process_json`]: the `credential_process` protocol, version 1:
//!   `{"Version":1,"AccessKeyId":..,"SecretAccessKey":..,"SessionToken":..,"Expiration":"<RFC 3339>"}`.
//! - [`env_vars`] / [`shell_exports`]: `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and
//!   `AWS_CREDENTIAL_EXPIRATION`.
//! - [`profile`]: a `~/.aws/credentials` section.

use chrono::SecondsFormat;
use jit_core::{Credentials, Error, Secret};

use crate::error::printable;

/// Environment variable names, in the order [`env_vars`] returns them.
pub const ENV_VARS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
];

struct Parts<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a Secret,
    session_token: &'a Secret,
    expiration: String,
}

fn parts(c: &Credentials) -> Result<Parts<'_>, Error> {
    match c {
        Credentials::Aws {
            access_key_id,
            secret_access_key,
            session_token,
            expires_at,
        } => Ok(Parts {
            access_key_id,
            secret_access_key,
            session_token,
            expiration: expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
        _ => Err(Error::ProviderRejected {
            provider: "aws".into(),
            operation: "output",
            message: "these are not aws credentials".into(),
        }),
    }
}

/// The `credential_process` JSON (version 1), one line: jit-core's
/// [`CredentialProcess`](jit_core::wire::CredentialProcess), the one
/// definition the Lambda function and the `jit` CLI print too.
pub fn credential_process_json(c: &Credentials) -> Result<Secret, Error> {
    parts(c)?;
    jit_core::wire::CredentialProcess::from_credentials(c)
        .map(|doc| doc.to_json())
        .ok_or_else(|| Error::ProviderRejected {
            provider: "aws".into(),
            operation: "output",
            message: "these are not aws credentials".into(),
        })
}

/// The environment variables an AWS SDK or CLI reads, as name/value pairs.
pub fn env_vars(c: &Credentials) -> Result<Vec<(&'static str, Secret)>, Error> {
    let p = parts(c)?;
    Ok(vec![
        (ENV_VARS[0], Secret::new(p.access_key_id)),
        (ENV_VARS[1], p.secret_access_key.clone()),
        (ENV_VARS[2], p.session_token.clone()),
        (ENV_VARS[3], Secret::new(p.expiration)),
    ])
}

/// `export NAME='value'` lines for a POSIX shell (`eval "$(...)"`).
pub fn shell_exports(c: &Credentials) -> Result<Secret, Error> {
    let mut out = String::new();
    for (k, v) in env_vars(c)? {
        // Single quotes: nothing inside is special except `'` itself.
        out.push_str(&format!(
            "export {k}='{}'\n",
            v.expose().replace('\'', r"'\''")
        ));
    }
    Ok(Secret::new(out))
}

/// A credentials-file section named `profile_name`:
///
/// ```text
/// [jit-prod]
/// aws_access_key_id = ASIA...
/// aws_secret_access_key = ...
/// aws_session_token = ...
/// ```
///
/// The name must be 1 to 64 characters of `[A-Za-z0-9_.@+=-]` so it cannot
/// break out of its section.
pub fn profile(c: &Credentials, profile_name: &str) -> Result<Secret, Error> {
    let ok = !profile_name.is_empty()
        && profile_name.len() <= 64
        && profile_name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_.@+=-".contains(ch));
    if !ok {
        return Err(Error::Config(jit_core::ConfigError::InvalidField {
            entitlement: "settings".into(),
            field: "profile".into(),
            message: format!(
                "`{}` must be 1 to 64 characters of `[A-Za-z0-9_.@+=-]`",
                printable(profile_name)
            ),
        }));
    }
    let p = parts(c)?;
    Ok(Secret::new(format!(
        "[{profile_name}]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n# expires {}\n",
        p.access_key_id,
        p.secret_access_key.expose(),
        p.session_token.expose(),
        p.expiration
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use chrono::{TimeZone, Utc};

    fn creds() -> Credentials {
        Credentials::Aws {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("s3cr3t/'key"),
            session_token: Secret::new("t0ken+="),
            expires_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
        }
    }

    #[test]
    fn credential_process_schema() {
        let s = credential_process_json(&creds()).unwrap();
        let v: serde_json::Value = serde_json::from_str(s.expose()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "s3cr3t/'key",
                "SessionToken": "t0ken+=",
                "Expiration": "2026-01-02T03:04:05Z",
            })
        );
        assert_eq!(v.as_object().unwrap().len(), 5);
        assert_eq!(format!("{s:?}"), "** redacted **");
    }

    #[test]
    fn env_and_shell() {
        let vars = env_vars(&creds()).unwrap();
        let names: Vec<_> = vars.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ENV_VARS);
        assert_eq!(vars[1].1.expose(), "s3cr3t/'key");
        assert_eq!(vars[3].1.expose(), "2026-01-02T03:04:05Z");
        let sh = shell_exports(&creds()).unwrap();
        assert!(sh
            .expose()
            .contains(r"export AWS_SECRET_ACCESS_KEY='s3cr3t/'\''key'"));
        // The shell reads back exactly the secret.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{}printf %s \"$AWS_SECRET_ACCESS_KEY\"",
                sh.expose()
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "s3cr3t/'key");
    }

    #[test]
    fn profile_text() {
        let p = profile(&creds(), "jit-prod").unwrap();
        assert_eq!(
            p.expose(),
            "[jit-prod]\naws_access_key_id = ASIAEXAMPLE\naws_secret_access_key = s3cr3t/'key\naws_session_token = t0ken+=\n# expires 2026-01-02T03:04:05Z\n"
        );
        for bad in ["", "a]\n[b", "a b", &"p".repeat(65)] {
            assert!(
                matches!(profile(&creds(), bad), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn other_credentials_are_refused() {
        let c = Credentials::LocalToken {
            token: Secret::new("x"),
            expires_at: Utc::now(),
        };
        assert!(credential_process_json(&c).is_err());
        assert!(env_vars(&c).is_err());
        assert!(profile(&c, "p").is_err());
    }
}
