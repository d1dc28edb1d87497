//! The JSON of the vending API, defined once for every host and client: the
//! vending server writes it, the Lambda function writes the parts it shares
//! (error envelope, `credential_process` document), the `jit` CLI reads it.
//!
//! Serde only, no HTTP: a client depends on jit-core with
//! `default-features = false` and gets these types without a store.
//!
//! | type | JSON |
//! | --- | --- |
//! | [`RequestAnswer`] | `{"request": RequestRecord, "credentials"?: CredentialsView}`: one request, after any operation |
//! | [`RequestList`] | `{"requests": [RequestRecord, ...]}`: `GET /v1/requests` (mine, the approvals queue, all) |
//! | [`CredentialsAnswer`] | `{"credentials": CredentialsView}`: `GET /v1/requests/{id}/credentials` |
//! | [`CredentialsView`] | `{"kind": "local_token" \| "aws" \| "access_token" \| "assignment" \| "unsupported", ...}` |
//! | [`ErrorEnvelope`] | `{"error": {"code", "message", "details"?}}`: every error |
//! | [`SubmitBody`], [`ReasonBody`], [`ExtendBody`] | request bodies |
//! | [`WhoAmI`], [`EntitlementList`], [`AuditVerification`], [`ArchiveAnswer`] | the other answers |
//! | [`ArchiveBody`] | `POST /v1/admin/archive` (admins) |
//! | [`CredentialProcess`] | the AWS `credential_process` document, version 1 |
//!
//! # Bytes on the wire
//!
//! Hosts have always answered with `serde_json::Value`s, whose objects
//! (without serde_json's `preserve_order`) list keys in sorted order. To
//! keep every answer byte for byte as it was, hosts turn these types into a
//! `Value` before writing them ([`to_value`]). [`CredentialProcess`] lists
//! its fields in that order itself, so it can be written directly.
//!
//! # Secrets
//!
//! Secret fields are [`Secret`]s: `Debug` redacts them, and they reach JSON
//! only through these types' `Serialize`, on their way to their owner.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::credentials::{Credentials, Secret};
use crate::types::{Principal, RequestId, RequestRecord, State};

/// `serde(with)` for [`Secret`] fields: written as the plain string.
mod secret {
    use super::*;

    pub fn serialize<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        String::deserialize(de).map(Secret::new)
    }
}

/// A wire value as a `serde_json::Value`, whose objects list keys in sorted
/// order: what hosts write (see the module docs).
pub fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    // These types serialize to JSON infallibly (string keys, no maps with
    // other keys); Null would only hide a bug, never a secret.
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Credentials as their owner receives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CredentialsView {
    /// A signed local bearer token.
    LocalToken {
        /// The token.
        #[serde(with = "secret")]
        token: Secret,
        /// Its expiry.
        expires_at: DateTime<Utc>,
    },
    /// AWS temporary credentials.
    Aws {
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        #[serde(with = "secret")]
        secret_access_key: Secret,
        /// Session token.
        #[serde(with = "secret")]
        session_token: Secret,
        /// Expiry.
        expires_at: DateTime<Utc>,
    },
    /// An OAuth access token (GCP `generateAccessToken`).
    AccessToken {
        /// The token.
        #[serde(with = "secret")]
        token: Secret,
        /// Its expiry.
        expires_at: DateTime<Utc>,
    },
    /// Access that uses the principal's own identity (an Azure assignment,
    /// a GCP binding): nothing secret to hand over.
    Assignment {
        /// What was granted.
        description: String,
        /// Where the role holds (Azure scope id, GCP resource); absent in
        /// answers of servers older than the field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// The role (Azure role definition id, GCP role name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        /// The role's display name (Azure: `Reader`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role_name: Option<String>,
        /// Who holds it (Entra object id, GCP member).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        /// When it ends.
        expires_at: DateTime<Utc>,
    },
    /// A kind this version does not know how to hand over.
    Unsupported {
        /// When it ends.
        expires_at: DateTime<Utc>,
    },
}

