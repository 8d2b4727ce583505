//! A Screen stream never ends silently: raw gRPC frames, written by hand
//! over real mTLS (not through the generated client, which cannot send a
//! bad message), show that a request that cannot be read ends the stream
//! with a status saying why, after every request before it was answered.

use std::{sync::atomic::Ordering, time::Duration};

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use tower::ServiceExt;
use txmesh_proto::v1::{ScreenRequest, ScreenResponse, Transaction};

/// One gRPC message frame: uncompressed, `len` in the header (which may
/// lie), then `payload`.
fn frame(len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn message(payload: &[u8]) -> Vec<u8> {
    frame(u32::try_from(payload.len()).expect("small"), payload)
}

fn valid(request_id: u64) -> Vec<u8> {
    let request = ScreenRequest {
        transactions: vec![Transaction {
            transaction_id: format!("raw-{request_id}"),
            account_id: "acc-raw".into(),
            amount_minor: 1_000,
            currency: "EUR".into(),
            timestamp_unix_ms: 1_700_000_000_000 + request_id as i64,
            merchant_id: "m-1".into(),
            country: "DE".into(),
            channel: 1,
        }],
        request_id,
        traceparent: String::new(),
    };
    message(&request.encode_to_vec())
}

/// What came back on one Screen call: the responses, then grpc-status and
/// grpc-message from the trailers (or headers, for a trailers-only answer).
struct Answer {
    responses: Vec<ScreenResponse>,
    status: i32,
    message: String,
}

async fn screen_raw(channel: tonic::transport::Channel, body: Vec<u8>) -> Answer {
    let request = http::Request::builder()
        .method("POST")
        .uri("http://127.0.0.1/txmesh.v1.Ingress/Screen")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), channel.oneshot(request))
        .await
        .expect("answered in time")
        .expect("HTTP/2 response");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body");
    let trailers = collected.trailers().cloned().unwrap_or(headers);
    let mut data = collected.to_bytes();
    let mut responses = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let payload = data.slice(5..5 + len);
        responses.push(ScreenResponse::decode(payload).expect("a ScreenResponse"));
        data = data.slice(5 + len..);
    }
    let status = tonic::Status::from_header_map(&trailers).expect("grpc-status");
    Answer {
        responses,
        status: status.code() as i32,
        message: status.message().to_owned(),
    }
}

#[actix_rt::test]
async fn an_unreadable_request_ends_the_stream_with_a_status_after_answering_the_ones_before() {
    let dir = TempDir::new("screen-input");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;
    let channel = channel_as(&config, "txgen", "ingress", ing.local_addr);
    let limit = config.ingress.max_message_bytes as u32;

    // Each bad request sits between a valid one (answered) and another
    // valid one (never read: the status says so).
    let over_long_varint = [&[0x10u8][..], &[0xFF; 11]].concat();
    let cases: [(&str, Vec<u8>, i32); 5] = [
        ("wrong wire type", message(&[0x08, 0x01]), 3),
        ("over-long varint", message(&over_long_varint), 3),
        ("truncated length", message(&[0x0A, 0x64, 0x01]), 3),
        ("frame cut short", frame(100, &[0x10, 0x01]), 3),
        ("over the size limit", frame(limit + 1, &[0x10, 0x01]), 8),
    ];
    for (name, bad, code) in &cases {
        let body = [valid(1), bad.clone(), valid(3)].concat();
        let answer = screen_raw(channel.clone(), body).await;
        assert_eq!(
            answer.status, *code,
            "{name}: ended with status {} ({})",
            answer.status, answer.message
        );
        assert!(
            answer.message.contains("request 2"),
            "{name}: the status names the request: {}",
            answer.message
        );
        let ids: Vec<u64> = answer.responses.iter().map(|r| r.request_id).collect();
        assert_eq!(
            ids,
            vec![1],
            "{name}: the request before the bad one is answered, none after"
        );
        assert_eq!(answer.responses[0].results.len(), 1);
    }
    let oversize = screen_raw(channel.clone(), frame(limit + 1, &[0x10])).await;
    assert!(
        oversize.message.contains(&limit.to_string())
            && oversize.message.contains("ingress.max_message_bytes")
            && oversize.message.contains("actors.shards.max_batch"),
        "the size error names the limits: {}",
        oversize.message
    );

    // Counted by fault.
    let faults = &ing.counters.input_faults;
    assert_eq!(faults[0].load(Ordering::Relaxed), 4, "undecodable");
    assert_eq!(faults[1].load(Ordering::Relaxed), 2, "too large");
    let (_, body) = scrape(&config, "operator", "ingress", ing.metrics_addr).await;
    assert_eq!(
        value(
            &body,
            "txmesh_screen_streams_refused_input_total{fault=\"undecodable\"}"
        ),
        4.0
    );

    // A well-formed stream still ends OK.
    let fine = screen_raw(channel, [valid(1), valid(2)].concat()).await;
    assert_eq!(fine.status, 0, "{}", fine.message);
    assert_eq!(fine.responses.len(), 2);

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
