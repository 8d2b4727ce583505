//! Idle gRPC connections end. HTTP/2 keepalive only proves the peer is
//! alive; a connection it keeps alive may still hold resources forever
//! without a single stream. So every accepted connection has an
//! [`Activity`] (streams open, and since when none), kept up to date by the
//! [`TrackStreams`] layer in front of the services, and the connection
//! itself ([`IdleWatch`], in the accepted stream's wrapper) fails its I/O
//! once it has had no stream for the idle timeout, which makes the HTTP/2
//! side close it.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Streams open on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// When the connection becomes idle too long, if nothing opens; `None`
    /// while a stream is open.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        let since = *self.idle_since.lock();
        (self.open.load(Ordering::Acquire) == 0).then_some(since + timeout)
    }
}

/// The live connections of one listener, by peer address.
#[derive(Debug)]
pub struct IdleRegistry {
    timeout: Duration,
    live: Mutex<HashMap<SocketAddr, Arc<Activity>>>,
}

impl IdleRegistry {
    /// Connections with no stream for `timeout` are closed.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            live: Mutex::default(),
        })
    }

    /// Starts watching the connection from `peer`.
    pub fn watch(self: &Arc<Self>, peer: SocketAddr) -> IdleWatch {
        let activity = Arc::new(Activity::new());
        self.live.lock().insert(peer, activity.clone());
        IdleWatch {
            timer: Box::pin(tokio::time::sleep(self.timeout)),
            activity,
            registry: self.clone(),
            peer,
        }
    }

    fn activity(&self, peer: SocketAddr) -> Option<Arc<Activity>> {
        self.live.lock().get(&peer).cloned()
    }

    /// Connections watched now.
    pub fn live(&self) -> usize {
        self.live.lock().len()
    }
}

/// One connection's idle timer; leaves the registry when dropped (with the
/// connection).
#[derive(Debug)]
pub struct IdleWatch {
    activity: Arc<Activity>,
    registry: Arc<IdleRegistry>,
    peer: SocketAddr,
    timer: Pin<Box<Sleep>>,
}

impl IdleWatch {
    /// Whether the connection has been idle for the timeout; otherwise the
    /// timer is set (and registered with `cx`) for when it might be.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.registry.timeout;
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.activity.idle_deadline(timeout) {
                Some(deadline) if deadline <= now => return true,
                Some(deadline) => self.timer.as_mut().reset(deadline),
                // A stream is open: look again a timeout from now.
                None => self.timer.as_mut().reset(now + timeout),
            }
        }
        false
    }
}

impl Drop for IdleWatch {
    fn drop(&mut self) {
        let mut live = self.registry.live.lock();
        if live
            .get(&self.peer)
            .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
        {
            live.remove(&self.peer);
        }
    }
}

/// A stream open on a connection, until dropped.
struct OpenStream(Arc<Activity>);

impl OpenStream {
    fn open(activity: Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        // The idle clock starts when the last stream ends.
        *self.0.idle_since.lock() = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tower layer in front of a gRPC server's services: a request counts as
/// an open stream on its connection until its response body is done.
#[derive(Debug, Clone)]
pub struct TrackStreams<S> {
    inner: S,
    registry: Arc<IdleRegistry>,
}

impl<S> TrackStreams<S> {
    /// The layer for `registry`'s connections.
    pub fn layer(registry: Arc<IdleRegistry>) -> impl tower::Layer<S, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| Self {
            inner,
            registry: registry.clone(),
        })
    }
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for TrackStreams<S>
where
    S: tower::Service<http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let stream = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr())
            .and_then(|peer| self.registry.activity(peer))
            .map(OpenStream::open);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match stream {
                Some(stream) => response.map(|body| {
                    tonic::body::Body::new(Tracked {
                        inner: body,
                        _stream: stream,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its stream counted as open.
struct Tracked {
    inner: tonic::body::Body,
    _stream: OpenStream,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
