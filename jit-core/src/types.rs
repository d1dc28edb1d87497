//! Domain types: principals, entitlements, requests, decisions, approvals and grants.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::error::RequestError;

/// The absolute ceiling for any grant, whatever a catalogue says: seven days.
pub const MAX_GRANT_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest free text accepted in any field a person types (a
/// justification, a reason to deny, revoke or cancel, an approval comment),
/// in characters. One limit for every such field, checked by [`check_text`].
pub const MAX_TEXT_LEN: usize = 1024;
/// How far ahead a scheduled start may lie.
pub const MAX_START_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);

/// The one rule for free text (see [`MAX_TEXT_LEN`]): at most that many
/// characters. `field` names the field in the error.
pub fn check_text(field: &'static str, text: &str) -> Result<(), RequestError> {
    let len = text.chars().count();
    if len > MAX_TEXT_LEN {
        return Err(RequestError::TextTooLong {
            field,
            len,
            limit: MAX_TEXT_LEN,
        });
    }
    Ok(())
}

macro_rules! uuid_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A new random id.
            pub fn new() -> Self {
                Self(uuid::Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", $prefix, self.0)
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map($name).map_err(|_| crate::Error::NotFound {
                    kind: $prefix,
                    id: s.to_string(),
                })
            }
        }
    };
}

uuid_id!(
    /// Identifies an access request (and the lifecycle record that follows it).
    RequestId,
    "request"
);
uuid_id!(
    /// Identifies a grant; provider-side names (session names, schedule ids) derive from it.
    GrantId,
    "grant"
);

/// A stable principal id as given by the host's identity provider.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PrincipalId(String);

impl PrincipalId {
    /// Validates and wraps an id: 1..=256 characters, no control characters.
    pub fn new(id: impl Into<String>) -> Result<Self, RequestError> {
        let id = id.into();
        let len = id.chars().count();
        if len == 0 || len > 256 || id.chars().any(char::is_control) || id.trim().len() != id.len()
        {
            return Err(RequestError::PrincipalId(truncate_for_display(&id)));
        }
        Ok(Self(id))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is exactly `other`: the comparison that grants.
    ///
    /// Subjects are compared as the identity provider spells them (OIDC
    /// `sub` is case-sensitive): `ALICE`, `ａｌｉｃｅ` and `alice` are three
    /// different people for access.
    pub fn is(&self, other: &PrincipalId) -> bool {
        self.0 == other.0
    }
}

/// A comparison key under which two identity strings that a person could
/// mistake for one another collide: for *refusing* only.
///
/// The string is NFKC-normalised, stripped of default-ignorable code points
/// (zero-width spaces, soft hyphens, variation selectors, bidi controls),
/// fully case-folded (`straße` and `STRASSE` fold alike) and reduced to its
/// UTS #39 confusable skeleton (Cyrillic `а` and Latin `a`; `1` and `l`).
/// [`Principal::may_be_same_person`] compares these keys to refuse a
/// self-approval or a second vote by the same person under another spelling.
///
/// Never use it to *give* anything (ownership, visibility, eligibility,
/// approver or admin rights): two different people can share a key (`bob1`
/// and `bobl`), which is harmless when it only refuses, and an attacker can
/// choose a spelling that collides with someone else's, which would be fatal
/// if it granted.
pub fn identity_skeleton(s: &str) -> String {
    let folded = fold(s);
    let skeleton: String = unicode_security::skeleton(&folded).collect();
    // Prototypes may be upper case or compatibility forms: fold once more so
    // the key is stable under a second application.
    fold(&skeleton)
}

fn fold(s: &str) -> String {
    let ignorable =
        icu_properties::CodePointSetData::new::<icu_properties::props::DefaultIgnorableCodePoint>();
    let visible: String = s.nfkc().filter(|c| !ignorable.contains(*c)).collect();
    let folded = icu_casemap::CaseMapper::new().fold_string(&visible);
    folded.nfkc().filter(|c| !ignorable.contains(*c)).collect()
}

fn truncate_for_display(s: &str) -> String {
    let t: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
    if s.chars().count() > 64 {
        format!("{t}...")
    } else {
        t
    }
}

impl TryFrom<String> for PrincipalId {
    type Error = RequestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PrincipalId::new(s)
    }
}

