//! Compiles proto/txmesh/v1/*.proto and the old service's
//! proto/simetrik/reconciliation.proto with protox (pure Rust, no system protoc)
//! and generates prost messages plus tonic clients and servers from the
//! resulting descriptor set, which is also kept for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "txmesh/v1/screening.proto",
    "txmesh/v1/dashboard.proto",
    "txmesh/v1/admin.proto",
    "txmesh/v1/partition.proto",
    "txmesh/v1/cluster.proto",
    "simetrik/reconciliation.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    fs::write(out.join("txmesh_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
