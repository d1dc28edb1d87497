//! The main job on the embedded default: a whole JIT lifecycle with the local
//! provider (Ed25519-signed tokens) and the SQLite store, then the audit trail
//! and its verification. No cloud account, no server.
//!
//! ```sh
//! cargo run -p lifecycle                 # uses a temporary database
//! cargo run -p lifecycle -- ./jit.db     # keeps the database
//! ```

use std::sync::Arc;

use jit_core::local::{LocalKey, LocalProvider};
use jit_core::store::SqliteStore;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, Credentials, ManualClock, Principal, Reaper, State,
};

const CATALOGUE: &str = r#"
[admins]
groups = ["secops"]

[[entitlements]]
id = "prod-db-read"
description = "Read-only access to the production database"
provider = "local"
max_duration = "1h"
target = { audience = "prod-db", scopes = ["read"] }
ticket_pattern = "^INC-[0-9]+$"
[entitlements.eligible]
groups = ["engineering"]
[entitlements.approval]
groups = ["db-leads"]
quorum = 2
[entitlements.auto_approve]
max_duration = "15m"
groups = ["oncall"]

[[entitlements]]
id = "admin-api"
description = "The internal admin API"
provider = "local"
max_duration = "30m"
target = { audience = "admin-api", scopes = ["users:write"] }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.auto_approve]
max_duration = "30m"
groups = ["oncall"]
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn show(label: &str, state: State) {
    println!("  {label:<46} -> {state}");
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("jit.db"));

    // A manual clock so the demo can show expiry without waiting.
    let clock = ManualClock::starting_now();
    let provider = Arc::new(
        LocalProvider::builder(LocalKey::generate())
            .issuer("jit-demo")
            .clock(Arc::new(clock.clone()))
            .build(),
    );
    let verifier = provider.verifier();
    let broker = Broker::builder(
        Arc::new(SqliteStore::open(&path).await?),
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE)?),
    )
    .provider(provider.clone())
    .clock(Arc::new(clock.clone()))
    .build()?;
    let mut reaper = Reaper::new(broker.clone());

    let alice = Principal::new("alice")?.with_group("engineering");
    let oncall = Principal::new("oscar")?
        .with_group("engineering")
        .with_group("oncall");
    let carol = Principal::new("carol")?.with_group("db-leads");
    let dave = Principal::new("dave")?.with_group("db-leads");

    println!("store: {}", path.display());
    println!("\n1. alice asks for 45 minutes of prod-db-read: two db-leads must approve");
    let req = AccessRequest::new("prod-db-read", "45m".parse()?, "INC-4711: slow queries")
        .with_ticket("INC-4711");
    let out = broker.submit(&alice, req).await?;
    let id = out.record.id;
    show("submitted", out.record.state);
    for r in &out.record.decision.reasons {
        println!("     policy: {r}");
    }
    match broker.approve(&alice, id, "lgtm").await {
        Err(e) => println!("  alice approves her own request             -> refused: {e}"),
        Ok(_) => return Err("self-approval was accepted".into()),
    }
    show(
        "carol approves",
        broker.approve(&carol, id, "ok").await?.record.state,
    );
    let out = broker.approve(&dave, id, "ok").await?;
    show("dave approves (quorum reached, issued)", out.record.state);
    let token = match out.credentials {
        Some(Credentials::LocalToken { token, expires_at }) => {
            println!("     token until {expires_at}; Debug shows {token:?}");
            token
        }
        _ => return Err("no local token issued".into()),
    };
    let claims = verifier.verify(token.expose(), "prod-db")?;
    println!(
        "     the prod-db service verifies it: sub={} scopes={:?}",
        claims.sub, claims.scopes
    );

    println!("\n2. alice is done early and revokes");
    show("revoked", broker.revoke(&alice, id, "done").await?.state);
    match verifier.verify(token.expose(), "prod-db") {
        Err(e) => println!("     the same token now: {e}"),
        Ok(_) => return Err("a revoked token still verified".into()),
    }

    println!("\n3. oscar is on call: 10 minutes of admin-api are auto-approved, then expire");
    let out = broker
        .submit(
            &oncall,
            AccessRequest::new("admin-api", "10m".parse()?, "pager: users stuck"),
        )
        .await?;
    show("submitted (auto-approved and issued)", out.record.state);
    clock.advance(chrono::TimeDelta::minutes(11));
    reaper.tick().await?;
    show(
        "11 minutes later, after a reaper tick",
        broker.get(out.record.id).await?.state,
    );

    println!("\n4. a request that no one answers times out");
    let out = broker
        .submit(
            &alice,
            AccessRequest::new("prod-db-read", "30m".parse()?, "INC-4712: report")
                .with_ticket("INC-4712"),
        )
        .await?;
    show("submitted", out.record.state);
    clock.advance(chrono::TimeDelta::hours(25));
    reaper.tick().await?;
    show("a day later", broker.get(out.record.id).await?.state);

    println!("\naudit trail:");
    let records = broker.audit_records().await?;
    for r in &records {
        println!(
            "  #{:<3} {:<17} {:<10} request {}  hash {}..",
            r.seq,
            r.event.kind.as_str(),
            r.event.actor,
            &r.event.request_id.to_string()[..8],
            &r.hash[..12]
        );
    }
    match broker.verify_audit().await? {
        Ok(summary) => println!(
            "\naudit chain verified: {} records, head {}",
            summary.records, summary.head
        ),
        Err(brk) => return Err(format!("audit chain broken: {brk}").into()),
    }
    Ok(())
}
