//! Compiles `proto/meshgate/v1/*.proto` with protox (pure Rust: no system `protoc`),
//! generates prost messages and tonic client/server code with tonic-prost-build, and
//! writes the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/meshgate/v1/inference.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    // Includes well-known types (google/protobuf/struct.proto) and every import.
    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("meshgate_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No tonic transport here: axum serves the server, tests bring their own client.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