impl From<PrincipalId> for String {
    fn from(p: PrincipalId) -> String {
        p.0
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Who asks or approves, as the host's identity provider describes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Stable id.
    pub id: PrincipalId,
    /// Display name, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Group memberships.
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// Other names of the same person (email, UPN, employee number), as the
    /// identity provider asserts them. They only ever take away: they widen
    /// [`Principal::may_be_same_person`] to refuse a self-approval or a second
    /// vote, and never make anyone an owner, approver, admin or eligible.
    #[serde(default)]
    pub aliases: BTreeSet<String>,
    /// Free-form attributes (department, on-call flag, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl Principal {
    /// A principal with an id and nothing else.
    pub fn new(id: &str) -> Result<Self, RequestError> {
        Ok(Self {
            id: PrincipalId::new(id)?,
            display_name: None,
            groups: BTreeSet::new(),
            aliases: BTreeSet::new(),
            attributes: BTreeMap::new(),
        })
    }

    /// Adds a group.
    pub fn with_group(mut self, group: &str) -> Self {
        self.groups.insert(group.to_string());
        self
    }

    /// Adds an alias.
    pub fn with_alias(mut self, alias: &str) -> Self {
        self.aliases.insert(alias.to_string());
        self
    }

    /// Adds an attribute.
    pub fn with_attribute(mut self, key: &str, value: &str) -> Self {
        self.attributes.insert(key.to_string(), value.to_string());
        self
    }

    /// Whether this principal is exactly the subject `id`: the comparison
    /// that grants ownership, visibility and credential delivery.
    pub fn is(&self, id: &PrincipalId) -> bool {
        self.id.is(id)
    }

    /// The [`identity_skeleton`]s of the id and every alias.
    pub fn identity_keys(&self) -> BTreeSet<String> {
        std::iter::once(identity_skeleton(self.id.as_str()))
            .chain(self.aliases.iter().map(|a| identity_skeleton(a)))
            .collect()
    }

    /// Whether two principals could be the same person: their ids or aliases
    /// share an [`identity_skeleton`]. For refusing only (a self-approval, a
    /// second vote); it never grants anything, see [`Principal::is`].
    pub fn may_be_same_person(&self, other: &Principal) -> bool {
        let mine = self.identity_keys();
        other.identity_keys().iter().any(|k| mine.contains(k))
    }

    /// Whether the principal is in the group, spelled exactly as the identity
    /// provider spells it (groups grant, so they are not folded).
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.contains(group)
    }
}

/// Validates an entitlement id: 1..=128 characters of `[A-Za-z0-9._:/-]`.
pub fn validate_entitlement_id(id: &str) -> Result<(), RequestError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RequestError::EntitlementId(truncate_for_display(id)))
    }
}

/// A validated, positive duration no longer than [`MAX_GRANT_DURATION`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "DurationRepr", into = "DurationRepr")]
pub struct GrantDuration(Duration);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Secs(i64),
    Text(String),
}

impl TryFrom<DurationRepr> for GrantDuration {
    type Error = RequestError;
    fn try_from(r: DurationRepr) -> Result<Self, Self::Error> {
        match r {
            DurationRepr::Secs(s) => GrantDuration::from_secs_i64(s),
            DurationRepr::Text(t) => t.parse(),
        }
    }
}

impl From<GrantDuration> for DurationRepr {
    fn from(d: GrantDuration) -> Self {
        DurationRepr::Secs(d.0.as_secs() as i64)
    }
}

impl GrantDuration {
    /// Validates a duration against zero and the absolute maximum.
    pub fn new(d: Duration) -> Result<Self, RequestError> {
        Self::bounded(d, MAX_GRANT_DURATION)
    }

