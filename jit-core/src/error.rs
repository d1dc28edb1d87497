//! The one public error of the crate, with meaning-based kinds.
//!
//! Provider crates keep their own private error enums and convert into
//! [`Error`]; a host application matches on the kind, never on message text.
//! Messages are lowercase, without a trailing period, with user input in
//! backticks, and no secret value ever reaches them.

use std::time::Duration;

use crate::types::{RequestId, State};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the broker, a store, a provider or the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field of an access request is invalid; nothing was recorded.
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] RequestError),

    /// The catalogue (or another configuration source) is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),

    /// The policy denied the request; the reasons are part of the audit record too.
    #[error("denied by policy: {}", reasons.join("; "))]
    Denied {
        /// Why, in the policy's words.
        reasons: Vec<String>,
    },

    /// The caller is not allowed to perform this operation on this object.
    #[error("`{principal}` may not {operation} request `{request}`: {reason}")]
    Forbidden {
        /// Who tried.
        principal: String,
        /// What they tried (approve, revoke, ...).
        operation: &'static str,
        /// On which request.
        request: RequestId,
        /// Why not.
        reason: String,
    },

    /// No such object (or the caller may not know it exists).
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// What kind of object.
        kind: &'static str,
        /// The id that was looked up.
        id: String,
    },

    /// The operation does not apply to the object's current state.
    #[error("cannot {operation} request `{request}` in state `{state}`")]
    InvalidState {
        /// What was attempted.
        operation: &'static str,
        /// On which request.
        request: RequestId,
        /// The state it is in.
        state: State,
    },

    /// A concurrent change won a compare-and-set race; re-read and retry if still wanted.
    #[error("request `{request}` changed concurrently (expected version {expected})")]
    Conflict {
        /// The request.
        request: RequestId,
        /// The version the caller based its change on.
        expected: u64,
    },

    /// The cloud provider refused the operation.
    #[error("provider `{provider}` rejected {operation}: {message}")]
    ProviderRejected {
        /// Provider name.
        provider: String,
        /// Operation (issue, revoke, find, validate).
        operation: &'static str,
        /// The provider's own message (never a secret).
        message: String,
    },

    /// The provider throttled us; retry after the given delay if known.
    #[error("provider `{provider}` throttled {operation}{}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    Throttled {
        /// Provider name.
        provider: String,
        /// Operation.
        operation: &'static str,
        /// Suggested wait.
        retry_after: Option<Duration>,
    },

    /// A dependency (provider endpoint, database) could not be reached.
    #[error("{what} unavailable: {message}")]
    Unavailable {
        /// The dependency.
        what: String,
        /// Details.
        message: String,
    },

    /// The requester already holds as many requests waiting for approval as
    /// the broker allows ([`BrokerBuilder::max_pending_per_requester`](crate::BrokerBuilder::max_pending_per_requester));
    /// nothing was stored. Checked only for a request that would wait.
    #[error("`{requester}` already has {max} pending requests, the most one person may hold: cancel one or wait for decisions")]
    TooManyPending {
        /// The requester's exact subject id.
        requester: String,
        /// The cap.
        max: usize,
    },

    /// The audit record could not be written; the operation was not completed (fail-closed).
    #[error("audit failed: {0}")]
    AuditFailed(String),

    /// The store failed (I/O, corruption, migration).
    #[error("store error: {0}")]
    Store(String),

    /// A local token failed verification.
    #[error("token rejected: {0}")]
    Token(#[from] TokenError),
}

impl Error {
    /// A stable, machine-readable name of the error's kind, the same in every
    /// host (the vending server's and the Lambda function's error bodies):
    ///
    /// | code | kind | HTTP |
    /// | --- | --- | --- |
    /// | `invalid_request` | [`Error::InvalidRequest`] | 400 |
    /// | `unauthorized` | [`Error::Token`] | 401 |
    /// | `denied` | [`Error::Denied`] | 403 |
    /// | `forbidden` | [`Error::Forbidden`] | 403 |
    /// | `not_found` | [`Error::NotFound`] | 404 |
    /// | `invalid_state` | [`Error::InvalidState`] | 409 |
    /// | `conflict` | [`Error::Conflict`] | 409 |
    /// | `throttled` | [`Error::Throttled`] | 429, with `Retry-After` when known |
    /// | `too_many_requests` | [`Error::TooManyPending`] | 429 |
    /// | `audit_failed` | [`Error::AuditFailed`] | 500 |
    /// | `invalid_configuration` | [`Error::Config`] (the host's own configuration) | 500 |
    /// | `internal` | [`Error::Store`] | 500 |
    /// | `provider_rejected` | [`Error::ProviderRejected`] | 502 |
    /// | `unavailable` | [`Error::Unavailable`] | 503 |
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::Token(_) => "unauthorized",
            Error::Denied { .. } => "denied",
            Error::Forbidden { .. } => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::InvalidState { .. } => "invalid_state",
            Error::Conflict { .. } => "conflict",
            Error::Throttled { .. } => "throttled",
            Error::TooManyPending { .. } => "too_many_requests",
            Error::AuditFailed(_) => "audit_failed",
            Error::Config(_) => "invalid_configuration",
            Error::Store(_) => "internal",
            Error::ProviderRejected { .. } => "provider_rejected",
            Error::Unavailable { .. } => "unavailable",
        }
    }

    /// The HTTP status that goes with [`Error::code`].
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidRequest(_) => 400,
            Error::Token(_) => 401,
            Error::Denied { .. } | Error::Forbidden { .. } => 403,
            Error::NotFound { .. } => 404,
            Error::InvalidState { .. } | Error::Conflict { .. } => 409,
            Error::Throttled { .. } | Error::TooManyPending { .. } => 429,
            Error::AuditFailed(_) | Error::Config(_) | Error::Store(_) => 500,
            Error::ProviderRejected { .. } => 502,
            Error::Unavailable { .. } => 503,
        }
    }

    /// How long a caller should wait before retrying, when known (the
    /// `Retry-After` of a 429), in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::Throttled { retry_after, .. } => retry_after.map(|d| d.as_secs().max(1)),
            _ => None,
        }
    }

    /// Whether the message describes the host's own internals (store,
    /// configuration, audit sink): hosts log it and answer with a generic
    /// message instead of showing it to the caller.
    pub fn is_internal(&self) -> bool {
        self.http_status() == 500
    }

    /// Shorthand for a not-found request.
    pub fn request_not_found(id: RequestId) -> Self {
        Error::NotFound {
            kind: "request",
            id: id.to_string(),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Throttled { .. } | Error::Unavailable { .. } | Error::Conflict { .. }
        )
    }
}

