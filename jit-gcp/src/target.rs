//! The entitlement target: a role on a resource, or a service account to impersonate.
//!
//! ```toml
//! # binding mode: a conditional role binding on a project, folder or
//! # organization, or on a service account's own policy
//! [[entitlements]]
//! id = "prod-storage-admin"
//! provider = "gcp"
//! max_duration = "2h"
//! target = { resource = "projects/prod-1234", role = "roles/storage.admin" }
//!
//! # token mode: a short-lived access token of a service account
//! [[entitlements]]
//! id = "deployer-token"
//! provider = "gcp-token"
//! max_duration = "1h"
//! target = { service_account = "deployer@prod-1234.iam.gserviceaccount.com", scopes = ["https://www.googleapis.com/auth/cloud-platform"] }
//! ```
//!
//! Every rule below is checked when the catalogue loads
//! ([`Provider::validate`](jit_core::Provider::validate)) and again before
//! each call, with no remote call:
//!
//! | key | rule |
//! | --- | --- |
//! | `resource` | `projects/<id or number>`, `folders/<number>`, `organizations/<number>`, or `projects/-/serviceAccounts/<email or unique id>` |
//! | `role` | `roles/<name>`, `projects/<id>/roles/<id>` or `organizations/<number>/roles/<id>`; not a basic role (`roles/owner`, `roles/editor`, `roles/viewer`), which IAM refuses in a conditional binding |
//! | `service_account` | an email (`name@project.iam.gserviceaccount.com`) or `projects/-/serviceAccounts/<email>` |
//! | `scopes` | 1 to 100 OAuth scope URLs (default `https://www.googleapis.com/auth/cloud-platform`) |
//! | `delegates` | service accounts of a delegation chain, as above |
//! | anything else | an error naming the key |

use std::fmt;

use jit_core::Entitlement;
use serde_json::Value;

use crate::error::{printable, GcpError};

/// The scope a token gets unless the entitlement names others.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Basic (legacy) roles: IAM refuses them in conditional bindings.
pub const BASIC_ROLES: [&str; 3] = ["roles/owner", "roles/editor", "roles/viewer"];
/// Principals IAM refuses in conditional bindings.
pub const PUBLIC_MEMBERS: [&str; 2] = ["allUsers", "allAuthenticatedUsers"];

const KNOWN_KEYS: [&str; 5] = ["resource", "role", "service_account", "scopes", "delegates"];

/// A resource whose IAM policy holds the binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `projects/<id or number>` (Resource Manager v3).
    Project(String),
    /// `folders/<number>` (Resource Manager v3).
    Folder(String),
    /// `organizations/<number>` (Resource Manager v3).
    Organization(String),
    /// `projects/-/serviceAccounts/<email or unique id>` (IAM v1).
    ServiceAccount(String),
}

