//! A [`Policy`] written in [Cedar](https://www.cedarpolicy.com) (feature
//! `cedar`), for teams that already write Cedar.
//!
//! Two files make a Cedar policy:
//!
//! - **An entitlement file** (TOML) lists what can be requested, exactly as
//!   the catalogue does ([`crate::policy::catalogue`]) minus the judgement:
//!   id, description, provider, target, `max_duration`, the justification
//!   and ticket rules (malformed text is an error, as in the catalogue), who
//!   approves and how many (`approval`), `require_revocation`, and the
//!   on-call schedules the policies read.
//! - **A Cedar policy set** decides who may have what and when it needs a
//!   human. It is validated at load, in strict mode, against the published
//!   schema [`SCHEMA`] (`jit-core/cedar/jit.cedarschema`); a policy that
//!   does not parse or type-check is refused with a
//!   [`ConfigError::Cedar`] naming its `@id` and its line and column.
//!
//! # Mapping
//!
//! | Cedar | from |
//! | --- | --- |
//! | `principal`: `Jit::User::"<subject id>"` in `Jit::Group::"<group>"` for each group | the requester; its attributes are tags (`principal.getTag("oncall")`); aliases are never mapped |
//! | `action`: `Jit::Action::"request"` | every decision ([`Policy::evaluate`]); `approve`, `revoke` and `break_glass` are in the schema for hosts that ask themselves ([`CedarPolicy::is_authorized`]) |
//! | `resource`: `Jit::Entitlement::"<id>"` with `id`, `provider`, `description`, `max_duration_secs` | the entitlement file; the target's top-level fields are tags (strings as written, other values as JSON text) |
//! | `context.duration_secs` | the requested duration after clamping to the effective maximum (entitlement and provider), in seconds |
//! | `context.justification_present` | the justification has text other than white space |
//! | `context.ticket` (optional), `context.ticket_verified` | the ticket as given (trimmed); whether the broker's verifier verified exactly this ticket ([`PolicyContext::ticket`]) |
//! | `context.risk_known`, `context.risk_score` | [`PolicyContext::risk`]: the score 0 to 100 when there is one; **101** when there is none (no assessor, or it failed), so an unscored request is above every threshold |
//! | `context.hour_utc`, `minute_utc`, `weekday_utc` | [`PolicyContext::now`] (weekday 1 = Monday to 7 = Sunday) |
//! | `context.on_call` | [`PolicyContext::on_call`]: the schedules the requester is on call for now (empty when no one could tell) |
//!
//! # From a Cedar answer to a [`Decision`]
//!
//! 1. The request's text is checked against the entitlement file's
//!    justification and ticket rules: errors, as in the catalogue.
//! 2. Cedar is asked whether `principal` may `request` `resource`.
//!    - **Any evaluation error** (a policy that failed at run time): deny,
//!      naming the policy. An error never lets a request through, since the
//!      policy that failed may have been a `forbid`.
//!    - **Deny** (a `forbid` held, or no `permit` did): deny, naming the
//!      forbidding policies (and their `@reason` annotation, if any).
//!    - **Allow**: the requester is eligible when at least one *plain*
//!      `permit` held. A permit annotated `@decision("auto_approve")` only
//!      raises an eligible request to auto-approval; on its own it makes no
//!      one eligible (a request allowed only by such policies is denied).
//! 3. Eligible and an auto-approve permit held: [`Verdict::AutoApprove`].
//!    Eligible otherwise: [`Verdict::NeedsApproval`] with the entitlement
//!    file's approvers and quorum, or deny when it has no `approval` table.
//! 4. **Risk only adds scrutiny**, whatever the policies say: when the
//!    verdict is not already a deny and the request is not scored 0, Cedar
//!    is asked again as if it were scored 0; the decision is the stricter
//!    of the two. A policy that permits *because* a score is high cannot
//!    approve anything with it.
//! 5. The decision's `max_duration` is the entitlement's maximum cut to the
//!    provider's ([`PolicyContext::provider_max`]), as in the catalogue.
//!
//! Policy ids come from `@id("...")` annotations, which every policy must
//! have: they name the policies in reasons and in the audit trail. A policy
//! scoped to an entitlement the file does not list (`resource ==
//! Jit::Entitlement::"typo"`) is refused at load, and so is a `@decision`
//! other than `"auto_approve"` or on a `forbid`.
//!
//! # Entitlement file
//!
//! ```toml
//! [settings]                       # optional
//! pending_ttl = "24h"              # default 24h
//! on_call_schedules = ["primary"]  # schedules every entitlement's policies may read
//!
//! [admins]                         # optional: revoke anything, read the audit log
//! ids = ["alice"]
//! groups = ["secops"]
//!
//! [[entitlements]]
//! id = "prod-db-read"
//! description = "Read-only access to the production database"
//! provider = "local"
//! max_duration = "1h"
//! target = { audience = "prod-db", scopes = ["read"] }
//! require_justification = true     # default true
//! justification_pattern = "^(INC|CHG)-[0-9]+: .{10,}"
//! require_ticket = false           # default false
//! ticket_pattern = "^INC-[0-9]+$"
//! require_revocation = false
//! on_call_schedules = ["db-primary"] # more schedules for this entitlement
//!
//! [entitlements.approval]          # optional: who approves when Cedar does not auto-approve
//! groups = ["sre-leads"]
//! quorum = 1
//! ```
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use jit_core::policy::cedar::CedarPolicy;
//! use jit_core::policy::{Policy, PolicyContext};
//! use jit_core::types::{AccessRequest, Principal, Verdict};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = CedarPolicy::from_strs(
//!     r#"
//!     [[entitlements]]
//!     id = "prod-db-read"
//!     provider = "local"
//!     max_duration = "1h"
//!     target = { audience = "prod-db" }
//!
//!     [entitlements.approval]
//!     groups = ["sre-leads"]
//!     "#,
//!     r#"
//!     @id("prod-db-read: engineering may ask")
//!     permit(
//!         principal in Jit::Group::"engineering",
//!         action == Jit::Action::"request",
//!         resource == Jit::Entitlement::"prod-db-read"
//!     );
//!
//!     @id("prod-db-read: on call, short and routine")
//!     @decision("auto_approve")
//!     permit(
//!         principal,
//!         action == Jit::Action::"request",
//!         resource == Jit::Entitlement::"prod-db-read"
//!     ) when {
//!         context.on_call.contains("db-primary") &&
//!         context.duration_secs <= 900 &&
//!         context.risk_score <= 40
//!     };
//!     "#,
//! )?;
//!
//! let bob = Principal::new("bob")?.with_group("engineering");
//! let entitlement = policy.entitlement("prod-db-read").ok_or("not listed")?;
//! let request = AccessRequest::new("prod-db-read", "10m".parse()?, "restore the orders table");
//! let now = chrono::Utc::now();
//!
//! // On call, but no risk score: a human decides.
//! let ctx = PolicyContext::new(now, Duration::from_secs(12 * 3600)).with_on_call(["db-primary"]);
//! let decision = policy.evaluate(&bob, &request, &entitlement, &ctx)?;
//! assert!(matches!(decision.verdict, Verdict::NeedsApproval { quorum: 1, .. }));
//!
//! // Scored low: approved without a human.
//! let risk = jit_core::risk::RiskAssessment::from_signals("history", vec![]);
//! let decision = policy.evaluate(&bob, &request, &entitlement, &ctx.clone().with_risk(risk))?;
//! assert_eq!(decision.verdict, Verdict::AutoApprove);
//!
//! // Not in `engineering`: denied.
//! let eve = Principal::new("eve")?;
//! let decision = policy.evaluate(&eve, &request, &entitlement, &ctx)?;
//! assert!(decision.is_deny());
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, Response, RestrictedExpression, Schema, ValidationMode, Validator,
};
use chrono::{Datelike, Timelike};
use regex::Regex;
use serde::Deserialize;

