//! The Go Kafka client sarama (Debian `golang-github-shopify-sarama-dev`,
//! sarama 1.22.1, built with Debian's `golang-go` in GOPATH mode) against a
//! real server, through `tests/kafka/sarama/main.go` (`sarama-check`). Every
//! connection is SASL_SSL (TLS verified against the cluster CA). Tested:
//!
//! - a synchronous producer with acks=all writes keyed records with a header
//!   uncompressed, snappy and lz4, and reads them back in order (offsets,
//!   keys, values, headers; ListOffsets earliest and latest), on a plain
//!   topic name (the default stream) and on `/apps/s1:go-path`;
//! - SASL PLAIN with a ticket and with a user's password, SCRAM-SHA-256 and
//!   SCRAM-SHA-512 with a user's password (SCRAM client: Debian
//!   `golang-github-xdg-go-scram-dev`), and a wrong password failing with
//!   SASL_AUTHENTICATION_FAILED for each mechanism;
//! - a consumer group of two members (sarama's ConsumerGroup, classic
//!   protocol, range assignor) on a 4-partition topic (admin, PLAIN, plain
//!   names) and on a 3-partition one (a user, SCRAM-SHA-512, topic and
//!   group named by their stream): the partitions are
//!   split, every record is consumed once by its partition's member, and
//!   when one member leaves the other takes over all partitions from the
//!   committed offsets and consumes what is produced afterwards, nothing
//!   twice.
//!
//! - zstd as sarama 1.22 sends it, in Produce v3, is refused with
//!   UNSUPPORTED_COMPRESSION_TYPE, as Kafka does (zstd needs v7).
//!
//! `scripts/test` installs Go and the packages; where one is missing the
//! tests say SKIP and pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::harness::{output_within, TestServer};
// A fresh server (plain names in `/streams/default` from the first start,
// no setup step) with `/apps/s1`, its users, and the admin ticket.
use crate::kafka::{server, ticket, user_of_s1};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka/sarama");
/// Debian's Go packages live here; no module proxy is used.
const GOPATH: &str = "/usr/share/gocode";
/// A run of `sarama-check` is killed after this long (its own waits are
/// bounded at 30 s each).
const CHECK_TIMEOUT_S: u64 = 120;

/// The built `sarama-check`, or None (after a SKIP line) when Go or a
/// package is missing. Built once per test process, into the target's
/// temporary directory (the Go build cache beside it keeps rebuilds fast).
fn sarama_check() -> Option<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(build) {
        Ok(bin) => Some(bin),
        Err(missing) => {
            eprintln!("SKIP: {missing} is not installed (scripts/test installs it)");
            None
        }
    }
}

/// Builds `sarama-check`, or names what is missing.
fn build() -> Result<PathBuf, String> {
    go_build(
        SOURCE,
        "sarama-check",
        &[
            (
                "golang-github-shopify-sarama-dev",
                "github.com/Shopify/sarama",
            ),
            ("golang-github-xdg-go-scram-dev", "github.com/xdg-go/scram"),
        ],
    )
}

