//! `bench meta`: concurrent metadata operations (mkdir, create, stat) over
//! the native API, optionally side by side with the same operations on a
//! local file system.
//!
//! Each operation kind runs as its own phase (every client does all its
//! mkdirs, then all creates, then all stats), so ops/s per kind is the
//! phase's count over its wall time. To compare like with like, the local
//! run makes each mkdir and create durable the way Berth acknowledges them:
//! the new file is `sync_all`ed and the parent directory fsync'd.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use berth_api::v1::{CreateRequest, EntryType, MkdirRequest, PathRequest, RemoveRequest};
use berth_client::{Client, ClientError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::cli::{BenchCmd, BenchMetaArgs};
use crate::ctx::{abs, at_path, Ctx};
use crate::output::{print_json, Align, Table};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Mkdir,
    Create,
    Stat,
}

const OPS: [Op; 3] = [Op::Mkdir, Op::Create, Op::Stat];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Mkdir => "mkdir",
            Op::Create => "create",
            Op::Stat => "stat",
        }
    }
}

/// The result of one phase.
struct Phase {
    count: u64,
    wall: Duration,
    /// Latencies in microseconds, sorted.
    lat_us: Vec<u64>,
}

impl Phase {
    fn new(wall: Duration, per_worker: Vec<Vec<u64>>) -> Phase {
        let mut lat_us: Vec<u64> = per_worker.into_iter().flatten().collect();
        lat_us.sort_unstable();
        Phase {
            count: lat_us.len() as u64,
            wall,
            lat_us,
        }
    }

    fn ops_per_sec(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn percentile_us(&self, pct: u64) -> u64 {
        percentile(&self.lat_us, pct)
    }

    fn json(&self) -> Value {
        json!({
            "ops": self.count,
            "seconds": self.wall.as_secs_f64(),
            "ops_per_sec": self.ops_per_sec(),
            "p50_us": self.percentile_us(50),
            "p99_us": self.percentile_us(99),
        })
    }
}

/// Nearest-rank percentile of sorted values; 0 for none.
pub(crate) fn percentile(sorted: &[u64], pct: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() as u64 * pct).div_ceil(100).max(1);
    sorted[(rank - 1) as usize]
}

pub async fn bench(ctx: &Ctx, cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Meta(args) => meta(ctx, args).await,
        BenchCmd::Fs(args) => crate::bench_fs::fs(ctx, args).await,
    }
}

async fn meta(ctx: &Ctx, args: BenchMetaArgs) -> Result<()> {
    let total = u64::from(args.clients) * u64::from(args.ops) * OPS.len() as u64;
    let show_progress = !ctx.json() && std::io::stderr().is_terminal();

    let cfg = ctx.config()?;
    let mut clients = Vec::with_capacity(args.clients as usize);
    for _ in 0..args.clients {
        clients.push(Client::connect(cfg.clone()).await?);
    }
    let server = clients[0].server().to_string();
    let run_dir = format!("{}/run-{}", abs(&args.dir).trim_end_matches('/'), unix_ms());
    let bar = progress(show_progress, total, "berth");
    let berth = run_berth(&clients, &run_dir, args.ops, &bar).await;
    bar.finish_and_clear();
    // Clean up even after a failure; a failed cleanup is only a warning.
    let cleanup = clients[0]
        .namespace()
        .remove(RemoveRequest {
            path: run_dir.clone(),
            recursive: true,
        })
        .await;
    if let Err(s) = cleanup {
        let e = ClientError::from_status(s);
        if !e.is("ENOENT") {
            eprintln!("warning: could not remove {run_dir}: {e}");
        }
    }
    let berth = berth?;

    let local = match &args.local_dir {
        Some(dir) => {
            let base = dir.join(format!("berth-bench-{}-{}", std::process::id(), unix_ms()));
            let bar = progress(show_progress, total, "local");
            let r = run_local(&base, args.clients, args.ops, &bar).await;
            bar.finish_and_clear();
            if let Err(e) = std::fs::remove_dir_all(&base) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("warning: could not remove {}: {e}", base.display());
                }
            }
            Some((dir.clone(), r?))
        }
        None => None,
    };

    if ctx.json() {
        print_json(&report_json(&args, &server, &berth, local.as_ref()));
    } else {
        print_report(&args, &server, &berth, local.as_ref());
    }
    Ok(())
}

