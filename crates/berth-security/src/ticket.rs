//! Ed25519-signed tickets: the credential every Berth protocol carries.
//!
//! # Wire format (version 1) — a high-risk surface: change only with a new version
//!
//! ```text
//! berth1.<base64url-nopad(body)>.<base64url-nopad(signature)>
//! ```
//!
//! - `body` is the [`TicketBody`] encoded with `postcard` (field order as
//!   declared; `version` is the first byte, so a future layout is recognised
//!   before it is decoded).
//! - `signature` is the 64-byte Ed25519 signature over
//!   `b"berth-ticket-v1\0" ‖ body` — the exact body bytes, domain-separated so
//!   a ticket signature can never be confused with any other use of the key.
//!
//! The result is one line of printable ASCII (`[A-Za-z0-9_.-]`), usable as a
//! password in Kafka SASL PLAIN and MongoDB PLAIN.
//!
//! Verification is strict: whitespace is trimmed at the ends only, anything
//! else that is not exactly this shape is [`TicketError::Malformed`], the
//! signature is checked with `verify_strict` (no malleable signatures, no
//! weak keys), then cluster and validity window. Key rotation is several keys
//! in one [`KeyRing`], looked up by the body's `key_id`.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::principal::{Principal, PrincipalKind};
use crate::scope::Scope;

/// The text every version-1 ticket starts with.
pub const TICKET_PREFIX: &str = "berth1.";
/// The body layout this crate writes and reads.
pub const TICKET_VERSION: u8 = 1;
/// Domain separation for ticket signatures.
const SIGNING_CONTEXT: &[u8] = b"berth-ticket-v1\0";
/// Longest ticket text accepted (after trimming). Large enough for hundreds
/// of groups; small enough that decoding garbage is cheap.
pub const TICKET_LEN_MAX_BYTES: usize = 16 * 1024;
/// How far in the future `issued_at` may lie (clock skew between nodes).
pub const CLOCK_SKEW_MAX_SECS: u64 = 60;

/// Why a ticket was refused. None of these is retryable with the same ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error(
        "malformed ticket: {0}; pass the whole ticket exactly as `berth login` or \
         `berth ticket issue` printed it"
    )]
    Malformed(String),
    #[error(
        "the ticket was signed with key {0}, which this cluster does not know (retired, \
         or from another cluster): get a new ticket with `berth login`"
    )]
    UnknownKey(u32),
    #[error(
        "the verification key {0} in the key ring is not a valid Ed25519 public key: \
         rotate the cluster signing key"
    )]
    InvalidKey(u32),
    #[error(
        "the ticket signature does not verify (the ticket was altered or forged): \
         get a new ticket with `berth login`"
    )]
    BadSignature,
    #[error(
        "the ticket expired at {expired_at} (unix seconds): get a new one with \
         `berth login` or `berth ticket issue`"
    )]
    Expired { expired_at: u64 },
    #[error(
        "the ticket is not valid yet (issued more than {CLOCK_SKEW_MAX_SECS} s in the \
         future): check that the clocks of client and servers are synchronised (NTP)"
    )]
    NotYetValid,
    #[error(
        "the ticket is for cluster {found:?} but this is cluster {expected:?}: use a \
         ticket issued by this cluster"
    )]
    WrongCluster { expected: String, found: String },
    #[error(
        "ticket format version {0} is not supported (this build reads version \
         {TICKET_VERSION}): get a ticket from a server of the same Berth version"
    )]
    UnsupportedVersion(u8),
}

/// What a ticket says. Signed as a whole; see the module docs for the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    /// Always [`TICKET_VERSION`]; must stay the first field.
    pub version: u8,
    /// Which key of the ring signed the ticket.
    pub key_id: u32,
    pub cluster: String,
    pub principal: String,
    pub kind: PrincipalKind,
    pub uid: u32,
    pub gids: Vec<u32>,
    pub groups: Vec<String>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the ticket is valid while `now < expires_at`.
    pub expires_at: u64,
    pub scope: Option<Scope>,
}

