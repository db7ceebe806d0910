//! Kafka out of the box: on a fresh data directory, with no setup step,
//! every client produces to and consumes from a plain topic name in a
//! consumer group (the default stream exists from the first start and lets
//! every authenticated principal in); Debian's kcat (librdkafka 2.0.2,
//! which repeats the client nonce in SCRAM's client-final message) logs in
//! with SCRAM-SHA-256/512; kafka-python, which refuses names outside
//! `[A-Za-z0-9._-]`, reaches a non-default stream by its Kafka name; a
//! principal whose plain-name stream is missing is told which stream.
//! Clients are installed by `scripts/test`; a missing one is skipped with a
//! line that says so.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::harness::{output_within, TestServer};
use crate::kafka::{clients, have, output, python_has, rdkafka_config};

/// Longest a kcat run may take.
const KCAT_TIMEOUT_S: u64 = 60;

fn python_clients() -> Vec<&'static str> {
    [
        ("confluent", "confluent_kafka"),
        ("kafka-python", "kafka"),
        ("aiokafka", "aiokafka"),
    ]
    .into_iter()
    .filter(|(_, module)| have(module, python_has(module)))
    .map(|(client, _)| client)
    .collect()
}

/// `clients.py subscribe` with `client` in `group` on `topic`.
fn subscribe(s: &TestServer, client: &str, user: &str, password: &str, topic: &str, group: &str) {
    let bootstrap = format!("127.0.0.1:{}", s.kafka_port);
    let mut cmd = clients(s, &bootstrap, "subscribe", user, password, topic);
    cmd.env("KAFKA_CLIENT", client).env("KAFKA_GROUP", group);
    let (ok, text) = output(cmd);
    assert!(ok, "{client} on {topic} in {group}: {text}\n{}", s.log());
}