impl Resource {
    /// Parses a resource name; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let digits =
            |v: &str| !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_digit());
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["projects", p, "serviceAccounts", sa] if *p == "-" || is_project_id(p) => {
                if is_email(sa) || digits(sa) {
                    Ok(Resource::ServiceAccount(format!("projects/-/serviceAccounts/{sa}")))
                } else {
                    Err(format!(
                        "service account `{}` is not an email or a unique id",
                        printable(sa)
                    ))
                }
            }
            ["projects", p] if is_project_id(p) || digits(p) => Ok(Resource::Project(s.to_string())),
            ["folders", f] if digits(f) => Ok(Resource::Folder(s.to_string())),
            ["organizations", o] if digits(o) => Ok(Resource::Organization(s.to_string())),
            _ => Err(format!(
                "`{}` is not `projects/<id>`, `folders/<number>`, `organizations/<number>` or `projects/-/serviceAccounts/<email>`",
                printable(s)
            )),
        }
    }

    /// The resource name as the API takes it.
    pub fn name(&self) -> &str {
        match self {
            Resource::Project(n)
            | Resource::Folder(n)
            | Resource::Organization(n)
            | Resource::ServiceAccount(n) => n,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Google project id: 6 to 30 characters of `[a-z0-9-]`, starting with a
/// letter, not ending with a hyphen (Resource Manager's rule); also the
/// legacy `domain:id` form.
fn is_project_id(p: &str) -> bool {
    let id = p.rsplit(':').next().unwrap_or(p);
    (6..=30).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A plausible email: one `@`, printable ASCII, no spaces, a dot in the domain.
pub(crate) fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && s.len() <= 254
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\' && b != b'"')
        && !domain.contains('@')
}

/// Checks a role name; the error says what is wrong.
pub fn check_role(role: &str) -> Result<(), String> {
    let id_ok = |id: &str, min: usize| {
        (min..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if BASIC_ROLES.contains(&role) {
        return Err(format!(
            "`{role}` is a basic role, which iam does not allow in a conditional binding; use a predefined or custom role"
        ));
    }
    let parts: Vec<&str> = role.split('/').collect();
    let ok = match parts.as_slice() {
        ["roles", name] => id_ok(name, 1),
        ["projects", p, "roles", id] => is_project_id(p) && id_ok(id, 3),
        ["organizations", o, "roles", id] => {
            !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()) && id_ok(id, 3)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not `roles/<name>`, `projects/<id>/roles/<id>` or `organizations/<number>/roles/<id>`",
            printable(role)
        ))
    }
}

/// A parsed, validated entitlement target.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcpTarget {
    /// A conditional role binding on `resource`'s IAM policy.
    Binding {
        /// Whose policy.
        resource: Resource,
        /// Which role.
        role: String,
    },
    /// An access token of `service_account`.
    Token {
        /// `projects/-/serviceAccounts/<email>`.
        service_account: String,
        /// OAuth scopes.
        scopes: Vec<String>,
        /// Delegation chain, `projects/-/serviceAccounts/<email>` each.
        delegates: Vec<String>,
    },
}

fn service_account_name(s: &str) -> Result<String, String> {
    let email = s.strip_prefix("projects/-/serviceAccounts/").unwrap_or(s);
    if is_email(email) {
        Ok(format!("projects/-/serviceAccounts/{email}"))
    } else {
        Err(format!(
            "`{}` is not a service account email or `projects/-/serviceAccounts/<email>`",
            printable(s)
        ))
    }
}

impl GcpTarget {
    /// Parses an entitlement's target; errors name the entitlement and the field.
    pub fn from_entitlement(e: &Entitlement) -> Result<Self, jit_core::Error> {
        Self::parse(&e.id, &e.target).map_err(|err| err.into_core("gcp", "validate"))
    }

    pub(crate) fn parse(entitlement: &str, target: &Value) -> Result<Self, GcpError> {
        let invalid = |field: &str, message: String| GcpError::Target {
            entitlement: entitlement.to_string(),
            field: format!("target.{field}"),
            message,
        };
        let Some(map) = target.as_object() else {
            return Err(GcpError::Target {
                entitlement: entitlement.to_string(),
                field: "target".into(),
                message: "must be a table with `resource` and `role`, or `service_account`".into(),
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
        let string = |key: &str| -> Result<Option<&str>, GcpError> {
            match map.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(invalid(key, "must be a string".into())),
            }
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>, GcpError> {
            match map.get(key) {
                None => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| invalid(key, "must be a list of strings".into()))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(invalid(key, "must be a list of strings".into())),
            }
        };
        match (
            string("resource")?,
            string("role")?,
            string("service_account")?,
        ) {
            (Some(resource), Some(role), None) => {
                if map.contains_key("scopes") || map.contains_key("delegates") {
                    return Err(invalid(
                        "scopes",
                        "`scopes` and `delegates` belong to a `service_account` target, not a binding".into(),
                    ));
                }
                let resource = Resource::parse(resource).map_err(|m| invalid("resource", m))?;
                check_role(role).map_err(|m| invalid("role", m))?;
                Ok(GcpTarget::Binding {
                    resource,
                    role: role.to_string(),
                })
            }
            (None, None, Some(sa)) => {
                let service_account =
                    service_account_name(sa).map_err(|m| invalid("service_account", m))?;
                let scopes =
                    strings("scopes")?.unwrap_or_else(|| vec![CLOUD_PLATFORM_SCOPE.into()]);
                if scopes.is_empty() || scopes.len() > 100 {
                    return Err(invalid("scopes", "must name 1 to 100 scopes".into()));
                }
                if let Some(s) = scopes.iter().find(|s| {
                    !(s.starts_with("https://")
                        || s == &"openid"
                        || s == &"email"
                        || s == &"profile")
                        || s.chars().any(|c| c.is_whitespace() || c.is_control())
                }) {
                    return Err(invalid(
                        "scopes",
                        format!("`{}` is not an oauth scope url", printable(s)),
                    ));
                }
                let delegates = strings("delegates")?
                    .unwrap_or_default()
                    .iter()
                    .map(|d| service_account_name(d))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| invalid("delegates", m))?;
                Ok(GcpTarget::Token {
                    service_account,
                    scopes,
                    delegates,
                })
            }
            (_, _, Some(_)) => Err(invalid(
                "service_account",
                "a `service_account` target takes no `resource` or `role`".into(),
            )),
            (None, _, None) => Err(invalid(
                "resource",
                "missing; a binding target needs `resource` and `role`".into(),
            )),
            (Some(_), None, None) => Err(invalid(
                "role",
                "missing; a binding target needs `resource` and `role`".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<GcpTarget, String> {
        GcpTarget::parse("e1", &v).map_err(|e| e.to_string())
    }

    #[test]
    fn binding_targets_on_every_resource_kind() {
        for (resource, expected) in [
            (
                "projects/prod-1234",
                Resource::Project("projects/prod-1234".into()),
            ),
            (
                "projects/123456789012",
                Resource::Project("projects/123456789012".into()),
            ),
            (
                "folders/123456789012",
                Resource::Folder("folders/123456789012".into()),
            ),
            (
                "organizations/42",
                Resource::Organization("organizations/42".into()),
            ),
            (
                "projects/-/serviceAccounts/deployer@prod-1234.iam.gserviceaccount.com",
                Resource::ServiceAccount(
                    "projects/-/serviceAccounts/deployer@prod-1234.iam.gserviceaccount.com".into(),
                ),
            ),
        ] {
            let t = parse(json!({"resource": resource, "role": "roles/storage.admin"})).unwrap();
            assert_eq!(
                t,
                GcpTarget::Binding {
                    resource: expected,
                    role: "roles/storage.admin".into()
                }
            );
        }
        for role in [
            "projects/prod-1234/roles/jitReader",
            "organizations/42/roles/jit.reader_2",
            "roles/iam.serviceAccountTokenCreator",
        ] {
            parse(json!({"resource": "projects/prod-1234", "role": role})).unwrap();
        }
    }

    #[test]
    fn basic_roles_and_malformed_targets_are_refused_naming_the_field() {
        for role in BASIC_ROLES {
            let e = parse(json!({"resource": "projects/prod-1234", "role": role})).unwrap_err();
            assert!(e.contains("target.role") && e.contains("basic role"), "{e}");
        }
        for (v, field) in [
            (
                json!({"resource": "projects/P", "role": "roles/x"}),
                "target.resource",
            ),
            (
                json!({"resource": "buckets/b", "role": "roles/x"}),
                "target.resource",
            ),
            (
                json!({"resource": "folders/abc", "role": "roles/x"}),
                "target.resource",
            ),
            (
                json!({"resource": "projects/-/serviceAccounts/not an email", "role": "roles/x"}),
                "target.resource",
            ),
            (
                json!({"resource": "projects/prod-1234", "role": "storage.admin"}),
                "target.role",
            ),
            (
                json!({"resource": "projects/prod-1234", "role": "projects/prod-1234/roles/x"}),
                "target.role",
            ),
            (json!({"resource": "projects/prod-1234"}), "target.role"),
            (json!({"role": "roles/x"}), "target.resource"),
            (
                json!({"resource": "projects/prod-1234", "role": "roles/x", "scopes": []}),
                "target.scopes",
            ),
            (
                json!({"resource": "projects/prod-1234", "role": "roles/x", "member": "user:a@b.c"}),
                "target.member",
            ),
            (
                json!({"service_account": "sa@p.iam.gserviceaccount.com", "role": "roles/x"}),
                "target.service_account",
            ),
            (
                json!({"service_account": "nobody"}),
                "target.service_account",
            ),
            (
                json!({"service_account": "sa@p.iam.gserviceaccount.com", "scopes": []}),
                "target.scopes",
            ),
            (
                json!({"service_account": "sa@p.iam.gserviceaccount.com", "scopes": ["cloud-platform"]}),
                "target.scopes",
            ),
            (
                json!({"service_account": "sa@p.iam.gserviceaccount.com", "delegates": ["x"]}),
                "target.delegates",
            ),
            (json!("projects/prod-1234"), "target"),
        ] {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.contains(&format!("`{field}`")), "{v}: {e}");
        }
    }

    #[test]
    fn token_targets_default_to_cloud_platform_and_normalise_names() {
        let t =
            parse(json!({"service_account": "deployer@p-123456.iam.gserviceaccount.com"})).unwrap();
        assert_eq!(
            t,
            GcpTarget::Token {
                service_account:
                    "projects/-/serviceAccounts/deployer@p-123456.iam.gserviceaccount.com".into(),
                scopes: vec![CLOUD_PLATFORM_SCOPE.into()],
                delegates: vec![],
            }
        );
        let t = parse(json!({
            "service_account": "projects/-/serviceAccounts/deployer@p-123456.iam.gserviceaccount.com",
            "scopes": ["https://www.googleapis.com/auth/devstorage.read_only"],
            "delegates": ["hop@p-123456.iam.gserviceaccount.com"],
        }))
        .unwrap();
        let GcpTarget::Token {
            delegates, scopes, ..
        } = t
        else {
            panic!("not a token target")
        };
        assert_eq!(
            delegates,
            vec!["projects/-/serviceAccounts/hop@p-123456.iam.gserviceaccount.com"]
        );
        assert_eq!(scopes.len(), 1);
    }
}
