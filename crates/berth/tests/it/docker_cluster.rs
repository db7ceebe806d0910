//! Several hosts in Docker: real `berth server` processes in containers of
//! the project's own image, each with its own address on a private network,
//! grown by joining with tokens. Three nodes start and are loaded (files
//! through the CLI, records through Kafka); then, while clients run, a
//! fault loop kills a leader (`docker kill -s KILL`) and cuts one node off
//! the network (`docker network disconnect`). The clients, and what is
//! checked once the faults are healed:
//! - a register workload (CLI calls through every node; a call hung for
//!   40 s is killed, its outcome unknown): its history is linearizable;
//! - an idempotent Kafka producer with acks=all, bootstrapped with every
//!   node: every acknowledged record is read back at its acknowledged
//!   offset with its payload, offsets are unique and increasing per
//!   partition, and no payload is stored twice;
//! - a writer through a FUSE mount on the host naming every node (skipped
//!   with a line where FUSE is missing): every file whose write, fsync and
//!   close succeeded reads back byte-identical, through the mount and
//!   through the CLI (as do the files loaded before);
//! - every shard back at its replication factor with no joint
//!   configuration and no step in flight.
//!
//! `BERTH_CHAOS_CYCLES` (default 1: one kill -9 of a leader and one
//! partition, what CI runs) sets how many fault cycles run. From 2 cycles
//! on (`scripts/chaos --cycles N`, the long loop) nodes 4 and 5 join with a
//! token before the clients start and the test waits until replicas and
//! leaders are balanced; each cycle adds a `docker pause` longer than an
//! election and a partition of a minority (2 of the 5 nodes cut off at
//! once), and the last one decommissions the node leading the stream: the
//! rest settles on 4 nodes, Kafka Metadata stops naming it, the register
//! clients stop using it, and it is stopped (the producer and the mount
//! still list it and must fail over).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::container::{
    docker, docker_ok, ok, repo, run, skip, text, DockerJunk, DOCKER_TIMEOUT_S,
};
use crate::harness::{output_within, BIN};
use crate::linearizable::{check, Kind, Op};
use crate::mount::{fuse_available, Mount};

const NATIVE_PORT: u16 = 5660;
const KAFKA_PORT: u16 = 9092;
/// Longest one CLI call may take (a call during a fault waits for an election).
const CLI_TIMEOUT_S: u64 = 40;
/// Longest wait for the cluster to settle (replicas back at their factor).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for nodes 4 and 5 to take their share, and for a drain.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a fault lasts: longer than an election (1 s) and the peer
/// timeout (2 s).
const FAULT: Duration = Duration::from_secs(4);
/// Register clients running the workload.
const CLIENTS: u64 = 3;
/// Replicas of every volume the test makes.
const REPLICATION: usize = 3;
/// The stream and its topic, in a volume of its own.
const STREAM: &str = "/str/events";
const TOPIC: &str = "/str/events:t";
const PARTITIONS: i32 = 2;
/// Records acknowledged at loading, before the faults, and after them.
const ACKS_MIN: usize = 100;
/// Files the writer completes before the faults, and after them.
const FILES_MIN: usize = 2;
/// Files loaded through the CLI before anything else.
const LOAD_FILES: u64 = 4;
/// Longest wait for acknowledgements, files, Metadata or a read-back.
const CLIENT_WAIT: Duration = Duration::from_secs(90);
/// Longest a client thread may take to finish once told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// The whole run's bound, besides a base for setup and checks: every wait in the test has
/// its own bound, but a client call that never returns would hold it past them.
const RUN_BASE: Duration = Duration::from_secs(15 * 60);
/// What each fault cycle adds to [`RUN_BASE`].
const RUN_PER_CYCLE: Duration = Duration::from_secs(5 * 60);

/// Ends the test process, after saving every node's log and removing the test's
/// containers, network and image, when the run outlives its bound: a hang fails CI in
/// minutes, with the logs to find out why, instead of holding it for hours.
fn watchdog(id: &str, image: &str, tmp: &Path, cycles: usize) {
    let bound = RUN_BASE + RUN_PER_CYCLE * cycles as u32;
    let (id, image, tmp) = (id.to_string(), image.to_string(), tmp.to_path_buf());
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        // The mounts the test made (their processes end with the test's).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if Path::new(point).starts_with(&tmp) {
                let _ = Command::new("fusermount3")
                    .args(["-uz", point])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let dir = std::env::temp_dir().join(format!("berth-chaos-{id}"));
        let _ = std::fs::create_dir_all(&dir);
        let filter = format!("name=berth-it-{id}-");
        let names = docker(&["ps", "-a", "--format", "{{.Names}}", "--filter", &filter]);
        for name in text(&names.stdout).lines() {
            let out = docker(&["logs", "--timestamps", name]);
            let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
            let _ = std::fs::write(dir.join(format!("{name}.log")), log);
            let _ = docker(&["rm", "-f", name]);
        }
        let _ = docker(&["network", "rm", &format!("berth-it-{id}")]);
        let _ = docker(&["rmi", "-f", &image]);
        eprintln!(
            "docker cluster: still running after {} s: stopped (node logs in {})",
            bound.as_secs(),
            dir.display()
        );
        std::process::exit(101);
    });
}

struct Cluster {
    id: String,
    net: String,
    prefix: String,
    image: String,
    dir: PathBuf,
    /// Nodes started (1..=size).
    size: usize,
    /// Nodes decommissioned: no client uses them any more.
    retired: Mutex<BTreeSet<usize>>,
    /// Workload calls killed after [`CLI_TIMEOUT_S`].
    hung: AtomicUsize,
}