    /// Validates against zero and a given maximum (which is itself capped by the absolute maximum).
    pub fn bounded(d: Duration, max: Duration) -> Result<Self, RequestError> {
        let max = max.min(MAX_GRANT_DURATION);
        if d.is_zero() {
            return Err(RequestError::ZeroDuration);
        }
        if d > max {
            return Err(RequestError::DurationTooLong {
                requested: format_duration(d),
                limit: format_duration(max),
            });
        }
        // Whole seconds only: cloud APIs speak seconds.
        Ok(Self(Duration::from_secs(d.as_secs().max(1))))
    }

    /// From whole seconds, which may be negative if they came from untrusted input.
    pub fn from_secs_i64(secs: i64) -> Result<Self, RequestError> {
        if secs < 0 {
            return Err(RequestError::NegativeDuration(format!("{secs}s")));
        }
        Self::new(Duration::from_secs(secs as u64))
    }

    /// From a chrono duration (negative and overflowing values are errors).
    pub fn from_chrono(d: chrono::TimeDelta) -> Result<Self, RequestError> {
        if d < chrono::TimeDelta::zero() {
            return Err(RequestError::NegativeDuration(format!(
                "{}s",
                d.num_seconds()
            )));
        }
        let std = d
            .to_std()
            .map_err(|_| RequestError::DurationOverflow(format!("{d}")))?;
        Self::new(std)
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// As a chrono delta (always fits: bounded by [`MAX_GRANT_DURATION`]).
    pub fn as_chrono(self) -> chrono::TimeDelta {
        chrono::TimeDelta::seconds(self.0.as_secs() as i64)
    }

    /// Whole seconds.
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl fmt::Display for GrantDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl fmt::Debug for GrantDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantDuration({})", format_duration(self.0))
    }
}

impl FromStr for GrantDuration {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = parse_duration(s)?;
        GrantDuration::new(d)
    }
}

/// Every bound on one grant's length, applied in one place (design rule 2):
/// a grant lasts `min(requested, entitlement max, policy max, provider max)`.
///
/// The broker builds one from the record and the provider at approval (the
/// grant's window) and again at issue (the provider's limit may differ on
/// the replica that issues); nothing else clamps a grant's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationLimits {
    /// The entitlement's [`Entitlement::max_duration`].
    pub entitlement: GrantDuration,
    /// The policy decision's [`Decision::max_duration`].
    pub policy: GrantDuration,
    /// The provider's [`Capabilities::max_duration`](crate::Capabilities::max_duration).
    pub provider: Duration,
}

impl DurationLimits {
    /// The longest grant these limits allow, in whole seconds (rounded down,
    /// so the provider's limit is never exceeded); `None` when the
    /// provider's maximum is under one second, so nothing can be minted.
    pub fn max(&self) -> Option<GrantDuration> {
        let provider_secs = self.provider.as_secs().min(MAX_GRANT_DURATION.as_secs());
        let provider = GrantDuration::new(Duration::from_secs(provider_secs)).ok()?;
        Some(self.entitlement.min(self.policy).min(provider))
    }

    /// `requested`, cut to [`DurationLimits::max`].
    pub fn clamp(&self, requested: GrantDuration) -> Option<GrantDuration> {
        self.max().map(|max| requested.min(max))
    }
}

/// Formats a duration compactly: `1h30m`, `45s`, `2d`.
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, n) in [("d", 86_400u64), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= n {
            out.push_str(&format!("{}{unit}", s / n));
            s %= n;
        }
    }
    out
}

