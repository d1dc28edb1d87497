//! The built-in catalogue policy: a declarative TOML file that lists every
//! entitlement, who is eligible for it, how long it may last, and who approves.
//!
//! # Format
//!
//! ```toml
//! [settings]                 # optional
//! pending_ttl = "24h"        # how long a request waits for approvals; default 24h
//!
//! [admins]                   # optional: may revoke anything and read the audit log
//! ids = ["alice"]
//! groups = ["secops"]
//!
//! [[entitlements]]
//! id = "prod-db-read"                     # 1 to 128 characters of [A-Za-z0-9._:/-]
//! description = "Read-only access to the production database"
//! provider = "local"                      # non-empty
//! max_duration = "1h"                     # "30m", "1h30m", "PT30M"; at most 7 days
//! target = { audience = "prod-db", scopes = ["read"] }   # any table; checked by the provider
//! require_justification = true            # default true
//! justification_pattern = "^(INC|CHG)-[0-9]+: .{10,}"   # optional regex
//! require_ticket = false                  # default false
//! ticket_pattern = "^INC-[0-9]+$"         # optional regex; a given ticket must match
//! require_verified_ticket = false         # default false; true: the broker's ticket verifier must verify it
//! require_revocation = false              # true: the broker refuses to start unless the
//!                                         # provider can revoke early (not a GCP access token)
//!
//! [entitlements.eligible]                 # who may request; at least one id or group
//! ids = ["bob"]
//! groups = ["engineering"]
//!
//! [entitlements.approval]                 # optional: human approval
//! ids = ["carol"]
//! groups = ["sre-leads"]
//! quorum = 1                              # >= 1, default 1
//!
//! [entitlements.auto_approve]             # optional: ALL given conditions must hold
//! max_duration = "15m"                    # requested duration (after clamping) <= this
//! groups = ["oncall"]                     # requester in at least one of these
//! attributes = { oncall = "true" }        # requester attributes equal these
//! max_risk = 40                           # risk score (0-100) at most this; see below
//! on_call = ["payments-primary"]          # requester on call now for at least one; see below
//! ```
//!
//! `max_risk` needs a broker with a risk assessor
//! ([`BrokerBuilder::risk_assessor`](crate::BrokerBuilder::risk_assessor),
//! see [`crate::risk`]): a request whose score is above it, or that could
//! not be scored (no assessor, an assessor that failed or timed out), is
//! not auto-approved and goes to human approval, or is denied when the
//! entitlement has no `approval` table. Risk never approves anything.
//!
//! `on_call` needs a broker with an on-call source
//! ([`BrokerBuilder::on_call_source`](crate::BrokerBuilder::on_call_source),
//! see [`crate::oncall`]), which the broker asks about exactly these
//! schedules ([`Policy::on_call_schedules`]) at submit: the requester's
//! exact subject id must be on call for at least one of them at that
//! instant. Without a source, or when the source cannot answer, nobody is
//! on call: the request goes to human approval, or is denied when the
//! entitlement has no `approval` table.
//!
//! Every table rejects keys it does not know, with the line of the key, so a
//! typo such as `approvers` for `ids` fails loudly instead of silently
//! loosening or tightening a rule. Ids and groups grant, so they match the
//! principal's subject id and groups exactly as the identity provider spells
//! them (OIDC `sub` is case-sensitive): `Alice` in a catalogue does not name
//! the subject `alice`, and a principal's aliases never match. Only the
//! refusals widen: the requester never approves their own request under any
//! spelling, and a quorum counts distinct people
//! ([`identity_skeleton`]). Patterns are
//! unanchored unless they use `^` and `$`.
//!
//! An entitlement with neither `approval` nor `auto_approve` is valid but
//! denies every request. An empty `[entitlements.auto_approve]` table has no
//! conditions and so approves every eligible request.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use jit_core::policy::{CataloguePolicy, Policy, PolicyContext};
//! use jit_core::types::{AccessRequest, Principal, Verdict};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = CataloguePolicy::from_toml_str(r#"
//!     [settings]
//!     pending_ttl = "4h"
//!
//!     [admins]
//!     groups = ["secops"]
//!
//!     [[entitlements]]
//!     id = "prod-db-read"
//!     description = "Read-only access to the production database"
//!     provider = "local"
//!     max_duration = "1h"
//!     target = { audience = "prod-db", scopes = ["read"] }
//!     justification_pattern = "^(INC|CHG)-[0-9]+: .{10,}"
//!
//!     [entitlements.eligible]
//!     groups = ["engineering"]
//!
//!     [entitlements.approval]
//!     groups = ["sre-leads"]
//!     quorum = 1
//!
//!     [entitlements.auto_approve]
//!     max_duration = "15m"
//!     groups = ["oncall"]
//! "#)?;
//!
//! let bob = Principal::new("bob")?.with_group("engineering").with_group("oncall");
//! let entitlement = policy.entitlement("prod-db-read").ok_or("not in the catalogue")?;
//! let request = AccessRequest::new(
//!     "prod-db-read",
//!     "10m".parse()?,
//!     "INC-42: restore the orders table",
//! );
//! let ctx = PolicyContext::new(chrono::Utc::now(), Duration::from_secs(12 * 3600));
//! let decision = policy.evaluate(&bob, &request, &entitlement, &ctx)?;
//! assert_eq!(decision.verdict, Verdict::AutoApprove);
//! assert_eq!(decision.max_duration.to_string(), "1h");
//! assert_eq!(policy.pending_ttl(), Duration::from_secs(4 * 3600));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use super::{Policy, PolicyContext};
use crate::error::{ConfigError, RequestError};
use crate::risk::{RiskAssessment, MAX_SCORE};
use crate::types::{
    identity_skeleton, parse_duration, validate_entitlement_id, AccessRequest, ApproverSet,
    Decision, Entitlement, GrantDuration, Principal, PrincipalId, Verdict,
};

