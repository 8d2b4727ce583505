//! The txmesh certificate authority: an ECDSA P-256 root that issues SPIFFE
//! X.509-SVIDs into the cert-manager Secret layout `DIR/NAME/{tls.crt,
//! tls.key,ca.crt}`, so the same files work locally and as mounted Secrets.
//! rcgen's defaults (1975-4096 validity, no key usage, no EKU, serial derived
//! from the key) are all overridden here.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use crate::{identity::SpiffeId, CertError};

/// The identities `txmesh certs init` and `txmesh up` create.
pub const COMPONENT_IDENTITIES: &[&str] = &[
    "txgen",
    "ingress",
    "dashboard",
    "operator",
    "chaos",
    "legacy-client",
];

/// Default leaf lifetime: short-lived, as SVIDs are meant to be.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Password of `operator.p12` (browsers refuse to import an empty one).
pub const P12_PASSWORD: &str = "txmesh";

/// The CA lives ten years; leaves are what rotates.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Backdating absorbs clock skew between the issuer and its peers.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A leaf with less than this left is reissued by [`CertAuthority::ensure`].
const REISSUE_BELOW: Duration = Duration::from_secs(3600);

/// Where a state directory keeps each file.
#[derive(Debug, Clone)]
pub struct StateLayout {
    root: PathBuf,
}

/// How to issue one leaf.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Lifetime from now.
    pub ttl: Duration,
    /// DNS SANs besides the SPIFFE URI.
    pub dns_names: Vec<String>,
    /// IP SANs besides the SPIFFE URI.
    pub ip_addrs: Vec<IpAddr>,
}

/// An issuing CA: its certificate and signing key.
pub struct CertAuthority {
    trust_domain: String,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl StateLayout {
    /// A layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DIR/ca`: the CA's `tls.crt` and `tls.key`.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// `DIR/ca/bundle.crt`: the trust bundle every identity's `ca.crt`
    /// receives (one CA, or two during a CA rotation). Absent means "the
    /// CA alone".
    pub fn bundle_path(&self) -> PathBuf {
        self.ca_dir().join("bundle.crt")
    }

    /// `DIR/NAME`: one identity's `tls.crt`, `tls.key`, `ca.crt`.
    pub fn identity_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `DIR/operator.p12`: the operator identity for browsers.
    pub fn operator_p12(&self) -> PathBuf {
        self.root.join("operator.p12")
    }
}

impl Default for IssueOptions {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            dns_names: vec!["localhost".to_owned()],
            ip_addrs: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        }
    }
}

