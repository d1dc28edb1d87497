//! The real binary against a local Lambda Runtime API: proves main()'s
//! wiring (configuration from the environment, one cold start, stdout for
//! audit lines only, stderr for logs) end to end, minting on moto.
//!
//! The Runtime API is the one Lambda's own runtime speaks:
//! `GET /2018-06-01/runtime/invocation/next` hands out an event with its
//! request id in `Lambda-Runtime-Aws-Request-Id`; the function answers with
//! `POST /2018-06-01/runtime/invocation/{id}/response`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use jit_core::audit::{verify_jsonl, AuditRecord};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the fake Runtime API saw.
#[derive(Debug)]
enum Seen {
    Response(String, Value),
    Error(String, String),
}

struct RuntimeApi {
    addr: String,
    seen: mpsc::UnboundedReceiver<Seen>,
}

/// Serves `events` in order from `/next`, then leaves further polls hanging.
async fn runtime_api(events: Vec<Value>) -> RuntimeApi {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let queue = Arc::new(Mutex::new(VecDeque::from(events)));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0u32;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let queue = queue.clone();
            let tx = tx.clone();
            n += 1;
            tokio::spawn(serve(stream, queue, tx, n));
        }
    });
    RuntimeApi { addr, seen: rx }
}

async fn serve(
    stream: TcpStream,
    queue: Arc<Mutex<VecDeque<Value>>>,
    tx: mpsc::UnboundedSender<Seen>,
    conn: u32,
) {
    let mut reader = BufReader::new(stream);
    let mut count = 0u32;
    loop {
        // Request line and headers.
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).await.unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).await.unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body).await.unwrap();
        }

        let reply = if method == "GET" && path.ends_with("/runtime/invocation/next") {
            let next = queue.lock().unwrap().pop_front();
            match next {
                Some(event) => {
                    count += 1;
                    let id = format!("req-{conn}-{count}");
                    let payload = event.to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         lambda-runtime-aws-request-id: {id}\r\n\
                         lambda-runtime-deadline-ms: 32503680000000\r\n\
                         lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:{ACCOUNT}:function:jit\r\n\
                         lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000\r\n\
                         content-length: {}\r\n\r\n{payload}",
                        payload.len()
                    )
                }
                // No more events: hold the poll open, as Lambda does between invocations.
                None => std::future::pending().await,
            }
        } else if let Some(id) = path
            .strip_suffix("/response")
            .and_then(|p| p.rsplit('/').next())
        {
            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let _ = tx.send(Seen::Response(id.to_string(), v));
            "HTTP/1.1 202 Accepted\r\ncontent-length: 16\r\n\r\n{\"status\":\"OK\"}\n".into()
        } else {
            let _ = tx.send(Seen::Error(
                path.clone(),
                String::from_utf8_lossy(&body).into_owned(),
            ));
            "HTTP/1.1 202 Accepted\r\ncontent-length: 16\r\n\r\n{\"status\":\"OK\"}\n".into()
        };
        let stream = reader.get_mut();
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn next_seen(api: &mut RuntimeApi) -> Option<Seen> {
    tokio::time::timeout(Duration::from_secs(60), api.seen.recv())
        .await
        .ok()
        .flatten()
}

fn drain(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn command(api: &RuntimeApi, catalogue: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-lambda-vendor"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "jit-lambda-vendor")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIATESTLAMBDA000000")
        .env("AWS_SECRET_ACCESS_KEY", "lambda-execution-role-secret")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("JIT_AWS_ENDPOINT_URL", moto_url())
        .env("JIT_CATALOGUE", catalogue)
        // Everything, to show that even TRACE keeps the bearer token out of the logs.
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_invocations_from_the_runtime_api() {
    let role_arn = create_role(&moto_sdk().await).await;
    let jwt_event = event("http-api-v2-jwt.json");
    let bearer = jwt_event["headers"]["authorization"]
        .as_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    let mut api = runtime_api(vec![
        jwt_event,
        event("rest-api-no-authorizer.json"),
        event("rest-api-lambda-authorizer.json"),
    ])
    .await;
    let mut child = command(&api, &catalogue(&role_arn)).spawn().unwrap();
    // Drained as they come: TRACE logs would fill a pipe and block the function.
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());

    let mut answers = Vec::new();
    for _ in 0..3 {
        match next_seen(&mut api).await {
            Some(Seen::Response(id, v)) => answers.push((id, v)),
            Some(Seen::Error(path, body)) => panic!("runtime error at {path}: {body}"),
            None => {
                child.start_kill().unwrap();
                child.wait().await.unwrap();
                let stderr = stderr.await.unwrap();
                panic!("no answer within 60 s; stderr ends:\n{}", tail(&stderr));
            }
        }
    }
    // Let the last audit line reach the pipe, then stop the function.
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let stdout = stdout.await.unwrap();
    let stderr = stderr.await.unwrap();

    let status = |i: usize| answers[i].1["statusCode"].as_u64().unwrap();
    let body = |i: usize| -> Value {
        serde_json::from_str(answers[i].1["body"].as_str().unwrap()).unwrap()
    };
    assert_eq!(status(0), 200, "{}", tail(&stderr));
    assert_eq!(status(1), 401);
    assert_eq!(status(2), 200);
    let issued = body(0);
    let role_name = role_arn.rsplit('/').next().unwrap();
    assert!(caller_arn(&issued["credentials"])
        .await
        .starts_with(&format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/jit-"
        )));
    // The request id the runtime handed out is in the audit context.
    assert!(stdout.contains(&answers[0].0), "{stdout}");

    // stdout: audit lines only, one chain (4 records per issued request, none for the 401).
    for line in stdout.lines() {
        serde_json::from_str::<AuditRecord>(line)
            .unwrap_or_else(|e| panic!("not an audit line ({e}): {line}"));
    }
    assert_eq!(verify_jsonl(stdout.as_bytes()).unwrap().records, 8);

    // stderr: the logs; one cold start for three invocations; no secrets, no bearer token.
    assert_eq!(stderr.matches("lambda vendor ready").count(), 1);
    assert_eq!(stderr.matches("invocation done").count(), 2);
    assert!(!stderr.contains("\u{1b}["), "no ANSI colours in CloudWatch");
    for secret in [
        issued["credentials"]["SecretAccessKey"].as_str().unwrap(),
        issued["credentials"]["SessionToken"].as_str().unwrap(),
        body(2)["credentials"]["SecretAccessKey"].as_str().unwrap(),
        bearer.as_str(),
        "lambda-execution-role-secret",
    ] {
        assert!(!stderr.contains(secret), "a secret reached the logs");
        assert!(!stdout.contains(secret), "a secret reached the audit lines");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_configuration_is_reported_as_an_init_error() {
    let mut api = runtime_api(vec![json!({})]).await;
    let mut cmd = command(&api, "");
    cmd.env_remove("JIT_CATALOGUE");
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("JIT_CATALOGUE"), "{stderr}");
    assert!(out.stdout.is_empty());
    // Nothing was polled or answered.
    assert!(api.seen.try_recv().is_err());
}
