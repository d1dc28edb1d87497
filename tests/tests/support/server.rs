//! Starts the real `jit-vending-server` binary in demo mode and drives it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The two binaries, built once per test process with the same profile as
/// the tests.
///
/// They are built with the selection the README's test command uses
/// (`--workspace --all-features`, test targets included, plus `--bins`:
/// `cargo test` builds a package's plain binaries only for its own
/// integration tests, and jit-cli has none), so that after
/// `scripts/test.sh` has built everything this only links `jit`: cargo unifies
/// features over the packages and targets it builds, and a narrower
/// `-p vending-server -p jit-cli` would compile the server and its
/// dependencies a second time with other features (about 10 minutes on
/// the 2-core CI machine) and overwrite the binaries the test run built.
/// Running one of these tests alone builds the whole workspace once.
///
/// The variables cargo sets for a test process (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_*`, ...) are taken out of the inner build's environment:
/// build scripts track some of them (`ring`'s tracks
/// `CARGO_MANIFEST_DIR`), and an inherited value would make cargo rebuild
/// half the tree, then rebuild it again on the next run from a shell.
pub fn bins() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            let set_by_cargo_for_tests = name == "OUT_DIR"
                || [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                ]
                .iter()
                .any(|p| name.starts_with(p))
                || matches!(
                    name,
                    "CARGO_TARGET_TMPDIR" | "CARGO_PRIMARY_PACKAGE" | "CARGO_RUSTC_CURRENT_DIR"
                );
            if set_by_cargo_for_tests {
                build.env_remove(name);
            }
        }
        let status = build
            .args([
                "build",
                "-q",
                "--workspace",
                "--all-features",
                "--tests",
                "--bins",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        // target/<profile>/deps/<this test> -> target/<profile>
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let server = dir.join("jit-vending-server");
        let jit = dir.join("jit");
        assert!(server.exists(), "{} missing", server.display());
        assert!(jit.exists(), "{} missing", jit.display());
        (server, jit)
    })
}

/// A running demo server.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
    pub alice: String,
    pub bob: String,
    pub admin: String,
}

impl Server {
    /// Starts the demo server on a free port with its state in `dir`.
    pub fn start(dir: &Path) -> Server {
        let (server, _) = bins();
        let mut child = Command::new(server)
            .args(["--demo", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let (mut alice, mut bob, mut admin) = (String::new(), String::new(), String::new());
        let url = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            let line = line.trim();
            if let Some(t) = line.strip_prefix("export ALICE=") {
                alice = t.into();
            } else if let Some(t) = line.strip_prefix("export BOB=") {
                bob = t.into();
            } else if let Some(t) = line.strip_prefix("export ADMIN=") {
                admin = t.into();
            } else if let Some(u) = line.strip_prefix("listening on ") {
                break u.to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        assert!(!alice.is_empty() && !bob.is_empty() && !admin.is_empty());
        Server {
            child,
            url,
            dir: dir.to_path_buf(),
            alice,
            bob,
            admin,
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The demo issuer's key, to mint tokens of our own (good and bad ones).
    pub fn issuer_der(&self) -> Vec<u8> {
        let pem = std::fs::read_to_string(self.dir.join("demo-issuer-key.pem")).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    /// The JWKS the server publishes.
    pub async fn jwks(&self) -> Value {
        reqwest::get(format!("{}/.well-known/jwks.json", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A token with these claims, signed by the demo issuer (EdDSA).
    pub async fn token(&self, claims: Value) -> String {
        let jwks = self.jwks().await;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_string);
        install_crypto();
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ed_der(&self.issuer_der()),
        )
        .unwrap()
    }

    /// Standard claims for `sub` in `groups`, valid for an hour.
    pub fn claims(sub: &str, groups: &[&str]) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": "jit-demo", "aud": "jit-vending", "sub": sub, "groups": groups,
                "iat": now, "nbf": now, "exp": now + 3600 })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn install_crypto() {
    use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
    let _ = CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER);
}

/// A small HTTP helper: (status, JSON body).
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts the one error shape and returns its code.
pub fn error_code(body: &Value) -> String {
    let e = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(e["message"].is_string(), "{body}");
    assert!(body.as_object().unwrap().len() == 1, "{body}");
    e["code"].as_str().unwrap().to_string()
}

/// A server binary run from a config file (`--config`), as the provider
/// end-to-end tests run it: debug logs in `log` (so their secret checks
/// cover every line), killed on drop.
pub struct ConfigServer {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub url: String,
    /// Its stderr (the logs).
    pub log: PathBuf,
}

impl Drop for ConfigServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ConfigServer {
    /// Starts the server on `config` with `RUST_LOG=debug`; `setup` adds
    /// what the test's provider needs (secrets as operators pass them, the
    /// machine's own cloud settings kept out). Waits until it listens.
    pub fn start(dir: &Path, config: &Path, setup: impl FnOnce(&mut Command)) -> Self {
        let log = dir.join("server.log");
        let mut cmd = Command::new(&bins().0);
        cmd.arg("--config").arg(config).env("RUST_LOG", "debug");
        setup(&mut cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "server exited: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                })
                .unwrap();
            if let Some(u) = line.trim().strip_prefix("listening on ") {
                break u.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, url, log }
    }

    /// Runs the `jit` binary against this server as `token`, from `cwd`
    /// (its cache there, no config file); `stale` are variables of the
    /// caller's environment that must not reach a child of `jit exec`.
    pub fn jit(
        &self,
        token: &str,
        args: &[&str],
        cwd: &Path,
        stale: &[(&str, &str)],
    ) -> std::process::Output {
        let mut cmd = Command::new(&bins().1);
        cmd.args(args)
            .current_dir(cwd)
            .env("JIT_SERVER", &self.url)
            .env("JIT_TOKEN", token)
            .env("JIT_CONFIG", "/nonexistent/jit.toml")
            .env("JIT_CACHE_DIR", cwd.join("cache"));
        for (k, v) in stale {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

/// The stdout of a command that must have succeeded (else its stderr).
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}
