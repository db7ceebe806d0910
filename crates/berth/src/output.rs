//! How things look: sizes, modes, times, aligned tables, JSON. Parsing of
//! the same units lives here too so that both directions stay in one place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_api::v1::{Entry, EntryType, Volume};
use serde_json::{json, Value};

const KIB: u64 = 1024;

/// Parses a size: `512`, `4k`, `10G`, `512MiB`, `1.5GiB`, `100MB`. A bare
/// letter or an `iB` suffix is binary (1024); `kB`/`MB`/`GB`/`TB` are
/// decimal, as on a disk's label.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let bad = || format!("bad size {s:?}: expected e.g. 512, 64K, 10G, 512MiB");
    if num.is_empty() {
        return Err(bad());
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => KIB.pow(2),
        "g" | "gib" => KIB.pow(3),
        "t" | "tib" => KIB.pow(4),
        "p" | "pib" => KIB.pow(5),
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "pb" => 1000u64.pow(5),
        _ => return Err(bad()),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("size {s:?} is too large"));
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let bytes = (f * mult as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(bytes as u64)
}

/// `512 B`, `1.5 KiB`, `10 MiB`, `2.0 GiB`: one decimal below 10 units.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < KIB {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / KIB as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// Parses an octal mode: `755`, `0640`, `1777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    let m = u32::from_str_radix(t, 8)
        .map_err(|_| format!("bad mode {s:?}: expected octal, e.g. 755 or 0640"))?;
    if m > 0o7777 {
        return Err(format!("bad mode {s:?}: at most 7777"));
    }
    Ok(m)
}

/// `drwxr-xr-x`, with `ls -l`'s letters for FIFOs (`p`) and device nodes
/// (`c`, `b`); tables show as `t`, streams as `s`, so sockets take `=`
/// (the mark `ls -F` gives them).
pub fn format_mode(kind: EntryType, mode: u32) -> String {
    let mut out = String::with_capacity(10);
    out.push(match kind {
        EntryType::Directory => 'd',
        EntryType::Symlink => 'l',
        EntryType::Table => 't',
        EntryType::Stream => 's',
        EntryType::Fifo => 'p',
        EntryType::Socket => '=',
        EntryType::CharDevice => 'c',
        EntryType::BlockDevice => 'b',
        EntryType::File | EntryType::Unspecified => '-',
    });
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, who) in [6u32, 3, 0].iter().enumerate() {
        let bits = (mode >> who) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        let (flag, lower, upper) = special[i];
        out.push(match (mode & flag != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    out
}

/// Lowercase name of an entry type, as JSON and `stat` show it.
pub fn type_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Directory => "directory",
        EntryType::File => "file",
        EntryType::Symlink => "symlink",
        EntryType::Table => "table",
        EntryType::Stream => "stream",
        EntryType::Fifo => "fifo",
        EntryType::Socket => "socket",
        EntryType::CharDevice => "char_device",
        EntryType::BlockDevice => "block_device",
        EntryType::Unspecified => "unknown",
    }
}

/// Whether entries of `kind` are device nodes (their `rdev` names a device).
pub fn is_device(kind: EntryType) -> bool {
    matches!(kind, EntryType::CharDevice | EntryType::BlockDevice)
}

/// A device number as `ls -l` shows it: `major, minor`.
pub fn format_device(rdev: u64) -> String {
    format!("{}, {}", libc::major(rdev), libc::minor(rdev))
}

/// Nanoseconds since the epoch as RFC 3339 UTC, second precision.
pub fn format_time_ns(ns: i64) -> String {
    let t = if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    };
    format_system_time(t)
}

/// Seconds since the epoch as RFC 3339 UTC; 0 shows as `never`.
pub fn format_time_secs(secs: i64) -> String {
    if secs == 0 {
        return "never".into();
    }
    format_time_ns(secs.saturating_mul(1_000_000_000))
}

fn format_system_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Column alignment in a [`Table`].
#[derive(Clone, Copy, PartialEq)]
pub enum Align {
    Left,
    Right,
}

