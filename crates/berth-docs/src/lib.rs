//! Tables: JSON documents (BSON) keyed by `_id`, their query language and
//! update operators. The pure parts (ordering, matching, updating,
//! projecting) read no clock and do no I/O.

pub mod error;

pub use error::DocError;
