//! The POSIX behaviour suite as unprivileged uids: `berth mount
//! --allow-other`, mounted by root, used by forked processes that drop to
//! other uids/gids (setgroups, setgid, setuid), as a container or a second
//! local user would.
//!
//! With the admin ticket the server allows everything, so every decision is
//! the kernel's on the attributes the mount reports (and the mount gives
//! what a process creates to that process), and the mount must
//! behave exactly like a local file system: the same script runs on a
//! directory of this host's own file system (the model) and through the
//! mount, and every outcome (success or errno), owner, mode, content and the
//! final tree must be the same. Most steps also state the outcome POSIX
//! gives, so a surprising model fails the test too. With a non-admin
//! ticket, root is limited by what the ticket allows and another uid by
//! both the ticket and its own mode bits.
//!
//! Skipped (with a line on stderr) without /dev/fuse and fusermount3, or
//! when not run as root (dropping to other uids needs root).

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::TestServer;
use crate::mount::{bounded, fuse_available, Mount};

/// How long one operation of a forked process may take.
const OP_TIMEOUT_S: u64 = 60;
/// The explicit time set by `utimensat` steps (2001-09-09).
const SOME_TIME_S: i64 = 1_000_000_000;
/// The extended attribute set and read by the xattr steps.
const XATTR: &CStr = c"user.berth-test";
/// Exit codes of a forked process that could not take its identity.
const CHILD_SETUP_FAILED: i32 = 240;

/// A process identity: uid, primary gid and supplementary groups.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl Who {
    /// The test process itself (root, with every capability).
    fn root() -> Who {
        Who {
            uid: 0,
            gid: 0,
            groups: vec![0],
        }
    }

    pub(crate) fn user(uid: u32, gid: u32, groups: &[u32]) -> Who {
        Who {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.uid == 0 {
            return write!(f, "root");
        }
        write!(f, "{}:{}", self.uid, self.gid)?;
        for g in self.groups.iter().filter(|g| **g != self.gid) {
            write!(f, "+{g}")?;
        }
        Ok(())
    }
}