pub(crate) const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------
// The file as written. Every table denies unknown keys; values stay as text
// so that bad values become `InvalidField` errors naming the entitlement.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    #[serde(default)]
    settings: Option<RawSettings>,
    #[serde(default)]
    admins: Option<RawPrincipals>,
    #[serde(default)]
    entitlements: Vec<RawEntitlement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    pending_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrincipals {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

fn default_true() -> bool {
    true
}

fn default_quorum() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntitlement {
    id: String,
    #[serde(default)]
    description: String,
    provider: String,
    max_duration: String,
    #[serde(default)]
    target: toml::Table,
    #[serde(default = "default_true")]
    require_justification: bool,
    #[serde(default)]
    justification_pattern: Option<String>,
    #[serde(default)]
    require_ticket: bool,
    #[serde(default)]
    ticket_pattern: Option<String>,
    #[serde(default)]
    require_verified_ticket: bool,
    #[serde(default)]
    require_revocation: bool,
    #[serde(default)]
    eligible: Option<RawPrincipals>,
    #[serde(default)]
    approval: Option<RawApproval>,
    #[serde(default)]
    auto_approve: Option<RawAutoApprove>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApproval {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    // Signed so that a negative quorum is reported as an invalid field, not a type error.
    #[serde(default = "default_quorum")]
    quorum: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoApprove {
    #[serde(default)]
    max_duration: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    // Signed so that a negative value is reported as an invalid field.
    #[serde(default)]
    max_risk: Option<i64>,
    #[serde(default)]
    on_call: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------
// The compiled catalogue.
// ---------------------------------------------------------------------------

/// Catalogue-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pending_ttl: Duration,
}

impl Settings {
    /// How long a request waits for approvals before it times out.
    pub fn pending_ttl(&self) -> Duration {
        self.pending_ttl
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            pending_ttl: DEFAULT_PENDING_TTL,
        }
    }
}

/// Ids and groups as written, plus hash sets for O(1) exact membership.
#[derive(Debug, Clone, Default)]
struct PrincipalSet {
    as_written: ApproverSet,
    ids: HashSet<String>,
    groups: HashSet<String>,
}

impl PrincipalSet {
    fn new(ids: Vec<String>, groups: Vec<String>) -> Self {
        Self {
            ids: ids.iter().cloned().collect(),
            groups: groups.iter().cloned().collect(),
            as_written: ApproverSet {
                ids: ids.into_iter().collect(),
                groups: groups.into_iter().collect(),
            },
        }
    }

    /// Why the principal matches, if it does: by its exact subject id, or
    /// through one of its groups (never by an alias).
    fn matches<'p>(&self, p: &'p Principal) -> Option<Match<'p>> {
        if self.ids.contains(p.id.as_str()) {
            return Some(Match::Id);
        }
        self.group_of(p).map(Match::Group)
    }

    /// The first of the principal's groups (as the principal spells it) that is in the set.
    fn group_of<'p>(&self, p: &'p Principal) -> Option<&'p str> {
        p.groups
            .iter()
            .find(|g| self.groups.contains(g.as_str()))
            .map(String::as_str)
    }
}

