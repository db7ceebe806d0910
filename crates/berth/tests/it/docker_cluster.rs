//! Several hosts in Docker: real `berth server` processes in containers of
//! the project's own image, each with its own address on a private network,
//! grown by joining with tokens; a register workload runs while a fault
//! loop kills a leader (`docker kill -s KILL`), stalls a node longer than an
//! election (`docker pause`) and cuts one off the network (`docker network
//! disconnect`); the history must be linearizable, and after healing every
//! shard is back at its replication factor with no joint configuration.
//!
//! `BERTH_CHAOS_CYCLES` (default 1: one kill -9 of a leader and one
//! partition, what CI runs) sets how many fault cycles run;
//! `scripts/chaos --cycles N` runs the long loop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::container::{
    docker, docker_ok, ok, repo, run, skip, text, DockerJunk, DOCKER_TIMEOUT_S,
};
use crate::harness::BIN;
use crate::linearizable::{check, Kind, Op};

const NATIVE_PORT: u16 = 5660;
/// Longest one CLI call may take (a call during a fault waits for an election).
const CLI_TIMEOUT_S: u64 = 40;
/// Longest wait for the cluster to settle (replicas back at their factor).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fault lasts: longer than an election (1 s) and the peer
/// timeout (2 s).
const FAULT: Duration = Duration::from_secs(4);
/// Register clients running the workload.
const CLIENTS: u64 = 3;

struct Cluster {
    id: String,
    net: String,
    prefix: String,
    image: String,
    dir: PathBuf,
    size: usize,
    junk: DockerJunk,
}

impl Cluster {
    fn name(&self, n: usize) -> String {
        format!("berth-it-{}-n{n}", self.id)
    }

    fn ip(&self, n: usize) -> String {
        format!("{}.{}", self.prefix, 10 + n)
    }

