//! A TLS connection that ends when its peer's certificate expires: every
//! connection is verified at its handshake, and a long-lived one must not
//! outlive the certificate it was verified with. Used on both sides: the
//! gRPC listeners wrap what they accept, the clients what they connect.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// A stream that fails reads and writes from its peer certificate's
/// notAfter on, which makes the HTTP/2 side close it.
pub struct Expiring<S> {
    inner: S,
    expiry: Pin<Box<Sleep>>,
    /// The connection's place under its identity's limit (server side).
    /// Held for its `Drop`, which gives the place back on close.
    _slot: Option<super::ConnectionSlot>,
    /// Ends the connection once it has had no stream for the idle timeout
    /// (server side).
    idle: Option<super::idle::IdleWatch>,
}

/// An accepted server-side connection that ends at its client's expiry.
pub type ExpiringTls = Expiring<TlsStream<TcpStream>>;

impl<S> Expiring<S> {
    /// Wraps `inner`, whose peer leaf is `peer` (a connection without one
    /// ends at once).
    pub fn new(inner: S, peer: Option<&CertificateDer<'_>>) -> Self {
        let left = peer
            .and_then(|leaf| txmesh_certs::not_after_unix(leaf).ok())
            .map_or(Duration::ZERO, until_unix);
        Self {
            inner,
            expiry: Box::pin(tokio::time::sleep_until(Instant::now() + left)),
            _slot: None,
            idle: None,
        }
    }

    /// Why the connection must end now, if it must.
    fn ended(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.expiry.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "peer certificate expired",
            ));
        }
        if self.idle.as_mut().is_some_and(|idle| idle.expired(cx)) {
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "no stream for connections.idle_timeout_ms: idle connection closed",
            ));
        }
        None
    }
}

impl ExpiringTls {
    /// Wraps an accepted connection until its client certificate expires
    /// or `idle` says it has had no stream for too long; it holds `slot`
    /// until it closes.
    pub fn accepted(
        inner: TlsStream<TcpStream>,
        slot: super::ConnectionSlot,
        idle: super::idle::IdleWatch,
    ) -> Self {
        let leaf = inner
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned();
        Self {
            _slot: Some(slot),
            idle: Some(idle),
            ..Self::new(inner, leaf.as_ref())
        }
    }
}

/// The time left until Unix second `unix` (zero if past).
pub fn until_unix(unix: i64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(u64::try_from(unix).unwrap_or(0)).saturating_sub(now)
}

impl<S: AsyncRead + Unpin> AsyncRead for Expiring<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.ended(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Expiring<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.ended(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for ExpiringTls {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