/// Parses `30m`, `1h30m`, `90s`, `2d`, `8h`, or ISO 8601 `PT30M` / `P1DT2H`.
///
/// A leading `-` is reported as a negative duration; values that do not fit
/// in 64-bit seconds are reported as an overflow.
pub fn parse_duration(input: &str) -> Result<Duration, RequestError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(RequestError::DurationSyntax(String::new()));
    }
    if s.starts_with('-') {
        return Err(RequestError::NegativeDuration(truncate_for_display(s)));
    }
    let upper = s.to_ascii_uppercase();
    let (body, iso) = if let Some(rest) = upper.strip_prefix('P') {
        (rest.to_string(), true)
    } else {
        (s.to_ascii_lowercase(), false)
    };
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    let mut in_time = !iso;
    let mut any = false;
    let overflow = || RequestError::DurationOverflow(truncate_for_display(s));
    let syntax = || RequestError::DurationSyntax(truncate_for_display(s));
    for c in body.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = num.unwrap_or(0);
            num = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(d as u64))
                    .ok_or_else(overflow)?,
            );
            continue;
        }
        if iso && c == 'T' {
            if num.is_some() || in_time {
                return Err(syntax());
            }
            in_time = true;
            continue;
        }
        let n = num.take().ok_or_else(syntax)?;
        let mult = match (c.to_ascii_lowercase(), iso, in_time) {
            ('d', _, false) | ('d', false, _) => 86_400,
            ('w', false, _) => 7 * 86_400,
            ('h', _, true) => 3600,
            ('m', _, true) => 60,
            ('s', _, true) => 1,
            _ => return Err(syntax()),
        };
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(overflow)?;
        any = true;
    }
    if num.is_some() || !any {
        return Err(syntax());
    }
    if total > i64::MAX as u64 / 1000 {
        return Err(overflow());
    }
    Ok(Duration::from_secs(total))
}

/// A catalogue entry that can be requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entitlement {
    /// Id requesters ask for.
    pub id: String,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// Name of the provider that mints it (`local`, `aws`, ...).
    pub provider: String,
    /// Provider-specific target (role ARN, scope, audience...), validated by the provider.
    pub target: serde_json::Value,
    /// Longest grant for this entitlement.
    pub max_duration: GrantDuration,
}

/// What the requester asks for. Validated by [`AccessRequest::validate`] before anything is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// The entitlement id.
    pub entitlement: String,
    /// How long the access is needed.
    pub duration: GrantDuration,
    /// Optional scheduled start; `None` means as soon as approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    /// Why.
    #[serde(default)]
    pub justification: String,
    /// Ticket reference (`INC-1234`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Request context: source, client, anything the host wants audited.
    #[serde(default)]
    pub context: BTreeMap<String, String>,
}

impl AccessRequest {
    /// A request with the required fields; add the rest with the `with_*` methods.
    pub fn new(entitlement: &str, duration: GrantDuration, justification: &str) -> Self {
        Self {
            entitlement: entitlement.to_string(),
            duration,
            start_at: None,
            justification: justification.to_string(),
            ticket: None,
            context: BTreeMap::new(),
        }
    }

    /// Sets the ticket reference.
    pub fn with_ticket(mut self, ticket: &str) -> Self {
        self.ticket = Some(ticket.to_string());
        self
    }

    /// Schedules the start.
    pub fn starting_at(mut self, at: DateTime<Utc>) -> Self {
        self.start_at = Some(at);
        self
    }

    /// Adds a context entry.
    pub fn with_context(mut self, key: &str, value: &str) -> Self {
        self.context.insert(key.to_string(), value.to_string());
        self
    }

