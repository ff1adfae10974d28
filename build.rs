//! Compiles `proto/` at build time with protox (a pure-Rust protobuf compiler), so a fresh
//! machine needs no system `protoc`. The file descriptor set is also written out for
//! gRPC server reflection, which is how integrators read the API's documentation.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/payoutregistry/v1/registry.proto",
        "proto/google/type/date.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds the migrations: rebuild when one is added.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("payoutregistry_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // google.type.Date is generated into `proto::google_type` (see lib.rs).
        .extern_path(".google.type", "crate::proto::google_type")
        .compile_fds(fds)?;
    // The google.type package on its own (only its file, so the API's code generated
    // above is not written again), for the module that code refers to.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(protox::compile(["google/type/date.proto"], ["proto"])?)?;
    Ok(())
}
