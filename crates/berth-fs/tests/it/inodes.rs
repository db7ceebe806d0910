//! The namespace addressed by inode: lookups and changes by (directory
//! inode, name), entries by inode; the authorization of a path walk on
//! every call; paths longer than PATH_MAX; directories moved under open
//! entries; directories stored before they kept their names; snapshots;
//! files kept for their holder's handles after their last name goes.

use berth_fs::records::{decode_inode, encode_inode, inode_key, View};
use berth_fs::{EntryInfo, EntryKind, Keep, NewEntry, NodeRef, Rights, SetAttr, VolumeSpec};
use berth_meta::map::{ROOT_SHARD, ROOT_VOLUME};
use berth_meta::{Code, ROOT_INODE};
use berth_security::principal::Principal;

use crate::{code, kernel, Kernel};

fn root() -> NodeRef {
    NodeRef::new(ROOT_VOLUME, ROOT_INODE, View::Live)
}

/// The address of a directory entry as a client keeps it.
fn node(e: &EntryInfo) -> NodeRef {
    NodeRef::new(e.volume_id, e.ino, e.view)
}

/// The address of a non-directory `e` reached as `name` in `dir`.
fn linked(e: &EntryInfo, dir: &EntryInfo) -> NodeRef {
    NodeRef {
        link: Some((dir.ino, e.name.clone())),
        ..node(e)
    }
}

fn dir(mode: u32) -> NewEntry {
    NewEntry {
        kind: EntryKind::Dir,
        mode,
        rdev: 0,
        target: None,
        owner: None,
    }
}

const RW: Rights = Rights {
    read: true,
    write: true,
    truncate: false,
};

impl Kernel {
    async fn mkdir_at(&self, p: &Principal, parent: &EntryInfo, name: &str) -> EntryInfo {
        self.ns
            .make_node(p, &node(parent), name, &dir(0o755))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn paths_past_path_max_work_by_inode() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &[]).await;
    let top =
        k.ns.make_node(a, &root(), "deep", &dir(0o777))
            .await
            .unwrap();
    // 40 levels of 200-byte names: a path of about 8 KiB.
    let mut at = top.clone();
    for i in 0..40 {
        let name = format!("{i:03}{}", "d".repeat(197));
        at = k.mkdir_at(&alice, &at, &name).await;
    }
    assert!(at.path.len() > 8000, "{}", at.path.len());
    // A file at the bottom: made, written and read by handle, found again.
    let (h, f, created) =
        k.ns.create_node(&alice, &node(&at), "f", RW, true, 0o600, None)
            .await
            .unwrap();
    assert!(created);
    k.ns.write(&alice, &h, 0, b"deep bytes").await.unwrap();
    let again = k.ns.lookup(&alice, &node(&at), "f").await.unwrap();
    assert_eq!((again.ino, again.inode.size), (f.ino, 10));
    let got = k.ns.getattr(&alice, &linked(&f, &at), None).await.unwrap();
    assert_eq!(got.path, format!("{}/f", at.path));
    let (entries, more) = k.ns.list_node(&alice, &node(&at), "", 0).await.unwrap();
    assert_eq!((entries.len(), more), (1, false));
    // The full path itself is too long for the path-based calls (ENAMETOOLONG),
    // while its names are not.
    assert_eq!(code(k.ns.stat(&alice, &got.path).await), Code::NameTooLong);
    let long = "n".repeat(256);
    assert_eq!(
        code(k.ns.make_node(&alice, &node(&at), &long, &dir(0o755)).await),
        Code::NameTooLong
    );
    // A ticket scoped to the top sees the bottom too; one scoped elsewhere
    // does not.
    let scoped = |s: &str| {
        let (t, _) = k
            .meta
            .sign_for(
                "alice",
                Some(berth_security::scope::Scope::parse(s).unwrap()),
                60,
            )
            .unwrap();
        k.meta.authenticate(&t).unwrap()
    };
    let inside = scoped("/deep:r");
    let e = k.ns.getattr(&inside, &linked(&f, &at), None).await.unwrap();
    assert_eq!(e.ino, f.ino);
    let (h, _) =
        k.ns.open_node(
            &inside,
            &linked(&f, &at),
            Rights {
                read: true,
                ..RW.without_write()
            },
        )
        .await
        .unwrap();
    assert_eq!(k.ns.read(&inside, &h, 0, 4).await.unwrap().0, b"deep");
    assert_eq!(
        code(k.ns.open_node(&inside, &linked(&f, &at), RW).await),
        Code::Access
    );
    let outside = scoped("/elsewhere:rw");
    assert_eq!(
        code(k.ns.getattr(&outside, &linked(&f, &at), None).await),
        Code::Access
    );
    assert_eq!(
        code(k.ns.lookup(&outside, &node(&at), "f").await),
        Code::Access
    );
    k.consistent("/").await;
}