    /// Checks the fields that do not depend on the catalogue.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), RequestError> {
        validate_entitlement_id(&self.entitlement)?;
        check_text("justification", &self.justification)?;
        if let Some(start) = self.start_at {
            // A minute of slack for clock skew between client and broker.
            if start < now - chrono::TimeDelta::seconds(60) {
                return Err(RequestError::StartInPast(start.to_rfc3339()));
            }
            let ahead = chrono::TimeDelta::seconds(MAX_START_AHEAD.as_secs() as i64);
            if start > now + ahead {
                return Err(RequestError::StartTooFar {
                    start: start.to_rfc3339(),
                    limit: format_duration(MAX_START_AHEAD),
                });
            }
        }
        if let Some(t) = &self.ticket {
            if t.is_empty() || t.chars().count() > 128 || t.chars().any(char::is_control) {
                return Err(RequestError::TicketPattern {
                    ticket: truncate_for_display(t),
                    pattern: "1 to 128 printable characters".into(),
                });
            }
        }
        if self.context.len() > 32 {
            return Err(RequestError::ContextTooLarge(format!(
                "{} entries, at most 32",
                self.context.len()
            )));
        }
        if let Some((k, _)) = self
            .context
            .iter()
            .find(|(k, v)| k.len() > 64 || v.len() > 512)
        {
            return Err(RequestError::ContextTooLarge(format!(
                "entry `{}` exceeds 64 characters of key or 512 of value",
                truncate_for_display(k)
            )));
        }
        Ok(())
    }
}

/// Who may approve: ids and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverSet {
    /// Principal ids.
    #[serde(default)]
    pub ids: BTreeSet<String>,
    /// Groups.
    #[serde(default)]
    pub groups: BTreeSet<String>,
}

impl ApproverSet {
    /// Whether the principal is named by its exact subject id or through one
    /// of its groups (aliases never make an approver).
    pub fn contains(&self, p: &Principal) -> bool {
        self.ids.contains(p.id.as_str()) || p.groups.iter().any(|g| self.groups.contains(g))
    }

    /// Whether no one is named.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.groups.is_empty()
    }
}

/// The policy's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Refused.
    Deny,
    /// Needs `quorum` distinct approvals from `approvers`, never counting the requester.
    NeedsApproval {
        /// Who may approve.
        approvers: ApproverSet,
        /// How many distinct approvals.
        quorum: u32,
    },
    /// Approved without a human.
    AutoApprove,
}

/// A policy decision: a value, not an error, so that it can be audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The longest grant the policy allows for this request.
    pub max_duration: GrantDuration,
    /// Why, in words a person can read.
    pub reasons: Vec<String>,
    /// The risk review the decision saw, when the broker has a risk
    /// assessor (set by the broker, not the policy; see [`crate::risk`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<crate::risk::RiskAssessment>,
    /// The ticket verification the decision saw, when the broker has a
    /// ticket verifier and the request names a ticket (set by the broker;
    /// see [`crate::ticket`]): what an approver checks the work against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<crate::ticket::TicketVerdict>,
    /// The on-call check the decision saw, when the policy asked about a
    /// schedule for this entitlement (set by the broker; see
    /// [`crate::oncall`]): whether the requester was on call, and what
    /// could not be answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_call: Option<crate::oncall::OnCallCheck>,
}

impl Decision {
    /// Whether the verdict is deny.
    pub fn is_deny(&self) -> bool {
        matches!(self.verdict, Verdict::Deny)
    }
}

/// One recorded approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved.
    pub approver: Principal,
    /// When.
    pub at: DateTime<Utc>,
    /// Optional comment.
    #[serde(default)]
    pub comment: String,
}

/// Lifecycle state of a request and its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for approvals.
    Pending,
    /// Approved, not yet issued.
    Approved,
    /// Refused by policy or an approver.
    Denied,
    /// Withdrawn by the requester.
    Cancelled,
    /// Nobody decided before the pending TTL.
    TimedOut,
    /// Recorded, provider call in flight.
    Issuing,
    /// Credentials minted and valid.
    Active,
    /// The provider refused to issue.
    Failed,
    /// Reached its end.
    Expired,
    /// Revocation in progress (or being retried).
    Revoking,
    /// Revoked before its end.
    Revoked,
    /// Revocation keeps failing; still retried, and visible.
    RevocationFailed,
}

