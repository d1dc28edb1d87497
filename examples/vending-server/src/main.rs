//! `jit-vending-server`: see the crate docs, or run with `--demo`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use vending_server::config::{
    AuditConfig, AuthConfig, Config, IntrospectionConfig, Limits, ProviderTable, ReaperConfig,
    RetentionConfig,
};
use vending_server::{demo, load_config, shutdown_signal, Server};

/// The JIT vending server: an HTTP JSON API over the whole access lifecycle.
#[derive(Debug, Parser)]
#[command(name = "jit-vending-server", version)]
struct Args {
    /// Configuration file (TOML); `JIT_*` environment variables override it.
    #[arg(long, env = "JIT_CONFIG_FILE", required_unless_present = "demo")]
    config: Option<PathBuf>,

    /// Demo mode: built-in catalogue, local provider, the server as its own
    /// OIDC issuer with printed tokens, a temporary SQLite database.
    #[arg(long, conflicts_with = "config")]
    demo: bool,

    /// Demo mode: keep the database and keys in this directory (created if missing).
    #[arg(long, requires = "demo")]
    state_dir: Option<PathBuf>,

    /// Listen address (overrides the config and `JIT_LISTEN`).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut _tmp = None;
    let (mut config, issuer) = if args.demo {
        let dir = match &args.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("cannot create `{}`: {e}", d.display()))?;
                d.clone()
            }
            None => {
                let t = tempfile::tempdir().map_err(|e| e.to_string())?;
                let p = t.path().to_path_buf();
                _tmp = Some(t);
                p
            }
        };
        let issuer = demo::DemoIssuer::new(demo::load_or_generate_key(Some(
            &dir.join("demo-issuer-key.pem"),
        ))?);
        let mut providers = BTreeMap::new();
        providers.insert(
            "local".to_string(),
            ProviderTable::new("local").with("issuer", "jit-demo").with(
                "key_file",
                dir.join("local-provider-key.pem").display().to_string(),
            ),
        );
        let mut c = Config {
            listen: "127.0.0.1:8080".into(),
            store_url: format!("sqlite://{}", dir.join("jit.db").display()),
            catalogue_file: None,
            catalogue: Some(demo::CATALOGUE.into()),
            policy: Default::default(),
            auth: AuthConfig {
                issuer: demo::ISSUER.into(),
                audience: demo::AUDIENCE.into(),
                jwks_url: None,
                jwks_file: None,
                algorithms: vec!["EdDSA".into()],
                leeway_secs: 5,
                refresh_min_interval_secs: 30,
                claims: Default::default(),
            },
            providers,
            // One demo user drives load tests: no submit rate, the other limits as usual.
            limits: Limits {
                submits_per_minute: 0,
                ..Limits::default()
            },
            reaper: ReaperConfig { interval_secs: 2 },
            metrics: Default::default(),
            // The demo's resource server: `demo-service` tokens read claims.
            introspection: IntrospectionConfig {
                clients: vec![demo::RESOURCE_SERVER.into()],
            },
            // Sealed and checkpointed, as a production server should be.
            audit: AuditConfig {
                key_file: Some(dir.join("audit.key")),
                checkpoint_file: Some(dir.join("audit-checkpoints.jsonl")),
                checkpoint_every: 1,
                ..Default::default()
            },
            risk: Default::default(),
            tickets: Default::default(),
            on_call: Default::default(),
            // Archives on demand (`jit admin archive`), into the state folder.
            retention: RetentionConfig {
                dir: Some(dir.join("archive")),
                ..Default::default()
            },
            base_dir: Some(dir.clone()),
            // The demo's own key files, whatever the environment says.
            ignore_provider_env: true,
        };
        c.apply_env(|k| std::env::var(k).ok().filter(|_| k == "JIT_LISTEN"))?;
        (c, Some(issuer))
    } else {
        let path = args.config.clone().ok_or("--config is required")?;
        (load_config(&path)?, None)
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on `{}`: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = Server::build(config, issuer.as_ref()).await?;
    if let Some(issuer) = &issuer {
        print_demo(issuer, &addr.to_string())?;
    }
    println!("listening on http://{addr}");
    tracing::info!(%addr, "listening");
    server
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn print_demo(issuer: &demo::DemoIssuer, addr: &str) -> Result<(), String> {
    const DAY: i64 = 24 * 3600;
    let alice = issuer.token("alice", &["engineering"], DAY)?;
    let bob = issuer.token("bob", &["engineering", "leads"], DAY)?;
    let admin = issuer.token("admin", &["secops"], DAY)?;
    let service = issuer.token(demo::RESOURCE_SERVER, &[], DAY)?;
    println!(
        r#"
JIT vending server, demo mode. Demo bearer tokens (valid 24h):

  export ALICE={alice}
  export BOB={bob}
  export ADMIN={admin}
  export SERVICE={service}

alice (requester, group engineering), bob (approver, group leads), admin (group secops),
{resource} (a resource server: reads token claims at /v1/introspect).

Try it (or use the `jit` CLI: cargo run -p jit-cli -- --server http://{addr} --token "$ALICE" ...):

  # 10 minutes of demo-api are auto-approved and issued at once
  curl -s -H "Authorization: Bearer $ALICE" -H 'content-type: application/json' \
       -d '{{"entitlement":"demo-api","duration":"10m","justification":"try the demo"}}' \
       http://{addr}/v1/requests
  # prod-db needs a lead: alice asks, bob approves, alice fetches the credentials
  curl -s -H "Authorization: Bearer $ALICE" -H 'content-type: application/json' \
       -d '{{"entitlement":"prod-db","duration":"30m","justification":"INC-1: slow queries"}}' \
       http://{addr}/v1/requests
  curl -s -H "Authorization: Bearer $BOB" "http://{addr}/v1/requests?scope=approvals"
  curl -s -H "Authorization: Bearer $BOB" -d '{{"comment":"ok"}}' http://{addr}/v1/requests/ID/approve
  curl -s -H "Authorization: Bearer $ALICE" http://{addr}/v1/requests/ID/credentials
  curl -s -H "Authorization: Bearer $ALICE" -d '{{"reason":"done"}}' http://{addr}/v1/requests/ID/revoke
  # the audit chain (admins)
  curl -s -H "Authorization: Bearer $ADMIN" http://{addr}/v1/audit/verify
  curl -s http://{addr}/metrics
"#,
        resource = demo::RESOURCE_SERVER,
    );
    Ok(())
}
