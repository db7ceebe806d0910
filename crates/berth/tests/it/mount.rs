//! `berth mount` / `berth umount`: the FUSE client exercised with plain
//! `std::fs` calls against a real server. Skipped (with a line on stderr)
//! where /dev/fuse or fusermount3 is missing. Every wait is bounded: file
//! system calls run on a helper thread, and a hung mount is killed, which
//! makes the kernel fail the stuck calls.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::harness::{TestServer, BIN};

/// How long a mount may take to appear.
const MOUNT_TIMEOUT_S: u64 = 30;
/// How long one batch of file system calls may take.
const CALLS_TIMEOUT_S: u64 = 180;
/// How long the mount process may take to exit after SIGTERM or umount.
const EXIT_TIMEOUT_S: u64 = 30;

pub(crate) fn fuse_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipping the mount test: /dev/fuse is absent");
        return false;
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("skipping the mount test: fusermount3 not found (Debian package fuse3)");
        return false;
    }
    true
}

fn is_mounted(mp: &Path) -> bool {
    matches!(berth_fuse::berth_mount_at(mp), Ok(Some(_)))
}

pub(crate) fn errno(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => panic!("expected an error, got success"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

fn wait_until(what: &str, timeout_s: u64, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    while !ok() {
        if Instant::now() > deadline {
            eprintln!("{what}: not after {timeout_s} s");
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A `berth mount --foreground` child process; killed and lazily unmounted
/// on drop so a failing test leaves no mount behind.
pub(crate) struct Mount {
    child: Option<Child>,
    mp: PathBuf,
    log: PathBuf,
}

impl Mount {
    pub(crate) fn start(s: &TestServer, mp: &Path, extra: &[&str]) -> Mount {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(s.dir.path().join("work"))
            .env("HOME", &s.home)
            .env("BERTH_SERVERS", format!("127.0.0.1:{}", s.native_port))
            .env("BERTH_TICKET_FILE", s.admin_ticket())
            .env("BERTH_CA_FILE", s.data.join("tls").join("ca.crt"));
        Mount::spawn(cmd, mp, extra, s.dir.path().join("mount.stderr.log"))
    }

    /// A mount of a cluster no [`TestServer`] runs (containers, say): `env`
    /// names the servers, the ticket, the CA and HOME; its stderr goes to
    /// `log`.
    pub(crate) fn start_with(mp: &Path, env: &[(&str, &OsStr)], log: PathBuf) -> Mount {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("BERTH_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        Mount::spawn(cmd, mp, &[], log)
    }

    fn spawn(mut cmd: Command, mp: &Path, extra: &[&str], log: PathBuf) -> Mount {
        for k in [
            "BERTH_TICKET",
            "BERTH_INSECURE",
            "BERTH_DATA_DIR",
            "RUST_BACKTRACE",
        ] {
            cmd.env_remove(k);
        }
        cmd.arg("mount")
            .arg(mp)
            .arg("--foreground")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("mount log"));
        let child = cmd.spawn().expect("spawn berth mount");
        let mut m = Mount {
            child: Some(child),
            mp: mp.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(MOUNT_TIMEOUT_S);
        while !is_mounted(mp) {
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("berth mount exited ({st}) before mounting\n{}", m.log());
            }
            assert!(
                Instant::now() < deadline,
                "not mounted after {MOUNT_TIMEOUT_S} s\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub(crate) fn log(&self) -> String {
        format!(
            "--- berth mount stderr ---\n{}",
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("mount process running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(EXIT_TIMEOUT_S);
        loop {
            if let Some(st) = child.try_wait().expect("wait for berth mount") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "berth mount still running {EXIT_TIMEOUT_S} s after SIGTERM\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        lazy_unmount(&self.mp);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lazy_unmount(mp: &Path) {
    if is_mounted(mp) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "-q", "--"])
            .arg(mp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `f` on a helper thread; a hang past [`CALLS_TIMEOUT_S`] kills the
/// mount (failing the stuck calls) and fails the test.
pub(crate) fn bounded<F: FnOnce() + Send + 'static>(what: &str, m: &mut Mount, f: F) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(CALLS_TIMEOUT_S)) {
        Ok(()) => h.join().expect("helper thread"),
        Err(RecvTimeoutError::Disconnected) => {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(RecvTimeoutError::Timeout) => {
            let log = m.log();
            m.kill();
            panic!("{what}: file system calls hung for {CALLS_TIMEOUT_S} s\n{log}");
        }
    }
}

pub(crate) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// POSIX calls through a foreground mount of the whole namespace.
fn exercise(mp: PathBuf) {
    let d = mp.join("dir");
    fs::create_dir(&d).unwrap();
    // Create, write, read back; ls; sizes and modes.
    fs::write(d.join("a.txt"), b"hello berth").unwrap();
    assert_eq!(fs::read(d.join("a.txt")).unwrap(), b"hello berth");
    assert_eq!(names(&d), ["a.txt"]);
    let m = fs::metadata(d.join("a.txt")).unwrap();
    assert!(m.is_file());
    assert_eq!(m.len(), 11);
    assert!(fs::metadata(&d).unwrap().is_dir());
    fs::set_permissions(d.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let mode = fs::metadata(d.join("a.txt")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    // An explicit modification time sticks on a written file (touch -d,
    // cp -p, tar, rsync -t), and a later write moves it on again.
    let past = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let f = OpenOptions::new()
        .write(true)
        .open(d.join("a.txt"))
        .unwrap();
    f.set_modified(past).unwrap();
    drop(f);
    assert_eq!(
        fs::metadata(d.join("a.txt")).unwrap().modified().unwrap(),
        past
    );
    // Mode 0 is mode 0 (not "the default"), for files and directories.
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o0)
            .open(d.join("zero"))
            .unwrap();
        drop(f);
        let m = fs::metadata(d.join("zero")).unwrap().permissions().mode();
        assert_eq!(m & 0o7777, 0);
        fs::DirBuilder::new()
            .mode(0o0)
            .create(d.join("zdir"))
            .unwrap();
        let m = fs::metadata(d.join("zdir")).unwrap().permissions().mode();
        assert_eq!(m & 0o7777, 0);
        fs::remove_file(d.join("zero")).unwrap();
        fs::remove_dir(d.join("zdir")).unwrap();
    }
    // Rename, then rename over an existing file.
    fs::rename(d.join("a.txt"), d.join("b.txt")).unwrap();
    assert_eq!(errno(fs::metadata(d.join("a.txt"))), libc::ENOENT);
    fs::write(d.join("c.txt"), b"ccc").unwrap();
    fs::rename(d.join("b.txt"), d.join("c.txt")).unwrap();
    assert_eq!(fs::read(d.join("c.txt")).unwrap(), b"hello berth");
    assert_eq!(names(&d), ["c.txt"]);
    // Symbolic links.
    symlink("c.txt", d.join("link")).unwrap();
    assert_eq!(
        fs::read_link(d.join("link")).unwrap(),
        PathBuf::from("c.txt")
    );
    assert!(fs::symlink_metadata(d.join("link")).unwrap().is_symlink());
    assert_eq!(fs::read(d.join("link")).unwrap(), b"hello berth");
    // Truncation, and appending through an open handle with fsync.
    let f = OpenOptions::new()
        .write(true)
        .open(d.join("c.txt"))
        .unwrap();
    f.set_len(5).unwrap();
    drop(f);
    let mut f = OpenOptions::new()
        .append(true)
        .open(d.join("c.txt"))
        .unwrap();
    f.write_all(b"!").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(d.join("c.txt")).unwrap(), b"hello!");
    // The errno of failures.
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/x"), b"x").unwrap();
    assert_eq!(errno(fs::metadata(d.join("missing"))), libc::ENOENT);
    assert_eq!(errno(fs::create_dir(&d)), libc::EEXIST);
    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(d.join("c.txt"));
    assert_eq!(errno(excl), libc::EEXIST);
    assert_eq!(errno(fs::create_dir(d.join("c.txt/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_dir(d.join("c.txt"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(d.join("sub"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_dir(d.join("sub"))), libc::ENOTEMPTY);
    // Hard links share data and count links.
    fs::hard_link(d.join("c.txt"), d.join("hard")).unwrap();
    assert_eq!(
        fs::read(d.join("hard")).unwrap(),
        fs::read(d.join("c.txt")).unwrap()
    );
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(d.join("hard")).unwrap().nlink(), 2);
    }
    assert_eq!(
        errno(fs::hard_link(d.join("sub"), d.join("dirlink"))),
        libc::EPERM
    );
    fs::remove_file(d.join("hard")).unwrap();
    // Extended attributes.
    let file = std::ffi::CString::new(d.join("c.txt").to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("user.color").unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::setxattr(file.as_ptr(), name.as_ptr(), b"blue".as_ptr().cast(), 4, 0) };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    let mut buf = [0u8; 64];
    // SAFETY: as above.
    let n = unsafe {
        libc::getxattr(
            file.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n as usize], b"blue");
    // SAFETY: as above.
    let n = unsafe { libc::listxattr(file.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"user.color\0");
    let missing = std::ffi::CString::new("user.none").unwrap();
    // SAFETY: as above.
    let n = unsafe {
        libc::getxattr(
            file.as_ptr(),
            missing.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::removexattr(file.as_ptr(), name.as_ptr()) },
        0
    );
    // A 5 MiB file, byte-identical after the round trip.
    let big = pattern(5 << 20);
    fs::write(mp.join("big"), &big).unwrap();
    assert_eq!(fs::metadata(mp.join("big")).unwrap().len(), 5 << 20);
    let back = fs::read(mp.join("big")).unwrap();
    assert!(back == big, "5 MiB file differs after the round trip");
    // statfs answers from the volume.
    let c = std::ffi::CString::new(mp.to_str().unwrap()).unwrap();
    // SAFETY: `st` is a plain C struct that statvfs fills; `c` is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_bsize > 0);
    // A file unlinked while open stays usable through its handle until the
    // last close (temp-file pattern), then disappears.
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut t = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.join("tmpfile"))
            .unwrap();
        t.write_all(b"scratch").unwrap();
        fs::remove_file(d.join("tmpfile")).unwrap();
        assert!(!d.join("tmpfile").exists());
        t.write_all(b" more").unwrap();
        t.seek(SeekFrom::Start(0)).unwrap();
        let mut back = String::new();
        t.read_to_string(&mut back).unwrap();
        assert_eq!(back, "scratch more");
        drop(t);
        // The kernel sends RELEASE after close(2) returns: poll, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while names(&d).iter().any(|n| n.starts_with(".berth-unlinked")) {
            assert!(
                std::time::Instant::now() < deadline,
                "hidden file not removed after the last close: {:?}",
                names(&d)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    // Unlink and rmdir.
    fs::remove_file(d.join("link")).unwrap();
    fs::remove_file(d.join("sub/x")).unwrap();
    fs::remove_dir(d.join("sub")).unwrap();
    assert_eq!(names(&d), ["c.txt"]);
    // Left for the read-only mount below.
    fs::create_dir(mp.join("ro")).unwrap();
    fs::write(mp.join("ro/keep.txt"), b"kept").unwrap();
}

#[test]
fn mount_serves_posix_files() {
    if !fuse_available() {
        return;
    }
    let s = TestServer::start();
    let mp = s.dir.path().join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    let mut m = Mount::start(&s, &mp, &[]);
    let at = mp.clone();
    bounded("posix calls", &mut m, move || exercise(at));
    // What the mount wrote is in the cluster.
    assert_eq!(s.json(&["stat", "/big"])["size"], 5 << 20);
    assert_eq!(s.json(&["stat", "/dir/c.txt"])["mode"], "0600");
    // SIGTERM unmounts cleanly.
    let st = m.terminate();
    assert!(st.success(), "berth mount exited with {st}\n{}", m.log());
    assert!(!is_mounted(&mp), "still mounted after SIGTERM");

    // In the background, read-only, a subtree; `berth umount` ends it.
    let ro = s.dir.path().join("ro-mnt");
    fs::create_dir_all(&ro).unwrap();
    let ro = ro.canonicalize().unwrap();
    let ro_arg = ro.to_str().unwrap();
    let out = s.ok(&["mount", ro_arg, "--path", "/ro", "--read-only"]);
    assert!(out.contains("mounted"), "{out}");
    assert!(is_mounted(&ro));
    let pid: u32 = out
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    let mut guard = Mount {
        child: None,
        mp: ro.clone(),
        log: s.dir.path().join("none"),
    };
    let at = ro.clone();
    bounded("read-only calls", &mut guard, move || {
        assert_eq!(fs::read(at.join("keep.txt")).unwrap(), b"kept");
        assert_eq!(errno(fs::write(at.join("new"), b"x")), libc::EROFS);
        assert_eq!(errno(fs::create_dir(at.join("d"))), libc::EROFS);
        assert_eq!(errno(fs::remove_file(at.join("keep.txt"))), libc::EROFS);
        let e = fs::write(at.join("keep.txt"), b"y").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnlyFilesystem);
    });
    s.ok(&["umount", ro_arg]);
    assert!(!is_mounted(&ro));
    let gone = wait_until("background mount process exit", EXIT_TIMEOUT_S, || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|t| t.contains(") Z "))
                .unwrap_or(true)
    });
    assert!(
        gone,
        "the background mount process (pid {pid}) did not exit"
    );
    let msg = s.err_any(&["umount", ro_arg]);
    assert!(msg.contains("not a Berth mount"), "{msg}");
}

/// The options of the mount at `mp` in /proc/mounts.
fn mount_options(mp: &Path) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let at = mp.to_string_lossy();
    mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[1] == at)
        .map(|f| f[3].split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

/// `mount -o remount,ro` (as pjdfstest's EROFS cases and administrators
/// do): mount(8) hands a `fuse.berth` mount to mount.fuse3, which runs
/// `berth SOURCE MOUNTPOINT -o OPTIONS` through the shell; berth remounts,
/// the kernel refuses writes with EROFS, and `remount,rw` gives them back.
/// mount(8) runs its helper without the caller's PATH (`berth` must be in
/// the shell's default one, /usr/local/bin say), so the test calls
/// mount.fuse3 itself with mount(8)'s arguments and this build's `berth`
/// on its PATH; scripts/pjdfstest goes through mount(8). Root only.
#[test]
fn the_mount_helper_remounts_read_only_and_back() {
    if !fuse_available() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the remount test: it needs root");
        return;
    }
    let Some(helper) = ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
    else {
        eprintln!("skipping the remount test: mount.fuse3 not found (Debian package fuse3)");
        return;
    };
    let s = TestServer::start();
    let mp = s.dir.path().join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    let mut m = Mount::start(&s, &mp, &[]);
    let bin_dir = Path::new(BIN).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let remount = |how: &str| {
        // What mount(8) passes: the mount's source and its options.
        let out = Command::new(helper)
            .arg("berth:/")
            .arg(&mp)
            .args([
                "-o",
                &format!("{how},nosuid,nodev,relatime,remount,allow_other"),
            ])
            .args(["-t", "fuse.berth"])
            .env("PATH", &path)
            .output()
            .expect("run mount.fuse3");
        assert!(
            out.status.success(),
            "mount -o remount,{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let at = mp.clone();
    bounded("before the remount", &mut m, move || {
        fs::write(at.join("kept"), b"kept").unwrap();
    });
    remount("ro");
    let opts = mount_options(&mp);
    for o in ["ro", "nodev", "nosuid"] {
        assert!(opts.iter().any(|x| x == o), "{o} not in {opts:?}");
    }
    let at = mp.clone();
    bounded("read-only", &mut m, move || {
        assert_eq!(fs::read(at.join("kept")).unwrap(), b"kept");
        assert_eq!(errno(fs::write(at.join("new"), b"x")), libc::EROFS);
        assert_eq!(errno(fs::remove_file(at.join("kept"))), libc::EROFS);
        assert_eq!(errno(fs::create_dir(at.join("d"))), libc::EROFS);
    });
    remount("rw");
    let opts = mount_options(&mp);
    assert!(opts.iter().any(|x| x == "rw"), "{opts:?}");
    assert!(opts.iter().any(|x| x == "nodev"), "{opts:?}");
    let at = mp.clone();
    bounded("read-write again", &mut m, move || {
        fs::write(at.join("new"), b"x").unwrap();
        fs::remove_file(at.join("kept")).unwrap();
    });
    // A new mount through mount(8) is refused, saying what to use.
    let out = Command::new(BIN)
        .args(["berth:/", mp.to_str().unwrap(), "-o", "rw"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("berth mount"), "{err}");
    let st = m.terminate();
    assert!(st.success(), "berth mount exited with {st}\n{}", m.log());
}
