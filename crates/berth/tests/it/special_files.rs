//! FIFOs, UNIX sockets and device nodes through a real mount: made with
//! mkfifo(3), bind(2) and mknod(2), reported by stat(2) with their type
//! bits and device number, renamed, linked, chmod'ed and removed like
//! files, shown by `berth ls -l` and `berth stat --json`, kept by
//! snapshots — while their I/O stays the kernel's: bytes pass through a
//! FIFO and a socket in the mount, and the mount is nodev, so a device
//! node cannot be opened as a device. Skipped where FUSE is unavailable;
//! device nodes are made only as root (mknod needs CAP_MKNOD).

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::harness::TestServer;
use crate::mount::{bounded, errno, fuse_available, names, Mount};

/// /dev/null's device: makedev(1, 3).
fn null_dev() -> u64 {
    libc::makedev(1, 3)
}
/// A block device with a major over 8 bits and a minor over 8 bits.
fn disk_dev() -> u64 {
    libc::makedev(259, 4097)
}

fn c(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn mknod(p: &Path, mode: libc::mode_t, dev: u64) -> Result<(), i32> {
    // SAFETY: mknod(2) with a valid NUL-terminated path.
    if unsafe { libc::mknod(c(p).as_ptr(), mode, dev) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

fn mkfifo(p: &Path, mode: libc::mode_t) {
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c(p).as_ptr(), mode) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// This process's umask (from /proc: umask(2) would have to change it).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).expect("octal umask"))
        .expect("a Umask line")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Bytes written into the FIFO in the mount come out of it, through the
/// kernel's pipe (they never reach Berth).
fn through_fifo(fifo: &Path) {
    let reader = {
        let fifo = fifo.to_path_buf();
        // Opening a FIFO for reading waits for a writer: on its own thread.
        std::thread::spawn(move || {
            let mut r = fs::File::open(&fifo).expect("open the FIFO for reading");
            let mut got = Vec::new();
            r.read_to_end(&mut got).expect("read the FIFO");
            got
        })
    };
    let mut w = OpenOptions::new()
        .write(true)
        .open(fifo)
        .expect("open the FIFO for writing");
    w.write_all(b"through the kernel\n").unwrap();
    drop(w);
    assert_eq!(reader.join().unwrap(), b"through the kernel\n");
}

/// A UNIX socket bound in the mount takes connections by its path.
fn through_socket(sock: &Path) -> UnixListener {
    let l = UnixListener::bind(sock).expect("bind a UNIX socket in the mount");
    let mut client = UnixStream::connect(sock).expect("connect by the path in the mount");
    let (mut server, _) = l.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    l
}

fn exercise(mp: PathBuf, root: bool) {
    let d = mp.join("sp");
    fs::create_dir(&d).unwrap();

    let umask = umask();
    // A FIFO: type bits, the mode given less the umask, no size.
    mkfifo(&d.join("fifo"), 0o664);
    let m = fs::symlink_metadata(d.join("fifo")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFIFO);
    assert_eq!(
        (m.mode() & 0o7777, m.len(), m.rdev()),
        (0o664 & !umask, 0, 0)
    );
    through_fifo(&d.join("fifo"));
    // The kernel, not Berth, holds the pipe: the entry did not change.
    assert_eq!(fs::metadata(d.join("fifo")).unwrap().len(), 0);
    // mknod(S_IFIFO) is the same call.
    mknod(&d.join("fifo2"), libc::S_IFIFO | 0o600, 0).unwrap();
    assert!(fs::metadata(d.join("fifo2")).unwrap().file_type().is_fifo());
    assert_eq!(
        mknod(&d.join("fifo2"), libc::S_IFIFO | 0o600, 0),
        Err(libc::EEXIST)
    );

    // A UNIX socket: bind(2) makes the entry; connections are the kernel's.
    let listener = through_socket(&d.join("sock"));
    let m = fs::symlink_metadata(d.join("sock")).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFSOCK);
    drop(listener);

    // Device nodes (root only: CAP_MKNOD), with their device numbers.
    if root {
        mknod(&d.join("null"), libc::S_IFCHR | 0o666, null_dev()).unwrap();
        mknod(&d.join("disk"), libc::S_IFBLK | 0o660, disk_dev()).unwrap();
        // Modes as ls -l shows them below, whatever the umask.
        fs::set_permissions(d.join("null"), fs::Permissions::from_mode(0o666)).unwrap();
        fs::set_permissions(d.join("disk"), fs::Permissions::from_mode(0o660)).unwrap();
        let m = fs::symlink_metadata(d.join("null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!((m.rdev(), m.mode() & 0o7777), (null_dev(), 0o666));
        let m = fs::symlink_metadata(d.join("disk")).unwrap();
        assert!(m.file_type().is_block_device());
        assert_eq!((libc::major(m.rdev()), libc::minor(m.rdev())), (259, 4097));
        // The mount is nodev: a device node is no way into a device.
        let open = OpenOptions::new().write(true).open(d.join("null"));
        assert_eq!(errno(open), libc::EACCES);
    } else {
        eprintln!("device nodes not tried: mknod(2) of a device needs root");
    }

    // chmod, rename, link and unlink as on files.
    fs::set_permissions(d.join("fifo"), fs::Permissions::from_mode(0o604)).unwrap();
    assert_eq!(
        fs::symlink_metadata(d.join("fifo")).unwrap().mode() & 0o7777,
        0o604
    );
    fs::rename(d.join("fifo"), d.join("pipe")).unwrap();
    assert_eq!(errno(fs::symlink_metadata(d.join("fifo"))), libc::ENOENT);
    fs::hard_link(d.join("pipe"), d.join("pipe2")).unwrap();
    let (a, b) = (
        fs::symlink_metadata(d.join("pipe")).unwrap(),
        fs::symlink_metadata(d.join("pipe2")).unwrap(),
    );
    assert!(b.file_type().is_fifo());
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    through_fifo(&d.join("pipe2"));
    // A rename over another special file replaces it.
    fs::rename(d.join("fifo2"), d.join("sock")).unwrap();
    assert!(fs::symlink_metadata(d.join("sock"))
        .unwrap()
        .file_type()
        .is_fifo());
    fs::remove_file(d.join("pipe2")).unwrap();
    assert_eq!(fs::symlink_metadata(d.join("pipe")).unwrap().nlink(), 1);
    // Not a directory, in the middle of a path.
    assert_eq!(errno(fs::metadata(d.join("pipe/x"))), libc::ENOTDIR);
    let mut want = vec!["pipe", "sock"];
    if root {
        fs::rename(d.join("disk"), d.join("sda")).unwrap();
        assert_eq!(
            fs::symlink_metadata(d.join("sda")).unwrap().rdev(),
            disk_dev()
        );
        want = vec!["null", "pipe", "sda", "sock"];
    }
    assert_eq!(names(&d), want);
    // readdir reports their types (d_type), as ls -l needs.
    for e in fs::read_dir(&d).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        let name = e.file_name().into_string().unwrap();
        let ok = match name.as_str() {
            "pipe" | "sock" => t.is_fifo(),
            "null" => t.is_char_device(),
            "sda" => t.is_block_device(),
            _ => false,
        };
        assert!(ok, "{name}: {t:?}");
    }
}

#[test]
fn special_files_in_a_mount() {
    if !fuse_available() {
        return;
    }
    let root = is_root();
    let s = TestServer::start();
    let mp = s.dir.path().join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    let mut m = Mount::start(&s, &mp, &[]);
    let at = mp.clone();
    bounded("special files", &mut m, move || exercise(at, root));

    // The CLI shows them: type, mode string and device.
    let st = s.json(&["stat", "/sp/pipe"]);
    assert_eq!(st["type"], "fifo");
    assert_eq!(st["mode"], "0604");
    assert_eq!(st["mode_string"], "prw----r--");
    assert_eq!(st["rdev"], 0);
    let ls = s.ok(&["ls", "-l", "/sp"]);
    assert!(ls.contains("prw----r--"), "{ls}");
    if root {
        let st = s.json(&["stat", "/sp/sda"]);
        assert_eq!(st["type"], "block_device");
        assert_eq!(
            (st["rdev_major"].clone(), st["rdev_minor"].clone()),
            (259.into(), 4097.into())
        );
        assert_eq!(st["rdev"], disk_dev());
        assert_eq!(s.json(&["stat", "/sp/null"])["type"], "char_device");
        assert!(ls.contains("crw-rw-rw-") && ls.contains("1, 3"), "{ls}");
        assert!(
            ls.contains("brw-rw----") && ls.contains("259, 4097"),
            "{ls}"
        );
        let human = s.ok(&["stat", "/sp/sda"]);
        assert!(human.contains("259, 4097"), "{human}");
    }

    // A snapshot keeps them; the live names go on changing.
    s.ok(&["snapshot", "create", "/", "keep"]);
    let at = mp.clone();
    bounded("special files in a snapshot", &mut m, move || {
        let live = at.join("sp");
        let snap = at.join(".snapshot/keep/sp");
        fs::remove_file(live.join("pipe")).unwrap();
        let m = fs::symlink_metadata(snap.join("pipe")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o604);
        if root {
            fs::remove_file(live.join("sda")).unwrap();
            let m = fs::symlink_metadata(snap.join("sda")).unwrap();
            assert!(m.file_type().is_block_device());
            assert_eq!(m.rdev(), disk_dev());
        }
        assert_eq!(
            errno(fs::set_permissions(
                snap.join("pipe"),
                fs::Permissions::from_mode(0o600)
            )),
            libc::EROFS
        );
        assert_eq!(
            mknod(&snap.join("new"), libc::S_IFIFO | 0o600, 0),
            Err(libc::EROFS)
        );
        assert_eq!(
            fs::symlink_metadata(live.join("pipe"))
                .map_err(|e| e.kind())
                .err(),
            Some(ErrorKind::NotFound)
        );
    });
    let check = s.json(&["volume", "check", "/"]);
    assert_eq!(check["problems"], serde_json::json!([]), "{check}");
}
