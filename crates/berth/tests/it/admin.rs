//! The admin listener: `/health` and `/metrics` over TLS, verified with only
//! the cluster CA file, as Prometheus or curl would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::harness::TestServer;

fn get(s: &TestServer, path: &str) -> (u16, String) {
    let ca = std::fs::read_to_string(s.data.join("tls").join("ca.crt")).unwrap();
    let cfg = berth_security::tls::client_config(&ca).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::clone(&cfg), name).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", s.admin_port)).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // The server closes after the response; a missing close_notify is fine.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn health_and_metrics_over_tls() {
    let s = TestServer::start();
    s.ok(&["mkdir", "/m"]);
    let (code, body) = get(&s, "/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (code, body) = get(&s, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "berth_requests_total{method=\"Namespace/Mkdir\",code=\"OK\"} 1",
        "berth_raft_proposals_total",
        "berth_raft_persist_batches_total",
        "berth_shard_is_leader{shard=\"1\"} 1",
        "berth_store_syncs_total",
        "# TYPE berth_request_duration_seconds summary",
    ] {
        assert!(body.contains(name), "missing {name} in /metrics:\n{body}");
    }
}

/// A node's topology labels and Kafka address reach the cluster map and
/// `berth status`.
#[test]
fn status_shows_labels_and_the_kafka_address() {
    let s = TestServer::start_with(&["--label", "zone=a", "--label", "rack=r1"]);
    let st = s.json(&["status"]);
    let node = &st["nodes"][0];
    assert_eq!(node["labels"]["zone"], "a", "{st}");
    assert_eq!(node["labels"]["rack"], "r1", "{st}");
    assert!(
        node["kafka_addr"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{}", s.kafka_port))),
        "{st}"
    );
    let text = s.ok(&["status"]);
    assert!(text.contains("rack=r1,zone=a"), "{text}");
}

/// The MongoDB listener's advertised address reaches the cluster map
/// (what `berth container-run` builds MONGODB_URI from): the first
/// --advertise name by default, --mongo-advertise when given, kept across
/// restarts that change it.
#[test]
fn status_shows_the_mongodb_address() {
    let mut s = TestServer::start();
    let st = s.json(&["status"]);
    assert_eq!(
        st["nodes"][0]["mongo_addr"],
        format!("127.0.0.1:{}", s.mongo_port),
        "{st}"
    );
    let node = s.json(&["node", "info", "1"]);
    assert_eq!(node["mongo_addr"], st["nodes"][0]["mongo_addr"], "{node}");
    s.restart_with(&["--mongo-advertise", "db.example:27017"]);
    let st = s.json(&["status"]);
    assert_eq!(st["nodes"][0]["mongo_addr"], "db.example:27017", "{st}");
}

/// `berth node token create|list|revoke`: the token on stdout, its state in
/// the list, and administrators only.
#[test]
fn join_tokens_through_the_cli() {
    let s = TestServer::start();
    let token = s.ok(&["node", "token", "create", "--ttl", "10min", "--uses", "2"]);
    let token = token.trim();
    assert!(token.starts_with("berthjoin1."), "{token}");
    let list = s.json(&["node", "token", "list"]);
    let t = &list[0];
    assert_eq!(t["uses_left"], 2, "{list}");
    assert_eq!(t["revoked"], false, "{list}");
    let id = t["id"].as_str().expect("id").to_string();
    let text = s.ok(&["node", "token", "list"]);
    assert!(text.contains(&id) && text.contains("valid"), "{text}");
    s.ok(&["node", "token", "revoke", &id]);
    let text = s.ok(&["node", "token", "list"]);
    assert!(text.contains("revoked"), "{text}");
    let out = s.cli(&["node", "token", "revoke", "nope"]);
    s.check_err(&["node", "token", "revoke"], out, "ENOENT");

    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let bob = s.login("bob", "bob-pw");
    for args in [
        &["node", "token", "create"][..],
        &["node", "token", "list"][..],
        &["node", "token", "revoke", &id][..],
    ] {
        let out = s.cli_with(args, &[("BERTH_TICKET_FILE", &bob)], None);
        s.check_err(args, out, "EPERM");
    }
}