impl From<&Credentials> for CredentialsView {
    fn from(c: &Credentials) -> Self {
        match c {
            Credentials::LocalToken { token, expires_at } => Self::LocalToken {
                token: token.clone(),
                expires_at: *expires_at,
            },
            Credentials::Aws {
                access_key_id,
                secret_access_key,
                session_token,
                expires_at,
            } => Self::Aws {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
                expires_at: *expires_at,
            },
            Credentials::AccessToken { token, expires_at } => Self::AccessToken {
                token: token.clone(),
                expires_at: *expires_at,
            },
            Credentials::Assignment {
                description,
                scope,
                role,
                role_name,
                principal,
                expires_at,
            } => Self::Assignment {
                description: description.clone(),
                scope: scope.clone(),
                role: role.clone(),
                role_name: role_name.clone(),
                principal: principal.clone(),
                expires_at: *expires_at,
            },
        }
    }
}

impl CredentialsView {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::LocalToken { .. } => "local_token",
            Self::Aws { .. } => "aws",
            Self::AccessToken { .. } => "access_token",
            Self::Assignment { .. } => "assignment",
            Self::Unsupported { .. } => "unsupported",
        }
    }

    /// When the access ends.
    pub fn expires_at(&self) -> DateTime<Utc> {
        match self {
            Self::LocalToken { expires_at, .. }
            | Self::Aws { expires_at, .. }
            | Self::AccessToken { expires_at, .. }
            | Self::Assignment { expires_at, .. }
            | Self::Unsupported { expires_at } => *expires_at,
        }
    }

    /// The credentials again, for the outputs that take them (jit-aws's
    /// `credential_process`, environment variables); `None` for `unsupported`.
    pub fn to_credentials(&self) -> Option<Credentials> {
        Some(match self.clone() {
            Self::LocalToken { token, expires_at } => Credentials::LocalToken { token, expires_at },
            Self::Aws {
                access_key_id,
                secret_access_key,
                session_token,
                expires_at,
            } => Credentials::Aws {
                access_key_id,
                secret_access_key,
                session_token,
                expires_at,
            },
            Self::AccessToken { token, expires_at } => {
                Credentials::AccessToken { token, expires_at }
            }
            Self::Assignment {
                description,
                scope,
                role,
                role_name,
                principal,
                expires_at,
            } => Credentials::Assignment {
                description,
                scope,
                role,
                role_name,
                principal,
                expires_at,
            },
            Self::Unsupported { .. } => return None,
        })
    }
}

/// The AWS `credential_process` document, version 1. Fields in sorted
/// order: written directly, it is byte for byte what the hosts wrote as a
/// `serde_json::Value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialProcess {
    /// Access key id.
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    /// Expiry, RFC 3339 in whole seconds (what SDKs parse).
    #[serde(rename = "Expiration")]
    pub expiration: String,
    /// Secret access key.
    #[serde(rename = "SecretAccessKey", with = "secret")]
    pub secret_access_key: Secret,
    /// Session token.
    #[serde(rename = "SessionToken", with = "secret")]
    pub session_token: Secret,
    /// Always 1.
    #[serde(rename = "Version")]
    pub version: u8,
}

impl CredentialProcess {
    /// The document for AWS credentials; `None` for any other kind.
    pub fn from_credentials(c: &Credentials) -> Option<Self> {
        match c {
            Credentials::Aws {
                access_key_id,
                secret_access_key,
                session_token,
                expires_at,
            } => Some(Self {
                access_key_id: access_key_id.clone(),
                expiration: expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
                version: 1,
            }),
            _ => None,
        }
    }

    /// The document as one line of JSON, secret.
    pub fn to_json(&self) -> Secret {
        Secret::new(serde_json::to_string(self).unwrap_or_default())
    }

    /// When the credentials expire, if `Expiration` parses.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.expiration)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// One request, the answer of `GET /v1/requests/{id}` and of every
/// operation on it. `credentials` only for the requester, when the
/// operation issued them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestAnswer {
    /// The request as stored.
    pub request: RequestRecord,
    /// Credentials issued by this operation, for the requester only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsView>,
}

impl RequestAnswer {
    /// The answer for a caller: the record as the API shows it
    /// ([`caller_view`]) with the credentials, if any.
    pub fn new(request: RequestRecord, credentials: Option<CredentialsView>) -> Self {
        Self {
            request: caller_view(request),
            credentials,
        }
    }
}

/// `GET /v1/requests`: the caller's requests, the approvals queue, or all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestList {
    /// The requests, newest first.
    pub requests: Vec<RequestRecord>,
}

impl RequestList {
    /// The list for a caller, each record as the API shows it ([`caller_view`]).
    pub fn new(requests: impl IntoIterator<Item = RequestRecord>) -> Self {
        Self {
            requests: requests.into_iter().map(caller_view).collect(),
        }
    }
}

