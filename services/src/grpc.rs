//! Pieces every gRPC server shares: server reflection over txmesh's
//! descriptor set.

use crate::error::ServiceError;

/// The reflection service (v1) for every txmesh proto.
///
/// # Errors
/// When the embedded descriptor set does not parse (a build defect).
pub fn reflection_service() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    ServiceError,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(txmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServiceError::config("reflection", e.to_string()))
}
