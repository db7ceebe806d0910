//! Calls by inode through a real mount: the mount names entries as the
//! kernel does (an inode and one name), so
//! - a directory chain whose full path is far longer than PATH_MAX is made
//!   and used by relative paths (openat, mkdirat, renameat, linkat,
//!   symlinkat, fchdir in a child process), and only a path argument over
//!   PATH_MAX as the caller passed it fails (the kernel's ENAMETOOLONG);
//! - renaming a directory leaves the files below it, open or not, reachable
//!   by inode, and an open file unlinked here keeps working with no link;
//! - yet reaching an entry by inode is authorized as the walk of its path
//!   would be: without search permission on a directory above it, or with
//!   a ticket scope that does not cover its path, it is refused — even
//!   through a directory the process holds open from before.
//!
//! Skipped where FUSE is unavailable.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::TestServer;
use crate::mount::{bounded, fuse_available, Mount};

/// Levels of the deep chain, and the length of each name: the chain's
/// path is about 6 KiB below the mount point.
const LEVELS: usize = 30;
const NAME_BYTES: usize = 200;
/// Longer than the attribute and entry caches of the kernel and the mount
/// (1 s): the next access asks the server again.
const PAST_TTL: Duration = Duration::from_millis(1_300);

fn cs(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// The result of a libc call returning -1 on failure, as an errno.
fn check(rc: i32) -> Result<i32, i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc)
    }
}

fn open_dir(path: &Path) -> OwnedFd {
    fs::File::open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .into()
}

/// openat(2) as an owned descriptor, or the errno.
fn openat(dir: &OwnedFd, name: &str, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    let n = cs(name);
    // SAFETY: a valid descriptor and NUL-terminated name.
    let fd =
        check(unsafe { libc::openat(dir.as_raw_fd(), n.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: openat returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mkdirat(dir: &OwnedFd, name: &str) -> Result<(), i32> {
    let n = cs(name);
    // SAFETY: as above.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) }).map(|_| ())
}

fn fstatat(dir: &OwnedFd, name: &str) -> Result<libc::stat, i32> {
    let n = cs(name);
    // SAFETY: as above; `st` is a valid out pointer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstatat(
            dir.as_raw_fd(),
            n.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ))?;
        Ok(st)
    }
}

fn fstat(fd: &OwnedFd) -> Result<libc::stat, i32> {
    // SAFETY: a valid descriptor; `st` is a valid out pointer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstat(fd.as_raw_fd(), &mut st))?;
        Ok(st)
    }
}

fn renameat(from: &OwnedFd, a: &str, to: &OwnedFd, b: &str) -> Result<(), i32> {
    let (a, b) = (cs(a), cs(b));
    // SAFETY: as above.
    check(unsafe { libc::renameat(from.as_raw_fd(), a.as_ptr(), to.as_raw_fd(), b.as_ptr()) })
        .map(|_| ())
}

fn unlinkat(dir: &OwnedFd, name: &str, flags: i32) -> Result<(), i32> {
    let n = cs(name);
    // SAFETY: as above.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), flags) }).map(|_| ())
}

fn file(fd: OwnedFd) -> fs::File {
    fs::File::from(fd)
}

fn level(i: usize) -> String {
    let head = format!("{i:02}-");
    format!("{head}{}", "x".repeat(NAME_BYTES - head.len()))
}

