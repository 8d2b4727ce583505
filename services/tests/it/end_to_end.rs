//! txgen -> ingress -> dashboard over real mTLS on 127.0.0.1: every
//! transaction answered once, patterns detected, and a WebSocket client
//! holding the operator certificate sees the same totals.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite;
use txmesh_proto::v1::{
    ingress_client::IngressClient, txn_result::Outcome, Reason, ScreenRequest, VerdictStatus,
};

#[actix_rt::test]
async fn screened_end_to_end_with_every_pattern_detected_and_totals_seen_in_the_browser_feed() {
    let dir = TempDir::new("e2e");
    let mut config = test_config(&dir.0);
    config.txgen.count = 6_000;
    config.txgen.rate = 0;
    let (dash, ing, _machine) = start_system(&mut config).await;

    let report = run_txgen(&config).await;
    assert_eq!(report.sent, 6_000);
    assert_eq!(
        report.answered, report.sent,
        "every transaction answered once: {report:?}"
    );
    assert_eq!(report.errors, 0, "{:?}", report.by_error);
    for (pattern, count) in &report.injected {
        if *pattern == "amount_anomaly" || *pattern == "id_conflict" {
            assert_eq!(count.detected, count.sent, "{pattern}");
            continue;
        }
        assert!(count.sent > 0, "{pattern} was injected");
        assert_eq!(count.detected, count.sent, "{pattern} detected every time");
    }
    assert_eq!(report.clean.flagged, 0, "no clean transaction flagged");

    assert!(
        ing.wait_drained(Duration::from_secs(20)).await,
        "publisher delivered everything"
    );
    let answered = ing.counters.verdicts();
    assert_eq!(answered, report.answered);
    let totals = dash.snapshot().await.expect("snapshot").totals;
    assert_eq!(totals.verdicts, answered, "dashboard equals ingress");

    // The browser feed: a WebSocket over mTLS as the operator.
    let tls = https_as(&config, "operator", dash.https_addr)
        .await
        .expect("operator connects");
    let (mut ws, response) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(response.status(), 101);
    // Who the page is connected as, then the snapshot, then updates with
    // only what changed, numbered from the snapshot's.
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    assert!(
        hello["spiffe_id"]
            .as_str()
            .is_some_and(|id| id.ends_with("/operator")),
        "{hello}"
    );
    assert!(hello["cert_not_after_unix"].as_i64().is_some());
    let snapshot = next_json(&mut ws).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["totals"]["verdicts"].as_u64(), Some(answered));
    let seq = snapshot["seq"].as_u64().expect("numbered");
    let update = loop {
        let update = next_json(&mut ws).await;
        if update["seq"].as_u64() > Some(seq) {
            break update;
        }
    };
    assert_eq!(update["type"], "update");
    assert_eq!(update["seq"].as_u64(), Some(seq + 1), "no update skipped");
    assert_eq!(update["totals"]["verdicts"].as_u64(), Some(answered));
    // A browser that missed an update asks for a snapshot again.
    ws.send(tungstenite::Message::text("resync"))
        .await
        .expect("sent");
    let again = loop {
        let message = next_json(&mut ws).await;
        if message["type"] == "snapshot" {
            break message;
        }
    };
    assert_eq!(again["totals"]["verdicts"].as_u64(), Some(answered));

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

#[actix_rt::test]
async fn malformed_transactions_are_answered_and_the_stream_goes_on_and_replays_return_the_original(
) {
    let dir = TempDir::new("malformed");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;
    let channel = channel_as(&config, "txgen", "ingress", ing.local_addr);
    let mut client = IngressClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = client
        .screen(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("Screen opens")
        .into_inner();

    let original = txn("t-1", "acc-1", 2_000_000);
    let mut bad_currency = txn("t-2", "acc-1", 100);
    bad_currency.currency = "EURO".into();
    tx.send(ScreenRequest {
        transactions: vec![original.clone(), bad_currency, txn("", "acc-1", -5)],
        request_id: 1,
        ..ScreenRequest::default()
    })
    .await
    .expect("send");
    let first = responses.next().await.expect("response").expect("ok");
    assert_eq!(first.results.len(), 3);
    assert_eq!(first.request_id, 1, "the response echoes its request");
    let verdict = |i: usize, r: &txmesh_proto::v1::ScreenResponse| match &r.results[i].outcome {
        Some(Outcome::Verdict(v)) => v.clone(),
        other => panic!("expected a verdict, got {other:?}"),
    };
    assert_eq!(verdict(0, &first).reasons, vec![Reason::HighAmount as i32]);
    assert_eq!(verdict(1, &first).status(), VerdictStatus::Rejected);
    assert_eq!(
        verdict(1, &first).reasons,
        vec![Reason::InvalidCurrency as i32]
    );
    assert_eq!(
        verdict(2, &first).reasons,
        vec![
            Reason::InvalidTransactionId as i32,
            Reason::InvalidAmount as i32
        ]
    );

    // The stream is still open: a replay gets the original verdict back.
    tx.send(ScreenRequest {
        transactions: vec![original.clone()],
        request_id: 2,
        ..ScreenRequest::default()
    })
    .await
    .expect("send");
    let second = responses.next().await.expect("response").expect("ok");
    let replay = verdict(0, &second);
    assert!(replay.replayed);
    assert_eq!(replay.status(), VerdictStatus::Flagged);
    assert_eq!(replay.reasons, vec![Reason::HighAmount as i32]);

    // ScreenOne, for simple clients.
    let one = client
        .screen_one(txn("t-9", "acc-2", 100))
        .await
        .expect("ScreenOne")
        .into_inner();
    assert!(
        matches!(one.outcome, Some(Outcome::Verdict(ref v)) if v.status() == VerdictStatus::Approved)
    );

    drop(tx);
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

/// The next WebSocket message, as JSON.
async fn next_json<S>(ws: &mut S) -> serde_json::Value
where
    S: Stream<Item = Result<tungstenite::Message, tungstenite::Error>> + Unpin,
{
    let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
        .expect("a message")
        .expect("not an error");
    serde_json::from_str(message.to_text().expect("text")).expect("JSON")
}
