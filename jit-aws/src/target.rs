//! The entitlement target: which role, scoped down how.
//!
//! ```toml
//! [[entitlements]]
//! id = "prod-readonly"
//! provider = "aws"
//! max_duration = "1h"
//! [entitlements.target]
//! role_arn = "arn:aws:iam::123456789012:role/ops/ProdReadOnly"
//! # optional, all of them:
//! policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
//! session_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}'
//! external_id = "partner-1234"
//! session_tags = { team = "payments" }
//! ```
//!
//! `session_policy` may also be a TOML table (it is minified to JSON). Every
//! rule below is checked when the catalogue loads ([`Provider::validate`])
//! and again before each `AssumeRole`, with no remote call:
//!
//! | key | rule |
//! | --- | --- |
//! | `role_arn` | `arn:{aws,aws-cn,aws-us-gov}:iam::<12 digits>:role/<path/>name`, name `[\w+=,.@-]` 1..=64, path `/`-delimited printable ASCII, ≤ 512 |
//! | `session_policy` | a JSON object; minified it is at most 2,048 characters of `\t \n \r` and U+0020..=U+00FF |
//! | `policy_arns` | at most 10 IAM policy ARNs in the role's partition, AWS managed or in the role's account; their text plus the session policy at most 2,048 characters |
//! | `external_id` | 2..=1224 characters of `[\w+=,.@:/-]` |
//! | `session_tags` | string values; together with jit-aws's own 5 tags at most 50; keys and values as in [`crate::session`]; not one of the `jit:` keys |
//! | anything else | an error naming the key |
//!
//! [`Provider::validate`]: jit_core::Provider::validate

use std::fmt;
use std::str::FromStr;

use jit_core::Entitlement;
use serde_json::Value;

use crate::error::{printable, AwsError};
use crate::session::{self, SessionTag, MAX_SESSION_TAGS, RESERVED_TAG_KEYS};

/// Partitions a role ARN may name.
pub const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

/// The partition a region belongs to (`cn-*`: `aws-cn`, `us-gov-*`:
/// `aws-us-gov`, else `aws`): STS and IAM in one partition cannot act on a
/// role in another.
pub fn partition_of_region(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}
/// Longest inline session policy (and policy ARNs), plaintext characters.
pub const MAX_SESSION_POLICY_LEN: usize = 2048;
/// Most managed session policy ARNs.
pub const MAX_POLICY_ARNS: usize = 10;
/// Shortest external id.
pub const MIN_EXTERNAL_ID_LEN: usize = 2;
/// Longest external id.
pub const MAX_EXTERNAL_ID_LEN: usize = 1224;
/// Longest ARN.
pub const MAX_ARN_LEN: usize = 2048;
/// Longest role name.
pub const MAX_ROLE_NAME_LEN: usize = 64;
/// Longest role path (with its slashes).
pub const MAX_ROLE_PATH_LEN: usize = 512;

const KNOWN_KEYS: [&str; 5] = [
    "role_arn",
    "session_policy",
    "policy_arns",
    "external_id",
    "session_tags",
];

/// A validated IAM role ARN.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleArn {
    arn: String,
    partition: String,
    account: String,
    path: String,
    name: String,
}

