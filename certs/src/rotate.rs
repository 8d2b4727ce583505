//! Rotation and inspection of a state directory's certificates, for
//! `txmesh certs rotate`, `rotate-ca` and `inspect`.
//!
//! Leaf rotation issues new keys and certificates for every identity from
//! the current CA. CA rotation is staged so no peer ever meets a
//! certificate it cannot verify; services reload between the steps:
//!
//! 1. [`CaStep::Add`]: a new CA is created in `ca/next/` and the bundle
//!    (`ca/bundle.crt`, copied to every identity's `ca.crt`) holds both.
//! 2. [`CaStep::Reissue`]: the new CA becomes the issuer (the old one moves
//!    to `ca/previous/`) and every leaf is reissued from it.
//! 3. [`CaStep::Retire`]: the bundle holds the new CA only and the old CA's
//!    files are removed.

use std::{fs, path::Path};

use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{
    issue::{read_to_string, write_file},
    CertAuthority, CertError, IssueOptions, StateLayout,
};

/// One step of a CA rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStep {
    Add,
    Reissue,
    Retire,
}

/// What `inspect` shows of one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// The identity directory name, or `ca`, `ca/next`, `ca/previous`.
    pub identity: String,
    pub spiffe_id: Option<String>,
    pub serial: String,
    pub not_after: String,
    pub not_after_unix: i64,
    pub days_left: f64,
    pub key_type: String,
    pub issuer: String,
}

