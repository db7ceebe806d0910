//! Tests only: the official Rust MongoDB driver (crates.io `mongodb`)
//! against a real `berth server`, in `tests/rust_driver.rs`.
//!
//! The driver lives in a crate of its own so that building `berth`'s tests
//! does not build it. The tests run the `berth` binary of the same target
//! directory, which `cargo test --workspace` builds before running any test
//! (the `berth` package has integration tests, so cargo builds its binary
//! for them). Run alone, build it first:
//! `cargo build -p berth && cargo test -p berth-mongo-driver-test`.
