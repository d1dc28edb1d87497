//! Providers as configuration data: factories keyed by kind, each building a
//! provider from a string map.
//!
//! A host (the vending server, a Lambda function, a service embedding the
//! broker) reads tables such as
//!
//! ```toml
//! [providers.prod]        # the table name is the provider name entitlements select
//! kind = "aws"            # which factory builds it
//! region = "eu-west-1"    # everything else is the factory's string map
//! ```
//!
//! and hands each to [`ProviderRegistry::build`]. Adding a cloud means
//! registering one more [`ProviderFactory`]; the host gains no fields and no
//! `match` arms (the shape of opendal's `Operator::via_map` and
//! object_store's config keys).
//!
//! # What the registry checks for every factory
//!
//! - the kind is registered (else the error lists the kinds that are);
//! - every key is one the factory documents in [`ProviderFactory::keys`]
//!   (else the error names the key and lists the known ones), so a typo is
//!   an error, never a silently ignored setting;
//! - every required key is present;
//! - a key with an environment variable ([`ConfigKey::env`]) takes the
//!   variable's value when it is set: the variable wins over the table.
//!
//! The factory then reads typed values with [`ProviderConfig`]'s getters,
//! whose errors name the provider, the key, and the variable when the value
//! came from one.
//!
//! # Values
//!
//! Every value is a string. Hosts reading TOML turn scalars into their text
//! (`true`, `4096`), arrays into comma-separated lists
//! ([`ProviderConfig::list`]) and inline tables into `key=value` pairs joined
//! by commas ([`ProviderConfig::pairs`]), the same forms an environment
//! variable takes.
//!
//! # Example
//!
//! ```
//! # async fn demo() -> jit_core::Result<()> {
//! use jit_core::provider::registry::{FactoryContext, ProviderConfig, ProviderRegistry};
//!
//! let registry = ProviderRegistry::builtin(); // the local provider; add others with `register`
//! let ctx = FactoryContext::new();
//! let config = ProviderConfig::new().with("max_duration", "8h");
//! let provider = registry.build("tokens", "local", &config, &ctx).await?;
//! assert_eq!(provider.name(), "tokens");
//! // The server publishes the local provider's keys and verifier:
//! assert!(ctx.local_providers().get("tokens").is_some());
//!
//! let err = registry
//!     .build("tokens", "local", &ProviderConfig::new().with("max_duraton", "8h"), &ctx)
//!     .await
//!     .unwrap_err();
//! assert!(err.to_string().contains("unknown key `max_duraton`"));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::{Clock, SystemClock};
use crate::credentials::Secret;
use crate::error::{ConfigError, Error, Result};
use crate::local::{LocalKey, LocalProvider};
use crate::provider::Provider;
use crate::store::Store;
use crate::types::parse_duration;

/// One key a factory accepts: its name, whether it is required, whether its
/// value is secret, the environment variable that overrides it, and a line
/// of documentation (shown in errors and generated docs).
///
/// Build them in a `const` table with [`ConfigKey::optional`] or
/// [`ConfigKey::required`] and the `const` modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigKey {
    /// The key as written in the table (`region`).
    pub name: &'static str,
    /// One line on what it sets, with its default.
    pub doc: &'static str,
    /// Whether the provider cannot be built without it.
    pub required: bool,
    /// Whether the value is secret: never shown in errors or `Debug`.
    pub secret: bool,
    /// An environment variable whose value wins over the table's.
    pub env: Option<&'static str>,
}

impl ConfigKey {
    /// A key that may be left out.
    pub const fn optional(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            doc,
            required: false,
            secret: false,
            env: None,
        }
    }

    /// A key without which the provider cannot be built.
    pub const fn required(name: &'static str, doc: &'static str) -> Self {
        Self {
            required: true,
            ..Self::optional(name, doc)
        }
    }

    /// Marks the value secret (a client secret, a private key inline).
    pub const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Names the environment variable that overrides the key.
    pub const fn env(mut self, var: &'static str) -> Self {
        self.env = Some(var);
        self
    }
}

