//! The audit's low-level probes: raw TCP exchanges and TLS connections made
//! with client configs that deliberately break the rules (no certificate,
//! forged certificates, TLS 1.2, foreign ALPN, resumption). The probes do
//! not judge the server's certificate (a separate check does), so their
//! verifier accepts any server.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

/// The HTTP/2 connection preface.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A minimal HTTP/1.1 request.
pub(crate) const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: audit\r\nConnection: close\r\n\r\n";

pub(crate) const IO_WAIT: Duration = Duration::from_secs(3);

/// A client certificate chain and key, PEM.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// How a probe's TLS client behaves.
pub(crate) struct ClientSpec<'a> {
    pub(crate) identity: Option<&'a Identity>,
    pub(crate) tls12_only: bool,
    pub(crate) alpn: Vec<Vec<u8>>,
    pub(crate) resumption: bool,
}

/// Accepts any server certificate: probes test the server's refusals, not
/// its identity.
#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Why a probe could not make its attempt (as opposed to what the server
/// answered, which is the evidence).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("the probe's own certificate: {0}")]
    Credentials(#[from] rustls::pki_types::pem::Error),
    #[error("the probe's TLS config: {0}")]
    Config(#[from] rustls::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("handshake refused: {0}")]
    Handshake(std::io::Error),
}

/// A client config as `spec` says.
pub(crate) fn client_config(spec: &ClientSpec<'_>) -> Result<Arc<ClientConfig>, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if spec.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(
            provider.signature_verification_algorithms,
        )));
    let mut config = match spec.identity {
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = spec.alpn.clone();
    if !spec.resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Connects and completes a TLS handshake (from the client's side).
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, ProbeError> {
    let tcp = connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(IO_WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| ProbeError::HandshakeTimeout)?
        .map_err(ProbeError::Handshake)
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    tokio::time::timeout(IO_WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| ProbeError::ConnectTimeout)?
        .map_err(ProbeError::Connect)
}

/// Writes `bytes` and reads what comes back within the wait (empty on
/// EOF, reset or silence), with a description of how it ended.
pub(crate) async fn exchange<S>(stream: &mut S, bytes: &[u8]) -> (Vec<u8>, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = stream.write_all(bytes).await {
        return (Vec::new(), format!("write failed: {e}"));
    }
    let _ = stream.flush().await;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(IO_WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) => (Vec::new(), "closed by the server".into()),
        Ok(Ok(n)) => {
            buf.truncate(n);
            (buf, format!("{n} bytes back"))
        }
        Ok(Err(e)) => (Vec::new(), format!("refused: {e}")),
        Err(_) => (Vec::new(), "no answer".into()),
    }
}

/// Plain TCP: sends `bytes`, returns what came back and how it ended.
pub(crate) async fn raw(addr: SocketAddr, bytes: &[u8]) -> Result<(Vec<u8>, String), ProbeError> {
    let mut tcp = connect(addr).await?;
    let (back, how) = exchange(&mut tcp, bytes).await;
    let how = if !back.is_empty() && !is_application_data(&back) {
        format!("only a TLS alert ({} bytes)", back.len())
    } else {
        how
    };
    Ok((back, how))
}

/// Whether bytes a plaintext probe got back are application data. A TLS
/// alert record (content type 21) is the TLS layer refusing, not data.
pub(crate) fn is_application_data(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes[0] != 0x15
}

/// TLS with `spec`, then `opener`: whether the server refused (handshake
/// failure or nothing but a close/alert afterwards), with evidence.
pub(crate) async fn refused(
    addr: SocketAddr,
    spec: &ClientSpec<'_>,
    opener: &[u8],
) -> (bool, String) {
    let config = match client_config(spec) {
        Ok(c) => c,
        Err(e) => return (false, format!("probe could not be built: {e}")),
    };
    match tls_connect(addr, config).await {
        Err(e) => (true, e.to_string()),
        Ok(mut conn) => {
            let (bytes, how) = exchange(&mut conn, opener).await;
            (bytes.is_empty(), how)
        }
    }
}

/// How long the server keeps a TCP connection that never starts a
/// handshake, up to `limit`.
pub(crate) async fn idle_close(
    addr: SocketAddr,
    limit: Duration,
) -> Result<Option<Duration>, ProbeError> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
        Ok(_) => Ok(Some(start.elapsed())),
        Err(_) => Ok(None),
    }
}