enum Match<'p> {
    Id,
    Group(&'p str),
}

#[derive(Debug, Clone)]
pub(crate) struct ApprovalRule {
    pub(crate) approvers: ApproverSet,
    pub(crate) quorum: u32,
}

#[derive(Debug, Clone)]
struct AutoApproveRule {
    max_duration: Option<GrantDuration>,
    groups: Option<PrincipalSet>,
    attributes: BTreeMap<String, String>,
    max_risk: Option<u8>,
    /// Schedules, as written (at least one).
    on_call: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Rule {
    entitlement: Entitlement,
    require_justification: bool,
    justification_pattern: Option<Regex>,
    require_ticket: bool,
    ticket_pattern: Option<Regex>,
    require_verified_ticket: bool,
    require_revocation: bool,
    eligible: PrincipalSet,
    approval: Option<ApprovalRule>,
    auto_approve: Option<AutoApproveRule>,
}

/// The built-in declarative policy, loaded from TOML (see the [module docs](self)).
///
/// Everything is validated and compiled once at load: evaluation does no
/// parsing, no regex compilation, and finds entitlements by id in O(1).
#[derive(Debug, Clone)]
pub struct CataloguePolicy {
    settings: Settings,
    admins: PrincipalSet,
    // File order, for `entitlements()`; `index` maps ids into it.
    rules: Vec<Rule>,
    index: HashMap<String, usize>,
}

impl CataloguePolicy {
    /// Parses and validates a catalogue.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let raw: RawCatalogue = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        Self::compile(raw)
    }

    /// Reads, parses and validates a catalogue file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_toml_str(&text)
    }

    /// Catalogue-wide settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The administrators, as written in `[admins]`.
    pub fn admins(&self) -> &ApproverSet {
        &self.admins.as_written
    }

    fn compile(raw: RawCatalogue) -> Result<Self, ConfigError> {
        let settings = match raw.settings.and_then(|s| s.pending_ttl) {
            None => Settings::default(),
            Some(text) => {
                let invalid = |message: String| ConfigError::InvalidField {
                    entitlement: "settings".into(),
                    field: "pending_ttl".into(),
                    message,
                };
                let ttl = parse_duration(&text).map_err(|e| invalid(e.to_string()))?;
                if ttl.is_zero() {
                    return Err(invalid("must be greater than zero".into()));
                }
                Settings { pending_ttl: ttl }
            }
        };

        let admins = raw.admins.unwrap_or_default();
        check_principals("admins", "", &admins)?;
        let admins = PrincipalSet::new(admins.ids, admins.groups);

        // Identical patterns share one compiled regex (a clone is a cheap handle).
        let mut regexes: HashMap<String, Regex> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.entitlements.len());
        let mut index = HashMap::with_capacity(raw.entitlements.len());
        for e in raw.entitlements {
            let rule = compile_rule(e, &mut regexes)?;
            let id = rule.entitlement.id.clone();
            if index.contains_key(&id) {
                return Err(ConfigError::DuplicateEntitlement(id));
            }
            index.insert(id, rules.len());
            rules.push(rule);
        }
        Ok(Self {
            settings,
            admins,
            rules,
            index,
        })
    }

    fn rule(&self, id: &str) -> Option<&Rule> {
        self.index.get(id).and_then(|&i| self.rules.get(i))
    }
}

