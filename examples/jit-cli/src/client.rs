//! The connection to the vending server: where it is, the bearer token,
//! and calls that answer with `jit_core::wire` types.

use std::path::PathBuf;

use jit_core::wire::{self, ErrorEnvelope};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Fail, Res};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) server: Option<String>,
    pub(crate) token: Option<String>,
}

pub(crate) fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("JIT_CONFIG") {
        return Some(p.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("jit").join("config.toml"))
}

pub(crate) fn file_config() -> Res<FileConfig> {
    let Some(p) = config_path() else {
        return Ok(FileConfig::default());
    };
    match std::fs::read_to_string(&p) {
        Ok(t) => toml::from_str(&t).map_err(|e| Fail::new(2, format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(Fail::new(2, format!("cannot read {}: {e}", p.display()))),
    }
}

pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

/// A typed answer and the JSON it came from (printed as is by `--json`).
pub(crate) struct Reply<T> {
    pub(crate) body: T,
    pub(crate) raw: Value,
}

impl Client {
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Res<Reply<T>> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Fail::new(1, format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Fail::new(1, format!("reading the answer: {e}")))?;
        if status.is_success() {
            let raw: Value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| Fail::new(1, format!("the server sent invalid JSON: {e}")))?
            };
            let body = serde_json::from_value(raw.clone())
                .map_err(|e| Fail::new(1, format!("the server sent an unexpected answer: {e}")))?;
            return Ok(Reply { body, raw });
        }
        let envelope = serde_json::from_str::<ErrorEnvelope>(&text).ok();
        let msg = envelope
            .as_ref()
            .map(|e| e.error.message.clone())
            .unwrap_or_else(|| format!("HTTP {status}"));
        let code = match status.as_u16() {
            401 => 5,
            403 => 3,
            _ => 1,
        };
        let reasons: String = envelope
            .iter()
            .flat_map(|e| e.reasons())
            .map(|x| format!("\n  - {x}"))
            .collect();
        Err(Fail::new(code, format!("{msg}{reasons}")))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Res<Reply<T>> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Res<Reply<T>> {
        self.call(reqwest::Method::POST, path, Some(wire::to_value(body)))
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn error_envelopes_give_the_message_and_reasons() {
        // The server's and the Lambda function's error shape (`ErrorEnvelope`).
        let answer = serde_json::json!({"error": {"code": "denied", "message": "denied by policy: no",
                                                  "details": {"reasons": ["no", "really"]}}});
        let e: ErrorEnvelope = serde_json::from_value(answer).unwrap();
        assert_eq!(e.reasons(), ["no", "really"]);
        assert_eq!(e.error.code, "denied");
    }
}
