//! Join tokens: what a new node presents to join a cluster
//! (`berth node token create`, then `berth server --join ADDR --join-token
//! T`).
//!
//! ```text
//! berthjoin1.<base64url-nopad(body)>.<base64url-nopad(signature)>
//! ```
//!
//! The body (postcard, see [`JoinTokenBody`]) names the cluster, the token's
//! id, when it expires, the servers to contact and the SHA-256 of the
//! cluster CA's certificate: the joining node, which has no CA yet, trusts
//! the server whose CA has that fingerprint and no other. The signature is
//! the cluster's ticket-signing key over the body under its own domain
//! ([`DOMAIN`]), so a join token never verifies as a ticket or a file
//! handle, nor the other way round. How many uses are left and whether the
//! token was revoked live in the cluster map, not in the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ticket::{KeyRing, TicketSigner};

/// Every join token starts with this.
pub const PREFIX: &str = "berthjoin1.";
/// The signature's domain label.
pub const DOMAIN: &[u8] = b"berth join token v1";
/// Longest join token accepted.
pub const TOKEN_LEN_MAX_BYTES: usize = 4096;

/// What a join token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenBody {
    /// Layout version (1).
    pub version: u8,
    /// The signing key's id in the cluster's key ring.
    pub key_id: u32,
    /// The cluster's random id (fixed at its first start).
    pub cluster_id: String,
    /// The token's id (hex), the key of its record in the cluster map.
    pub id: String,
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_sha256: [u8; 32],
    /// Unix seconds.
    pub expires_at: u64,
    /// Native API addresses of the cluster's nodes when it was made.
    pub servers: Vec<String>,
}

/// Why a join token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("not a join token: {0}")]
    Malformed(String),
    #[error("the join token was not signed by this cluster")]
    BadSignature,
    #[error("the join token is for another cluster")]
    OtherCluster,
    #[error("the join token expired")]
    Expired,
}

/// SHA-256 of a certificate in PEM (the first one in `pem`).
pub fn ca_sha256(pem: &str) -> Result<[u8; 32], JoinError> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| JoinError::Malformed(format!("CA certificate: {e}")))?;
    Ok(Sha256::digest(der.as_ref()).into())
}

/// The fingerprint as people read it: `sha256:` and hex.
pub fn fingerprint_text(sha: &[u8; 32]) -> String {
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Signs `body` into a token.
pub fn sign(signer: &TicketSigner, body: &JoinTokenBody) -> String {
    let bytes = postcard::to_allocvec(body).expect("a join token body encodes");
    let sig = signer.sign_detached(DOMAIN, &bytes);
    format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&bytes),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// The body and signed bytes of a token, NOT verified: what a joining node
/// reads to find the servers and the CA fingerprint before it can check
/// anything else.
pub fn decode_unverified(token: &str) -> Result<JoinTokenBody, JoinError> {
    split(token).map(|(body, _, _)| body)
}

fn split(token: &str) -> Result<(JoinTokenBody, Vec<u8>, Vec<u8>), JoinError> {
    let bad = |m: &str| JoinError::Malformed(m.to_string());
    let t = token.trim();
    if t.len() > TOKEN_LEN_MAX_BYTES {
        return Err(bad("longer than 4096 bytes"));
    }
    let rest = t
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("it does not start with 'berthjoin1.'"))?;
    let (body_b64, sig_b64) = rest
        .split_once('.')
        .ok_or_else(|| bad("the '.' before the signature is missing"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body_b64)
        .map_err(|_| bad("the body is not base64url"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| bad("the signature is not base64url"))?;
    let body: JoinTokenBody =
        postcard::from_bytes(&bytes).map_err(|_| bad("the body does not decode"))?;
    if body.version != 1 {
        return Err(bad("unknown version"));
    }
    Ok((body, bytes, sig))
}

/// Checks a token's signature against `ring`, its cluster and its expiry
/// (`now_secs`).
pub fn verify(
    token: &str,
    ring: &KeyRing,
    cluster_id: &str,
    now_secs: u64,
) -> Result<JoinTokenBody, JoinError> {
    let (body, bytes, sig) = split(token)?;
    if !ring.verify_detached(body.key_id, DOMAIN, &bytes, &sig) {
        return Err(JoinError::BadSignature);
    }
    if body.cluster_id != cluster_id {
        return Err(JoinError::OtherCluster);
    }
    if body.expires_at <= now_secs {
        return Err(JoinError::Expired);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> JoinTokenBody {
        JoinTokenBody {
            version: 1,
            key_id: 1,
            cluster_id: "c1".into(),
            id: "00ff".into(),
            ca_sha256: [7; 32],
            expires_at: 1000,
            servers: vec!["h:5660".into()],
        }
    }

    #[test]
    fn tokens_verify_only_as_issued() {
        let signer = TicketSigner::generate(1);
        let mut ring = KeyRing::new();
        ring.insert(1, signer.verifying_key_bytes());
        let t = sign(&signer, &body());
        assert!(t.starts_with(PREFIX));
        assert_eq!(verify(&t, &ring, "c1", 999), Ok(body()));
        assert_eq!(decode_unverified(&t), Ok(body()));
        assert_eq!(verify(&t, &ring, "c1", 1000), Err(JoinError::Expired));
        assert_eq!(verify(&t, &ring, "c2", 1), Err(JoinError::OtherCluster));
        // Another cluster's key, or a changed body, fails the signature.
        let other = TicketSigner::generate(1);
        let mut other_ring = KeyRing::new();
        other_ring.insert(1, other.verifying_key_bytes());
        assert_eq!(
            verify(&t, &other_ring, "c1", 1),
            Err(JoinError::BadSignature)
        );
        let forged = sign(
            &other,
            &JoinTokenBody {
                expires_at: u64::MAX,
                ..body()
            },
        );
        assert_eq!(
            verify(&forged, &ring, "c1", 1),
            Err(JoinError::BadSignature)
        );
        // A ticket's signature never passes for a join token's.
        let (_, sig) = t[PREFIX.len()..].split_once('.').unwrap();
        let swapped = format!("berth1.{sig}");
        assert!(matches!(
            verify(&swapped, &ring, "c1", 1),
            Err(JoinError::Malformed(_))
        ));
        for bad in ["", "berthjoin1.", "berthjoin1.a.b", "berthjoin1.!!.AA"] {
            assert!(
                matches!(verify(bad, &ring, "c1", 1), Err(JoinError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn fingerprints_are_of_the_certificate() {
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let pem = ca.cert.pem();
        let sha = ca_sha256(&pem).unwrap();
        assert_eq!(
            sha,
            <[u8; 32]>::from(Sha256::digest(ca.cert.der().as_ref()))
        );
        assert!(fingerprint_text(&sha).starts_with("sha256:"));
        assert_eq!(fingerprint_text(&sha).len(), 7 + 64);
        assert!(ca_sha256("not a pem").is_err());
    }
}
