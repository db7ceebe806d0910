//! Generates the gRPC types of `berth.v1` from `proto/`. Uses the vendored
//! `protoc` binary so a fresh machine needs nothing installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; set before invoking protoc.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // File data as `Bytes`: decoded as a slice of the received buffer,
        // not copied out of it (a 1 MiB copy per read and per write).
        .bytes(".berth.v1.ReadResponse.data")
        .bytes(".berth.v1.WriteRequest.data")
        .compile_protos(&["proto/berth/v1/berth.proto"], &["proto"])?;
    Ok(())
}
