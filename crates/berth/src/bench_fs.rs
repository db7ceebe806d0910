//! `bench fs`: sequential write and read of one large file, 4 KiB random
//! reads in it, and small-file create/stat/unlink, all with plain POSIX
//! calls in any directory (a Berth mount, a local disk, another network
//! file system), so one binary measures every side of a comparison.
//!
//! What each number includes:
//! - seq write: open, 1 MiB writes, `fsync`, close; the data is durable
//!   when the clock stops.
//! - seq read and random reads: a fresh descriptor after dropping what this
//!   host caches (`posix_fadvise(DONTNEED)` on the file and, as root, `sync`
//!   then `drop_caches`), so the bytes come from the file system's storage.
//!   Random reads hint `POSIX_FADV_RANDOM` (as fio does) so read-ahead does
//!   not fetch what is never asked for.
//! - small files: no `fsync` on any side; every file is created
//!   `O_CREAT|O_EXCL` and closed, then all are stat'ed, then all unlinked,
//!   one phase at a time, in one directory.
//!
//! Reads are checked against what was written (a stamp per MiB for the
//! sequential read, every byte of the random reads): a file system that
//! returns wrong data fails the run instead of scoring.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use indicatif::ProgressBar;
use serde_json::{json, Value};

use crate::bench::{format_us, percentile, progress, unix_ms};
use crate::cli::BenchFsArgs;
use crate::ctx::Ctx;
use crate::output::{format_size, print_json, Align, Table};

/// Size of every sequential read and write call.
const IO_BYTES: usize = 1 << 20;
/// Size and alignment of a random read.
const BLOCK_BYTES: usize = 4096;
/// Bytes of the per-MiB stamp that makes every MiB of the file distinct.
const STAMP_BYTES: usize = 8;
/// Longest /proc/self/mountinfo read, in bytes.
const MOUNTINFO_MAX_BYTES: u64 = 4 << 20;

/// What the run does, beyond the command-line arguments.
struct Plan {
    size_bytes: u64,
    files: u32,
    random_reads: u32,
    seed: u64,
    /// Also `sync` + `drop_caches` (as root); off in unit tests so they do
    /// not flush the whole machine.
    drop_system_caches: bool,
}

/// The timings of one phase.
struct Phase {
    ops: u64,
    bytes: u64,
    wall: Duration,
    /// Latency of each call in microseconds, sorted.
    lat_us: Vec<u64>,
}

impl Phase {
    fn new(wall: Duration, bytes: u64, mut lat_us: Vec<u64>) -> Phase {
        lat_us.sort_unstable();
        Phase {
            ops: lat_us.len() as u64,
            bytes,
            wall,
            lat_us,
        }
    }

    fn secs(&self) -> f64 {
        self.wall.as_secs_f64().max(1e-9)
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs()
    }

    fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / IO_BYTES as f64 / self.secs()
    }

    /// Several phases as one: their calls, back to back.
    fn combined(phases: &[&Phase]) -> Phase {
        let lat: Vec<u64> = phases.iter().flat_map(|p| p.lat_us.clone()).collect();
        let wall = phases.iter().map(|p| p.wall).sum();
        let bytes = phases.iter().map(|p| p.bytes).sum();
        Phase::new(wall, bytes, lat)
    }

    fn json(&self) -> Value {
        json!({
            "ops": self.ops,
            "bytes": self.bytes,
            "seconds": self.wall.as_secs_f64(),
            "ops_per_sec": self.ops_per_sec(),
            "mib_per_sec": self.mib_per_sec(),
            "p50_us": percentile(&self.lat_us, 50),
            "p99_us": percentile(&self.lat_us, 99),
        })
    }
}

/// What was dropped before a cold read.
struct CacheDrop {
    /// `drop_caches` succeeded (every clean page of the host is gone).
    system: bool,
    text: String,
}

struct Report {
    dir: PathBuf,
    mount: Option<Mount>,
    plan: Plan,
    seq_write: Phase,
    /// Of `seq_write.wall`, the time in `fsync` + close.
    fsync_close: Duration,
    seq_read: Phase,
    random_read: Phase,
    cache_drop: CacheDrop,
    create: Phase,
    stat: Phase,
    unlink: Phase,
}

