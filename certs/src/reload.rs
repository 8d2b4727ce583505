//! Hot reload: a process's TLS identity as a [`CertStore`], the last good
//! material read from `DIR/{tls.crt,tls.key,ca.crt}` (the cert-manager
//! Secret layout, so a mounted Kubernetes Secret works the same), swapped
//! atomically when the files change. The rustls configs built from a store
//! read it on every handshake, so new connections use new material at once
//! and established ones are untouched.
//!
//! New material is swapped in only if the key matches the certificate, the
//! certificate is valid now, chains to the (possibly multi-CA) bundle, is an
//! SVID of the trust domain and keeps the same SPIFFE ID. Anything else (a
//! bad or half-written file) keeps the last good material and is counted.
//! The caller decides how often to look ([`CertStore::reload`]): services
//! poll, which also catches Kubernetes' symlink swaps.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;

use arc_swap::ArcSwap;
use rustls::{
    pki_types::UnixTime,
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{identity::SpiffeId, tls::TlsMaterial, CertError};

/// The live TLS identity of one process. Cheap to clone.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<Inner>,
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what is already live (or nothing to watch).
    Unchanged,
    /// New material is live.
    Swapped,
    /// The files changed but failed validation; the last good material
    /// stays live.
    Rejected(CertError),
}

struct Inner {
    live: ArcSwap<Live>,
    /// Where the files are; `None` for fixed material.
    dir: Option<PathBuf>,
    trust_domain: String,
    reloads: AtomicU64,
    failures: AtomicU64,
    /// Digest of the last invalid files and whether they were reported: a
    /// state is reported (counted, logged) when seen on two polls in a row,
    /// so the moment between a rotation's two renames is not an error, and
    /// only once, not on every poll.
    last_rejected: Mutex<Option<(u64, bool)>>,
}

/// Validated material and what rustls needs from it.
pub(crate) struct Live {
    pub(crate) material: TlsMaterial,
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    not_after: i64,
    serial: String,
    digest: u64,
}

impl CertStore {
    /// Loads and validates the material in `dir`.
    ///
    /// # Errors
    /// Naming the file that is missing, malformed or fails validation.
    pub fn open(dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        let (bytes, digest) = read_files(dir)?;
        let material = TlsMaterial::from_pem(&bytes, dir, trust_domain)?;
        let live = Live::new(material, digest, dir)?;
        Ok(Self::with(live, Some(dir.to_owned()), trust_domain))
    }

    /// A store that never reloads (material made in memory, tests).
    ///
    /// # Errors
    /// When the material fails validation.
    pub fn fixed(material: TlsMaterial) -> Result<Self, CertError> {
        let trust_domain = material.trust_domain().to_owned();
        let live = Live::new(material, 0, Path::new("(memory)"))?;
        Ok(Self::with(live, None, &trust_domain))
    }

    fn with(live: Live, dir: Option<PathBuf>, trust_domain: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                live: ArcSwap::from_pointee(live),
                dir,
                trust_domain: trust_domain.to_owned(),
                reloads: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_rejected: Mutex::new(None),
            }),
        }
    }

    /// Reads the files again and swaps them in if they changed and pass
    /// validation. Invalid files are reported as [`Reload::Rejected`] on
    /// the second poll that sees them unchanged (a rotation in progress is
    /// not an error), and once.
    pub fn reload(&self) -> Reload {
        let Some(dir) = &self.inner.dir else {
            return Reload::Unchanged;
        };
        let (bytes, digest) = match read_files(dir) {
            Ok(read) => read,
            // A file missing mid-swap: one state, reported once.
            Err(e) => return self.rejected(u64::MAX, e),
        };
        let current = self.inner.live.load_full();
        if digest == current.digest {
            return Reload::Unchanged;
        }
        let live = match TlsMaterial::from_pem(&bytes, dir, &self.inner.trust_domain)
            .and_then(|m| Live::new(m, digest, dir))
        {
            Ok(live) => live,
            Err(e) => return self.rejected(digest, e),
        };
        if live.material.spiffe_id() != current.material.spiffe_id() {
            let e = CertError::BadFile {
                path: dir.join("tls.crt"),
                reason: format!(
                    "identity changed from {} to {}",
                    current.material.spiffe_id(),
                    live.material.spiffe_id()
                ),
            };
            return self.rejected(digest, e);
        }
        tracing::info!(
            dir = %dir.display(),
            identity = %live.material.spiffe_id(),
            serial = %live.serial,
            "TLS material reloaded"
        );
        self.inner.live.store(Arc::new(live));
        self.inner.reloads.fetch_add(1, Ordering::Relaxed);
        Reload::Swapped
    }

    /// Counts and logs an invalid state once it persists (see
    /// `last_rejected`).
    fn rejected(&self, digest: u64, error: CertError) -> Reload {
        let mut last = self.inner.last_rejected.lock();
        match *last {
            Some((d, true)) if d == digest => return Reload::Unchanged,
            Some((d, false)) if d == digest => *last = Some((digest, true)),
            _ => {
                *last = Some((digest, false));
                return Reload::Unchanged;
            }
        }
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %error, "TLS material rejected; keeping the last good one");
        Reload::Rejected(error)
    }

    pub(crate) fn live(&self) -> Arc<Live> {
        self.inner.live.load_full()
    }

    /// The live identity.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.inner.live.load().material.spiffe_id().clone()
    }

    /// The trust domain peers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    /// The live certificate's notAfter, Unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        self.inner.live.load().not_after
    }

    /// The live certificate's serial number, hex.
    pub fn serial(&self) -> String {
        self.inner.live.load().serial.clone()
    }

    /// Material swapped in since start.
    pub fn reloads(&self) -> u64 {
        self.inner.reloads.load(Ordering::Relaxed)
    }

    /// Changed files refused by validation since start.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("id", &self.spiffe_id())
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Live {
    fn new(material: TlsMaterial, digest: u64, dir: &Path) -> Result<Self, CertError> {
        let bad = |reason: String| CertError::BadFile {
            path: dir.join("tls.crt"),
            reason,
        };
        let provider = crate::tls::provider();
        let certified = CertifiedKey::from_der(
            material.chain().to_vec(),
            material.key().clone_key(),
            &provider,
        )
        .map_err(|e| bad(format!("key does not match the certificate: {e}")))?;
        let leaf = material
            .chain()
            .first()
            .ok_or_else(|| bad("no certificate".into()))?;
        let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|_| bad("not a DER certificate".into()))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let validity = parsed.validity();
        if now < validity.not_before.timestamp() || now >= validity.not_after.timestamp() {
            return Err(bad(format!(
                "not valid now (valid {} to {})",
                validity.not_before, validity.not_after
            )));
        }
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(material.roots(), Arc::new(provider))
                .build()
                .map_err(|e| bad(format!("unusable trust bundle: {e}")))?;
        client_verifier
            .verify_client_cert(leaf, &material.chain()[1..], UnixTime::now())
            .map_err(|e| bad(format!("does not chain to the trust bundle: {e}")))?;
        Ok(Self {
            not_after: validity.not_after.timestamp(),
            serial: parsed.raw_serial_as_string(),
            material,
            certified: Arc::new(certified),
            client_verifier,
            digest,
        })
    }
}

/// The three files' contents and a digest of them.
fn read_files(dir: &Path) -> Result<([Vec<u8>; 3], u64), CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| CertError::io(path, e))
    };
    let bytes = [read("tls.crt")?, read("tls.key")?, read("ca.crt")?];
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Ok((bytes, h.finish()))
}
