//! `jit admin archive` against the demo server (which seals its chain,
//! writes signed checkpoints and archives into `<state>/archive`): only
//! admins may run it; it writes an archive that `jit audit verify --file`
//! checks on its own, prunes what it archived (and nothing live), the
//! server's chain still verifies from the new anchor, and the counts the
//! metrics show follow the prune.
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

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `jit_requests{state="..."}` from `/metrics`.
async fn metric(server: &Server, state: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("jit_requests{{state=\"{state}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn admins_archive_finished_requests_into_files_that_verify_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());

    // Three requests that end without a grant (cancelled), then one live
    // grant: the cut stops at the live one's first audit record.
    let mut cancelled = Vec::new();
    for i in 0..3 {
        let reason = format!("INC-{i}: looking");
        let v = json_of(&jit(
            &server,
            &server.alice,
            &[
                "--json", "request", "prod-db", "--for", "30m", "--reason", &reason,
            ],
        ));
        let id = v["request"]["id"].as_str().unwrap().to_string();
        json_of(&jit(
            &server,
            &server.alice,
            &["--json", "cancel", &id, "--reason", "not needed"],
        ));
        cancelled.push(id);
    }
    let live = json_of(&jit(
        &server,
        &server.alice,
        &[
            "--json",
            "request",
            "demo-api",
            "--for",
            "10m",
            "--reason",
            "INC-9: live",
        ],
    ))["request"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(metric(&server, "cancelled").await, 3);
    // Past the metrics' 5 s cache (the next scrape reads the store again),
    // and everything finished is older than 1s.
    tokio::time::sleep(std::time::Duration::from_millis(5100)).await;

    // Not for requesters; bad durations are usage errors.
    let out = jit(
        &server,
        &server.alice,
        &["admin", "archive", "--older-than", "1s"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = jit(
        &server,
        &server.admin,
        &["admin", "archive", "--older-than", "ninety"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let v = json_of(&jit(
        &server,
        &server.admin,
        &["--json", "admin", "archive", "--older-than", "1s"],
    ));
    assert_eq!(v["requests"], 3, "{v}");
    let files = v["archives"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{v}");
    let file = files[0]["path"].as_str().unwrap().to_string();
    assert!(
        std::path::Path::new(&file).starts_with(dir.path().join("archive")),
        "{file}"
    );
    assert_eq!(files[0]["from_seq"], 1, "{v}");
    let to_seq = files[0]["to_seq"].as_u64().unwrap();
    assert_eq!(v["audit_records"].as_u64(), Some(to_seq), "{v}");

    // The archive verifies on its own, seals included; its requests are in it.
    let key = dir.path().join("audit.key");
    let out = jit(
        &server,
        "",
        &[
            "--json",
            "audit",
            "verify",
            "--file",
            &file,
            "--key-file",
            key.to_str().unwrap(),
        ],
    );
    let verified = json_of(&out);
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["records"].as_u64(), Some(to_seq), "{verified}");
    assert_eq!(verified["sealed"].as_u64(), Some(to_seq), "{verified}");
    let text = std::fs::read_to_string(&file).unwrap();
    for id in &cancelled {
        assert!(
            text.contains(&format!("\"id\":\"{id}\"")),
            "{id} not archived"
        );
    }

    // Pruned: gone from the store and the counts; the live grant stays.
    for id in &cancelled {
        let out = jit(&server, &server.admin, &["status", id]);
        assert_eq!(out.status.code(), Some(1), "{id} still there");
    }
    let still = json_of(&jit(&server, &server.alice, &["--json", "status", &live]));
    assert_eq!(still["request"]["state"], "active", "{still}");
    assert_eq!(metric(&server, "cancelled").await, 0);
    assert_eq!(metric(&server, "active").await, 1);

    // The server's chain verifies from the anchor the archive ends at,
    // against its signed checkpoints.
    let chain = json_of(&jit(&server, &server.admin, &["--json", "audit", "verify"]));
    assert_eq!(chain["ok"], true, "{chain}");

    // Nothing more is old enough: a second run writes nothing.
    let again = json_of(&jit(
        &server,
        &server.admin,
        &["--json", "admin", "archive", "--older-than", "1s"],
    ));
    assert_eq!(again["requests"], 0, "{again}");
    assert_eq!(
        again["archives"].as_array().map(Vec::len),
        Some(0),
        "{again}"
    );
}