impl RoleArn {
    /// Parses and checks a role ARN; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_ARN_LEN {
            return Err(format!("is longer than {MAX_ARN_LEN} characters"));
        }
        let mut parts = s.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account),
            Some(resource),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(format!(
                "`{}` is not an ARN: use `arn:aws:iam::123456789012:role/Name`",
                printable(s)
            ));
        };
        if !PARTITIONS.contains(&partition) {
            return Err(format!(
                "partition `{}` is not one of `aws`, `aws-cn`, `aws-us-gov`",
                printable(partition)
            ));
        }
        if service != "iam" || !region.is_empty() {
            return Err(format!(
                "`{}` is not an IAM ARN: use `arn:{partition}:iam::<account>:role/<name>`",
                printable(s)
            ));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("account `{}` is not 12 digits", printable(account)));
        }
        let Some(rest) = resource.strip_prefix("role/") else {
            return Err(format!(
                "resource `{}` is not a role: use `role/<path/>name`",
                printable(resource)
            ));
        };
        let (path, name) = match rest.rfind('/') {
            Some(i) => (format!("/{}/", &rest[..i]), &rest[i + 1..]),
            None => ("/".to_string(), rest),
        };
        if name.is_empty()
            || name.len() > MAX_ROLE_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        {
            return Err(format!(
                "role name `{}` must be 1 to {MAX_ROLE_NAME_LEN} characters of `[A-Za-z0-9_+=,.@-]`",
                printable(name)
            ));
        }
        // IAM's path pattern: `/` or `/` + printable ASCII + `/`.
        if path.len() > MAX_ROLE_PATH_LEN
            || (path != "/"
                && (path.len() < 3 || !path.bytes().all(|b| (0x21..=0x7e).contains(&b))))
        {
            return Err(format!(
                "role path `{}` must be `/` or `/`-delimited printable ASCII of at most {MAX_ROLE_PATH_LEN} characters",
                printable(&path)
            ));
        }
        Ok(Self {
            arn: s.to_string(),
            partition: partition.to_string(),
            account: account.to_string(),
            path,
            name: name.to_string(),
        })
    }

    /// The ARN.
    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The 12-digit account.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The role path (`/` or `/a/b/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The role name, as IAM's role APIs want it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

impl FromStr for RoleArn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A parsed, validated entitlement target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsTarget {
    /// The role to assume.
    pub role: RoleArn,
    /// Inline session policy, minified JSON.
    pub session_policy: Option<String>,
    /// Managed session policy ARNs.
    pub policy_arns: Vec<String>,
    /// `ExternalId` for the role's trust policy.
    pub external_id: Option<String>,
    /// Static session tags, after jit-aws's own.
    pub session_tags: Vec<SessionTag>,
}

impl AwsTarget {
    /// Parses an entitlement's target; errors name the entitlement and the field.
    pub fn from_entitlement(e: &Entitlement) -> Result<Self, jit_core::Error> {
        Self::parse(&e.id, &e.target).map_err(|err| err.into_core("aws", "validate"))
    }

    pub(crate) fn parse(entitlement: &str, target: &Value) -> Result<Self, AwsError> {
        let invalid = |field: &str, message: String| AwsError::Target {
            entitlement: entitlement.to_string(),
            field: format!("target.{field}"),
            message,
        };
        let Some(map) = target.as_object() else {
            return Err(AwsError::Target {
                entitlement: entitlement.to_string(),
                field: "target".into(),
                message: "must be a table with at least `role_arn`".into(),
            });
        };
        if let Some(k) = map.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(invalid(
                &printable(k),
                format!(
                    "unknown key; expected one of {}",
                    KNOWN_KEYS.map(|k| format!("`{k}`")).join(", ")
                ),
            ));
        }
        let role_text = match map.get("role_arn") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(invalid("role_arn", "must be a string".into())),
            None => return Err(invalid("role_arn", "is required".into())),
        };
        let role = RoleArn::parse(role_text).map_err(|m| invalid("role_arn", m))?;

        let session_policy = match map.get("session_policy") {
            None => None,
            Some(v) => Some(minify_policy(v).map_err(|m| invalid("session_policy", m))?),
        };

        let policy_arns = match map.get("policy_arns") {
            None => Vec::new(),
            Some(Value::Array(list)) => {
                if list.len() > MAX_POLICY_ARNS {
                    return Err(invalid(
                        "policy_arns",
                        format!("{} ARNs, at most {MAX_POLICY_ARNS}", list.len()),
                    ));
                }
                let mut arns = Vec::with_capacity(list.len());
                for v in list {
                    let Some(s) = v.as_str() else {
                        return Err(invalid("policy_arns", "must be a list of strings".into()));
                    };
                    check_policy_arn(s, role.partition(), role.account())
                        .map_err(|m| invalid("policy_arns", m))?;
                    arns.push(s.to_string());
                }
                arns
            }
            Some(_) => return Err(invalid("policy_arns", "must be a list of strings".into())),
        };
        let plaintext = session_policy.as_ref().map_or(0, |p| p.chars().count())
            + policy_arns.iter().map(|a| a.chars().count()).sum::<usize>();
        if plaintext > MAX_SESSION_POLICY_LEN {
            return Err(invalid(
                if policy_arns.is_empty() {
                    "session_policy"
                } else {
                    "policy_arns"
                },
                format!(
                    "session policy and policy ARNs are {plaintext} characters together, over the limit of {MAX_SESSION_POLICY_LEN}"
                ),
            ));
        }

        let external_id = match map.get("external_id") {
            None => None,
            Some(Value::String(s)) => {
                let n = s.len();
                let ok = (MIN_EXTERNAL_ID_LEN..=MAX_EXTERNAL_ID_LEN).contains(&n)
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
                if !ok {
                    return Err(invalid(
                        "external_id",
                        format!("must be {MIN_EXTERNAL_ID_LEN} to {MAX_EXTERNAL_ID_LEN} characters of `[A-Za-z0-9_+=,.@:/-]`"),
                    ));
                }
                Some(s.clone())
            }
            Some(_) => return Err(invalid("external_id", "must be a string".into())),
        };

        let session_tags = match map.get("session_tags") {
            None => Vec::new(),
            Some(Value::Object(tags)) => {
                let budget = MAX_SESSION_TAGS - RESERVED_TAG_KEYS.len();
                if tags.len() > budget {
                    return Err(invalid(
                        "session_tags",
                        format!(
                            "{} tags, at most {budget} (jit-aws adds {} of its own; AWS allows {MAX_SESSION_TAGS})",
                            tags.len(),
                            RESERVED_TAG_KEYS.len()
                        ),
                    ));
                }
                let mut out = Vec::with_capacity(tags.len());
                for (k, v) in tags {
                    let Some(v) = v.as_str() else {
                        return Err(invalid(
                            "session_tags",
                            format!("value of `{}` must be a string", printable(k)),
                        ));
                    };
                    if RESERVED_TAG_KEYS
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(k) || r.to_lowercase() == k.to_lowercase())
                    {
                        return Err(invalid(
                            "session_tags",
                            format!("`{}` is set by jit-aws itself", printable(k)),
                        ));
                    }
                    out.push(SessionTag {
                        key: k.clone(),
                        value: v.to_string(),
                    });
                }
                session::check_tags(&out).map_err(|m| invalid("session_tags", m))?;
                out
            }
            Some(_) => return Err(invalid("session_tags", "must be a table of strings".into())),
        };

        Ok(Self {
            role,
            session_policy,
            policy_arns,
            external_id,
            session_tags,
        })
    }
}

/// A session policy given as a JSON string or a table, minified and checked.
fn minify_policy(v: &Value) -> Result<String, String> {
    let doc: Value = match v {
        Value::String(s) => {
            serde_json::from_str(s).map_err(|e| format!("is not valid JSON: {e}"))?
        }
        Value::Object(_) => v.clone(),
        _ => return Err("must be a JSON string or a table".into()),
    };
    if !doc.is_object() {
        return Err("must be a JSON object (a policy document)".into());
    }
    let text = serde_json::to_string(&doc).map_err(|e| format!("cannot be serialized: {e}"))?;
    let n = text.chars().count();
    if n > MAX_SESSION_POLICY_LEN {
        return Err(format!(
            "is {n} characters minified, over the limit of {MAX_SESSION_POLICY_LEN}"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !matches!(*c, '\t' | '\n' | '\r' | '\u{20}'..='\u{ff}'))
    {
        return Err(format!(
            "contains `{c}` (U+{:04X}); AWS accepts only tab, newline and U+0020 to U+00FF",
            c as u32
        ));
    }
    Ok(text)
}

fn check_policy_arn(s: &str, partition: &str, role_account: &str) -> Result<(), String> {
    let shape = format!(
        "`arn:{partition}:iam::aws:policy/Name` or `arn:{partition}:iam::<12 digits>:policy/Name`"
    );
    if s.len() < 20 || s.len() > MAX_ARN_LEN {
        return Err(format!(
            "`{}` is not a policy ARN: use {shape}",
            printable(s)
        ));
    }
    let mut parts = s.splitn(6, ':');
    let ok = match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("arn"), Some(p), Some("iam"), Some(""), Some(account), Some(resource)) => {
            p == partition
                && (account == "aws"
                    || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())))
                && resource
                    .strip_prefix("policy/")
                    .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        }
        _ => false,
    };
    if !ok {
        return Err(format!(
            "`{}` is not a policy ARN: use {shape}",
            printable(s)
        ));
    }
    // STS accepts only managed session policies of the role's own account
    // (or AWS managed ones); any other is refused at the first AssumeRole.
    let account = s.split(':').nth(4).unwrap_or_default();
    if account != "aws" && account != role_account {
        return Err(format!(
            "`{}` is in account `{account}`, but session policies must be AWS managed or in the role's account `{role_account}`",
            printable(s)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn err(target: Value) -> String {
        match AwsTarget::parse("e", &target) {
            Err(AwsError::Target { field, message, .. }) => format!("{field}: {message}"),
            other => panic!("expected a target error, got {other:?}"),
        }
    }

    #[test]
    fn role_arns() {
        let r = RoleArn::parse("arn:aws:iam::123456789012:role/Name").unwrap();
        assert_eq!(
            (r.partition(), r.account(), r.path(), r.name()),
            ("aws", "123456789012", "/", "Name")
        );
        let r = RoleArn::parse("arn:aws-us-gov:iam::123456789012:role/a/b/R+=,.@-_1").unwrap();
        assert_eq!((r.path(), r.name()), ("/a/b/", "R+=,.@-_1"));
        assert!(RoleArn::parse("arn:aws-cn:iam::123456789012:role/x").is_ok());
        for bad in [
            "",
            "arn:aws:iam::123456789012:user/Name",
            "arn:aws:iam::12345678901:role/Name",
            "arn:aws:iam::1234567890123:role/Name",
            "arn:aws:iam::12345678901a:role/Name",
            "arn:aws:s3::123456789012:role/Name",
            "arn:aws:iam:us-east-1:123456789012:role/Name",
            "arn:azure:iam::123456789012:role/Name",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a b",
            "arn:aws:iam::123456789012:role/p th/Name",
            "arn:aws:iam::123456789012:role//Name",
            "arn:aws:iam::123456789012:role/Näme",
        ] {
            assert!(RoleArn::parse(bad).is_err(), "{bad} accepted");
        }
        let long_name = format!("arn:aws:iam::123456789012:role/{}", "n".repeat(65));
        assert!(RoleArn::parse(&long_name).unwrap_err().contains("1 to 64"));
        let ok_name = format!("arn:aws:iam::123456789012:role/{}", "n".repeat(64));
        assert!(RoleArn::parse(&ok_name).is_ok());
        let long_path = format!("arn:aws:iam::123456789012:role/{}/n", "p".repeat(511));
        assert!(RoleArn::parse(&long_path).unwrap_err().contains("path"));
    }

    #[test]
    fn full_target_parses() {
        let t = AwsTarget::parse(
            "e",
            &json!({
                "role_arn": "arn:aws:iam::123456789012:role/R",
                "session_policy": "{ \"Version\": \"2012-10-17\", \"Statement\": [] }",
                "policy_arns": ["arn:aws:iam::aws:policy/ReadOnlyAccess", "arn:aws:iam::123456789012:policy/p/Mine"],
                "external_id": "ext-1234:/x",
                "session_tags": {"team": "payments"},
            }),
        )
        .unwrap();
        // Compared as JSON: key order follows serde_json's `preserve_order`,
        // which another crate in an `--all-features` build may turn on.
        let policy: serde_json::Value =
            serde_json::from_str(t.session_policy.as_deref().unwrap()).unwrap();
        assert_eq!(policy, json!({"Statement": [], "Version": "2012-10-17"}));
        assert!(
            !t.session_policy.as_deref().unwrap().contains(' '),
            "packed"
        );
        assert_eq!(t.policy_arns.len(), 2);
        assert_eq!(t.session_tags[0].key, "team");
        // A table is accepted as well.
        let t = AwsTarget::parse(
            "e",
            &json!({"role_arn": "arn:aws:iam::123456789012:role/R", "session_policy": {"Version": "2012-10-17"}}),
        )
        .unwrap();
        assert_eq!(
            t.session_policy.as_deref(),
            Some(r#"{"Version":"2012-10-17"}"#)
        );
    }

    #[test]
    fn each_bad_field_gets_its_own_error() {
        let role = "arn:aws:iam::123456789012:role/R";
        assert!(err(json!("x")).starts_with("target: "));
        assert!(err(json!({})).starts_with("target.role_arn: is required"));
        assert!(err(json!({"role_arn": 1})).starts_with("target.role_arn: must be a string"));
        assert!(
            err(json!({"role_arn": role, "rolearn": 1})).starts_with("target.rolearn: unknown key")
        );
        assert!(err(json!({"role_arn": role, "session_policy": "{"})).contains("not valid JSON"));
        assert!(err(json!({"role_arn": role, "session_policy": "[]"})).contains("JSON object"));
        assert!(
            err(json!({"role_arn": role, "session_policy": 3})).contains("JSON string or a table")
        );
        // 2048 is fine, 2049 is not (minified: whitespace does not count).
        let pad = |n: usize| format!(r#"{{"Version":"2012-10-17","Sid":"{}"}}"#, "a".repeat(n));
        let base = pad(0).len();
        assert!(AwsTarget::parse(
            "e",
            &json!({"role_arn": role, "session_policy": pad(2048 - base)})
        )
        .is_ok());
        assert!(
            err(json!({"role_arn": role, "session_policy": pad(2049 - base)}))
                .contains("2049 characters minified")
        );
        let spaced = format!("{}   ", pad(2048 - base)).replace(",", " ,  ");
        assert!(
            AwsTarget::parse("e", &json!({"role_arn": role, "session_policy": spaced})).is_ok()
        );
        assert!(err(json!({"role_arn": role, "session_policy": {"Sid": "€"}})).contains("U+20AC"));
        let arns: Vec<String> = (0..11)
            .map(|i| format!("arn:aws:iam::aws:policy/P{i}"))
            .collect();
        assert!(err(json!({"role_arn": role, "policy_arns": arns})).contains("at most 10"));
        assert!(
            err(json!({"role_arn": role, "policy_arns": ["arn:aws-cn:iam::aws:policy/P"]}))
                .contains("not a policy ARN")
        );
        assert!(
            err(json!({"role_arn": role, "policy_arns": ["arn:aws:iam::aws:role/P"]}))
                .contains("not a policy ARN")
        );
        assert!(err(json!({"role_arn": role, "policy_arns": "x"})).contains("list of strings"));
        // Regression: a customer managed policy of another account passed
        // the catalogue and failed at every AssumeRole.
        assert!(err(
            json!({"role_arn": role, "policy_arns": ["arn:aws:iam::210987654321:policy/P"]})
        )
        .contains("in the role's account `123456789012`"));
        let big = format!("arn:aws:iam::aws:policy/{}", "p".repeat(1000));
        assert!(
            err(json!({"role_arn": role, "policy_arns": [big, big.clone(), big.clone()]}))
                .contains("together")
        );
        assert!(
            err(json!({"role_arn": role, "external_id": "x"})).starts_with("target.external_id")
        );
        assert!(
            err(json!({"role_arn": role, "external_id": "a b"})).starts_with("target.external_id")
        );
        assert!(
            err(json!({"role_arn": role, "external_id": "x".repeat(1225)}))
                .starts_with("target.external_id")
        );
        assert!(AwsTarget::parse(
            "e",
            &json!({"role_arn": role, "external_id": "x".repeat(1224)})
        )
        .is_ok());
        assert!(
            err(json!({"role_arn": role, "session_tags": {"jit:grant": "x"}}))
                .contains("set by jit-aws")
        );
        assert!(
            err(json!({"role_arn": role, "session_tags": {"JIT:Grant": "x"}}))
                .contains("set by jit-aws")
        );
        assert!(err(json!({"role_arn": role, "session_tags": {"aws:x": "x"}})).contains("aws:"));
        assert!(
            err(json!({"role_arn": role, "session_tags": {"k": 1}})).contains("must be a string")
        );
        assert!(err(json!({"role_arn": role, "session_tags": {"k": "v#"}}))
            .contains("characters outside"));
        let tags: serde_json::Map<String, Value> =
            (0..46).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(err(json!({"role_arn": role, "session_tags": tags})).contains("at most 45"));
    }
}
