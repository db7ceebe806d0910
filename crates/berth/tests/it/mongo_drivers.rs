//! Tables through the MongoDB wire protocol with two more unmodified
//! drivers, against a real server, the same checks as pymongo's
//! (`mongo.rs`); the Rust driver has its own crate,
//! `crates/berth-mongo-driver-test`.
//!
//! - The Go driver (Debian `golang-mongodb-mongo-driver-dev`, 1.8.4, built
//!   with Debian's `golang-go` in GOPATH mode, no module proxy) through
//!   `tests/mongo/go/main.go` (`mongo-go-check`).
//! - The C driver libmongoc (Debian `libmongoc-dev`, 1.23.1, with
//!   `libbson-dev`) through `tests/mongo/c/mongoc_check.c` (`mongoc-check`),
//!   compiled here with `cc` and `pkg-config libmongoc-1.0`.
//!
//! Each driver connects with the connection string a user would write
//! (TLS verified against the cluster CA through `tlsCAFile`), and runs:
//! CRUD as a user with SCRAM-SHA-256 (uncompressed), the same CRUD as the
//! admin with PLAIN and the admin ticket (`authSource=$external`) over a
//! compressed connection (`compressors=zstd` for Go, `zlib` for C); a table
//! made by one user read and written by another (error 13); and a wrong
//! password (authentication failed).
//!
//! When the server logs requests (`RUST_LOG=berth_mongo=trace` in the
//! test's environment), the compressed runs also check that the server saw
//! compressed requests.
//!
//! `scripts/test` installs the packages; where one is missing the tests
//! say SKIP and pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::harness::{output_within, TestServer};

const GO_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mongo/go");
const C_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mongo/c/mongoc_check.c");
/// Debian's Go packages live here; no module proxy is used.
/// A run of a check program is killed after this long (each bounds its own
/// work at 60 s).
const CHECK_TIMEOUT_S: u64 = 120;

/// A built check program, or None (after a SKIP line) when what it needs
/// is missing. Built once per test process.
fn built(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    build: fn() -> Result<PathBuf, String>,
) -> Option<&'static Path> {
    match cell.get_or_init(build) {
        Ok(bin) => Some(bin),
        Err(missing) => {
            eprintln!("SKIP: {missing} is not installed (scripts/test installs it)");
            None
        }
    }
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The directory a check program is built in, under the target's
/// temporary directory, and the name of a build of this process (built
/// under it, then renamed: test processes running at once never see a
/// half-written binary).
fn build_dir(name: &str) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).expect("check program build dir");
    let tmp = dir.join(format!("{name}.{}", std::process::id()));
    (dir, tmp)
}

fn go_check() -> Option<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BIN, build_go)
}

/// Builds `mongo-go-check`, or names what is missing.
fn build_go() -> Result<PathBuf, String> {
    crate::kafka_go::go_build(
        GO_SOURCE,
        "mongo-go-check",
        &[(
            "golang-mongodb-mongo-driver-dev",
            "go.mongodb.org/mongo-driver",
        )],
    )
}

pub(crate) fn c_check() -> Option<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BIN, build_c)
}

/// Compiles `mongoc-check`, or names what is missing.
fn build_c() -> Result<PathBuf, String> {
    if !runs("cc", "--version") {
        return Err("a C compiler (cc)".into());
    }
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libmongoc-1.0"])
        .stdin(Stdio::null())
        .output();
    let flags = match flags {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).expect("pkg-config"),
        _ => return Err("libmongoc (Debian libmongoc-dev, libbson-dev, pkg-config)".into()),
    };
    let (dir, tmp) = build_dir("mongoc-check");
    let out = Command::new("cc")
        .args(["-Wall", "-Wextra", "-o"])
        .arg(&tmp)
        .arg(C_SOURCE)
        .args(flags.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc {C_SOURCE} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = dir.join("mongoc-check");
    std::fs::rename(&tmp, &bin).expect("rename mongoc-check");
    Ok(bin)
}