/// A problem with one `[providers.NAME]` table. Converted into
/// [`Error::Config`] (code `invalid_configuration`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderConfigError {
    /// No factory is registered for the kind.
    #[error(
        "provider `{provider}`: kind `{kind}` is not supported; known kinds: {}",
        ticks(known)
    )]
    UnknownKind {
        /// The table name.
        provider: String,
        /// The kind asked for.
        kind: String,
        /// The kinds registered.
        known: Vec<String>,
    },
    /// A key the factory does not document.
    #[error(
        "provider `{provider}` (kind `{kind}`): unknown key `{key}`; known keys: {}",
        ticks(known)
    )]
    UnknownKey {
        /// The table name.
        provider: String,
        /// Its kind.
        kind: String,
        /// The key given.
        key: String,
        /// The keys the factory takes.
        known: Vec<String>,
    },
    /// A required key is absent.
    #[error("provider `{provider}` (kind `{kind}`): `{key}` is required")]
    MissingKey {
        /// The table name.
        provider: String,
        /// Its kind.
        kind: String,
        /// The missing key.
        key: String,
    },
    /// A value does not parse or is out of range.
    #[error("provider `{provider}`: `{key}`{} is invalid: {message}", variable.as_ref().map(|v| format!(" (from `{v}`)")).unwrap_or_default())]
    InvalidValue {
        /// The table name.
        provider: String,
        /// The key.
        key: String,
        /// The environment variable the value came from, if it did.
        variable: Option<String>,
        /// What is wrong (a secret value is never quoted).
        message: String,
    },
}

fn ticks<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<ProviderConfigError> for Error {
    fn from(e: ProviderConfigError) -> Self {
        Error::Config(ConfigError::Provider(e))
    }
}

/// A provider's settings: a string map with typed getters.
///
/// [`ProviderRegistry::build`] hands the factory a copy that knows the
/// provider's name, which keys are secret and which values came from
/// environment variables, so the getters' errors can say all of that.
/// `Debug` shows the keys only: values may be secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProviderConfig {
    values: BTreeMap<String, String>,
    provider: String,
    kind: String,
    secret: BTreeSet<String>,
    from_env: BTreeMap<String, String>,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("provider", &self.provider)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ProviderConfig {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            values: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Self::default()
        }
    }
}

impl ProviderConfig {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a key.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets a key, returning its previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.values.insert(key.into(), value.into())
    }

    /// The keys present, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Whether the key is present.
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The provider these settings are for, once bound by the registry (else empty).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The environment variable a key's value came from, if it did.
    pub fn source_of(&self, key: &str) -> Option<&str> {
        self.from_env.get(key).map(String::as_str)
    }

    /// The raw value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The raw value; absent is [`ProviderConfigError::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| {
            ProviderConfigError::MissingKey {
                provider: self.provider.clone(),
                kind: self.kind.clone(),
                key: key.into(),
            }
            .into()
        })
    }

    /// A secret value, wrapped so it is never printed.
    pub fn secret(&self, key: &str) -> Option<Secret> {
        self.get(key).map(Secret::new)
    }

    /// An error for `key`, naming the provider and the variable the value
    /// came from. `problem` describes the value; it is replaced by a generic
    /// text for secret keys, so a secret is never quoted.
    pub fn invalid(&self, key: &str, problem: impl Into<String>) -> Error {
        let message = if self.secret.contains(key) {
            "the value is not valid (not shown: the key is secret)".into()
        } else {
            problem.into()
        };
        ProviderConfigError::InvalidValue {
            provider: self.provider.clone(),
            key: key.into(),
            variable: self.from_env.get(key).cloned(),
            message,
        }
        .into()
    }

    /// A duration such as `30m`, `1h30m` or `PT8H`.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>> {
        self.get(key)
            .map(|v| parse_duration(v).map_err(|e| self.invalid(key, e.to_string())))
            .transpose()
    }

    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(self.invalid(key, format!("`{}` is not `true` or `false`", v.trim()))),
            })
            .transpose()
    }

    /// A whole number.
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| self.invalid(key, format!("`{}` is not a whole number", v.trim())))
            })
            .transpose()
    }

    /// A comma-separated list, each item trimmed, empty items dropped
    /// (absent is empty).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Comma-separated `key=value` pairs (a TOML inline table as the
    /// server passes it, or an environment variable's form).
    pub fn pairs(&self, key: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for item in self.list(key) {
            let Some((k, v)) = item.split_once('=') else {
                return Err(self.invalid(key, format!("`{item}` is not `KEY=VALUE`")));
            };
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(out)
    }

    /// A file path; a relative path from the table is resolved against
    /// [`FactoryContext::base_dir`] (the configuration file's directory),
    /// one from an environment variable against the working directory.
    pub fn path(&self, key: &str, ctx: &FactoryContext) -> Option<PathBuf> {
        let p = PathBuf::from(self.get(key)?);
        Some(if self.from_env.contains_key(key) {
            p
        } else {
            ctx.resolve(&p)
        })
    }

    /// Like [`ProviderConfig::list`], each item a path resolved like [`ProviderConfig::path`].
    pub fn paths(&self, key: &str, ctx: &FactoryContext) -> Vec<PathBuf> {
        let from_env = self.from_env.contains_key(key);
        self.list(key)
            .into_iter()
            .map(PathBuf::from)
            .map(|p| if from_env { p } else { ctx.resolve(&p) })
            .collect()
    }
}

