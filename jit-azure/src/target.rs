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
//! | `role` | a role's display name, built-in (`Reader`) or custom: 1 to [`MAX_ROLE_NAME_LEN`] characters, no control characters (exactly one of `role` and `role_definition_id`) |
//! | `condition` | at most [`MAX_CONDITION_LEN`] characters, with `condition_version` `2.0` |
//! | anything else | an error naming the key |
//!
//! A role name is checked for its shape here and resolved by the provider
//! at the first grant that needs it, through ARM's role definitions at the
//! entitlement's scope (`GET {scope}/providers/Microsoft.Authorization/roleDefinitions?$filter=roleName eq '<name>'`,
//! API 2022-04-01), then cached: no id table is kept here, so custom roles
//! work by name too and a built-in role added by Microsoft needs no release
//! of this crate. Display names are unique in a directory
//! (<https://learn.microsoft.com/azure/role-based-access-control/custom-roles>),
//! so the lookup finds one role or none; see
//! [`AzureProvider`](crate::AzureProvider) for what happens when it finds
//! none or several.
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

/// Longest role display name accepted (ARM's limit for a role's name,
/// <https://learn.microsoft.com/azure/role-based-access-control/custom-roles>).
pub const MAX_ROLE_NAME_LEN: usize = 512;

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

/// Which role an entitlement grants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoleRef {
    /// A full role definition id, sent to ARM as given.
    Id(String),
    /// A role's display name, resolved through ARM's role definitions at
    /// the scope (see the [module docs](self)).
    Name(String),
}

/// A validated entitlement target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureTarget {
    /// Where the role is assigned.
    pub scope: Scope,
    /// The role: a full id, or a name the provider resolves.
    pub role: RoleRef,
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
        let role = match (string("role_definition_id")?, string("role")?) {
            (Some(id), None) => {
                parse_role_definition_id(&id).map_err(|m| err("role_definition_id", m))?;
                RoleRef::Id(id)
            }
            (None, Some(name)) => {
                RoleRef::Name(check_role_name(&name).map_err(|m| err("role", m))?)
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
                    "is required (or a role's display name as `role`)".into(),
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
            role,
            condition,
            condition_version,
        })
    }

    /// The role's display name, when the entitlement gave one.
    pub fn role_name(&self) -> Option<&str> {
        match &self.role {
            RoleRef::Name(n) => Some(n),
            RoleRef::Id(_) => None,
        }
    }
}

/// Checks a role display name's shape (no remote call); returns it trimmed.
pub fn check_role_name(name: &str) -> Result<String, String> {
    let t = name.trim();
    if t.is_empty() {
        return Err("is empty; give a role's display name such as `Reader`".into());
    }
    if t.chars().count() > MAX_ROLE_NAME_LEN {
        return Err(format!(
            "is longer than {MAX_ROLE_NAME_LEN} characters, the limit of a role's name"
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(format!("`{}` contains control characters", printable(t)));
    }
    Ok(t.to_string())
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
        assert_eq!(t.role, RoleRef::Id(id));
        assert_eq!(t.role_name(), None);
        // A name is kept (trimmed) for the provider to resolve: custom
        // roles too, no table of built-in ones.
        let t = AzureTarget::parse(
            "e",
            &json!({"scope": format!("/subscriptions/{SUB}/resourceGroups/rg"), "role": " Storage Blob Data Reader "}),
        )
        .unwrap();
        assert_eq!(t.role, RoleRef::Name("Storage Blob Data Reader".into()));
        let t = AzureTarget::parse(
            "e",
            &json!({"scope": "/providers/Microsoft.Management/managementGroups/mg", "role": "Acme Deployer (custom)"}),
        )
        .unwrap();
        assert_eq!(t.role_name(), Some("Acme Deployer (custom)"));
        for bad in ["", "   ", "Reader\u{7}", &"x".repeat(MAX_ROLE_NAME_LEN + 1)] {
            assert!(check_role_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_role_name(&"x".repeat(MAX_ROLE_NAME_LEN)).is_ok());
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
            (json!({"scope": scope, "role": "  "}), "target.role"),
            (json!({"scope": scope, "role": 7}), "target.role"),
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
