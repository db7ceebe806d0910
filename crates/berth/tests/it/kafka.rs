//! Streams through the Kafka protocol with real clients: librdkafka
//! (confluent-kafka), kafka-python, aiokafka and kcat, over TLS with SASL
//! PLAIN (a ticket or a user's password as the password), against a real
//! server. The clients are installed by `scripts/test`; where one is
//! missing its test says so and skips.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::TestServer;

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka/clients.py");

/// Whether python3 can import `module`.
fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have(what: &str, ok: bool) -> bool {
    if !ok {
        eprintln!("SKIP: {what} is not installed (scripts/test installs it)");
    }
    ok
}

/// A server with `/streams/default` (plain topic names) and `/apps/s1`.
fn server() -> TestServer {
    let s = TestServer::start();
    s.ok(&["mkdir", "/streams"]);
    s.ok(&["stream", "create", "/streams/default"]);
    s.ok(&["mkdir", "/apps"]);
    s.ok(&["stream", "create", "/apps/s1", "--partitions", "2"]);
    s
}

fn run_clients(
    s: &TestServer,
    check: &str,
    user: &str,
    password: &str,
    topic: &str,
) -> (bool, String) {
    let out = Command::new("python3")
        .arg(CLIENTS)
        .args([
            check,
            &format!("127.0.0.1:{}", s.kafka_port),
            s.ca_file().to_str().expect("UTF-8 path"),
            user,
            password,
            topic,
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

fn ticket(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("ticket file")
        .trim()
        .to_string()
}

#[test]
fn python_clients_round_trip_over_tls_and_sasl() {
    let mut clients = Vec::new();
    for (check, module) in [
        ("confluent", "confluent_kafka"),
        ("kafka-python", "kafka"),
        ("aiokafka", "aiokafka"),
    ] {
        if have(module, python_has(module)) {
            clients.push(check);
        }
    }
    if clients.is_empty() {
        return;
    }
    let s = server();
    let admin = ticket(&s.admin_ticket());
    for check in clients {
        // A fresh topic per client, created on first use (autocreate).
        let topic = format!("rt-{check}");
        let (ok, text) = run_clients(&s, check, "admin", &admin, &topic);
        assert!(ok, "{check}: {text}\n{}", s.log());
    }
    // A stream topic addressed by path, through librdkafka.
    if python_has("confluent_kafka") {
        let (ok, text) = run_clients(&s, "confluent", "admin", &admin, "/apps/s1:events");
        assert!(ok, "/apps/s1:events: {text}\n{}", s.log());
        let info = s.ok(&["stream", "topic", "info", "/apps/s1", "events"]);
        assert!(info.contains("100"), "100 records in partition 0:\n{info}");
    }
}

#[test]
fn denied_and_failed_logins_get_kafka_errors() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let s = server();
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let bob = ticket(&s.login("bob", "bob-pw"));
    // Admin's stream, no produce ACE: only its owner may produce.
    let (ok, text) = run_clients(&s, "denied-produce", "bob", &bob, "/apps/s1:t");
    assert!(ok, "{text}\n{}", s.log());
    // A user's password works as the SASL password too; a wrong one fails.
    let (ok, text) = run_clients(&s, "bad-login", "bob", "wrong", "t");
    assert!(ok, "{text}\n{}", s.log());
    // Once the stream's produce and consume ACEs name bob, he may.
    s.ok(&[
        "stream",
        "edit",
        "/apps/s1",
        "--produce-ace",
        "u:bob",
        "--consume-ace",
        "u:bob",
    ]);
    let (ok, text) = run_clients(&s, "confluent", "bob", "bob-pw", "/apps/s1:bobs");
    // Topic creation still needs the topic right: bob's first produce
    // cannot auto-create it.
    assert!(!ok, "bob auto-created a topic without the topic right");
    s.ok(&["stream", "topic", "create", "/apps/s1", "bobs"]);
    let (ok, text2) = run_clients(&s, "confluent", "bob", "bob-pw", "/apps/s1:bobs");
    assert!(ok, "{text}\n{text2}\n{}", s.log());
}

#[test]
fn kcat_produces_and_consumes() {
    if !have("kcat", Command::new("kcat").arg("-V").output().is_ok()) {
        return;
    }
    let s = server();
    let admin = ticket(&s.admin_ticket());
    let common = |mode: &str| {
        let mut c = Command::new("kcat");
        c.args([
            mode,
            "-b",
            &format!("127.0.0.1:{}", s.kafka_port),
            "-t",
            "/apps/s1:lines",
            "-p",
            "1",
            "-X",
            "security.protocol=SASL_SSL",
            "-X",
            "sasl.mechanisms=PLAIN",
            "-X",
            "sasl.username=admin",
            "-X",
            &format!("sasl.password={admin}"),
            "-X",
            &format!("ssl.ca.location={}", s.ca_file().display()),
        ]);
        c
    };
    let lines: Vec<String> = (0..50).map(|i| format!("key{i}:line {i}")).collect();
    let mut p = common("-P")
        .args(["-K", ":", "-z", "lz4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat -P");
    {
        use std::io::Write;
        let mut stdin = p.stdin.take().expect("stdin");
        stdin
            .write_all((lines.join("\n") + "\n").as_bytes())
            .expect("write");
    }
    let out = p.wait_with_output().expect("kcat -P");
    assert!(
        out.status.success(),
        "kcat -P: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let out = common("-C")
        .args(["-o", "beginning", "-e", "-f", "%k:%s:%o\n"])
        .output()
        .expect("kcat -C");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kcat -C: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), 50, "{text}");
    for (i, l) in got.iter().enumerate() {
        assert_eq!(*l, format!("key{i}:line {i}:{i}"));
    }
}
