//! Crash test of tables with a unique index: pymongo writers insert, update
//! and delete documents of one collection, colliding on its unique index,
//! while the server is killed with SIGKILL; after each restart every
//! acknowledged write is there, writes in flight are whole or absent, the
//! unique index holds and agrees with the documents, and `berth table
//! check` finds the table consistent. The load and its verification are
//! `tests/mongo/crash_load.py`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::harness::{output_within, TestServer};
use crate::kafka::{have, python_has};

const LOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mongo/crash_load.py");
const ROUNDS: usize = 2;
/// Writer threads of the load.
const WRITERS: &str = "4";
/// Longest a load runs when no kill comes (it stops by itself).
const LOAD_SECONDS_MAX: &str = "30";
/// Acknowledged writes in a round's log before the kill may come.
const WRITES_BEFORE_KILL_MIN: usize = 40;
/// Longest wait for them.
const LOAD_START_TIMEOUT: Duration = Duration::from_secs(60);

fn script(s: &TestServer, mode: &str, log: &Path) -> Command {
    let ticket = std::fs::read_to_string(s.admin_ticket()).expect("admin ticket");
    let mut c = Command::new("python3");
    c.arg(LOAD)
        .arg(mode)
        .args(["--port", &s.mongo_port.to_string()])
        .arg("--ca")
        .arg(s.ca_file())
        .args(["--ticket", ticket.trim()])
        .arg("--log")
        .arg(log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The JSON the script printed last on stdout.
fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("no summary ({e}):\n{}", text(out)))
}

/// Acknowledged writes (answers other than "unknown") in a load's log.
fn acknowledged(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"outcome\": \"ok\"") || l.contains("\"outcome\": \"dup\""))
        .count()
}

#[test]
fn acknowledged_table_writes_and_unique_keys_survive_sigkill() {
    if !have("pymongo", python_has("pymongo")) {
        return;
    }
    let seed: u64 = std::env::var("BERTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("table crash test seed {seed} (rerun with BERTH_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = TestServer::start();
    let state = s.dir.path().join("crash-state.json");
    let (mut acked, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let log = s.dir.path().join(format!("crash-log-{round}.jsonl"));
        let load = script(&s, "load", &log)
            .args(["--round", &round.to_string()])
            .args(["--threads", WRITERS, "--seconds", LOAD_SECONDS_MAX])
            .args(["--seed", &rng.gen::<u32>().to_string()])
            .spawn()
            .expect("run python3");
        // Kill mid-load: once writes flow, after a random while.
        let start = Instant::now();
        while acknowledged(&log) < WRITES_BEFORE_KILL_MIN {
            assert!(
                start.elapsed() < LOAD_START_TIMEOUT,
                "round {round}: the load did not get going\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..1200)));
        s.kill9();
        let out = output_within(load, 60)
            .expect("the load stops once the server is gone")
            .expect("load output");
        assert!(
            out.status.success(),
            "round {round} load (seed {seed}):\n{}",
            text(&out)
        );
        let counts = summary(&out);
        acked += counts["ok"].as_u64().unwrap_or(0);
        refused += counts["dup"].as_u64().unwrap_or(0);

        s.restart();
        let out = script(&s, "verify", &log)
            .arg("--state")
            .arg(&state)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "round {round} after SIGKILL (seed {seed}):\n{}\n{}",
            text(&out),
            s.log()
        );
        let found = summary(&out);
        let check = s.json(&["table", "check", "/tables/crash/users"]);
        assert_eq!(check["ok"], true, "round {round} (seed {seed}): {check}");
        assert_eq!(check["documents"], found["documents"], "{check}");
        let unique = &check["indexes"][0];
        assert_eq!(
            (&unique["name"], &unique["unique"], &unique["entries"]),
            (&"email_1".into(), &true.into(), &found["documents"]),
            "one entry per document: {check}"
        );
    }
    // A test whose writes all failed, or never met the unique index, proves nothing.
    assert!(acked > 0, "no write was acknowledged\n{}", s.log());
    assert!(refused > 0, "no write collided on the unique index");
    eprintln!("table crash test: {acked} acknowledged writes, {refused} refused as duplicates, {ROUNDS} kills");
}
