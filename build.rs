//! Compiles `proto/` with the pure-Rust `protox` compiler (no system `protoc`), generates the
//! tonic/prost code, and keeps the descriptor set for gRPC server reflection.

use std::env;
use std::error::Error;
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        ["benmo/v1/benmo.proto", "benmo/v1/storage.proto"],
        ["proto"],
    )?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("benmo_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
