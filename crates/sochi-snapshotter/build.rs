//! Compiles containerd's Snapshots service (our own copy of its wire
//! definition, proto/) into a tonic server and client. Needs `protoc`
//! (Debian: protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/snapshots.proto", "proto/mount.proto"], &["proto"])?;
    Ok(())
}
