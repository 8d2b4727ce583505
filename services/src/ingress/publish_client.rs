//! The publisher's transport: a tonic `Dashboard.Publish` stream over mTLS.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use txmesh_actors::publisher::{BoxFuture, PublishConnection, PublishError, PublishTransport};
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1::dashboard_client::DashboardClient;

use crate::{
    error::ServiceError,
    net::{mtls_channel, HostPort},
};

/// Batches the stream buffers before the publisher must wait.
const STREAM_BUFFER: usize = 16;

/// Opening a stream that takes longer than this counts as a failure (a
/// half-open probe must never hang).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct GrpcPublishTransport {
    channel: Channel,
    target: HostPort,
}

impl GrpcPublishTransport {
    pub(crate) fn new(
        target: HostPort,
        store: &CertStore,
        dashboard: &SpiffeId,
    ) -> Result<Self, ServiceError> {
        Ok(Self {
            channel: mtls_channel(target.clone(), store, dashboard)?,
            target,
        })
    }
}

impl PublishTransport for GrpcPublishTransport {
    fn connect(&self) -> BoxFuture<Result<PublishConnection, PublishError>> {
        let mut client = DashboardClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let target = self.target.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
            let call = client.publish(ReceiverStream::new(rx));
            let response = tokio::time::timeout(CONNECT_TIMEOUT, call)
                .await
                .map_err(|_| {
                    PublishError::Unavailable(format!(
                        "{target}: Publish did not open within {CONNECT_TIMEOUT:?}"
                    ))
                })?
                .map_err(|status| classify(&target, &status))?;
            let acks = response
                .into_inner()
                .map(move |r| r.map_err(|status| classify(&target, &status)));
            Ok(PublishConnection {
                batches: tx,
                acks: Box::pin(acks),
            })
        })
    }
}

/// A refusal of this identity is permanent; anything else is an outage.
fn classify(target: &HostPort, status: &tonic::Status) -> PublishError {
    let why = format!("{target}: {}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => PublishError::Refused(why),
        _ => PublishError::Unavailable(why),
    }
}
