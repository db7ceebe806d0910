//! `berth-bench-tables`: the load generator of `scripts/bench-tables`.
//!
//! One binary drives either system with the same requests: Berth through
//! the official MongoDB driver (`--mongo URI`), PostgreSQL through
//! `tokio-postgres` with a `(id text primary key, doc jsonb)` table per
//! collection (`--postgres CONNSTR`). Each subcommand measures one thing and
//! prints one JSON object on stdout; the script starts and stops the
//! systems, runs the subcommands against each in turn and makes the table.
//!
//! - `load`: the YCSB table, `--docs` records of 1 KiB (10 fields of 100
//!   bytes, `_id` `user<10 digits>`), `insert_many` of `--batch` per call;
//! - `run --workload a|b|c|e|f`: YCSB's core workloads on it, zipfian keys
//!   (theta 0.99, scrambled), `--clients` concurrent tasks, `--ops`
//!   operations or `--max-seconds`, whichever comes first;
//! - `big-load`: `--docs` smaller documents (`user`, `ts`, `kind`, payload)
//!   by `insert_many` of `--batch`;
//! - `big-queries`: `countDocuments({})` and `({kind: 3})` on it, then
//!   `find({user}).sort({ts: -1}).limit(10)` without an index, the index
//!   build, and the same query with it;
//! - `changes`: change-stream latency, one writer stamping its send time in
//!   each document and one watcher on the collection.
//!
//! It never decides anything for the systems: no retries beyond the
//! drivers' own, and every answer is checked (a read must find its record,
//! an update must match one) so a fast wrong answer does not count.

mod db;
mod gen;
mod stats;
mod zipf;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use mongodb::bson::{doc, Document};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use db::{Conn, Session, Target, BIG, EVENTS, USERTABLE};
use gen::Fields;
use stats::Latencies;
use zipf::Zipf;

#[derive(Parser)]
#[command(about = "YCSB-style table benchmark: Berth (MongoDB driver) or PostgreSQL")]
struct Cli {
    /// Berth's MongoDB listener, as a driver connection string.
    #[arg(
        long,
        conflicts_with = "postgres",
        required_unless_present = "postgres"
    )]
    mongo: Option<String>,
    /// PostgreSQL, as a tokio-postgres connection string
    /// (`host=127.0.0.1 port=5432 user=bench dbname=bench`).
    #[arg(long)]
    postgres: Option<String>,
    /// Seed of every random choice (keys, values, operation mix).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Count the commands the MongoDB driver sends (reported as
    /// `commands`; costs a little per command).
    #[arg(long)]
    count_commands: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Makes the YCSB table afresh with DOCS records.
    Load {
        #[arg(long, default_value_t = 100_000)]
        docs: u64,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        batch: u64,
    },
    /// One YCSB workload on the loaded table.
    Run {
        #[arg(long, value_enum)]
        workload: Workload,
        /// Records in the table (as loaded).
        #[arg(long, default_value_t = 100_000)]
        docs: u64,
        /// Operations, all clients together.
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Stop after this long even if OPS are not done.
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
        /// Largest scan length of workload E (lengths are uniform in
        /// 1..=this).
        #[arg(long, default_value_t = 100)]
        scan_max: i64,
    },
    /// Makes the big table afresh with DOCS documents.
    BigLoad {
        #[arg(long, default_value_t = 1_000_000)]
        docs: u64,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        batch: u64,
    },
    /// Counts and the user/ts query on the big table, without then with
    /// the index (which it builds).
    BigQueries {
        /// Documents in the big table (as loaded), to check the answers.
        #[arg(long, default_value_t = 1_000_000)]
        docs: u64,
        /// Times each count is run.
        #[arg(long, default_value_t = 3)]
        counts: u32,
        /// Queries without the index (each a full scan), one at a time.
        #[arg(long, default_value_t = 5)]
        unindexed: u32,
        /// Queries with the index, one at a time.
        #[arg(long, default_value_t = 1000)]
        indexed: u32,
        /// Stop each query series after this long.
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
    },
    /// Change-stream (PostgreSQL: LISTEN/NOTIFY) latency of EVENTS inserts.
    Changes {
        #[arg(long, default_value_t = 2000)]
        events: u64,
        /// Pause between the writer's inserts (0: back to back).
        #[arg(long, default_value_t = 2)]
        interval_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    A,
    B,
    C,
    E,
    F,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::E => "e",
            Workload::F => "f",
        }
    }

    /// YCSB's proportions, with E as scans only and F as half reads, half
    /// read-modify-writes (YCSB's core workload F).
    fn pick<R: Rng>(self, rng: &mut R) -> Op {
        let x: f64 = rng.gen();
        match self {
            Workload::A if x < 0.5 => Op::Read,
            Workload::A => Op::Update,
            Workload::B if x < 0.95 => Op::Read,
            Workload::B => Op::Update,
            Workload::C => Op::Read,
            Workload::E => Op::Scan,
            Workload::F if x < 0.5 => Op::Read,
            Workload::F => Op::ReadModifyWrite,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Read,
    Update,
    Scan,
    ReadModifyWrite,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Scan => "scan",
            Op::ReadModifyWrite => "read_modify_write",
        }
    }
}