/// Maps a TOML error to `UnknownKey` or `Syntax`, with the 1-based line of its span.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
    let message = e.message().trim();
    if let Some(key) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key)
    {
        return ConfigError::UnknownKey {
            key: key.to_string(),
            line,
        };
    }
    // The parser's messages may span lines; errors here are single-line.
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::Syntax { message, line }
}

/// The 1-based line of a byte offset (also the on-call rota's errors).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(crate) fn invalid_field(
    entitlement: &str,
    field: &str,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::InvalidField {
        entitlement: entitlement.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks that every id is a valid principal id and every group a non-empty name.
/// `owner` is the entitlement (or `admins`), `prefix` the table path for the field name.
fn check_principals(owner: &str, prefix: &str, p: &RawPrincipals) -> Result<(), ConfigError> {
    check_names(owner, prefix, &p.ids, &p.groups)
}

pub(crate) fn check_names(
    owner: &str,
    prefix: &str,
    ids: &[String],
    groups: &[String],
) -> Result<(), ConfigError> {
    for id in ids {
        PrincipalId::new(id.as_str())
            .map_err(|e| invalid_field(owner, &format!("{prefix}ids"), e.to_string()))?;
    }
    for g in groups {
        if g.trim().is_empty() || g.chars().any(char::is_control) {
            return Err(invalid_field(
                owner,
                &format!("{prefix}groups"),
                format!("group `{}` is empty or has control characters", g.trim()),
            ));
        }
    }
    Ok(())
}

pub(crate) fn compile_regex(
    entitlement: &str,
    field: &str,
    pattern: &str,
    cache: &mut HashMap<String, Regex>,
) -> Result<Regex, ConfigError> {
    if let Some(re) = cache.get(pattern) {
        return Ok(re.clone());
    }
    let re = Regex::new(pattern).map_err(|e| {
        invalid_field(
            entitlement,
            field,
            format!("`{pattern}` does not compile: {}", regex_reason(&e)),
        )
    })?;
    cache.insert(pattern.to_string(), re.clone());
    Ok(re)
}

/// The one-line cause of a regex error (its `Display` spans several lines).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or_else(|| text.trim());
    let line = line.trim_end_matches('.');
    let mut chars = line.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "invalid pattern".into(),
    }
}

pub(crate) fn parse_grant_duration(
    entitlement: &str,
    field: &str,
    text: &str,
) -> Result<GrantDuration, ConfigError> {
    text.parse::<GrantDuration>()
        .map_err(|e| invalid_field(entitlement, field, e.to_string()))
}

fn compile_rule(
    e: RawEntitlement,
    regexes: &mut HashMap<String, Regex>,
) -> Result<Rule, ConfigError> {
    if let Err(err) = validate_entitlement_id(&e.id) {
        let shown = match &err {
            RequestError::EntitlementId(shown) => shown.clone(),
            _ => e.id.clone(),
        };
        return Err(invalid_field(&shown, "id", err.to_string()));
    }
    let id = e.id;
    if e.provider.trim().is_empty() {
        return Err(invalid_field(&id, "provider", "must not be empty"));
    }
    let max_duration = parse_grant_duration(&id, "max_duration", &e.max_duration)?;
    let target = toml_to_json(&id, toml::Value::Table(e.target))?;

    let justification_pattern = e
        .justification_pattern
        .map(|p| compile_regex(&id, "justification_pattern", &p, regexes))
        .transpose()?;
    let ticket_pattern = e
        .ticket_pattern
        .map(|p| compile_regex(&id, "ticket_pattern", &p, regexes))
        .transpose()?;

    let eligible = e.eligible.unwrap_or_default();
    if eligible.ids.is_empty() && eligible.groups.is_empty() {
        return Err(invalid_field(
            &id,
            "eligible",
            "name at least one id or group that may request it",
        ));
    }
    check_principals(&id, "eligible.", &eligible)?;
    let eligible = PrincipalSet::new(eligible.ids, eligible.groups);

    let approval = e.approval.map(|a| compile_approval(&id, a)).transpose()?;

    let auto_approve = e
        .auto_approve
        .map(|a| compile_auto_approve(&id, a, max_duration))
        .transpose()?;

    Ok(Rule {
        entitlement: Entitlement {
            id,
            description: e.description,
            provider: e.provider,
            target,
            max_duration,
        },
        require_justification: e.require_justification,
        justification_pattern,
        // A verified ticket is a ticket first.
        require_ticket: e.require_ticket || e.require_verified_ticket,
        ticket_pattern,
        require_verified_ticket: e.require_verified_ticket,
        require_revocation: e.require_revocation,
        eligible,
        approval,
        auto_approve,
    })
}

