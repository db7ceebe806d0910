//! Generates the gRPC types of `berth.v1` from `proto/`. Uses the vendored
//! `protoc` binary so a fresh machine needs nothing installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; set before invoking protoc.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/berth/v1/berth.proto"], &["proto"])?;
    Ok(())
}
