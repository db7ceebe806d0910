//! File handles: the capability `open` returns.
//!
//! Opening a file checks permissions once, as open(2) does. The server then
//! hands out a handle naming the principal, the file and the rights granted,
//! signed with the cluster's active ticket-signing key, so any node verifies
//! it locally. Reads and writes present the handle together with the
//! caller's ticket; a handle is only honoured for the principal it names.
//!
//! Wire form: `version (1) · key id (u32 BE) · postcard(HandleBody) length
//! (u32 BE) · body · Ed25519 signature (64)`.

use serde::{Deserialize, Serialize};

use crate::ticket::{KeyRing, TicketSigner};

/// Current handle format.
pub const HANDLE_VERSION: u8 = 1;
/// Largest encoded handle accepted.
pub const HANDLE_LEN_MAX_BYTES: usize = 1024;
const DOMAIN: &[u8] = b"berth-handle-v1";

/// What a handle grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleBody {
    pub cluster: String,
    pub principal: String,
    pub volume: u64,
    pub ino: u64,
    pub read: bool,
    pub write: bool,
    pub expires_at: u64,
    /// Set when the file is read from a snapshot (its id).
    pub snapshot: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error("malformed file handle: {0}")]
    Malformed(&'static str),
    #[error("file handle signature does not verify (reopen the file)")]
    BadSignature,
    #[error("file handle expired (reopen the file)")]
    Expired,
    #[error("file handle belongs to another cluster")]
    WrongCluster,
    #[error("file handle was issued to {issued_to:?}, not to the caller")]
    WrongPrincipal { issued_to: String },
}

/// Signs a handle with `signer`.
pub fn seal(body: &HandleBody, signer: &TicketSigner) -> Vec<u8> {
    let bytes = postcard::to_allocvec(body).expect("postcard encodes a HandleBody");
    let mut out = Vec::with_capacity(9 + bytes.len() + 64);
    out.push(HANDLE_VERSION);
    out.extend_from_slice(&signer.key_id().to_be_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    let signed = &out[..];
    let sig = signer.sign_detached(DOMAIN, signed);
    out.extend_from_slice(&sig);
    out
}

/// Verifies a handle for `principal` at time `now_secs`.
pub fn open(
    handle: &[u8],
    ring: &KeyRing,
    cluster: &str,
    principal: &str,
    now_secs: u64,
) -> Result<HandleBody, HandleError> {
    if handle.len() > HANDLE_LEN_MAX_BYTES {
        return Err(HandleError::Malformed("too long"));
    }
    if handle.len() < 9 + 64 {
        return Err(HandleError::Malformed("too short"));
    }
    if handle[0] != HANDLE_VERSION {
        return Err(HandleError::Malformed("unknown version"));
    }
    let key_id = u32::from_be_bytes(handle[1..5].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(handle[5..9].try_into().expect("4 bytes")) as usize;
    if handle.len() != 9 + len + 64 {
        return Err(HandleError::Malformed("length mismatch"));
    }
    let (signed, sig) = handle.split_at(9 + len);
    if !ring.verify_detached(key_id, DOMAIN, signed, sig) {
        return Err(HandleError::BadSignature);
    }
    let body: HandleBody = postcard::from_bytes(&signed[9..])
        .map_err(|_| HandleError::Malformed("undecodable body"))?;
    if body.cluster != cluster {
        return Err(HandleError::WrongCluster);
    }
    if now_secs >= body.expires_at {
        return Err(HandleError::Expired);
    }
    if body.principal != principal {
        return Err(HandleError::WrongPrincipal {
            issued_to: body.principal,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (TicketSigner, KeyRing, HandleBody) {
        let signer = TicketSigner::generate(3);
        let mut ring = KeyRing::new();
        ring.insert(3, signer.verifying_key_bytes());
        let body = HandleBody {
            cluster: "c".into(),
            principal: "alice".into(),
            volume: 2,
            ino: 77,
            read: true,
            write: false,
            expires_at: 1000,
            snapshot: None,
        };
        (signer, ring, body)
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let (signer, ring, body) = setup();
        let h = seal(&body, &signer);
        assert_eq!(open(&h, &ring, "c", "alice", 10).unwrap(), body);
        assert_eq!(
            open(&h, &ring, "c", "alice", 1000),
            Err(HandleError::Expired)
        );
        assert_eq!(
            open(&h, &ring, "d", "alice", 10),
            Err(HandleError::WrongCluster)
        );
        assert!(matches!(
            open(&h, &ring, "c", "bob", 10),
            Err(HandleError::WrongPrincipal { .. })
        ));
        // Any flipped bit fails.
        for i in 0..h.len() {
            let mut bad = h.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad, &ring, "c", "alice", 10).is_err(), "byte {i}");
        }
        assert!(open(&h[..20], &ring, "c", "alice", 10).is_err());
        // A ticket-domain signature over the same bytes never verifies.
        let other = TicketSigner::generate(3);
        let forged = seal(&body, &other);
        assert_eq!(
            open(&forged, &ring, "c", "alice", 10),
            Err(HandleError::BadSignature)
        );
    }
}
