//! berth-security: the security foundation every Berth service builds on.
//!
//! It owns who a caller is and what a caller may do:
//! - [`principal`]: the authenticated identity (user, service or node) with its
//!   uid, gids and groups, and the administrator rule.
//! - [`scope`]: the optional path/rights restriction a ticket carries.
//! - [`ticket`]: Ed25519-signed, versioned, one-line tickets, verified locally
//!   against a key ring that supports rotation.
//! - [`ace`]: the access control expression language (`u:alice | g:ops & !u:bob`).
//! - [`posix`]: owner/group/other mode-bit checks.
//! - [`handle`]: signed file handles (the capability `open` returns).
//! - [`password`]: argon2id password hashing.
//! - [`scram`]: SCRAM-SHA-256/512 credentials derived from a password, and
//!   the server side of the SCRAM exchange (no I/O), shared by the gateways.
//! - [`tls`]: the cluster CA, node certificates and rustls configurations.
//! - [`pki`]: certificates issued through the cluster: a joining node's
//!   request, signing it with the cluster CA, the pinned-CA verifier a
//!   joining node trusts, the node id a peer's certificate proves.
//!
//! *Architecture Invariant*: this crate is pure. It performs no I/O except in
//! the explicit TLS-material file functions of [`tls`] (`ensure_ca`,
//! `ensure_node_cert`, `load_ca`, `load_node`, `write_joined`, `load_joined`,
//! `load_pem`); the clock is read only by [`now_secs`],
//! and every decision takes the time as an argument so it can be tested.
//!
//! *Architecture Invariant*: secrets (signing keys, private keys, passwords,
//! password hashes, SCRAM stored and server keys, tickets) are never logged
//! and never appear in `Debug` output or error messages.
//!
//! *Architecture Invariant*: everything that decodes outside input (tickets,
//! ACEs, scopes, PEM files, SCRAM messages) has an explicit size bound and
//! fails closed.

pub mod ace;
pub mod handle;
pub mod join;
pub mod password;
pub mod pki;
pub mod posix;
pub mod principal;
pub mod scope;
pub mod scram;
pub mod ticket;
pub mod tls;

pub use ace::{Ace, AceError};
pub use password::{hash_password, verify_password, PasswordError};
pub use posix::{mode_allows, Want};
pub use principal::{Principal, PrincipalKind};
pub use scope::{Access, Rights, Scope, ScopeEntry, ScopeError};
pub use ticket::{KeyRing, TicketBody, TicketError, TicketSigner};
pub use tls::{TlsError, TlsPaths};

/// The current time in whole seconds since the Unix epoch.
///
/// A clock before 1970 reads as 0, which makes every ticket look issued in the
/// future (and so rejected) rather than panicking.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_secs_is_after_2024() {
        assert!(super::now_secs() > 1_700_000_000);
    }
}