pub(crate) fn progress(show: bool, total: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>6} {msg:<6} [{bar:40}] {pos}/{len} {per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    bar
}

async fn run_berth(
    clients: &[Client],
    run_dir: &str,
    ops: u32,
    bar: &ProgressBar,
) -> Result<Vec<Phase>> {
    let mut ns = clients[0].namespace();
    ns.mkdir(MkdirRequest {
        path: run_dir.to_string(),
        mode: None,
        parents: true,
    })
    .await
    .map_err(|s| at_path(ClientError::from_status(s), run_dir))?;
    for i in 0..clients.len() {
        let dir = format!("{run_dir}/c{i}");
        ns.mkdir(MkdirRequest {
            path: dir.clone(),
            mode: None,
            parents: false,
        })
        .await
        .map_err(|s| at_path(ClientError::from_status(s), &dir))?;
    }
    let mut phases = Vec::new();
    for op in OPS {
        bar.set_message(op.name());
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, client) in clients.iter().enumerate() {
            let client = client.clone();
            let dir = format!("{run_dir}/c{i}");
            let bar = bar.clone();
            tasks.spawn(async move { berth_worker(client, dir, op, ops, bar).await });
        }
        let mut lats = Vec::new();
        while let Some(r) = tasks.join_next().await {
            lats.push(r.context("bench worker panicked")??);
        }
        phases.push(Phase::new(start.elapsed(), lats));
    }
    Ok(phases)
}

async fn berth_worker(
    client: Client,
    dir: String,
    op: Op,
    ops: u32,
    bar: ProgressBar,
) -> Result<Vec<u64>> {
    let mut ns = client.namespace();
    let mut lat = Vec::with_capacity(ops as usize);
    for j in 0..ops {
        let t = Instant::now();
        let r = match op {
            Op::Mkdir => {
                let path = format!("{dir}/d{j}");
                ns.mkdir(MkdirRequest {
                    path,
                    mode: None,
                    parents: false,
                })
                .await
                .map(drop)
            }
            Op::Create => {
                let path = format!("{dir}/f{j}");
                let req = CreateRequest {
                    path,
                    r#type: EntryType::File as i32,
                    mode: None,
                    exclusive: true,
                    rdev: 0,
                };
                ns.create(req).await.map(drop)
            }
            Op::Stat => ns
                .stat(PathRequest {
                    path: format!("{dir}/f{j}"),
                })
                .await
                .map(drop),
        };
        r.map_err(|s| {
            anyhow::Error::new(ClientError::from_status(s)).context(format!("bench {}", op.name()))
        })?;
        lat.push(t.elapsed().as_micros() as u64);
        bar.inc(1);
    }
    Ok(lat)
}

