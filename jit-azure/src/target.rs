//! The entitlement target: which role, at which scope, under which condition.
//!
//! ```toml
//! [[entitlements]]
//! id = "prod-rg-contributor"
//! provider = "azure"
//! max_duration = "2h"
//! [entitlements.target]
//! scope = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/prod"
//! # either a full role definition id ...
//! role_definition_id = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/providers/Microsoft.Authorization/roleDefinitions/b24988ac-6180-48a0-ab88-20f7382dd24c"
//! # ... or a built-in role's name:
//! # role = "Contributor"
//! # optional ABAC condition (condition_version is then required, `2.0`):
//! # condition = "@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals 'logs'"
//! # condition_version = "2.0"
//! ```
//!
//! Checked when the catalogue loads ([`Provider::validate`]) and again before
//! each call, with no remote call:
//!
//! | key | rule |
//! | --- | --- |
//! | `scope` | a management group (`/providers/Microsoft.Management/managementGroups/<id>`), subscription (`/subscriptions/<guid>`), resource group (`…/resourceGroups/<name>`) or resource (`…/resourceGroups/<rg>/providers/<Namespace>/<type>/<name>[/<type>/<name>…]`) id |
//! | `role_definition_id` | `[/subscriptions/<guid>]/providers/Microsoft.Authorization/roleDefinitions/<guid>` |
//! | `role` | a built-in role name from [`BUILT_IN_ROLES`] (exactly one of `role` and `role_definition_id`) |
//! | `condition` | at most [`MAX_CONDITION_LEN`] characters, with `condition_version` `2.0` |
//! | anything else | an error naming the key |
//!
//! Built-in role definitions have the same GUID in every tenant and cloud,
//! so a name is resolved from the table below once, when the catalogue
//! loads, into the id under the scope's subscription (or the tenant-level id
//! for a management group scope); no lookup call is needed. A name not in
//! the table is refused with a hint to use the full id.
//!
//! [`Provider::validate`]: jit_core::Provider::validate

use std::fmt;

use serde_json::Value;
use uuid::Uuid;

use crate::error::{printable, AzureError};

/// Longest ABAC condition accepted.
pub const MAX_CONDITION_LEN: usize = 8192;
/// Longest scope accepted.
pub const MAX_SCOPE_LEN: usize = 1024;

/// Built-in roles by name and definition GUID (the same in every tenant).
pub const BUILT_IN_ROLES: [(&str, &str); 14] = [
    ("Owner", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"),
    ("Contributor", "b24988ac-6180-48a0-ab88-20f7382dd24c"),
    ("Reader", "acdd72a7-3385-48ef-bd42-f606fba81ae7"),
    (
        "User Access Administrator",
        "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    ),
    (
        "Role Based Access Control Administrator",
        "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
    ),
    (
        "Virtual Machine Contributor",
        "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
    ),
    (
        "Network Contributor",
        "4d97b98b-1d4f-4787-a291-c67834d212e7",
    ),
    ("Monitoring Reader", "43d0d8ad-25c7-4714-9337-8ba259a9fe05"),
    (
        "Log Analytics Reader",
        "73c42c96-874c-492b-b04d-ab87d138a893",
    ),
    (
        "Storage Blob Data Reader",
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    ),
    (
        "Storage Blob Data Contributor",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    ),
    (
        "Storage Blob Data Owner",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    ),
    (
        "Key Vault Secrets User",
        "4633458b-17de-408a-b874-0445c86b69e6",
    ),
    (
        "Key Vault Administrator",
        "00482a5a-887f-4fb3-b363-3b7fe8e74483",
    ),
];

const KNOWN_KEYS: [&str; 5] = [
    "scope",
    "role_definition_id",
    "role",
    "condition",
    "condition_version",
];

/// What a scope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ScopeKind {
    /// `/providers/Microsoft.Management/managementGroups/<id>`.
    ManagementGroup,
    /// `/subscriptions/<guid>`.
    Subscription,
    /// `/subscriptions/<guid>/resourceGroups/<name>`.
    ResourceGroup,
    /// A resource inside a resource group.
    Resource,
}

/// A validated ARM scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    id: String,
    kind: ScopeKind,
    subscription: Option<Uuid>,
}

fn is_guid(s: &str) -> bool {
    // The hyphenated 8-4-4-4-12 form only: ARM ids never use another.
    s.len() == 36 && Uuid::parse_str(s).is_ok()
}