/// Builds the Go program in `source` as `name` with Debian's Go packages in
/// GOPATH mode (no module proxy), or names what is missing: Go itself, or
/// one of `packages` (Debian package, import path under GOPATH).
pub(crate) fn go_build(
    source: &str,
    name: &str,
    packages: &[(&str, &str)],
) -> Result<PathBuf, String> {
    let go_ok = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !go_ok {
        return Err("go (Debian golang-go)".into());
    }
    for (package, dir) in packages {
        if !Path::new(GOPATH).join("src").join(dir).is_dir() {
            return Err(package.to_string());
        }
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).expect("Go build dir");
    // Build under a name of this process, then rename: test processes
    // running at once never see a half-written binary.
    let tmp = dir.join(format!("{name}.{}", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(source)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .stdin(Stdio::null())
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build {source} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = dir.join(name);
    std::fs::rename(&tmp, &bin).expect("rename the Go program");
    Ok(bin)
}

/// One run of `sarama-check CHECK` as `user`.
struct Run<'a> {
    check: &'a str,
    mechanism: &'a str,
    user: &'a str,
    password: &'a str,
    topic: &'a str,
}

/// Runs a check against `s`; panics with its output and the server log
/// unless it passed.
fn run(bin: &Path, s: &TestServer, r: Run) {
    let mut cmd = Command::new(bin);
    cmd.arg(r.check)
        .env("KAFKA_BOOTSTRAP", format!("127.0.0.1:{}", s.kafka_port))
        .env("KAFKA_CA_FILE", s.ca_file())
        .env("KAFKA_USER", r.user)
        .env("KAFKA_PASSWORD", r.password)
        .env("KAFKA_SASL_MECHANISM", r.mechanism)
        .env("KAFKA_TOPIC", r.topic)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn sarama-check");
    let what = format!("sarama-check {} ({}, {})", r.check, r.mechanism, r.topic);
    let out = match output_within(child, CHECK_TIMEOUT_S) {
        Some(out) => out.expect("collect sarama-check output"),
        None => panic!("{what} did not finish in {CHECK_TIMEOUT_S} s\n{}", s.log()),
    };
    assert!(
        out.status.success(),
        "{what}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
}

/// Records in partition 0 of `topic` of `stream`, by the CLI.
fn log_end(s: &TestServer, stream: &str, topic: &str) -> serde_json::Value {
    let info = s.json(&["stream", "topic", "info", stream, topic]);
    info["partitions"][0]["log_end"].clone()
}

#[test]
fn sarama_produces_and_consumes_with_plain_and_scram() {
    let Some(bin) = sarama_check() else { return };
    let s = server();
    let admin = ticket(&s.admin_ticket());
    let as_admin = |topic| Run {
        check: "produce-consume",
        mechanism: "PLAIN",
        user: "admin",
        password: &admin,
        topic,
    };
    // A plain name lives in the default stream; a full name anywhere.
    run(bin, &s, as_admin("go-plain"));
    assert_eq!(log_end(&s, "/streams/default", "go-plain"), 60);
    run(bin, &s, as_admin("/apps/s1:go-path"));
    assert_eq!(log_end(&s, "/apps/s1", "go-path"), 60);
    // zstd in Produce v3 is refused and writes nothing.
    run(
        bin,
        &s,
        Run {
            check: "zstd-v3",
            ..as_admin("go-zstd")
        },
    );
    assert_eq!(log_end(&s, "/streams/default", "go-zstd"), 0);

    // A user's password, by PLAIN and both SCRAMs; a wrong one fails.
    user_of_s1(&s, "carol", "carol-pw");
    for (mechanism, topic) in [
        ("PLAIN", "go-carol-plain"),
        ("SCRAM-SHA-256", "go-sha256"),
        ("SCRAM-SHA-512", "go-sha512"),
    ] {
        s.ok(&["stream", "topic", "create", "/apps/s1", topic]);
        let topic = format!("/apps/s1:{topic}");
        let carol = |check, password| Run {
            check,
            mechanism,
            user: "carol",
            password,
            topic: &topic,
        };
        run(bin, &s, carol("produce-consume", "carol-pw"));
        run(bin, &s, carol("bad-login", "wrong"));
    }
}

#[test]
fn a_sarama_consumer_group_splits_and_takes_over() {
    let Some(bin) = sarama_check() else { return };
    let s = server();
    s.ok(&[
        "stream",
        "topic",
        "create",
        "/streams/default",
        "go-group",
        "--partitions",
        "4",
    ]);
    let admin = ticket(&s.admin_ticket());
    run(
        bin,
        &s,
        Run {
            check: "group",
            mechanism: "PLAIN",
            user: "admin",
            password: &admin,
            topic: "go-group",
        },
    );
    let info = s.json(&["stream", "topic", "info", "/streams/default", "go-group"]);
    let records: u64 = info["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["log_end"].as_u64().expect("log_end"))
        .sum();
    assert_eq!(records, 80, "{info}");

    // The same by a user with SCRAM-SHA-512, on a topic and group named by
    // their stream (the group is `/apps/s1:go-group-group`).
    user_of_s1(&s, "carol", "carol-pw");
    s.ok(&[
        "stream",
        "topic",
        "create",
        "/apps/s1",
        "go-group",
        "--partitions",
        "3",
    ]);
    run(
        bin,
        &s,
        Run {
            check: "group",
            mechanism: "SCRAM-SHA-512",
            user: "carol",
            password: "carol-pw",
            topic: "/apps/s1:go-group",
        },
    );
}
