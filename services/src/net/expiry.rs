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
    _slot: Option<super::ConnectionSlot>,
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
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.expiry.as_mut().poll(cx).is_ready()
    }
}

impl ExpiringTls {
    /// Wraps an accepted connection until its client certificate expires;
    /// it holds `slot` until it closes.
    pub fn accepted(inner: TlsStream<TcpStream>, slot: super::ConnectionSlot) -> Self {
        let leaf = inner
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned();
        let mut accepted = Self::new(inner, leaf.as_ref());
        accepted._slot = Some(slot);
        accepted
    }
}

/// The time left until Unix second `unix` (zero if past).
pub fn until_unix(unix: i64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(u64::try_from(unix).unwrap_or(0)).saturating_sub(now)
}

fn expired_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "peer certificate expired")
}

impl<S: AsyncRead + Unpin> AsyncRead for Expiring<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
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
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
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