trait WithoutWrite {
    fn without_write(self) -> Rights;
}

impl WithoutWrite for Rights {
    fn without_write(self) -> Rights {
        Rights {
            write: false,
            ..self
        }
    }
}

#[tokio::test]
async fn a_renamed_directory_keeps_what_is_below_it_reachable() {
    let k = kernel().await;
    let a = &k.admin;
    let r = k.ns.stat(a, "/").await.unwrap();
    let d = k.mkdir_at(a, &r, "a").await;
    let b = k.mkdir_at(a, &d, "b").await;
    let c = k.mkdir_at(a, &b, "c").await;
    let x = k.mkdir_at(a, &r, "x").await;
    let (h, f, _) =
        k.ns.create_node(a, &node(&c), "f", RW, true, 0o644, None)
            .await
            .unwrap();
    k.ns.write(a, &h, 0, b"kept").await.unwrap();
    // b moves to another directory under another name, in one command.
    let kept =
        k.ns.rename_node(a, (&node(&d), "b"), (&node(&x), "b2"), false, false, None)
            .await
            .unwrap();
    assert!(!kept);
    // What was below it is where it went, by the same addresses.
    assert_eq!(
        k.ns.getattr(a, &node(&c), None).await.unwrap().path,
        "/x/b2/c"
    );
    let fe = k.ns.getattr(a, &linked(&f, &c), None).await.unwrap();
    assert_eq!((fe.path.as_str(), fe.inode.size), ("/x/b2/c/f", 4));
    let (h2, _) = k.ns.open_node(a, &linked(&f, &c), RW).await.unwrap();
    assert_eq!(k.ns.read(a, &h2, 0, 4).await.unwrap().0, b"kept");
    assert_eq!(k.ns.read(a, &h, 0, 4).await.unwrap().0, b"kept");
    // The moved directory carries its new name.
    let tx = k.meta.router().begin(ROOT_SHARD).await.unwrap();
    let stored = tx
        .peek(&inode_key(ROOT_VOLUME, b.ino))
        .await
        .unwrap()
        .unwrap();
    let bi = decode_inode(&stored).unwrap();
    assert_eq!((bi.name.as_str(), bi.parent), ("b2", x.ino));
    // An exchange swaps names too.
    let y = k.mkdir_at(a, &r, "y").await;
    k.ns.rename_node(a, (&node(&x), "b2"), (&node(&r), "y"), false, true, None)
        .await
        .unwrap();
    assert_eq!(k.ns.getattr(a, &node(&c), None).await.unwrap().path, "/y/c");
    assert_eq!(
        k.ns.getattr(a, &node(&y), None).await.unwrap().path,
        "/x/b2"
    );
    // A directory may not move below itself.
    assert_eq!(
        code(
            k.ns.rename_node(a, (&node(&r), "y"), (&node(&c), "y"), false, false, None)
                .await
        ),
        Code::Invalid
    );
    // The old name of a file no longer leads to it.
    k.ns.rename_node(a, (&node(&c), "f"), (&node(&c), "g"), false, false, None)
        .await
        .unwrap();
    assert_eq!(
        code(k.ns.getattr(a, &linked(&f, &c), None).await),
        Code::Stale
    );
    let g = NodeRef {
        link: Some((c.ino, "g".into())),
        ..node(&f)
    };
    assert_eq!(k.ns.getattr(a, &g, None).await.unwrap().ino, f.ino);
    // A file without the name it was reached by is refused; a removed
    // directory is stale.
    assert_eq!(code(k.ns.getattr(a, &node(&f), None).await), Code::Invalid);
    k.ns.remove_node(a, &node(&c), "g", Some(false), None)
        .await
        .unwrap();
    k.ns.remove_node(a, &node(&b), "c", Some(true), None)
        .await
        .unwrap();
    assert_eq!(code(k.ns.getattr(a, &node(&c), None).await), Code::Stale);
    k.consistent("/").await;
}