use super::catalogue::{
    check_names, check_request_fields, compile_approval, compile_regex, describe_approvers,
    invalid_field, parse_grant_duration, toml_error, toml_to_json, ApprovalRule, RawApproval,
    DEFAULT_PENDING_TTL,
};
use super::{Policy, PolicyContext};
use crate::error::{ConfigError, RequestError};
use crate::risk::MAX_SCORE;
use crate::types::{
    parse_duration, validate_entitlement_id, AccessRequest, ApproverSet, Decision, DurationLimits,
    Entitlement, GrantDuration, Principal, Verdict,
};

/// The published Cedar schema every policy set is validated against
/// (`jit-core/cedar/jit.cedarschema`, Cedar's human-readable format).
pub const SCHEMA: &str = include_str!("../../cedar/jit.cedarschema");

/// The annotation that makes a permit an auto-approval.
const DECISION_ANNOTATION: &str = "decision";
const AUTO_APPROVE: &str = "auto_approve";

/// `context.risk_score` when the request has no score: above every threshold.
pub const UNKNOWN_RISK_SCORE: i64 = MAX_SCORE as i64 + 1;

/// The actions of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CedarAction {
    /// `Jit::Action::"request"`: what [`Policy::evaluate`] asks.
    Request,
    /// `Jit::Action::"approve"`.
    Approve,
    /// `Jit::Action::"revoke"`.
    Revoke,
    /// `Jit::Action::"break_glass"`.
    BreakGlass,
}

impl CedarAction {
    fn id(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Approve => "approve",
            Self::Revoke => "revoke",
            Self::BreakGlass => "break_glass",
        }
    }
}

