//! Generates the gRPC code for every `.proto` under this directory. This is the
//! only place in the workspace where code is generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "baton/v1/agent.proto",
        "baton/v1/operator.proto",
        "baton/v1/replica.proto",
        "samplekv/v1/samplekv.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // No transport helpers: the generated `connect` constructor would clash with the
    // `AgentLink.Connect` rpc. Clients are built from a `Channel` with `new`.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
