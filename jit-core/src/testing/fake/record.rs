//! What crossed the wire: every request a fake server received, with its
//! secrets taken out before anything is stored.

use chrono::{DateTime, Utc};

/// What replaces a secret in a recorded request.
pub const REDACTED: &str = "** redacted **";

/// Headers whose values are never recorded (the scheme of an
/// `Authorization` value is kept: `Bearer ** redacted **`).
pub const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-ms-authorization-auxiliary",
    "x-goog-iam-authorization-token",
];

/// Form and JSON body fields whose values are never recorded: the secrets
/// OAuth token endpoints receive (client secrets, assertions, refresh
/// tokens), service-account keys, and tokens echoed back by a client.
pub const SECRET_FIELDS: [&str; 10] = [
    "client_secret",
    "client_assertion",
    "assertion",
    "refresh_token",
    "password",
    "private_key",
    "access_token",
    "id_token",
    "subject_token",
    "actor_token",
];

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS (TLS with the test CA's certificate).
    Https,
}

/// One request as the fake received it, secrets redacted ([`SECRET_HEADERS`],
/// [`SECRET_FIELDS`] and whatever the server was told to add).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// Arrival order on this server, from 0 (not reset by
    /// `FakeServer::clear_requests`).
    pub seq: usize,
    /// The fake's clock when it arrived.
    pub at: DateTime<Utc>,
    /// Which listener.
    pub scheme: Scheme,
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, percent-encoded as sent.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// Header names (lowercase) and values, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, redacted where it is a form or JSON.
    pub body: Vec<u8>,
    /// Whether an injected fault took it (the routes never saw it, unless
    /// the fault only delayed it: [`Fault::pass_after`](super::Fault::pass_after)).
    pub faulted: bool,
    /// The status answered; `None` while the answer is pending and when the
    /// connection was dropped.
    pub status: Option<u16>,
}

impl RecordedRequest {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query parameters, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first value of a query parameter, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, if it is.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as `application/x-www-form-urlencoded` pairs, decoded.
    pub fn form_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// The first value of a form field, decoded.
    pub fn form_param(&self, name: &str) -> Option<String> {
        self.form_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// What to take out of a request before it is recorded.
#[derive(Debug, Clone)]
pub(crate) struct Redaction {
    pub(crate) headers: Vec<String>,
    pub(crate) fields: Vec<String>,
}

impl Default for Redaction {
    fn default() -> Self {
        Self {
            headers: SECRET_HEADERS.iter().map(|s| s.to_string()).collect(),
            fields: SECRET_FIELDS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Redaction {
    fn secret_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    fn secret_field(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.eq_ignore_ascii_case(name))
    }

    pub(crate) fn header_value(&self, name: &str, value: &[u8]) -> String {
        if !self.secret_header(name) {
            return String::from_utf8_lossy(value).into_owned();
        }
        // Keep an auth scheme (a short token, then a space) so tests can see
        // which kind of credential was sent, never the credential.
        let text = String::from_utf8_lossy(value);
        match text.split_once(' ') {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme.len() <= 16
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                format!("{scheme} {REDACTED}")
            }
            _ => REDACTED.to_string(),
        }
    }

    /// The body with secret fields redacted: form bodies by field name,
    /// JSON bodies by key at any depth. Anything else is kept as sent.
    pub(crate) fn body(&self, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
        if body.is_empty() {
            return Vec::new();
        }
        let ct = content_type.unwrap_or_default().to_ascii_lowercase();
        if ct.starts_with("application/x-www-form-urlencoded") {
            return self.form(body);
        }
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) {
            if self.json(&mut v) {
                return serde_json::to_vec(&v).unwrap_or_default();
            }
            return body.to_vec();
        }
        // A form body sent without its content type is still a form body.
        if !ct.is_empty() && !ct.starts_with("text/plain") {
            return body.to_vec();
        }
        let pairs: Vec<_> = form_urlencoded::parse(body).collect();
        if pairs.iter().any(|(k, _)| self.secret_field(k)) {
            return self.form(body);
        }
        body.to_vec()
    }

    fn form(&self, body: &[u8]) -> Vec<u8> {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(body) {
            if self.secret_field(&k) {
                out.append_pair(&k, REDACTED);
            } else {
                out.append_pair(&k, &v);
            }
        }
        out.finish().into_bytes()
    }

    /// Redacts in place; says whether anything changed.
    fn json(&self, v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(map) => {
                let mut changed = false;
                for (k, val) in map.iter_mut() {
                    if self.secret_field(k) && !val.is_null() {
                        *val = serde_json::Value::String(REDACTED.into());
                        changed = true;
                    } else {
                        changed |= self.json(val);
                    }
                }
                changed
            }
            serde_json::Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.json(item);
                }
                changed
            }
            _ => false,
        }
    }
}
