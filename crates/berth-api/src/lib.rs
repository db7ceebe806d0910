//! The native API of Berth (`berth.v1`): protobuf messages and gRPC stubs
//! generated from `proto/berth/v1/berth.proto`.
//!
//! Invariant: this crate holds only the wire contract. No logic lives here, so
//! the server, the CLI and the FUSE client all agree on one definition.

/// Version 1 of the native API.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("berth.v1");
}

/// Metadata key carrying the caller's ticket (`Bearer <ticket>`).
pub const AUTH_METADATA: &str = "authorization";
/// Metadata key carrying the stable symbolic error code of a failed call.
pub const CODE_METADATA: &str = "x-berth-code";
