//! Clients of the old reconciliation service: generated from its contract
//! (`proto/simetrik/reconciliation.proto`), they reach the ingress with mTLS
//! credentials and nothing else changed, and get the old answers.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use txmesh_proto::simetrik::{
    reconciliation_response::Result as Answer,
    reconciliation_service_client::ReconciliationServiceClient, FraudReason, MatchStatus,
    ReconciliationResponse, Transaction,
};

use crate::support::*;

fn old(id: &str, amount: f64, currency: &str, minutes_ago: i64) -> Transaction {
    let at = txmesh_actors::clock::system_unix_ms() / 1000 - minutes_ago * 60;
    Transaction {
        transaction_id: id.into(),
        amount,
        currency: currency.into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: at,
            nanos: 0,
        }),
    }
}

/// What the old client reads for one transaction: the echoed id, and the
/// answer as `match:STATUS` or `fraud:REASON`.
fn read(response: &ReconciliationResponse) -> (String, String) {
    match &response.result {
        Some(Answer::Match(m)) => (
            m.transaction
                .as_ref()
                .expect("echoed")
                .transaction_id
                .clone(),
            format!("match:{}", m.status().as_str_name()),
        ),
        Some(Answer::Fraud(f)) => (
            f.transaction
                .as_ref()
                .expect("echoed")
                .transaction_id
                .clone(),
            format!("fraud:{}", f.reason().as_str_name()),
        ),
        None => panic!("an empty response: {response:?}"),
    }
}

/// One old-style stream: send, then read its answer, one at a time.
struct OldStream {
    tx: mpsc::Sender<Transaction>,
    answers: tonic::Streaming<ReconciliationResponse>,
}

impl OldStream {
    async fn open(
        config: &txmesh::config::TxmeshConfig,
        identity: &str,
    ) -> Result<Self, tonic::Status> {
        let addr = config.txgen.target.to_string().parse().expect("an address");
        let mut client =
            ReconciliationServiceClient::new(channel_as(config, identity, "ingress", addr));
        let (tx, rx) = mpsc::channel(8);
        let answers = client
            .reconcile_and_detect(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, answers })
    }

    async fn ask(&mut self, t: Transaction) -> (String, String) {
        self.tx.send(t).await.expect("stream open");
        let answer = tokio::time::timeout(Duration::from_secs(10), self.answers.message())
            .await
            .expect("answered within 10 s")
            .expect("no stream error")
            .expect("the stream goes on");
        read(&answer)
    }
}

#[actix_rt::test]
async fn an_old_client_with_credentials_gets_the_old_answers_and_the_dashboard_counts_them() {
    let dir = TempDir::new("legacy");
    let mut config = test_config(&dir.0);
    let (dash, _ing, _machine) = start_system(&mut config).await;
    let mut stream = OldStream::open(&config, "legacy-client")
        .await
        .expect("allowed");
    let cases = [
        (old("L-1", 12.5, "USD", 50), "match:MATCHED"),
        (old("L-2", 20_000.0, "USD", 40), "fraud:HIGH_AMOUNT"),
        // The same transaction again: the old server's DUPLICATE.
        (old("L-1", 12.5, "USD", 50), "fraud:DUPLICATE"),
        (old("L-3", f64::NAN, "USD", 30), "match:UNKNOWN"),
        (old("L-4", -5.0, "EUR", 30), "match:UNKNOWN"),
        (old("L-5", 12.345, "USD", 30), "match:UNKNOWN"),
        (old("L-6", 10.0, "XYZ", 30), "match:UNKNOWN"),
        // The stream goes on after every refusal.
        (old("L-7", 99.99, "USD", 20), "match:MATCHED"),
        (old("L-8", 1_500.0, "JPY", 10), "match:MATCHED"),
    ];
    for (t, expected) in cases.clone() {
        let id = t.transaction_id.clone();
        assert_eq!(
            stream.ask(t).await,
            (id.clone(), expected.to_owned()),
            "{id}"
        );
    }
    // Every one went through the journal to the dashboard, told apart from
    // native traffic.
    let n = cases.len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let totals = loop {
        let totals = dash.snapshot().await.expect("snapshot").totals;
        if totals.verdicts >= n || tokio::time::Instant::now() >= deadline {
            break totals;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((totals.verdicts, totals.legacy), (n, n), "{totals:?}");
    assert_eq!(totals.replayed, 1, "{totals:?}");
    assert_eq!(totals.rejected, 4, "{totals:?}");
    assert_eq!(FraudReason::Duplicate as i32, 2);
    assert_eq!(MatchStatus::Matched as i32, 1);
}

#[actix_rt::test]
async fn without_a_certificate_or_as_another_identity_the_old_service_is_refused() {
    let dir = TempDir::new("legacy-denied");
    let mut config = test_config(&dir.0);
    let (_dash, ing, _machine) = start_system(&mut config).await;
    // The old clients' plaintext channel gets no answer at all.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", ing.local_addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5));
    match plain.connect().await {
        Err(_) => {}
        Ok(channel) => {
            let mut client = ReconciliationServiceClient::new(channel);
            let (_tx, rx) = mpsc::channel::<Transaction>(1);
            let refused = client.reconcile_and_detect(ReceiverStream::new(rx)).await;
            assert!(refused.is_err(), "plaintext must not be served");
        }
    }
    // TLS without a client certificate: refused after the handshake, so
    // the refusal shows on the first read.
    let tls = no_client_cert_config(&config, b"h2");
    let tcp = tokio::net::TcpStream::connect(ing.local_addr)
        .await
        .expect("TCP connects");
    let outcome = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::IpAddress(ing.local_addr.ip().into()),
            tcp,
        )
        .await;
    if let Ok(stream) = outcome {
        let status = http_get(stream, "/simetrik.ReconciliationService/ReconcileAndDetect").await;
        assert_eq!(status, None, "no certificate must get no response");
    }
    // A valid certificate of another identity is denied by authz.
    let denied = OldStream::open(&config, "txgen")
        .await
        .err()
        .expect("denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
}

#[actix_rt::test]
async fn an_endless_stream_with_a_transaction_every_few_seconds_stays_answered() {
    let dir = TempDir::new("legacy-slow");
    let mut config = test_config(&dir.0);
    let (_dash, _ing, _machine) = start_system(&mut config).await;
    let mut stream = OldStream::open(&config, "legacy-client")
        .await
        .expect("allowed");
    for i in 0..4 {
        let id = format!("S-{i}");
        let answer = stream
            .ask(old(&id, 10.0 + f64::from(i), "GBP", 60 - i64::from(i)))
            .await;
        assert_eq!(answer, (id, "match:MATCHED".to_owned()));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[actix_rt::test]
async fn reflection_lists_the_old_service_beside_the_native_one() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let dir = TempDir::new("legacy-reflect");
    let mut config = test_config(&dir.0);
    let (_dash, ing, _machine) = start_system(&mut config).await;
    let mut client =
        ServerReflectionClient::new(channel_as(&config, "operator", "ingress", ing.local_addr));
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("no error")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for name in ["txmesh.v1.Ingress", "simetrik.ReconciliationService"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
}
