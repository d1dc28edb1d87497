//! The built-in file sinks keep the `AuditSink` contract's "Ok means kept"
//! (`jit_core::testing::sink`), and the check catches a sink that does not.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use jit_core::audit::{AuditCheckpoint, CheckpointFileSink, JsonlFileSink};
use jit_core::testing::sink::{check_ok_means_kept, Keeps};
use jit_core::{AuditRecord, AuditSink, Result};

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_jsonl_file_sink_holds_every_record_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = JsonlFileSink::open(&path).unwrap();
    let keeps = Keeps {
        records: true,
        checkpoints: false,
    };
    check_ok_means_kept(&sink, keeps, || lines(&path)).await;
}

#[tokio::test]
async fn the_checkpoint_file_sink_holds_every_checkpoint_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoints.jsonl");
    let sink = CheckpointFileSink::open(&path).unwrap();
    let keeps = Keeps {
        records: false,
        checkpoints: true,
    };
    check_ok_means_kept(&sink, keeps, || lines(&path)).await;
}

/// Acknowledges at once and writes only every second record.
#[derive(Debug, Default)]
struct Lossy {
    written: Mutex<Vec<String>>,
    seen: Mutex<u64>,
}

#[async_trait]
impl AuditSink for Lossy {
    async fn append(&self, record: &AuditRecord) -> Result<()> {
        let mut seen = self.seen.lock().unwrap();
        *seen += 1;
        if *seen % 2 == 0 {
            self.written.lock().unwrap().push(record.to_json_line());
        }
        Ok(())
    }

    async fn checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<()> {
        self.written.lock().unwrap().push(checkpoint.to_json_line());
        Ok(())
    }
}

#[tokio::test]
#[should_panic(expected = "does not hold the records it acknowledged")]
async fn a_sink_that_loses_what_it_acknowledged_fails_the_check() {
    let sink = Lossy::default();
    let keeps = Keeps {
        records: true,
        checkpoints: true,
    };
    check_ok_means_kept(&sink, keeps, || sink.written.lock().unwrap().clone()).await;
}
