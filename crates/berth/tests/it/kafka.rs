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
pub(crate) fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn have(what: &str, ok: bool) -> bool {
    if !ok {
        eprintln!("SKIP: {what} is not installed (scripts/test installs it)");
    }
    ok
}

/// A server (with `/streams/default` for plain topic names from its first
/// start) and `/apps/s1`.
pub(crate) fn server() -> TestServer {
    let s = TestServer::start();
    s.ok(&["mkdir", "/apps"]);
    s.ok(&["stream", "create", "/apps/s1", "--partitions", "2"]);
    s
}

/// Adds user `name` with `password` and lets it produce to and consume
/// from `/apps/s1` (the stream's produce and consume ACEs name it).
pub(crate) fn user_of_s1(s: &TestServer, name: &str, password: &str) {
    s.ok(&["user", "add", name, "--password", password]);
    let ace = format!("u:{name}");
    s.ok(&[
        "stream",
        "edit",
        "/apps/s1",
        "--produce-ace",
        &ace,
        "--consume-ace",
        &ace,
    ]);
}

fn run_clients(
    s: &TestServer,
    check: &str,
    user: &str,
    password: &str,
    topic: &str,
) -> (bool, String) {
    run_clients_with(s, "PLAIN", check, user, password, topic)
}

/// [`run_clients`] with another SASL mechanism for the librdkafka checks.
fn run_clients_with(
    s: &TestServer,
    mechanism: &str,
    check: &str,
    user: &str,
    password: &str,
    topic: &str,
) -> (bool, String) {
    let bootstrap = format!("127.0.0.1:{}", s.kafka_port);
    let mut cmd = clients(s, &bootstrap, check, user, password, topic);
    cmd.env("KAFKA_SASL_MECHANISM", mechanism);
    output(cmd)
}

/// `clients.py CHECK` against `bootstrap` with the server's CA.
pub(crate) fn clients(
    s: &TestServer,
    bootstrap: &str,
    check: &str,
    user: &str,
    password: &str,
    topic: &str,
) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(CLIENTS).args([
        check,
        bootstrap,
        s.ca_file().to_str().expect("UTF-8 path"),
        user,
        password,
        topic,
    ]);
    cmd
}

/// Runs `cmd`: whether it succeeded, and stdout + stderr.
pub(crate) fn output(mut cmd: Command) -> (bool, String) {
    let out = cmd.output().expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub(crate) fn ticket(path: &Path) -> String {
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

/// A principal's plain topic names can live in a stream of its own
/// (`--kafka-principal-stream`).
#[test]
fn plain_names_resolve_in_the_principals_stream() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let s = TestServer::start_with(&["--kafka-principal-stream", "erin=/apps/erin"]);
    s.ok(&["mkdir", "/apps"]);
    s.ok(&["user", "add", "erin", "--password", "erin-pw"]);
    s.ok(&["chown", "erin", "/apps"]);
    let erin = s.login("erin", "erin-pw");
    let out = s.cli_with(
        &["stream", "create", "/apps/erin"],
        &[("BERTH_TICKET_FILE", &erin)],
        None,
    );
    s.check_ok(&["stream", "create"], out);
    let (ok, text) = run_clients(&s, "confluent", "erin", "erin-pw", "mine");
    assert!(ok, "{text}\n{}", s.log());
    let info = s.json(&["stream", "topic", "info", "/apps/erin", "mine"]);
    assert_eq!(info["partition_count"], 1, "{info}");
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

/// kill -9 the server while an idempotent producer writes with acks=all;
/// after a restart every acknowledged record is there, at the offset it was
/// acknowledged with, and the offsets are contiguous.
#[test]
fn acknowledged_records_survive_kill_9() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let mut s = server();
    let admin = ticket(&s.admin_ticket());
    s.ok(&["stream", "topic", "create", "/apps/s1", "crash"]);
    let topic = "/apps/s1:crash";
    let bootstrap = format!("127.0.0.1:{}", s.kafka_port);
    let mut producer = clients(&s, &bootstrap, "crash-produce", "admin", &admin, topic)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 crash-produce");
    // Read acknowledgements until enough arrived, then kill the server.
    let stdout = producer.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.len() < 2000 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(1)) {
            acked.push(l);
        }
    }
    assert!(
        acked.len() >= 2000,
        "only {} records acknowledged in 60 s",
        acked.len()
    );
    s.kill9();
    // Whatever the producer reports after the kill was acknowledged before.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = producer.kill();
    let _ = producer.wait();
    let _ = reader.join();
    while let Ok(l) = rx.try_recv() {
        acked.push(l);
    }
    s.restart();
    let (ok, text) = run_clients(&s, "dump", "admin", &admin, topic);
    assert!(ok, "{text}\n{}", s.log());
    // "offset value" lines; the client's own log lines are mixed in.
    let stored: Vec<(i64, String)> = text
        .lines()
        .filter_map(|l| {
            let (o, v) = l.split_once(' ')?;
            Some((o.parse().ok()?, v.to_string()))
        })
        .filter(|(_, v): &(i64, String)| v.starts_with('r'))
        .collect();
    for (i, (o, _)) in stored.iter().enumerate() {
        assert_eq!(*o, i as i64, "offsets are contiguous from 0");
    }
    let by_offset: std::collections::HashMap<i64, &str> =
        stored.iter().map(|(o, v)| (*o, v.as_str())).collect();
    for l in &acked {
        let (o, v) = l.split_once(' ').expect("offset value");
        let o: i64 = o.parse().expect("offset");
        assert_eq!(
            by_offset.get(&o).copied(),
            Some(v),
            "acknowledged record {v} at offset {o} is missing after the restart"
        );
    }
    // No record was written twice (the producer is idempotent).
    let mut values: Vec<&str> = stored.iter().map(|(_, v)| v.as_str()).collect();
    values.sort_unstable();
    let n = values.len();
    values.dedup();
    assert_eq!(values.len(), n, "duplicates in the log");
}

