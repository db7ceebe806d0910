//! Advisory locks across clients: two (or three) `berth mount`s of one
//! cluster, locking the same file with flock(2) and fcntl(2) through each.
//! Skipped where FUSE is unavailable (see `mount.rs`).

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::TestServer;
use crate::mount::{bounded, fuse_available, Mount};

/// Lease of lock sessions in these tests: short, so a killed mount's locks
/// go quickly.
const LEASE_MS: &str = "3000";
/// Longest wait for something that should happen "soon".
const SOON: Duration = Duration::from_secs(15);

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn flock(f: &File, op: i32) -> Result<(), i32> {
    // SAFETY: flock(2) on a descriptor we own.
    match unsafe { libc::flock(f.as_raw_fd(), op) } {
        0 => Ok(()),
        _ => Err(last_errno()),
    }
}

fn lock_spec(typ: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = typ as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = start;
    l.l_len = len;
    l
}

/// fcntl(F_SETLK or F_SETLKW) over `[start, start + len)` (len 0 = to EOF).
fn setlk_fd(fd: i32, typ: i32, start: i64, len: i64, wait: bool) -> Result<(), i32> {
    let l = lock_spec(typ, start, len);
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    // SAFETY: fcntl(2) with a valid struct flock.
    match unsafe { libc::fcntl(fd, cmd, &l) } {
        0 => Ok(()),
        _ => Err(last_errno()),
    }
}

fn setlk(f: &File, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    setlk_fd(f.as_raw_fd(), typ, start, len, false)
}

/// F_GETLK: (type, start, len, pid) of a lock that blocks `typ` over the
/// range, or type F_UNLCK.
fn getlk(f: &File, typ: i32, start: i64, len: i64) -> (i32, i64, i64, i32) {
    let mut l = lock_spec(typ, start, len);
    // SAFETY: fcntl(2) with a valid struct flock it fills in.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut l) };
    assert_eq!(rc, 0, "F_GETLK: errno {}", last_errno());
    (i32::from(l.l_type), l.l_start, l.l_len, l.l_pid)
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Retries `f` until it succeeds, bounded by [`SOON`].
fn eventually(what: &str, mut f: impl FnMut() -> Result<(), i32>) {
    let deadline = Instant::now() + SOON;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{what}: still failing with errno {e} after {SOON:?}"),
        }
    }
}

