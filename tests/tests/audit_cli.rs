//! `jit audit verify`, against the demo server (which seals its chain with
//! an audit key and writes signed checkpoints to its state folder): on the
//! server, and with `--file` on an export, the way an auditor holding the
//! key and the checkpoint file would check it without the server. An export
//! with its last records cut off verifies as a hash chain, but not against
//! the checkpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/server.rs"]
mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::{bins, Server};

fn jit(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(&bins().1)
        .args(args)
        .env("JIT_SERVER", &server.url)
        .env("JIT_TOKEN", token)
        .env("JIT_CONFIG", "/nonexistent/jit.toml")
        .output()
        .unwrap()
}

/// Runs `jit` with no server or token at all.
fn offline(args: &[&str]) -> Output {
    Command::new(&bins().1)
        .args(args)
        .env_remove("JIT_SERVER")
        .env_remove("JIT_TOKEN")
        .env("JIT_CONFIG", "/nonexistent/jit.toml")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn audit_verify_on_the_server_and_on_an_export_with_key_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for _ in 0..2 {
        let out = jit(
            &server,
            &server.alice,
            &["request", "demo-api", "--for", "10m", "--reason", "INC-9"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // On the server: every record sealed, checked against the latest checkpoint.
    let out = jit(&server, &server.admin, &["--json", "audit", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = v["records"].as_u64().unwrap();
    assert!(n >= 6, "{v}");
    assert_eq!(v["sealed"].as_u64(), Some(n), "{v}");
    assert_eq!(v["checkpoint"].as_u64(), Some(n), "{v}");

    // An auditor's copy: the export, the key and the checkpoint file.
    let export = reqwest::Client::new()
        .get(format!("{}/v1/audit", server.url))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let full = work.path().join("audit.jsonl");
    std::fs::write(&full, &export).unwrap();
    let key = dir.path().join("audit.key");
    let cps = dir.path().join("audit-checkpoints.jsonl");
    let (key, cps) = (key.to_str().unwrap(), cps.to_str().unwrap());
    let file = full.to_str().unwrap();
    let out = offline(&[
        "audit",
        "verify",
        "--file",
        file,
        "--key-file",
        key,
        "--checkpoints",
        cps,
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("audit chain verified"), "{text}");
    assert!(text.contains(&format!("{n} sealed")), "{text}");
    assert!(text.contains(&format!("checkpoint at seq {n}")), "{text}");

    // The last two records cut off: a valid hash chain, with valid seals...
    let lines: Vec<&str> = export.lines().collect();
    let short = work.path().join("short.jsonl");
    std::fs::write(&short, lines[..lines.len() - 2].join("\n")).unwrap();
    let short = short.to_str().unwrap();
    let out = offline(&["audit", "verify", "--file", short, "--key-file", key]);
    assert!(out.status.success(), "{}", stdout(&out));
    // ...but not against the checkpoints.
    let out = offline(&[
        "--json",
        "audit",
        "verify",
        "--file",
        short,
        "--key-file",
        key,
        "--checkpoints",
        cps,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "truncated", "{v}");
    assert_eq!(v["seq"].as_u64(), Some(n - 1), "{v}");

    // Another key does not verify the seals, and says which key it needs.
    let other = work.path().join("other.key");
    std::fs::write(&other, "42".repeat(32)).unwrap();
    let out = offline(&[
        "audit",
        "verify",
        "--file",
        file,
        "--key-file",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("which the keyring does not hold"),
        "{}",
        stdout(&out)
    );
    // The key's bytes are never printed.
    let secret = std::fs::read_to_string(dir.path().join("audit.key")).unwrap();
    assert!(!stdout(&out).contains(secret.trim()));
}
