//! Tables through the MongoDB wire protocol with a real driver (pymongo,
//! installed by `scripts/test`), over TLS, with SCRAM-SHA-256 (a user's
//! password) and PLAIN (a ticket as the password), against a real server.

use std::process::Command;

use crate::harness::TestServer;
use crate::kafka::{have, python_has};

const CHECKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mongo/pymongo_checks.py");

/// `pymongo_checks.py CHECK` as `user`; its output, and whether it passed.
fn pymongo(
    s: &TestServer,
    check: &str,
    user: &str,
    password: &str,
    mechanism: &str,
) -> (bool, String) {
    let out = Command::new("python3")
        .arg(CHECKS)
        .arg(check)
        .args(["--port", &s.mongo_port.to_string()])
        .arg("--ca")
        .arg(s.ca_file())
        .args([
            "--user",
            user,
            "--password",
            password,
            "--mechanism",
            mechanism,
        ])
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn admin_ticket(s: &TestServer) -> String {
    std::fs::read_to_string(s.admin_ticket())
        .expect("admin ticket")
        .trim()
        .to_string()
}

#[test]
fn pymongo_crud_with_a_users_password_over_scram() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    s.ok(&["user", "add", "alice", "--password", "alice-pw"]);
    let (ok, text) = pymongo(&s, "crud", "alice", "alice-pw", "SCRAM-SHA-256");
    assert!(ok, "{text}\n{}", s.log());
}

#[test]
fn pymongo_crud_with_a_ticket_over_plain() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    let (ok, text) = pymongo(&s, "crud", "admin", &admin_ticket(&s), "PLAIN");
    assert!(ok, "{text}\n{}", s.log());
}

#[test]
fn pymongo_transactions_commit_all_or_nothing_and_retry_conflicts() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    let (ok, text) = pymongo(&s, "transactions", "admin", &admin_ticket(&s), "PLAIN");
    assert!(ok, "{text}\n{}", s.log());
}

#[test]
fn pymongo_indexes_serve_queries_and_hold_unique_keys() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    let (ok, text) = pymongo(&s, "indexes", "admin", &admin_ticket(&s), "PLAIN");
    assert!(ok, "{text}\n{}", s.log());
}

#[test]
fn pymongo_plans_scan_indexes_backward_and_unite_or_branches() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    let (ok, text) = pymongo(&s, "planner", "admin", &admin_ticket(&s), "PLAIN");
    assert!(ok, "{text}\n{}", s.log());
}

#[test]
fn pymongo_ttl_indexes_expire_documents() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start_with(&["--ttl-sweep-ms", "300"]);
    let (ok, text) = pymongo(&s, "ttl", "admin", &admin_ticket(&s), "PLAIN");
    assert!(ok, "{text}\n{}", s.log());
}

#[test]
fn a_user_without_rights_on_a_table_gets_unauthorized() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    let (ok, text) = pymongo(&s, "seed", "admin", &admin_ticket(&s), "PLAIN");
    assert!(ok, "{text}\n{}", s.log());
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let (ok, text) = pymongo(&s, "denied", "bob", "bob-pw", "SCRAM-SHA-256");
    assert!(ok, "{text}\n{}", s.log());
    // A wrong password is refused at authentication.
    let (ok, text) = pymongo(&s, "crud", "bob", "wrong", "SCRAM-SHA-256");
    assert!(!ok && text.contains("uthentication failed"), "{text}");
}

#[test]
fn pymongo_writes_past_a_volume_quota_get_out_of_disk_space() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    s.ok(&["volume", "create", "/quota", "--quota", "64K"]);
    let (ok, text) = pymongo(&s, "quota", "admin", &admin_ticket(&s), "PLAIN");
    assert!(ok, "{text}\n{}", s.log());
    // The check dropped its table: the volume's usage is back to nothing.
    let v = s.json(&["volume", "info", "/quota"]);
    assert_eq!(v["used_bytes"], 0, "{v}");
}

