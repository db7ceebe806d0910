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
/// Metadata key of a call refused because another node must serve it: that
/// node's native address (`HOST:PORT`), where the caller retries.
pub const LEADER_METADATA: &str = "x-berth-leader";

/// HTTP/2 flow-control window per stream, bytes (client and server): room
/// for several 1 MiB file reads or writes in flight.
pub const H2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection, bytes.
pub const H2_CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest HTTP/2 frame a peer may send, bytes (h2's default is 16 KiB,
/// which cuts every MiB of file data into 64 frames).
pub const H2_FRAME_BYTES: u32 = 1 << 20;