impl Cluster {
    fn name(&self, n: usize) -> String {
        format!("berth-it-{}-n{n}", self.id)
    }

    fn ip(&self, n: usize) -> String {
        format!("{}.{}", self.prefix, 10 + n)
    }

    /// Nodes not decommissioned.
    fn active(&self) -> Vec<usize> {
        let retired = self.retired.lock().unwrap();
        (1..=self.size).filter(|n| !retired.contains(n)).collect()
    }

    /// The active node after `n` (in a ring).
    fn after(&self, n: usize, step: usize) -> usize {
        let act = self.active();
        let at = act.iter().position(|&a| a == n).unwrap_or(0);
        act[(at + step) % act.len()]
    }

    /// Every node's native address, for BERTH_SERVERS.
    fn servers(&self) -> String {
        (1..=self.size)
            .map(|n| format!("{}:{NATIVE_PORT}", self.ip(n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `n` (the next one); with `token`, it joins node 1.
    fn start_node(&mut self, junk: &mut DockerJunk, n: usize, token: Option<&str>) {
        assert_eq!(n, self.size + 1, "nodes start in order");
        let name = self.name(n);
        let ip = self.ip(n);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &format!("n{n}"),
            "--network",
            &self.net,
            "--ip",
            &ip,
            "--label",
            "berth-it",
            "--entrypoint",
            "/usr/local/bin/berth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(t) = token {
            args.extend(["-e".into(), format!("BERTH_JOIN_TOKEN={t}")]);
        }
        args.push(self.image.clone());
        args.extend(
            [
                "server",
                "--data-dir",
                "/data",
                "--native-addr",
                &format!("0.0.0.0:{NATIVE_PORT}"),
                "--admin-addr",
                "0.0.0.0:5661",
                "--kafka-addr",
                &format!("0.0.0.0:{KAFKA_PORT}"),
                "--advertise",
                &ip,
                "--label",
                &format!("zone=z{n}"),
                "--node-down-timeout",
                "20s",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if token.is_some() {
            args.extend(["--join".into(), format!("{}:{NATIVE_PORT}", self.ip(1))]);
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&a);
        junk.containers.push(name.clone());
        self.size = n;
        self.wait_log(
            n,
            if token.is_some() {
                "joined cluster"
            } else {
                "is serving"
            },
        );
    }

    fn logs(&self, n: usize) -> String {
        let out = docker(&["logs", &self.name(n)]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    fn all_logs(&self, lines: usize) -> String {
        (1..=self.size)
            .map(|n| format!("--- node {n}\n{}\n", tail(&self.logs(n), lines)))
            .collect()
    }

    fn wait_log(&self, n: usize, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.logs(n).contains(line) {
            assert!(
                Instant::now() < deadline,
                "node {n} never printed {line:?}:\n{}",
                self.logs(n)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The CLI on the host against node `n`.
    fn cli(&self, n: usize, args: &[&str]) -> Output {
        run(&mut self.cli_cmd(n, args), CLI_TIMEOUT_S)
    }

    /// [`Cluster::cli`] for a client of the workload: a call that does not
    /// finish within [`CLI_TIMEOUT_S`] is killed and counted, and its
    /// outcome is unknown (None).
    fn cli_within(&self, n: usize, args: &[&str]) -> Option<Output> {
        let child = self
            .cli_cmd(n, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        let out = output_within(child, CLI_TIMEOUT_S).map(|r| r.expect("berth output"));
        if out.is_none() {
            self.hung.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    fn cli_cmd(&self, n: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("BERTH_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .env("BERTH_SERVERS", format!("{}:{NATIVE_PORT}", self.ip(n)))
            .env("BERTH_CA_FILE", self.ca())
            .env("BERTH_TICKET_FILE", self.dir.join("admin.ticket"))
            .env("HOME", &self.dir);
        cmd
    }

    fn cli_ok(&self, n: usize, args: &[&str]) -> String {
        ok(&format!("berth {args:?} via node {n}"), self.cli(n, args))
    }

    /// [`Cluster::cli_ok`] for a call the client does not repeat by
    /// itself: refused with EAGAIN while a shard has no leader (an
    /// election, or the placement driver moving a leader for balance), it
    /// is tried again; EEXIST after such a refusal means the refused try
    /// went through after all.
    fn cli_eventually(&self, n: usize, args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(CLI_TIMEOUT_S);
        let mut refused = false;
        loop {
            let out = self.cli(n, args);
            let err = text(&out.stderr);
            if out.status.success() || (refused && err.contains("EEXIST")) {
                return;
            }
            assert!(
                err.contains("EAGAIN") && Instant::now() < deadline,
                "berth {args:?} via node {n}: {}
{err}",
                out.status
            );
            refused = true;
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn cli_json(&self, n: usize, args: &[&str]) -> Option<Value> {
        let out = self.cli(n, args);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn ticket(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.ticket"))
            .expect("admin ticket")
            .trim()
            .to_string()
    }

    /// Polls `ready` on (`berth status`, `berth cluster status`) as node
    /// `via` answers them until it says yes; fails with both and the
    /// nodes' logs after `timeout`.
    fn wait_until(
        &self,
        what: &str,
        via: usize,
        timeout: Duration,
        ready: impl Fn(&Value, &Value) -> Result<(), String>,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.cli_json(via, &["status", "--json"]);
            let placement = self.cli_json(via, &["cluster", "status", "--json"]);
            let why = match (&st, &placement) {
                (Some(st), Some(p)) => match ready(st, p) {
                    Ok(()) => return st.clone(),
                    Err(why) => why,
                },
                _ => "no answer".to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "{what} (asking node {via}): {why}\n{st:#?}\n{placement:#?}\n{}",
                self.all_logs(40)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until, seen from node `via`, every node not decommissioned is
    /// up and alive and every shard has its voters on distinct nodes (the
    /// meta shard 5 from 5 nodes on, else 3), a leader, and no step in
    /// flight or joint configuration.
    fn settle(&self, via: usize) -> Value {
        let retired = self.retired.lock().unwrap().clone();
        self.wait_until(
            "the cluster did not settle",
            via,
            SETTLE_TIMEOUT,
            |st, p| settled(st, p, self.size, &retired),
        )
    }

    /// Cuts nodes off the network, together.
    fn disconnect(&self, nodes: &[usize]) {
        for &n in nodes {
            docker_ok(&["network", "disconnect", &self.net, &self.name(n)]);
        }
    }

    fn reconnect(&self, nodes: &[usize]) {
        for &n in nodes {
            docker_ok(&[
                "network",
                "connect",
                "--ip",
                &self.ip(n),
                &self.net,
                &self.name(n),
            ]);
        }
    }

    /// The id of the volume at `path`.
    fn volume_id(&self, path: &str) -> u64 {
        let v = self
            .cli_json(1, &["volume", "info", path, "--json"])
            .unwrap_or_else(|| panic!("volume info {path}"));
        v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Why the cluster is not settled, if it is not (see [`Cluster::settle`]).
fn settled(
    st: &Value,
    placement: &Value,
    size: usize,
    retired: &BTreeSet<usize>,
) -> Result<(), String> {
    let ns = st["nodes"].as_array().ok_or("no nodes")?;
    let shards = st["shards"].as_array().ok_or("no shards")?;
    if ns.len() != size {
        return Err(format!("{} nodes listed, {size} started", ns.len()));
    }
    for n in ns {
        let id = n["id"].as_u64().unwrap_or(0) as usize;
        let gone = retired.contains(&id);
        let fine = if gone {
            n["state"] == "decommissioned"
        } else {
            n["alive"] == true && n["state"] == "up"
        };
        if !fine {
            return Err(format!("node {n}"));
        }
    }
    let active = size - retired.len();
    for s in shards {
        let want = if s["volume_id"] == 0 && active >= 5 {
            5
        } else {
            REPLICATION
        };
        let mut r: Vec<u64> = s["replicas"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let len = r.len();
        r.sort_unstable();
        r.dedup();
        let leader = s["leader"].as_u64().unwrap_or(0);
        let on_retired = r.iter().any(|n| retired.contains(&(*n as usize)));
        if len != want || r.len() != want || leader == 0 || on_retired {
            return Err(format!("shard {s}"));
        }
    }
    for k in ["under_replicated", "joint", "in_flight"] {
        if !placement[k].as_array().is_some_and(Vec::is_empty) {
            return Err(format!("{k}: {}", placement[k]));
        }
    }
    Ok(())
}

/// Whether each up node's replica count and leader count (`berth node
/// list --json`) is within 10 % of the mean, rounded outwards (a mean of
/// 1.2 leaders allows 1 or 2).
fn balanced(nodes: &Value) -> Result<(), String> {
    let up: Vec<&Value> = nodes
        .as_array()
        .ok_or("no node list")?
        .iter()
        .filter(|n| n["state"] == "up")
        .collect();
    if up.len() < 2 {
        return Err(format!("{} node(s) up", up.len()));
    }
    for k in ["replicas", "leaders"] {
        let counts: Vec<u64> = up.iter().map(|n| n[k].as_u64().unwrap_or(0)).collect();
        let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
        let (lo, hi) = ((mean * 0.9).floor() as u64, (mean * 1.1).ceil() as u64);
        if counts.iter().any(|c| *c < lo || *c > hi) {
            return Err(format!("{k} {counts:?}: outside {lo}..={hi}"));
        }
    }
    Ok(())
}

/// The leader of the shard holding `volume_id`, as node `via` sees it.
fn leader_of(st: &Value, volume_id: u64) -> Option<usize> {
    st["shards"]
        .as_array()?
        .iter()
        .find(|s| s["volume_id"] == volume_id)
        .and_then(|s| s["leader"].as_u64())
        .filter(|l| *l != 0)
        .map(|l| l as usize)
}

/// The register workload: clients write unique values (a symbolic link made
/// beside the register, renamed over it: one atomic namespace change) and
/// read it (`stat`), each through a node of its own (never a decommissioned
/// one), until told to stop.
fn workload(
    c: &Arc<Cluster>,
    stop: &Arc<AtomicBool>,
    epoch: Instant,
) -> Vec<std::thread::JoinHandle<Vec<Op>>> {
    (0..CLIENTS)
        .map(|client| {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut ops = Vec::new();
                let mut k = 0u64;
                let now = || epoch.elapsed().as_nanos() as u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let act = c.active();
                    let node = act[(client + k) as usize % act.len()];
                    if k.is_multiple_of(2) {
                        let v = client * 1_000_000 + k;
                        let tmp = format!("/reg/t-{v}");
                        let made = c.cli_within(node, &["ln", "-s", &v.to_string(), &tmp]);
                        if !made.is_some_and(|o| o.status.success()) {
                            continue;
                        }
                        let call = now();
                        // Failed or killed: it may still take effect.
                        let out = c.cli_within(node, &["mv", &tmp, "/reg/r"]);
                        let ret = out.is_some_and(|o| o.status.success()).then(now);
                        ops.push(Op {
                            call,
                            ret,
                            kind: Kind::Write(v),
                        });
                    } else {
                        let call = now();
                        let Some(out) = c.cli_within(node, &["stat", "--json", "/reg/r"]) else {
                            continue; // a read that never answered tells nothing
                        };
                        let ret = now();
                        let err = text(&out.stderr);
                        let value = if out.status.success() {
                            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                            match v["symlink_target"].as_str().map(str::parse::<u64>) {
                                Some(Ok(x)) => Some(x),
                                _ => continue,
                            }
                        } else if err.contains("ENOENT") {
                            eprintln!(
                                "register read ENOENT via node {node} at {} ms ({:?} since the epoch): {}",
                                call / 1_000_000,
                                std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .unwrap_or_default(),
                                err.trim()
                            );
                            None
                        } else {
                            continue; // a failed read tells nothing
                        };
                        ops.push(Op {
                            call,
                            ret: Some(ret),
                            kind: Kind::Read(value),
                        });
                    }
                }
                ops
            })
        })
        .collect()
}

/// Waits (bounded) for a client thread told to stop.
fn join_within<T>(what: &str, h: std::thread::JoinHandle<T>, extra: impl Fn() -> String) -> T {
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{what} still running {STOP_TIMEOUT:?} after being told to stop\n{}",
            extra()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.join()
        .unwrap_or_else(|p| panic!("{what} panicked: {p:?}"))
}

/// Tells the client threads to stop when the test ends, also by a panic
/// (they hold the cluster; the containers go with `DockerJunk`).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

// ---- Kafka: an idempotent producer with acks=all, and the read-back.

/// A librdkafka configuration: TLS with the cluster CA, SASL PLAIN with
/// the admin ticket, bootstrapped with `nodes`' Kafka listeners (the
/// containers advertise their addresses, which the host reaches directly
/// on the bridge).
fn kafka_config(c: &Cluster, nodes: &[usize]) -> rdkafka::ClientConfig {
    let bootstrap: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}:{KAFKA_PORT}", c.ip(*n)))
        .collect();
    let mut k = rdkafka::ClientConfig::new();
    k.set("bootstrap.servers", bootstrap.join(","))
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", "admin")
        .set("sasl.password", c.ticket())
        .set("ssl.ca.location", c.ca().to_str().expect("UTF-8 path"));
    k
}

/// An idempotent producer with acks=all, made anew by the producer thread
/// after a fatal error.
fn producer(c: &Cluster, nodes: &[usize]) -> impl Fn() -> FutureProducer + Send + 'static {
    let mut k = kafka_config(c, nodes);
    k.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    move || k.create().expect("producer")
}

/// An acknowledged record.
#[derive(Debug, Clone)]
struct Ack {
    partition: i32,
    offset: i64,
    value: String,
}

/// What a producer thread saw.
#[derive(Default)]
struct Produced {
    acked: Vec<Ack>,
    /// Sends that failed (allowed: nothing was promised).
    failed: usize,
    /// The first few failures, and every fatal error, for the report.
    errors: Vec<String>,
}

/// Produces `{prefix}{i}` alternating partitions, in rounds of 20 in
/// flight, until `stop`; a producer with a fatal error is replaced.
fn produce_until(
    make: impl Fn() -> FutureProducer + Send + 'static,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Produced>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut p = make();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let mut round = Vec::new();
                for _ in 0..20 {
                    let value = format!("{prefix}{i:07}");
                    let partition = (i % PARTITIONS as usize) as i32;
                    let record = FutureRecord::to(TOPIC)
                        .partition(partition)
                        .key(&value)
                        .payload(&value);
                    match p.send_result(record) {
                        Ok(delivery) => round.push((partition, value, delivery)),
                        Err((e, _)) => seen.lock().unwrap().fail(format!("{value}: {e}")),
                    }
                    i += 1;
                }
                let mut acked = 0;
                for (partition, value, delivery) in round {
                    match delivery.await {
                        Ok(Ok(d)) => {
                            assert_eq!(d.partition, partition);
                            acked += 1;
                            seen.lock().unwrap().acked.push(Ack {
                                partition,
                                offset: d.offset,
                                value,
                            });
                        }
                        Ok(Err((e, _))) => seen.lock().unwrap().fail(format!("{value}: {e}")),
                        Err(_) => seen.lock().unwrap().fail(format!("{value}: canceled")),
                    }
                }
                if let Some((code, why)) = p.client().fatal_error() {
                    let e = format!("fatal producer error {code:?}: {why}; a new producer");
                    eprintln!("{e}");
                    seen.lock().unwrap().errors.push(e);
                    p = make();
                }
                // Leave the two cores to the nodes now and then; back off
                // when nothing went through.
                let pause = if acked == 0 { 500 } else { 20 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        });
    })
}

impl Produced {
    fn fail(&mut self, e: String) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }
}

/// Waits until `seen` holds `n` acknowledgements; `c`'s nodes' Metadata
/// goes with a failure.
fn wait_acked(c: &Cluster, seen: &Mutex<Produced>, n: usize, what: &str) {
    let deadline = Instant::now() + CLIENT_WAIT;
    loop {
        let s = seen.lock().unwrap();
        if s.acked.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records acknowledged {what} ({} failed: {:?})\n{}",
            s.acked.len(),
            s.failed,
            s.errors,
            c.active()
                .into_iter()
                .map(|n| format!("node {n}'s Metadata: {}\n", metadata(c, n)))
                .collect::<String>()
        );
        drop(s);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every record of [`TOPIC`], per partition in offset order, read from
/// the beginning up to the high watermarks taken first.
fn read_stream(c: &Cluster, nodes: &[usize]) -> HashMap<i32, Vec<(i64, String)>> {
    // (librdkafka wants a group id to assign partitions; nothing is
    // committed.)
    let reader: BaseConsumer = kafka_config(c, nodes)
        .set("group.id", "/str/events:reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let deadline = Instant::now() + CLIENT_WAIT;
    let mut tpl = TopicPartitionList::new();
    let mut end = HashMap::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("partition");
        let high = loop {
            match reader.fetch_watermarks(TOPIC, p, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(e) => assert!(Instant::now() < deadline, "watermarks of {p}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        end.insert(p, high);
    }
    reader.assign(&tpl).expect("assign");
    let mut stored: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    let done = |stored: &HashMap<i32, Vec<(i64, String)>>| {
        end.iter().all(|(p, high)| {
            *high == 0
                || stored
                    .get(p)
                    .and_then(|r| r.last())
                    .is_some_and(|(o, _)| *o >= high - 1)
        })
    };
    let mut error = None;
    while !done(&stored) {
        assert!(
            Instant::now() < deadline,
            "read back only {:?} of {end:?} (last error: {error:?})",
            stored
                .iter()
                .map(|(p, r)| (p, r.len(), r.last().map(|x| x.0)))
                .collect::<Vec<_>>()
        );
        match reader.poll(Duration::from_millis(200)) {
            None => {}
            // librdkafka retries by itself.
            Some(Err(e)) => error = Some(e),
            Some(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                stored
                    .entry(m.partition())
                    .or_default()
                    .push((m.offset(), value));
            }
        }
    }
    stored
}

/// Every acknowledged record at its offset with its payload; offsets
/// unique and increasing per partition; no payload twice.
fn check_stream(acked: &[Ack], stored: &HashMap<i32, Vec<(i64, String)>>) -> Result<(), String> {
    let mut values = HashSet::new();
    for (p, records) in stored {
        for w in records.windows(2) {
            if w[1].0 <= w[0].0 {
                return Err(format!("partition {p}: offset {} after {}", w[1].0, w[0].0));
            }
        }
        for (o, v) in records {
            if !values.insert(v.as_str()) {
                return Err(format!("{v} stored twice (again at {p}/{o})"));
            }
        }
    }
    for a in acked {
        let at = stored.get(&a.partition).and_then(|r| {
            r.binary_search_by_key(&a.offset, |(o, _)| *o)
                .ok()
                .map(|i| &r[i].1)
        });
        if at != Some(&a.value) {
            return Err(format!(
                "acknowledged {a:?} is not where it was acknowledged: {at:?}"
            ));
        }
    }
    Ok(())
}

/// Node `via`'s Kafka Metadata for [`TOPIC`], in a line.
fn metadata(c: &Cluster, via: usize) -> String {
    let consumer: BaseConsumer = match kafka_config(c, &[via]).create() {
        Ok(k) => k,
        Err(e) => return e.to_string(),
    };
    match consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(10)) {
        Err(e) => e.to_string(),
        Ok(md) => {
            let brokers: Vec<String> = md
                .brokers()
                .iter()
                .map(|b| format!("{}={}:{}", b.id(), b.host(), b.port()))
                .collect();
            let parts: Vec<String> = md
                .topics()
                .iter()
                .flat_map(|t| t.partitions())
                .map(|p| {
                    format!(
                        "{}: leader {} replicas {:?} isr {:?} error {:?}",
                        p.id(),
                        p.leader(),
                        p.replicas(),
                        p.isr(),
                        p.error()
                    )
                })
                .collect();
            let errors: Vec<String> = md
                .topics()
                .iter()
                .map(|t| format!("{} {:?}", t.name(), t.error()))
                .collect();
            format!("brokers {brokers:?}, topics {errors:?}, partitions {parts:?}")
        }
    }
}

/// The brokers node `via`'s Kafka Metadata names.
fn brokers(c: &Cluster, via: usize) -> Result<Vec<usize>, String> {
    let consumer: BaseConsumer = kafka_config(c, &[via])
        .create()
        .map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut ids: Vec<usize> = md.brokers().iter().map(|b| b.id() as usize).collect();
    ids.sort_unstable();
    Ok(ids)
}

// ---- Files: deterministic contents written through the mount.

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// File `seed`'s contents: a third up to 64 KiB, the rest 100 KiB – 2 MiB.
fn content(seed: u64) -> Vec<u8> {
    let mut s = seed;
    let r = splitmix(&mut s);
    let len = if seed.is_multiple_of(3) {
        1 + r % (64 << 10)
    } else {
        (100 << 10) + r % ((2 << 20) - (100 << 10) + 1)
    } as usize;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Seeds of the files loaded through the CLI (the writer's count from 0).
const LOAD_SEED: u64 = 1_000_000;

/// Create, write, fsync, close: Ok only when every step succeeded (the
/// close too: a FUSE file system reports a failed flush there).
fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just released by `f` and is closed once, here.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the writer did.
#[derive(Default)]
struct Written {
    /// Seeds of the files whose write, fsync and close succeeded.
    done: Vec<u64>,
    failed: usize,
    errors: Vec<String>,
}

/// The writer's pace: a file of N bytes is followed by a pause of N /
/// this (at least 200 ms), so the volume stays small enough to be copied
/// to a new replica quickly on a two-core machine.
const WRITE_BYTES_PER_S: usize = 256 << 10;

/// Writes files `dir/f{seed}` until `stop`.
fn write_until(
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Written>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seed = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let data = content(seed);
            let r = write_file(&dir.join(format!("f{seed:05}")), &data);
            let mut s = seen.lock().unwrap();
            let pause = match r {
                Ok(()) => {
                    s.done.push(seed);
                    (data.len() * 1000 / WRITE_BYTES_PER_S).max(200) as u64
                }
                Err(e) => {
                    s.failed += 1;
                    if s.errors.len() < 5 {
                        s.errors.push(format!("f{seed:05}: {e}"));
                    }
                    500
                }
            };
            drop(s);
            seed += 1;
            let until = Instant::now() + Duration::from_millis(pause);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

fn wait_files(seen: &Mutex<Written>, n: usize, what: &str) {
    let deadline = Instant::now() + CLIENT_WAIT;
    loop {
        let s = seen.lock().unwrap();
        if s.done.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} files written {what} ({} failed: {:?})",
            s.done.len(),
            s.failed,
            s.errors
        );
        drop(s);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads cluster file `path` with `berth cp` through node `via`.
fn fetch_file(c: &Cluster, via: usize, path: &str) -> Vec<u8> {
    let local = c.dir.join("readback");
    let _ = std::fs::remove_file(&local);
    c.cli_ok(
        via,
        &[
            "cp",
            &format!("berth:{path}"),
            local.to_str().expect("UTF-8"),
        ],
    );
    std::fs::read(&local).expect("read back copy")
}

fn docker_ready(name: &str) -> bool {
    if !Path::new("/var/run/docker.sock").exists() && std::env::var_os("DOCKER_HOST").is_none() {
        skip(name, "no Docker daemon socket");
        return false;
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    if !matches!(info, Ok(o) if o.status.success()) {
        skip(name, "`docker info` fails (no Docker daemon reachable)");
        return false;
    }
    true
}

#[test]
fn docker_cluster_survives_faults() {
    let name = "docker_cluster_survives_faults";
    if !docker_ready(name) {
        return;
    }
    let started = Instant::now();
    let cycles: usize = std::env::var("BERTH_CHAOS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let long = cycles > 1;
    let tmp = tempfile::Builder::new()
        .prefix("berth-it-cluster-")
        .tempdir()
        .unwrap();
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 100_000
    );
    let mut junk = DockerJunk::default();
    let image = format!("berth-node:it-{id}");
    junk.images.push(image.clone());
    ok(
        "docker/build-image.sh",
        run(
            Command::new(repo().join("docker/build-image.sh"))
                .args(["--bin", BIN, "--tag", &image]),
            DOCKER_TIMEOUT_S,
        ),
    );
    // A private network with a subnet of its own (fixed addresses: node
    // certificates name them). Docker refuses a subnet in use: try others.
    let net = format!("berth-it-{id}");
    let mut prefix = None;
    let mut why = String::new();
    for attempt in 0..32u32 {
        let p = format!(
            "10.{}.{}",
            200 + (std::process::id() + attempt) % 50,
            (std::process::id() / 50 + attempt * 7) % 250
        );
        // A network left by an attempt that failed half-way goes first.
        let _ = Command::new("docker")
            .args(["network", "rm", &net])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let out = docker(&[
            "network",
            "create",
            "--label",
            "berth-it",
            "--subnet",
            &format!("{p}.0/24"),
            &net,
        ]);
        if out.status.success() {
            prefix = Some(p);
            break;
        }
        why = text(&out.stderr);
    }
    let prefix = prefix.unwrap_or_else(|| panic!("no free subnet for the test network: {why}"));
    junk.networks.push(net.clone());
    let mut c = Cluster {
        id,
        net,
        prefix,
        image,
        dir: tmp.path().to_path_buf(),
        size: 0,
        retired: Mutex::new(BTreeSet::new()),
        hung: AtomicUsize::new(0),
    };
    watchdog(&c.id, &c.image, &c.dir, cycles);
    // What was done, for the report.
    let mut joined = None;
    let mut faults: Vec<String> = Vec::new();

    // Node 1, then nodes 2 and 3 joining with a token.
    c.start_node(&mut junk, 1, None);
    for f in ["tls/ca.crt", "admin.ticket"] {
        let to = c.dir.join(Path::new(f).file_name().unwrap());
        docker_ok(&[
            "cp",
            &format!("{}:/data/{f}", c.name(1)),
            to.to_str().unwrap(),
        ]);
    }
    let rf = REPLICATION.to_string();
    for v in ["/reg", "/str", "/fs"] {
        c.cli_eventually(1, &["volume", "create", v, "--replication", &rf]);
    }
    let token = c.cli_ok(1, &["node", "token", "create", "--uses", "2"]);
    let token = token.trim().to_string();
    c.start_node(&mut junk, 2, Some(&token));
    c.start_node(&mut junk, 3, Some(&token));
    c.settle(1);
    let (reg, stream_volume) = (c.volume_id("/reg"), c.volume_id("/str"));

    // Loading: files through the CLI, a stream with records.
    c.cli_eventually(1, &["mkdir", "/fs/load", "/fs/w"]);
    for seed in LOAD_SEED..LOAD_SEED + LOAD_FILES {
        let local = c.dir.join("load");
        std::fs::write(&local, content(seed)).unwrap();
        c.cli_eventually(
            1,
            &[
                "cp",
                local.to_str().unwrap(),
                &format!("berth:/fs/load/f{seed}"),
            ],
        );
    }
    c.cli_eventually(
        1,
        &[
            "stream",
            "create",
            STREAM,
            "--partitions",
            &PARTITIONS.to_string(),
        ],
    );
    c.cli_eventually(1, &["stream", "topic", "create", STREAM, "t"]);
    let loaded = Arc::new(Mutex::new(Produced::default()));
    {
        let stop = Arc::new(AtomicBool::new(false));
        let make = producer(&c, &c.active());
        let h = produce_until(make, "load-", stop.clone(), loaded.clone());
        wait_acked(&c, &loaded, ACKS_MIN, "at loading");
        stop.store(true, Ordering::Relaxed);
        join_within("the loading producer", h, String::new);
    }

    // (Long loop) nodes 4 and 5 join with a token; replicas and leaders
    // spread until balanced.
    if long {
        let token = c.cli_ok(1, &["node", "token", "create", "--uses", "2"]);
        let token = token.trim().to_string();
        c.start_node(&mut junk, 4, Some(&token));
        c.start_node(&mut junk, 5, Some(&token));
        let t = Instant::now();
        let deadline = t + BALANCE_TIMEOUT;
        loop {
            c.settle(1);
            let list = c.cli_json(1, &["node", "list", "--json"]);
            match list.as_ref().map(balanced) {
                Some(Ok(())) => {
                    joined = Some(format!(
                        "nodes 4 and 5 joined, balanced after {:.0?}: {}",
                        t.elapsed(),
                        list.unwrap()
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|n| format!("n{} {}r/{}l", n["id"], n["replicas"], n["leaders"]))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                    break;
                }
                why => assert!(
                    Instant::now() < deadline,
                    "replicas and leaders not balanced after {BALANCE_TIMEOUT:?}: {why:?}\n{list:#?}"
                ),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());

    // The clients: the register, the producer, the writer through a mount.
    let epoch = Instant::now();
    let clients = workload(&c, &stop, epoch);
    let produced = Arc::new(Mutex::new(Produced::default()));
    let producing = produce_until(
        producer(&c, &c.active()),
        "run-",
        stop.clone(),
        produced.clone(),
    );
    let written = Arc::new(Mutex::new(Written::default()));
    let mut writer = None;
    let mut mount = if fuse_available() {
        let mp = c.dir.join("mnt");
        std::fs::create_dir_all(&mp).unwrap();
        let m = Mount::start_with(
            &mp,
            &[
                ("BERTH_SERVERS", c.servers().as_ref()),
                ("BERTH_CA_FILE", c.ca().as_os_str()),
                ("BERTH_TICKET_FILE", c.dir.join("admin.ticket").as_os_str()),
                ("HOME", c.dir.as_os_str()),
            ],
            c.dir.join("mount.log"),
        );
        writer = Some(write_until(mp.join("fs/w"), stop.clone(), written.clone()));
        Some((m, mp))
    } else {
        skip(name, "files through a FUSE mount (no FUSE here)");
        None
    };
    wait_acked(&c, &produced, ACKS_MIN, "before the faults");
    if mount.is_some() {
        wait_files(&written, FILES_MIN, "before the faults");
    }

    for cycle in 0..cycles {
        let last = cycle + 1 == cycles;
        std::thread::sleep(Duration::from_secs(2));
        let act = c.active();
        // 1. kill -9 of the register's shard leader, restarted afterwards.
        let st = c.settle(act[cycle % act.len()]);
        let leader = leader_of(&st, reg).expect("register shard leader");
        docker_ok(&["kill", "-s", "KILL", &c.name(leader)]);
        std::thread::sleep(FAULT);
        docker_ok(&["start", &c.name(leader)]);
        faults.push(format!("cycle {cycle}: kill -9 of leader node {leader}"));
        c.settle(c.after(leader, 1));
        // 2. One node cut off the network, then back.
        let cut = c.after(leader, 1 + cycle);
        c.disconnect(&[cut]);
        std::thread::sleep(FAULT);
        c.reconnect(&[cut]);
        faults.push(format!("cycle {cycle}: node {cut} partitioned"));
        c.settle(c.after(cut, 1));
        if !long {
            continue;
        }
        // 3. (long loop) a stall longer than an election.
        let stalled = c.after(cut, 1);
        docker_ok(&["pause", &c.name(stalled)]);
        std::thread::sleep(FAULT);
        docker_ok(&["unpause", &c.name(stalled)]);
        faults.push(format!("cycle {cycle}: node {stalled} paused"));
        let st = c.settle(c.after(stalled, 1));
        // 4. A minority cut off at once: the stream's leader and another.
        let k = leader_of(&st, stream_volume).expect("stream shard leader");
        let minority = [k, c.after(k, 1 + cycle % 2)];
        c.disconnect(&minority);
        std::thread::sleep(FAULT);
        c.reconnect(&minority);
        faults.push(format!(
            "cycle {cycle}: nodes {minority:?} partitioned together"
        ));
        let st = c.settle(c.after(k, 3));
        // 5. (last cycle) the stream's leader decommissioned, then stopped.
        if last {
            let gone = leader_of(&st, stream_volume).expect("stream shard leader");
            let via = c.after(gone, 1);
            c.retired.lock().unwrap().insert(gone);
            c.cli_ok(
                via,
                &["node", "decommission", &gone.to_string(), "--no-wait"],
            );
            let t = Instant::now();
            let deadline = t + BALANCE_TIMEOUT;
            loop {
                let list = c.cli_json(via, &["node", "list", "--json"]);
                let state = list.as_ref().and_then(|l| {
                    l.as_array()?
                        .iter()
                        .find(|n| n["id"] == gone)
                        .map(|n| n["state"].clone())
                });
                if state.as_ref().is_some_and(|s| s == "decommissioned") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {gone} not decommissioned after {BALANCE_TIMEOUT:?}: {list:#?}\n{}",
                    c.all_logs(40)
                );
                std::thread::sleep(Duration::from_secs(1));
            }
            c.settle(via);
            // Kafka Metadata names it no more, wherever asked.
            let deadline = Instant::now() + CLIENT_WAIT;
            for n in c.active() {
                loop {
                    let b = brokers(&c, n);
                    if b.as_ref().is_ok_and(|b| *b == c.active()) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "node {n}'s Kafka Metadata: brokers {b:?}, {:?} expected",
                        c.active()
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            docker_ok(&["stop", "-t", "5", &c.name(gone)]);
            faults.push(format!(
                "cycle {cycle}: node {gone} decommissioned in {:.0?} (settled on {} nodes, out of Kafka Metadata) and stopped",
                t.elapsed(),
                c.active().len()
            ));
        }
    }

    // Work after the faults, then the clients stop.
    let acked_after_faults = produced.lock().unwrap().acked.len();
    wait_acked(
        &c,
        &produced,
        acked_after_faults + ACKS_MIN,
        "after the faults",
    );
    let files_after_faults = written.lock().unwrap().done.len();
    if mount.is_some() {
        wait_files(&written, files_after_faults + FILES_MIN, "after the faults");
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut history: Vec<Op> = Vec::new();
    for h in clients {
        history.extend(join_within("a register client", h, String::new));
    }
    join_within("the producer", producing, String::new);
    let mut files_checked = None;
    if let (Some(h), Some((m, _))) = (writer, &mount) {
        join_within("the writer through the mount", h, || m.log());
    }

    // 1. The register history is linearizable.
    let writes = history
        .iter()
        .filter(|o| matches!(o.kind, Kind::Write(_)))
        .count();
    let reads = history.len() - writes;
    assert!(
        writes >= 3 && reads >= 3,
        "too little work done: {history:?}"
    );
    check(None, &history).unwrap_or_else(|e| {
        // Every node's whole log, for finding out why.
        let dir = std::env::temp_dir().join(format!("berth-chaos-{}", c.id));
        let _ = std::fs::create_dir_all(&dir);
        for n in 1..=c.size {
            let _ = std::fs::write(dir.join(format!("node-{n}.log")), c.logs(n));
        }
        panic!("not linearizable (node logs in {}): {e}", dir.display())
    });

    // 2. After healing: every shard at its replication factor, nothing
    // joint, seen from every node.
    let act = c.active();
    for &n in &act {
        c.settle(n);
    }

    // 3. Every acknowledged record where it was acknowledged, once.
    let stored = read_stream(&c, &act);
    let (load, run_) = (loaded.lock().unwrap(), produced.lock().unwrap());
    let acked: Vec<Ack> = load.acked.iter().chain(&run_.acked).cloned().collect();
    check_stream(&acked, &stored).unwrap_or_else(|e| panic!("the stream: {e}"));
    let records: usize = stored.values().map(Vec::len).sum();
    let stream_line = format!(
        "{} records acknowledged ({} at loading, {} failed sends, {} producer errors) all read back at their offsets among {records} stored, no duplicate",
        acked.len(),
        load.acked.len(),
        load.failed + run_.failed,
        load.errors.len() + run_.errors.len(),
    );

    // 4. Every completed file byte-identical: through the CLI, and through
    // the mount.
    let via = act[0];
    for seed in LOAD_SEED..LOAD_SEED + LOAD_FILES {
        let got = fetch_file(&c, via, &format!("/fs/load/f{seed}"));
        assert!(got == content(seed), "loaded file f{seed} differs");
    }
    if let Some((m, mp)) = mount.as_mut() {
        let w = written.lock().unwrap();
        let done = w.done.clone();
        let mp = mp.clone();
        crate::mount::bounded("reading the files back through the mount", m, move || {
            for seed in done {
                let got = std::fs::read(mp.join(format!("fs/w/f{seed:05}")))
                    .unwrap_or_else(|e| panic!("f{seed:05} through the mount: {e}"));
                assert!(got == content(seed), "f{seed:05} through the mount differs");
            }
        });
        for &seed in &w.done {
            let got = fetch_file(&c, via, &format!("/fs/w/f{seed:05}"));
            assert!(got == content(seed), "f{seed:05} through the CLI differs");
        }
        files_checked = Some(format!(
            "{} files written through the mount ({} writes failed) read back byte-identical",
            w.done.len(),
            w.failed
        ));
    }

    eprintln!(
        "docker cluster: {} node(s){}, {} fault(s) in {cycles} cycle(s) ({}); checked: {writes} writes and {reads} reads linearizable ({} calls killed after {CLI_TIMEOUT_S} s); {stream_line}; {}; {LOAD_FILES} loaded files byte-identical; every shard back at its replication factor, nothing joint; {:.0?} in all",
        c.size,
        joined.map(|j| format!(" ({j})")).unwrap_or_default(),
        faults.len(),
        faults.join("; "),
        c.hung.load(Ordering::Relaxed),
        files_checked.unwrap_or_else(|| "files through a mount skipped (no FUSE)".into()),
        started.elapsed()
    );
}