fn name_ok(s: &str, max: usize, extra: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= max
        && s.chars().all(|c| c.is_alphanumeric() || extra.contains(c))
}

impl Scope {
    /// Parses and checks a scope id; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let hint = "use `/subscriptions/<guid>[/resourceGroups/<name>[/providers/<Namespace>/<type>/<name>]]` or `/providers/Microsoft.Management/managementGroups/<id>`";
        if s.len() > MAX_SCOPE_LEN {
            return Err(format!("is longer than {MAX_SCOPE_LEN} characters"));
        }
        if !s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            return Err(format!("`{}` is not a scope id: {hint}", printable(s)));
        }
        if s.chars()
            .any(|c| c.is_control() || c.is_whitespace() || "?#%\\\"'".contains(c))
        {
            return Err(format!(
                "`{}` contains characters not allowed in a scope id",
                printable(s)
            ));
        }
        let parts: Vec<&str> = s[1..].split('/').collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(format!("`{}` has a relative segment", printable(s)));
        }
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let (kind, subscription) = match parts.as_slice() {
            [p, m, g, id]
                if eq(p, "providers")
                    && eq(m, "Microsoft.Management")
                    && eq(g, "managementGroups") =>
            {
                if !name_ok(id, 90, "-_.()") {
                    return Err(format!(
                        "management group id `{}` must be 1 to 90 characters of letters, digits, `-_.()`",
                        printable(id)
                    ));
                }
                (ScopeKind::ManagementGroup, None)
            }
            [sub, id, rest @ ..] if eq(sub, "subscriptions") => {
                if !is_guid(id) {
                    return Err(format!("subscription id `{}` is not a GUID", printable(id)));
                }
                let subscription = Uuid::parse_str(id).ok();
                match rest {
                    [] => (ScopeKind::Subscription, subscription),
                    [rg, name] if eq(rg, "resourceGroups") => {
                        check_rg(name)?;
                        (ScopeKind::ResourceGroup, subscription)
                    }
                    [rg, name, p, ns, tail @ ..]
                        if eq(rg, "resourceGroups") && eq(p, "providers") =>
                    {
                        check_rg(name)?;
                        if !name_ok(ns, 128, ".") || !ns.contains('.') {
                            return Err(format!(
                                "`{}` is not a resource provider namespace (like `Microsoft.Storage`)",
                                printable(ns)
                            ));
                        }
                        if tail.is_empty() || tail.len() % 2 != 0 {
                            return Err(format!(
                                "`{}` must name a resource as `<type>/<name>` pairs after the namespace",
                                printable(s)
                            ));
                        }
                        if tail.iter().any(|t| t.is_empty() || t.len() > 260) {
                            return Err(format!(
                                "`{}` has an empty or overlong segment",
                                printable(s)
                            ));
                        }
                        (ScopeKind::Resource, subscription)
                    }
                    _ => return Err(format!("`{}` is not a scope id: {hint}", printable(s))),
                }
            }
            _ => return Err(format!("`{}` is not a scope id: {hint}", printable(s))),
        };
        Ok(Self {
            id: s.to_string(),
            kind,
            subscription,
        })
    }

    /// The scope id as given.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// What the scope is.
    pub fn kind(&self) -> ScopeKind {
        self.kind
    }

    /// The subscription the scope is in (none for a management group).
    pub fn subscription(&self) -> Option<Uuid> {
        self.subscription
    }
}