/// A consumer group of three (librdkafka): all records consumed, no
/// partition held by two members at once, rebalances when one leaves and
/// when partitions are added.
#[test]
fn a_consumer_group_rebalances() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let s = server();
    let admin = ticket(&s.admin_ticket());
    s.ok(&[
        "stream",
        "topic",
        "create",
        "/apps/s1",
        "grp",
        "--partitions",
        "6",
    ]);
    let (ok, text) = run_clients(&s, "group", "admin", &admin, "/apps/s1:grp");
    assert!(ok, "{text}\n{}", s.log());
    let info = s.json(&["stream", "topic", "info", "/apps/s1", "grp"]);
    assert_eq!(info["partition_count"], 8, "{info}");
}

/// Committed offsets survive a kill -9 of the broker.
#[test]
fn committed_offsets_survive_a_restart() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let mut s = server();
    let admin = ticket(&s.admin_ticket());
    let topic = "/apps/s1:resume";
    s.ok(&["stream", "topic", "create", "/apps/s1", "resume"]);
    // 100 records in partition 0.
    let (ok, text) = run_clients(&s, "confluent", "admin", &admin, topic);
    assert!(ok, "{text}");
    let (ok, text) = run_clients(&s, "group-commit", "admin", &admin, topic);
    assert!(ok, "{text}\n{}", s.log());
    let committed: i64 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("committed offset in {text:?}"));
    assert_eq!(committed, 30, "committed after the 30th record");
    s.kill9();
    s.restart();
    let (ok, text) = run_clients(&s, "group-resume", "admin", &admin, topic);
    assert!(ok, "{text}\n{}", s.log());
    let first: i64 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("first offset in {text:?}"));
    assert_eq!(first, committed, "the group resumes where it committed");
}

/// SCRAM-SHA-256/512 with a user's password and OAUTHBEARER with a ticket,
/// through librdkafka; a wrong SCRAM password fails authentication.
#[test]
fn scram_and_oauthbearer_authenticate_librdkafka() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let s = server();
    user_of_s1(&s, "carol", "carol-pw");
    for (mech, topic) in [("SCRAM-SHA-256", "sha256"), ("SCRAM-SHA-512", "sha512")] {
        s.ok(&["stream", "topic", "create", "/apps/s1", topic]);
        let t = format!("/apps/s1:{topic}");
        let (ok, text) = run_clients_with(&s, mech, "confluent", "carol", "carol-pw", &t);
        assert!(ok, "{mech}: {text}\n{}", s.log());
        let (ok, text) = run_clients_with(&s, mech, "bad-login", "carol", "wrong", &t);
        assert!(ok, "{mech} with a wrong password: {text}\n{}", s.log());
    }
    s.ok(&["stream", "topic", "create", "/apps/s1", "oauth"]);
    let carol = ticket(&s.login("carol", "carol-pw"));
    let (ok, text) = run_clients_with(&s, "OAUTHBEARER", "confluent", "", &carol, "/apps/s1:oauth");
    assert!(ok, "OAUTHBEARER: {text}\n{}", s.log());
    let (ok, text) = run_clients_with(
        &s,
        "OAUTHBEARER",
        "bad-login",
        "",
        "not-a-ticket",
        "/apps/s1:oauth",
    );
    assert!(ok, "OAUTHBEARER with a bad token: {text}\n{}", s.log());
}

