//! rustls configs for every txmesh listener and client.
//!
//! Server: TLS 1.3 only, a client certificate is required, verified against
//! the trust bundle and then checked against the X.509-SVID profile; no
//! session tickets or session cache, so every connection is verified again;
//! no 0-RTT. Client: presents its own SVID and accepts the server only if it
//! chains to the bundle, is an SVID with serverAuth and carries the expected
//! SPIFFE ID. DNS names play no part: identity is the SPIFFE ID.

use std::{fmt, fs, path::Path, sync::Arc};

use rustls::{
    client::ResolvesClientCert,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        Resumption,
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ClientHello, NoServerSessionStorage, ResolvesServerCert,
    },
    sign::CertifiedKey,
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;

use crate::{
    identity::{check_svid, SpiffeId, SvidUsage},
    CertError, CertStore,
};

/// ALPN protocol id of HTTP/2, which every gRPC listener requires.
pub const ALPN_H2: &[u8] = b"h2";

/// One identity's certificate chain, private key and trust bundle, as read
/// from `DIR/NAME/{tls.crt,tls.key,ca.crt}`.
pub struct TlsMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    id: SpiffeId,
    trust_domain: String,
}

impl TlsMaterial {
    /// Reads and checks the material in `dir`: the leaf must be an SVID of
    /// `trust_domain` and the bundle must hold at least one CA.
    ///
    /// # Errors
    /// Naming the file that is missing or malformed.
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path).map_err(|e| CertError::io(path, e))
        };
        let bytes = [read("tls.crt")?, read("tls.key")?, read("ca.crt")?];
        Self::from_pem(&bytes, dir, trust_domain)
    }

    /// The material from the PEM contents of `[tls.crt, tls.key, ca.crt]`
    /// (`dir` names them in errors).
    ///
    /// # Errors
    /// Naming the file that is malformed.
    pub fn from_pem(
        [crt, key, ca]: &[Vec<u8>; 3],
        dir: &Path,
        trust_domain: &str,
    ) -> Result<Self, CertError> {
        let crt_path = dir.join("tls.crt");
        let chain = parse_certs_pem(crt, &crt_path)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| CertError::BadFile {
            path: dir.join("tls.key"),
            reason: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        let ca_path = dir.join("ca.crt");
        for ca in parse_certs_pem(ca, &ca_path)? {
            roots.add(ca).map_err(|e| CertError::BadFile {
                path: ca_path.clone(),
                reason: e.to_string(),
            })?;
        }
        let leaf = chain.first().ok_or_else(|| CertError::BadFile {
            path: crt_path.clone(),
            reason: "no certificate".into(),
        })?;
        let id =
            check_svid(leaf, trust_domain, SvidUsage::Client).map_err(|e| CertError::BadFile {
                path: crt_path,
                reason: e.to_string(),
            })?;
        Ok(Self {
            chain,
            key,
            roots: Arc::new(roots),
            id,
            trust_domain: trust_domain.to_owned(),
        })
    }

    pub(crate) fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub(crate) fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// This identity's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The trust domain peers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Installs ring as the process-wide rustls provider (idempotent). Call once
/// at start; every config here also names the provider explicitly.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A server config for a txmesh listener offering `alpn` (for example
/// `[ALPN_H2]`, or h2 and http/1.1 for the dashboard's HTTPS listener). It
/// reads `store` on every handshake: reloaded material is used at once.
///
/// # Errors
/// When rustls refuses the config.
pub fn server_config(store: &CertStore, alpn: &[&[u8]]) -> Result<ServerConfig, CertError> {
    server_config_with(store, alpn, None)
}

/// Called with the error each time a client certificate is refused (for
/// listeners whose TLS accept loop is not ours, to count refusals).
pub type RejectHook = Arc<dyn Fn(&rustls::Error) + Send + Sync>;

/// [`server_config`] that reports every refused client certificate to
/// `on_reject`.
///
/// # Errors
/// When rustls refuses the config.
pub fn server_config_with(
    store: &CertStore,
    alpn: &[&[u8]],
    on_reject: Option<RejectHook>,
) -> Result<ServerConfig, CertError> {
    let verifier = Arc::new(SvidClientVerifier {
        store: store.clone(),
        on_reject,
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(StoreResolver(store.clone())));
    // Every connection runs the full handshake and certificate checks.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.max_early_data_size = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config presenting `store`'s identity and accepting only a
/// server whose SVID carries `expected_server`. It reads `store` on every
/// handshake.
///
/// # Errors
/// When rustls refuses the config.
pub fn client_config(
    store: &CertStore,
    expected_server: &SpiffeId,
    alpn: &[&[u8]],
) -> Result<ClientConfig, CertError> {
    let provider = Arc::new(provider());
    let verifier = Arc::new(SvidServerVerifier {
        store: store.clone(),
        algorithms: provider.signature_verification_algorithms,
        expected: expected_server.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(StoreResolver(store.clone())));
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Presents the store's live certificate, as a server or as a client.
#[derive(Debug)]
struct StoreResolver(CertStore);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.live().certified.clone())
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.live().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Chain checks by webpki, then the SVID profile.
/// The live bundle's root hints are not offered (they would have to outlive
/// a reload); clients present their one certificate regardless.
struct SvidClientVerifier {
    store: CertStore,
    on_reject: Option<RejectHook>,
}

impl fmt::Debug for SvidClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidClientVerifier")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .store
            .live()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .and_then(|verified| {
                check_svid(end_entity, self.store.trust_domain(), SvidUsage::Client)
                    .map_err(|e| rustls::Error::InvalidCertificate(svid_error(e)))?;
                Ok(verified)
            });
        if let (Err(e), Some(hook)) = (&verified, &self.on_reject) {
            hook(e);
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.store
            .live()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.store
            .live()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store.live().client_verifier.supported_verify_schemes()
    }
}

/// Chain to the bundle with serverAuth, then the SVID profile and the
/// expected SPIFFE ID. The TLS server name is not compared: identity is the
/// SPIFFE ID.
#[derive(Debug)]
struct SvidServerVerifier {
    store: CertStore,
    algorithms: WebPkiSupportedAlgorithms,
    expected: SpiffeId,
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.store.live().material.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let id = check_svid(end_entity, self.store.trust_domain(), SvidUsage::Server)
            .map_err(|e| rustls::Error::InvalidCertificate(svid_error(e)))?;
        if id != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(CertError::NotSvid(
                    format!("server is {id}, expected {}", self.expected),
                )))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn svid_error(e: CertError) -> rustls::CertificateError {
    rustls::CertificateError::Other(rustls::OtherError(Arc::new(e)))
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = fs::read(path).map_err(|e| CertError::io(path, e))?;
    parse_certs_pem(&bytes, path)
}

pub(crate) fn parse_certs_pem(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::BadFile {
            path: path.to_owned(),
            reason: "no PEM certificate".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = fs::read(path).map_err(|e| CertError::io(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| CertError::BadFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    //! The two verifiers every mTLS listener and client relies on, driven
    //! with real certificates from our CA and every forgery the audit uses.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{
        CertAuthority, Forgery, IssueOptions, StateLayout, COMPONENT_IDENTITIES,
        DEFAULT_TRUST_DOMAIN,
    };

    struct Pki {
        layout: StateLayout,
        ca: CertAuthority,
    }

    impl Pki {
        fn new(tag: &str) -> Self {
            let layout = StateLayout::new(std::env::temp_dir().join(format!(
                "txmesh-tls-{tag}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )));
            let ca = CertAuthority::ensure(
                &layout,
                DEFAULT_TRUST_DOMAIN,
                COMPONENT_IDENTITIES,
                &IssueOptions::default(),
            )
            .expect("CA and identities");
            Self { layout, ca }
        }

        fn store(&self, name: &str) -> CertStore {
            CertStore::open(&self.layout.identity_dir(name), DEFAULT_TRUST_DOMAIN).expect("store")
        }

        /// The leaf and the rest of the chain of `name`'s certificate.
        fn presented(&self, name: &str) -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
            let chain = read_certs(&self.layout.identity_dir(name).join("tls.crt")).expect("chain");
            split(chain)
        }

        fn forged(
            &self,
            forgery: Forgery,
        ) -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
            let (pem, _key) = forgery
                .make(Some(&self.ca), DEFAULT_TRUST_DOMAIN, "txgen")
                .expect("forged");
            split(parse_certs_pem(pem.as_bytes(), Path::new("forged")).expect("parses"))
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(self.layout.root());
        }
    }

    fn split(
        mut chain: Vec<CertificateDer<'static>>,
    ) -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
        let leaf = chain.remove(0);
        (leaf, chain)
    }

    fn client_verifier(store: CertStore, refused: Arc<AtomicUsize>) -> SvidClientVerifier {
        SvidClientVerifier {
            store,
            on_reject: Some(Arc::new(move |_e: &rustls::Error| {
                refused.fetch_add(1, Ordering::Relaxed);
            })),
        }
    }

    fn server_verifier(store: CertStore, expected: &str) -> SvidServerVerifier {
        SvidServerVerifier {
            store,
            algorithms: provider().signature_verification_algorithms,
            expected: SpiffeId::for_workload(DEFAULT_TRUST_DOMAIN, expected).expect("id"),
        }
    }

    fn name() -> ServerName<'static> {
        ServerName::try_from("localhost").expect("name")
    }

    #[test]
    fn the_client_verifier_admits_svids_of_the_trust_domain_and_refuses_every_forgery() {
        let pki = Pki::new("client");
        let refused = Arc::new(AtomicUsize::new(0));
        let verifier = client_verifier(pki.store("ingress"), refused.clone());
        let now = UnixTime::now();
        for name in ["txgen", "operator", "chaos"] {
            let (leaf, rest) = pki.presented(name);
            verifier
                .verify_client_cert(&leaf, &rest, now)
                .unwrap_or_else(|e| panic!("{name} is a valid client SVID: {e}"));
        }
        assert_eq!(refused.load(Ordering::Relaxed), 0);
        for (n, forgery) in Forgery::ALL.into_iter().enumerate() {
            let (leaf, rest) = pki.forged(forgery);
            let result = verifier.verify_client_cert(&leaf, &rest, now);
            assert!(result.is_err(), "{} must be refused", forgery.name());
            assert_eq!(
                refused.load(Ordering::Relaxed),
                n + 1,
                "{} is reported to the hook",
                forgery.name()
            );
        }
    }

    #[test]
    fn the_server_verifier_admits_only_the_expected_workload() {
        let pki = Pki::new("server");
        let verifier = server_verifier(pki.store("txgen"), "ingress");
        let now = UnixTime::now();
        let (leaf, rest) = pki.presented("ingress");
        verifier
            .verify_server_cert(&leaf, &rest, &name(), &[], now)
            .expect("the ingress is who txgen expects");

        // A valid SVID of another workload is not the server we asked for.
        let (leaf, rest) = pki.presented("dashboard");
        let err = verifier
            .verify_server_cert(&leaf, &rest, &name(), &[], now)
            .expect_err("the dashboard posing as the ingress");
        assert!(err.to_string().contains("expected"), "{err}");

        // Not from our CA, expired, not yet valid, a CA as a leaf, the
        // wrong trust domain, no URI SAN: refused. (The forgeries are made
        // as txgen; the verifier expects the ingress, so even a forgery
        // that passed the chain would fail on the identity.)
        for forgery in [
            Forgery::ForeignCa,
            Forgery::Expired,
            Forgery::NotYetValid,
            Forgery::CaAsLeaf,
            Forgery::NoUriSan,
            Forgery::TwoUriSans,
            Forgery::OtherTrustDomain,
        ] {
            let (leaf, rest) = pki.forged(forgery);
            assert!(
                verifier
                    .verify_server_cert(&leaf, &rest, &name(), &[], now)
                    .is_err(),
                "{} must be refused",
                forgery.name()
            );
        }
        // Without serverAuth it must not serve, even as the expected
        // workload.
        let expecting_txgen = server_verifier(pki.store("ingress"), "txgen");
        let (leaf, rest) = pki.presented("txgen");
        expecting_txgen
            .verify_server_cert(&leaf, &rest, &name(), &[], now)
            .expect("component SVIDs serve and connect");
        let (leaf, rest) = pki.forged(Forgery::NoEku);
        assert!(expecting_txgen
            .verify_server_cert(&leaf, &rest, &name(), &[], now)
            .is_err());
    }
}
