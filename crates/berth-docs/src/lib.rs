//! Tables: JSON documents (BSON) keyed by `_id`, their query language and
//! update operators. The pure parts (ordering, key encoding, matching,
//! updating, projecting, expressions, pipelines) read no clock and do no I/O.

pub mod aggregate;
pub mod builds;
pub mod cdc;
pub mod changes;
pub mod check;
pub mod error;
pub mod expr;
pub mod index;
pub mod keys;
pub mod matcher;
pub mod merge;
pub mod order;
pub mod plan;
pub mod projection;
pub mod registry;
pub mod retry;
pub mod table;
pub mod ttl;
pub mod txn;
pub mod update;

pub use error::DocError;