type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What the host shares with every factory: the clock, the store (for
/// leases between replicas), the directory relative paths are resolved
/// against, the environment, and a directory where local providers are
/// published (the server serves their public keys and verifies their
/// tokens). New fields are added without breaking factories.
#[derive(Clone)]
#[non_exhaustive]
pub struct FactoryContext {
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn Store>>,
    base_dir: Option<PathBuf>,
    env: EnvLookup,
    local: LocalProviders,
}

impl fmt::Debug for FactoryContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FactoryContext")
            .field("clock", &self.clock)
            .field("store", &self.store.is_some())
            .field("base_dir", &self.base_dir)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Default for FactoryContext {
    fn default() -> Self {
        Self::new()
    }
}

impl FactoryContext {
    /// The system clock, no store, no base directory and no environment:
    /// tests stay deterministic. Hosts add [`FactoryContext::with_process_env`].
    pub fn new() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            store: None,
            base_dir: None,
            env: Arc::new(|_| None),
            local: LocalProviders::default(),
        }
    }

    /// The clock providers use for windows, caches and pruning.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store shared with other replicas (providers take leases in it).
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The directory relative paths in tables are resolved against.
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// Environment variables read through `lookup` (tests pass a map).
    pub fn with_env(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.env = Arc::new(lookup);
        self
    }

    /// Environment variables read from the process.
    pub fn with_process_env(self) -> Self {
        self.with_env(|k| std::env::var(k).ok())
    }

    /// The clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The shared store, if the host has one.
    pub fn store(&self) -> Option<Arc<dyn Store>> {
        self.store.clone()
    }

    /// The directory relative paths are resolved against, if set.
    pub fn base_dir(&self) -> Option<&Path> {
        self.base_dir.as_deref()
    }

    /// An environment variable.
    pub fn env(&self, var: &str) -> Option<String> {
        (self.env)(var)
    }

    /// `path` joined to the base directory when relative.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match &self.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The local providers built with this context, by name.
    pub fn local_providers(&self) -> &LocalProviders {
        &self.local
    }
}

/// The local providers a [`FactoryContext`] has built, by provider name:
/// the host reads their public keys and verifiers (a JWKS endpoint, token
/// introspection). Clones share one directory.
#[derive(Clone, Default)]
pub struct LocalProviders(Arc<Mutex<BTreeMap<String, Arc<LocalProvider>>>>);

impl fmt::Debug for LocalProviders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl LocalProviders {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<LocalProvider>>> {
        // Plain map inserts: a panic elsewhere cannot leave it half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a provider under its name.
    pub fn publish(&self, name: impl Into<String>, provider: Arc<LocalProvider>) {
        self.map().insert(name.into(), provider);
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LocalProvider>> {
        self.map().get(name).cloned()
    }

    /// Every published provider, by name.
    pub fn all(&self) -> BTreeMap<String, Arc<LocalProvider>> {
        self.map().clone()
    }

    /// The names published.
    pub fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }
}

/// Builds providers of one kind from a [`ProviderConfig`].
///
/// # Contract
///
/// - `keys` lists every key `build` reads; the registry refuses any other
///   and applies environment overrides before `build` runs, so `build`
///   need not check for unknown keys.
/// - `build` refuses invalid values with [`Error::Config`] (use the
///   getters of [`ProviderConfig`], or [`ProviderConfig::invalid`]) and may
///   make remote calls to check its identity, so a host fails at start
///   rather than at the first request.
/// - The provider's [`Provider::name`] is `name`.
#[async_trait]
pub trait ProviderFactory: Send + Sync {
    /// The kind tables select (`local`, `aws`).
    fn kind(&self) -> &str;

