//! The publisher's delivery contract against an in-process dashboard end
//! (the same `PublishTransport` seam the gRPC client plugs into): batches
//! carry consecutive sequence numbers; an ack covers every batch up to its
//! sequence; a broken stream resends every unacknowledged batch, in order,
//! with its original sequence (the dashboard drops what it already
//! applied); nothing is drained until everything is acknowledged.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use txmesh_proto::v1::{Ack, Verdict, VerdictBatch};

use super::{
    BoxFuture, DashboardPublisher, Outbox, PublishConnection, PublishError, PublishTransport,
};
use crate::config::PublisherConfig;

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

fn verdicts(ids: std::ops::Range<u32>) -> Vec<Verdict> {
    ids.map(|i| Verdict {
        transaction_id: format!("t{i}"),
        ..Verdict::default()
    })
    .collect()
}

struct Rig {
    outbox: Outbox,
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
    let outbox = Outbox::new(1_000);
    let publisher =
        DashboardPublisher::new("p-1".into(), config, outbox.clone(), transport.clone());
    let stats = publisher.stats();
    publisher.start();
    Rig {
        outbox,
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

fn ack(sequence: u64) -> Result<Ack, PublishError> {
    Ok(Ack {
        publisher_id: "p-1".into(),
        sequence,
        duplicate: false,
    })
}

#[actix_rt::test]
async fn batches_are_numbered_acks_are_cumulative_and_a_broken_stream_resends_in_order() {
    let mut rig = start(config());
    rig.outbox.push(verdicts(0..6));
    let mut stream = opened(&mut rig).await;
    let sent: Vec<VerdictBatch> = vec![
        next(&mut stream.batches).await,
        next(&mut stream.batches).await,
        next(&mut stream.batches).await,
    ];
    assert_eq!(
        sent.iter().map(|b| b.sequence).collect::<Vec<_>>(),
        [1, 2, 3],
        "consecutive sequence numbers from 1"
    );
    assert_eq!(ids(&sent[0]), ["t0", "t1"], "outbox order, max_batch each");
    assert!(sent
        .iter()
        .all(|b| b.publisher_id == "p-1" && b.status.is_some()));

    // One ack covers batches 1 and 2.
    stream.acks.send(ack(2)).await.expect("ack");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    assert!(
        !rig.stats.wait_drained(&rig.outbox, deadline).await,
        "batch 3 is still unacknowledged"
    );
    assert_eq!(rig.stats.view(&rig.outbox).unacked, 2);
    assert_eq!(rig.stats.view(&rig.outbox).delivered, 4);

    // The stream breaks: the next one gets batch 3 again, same number,
    // then the new verdicts after it.
    drop(stream);
    rig.outbox.push(verdicts(6..8));
    let mut stream = opened(&mut rig).await;
    let resent = next(&mut stream.batches).await;
    assert_eq!(resent.sequence, 3, "the unacknowledged batch, same number");
    assert_eq!(ids(&resent), ["t4", "t5"]);
    let fresh = next(&mut stream.batches).await;
    assert_eq!((fresh.sequence, ids(&fresh)), (4, vec!["t6", "t7"]));

    stream.acks.send(ack(4)).await.expect("ack");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(rig.stats.wait_drained(&rig.outbox, deadline).await);
    let view = rig.stats.view(&rig.outbox);
    assert_eq!((view.delivered, view.unacked), (8, 0));
    assert!(view.retries_total >= 1);
}

#[actix_rt::test]
async fn an_ack_timeout_counts_as_a_broken_stream() {
    let mut rig = start(PublisherConfig {
        ack_timeout_ms: 100,
        ..config()
    });
    rig.outbox.push(verdicts(0..2));
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
    rig.outbox.push(verdicts(0..2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !rig.stats.view(&rig.outbox).refused {
        assert!(tokio::time::Instant::now() < deadline, "refusal reported");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Refusals wait the breaker's longest pause (50 ms here), not the
    // backoff's first step (5 ms).
    tokio::time::sleep(Duration::from_millis(120)).await;
    let refusals = rig.stats.view(&rig.outbox).refusals_total;
    assert!((1..=3).contains(&refusals), "{refusals} attempts in 120 ms");

    *rig.transport.refuse.lock() = None;
    let mut stream = opened(&mut rig).await;
    let batch = next(&mut stream.batches).await;
    assert_eq!(batch.sequence, 1);
    stream.acks.send(ack(1)).await.expect("ack");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(rig.stats.wait_drained(&rig.outbox, deadline).await);
    assert!(!rig.stats.view(&rig.outbox).refused, "admitted again");
}
