//! berth-meta: the cluster layer.
//!
//! Owns the cluster map (nodes, volumes, shards, principals and their SCRAM
//! credentials, groups, ticket signing keys) held by the meta shard, the
//! node-local cache of that map, ticket authentication against it, and the
//! shard router (key → shard → leader) with its optimistic transactions.
//!
//! Invariants:
//! - Everything here changes state only through replicated commands on a
//!   shard ([`router::Tx`]); nothing writes the node store directly.
//! - Ticket secrets and the cluster CA's key never leave the meta shard and
//!   are never logged; nor are SCRAM keys, which change only together with
//!   the password.
//! - Only unscoped administrators change principals, groups and keys.

pub mod codec;
pub mod error;
pub mod map;
pub mod meta;
pub mod pd;
pub mod placement;
pub mod router;
#[cfg(feature = "testing")]
pub mod testing;

// Lets `testing` name this crate `berth_meta::` both here and when
// berth-meta's own integration test compiles it in with `#[path]`.
#[cfg(feature = "testing")]
extern crate self as berth_meta;

pub use error::{Code, Error};
pub use meta::{Admission, Applicant, Bootstrap, MapCache, Meta, ScramLookup};
pub use router::{Commit, Router, Tx};

/// Inode number of every volume's root directory.
pub const ROOT_INODE: u64 = 1;
