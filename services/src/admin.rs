//! The `txmesh.v1.Admin` service: fault injection for chaos experiments,
//! over the component's mTLS gRPC listener (the ingress's and the
//! dashboard's). Injecting and clearing are for
//! the `authz.chaos_inject` identities (the chaos identity), listing also
//! for `authz.chaos_list` (operator). Every fault carries a lease and is
//! bounded by the registry's limits; a refused spec says why.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status};
use txmesh_certs::{AuthzPolicy, Service};
use txmesh_chaos::{FaultId, FaultKind, FaultSpec, Registry};
use txmesh_proto::v1::{
    admin_server::Admin, ActiveFault, ClearFaultsRequest, ClearFaultsResponse,
    FaultSpec as WireSpec, InjectFaultRequest, InjectFaultResponse, ListFaultsRequest,
    ListFaultsResponse,
};

use crate::{metrics::Metrics, net::authorize};

/// The Admin service of one component.
#[derive(Clone)]
pub struct AdminService {
    registry: Arc<Registry>,
    policy: Arc<AuthzPolicy>,
    metrics: Arc<Metrics>,
}

impl AdminService {
    pub fn new(registry: Arc<Registry>, policy: Arc<AuthzPolicy>, metrics: Arc<Metrics>) -> Self {
        Self {
            registry,
            policy,
            metrics,
        }
    }
}

/// The wire spec as a chaos spec.
///
/// # Errors
/// `INVALID_ARGUMENT` naming what is wrong.
fn from_wire(spec: &WireSpec) -> Result<FaultSpec, Status> {
    let kind = FaultKind::from_parts(&spec.kind, spec.delay_ms, spec.code)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(FaultSpec {
        kind,
        rate: spec.rate,
        account_share: spec.account_share,
        duration: Duration::from_millis(spec.duration_ms),
        max_hits: spec.max_hits,
    })
}

/// A chaos spec on the wire.
pub fn to_wire(spec: &FaultSpec) -> WireSpec {
    WireSpec {
        kind: spec.kind.name().to_owned(),
        delay_ms: spec.kind.delay_ms(),
        rate: spec.rate,
        account_share: spec.account_share,
        duration_ms: u64::try_from(spec.duration.as_millis()).unwrap_or(u64::MAX),
        code: spec.kind.code(),
        max_hits: spec.max_hits,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn inject_fault(
        &self,
        request: Request<InjectFaultRequest>,
    ) -> Result<Response<InjectFaultResponse>, Status> {
        let peer = authorize(&request, &self.policy, &self.metrics, Service::ChaosInject)?;
        let wire = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let spec = from_wire(&wire)?;
        let id = self
            .registry
            .inject(spec, Instant::now())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::warn!(%peer, fault = id.0, kind = %wire.kind, "fault injected over Admin");
        Ok(Response::new(InjectFaultResponse { fault_id: id.0 }))
    }

    async fn list_faults(
        &self,
        request: Request<ListFaultsRequest>,
    ) -> Result<Response<ListFaultsResponse>, Status> {
        authorize(&request, &self.policy, &self.metrics, Service::ChaosList)?;
        let faults = self
            .registry
            .list(Instant::now())
            .into_iter()
            .map(|f| ActiveFault {
                fault_id: f.id.0,
                spec: Some(to_wire(&f.spec)),
                expires_in_ms: u64::try_from(f.expires_in.as_millis()).unwrap_or(u64::MAX),
                hits: f.hits,
            })
            .collect();
        Ok(Response::new(ListFaultsResponse { faults }))
    }

    async fn clear_faults(
        &self,
        request: Request<ClearFaultsRequest>,
    ) -> Result<Response<ClearFaultsResponse>, Status> {
        let peer = authorize(&request, &self.policy, &self.metrics, Service::ChaosInject)?;
        let id = request.into_inner().fault_id;
        let cleared = if id == 0 {
            u32::try_from(self.registry.clear_all(Instant::now())).unwrap_or(u32::MAX)
        } else {
            u32::from(self.registry.clear(FaultId(id)))
        };
        tracing::warn!(%peer, fault = id, cleared, "faults cleared over Admin");
        Ok(Response::new(ClearFaultsResponse { cleared }))
    }
}
