//! FIFOs, sockets and device nodes: namespace entries of their own kinds,
//! with attributes (and a device number) but no contents.

use berth_fs::records::{encode_inode, inode_key};
use berth_fs::{EntryKind, SetAttr};
use berth_meta::Code;

use crate::{code, kernel};

/// makedev(8, 1), as glibc encodes a `dev_t`.
const SDA1: u64 = (8 << 8) | 1;
/// makedev(259, 70000): a major over 8 bits and a minor over 20.
const BIG: u64 = ((259 & 0xfff) << 8) | (70000 & 0xff) | ((70000 & !0xff) << 12);

#[tokio::test]
async fn special_files_are_entries_of_their_own_kinds() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &["staff"]).await;
    k.ns.mkdir(a, "/d", 0o777, false).await.unwrap();

    // Made, and reported with their kind and device.
    let fifo =
        k.ns.mknod(&alice, "/d/fifo", EntryKind::Fifo, 0o640, 0)
            .await
            .unwrap();
    assert_eq!(fifo.inode.kind, EntryKind::Fifo);
    assert_eq!((fifo.inode.mode, fifo.inode.uid), (0o640, alice.uid));
    assert_eq!(
        (fifo.inode.nlink, fifo.inode.size, fifo.inode.rdev),
        (1, 0, 0)
    );
    k.ns.mknod(&alice, "/d/sock", EntryKind::Socket, 0o755, 0)
        .await
        .unwrap();
    k.ns.mknod(a, "/d/sda1", EntryKind::BlockDevice, 0o660, SDA1)
        .await
        .unwrap();
    k.ns.mknod(a, "/d/big", EntryKind::CharDevice, 0o600, BIG)
        .await
        .unwrap();
    for (name, kind, rdev) in [
        ("fifo", EntryKind::Fifo, 0),
        ("sock", EntryKind::Socket, 0),
        ("sda1", EntryKind::BlockDevice, SDA1),
        ("big", EntryKind::CharDevice, BIG),
    ] {
        let e = k.ns.stat(a, &format!("/d/{name}")).await.unwrap();
        assert_eq!((e.inode.kind, e.inode.rdev), (kind, rdev), "{name}");
    }
    let (listed, _) = k.ns.list(a, "/d", "", 0).await.unwrap();
    let kinds: Vec<_> = listed
        .iter()
        .map(|e| (e.name.as_str(), e.inode.kind, e.inode.rdev))
        .collect();
    assert_eq!(
        kinds,
        [
            ("big", EntryKind::CharDevice, BIG),
            ("fifo", EntryKind::Fifo, 0),
            ("sda1", EntryKind::BlockDevice, SDA1),
            ("sock", EntryKind::Socket, 0),
        ]
    );

    // Refusals: an existing name; a device by a non-superuser (as without
    // CAP_MKNOD); a device number on a FIFO; mknod of a plain file; and a
    // special entry in the middle of a path.
    assert_eq!(
        code(
            k.ns.mknod(&alice, "/d/fifo", EntryKind::Fifo, 0o644, 0)
                .await
        ),
        Code::Exists
    );
    assert_eq!(
        code(
            k.ns.mknod(&alice, "/d/tty", EntryKind::CharDevice, 0o644, SDA1)
                .await
        ),
        Code::Perm
    );
    assert_eq!(
        code(k.ns.mknod(a, "/d/f2", EntryKind::Fifo, 0o644, SDA1).await),
        Code::Invalid
    );
    assert_eq!(
        code(k.ns.mknod(a, "/d/f3", EntryKind::File, 0o644, 0).await),
        Code::Invalid
    );
    assert_eq!(
        code(k.ns.create(a, "/d/f4", EntryKind::Fifo, 0o644, true).await),
        Code::Invalid
    );
    assert_eq!(code(k.ns.stat(a, "/d/fifo/x").await), Code::NotDir);
    // Their contents are the kernel's: no open through Berth.
    assert_eq!(
        code(
            k.ns.open(a, &crate::open_spec("/d/fifo", false, false))
                .await
        ),
        Code::Invalid
    );

    // chmod, chown, utimens and their ctime, as on files.
    let before = k.ns.stat(a, "/d/fifo").await.unwrap().inode;
    let e =
        k.ns.set_attr(
            &alice,
            "/d/fifo",
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(e.inode.mode, 0o600);
    assert!(e.inode.ctime_ns >= before.ctime_ns);
    let staff = alice.gids[0];
    let e =
        k.ns.set_attr(
            &alice,
            "/d/fifo",
            &SetAttr {
                gid: Some(staff),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(e.inode.gid, staff);
    let e =
        k.ns.set_attr(
            a,
            "/d/sda1",
            &SetAttr {
                uid: Some(alice.uid),
                atime_ns: Some(1_000_000_000),
                mtime_ns: Some(2_000_000_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(e.inode.uid, alice.uid);
    assert_eq!(
        (e.inode.atime_ns, e.inode.mtime_ns),
        (1_000_000_000, 2_000_000_000)
    );
    assert_eq!(e.inode.rdev, SDA1, "a set_attr keeps the device");
    assert_eq!(
        code(
            k.ns.set_attr(
                a,
                "/d/sock",
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                }
            )
            .await
        ),
        Code::Invalid
    );

    // Hard links, rename (over another special file too), unlink.
    let e = k.ns.link(&alice, "/d/fifo", "/d/fifo2").await.unwrap();
    assert_eq!((e.inode.kind, e.inode.nlink), (EntryKind::Fifo, 2));
    k.ns.rename(&alice, "/d/fifo2", "/d/pipe", false)
        .await
        .unwrap();
    assert_eq!(k.ns.stat(a, "/d/pipe").await.unwrap().inode.nlink, 2);
    k.ns.rename(a, "/d/sda1", "/d/disk", false).await.unwrap();
    let e = k.ns.stat(a, "/d/disk").await.unwrap();
    assert_eq!((e.inode.kind, e.inode.rdev), (EntryKind::BlockDevice, SDA1));
    k.ns.rename(&alice, "/d/sock", "/d/pipe", false)
        .await
        .unwrap();
    assert_eq!(
        k.ns.stat(a, "/d/pipe").await.unwrap().inode.kind,
        EntryKind::Socket
    );
    assert_eq!(k.ns.stat(a, "/d/fifo").await.unwrap().inode.nlink, 1);
    k.consistent("/").await;

    // A snapshot keeps them, kind, device and all.
    k.ns.snapshot_create(a, "/", "s1").await.unwrap();
    k.ns.remove(a, "/d/disk", false).await.unwrap();
    k.ns.remove(&alice, "/d/fifo", false).await.unwrap();
    assert_eq!(code(k.ns.stat(a, "/d/disk").await), Code::NotFound);
    let e = k.ns.stat(a, "/.snapshot/s1/d/disk").await.unwrap();
    assert_eq!((e.inode.kind, e.inode.rdev), (EntryKind::BlockDevice, SDA1));
    let e = k.ns.stat(a, "/.snapshot/s1/d/fifo").await.unwrap();
    assert_eq!((e.inode.kind, e.inode.mode), (EntryKind::Fifo, 0o600));
    assert_eq!(
        code(
            k.ns.mknod(a, "/.snapshot/s1/d/new", EntryKind::Fifo, 0o644, 0)
                .await
        ),
        Code::ReadOnly
    );
    assert_eq!(k.names(a, "/d").await, ["big", "pipe"]);
    k.consistent("/").await;

    // The check knows what special inodes may not hold.
    let pipe = k.ns.stat(a, "/d/pipe").await.unwrap();
    let mut bad = pipe.inode.clone();
    (bad.rdev, bad.size) = (SDA1, 3);
    let mut tx = k
        .meta
        .router()
        .begin(berth_meta::map::ROOT_SHARD)
        .await
        .unwrap();
    tx.put(inode_key(1, pipe.ino), encode_inode(&bad));
    tx.commit().await.unwrap();
    let r = k.ns.volume_check(a, "/").await.unwrap();
    let text = r.problems.join("\n");
    assert!(text.contains("socket with a device number"), "{text}");
    assert!(text.contains("socket of 3 bytes"), "{text}");
}