pub async fn fs(ctx: &Ctx, args: BenchFsArgs) -> Result<()> {
    ensure!(
        args.size >= BLOCK_BYTES as u64,
        "--size must be at least 4 KiB (random reads are 4 KiB blocks of the file)"
    );
    let meta =
        std::fs::metadata(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
    ensure!(
        meta.is_dir(),
        "--dir {} is not a directory",
        args.dir.display()
    );
    let plan = Plan {
        size_bytes: args.size,
        files: args.files,
        random_reads: args.random_reads,
        seed: args.seed,
        drop_system_caches: true,
    };
    let show = !ctx.json() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let dir = args.dir.clone();
    let report = tokio::task::spawn_blocking(move || run(&dir, plan, show))
        .await
        .context("bench thread panicked")??;
    if ctx.json() {
        print_json(&report_json(&report));
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Runs every phase in a fresh subdirectory of `dir`, removed afterwards
/// (also after a failure).
fn run(dir: &Path, plan: Plan, show: bool) -> Result<Report> {
    let base = dir.join(format!(
        "berth-bench-fs-{}-{}",
        std::process::id(),
        unix_ms()
    ));
    std::fs::create_dir(&base).with_context(|| format!("creating {}", base.display()))?;
    let r = run_in(dir, &base, plan, show);
    if let Err(e) = std::fs::remove_dir_all(&base) {
        if e.kind() != ErrorKind::NotFound {
            eprintln!("warning: could not remove {}: {e}", base.display());
        }
    }
    r
}

fn run_in(dir: &Path, base: &Path, plan: Plan, show: bool) -> Result<Report> {
    let bar = progress(show, 0, "fs");
    let pattern = pattern(plan.seed);
    let big = base.join("seq.bin");

    bar.set_message("seq write");
    bar.set_length(plan.size_bytes.div_ceil(IO_BYTES as u64));
    let (seq_write, fsync_close) =
        seq_write(&big, plan.size_bytes, &pattern, &bar).context("seq write")?;

    bar.set_message("seq read");
    bar.reset();
    bar.set_length(plan.size_bytes.div_ceil(IO_BYTES as u64));
    let file = File::open(&big).with_context(|| format!("opening {}", big.display()))?;
    let cache_drop = drop_caches(&file, plan.drop_system_caches);
    let seq_read = seq_read(file, plan.size_bytes, &bar).context("seq read")?;

    bar.set_message("rand read");
    bar.reset();
    bar.set_length(u64::from(plan.random_reads));
    let file = File::open(&big).with_context(|| format!("opening {}", big.display()))?;
    drop_caches(&file, plan.drop_system_caches);
    let random_read = random_reads(&file, &plan, &pattern, &bar).context("random reads")?;
    drop(file);
    std::fs::remove_file(&big).with_context(|| format!("removing {}", big.display()))?;

    let files_dir = base.join("files");
    std::fs::create_dir(&files_dir).with_context(|| format!("creating {}", files_dir.display()))?;
    let names: Vec<PathBuf> = (0..plan.files)
        .map(|i| files_dir.join(format!("f{i}")))
        .collect();
    let mut small = Vec::with_capacity(3);
    for op in [SmallOp::Create, SmallOp::Stat, SmallOp::Unlink] {
        bar.set_message(op.name());
        bar.reset();
        bar.set_length(names.len() as u64);
        small.push(small_files(op, &names, &bar)?);
    }
    bar.finish_and_clear();
    let [create, stat, unlink]: [Phase; 3] = small
        .try_into()
        .map_err(|_| anyhow::anyhow!("three small-file phases"))?;
    Ok(Report {
        dir: dir.to_path_buf(),
        mount: mount_of(dir),
        plan,
        seq_write,
        fsync_close,
        seq_read,
        random_read,
        cache_drop,
        create,
        stat,
        unlink,
    })
}

/// One MiB of seeded pseudo-random bytes, so compression gains nothing; the
/// file repeats this MiB with a stamp per MiB (none of the file systems
/// compared deduplicates).
fn pattern(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(IO_BYTES);
    while out.len() < IO_BYTES {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out
}

/// The first bytes of MiB number `index` of the file.
fn stamp(index: u64) -> [u8; STAMP_BYTES] {
    (index ^ 0xb3e7_5eed_0000_0000).to_le_bytes()
}

/// What the file holds at `offset` (4 KiB aligned), `out.len()` bytes
/// within one MiB.
fn expected(pattern: &[u8], offset: u64, out: &mut [u8]) {
    let within = (offset % IO_BYTES as u64) as usize;
    debug_assert!(within + out.len() <= IO_BYTES);
    out.copy_from_slice(&pattern[within..within + out.len()]);
    if within < STAMP_BYTES {
        let s = stamp(offset / IO_BYTES as u64);
        let n = (STAMP_BYTES - within).min(out.len());
        out[..n].copy_from_slice(&s[within..within + n]);
    }
}

/// Writes the file in 1 MiB calls, then fsync and close. Returns the phase
/// and the time of fsync + close within it.
fn seq_write(
    path: &Path,
    size: u64,
    pattern: &[u8],
    bar: &ProgressBar,
) -> Result<(Phase, Duration)> {
    let mut buf = pattern.to_vec();
    let mut lat = Vec::with_capacity(size.div_ceil(IO_BYTES as u64) as usize);
    let start = Instant::now();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut done = 0u64;
    let mut index = 0u64;
    while done < size {
        let n = (size - done).min(IO_BYTES as u64) as usize;
        buf[..STAMP_BYTES].copy_from_slice(&stamp(index));
        let t = Instant::now();
        f.write_all(&buf[..n])
            .with_context(|| format!("write at offset {done}"))?;
        lat.push(t.elapsed().as_micros() as u64);
        done += n as u64;
        index += 1;
        bar.inc(1);
    }
    let t = Instant::now();
    f.sync_all().context("fsync")?;
    close(f).context("close")?;
    let fsync_close = t.elapsed();
    Ok((Phase::new(start.elapsed(), size, lat), fsync_close))
}

/// Closes a file and reports close's error (which `drop` ignores; network
/// file systems report failed write-behind there).
fn close(f: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just released by its owner and is closed once, here.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drops this host's cached pages of `file` and, when `system` and root,
/// every clean page (after a `sync`).
fn drop_caches(file: &File, system: bool) -> CacheDrop {
    // SAFETY: a valid open descriptor; fadvise only affects the page cache.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut text = if rc == 0 {
        "fadvise(DONTNEED)".to_string()
    } else {
        format!(
            "fadvise(DONTNEED) failed ({})",
            std::io::Error::from_raw_os_error(rc)
        )
    };
    if !system {
        return CacheDrop {
            system: false,
            text,
        };
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        text.push_str("; not root, so no drop_caches");
        return CacheDrop {
            system: false,
            text,
        };
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    match std::fs::write("/proc/sys/vm/drop_caches", b"1\n") {
        Ok(()) => {
            text.push_str(" + sync + drop_caches");
            CacheDrop { system: true, text }
        }
        Err(e) => {
            text.push_str(&format!("; drop_caches failed ({e})"));
            CacheDrop {
                system: false,
                text,
            }
        }
    }
}

/// Reads the whole file in 1 MiB calls, checking each MiB's stamp.
fn seq_read(mut f: File, size: u64, bar: &ProgressBar) -> Result<Phase> {
    let mut buf = vec![0u8; IO_BYTES];
    let mut lat = Vec::with_capacity(size.div_ceil(IO_BYTES as u64) as usize);
    let mut total = 0u64;
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let n = read_full(&mut f, &mut buf).with_context(|| format!("read at offset {total}"))?;
        if n == 0 {
            break;
        }
        lat.push(t.elapsed().as_micros() as u64);
        let index = total / IO_BYTES as u64;
        let k = n.min(STAMP_BYTES);
        ensure!(
            buf[..k] == stamp(index)[..k],
            "wrong data at offset {total}: the file does not hold what was written"
        );
        total += n as u64;
        ensure!(total <= size, "read more than the {size} bytes written");
        bar.inc(1);
    }
    drop(f);
    let wall = start.elapsed();
    ensure!(total == size, "read {total} bytes of the {size} written");
    Ok(Phase::new(wall, total, lat))
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `plan.random_reads` 4 KiB preads at seeded random aligned offsets.
fn random_reads(f: &File, plan: &Plan, pattern: &[u8], bar: &ProgressBar) -> Result<Phase> {
    // SAFETY: a valid open descriptor; the hint only steers read-ahead.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let blocks = plan.size_bytes / BLOCK_BYTES as u64;
    assert!(blocks > 0, "size checked to be at least one block");
    let mut rng = SplitMix64(plan.seed ^ 0x5eed_4ead);
    let mut buf = vec![0u8; BLOCK_BYTES];
    let mut want = vec![0u8; BLOCK_BYTES];
    let mut lat = Vec::with_capacity(plan.random_reads as usize);
    let start = Instant::now();
    for _ in 0..plan.random_reads {
        let offset = rng.below(blocks) * BLOCK_BYTES as u64;
        let t = Instant::now();
        f.read_exact_at(&mut buf, offset)
            .with_context(|| format!("pread at {offset}"))?;
        lat.push(t.elapsed().as_micros() as u64);
        expected(pattern, offset, &mut want);
        ensure!(
            buf == want,
            "wrong data at offset {offset}: the file does not hold what was written"
        );
        bar.inc(1);
    }
    let bytes = u64::from(plan.random_reads) * BLOCK_BYTES as u64;
    Ok(Phase::new(start.elapsed(), bytes, lat))
}

#[derive(Clone, Copy)]
enum SmallOp {
    Create,
    Stat,
    Unlink,
}

impl SmallOp {
    fn name(self) -> &'static str {
        match self {
            SmallOp::Create => "create",
            SmallOp::Stat => "stat",
            SmallOp::Unlink => "unlink",
        }
    }
}

/// One small-file phase over every name.
fn small_files(op: SmallOp, names: &[PathBuf], bar: &ProgressBar) -> Result<Phase> {
    let mut lat = Vec::with_capacity(names.len());
    let start = Instant::now();
    for path in names {
        let t = Instant::now();
        let r = match op {
            SmallOp::Create => OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
                .and_then(close),
            SmallOp::Stat => std::fs::metadata(path).and_then(|m| {
                if m.is_file() && m.len() == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not an empty file"))
                }
            }),
            SmallOp::Unlink => std::fs::remove_file(path),
        };
        r.with_context(|| format!("{} {}", op.name(), path.display()))?;
        lat.push(t.elapsed().as_micros() as u64);
        bar.inc(1);
    }
    Ok(Phase::new(start.elapsed(), 0, lat))
}

/// splitmix64: small, fast, and the same sequence on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (rejection sampling, so no modulo bias).
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// The mount a directory lives on, from /proc/self/mountinfo.
#[derive(Debug, PartialEq)]
struct Mount {
    mount_point: String,
    fs_type: String,
    source: String,
}

fn mount_of(dir: &Path) -> Option<Mount> {
    let real = std::fs::canonicalize(dir).ok()?;
    let mut text = String::new();
    File::open("/proc/self/mountinfo")
        .ok()?
        .take(MOUNTINFO_MAX_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    mount_in(&text, &real)
}

/// The deepest mount of `mountinfo` that holds `path` (absolute, canonical).
fn mount_in(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mp), Some(fs_type), Some(source)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 2))
        else {
            continue;
        };
        let mount_point = unescape(mp);
        let deeper = best
            .as_ref()
            .is_none_or(|b| mount_point.len() >= b.mount_point.len());
        if path.starts_with(&mount_point) && deeper {
            best = Some(Mount {
                mount_point,
                fs_type: fs_type.to_string(),
                source: unescape(source),
            });
        }
    }
    best
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fs_desc(r: &Report) -> String {
    match &r.mount {
        Some(m) => format!("{} on {} ({})", m.fs_type, m.mount_point, m.source),
        None => "unknown file system".into(),
    }
}

fn report_json(r: &Report) -> Value {
    let small = Phase::combined(&[&r.create, &r.stat, &r.unlink]);
    json!({
        "bench": "fs",
        "dir": r.dir.display().to_string(),
        "fs_type": r.mount.as_ref().map(|m| m.fs_type.clone()),
        "mount_point": r.mount.as_ref().map(|m| m.mount_point.clone()),
        "source": r.mount.as_ref().map(|m| m.source.clone()),
        "size_bytes": r.plan.size_bytes,
        "files": r.plan.files,
        "random_reads": r.plan.random_reads,
        "seed": r.plan.seed,
        "io_bytes": IO_BYTES,
        "caches_dropped": r.cache_drop.system,
        "cache_drop": r.cache_drop.text,
        "seq_write": r.seq_write.json(),
        "seq_write_fsync_close_seconds": r.fsync_close.as_secs_f64(),
        "seq_read": r.seq_read.json(),
        "random_read_4k": r.random_read.json(),
        "create": r.create.json(),
        "stat": r.stat.json(),
        "unlink": r.unlink.json(),
        "small_files": small.json(),
    })
}

fn print_report(r: &Report) {
    println!(
        "bench fs in {}: {}; {} file, {} random 4 KiB reads, {} small files",
        r.dir.display(),
        fs_desc(r),
        format_size(r.plan.size_bytes),
        r.plan.random_reads,
        r.plan.files
    );
    println!("cold reads after: {}", r.cache_drop.text);
    let mut t = Table::new(&[
        ("TEST", Align::Left),
        ("RATE", Align::Right),
        ("P50", Align::Right),
        ("P99", Align::Right),
        ("SECONDS", Align::Right),
        ("NOTE", Align::Left),
    ]);
    let row = |t: &mut Table, name: &str, rate: String, p: &Phase, note: String| {
        t.row(vec![
            name.to_string(),
            rate,
            format_us(percentile(&p.lat_us, 50)),
            format_us(percentile(&p.lat_us, 99)),
            format!("{:.2}", p.wall.as_secs_f64()),
            note,
        ]);
    };
    let mib = |p: &Phase| format!("{:.0} MiB/s", p.mib_per_sec());
    let ops = |p: &Phase| format!("{:.0} ops/s", p.ops_per_sec());
    row(
        &mut t,
        "seq write",
        mib(&r.seq_write),
        &r.seq_write,
        format!(
            "1 MiB writes; fsync+close {:.2} s",
            r.fsync_close.as_secs_f64()
        ),
    );
    row(
        &mut t,
        "seq read",
        mib(&r.seq_read),
        &r.seq_read,
        "1 MiB reads, cold".into(),
    );
    row(
        &mut t,
        "random read 4K",
        ops(&r.random_read),
        &r.random_read,
        "pread, cold".into(),
    );
    for (name, p) in [
        ("create", &r.create),
        ("stat", &r.stat),
        ("unlink", &r.unlink),
    ] {
        row(&mut t, name, ops(p), p, String::new());
    }
    let small = Phase::combined(&[&r.create, &r.stat, &r.unlink]);
    row(
        &mut t,
        "small files",
        ops(&small),
        &small,
        "create+stat+unlink".into(),
    );
    t.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded_and_bounded() {
        let a: Vec<u64> = {
            let mut r = SplitMix64(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SplitMix64(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = SplitMix64(1);
        assert!((0..10_000).all(|_| r.below(3) < 3));
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn expected_matches_the_written_file() {
        let p = pattern(3);
        assert_eq!(p.len(), IO_BYTES);
        let mut want = vec![0u8; BLOCK_BYTES];
        expected(&p, 0, &mut want);
        assert_eq!(want[..STAMP_BYTES], stamp(0));
        assert_eq!(want[STAMP_BYTES..], p[STAMP_BYTES..BLOCK_BYTES]);
        expected(&p, 5 * IO_BYTES as u64 + 8192, &mut want);
        assert_eq!(want[..], p[8192..8192 + BLOCK_BYTES]);
        expected(&p, 5 * IO_BYTES as u64, &mut want);
        assert_eq!(want[..STAMP_BYTES], stamp(5));
        assert_ne!(stamp(0), stamp(1));
    }

    #[test]
    fn mountinfo_picks_the_deepest_mount() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:50 / /mnt/my\\040dir rw,nosuid shared:2 - fuse.berth berth:/ rw,user_id=0
41 22 0:51 / /mnt/gluster rw shared:3 - fuse.glusterfs 127.0.0.1:/gv0 rw
";
        let m = mount_in(info, Path::new("/mnt/my dir/sub")).unwrap();
        assert_eq!(m.fs_type, "fuse.berth");
        assert_eq!(m.mount_point, "/mnt/my dir");
        assert_eq!(m.source, "berth:/");
        let m = mount_in(info, Path::new("/tmp/x")).unwrap();
        assert_eq!((m.fs_type.as_str(), m.mount_point.as_str()), ("ext4", "/"));
        // A sibling whose name extends a mount point is not under it.
        let m = mount_in(info, Path::new("/mnt/glusterfs2")).unwrap();
        assert_eq!(m.fs_type, "ext4");
        assert_eq!(unescape("a\\011b\\\\c"), "a\tb\\\\c");
    }

    #[test]
    fn a_small_run_counts_everything_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            size_bytes: 3 * IO_BYTES as u64 + 5000,
            files: 25,
            random_reads: 200,
            seed: 9,
            drop_system_caches: false,
        };
        let r = run(dir.path(), plan, false).unwrap();
        assert_eq!(r.seq_write.ops, 4);
        assert_eq!(r.seq_write.bytes, 3 * IO_BYTES as u64 + 5000);
        assert_eq!(r.seq_read.bytes, r.seq_write.bytes);
        assert_eq!(r.random_read.ops, 200);
        assert!([&r.create, &r.stat, &r.unlink].iter().all(|p| p.ops == 25));
        assert!(!r.cache_drop.system);
        let v = report_json(&r);
        assert_eq!(v["small_files"]["ops"], 75);
        assert_eq!(v["random_read_4k"]["bytes"], 200 * BLOCK_BYTES as u64);
        // Only the directory we were given is left, empty.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