// ---------------------------------------------------------------------------
// The entitlement file as written.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    settings: Option<RawSettings>,
    #[serde(default)]
    admins: Option<RawAdmins>,
    #[serde(default)]
    entitlements: Vec<RawEntitlement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    pending_ttl: Option<String>,
    #[serde(default)]
    on_call_schedules: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmins {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

fn default_true() -> bool {
    true
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
    require_revocation: bool,
    #[serde(default)]
    on_call_schedules: Vec<String>,
    #[serde(default)]
    approval: Option<RawApproval>,
}

// ---------------------------------------------------------------------------
// The compiled policy.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    entitlement: Entitlement,
    require_justification: bool,
    justification_pattern: Option<Regex>,
    require_ticket: bool,
    ticket_pattern: Option<Regex>,
    require_revocation: bool,
    on_call_schedules: Vec<String>,
    approval: Option<ApprovalRule>,
    /// The resource, built and checked against the schema once at load.
    resource: Entity,
}

/// Entity types and actions, parsed once.
#[derive(Debug, Clone)]
struct Names {
    user: EntityTypeName,
    group: EntityTypeName,
    entitlement: EntityTypeName,
    actions: HashMap<CedarAction, EntityUid>,
}

impl Names {
    fn new() -> Result<Self, ConfigError> {
        let ty = |name: &str| {
            EntityTypeName::from_str(name).map_err(|e| cedar_error("schema", 1, 1, e.to_string()))
        };
        let action_ty = ty("Jit::Action")?;
        let actions = [
            CedarAction::Request,
            CedarAction::Approve,
            CedarAction::Revoke,
            CedarAction::BreakGlass,
        ]
        .into_iter()
        .map(|a| {
            (
                a,
                EntityUid::from_type_name_and_id(action_ty.clone(), EntityId::new(a.id())),
            )
        })
        .collect();
        Ok(Self {
            user: ty("Jit::User")?,
            group: ty("Jit::Group")?,
            entitlement: ty("Jit::Entitlement")?,
            actions,
        })
    }
}

/// A policy written in Cedar, with entitlements from a TOML file (see the
/// [module docs](self)).
///
/// Everything is parsed and validated once at load; a decision builds two
/// small entities and a context and asks Cedar's [`Authorizer`] (twice when
/// the request is not scored 0 and would not be denied anyway, see the
/// module docs on risk).
#[derive(Debug, Clone)]
pub struct CedarPolicy {
    pending_ttl: Duration,
    on_call_schedules: Vec<String>,
    admins: ApproverSet,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    policies: PolicySet,
    schema: Schema,
    /// Ids of the permits annotated `@decision("auto_approve")`.
    auto_approve: HashSet<PolicyId>,
    authorizer: Authorizer,
    names: Names,
}

/// The schema, parsed ([`SCHEMA`]).
pub fn schema() -> Result<Schema, ConfigError> {
    let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA).map_err(|e| {
        let (line, column) = first_label(&e)
            .map(|o| line_col(SCHEMA, o))
            .unwrap_or((1, 1));
        cedar_error("schema", line, column, one_line(&e))
    })?;
    Ok(schema)
}

impl CedarPolicy {
    /// Parses and validates an entitlement file and a Cedar policy set.
    pub fn from_strs(entitlements: &str, policies: &str) -> Result<Self, ConfigError> {
        let raw: RawFile =
            toml::from_str(entitlements).map_err(|e| toml_error(entitlements, &e))?;
        let schema = schema()?;
        let names = Names::new()?;

        let (pending_ttl, on_call_schedules) = match raw.settings {
            None => (DEFAULT_PENDING_TTL, Vec::new()),
            Some(s) => {
                let ttl = match s.pending_ttl {
                    None => DEFAULT_PENDING_TTL,
                    Some(text) => {
                        let ttl = parse_duration(&text)
                            .map_err(|e| invalid_field("settings", "pending_ttl", e.to_string()))?;
                        if ttl.is_zero() {
                            return Err(invalid_field(
                                "settings",
                                "pending_ttl",
                                "must be greater than zero",
                            ));
                        }
                        ttl
                    }
                };
                check_schedules("settings", &s.on_call_schedules)?;
                (ttl, s.on_call_schedules)
            }
        };
        let admins = raw.admins.unwrap_or_default();
        check_names("admins", "", &admins.ids, &admins.groups)?;
        let admins = ApproverSet {
            ids: admins.ids.into_iter().collect(),
            groups: admins.groups.into_iter().collect(),
        };

        let mut regexes = HashMap::new();
        let mut entries = Vec::with_capacity(raw.entitlements.len());
        let mut index = HashMap::with_capacity(raw.entitlements.len());
        for e in raw.entitlements {
            let entry = compile_entry(e, &mut regexes, &names, &schema)?;
            let id = entry.entitlement.id.clone();
            if index.contains_key(&id) {
                return Err(ConfigError::DuplicateEntitlement(id));
            }
            index.insert(id, entries.len());
            entries.push(entry);
        }

        let (policies, auto_approve) = load_policies(policies, &schema, &names, &index)?;
        Ok(Self {
            pending_ttl,
            on_call_schedules,
            admins,
            entries,
            index,
            policies,
            schema,
            auto_approve,
            authorizer: Authorizer::new(),
            names,
        })
    }