pub(crate) fn compile_approval(id: &str, a: RawApproval) -> Result<ApprovalRule, ConfigError> {
    let quorum = u32::try_from(a.quorum)
        .ok()
        .filter(|&q| q >= 1)
        .ok_or_else(|| {
            invalid_field(
                id,
                "approval.quorum",
                format!("`{}` must be at least 1", a.quorum),
            )
        })?;
    check_names(id, "approval.", &a.ids, &a.groups)?;
    if a.groups.is_empty() {
        // Each person counts once, also when listed twice under spellings that
        // could be one person: counting them as one can only refuse a catalogue.
        let distinct: HashSet<String> = a.ids.iter().map(|i| identity_skeleton(i)).collect();
        if (distinct.len() as u64) < u64::from(quorum) {
            return Err(ConfigError::UnreachableQuorum {
                entitlement: id.to_string(),
                quorum,
                message: format!(
                    "only {} distinct approver id(s) and no approver groups",
                    distinct.len()
                ),
            });
        }
    }
    Ok(ApprovalRule {
        approvers: ApproverSet {
            ids: a.ids.into_iter().collect(),
            groups: a.groups.into_iter().collect(),
        },
        quorum,
    })
}

fn compile_auto_approve(
    id: &str,
    a: RawAutoApprove,
    entitlement_max: GrantDuration,
) -> Result<AutoApproveRule, ConfigError> {
    let max_duration = a
        .max_duration
        .map(|t| parse_grant_duration(id, "auto_approve.max_duration", &t))
        .transpose()?;
    if let Some(m) = max_duration {
        if m > entitlement_max {
            return Err(invalid_field(
                id,
                "auto_approve.max_duration",
                format!("`{m}` exceeds the entitlement's `max_duration` of `{entitlement_max}`"),
            ));
        }
    }
    let groups = match a.groups {
        None => None,
        Some(groups) => {
            // An empty list could never match: almost certainly a mistake.
            if groups.is_empty() {
                return Err(invalid_field(
                    id,
                    "auto_approve.groups",
                    "name at least one group, or remove the key",
                ));
            }
            check_names(id, "auto_approve.", &[], &groups)?;
            Some(PrincipalSet::new(Vec::new(), groups))
        }
    };
    let max_risk = a
        .max_risk
        .map(|r| {
            u8::try_from(r)
                .ok()
                .filter(|r| *r <= MAX_SCORE)
                .ok_or_else(|| {
                    invalid_field(
                        id,
                        "auto_approve.max_risk",
                        format!("`{r}` is not a score from 0 to {MAX_SCORE}"),
                    )
                })
        })
        .transpose()?;
    let on_call = match a.on_call {
        None => None,
        Some(schedules) => {
            if schedules.is_empty() {
                return Err(invalid_field(
                    id,
                    "auto_approve.on_call",
                    "name at least one on-call schedule, or remove the key",
                ));
            }
            if let Some(bad) = schedules.iter().find(|s| {
                s.trim().is_empty() || s.trim() != s.as_str() || s.chars().any(char::is_control)
            }) {
                return Err(invalid_field(
                    id,
                    "auto_approve.on_call",
                    format!(
                        "schedule `{}` is empty, padded or has control characters",
                        bad.trim()
                    ),
                ));
            }
            let mut unique = Vec::with_capacity(schedules.len());
            for s in schedules {
                if !unique.contains(&s) {
                    unique.push(s);
                }
            }
            Some(unique)
        }
    };
    Ok(AutoApproveRule {
        max_duration,
        groups,
        attributes: a.attributes,
        max_risk,
        on_call,
    })
}