/// Nanoseconds since the first call: the clock the change-stream writer
/// stamps documents with and the watcher reads them against (one process).
fn now_ns() -> i64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as i64
}

#[tokio::main]
async fn main() -> Result<()> {
    // Starts the clock of `now_ns`.
    let _ = now_ns();
    let cli = Cli::parse();
    let target = match (&cli.mongo, &cli.postgres) {
        (Some(uri), None) => Target::Mongo(uri.clone()),
        (None, Some(s)) => Target::Postgres(s.clone()),
        _ => bail!("give exactly one of --mongo and --postgres"),
    };
    let conn = target.connect(cli.count_commands).await?;
    let cpu_before = stats::process_cpu_s();
    let mut out = match cli.cmd {
        Cmd::Load {
            docs,
            clients,
            batch,
        } => load(&conn, USERTABLE, docs, clients, batch, cli.seed, false).await?,
        Cmd::Run {
            workload,
            docs,
            ops,
            clients,
            max_seconds,
            scan_max,
        } => {
            run(
                &conn,
                RunArgs {
                    workload,
                    docs,
                    ops,
                    clients,
                    max: Duration::from_secs(max_seconds),
                    scan_max,
                    seed: cli.seed,
                },
            )
            .await?
        }
        Cmd::BigLoad {
            docs,
            clients,
            batch,
        } => load(&conn, BIG, docs, clients, batch, cli.seed, true).await?,
        Cmd::BigQueries {
            docs,
            counts,
            unindexed,
            indexed,
            max_seconds,
        } => {
            big_queries(
                &conn,
                docs,
                counts,
                unindexed,
                indexed,
                Duration::from_secs(max_seconds),
                cli.seed,
            )
            .await?
        }
        Cmd::Changes {
            events,
            interval_ms,
        } => changes(&conn, events, Duration::from_millis(interval_ms)).await?,
    };
    if let Value::Object(m) = &mut out {
        m.insert("system".into(), target.name().into());
        m.insert(
            "client_cpu_s".into(),
            json!(stats::process_cpu_s() - cpu_before),
        );
        if cli.count_commands {
            m.insert("commands".into(), json!(db::commands_sent()));
        }
    }
    println!("{out}");
    conn.shutdown().await;
    Ok(())
}