/// The identities of a state directory: every folder with a `tls.crt`,
/// except the CA's.
///
/// # Errors
/// When the directory cannot be read.
pub fn identities(layout: &StateLayout) -> Result<Vec<String>, CertError> {
    let root = layout.root();
    let mut names = Vec::new();
    for entry in fs::read_dir(root).map_err(|e| CertError::io(root, e))? {
        let entry = entry.map_err(|e| CertError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "ca" && entry.path().join("tls.crt").is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Issues new keys and certificates for every identity; returns their
/// names.
///
/// # Errors
/// On any I/O or signing failure.
pub fn rotate_leaves(
    layout: &StateLayout,
    trust_domain: &str,
    options: &IssueOptions,
) -> Result<Vec<String>, CertError> {
    let ca = CertAuthority::load(layout, trust_domain)?;
    let names = identities(layout)?;
    for name in &names {
        ca.write_identity(layout, name, options)?;
    }
    Ok(names)
}

/// Runs one step of a CA rotation; returns what it did.
///
/// # Errors
/// When the step is out of order (for example `Reissue` before `Add`), or
/// on any I/O or signing failure.
pub fn rotate_ca(
    layout: &StateLayout,
    trust_domain: &str,
    step: CaStep,
    options: &IssueOptions,
) -> Result<String, CertError> {
    let ca_dir = layout.ca_dir();
    let next_dir = ca_dir.join("next");
    let previous_dir = ca_dir.join("previous");
    let out_of_order = |reason: &str| CertError::BadFile {
        path: ca_dir.clone(),
        reason: reason.to_owned(),
    };
    match step {
        CaStep::Add => {
            if next_dir.join("tls.crt").exists() {
                return Err(out_of_order("a new CA is already staged (run reissue)"));
            }
            if previous_dir.join("tls.crt").exists() {
                return Err(out_of_order(
                    "the previous CA is not retired yet (run retire)",
                ));
            }
            let current = CertAuthority::load(layout, trust_domain)?;
            let next = CertAuthority::generate(trust_domain)?;
            next.save_to(&next_dir)?;
            let bundle = format!("{}{}", current.cert_pem(), next.cert_pem());
            distribute_bundle(layout, &bundle)?;
            Ok("new CA staged in ca/next; every bundle now trusts both CAs".into())
        }
        CaStep::Reissue => {
            if !next_dir.join("tls.crt").exists() {
                return Err(out_of_order("no new CA staged (run add first)"));
            }
            fs::create_dir_all(&previous_dir).map_err(|e| CertError::io(&previous_dir, e))?;
            for file in ["tls.crt", "tls.key"] {
                move_file(&ca_dir.join(file), &previous_dir.join(file))?;
                move_file(&next_dir.join(file), &ca_dir.join(file))?;
            }
            let _ = fs::remove_dir(&next_dir);
            let names = rotate_leaves(layout, trust_domain, options)?;
            Ok(format!(
                "new CA is the issuer; reissued {} from it",
                names.join(", ")
            ))
        }
        CaStep::Retire => {
            if !previous_dir.join("tls.crt").exists() {
                return Err(out_of_order(
                    "no previous CA to retire (run add and reissue first)",
                ));
            }
            let current = CertAuthority::load(layout, trust_domain)?;
            distribute_bundle(layout, current.cert_pem())?;
            fs::remove_dir_all(&previous_dir).map_err(|e| CertError::io(&previous_dir, e))?;
            Ok("previous CA retired; every bundle trusts the new CA only".into())
        }
    }
}

/// Writes `bundle` as `ca/bundle.crt` and as every identity's `ca.crt`.
fn distribute_bundle(layout: &StateLayout, bundle: &str) -> Result<(), CertError> {
    write_file(&layout.bundle_path(), bundle.as_bytes(), false)?;
    for name in identities(layout)? {
        write_file(
            &layout.identity_dir(&name).join("ca.crt"),
            bundle.as_bytes(),
            false,
        )?;
    }
    Ok(())
}

fn move_file(from: &Path, to: &Path) -> Result<(), CertError> {
    fs::rename(from, to).map_err(|e| CertError::io(from, e))
}

/// Every certificate of the state directory: the CA(s), then each identity.
///
/// # Errors
/// When a certificate file cannot be read or parsed.
pub fn inspect(layout: &StateLayout) -> Result<Vec<CertInfo>, CertError> {
    let mut out = Vec::new();
    let ca_dir = layout.ca_dir();
    for (label, dir) in [
        ("ca", ca_dir.clone()),
        ("ca/next", ca_dir.join("next")),
        ("ca/previous", ca_dir.join("previous")),
    ] {
        let path = dir.join("tls.crt");
        if path.exists() {
            out.push(describe(label, &path)?);
        }
    }
    for name in identities(layout)? {
        out.push(describe(
            &name,
            &layout.identity_dir(&name).join("tls.crt"),
        )?);
    }
    Ok(out)
}

fn describe(label: &str, path: &Path) -> Result<CertInfo, CertError> {
    let pem = read_to_string(path)?;
    let ders = crate::tls::parse_certs_pem(pem.as_bytes(), path)?;
    let bad = |reason: &str| CertError::BadFile {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let der = ders.first().ok_or_else(|| bad("no certificate"))?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| bad("not DER"))?;
    let not_after = cert.validity().not_after;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let key_type = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(p)) => format!("ECDSA P-{}", p.key_size()),
        Ok(x509_parser::public_key::PublicKey::RSA(r)) => format!("RSA {}", r.key_size()),
        Ok(_) => "other".to_owned(),
        Err(_) => "unknown".to_owned(),
    };
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("?")
        .to_owned();
    Ok(CertInfo {
        identity: label.to_owned(),
        spiffe_id: crate::peer_spiffe_id(der).ok().map(|id| id.to_string()),
        serial: cert.raw_serial_as_string(),
        not_after: not_after.to_string(),
        not_after_unix: not_after.timestamp(),
        days_left: (not_after.timestamp() - now) as f64 / 86_400.0,
        key_type,
        issuer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertStore, Reload, COMPONENT_IDENTITIES, DEFAULT_TRUST_DOMAIN};

    fn temp_layout(tag: &str) -> StateLayout {
        let dir = std::env::temp_dir().join(format!(
            "txmesh-certs-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        StateLayout::new(dir)
    }

    fn issuer_of(layout: &StateLayout, name: &str) -> String {
        describe(name, &layout.identity_dir(name).join("tls.crt"))
            .expect("describe")
            .serial
    }

    #[test]
    fn staged_ca_rotation_keeps_every_store_valid_at_every_step() {
        let layout = temp_layout("rotate");
        let td = DEFAULT_TRUST_DOMAIN;
        let options = IssueOptions::default();
        CertAuthority::ensure(&layout, td, COMPONENT_IDENTITIES, &options).expect("init");
        let store = CertStore::open(&layout.identity_dir("ingress"), td).expect("open");
        let first = store.serial();
        let before = issuer_of(&layout, "ingress");

        // Out of order steps are refused.
        assert!(rotate_ca(&layout, td, CaStep::Reissue, &options).is_err());
        assert!(rotate_ca(&layout, td, CaStep::Retire, &options).is_err());

        rotate_ca(&layout, td, CaStep::Add, &options).expect("add");
        assert!(matches!(store.reload(), Reload::Swapped), "bundle of two");
        assert_eq!(store.serial(), first, "same leaf, wider bundle");

        rotate_ca(&layout, td, CaStep::Reissue, &options).expect("reissue");
        assert!(matches!(store.reload(), Reload::Swapped));
        assert_ne!(store.serial(), first, "a leaf from the new CA");
        assert_ne!(issuer_of(&layout, "ingress"), before);

        rotate_ca(&layout, td, CaStep::Retire, &options).expect("retire");
        assert!(matches!(store.reload(), Reload::Swapped), "bundle of one");
        let bundle =
            fs::read_to_string(layout.identity_dir("ingress").join("ca.crt")).expect("bundle");
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
        assert!(!layout.ca_dir().join("previous").exists());
        assert_eq!(store.failures(), 0);

        let infos = inspect(&layout).expect("inspect");
        assert_eq!(infos.len(), 1 + COMPONENT_IDENTITIES.len());
        assert!(infos.iter().all(|i| i.days_left > 0.9));
        assert_eq!(infos[1].key_type, "ECDSA P-256");
        let _ = fs::remove_dir_all(layout.root());
    }

    /// Polls twice, as the watcher would: the second poll reports.
    fn settle(store: &CertStore) -> Reload {
        let _ = store.reload();
        store.reload()
    }

    #[test]
    fn bad_material_keeps_the_last_good_one() {
        let layout = temp_layout("reload");
        let td = DEFAULT_TRUST_DOMAIN;
        let options = IssueOptions::default();
        let ca = CertAuthority::ensure(&layout, td, &["ingress", "txgen"], &options).expect("init");
        let dir = layout.identity_dir("ingress");
        let store = CertStore::open(&dir, td).expect("open");
        let good = store.serial();
        let key = fs::read(dir.join("tls.key")).expect("key");

        // Half-written certificate.
        let crt = fs::read(dir.join("tls.crt")).expect("crt");
        fs::write(dir.join("tls.crt"), &crt[..crt.len() / 2]).expect("write");
        assert!(
            matches!(store.reload(), Reload::Unchanged),
            "maybe mid-write"
        );
        assert!(matches!(store.reload(), Reload::Rejected(_)), "still bad");
        assert!(matches!(store.reload(), Reload::Unchanged), "reported once");
        // Another identity's certificate and key.
        let other = layout.identity_dir("txgen");
        fs::copy(other.join("tls.crt"), dir.join("tls.crt")).expect("copy");
        fs::copy(other.join("tls.key"), dir.join("tls.key")).expect("copy");
        assert!(
            matches!(settle(&store), Reload::Rejected(e) if e.to_string().contains("identity changed"))
        );
        // A new certificate with the old key.
        let (crt, _) = ca.issue("ingress", &options).expect("issue");
        fs::write(dir.join("tls.crt"), crt).expect("write");
        fs::write(dir.join("tls.key"), &key).expect("write");
        assert!(
            matches!(settle(&store), Reload::Rejected(e) if e.to_string().contains("key does not match"))
        );
        // An expired certificate (notAfter is now, truncated to the second).
        let expired = IssueOptions {
            ttl: std::time::Duration::ZERO,
            ..IssueOptions::default()
        };
        ca.write_identity(&layout, "ingress", &expired)
            .expect("write");
        assert!(
            matches!(settle(&store), Reload::Rejected(e) if e.to_string().contains("not valid now"))
        );
        // A certificate from a foreign CA.
        let foreign = temp_layout("foreign");
        let fca = CertAuthority::ensure(&foreign, td, &["ingress"], &options).expect("foreign");
        let (crt, key) = fca.issue("ingress", &options).expect("issue");
        fs::write(dir.join("tls.crt"), crt).expect("write");
        fs::write(dir.join("tls.key"), key).expect("write");
        assert!(matches!(settle(&store), Reload::Rejected(e) if e.to_string().contains("chain")));

        assert_eq!(store.serial(), good, "the last good material stays live");
        assert_eq!(store.failures(), 5);
        assert_eq!(store.reloads(), 0);
        ca.write_identity(&layout, "ingress", &options)
            .expect("write");
        assert!(matches!(store.reload(), Reload::Swapped));
        let _ = fs::remove_dir_all(layout.root());
        let _ = fs::remove_dir_all(foreign.root());
    }
}
