//! The one table translating service errors into the native API's terms:
//! a gRPC status code plus the stable symbolic code in `x-berth-code`.

use berth_api::{CODE_METADATA, LEADER_METADATA};
use berth_meta::{Code, Error};
use tonic::metadata::MetadataValue;
use tonic::Status;

/// The gRPC status code of each service error code.
pub fn grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::NotFound => tonic::Code::NotFound,
        Code::Exists => tonic::Code::AlreadyExists,
        Code::NotDir
        | Code::IsDir
        | Code::NotEmpty
        | Code::Busy
        | Code::CrossVolume
        | Code::Stale
        | Code::ReadOnly => tonic::Code::FailedPrecondition,
        Code::Access | Code::Perm => tonic::Code::PermissionDenied,
        Code::Invalid | Code::NameTooLong | Code::Loop | Code::TooBig | Code::BadMessage => {
            tonic::Code::InvalidArgument
        }
        Code::Range => tonic::Code::OutOfRange,
        Code::NoData => tonic::Code::NotFound,
        Code::Quota | Code::NoLocks => tonic::Code::ResourceExhausted,
        Code::Auth => tonic::Code::Unauthenticated,
        Code::Again => tonic::Code::Unavailable,
        Code::Io => tonic::Code::Internal,
    }
}

/// Converts a service error into a gRPC status carrying the symbolic code.
pub fn to_status(e: &Error) -> Status {
    to_status_at(e, None)
}

/// [`to_status`] for an error that names the node serving the request
/// instead ([`Error::redirect`]): `redirect_addr` is that node's native
/// address, sent in `x-berth-leader` so the client repeats the call there
/// (an address that cannot be sent is left out; the client then rotates).
pub fn to_status_at(e: &Error, redirect_addr: Option<&str>) -> Status {
    let mut status = Status::new(grpc_code(e.code), e.message.clone());
    status
        .metadata_mut()
        .insert(CODE_METADATA, MetadataValue::from_static(e.code.symbol()));
    if let Some(v) = redirect_addr
        .filter(|_| e.redirect.is_some())
        .and_then(|a| MetadataValue::try_from(a).ok())
    {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
    status
}

/// The service error a status from another node carries (its `x-berth-code`), if any.
pub fn from_status(s: &Status) -> Option<Error> {
    let symbol = s.metadata().get(CODE_METADATA)?.to_str().ok()?;
    Code::from_symbol(symbol).map(|code| Error::new(code, s.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_and_carries_its_symbol() {
        for code in berth_meta::error::ALL {
            let s = to_status(&Error::new(code, "m"));
            assert_eq!(s.code(), grpc_code(code));
            assert_ne!(s.code(), tonic::Code::Ok);
            assert_eq!(s.metadata().get(CODE_METADATA).unwrap(), code.symbol());
            assert_eq!(s.message(), "m");
            assert_eq!(from_status(&s).map(|e| e.code), Some(code));
        }
        assert!(from_status(&Status::unavailable("x")).is_none());
        assert!(to_status(&Error::new(Code::Again, "m"))
            .metadata()
            .get(LEADER_METADATA)
            .is_none());
    }

    #[test]
    fn redirects_carry_the_address() {
        let e = Error::elsewhere(2, "shard 5 is led by node 2; send the request there");
        let s = to_status_at(&e, Some("10.0.0.2:5660"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.metadata().get(CODE_METADATA).unwrap(), "EAGAIN");
        assert_eq!(s.metadata().get(LEADER_METADATA).unwrap(), "10.0.0.2:5660");
        // Unknown address, or an error that is no refusal: no header.
        assert!(to_status_at(&e, None)
            .metadata()
            .get(LEADER_METADATA)
            .is_none());
        let plain = Error::new(Code::Again, "replication: raft request timed out");
        assert!(to_status_at(&plain, Some("10.0.0.2:5660"))
            .metadata()
            .get(LEADER_METADATA)
            .is_none());
        // A value that cannot travel as metadata is dropped, not a panic.
        assert!(to_status_at(&e, Some("bad\naddr"))
            .metadata()
            .get(LEADER_METADATA)
            .is_none());
        assert_eq!(grpc_code(Code::Access), tonic::Code::PermissionDenied);
        assert_eq!(grpc_code(Code::Auth), tonic::Code::Unauthenticated);
    }
}
