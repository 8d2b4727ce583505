//! One HTTP/1.1 client for the callers that read a txmesh HTTPS listener
//! over a TLS stream they opened themselves (with the identity they chose):
//! the chaos driver's `/metrics` scrapes, `txmesh audit`'s authorization
//! calls and the tests. hyper does the framing (lengths, chunking, a body
//! cut across reads); raw probes (plaintext, prefaces) stay raw bytes.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A complete response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as text (lossy: `/metrics` and JSON are UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no complete response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP exchange: {0}")]
    Exchange(#[source] hyper::Error),
}

/// `GET path` on `stream` with `Host: host` and `headers`; one request per
/// connection (the connection closes after it).
///
/// # Errors
/// When the exchange fails or the response is not complete HTTP/1.1.
pub async fn get<S>(
    stream: S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::Handshake)?;
    // Drives the connection until the response is read; ends with it.
    let span = tracing::debug_span!("http1.client", %host, %path);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _ = connection.await;
        },
        span,
    ));
    let mut request = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await
        .map_err(HttpError::Exchange)?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(HttpError::Exchange)?
        .to_bytes();
    Ok(HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::get;

    /// Answers one request on the far end of `duplex` with `raw`.
    async fn answer(raw: &'static [u8]) -> super::HttpResponse {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server.write_all(raw).await;
        });
        get(client, "txmesh", "/metrics", &[])
            .await
            .expect("response")
    }

    #[tokio::test]
    async fn a_character_split_across_chunks_stays_whole() {
        // "é" is two bytes, one in each chunk.
        let chunked = answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\na\xc3\r\n2\r\n\xa9b\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(chunked.text(), "a\u{e9}b");
        let plain = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nx\xc3\xa9").await;
        assert_eq!(plain.text(), "x\u{e9}");
        let refused = answer(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(refused.status, http::StatusCode::FORBIDDEN);
    }
}
