//! renameat2(RENAME_EXCHANGE) through a real mount: two entries swap names
//! atomically, a directory with a file included, and the namespace stays
//! consistent (`berth volume check`). Skipped where FUSE is unavailable.

use std::ffi::CString;
use std::fs;
use std::path::Path;

use crate::harness::TestServer;
use crate::mount::{bounded, fuse_available, Mount};

fn renameat2(a: &Path, b: &Path, flags: libc::c_uint) -> Result<(), i32> {
    let a = CString::new(a.to_str().unwrap()).unwrap();
    let b = CString::new(b.to_str().unwrap()).unwrap();
    // SAFETY: renameat2(2) with valid NUL-terminated paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

fn exchange(a: &Path, b: &Path) -> Result<(), i32> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

fn exercise(mp: &Path) {
    let (a, b) = (mp.join("a"), mp.join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    // Two files in one directory swap contents by name.
    fs::write(a.join("x"), b"xx").unwrap();
    fs::write(a.join("y"), b"yyy").unwrap();
    exchange(&a.join("x"), &a.join("y")).unwrap();
    assert_eq!(fs::read(a.join("x")).unwrap(), b"yyy");
    assert_eq!(fs::read(a.join("y")).unwrap(), b"xx");
    assert_eq!(fs::metadata(a.join("x")).unwrap().len(), 3);
    // A file and a directory in different directories.
    fs::create_dir(b.join("d")).unwrap();
    fs::write(b.join("d/inner"), b"in").unwrap();
    exchange(&a.join("x"), &b.join("d")).unwrap();
    assert!(fs::metadata(a.join("x")).unwrap().is_dir());
    assert_eq!(fs::read(a.join("x/inner")).unwrap(), b"in");
    assert!(fs::metadata(b.join("d")).unwrap().is_file());
    assert_eq!(fs::read(b.join("d")).unwrap(), b"yyy");
    // Both names must exist.
    assert_eq!(
        exchange(&a.join("y"), &b.join("missing")),
        Err(libc::ENOENT)
    );
    assert_eq!(
        exchange(&a.join("missing"), &a.join("y")),
        Err(libc::ENOENT)
    );
    // A directory cannot become its own descendant.
    assert_eq!(
        exchange(&a.join("x"), &a.join("x/inner")),
        Err(libc::EINVAL)
    );
    assert_eq!(exchange(&a, &a.join("x/inner")), Err(libc::EINVAL));
    // EXCHANGE and NOREPLACE exclude each other.
    assert_eq!(
        renameat2(
            &a.join("y"),
            &b.join("d"),
            libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE
        ),
        Err(libc::EINVAL)
    );
    // Two directories, contents and all, across parents; and back.
    fs::create_dir(b.join("e")).unwrap();
    fs::write(b.join("e/deep"), b"deep").unwrap();
    exchange(&a.join("x"), &b.join("e")).unwrap();
    assert_eq!(fs::read(a.join("x/deep")).unwrap(), b"deep");
    assert_eq!(fs::read(b.join("e/inner")).unwrap(), b"in");
    exchange(&a.join("x"), &b.join("e")).unwrap();
    assert_eq!(fs::read(a.join("x/inner")).unwrap(), b"in");
    // Two names of one file: nothing to do.
    fs::hard_link(a.join("y"), a.join("y2")).unwrap();
    exchange(&a.join("y"), &a.join("y2")).unwrap();
    assert_eq!(fs::read(a.join("y2")).unwrap(), b"xx");
}

#[test]
fn rename_exchange_through_a_mount() {
    if !fuse_available() {
        return;
    }
    let s = TestServer::start();
    s.ok(&["volume", "create", "/vol", "--replication", "1"]);
    let mp = s.dir.path().join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    let mut m = Mount::start(&s, &mp, &[]);
    let at = mp.clone();
    bounded("exchange", &mut m, move || {
        exercise(&at);
        // Across volumes: EXDEV, as for rename.
        fs::write(at.join("vol/v"), b"v").unwrap();
        assert_eq!(
            exchange(&at.join("a/y"), &at.join("vol/v")),
            Err(libc::EXDEV)
        );
    });
    // Link counts and parent pointers agree with the entries.
    let check = s.json(&["volume", "check", "/"]);
    assert_eq!(check["problems"], serde_json::json!([]), "{check}");
    // /a holds one subdirectory (x), /b one (e; d is a file now).
    assert_eq!(s.json(&["stat", "/a"])["nlink"], 3);
    assert_eq!(s.json(&["stat", "/b"])["nlink"], 3);
    assert_eq!(s.json(&["stat", "/a/x"])["type"], "directory");
    assert_eq!(s.json(&["stat", "/b/d"])["type"], "file");
    // The server's entries moved too.
    assert_eq!(s.json(&["stat", "/a/x/inner"])["size"], 2);
}