/// A record as the API shows it: without the stored copy of the
/// entitlement ([`RequestRecord::entitlement`]), whose provider target
/// (role ARNs, session policies, scopes) the API never shows requesters or
/// approvers, as the entitlements listing does not either. The entitlement's
/// id stays, in `request.entitlement`.
pub fn caller_view(mut record: RequestRecord) -> RequestRecord {
    record.entitlement = None;
    record
}

/// `GET /v1/requests/{id}/credentials`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialsAnswer {
    /// The credentials, re-delivered.
    pub credentials: CredentialsView,
}

/// Every error: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The body of an [`ErrorEnvelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code ([`crate::Error::code`], or a host's own
    /// such as `payload_too_large`).
    pub code: String,
    /// Human-readable; never internals, never secrets.
    pub message: String,
    /// Extra data: a deny's reasons, the request and its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<ErrorDetails>,
}

/// `error.details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorDetails {
    /// Why the policy denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    /// The request concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The state it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

impl ErrorDetails {
    /// A deny's reasons.
    pub fn reasons(reasons: Vec<String>) -> Self {
        Self {
            reasons: Some(reasons),
            ..Self::default()
        }
    }

    /// Names the request.
    pub fn with_request(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }

    /// Names the request's state.
    pub fn with_state(mut self, state: State) -> Self {
        self.state = Some(state);
        self
    }
}

impl ErrorEnvelope {
    /// An error without details.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
                details: None,
            },
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: ErrorDetails) -> Self {
        self.error.details = Some(details);
        self
    }

    /// The deny reasons, if any.
    pub fn reasons(&self) -> &[String] {
        self.error
            .details
            .as_ref()
            .and_then(|d| d.reasons.as_deref())
            .unwrap_or_default()
    }
}

/// `POST /v1/requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// The entitlement id.
    pub entitlement: String,
    /// How long: `30m`, `1h30m`, `PT8H`.
    pub duration: String,
    /// Why.
    pub justification: String,
    /// Ticket reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// A scheduled start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
}

/// `POST /v1/requests/{id}/approve|deny|cancel|revoke|issue`: an optional
/// comment (approve) or reason (the others); each route takes either.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// An approver's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ReasonBody {
    /// `{"comment": ...}`.
    pub fn comment(text: impl Into<String>) -> Self {
        Self {
            comment: Some(text.into()),
            reason: None,
        }
    }

    /// `{"reason": ...}`.
    pub fn reason(text: impl Into<String>) -> Self {
        Self {
            comment: None,
            reason: Some(text.into()),
        }
    }
}

/// `POST /v1/requests/{id}/extend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// How much more.
    pub duration: String,
    /// Why.
    pub justification: String,
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The caller as the server sees them.
    pub principal: Principal,
    /// Whether the catalogue makes them an admin.
    pub admin: bool,
}

/// `GET /v1/entitlements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementList {
    /// The catalogue.
    pub entitlements: Vec<EntitlementSummary>,
}

/// One entitlement of [`EntitlementList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementSummary {
    /// Id.
    pub id: String,
    /// Description.
    pub description: String,
    /// The provider name.
    pub provider: String,
    /// The longest grant, e.g. `4h`.
    pub max_duration: String,
}

/// `GET /v1/audit/verify`, and `jit audit verify --file`: the same
/// verifier's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AuditVerification {
    /// The chain holds (`"ok": true`).
    Verified {
        /// Always true.
        ok: bool,
        /// Records checked.
        records: u64,
        /// The head hash.
        head: String,
        /// Records whose seal matched.
        sealed: u64,
        /// The highest checkpoint checked against.
        checkpoint: Option<u64>,
    },
    /// The chain is broken (`"ok": false`).
    Broken {
        /// Always false.
        ok: bool,
        /// 0-based position of the first broken record.
        position: usize,
        /// Its seq.
        seq: u64,
        /// The kind of break.
        kind: String,
        /// What is wrong there.
        reason: String,
        /// The whole finding, human-readable.
        message: String,
    },
}

impl AuditVerification {
    /// The answer for a verifier's result.
    pub fn of(result: &Result<crate::audit::ChainSummary, crate::audit::ChainBreak>) -> Self {
        match result {
            Ok(s) => Self::Verified {
                ok: true,
                records: s.records,
                head: s.head.clone(),
                sealed: s.sealed,
                checkpoint: s.checkpoint,
            },
            Err(b) => Self::Broken {
                ok: false,
                position: b.position,
                seq: b.seq,
                kind: b.reason.kind().to_string(),
                reason: b.reason.to_string(),
                message: b.to_string(),
            },
        }
    }

