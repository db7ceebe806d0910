//! Volume snapshots: `berth snapshot create|list|remove` and
//! `<volume>/.snapshot/<name>/` through the CLI and a real FUSE mount. A
//! snapshot keeps exactly what the volume held when it was taken while the
//! live files are overwritten, truncated, unlinked and renamed; everything
//! under `.snapshot` is read-only (EROFS); snapshots survive a crash.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};

use crate::harness::TestServer;
use crate::mount::{bounded, errno, fuse_available, names, Mount};

/// Deterministic bytes (a simple LCG), `n` long.
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

const CHUNK: usize = 64 << 10;

#[test]
fn snapshots_keep_the_past_and_refuse_changes() {
    if !fuse_available() {
        return;
    }
    let mut s = TestServer::start();
    s.ok(&["volume", "create", "/sv", "--chunk-size", "64KiB"]);
    let mp = s.dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let mut m = Mount::start(&s, &mp, &[]);
    let vol: PathBuf = mp.join("sv");

    // The state snapshot s1 must keep.
    let big0 = pattern(1, 5 * CHUNK + 1234);
    {
        let vol = vol.clone();
        let big0 = big0.clone();
        bounded("populate", &mut m, move || {
            fs::write(vol.join("a.txt"), b"hello").unwrap();
            fs::write(vol.join("big"), &big0).unwrap();
            fs::create_dir(vol.join("dir")).unwrap();
            fs::write(vol.join("dir/b"), b"bee").unwrap();
            fs::write(vol.join("gone"), pattern(2, 2 * CHUNK)).unwrap();
            symlink("a.txt", vol.join("link")).unwrap();
        });
    }
    let out = s.ok(&["snapshot", "create", "/sv", "s1"]);
    assert!(out.contains("/sv/.snapshot/s1"), "{out}");
    s.err(&["snapshot", "create", "/sv", "s1"], "EEXIST");
    s.err(&["snapshot", "create", "/sv", "a/b"], "EINVAL");
    s.err(&["snapshot", "create", "/nope", "x"], "ENOENT");

    // Change everything s1 holds.
    let mut big1 = big0.clone();
    big1[100..200].copy_from_slice(&[7u8; 100]);
    big1.truncate(2 * CHUNK + 10);
    {
        let vol = vol.clone();
        bounded("change", &mut m, move || {
            let mut f = OpenOptions::new()
                .append(true)
                .open(vol.join("a.txt"))
                .unwrap();
            f.write_all(b" world").unwrap();
            drop(f);
            let f = OpenOptions::new()
                .write(true)
                .open(vol.join("big"))
                .unwrap();
            f.write_all_at(&[7u8; 100], 100).unwrap();
            f.set_len(2 * CHUNK as u64 + 10).unwrap();
            f.sync_all().unwrap();
            drop(f);
            fs::remove_file(vol.join("gone")).unwrap();
            fs::rename(vol.join("dir/b"), vol.join("b-moved")).unwrap();
            fs::write(vol.join("new"), b"after").unwrap();
        });
    }
    let snap = vol.join(".snapshot");
    {
        let vol = vol.clone();
        let snap = snap.clone();
        let (big0, big1) = (big0.clone(), big1.clone());
        bounded("read s1", &mut m, move || {
            // Live.
            assert_eq!(fs::read(vol.join("a.txt")).unwrap(), b"hello world");
            assert_eq!(fs::read(vol.join("big")).unwrap(), big1);
            assert!(!names(&vol).contains(&".snapshot".to_string()));
            // The snapshot, as it was.
            assert_eq!(names(&snap), vec!["s1"]);
            let s1 = snap.join("s1");
            assert_eq!(
                names(&s1),
                vec!["a.txt", "big", "dir", "gone", "link"],
                "the snapshot lists what the volume held"
            );
            assert_eq!(fs::read(s1.join("a.txt")).unwrap(), b"hello");
            assert_eq!(fs::read(s1.join("big")).unwrap(), big0);
            assert_eq!(fs::read(s1.join("gone")).unwrap(), pattern(2, 2 * CHUNK));
            assert_eq!(fs::read(s1.join("dir/b")).unwrap(), b"bee");
            assert_eq!(fs::read_link(s1.join("link")).unwrap(), Path::new("a.txt"));
            assert_eq!(fs::read(s1.join("link")).unwrap(), b"hello");
            assert_eq!(
                fs::metadata(s1.join("big")).unwrap().len(),
                big0.len() as u64
            );
            // Random reads across chunk boundaries.
            let mut f = fs::File::open(s1.join("big")).unwrap();
            let mut buf = vec![0u8; 3000];
            f.seek(SeekFrom::Start(CHUNK as u64 - 1000)).unwrap();
            f.read_exact(&mut buf).unwrap();
            assert_eq!(buf, big0[CHUNK - 1000..CHUNK + 2000]);

            // Read-only, as POSIX says for a read-only file system.
            let e = libc::EROFS;
            let c =
                std::ffi::CString::new(s1.join("a.txt").as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: access(2) on a NUL-terminated path.
            assert_eq!(unsafe { libc::access(c.as_ptr(), libc::W_OK) }, -1);
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(e));
            assert_eq!(errno(fs::write(s1.join("a.txt"), b"x")), e);
            assert_eq!(
                errno(OpenOptions::new().append(true).open(s1.join("a.txt"))),
                e
            );
            assert_eq!(errno(fs::write(s1.join("c"), b"x")), e);
            assert_eq!(errno(fs::create_dir(s1.join("d"))), e);
            assert_eq!(errno(fs::remove_file(s1.join("a.txt"))), e);
            assert_eq!(errno(fs::remove_dir(s1.join("dir"))), e);
            assert_eq!(errno(fs::rename(s1.join("a.txt"), s1.join("z"))), e);
            assert_eq!(errno(fs::rename(vol.join("new"), s1.join("new"))), e);
            assert_eq!(errno(fs::hard_link(vol.join("new"), s1.join("h"))), e);
            assert_eq!(errno(symlink("x", s1.join("sl"))), e);
            assert_eq!(
                errno(fs::set_permissions(
                    s1.join("a.txt"),
                    std::os::unix::fs::PermissionsExt::from_mode(0o600)
                )),
                e
            );
            assert_eq!(errno(fs::create_dir(snap.join("s9"))), e);
            assert_eq!(errno(fs::remove_dir(&snap)), e);
            // The name exists (virtually): the kernel answers EEXIST itself.
            assert_eq!(errno(fs::create_dir(&snap)), libc::EEXIST);
        });
    }

    // A second snapshot, then more changes: each snapshot keeps its own past.
    s.ok(&["snapshot", "create", "/sv", "s2"]);
    {
        let vol = vol.clone();
        bounded("change again", &mut m, move || {
            let f = OpenOptions::new()
                .write(true)
                .open(vol.join("big"))
                .unwrap();
            f.write_all_at(&[9u8; 10], 0).unwrap();
            f.sync_all().unwrap();
            fs::remove_file(vol.join("a.txt")).unwrap();
        });
    }
    {
        let snap = snap.clone();
        let vol = vol.clone();
        let (big0, big1) = (big0.clone(), big1.clone());
        bounded("read s1 and s2", &mut m, move || {
            assert_eq!(names(&snap), vec!["s1", "s2"]);
            assert_eq!(fs::read(snap.join("s1/big")).unwrap(), big0);
            assert_eq!(fs::read(snap.join("s2/big")).unwrap(), big1);
            assert_eq!(fs::read(snap.join("s2/a.txt")).unwrap(), b"hello world");
            assert_eq!(fs::read(snap.join("s2/new")).unwrap(), b"after");
            let mut live = big1.clone();
            live[..10].copy_from_slice(&[9u8; 10]);
            assert_eq!(fs::read(vol.join("big")).unwrap(), live);
        });
    }
    // The CLI sees the same.
    let list = s.json(&["snapshot", "list", "/sv"]);
    let got: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec!["s1", "s2"]);
    let out = s.ok(&["ls", "/sv/.snapshot/s1"]);
    assert!(out.contains("gone") && !out.contains("new"), "{out}");

    // Only the volume root's owner (or an administrator) takes snapshots.
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let bob = s.login("bob", "bob-pw");
    let env = [("BERTH_TICKET_FILE", bob.as_path())];
    let out = s.cli_with(&["snapshot", "create", "/sv", "mine"], &env, None);
    s.check_err(&["snapshot", "create"], out, "EPERM");
    let out = s.cli_with(&["snapshot", "remove", "/sv", "s1"], &env, None);
    s.check_err(&["snapshot", "remove"], out, "EPERM");

    // Snapshots are durable.
    drop(m);
    s.kill9();
    s.restart();
    let m2 = Mount::start(&s, &mp, &[]);
    let mut m2 = m2;
    {
        let snap = snap.clone();
        let big0 = big0.clone();
        bounded("after restart", &mut m2, move || {
            assert_eq!(fs::read(snap.join("s1/big")).unwrap(), big0);
            assert_eq!(
                fs::read(snap.join("s1/gone")).unwrap(),
                pattern(2, 2 * CHUNK)
            );
        });
    }

    // Removing s1 frees it and leaves s2 whole.
    s.ok(&["snapshot", "remove", "/sv", "s1"]);
    s.err(&["snapshot", "remove", "/sv", "s1"], "ENOENT");
    // The mount may serve cached entries for the attribute TTL (1 s).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    {
        let snap = snap.clone();
        let big1 = big1.clone();
        bounded("after remove", &mut m2, move || {
            assert_eq!(errno(fs::metadata(snap.join("s1"))), libc::ENOENT);
            assert_eq!(names(&snap), vec!["s2"]);
            assert_eq!(fs::read(snap.join("s2/big")).unwrap(), big1);
            assert_eq!(fs::read(snap.join("s2/a.txt")).unwrap(), b"hello world");
        });
    }
    s.ok(&["snapshot", "remove", "/sv", "s2"]);
    let out = s.ok(&["volume", "check", "/sv"]);
    assert!(out.contains("0 problems"), "{out}");
    drop(m2);
}