/// Makes `table` afresh with `docs` documents, `batch` per insert, from
/// `clients` concurrent tasks taking the next batch in turn.
async fn load(
    conn: &Conn,
    table: &'static str,
    docs: u64,
    clients: usize,
    batch: u64,
    seed: u64,
    big: bool,
) -> Result<Value> {
    assert!(batch > 0 && clients > 0);
    conn.recreate(table).await?;
    let batches = docs.div_ceil(batch);
    let next = Arc::new(AtomicU64::new(0));
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(conn.session(table).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in sessions {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<_, anyhow::Error>(lat);
                }
                // Each batch's values from its own seed: the same documents
                // whichever task inserts them.
                let mut rng = StdRng::seed_from_u64(seed ^ (b << 20) ^ u64::from(big));
                let first = b * batch;
                let docs: Vec<(String, Fields)> = (first..(first + batch).min(docs))
                    .map(|n| {
                        if big {
                            (gen::big_id(n), Fields::big(&mut rng, n))
                        } else {
                            (gen::ycsb_id(n), Fields::ycsb(&mut rng))
                        }
                    })
                    .collect();
                let t = Instant::now();
                s.insert_many(docs)
                    .await
                    .with_context(|| format!("insert batch {b}"))?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Latencies::default();
    for t in tasks {
        lat.merge(t.await??);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(json!({
        "test": if big { "big_load" } else { "load" },
        "table": table,
        "docs": docs,
        "batch": batch,
        "clients": clients,
        "seconds": seconds,
        "docs_per_sec": docs as f64 / seconds,
        "batch_latency": lat.summary(),
    }))
}

struct RunArgs {
    workload: Workload,
    docs: u64,
    ops: u64,
    clients: usize,
    max: Duration,
    scan_max: i64,
    seed: u64,
}

/// What one client task did.
#[derive(Default)]
struct TaskResult {
    by_op: BTreeMap<Op, Latencies>,
    all: Latencies,
    errors: u64,
    first_error: Option<String>,
    scanned: u64,
}

async fn run(conn: &Conn, a: RunArgs) -> Result<Value> {
    assert!(a.clients > 0 && a.docs > 0 && a.scan_max > 0);
    let zipf = Arc::new(Zipf::new(a.docs, zipf::THETA_DEFAULT));
    let mut sessions = Vec::new();
    for _ in 0..a.clients {
        sessions.push(conn.session(USERTABLE).await?);
    }
    // Warm up: each task's first request opens its pooled connection (TLS
    // and authentication for Berth) before the clock starts.
    {
        let ids: Vec<String> = (0..sessions.len() as u64)
            .map(|i| gen::ycsb_id(i % a.docs))
            .collect();
        let warm: Vec<_> = sessions
            .iter()
            .zip(&ids)
            .map(|(s, id)| s.read(id))
            .collect();
        for r in futures_util::future::join_all(warm).await {
            r.context("warm-up read")?;
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, s) in sessions.into_iter().enumerate() {
        let next = next.clone();
        let zipf = zipf.clone();
        let (workload, ops, max, scan_max, docs) = (a.workload, a.ops, a.max, a.scan_max, a.docs);
        let seed = a.seed ^ ((i as u64 + 1) << 32);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut r = TaskResult::default();
            while next.fetch_add(1, Ordering::Relaxed) < ops && start.elapsed() < max {
                let op = workload.pick(&mut rng);
                let id = gen::ycsb_id(zipf.item(&mut rng) % docs);
                let t = Instant::now();
                let outcome = one_op(&s, op, &id, scan_max, &mut rng).await;
                let took = t.elapsed();
                match outcome {
                    Ok(scanned) => {
                        r.scanned += scanned;
                        r.all.push(took);
                        r.by_op.entry(op).or_default().push(took);
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error
                            .get_or_insert_with(|| format!("{op:?} {id}: {e:#}"));
                    }
                }
            }
            r
        }));
    }
    let mut all = Latencies::default();
    let mut by_op: BTreeMap<Op, Latencies> = BTreeMap::new();
    let (mut errors, mut scanned, mut first_error) = (0, 0, None);
    for t in tasks {
        let r = t.await?;
        all.merge(r.all);
        for (op, l) in r.by_op {
            by_op.entry(op).or_default().merge(l);
        }
        errors += r.errors;
        scanned += r.scanned;
        first_error = first_error.or(r.first_error);
    }
    let seconds = start.elapsed().as_secs_f64();
    let done = all.len() as u64;
    let kinds: serde_json::Map<String, Value> = by_op
        .into_iter()
        .map(|(op, mut l)| (op.name().to_string(), l.summary()))
        .collect();
    Ok(json!({
        "test": format!("ycsb_{}", a.workload.name()),
        "docs": a.docs,
        "clients": a.clients,
        "ops_asked": a.ops,
        "ops": done,
        "errors": errors,
        "first_error": first_error,
        "stopped_by_time": done + errors < a.ops,
        "seconds": seconds,
        "ops_per_sec": done as f64 / seconds,
        "p50_us": all.quantile_us(0.50),
        "p99_us": all.quantile_us(0.99),
        "mean_us": all.mean_us(),
        "by_op": kinds,
        "scanned_docs": scanned,
        "zipf_theta": zipf.theta(),
    }))
}

/// One operation; the documents a scan returned (0 otherwise).
async fn one_op(s: &Session, op: Op, id: &str, scan_max: i64, rng: &mut StdRng) -> Result<u64> {
    match op {
        Op::Read => s.read(id).await.map(|_| 0),
        Op::Update => {
            let field = gen::field_name(rng.gen_range(0..gen::FIELD_COUNT));
            let value = gen::random_string(rng, gen::FIELD_BYTES);
            s.update(id, field, &value).await.map(|_| 0)
        }
        Op::Scan => {
            let n = rng.gen_range(1..=scan_max);
            let got = s.scan(id, n).await?;
            if got == 0 || got as i64 > n {
                bail!("scan of {n} from {id} returned {got}");
            }
            Ok(got as u64)
        }
        Op::ReadModifyWrite => {
            s.read(id).await?;
            let field = gen::field_name(rng.gen_range(0..gen::FIELD_COUNT));
            let value = gen::random_string(rng, gen::FIELD_BYTES);
            s.update(id, field, &value).await.map(|_| 0)
        }
    }
}