/// A forked child that takes a POSIX write lock over `[start, start+len)`
/// through `fd` and then waits to be killed. Returns its pid once it holds
/// the lock.
fn child_holding_lock(fd: i32, start: i64, len: i64) -> libc::pid_t {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe(2) fills the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let l = lock_spec(libc::F_WRLCK, start, len);
    // SAFETY: the child only makes async-signal-safe calls (fcntl, write,
    // pause, _exit) before it dies.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: errno {}", last_errno());
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let ok: u8 = if libc::fcntl(fd, libc::F_SETLK, &l) == 0 {
                1
            } else {
                0
            };
            libc::write(pipe[1], (&ok as *const u8).cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    let mut ok = 0u8;
    // SAFETY: reading one byte into a one-byte buffer; closing our pipe ends.
    unsafe {
        libc::close(pipe[1]);
        assert_eq!(libc::read(pipe[0], (&mut ok as *mut u8).cast(), 1), 1);
        libc::close(pipe[0]);
    }
    assert_eq!(ok, 1, "the child could not take its lock");
    pid
}

fn kill_child(pid: libc::pid_t) {
    // SAFETY: kill(2) and waitpid(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

fn mount_dir(s: &TestServer, name: &str) -> PathBuf {
    let mp = s.dir.path().join(name);
    fs::create_dir_all(&mp).unwrap();
    mp.canonicalize().unwrap()
}

fn flock_across_mounts(a: &Path, b: &Path) {
    fs::write(a.join("f"), b"locked").unwrap();
    let fa = rw(&a.join("f"));
    let fb = rw(&b.join("f"));
    let (ex_nb, sh_nb) = (libc::LOCK_EX | libc::LOCK_NB, libc::LOCK_SH | libc::LOCK_NB);
    // Exclusive in A keeps B out, shared or exclusive.
    flock(&fa, libc::LOCK_EX).unwrap();
    assert_eq!(flock(&fb, ex_nb), Err(libc::EWOULDBLOCK));
    assert_eq!(flock(&fb, sh_nb), Err(libc::EWOULDBLOCK));
    // Released, B gets in.
    flock(&fa, libc::LOCK_UN).unwrap();
    flock(&fb, ex_nb).unwrap();
    assert_eq!(flock(&fa, sh_nb), Err(libc::EWOULDBLOCK));
    flock(&fb, libc::LOCK_UN).unwrap();
    // Shared locks coexist; an upgrade conflicts with the other's.
    flock(&fa, libc::LOCK_SH).unwrap();
    flock(&fb, sh_nb).unwrap();
    assert_eq!(flock(&fa, ex_nb), Err(libc::EWOULDBLOCK));
    flock(&fb, libc::LOCK_UN).unwrap();
    flock(&fa, ex_nb).unwrap();
    // flock is kept as a whole-file record lock (as Linux NFS does), so
    // it conflicts with fcntl locks of others.
    assert_eq!(setlk(&fb, libc::F_WRLCK, 0, 0), Err(libc::EAGAIN));
    // Closing A's file releases its flock.
    drop(fa);
    eventually("flock after the holder closed", || flock(&fb, ex_nb));
    flock(&fb, libc::LOCK_UN).unwrap();
}

fn fcntl_across_mounts(a: &Path, b: &Path) {
    fs::write(a.join("g"), vec![0u8; 1000]).unwrap();
    let fa = rw(&a.join("g"));
    let fb = rw(&b.join("g"));
    // Overlapping ranges conflict; disjoint ones do not.
    setlk(&fa, libc::F_WRLCK, 0, 100).unwrap();
    assert_eq!(setlk(&fb, libc::F_WRLCK, 50, 100), Err(libc::EAGAIN));
    assert_eq!(setlk(&fb, libc::F_RDLCK, 99, 1), Err(libc::EAGAIN));
    setlk(&fb, libc::F_WRLCK, 100, 10).unwrap();
    // F_GETLK names the holder's range (its pid is on another host: 0).
    assert_eq!(getlk(&fb, libc::F_WRLCK, 0, 0), (libc::F_WRLCK, 0, 100, 0));
    assert_eq!(getlk(&fb, libc::F_RDLCK, 500, 10).0, libc::F_UNLCK);
    // Shared locks coexist; a split of A's own lock leaves the rest held.
    setlk(&fa, libc::F_RDLCK, 200, 100).unwrap();
    setlk(&fb, libc::F_RDLCK, 250, 100).unwrap();
    setlk(&fa, libc::F_UNLCK, 40, 20).unwrap();
    setlk(&fb, libc::F_WRLCK, 40, 20).unwrap();
    assert_eq!(setlk(&fb, libc::F_WRLCK, 39, 1), Err(libc::EAGAIN));
    assert_eq!(setlk(&fb, libc::F_WRLCK, 60, 1), Err(libc::EAGAIN));
    assert_eq!(
        getlk(&fb, libc::F_WRLCK, 0, 50),
        (libc::F_WRLCK, 0, 40, 0),
        "the first part of the split lock"
    );

    // A blocking F_SETLKW in B completes once A releases.
    let (tx, rx) = mpsc::channel();
    let fd_b = fb.as_raw_fd();
    let waiter = std::thread::spawn(move || {
        let r = setlk_fd(fd_b, libc::F_WRLCK, 0, 10, true);
        let _ = tx.send(r);
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        rx.try_recv().is_err(),
        "F_SETLKW returned while the range was locked"
    );
    setlk(&fa, libc::F_UNLCK, 0, 40).unwrap();
    let r = rx
        .recv_timeout(SOON)
        .expect("F_SETLKW did not complete after the release");
    assert_eq!(r, Ok(()));
    waiter.join().unwrap();
    assert_eq!(
        getlk(&fa, libc::F_RDLCK, 0, 10),
        (libc::F_WRLCK, 0, 10, 0),
        "B holds what it waited for"
    );

    // A lock of another process on the same mount reports its pid, and
    // goes when that process dies (its descriptors are closed).
    let child = child_holding_lock(fa.as_raw_fd(), 600, 10);
    assert_eq!(setlk(&fb, libc::F_WRLCK, 605, 1), Err(libc::EAGAIN));
    assert_eq!(
        getlk(&fa, libc::F_WRLCK, 600, 1),
        (libc::F_WRLCK, 600, 10, child)
    );
    kill_child(child);
    eventually("the range of a killed process", || {
        setlk(&fb, libc::F_WRLCK, 605, 1)
    });

    // Closing any descriptor of the file releases the process's locks on it
    // (POSIX), here those A took through `fa`.
    let other = rw(&a.join("g"));
    assert_eq!(setlk(&fb, libc::F_WRLCK, 200, 1), Err(libc::EAGAIN));
    drop(other);
    setlk(&fb, libc::F_WRLCK, 200, 50).unwrap();

    // An open file description's own lock (F_OFD_SETLK) outlives the close
    // of the process's other descriptors and goes with its own last close.
    let ofd = rw(&a.join("g"));
    let l = lock_spec(libc::F_WRLCK, 700, 10);
    // SAFETY: fcntl(2) with a valid struct flock (l_pid 0, as OFD needs).
    assert_eq!(
        unsafe { libc::fcntl(ofd.as_raw_fd(), libc::F_OFD_SETLK, &l) },
        0
    );
    assert_eq!(setlk(&fb, libc::F_WRLCK, 705, 1), Err(libc::EAGAIN));
    drop(rw(&a.join("g")));
    assert_eq!(setlk(&fb, libc::F_WRLCK, 705, 1), Err(libc::EAGAIN));
    drop(ofd);
    eventually("the range of a closed OFD lock", || {
        setlk(&fb, libc::F_WRLCK, 705, 1)
    });
    drop(fa);
    drop(fb);
}

#[test]
fn locks_hold_across_mounts() {
    if !fuse_available() {
        return;
    }
    let s = TestServer::start_with(&["--lock-lease-ms", LEASE_MS]);
    let (a, b, c) = (
        mount_dir(&s, "mnt-a"),
        mount_dir(&s, "mnt-b"),
        mount_dir(&s, "mnt-c"),
    );
    let mut ma = Mount::start(&s, &a, &[]);
    let _mb = Mount::start(&s, &b, &[]);
    let mc = Mount::start(&s, &c, &[]);
    let (a2, b2) = (a.clone(), b.clone());
    bounded("flock", &mut ma, move || flock_across_mounts(&a2, &b2));
    let (a2, b2) = (a.clone(), b.clone());
    bounded("fcntl", &mut ma, move || fcntl_across_mounts(&a2, &b2));

    // A mount that dies holding locks: they go when its lease runs out.
    bounded("lease", &mut ma, move || {
        fs::write(c.join("h"), b"h").unwrap();
        fs::write(c.join("h2"), b"h2").unwrap();
        let fc = rw(&c.join("h"));
        let fc2 = rw(&c.join("h2"));
        let fb = rw(&b.join("h"));
        let fb2 = rw(&b.join("h2"));
        // (A flock is a record lock of its open file description here, as
        // on NFS, so it would conflict with this process's own fcntl lock
        // on the same file: one file each.)
        setlk(&fc, libc::F_WRLCK, 0, 0).unwrap();
        flock(&fc2, libc::LOCK_EX).unwrap();
        assert_eq!(setlk(&fb, libc::F_RDLCK, 0, 1), Err(libc::EAGAIN));
        assert_eq!(
            flock(&fb2, libc::LOCK_SH | libc::LOCK_NB),
            Err(libc::EWOULDBLOCK)
        );
        let killed = Instant::now();
        drop(mc); // SIGKILL: no unmount, no unlock
        eventually("fcntl after the holder's mount died", || {
            setlk(&fb, libc::F_WRLCK, 0, 0)
        });
        eventually("flock after the holder's mount died", || {
            flock(&fb2, libc::LOCK_EX | libc::LOCK_NB)
        });
        let waited = killed.elapsed();
        assert!(
            waited < SOON,
            "locks of a dead mount lasted {waited:?} (lease {LEASE_MS} ms)"
        );
        drop(fc); // its mount is gone: the close fails quietly
        drop(fc2);
    });
}

#[test]
fn locks_lost_with_a_server_restart_are_reported() {
    if !fuse_available() {
        return;
    }
    let mut s = TestServer::start();
    let a = mount_dir(&s, "mnt");
    let mut m = Mount::start(&s, &a, &[]);
    let (tx, rx) = mpsc::channel();
    let at = a.clone();
    bounded("lock", &mut m, move || {
        fs::write(at.join("f"), b"f").unwrap();
        let f = rw(&at.join("f"));
        setlk(&f, libc::F_WRLCK, 0, 10).unwrap();
        tx.send(f).unwrap();
    });
    let f = rx.recv().unwrap();
    // The server forgets every lock session.
    s.restart();
    let at = a.clone();
    bounded("after restart", &mut m, move || {
        // The owner that held locks hears that they are gone...
        assert_eq!(setlk(&f, libc::F_WRLCK, 20, 10), Err(libc::EIO));
        assert_eq!(setlk(&f, libc::F_UNLCK, 0, 0), Ok(()));
        assert_eq!(setlk(&f, libc::F_WRLCK, 20, 10), Err(libc::EIO));
        // ...until it closes the file; then it locks again (new session).
        drop(f);
        let f = rw(&at.join("f"));
        setlk(&f, libc::F_WRLCK, 0, 10).unwrap();
        setlk(&f, libc::F_UNLCK, 0, 0).unwrap();
        flock(&f, libc::LOCK_EX).unwrap();
    });
}
