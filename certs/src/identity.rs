//! SPIFFE IDs and the X.509-SVID profile checks applied to every peer
//! certificate on top of the usual chain verification (webpki accepts a leaf
//! with no EKU and ignores key usage, so these checks are ours).

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::CertError;

/// The trust domain used unless configured otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "txmesh.local";

/// A SPIFFE ID such as `spiffe://txmesh.local/ingress`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    domain_len: usize,
}

/// Which side of a connection a certificate is presented by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidUsage {
    /// A client certificate: EKU must include clientAuth.
    Client,
    /// A server certificate: EKU must include serverAuth.
    Server,
}

impl SpiffeId {
    /// Parses `spiffe://DOMAIN/PATH`.
    ///
    /// # Errors
    /// When the scheme is not `spiffe`, the trust domain is empty or not
    /// lower-case `[a-z0-9.-_]`, or the path is empty.
    pub fn parse(uri: &str) -> Result<Self, CertError> {
        let bad = |reason: &str| CertError::BadSpiffeId {
            id: uri.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("scheme must be spiffe://"))?;
        let (domain, path) = rest.split_once('/').ok_or_else(|| bad("path is empty"))?;
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(bad("trust domain must be non-empty lower-case [a-z0-9.-_]"));
        }
        if path.is_empty()
            || path
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(bad("path must be non-empty segments"));
        }
        if uri.contains(['?', '#']) {
            return Err(bad("query and fragment are not allowed"));
        }
        Ok(Self {
            uri: uri.to_owned(),
            domain_len: domain.len(),
        })
    }

    /// `spiffe://{trust_domain}/{name}`.
    ///
    /// # Errors
    /// When the result is not a valid SPIFFE ID.
    pub fn for_workload(trust_domain: &str, name: &str) -> Result<Self, CertError> {
        Self::parse(&format!("spiffe://{trust_domain}/{name}"))
    }

    /// The trust domain, such as `txmesh.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len().."spiffe://".len() + self.domain_len]
    }

    /// The path without its leading slash, such as `ingress`.
    pub fn path(&self) -> &str {
        &self.uri["spiffe://".len() + self.domain_len + 1..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Checks the X.509-SVID profile of a leaf certificate and returns its SPIFFE
/// ID: exactly one URI SAN, a `spiffe://` ID in `trust_domain`, not a CA, key
/// usage with digitalSignature, and an EKU that includes the usage's purpose.
/// Chain and validity checks are rustls's job and happen before this.
///
/// # Errors
/// [`CertError::NotSvid`] naming the first rule the certificate breaks.
pub fn check_svid(
    der: &CertificateDer<'_>,
    trust_domain: &str,
    usage: SvidUsage,
) -> Result<SpiffeId, CertError> {
    let not_svid = |why: &str| CertError::NotSvid(why.to_owned());
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|_| not_svid("not a DER certificate"))?;
    let id = single_uri_san(&cert)?;
    if id.trust_domain() != trust_domain {
        return Err(CertError::NotSvid(format!(
            "{id} is not in trust domain {trust_domain}"
        )));
    }
    let is_ca = cert
        .basic_constraints()
        .map_err(|_| not_svid("malformed basic constraints"))?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err(not_svid("a CA certificate cannot be a leaf SVID"));
    }
    let digital_signature = cert
        .key_usage()
        .map_err(|_| not_svid("malformed key usage"))?
        .is_some_and(|ku| ku.value.digital_signature());
    if !digital_signature {
        return Err(not_svid("key usage must include digitalSignature"));
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|_| not_svid("malformed extended key usage"))?
        .ok_or_else(|| not_svid("extended key usage is missing"))?;
    let purpose_ok = match usage {
        SvidUsage::Client => eku.value.client_auth,
        SvidUsage::Server => eku.value.server_auth,
    };
    if !purpose_ok {
        return Err(match usage {
            SvidUsage::Client => not_svid("extended key usage lacks clientAuth"),
            SvidUsage::Server => not_svid("extended key usage lacks serverAuth"),
        });
    }
    Ok(id)
}

/// A certificate's notAfter, Unix seconds.
///
/// # Errors
/// When it is not a DER certificate.
pub fn not_after_unix(der: &CertificateDer<'_>) -> Result<i64, CertError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|_| CertError::NotSvid("not a DER certificate".into()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The SPIFFE ID of an already verified peer certificate (its one URI SAN).
///
/// # Errors
/// When the certificate does not carry exactly one valid SPIFFE URI SAN.
pub fn peer_spiffe_id(der: &CertificateDer<'_>) -> Result<SpiffeId, CertError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|_| CertError::NotSvid("not a DER certificate".into()))?;
    single_uri_san(&cert)
}

fn single_uri_san(cert: &X509Certificate<'_>) -> Result<SpiffeId, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| CertError::NotSvid("malformed subject alternative name".into()))?
        .ok_or_else(|| CertError::NotSvid("no subject alternative name".into()))?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris
        .next()
        .ok_or_else(|| CertError::NotSvid("no URI SAN".into()))?;
    if uris.next().is_some() {
        return Err(CertError::NotSvid("more than one URI SAN".into()));
    }
    SpiffeId::parse(uri).map_err(|e| CertError::NotSvid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_splits_spiffe_ids() {
        let id = SpiffeId::parse("spiffe://txmesh.local/ingress").expect("valid id");
        assert_eq!(id.trust_domain(), "txmesh.local");
        assert_eq!(id.path(), "ingress");
        let nested = SpiffeId::parse("spiffe://td/ns/prod/sa/web").expect("valid id");
        assert_eq!(nested.path(), "ns/prod/sa/web");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "https://txmesh.local/ingress",
            "spiffe://txmesh.local",
            "spiffe://txmesh.local/",
            "spiffe:///ingress",
            "spiffe://TXMESH/ingress",
            "spiffe://txmesh.local/a//b",
            "spiffe://txmesh.local/a?b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