/// An aligned text table: two spaces between columns, the last column not
/// padded. Headers are upper case, as in `docker ps`.
pub struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            align: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    /// A table without a header line (as `ls -l` prints).
    pub fn headless(align: &[Align]) -> Table {
        Table {
            headers: Vec::new(),
            align: align.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.align.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.align.len();
        let mut widths = vec![0usize; n];
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header)
            .filter(|h| !h.is_empty())
            .chain(&self.rows)
        {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header)
            .filter(|h| !h.is_empty())
            .chain(&self.rows)
        {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(n) {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                let last = i + 1 == n;
                match self.align[i] {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if !last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Prints pretty JSON followed by a newline.
pub fn print_json(v: &Value) {
    // Serializing a `Value` cannot fail.
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn entry_json(e: &Entry) -> Value {
    json!({
        "path": e.path,
        "name": e.name,
        "type": type_name(e.r#type()),
        "volume_id": e.volume_id,
        "inode": e.inode,
        "mode": format!("{:04o}", e.mode),
        "mode_string": format_mode(e.r#type(), e.mode),
        "uid": e.uid,
        "gid": e.gid,
        "size": e.size,
        "nlink": e.nlink,
        "atime": format_time_ns(e.atime_ns),
        "mtime": format_time_ns(e.mtime_ns),
        "ctime": format_time_ns(e.ctime_ns),
        "atime_ns": e.atime_ns,
        "mtime_ns": e.mtime_ns,
        "ctime_ns": e.ctime_ns,
        "symlink_target": e.symlink_target,
        "volume_root": e.volume_root,
        "volume_path": e.volume_path,
        "rdev": e.rdev,
        "rdev_major": libc::major(e.rdev),
        "rdev_minor": libc::minor(e.rdev),
    })
}

pub fn volume_json(v: &Volume) -> Value {
    json!({
        "id": v.id,
        "path": v.path,
        "replication": v.replication,
        "effective_replication": v.effective_replication,
        "quota_bytes": v.quota_bytes,
        "used_bytes": v.used_bytes,
        "read_ace": v.read_ace,
        "write_ace": v.write_ace,
        "shard_id": v.shard_id,
        "replicas": v.replicas,
        "leader": v.leader,
        "created": format_time_ns(v.created_ns),
        "created_ns": v.created_ns,
        "root_inode": v.root_inode,
        "entries": v.entries,
        "prefer_leader": v.prefer_leader,
    })
}

/// `key: value` lines with the keys padded to one width.
pub fn print_fields(fields: &[(&str, String)]) {
    let w = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        println!("{:<w$}  {v}", format!("{k}:"), w = w + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("10G"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_size("512 MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_size("1.5GiB"), Ok(1536 * 1024 * 1024));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("2tb"), Ok(2_000_000_000_000));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.2.3M").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999P").is_err());
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(10 * 1024 * 1024), "10 MiB");
        assert_eq!(format_size(512 * 1024 * 1024), "512 MiB");
        assert_eq!(format_size(1024 * 1024 * 1024), "1.0 GiB");
        assert_eq!(format_size(u64::MAX), "16 EiB");
    }

    #[test]
    fn sizes_round_trip() {
        for b in [1u64, 1000, 4096, 10 << 20, 3 << 30, 5 << 40] {
            let text = format_size(b);
            let back = parse_size(&text).unwrap();
            let err = (back as f64 - b as f64).abs() / b as f64;
            assert!(err < 0.05, "{b} -> {text} -> {back}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("1777"), Ok(0o1777));
        assert!(parse_mode("888").is_err());
        assert!(parse_mode("17777").is_err());
        assert!(parse_mode("u+x").is_err());
        assert_eq!(format_mode(EntryType::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(format_mode(EntryType::File, 0o644), "-rw-r--r--");
        assert_eq!(format_mode(EntryType::Symlink, 0o777), "lrwxrwxrwx");
        assert_eq!(format_mode(EntryType::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(format_mode(EntryType::File, 0o6644), "-rwSr-Sr--");
        assert_eq!(format_mode(EntryType::Table, 0o4755), "trwsr-xr-x");
        assert_eq!(format_mode(EntryType::Fifo, 0o644), "prw-r--r--");
        assert_eq!(format_mode(EntryType::Socket, 0o755), "=rwxr-xr-x");
        assert_eq!(format_mode(EntryType::CharDevice, 0o600), "crw-------");
        assert_eq!(format_mode(EntryType::BlockDevice, 0o660), "brw-rw----");
        assert_eq!(format_device(libc::makedev(8, 1)), "8, 1");
        assert_eq!(format_device(libc::makedev(259, 70000)), "259, 70000");
    }

    #[test]
    fn times() {
        assert_eq!(format_time_ns(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_time_ns(1_700_000_000_500_000_000),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(format_time_secs(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_time_secs(0), "never");
    }

    #[test]
    fn table_alignment() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("SIZE", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1 B".into(), "".into()]);
        t.row(vec!["longer".into(), "10 KiB".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "NAME      SIZE  NOTE\na          1 B\nlonger  10 KiB  x\n"
        );
    }
}
