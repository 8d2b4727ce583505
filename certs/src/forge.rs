//! Certificates that must be refused, made on purpose for `txmesh audit`:
//! each breaks one rule of the X.509-SVID profile or of the chain. Those
//! signed by the real CA need its key; the foreign one brings its own CA.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use crate::{
    issue::{ia5, random_serial},
    CertAuthority, CertError,
};

/// One way a client certificate must fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// A well-formed SVID from a CA nobody trusts.
    ForeignCa,
    Expired,
    NotYetValid,
    /// A CA certificate (basicConstraints CA) presented as a leaf.
    CaAsLeaf,
    ServerAuthOnly,
    NoEku,
    NoUriSan,
    TwoUriSans,
    OtherTrustDomain,
}

impl Forgery {
    /// Every forgery, in report order.
    pub const ALL: [Forgery; 9] = [
        Forgery::ForeignCa,
        Forgery::Expired,
        Forgery::NotYetValid,
        Forgery::CaAsLeaf,
        Forgery::ServerAuthOnly,
        Forgery::NoEku,
        Forgery::NoUriSan,
        Forgery::TwoUriSans,
        Forgery::OtherTrustDomain,
    ];

    /// The check name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Forgery::ForeignCa => "client_cert_foreign_ca",
            Forgery::Expired => "client_cert_expired",
            Forgery::NotYetValid => "client_cert_not_yet_valid",
            Forgery::CaAsLeaf => "client_cert_ca_as_leaf",
            Forgery::ServerAuthOnly => "client_cert_server_auth_only",
            Forgery::NoEku => "client_cert_no_eku",
            Forgery::NoUriSan => "client_cert_no_uri_san",
            Forgery::TwoUriSans => "client_cert_two_uri_sans",
            Forgery::OtherTrustDomain => "client_cert_other_trust_domain",
        }
    }

    /// Whether making it needs the real CA's key.
    pub fn needs_ca_key(self) -> bool {
        self != Forgery::ForeignCa
    }

    /// Makes the certificate (PEM, with the issuing CA appended when it is
    /// the real one) and its key (PEM), posing as workload `name` of
    /// `trust_domain`. `ca` is required unless [`Self::needs_ca_key`] is
    /// false.
    ///
    /// # Errors
    /// When `ca` is needed and missing, or signing fails.
    pub fn make(
        self,
        ca: Option<&CertAuthority>,
        trust_domain: &str,
        name: &str,
    ) -> Result<(String, String), CertError> {
        if self == Forgery::ForeignCa {
            let foreign = CertAuthority::generate(trust_domain)?;
            return foreign.issue(name, &crate::IssueOptions::default());
        }
        let ca = ca.ok_or_else(|| CertError::NotSvid("the CA key is needed".into()))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("audit {}", self.name()));
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let uri = |td: &str| -> Result<SanType, CertError> {
            Ok(SanType::URI(ia5(&format!("spiffe://{td}/{name}"))?))
        };
        p.subject_alt_names = vec![uri(trust_domain)?];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::from_secs(300);
        p.not_after = now + Duration::from_secs(3600);
        match self {
            Forgery::ForeignCa => {}
            Forgery::Expired => {
                p.not_before = now - Duration::from_secs(7200);
                p.not_after = now - Duration::from_secs(3600);
            }
            Forgery::NotYetValid => {
                p.not_before = now + Duration::from_secs(3600);
                p.not_after = now + Duration::from_secs(7200);
            }
            Forgery::CaAsLeaf => {
                p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                p.key_usages.push(KeyUsagePurpose::KeyCertSign);
            }
            Forgery::ServerAuthOnly => {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Forgery::NoEku => p.extended_key_usages.clear(),
            Forgery::NoUriSan => {
                p.subject_alt_names = vec![SanType::DnsName(ia5("localhost")?)];
            }
            Forgery::TwoUriSans => {
                p.subject_alt_names.push(SanType::URI(ia5(&format!(
                    "spiffe://{trust_domain}/{name}-twin"
                ))?));
            }
            Forgery::OtherTrustDomain => p.subject_alt_names = vec![uri("evil.example")?],
        }
        let cert = ca.sign(&p, &key)?;
        Ok((cert, key.serialize_pem()))
    }
}
