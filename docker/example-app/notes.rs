//! `notes`: the example application of the berth-client image. It knows
//! nothing about Berth: it reads and writes ordinary files under
//! `$BERTH_MOUNT` (default `/berth`), which the image's entrypoint has
//! mounted from the cluster. Standard library only, so it builds with a
//! bare `rustc` and runs on the image's libc.
//!
//! Relative paths are taken under `$BERTH_MOUNT`; absolute paths as they
//! are (e.g. a Docker volume at /data). Errors: one line on stderr, exit 1.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

extern "C" {
    fn getuid() -> u32;
    fn getgid() -> u32;
}

const USAGE: &str = "\
usage: notes COMMAND
  demo                 append a visit to visits.log and print the log (default)
  write FILE TEXT...   create or replace FILE with TEXT (parent directories too)
  append FILE TEXT...  append TEXT as one line
  cat FILE             print FILE
  ls [DIR]             list DIR (default: the mount)
  stat FILE            print size, mode, uid and gid
  id                   print the process's uid and gid and the BERTH_*, KAFKA_* and
                       KCAT_CONFIG settings
  sleep SECONDS        sleep (to try signal forwarding)
  exit CODE            exit with CODE
  --version";

fn base() -> PathBuf {
    PathBuf::from(std::env::var("BERTH_MOUNT").unwrap_or_else(|_| "/berth".into()))
}

fn resolve(p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base().join(p)
    }
}

fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid cannot fail.
    unsafe { (getuid(), getgid()) }
}

fn text(words: &[String]) -> String {
    words.join(" ")
}

fn run(args: &[String]) -> Result<(), String> {
    let fail =
        |op: &str, path: &PathBuf, e: std::io::Error| format!("{op} {}: {e}", path.display());
    let cmd = args.first().map(String::as_str).unwrap_or("demo");
    match (cmd, &args[1.min(args.len())..]) {
        ("--version", _) => println!("notes 1"),
        ("demo", _) => {
            let (uid, gid) = ids();
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let log = resolve("visits.log");
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| fail("open", &log, e))?;
            writeln!(f, "{now} host={} uid={uid} gid={gid}", host.trim())
                .map_err(|e| fail("write", &log, e))?;
            f.sync_all().map_err(|e| fail("fsync", &log, e))?;
            drop(f);
            let all = std::fs::read_to_string(&log).map_err(|e| fail("read", &log, e))?;
            print!("{all}");
        }
        ("write", [file, words @ ..]) | ("append", [file, words @ ..]) => {
            let path = resolve(file);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| fail("mkdir -p", &dir.to_path_buf(), e))?;
            }
            let mut o = std::fs::OpenOptions::new();
            if cmd == "write" {
                o.write(true).create(true).truncate(true);
            } else {
                o.append(true).create(true);
            }
            let mut f = o.open(&path).map_err(|e| fail("open", &path, e))?;
            writeln!(f, "{}", text(words)).map_err(|e| fail("write", &path, e))?;
            f.sync_all().map_err(|e| fail("fsync", &path, e))?;
            let (uid, gid) = ids();
            println!("wrote {} as uid {uid} gid {gid}", path.display());
        }
        ("cat", [file]) => {
            let path = resolve(file);
            let data = std::fs::read(&path).map_err(|e| fail("read", &path, e))?;
            std::io::stdout()
                .write_all(&data)
                .map_err(|e| format!("stdout: {e}"))?;
        }
        ("ls", rest) if rest.len() <= 1 => {
            let path = rest.first().map(|d| resolve(d)).unwrap_or_else(base);
            let mut names: Vec<String> = std::fs::read_dir(&path)
                .map_err(|e| fail("list", &path, e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
        ("stat", [file]) => {
            use std::os::unix::fs::MetadataExt;
            let path = resolve(file);
            let m = std::fs::metadata(&path).map_err(|e| fail("stat", &path, e))?;
            println!(
                "{} size={} mode={:o} uid={} gid={}",
                path.display(),
                m.len(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            );
        }
        ("id", []) => {
            let (uid, gid) = ids();
            println!("uid={uid} gid={gid}");
            let mut vars: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| {
                    (k.starts_with("BERTH_") || k.starts_with("KAFKA_") || k == "KCAT_CONFIG")
                        && k != "BERTH_TICKET"
                })
                .collect();
            vars.sort();
            for (k, v) in vars {
                println!("{k}={v}");
            }
        }
        ("sleep", [secs]) => {
            let s: u64 = secs
                .parse()
                .map_err(|_| format!("sleep: bad number {secs:?}"))?;
            std::thread::sleep(std::time::Duration::from_secs(s));
        }
        ("exit", [code]) => {
            let c: i32 = code
                .parse()
                .map_err(|_| format!("exit: bad number {code:?}"))?;
            std::process::exit(c);
        }
        _ => return Err(format!("bad arguments {args:?}\n{USAGE}")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notes: {e}");
            ExitCode::FAILURE
        }
    }
}
