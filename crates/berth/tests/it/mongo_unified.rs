//! The MongoDB specifications' unified CRUD tests against a real server,
//! run by Berth's own runner (`tests/mongo/unified_crud.py`, pymongo) as
//! the admin over TLS with PLAIN and the admin ticket.
//!
//! The JSON files come from the pymongo source distribution on PyPI (it
//! ships `test/crud/unified/*.json`), fetched with pip once into the CI
//! cache (`~/.cache/berth-ci/mongo-specs`, or `$BERTH_CI_CACHE`;
//! `scripts/test` fills it) and never committed. Tests that need what
//! Berth does not have (failpoints, sharding or replica sets, a newer
//! server, transactions, collations) are skipped by the runner with their
//! reasons counted; every other test must pass.

use std::process::{Command, Stdio};

use crate::harness::{output_within, TestServer};
use crate::kafka::{have, python_has};

const RUNNER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mongo/unified_crud.py");
/// The runner's bound: the suite takes well under a minute on 2 cores.
const RUN_TIMEOUT_S: u64 = 300;
/// The runner's exit code when the spec files cannot be had (no network).
const NO_SPEC_FILES: i32 = 3;

#[test]
fn unified_crud_spec_tests_pass() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    let ticket = std::fs::read_to_string(s.admin_ticket()).expect("admin ticket");
    let child = Command::new("python3")
        .arg(RUNNER)
        .arg("run")
        .args(["--port", &s.mongo_port.to_string()])
        .arg("--ca")
        .arg(s.ca_file())
        .args(["--user", "admin", "--password", ticket.trim()])
        .args(["--mechanism", "PLAIN"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let out = output_within(child, RUN_TIMEOUT_S)
        .unwrap_or_else(|| panic!("the unified CRUD runner did not finish in {RUN_TIMEOUT_S} s"))
        .expect("runner output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.code() == Some(NO_SPEC_FILES) {
        eprintln!("SKIP: the unified CRUD spec files could not be fetched from PyPI:\n{text}");
        return;
    }
    // The counts, for the test log.
    eprintln!("{text}");
    assert!(out.status.success(), "{text}\n{}", s.log());
}