const CHANGE_STREAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mongo/change_streams.py");

/// `change_streams.py CHECK` as `user` (PLAIN with a ticket, or SCRAM).
fn change_streams(s: &TestServer, check: &str, user: &str, password: &str) -> (bool, String) {
    let mechanism = if user == "admin" {
        "PLAIN"
    } else {
        "SCRAM-SHA-256"
    };
    let state = s.dir.path().join("change-stream-token.json");
    let out = Command::new("python3")
        .arg(CHANGE_STREAMS)
        .arg(check)
        .args(["--port", &s.mongo_port.to_string()])
        .arg("--ca")
        .arg(s.ca_file())
        .args(["--user", user, "--password", password])
        .args(["--mechanism", mechanism])
        .arg("--state")
        .arg(state)
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn pymongo_change_streams_see_every_change_with_mongodbs_fields() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    let (ok, text) = change_streams(&s, "events", "admin", &admin_ticket(&s));
    assert!(ok, "{text}\n{}", s.log());
}

#[test]
fn a_change_stream_resumes_after_a_server_crash_missing_and_repeating_nothing() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let mut s = TestServer::start();
    let (ok, text) = change_streams(&s, "before-restart", "admin", &admin_ticket(&s));
    assert!(ok, "{text}\n{}", s.log());
    s.restart();
    let (ok, text) = change_streams(&s, "after-restart", "admin", &admin_ticket(&s));
    assert!(ok, "{text}\n{}", s.log());
}

#[test]
fn change_streams_are_authorized_per_table() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let s = TestServer::start();
    let (ok, text) = change_streams(&s, "seed", "admin", &admin_ticket(&s));
    assert!(ok, "{text}\n{}", s.log());
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let (ok, text) = change_streams(&s, "denied", "bob", "bob-pw");
    assert!(ok, "{text}\n{}", s.log());
}

const CDC_CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mongo/cdc_check.py");

/// `cdc_check.py CHECK` as the admin, for documents `from..to`.
fn cdc_check(s: &TestServer, check: &str, from: u32, to: u32) -> (bool, String) {
    let out = Command::new("python3")
        .arg(CDC_CHECK)
        .arg(check)
        .args(["--mongo-port", &s.mongo_port.to_string()])
        .args(["--kafka", &format!("127.0.0.1:{}", s.kafka_port)])
        .arg("--ca")
        .arg(s.ca_file())
        .args(["--ticket", &admin_ticket(s)])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn cdc_publishes_every_change_exactly_once_across_a_crash() {
    if !have("pymongo", python_has("pymongo"))
        || !have("confluent_kafka", python_has("confluent_kafka"))
    {
        return;
    }
    let mut s = TestServer::start();
    s.ok(&["mkdir", "-p", "/tables/cdc"]);
    s.ok(&["table", "create", "/tables/cdc/users"]);
    s.ok(&[
        "table",
        "cdc",
        "add",
        "/tables/cdc/users",
        "--to",
        "/streams/default:users-cdc",
    ]);
    let list = s.json(&["table", "cdc", "list", "/tables/cdc/users"]);
    assert_eq!(list[0]["topic"], "users-cdc", "{list}");
    let (ok, text) = cdc_check(&s, "write", 0, 40);
    assert!(ok, "{text}\n{}", s.log());
    // kill -9 with changes committed but perhaps not yet published.
    s.restart();
    let (ok, text) = cdc_check(&s, "write", 40, 80);
    assert!(ok, "{text}\n{}", s.log());
    let (ok, text) = cdc_check(&s, "read", 0, 80);
    assert!(ok, "{text}\n{}", s.log());
    // Removing the target stops it; a second removal finds nothing.
    s.ok(&["table", "cdc", "remove", "/tables/cdc/users", "1"]);
    let args = ["table", "cdc", "remove", "/tables/cdc/users", "1"];
    s.check_err(&args, s.cli(&args), "ENOENT");
}