impl State {
    /// All states.
    pub const ALL: [State; 12] = [
        State::Pending,
        State::Approved,
        State::Denied,
        State::Cancelled,
        State::TimedOut,
        State::Issuing,
        State::Active,
        State::Failed,
        State::Expired,
        State::Revoking,
        State::Revoked,
        State::RevocationFailed,
    ];

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Cancelled => "cancelled",
            State::TimedOut => "timed_out",
            State::Issuing => "issuing",
            State::Active => "active",
            State::Failed => "failed",
            State::Expired => "expired",
            State::Revoking => "revoking",
            State::Revoked => "revoked",
            State::RevocationFailed => "revocation_failed",
        }
    }

    /// Whether no further transition can happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Denied
                | State::Cancelled
                | State::TimedOut
                | State::Failed
                | State::Expired
                | State::Revoked
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| crate::Error::Store(format!("unknown state `{s}`")))
    }
}

/// What a provider minted, without secrets: enough to find and revoke it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedGrant {
    /// Provider name.
    pub provider: String,
    /// Provider-side id (session name, schedule request id, binding title, token id).
    pub external_id: String,
    /// When it stops working at the provider: the source of truth for the grant's end.
    pub expires_at: DateTime<Utc>,
    /// Further non-secret details (role id, etag, ...).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// A grant: an approved request bound to a concrete window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Id; provider-side names derive from it.
    pub id: GrantId,
    /// Start of the window.
    pub starts_at: DateTime<Utc>,
    /// End of the window (replaced by the provider's expiry once issued).
    pub ends_at: DateTime<Utc>,
    /// What was minted, once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<IssuedGrant>,
}

/// Why a grant is being taken away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Who asked (`reaper` for expiry and reconciliation).
    pub by: String,
    /// Why.
    pub reason: String,
    /// Whether this is the end of the window rather than an early revocation.
    pub expiry: bool,
    /// Failed provider attempts so far.
    pub attempts: u32,
    /// The provider's last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
}