    /// Reads both files, then [`CedarPolicy::from_strs`].
    pub fn from_files(
        entitlements: impl AsRef<Path>,
        policies: impl AsRef<Path>,
    ) -> Result<Self, ConfigError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| ConfigError::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        Self::from_strs(&read(entitlements.as_ref())?, &read(policies.as_ref())?)
    }

    /// The validated policy set, with ids from the `@id` annotations.
    pub fn policy_set(&self) -> &PolicySet {
        &self.policies
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The administrators, as written in `[admins]`.
    pub fn admins(&self) -> &ApproverSet {
        &self.admins
    }

    fn entry(&self, id: &str) -> Option<&Entry> {
        self.index.get(id).and_then(|&i| self.entries.get(i))
    }

    /// The Cedar request and entities that [`Policy::evaluate`] would build
    /// for `action` (`request` there), for hosts and benchmarks that call
    /// the [`Authorizer`] themselves. `duration` is what goes into
    /// `context.duration_secs`. Errors as [`CedarPolicy::is_authorized`].
    pub fn cedar_request(
        &self,
        action: CedarAction,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        duration: GrantDuration,
        ctx: &PolicyContext,
    ) -> crate::Result<(Request, Entities)> {
        let entry = self
            .entry(&entitlement.id)
            .ok_or_else(|| RequestError::UnknownEntitlement(entitlement.id.clone()))?;
        let facts = Facts::new(request, duration, ctx);
        self.build(action, requester, entry, &facts, None)
            .map_err(|message| crate::Error::Unavailable {
                what: "cedar".into(),
                message,
            })
    }

    /// Asks Cedar directly about any action of the schema (the broker only
    /// asks about `request`, through [`Policy::evaluate`]); the request's
    /// duration goes into the context unclamped. No decision mapping, no
    /// risk guard: the raw answer.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidRequest`] with
    /// [`RequestError::UnknownEntitlement`] for an entitlement the file does
    /// not list; [`crate::Error::Unavailable`] if the Cedar request could
    /// not be built (a bug: [`Policy::evaluate`] denies then).
    pub fn is_authorized(
        &self,
        action: CedarAction,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> crate::Result<Response> {
        let (req, entities) = self.cedar_request(
            action,
            requester,
            request,
            entitlement,
            request.duration,
            ctx,
        )?;
        Ok(self
            .authorizer
            .is_authorized(&req, &self.policies, &entities))
    }

    fn build(
        &self,
        action: CedarAction,
        requester: &Principal,
        entry: &Entry,
        facts: &Facts,
        schema: Option<&Schema>,
    ) -> Result<(Request, Entities), String> {
        let uid = EntityUid::from_type_name_and_id(
            self.names.user.clone(),
            EntityId::new(requester.id.as_str()),
        );
        let parents = requester
            .groups
            .iter()
            .map(|g| EntityUid::from_type_name_and_id(self.names.group.clone(), EntityId::new(g)));
        let tags = requester
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
        let user = Entity::new_with_tags(
            uid.clone(),
            [(
                "id".to_string(),
                RestrictedExpression::new_string(requester.id.as_str().to_string()),
            )],
            parents,
            tags,
        )
        .map_err(|e| e.to_string())?;
        let action = self
            .names
            .actions
            .get(&action)
            .cloned()
            .ok_or_else(|| format!("action `{}` is not in the schema", action.id()))?;
        let context = Context::from_pairs(facts.pairs()).map_err(|e| e.to_string())?;
        let req = Request::new(uid, action, entry.resource.uid(), context, schema)
            .map_err(|e| e.to_string())?;
        let entities = Entities::from_entities([user, entry.resource.clone()], schema)
            .map_err(|e| e.to_string())?;
        Ok((req, entities))
    }

    /// Asks about `request` and reads the answer (steps 2 and 3 of the module docs).
    fn judge(&self, requester: &Principal, entry: &Entry, facts: &Facts) -> Outcome {
        let (req, entities) = match self.build(CedarAction::Request, requester, entry, facts, None)
        {
            Ok(built) => built,
            Err(e) => {
                return Outcome::Deny(vec![format!("the cedar request could not be built: {e}")])
            }
        };
        let response = self
            .authorizer
            .is_authorized(&req, &self.policies, &entities);
        let id = &entry.entitlement.id;
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| format!("cedar could not evaluate a policy: {e}"))
            .collect();
        if !errors.is_empty() {
            return Outcome::Deny(errors);
        }
        let mut determining: Vec<&PolicyId> = response.diagnostics().reason().collect();
        // Cedar reports them unordered; decisions must be deterministic.
        determining.sort_by(|a, b| AsRef::<str>::as_ref(*a).cmp(AsRef::<str>::as_ref(*b)));
        match response.decision() {
            cedar_policy::Decision::Deny => {
                if determining.is_empty() {
                    return Outcome::Deny(vec![format!(
                        "`{}` is not permitted to request `{id}` by any policy",
                        requester.id
                    )]);
                }
                Outcome::Deny(
                    determining
                        .into_iter()
                        .map(|p| {
                            match self
                                .policies
                                .annotation(p, "reason")
                                .map(str::trim)
                                .filter(|r| !r.is_empty())
                            {
                                Some(reason) => format!("forbidden by policy `{p}`: {reason}"),
                                None => format!("forbidden by policy `{p}`"),
                            }
                        })
                        .collect(),
                )
            }
            cedar_policy::Decision::Allow => {
                let (auto, plain): (Vec<&PolicyId>, Vec<&PolicyId>) = determining
                    .into_iter()
                    .partition(|p| self.auto_approve.contains(*p));
                if plain.is_empty() {
                    return Outcome::Deny(vec![format!(
                        "`{}` is permitted to request `{id}` only by auto-approve policies ({}), which make no one eligible",
                        requester.id,
                        quote_ids(&auto)
                    )]);
                }
                let eligible = format!(
                    "`{}` is eligible for `{id}` by policy {}",
                    requester.id,
                    quote_ids(&plain)
                );
                if auto.is_empty() {
                    Outcome::Human(vec![eligible])
                } else {
                    Outcome::Auto(vec![
                        eligible,
                        format!("auto-approved: by policy {}", quote_ids(&auto)),
                    ])
                }
            }
        }
    }
}

