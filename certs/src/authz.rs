//! Deny-by-default authorization: each service names the SPIFFE IDs allowed
//! to call it; everything else is refused.

use std::collections::{BTreeMap, BTreeSet};

use crate::{CertError, SpiffeId};

/// A protected entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// `Ingress.Screen` and `Ingress.ScreenOne`.
    Screen,
    /// `Dashboard.Publish`.
    Publish,
    /// The dashboard's page, WebSocket and JSON API.
    DashboardUi,
    /// `/metrics` on every service.
    Metrics,
    /// `Admin.InjectFault` and `Admin.ClearFaults`.
    ChaosInject,
    /// `Admin.ListFaults`.
    ChaosList,
    /// `Replica.Forward`: work one ingress replica hands to the owner of
    /// its accounts.
    Forward,
    /// `simetrik.ReconciliationService`: the old reconciliation service's
    /// clients.
    Reconcile,
}

/// The outcome of an authorization check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// Who may call what. Built from workload names within one trust domain.
#[derive(Debug, Clone)]
pub struct AuthzPolicy {
    allowed: BTreeMap<Service, BTreeSet<SpiffeId>>,
}

impl Service {
    /// The name used in config and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Screen => "screen",
            Self::Publish => "publish",
            Self::DashboardUi => "dashboard_ui",
            Self::Metrics => "metrics",
            Self::ChaosInject => "chaos_inject",
            Self::ChaosList => "chaos_list",
            Self::Forward => "forward",
            Self::Reconcile => "reconcile",
        }
    }
}

impl AuthzPolicy {
    /// A policy that allows nobody anything.
    pub fn deny_all() -> Self {
        Self {
            allowed: BTreeMap::new(),
        }
    }

    /// The txmesh defaults: Screen <- txgen; Publish <- ingress; UI <- operator;
    /// metrics <- prometheus, operator; forward <- ingress; reconcile <-
    /// legacy-client.
    ///
    /// # Errors
    /// When `trust_domain` is not a valid trust domain.
    pub fn defaults(trust_domain: &str) -> Result<Self, CertError> {
        let mut policy = Self::deny_all();
        policy.allow(Service::Screen, trust_domain, &["txgen"])?;
        policy.allow(Service::Publish, trust_domain, &["ingress"])?;
        policy.allow(Service::DashboardUi, trust_domain, &["operator"])?;
        policy.allow(Service::Metrics, trust_domain, &["prometheus", "operator"])?;
        policy.allow(Service::ChaosInject, trust_domain, &["chaos"])?;
        policy.allow(Service::ChaosList, trust_domain, &["chaos", "operator"])?;
        policy.allow(Service::Forward, trust_domain, &["ingress"])?;
        policy.allow(Service::Reconcile, trust_domain, &["legacy-client"])?;
        Ok(policy)
    }

    /// Replaces the allow-list of `service` with the given workload names
    /// (or full `spiffe://` IDs).
    ///
    /// # Errors
    /// When a name does not form a valid SPIFFE ID.
    pub fn allow(
        &mut self,
        service: Service,
        trust_domain: &str,
        names: &[impl AsRef<str>],
    ) -> Result<(), CertError> {
        let ids = names
            .iter()
            .map(|name| {
                let name = name.as_ref();
                if name.starts_with("spiffe://") {
                    SpiffeId::parse(name)
                } else {
                    SpiffeId::for_workload(trust_domain, name)
                }
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        self.allowed.insert(service, ids);
        Ok(())
    }

    /// Whether `peer` may call `service`.
    pub fn decide(&self, service: Service, peer: &SpiffeId) -> Decision {
        match self.allowed.get(&service) {
            Some(ids) if ids.contains(peer) => Decision::Allow,
            _ => Decision::Deny,
        }
    }

    /// The IDs allowed to call `service`, for logs and `config print`.
    pub fn allowed(&self, service: Service) -> impl Iterator<Item = &SpiffeId> {
        self.allowed.get(&service).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> SpiffeId {
        SpiffeId::for_workload("txmesh.local", name).expect("valid id")
    }

    #[test]
    fn defaults_allow_only_the_named_callers() {
        let policy = AuthzPolicy::defaults("txmesh.local").expect("valid domain");
        assert_eq!(
            policy.decide(Service::Screen, &id("txgen")),
            Decision::Allow
        );
        assert_eq!(
            policy.decide(Service::Screen, &id("ingress")),
            Decision::Deny
        );
        assert_eq!(
            policy.decide(Service::Publish, &id("ingress")),
            Decision::Allow
        );
        assert_eq!(
            policy.decide(Service::Publish, &id("txgen")),
            Decision::Deny
        );
        assert_eq!(
            policy.decide(Service::DashboardUi, &id("operator")),
            Decision::Allow
        );
        assert_eq!(
            policy.decide(Service::DashboardUi, &id("ingress")),
            Decision::Deny
        );
        let foreign = SpiffeId::parse("spiffe://other.domain/txgen").expect("valid id");
        assert_eq!(policy.decide(Service::Screen, &foreign), Decision::Deny);
    }

    #[test]
    fn deny_all_denies_everything_and_allow_replaces() {
        let mut policy = AuthzPolicy::deny_all();
        assert_eq!(policy.decide(Service::Screen, &id("txgen")), Decision::Deny);
        policy
            .allow(Service::Screen, "txmesh.local", &["batch-client"])
            .expect("valid names");
        assert_eq!(
            policy.decide(Service::Screen, &id("batch-client")),
            Decision::Allow
        );
        assert_eq!(policy.decide(Service::Screen, &id("txgen")), Decision::Deny);
    }
}