fn check_rg(name: &str) -> Result<(), String> {
    if !name_ok(name, 90, "-_.()") || name.ends_with('.') {
        return Err(format!(
            "resource group name `{}` must be 1 to 90 characters of letters, digits, `-_.()`, not ending in `.`",
            printable(name)
        ));
    }
    Ok(())
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Checks a full role definition id; returns its GUID.
pub fn parse_role_definition_id(s: &str) -> Result<Uuid, String> {
    let hint = "use `/subscriptions/<guid>/providers/Microsoft.Authorization/roleDefinitions/<guid>` or `/providers/Microsoft.Authorization/roleDefinitions/<guid>`";
    let parts: Vec<&str> = s.strip_prefix('/').unwrap_or("").split('/').collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let tail = match parts.as_slice() {
        [sub, id, rest @ ..] if eq(sub, "subscriptions") && is_guid(id) => rest,
        rest => rest,
    };
    match tail {
        [p, ns, rd, id]
            if eq(p, "providers")
                && eq(ns, "Microsoft.Authorization")
                && eq(rd, "roleDefinitions")
                && is_guid(id) =>
        {
            Uuid::parse_str(id).map_err(|_| hint.to_string())
        }
        _ => Err(format!(
            "`{}` is not a role definition id: {hint}",
            printable(s)
        )),
    }
}

/// A validated entitlement target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureTarget {
    /// Where the role is assigned.
    pub scope: Scope,
    /// The full role definition id sent to ARM.
    pub role_definition_id: String,
    /// The built-in role name it was resolved from, if any.
    pub role_name: Option<String>,
    /// ABAC condition.
    pub condition: Option<String>,
    /// ABAC condition version (`2.0`).
    pub condition_version: Option<String>,
}

impl AzureTarget {
    /// Parses an entitlement's `target`; errors name the entitlement and key.
    pub(crate) fn parse(entitlement: &str, target: &Value) -> Result<Self, AzureError> {
        let err = |field: &str, message: String| AzureError::Target {
            entitlement: entitlement.to_string(),
            field: format!("target.{field}"),
            message,
        };
        let obj = target.as_object().ok_or_else(|| {
            err(
                "",
                "must be a table with `scope` and `role` or `role_definition_id`".into(),
            )
        })?;
        for key in obj.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                return Err(err(
                    key,
                    format!("unknown key; use one of {}", KNOWN_KEYS.join(", ")),
                ));
            }
        }
        let string = |key: &str| -> Result<Option<String>, AzureError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(key, "must be a string".into())),
            }
        };
        let scope_text = string("scope")?.ok_or_else(|| err("scope", "is required".into()))?;
        let scope = Scope::parse(&scope_text).map_err(|m| err("scope", m))?;
        let (role_definition_id, role_name) = match (string("role_definition_id")?, string("role")?)
        {
            (Some(id), None) => {
                parse_role_definition_id(&id).map_err(|m| err("role_definition_id", m))?;
                (id, None)
            }
            (None, Some(name)) => {
                let guid = BUILT_IN_ROLES
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
                        .map(|(_, g)| *g)
                        .ok_or_else(|| {
                            err(
                                "role",
                                format!(
                                    "`{}` is not a built-in role this provider knows; use `role_definition_id` with the full id",
                                    printable(&name)
                                ),
                            )
                        })?;
                (built_in_id(&scope, guid), Some(name.trim().to_string()))
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    "role",
                    "give either `role` or `role_definition_id`, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "role_definition_id",
                    "is required (or a built-in `role` name)".into(),
                ))
            }
        };
        let condition = string("condition")?;
        let condition_version = string("condition_version")?;
        match (&condition, &condition_version) {
            (Some(c), v) => {
                if c.trim().is_empty() || c.chars().count() > MAX_CONDITION_LEN {
                    return Err(err(
                        "condition",
                        format!("must be 1 to {MAX_CONDITION_LEN} characters"),
                    ));
                }
                if v.as_deref() != Some("2.0") {
                    return Err(err(
                        "condition_version",
                        "must be `2.0` when a condition is given".into(),
                    ));
                }
            }
            (None, Some(_)) => {
                return Err(err(
                    "condition_version",
                    "is only allowed with a `condition`".into(),
                ))
            }
            (None, None) => {}
        }
        Ok(Self {
            scope,
            role_definition_id,
            role_name,
            condition,
            condition_version,
        })
    }

    /// A short human description: role name (or id) at scope.
    pub fn describe(&self) -> String {
        match &self.role_name {
            Some(n) => format!("role `{n}` at `{}`", self.scope),
            None => format!("role `{}` at `{}`", self.role_definition_id, self.scope),
        }
    }
}

