//! Pieces the gRPC services share: server reflection over txmesh's
//! descriptor set, and display names of wire enums.

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

/// `TXN_ERROR_CODE_POISON` -> `POISON` (reports, metrics).
pub fn error_code_name(code: txmesh_proto::v1::TxnErrorCode) -> &'static str {
    code.as_str_name().trim_start_matches("TXN_ERROR_CODE_")
}

/// `REASON_HIGH_AMOUNT` -> `HIGH_AMOUNT` (reports, dashboard, metrics).
pub fn reason_name(code: i32) -> String {
    txmesh_proto::v1::Reason::try_from(code).map_or_else(
        |_| format!("UNKNOWN_{code}"),
        |r| r.as_str_name().trim_start_matches("REASON_").to_owned(),
    )
}