/// One invalid field of an access request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The entitlement id is empty or malformed.
    #[error("entitlement id `{0}` is not valid: use 1 to 128 characters of `[A-Za-z0-9._:/-]`")]
    EntitlementId(String),
    /// The entitlement is not in the catalogue.
    #[error("unknown entitlement `{0}`")]
    UnknownEntitlement(String),
    /// The requested duration is zero.
    #[error("duration must be greater than zero")]
    ZeroDuration,
    /// The requested duration is negative.
    #[error("duration `{0}` is negative")]
    NegativeDuration(String),
    /// The requested duration does not fit in the time types.
    #[error("duration `{0}` overflows")]
    DurationOverflow(String),
    /// The requested duration exceeds a hard limit.
    #[error("duration `{requested}` exceeds the maximum of {limit}")]
    DurationTooLong {
        /// What was asked for.
        requested: String,
        /// The limit, human readable.
        limit: String,
    },
    /// The requested duration is below what the provider can mint.
    #[error("duration `{requested}` is below the minimum of {minimum} for this entitlement")]
    DurationTooShort {
        /// What was asked for.
        requested: String,
        /// The minimum, human readable.
        minimum: String,
    },
    /// The duration text could not be parsed.
    #[error("duration `{0}` is not valid: use forms like `30m`, `1h30m`, `8h` or `PT30M`")]
    DurationSyntax(String),
    /// The start time lies in the past.
    #[error("start time `{0}` is in the past")]
    StartInPast(String),
    /// The start time is too far in the future.
    #[error("start time `{start}` is more than {limit} ahead")]
    StartTooFar {
        /// The start time.
        start: String,
        /// The limit.
        limit: String,
    },
    /// No justification was given but one is required.
    #[error("a justification is required")]
    JustificationMissing,
    /// A free-text field (justification, reason, comment) is longer than
    /// [`MAX_TEXT_LEN`](crate::types::MAX_TEXT_LEN).
    #[error("{field} is {len} characters long; the maximum is {limit}")]
    TextTooLong {
        /// The field, e.g. `justification`, `reason` or `comment`.
        field: &'static str,
        /// Actual length.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// The justification does not match the entitlement's pattern.
    #[error("justification does not match the required pattern `{pattern}`")]
    JustificationPattern {
        /// The regex.
        pattern: String,
    },
    /// A ticket reference is required.
    #[error("a ticket reference is required for entitlement `{0}`")]
    TicketMissing(String),
    /// The ticket reference does not match the required pattern.
    #[error("ticket `{ticket}` does not match the required pattern `{pattern}`")]
    TicketPattern {
        /// The ticket given.
        ticket: String,
        /// The regex.
        pattern: String,
    },
    /// A principal id is empty, too long or has control characters.
    #[error("principal id `{0}` is not valid: use 1 to 256 printable characters")]
    PrincipalId(String),
    /// The requester has no identity the provider can grant to: the
    /// principal attribute naming it (an Entra object id, a GCP member) is
    /// missing or malformed. Refused before any call; the fix is on the
    /// identity side (a token claim mapped to the attribute), not the cloud's.
    #[error("principal `{principal}` has no usable identity for provider `{provider}`: {message}")]
    NoCloudIdentity {
        /// The requester (printable, shortened).
        principal: String,
        /// The provider.
        provider: String,
        /// What is missing or wrong, naming the attribute.
        message: String,
    },
    /// Context has too many or too long entries.
    #[error("request context is too large: {0}")]
    ContextTooLarge(String),
    /// A reason (revocation, denial) is missing or too long.
    #[error("reason is not valid: {0}")]
    Reason(String),
    /// The scheduled start of the grant has not been reached.
    #[error("request `{request}` is scheduled to start at {starts_at}")]
    NotYetStarted {
        /// The request.
        request: RequestId,
        /// Its start, RFC 3339.
        starts_at: String,
    },
    /// An extension was asked for something that is not an active grant.
    #[error("request `{0}` has no active grant to extend")]
    NotExtendable(RequestId),
}

