//! `berth stream …` against a real server: streams and topics created,
//! shown, changed and removed, and each right enforced by its ACE.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::TestServer;

const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

/// Checks a denial: exit 1, exactly one `error: EACCES …` line.
fn denied(s: &TestServer, args: &[&str], out: Output) -> String {
    let stderr = s.check_err(args, out, "EACCES");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

fn as_user(s: &TestServer, ticket: &Path, args: &[&str]) -> Output {
    s.cli_with(args, &[("BERTH_TICKET_FILE", ticket)], None)
}

fn topic_names(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("topic list --json prints an array")
        .iter()
        .map(|t| t["topic"].as_str().expect("topic name"))
        .collect()
}

fn offsets(v: &Value) -> Vec<(i64, i64)> {
    v["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["log_start"].as_i64().expect("log_start"),
                p["log_end"].as_i64().expect("log_end"),
            )
        })
        .collect()
}

#[test]
fn streams_and_topics() {
    let s = TestServer::start();
    s.ok(&["mkdir", "/apps"]);

    // Create with settings; info shows them.
    let created = s.ok(&[
        "stream",
        "create",
        "/apps/s1",
        "--partitions",
        "3",
        "--produce-ace",
        "g:dev",
        "--topic-ace",
        "u:alice",
    ]);
    assert!(created.contains("created stream /apps/s1"), "{created}");
    let info = s.json(&["stream", "info", "/apps/s1"]);
    assert_eq!(info["path"], "/apps/s1");
    assert_eq!(info["default_partitions"], 3);
    assert_eq!(info["retention_ms"], WEEK_MS, "MapR's default: {info}");
    assert_eq!(info["retention_bytes"], -1);
    assert_eq!(info["autocreate"], true);
    assert_eq!(info["compact"], false);
    assert_eq!(
        info["delete_retention_ms"],
        24 * 3600 * 1000,
        "Kafka's default"
    );
    assert_eq!(info["produce_ace"], "g:dev");
    assert_eq!(info["topic_ace"], "u:alice");
    assert_eq!(info["consume_ace"], Value::Null);
    assert_eq!(info["topics"], 0);
    assert_eq!(info["entry"]["type"], "stream");
    let text = s.ok(&["stream", "info", "/apps/s1"]);
    for want in ["7days", "unlimited", "u:alice", "(the owner only)"] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }

    // Every setting given.
    let s2 = s.json(&[
        "stream",
        "create",
        "apps/s2",
        "--retention",
        "forever",
        "--retention-bytes",
        "10GiB",
        "--compact",
        "--delete-retention",
        "10min",
        "--autocreate",
        "false",
    ]);
    assert_eq!(s2["delete_retention_ms"], 600_000);
    assert_eq!(s2["path"], "/apps/s2");
    assert_eq!(s2["retention_ms"], -1);
    assert_eq!(s2["retention_bytes"], 10i64 << 30);
    assert_eq!(
        (&s2["compact"], &s2["autocreate"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    assert_eq!(s2["default_partitions"], 1);
    s.err(&["stream", "create", "/apps/s2"], "EEXIST");
    let msg = s.err(
        &[
            "stream",
            "create",
            "/apps/s3",
            "--topic-ace",
            "u:alice | (g:dev",
        ],
        "EINVAL",
    );
    assert!(msg.contains("topic ACE"), "{msg}");

    // Topics: create (the stream's default of 3), list, info, grow, delete.
    let t = s.json(&["stream", "topic", "create", "/apps/s1", "t1"]);
    assert_eq!(t["partition_count"], 3);
    s.ok(&[
        "stream",
        "topic",
        "create",
        "/apps/s1",
        "t2",
        "--partitions",
        "2",
    ]);
    s.err(&["stream", "topic", "create", "/apps/s1", "t1"], "EEXIST");
    s.err(
        &["stream", "topic", "create", "/apps/s1", "bad/name"],
        "EINVAL",
    );
    let list = s.json(&["stream", "topic", "list", "/apps/s1"]);
    assert_eq!(topic_names(&list), vec!["t1", "t2"]);
    assert_eq!(list[1]["partition_count"], 2);
    let table = s.ok(&["stream", "topic", "list", "/apps/s1"]);
    assert!(table.starts_with("TOPIC"), "{table}");
    let ti = s.json(&["stream", "topic", "info", "/apps/s1", "t1"]);
    assert_eq!(offsets(&ti), vec![(0, 0); 3]);
    assert_eq!(ti["topic_id"].as_str().map(str::len), Some(36));
    let text = s.ok(&["stream", "topic", "info", "/apps/s1", "t1"]);
    assert!(text.contains("LOG-START"), "{text}");
    s.ok(&[
        "stream",
        "topic",
        "add-partitions",
        "/apps/s1",
        "t1",
        "--partitions",
        "5",
    ]);
    let ti = s.json(&["stream", "topic", "info", "/apps/s1", "t1"]);
    assert_eq!(ti["partition_count"], 5);
    assert_eq!(offsets(&ti), vec![(0, 0); 5]);
    s.err(
        &[
            "stream",
            "topic",
            "add-partitions",
            "/apps/s1",
            "t1",
            "--partitions",
            "4",
        ],
        "EINVAL",
    );
    s.ok(&["stream", "topic", "delete", "/apps/s1", "t2"]);
    s.err(&["stream", "topic", "info", "/apps/s1", "t2"], "ENOENT");
    s.err(&["stream", "topic", "delete", "/apps/s1", "t2"], "ENOENT");
    assert_eq!(
        topic_names(&s.json(&["stream", "topic", "list", "/apps/s1"])),
        vec!["t1"]
    );
    assert_eq!(s.json(&["stream", "info", "/apps/s1"])["topics"], 1);

    // Edit: only what is given changes.
    let e = s.json(&[
        "stream",
        "edit",
        "/apps/s1",
        "--retention",
        "1d",
        "--default-partitions",
        "2",
        "--clear-ace",
        "produce",
        "--consume-ace",
        "u:alice",
    ]);
    assert_eq!(e["retention_ms"], 24 * 3600 * 1000);
    assert_eq!(e["delete_retention_ms"], 24 * 3600 * 1000, "unchanged");
    assert_eq!(e["default_partitions"], 2);
    assert_eq!(e["produce_ace"], Value::Null);
    assert_eq!(e["consume_ace"], "u:alice");
    assert_eq!(e["topic_ace"], "u:alice");
    assert_eq!(e["autocreate"], true);
    s.ok(&["stream", "edit", "/apps/s2", "--compact=false"]);
    assert_eq!(s.json(&["stream", "info", "/apps/s2"])["compact"], false);

    // List: only streams, only directly in the directory.
    s.ok(&["mkdir", "/apps/sub"]);
    s.ok(&["touch", "/apps/file"]);
    s.ok(&["stream", "create", "/apps/sub/deep"]);
    let paths: Vec<String> = s
        .json(&["stream", "list", "/apps"])
        .as_array()
        .expect("stream list --json prints an array")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect();
    assert_eq!(paths, vec!["/apps/s1", "/apps/s2"]);
    assert_eq!(s.json(&["stream", "list"]), Value::Array(Vec::new()));
    s.err(&["stream", "list", "/apps/file"], "ENOTDIR");
    s.err(&["stream", "info", "/apps/file"], "EINVAL");

    // Delete.
    s.ok(&["stream", "delete", "/apps/s2"]);
    s.err(&["stream", "info", "/apps/s2"], "ENOENT");
    let left = s.json(&["stream", "list", "/apps"]);
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
}

#[test]
fn stream_rights_follow_the_aces() {
    let s = TestServer::start();
    s.ok(&["user", "add", "alice", "--password", "alice-pw"]);
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let alice = s.login("alice", "alice-pw");
    let bob = s.login("bob", "bob-pw");
    s.ok(&["mkdir", "/apps"]);
    s.ok(&["stream", "create", "/apps/s", "--topic-ace", "u:alice"]);

    // bob holds no right: no topic, not even the settings.
    let args = ["stream", "topic", "create", "/apps/s", "t"];
    let msg = denied(&s, &args, as_user(&s, &bob, &args));
    assert!(
        msg.contains("topic ACE") && msg.contains("bob"),
        "the denial names the ACE and the principal: {msg}"
    );
    let args = ["stream", "info", "/apps/s"];
    denied(&s, &args, as_user(&s, &bob, &args));

    // alice is named by the topic ACE.
    let args = ["stream", "topic", "create", "/apps/s", "t"];
    s.check_ok(&args, as_user(&s, &alice, &args));
    let args = ["stream", "topic", "list", "/apps/s", "--json"];
    let list: Value =
        serde_json::from_str(&s.check_ok(&args, as_user(&s, &alice, &args))).expect("JSON");
    assert_eq!(topic_names(&list), vec!["t"]);
    let args = ["stream", "info", "/apps/s", "--json"];
    let info: Value =
        serde_json::from_str(&s.check_ok(&args, as_user(&s, &alice, &args))).expect("JSON");
    assert_eq!(info["topics"], 1);
    // ... but not by the consume or admin ACEs (unset: the owner only).
    let args = ["stream", "topic", "info", "/apps/s", "t"];
    denied(&s, &args, as_user(&s, &alice, &args));
    let args = ["stream", "edit", "/apps/s", "--topic-ace", "u:bob"];
    denied(&s, &args, as_user(&s, &alice, &args));
    let args = ["stream", "delete", "/apps/s"];
    denied(&s, &args, as_user(&s, &alice, &args));

    // The admin names bob too: now bob may.
    s.ok(&[
        "stream",
        "edit",
        "/apps/s",
        "--topic-ace",
        "u:alice | u:bob",
    ]);
    let args = ["stream", "topic", "create", "/apps/s", "t2"];
    s.check_ok(&args, as_user(&s, &bob, &args));
    let args = ["stream", "topic", "delete", "/apps/s", "t"];
    s.check_ok(&args, as_user(&s, &bob, &args));
}