/// Runs `f` `times` times one after another (stopping after `max`);
/// the latencies and the last answer.
async fn series<T, F, Fut>(times: u32, max: Duration, mut f: F) -> Result<(Latencies, Option<T>)>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut lat = Latencies::default();
    let mut last = None;
    let start = Instant::now();
    for i in 0..times {
        if start.elapsed() >= max {
            break;
        }
        let t = Instant::now();
        last = Some(f(i).await?);
        lat.push(t.elapsed());
    }
    Ok((lat, last))
}

async fn big_queries(
    conn: &Conn,
    docs: u64,
    counts: u32,
    unindexed: u32,
    indexed: u32,
    max: Duration,
    seed: u64,
) -> Result<Value> {
    let s = conn.session(BIG).await?;
    let want_kind3 = (0..docs)
        .filter(|n| (n / gen::BIG_USERS) % gen::BIG_KINDS == 3)
        .count() as u64;
    // A first request opens the connection before anything is timed.
    s.count(Some(-1)).await?;

    let (mut count_all, n) = series(counts, max, |_| s.count(None)).await?;
    if n != Some(docs) {
        bail!("countDocuments({{}}) = {n:?}, want {docs}");
    }
    let (mut count_kind, n) = series(counts, max, |_| s.count(Some(3))).await?;
    if n != Some(want_kind3) {
        bail!("countDocuments({{kind: 3}}) = {n:?}, want {want_kind3}");
    }

    let users = gen::BIG_USERS.min(docs.max(1));
    let mut rng = StdRng::seed_from_u64(seed);
    let picks: Vec<String> = (0..unindexed.max(indexed))
        .map(|_| gen::big_user(rng.gen_range(0..users)))
        .collect();
    // The newest ten of a user: its ten highest document numbers.
    let check = |user: &str, ts: &[i64]| -> Result<()> {
        let u: u64 = user[4..].parse()?;
        let want: Vec<i64> = (0..docs)
            .rev()
            .filter(|n| n % gen::BIG_USERS == u)
            .take(10)
            .map(|n| n as i64)
            .collect();
        if ts != want.as_slice() {
            bail!("{user}: ts {ts:?}, want {want:?}");
        }
        Ok(())
    };
    let plan_unindexed = s.explain_latest(&picks[0]).await?;
    let (mut scan_lat, _) = series(unindexed, max, |i| {
        let user = picks[i as usize].clone();
        let s = &s;
        async move {
            let ts = s.latest_of_user(&user).await?;
            check(&user, &ts)
        }
    })
    .await?;
    let t = Instant::now();
    s.create_user_ts_index().await?;
    let index_build_s = t.elapsed().as_secs_f64();
    let plan_indexed = s.explain_latest(&picks[0]).await?;
    let (mut index_lat, _) = series(indexed, max, |i| {
        let user = picks[i as usize].clone();
        let s = &s;
        async move {
            let ts = s.latest_of_user(&user).await?;
            check(&user, &ts)
        }
    })
    .await?;
    let per_sec = |l: &Latencies| l.mean_us().map(|us| 1e6 / us);
    Ok(json!({
        "test": "big_queries",
        "docs": docs,
        "count_all": {"result": docs, "latency": count_all.summary()},
        "count_kind": {"result": want_kind3, "latency": count_kind.summary()},
        "find_unindexed": {"plan": plan_unindexed, "ops_per_sec": per_sec(&scan_lat),
                           "latency": scan_lat.summary()},
        "index_build_s": index_build_s,
        "find_indexed": {"plan": plan_indexed, "ops_per_sec": per_sec(&index_lat),
                         "latency": index_lat.summary()},
    }))
}

/// Signed quantiles in microseconds, nearest rank.
fn signed_summary(mut v: Vec<i64>) -> Value {
    if v.is_empty() {
        return json!({"count": 0});
    }
    v.sort_unstable();
    let q = |q: f64| {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1] as f64 / 1e3
    };
    json!({"count": v.len(), "p50_us": q(0.5), "p99_us": q(0.99), "min_us": q(0.0),
           "max_us": q(1.0)})
}

