//! txmesh-proto: the wire contracts of txmesh (`txmesh.v1`), generated from
//! `proto/txmesh/v1/*.proto` at build time. No logic lives here; every other
//! crate speaks these types.
#![forbid(unsafe_code)]

/// `txmesh.v1`: screening (Ingress) and dashboard (Dashboard) contracts.
#[allow(unreachable_pub, missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("txmesh.v1");
}

/// `simetrik`: the contract of the reconciliation service txmesh replaces,
/// served by the ingress for its old clients.
#[allow(unreachable_pub, missing_docs, clippy::all)]
pub mod simetrik {
    tonic::include_proto!("simetrik");
}

/// Encoded `FileDescriptorSet` of every txmesh proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/txmesh_descriptor.bin"));