impl CertAuthority {
    /// Creates a new root CA for `trust_domain`.
    ///
    /// # Errors
    /// When key generation or signing fails.
    pub fn generate(trust_domain: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("txmesh CA {trust_domain}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "txmesh");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_TTL;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA kept in `layout`'s `ca/` directory.
    ///
    /// # Errors
    /// When the files are missing or do not parse.
    pub fn load(layout: &StateLayout, trust_domain: &str) -> Result<Self, CertError> {
        Self::load_from(&layout.ca_dir(), trust_domain)
    }

    /// A CA from its certificate and key, PEM (`txmesh audit --ca-key`).
    ///
    /// # Errors
    /// When either does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, CertError> {
        let bad = |reason: String| CertError::BadFile {
            path: PathBuf::from("(CA)"),
            reason,
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// Loads a CA from `dir/{tls.crt,tls.key}`.
    ///
    /// # Errors
    /// When the files are missing or do not parse.
    pub(crate) fn load_from(dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        let cert_path = dir.join("tls.crt");
        let key_path = dir.join("tls.key");
        let cert_pem = read_to_string(&cert_path)?;
        let key =
            KeyPair::from_pem(&read_to_string(&key_path)?).map_err(|e| CertError::BadFile {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertError::BadFile {
            path: cert_path,
            reason: e.to_string(),
        })?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem,
            issuer,
        })
    }

    /// Loads the CA from `layout`, or creates and saves one, then makes sure
    /// every identity in `names` has a certificate with more than an hour
    /// left (issuing the missing or expiring ones) and the operator has its
    /// PKCS#12 file. This is what `txmesh certs init` and `txmesh up` run.
    ///
    /// # Errors
    /// On any I/O, generation or parse failure, naming the file.
    pub fn ensure(
        layout: &StateLayout,
        trust_domain: &str,
        names: &[&str],
        options: &IssueOptions,
    ) -> Result<Self, CertError> {
        let ca = if layout.ca_dir().join("tls.key").exists() {
            Self::load(layout, trust_domain)?
        } else {
            let ca = Self::generate(trust_domain)?;
            ca.save(layout)?;
            ca
        };
        for name in names {
            let cert_path = layout.identity_dir(name).join("tls.crt");
            if !still_valid(&cert_path, REISSUE_BELOW) || !ca.bundle_matches(layout, name) {
                ca.write_identity(layout, name, options)?;
            }
        }
        if names.contains(&"operator") && !layout.operator_p12().exists() {
            ca.write_operator_p12(layout)?;
        }
        Ok(ca)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA's certificate and key to `DIR/ca/`.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn save(&self, layout: &StateLayout) -> Result<(), CertError> {
        self.save_to(&layout.ca_dir())
    }

    /// Writes the CA's certificate and key to `dir`.
    ///
    /// # Errors
    /// On I/O failure.
    pub(crate) fn save_to(&self, dir: &Path) -> Result<(), CertError> {
        let dir = dir.to_owned();
        create_dir(&dir)?;
        write_file(&dir.join("tls.crt"), self.cert_pem.as_bytes(), false)?;
        write_file(
            &dir.join("tls.key"),
            self.issuer.key().serialize_pem().as_bytes(),
            true,
        )
    }

    /// Issues an SVID for workload `name`: returns (certificate PEM, key PEM).
    ///
    /// # Errors
    /// When `name` does not form a valid SPIFFE ID or signing fails.
    pub fn issue(&self, name: &str, options: &IssueOptions) -> Result<(String, String), CertError> {
        let id = SpiffeId::for_workload(&self.trust_domain, name)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "txmesh");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![SanType::URI(ia5(id.as_str())?)];
        for dns in &options.dns_names {
            params.subject_alt_names.push(SanType::DnsName(ia5(dns)?));
        }
        for ip in &options.ip_addrs {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + options.ttl;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs `params` for `key` with this CA (used by the audit's forged
    /// probes, which break the SVID profile on purpose).
    pub(crate) fn sign(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Result<String, CertError> {
        Ok(params.signed_by(key, &self.issuer)?.pem())
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Issues `name` and writes `DIR/NAME/{tls.crt,tls.key,ca.crt}`. Each file
    /// is written to a temporary name and renamed, so a watcher never sees a
    /// half-written file.
    ///
    /// # Errors
    /// On I/O or signing failure.
    pub fn write_identity(
        &self,
        layout: &StateLayout,
        name: &str,
        options: &IssueOptions,
    ) -> Result<(), CertError> {
        let (cert_pem, key_pem) = self.issue(name, options)?;
        let dir = layout.identity_dir(name);
        create_dir(&dir)?;
        let bundle = self.bundle(layout);
        write_file(&dir.join("ca.crt"), bundle.as_bytes(), false)?;
        write_file(&dir.join("tls.key"), key_pem.as_bytes(), true)?;
        write_file(&dir.join("tls.crt"), cert_pem.as_bytes(), false)?;
        if name == "operator" {
            self.write_operator_p12(layout)?;
        }
        Ok(())
    }

    /// Exports the operator identity as `DIR/operator.p12` (password
    /// [`P12_PASSWORD`]) for import into a browser.
    ///
    /// # Errors
    /// When the operator files are missing or the export fails.
    pub fn write_operator_p12(&self, layout: &StateLayout) -> Result<(), CertError> {
        let dir = layout.identity_dir("operator");
        let chain = crate::tls::read_certs(&dir.join("tls.crt"))?;
        let key = crate::tls::read_key(&dir.join("tls.key"))?;
        let p12_err = |e: p12_keystore::error::Error| CertError::Pkcs12(e.to_string());
        let mut certs = Vec::with_capacity(chain.len() + 1);
        for der in &chain {
            certs.push(p12_keystore::Certificate::from_der(der.as_ref()).map_err(p12_err)?);
        }
        for der in crate::tls::parse_certs_pem(self.cert_pem.as_bytes(), &layout.ca_dir())? {
            certs.push(p12_keystore::Certificate::from_der(der.as_ref()).map_err(p12_err)?);
        }
        let private_key = p12_keystore::PrivateKey::from_der(key.secret_der()).map_err(p12_err)?;
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(
            "txmesh operator",
            p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
                b"txmesh-operator".as_slice(),
                private_key,
                certs,
            )),
        );
        let bytes = store.writer(P12_PASSWORD).write().map_err(p12_err)?;
        write_file(&layout.operator_p12(), &bytes, true)
    }

    /// The trust bundle to distribute: `DIR/ca/bundle.crt` if it holds this
    /// CA (two CAs during a staged rotation), else this CA alone.
    pub fn bundle(&self, layout: &StateLayout) -> String {
        fs::read_to_string(layout.bundle_path())
            .ok()
            .filter(|b| b.contains(self.cert_pem.trim()))
            .unwrap_or_else(|| self.cert_pem.clone())
    }

    /// Whether `DIR/NAME/ca.crt` holds this CA (a reused state directory
    /// whose CA was replaced must reissue its leaves).
    fn bundle_matches(&self, layout: &StateLayout, name: &str) -> bool {
        fs::read_to_string(layout.identity_dir(name).join("ca.crt"))
            .is_ok_and(|bundle| bundle.contains(self.cert_pem.trim()))
    }
}

pub(crate) fn ia5(s: &str) -> Result<rcgen::string::Ia5String, CertError> {
    rcgen::string::Ia5String::try_from(s).map_err(CertError::Generate)
}

/// A random positive 16-byte serial (RFC 5280 allows up to 20 octets).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn still_valid(cert_path: &Path, margin: Duration) -> bool {
    let Ok(certs) = crate::tls::read_certs(cert_path) else {
        return false;
    };
    let Some(leaf) = certs.first() else {
        return false;
    };
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(leaf.as_ref()) else {
        return false;
    };
    let not_after = cert.validity().not_after.timestamp();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    i64::try_from(margin.as_secs()).is_ok_and(|m| not_after - now > m)
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|e| CertError::io(path, e))
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|e| CertError::io(dir, e))
}

/// Writes `bytes` to `path` through a temporary file and a rename; private
/// files get mode 0600.
pub(crate) fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| CertError::io(&tmp, e))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(|e| CertError::io(&tmp, e))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    fs::rename(&tmp, path).map_err(|e| CertError::io(path, e))
}