    /// Every key `build` accepts.
    fn keys(&self) -> &[ConfigKey];

    /// Builds the provider `name` from `config`.
    async fn build(
        &self,
        name: &str,
        config: &ProviderConfig,
        ctx: &FactoryContext,
    ) -> Result<Arc<dyn Provider>>;
}

/// Factories by kind.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    factories: BTreeMap<String, Arc<dyn ProviderFactory>>,
}

impl fmt::Debug for ProviderRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderRegistry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl ProviderRegistry {
    /// No factories.
    pub fn new() -> Self {
        Self::default()
    }

    /// The factories jit-core has: `local` ([`LocalFactory`]).
    pub fn builtin() -> Self {
        Self::new().with(LocalFactory)
    }

    /// Adds a factory (builder style).
    pub fn with(mut self, factory: impl ProviderFactory + 'static) -> Self {
        self.register(Arc::new(factory));
        self
    }

    /// Adds a factory, returning the one it replaces for the same kind (a
    /// host may replace a built-in one).
    pub fn register(
        &mut self,
        factory: Arc<dyn ProviderFactory>,
    ) -> Option<Arc<dyn ProviderFactory>> {
        self.factories.insert(factory.kind().to_string(), factory)
    }

    /// The kinds registered, in order.
    pub fn kinds(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// The factory for `kind`.
    pub fn factory(&self, kind: &str) -> Option<Arc<dyn ProviderFactory>> {
        self.factories.get(kind).cloned()
    }

    /// Checks `config` against the factory of `kind` (see the module docs)
    /// and builds the provider `name`.
    pub async fn build(
        &self,
        name: &str,
        kind: &str,
        config: &ProviderConfig,
        ctx: &FactoryContext,
    ) -> Result<Arc<dyn Provider>> {
        let factory = self
            .factories
            .get(kind)
            .ok_or_else(|| ProviderConfigError::UnknownKind {
                provider: name.into(),
                kind: kind.into(),
                known: self.kinds(),
            })?;
        let bound = bind(name, kind, factory.keys(), config, ctx)?;
        factory.build(name, &bound, ctx).await
    }
}

/// Checks keys, applies environment overrides and records what the getters
/// need to word their errors.
fn bind(
    name: &str,
    kind: &str,
    keys: &[ConfigKey],
    config: &ProviderConfig,
    ctx: &FactoryContext,
) -> Result<ProviderConfig> {
    let known = |k: &str| keys.iter().any(|c| c.name == k);
    if let Some(unknown) = config.keys().find(|k| !known(k)) {
        return Err(ProviderConfigError::UnknownKey {
            provider: name.into(),
            kind: kind.into(),
            key: unknown.into(),
            known: keys.iter().map(|c| c.name.to_string()).collect(),
        }
        .into());
    }
    let mut bound = ProviderConfig {
        values: config.values.clone(),
        provider: name.into(),
        kind: kind.into(),
        secret: keys
            .iter()
            .filter(|k| k.secret)
            .map(|k| k.name.to_string())
            .collect(),
        from_env: BTreeMap::new(),
    };
    for key in keys {
        if let Some(var) = key.env {
            if let Some(v) = ctx.env(var) {
                bound.values.insert(key.name.into(), v);
                bound.from_env.insert(key.name.into(), var.into());
            }
        }
        if key.required && !bound.values.contains_key(key.name) {
            return Err(ProviderConfigError::MissingKey {
                provider: name.into(),
                kind: kind.into(),
                key: key.name.into(),
            }
            .into());
        }
    }
    Ok(bound)
}

/// The issuer a local provider built from configuration signs as, when
/// `issuer` is not set. `jit`, not [`crate::local::DEFAULT_ISSUER`]: it is
/// what the vending server has always used, and verifiers check it.
pub const LOCAL_CONFIG_ISSUER: &str = "jit";

const LOCAL_KEYS: &[ConfigKey] = &[
    ConfigKey::optional("issuer", "the tokens' `iss` claim (default `jit`)"),
    ConfigKey::optional(
        "key_file",
        "Ed25519 PKCS#8 PEM signing key; created (0600) if missing; a fresh key per start if unset",
    )
    .env("JIT_LOCAL_KEY_FILE"),
    ConfigKey::optional(
        "previous_key_files",
        "earlier key files (comma-separated) whose tokens still verify but which sign nothing new (rotation)",
    ),
    ConfigKey::optional("max_duration", "the longest token, e.g. `8h` (default 12h)"),
];

/// Builds [`LocalProvider`]s (`kind = "local"`) and publishes each in
/// [`FactoryContext::local_providers`].
///
/// | key | meaning |
/// | --- | --- |
/// | `issuer` | the tokens' `iss` claim (default [`LOCAL_CONFIG_ISSUER`]) |
/// | `key_file` (`JIT_LOCAL_KEY_FILE`) | Ed25519 PKCS#8 PEM signing key, created with mode 0600 if missing; unset: a fresh key per start (tokens die with the process) |
/// | `previous_key_files` | earlier keys, comma-separated: their tokens still verify, they sign nothing new |
/// | `max_duration` | the longest token (default 12h) |
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFactory;

#[async_trait]
impl ProviderFactory for LocalFactory {
    fn kind(&self) -> &str {
        "local"
    }