/// How long the watcher waits for the last events after the writer is done.
const CHANGES_DRAIN: Duration = Duration::from_secs(30);

async fn changes(conn: &Conn, events: u64, interval: Duration) -> Result<Value> {
    conn.recreate(EVENTS).await?;
    let n = events as usize;
    // receipt time of each event, by sequence number (-1: not received)
    let received = Arc::new(Mutex::new(vec![-1i64; n]));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let watcher = match conn {
        Conn::Mongo(c) => {
            let coll = c.database(db::DB).collection::<Document>(EVENTS);
            // The collection exists before it is watched.
            coll.insert_one(doc! {"_id": -1i64, "seq": -1i64, "sent_ns": 0i64})
                .await?;
            let received = received.clone();
            tokio::spawn(async move {
                let mut stream = match coll.watch().await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return Ok(0u64);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut got = 0u64;
                while got < events {
                    let Some(ev) = stream.next().await else { break };
                    let at = now_ns();
                    let ev = ev?;
                    let Some(d) = ev.full_document else { continue };
                    let seq = db::bson_i64(d.get("seq")).context("seq")?;
                    let sent = db::bson_i64(d.get("sent_ns")).context("sent_ns")?;
                    if seq < 0 {
                        continue;
                    }
                    // The stamp in the document is the writer's send time.
                    debug_assert!(sent <= at);
                    received.lock().expect("not poisoned")[seq as usize] = at;
                    got += 1;
                }
                Ok::<_, anyhow::Error>(got)
            })
        }
        Conn::Postgres(s) => {
            let setup = db::pg_connect(s).await?;
            setup
                .batch_execute(&format!(
                    "CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       PERFORM pg_notify('bench_events', (NEW.doc->>'seq') || ' ' || (NEW.doc->>'sent_ns'));
                       RETURN NEW;
                     END $$;
                     CREATE TRIGGER {EVENTS}_notify AFTER INSERT ON {EVENTS}
                       FOR EACH ROW EXECUTE FUNCTION bench_notify();"
                ))
                .await
                .context("notify trigger")?;
            let (client, mut connection) = tokio_postgres::connect(s, tokio_postgres::NoTls)
                .await
                .context("listener connection")?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m {
                        Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                            let at = now_ns();
                            if tx.send((at, n.payload().to_string())).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("listener connection: {e}");
                            return;
                        }
                    }
                }
            });
            client.batch_execute("LISTEN bench_events").await?;
            let _ = ready_tx.send(Ok(()));
            let received = received.clone();
            tokio::spawn(async move {
                let _client = client;
                let mut got = 0u64;
                while got < events {
                    let Some((at, payload)) = rx.recv().await else {
                        break;
                    };
                    let mut parts = payload.split(' ');
                    let seq: i64 = parts.next().unwrap_or("").parse().context("seq")?;
                    let sent: i64 = parts.next().unwrap_or("").parse().context("sent_ns")?;
                    debug_assert!(sent <= at);
                    received.lock().expect("not poisoned")[seq as usize] = at;
                    got += 1;
                }
                Ok::<_, anyhow::Error>(got)
            })
        }
    };
    ready_rx.await.context("watcher")??;
    let session = conn.session(EVENTS).await?;
    let mut sent = vec![0i64; n];
    let mut acked = vec![0i64; n];
    let mut insert_lat = Latencies::default();
    for seq in 0..n {
        let t = now_ns();
        session.insert_event(seq as i64, t).await?;
        let a = now_ns();
        sent[seq] = t;
        acked[seq] = a;
        insert_lat.push_ns((a - t) as u64);
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    let got = match tokio::time::timeout(CHANGES_DRAIN, watcher).await {
        Ok(r) => r??,
        Err(_) => received
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|&&r| r >= 0)
            .count() as u64,
    };
    let received = received.lock().expect("not poisoned").clone();
    let mut delivery = Latencies::default();
    let mut after_ack = Vec::new();
    for seq in 0..n {
        if received[seq] >= 0 {
            delivery.push_ns((received[seq] - sent[seq]).max(0) as u64);
            after_ack.push(received[seq] - acked[seq]);
        }
    }
    Ok(json!({
        "test": "changes",
        "events": events,
        "received": got,
        "interval_ms": interval.as_millis() as u64,
        "insert": insert_lat.summary(),
        "send_to_delivery": delivery.summary(),
        "ack_to_delivery": signed_summary(after_ack),
    }))
}
