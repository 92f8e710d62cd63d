//! Generates the Rust wire types and tonic services from `protos/`.
//!
//! protox parses the `.proto` files in pure Rust, so no system `protoc` is needed; tonic-prost-build
//! turns the descriptor set into prost messages plus tonic clients and servers.

/// Every file compiled, relative to the include root `protos`. Imports resolve against that root.
const PROTO_FILES: &[&str] = &[
    "etcd/kv.proto",
    "etcd/auth.proto",
    "etcd/rpc.proto",
    "etcd/v3lock.proto",
    "etcd/v3election.proto",
    "grpc/health.proto",
    "cairn/internal.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    let fds = protox::compile(PROTO_FILES, ["protos"])?;
    // The descriptors themselves, for the JSON gateway's proto3-JSON mapping.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Keys, values and blobs become `bytes::Bytes`: cheap to clone and slice across layers.
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