/// The stored lifecycle record of one access request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Id.
    pub id: RequestId,
    /// Compare-and-set version; bumped by every transition.
    pub version: u64,
    /// Current state.
    pub state: State,
    /// Who asked.
    pub requester: Principal,
    /// What they asked for.
    pub request: AccessRequest,
    /// The policy's decision.
    pub decision: Decision,
    /// The entitlement as the policy decided on it, kept so that the grant
    /// is issued as approved and, once minted, delivered, reconciled,
    /// revoked and expired without the catalogue still containing it (see
    /// the README's rule for rolling catalogue changes). `None` in records
    /// written before it was kept; the broker then reads the catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entitlement: Option<Entitlement>,
    /// Approvals so far.
    #[serde(default)]
    pub approvals: Vec<Approval>,
    /// The grant, once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    /// The request this one extends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<RequestId>,
    /// Revocation in progress or done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<Revocation>,
    /// Until when a pending request waits for approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_until: Option<DateTime<Utc>>,
    /// Last human-readable note (denial reason, failure message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl RequestRecord {
    /// The grant's end, if a grant exists.
    pub fn ends_at(&self) -> Option<DateTime<Utc>> {
        self.grant.as_ref().map(|g| g.ends_at)
    }

    /// When the reaper next has work on this record, by state: the pending
    /// deadline, the scheduled start, the grant's end, the next revocation
    /// attempt, or (for `Issuing`) the last change. `None` for final states.
    pub fn due_at(&self) -> Option<DateTime<Utc>> {
        match self.state {
            State::Pending => self.pending_until,
            State::Approved => self.grant.as_ref().map(|g| g.starts_at),
            State::Active => self.ends_at(),
            State::Issuing => Some(self.updated_at),
            State::Revoking | State::RevocationFailed => self
                .revocation
                .as_ref()
                .map(|r| r.next_attempt_at)
                .or(Some(self.updated_at)),
            _ => None,
        }
    }

    /// The grant id, if a grant exists.
    pub fn grant_id(&self) -> Option<GrantId> {
        self.grant.as_ref().map(|g| g.id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A record as brokers stored it before they kept the entitlement: it
    /// must still decode (every store keeps the record as this JSON).
    const RECORD_WITHOUT_ENTITLEMENT: &str = r#"{
        "id": "6f1c2a44-3b0e-4d8e-9a51-0d2f4a7b9c10",
        "version": 3,
        "state": "active",
        "requester": { "id": "alice", "groups": ["eng"] },
        "request": {
            "entitlement": "dev-read",
            "duration": 1800,
            "justification": "INC-1",
            "context": {}
        },
        "decision": { "verdict": "auto_approve", "max_duration": 3600, "reasons": [] },
        "approvals": [],
        "grant": {
            "id": "0b7e8f0e-5d59-4a43-8c1c-3f0f2a9d6b11",
            "starts_at": "2026-11-01T10:00:00Z",
            "ends_at": "2026-11-01T10:30:00Z",
            "issued": {
                "provider": "local",
                "external_id": "jit-0b7e8f0e5d594a438c1c3f0f2a9d6b11",
                "expires_at": "2026-11-01T10:30:00Z"
            }
        },
        "created_at": "2026-11-01T10:00:00Z",
        "updated_at": "2026-11-01T10:00:01Z"
    }"#;

    #[test]
    fn a_record_written_before_entitlements_were_kept_still_decodes() {
        let rec: RequestRecord = serde_json::from_str(RECORD_WITHOUT_ENTITLEMENT).unwrap();
        assert_eq!(rec.entitlement, None);
        assert_eq!(rec.state, State::Active);
        assert_eq!(rec.request.entitlement, "dev-read");
        // Written back, it stays in the old shape until an entitlement is set.
        let json = serde_json::to_value(&rec).unwrap();
        assert!(json.get("entitlement").is_none(), "{json}");
        let mut with = rec.clone();
        with.entitlement = Some(Entitlement {
            id: "dev-read".into(),
            description: String::new(),
            provider: "local".into(),
            target: serde_json::json!({ "audience": "dev" }),
            max_duration: "1h".parse().unwrap(),
        });
        let back: RequestRecord =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }

    fn d(s: &str) -> GrantDuration {
        s.parse().unwrap()
    }

    fn limits(entitlement: &str, policy: &str, provider_secs: u64) -> DurationLimits {
        DurationLimits {
            entitlement: d(entitlement),
            policy: d(policy),
            provider: Duration::from_secs(provider_secs),
        }
    }

    #[test]
    fn each_limit_bounds_the_grant_when_it_is_the_smallest() {
        // The request is the smallest: it stands.
        assert_eq!(limits("4h", "4h", 4 * 3600).clamp(d("1h")), Some(d("1h")));
        // The entitlement's maximum.
        assert_eq!(limits("30m", "4h", 4 * 3600).clamp(d("2h")), Some(d("30m")));
        // The policy's maximum.
        assert_eq!(limits("4h", "20m", 4 * 3600).clamp(d("2h")), Some(d("20m")));
        // The provider's maximum.
        assert_eq!(limits("4h", "4h", 900).clamp(d("2h")), Some(d("15m")));
        assert_eq!(limits("30m", "20m", 900).max(), Some(d("15m")));
    }

    #[test]
    fn the_provider_limit_rounds_down_and_may_leave_nothing() {
        let sub_second = DurationLimits {
            provider: Duration::from_millis(1500),
            ..limits("1h", "1h", 0)
        };
        assert_eq!(sub_second.clamp(d("1h")), Some(d("1s")));
        assert_eq!(limits("1h", "1h", 0).max(), None);
        assert_eq!(limits("1h", "1h", 0).clamp(d("1m")), None);
        // A provider that allows more than any grant may last is no bound.
        let huge = limits("7d", "7d", u64::MAX);
        assert_eq!(huge.max(), Some(d("7d")));
    }

    #[test]
    fn durations_parse_and_fail_typed() {
        assert_eq!(
            parse_duration("1h30m").ok(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("PT30M").ok(),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            parse_duration("P1DT1H").ok(),
            Some(Duration::from_secs(90_000))
        );
        assert!(matches!(
            parse_duration("-5m"),
            Err(RequestError::NegativeDuration(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(RequestError::DurationOverflow(_))
        ));
        assert!(matches!(
            parse_duration("5 parsecs"),
            Err(RequestError::DurationSyntax(_))
        ));
        assert!(matches!(
            parse_duration("PT"),
            Err(RequestError::DurationSyntax(_))
        ));
        assert!(matches!(
            "0m".parse::<GrantDuration>(),
            Err(RequestError::ZeroDuration)
        ));
        let err = "8d".parse::<GrantDuration>().err();
        assert!(
            matches!(err, Some(RequestError::DurationTooLong { ref limit, .. }) if limit == "7d")
        );
        assert!(matches!(
            GrantDuration::from_secs_i64(-1),
            Err(RequestError::NegativeDuration(_))
        ));
        assert!(matches!(
            GrantDuration::from_chrono(chrono::TimeDelta::MAX),
            Err(RequestError::DurationTooLong { .. }) | Err(RequestError::DurationOverflow(_))
        ));
    }

    #[test]
    fn only_the_exact_subject_is_the_principal() {
        let alice = Principal::new("alice").unwrap();
        assert!(alice.is(&PrincipalId::new("alice").unwrap()));
        for other in [
            "ALICE",
            "ａｌｉｃｅ",
            "alice\u{200b}",
            "ali\u{ad}ce",
            "Alice",
        ] {
            assert!(!alice.is(&PrincipalId::new(other).unwrap()), "{other:?}");
        }
        let mallory = Principal::new("mallory")
            .unwrap()
            .with_alias("alice")
            .with_group("Leads");
        let set = ApproverSet {
            ids: ["alice".to_string()].into(),
            groups: ["leads".to_string()].into(),
        };
        assert!(!set.contains(&mallory), "aliases and group case never give");
        assert!(!mallory.in_group("leads"));
    }

    #[test]
    fn may_be_same_person_sees_folded_invisible_and_confusable_forms() {
        let alice = Principal::new("alice")
            .unwrap()
            .with_alias("alice@example.com");
        for other in [
            "alice",
            "ALICE",
            "ａｌｉｃｅ",
            "alice\u{200b}",
            "ali\u{ad}ce",
            "\u{2060}alice",
            "аlice", // Cyrillic a
            "ALICE@EXAMPLE.COM",
        ] {
            let p = Principal::new(other).unwrap();
            assert!(alice.may_be_same_person(&p), "{other:?}");
            assert!(p.may_be_same_person(&alice), "{other:?} (symmetric)");
        }
        let strasse = Principal::new("straße").unwrap();
        assert!(strasse.may_be_same_person(&Principal::new("STRASSE").unwrap()));
        assert!(Principal::new("bob")
            .unwrap()
            .with_alias("Alice")
            .may_be_same_person(&alice));
        assert!(!alice.may_be_same_person(&Principal::new("bob").unwrap()));
        assert!(!alice.may_be_same_person(&Principal::new("alicia").unwrap()));
    }

    #[test]
    fn identity_skeleton_is_stable() {
        for s in ["straße", "ＡＬＩＣＥ", "ａ\u{200b}ｌ", "ǅ", "ﬃ", "İstanbul"] {
            let once = identity_skeleton(s);
            assert_eq!(identity_skeleton(&once), once, "{s:?}");
        }
    }

    #[test]
    fn principal_ids_are_validated() {
        assert!(PrincipalId::new("").is_err());
        assert!(PrincipalId::new("a\nb").is_err());
        assert!(PrincipalId::new(" a").is_err());
        assert!(PrincipalId::new("x".repeat(257)).is_err());
        assert!(PrincipalId::new("ok@example.com").is_ok());
    }
}