/// An rdkafka client configuration for `s` over TLS with SASL `mechanism`,
/// plus `extra`.
pub(crate) fn rdkafka_config(
    s: &TestServer,
    mechanism: &str,
    user: &str,
    password: &str,
    extra: &[(&str, &str)],
) -> rdkafka::config::ClientConfig {
    let mut c = rdkafka::config::ClientConfig::new();
    c.set("bootstrap.servers", format!("127.0.0.1:{}", s.kafka_port))
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanisms", mechanism)
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set("ssl.ca.location", s.ca_file().to_str().expect("UTF-8 path"));
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c
}

/// The Rust client (`rdkafka`, librdkafka built from source): keyed records
/// with headers, lz4-compressed, acks=all, over TLS with SCRAM-SHA-512;
/// read back in order.
#[test]
fn rdkafka_round_trip_with_scram() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};

    let s = server();
    user_of_s1(&s, "dave", "dave-pw");
    s.ok(&["stream", "topic", "create", "/apps/s1", "rust"]);
    let topic = "/apps/s1:rust";
    let config =
        |extra: &[(&str, &str)]| rdkafka_config(&s, "SCRAM-SHA-512", "dave", "dave-pw", extra);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let producer: FutureProducer = config(&[("acks", "all"), ("compression.type", "lz4")])
        .create()
        .expect("producer");
    let offsets: Vec<i64> = rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..30 {
            let (key, value) = (format!("k{i}"), format!("value {i}"));
            let headers = OwnedHeaders::new().insert(Header {
                key: "n",
                value: Some(&i.to_string()),
            });
            let record = FutureRecord::to(topic)
                .partition(0)
                .key(&key)
                .payload(&value)
                .headers(headers);
            let d = producer
                .send(record, std::time::Duration::from_secs(30))
                .await
                .unwrap_or_else(|(e, _)| panic!("record {i}: {e}\n{}", s.log()));
            out.push(d.offset);
        }
        out
    });
    assert_eq!(offsets, (0..30).collect::<Vec<i64>>());
    let consumer: BaseConsumer = config(&[("group.id", "/apps/s1:rust-reader")])
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while got.len() < 30 && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(std::time::Duration::from_millis(500)) else {
            continue;
        };
        let m = m.unwrap_or_else(|e| panic!("consume: {e}\n{}", s.log()));
        let header = m
            .headers()
            .and_then(|h| h.iter().next())
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()));
        got.push((
            m.offset(),
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            header,
        ));
    }
    assert_eq!(got.len(), 30, "{got:?}");
    for (i, (o, k, v, h)) in got.iter().enumerate() {
        assert_eq!(
            (*o, k.as_str(), v.as_str(), h.as_deref()),
            (
                i as i64,
                format!("k{i}").as_str(),
                format!("value {i}").as_str(),
                Some(i.to_string().as_str())
            )
        );
    }
}

/// An idempotent producer whose connections are cut mid-request (through a
/// proxy the broker advertises) retries without writing any record twice.
#[test]
fn idempotent_retries_after_dropped_connections_leave_no_duplicates() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let proxy = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let advertise = format!("127.0.0.1:{proxy}");
    let s = TestServer::start_with(&["--kafka-advertise", &advertise]);
    s.ok(&["mkdir", "/apps"]);
    s.ok(&["stream", "create", "/apps/s1"]);
    s.ok(&["stream", "topic", "create", "/apps/s1", "drops"]);
    let admin = ticket(&s.admin_ticket());
    let mut cmd = clients(
        &s,
        &advertise,
        "idempotent-drops",
        "admin",
        &admin,
        "/apps/s1:drops",
    );
    cmd.env("PROXY_LISTEN", proxy.to_string())
        .env("PROXY_TARGET", format!("127.0.0.1:{}", s.kafka_port));
    let (ok, text) = output(cmd);
    assert!(ok, "{text}\n{}", s.log());
}

/// A compacted stream keeps the last record of every key: librdkafka reads
/// what the compaction sweep left, across the offset gaps, including an lz4
/// batch it rewrote, and a deleted key's tombstone goes after the stream's
/// delete retention.
#[test]
fn compacted_streams_keep_the_last_record_per_key() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let s = TestServer::start_with(&["--stream-sweep-ms", "200"]);
    s.ok(&["mkdir", "/apps"]);
    s.ok(&[
        "stream",
        "create",
        "/apps/c",
        "--compact",
        "--delete-retention",
        "2s",
    ]);
    s.ok(&["stream", "topic", "create", "/apps/c", "kv"]);
    let admin = ticket(&s.admin_ticket());
    let (ok, text) = run_clients(&s, "compact", "admin", &admin, "/apps/c:kv");
    assert!(ok, "{text}\n{}", s.log());
}