impl TicketBody {
    /// The identity the ticket proves.
    pub fn to_principal(&self) -> Principal {
        Principal {
            name: self.principal.clone(),
            kind: self.kind.clone(),
            uid: self.uid,
            gids: self.gids.clone(),
            groups: self.groups.clone(),
            scope: self.scope.clone(),
        }
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(body);
    msg
}

fn encode(body_bytes: &[u8], signature: &Signature) -> String {
    format!(
        "{TICKET_PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(body_bytes),
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// A ticket-signing key. `Debug` shows only the key id and public key.
#[derive(Clone)]
pub struct TicketSigner {
    key_id: u32,
    key: SigningKey,
}

impl TicketSigner {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate(key_id: u32) -> TicketSigner {
        TicketSigner {
            key_id,
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// A signer from a stored 32-byte secret (as returned by [`Self::secret_bytes`]).
    pub fn from_bytes(key_id: u32, secret: &[u8; 32]) -> TicketSigner {
        TicketSigner {
            key_id,
            key: SigningKey::from_bytes(secret),
        }
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The secret key. Store it only where the cluster keeps secrets.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key to put in every node's [`KeyRing`].
    pub fn verifying_key_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs `body` and returns the one-line ticket.
    ///
    /// # Panics
    /// If `body.key_id` is not this signer's key id or `body.version` is not
    /// [`TICKET_VERSION`]: such a ticket could never verify, so it is a bug in
    /// the caller, not a condition to handle.
    pub fn sign(&self, body: &TicketBody) -> String {
        assert_eq!(
            body.key_id, self.key_id,
            "ticket body names key {} but is signed with key {}",
            body.key_id, self.key_id
        );
        assert_eq!(body.version, TICKET_VERSION, "ticket body version");
        // Serialising strings, integers, vectors and enums into a Vec cannot fail.
        let bytes = postcard::to_allocvec(body).expect("postcard encodes a TicketBody");
        let signature = self.key.sign(&signing_message(&bytes));
        encode(&bytes, &signature)
    }
}

impl TicketSigner {
    /// Signs `msg` under a `domain` label, for signed values other than
    /// tickets (e.g. file handles). The domain keeps a signature for one kind
    /// of value from ever verifying as another.
    pub fn sign_detached(&self, domain: &[u8], msg: &[u8]) -> [u8; 64] {
        self.key.sign(&detached_message(domain, msg)).to_bytes()
    }
}

fn detached_message(domain: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 1 + msg.len());
    out.extend_from_slice(domain);
    out.push(0);
    out.extend_from_slice(msg);
    out
}

impl fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public: String = self
            .verifying_key_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        f.debug_struct("TicketSigner")
            .field("key_id", &self.key_id)
            .field("verifying_key", &public)
            .finish_non_exhaustive()
    }
}

/// The public keys a node accepts tickets from, by key id. Rotation: insert
/// the new key, start signing with it, remove the old one once the tickets it
/// signed have expired.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    /// `None` marks key bytes that are not a usable Ed25519 public key: kept
    /// so that tickets naming that key get a precise error.
    keys: BTreeMap<u32, Option<VerifyingKey>>,
}

impl KeyRing {
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Adds or replaces the key `key_id`. Key bytes that are not a valid,
    /// strong Ed25519 public key are recorded as unusable: tickets signed
    /// under that id are refused with [`TicketError::InvalidKey`]. Use
    /// [`Self::try_insert`] to get the error here instead.
    pub fn insert(&mut self, key_id: u32, public_key: [u8; 32]) {
        if self.try_insert(key_id, public_key).is_err() {
            tracing::warn!(
                key_id,
                "ticket verification key is not a valid Ed25519 public key; \
                 tickets signed with it will be refused"
            );
            self.keys.insert(key_id, None);
        }
    }

    /// Adds or replaces the key `key_id`, refusing invalid or weak keys (the
    /// ring is left unchanged then).
    pub fn try_insert(&mut self, key_id: u32, public_key: [u8; 32]) -> Result<(), TicketError> {
        match VerifyingKey::from_bytes(&public_key) {
            Ok(key) if !key.is_weak() => {
                self.keys.insert(key_id, Some(key));
                Ok(())
            }
            _ => Err(TicketError::InvalidKey(key_id)),
        }
    }

    /// Removes the key `key_id`; returns whether it was present.
    pub fn remove(&mut self, key_id: u32) -> bool {
        self.keys.remove(&key_id).is_some()
    }

    pub fn contains(&self, key_id: u32) -> bool {
        self.keys.contains_key(&key_id)
    }

    /// The key ids in the ring, ascending.
    pub fn key_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `ticket` for cluster `cluster` at time `now_secs` and returns
    /// the principal it proves.
    ///
    /// Checks, in order: shape, version, key id, signature, cluster, validity
    /// window (`issued_at` up to [`CLOCK_SKEW_MAX_SECS`] in the future is
    /// tolerated), and the scope's paths.
    pub fn verify(
        &self,
        ticket: &str,
        cluster: &str,
        now_secs: u64,
    ) -> Result<Principal, TicketError> {
        self.verify_body(ticket, cluster, now_secs)
            .map(|b| b.to_principal())
    }

    /// Like [`KeyRing::verify`], returning the whole verified body.
    pub fn verify_body(
        &self,
        ticket: &str,
        cluster: &str,
        now_secs: u64,
    ) -> Result<TicketBody, TicketError> {
        let parts = split(ticket)?;
        let body = decode_body(&parts.body)?;
        let key = match self.keys.get(&body.key_id) {
            None => return Err(TicketError::UnknownKey(body.key_id)),
            Some(None) => return Err(TicketError::InvalidKey(body.key_id)),
            Some(Some(key)) => key,
        };
        key.verify_strict(&signing_message(&parts.body), &parts.signature)
            .map_err(|_| TicketError::BadSignature)?;
        if body.cluster != cluster {
            return Err(TicketError::WrongCluster {
                expected: cluster.to_string(),
                found: body.cluster,
            });
        }
        if body.issued_at > now_secs.saturating_add(CLOCK_SKEW_MAX_SECS) {
            return Err(TicketError::NotYetValid);
        }
        if now_secs >= body.expires_at {
            return Err(TicketError::Expired {
                expired_at: body.expires_at,
            });
        }
        if let Some(scope) = &body.scope {
            scope
                .validate()
                .map_err(|e| TicketError::Malformed(format!("bad scope: {e}")))?;
        }
        Ok(body)
    }
}

impl KeyRing {
    /// Verifies a signature made by [`TicketSigner::sign_detached`] with key
    /// `key_id` under `domain`.
    pub fn verify_detached(
        &self,
        key_id: u32,
        domain: &[u8],
        msg: &[u8],
        signature: &[u8],
    ) -> bool {
        let Some(Some(key)) = self.keys.get(&key_id) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        key.verify_strict(&detached_message(domain, msg), &sig)
            .is_ok()
    }
}

/// Decodes a ticket WITHOUT checking its signature, cluster or expiry. Only
/// for displaying a ticket (`berth ticket print`); never for authorisation.
pub fn decode_unverified(ticket: &str) -> Result<TicketBody, TicketError> {
    let parts = split(ticket)?;
    decode_body(&parts.body)
}

struct Parts {
    body: Vec<u8>,
    signature: Signature,
}

fn split(ticket: &str) -> Result<Parts, TicketError> {
    let malformed = |m: &str| TicketError::Malformed(m.to_string());
    let text = ticket.trim();
    if text.len() > TICKET_LEN_MAX_BYTES {
        return Err(TicketError::Malformed(format!(
            "it is {} bytes long, more than the {TICKET_LEN_MAX_BYTES}-byte limit",
            text.len()
        )));
    }
    let rest = text
        .strip_prefix(TICKET_PREFIX)
        .ok_or_else(|| malformed("it does not start with 'berth1.'"))?;
    let (body_b64, sig_b64) = rest
        .split_once('.')
        .ok_or_else(|| malformed("the '.' before the signature is missing"))?;
    if sig_b64.contains('.') {
        return Err(malformed("there is extra text after the signature"));
    }
    let body = URL_SAFE_NO_PAD
        .decode(body_b64)
        .map_err(|e| TicketError::Malformed(format!("the body is not base64url: {e}")))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|e| TicketError::Malformed(format!("the signature is not base64url: {e}")))?;
    let sig: [u8; 64] = sig.try_into().map_err(|v: Vec<u8>| {
        TicketError::Malformed(format!("the signature is {} bytes, not 64", v.len()))
    })?;
    Ok(Parts {
        body,
        signature: Signature::from_bytes(&sig),
    })
}

fn decode_body(bytes: &[u8]) -> Result<TicketBody, TicketError> {
    match bytes.first() {
        None => return Err(TicketError::Malformed("the body is empty".into())),
        Some(&TICKET_VERSION) => {}
        Some(&other) => return Err(TicketError::UnsupportedVersion(other)),
    }
    let (body, rest) = postcard::take_from_bytes::<TicketBody>(bytes)
        .map_err(|e| TicketError::Malformed(format!("the body does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(TicketError::Malformed(format!(
            "{} unexpected bytes after the body",
            rest.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Access, ScopeEntry};
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn body(key_id: u32) -> TicketBody {
        TicketBody {
            version: TICKET_VERSION,
            key_id,
            cluster: "prod".into(),
            principal: "alice".into(),
            kind: PrincipalKind::User,
            uid: 1000,
            gids: vec![1000, 50],
            groups: vec!["staff".into(), "ops".into()],
            issued_at: NOW - 10,
            expires_at: NOW + 3600,
            scope: Some(Scope(vec![ScopeEntry::parse("/apps/a:rw").unwrap()])),
        }
    }

    fn ring(signers: &[&TicketSigner]) -> KeyRing {
        let mut ring = KeyRing::new();
        for s in signers {
            ring.try_insert(s.key_id(), s.verifying_key_bytes())
                .unwrap();
        }
        ring
    }

    /// Signs arbitrary body bytes the way `sign` does (for crafted bodies).
    fn sign_raw(signer: &TicketSigner, bytes: &[u8]) -> String {
        encode(bytes, &signer.key.sign(&signing_message(bytes)))
    }

    #[test]
    fn round_trip() {
        let signer = TicketSigner::generate(7);
        let b = body(7);
        let ticket = signer.sign(&b);
        assert!(ticket.starts_with("berth1."));
        assert!(ticket
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)));
        let p = ring(&[&signer]).verify(&ticket, "prod", NOW).unwrap();
        assert_eq!(p, b.to_principal());
        assert_eq!(p.name, "alice");
        assert!(p.may("/apps/a/x", Access::Write));
        assert!(!p.may("/apps/b", Access::Read));
        assert_eq!(decode_unverified(&ticket).unwrap(), b);
    }

    #[test]
    fn whitespace_only_at_the_ends() {
        let signer = TicketSigner::generate(1);
        let ticket = signer.sign(&body(1));
        let r = ring(&[&signer]);
        assert!(r.verify(&format!("  {ticket}\r\n"), "prod", NOW).is_ok());
        let (head, tail) = ticket.split_at(20);
        assert!(matches!(
            r.verify(&format!("{head} {tail}"), "prod", NOW),
            Err(TicketError::Malformed(_))
        ));
    }

    #[test]
    fn signer_from_bytes_is_the_same_key() {
        let a = TicketSigner::generate(3);
        let b = TicketSigner::from_bytes(3, &a.secret_bytes());
        assert_eq!(a.verifying_key_bytes(), b.verifying_key_bytes());
        let ticket = b.sign(&body(3));
        assert!(ring(&[&a]).verify(&ticket, "prod", NOW).is_ok());
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let s = TicketSigner::from_bytes(1, &[0xab; 32]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("abababab"), "{shown}");
        assert!(shown.contains("key_id: 1"));
    }

    #[test]
    fn malformed() {
        let signer = TicketSigner::generate(1);
        let ticket = signer.sign(&body(1));
        let r = ring(&[&signer]);
        let (body_b64, sig_b64) = ticket[TICKET_PREFIX.len()..].split_once('.').unwrap();
        let cases = [
            String::new(),
            "hello".to_string(),
            ticket.replacen("berth1.", "berth2.", 1),
            format!("berth1.{body_b64}"),
            format!("{ticket}.AAAA"),
            format!("{ticket}garbage"),
            format!("berth1.{body_b64}.{}", &sig_b64[..40]),
            format!("berth1.{body_b64}=.{sig_b64}"),
            format!("berth1.{}.{sig_b64}", &body_b64[..body_b64.len() - 4]),
            format!("berth1..{sig_b64}"),
            "x".repeat(TICKET_LEN_MAX_BYTES + 1),
        ];
        for case in cases {
            let err = r.verify(&case, "prod", NOW).unwrap_err();
            assert!(matches!(err, TicketError::Malformed(_)), "{case:?}: {err}");
            assert!(err.to_string().starts_with("malformed ticket: "), "{err}");
        }
        // Trailing bytes inside the signed body are refused too.
        let mut bytes = postcard::to_allocvec(&body(1)).unwrap();
        bytes.push(0);
        let err = r
            .verify(&sign_raw(&signer, &bytes), "prod", NOW)
            .unwrap_err();
        assert_eq!(
            err,
            TicketError::Malformed("1 unexpected bytes after the body".into())
        );
    }

    #[test]
    fn unknown_key() {
        let signer = TicketSigner::generate(2);
        let other = TicketSigner::generate(1);
        let err = ring(&[&other])
            .verify(&signer.sign(&body(2)), "prod", NOW)
            .unwrap_err();
        assert_eq!(err, TicketError::UnknownKey(2));
    }

    #[test]
    fn invalid_key() {
        // y = 2 is not on the curve: the bytes do not decompress.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        let mut r = KeyRing::new();
        assert_eq!(r.try_insert(5, bad), Err(TicketError::InvalidKey(5)));
        assert!(!r.contains(5));
        r.insert(5, bad);
        assert!(r.contains(5));
        let signer = TicketSigner::generate(5);
        let err = r.verify(&signer.sign(&body(5)), "prod", NOW).unwrap_err();
        assert_eq!(err, TicketError::InvalidKey(5));
        // The identity point is a valid encoding but a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(r.try_insert(6, identity), Err(TicketError::InvalidKey(6)));
    }

    #[test]
    fn bad_signature() {
        let signer = TicketSigner::generate(1);
        let impostor = TicketSigner::generate(1);
        let err = ring(&[&signer])
            .verify(&impostor.sign(&body(1)), "prod", NOW)
            .unwrap_err();
        assert_eq!(err, TicketError::BadSignature);

        // Altered body, original signature.
        let ticket = signer.sign(&body(1));
        let sig = ticket.rsplit_once('.').unwrap().1;
        let mut changed = body(1);
        changed.groups.push("admin".into());
        let bytes = postcard::to_allocvec(&changed).unwrap();
        let forged = format!("berth1.{}.{sig}", URL_SAFE_NO_PAD.encode(bytes));
        let err = ring(&[&signer]).verify(&forged, "prod", NOW).unwrap_err();
        assert_eq!(err, TicketError::BadSignature);

        // Same key, same body, but without the domain separation prefix.
        let bytes = postcard::to_allocvec(&body(1)).unwrap();
        let undomained = encode(&bytes, &signer.key.sign(&bytes));
        let err = ring(&[&signer])
            .verify(&undomained, "prod", NOW)
            .unwrap_err();
        assert_eq!(err, TicketError::BadSignature);
    }

    #[test]
    fn expired() {
        let signer = TicketSigner::generate(1);
        let ticket = signer.sign(&body(1));
        let r = ring(&[&signer]);
        assert!(r.verify(&ticket, "prod", NOW + 3599).is_ok());
        assert_eq!(
            r.verify(&ticket, "prod", NOW + 3600).unwrap_err(),
            TicketError::Expired {
                expired_at: NOW + 3600
            }
        );
        assert!(r
            .verify(&ticket, "prod", NOW + 3600)
            .unwrap_err()
            .to_string()
            .contains("berth login"));
    }

    #[test]
    fn not_yet_valid_beyond_the_skew() {
        let signer = TicketSigner::generate(1);
        let mut b = body(1);
        b.issued_at = NOW + CLOCK_SKEW_MAX_SECS;
        let r = ring(&[&signer]);
        assert!(r.verify(&signer.sign(&b), "prod", NOW).is_ok());
        b.issued_at = NOW + CLOCK_SKEW_MAX_SECS + 1;
        assert_eq!(
            r.verify(&signer.sign(&b), "prod", NOW).unwrap_err(),
            TicketError::NotYetValid
        );
    }

    #[test]
    fn wrong_cluster() {
        let signer = TicketSigner::generate(1);
        let err = ring(&[&signer])
            .verify(&signer.sign(&body(1)), "staging", NOW)
            .unwrap_err();
        assert_eq!(
            err,
            TicketError::WrongCluster {
                expected: "staging".into(),
                found: "prod".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "the ticket is for cluster \"prod\" but this is cluster \"staging\": \
             use a ticket issued by this cluster"
        );
    }

    #[test]
    fn unsupported_version() {
        let signer = TicketSigner::generate(1);
        let mut bytes = postcard::to_allocvec(&body(1)).unwrap();
        assert_eq!(bytes[0], TICKET_VERSION);
        bytes[0] = 2;
        let ticket = sign_raw(&signer, &bytes);
        assert_eq!(
            ring(&[&signer]).verify(&ticket, "prod", NOW).unwrap_err(),
            TicketError::UnsupportedVersion(2)
        );
        assert_eq!(
            decode_unverified(&ticket).unwrap_err(),
            TicketError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn bad_scope_in_a_signed_ticket_is_refused() {
        let signer = TicketSigner::generate(1);
        let mut b = body(1);
        b.scope = Some(Scope(vec![ScopeEntry {
            prefix: "/apps/a/../b".into(),
            rights: crate::scope::Rights::Admin,
        }]));
        let err = ring(&[&signer])
            .verify(&signer.sign(&b), "prod", NOW)
            .unwrap_err();
        assert!(matches!(err, TicketError::Malformed(_)), "{err}");
    }

    #[test]
    fn rotation() {
        let old = TicketSigner::generate(1);
        let new = TicketSigner::generate(2);
        let old_ticket = old.sign(&body(1));
        let mut r = ring(&[&old]);
        assert!(r.verify(&old_ticket, "prod", NOW).is_ok());

        // Rotate: the new key joins, the old one keeps verifying.
        r.try_insert(2, new.verifying_key_bytes()).unwrap();
        let new_ticket = new.sign(&body(2));
        assert!(r.verify(&old_ticket, "prod", NOW).is_ok());
        assert!(r.verify(&new_ticket, "prod", NOW).is_ok());
        assert_eq!(r.key_ids().collect::<Vec<_>>(), vec![1, 2]);

        // Retire the old key.
        assert!(r.remove(1));
        assert!(!r.remove(1));
        assert_eq!(
            r.verify(&old_ticket, "prod", NOW).unwrap_err(),
            TicketError::UnknownKey(1)
        );
        assert!(r.verify(&new_ticket, "prod", NOW).is_ok());
    }

    #[test]
    #[should_panic(expected = "ticket body names key 2 but is signed with key 1")]
    fn signing_with_the_wrong_key_id_is_a_bug() {
        TicketSigner::generate(1).sign(&body(2));
    }

    fn arb_scope() -> impl Strategy<Value = Option<Scope>> {
        let entry = (
            "(/[a-z0-9_-][a-z0-9._-]{0,5}){0,3}",
            prop_oneof![
                Just(crate::scope::Rights::Read),
                Just(crate::scope::Rights::ReadWrite),
                Just(crate::scope::Rights::Admin)
            ],
        )
            .prop_map(|(p, rights)| ScopeEntry {
                prefix: if p.is_empty() { "/".into() } else { p },
                rights,
            });
        proptest::option::of(proptest::collection::vec(entry, 0..4).prop_map(Scope))
    }

    fn arb_body() -> impl Strategy<Value = TicketBody> {
        (
            any::<u32>(),
            "\\PC{0,12}",
            prop_oneof![
                Just(PrincipalKind::User),
                Just(PrincipalKind::Service),
                Just(PrincipalKind::Node)
            ],
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 0..5),
            proptest::collection::vec("[a-z0-9._@-]{1,10}", 0..5),
            0..NOW,
            arb_scope(),
        )
            .prop_map(
                |(key_id, principal, kind, uid, gids, groups, issued_at, scope)| TicketBody {
                    version: TICKET_VERSION,
                    key_id,
                    cluster: "prod".into(),
                    principal,
                    kind,
                    uid,
                    gids,
                    groups,
                    issued_at,
                    expires_at: NOW + 1 + u64::from(key_id % 1000),
                    scope,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn sign_verify_round_trips_and_corruption_fails(
            b in arb_body(),
            seed in any::<[u8; 32]>(),
            index in any::<prop::sample::Index>(),
            replacement in 0x21u8..0x7f,
        ) {
            let signer = TicketSigner::from_bytes(b.key_id, &seed);
            let mut r = KeyRing::new();
            r.try_insert(b.key_id, signer.verifying_key_bytes()).unwrap();
            let ticket = signer.sign(&b);
            prop_assert_eq!(r.verify(&ticket, "prod", NOW), Ok(b.to_principal()));
            prop_assert_eq!(decode_unverified(&ticket), Ok(b.clone()));

            let mut bytes = ticket.clone().into_bytes();
            let i = index.index(bytes.len());
            prop_assume!(bytes[i] != replacement);
            bytes[i] = replacement;
            let corrupted = String::from_utf8(bytes).unwrap();
            prop_assert!(r.verify(&corrupted, "prod", NOW).is_err(), "{} verified", corrupted);
        }
    }
}
