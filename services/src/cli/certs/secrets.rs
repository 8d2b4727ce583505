//! `txmesh certs k8s-secrets`: the identities of a Helm release as
//! Kubernetes Secret manifests in the cert-manager layout (`tls.crt`,
//! `tls.key`, `ca.crt`), for clusters that do not run cert-manager (the
//! chart's `certificates.mode: existingSecrets`). Every leaf is issued now
//! from the state directory's CA, with the DNS names of the release's
//! Services, so that Prometheus can verify `serverName` when it scrapes;
//! peers of the mesh verify the SPIFFE ID instead.

use std::time::Duration;

use txmesh_certs::{CertAuthority, IssueOptions, StateLayout, COMPONENT_IDENTITIES};

use crate::{config::TxmeshConfig, error::ServiceError};

/// Every identity the chart mounts: the components `certs init` makes
/// (but `legacy-client`: the old service's clients run outside the
/// cluster, and their certificate is issued to them), and Prometheus,
/// which scrapes `/metrics` in a cluster.
fn release_identities() -> impl Iterator<Item = &'static str> {
    COMPONENT_IDENTITIES
        .iter()
        .copied()
        .filter(|name| *name != "legacy-client")
        .chain(["prometheus"])
}

/// Which release the Secrets are for.
#[derive(Debug, Clone)]
pub struct ReleaseNames {
    /// The chart's full name (the release name, or `fullnameOverride`):
    /// Services are `FULLNAME-ingress`, Secrets `FULLNAME-NAME-tls`.
    pub fullname: String,
    pub namespace: String,
    /// The cluster's DNS domain (`cluster.local` unless the cluster says otherwise).
    pub cluster_domain: String,
}

impl ReleaseNames {
    /// The Secret the chart mounts for `identity`.
    pub fn secret_name(&self, identity: &str) -> String {
        format!("{}-{identity}-tls", self.fullname)
    }

    /// The DNS names a server identity answers to: its client Service in
    /// every short form, and each pod behind its headless Service.
    pub fn dns_names(&self, identity: &str) -> Vec<String> {
        if !matches!(identity, "ingress" | "dashboard") {
            return Vec::new();
        }
        let service = format!("{}-{identity}", self.fullname);
        let ns = &self.namespace;
        let domain = &self.cluster_domain;
        vec![
            service.clone(),
            format!("{service}.{ns}"),
            format!("{service}.{ns}.svc"),
            format!("{service}.{ns}.svc.{domain}"),
            format!("*.{service}-headless.{ns}.svc"),
            format!("*.{service}-headless.{ns}.svc.{domain}"),
        ]
    }
}

/// The Secret manifests (one YAML stream) for every release identity,
/// issued from the CA of `config.state_dir` (made there if missing).
///
/// # Errors
/// When the CA cannot be loaded or made, or issuing fails.
pub fn manifests(
    config: &TxmeshConfig,
    release: &ReleaseNames,
    ttl: Duration,
) -> Result<String, ServiceError> {
    let layout = StateLayout::new(&config.state_dir);
    let ca = CertAuthority::ensure(&layout, &config.trust_domain, &[], &IssueOptions::default())?;
    let bundle = ca.bundle(&layout);
    let mut out = String::new();
    for identity in release_identities() {
        let options = IssueOptions {
            ttl,
            dns_names: release.dns_names(identity),
            ip_addrs: Vec::new(),
        };
        let (cert, key) = ca.issue(identity, &options)?;
        out += &secret(
            release,
            identity,
            &config.trust_domain,
            &cert,
            &key,
            &bundle,
        );
    }
    Ok(out)
}

fn secret(
    release: &ReleaseNames,
    identity: &str,
    trust_domain: &str,
    cert: &str,
    key: &str,
    bundle: &str,
) -> String {
    format!(
        "---\n\
         # spiffe://{trust_domain}/{identity}\n\
         apiVersion: v1\n\
         kind: Secret\n\
         type: kubernetes.io/tls\n\
         metadata:\n  \
           name: {name}\n  \
           namespace: {ns}\n  \
           labels:\n    \
             app.kubernetes.io/name: txmesh\n    \
             app.kubernetes.io/instance: {instance}\n    \
             txmesh.dev/identity: {identity}\n  \
           annotations:\n    \
             txmesh.dev/spiffe-id: spiffe://{trust_domain}/{identity}\n\
         stringData:\n  \
           tls.crt: |\n{cert}  \
           tls.key: |\n{key}  \
           ca.crt: |\n{bundle}",
        name = release.secret_name(identity),
        ns = release.namespace,
        instance = release.fullname,
        cert = block(cert),
        key = block(key),
        bundle = block(bundle),
    )
}

/// PEM as the body of a YAML block scalar, four spaces in.
fn block(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.is_empty())
        .map(|l| format!("    {l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_cover_the_services_and_their_pods() {
        let release = ReleaseNames {
            fullname: "txmesh".into(),
            namespace: "prod".into(),
            cluster_domain: "cluster.local".into(),
        };
        let names = release.dns_names("ingress");
        assert!(names.contains(&"txmesh-ingress.prod.svc".to_owned()));
        assert!(names.contains(&"*.txmesh-ingress-headless.prod.svc.cluster.local".to_owned()));
        assert!(release.dns_names("operator").is_empty());
        assert_eq!(release.secret_name("prometheus"), "txmesh-prometheus-tls");
    }
}