    fn keys(&self) -> &[ConfigKey] {
        LOCAL_KEYS
    }

    async fn build(
        &self,
        name: &str,
        config: &ProviderConfig,
        ctx: &FactoryContext,
    ) -> Result<Arc<dyn Provider>> {
        let key = match config.path("key_file", ctx) {
            Some(path) => load_or_create_key(config, &path)?,
            None => LocalKey::generate(),
        };
        let mut builder = LocalProvider::builder(key)
            .name(name)
            .issuer(config.get("issuer").unwrap_or(LOCAL_CONFIG_ISSUER))
            .clock(ctx.clock());
        if let Some(d) = config.duration("max_duration")? {
            builder = builder.max_duration(d);
        }
        for path in config.paths("previous_key_files", ctx) {
            let pem = std::fs::read_to_string(&path).map_err(|e| {
                config.invalid(
                    "previous_key_files",
                    format!("cannot read `{}`: {e}", path.display()),
                )
            })?;
            let old = LocalKey::from_pkcs8_pem(&pem).map_err(|e| {
                config.invalid("previous_key_files", format!("`{}`: {e}", path.display()))
            })?;
            builder = builder.previous_key(old.public_key());
        }
        let provider = Arc::new(builder.build());
        ctx.local_providers().publish(name, provider.clone());
        Ok(provider)
    }
}

/// Reads the signing key, or creates it (mode 0600, never overwriting a
/// file that appeared meanwhile) so a restart keeps accepting its tokens.
fn load_or_create_key(config: &ProviderConfig, path: &Path) -> Result<LocalKey> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(pem) => LocalKey::from_pkcs8_pem(&pem)
            .map_err(|e| config.invalid("key_file", format!("`{shown}`: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = LocalKey::generate();
            let pem = key.to_pkcs8_pem()?;
            write_private(path, pem.expose())
                .map_err(|e| config.invalid("key_file", format!("cannot write `{shown}`: {e}")))?;
            tracing::warn!(path = %shown, kid = key.kid(), "created a new local provider key");
            Ok(key)
        }
        Err(e) => Err(config.invalid("key_file", format!("cannot read `{shown}`: {e}"))),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::clock::ManualClock;

    fn config_err(e: Error) -> ProviderConfigError {
        match e {
            Error::Config(ConfigError::Provider(p)) => p,
            other => panic!("expected a provider config error, got {other:?}"),
        }
    }

    /// A factory that records what it was given.
    struct Probe;

    const PROBE_KEYS: &[ConfigKey] = &[
        ConfigKey::required("endpoint", "where"),
        ConfigKey::optional("timeout", "how long").env("PROBE_TIMEOUT"),
        ConfigKey::optional("client_secret", "a secret").secret(),
    ];

    #[async_trait]
    impl ProviderFactory for Probe {
        fn kind(&self) -> &str {
            "probe"
        }
        fn keys(&self) -> &[ConfigKey] {
            PROBE_KEYS
        }
        async fn build(
            &self,
            name: &str,
            config: &ProviderConfig,
            ctx: &FactoryContext,
        ) -> Result<Arc<dyn Provider>> {
            config.duration("timeout")?;
            if let Some(s) = config.get("client_secret") {
                if s.len() < 8 {
                    return Err(config.invalid("client_secret", format!("`{s}` is too short")));
                }
            }
            LocalFactory.build(name, &ProviderConfig::new(), ctx).await
        }
    }

    fn registry() -> ProviderRegistry {
        ProviderRegistry::builtin().with(Probe)
    }

    #[tokio::test]
    async fn unknown_kind_lists_the_known_ones() {
        let ctx = FactoryContext::new();
        let err = registry()
            .build("x", "gcp", &ProviderConfig::new(), &ctx)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_configuration");
        let msg = err.to_string();
        assert!(
            msg.contains(
                "provider `x`: kind `gcp` is not supported; known kinds: `local`, `probe`"
            ),
            "{msg}"
        );
        assert!(matches!(
            config_err(err),
            ProviderConfigError::UnknownKind { known, .. } if known == ["local", "probe"]
        ));
    }

    #[tokio::test]
    async fn unknown_and_missing_keys_name_the_table() {
        let ctx = FactoryContext::new();
        let err = registry()
            .build(
                "p",
                "probe",
                &ProviderConfig::new()
                    .with("endpoint", "e")
                    .with("timout", "1s"),
                &ctx,
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("provider `p` (kind `probe`): unknown key `timout`; known keys: `endpoint`, `timeout`, `client_secret`"),
            "{msg}"
        );
        let err = registry()
            .build("p", "probe", &ProviderConfig::new(), &ctx)
            .await
            .unwrap_err();
        assert_eq!(
            config_err(err),
            ProviderConfigError::MissingKey {
                provider: "p".into(),
                kind: "probe".into(),
                key: "endpoint".into()
            }
        );
    }

    #[tokio::test]
    async fn environment_wins_and_errors_name_the_variable() {
        let ctx = FactoryContext::new().with_env(|k| (k == "PROBE_TIMEOUT").then(|| "soon".into()));
        let err = registry()
            .build(
                "p",
                "probe",
                &ProviderConfig::new()
                    .with("endpoint", "e")
                    .with("timeout", "5s"),
                &ctx,
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("provider `p`: `timeout` (from `PROBE_TIMEOUT`) is invalid: duration `soon` is not valid"),
            "{msg}"
        );
        // Without the variable the table's valid value is used.
        let ok = registry()
            .build(
                "p",
                "probe",
                &ProviderConfig::new()
                    .with("endpoint", "e")
                    .with("timeout", "5s"),
                &FactoryContext::new(),
            )
            .await;
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[tokio::test]
    async fn secret_values_never_reach_errors_or_debug() {
        let config = ProviderConfig::new()
            .with("endpoint", "e")
            .with("client_secret", "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
        let err = registry()
            .build("p", "probe", &config, &FactoryContext::new())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`client_secret` is invalid"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn typed_getters() {
        let c = ProviderConfig::from_iter([
            ("d", "1h30m"),
            ("b", "Off"),
            ("n", "4096"),
            ("l", " a, b ,,c "),
            ("m", "111=arn:x, 222=arn:y"),
            ("bad_b", "maybe"),
            ("bad_n", "-1"),
            ("bad_m", "111"),
        ]);
        assert_eq!(c.duration("d").unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(c.duration("absent").unwrap(), None);
        assert_eq!(c.bool("b").unwrap(), Some(false));
        assert_eq!(c.u64("n").unwrap(), Some(4096));
        assert_eq!(c.list("l"), ["a", "b", "c"]);
        assert!(c.list("absent").is_empty());
        let m = c.pairs("m").unwrap();
        assert_eq!(m["111"], "arn:x");
        assert_eq!(m["222"], "arn:y");
        for (key, text) in [
            ("bad_b", "`maybe` is not `true` or `false`"),
            ("bad_n", "`-1` is not a whole number"),
            ("bad_m", "`111` is not `KEY=VALUE`"),
        ] {
            let err = match key {
                "bad_b" => c.bool(key).unwrap_err(),
                "bad_n" => c.u64(key).unwrap_err(),
                _ => c.pairs(key).unwrap_err(),
            };
            assert!(err.to_string().contains(text), "{key}: {err}");
        }
        assert!(c.require("absent").is_err());
        assert_eq!(c.require("d").unwrap(), "1h30m");
    }

    #[tokio::test]
    async fn local_factory_builds_publishes_and_keeps_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(chrono::Utc::now());
        let ctx = FactoryContext::new()
            .with_base_dir(dir.path())
            .with_clock(Arc::new(clock));
        let config = ProviderConfig::new()
            .with("key_file", "k.pem")
            .with("issuer", "acme")
            .with("max_duration", "2h");
        let p = registry()
            .build("tokens", "local", &config, &ctx)
            .await
            .unwrap();
        assert_eq!(p.name(), "tokens");
        assert_eq!(p.capabilities().max_duration, Duration::from_secs(7200));
        let path = dir.path().join("k.pem");
        assert!(
            path.exists(),
            "relative key_file resolves against the base dir"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let published = ctx.local_providers().get("tokens").unwrap();
        assert_eq!(published.issuer(), "acme");
        let kid = published.public_key().kid().to_string();

        // A second build (a restart) reads the same key, and the old key
        // listed in previous_key_files verifies too.
        let old = LocalKey::generate();
        std::fs::write(
            dir.path().join("old.pem"),
            old.to_pkcs8_pem().unwrap().expose(),
        )
        .unwrap();
        let ctx2 = FactoryContext::new().with_base_dir(dir.path());
        registry()
            .build(
                "tokens",
                "local",
                &config.clone().with("previous_key_files", "old.pem"),
                &ctx2,
            )
            .await
            .unwrap();
        let again = ctx2.local_providers().get("tokens").unwrap();
        assert_eq!(again.public_key().kid(), kid);
        assert_eq!(again.public_keys().len(), 2);
        assert_eq!(again.issuer(), "acme");

        // Defaults: issuer `jit`, a fresh key.
        let d = registry()
            .build("plain", "local", &ProviderConfig::new(), &ctx2)
            .await
            .unwrap();
        assert_eq!(d.name(), "plain");
        assert_eq!(ctx2.local_providers().get("plain").unwrap().issuer(), "jit");
        assert_eq!(ctx2.local_providers().names(), ["plain", "tokens"]);
    }

    #[tokio::test]
    async fn local_factory_refuses_bad_values_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
        let ctx = FactoryContext::new().with_base_dir(dir.path());
        for (key, value, text) in [
            ("max_duration", "forever", "`max_duration` is invalid"),
            ("key_file", "junk.pem", "`key_file` is invalid"),
            (
                "previous_key_files",
                "missing.pem",
                "`previous_key_files` is invalid: cannot read",
            ),
        ] {
            let err = registry()
                .build("l", "local", &ProviderConfig::new().with(key, value), &ctx)
                .await
                .unwrap_err();
            assert_eq!(err.code(), "invalid_configuration", "{key}");
            assert!(err.to_string().contains(text), "{key}: {err}");
        }
        // JIT_LOCAL_KEY_FILE wins over the table (and is not resolved against the base dir).
        let env_path = dir.path().join("env.pem");
        let shown = env_path.display().to_string();
        let ctx = FactoryContext::new()
            .with_base_dir("/nonexistent")
            .with_env(move |k| (k == "JIT_LOCAL_KEY_FILE").then(|| shown.clone()));
        registry()
            .build(
                "l",
                "local",
                &ProviderConfig::new().with("key_file", "table.pem"),
                &ctx,
            )
            .await
            .unwrap();
        assert!(env_path.exists());
    }

    #[test]
    fn register_replaces_and_returns_the_old_factory() {
        let mut r = ProviderRegistry::builtin();
        assert_eq!(r.kinds(), ["local"]);
        assert!(r.register(Arc::new(LocalFactory)).is_some());
        assert!(r.register(Arc::new(Probe)).is_none());
        assert_eq!(r.kinds(), ["local", "probe"]);
        assert_eq!(r.factory("probe").unwrap().keys().len(), 3);
        assert!(r.factory("aws").is_none());
    }
}