    /// Starts node `n`; with `token`, it joins node 1.
    fn start_node(&mut self, n: usize, token: Option<&str>) {
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
                "0.0.0.0:9092",
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
        self.junk.containers.push(name.clone());
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
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("BERTH_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .env("BERTH_SERVERS", format!("{}:{NATIVE_PORT}", self.ip(n)))
            .env("BERTH_CA_FILE", self.dir.join("ca.crt"))
            .env("BERTH_TICKET_FILE", self.dir.join("admin.ticket"))
            .env("HOME", &self.dir);
        run(&mut cmd, CLI_TIMEOUT_S)
    }

    fn cli_ok(&self, n: usize, args: &[&str]) -> String {
        ok(&format!("berth {args:?} via node {n}"), self.cli(n, args))
    }

    fn status(&self, n: usize) -> Option<Value> {
        let out = self.cli(n, &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Waits until, seen from node `via`, every node is up and alive and
    /// every shard has `replicas` voters on distinct nodes, a leader and no
    /// step in flight or joint configuration.
    fn settle(&self, via: usize, replicas: usize) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let st = self.status(via);
            let placement = self.cli(via, &["cluster", "status", "--json"]);
            let placement: Option<Value> = placement
                .status
                .success()
                .then(|| serde_json::from_slice(&placement.stdout).ok())
                .flatten();
            if let (Some(st), Some(p)) = (&st, &placement) {
                if settled(st, p, self.size, replicas) {
                    return st.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle: {st:#?}\n{placement:#?}\n{}",
                (1..=self.size)
                    .map(|n| format!("--- node {n}\n{}", tail(&self.logs(n), 40)))
                    .collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn settled(st: &Value, placement: &Value, nodes: usize, replicas: usize) -> bool {
    let Some(ns) = st["nodes"].as_array() else {
        return false;
    };
    let Some(shards) = st["shards"].as_array() else {
        return false;
    };
    let nodes_ok = ns.len() == nodes && ns.iter().all(|n| n["alive"] == true && n["state"] == "up");
    let shards_ok = shards.iter().all(|s| {
        let mut r: Vec<u64> = s["replicas"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let len = r.len();
        r.sort_unstable();
        r.dedup();
        len == replicas && r.len() == replicas && s["leader"].as_u64().unwrap_or(0) != 0
    });
    let empty = |k: &str| placement[k].as_array().is_some_and(Vec::is_empty);
    nodes_ok && shards_ok && empty("under_replicated") && empty("joint") && empty("in_flight")
}

/// The leader of the shard holding `volume_id`, as node `via` sees it.
fn leader_of(st: &Value, volume_id: u64) -> Option<usize> {
    st["shards"]
        .as_array()?
        .iter()
        .find(|s| s["volume_id"] == volume_id)
        .and_then(|s| s["leader"].as_u64())
        .map(|l| l as usize)
}

/// The register workload: clients write unique values (a symbolic link made
/// beside the register, renamed over it: one atomic namespace change) and
/// read it (`stat`), each through a node of its own, until told to stop.
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
                    let node = 1 + ((client + k) as usize % c.size);
                    if k.is_multiple_of(2) {
                        let v = client * 1_000_000 + k;
                        let tmp = format!("/reg/t-{v}");
                        if !c
                            .cli(node, &["ln", "-s", &v.to_string(), &tmp])
                            .status
                            .success()
                        {
                            continue;
                        }
                        let call = now();
                        let out = c.cli(node, &["mv", &tmp, "/reg/r"]);
                        let ret = out.status.success().then(now);
                        ops.push(Op {
                            call,
                            ret,
                            kind: Kind::Write(v),
                        });
                    } else {
                        let call = now();
                        let out = c.cli(node, &["stat", "--json", "/reg/r"]);
                        let ret = now();
                        let err = text(&out.stderr);
                        let value = if out.status.success() {
                            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                            match v["symlink_target"].as_str().map(str::parse::<u64>) {
                                Some(Ok(x)) => Some(x),
                                _ => continue,
                            }
                        } else if err.contains("ENOENT") {
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
    let cycles: usize = std::env::var("BERTH_CHAOS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
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
        size: 3,
        junk,
    };

    // Node 1, then nodes 2 and 3 joining with a token.
    c.start_node(1, None);
    for f in ["tls/ca.crt", "admin.ticket"] {
        let to = c.dir.join(Path::new(f).file_name().unwrap());
        docker_ok(&[
            "cp",
            &format!("{}:/data/{f}", c.name(1)),
            to.to_str().unwrap(),
        ]);
    }
    c.cli_ok(1, &["volume", "create", "/reg", "--replication", "3"]);
    let token = c.cli_ok(1, &["node", "token", "create", "--uses", "2"]);
    let token = token.trim().to_string();
    c.start_node(2, Some(&token));
    c.start_node(3, Some(&token));
    let st = c.settle(1, 3);
    let reg = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["volume_id"].as_u64().unwrap())
        .max()
        .unwrap();

    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let clients = workload(&c, &stop, epoch);
    let checked: Mutex<Vec<String>> = Mutex::new(Vec::new());
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_secs(2));
        // 1. kill -9 of the register's shard leader, restarted afterwards.
        let st = c.settle(1 + cycle % 3, 3);
        let leader = leader_of(&st, reg).expect("register shard leader");
        docker_ok(&["kill", "-s", "KILL", &c.name(leader)]);
        std::thread::sleep(FAULT);
        docker_ok(&["start", &c.name(leader)]);
        checked
            .lock()
            .unwrap()
            .push(format!("cycle {cycle}: kill -9 of leader node {leader}"));
        let other = 1 + leader % 3;
        c.settle(other, 3);
        // 2. One node cut off the network, then back.
        let cut = 1 + (leader + cycle) % 3;
        docker_ok(&["network", "disconnect", &c.net, &c.name(cut)]);
        std::thread::sleep(FAULT);
        docker_ok(&[
            "network",
            "connect",
            "--ip",
            &c.ip(cut),
            &c.net,
            &c.name(cut),
        ]);
        checked
            .lock()
            .unwrap()
            .push(format!("cycle {cycle}: node {cut} partitioned"));
        c.settle(1 + cut % 3, 3);
        if cycles > 1 {
            // 3. (long loop) a stall longer than an election.
            let stalled = 1 + (cut + 1) % 3;
            docker_ok(&["pause", &c.name(stalled)]);
            std::thread::sleep(FAULT);
            docker_ok(&["unpause", &c.name(stalled)]);
            checked
                .lock()
                .unwrap()
                .push(format!("cycle {cycle}: node {stalled} paused"));
            c.settle(1 + stalled % 3, 3);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut history: Vec<Op> = Vec::new();
    for h in clients {
        history.extend(h.join().expect("a client thread panicked"));
    }
    let writes = history
        .iter()
        .filter(|o| matches!(o.kind, Kind::Write(_)))
        .count();
    let reads = history.len() - writes;
    assert!(
        writes >= 3 && reads >= 3,
        "too little work done: {history:?}"
    );
    check(None, &history).unwrap_or_else(|e| panic!("not linearizable: {e}"));

    // After healing: every shard at its replication factor, nothing joint.
    for n in 1..=3 {
        c.settle(n, 3);
    }
    let done = checked.lock().unwrap().clone();
    eprintln!(
        "docker cluster: {} fault(s) ({}), {writes} writes and {reads} reads linearizable, every shard back at 3 replicas",
        done.len(),
        done.join("; ")
    );
}