/// In a forked child: enters `dir` by descriptor and, by relative names
/// only, reads `name` (which must hold `want`) and makes the directory
/// `made`. Exits 0, or the errno of the first failure (100 for wrong
/// bytes). Only system calls between fork and _exit.
fn in_child(dir: &OwnedFd, name: &str, want: &[u8], made: &str) -> i32 {
    let (name, made) = (cs(name), cs(made));
    let want = want.to_vec();
    // SAFETY: the child makes system calls on memory prepared above and
    // _exits (no allocation, no locks, no destructors).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: this is the child; see above.
        unsafe {
            if libc::fchdir(dir.as_raw_fd()) != 0 {
                libc::_exit(*libc::__errno_location());
            }
            let fd = libc::open(name.as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                libc::_exit(*libc::__errno_location());
            }
            let mut buf = [0u8; 64];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 {
                libc::_exit(*libc::__errno_location());
            }
            if buf[..n as usize] != want[..] {
                libc::_exit(100);
            }
            libc::close(fd);
            if libc::mkdir(made.as_ptr(), 0o755) != 0 {
                libc::_exit(*libc::__errno_location());
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "the child died ({status:#x})");
    libc::WEXITSTATUS(status)
}

fn deep(mp: PathBuf) {
    let root = open_dir(&mp);
    fs::create_dir(mp.join("deep")).unwrap();
    let top = open_dir(&mp.join("deep"));
    // The chain, one level at a time, each made and entered relatively.
    let mut fds = vec![top];
    for i in 1..=LEVELS {
        let up = fds.last().unwrap();
        mkdirat(up, &level(i)).unwrap();
        let fd = openat(up, &level(i), libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        fds.push(fd);
    }
    let full: PathBuf = (1..=LEVELS).fold(mp.join("deep"), |p, i| p.join(level(i)));
    assert!(full.as_os_str().len() > 4096, "{}", full.as_os_str().len());
    let bottom = &fds[LEVELS];

    // A file at the bottom, and what one does with files there.
    let mut f = file(openat(bottom, "f", libc::O_CREAT | libc::O_RDWR, 0o644).unwrap());
    f.write_all(b"hello deep").unwrap();
    drop(f);
    assert_eq!(fstatat(bottom, "f").unwrap().st_size, 10);
    renameat(bottom, "f", bottom, "g").unwrap();
    let (g, hard) = (cs("g"), cs("hard"));
    // SAFETY: valid descriptors and names.
    let rc = unsafe {
        libc::linkat(
            bottom.as_raw_fd(),
            g.as_ptr(),
            bottom.as_raw_fd(),
            hard.as_ptr(),
            0,
        )
    };
    check(rc).unwrap();
    assert_eq!(fstatat(bottom, "g").unwrap().st_nlink, 2);
    let sym = cs("sym");
    // SAFETY: valid strings and descriptor.
    check(unsafe { libc::symlinkat(g.as_ptr(), bottom.as_raw_fd(), sym.as_ptr()) }).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: `buf` is valid for its length.
    let n = unsafe {
        libc::readlinkat(
            bottom.as_raw_fd(),
            sym.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n as usize], b"g");
    unlinkat(bottom, "hard", 0).unwrap();
    assert_eq!(fstatat(bottom, "g").unwrap().st_nlink, 1);
    mkdirat(bottom, "sub").unwrap();
    unlinkat(bottom, "sub", libc::AT_REMOVEDIR).unwrap();

    // Relative paths: under PATH_MAX from a deep directory they work, over
    // it the kernel refuses them as the caller passed them; the absolute
    // path is over it too.
    let rel = |from: usize| -> String {
        let mut p: Vec<String> = (from + 1..=LEVELS).map(level).collect();
        p.push("g".into());
        p.join("/")
    };
    assert!(rel(15).len() < 4096 && rel(5).len() > 4096);
    let mut got = String::new();
    file(openat(&fds[15], &rel(15), libc::O_RDONLY, 0).unwrap())
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "hello deep");
    assert_eq!(
        openat(&fds[5], &rel(5), libc::O_RDONLY, 0).err(),
        Some(libc::ENAMETOOLONG)
    );
    let e = fs::File::open(full.join("g")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    // A process whose working directory is the bottom uses plain names.
    assert_eq!(in_child(bottom, "g", b"hello deep", "by-child"), 0);
    assert_eq!(
        fstatat(bottom, "by-child").unwrap().st_mode & libc::S_IFMT,
        libc::S_IFDIR
    );

    // Rename a directory high in the chain while a file below it is open:
    // the open file and everything below stay reachable by inode.
    let mut open = file(openat(bottom, "g", libc::O_RDWR, 0).unwrap());
    renameat(&fds[0], &level(1), &root, "moved").unwrap();
    assert_eq!(fstatat(&fds[0], &level(1)).err(), Some(libc::ENOENT));
    std::thread::sleep(PAST_TTL);
    let fd_open = OwnedFd::from(open.try_clone().unwrap());
    assert_eq!(fstat(&fd_open).unwrap().st_size, 10);
    open.seek(SeekFrom::End(0)).unwrap();
    open.write_all(b"!").unwrap();
    assert_eq!(fstatat(bottom, "g").unwrap().st_size, 11);
    // Found again from the new name, in two hops of less than PATH_MAX.
    let moved = open_dir(&mp.join("moved"));
    let hop = |from: &OwnedFd, levels: std::ops::RangeInclusive<usize>| {
        let rel = levels.map(level).collect::<Vec<_>>().join("/");
        openat(from, &rel, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap()
    };
    let half = hop(&moved, 2..=LEVELS / 2);
    let again = hop(&half, LEVELS / 2 + 1..=LEVELS);
    assert_eq!(fstat(&again).unwrap().st_ino, fstat(bottom).unwrap().st_ino);
    let mut got = String::new();
    file(openat(&again, "g", libc::O_RDONLY, 0).unwrap())
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "hello deep!");
    assert_eq!(
        in_child(
            &fds[LEVELS - 1],
            &format!("{}/g", level(LEVELS)),
            b"hello deep!",
            "by-child-2"
        ),
        0
    );

    // Unlinked while open: no link left, still readable and writable; its
    // last close lets the server delete it.
    unlinkat(bottom, "g", 0).unwrap();
    assert_eq!(fstat(&fd_open).unwrap().st_nlink, 0);
    open.write_all(b"?").unwrap();
    std::thread::sleep(PAST_TTL);
    let st = fstat(&fd_open).unwrap();
    assert_eq!((st.st_nlink, st.st_size), (0, 12));
    let mut back = [0u8; 12];
    // SAFETY: `back` is valid for its length.
    let n = unsafe { libc::pread(open.as_raw_fd(), back.as_mut_ptr().cast(), back.len(), 0) };
    assert_eq!(&back[..n as usize], b"hello deep!?");
    assert_eq!(fstatat(bottom, "g").err(), Some(libc::ENOENT));
    drop(fd_open);
    drop(open);
}

#[test]
fn deep_relative_paths_and_moved_directories() {
    if !fuse_available() {
        return;
    }
    let s = TestServer::start();
    let mp = s.dir.path().join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    let mut m = Mount::start(&s, &mp, &[]);
    let at = mp.clone();
    bounded("deep paths by inode", &mut m, move || deep(at));
    // The cluster saw the move, and no unlinked file is left behind once
    // its last handle closed.
    let ls = s.ok(&["ls", "/"]);
    assert!(ls.contains("moved") && ls.contains("deep"), "{ls}");
    let check = s.json(&["volume", "check", "/"]);
    assert_eq!(
        check["problems"].as_array().map(Vec::len),
        Some(0),
        "{check}"
    );
    drop(m);
}

/// Issues a ticket for `principal` (with `scope`, if any) into `name`.
fn ticket(s: &TestServer, principal: &str, scope: Option<&str>, name: &str) -> PathBuf {
    let path = s.dir.path().join(name);
    let mut args = vec![
        "ticket",
        "issue",
        "--principal",
        principal,
        "--out",
        path.to_str().unwrap(),
    ];
    if let Some(scope) = scope {
        args.extend(["--scope", scope]);
    }
    s.ok(&args);
    path
}

fn mount_as(s: &TestServer, name: &str, ticket: &Path) -> (Mount, PathBuf) {
    let mp = s.dir.path().join(name);
    fs::create_dir_all(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    let m = Mount::start(s, &mp, &["--ticket-file", ticket.to_str().unwrap()]);
    (m, mp)
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected a refusal")
        .raw_os_error()
        .expect("an errno")
}

#[test]
fn inode_addresses_are_authorized_like_paths() {
    if !fuse_available() {
        return;
    }
    let s = TestServer::start();
    s.ok(&["group", "add", "staff", "--gid", "1000"]);
    s.ok(&[
        "user",
        "add",
        "alice",
        "--uid",
        "1000",
        "--group",
        "staff",
        "--service",
    ]);
    let plain = ticket(&s, "alice", None, "alice.ticket");
    let scoped = ticket(&s, "alice", Some("/shared:rw"), "scoped.ticket");
    s.ok(&["mkdir", "-p", "/shared/open/sub", "/outside"]);
    s.ok(&["chmod", "755", "/shared", "/shared/open", "/outside"]);
    s.ok(&["chmod", "777", "/shared/open/sub"]);
    let local = s.dir.path().join("f.txt");
    fs::write(&local, b"by inode\n").unwrap();
    s.ok(&["cp", local.to_str().unwrap(), "berth:/shared/open/sub/f"]);
    s.ok(&["chmod", "644", "/shared/open/sub/f"]);

    // Alice's mount: search permission on every directory above an entry,
    // also for a directory held open from before.
    let (mut m, mp) = mount_as(&s, "alice-mnt", &plain);
    let at = mp.clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    bounded("open while allowed", &mut m, move || {
        assert_eq!(
            fs::read(at.join("shared/open/sub/f")).unwrap(),
            b"by inode\n"
        );
        let held = open_dir(&at.join("shared/open/sub"));
        held_tx.send(held).unwrap();
    });
    let held = held_rx.recv().unwrap();
    s.ok(&["chmod", "700", "/shared/open"]);
    std::thread::sleep(PAST_TTL);
    let at = mp.clone();
    let held = bounded_with(&mut m, "refused by inode", held, move |held| {
        // Through the directory held open (the kernel names it by inode):
        // the server rebuilds its path and alice may not search
        // /shared/open any more.
        assert_eq!(
            openat(held, "f", libc::O_RDONLY, 0).err(),
            Some(libc::EACCES)
        );
        assert_eq!(fstat(held).err(), Some(libc::EACCES));
        assert_eq!(
            errno_of(fs::read(at.join("shared/open/sub/f"))),
            libc::EACCES
        );
    });
    s.ok(&["chmod", "755", "/shared/open"]);
    std::thread::sleep(PAST_TTL);
    let held = bounded_with(&mut m, "allowed again", held, |held| {
        let mut got = String::new();
        file(openat(held, "f", libc::O_RDONLY, 0).unwrap())
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "by inode\n");
    });
    drop(held);
    drop(m);

    // A ticket scoped to /shared: what lies elsewhere is refused, also
    // what moved out of the scope under a directory held open.
    let (mut m, mp) = mount_as(&s, "scoped-mnt", &scoped);
    let at = mp.clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    bounded("inside the scope", &mut m, move || {
        assert_eq!(errno_of(fs::read_dir(at.join("outside"))), libc::EACCES);
        fs::write(at.join("shared/open/sub/new"), b"in scope").unwrap();
        held_tx.send(open_dir(&at.join("shared/open/sub"))).unwrap();
    });
    let held = held_rx.recv().unwrap();
    s.ok(&["mv", "/shared/open/sub", "/outside/sub"]);
    std::thread::sleep(PAST_TTL);
    let at = mp.clone();
    let held = bounded_with(&mut m, "moved out of the scope", held, move |held| {
        assert_eq!(
            openat(held, "f", libc::O_RDONLY, 0).err(),
            Some(libc::EACCES)
        );
        assert_eq!(
            openat(held, "other", libc::O_CREAT | libc::O_WRONLY, 0o644).err(),
            Some(libc::EACCES)
        );
        assert_eq!(
            errno_of(fs::metadata(at.join("shared/open/sub"))),
            libc::ENOENT
        );
    });
    drop(held);
    drop(m);
    // The file written in scope is where it moved.
    assert_eq!(s.json(&["stat", "/outside/sub/new"])["size"], 8);
}

/// [`bounded`] for a closure that borrows a descriptor held across calls:
/// runs `f` on it on a helper thread and hands it back.
fn bounded_with<F>(m: &mut Mount, what: &str, fd: OwnedFd, f: F) -> OwnedFd
where
    F: FnOnce(&OwnedFd) + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    bounded(what, m, move || {
        f(&fd);
        tx.send(fd).unwrap();
    });
    rx.recv().expect("the descriptor back")
}

/// The number of inodes of the root volume, as its check counts them.
fn inodes_of_root(s: &TestServer) -> u64 {
    let check = s.json(&["volume", "check", "/"]);
    assert_eq!(
        check["problems"].as_array().map(Vec::len),
        Some(0),
        "{check}"
    );
    check["inodes"].as_u64().expect("an inode count")
}

#[test]
fn an_unlinked_open_file_lives_as_long_as_its_mount() {
    if !fuse_available() {
        return;
    }
    // Short leases: the mount must renew its kept file several times.
    let s = TestServer::start_with(&["--lock-lease-ms", "600"]);
    let mp = s.dir.path().join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    let mut m = Mount::start(&s, &mp, &[]);
    let before = inodes_of_root(&s);
    let at = mp.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    bounded("unlink while open", &mut m, move || {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(at.join("f"))
            .unwrap();
        f.write_all(b"kept").unwrap();
        f.sync_all().unwrap();
        fs::remove_file(at.join("f")).unwrap();
        // Several leases later the file is still there for its handle.
        std::thread::sleep(Duration::from_millis(2_000));
        let fd = OwnedFd::from(f.try_clone().unwrap());
        let st = fstat(&fd).unwrap();
        assert_eq!((st.st_nlink, st.st_size), (0, 4));
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!(got, "kept");
        tx.send(f).unwrap();
    });
    let f = rx.recv().unwrap();
    // Kept: one inode more than before, with no name.
    assert_eq!(inodes_of_root(&s), before + 1);
    // The mount dies with the file open: nobody renews it, and the server
    // deletes it once its lease lapsed.
    drop(m);
    drop(f);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while inodes_of_root(&s) != before {
        assert!(
            std::time::Instant::now() < deadline,
            "the unlinked file outlived its lease by 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