    /// Whether the chain holds.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Verified { ok: true, .. })
    }
}

/// `POST /v1/admin/archive` body (admins): archive the finished requests
/// whose last change is older than `older_than` (`90d`, `2160h`,
/// `P90D`); the server's `[retention] keep` when absent. An empty body
/// reads as `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveBody {
    /// How old a finished request must be, as a duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
}

/// `POST /v1/admin/archive` answer: what one run archived and pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveAnswer {
    /// Requests whose last change is before this instant could go.
    pub cut_off: DateTime<Utc>,
    /// Requests archived and pruned.
    pub requests: u64,
    /// Audit records archived and pruned.
    pub audit_records: u64,
    /// The files written, oldest first (none when nothing could go).
    pub archives: Vec<ArchiveFile>,
}

/// One archive file a run wrote (JSON Lines, verifiable on its own with
/// `jit audit verify --file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveFile {
    /// Where the server wrote it.
    pub path: String,
    /// The first audit record in it.
    pub from_seq: u64,
    /// The last audit record in it: the store's new anchor.
    pub to_seq: u64,
    /// Requests in it.
    pub requests: u64,
    /// Audit records in it.
    pub audit_records: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use serde_json::json;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn credentials_views_round_trip_and_keep_the_wire_shape() {
        let aws = Credentials::Aws {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("sk"),
            session_token: Secret::new("st"),
            expires_at: t("2026-11-29T12:00:00Z"),
        };
        let view = CredentialsView::from(&aws);
        let v = to_value(&view);
        // The shape the server wrote with `json!` before these types.
        assert_eq!(
            v,
            json!({"kind": "aws", "access_key_id": "ASIAEXAMPLE", "secret_access_key": "sk",
                   "session_token": "st", "expires_at": "2026-11-29T12:00:00Z"})
        );
        // Key order is not part of the shape: serde_json keeps insertion order
        // when any crate in the build enables its `preserve_order` feature
        // (cedar-policy-core does, under `--all-features`).
        let text: serde_json::Value = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(
            text,
            serde_json::from_str::<serde_json::Value>(
                r#"{"access_key_id":"ASIAEXAMPLE","expires_at":"2026-11-29T12:00:00Z","kind":"aws","secret_access_key":"sk","session_token":"st"}"#
            )
            .unwrap()
        );
        let back: CredentialsView = serde_json::from_value(v).unwrap();
        assert_eq!(back, view);
        assert_eq!(back.to_credentials().unwrap(), aws);
        assert!(!format!("{back:?}").contains("sk\""), "{back:?}");
        assert!(!format!("{back:?}").contains("\"st\""), "{back:?}");

        for (c, kind) in [
            (
                Credentials::LocalToken {
                    token: Secret::new("tok"),
                    expires_at: t("2026-11-29T12:00:00Z"),
                },
                "local_token",
            ),
            (
                Credentials::AccessToken {
                    token: Secret::new("ya29"),
                    expires_at: t("2026-11-29T12:00:00Z"),
                },
                "access_token",
            ),
            (
                Credentials::Assignment {
                    description: "Reader on /subscriptions/x".into(),
                    scope: Some("/subscriptions/x".into()),
                    role: Some("/providers/Microsoft.Authorization/roleDefinitions/r".into()),
                    role_name: Some("Reader".into()),
                    principal: Some("a3bb8764-cb92-4276-9d2a-ca1e895e55ea".into()),
                    expires_at: t("2026-11-29T12:00:00Z"),
                },
                "assignment",
            ),
        ] {
            let view = CredentialsView::from(&c);
            assert_eq!(view.kind(), kind);
            let v = to_value(&view);
            assert_eq!(v["kind"], kind);
            let back: CredentialsView = serde_json::from_value(v).unwrap();
            assert_eq!(back.to_credentials().unwrap(), c);
        }
        // An answer from a server older than the structured fields still
        // parses, with them absent; absent fields are not written either.
        let old: CredentialsView = serde_json::from_value(json!({
            "kind": "assignment", "description": "Reader on /subscriptions/x",
            "expires_at": "2026-11-29T12:00:00Z"
        }))
        .unwrap();
        match &old {
            CredentialsView::Assignment {
                scope,
                role,
                role_name,
                principal,
                ..
            } => assert!(
                scope.is_none() && role.is_none() && role_name.is_none() && principal.is_none()
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            to_value(&old).as_object().unwrap().len(),
            3,
            "{}",
            to_value(&old)
        );
        let unknown: CredentialsView = serde_json::from_value(
            json!({"kind": "unsupported", "expires_at": "2026-11-29T12:00:00Z"}),
        )
        .unwrap();
        assert!(unknown.to_credentials().is_none());
        assert!(serde_json::from_value::<CredentialsView>(json!({"kind": "magic"})).is_err());
    }

    #[test]
    fn credential_process_is_version_1_in_sorted_order() {
        let aws = Credentials::Aws {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("sk"),
            session_token: Secret::new("st"),
            expires_at: t("2026-11-29T12:00:00.250Z"),
        };
        let doc = CredentialProcess::from_credentials(&aws).unwrap();
        let line = doc.to_json();
        assert_eq!(
            line.expose(),
            r#"{"AccessKeyId":"ASIAEXAMPLE","Expiration":"2026-11-29T12:00:00Z","SecretAccessKey":"sk","SessionToken":"st","Version":1}"#
        );
        // The same bytes as a `Value` would give.
        assert_eq!(line.expose(), to_value(&doc).to_string());
        let back: CredentialProcess = serde_json::from_str(line.expose()).unwrap();
        assert_eq!(back, doc);
        assert_eq!(back.expires_at(), Some(t("2026-11-29T12:00:00Z")));
        assert!(!format!("{doc:?}").contains("\"sk\""));
        let token = Credentials::LocalToken {
            token: Secret::new("x"),
            expires_at: t("2026-11-29T12:00:00Z"),
        };
        assert!(CredentialProcess::from_credentials(&token).is_none());
    }

    #[test]
    fn error_envelopes_keep_their_shape() {
        let id = RequestId::new();
        let e = ErrorEnvelope::new("denied", "denied by policy: no")
            .with_details(ErrorDetails::reasons(vec!["no".into()]).with_request(id));
        let v = to_value(&e);
        assert_eq!(
            v,
            json!({"error": {"code": "denied", "message": "denied by policy: no",
                             "details": {"reasons": ["no"], "request_id": id}}})
        );
        let back: ErrorEnvelope = serde_json::from_value(v).unwrap();
        assert_eq!(back.reasons(), ["no"]);
        let plain = to_value(&ErrorEnvelope::new("not_found", "x"));
        assert_eq!(
            plain,
            json!({"error": {"code": "not_found", "message": "x"}})
        );
        let state = to_value(
            &ErrorEnvelope::new("invalid_state", "x").with_details(
                ErrorDetails::default()
                    .with_request(id)
                    .with_state(State::Expired),
            ),
        );
        assert_eq!(state["error"]["details"]["state"], "expired");
    }

    #[test]
    fn bodies_refuse_unknown_fields_and_skip_absent_ones() {
        let b = SubmitBody {
            entitlement: "e".into(),
            duration: "1h".into(),
            justification: "j".into(),
            ticket: None,
            start_at: None,
        };
        assert_eq!(
            to_value(&b),
            json!({"entitlement": "e", "duration": "1h", "justification": "j"})
        );
        assert!(serde_json::from_value::<SubmitBody>(
            json!({"entitlement": "e", "duration": "1h", "justification": "j", "x": 1})
        )
        .is_err());
        assert_eq!(to_value(&ReasonBody::comment("")), json!({"comment": ""}));
        assert_eq!(
            serde_json::from_value::<ReasonBody>(json!({})).unwrap(),
            ReasonBody::default()
        );
    }

    #[test]
    fn audit_verifications_are_told_apart() {
        let ok: AuditVerification = serde_json::from_value(
            json!({"ok": true, "records": 3, "head": "ab", "sealed": 0, "checkpoint": null}),
        )
        .unwrap();
        assert!(ok.is_ok());
        let broken: AuditVerification = serde_json::from_value(json!({
            "ok": false, "position": 1, "seq": 2, "kind": "hash_mismatch",
            "reason": "r", "message": "m"
        }))
        .unwrap();
        assert!(!broken.is_ok());
        assert!(matches!(broken, AuditVerification::Broken { seq: 2, .. }));
    }
}
