//! Compiles the CRI wire definition (our own copy of the part we speak,
//! proto/api.proto) into tonic clients. No server code: the image proxy
//! forwards raw bytes and needs none. Needs `protoc` (Debian:
//! protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(&["proto/api.proto"], &["proto"])?;
    Ok(())
}