/// kcat with `mechanism` (`user`'s password): 10 lines produced to `topic`,
/// then read back by a member of `group` (`-G`).
fn kcat_round_trip(s: &TestServer, mechanism: &str, user: &str, password: &str, topic: &str) {
    let common = [
        "-b".to_string(),
        format!("127.0.0.1:{}", s.kafka_port),
        "-X".into(),
        "security.protocol=SASL_SSL".into(),
        "-X".into(),
        format!("sasl.mechanisms={mechanism}"),
        "-X".into(),
        format!("sasl.username={user}"),
        "-X".into(),
        format!("sasl.password={password}"),
        "-X".into(),
        format!("ssl.ca.location={}", s.ca_file().display()),
    ];
    let lines: Vec<String> = (0..10).map(|i| format!("{mechanism} line {i}")).collect();
    let mut p = Command::new("kcat")
        .args(&common)
        .args(["-P", "-t", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat -P");
    p.stdin
        .take()
        .expect("stdin")
        .write_all((lines.join("\n") + "\n").as_bytes())
        .expect("write");
    let out = output_within(p, KCAT_TIMEOUT_S)
        .expect("kcat -P finishes")
        .expect("kcat -P");
    assert!(
        out.status.success(),
        "kcat -P with {mechanism}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let group = format!("kcat-{}", topic.replace(['/', ':'], "-"));
    let c = Command::new("kcat")
        .args(&common)
        .args(["-X", "auto.offset.reset=earliest", "-G", &group, topic])
        .args(["-c", "10", "-f", "%s\n", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat -G");
    let out = output_within(c, KCAT_TIMEOUT_S)
        .expect("kcat -G finishes")
        .expect("kcat -G");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kcat -G with {mechanism}: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let mut got: Vec<&str> = text.lines().collect();
    got.sort();
    let mut want: Vec<&str> = lines.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want, "{mechanism}");
}

#[test]
fn a_fresh_node_takes_plain_names_and_groups_from_every_client() {
    let s = TestServer::start();
    // An ordinary user, not the administrator: the default stream's ACEs
    // let every authenticated principal produce, consume and create topics.
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let info = s.json(&["stream", "info", "/streams/default"]);
    assert_eq!(info["produce_ace"], "p", "{info}");
    assert_eq!(info["consume_ace"], "p", "{info}");
    assert_eq!(info["topic_ace"], "p", "{info}");
    for client in python_clients() {
        let topic = format!("test-{client}");
        subscribe(
            &s,
            client,
            "bob",
            "bob-pw",
            &topic,
            &format!("my-app-{client}"),
        );
    }
    if have("kcat", Command::new("kcat").arg("-V").output().is_ok()) {
        kcat_round_trip(&s, "PLAIN", "bob", "bob-pw", "test");
        // Debian's kcat links librdkafka 2.0.2: its SCRAM client-final
        // repeats the client nonce.
        kcat_round_trip(&s, "SCRAM-SHA-256", "bob", "bob-pw", "test-scram-256");
        kcat_round_trip(&s, "SCRAM-SHA-512", "bob", "bob-pw", "test-scram-512");
    }
    rdkafka_group(&s);
    // Everything went to the default stream, by plain names.
    let topics = s.ok(&["stream", "topic", "list", "/streams/default"]);
    assert!(topics.contains("test"), "{topics}");

    // The setup ran once: after a restart an operator's changes stay.
    s.ok(&[
        "stream",
        "edit",
        "/streams/default",
        "--produce-ace",
        "u:admin",
    ]);
    let mut s = s;
    s.restart();
    let info = s.json(&["stream", "info", "/streams/default"]);
    assert_eq!(info["produce_ace"], "u:admin", "{info}");
}

/// The Rust client (librdkafka built from source) in a consumer group on a
/// plain name.
fn rdkafka_group(s: &TestServer) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::time::{Duration, Instant};

    let config = |extra: &[(&str, &str)]| rdkafka_config(s, "PLAIN", "bob", "bob-pw", extra);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let producer: FutureProducer = config(&[("acks", "all")]).create().expect("producer");
    rt.block_on(async {
        for i in 0..10 {
            let value = format!("rust {i}");
            producer
                .send(
                    FutureRecord::<(), _>::to("test-rust").payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("record {i}: {e}\n{}", s.log()));
        }
    });
    let consumer: BaseConsumer = config(&[
        ("group.id", "rust-app"),
        ("auto.offset.reset", "earliest"),
        ("enable.auto.commit", "false"),
    ])
    .create()
    .expect("consumer");
    consumer.subscribe(&["test-rust"]).expect("subscribe");
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < 10 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m.unwrap_or_else(|e| panic!("consume: {e}\n{}", s.log()));
            assert!(m.payload().is_some());
            got += 1;
        }
    }
    assert_eq!(got, 10, "rdkafka read {got} of 10 records\n{}", s.log());
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .unwrap_or_else(|e| panic!("commit: {e}\n{}", s.log()));
}

#[test]
fn kafka_python_reaches_a_named_stream_by_its_legal_name() {
    let s = TestServer::start();
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    s.ok(&["mkdir", "/apps"]);
    let out = s.ok(&[
        "stream",
        "create",
        "/apps/events",
        "--kafka-name",
        "events",
        "--partitions",
        "2",
        "--produce-ace",
        "u:bob",
        "--consume-ace",
        "u:bob",
        "--topic-ace",
        "u:bob",
    ]);
    assert!(out.contains("events.TOPIC"), "{out}");
    let info = s.json(&["stream", "info", "/apps/events"]);
    assert_eq!(info["kafka_name"], "events", "{info}");
    // Names are unique and of Kafka's characters, without a dot.
    s.ok(&["stream", "create", "/apps/other"]);
    let out = s.cli(&["stream", "edit", "/apps/other", "--kafka-name", "events"]);
    s.check_err(&["stream", "edit"], out, "EEXIST");
    let out = s.cli(&["stream", "edit", "/apps/other", "--kafka-name", "a.b"]);
    s.check_err(&["stream", "edit"], out, "EINVAL");

    if have("kafka", python_has("kafka")) {
        // Topic `clicks` of /apps/events as `events.clicks`, group
        // `billing` of /apps/events as `events.billing`; the all-topics
        // metadata lists the legal name.
        subscribe(
            &s,
            "kafka-python",
            "bob",
            "bob-pw",
            "events.clicks",
            "events.billing",
        );
        let info = s.json(&["stream", "topic", "info", "/apps/events", "clicks"]);
        assert_eq!(info["partition_count"], 2, "{info}");
        let ends: i64 = info["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| p["log_end"].as_i64().expect("log end"))
            .sum();
        assert_eq!(ends, 20, "{info}");
        let default = s.ok(&["stream", "topic", "list", "/streams/default"]);
        assert!(!default.contains("clicks"), "{default}");
    }

    // The name moves: dropped from one stream, claimed by another.
    s.ok(&["stream", "edit", "/apps/events", "--kafka-name", ""]);
    assert!(s.json(&["stream", "info", "/apps/events"])["kafka_name"].is_null());
    s.ok(&["stream", "edit", "/apps/other", "--kafka-name", "events"]);
    // A name whose stream is gone may be claimed again.
    s.ok(&["stream", "delete", "/apps/other"]);
    s.ok(&["stream", "edit", "/apps/events", "--kafka-name", "events"]);
    let info = s.json(&["stream", "info", "/apps/events"]);
    assert_eq!(info["kafka_name"], "events", "{info}");
}

#[test]
fn a_missing_principal_stream_is_named_to_the_client() {
    if !have("confluent_kafka", python_has("confluent_kafka")) {
        return;
    }
    let s = TestServer::start_with(&["--kafka-principal-stream", "erin=/apps/erin"]);
    s.ok(&["user", "add", "erin", "--password", "erin-pw"]);
    s.ok(&["mkdir", "/apps"]);
    s.ok(&[
        "stream",
        "create",
        "/apps/shared",
        "--produce-ace",
        "p",
        "--consume-ace",
        "p",
        "--topic-ace",
        "p",
    ]);
    s.ok(&["stream", "topic", "create", "/apps/shared", "t"]);
    let bootstrap = format!("127.0.0.1:{}", s.kafka_port);
    let mut cmd = clients(
        &s,
        &bootstrap,
        "group-error",
        "erin",
        "erin-pw",
        "/apps/shared:t",
    );
    cmd.env("KAFKA_GROUP", "my-app")
        .env("EXPECT", "/apps/erin, which does not exist");
    let (ok, text) = output(cmd);
    assert!(ok, "{text}\n{}", s.log());
}