async fn run_local(base: &Path, clients: u32, ops: u32, bar: &ProgressBar) -> Result<Vec<Phase>> {
    for i in 0..clients {
        let dir = base.join(format!("c{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut phases = Vec::new();
    for op in OPS {
        bar.set_message(op.name());
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..clients {
            let dir = base.join(format!("c{i}"));
            let bar = bar.clone();
            tasks.spawn_blocking(move || local_worker(&dir, op, ops, &bar));
        }
        let mut lats = Vec::new();
        while let Some(r) = tasks.join_next().await {
            lats.push(r.context("bench worker panicked")??);
        }
        phases.push(Phase::new(start.elapsed(), lats));
    }
    Ok(phases)
}

fn local_worker(dir: &Path, op: Op, ops: u32, bar: &ProgressBar) -> Result<Vec<u64>> {
    let mut lat = Vec::with_capacity(ops as usize);
    for j in 0..ops {
        let t = Instant::now();
        let path: PathBuf = match op {
            Op::Mkdir => dir.join(format!("d{j}")),
            Op::Create | Op::Stat => dir.join(format!("f{j}")),
        };
        let r = (|| -> std::io::Result<()> {
            match op {
                Op::Mkdir => {
                    std::fs::create_dir(&path)?;
                    std::fs::File::open(dir)?.sync_all()
                }
                Op::Create => {
                    std::fs::File::create(&path)?.sync_all()?;
                    std::fs::File::open(dir)?.sync_all()
                }
                Op::Stat => std::fs::metadata(&path).map(drop),
            }
        })();
        r.with_context(|| format!("local {} {}", op.name(), path.display()))?;
        lat.push(t.elapsed().as_micros() as u64);
        bar.inc(1);
    }
    Ok(lat)
}

fn report_json(
    args: &BenchMetaArgs,
    server: &str,
    berth: &[Phase],
    local: Option<&(PathBuf, Vec<Phase>)>,
) -> Value {
    let phases = |ps: &[Phase]| {
        let mut m = Map::new();
        for (op, p) in OPS.iter().zip(ps) {
            m.insert(op.name().into(), p.json());
        }
        Value::Object(m)
    };
    let mut out = json!({
        "bench": "meta",
        "clients": args.clients,
        "ops_per_client": args.ops,
        "server": server,
        "berth": phases(berth),
        "local": Value::Null,
        "ratio_berth_to_local": Value::Null,
    });
    if let Some((dir, lp)) = local {
        let mut ratio = Map::new();
        for ((op, b), l) in OPS.iter().zip(berth).zip(lp) {
            ratio.insert(
                op.name().into(),
                json!(b.ops_per_sec() / l.ops_per_sec().max(1e-9)),
            );
        }
        out["local"] = phases(lp);
        out["local_dir"] = json!(dir.display().to_string());
        out["ratio_berth_to_local"] = Value::Object(ratio);
    }
    out
}

fn print_report(
    args: &BenchMetaArgs,
    server: &str,
    berth: &[Phase],
    local: Option<&(PathBuf, Vec<Phase>)>,
) {
    print!(
        "bench meta: {} clients x {} ops each, berth at {server}",
        args.clients, args.ops
    );
    if let Some((dir, _)) = local {
        print!(", local {} (with fsync)", dir.display());
    }
    println!();
    let mut cols = vec![
        ("OP", Align::Left),
        ("BERTH OPS/S", Align::Right),
        ("P50", Align::Right),
        ("P99", Align::Right),
    ];
    if local.is_some() {
        cols.extend([
            ("LOCAL OPS/S", Align::Right),
            ("P50", Align::Right),
            ("P99", Align::Right),
            ("BERTH/LOCAL", Align::Right),
        ]);
    }
    let mut t = Table::new(&cols);
    for (i, op) in OPS.iter().enumerate() {
        let b = &berth[i];
        let mut row = vec![
            op.name().to_string(),
            format!("{:.0}", b.ops_per_sec()),
            format_us(b.percentile_us(50)),
            format_us(b.percentile_us(99)),
        ];
        if let Some((_, lp)) = local {
            let l = &lp[i];
            row.extend([
                format!("{:.0}", l.ops_per_sec()),
                format_us(l.percentile_us(50)),
                format_us(l.percentile_us(99)),
                format!("{:.2}x", b.ops_per_sec() / l.ops_per_sec().max(1e-9)),
            ]);
        }
        t.row(row);
    }
    t.print();
}

/// `850 µs`, `1.2 ms`, `35 ms`.
pub(crate) fn format_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{} ms", us / 1000)
    }
}

pub(crate) fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[7], 99), 7);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&v, 100), 100);
    }

    #[test]
    fn latency_text() {
        assert_eq!(format_us(850), "850 µs");
        assert_eq!(format_us(1250), "1.2 ms");
        assert_eq!(format_us(35_000), "35 ms");
    }

    #[tokio::test]
    async fn local_run_counts_every_op() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("b");
        let phases = run_local(&base, 2, 5, &ProgressBar::hidden())
            .await
            .unwrap();
        assert_eq!(phases.len(), 3);
        assert!(phases.iter().all(|p| p.count == 10));
        assert!(base.join("c1").join("f4").is_file());
        assert!(base.join("c0").join("d4").is_dir());
    }
}