/// `s` with every byte but RFC 3986's unreserved ones percent-encoded, as a
/// user name or password must be in a connection string.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The connection string a user would write for `s`.
fn uri(s: &TestServer, user: &str, password: &str, mechanism: &str, extra: &str) -> String {
    let mut uri = format!(
        "mongodb://{}:{}@127.0.0.1:{}/?tls=true&tlsCAFile={}&authMechanism={mechanism}",
        escape(user),
        escape(password),
        s.mongo_port,
        s.ca_file().display()
    );
    if mechanism == "PLAIN" {
        uri.push_str("&authSource=$external");
    }
    uri.push_str(extra);
    uri
}

/// Runs `bin CHECK URI`; panics with its output and the server log unless
/// it passed.
fn run(bin: &Path, s: &TestServer, check: &str, uri: &str) {
    let child = Command::new(bin)
        .args([check, uri])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn check program");
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    let what = format!("{name} {check} {uri}");
    let out = match output_within(child, CHECK_TIMEOUT_S) {
        Some(out) => out.expect("collect check program output"),
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

fn admin_ticket(s: &TestServer) -> String {
    std::fs::read_to_string(s.admin_ticket())
        .expect("admin ticket")
        .trim()
        .to_string()
}

/// When the server logs every request (trace), checks that it saw
/// requests compressed with `compressor`.
fn saw_compressed(s: &TestServer, compressor: &str) {
    let log = s.log();
    if log.contains("mongo: request") {
        assert!(
            log.contains(&format!("compressor=\"{compressor}\"")),
            "no request compressed with {compressor} in the log\n{log}"
        );
    }
}

/// CRUD as alice (SCRAM-SHA-256, her password), then as the admin (PLAIN
/// with the ticket, compressed with `compressor`).
fn crud(bin: &Path, compressor: &str) {
    let s = TestServer::start();
    s.ok(&["user", "add", "alice", "--password", "alice-pw"]);
    run(
        bin,
        &s,
        "crud",
        &uri(&s, "alice", "alice-pw", "SCRAM-SHA-256", ""),
    );
    let admin = admin_ticket(&s);
    let compressed = format!("&compressors={compressor}");
    run(
        bin,
        &s,
        "crud",
        &uri(&s, "admin", &admin, "PLAIN", &compressed),
    );
    saw_compressed(&s, compressor);
}

/// A table made by alice is neither readable nor writable by bob (13); a
/// wrong password fails authentication.
fn denied(bin: &Path) {
    let s = TestServer::start();
    s.ok(&["user", "add", "alice", "--password", "alice-pw"]);
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    run(
        bin,
        &s,
        "seed",
        &uri(&s, "alice", "alice-pw", "SCRAM-SHA-256", ""),
    );
    run(
        bin,
        &s,
        "denied",
        &uri(&s, "bob", "bob-pw", "SCRAM-SHA-256", ""),
    );
    run(
        bin,
        &s,
        "bad-login",
        &uri(&s, "bob", "wrong", "SCRAM-SHA-256", ""),
    );
}

#[test]
fn go_driver_crud_over_scram_and_over_plain_compressed() {
    let Some(bin) = go_check() else { return };
    crud(bin, "zstd");
}

#[test]
fn go_driver_is_denied_another_users_table() {
    let Some(bin) = go_check() else { return };
    denied(bin);
}

/// The Go driver 1.8's EstimatedDocumentCount is an aggregate starting
/// with `$collStats` (for servers of wire version 12 and later).
#[test]
fn go_driver_estimated_document_count() {
    let Some(bin) = go_check() else { return };
    let s = TestServer::start();
    let admin = admin_ticket(&s);
    run(
        bin,
        &s,
        "estimated-count",
        &uri(&s, "admin", &admin, "PLAIN", ""),
    );
}

// libmongoc 1.23 needed two server changes, now made: SCRAM-SHA-256
// salts of MongoDB's length (28 bytes; libmongoc refuses others) and a
// SASL payload sent as a string read as base64 (its PLAIN does that).

#[test]
fn c_driver_crud_over_scram_and_over_plain_compressed() {
    let Some(bin) = c_check() else { return };
    crud(bin, "zlib");
}

#[test]
fn c_driver_is_denied_another_users_table() {
    let Some(bin) = c_check() else { return };
    denied(bin);
}