/// Converts the free-form target to JSON (datetimes become their RFC 3339 text).
pub(crate) fn toml_to_json(id: &str, v: toml::Value) -> Result<serde_json::Value, ConfigError> {
    Ok(match v {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| invalid_field(id, "target", format!("`{f}` is not a finite number")))?,
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .map(|i| toml_to_json(id, i))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.into_iter()
                .map(|(k, v)| Ok((k, toml_to_json(id, v)?)))
                .collect::<Result<_, ConfigError>>()?,
        ),
    })
}

// ---------------------------------------------------------------------------
// Evaluation.
// ---------------------------------------------------------------------------

fn quote_list(items: &BTreeSet<String>) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn quote_vec(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn describe_approvers(a: &ApproverSet) -> String {
    let mut parts = Vec::new();
    if !a.ids.is_empty() {
        parts.push(format!("ids {}", quote_list(&a.ids)));
    }
    if !a.groups.is_empty() {
        parts.push(format!("groups {}", quote_list(&a.groups)));
    }
    parts.join(" or ")
}

/// The checks of a request's text an entitlement sets (justification and
/// ticket): errors, since the request itself is malformed. Shared with the
/// Cedar policy, whose entitlement file sets the same fields.
pub(crate) fn check_request_fields(
    entitlement: &str,
    require_justification: bool,
    justification_pattern: Option<&Regex>,
    require_ticket: bool,
    ticket_pattern: Option<&Regex>,
    request: &AccessRequest,
) -> Result<(), RequestError> {
    let justification = request.justification.trim();
    if justification.is_empty() {
        if require_justification {
            return Err(RequestError::JustificationMissing);
        }
    } else if let Some(re) = justification_pattern {
        // Checked on the text as given: the pattern may care about spacing.
        if !re.is_match(&request.justification) {
            return Err(RequestError::JustificationPattern {
                pattern: re.as_str().to_string(),
            });
        }
    }
    match request.ticket.as_deref().filter(|t| !t.trim().is_empty()) {
        None if require_ticket => Err(RequestError::TicketMissing(entitlement.to_string())),
        None => Ok(()),
        Some(ticket) => match ticket_pattern {
            Some(re) if !re.is_match(ticket) => Err(RequestError::TicketPattern {
                ticket: ticket.to_string(),
                pattern: re.as_str().to_string(),
            }),
            _ => Ok(()),
        },
    }
}

impl Rule {
    fn check_fields(&self, request: &AccessRequest) -> Result<(), RequestError> {
        check_request_fields(
            &self.entitlement.id,
            self.require_justification,
            self.justification_pattern.as_ref(),
            self.require_ticket,
            self.ticket_pattern.as_ref(),
            request,
        )
    }

    /// Checks the auto-approve conditions; `Ok` with what held, `Err` with the first that failed.
    fn auto_approve(
        rule: &AutoApproveRule,
        requester: &Principal,
        duration: GrantDuration,
        ctx: &PolicyContext,
    ) -> Result<Vec<String>, String> {
        let risk: Option<&RiskAssessment> = ctx.risk.as_ref();
        let mut held = Vec::new();
        if let Some(max) = rule.max_duration {
            if duration > max {
                return Err(format!(
                    "duration `{duration}` exceeds the auto-approve limit of `{max}`"
                ));
            }
            held.push(format!(
                "duration `{duration}` is within the auto-approve limit of `{max}`"
            ));
        }
        if let Some(groups) = &rule.groups {
            match groups.group_of(requester) {
                Some(g) => held.push(format!("requester is in group `{g}`")),
                None => {
                    return Err(format!(
                        "`{}` is in none of the groups {}",
                        requester.id,
                        quote_list(&groups.as_written.groups)
                    ))
                }
            }
        }
        for (key, want) in &rule.attributes {
            match requester.attributes.get(key) {
                Some(have) if have == want => {
                    held.push(format!("attribute `{key}` is `{want}`"));
                }
                Some(have) => return Err(format!("attribute `{key}` is `{have}`, not `{want}`")),
                None => return Err(format!("attribute `{key}` is not set")),
            }
        }
        if let Some(schedules) = &rule.on_call {
            // Fail closed: a schedule nobody could answer for is not on call.
            match schedules.iter().find(|s| ctx.is_on_call(s)) {
                Some(s) => held.push(format!("`{}` is on call for `{s}`", requester.id)),
                None if ctx.on_call.is_none() => {
                    return Err(format!(
                        "`{}` must be on call for one of {}, but the broker has no on-call source",
                        requester.id,
                        quote_vec(schedules)
                    ))
                }
                None => {
                    return Err(format!(
                        "`{}` is not on call for any of {} now",
                        requester.id,
                        quote_vec(schedules)
                    ))
                }
            }
        }
        if let Some(max) = rule.max_risk {
            // Fail closed: no score is above every limit (see `crate::risk`).
            match risk {
                None => {
                    return Err(format!(
                        "risk must be at most {max}, but the broker has no risk assessor"
                    ))
                }
                Some(a) => match a.score {
                    Some(score) if score <= max => held.push(format!(
                        "risk {score} is within the auto-approve limit of {max}"
                    )),
                    Some(_) => {
                        return Err(format!(
                            "{} exceeds the auto-approve limit of {max}",
                            a.summary()
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{}; the auto-approve limit of {max} needs a score",
                            a.summary()
                        ))
                    }
                },
            }
        }
        if held.is_empty() {
            held.push("the rule has no conditions".into());
        }
        Ok(held)
    }
}

impl Policy for CataloguePolicy {
    fn entitlement(&self, id: &str) -> Option<Entitlement> {
        self.rule(id).map(|r| r.entitlement.clone())
    }

    fn entitlements(&self) -> Vec<Entitlement> {
        self.rules.iter().map(|r| r.entitlement.clone()).collect()
    }

    fn on_call_schedules(&self, entitlement: &Entitlement) -> Vec<String> {
        self.rule(&entitlement.id)
            .and_then(|r| r.auto_approve.as_ref())
            .and_then(|a| a.on_call.clone())
            .unwrap_or_default()
    }

    fn requires_revocation(&self, entitlement: &str) -> bool {
        self.rule(entitlement).is_some_and(|r| r.require_revocation)
    }

    fn evaluate(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> Result<Decision, RequestError> {
        let rule = self
            .rule(&entitlement.id)
            .ok_or_else(|| RequestError::UnknownEntitlement(entitlement.id.clone()))?;
        let id = &rule.entitlement.id;

        // 1. Field checks: errors, nothing recorded.
        rule.check_fields(request)?;

        // The effective maximum (rule 2 of the design). The catalogue's own value
        // wins over a caller-supplied copy if the two ever disagree.
        let catalogue_max = rule.entitlement.max_duration.min(entitlement.max_duration);
        let effective = if ctx.provider_max >= catalogue_max.get() {
            Some(catalogue_max)
        } else {
            // Whole seconds, rounded down, so the provider's limit is never exceeded.
            GrantDuration::new(Duration::from_secs(ctx.provider_max.as_secs())).ok()
        };
        let deny = |max_duration: GrantDuration, reasons: Vec<String>| Decision {
            verdict: Verdict::Deny,
            max_duration,
            reasons,
            risk: None,
            ticket: None,
            on_call: None,
        };

        // 2. Eligibility.
        let eligible_reason = match rule.eligible.matches(requester) {
            Some(Match::Id) => format!("`{}` is eligible for `{id}` by id", requester.id),
            Some(Match::Group(g)) => {
                format!(
                    "`{}` is eligible for `{id}` through group `{g}`",
                    requester.id
                )
            }
            None => {
                return Ok(deny(
                    effective.unwrap_or(catalogue_max),
                    vec![format!("`{}` is not eligible for `{id}`", requester.id)],
                ))
            }
        };
        let mut reasons = vec![eligible_reason];

        // 3. Clamp to the effective maximum.
        let Some(max_duration) = effective else {
            reasons.push(format!(
                "provider `{}` allows at most `{}ms`, below the one-second minimum grant",
                rule.entitlement.provider,
                ctx.provider_max.as_millis()
            ));
            return Ok(deny(catalogue_max, reasons));
        };
        let duration = if request.duration > max_duration {
            reasons.push(format!(
                "duration `{}` clamped to the maximum of `{max_duration}`",
                request.duration
            ));
            max_duration
        } else {
            request.duration
        };

        // 4. A verified ticket, where required: anything short of a verdict
        // that verified this very ticket is a deny (fail closed).
        if rule.require_verified_ticket {
            let given = request.ticket.as_deref().map(str::trim);
            match &ctx.ticket {
                Some(v) if v.verified && Some(v.ticket.trim()) == given => {
                    reasons.push(format!("verified: {}", v.reason));
                }
                Some(v) => {
                    reasons.push(format!("`{id}` requires a verified ticket: {}", v.reason));
                    return Ok(deny(max_duration, reasons));
                }
                None => {
                    reasons.push(format!(
                        "`{id}` requires a verified ticket, but the broker has no ticket verifier"
                    ));
                    return Ok(deny(max_duration, reasons));
                }
            }
        }

        // 5. Auto-approve, else human approval, else deny.
        let mut auto_failed = None;
        if let Some(auto) = &rule.auto_approve {
            match Rule::auto_approve(auto, requester, duration, ctx) {
                Ok(held) => {
                    reasons.extend(held.into_iter().map(|h| format!("auto-approved: {h}")));
                    return Ok(Decision {
                        verdict: Verdict::AutoApprove,
                        max_duration,
                        reasons,
                        risk: None,
                        ticket: None,
                        on_call: None,
                    });
                }
                Err(failed) => auto_failed = Some(failed),
            }
        }
        if let Some(failed) = auto_failed {
            reasons.push(format!("not auto-approved: {failed}"));
        }
        match &rule.approval {
            Some(approval) => {
                let n = approval.quorum;
                reasons.push(format!(
                    "needs {n} approval{} from {}",
                    if n == 1 { "" } else { "s" },
                    describe_approvers(&approval.approvers)
                ));
                Ok(Decision {
                    verdict: Verdict::NeedsApproval {
                        approvers: approval.approvers.clone(),
                        quorum: n,
                    },
                    max_duration,
                    reasons,
                    risk: None,
                    ticket: None,
                    on_call: None,
                })
            }
            None => {
                reasons.push(if rule.auto_approve.is_some() {
                    format!("no approval rule: `{id}` has no human approval to fall back on")
                } else {
                    format!("no approval rule: `{id}` has neither `approval` nor `auto_approve`, so every request is denied")
                });
                Ok(deny(max_duration, reasons))
            }
        }
    }

    fn is_admin(&self, principal: &Principal) -> bool {
        self.admins.matches(principal).is_some()
    }

    fn pending_ttl(&self) -> Duration {
        self.settings.pending_ttl
    }

    fn approvable_entitlements(&self, principal: &Principal) -> Option<Vec<String>> {
        Some(
            self.rules
                .iter()
                .filter(|r| {
                    r.approval
                        .as_ref()
                        .is_some_and(|a| a.approvers.contains(principal))
                })
                .map(|r| r.entitlement.id.clone())
                .collect(),
        )
    }
}
