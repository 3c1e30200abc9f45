//! Compiles the example .proto files with protox (no protoc binary needed)
//! and generates the tonic servers and clients from the descriptors.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/helloworld.proto",
        "proto/route_guide.proto",
        "proto/echo.proto",
        "proto/probe.proto",
    ];
    for p in protos.iter().chain(["proto/types.proto"].iter()) {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
