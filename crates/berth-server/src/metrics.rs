//! Request metrics and the Prometheus text exposition of everything the node
//! measures (requests, Raft, store).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use berth_raft::RaftNode;
use berth_store::Store;
use parking_lot::Mutex;

#[derive(Default)]
struct MethodStats {
    by_code: BTreeMap<&'static str, u64>,
    duration_sum: Duration,
    count: u64,
}

/// Counters of native API requests by method and outcome.
#[derive(Default)]
pub struct RequestMetrics {
    methods: Mutex<BTreeMap<&'static str, MethodStats>>,
}

impl RequestMetrics {
    pub fn record(&self, method: &'static str, code: &'static str, took: Duration) {
        let mut m = self.methods.lock();
        let s = m.entry(method).or_default();
        *s.by_code.entry(code).or_default() += 1;
        s.duration_sum += took;
        s.count += 1;
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders all metrics in the Prometheus text format (version 0.0.4).
pub fn render(requests: &RequestMetrics, raft: &RaftNode, store: &Store) -> String {
    let mut out = String::new();
    {
        let m = requests.methods.lock();
        header(
            &mut out,
            "berth_requests_total",
            "counter",
            "Native API requests by method and result code.",
        );
        for (method, s) in m.iter() {
            for (code, n) in &s.by_code {
                let _ = writeln!(
                    out,
                    "berth_requests_total{{method=\"{}\",code=\"{}\"}} {n}",
                    escape(method),
                    escape(code)
                );
            }
        }
        header(
            &mut out,
            "berth_request_duration_seconds",
            "summary",
            "Native API request latency.",
        );
        for (method, s) in m.iter() {
            let _ = writeln!(
                out,
                "berth_request_duration_seconds_sum{{method=\"{}\"}} {}",
                escape(method),
                s.duration_sum.as_secs_f64()
            );
            let _ = writeln!(
                out,
                "berth_request_duration_seconds_count{{method=\"{}\"}} {}",
                escape(method),
                s.count
            );
        }
    }
    let r = raft.metrics();
    for (name, help, v) in [
        (
            "berth_raft_loop_iterations_total",
            "Iterations of the multi-raft loop.",
            r.loop_iterations,
        ),
        (
            "berth_raft_readies_total",
            "Raft Ready batches handled.",
            r.readies,
        ),
        (
            "berth_raft_persist_batches_total",
            "Batched, fsynced writes of Raft state.",
            r.persist_batches,
        ),
        (
            "berth_raft_entries_persisted_total",
            "Raft log entries persisted.",
            r.entries_persisted,
        ),
        (
            "berth_raft_proposals_total",
            "Commands proposed.",
            r.proposals,
        ),
        (
            "berth_raft_proposals_failed_total",
            "Commands that failed to commit.",
            r.proposals_failed,
        ),
        (
            "berth_raft_messages_sent_total",
            "Raft messages sent to peers.",
            r.messages_sent,
        ),
        (
            "berth_raft_snapshots_sent_total",
            "Snapshots sent to peers.",
            r.snapshots_sent,
        ),
        (
            "berth_raft_snapshots_applied_total",
            "Snapshots applied.",
            r.snapshots_applied,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    header(
        &mut out,
        "berth_raft_persist_seconds_total",
        "counter",
        "Time spent persisting Raft state (fsync included).",
    );
    let _ = writeln!(
        out,
        "berth_raft_persist_seconds_total {}",
        r.persist_micros_total as f64 / 1e6
    );
    let status = raft.status();
    header(
        &mut out,
        "berth_shard_is_leader",
        "gauge",
        "1 when this node leads the shard.",
    );
    for s in &status {
        let _ = writeln!(
            out,
            "berth_shard_is_leader{{shard=\"{}\"}} {}",
            s.id,
            u8::from(matches!(s.role, berth_raft::Role::Leader))
        );
    }
    for (name, help) in [
        (
            "berth_shard_term",
            "Raft term of the shard's replica on this node.",
        ),
        (
            "berth_shard_commit_index",
            "Commit index of the shard's replica.",
        ),
        (
            "berth_shard_applied_index",
            "Applied index of the shard's replica.",
        ),
        (
            "berth_shard_hibernating",
            "1 when the shard's group is hibernating.",
        ),
    ] {
        header(&mut out, name, "gauge", help);
        for s in &status {
            let v = match name {
                "berth_shard_term" => s.term,
                "berth_shard_commit_index" => s.commit,
                "berth_shard_applied_index" => s.applied,
                _ => u64::from(s.hibernating),
            };
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {v}", s.id);
        }
    }
    let sm = store.metrics();
    for (name, kind, help, v) in [
        (
            "berth_store_writes_total",
            "counter",
            "Write batches committed to the node store.",
            sm.writes as f64,
        ),
        (
            "berth_store_bytes_written_total",
            "counter",
            "Bytes written to the node store.",
            sm.bytes_written as f64,
        ),
        (
            "berth_store_syncs_total",
            "counter",
            "fsyncs of the node store.",
            sm.syncs as f64,
        ),
        (
            "berth_store_sync_seconds_total",
            "counter",
            "Time spent in fsync.",
            sm.sync_micros_total as f64 / 1e6,
        ),
        (
            "berth_store_disk_space_bytes",
            "gauge",
            "Disk space used by the node store.",
            sm.disk_space_bytes as f64,
        ),
    ] {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    out
}
