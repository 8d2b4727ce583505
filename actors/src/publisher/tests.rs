//! The publisher's delivery contract against an in-process dashboard end
//! (the same `PublishTransport` seam the gRPC client plugs into): batches
//! are contiguous runs of journal positions, in order; each ack answers the
//! oldest batch in flight; a broken stream resends every unacknowledged
//! batch, in order, with its original positions (the dashboard drops what
//! it already applied); nothing is drained until everything is
//! acknowledged.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use txmesh_proto::v1::{Ack, Transaction, Verdict, VerdictBatch};

use super::{BoxFuture, DashboardPublisher, PublishConnection, PublishError, PublishTransport};
use crate::{
    config::{JournalConfig, PublisherConfig, WindowConfig},
    journal::{JournalHistograms, Journals},
    reply::BatchReply,
};

/// The dashboard's side of one Publish stream.
struct Stream {
    batches: mpsc::Receiver<VerdictBatch>,
    acks: mpsc::Sender<Result<Ack, PublishError>>,
}

/// Hands every stream the publisher opens to the test; refuses while
/// `refuse` holds a reason.
struct InProcess {
    opened: mpsc::UnboundedSender<Stream>,
    refuse: parking_lot::Mutex<Option<PublishError>>,
}

impl PublishTransport for InProcess {
    fn connect(&self) -> BoxFuture<Result<PublishConnection, PublishError>> {
        if let Some(e) = self.refuse.lock().clone() {
            return Box::pin(async move { Err(e) });
        }
        let (batches_tx, batches) = mpsc::channel(64);
        let (acks, acks_rx) = mpsc::channel(64);
        let _ = self.opened.send(Stream { batches, acks });
        Box::pin(async move {
            Ok(PublishConnection {
                batches: batches_tx,
                acks: Box::pin(ReceiverStream::new(acks_rx)),
            })
        })
    }
}

fn config() -> PublisherConfig {
    PublisherConfig {
        flush_interval_ms: 5,
        max_batch: 2,
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        breaker_open_ms: 20,
        breaker_open_max_ms: 50,
        ..PublisherConfig::default()
    }
}

/// Journals verdicts `t{ids}` (as the account actors do) and waits until
/// they are written.
async fn push(journals: &Journals, ids: std::ops::Range<u32>) {
    let len = ids.len();
    let batch = BatchReply::new(len, |_| {});
    let shard = &journals.shards()[0];
    let target = shard.committed() + len as u64;
    for (i, id) in ids.enumerate() {
        let txn = Transaction {
            transaction_id: format!("t{id}"),
            ..Transaction::default()
        };
        let verdict = Verdict {
            transaction_id: txn.transaction_id.clone(),
            ..Verdict::default()
        };
        shard.commit(&txn, verdict, None, batch.slot(i, &txn.transaction_id));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shard.committed() < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "journal written in time"
        );
        tokio::task::yield_now().await;
    }
}

struct Rig {
    journals: Journals,
    stats: Arc<super::PublisherStats>,
    opened: mpsc::UnboundedReceiver<Stream>,
    transport: Arc<InProcess>,
}

fn start(config: PublisherConfig) -> Rig {
    use actix::Actor;
    let (opened_tx, opened) = mpsc::unbounded_channel();
    let transport = Arc::new(InProcess {
        opened: opened_tx,
        refuse: parking_lot::Mutex::new(None),
    });
    let (journals, _) = Journals::open(
        None,
        &JournalConfig::default(),
        &WindowConfig::default(),
        1,
        &JournalHistograms::default(),
    )
    .expect("memory journal");
    let publisher =
        DashboardPublisher::new("p-1".into(), config, journals.clone(), transport.clone());
    let stats = publisher.stats();
    publisher.start();
    Rig {
        journals,
        stats,
        opened,
        transport,
    }
}

async fn next<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("in time")
        .expect("open")
}

async fn opened(rig: &mut Rig) -> Stream {
    tokio::time::timeout(Duration::from_secs(5), rig.opened.recv())
        .await
        .expect("a stream is opened in time")
        .expect("transport alive")
}

fn ids(batch: &VerdictBatch) -> Vec<&str> {
    batch
        .verdicts
        .iter()
        .map(|v| v.transaction_id.as_str())
        .collect()
}

fn ack(batch: &VerdictBatch) -> Result<Ack, PublishError> {
    Ok(Ack {
        publisher_id: "p-1".into(),
        sequence: batch.sequence,
        duplicate: false,
        journal: batch.journal,
    })
}