/// The id of a built-in role as assigned at `scope`.
fn built_in_id(scope: &Scope, guid: &str) -> String {
    match scope.subscription() {
        Some(sub) => {
            format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        }
        None => format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use serde_json::json;

    use super::*;

    const SUB: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";

    #[test]
    fn scope_kinds() {
        let cases = [
            (format!("/subscriptions/{SUB}"), ScopeKind::Subscription),
            (
                format!("/subscriptions/{SUB}/resourceGroups/prod-rg.1"),
                ScopeKind::ResourceGroup,
            ),
            (
                format!("/subscriptions/{SUB}/resourceGroups/prod/providers/Microsoft.Storage/storageAccounts/logs"),
                ScopeKind::Resource,
            ),
            (
                format!("/subscriptions/{SUB}/resourcegroups/prod/providers/Microsoft.Sql/servers/s1/databases/d1"),
                ScopeKind::Resource,
            ),
            (
                "/providers/Microsoft.Management/managementGroups/platform".to_string(),
                ScopeKind::ManagementGroup,
            ),
        ];
        for (s, kind) in cases {
            let scope = Scope::parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(scope.kind(), kind, "{s}");
            assert_eq!(scope.as_str(), s);
        }
        for bad in [
            "",
            "subscriptions/x",
            "/subscriptions/not-a-guid",
            &format!("/subscriptions/{SUB}/"),
            &format!("/subscriptions/{SUB}/resourceGroups/bad.name."),
            &format!("/subscriptions/{SUB}/resourceGroups/a b"),
            &format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Storage/x/y"),
            &format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts"),
            &format!("/subscriptions/{SUB}/resourceGroups/rg/../x"),
            &format!("/subscriptions/{SUB}?api-version=1"),
            "/providers/Microsoft.Management/managementGroups/",
            "/tenants/x",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn role_by_id_or_built_in_name() {
        let id = format!(
            "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        );
        let t = AzureTarget::parse(
            "e",
            &json!({"scope": format!("/subscriptions/{SUB}"), "role_definition_id": id}),
        )
        .unwrap();
        assert_eq!(t.role_definition_id, id);
        let t = AzureTarget::parse(
            "e",
            &json!({"scope": format!("/subscriptions/{SUB}/resourceGroups/rg"), "role": "reader"}),
        )
        .unwrap();
        assert_eq!(t.role_definition_id, id);
        assert_eq!(t.role_name.as_deref(), Some("reader"));
        let t = AzureTarget::parse(
            "e",
            &json!({"scope": "/providers/Microsoft.Management/managementGroups/mg", "role": "Owner"}),
        )
        .unwrap();
        assert_eq!(
            t.role_definition_id,
            "/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
        );
        for bad in [
            "/providers/Microsoft.Authorization/roleDefinitions/nope",
            "/subscriptions/x/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
        ] {
            assert!(parse_role_definition_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn target_errors_name_the_key() {
        let scope = format!("/subscriptions/{SUB}");
        let cases = [
            (json!("x"), "target."),
            (json!({"role": "Reader"}), "target.scope"),
            (
                json!({"scope": scope, "role": "Chief Wizard"}),
                "target.role",
            ),
            (json!({"scope": scope}), "target.role_definition_id"),
            (
                json!({"scope": scope, "role": "Reader", "role_definition_id": "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"}),
                "target.role",
            ),
            (
                json!({"scope": scope, "role": "Reader", "extra": 1}),
                "target.extra",
            ),
            (
                json!({"scope": scope, "role": "Reader", "condition": "x"}),
                "target.condition_version",
            ),
            (
                json!({"scope": scope, "role": "Reader", "condition": "x", "condition_version": "1.0"}),
                "target.condition_version",
            ),
            (
                json!({"scope": scope, "role": "Reader", "condition_version": "2.0"}),
                "target.condition_version",
            ),
            (
                json!({"scope": scope, "role": "Reader", "condition": "x".repeat(MAX_CONDITION_LEN + 1), "condition_version": "2.0"}),
                "target.condition",
            ),
        ];
        for (target, field) in cases {
            match AzureTarget::parse("ent-1", &target).map_err(|e| e.into_core("azure", "validate"))
            {
                Err(jit_core::Error::Config(jit_core::ConfigError::InvalidField {
                    entitlement,
                    field: f,
                    ..
                })) => {
                    assert_eq!(entitlement, "ent-1");
                    assert!(f.starts_with(field), "{target}: {f} vs {field}");
                }
                other => panic!("{target}: expected a config error, got {other:?}"),
            }
        }
        let ok = AzureTarget::parse(
            "e",
            &json!({"scope": scope, "role": "Reader", "condition": "@Resource[x] StringEquals 'y'", "condition_version": "2.0"}),
        )
        .unwrap();
        assert_eq!(ok.condition_version.as_deref(), Some("2.0"));
    }
}