/// One step. Paths are relative to the directory the script runs in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// open(O_CREAT|O_EXCL|O_WRONLY, mode), write "data\n", close.
    Create(&'static str, u32),
    /// open(O_WRONLY|O_TRUNC), write "rewritten\n".
    Write(&'static str),
    /// open(O_WRONLY|O_APPEND), write "more\n".
    Append(&'static str),
    /// open(O_RDONLY), read.
    Read(&'static str),
    /// open(O_RDONLY|O_DIRECTORY).
    OpenDir(&'static str),
    Mkdir(&'static str, u32),
    Rmdir(&'static str),
    Unlink(&'static str),
    Rename(&'static str, &'static str),
    /// link(existing, new).
    Link(&'static str, &'static str),
    /// symlink(target, path): the target is stored as given.
    Symlink(&'static str, &'static str),
    Readlink(&'static str),
    Chmod(&'static str, u32),
    /// chown(path, uid, gid); `None` leaves it unchanged (-1).
    Chown(&'static str, Option<u32>, Option<u32>),
    /// utimensat to an explicit time, or with NULL (now).
    Times(&'static str, Option<i64>),
    Truncate(&'static str, i64),
    /// access(2) with R_OK/W_OK/X_OK bits.
    Access(&'static str, i32),
    Lstat(&'static str),
    SetXattr(&'static str),
    GetXattr(&'static str),
    // Looked at by the test process itself (root), not by `who`:
    /// "uid:gid mode kind [nlink]".
    Stat(&'static str),
    /// The file's bytes.
    Content(&'static str),
    /// Modification time, whole seconds.
    Mtime(&'static str),
    /// Every entry below the path: kind, owner, mode, size or target.
    Tree(&'static str),
}

impl Op {
    /// Done by the test process as root (a look, not an operation).
    fn is_look(&self) -> bool {
        matches!(
            self,
            Op::Stat(_) | Op::Content(_) | Op::Mtime(_) | Op::Tree(_)
        )
    }

    /// The C strings the forked process needs, relative to the directory
    /// it runs in (prepared before the fork: the child must not allocate).
    fn paths(&self) -> (CString, CString) {
        let c = |p: &str| CString::new(p).expect("no NUL in paths");
        match *self {
            Op::Rename(a, b) | Op::Link(a, b) | Op::Symlink(a, b) => (c(a), c(b)),
            Op::Create(p, _)
            | Op::Write(p)
            | Op::Append(p)
            | Op::Read(p)
            | Op::OpenDir(p)
            | Op::Mkdir(p, _)
            | Op::Rmdir(p)
            | Op::Unlink(p)
            | Op::Readlink(p)
            | Op::Chmod(p, _)
            | Op::Chown(p, _, _)
            | Op::Times(p, _)
            | Op::Truncate(p, _)
            | Op::Access(p, _)
            | Op::Lstat(p)
            | Op::SetXattr(p)
            | Op::GetXattr(p)
            | Op::Stat(p)
            | Op::Content(p)
            | Op::Mtime(p)
            | Op::Tree(p) => (c(p), CString::default()),
        }
    }
}

/// Debug, with modes in octal.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Create(p, m) => write!(f, "Create({p:?}, {m:#o})"),
            Op::Mkdir(p, m) => write!(f, "Mkdir({p:?}, {m:#o})"),
            Op::Chmod(p, m) => write!(f, "Chmod({p:?}, {m:#o})"),
            ref other => write!(f, "{other:?}"),
        }
    }
}

/// What a step must give besides matching the model.
#[derive(Debug, Clone, Copy)]
enum Want {
    Ok,
    Err(i32),
    /// The text of a look.
    Is(&'static str),
    /// Whatever the model gives (host-dependent, e.g. protected_hardlinks).
    Model,
}

struct Step {
    who: Who,
    op: Op,
    want: Want,
}

fn step(who: &Who, op: Op, want: Want) -> Step {
    Step {
        who: who.clone(),
        op,
        want,
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// The outcome of an operation as text: `ok` or the errno's name.
fn outcome(code: i32) -> String {
    match code {
        0 => "ok".into(),
        c => errno_name(c),
    }
}

/// Writes `data` to a file opened with `flags`; 0 or errno.
///
/// # Safety
/// `path` is a valid C string; only system calls are made.
unsafe fn write_file(path: *const libc::c_char, flags: i32, mode: u32, data: &[u8]) -> i32 {
    let fd = libc::open(path, flags | libc::O_CLOEXEC, mode);
    if fd < 0 {
        return *libc::__errno_location();
    }
    let n = libc::write(fd, data.as_ptr().cast(), data.len());
    let e = *libc::__errno_location();
    if libc::close(fd) != 0 {
        return *libc::__errno_location();
    }
    match n {
        n if n < 0 => e,
        n if n as usize != data.len() => libc::EIO,
        _ => 0,
    }
}

/// The forked process's half of [`run_op`]: system calls only (no
/// allocation, no locks) between fork and `_exit`. 0 or the errno of the
/// first failure.
///
/// # Safety
/// Call only in a forked child; `a` and `b` are valid C strings.
unsafe fn op_in_child(op: &Op, a: &CStr, b: &CStr) -> i32 {
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut buf = [0u8; 256];
    let rc: isize = match *op {
        Op::Create(_, mode) => {
            return write_file(
                a,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                mode,
                b"data\n",
            )
        }
        Op::Write(_) => return write_file(a, libc::O_WRONLY | libc::O_TRUNC, 0, b"rewritten\n"),
        Op::Append(_) => return write_file(a, libc::O_WRONLY | libc::O_APPEND, 0, b"more\n"),
        Op::Read(_) | Op::OpenDir(_) => {
            let dir = matches!(op, Op::OpenDir(_));
            let flags = libc::O_RDONLY | libc::O_CLOEXEC | if dir { libc::O_DIRECTORY } else { 0 };
            let fd = libc::open(a, flags);
            if fd < 0 {
                return *libc::__errno_location();
            }
            let n = if dir {
                0
            } else {
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
            };
            let e = *libc::__errno_location();
            libc::close(fd);
            if n < 0 {
                return e;
            }
            0
        }
        Op::Mkdir(_, mode) => libc::mkdir(a, mode) as isize,
        Op::Rmdir(_) => libc::rmdir(a) as isize,
        Op::Unlink(_) => libc::unlink(a) as isize,
        Op::Rename(..) => libc::rename(a, b) as isize,
        Op::Link(..) => libc::link(a, b) as isize,
        Op::Symlink(..) => libc::symlink(a, b) as isize,
        Op::Readlink(_) => libc::readlink(a, buf.as_mut_ptr().cast(), buf.len()),
        Op::Chmod(_, mode) => libc::chmod(a, mode) as isize,
        Op::Chown(_, uid, gid) => {
            libc::chown(a, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)) as isize
        }
        Op::Times(_, Some(t)) => {
            let ts = [libc::timespec {
                tv_sec: t,
                tv_nsec: 0,
            }; 2];
            libc::utimensat(libc::AT_FDCWD, a, ts.as_ptr(), 0) as isize
        }
        Op::Times(_, None) => libc::utimensat(libc::AT_FDCWD, a, std::ptr::null(), 0) as isize,
        Op::Truncate(_, len) => libc::truncate(a, len) as isize,
        Op::Access(_, mode) => libc::access(a, mode) as isize,
        Op::Lstat(_) => {
            let mut st: libc::stat = std::mem::zeroed();
            libc::lstat(a, &mut st) as isize
        }
        Op::SetXattr(_) => libc::setxattr(a, XATTR.as_ptr(), b"v".as_ptr().cast(), 1, 0) as isize,
        Op::GetXattr(_) => libc::getxattr(a, XATTR.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
        Op::Stat(_) | Op::Content(_) | Op::Mtime(_) | Op::Tree(_) => return libc::EINVAL,
    };
    if rc < 0 {
        *libc::__errno_location()
    } else {
        0
    }
}

/// Runs `op` in a forked process that enters `base` and takes `who`'s
/// identity (root stays root, with its capabilities); returns 0 or the
/// errno. Entering first, as root, is what a container's bind mount does:
/// the directories above `base` are not searched as `who`. Bounded by
/// [`OP_TIMEOUT_S`]: a process still running then is killed and the test
/// fails.
pub(crate) fn run_op(who: &Who, op: &Op, base: &Path) -> i32 {
    let dir = CString::new(base.as_os_str().as_bytes()).expect("no NUL in paths");
    let (a, b) = op.paths();
    let groups: Vec<libc::gid_t> = who.groups.clone();
    // SAFETY: the child only makes system calls on memory prepared above,
    // then _exits (no destructors, no allocation, no locks).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above; this is the child.
        unsafe {
            libc::umask(0o022);
            if libc::chdir(dir.as_ptr()) != 0 {
                libc::_exit(CHILD_SETUP_FAILED);
            }
            if who.uid != 0
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(who.gid) != 0
                    || libc::setuid(who.uid) != 0
                    || libc::geteuid() != who.uid)
            {
                libc::_exit(CHILD_SETUP_FAILED);
            }
            libc::_exit(op_in_child(op, &a, &b));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(OP_TIMEOUT_S);
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: our unreaped child: the pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("{who} {op} did not finish in {OP_TIMEOUT_S} s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        libc::WIFEXITED(status),
        "{who} {op}: the process died ({status:#x})"
    );
    let code = libc::WEXITSTATUS(status);
    assert_ne!(
        code,
        CHILD_SETUP_FAILED,
        "could not enter {} as {who} (chdir, setgroups, setgid, setuid)",
        base.display()
    );
    code
}

/// What the test process (root) sees at `p`, without following links.
fn describe(p: &Path) -> String {
    match std::fs::symlink_metadata(p) {
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        Ok(m) => {
            let head = format!("{}:{} {:04o}", m.uid(), m.gid(), m.mode() & 0o7777);
            if m.is_dir() {
                format!("{head} dir")
            } else if m.is_symlink() {
                "symlink".into()
            } else {
                format!("{head} file n{}", m.nlink())
            }
        }
    }
}

/// Every entry below `dir`, sorted, one per line. Symbolic links show only
/// their target (their owner is the ticket's on a mount: see berth-fuse);
/// directories no size (file systems count it differently).
fn tree(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let mut names: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("directory entry").file_name())
            .collect(),
        Err(e) => return out.push(format!("{rel}: {e}")),
    };
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let rel = format!("{rel}/{}", n.to_string_lossy());
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        if m.is_symlink() {
            let t = std::fs::read_link(&p).expect("readlink");
            out.push(format!("{rel} -> {}", t.display()));
        } else if m.is_dir() {
            out.push(format!("{rel} {}", describe(&p)));
            tree(&p, &rel, out);
        } else {
            out.push(format!("{rel} {} {} bytes", describe(&p), m.len()));
        }
    }
}

/// A look of the test process at `op`'s path.
fn look(op: &Op, base: &Path) -> String {
    match *op {
        Op::Stat(p) => describe(&base.join(p)),
        Op::Content(p) => match std::fs::read(base.join(p)) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        },
        Op::Mtime(p) => match std::fs::symlink_metadata(base.join(p)) {
            Ok(m) => m.mtime().to_string(),
            Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        },
        Op::Tree(p) => {
            let mut lines = Vec::new();
            tree(&base.join(p), p, &mut lines);
            lines.join("\n")
        }
        _ => unreachable!("{op:?} is not a look"),
    }
}

/// Runs the script in `base`; one outcome per step.
fn play(script: &[Step], base: &Path) -> Vec<String> {
    script
        .iter()
        .map(|s| {
            if s.op.is_look() {
                look(&s.op, base)
            } else {
                outcome(run_op(&s.who, &s.op, base))
            }
        })
        .collect()
}

/// Failures of `got` against the steps' own expectations (`system` names
/// whose outcomes they are).
fn unexpected(script: &[Step], got: &[String], system: &str) -> Vec<String> {
    script
        .iter()
        .zip(got)
        .enumerate()
        .filter_map(|(i, (s, g))| {
            let want = match s.want {
                Want::Ok => "ok".to_string(),
                Want::Err(e) => errno_name(e),
                Want::Is(t) => t.to_string(),
                Want::Model => return None,
            };
            (*g != want).then(|| {
                format!(
                    "step {i} ({system}): {} {}: got {g:?}, POSIX says {want:?}",
                    s.who, s.op
                )
            })
        })
        .collect()
}

/// The admin-ticket script: one uid at home, denials as POSIX words them,
/// a sticky directory, a group directory reached through a supplementary
/// gid (then setgid), and root.
fn script() -> Vec<Step> {
    use Op::*;
    use Want::{Err as E, Is, Model, Ok};
    let root = Who::root();
    let u = Who::user(1000, 1000, &[1000]);
    let ug = Who::user(1000, 1000, &[1000, 3000]);
    let o = Who::user(2000, 2000, &[2000]);
    let og = Who::user(2000, 2000, &[2000, 3000]);
    let (eacces, eperm) = (libc::EACCES, libc::EPERM);
    vec![
        // Set up as root: t 0755 root, t/home 1000's, a sticky t/shared,
        // t/team for group 3000, t/closed 0700 of 2000, 2000's files.
        step(&root, Mkdir("t", 0o755), Ok),
        step(&root, Stat("t"), Is("0:0 0755 dir")),
        step(&root, Mkdir("t/home", 0o755), Ok),
        step(&root, Chown("t/home", Some(1000), Some(1000)), Ok),
        step(&root, Mkdir("t/shared", 0o777), Ok),
        step(&root, Chmod("t/shared", 0o1777), Ok),
        step(&root, Mkdir("t/team", 0o770), Ok),
        step(&root, Chmod("t/team", 0o770), Ok),
        step(&root, Chown("t/team", None, Some(3000)), Ok),
        step(&root, Mkdir("t/closed", 0o700), Ok),
        step(&root, Chown("t/closed", Some(2000), Some(2000)), Ok),
        step(&root, Create("t/secret", 0o600), Ok),
        step(&root, Chown("t/secret", Some(2000), Some(2000)), Ok),
        step(&root, Create("t/theirs.txt", 0o666), Ok),
        step(&root, Stat("t/theirs.txt"), Is("0:0 0644 file n1")),
        step(&root, Chmod("t/theirs.txt", 0o666), Ok),
        step(&root, Chown("t/theirs.txt", Some(2000), Some(2000)), Ok),
        step(&root, Create("t/closed/inner", 0o644), Ok),
        step(&root, Chown("t/closed/inner", Some(2000), Some(2000)), Ok),
        step(&o, Create("t/shared/theirs", 0o644), Ok),
        step(&o, Stat("t/shared/theirs"), Is("2000:2000 0644 file n1")),
        // uid 1000 in its own directory: what it makes is its own.
        step(&u, Create("t/home/new.txt", 0o644), Ok),
        step(&u, Stat("t/home/new.txt"), Is("1000:1000 0644 file n1")),
        step(&u, Write("t/home/new.txt"), Ok),
        step(&u, Read("t/home/new.txt"), Ok),
        step(&u, Append("t/home/new.txt"), Ok),
        step(&u, Content("t/home/new.txt"), Is("rewritten\nmore\n")),
        step(&u, Create("t/home/new.txt", 0o644), E(libc::EEXIST)),
        step(&u, Mkdir("t/home/sub", 0o755), Ok),
        step(&u, Stat("t/home/sub"), Is("1000:1000 0755 dir")),
        step(&u, Create("t/home/sub/deep", 0o640), Ok),
        step(&u, Stat("t/home/sub/deep"), Is("1000:1000 0640 file n1")),
        step(&u, Times("t/home/sub", Some(SOME_TIME_S)), Ok),
        step(&u, Mtime("t/home/sub"), Is("1000000000")),
        step(&u, Chmod("t/home/new.txt", 0o600), Ok),
        step(&u, Stat("t/home/new.txt"), Is("1000:1000 0600 file n1")),
        step(&u, Rename("t/home/new.txt", "t/home/renamed.txt"), Ok),
        step(&u, Read("t/home/new.txt"), E(libc::ENOENT)),
        step(&u, Symlink("renamed.txt", "t/home/link"), Ok),
        step(&u, Readlink("t/home/link"), Ok),
        step(&u, Read("t/home/link"), Ok),
        step(&u, Link("t/home/renamed.txt", "t/home/hard"), Ok),
        step(&u, Stat("t/home/hard"), Is("1000:1000 0600 file n2")),
        step(&u, Times("t/home/renamed.txt", Some(SOME_TIME_S)), Ok),
        step(&u, Truncate("t/home/renamed.txt", 3), Ok),
        step(&u, Content("t/home/renamed.txt"), Is("rew")),
        step(&u, SetXattr("t/home/renamed.txt"), Ok),
        step(&u, GetXattr("t/home/renamed.txt"), Ok),
        step(&u, Chown("t/home/renamed.txt", None, Some(3000)), E(eperm)),
        step(&ug, Chown("t/home/renamed.txt", None, Some(3000)), Ok),
        step(&u, Stat("t/home/renamed.txt"), Is("1000:3000 0600 file n2")),
        step(&u, Chown("t/home/renamed.txt", Some(2000), None), E(eperm)),
        step(&u, Unlink("t/home/hard"), Ok),
        step(&u, Mkdir("t/home/renamed.txt/x", 0o755), E(libc::ENOTDIR)),
        step(&u, Rmdir("t/home/renamed.txt"), E(libc::ENOTDIR)),
        step(&u, Unlink("t/home/sub"), E(libc::EISDIR)),
        step(&u, Rmdir("t/home/sub"), E(libc::ENOTEMPTY)),
        step(&u, Unlink("t/home/sub/deep"), Ok),
        step(&u, Rmdir("t/home/sub"), Ok),
        step(&u, OpenDir("t/home"), Ok),
        // Someone else's files and root's directory: denied as POSIX says.
        step(&u, Read("t/secret"), E(eacces)),
        step(&u, Write("t/secret"), E(eacces)),
        step(&u, Access("t/secret", libc::R_OK), E(eacces)),
        step(&u, Access("t/theirs.txt", libc::R_OK | libc::W_OK), Ok),
        step(&u, Lstat("t/secret"), Ok),
        step(&u, GetXattr("t/secret"), E(eacces)),
        step(&u, SetXattr("t/secret"), E(eacces)),
        step(&u, Truncate("t/secret", 0), E(eacces)),
        step(&u, Create("t/mine", 0o644), E(eacces)),
        step(&u, Mkdir("t/mine", 0o755), E(eacces)),
        step(&u, Symlink("x", "t/mine"), E(eacces)),
        step(&u, Unlink("t/theirs.txt"), E(eacces)),
        step(&u, Rename("t/home/renamed.txt", "t/moved"), E(eacces)),
        step(&u, Lstat("t/closed/inner"), E(eacces)),
        step(&u, Read("t/closed/inner"), E(eacces)),
        step(&u, OpenDir("t/closed"), E(eacces)),
        step(&u, Unlink("t/closed/inner"), E(eacces)),
        step(&u, Chmod("t/theirs.txt", 0o777), E(eperm)),
        step(&u, Chown("t/theirs.txt", Some(1000), Some(1000)), E(eperm)),
        step(&u, Times("t/theirs.txt", Some(SOME_TIME_S)), E(eperm)),
        step(&u, Times("t/theirs.txt", None), Ok),
        step(&u, Times("t/secret", None), E(eacces)),
        step(&u, Write("t/theirs.txt"), Ok),
        step(&u, SetXattr("t/theirs.txt"), Ok),
        step(&u, Link("t/secret", "t/home/stolen"), Model),
        step(&u, Link("t/theirs.txt", "t/home/theirs-link"), Ok),
        step(&u, Unlink("t/home/theirs-link"), Ok),
        step(&root, Stat("t/theirs.txt"), Is("2000:2000 0666 file n1")),
        // The sticky directory: only the owner removes or renames a file.
        step(&u, Create("t/shared/mine", 0o644), Ok),
        step(&u, Unlink("t/shared/theirs"), E(eperm)),
        step(&u, Rename("t/shared/theirs", "t/shared/taken"), E(eperm)),
        step(&u, Write("t/shared/theirs"), E(eacces)),
        step(&u, Unlink("t/shared/mine"), Ok),
        step(&o, Unlink("t/shared/theirs"), Ok),
        // Group 3000, as a supplementary group; then setgid.
        step(&u, Create("t/team/f", 0o640), E(eacces)),
        step(&ug, Create("t/team/f", 0o640), Ok),
        step(&ug, Stat("t/team/f"), Is("1000:1000 0640 file n1")),
        step(&o, Read("t/team/f"), E(eacces)),
        step(&root, Chmod("t/team", 0o2770), Ok),
        step(&ug, Create("t/team/g", 0o640), Ok),
        step(&ug, Stat("t/team/g"), Is("1000:3000 0640 file n1")),
        step(&ug, Mkdir("t/team/gd", 0o755), Ok),
        step(&ug, Stat("t/team/gd"), Is("1000:3000 2755 dir")),
        step(&og, Read("t/team/g"), Ok),
        step(&og, Write("t/team/g"), E(eacces)),
        step(&o, Read("t/team/g"), E(eacces)),
        // Root may do everything the (admin) ticket allows.
        step(&root, Read("t/secret"), Ok),
        step(&root, Write("t/secret"), Ok),
        step(&root, Content("t/secret"), Is("rewritten\n")),
        step(&root, Lstat("t/closed/inner"), Ok),
        step(&root, Read("t/closed/inner"), Ok),
        step(&root, Create("t/closed/by-root", 0o600), Ok),
        step(&root, Stat("t/closed/by-root"), Is("0:0 0600 file n1")),
        step(&root, Chmod("t/theirs.txt", 0o640), Ok),
        step(&root, Chown("t/theirs.txt", Some(1000), Some(1000)), Ok),
        step(&root, Stat("t/theirs.txt"), Is("1000:1000 0640 file n1")),
        step(&root, Times("t/secret", Some(SOME_TIME_S)), Ok),
        step(&root, Times("t/closed", Some(SOME_TIME_S)), Ok),
        step(&root, Mtime("t/closed"), Is("1000000000")),
        step(&root, Unlink("t/closed/inner"), Ok),
        step(&root, Rmdir("t/home"), E(libc::ENOTEMPTY)),
        step(&root, Tree("t"), Model),
    ]
}

fn skipped(test: &str) -> bool {
    if !fuse_available() {
        return true;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: becoming other uids needs root");
        return true;
    }
    false
}

fn mount_dir(s: &TestServer, name: &str) -> PathBuf {
    let mp = s.dir.path().join(name);
    std::fs::create_dir_all(&mp).expect("mount point");
    mp.canonicalize().expect("canonical mount point")
}

#[test]
fn other_uids_see_the_mount_as_a_local_file_system() {
    if skipped("other_uids_see_the_mount_as_a_local_file_system") {
        return;
    }
    let s = TestServer::start();
    let model = s.dir.path().join("model");
    std::fs::create_dir(&model).expect("model directory");
    std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o755)).unwrap();
    let steps = script();
    let want = play(&steps, &model);
    let surprises = unexpected(&steps, &want, "the model, this host's file system");
    assert!(
        surprises.is_empty(),
        "the local file system disagrees with the script's expectations:\n{}",
        surprises.join("\n")
    );

    let mp = mount_dir(&s, "mnt");
    let mut m = Mount::start(&s, &mp, &["--allow-other"]);
    let at = mp.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    bounded("the script through the mount", &mut m, move || {
        let steps = script();
        let _ = tx.send(play(&steps, &at));
    });
    let got = rx.recv().expect("outcomes through the mount");
    let differences: Vec<String> = steps
        .iter()
        .zip(want.iter().zip(&got))
        .enumerate()
        .filter(|(_, (_, (w, g)))| w != g)
        .map(|(i, (st, (w, g)))| {
            format!(
                "step {i}: {} {}:\n  model: {w}\n  mount: {g}",
                st.who, st.op
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "the mount differs from the local file system:\n{}",
        differences.join("\n")
    );
    // What the mount made is in the cluster with the same owners.
    assert_eq!(s.json(&["stat", "/t/home/renamed.txt"])["uid"], 1000);
    assert_eq!(s.json(&["stat", "/t/team/g"])["gid"], 3000);
}

/// With a non-admin ticket: root gets only what the ticket allows, and
/// another uid only what both the ticket and its own mode bits allow.
#[test]
fn a_non_admin_ticket_limits_root_and_other_uids() {
    if skipped("a_non_admin_ticket_limits_root_and_other_uids") {
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
    let ticket = s.dir.path().join("alice.ticket");
    let ticket_arg = ticket.to_str().unwrap();
    s.ok(&[
        "ticket",
        "issue",
        "--principal",
        "alice",
        "--out",
        ticket_arg,
    ]);
    std::fs::write(s.dir.path().join("secret"), "2000's\n").unwrap();
    let local = s.dir.path().join("secret");
    s.ok(&["mkdir", "-p", "/lim/alice"]);
    s.ok(&["chmod", "755", "/lim", "/lim/alice"]);
    s.ok(&["chown", "1000:1000", "/lim/alice"]);
    s.ok(&["cp", local.to_str().unwrap(), "berth:/lim/secret"]);
    s.ok(&["chmod", "600", "/lim/secret"]);
    s.ok(&["chown", "2000:2000", "/lim/secret"]);

    let mp = mount_dir(&s, "alice-mnt");
    let mut m = Mount::start(&s, &mp, &["--allow-other", "--ticket-file", ticket_arg]);
    let at = mp.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    bounded("alice's mount", &mut m, move || {
        use Op::*;
        use Want::{Err as E, Is, Ok};
        let root = Who::root();
        let alice = Who::user(1000, 1000, &[1000]);
        let o = Who::user(2000, 2000, &[2000]);
        let (eacces, eperm) = (libc::EACCES, libc::EPERM);
        let steps = vec![
            // Root: the kernel lets it, the ticket does not.
            step(&root, Read("lim/secret"), E(eacces)),
            step(&root, Create("lim/by-root", 0o644), E(eacces)),
            step(&root, Create("lim/alice/by-root", 0o644), Ok),
            // Not given away: the ticket may not.
            step(
                &root,
                Stat("lim/alice/by-root"),
                Is("1000:1000 0644 file n1"),
            ),
            step(
                &root,
                Chown("lim/alice/by-root", Some(2000), None),
                E(eperm),
            ),
            // The ticket's own uid, locally.
            step(&alice, Create("lim/alice/mine", 0o600), Ok),
            step(&alice, Read("lim/alice/mine"), Ok),
            step(&alice, Read("lim/secret"), E(eacces)),
            step(&alice, Chmod("lim/alice/by-root", 0o664), Ok),
            // Another uid: its own mode bits, though the ticket may.
            step(&o, Read("lim/alice/mine"), E(eacces)),
            step(&o, Read("lim/alice/by-root"), Ok),
            step(&o, Write("lim/alice/by-root"), E(eacces)),
            step(&o, Chmod("lim/alice/by-root", 0o666), E(eperm)),
            step(&o, Times("lim/alice/by-root", Some(SOME_TIME_S)), E(eperm)),
            step(&o, Create("lim/alice/o-file", 0o644), E(eacces)),
            step(&o, Unlink("lim/alice/mine"), E(eacces)),
            // Root, within the ticket.
            step(&root, Read("lim/alice/mine"), Ok),
            step(&root, Write("lim/alice/mine"), Ok),
            step(&root, Content("lim/alice/mine"), Is("rewritten\n")),
        ];
        let got = play(&steps, &at);
        let _ = tx.send(unexpected(&steps, &got, "alice's mount"));
    });
    let wrong = rx.recv().expect("outcomes through alice's mount");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(s.json(&["stat", "/lim/alice/mine"])["uid"], 1000);
}