#[actix_rt::test]
async fn batches_are_runs_of_positions_and_a_broken_stream_resends_them_in_order() {
    let mut rig = start(config());
    push(&rig.journals, 0..6).await;
    let mut stream = opened(&mut rig).await;
    let mut sent: Vec<VerdictBatch> = Vec::new();
    while sent.last().is_none_or(|b| b.sequence < 6) {
        sent.push(next(&mut stream.batches).await);
    }
    let mut expect = 1;
    for b in &sent {
        assert_eq!(b.first_sequence, expect, "contiguous positions from 1");
        assert_eq!(b.verdicts.len() as u64, b.sequence - b.first_sequence + 1);
        assert!(b.verdicts.len() <= 2, "max_batch");
        assert!(b.publisher_id == "p-1" && b.status.is_some());
        expect = b.sequence + 1;
    }
    assert_eq!(ids(&sent[0])[0], "t0", "journal order");

    // Every batch but the last is acknowledged.
    for b in &sent[..sent.len() - 1] {
        stream.acks.send(ack(b)).await.expect("ack");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    assert!(
        !rig.stats.wait_drained(&rig.journals, deadline).await,
        "the last batch is still unacknowledged"
    );
    let last = sent.last().expect("batches").clone();
    assert_eq!(
        rig.stats.view(&rig.journals).unacked,
        last.verdicts.len() as u64
    );
    assert_eq!(rig.journals.shards()[0].acked(), last.first_sequence - 1);

    // The stream breaks: the next one gets the last batch again, same
    // positions, then the new verdicts after it.
    drop(stream);
    push(&rig.journals, 6..8).await;
    let mut stream = opened(&mut rig).await;
    let resent = next(&mut stream.batches).await;
    assert_eq!(
        (resent.first_sequence, resent.sequence),
        (last.first_sequence, last.sequence)
    );
    assert_eq!(ids(&resent), ids(&last));
    let mut fresh = vec![next(&mut stream.batches).await];
    while fresh.last().is_some_and(|b| b.sequence < 8) {
        fresh.push(next(&mut stream.batches).await);
    }
    assert_eq!(fresh[0].first_sequence, 7);
    stream.acks.send(ack(&resent)).await.expect("ack");
    for b in &fresh {
        stream.acks.send(ack(b)).await.expect("ack");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(rig.stats.wait_drained(&rig.journals, deadline).await);
    let view = rig.stats.view(&rig.journals);
    assert_eq!((view.delivered, view.unacked), (8, 0));
    assert!(view.retries_total >= 1);
}

#[actix_rt::test]
async fn an_ack_timeout_counts_as_a_broken_stream() {
    let mut rig = start(PublisherConfig {
        ack_timeout_ms: 100,
        ..config()
    });
    push(&rig.journals, 0..1).await;
    let mut stream = opened(&mut rig).await;
    assert_eq!(next(&mut stream.batches).await.sequence, 1);
    // Never acknowledged: after the timeout the batch goes out again on a
    // new stream.
    let mut again = opened(&mut rig).await;
    assert_eq!(next(&mut again.batches).await.sequence, 1);
    drop(stream);
}

#[actix_rt::test]
async fn a_refusal_is_reported_and_cleared_when_the_dashboard_admits_the_publisher_again() {
    let mut rig = start(config());
    *rig.transport.refuse.lock() = Some(PublishError::Refused("PERMISSION_DENIED".into()));
    push(&rig.journals, 0..2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !rig.stats.view(&rig.journals).refused {
        assert!(tokio::time::Instant::now() < deadline, "refusal reported");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Refusals wait the breaker's longest pause (50 ms here), not the
    // backoff's first step (5 ms).
    tokio::time::sleep(Duration::from_millis(120)).await;
    let refusals = rig.stats.view(&rig.journals).refusals_total;
    assert!((1..=3).contains(&refusals), "{refusals} attempts in 120 ms");

    *rig.transport.refuse.lock() = None;
    let mut stream = opened(&mut rig).await;
    let batch = next(&mut stream.batches).await;
    assert_eq!((batch.first_sequence, batch.sequence), (1, 2));
    stream.acks.send(ack(&batch)).await.expect("ack");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(rig.stats.wait_drained(&rig.journals, deadline).await);
    assert!(!rig.stats.view(&rig.journals).refused, "admitted again");
}

#[actix_rt::test]
async fn an_open_breaker_keeps_a_status_only_link_and_probes_on_it() {
    // Open longer than a status interval (1 s): a status link in between.
    let mut rig = start(PublisherConfig {
        breaker_open_ms: 1_600,
        breaker_open_max_ms: 1_600,
        ..config()
    });
    push(&rig.journals, 0..2).await;
    // Three broken streams (the threshold) open the breaker.
    for _ in 0..3 {
        let mut stream = opened(&mut rig).await;
        assert!(next(&mut stream.batches).await.sequence > 0);
        drop(stream);
    }
    // While open: a link for the status only, saying OPEN, and no batch.
    let mut stream = opened(&mut rig).await;
    let opened_at = tokio::time::Instant::now();
    let first = next(&mut stream.batches).await;
    assert_eq!(
        (first.sequence, first.verdicts.len()),
        (0, 0),
        "a status report"
    );
    let open = txmesh_proto::v1::BreakerState::Open as i32;
    assert_eq!(first.status.as_ref().map(|s| s.breaker), Some(open));
    // Once the pause is over, the probe goes out on the same link.
    let probe = loop {
        let b = next(&mut stream.batches).await;
        if b.sequence > 0 {
            break b;
        }
    };
    assert!(
        opened_at.elapsed() >= Duration::from_millis(300),
        "the pause ran on"
    );
    let half_open = txmesh_proto::v1::BreakerState::HalfOpen as i32;
    assert_eq!(probe.status.as_ref().map(|s| s.breaker), Some(half_open));
    stream.acks.send(ack(&probe)).await.expect("ack");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(rig.stats.wait_drained(&rig.journals, deadline).await);
    // The state is published with the next tick.
    while rig.stats.view(&rig.journals).breaker != super::BreakerState::Closed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed after the probe"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
