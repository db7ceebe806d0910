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
