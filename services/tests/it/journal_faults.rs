//! The journal's disk fills up (a real tmpfs of 256 KiB under the state
//! directory): the ingress answers nothing it could not record, refuses new
//! work with a retryable UNAVAILABLE, reports NOT_SERVING, and once there is
//! room again (the tmpfs grown) it writes what waited, answers it, and
//! serves again by itself. A journal whose format or owner is not its own
//! is refused at start, naming the file.

use std::{path::Path, time::Duration};

use tonic_health::pb::health_check_response::ServingStatus;
use txmesh_proto::v1::{
    ingress_client::IngressClient, txn_result::Outcome, ScreenRequest, Transaction, TxnErrorCode,
};

use crate::support::*;

/// A tmpfs mounted at a directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Self(at.to_owned())
    }

    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn txns(batch: u32, n: u32) -> Vec<Transaction> {
    (0..n)
        .map(|i| Transaction {
            transaction_id: format!("full-{batch}-{i}"),
            account_id: format!("acct-full-{}", i % 50),
            amount_minor: 1_000,
            currency: "EUR".into(),
            timestamp_unix_ms: txmesh_actors::clock::system_unix_ms(),
            merchant_id: "m".into(),
            country: "DE".into(),
            channel: 1,
        })
        .collect()
}

async fn health(
    config: &txmesh::config::TxmeshConfig,
    addr: std::net::SocketAddr,
) -> ServingStatus {
    txmesh::cli::health::check(config, addr, "txgen", "ingress", "", Duration::from_secs(2))
        .await
        .expect("health answers")
}

#[actix_rt::test]
async fn a_full_disk_refuses_new_work_answers_nothing_unrecorded_and_recovers_by_itself() {
    let dir = TempDir::new("disk-full");
    let mut config = test_config(&dir.0);
    let disk = Tmpfs::mount(&dir.0.join("journal"), "256k");
    config.actors.journal.segment_bytes = 16 << 10;
    config.actors.journal.max_bytes = 64 << 20;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let mut client = IngressClient::new(channel_as(&config, "txgen", "ingress", ing.local_addr));

    // Fill the disk: batches until the journal refuses.
    let mut verdicts = 0u64;
    let mut refused = None;
    for batch in 0..400 {
        let request = ScreenRequest {
            transactions: txns(batch, 100),
            ..ScreenRequest::default()
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.screen(tokio_stream::once(request)),
        )
        .await;
        let Ok(answer) = answer else {
            // The group whose write failed waits for room: not answered.
            break;
        };
        let mut responses = answer.expect("stream opens").into_inner();
        let Ok(Some(response)) = tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .map(|r| r.expect("no stream error"))
        else {
            break;
        };
        for result in response.results {
            match result.outcome {
                Some(Outcome::Verdict(_)) => verdicts += 1,
                Some(Outcome::Error(e)) => {
                    assert_eq!(e.code(), TxnErrorCode::Unavailable, "{e:?}");
                    assert!(e.retryable && e.retry_after_ms > 0, "{e:?}");
                    assert!(e.message.contains("journal"), "{e:?}");
                    refused = Some(e);
                }
                None => panic!("a result without an outcome"),
            }
        }
        if refused.is_some() {
            break;
        }
    }
    println!("verdicts before the disk filled: {verdicts}");
    assert!(verdicts > 0 && verdicts < 40_000, "{verdicts}");
    until(
        "the journal reports the failure",
        Duration::from_secs(10),
        || !ing.journal_healthy(),
    )
    .await;
    let mut status = ServingStatus::Serving;
    for _ in 0..50 {
        status = health(&config, ing.local_addr).await;
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        ServingStatus::NotServing,
        "probes see the ingress cannot record"
    );
    // New work for a shard whose journal cannot write is refused at once,
    // retryably. (Health is per shard: a shard whose last page still had
    // room may record a few more, and one whose write then fails holds
    // that group, so each call gets a short timeout.)
    let mut refused = None;
    for txn in txns(1000, 50) {
        let answer = tokio::time::timeout(Duration::from_secs(2), client.screen_one(txn)).await;
        match answer.map(|r| r.expect("answered").into_inner().outcome) {
            Ok(Some(Outcome::Error(e))) => {
                assert_eq!(e.code(), TxnErrorCode::Unavailable, "{e:?}");
                refused = Some(e);
                break;
            }
            Ok(Some(Outcome::Verdict(_))) | Err(_) => {}
            Ok(None) => panic!("a result without an outcome"),
        }
    }
    assert!(
        refused.is_some(),
        "new work reaching the full shard is refused"
    );

    // Room again: the waiting group is written and answered, and the
    // ingress serves again without a restart.
    disk.grow("64m");
    until("the journal writes again", Duration::from_secs(10), || {
        ing.journal_healthy()
    })
    .await;
    let mut status = ServingStatus::NotServing;
    for _ in 0..50 {
        status = health(&config, ing.local_addr).await;
        if status == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, ServingStatus::Serving);
    let result = client
        .screen_one(txns(2000, 1).remove(0))
        .await
        .expect("answered")
        .into_inner();
    assert!(
        matches!(result.outcome, Some(Outcome::Verdict(_))),
        "{result:?}"
    );

    // Every verdict answered was recorded, and the dashboard has them all.
    assert!(ing.wait_drained(Duration::from_secs(20)).await);
    let answered = ing.counters.verdicts();
    let totals = dash.snapshot().await.expect("snapshot").totals;
    assert_eq!(totals.verdicts, ing.journaled());
    assert!(
        totals.verdicts >= answered,
        "{} < {answered}",
        totals.verdicts
    );
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
    drop(disk);
}

#[actix_rt::test]
async fn a_journal_of_another_format_or_in_use_is_refused_naming_the_file() {
    let dir = TempDir::new("journal-foreign");
    let mut config = test_config(&dir.0);
    let journal = dir.0.join("journal");
    std::fs::create_dir_all(&journal).expect("dir");
    std::fs::write(journal.join("meta"), "txmesh-journal 9\nshards 2\n").expect("meta");
    let err = txmesh::ingress::start(&config)
        .await
        .err()
        .expect("refused");
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(
        text.contains("meta") && text.contains("format version 1"),
        "{text}"
    );

    std::fs::remove_file(journal.join("meta")).expect("rm");
    let (dash, ing, _machine) = start_system(&mut config).await;
    // A second ingress on the same state directory.
    let err = txmesh::ingress::start(&config).await.err().expect("in use");
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(text.contains("in use by another txmesh process"), "{text}");
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
