//! What the Kafka gateway's SASL mechanisms need from the cluster map:
//! SCRAM credentials (derived and stored by `berth-meta` whenever a user's
//! password is set), the principal a successful SCRAM exchange stands for,
//! and OAUTHBEARER tokens (Berth tickets). `kafka.rs` implements the
//! gateway's `Backend` methods with these.
//!
//! Reads go to the node's cached cluster map (refreshed on every applied
//! meta entry), not through the meta shard: an unauthenticated client must
//! not be able to make every attempt cost a linearizable read.

use berth_kafka::backend::{ScramCredential, ScramMechanism};
use berth_meta::{Meta, ScramLookup};
use berth_security::principal::Principal;

/// The stored SCRAM credential of `user` for `m`; `None` when the user is
/// unknown or has none (the gateway then fails the exchange exactly as for
/// a wrong password). A user whose password predates SCRAM credentials
/// gets one log line saying how to fix it.
pub async fn scram_credential(
    meta: &Meta,
    user: &str,
    m: ScramMechanism,
) -> Option<ScramCredential> {
    match meta.map().scram_credential(user, m) {
        ScramLookup::Found(c) => Some(c),
        ScramLookup::Missing => {
            tracing::warn!(
                user,
                mechanism = m.name(),
                "kafka: {user:?} has no SCRAM credential (the password was set before \
                 Berth stored them): set the password again (`berth user passwd {user}`) \
                 to enable SCRAM logins"
            );
            None
        }
        ScramLookup::UnknownUser | ScramLookup::NoPassword => None,
    }
}

/// The principal of `user` after its SCRAM proof checked out: the same one
/// a password login (PLAIN) gives, i.e. what a fresh ticket for the user
/// proves. Unknown (or just removed) principals are refused.
pub async fn scram_principal(meta: &Meta, user: &str) -> Result<Principal, String> {
    let (ticket, _) = meta
        .sign_for(user, None, SCRAM_TICKET_TTL_SECS)
        .map_err(|e| e.to_string())?;
    meta.authenticate(&ticket).map_err(|e| e.to_string())
}

/// Lifetime of the ticket a SCRAM login is turned into (as for PLAIN
/// password logins): only its principal is kept.
const SCRAM_TICKET_TTL_SECS: u64 = 3600;

/// OAUTHBEARER: the bearer token is a Berth ticket.
pub fn authenticate_token(meta: &Meta, token: &str) -> Result<Principal, String> {
    meta.authenticate(token).map_err(|e| e.to_string())
}
