//! The operator's tools on a real journal: `txmesh journal inspect` reports
//! what the ingress wrote and what the dashboard acknowledged; `txmesh
//! journal verify` passes a sound journal and exits 1 naming the file when
//! a byte is flipped; the next start cuts the damage away (keeping every
//! record before it) and the journal verifies again.

use std::{path::Path, process::Command, time::Duration};

use crate::support::*;

fn journal(dir: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_txmesh"))
        .current_dir(dir)
        .args(["--set", &format!("state_dir={}", dir.display()), "journal"])
        .args(args)
        .output()
        .expect("txmesh runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[actix_rt::test]
async fn inspect_and_verify_report_a_sound_journal_and_name_a_damaged_one() {
    let dir = TempDir::new("journal-cli");
    let mut config = test_config(&dir.0);
    config.actors.journal.segment_bytes = 64 << 10;
    config.txgen.count = 3_000;
    config.txgen.rate = 0;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let report = run_txgen(&config).await;
    assert_eq!(report.errors, 0, "{}", report.summary());
    assert!(ing.wait_drained(Duration::from_secs(20)).await);
    let journaled = ing.journaled();
    ing.stop(Duration::from_secs(5)).await;

    let (status, text) = journal(&dir.0, &["verify"]);
    assert!(status.success(), "{text}");
    assert!(text.contains("ok      ingress shard 0"), "{text}");
    let (status, text) = journal(&dir.0, &["inspect", "--json"]);
    assert!(status.success(), "{text}");
    let logs: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let shards: Vec<&serde_json::Value> = logs
        .as_array()
        .expect("a list")
        .iter()
        .filter(|l| l["name"].as_str().is_some_and(|n| n.starts_with("ingress")))
        .collect();
    let records: u64 = shards
        .iter()
        .map(|l| l["records"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(records, journaled);
    let acknowledged: u64 = shards
        .iter()
        .map(|l| l["acknowledged"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        acknowledged, journaled,
        "the dashboard acknowledged everything"
    );
    assert!(logs
        .as_array()
        .expect("list")
        .iter()
        .any(|l| l["name"] == "dashboard applied log"));

    // A flipped byte in the middle of shard 0's first segment.
    let segment = std::fs::read_dir(dir.0.join("journal/shard-0"))
        .expect("shard dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .min()
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write");
    let (status, text) = journal(&dir.0, &["verify"]);
    assert_eq!(status.code(), Some(1), "{text}");
    let name = segment
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(text.contains("DAMAGED") && text.contains(&name), "{text}");

    // The next start keeps what came before the damage and cuts the rest.
    let ing = txmesh::ingress::start(&config)
        .await
        .expect("starts despite the damage");
    let recovery = ing.recovery();
    assert_eq!(recovery.dropped.len(), 1, "{recovery:?}");
    assert_eq!(recovery.dropped[0].0, segment);
    assert!(
        recovery.records < journaled && recovery.records > 0,
        "{recovery:?}"
    );
    ing.stop(Duration::from_secs(5)).await;
    let (status, text) = journal(&dir.0, &["verify"]);
    assert!(status.success(), "{text}");
    dash.stop().await;
}