#[tokio::test]
async fn inode_addresses_get_the_checks_of_a_path_walk() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &[]).await;
    let bob = k.user("bob", &[]).await;
    let r = k.ns.stat(a, "/").await.unwrap();
    let home = k.mkdir_at(a, &r, "home").await;
    k.ns.set_attr(
        a,
        "/home",
        &SetAttr {
            mode: Some(0o777),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let private =
        k.ns.make_node(&alice, &node(&home), "private", &dir(0o700))
            .await
            .unwrap();
    let sub =
        k.ns.make_node(&alice, &node(&private), "sub", &dir(0o777))
            .await
            .unwrap();
    let (_, f, _) =
        k.ns.create_node(&alice, &node(&sub), "f", RW, true, 0o666, None)
            .await
            .unwrap();
    // Alice reaches everything.
    k.ns.getattr(&alice, &linked(&f, &sub), None).await.unwrap();
    // Bob may not search alice's private directory: not by lookup, and not
    // by the inode numbers of what lies below it, however he learnt them.
    assert_eq!(
        code(k.ns.lookup(&bob, &node(&private), "sub").await),
        Code::Access
    );
    for r in [
        k.ns.getattr(&bob, &node(&sub), None).await,
        k.ns.getattr(&bob, &linked(&f, &sub), None).await,
    ] {
        assert_eq!(code(r), Code::Access);
    }
    assert_eq!(
        code(k.ns.list_node(&bob, &node(&sub), "", 0).await),
        Code::Access
    );
    assert_eq!(
        code(k.ns.open_node(&bob, &linked(&f, &sub), RW).await),
        Code::Access
    );
    assert_eq!(
        code(k.ns.make_node(&bob, &node(&sub), "x", &dir(0o755)).await),
        Code::Access
    );
    assert_eq!(
        code(k.ns.remove_node(&bob, &node(&sub), "f", None, None).await),
        Code::Access
    );
    // Listing the private directory itself needs read on it.
    assert_eq!(
        code(k.ns.list_node(&bob, &node(&private), "", 0).await),
        Code::Access
    );
    // Once alice opens it, bob is in (the walk is done again every call).
    k.ns.set_attr_node(
        &alice,
        &node(&private),
        None,
        &SetAttr {
            mode: Some(0o711),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    k.ns.getattr(&bob, &linked(&f, &sub), None).await.unwrap();
    k.ns.set_attr_node(
        &alice,
        &node(&private),
        None,
        &SetAttr {
            mode: Some(0o700),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        code(k.ns.getattr(&bob, &node(&sub), None).await),
        Code::Access
    );
    // A scope outside the entry's path refuses it, even for an administrator.
    let (t, _) = k
        .meta
        .sign_for(
            "admin",
            Some(berth_security::scope::Scope::parse("/other:rw").unwrap()),
            60,
        )
        .unwrap();
    let scoped = k.meta.authenticate(&t).unwrap();
    assert_eq!(
        code(k.ns.getattr(&scoped, &node(&sub), None).await),
        Code::Access
    );
    assert_eq!(
        code(k.ns.lookup(&scoped, &node(&home), "private").await),
        Code::Access
    );
    assert_eq!(
        code(k.ns.make_node(&scoped, &node(&r), "new", &dir(0o755)).await),
        Code::Access
    );
    // Unlink and rmdir check the kind after the permissions.
    assert_eq!(
        code(
            k.ns.remove_node(&alice, &node(&sub), "f", Some(true), None)
                .await
        ),
        Code::NotDir
    );
    assert_eq!(
        code(
            k.ns.remove_node(&alice, &node(&private), "sub", Some(false), None)
                .await
        ),
        Code::IsDir
    );
    // Creating with another owner takes what chown would.
    let give = |owner| NewEntry {
        owner: Some(owner),
        ..dir(0o755)
    };
    assert_eq!(
        code(
            k.ns.make_node(&alice, &node(&sub), "g", &give((bob.uid, alice.uid)))
                .await
        ),
        Code::Perm
    );
    let e =
        k.ns.make_node(a, &node(&sub), "g", &give((bob.uid, 4242)))
            .await
            .unwrap();
    assert_eq!((e.inode.uid, e.inode.gid), (bob.uid, 4242));
    k.consistent("/").await;
}

#[tokio::test]
async fn directories_stored_without_names_find_them() {
    let k = kernel().await;
    let a = &k.admin;
    k.ns.mkdir(a, "/old/dir/sub", 0o755, true).await.unwrap();
    let d = k.ns.stat(a, "/old/dir").await.unwrap();
    let sub = k.ns.stat(a, "/old/dir/sub").await.unwrap();
    // Rewrite /old/dir as the build before names stored it: its bytes
    // without the trailing (empty) name.
    let key = inode_key(ROOT_VOLUME, d.ino);
    let mut tx = k.meta.router().begin(ROOT_SHARD).await.unwrap();
    let mut i = decode_inode(&tx.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(i.name, "dir");
    i.name.clear();
    let mut old = encode_inode(&i);
    assert_eq!(old.pop(), Some(0));
    tx.put(key.clone(), old);
    tx.commit().await.unwrap();
    // Found by its parent's entries, then stored.
    let alice = k.user("alice", &[]).await;
    let e = k.ns.getattr(&alice, &node(&sub), None).await.unwrap();
    assert_eq!(e.path, "/old/dir/sub");
    let tx = k.meta.router().begin(ROOT_SHARD).await.unwrap();
    let i = decode_inode(&tx.peek(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(i.name, "dir");
    k.consistent("/").await;
}

#[tokio::test]
async fn snapshots_are_reached_by_inode_and_stay_read_only() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &[]).await;
    let v =
        k.ns.volume_create(
            a,
            &VolumeSpec {
                path: "/v".into(),
                replication: 1,
                quota_bytes: 0,
                read_ace: None,
                write_ace: None,
                chunk_size: 0,
                leader_preference: None,
            },
        )
        .await
        .unwrap();
    let vroot = k.ns.lookup(a, &root(), "v").await.unwrap();
    assert!(vroot.volume_root);
    assert_eq!(vroot.volume_id, v.record.id);
    let d = k.mkdir_at(a, &vroot, "d").await;
    let (h, f, _) =
        k.ns.create_node(a, &node(&d), "f", RW, true, 0o644, None)
            .await
            .unwrap();
    k.ns.write(a, &h, 0, b"before").await.unwrap();
    k.ns.snapshot_create(a, "/v", "s1").await.unwrap();
    k.ns.write(a, &h, 0, b"AFTER!").await.unwrap();

    let snaps =
        k.ns.lookup(&alice, &node(&vroot), ".snapshot")
            .await
            .unwrap();
    assert_eq!(snaps.view, View::SnapshotDir);
    let s1 = k.ns.lookup(&alice, &node(&snaps), "s1").await.unwrap();
    assert!(matches!(s1.view, View::Snapshot(_)));
    assert_eq!(s1.path, "/v/.snapshot/s1");
    let sd = k.ns.lookup(&alice, &node(&s1), "d").await.unwrap();
    let sf = k.ns.lookup(&alice, &node(&sd), "f").await.unwrap();
    assert_eq!((sf.ino, sf.view), (f.ino, s1.view));
    assert_eq!(
        k.ns.getattr(&alice, &node(&sd), None).await.unwrap().path,
        "/v/.snapshot/s1/d"
    );
    let (sh, _) =
        k.ns.open_node(&alice, &linked(&sf, &sd), RW.without_write())
            .await
            .unwrap();
    assert_eq!(k.ns.read(&alice, &sh, 0, 6).await.unwrap().0, b"before");
    let (names, _) = k.ns.list_node(&alice, &node(&snaps), "", 0).await.unwrap();
    assert_eq!(
        names.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["s1"]
    );
    // Read-only, whatever the call.
    assert_eq!(
        code(k.ns.make_node(a, &node(&sd), "x", &dir(0o755)).await),
        Code::ReadOnly
    );
    assert_eq!(
        code(k.ns.remove_node(a, &node(&sd), "f", None, None).await),
        Code::ReadOnly
    );
    assert_eq!(
        code(k.ns.open_node(a, &linked(&sf, &sd), RW).await),
        Code::ReadOnly
    );
    assert_eq!(
        code(
            k.ns.make_node(a, &node(&vroot), ".snapshot", &dir(0o755))
                .await
        ),
        Code::ReadOnly
    );
    // A removed snapshot's addresses are stale.
    k.ns.snapshot_remove(a, "/v", "s1").await.unwrap();
    assert_eq!(code(k.ns.getattr(a, &node(&sd), None).await), Code::Stale);
}

#[tokio::test]
async fn symbolic_links_are_changed_themselves_by_inode() {
    let k = kernel().await;
    let a = &k.admin;
    let r = k.ns.stat(a, "/").await.unwrap();
    let (_, target, _) =
        k.ns.create_node(a, &node(&r), "target", RW, true, 0o644, None)
            .await
            .unwrap();
    let link =
        k.ns.make_node(
            a,
            &node(&r),
            "link",
            &NewEntry {
                kind: EntryKind::Symlink,
                mode: 0,
                rdev: 0,
                target: Some("target".into()),
                owner: Some((1234, 5678)),
            },
        )
        .await
        .unwrap();
    assert_eq!((link.inode.uid, link.inode.gid), (1234, 5678));
    assert_eq!(
        k.ns.readlink_node(a, &linked(&link, &r)).await.unwrap(),
        "target"
    );
    let e =
        k.ns.set_attr_node(
            a,
            &linked(&link, &r),
            None,
            &SetAttr {
                atime_ns: Some(1_000_000_000),
                mtime_ns: Some(2_000_000_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (e.inode.kind, e.inode.mtime_ns),
        (EntryKind::Symlink, 2_000_000_000)
    );
    let t = k.ns.getattr(a, &linked(&target, &r), None).await.unwrap();
    assert_ne!(t.inode.mtime_ns, 2_000_000_000);
    assert_eq!(
        code(k.ns.readlink_node(a, &linked(&target, &r)).await),
        Code::Invalid
    );
}

#[tokio::test]
async fn unlinked_open_files_live_for_their_holder() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &[]).await;
    let r = k.ns.stat(a, "/").await.unwrap();
    let d =
        k.ns.make_node(a, &node(&r), "d", &dir(0o777))
            .await
            .unwrap();
    let (h, f, _) =
        k.ns.create_node(&alice, &node(&d), "f", RW, true, 0o600, None)
            .await
            .unwrap();
    k.ns.write(&alice, &h, 0, b"still here").await.unwrap();
    // Unlinked with the handle held: the name goes, the file stays.
    let keep = Keep {
        holder: 77,
        ino: f.ino,
    };
    assert!(k
        .ns
        .remove_node(&alice, &node(&d), "f", Some(false), Some(keep))
        .await
        .unwrap());
    assert_eq!(
        code(k.ns.lookup(&alice, &node(&d), "f").await),
        Code::NotFound
    );
    let e = k.ns.getattr(&alice, &node(&f), Some(&h)).await.unwrap();
    assert_eq!((e.inode.nlink, e.inode.size), (0, 10));
    k.ns.write(&alice, &h, 10, b"!").await.unwrap();
    assert_eq!(
        k.ns.read(&alice, &h, 0, 64).await.unwrap().0,
        b"still here!"
    );
    // ftruncate through the handle.
    let e =
        k.ns.set_attr_node(
            &alice,
            &node(&f),
            Some(&h),
            &SetAttr {
                size: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((e.inode.size, e.inode.nlink), (5, 0));
    // Only a handle of that file, of the caller, stands for it.
    let (other_h, other, _) =
        k.ns.create_node(&alice, &node(&d), "other", RW, true, 0o600, None)
            .await
            .unwrap();
    assert_eq!(
        code(k.ns.getattr(&alice, &node(&f), Some(&other_h)).await),
        Code::Invalid
    );
    assert_eq!(
        code(k.ns.getattr(a, &node(&f), Some(&h)).await),
        Code::Access
    );
    k.consistent("/").await;
    // Renewed by its holder only.
    assert_eq!(
        k.ns.keep_orphans(&alice, ROOT_VOLUME, 77, &[f.ino, other.ino])
            .await
            .unwrap(),
        [other.ino]
    );
    assert_eq!(
        k.ns.keep_orphans(&alice, ROOT_VOLUME, 78, &[f.ino])
            .await
            .unwrap(),
        [f.ino]
    );
    // The last close releases it, with its data.
    k.ns.release_orphan(&alice, ROOT_VOLUME, 77, f.ino)
        .await
        .unwrap();
    assert_eq!(code(k.ns.read(&alice, &h, 0, 4).await), Code::NotFound);
    k.consistent("/").await;

    // A replaced file is kept the same way; its holder goes away and the
    // lease lapses: the leader deletes it.
    k.ns.set_orphan_lease_ms(300);
    let (h3, g, _) =
        k.ns.create_node(&alice, &node(&d), "g", RW, true, 0o600, None)
            .await
            .unwrap();
    let kept =
        k.ns.rename_node(
            &alice,
            (&node(&d), "other"),
            (&node(&d), "g"),
            false,
            false,
            Some(Keep {
                holder: 5,
                ino: g.ino,
            }),
        )
        .await
        .unwrap();
    assert!(kept);
    assert_eq!(
        k.ns.getattr(&alice, &node(&g), Some(&h3))
            .await
            .unwrap()
            .inode
            .nlink,
        0
    );
    k.consistent("/").await;
    assert_eq!(k.ns.reap_orphans().await.unwrap(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(k.ns.reap_orphans().await.unwrap(), 1);
    assert_eq!(
        code(k.ns.getattr(&alice, &node(&g), Some(&h3)).await),
        Code::NotFound
    );
    k.consistent("/").await;
    // Directories and other kinds are never kept.
    let sub =
        k.ns.make_node(a, &node(&d), "sub", &dir(0o777))
            .await
            .unwrap();
    assert!(!k
        .ns
        .remove_node(
            a,
            &node(&d),
            "sub",
            Some(true),
            Some(Keep {
                holder: 5,
                ino: sub.ino
            })
        )
        .await
        .unwrap());
    k.consistent("/").await;
}
