//! Integration tests of berth-raft: a single node, and three nodes in one process over an
//! in-memory transport with partition filters.

mod cluster;
mod harness;
mod hibernate;
mod membership;
mod single;
