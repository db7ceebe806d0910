//! Whole-system tests of the `berth` binary: a real server process, the real
//! CLI, over TLS with the admin ticket the server wrote on first start.
//! One integration binary for the crate (see STYLE.md).

mod admin;
mod cluster;
mod container;
mod crash;
mod docker_cluster;
mod errors;
mod exchange;
mod failover;
mod files;
mod fsx;
mod harness;
mod inodes;
mod join;
mod kafka;
mod kafka_cluster;
mod kafka_fresh;
mod kafka_go;
mod linearizable;
mod locks;
mod mongo;
mod mongo_crash;
mod mongo_drivers;
mod mongo_unified;
mod mount;
mod posix_user;
mod security;
mod snapshots;
mod special_files;
mod streams;
mod tables;
mod tour;

pub use harness::TestServer;