/// What Cedar's answer means, strictest first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Deny(Vec<String>),
    Human(Vec<String>),
    Auto(Vec<String>),
}

impl Outcome {
    fn rank(&self) -> u8 {
        match self {
            Outcome::Deny(_) => 0,
            Outcome::Human(_) => 1,
            Outcome::Auto(_) => 2,
        }
    }
}

/// The context of one decision.
#[derive(Debug, Clone)]
struct Facts {
    duration_secs: i64,
    justification_present: bool,
    ticket: Option<String>,
    ticket_verified: bool,
    risk: Option<u8>,
    hour: u32,
    minute: u32,
    weekday: u32,
    on_call: Vec<String>,
}

impl Facts {
    fn new(request: &AccessRequest, duration: GrantDuration, ctx: &PolicyContext) -> Self {
        let given = request.ticket.as_deref().map(str::trim);
        // The same rule as the catalogue's: a verdict on exactly this ticket.
        let ticket_verified = ctx
            .ticket
            .as_ref()
            .is_some_and(|v| v.verified && Some(v.ticket.trim()) == given);
        let ticket = given.filter(|t| !t.is_empty());
        Self {
            duration_secs: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
            justification_present: !request.justification.trim().is_empty(),
            ticket: ticket.map(str::to_string),
            ticket_verified,
            risk: ctx.risk.as_ref().and_then(|r| r.score),
            hour: ctx.now.hour(),
            minute: ctx.now.minute(),
            weekday: ctx.now.weekday().number_from_monday(),
            on_call: ctx
                .on_call
                .iter()
                .flatten()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }

    fn pairs(&self) -> Vec<(String, RestrictedExpression)> {
        let long = |n: u32| RestrictedExpression::new_long(i64::from(n));
        let mut pairs = vec![
            (
                "duration_secs".to_string(),
                RestrictedExpression::new_long(self.duration_secs),
            ),
            (
                "justification_present".to_string(),
                RestrictedExpression::new_bool(self.justification_present),
            ),
            (
                "ticket_verified".to_string(),
                RestrictedExpression::new_bool(self.ticket_verified),
            ),
            (
                "risk_known".to_string(),
                RestrictedExpression::new_bool(self.risk.is_some()),
            ),
            (
                "risk_score".to_string(),
                RestrictedExpression::new_long(
                    self.risk.map(i64::from).unwrap_or(UNKNOWN_RISK_SCORE),
                ),
            ),
            ("hour_utc".to_string(), long(self.hour)),
            ("minute_utc".to_string(), long(self.minute)),
            ("weekday_utc".to_string(), long(self.weekday)),
            (
                "on_call".to_string(),
                RestrictedExpression::new_set(
                    self.on_call
                        .iter()
                        .map(|s| RestrictedExpression::new_string(s.clone())),
                ),
            ),
        ];
        if let Some(t) = &self.ticket {
            pairs.push((
                "ticket".to_string(),
                RestrictedExpression::new_string(t.clone()),
            ));
        }
        pairs
    }
}

fn quote_ids(ids: &[&PolicyId]) -> String {
    ids.iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Policy for CedarPolicy {
    fn entitlement(&self, id: &str) -> Option<Entitlement> {
        self.entry(id).map(|e| e.entitlement.clone())
    }

    fn entitlements(&self) -> Vec<Entitlement> {
        self.entries.iter().map(|e| e.entitlement.clone()).collect()
    }

    fn requires_revocation(&self, entitlement: &str) -> bool {
        self.entry(entitlement)
            .is_some_and(|e| e.require_revocation)
    }

    fn on_call_schedules(&self, entitlement: &Entitlement) -> Vec<String> {
        let mut all: BTreeSet<String> = self.on_call_schedules.iter().cloned().collect();
        if let Some(e) = self.entry(&entitlement.id) {
            all.extend(e.on_call_schedules.iter().cloned());
        }
        all.into_iter().collect()
    }

    fn evaluate(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> Result<Decision, RequestError> {
        let entry = self
            .entry(&entitlement.id)
            .ok_or_else(|| RequestError::UnknownEntitlement(entitlement.id.clone()))?;
        let id = &entry.entitlement.id;

        // 1. Field checks: errors, nothing recorded.
        check_request_fields(
            id,
            entry.require_justification,
            entry.justification_pattern.as_ref(),
            entry.require_ticket,
            entry.ticket_pattern.as_ref(),
            request,
        )?;

        // The effective maximum (design rule 2); the file's value wins over a
        // caller-supplied copy if the two ever disagree.
        let file_max = entry.entitlement.max_duration.min(entitlement.max_duration);
        let limits = DurationLimits {
            entitlement: file_max,
            policy: file_max,
            provider: ctx.provider_max,
        };
        let deny = |max_duration: GrantDuration, reasons: Vec<String>| Decision {
            verdict: Verdict::Deny,
            max_duration,
            reasons,
            risk: None,
            ticket: None,
            on_call: None,
        };
        let Some(max_duration) = limits.max() else {
            return Ok(deny(
                file_max,
                vec![format!(
                    "provider `{}` allows at most `{}ms`, below the one-second minimum grant",
                    entry.entitlement.provider,
                    ctx.provider_max.as_millis()
                )],
            ));
        };
        let duration = request.duration.min(max_duration);
        let mut reasons = Vec::new();
        if duration < request.duration {
            reasons.push(format!(
                "duration `{}` clamped to the maximum of `{max_duration}`",
                request.duration
            ));
        }

        // 2-3. Ask Cedar.
        let facts = Facts::new(request, duration, ctx);
        let mut outcome = self.judge(requester, entry, &facts);

        // 4. Risk only adds scrutiny: never more than with a score of 0.
        if outcome.rank() > 0 && facts.risk != Some(0) {
            let calm = Facts {
                risk: Some(0),
                ..facts.clone()
            };
            let baseline = self.judge(requester, entry, &calm);
            if baseline.rank() < outcome.rank() {
                let rank = baseline.rank();
                let mut capped = match baseline {
                    Outcome::Deny(r) | Outcome::Human(r) | Outcome::Auto(r) => r,
                };
                capped.push(
                    "the policies allow more with this risk score than with a score of 0; risk only adds scrutiny, so the stricter answer stands"
                        .to_string(),
                );
                outcome = match rank {
                    0 => Outcome::Deny(capped),
                    _ => Outcome::Human(capped),
                };
            }
        }

        match outcome {
            Outcome::Deny(r) => {
                reasons.extend(r);
                Ok(deny(max_duration, reasons))
            }
            Outcome::Auto(r) => {
                reasons.extend(r);
                Ok(Decision {
                    verdict: Verdict::AutoApprove,
                    max_duration,
                    reasons,
                    risk: None,
                    ticket: None,
                    on_call: None,
                })
            }
            Outcome::Human(r) => {
                reasons.extend(r);
                reasons.push("not auto-approved: no auto-approve policy holds".into());
                match &entry.approval {
                    Some(a) => {
                        let n = a.quorum;
                        reasons.push(format!(
                            "needs {n} approval{} from {}",
                            if n == 1 { "" } else { "s" },
                            describe_approvers(&a.approvers)
                        ));
                        Ok(Decision {
                            verdict: Verdict::NeedsApproval {
                                approvers: a.approvers.clone(),
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
                        reasons.push(format!(
                            "no approval rule: `{id}` has no human approval to fall back on"
                        ));
                        Ok(deny(max_duration, reasons))
                    }
                }
            }
        }
    }

    fn is_admin(&self, principal: &Principal) -> bool {
        self.admins.contains(principal)
    }

    fn approvable_entitlements(&self, principal: &Principal) -> Option<Vec<String>> {
        Some(
            self.entries
                .iter()
                .filter(|e| {
                    e.approval
                        .as_ref()
                        .is_some_and(|a| a.approvers.contains(principal))
                })
                .map(|e| e.entitlement.id.clone())
                .collect(),
        )
    }

    fn pending_ttl(&self) -> Duration {
        self.pending_ttl
    }
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

fn check_schedules(owner: &str, schedules: &[String]) -> Result<(), ConfigError> {
    for s in schedules {
        if s.trim().is_empty() || s.chars().any(char::is_control) {
            return Err(invalid_field(
                owner,
                "on_call_schedules",
                format!("schedule `{}` is empty or has control characters", s.trim()),
            ));
        }
    }
    Ok(())
}

fn compile_entry(
    e: RawEntitlement,
    regexes: &mut HashMap<String, Regex>,
    names: &Names,
    schema: &Schema,
) -> Result<Entry, ConfigError> {
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
    check_schedules(&id, &e.on_call_schedules)?;
    let approval = e.approval.map(|a| compile_approval(&id, a)).transpose()?;
    let entitlement = Entitlement {
        id,
        description: e.description,
        provider: e.provider,
        target,
        max_duration,
    };
    let resource = resource_entity(&entitlement, names, schema)?;
    Ok(Entry {
        entitlement,
        require_justification: e.require_justification,
        justification_pattern,
        require_ticket: e.require_ticket,
        ticket_pattern,
        require_revocation: e.require_revocation,
        on_call_schedules: e.on_call_schedules,
        approval,
        resource,
    })
}

/// The entitlement as a `Jit::Entitlement`, checked against the schema.
fn resource_entity(e: &Entitlement, names: &Names, schema: &Schema) -> Result<Entity, ConfigError> {
    let uid = EntityUid::from_type_name_and_id(names.entitlement.clone(), EntityId::new(&e.id));
    let string = |s: &str| RestrictedExpression::new_string(s.to_string());
    let attrs = [
        ("id".to_string(), string(&e.id)),
        ("provider".to_string(), string(&e.provider)),
        ("description".to_string(), string(&e.description)),
        (
            "max_duration_secs".to_string(),
            RestrictedExpression::new_long(
                i64::try_from(e.max_duration.as_secs()).unwrap_or(i64::MAX),
            ),
        ),
    ];
    let tags: BTreeMap<String, RestrictedExpression> = match &e.target {
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), RestrictedExpression::new_string(text))
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let invalid = |m: String| invalid_field(&e.id, "target", format!("not a cedar entity: {m}"));
    let entity =
        Entity::new_with_tags(uid, attrs, [], tags).map_err(|err| invalid(err.to_string()))?;
    Entities::from_entities([entity.clone()], Some(schema))
        .map_err(|err| invalid(one_line(&err)))?;
    Ok(entity)
}

/// Parses the policy set, names each policy by its `@id`, validates it
/// strictly against the schema and checks the entitlements it names.
fn load_policies(
    text: &str,
    schema: &Schema,
    names: &Names,
    entitlements: &HashMap<String, usize>,
) -> Result<(PolicySet, HashSet<PolicyId>), ConfigError> {
    let statements = Statements::scan(text);
    let parsed = PolicySet::from_str(text).map_err(|errs| {
        let first = errs.iter().next();
        let offset = first.and_then(|e| first_label(e)).unwrap_or(0);
        let (line, column) = line_col(text, offset);
        let message = first
            .map(|e| one_line(e))
            .unwrap_or_else(|| one_line(&errs));
        cedar_error(&statements.name_at(text, offset), line, column, message)
    })?;
    if let Some(t) = parsed.templates().next() {
        let start = statements.start_of_default_id(t.id().as_ref());
        let (line, column) = line_col(text, start);
        return Err(cedar_error(
            &statements.name_at(text, start),
            line,
            column,
            "templates are not supported: write static policies".into(),
        ));
    }

    let mut renamed = Vec::new();
    let mut starts: HashMap<String, usize> = HashMap::new();
    let mut auto_approve = HashSet::new();
    for p in parsed.policies() {
        // `from_str` numbers the policies `policy0`, `policy1`, ... in file order.
        let start = statements.start_of_default_id(p.id().as_ref());
        let at = |message: String, name: &str| {
            let (line, column) = line_col(text, start);
            cedar_error(name, line, column, message)
        };
        let Some(id) = p.annotation("id").map(str::trim).filter(|i| !i.is_empty()) else {
            return Err(at(
                "every policy needs an `@id(\"...\")` annotation, which names it in decisions and the audit trail".into(),
                &statements.name_at(text, start),
            ));
        };
        if starts.insert(id.to_string(), start).is_some() {
            return Err(at(format!("`@id(\"{id}\")` is used twice"), id));
        }
        match p.annotation(DECISION_ANNOTATION).map(str::trim) {
            None => {}
            Some(AUTO_APPROVE) if p.effect() == cedar_policy::Effect::Permit => {
                auto_approve.insert(PolicyId::new(id));
            }
            Some(AUTO_APPROVE) => {
                return Err(at(
                    "`@decision(\"auto_approve\")` on a forbid means nothing: put it on a permit"
                        .into(),
                    id,
                ))
            }
            Some(other) => {
                return Err(at(
                    format!(
                        "unknown `@decision(\"{other}\")`: the only one is `\"{AUTO_APPROVE}\"`"
                    ),
                    id,
                ))
            }
        }
        // An entitlement named in the scope that the file does not list is a
        // typo that would silently never match.
        let named = match p.resource_constraint() {
            cedar_policy::ResourceConstraint::Eq(uid)
            | cedar_policy::ResourceConstraint::In(uid) => Some(uid),
            _ => None,
        };
        if let Some(uid) = named {
            if uid.type_name() == &names.entitlement {
                let eid: &str = uid.id().unescaped();
                if !entitlements.contains_key(eid) {
                    return Err(at(
                        format!(
                            "names entitlement `{eid}`, which the entitlement file does not list"
                        ),
                        id,
                    ));
                }
            }
        }
        renamed.push(p.new_id(PolicyId::new(id)));
    }
    let set = PolicySet::from_policies(renamed).map_err(|e| cedar_error("", 1, 1, one_line(&e)))?;

    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if let Some(e) = result.validation_errors().next() {
        let policy = e.policy_id().to_string();
        let offset = first_label(e)
            .or_else(|| starts.get(&policy).copied())
            .unwrap_or(0);
        let (line, column) = line_col(text, offset);
        return Err(cedar_error(&policy, line, column, one_line(e)));
    }
    for w in result.validation_warnings() {
        tracing::warn!(policy = %w.policy_id(), "cedar policy warning: {w}");
    }
    Ok((set, auto_approve))
}

/// Where each statement (policy) of a policy file starts, for naming the
/// policy an error is in: statements end at `;` outside strings and comments.
struct Statements {
    starts: Vec<usize>,
}

impl Statements {
    fn scan(text: &str) -> Self {
        let mut starts = vec![0];
        let mut chars = text.char_indices().peekable();
        let mut in_string = false;
        while let Some((i, c)) = chars.next() {
            if in_string {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '/' if chars.peek().is_some_and(|(_, n)| *n == '/') => {
                    for (_, n) in chars.by_ref() {
                        if n == '\n' {
                            break;
                        }
                    }
                }
                ';' => starts.push(i + 1),
                _ => {}
            }
        }
        Self { starts }
    }

    /// The start of the statement holding `offset`.
    fn statement_at(&self, offset: usize) -> (usize, usize) {
        let n = self.starts.iter().rposition(|&s| s <= offset).unwrap_or(0);
        (n, self.starts.get(n).copied().unwrap_or(0))
    }

    /// The `@id` of the statement holding `offset`, or `#N` (1-based).
    fn name_at(&self, text: &str, offset: usize) -> String {
        let (n, start) = self.statement_at(offset);
        let end = self.starts.get(n + 1).copied().unwrap_or(text.len());
        let segment = text.get(start..end).unwrap_or("");
        id_annotation(segment).unwrap_or_else(|| format!("#{}", n + 1))
    }

    /// Where `policyN` (Cedar's default id) starts, past blanks and comments.
    fn start_of_default_id(&self, id: &str) -> usize {
        id.strip_prefix("policy")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| self.starts.get(n).copied())
            .unwrap_or(0)
    }
}

/// The value of an `@id("...")` annotation in a statement's text.
fn id_annotation(segment: &str) -> Option<String> {
    let at = segment.find("@id")?;
    let rest = segment
        .get(at + 3..)?
        .trim_start()
        .strip_prefix('(')?
        .trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    rest.get(..end).map(str::to_string)
}

fn cedar_error(policy: &str, line: usize, column: usize, message: String) -> ConfigError {
    ConfigError::Cedar {
        policy: policy.to_string(),
        line,
        column,
        message,
    }
}

/// The byte offset of a diagnostic's first labelled span.
fn first_label(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset())
}

/// A diagnostic's message, with its help, on one line.
fn one_line(d: &dyn miette::Diagnostic) -> String {
    let mut text = d.to_string();
    if let Some(help) = d.help() {
        text.push_str(&format!(" ({help})"));
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_published_schema_parses() {
        schema().unwrap();
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "ab\nçd;e";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 5), (2, 2));
        assert_eq!(line_col(text, 99), (2, 5));
    }

    #[test]
    fn statements_are_named_by_their_id_or_place() {
        let text = "@id(\"a;b\") permit(principal, action, resource);\n// x; y\npermit(principal, action, resource);";
        let s = Statements::scan(text);
        assert_eq!(s.name_at(text, 5), "a;b");
        assert_eq!(s.name_at(text, text.len() - 3), "#2");
    }

    /// What `evaluate` sends Cedar conforms to the schema (the hot path
    /// builds it without the schema, for speed).
    #[test]
    fn requests_and_entities_conform_to_the_schema() {
        let policy = CedarPolicy::from_strs(
            r#"
            [[entitlements]]
            id = "e"
            provider = "local"
            max_duration = "1h"
            target = { audience = "a", scopes = ["r"], n = 3, nested = { x = true } }
            "#,
            r#"@id("p") permit(principal, action == Jit::Action::"request", resource);"#,
        )
        .unwrap();
        let entry = policy.entry("e").unwrap();
        let bob = Principal::new("bob")
            .unwrap()
            .with_group("g")
            .with_attribute("oncall", "true");
        let now = chrono::Utc::now();
        let full = PolicyContext::new(now, Duration::from_secs(3600))
            .with_risk(crate::risk::RiskAssessment::from_signals("t", vec![]))
            .with_on_call(["a", "b"]);
        for (ticket, ctx) in [
            (None, PolicyContext::new(now, Duration::from_secs(3600))),
            (Some("INC-1"), full),
        ] {
            let mut request = AccessRequest::new("e", "10m".parse().unwrap(), "why");
            request.ticket = ticket.map(str::to_string);
            let facts = Facts::new(&request, request.duration, &ctx);
            for action in [
                CedarAction::Request,
                CedarAction::Approve,
                CedarAction::Revoke,
                CedarAction::BreakGlass,
            ] {
                policy
                    .build(action, &bob, entry, &facts, Some(&policy.schema))
                    .unwrap();
            }
        }
    }
}