/// A problem in the catalogue or another configuration input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key the schema does not know.
    #[error("unknown key `{key}` at line {line}")]
    UnknownKey {
        /// The key.
        key: String,
        /// 1-based line.
        line: usize,
    },
    /// TOML syntax or type error.
    #[error("{message} at line {line}")]
    Syntax {
        /// The parser's message.
        message: String,
        /// 1-based line.
        line: usize,
    },
    /// Two entitlements with one id.
    #[error("entitlement `{0}` is defined twice")]
    DuplicateEntitlement(String),
    /// A field value is invalid.
    #[error("entitlement `{entitlement}`: `{field}` is invalid: {message}")]
    InvalidField {
        /// Which entitlement (or `settings`).
        entitlement: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An approval rule that can never be satisfied.
    #[error("entitlement `{entitlement}`: quorum {quorum} can never be reached: {message}")]
    UnreachableQuorum {
        /// Which entitlement.
        entitlement: String,
        /// The quorum.
        quorum: u32,
        /// Why.
        message: String,
    },
    /// No provider is registered under the entitlement's provider name.
    #[error("entitlement `{entitlement}` names provider `{provider}`, which is not registered")]
    UnknownProvider {
        /// Which entitlement.
        entitlement: String,
        /// The name.
        provider: String,
    },
    /// A store URL names no store this build can open (an unknown scheme, or
    /// a backend whose feature is off). The URL is shown with any password
    /// replaced by `***`.
    #[error("store url `{url}` is not usable: {message}")]
    StoreUrl {
        /// The URL, password redacted.
        url: String,
        /// What to do instead.
        message: String,
    },
    /// A `[providers.NAME]` table is invalid (see [`crate::provider::registry`]).
    #[error(transparent)]
    Provider(#[from] crate::provider::registry::ProviderConfigError),
    /// An on-call rota is invalid (see [`crate::oncall::rota`]).
    #[error("on-call rota `{file}`, line {line}: `{field}` is invalid: {message}")]
    Rota {
        /// The rota file (`(inline)` for text).
        file: String,
        /// 1-based line.
        line: usize,
        /// The field, with its place (`schedules[0].weekly[1].until`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A Cedar policy that does not parse, does not validate against the
    /// schema (strict mode), lacks an `@id` or names an unknown entitlement
    /// (feature `cedar`, see `policy::cedar`). `policy` is the policy's
    /// `@id` (or its place in the file, `#3`, when it has none that can be
    /// read); line and column are 1-based, in the policy file.
    #[error("cedar policy `{policy}` at line {line}, column {column}: {message}")]
    Cedar {
        /// The policy's `@id`, or `#N` for the N-th policy in the file.
        policy: String,
        /// 1-based line in the policy file.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What is wrong, in Cedar's words.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read `{path}`: {message}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        message: String,
    },
}

/// Why a local token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Missing `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Signature, algorithm or format is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token expired.
    #[error("token expired")]
    Expired,
    /// The grant behind the token was revoked.
    #[error("grant `{0}` was revoked")]
    Revoked(String),
    /// The token is for another audience or entitlement.
    #[error("token is not valid for `{0}`")]
    WrongAudience(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_and_statuses_are_one_table() {
        let id = RequestId::new();
        let cases: Vec<(Error, &str, u16)> = vec![
            (RequestError::ZeroDuration.into(), "invalid_request", 400),
            (TokenError::Expired.into(), "unauthorized", 401),
            (Error::Denied { reasons: vec![] }, "denied", 403),
            (Error::request_not_found(id), "not_found", 404),
            (
                Error::InvalidState {
                    operation: "approve",
                    request: id,
                    state: State::Active,
                },
                "invalid_state",
                409,
            ),
            (
                Error::Conflict {
                    request: id,
                    expected: 1,
                },
                "conflict",
                409,
            ),
            (
                Error::Throttled {
                    provider: "aws".into(),
                    operation: "issue",
                    retry_after: Some(Duration::from_millis(1500)),
                },
                "throttled",
                429,
            ),
            (Error::AuditFailed("x".into()), "audit_failed", 500),
            (Error::Store("x".into()), "internal", 500),
            (
                Error::Unavailable {
                    what: "sts".into(),
                    message: "down".into(),
                },
                "unavailable",
                503,
            ),
        ];
        for (e, code, status) in cases {
            assert_eq!((e.code(), e.http_status()), (code, status), "{e}");
            assert_eq!(e.is_internal(), status == 500, "{e}");
        }
        let throttled = Error::Throttled {
            provider: "aws".into(),
            operation: "issue",
            retry_after: Some(Duration::from_millis(200)),
        };
        assert_eq!(throttled.retry_after_secs(), Some(1), "at least one second");
    }
}
