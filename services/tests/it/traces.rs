//! OTLP traces across hops: a real OTLP/gRPC receiver (the collector's
//! TraceService from the opentelemetry-proto definitions) started here
//! receives spans from txgen, the ingress and the dashboard that share
//! one trace id per request.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::support::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_stream::wrappers::TcpListenerStream;

/// Span names by trace id, as received.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<BTreeMap<Vec<u8>, BTreeSet<String>>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut traces = self.0.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    traces.entry(span.trace_id).or_default().insert(span.name);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[actix_rt::test]
async fn one_request_is_one_trace_from_txgen_through_the_ingress_to_the_dashboard() {
    // The receiver: plain gRPC on loopback, as a local collector would be.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // Every request sampled, so the check does not depend on luck.
    let telemetry = txmesh::telemetry::init(
        "txmesh-test",
        Some(&endpoint),
        1.0,
        None,
        txmesh::telemetry::LogTarget::Stderr,
    )
    .expect("telemetry");

    let dir = TempDir::new("traces");
    let mut config = test_config(&dir.0);
    config.txgen.rate = 0;
    config.txgen.count = 400;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let report = run_txgen(&config).await;
    assert_eq!(report.answered, report.sent);
    assert!(ing.wait_drained(Duration::from_secs(10)).await);

    let wanted = [
        "txgen.screen_request",
        "ingress.screen",
        "dashboard.apply_verdict",
    ];
    let mut complete = 0;
    for _ in 0..50 {
        telemetry.flush();
        complete = receiver
            .0
            .lock()
            .expect("lock")
            .values()
            .filter(|names| wanted.iter().all(|w| names.contains(*w)))
            .count();
        if complete > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen: BTreeSet<String> = receiver
        .0
        .lock()
        .expect("lock")
        .values()
        .flatten()
        .cloned()
        .collect();
    assert!(
        complete > 0,
        "no trace holds spans of all three hops; span names seen: {seen:?}"
    );
    println!("{complete} traces span txgen, ingress and dashboard");
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
