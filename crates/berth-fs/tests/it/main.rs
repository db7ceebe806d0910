//! Namespace and volume semantics against a real single-node kernel
//! (store, multi-raft loop, meta shard) in a temp dir, no network.

use std::sync::Arc;

use berth_fs::{EntryAcl, EntryKind, Namespace, SetAttr, VolumeSpec};
use berth_meta::map::{ShardRecord, META_SHARD};
use berth_meta::testing::{single_node, SingleNode};
use berth_meta::{Code, Meta};
use berth_security::principal::Principal;

mod exchange;
mod inodes;
mod locks;
mod special;

struct Kernel {
    /// Keeps the node and its temp dir alive for the test.
    _node: SingleNode,
    ns: Arc<Namespace>,
    meta: Arc<Meta>,
    admin: Principal,
}

async fn kernel() -> Kernel {
    let node = single_node().await;
    let ns = Namespace::new(node.meta.clone());
    ns.reconcile().await.unwrap();
    Kernel {
        ns,
        meta: node.meta.clone(),
        admin: node.admin.clone(),
        _node: node,
    }
}

impl Kernel {
    async fn user(&self, name: &str, groups: &[&str]) -> Principal {
        for g in groups {
            if !self.meta.map().groups.contains_key(*g) {
                self.meta.group_add(&self.admin, g, None).await.unwrap();
            }
        }
        self.meta
            .user_add(
                &self.admin,
                name,
                Some("pw"),
                None,
                groups.iter().map(|g| g.to_string()).collect(),
                false,
            )
            .await
            .unwrap();
        let (t, _) = self.meta.sign_for(name, None, 3600).unwrap();
        self.meta.authenticate(&t).unwrap()
    }

    async fn names(&self, p: &Principal, dir: &str) -> Vec<String> {
        let (entries, more) = self.ns.list(p, dir, "", 0).await.unwrap();
        assert!(!more);
        entries.into_iter().map(|e| e.name).collect()
    }
}

impl Kernel {
    /// Asserts the volume at `path` is consistent.
    async fn consistent(&self, path: &str) {
        let r = self.ns.volume_check(&self.admin, path).await.unwrap();
        assert!(r.problems.is_empty(), "{path}: {:?}", r.problems);
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, berth_meta::Error>) -> Code {
    r.expect_err("expected an error").code
}

#[tokio::test]
async fn directories_files_and_links() {
    let k = kernel().await;
    let a = &k.admin;
    k.ns.mkdir(a, "/d", 0o755, false).await.unwrap();
    assert_eq!(code(k.ns.mkdir(a, "/d", 0o755, false).await), Code::Exists);
    k.ns.mkdir(a, "/d/e/f", 0o755, true).await.unwrap();
    k.ns.mkdir(a, "/d/e/f", 0o755, true).await.unwrap(); // -p: no error
    assert_eq!(
        code(k.ns.mkdir(a, "/x/y", 0o755, false).await),
        Code::NotFound
    );
    k.ns.create(a, "/d/file", EntryKind::File, 0o644, true)
        .await
        .unwrap();
    assert_eq!(
        code(k.ns.mkdir(a, "/d/file/sub", 0o755, false).await),
        Code::NotDir
    );
    k.ns.create(a, "/d/tbl", EntryKind::Table, 0o644, true)
        .await
        .unwrap();
    k.ns.create(a, "/d/str", EntryKind::Stream, 0o644, true)
        .await
        .unwrap();
    assert_eq!(k.names(a, "/d").await, ["e", "file", "str", "tbl"]);
    // nlink: 2 + subdirectories.
    assert_eq!(k.ns.stat(a, "/d").await.unwrap().inode.nlink, 3);
    assert_eq!(
        k.ns.stat(a, "/d/tbl").await.unwrap().inode.kind,
        EntryKind::Table
    );

    // Symlinks: intermediate links are followed, the last is not (lstat).
    k.ns.symlink(a, "/link", "d/e").await.unwrap();
    assert_eq!(k.ns.readlink(a, "/link").await.unwrap(), "d/e");
    assert_eq!(
        k.ns.stat(a, "/link").await.unwrap().inode.kind,
        EntryKind::Symlink
    );
    assert_eq!(k.ns.stat(a, "/link/f").await.unwrap().path, "/d/e/f");
    k.ns.symlink(a, "/loop1", "/loop2").await.unwrap();
    k.ns.symlink(a, "/loop2", "/loop1").await.unwrap();
    assert_eq!(code(k.ns.stat(a, "/loop1/x").await), Code::Loop);

    // Remove: files, empty dirs, -r.
    assert_eq!(code(k.ns.remove(a, "/d", false).await), Code::NotEmpty);
    k.ns.remove(a, "/d/file", false).await.unwrap();
    assert_eq!(code(k.ns.stat(a, "/d/file").await), Code::NotFound);
    k.ns.remove(a, "/d", true).await.unwrap();
    assert_eq!(code(k.ns.stat(a, "/d").await), Code::NotFound);
    assert_eq!(code(k.ns.remove(a, "/", true).await), Code::Busy);
    assert_eq!(k.ns.stat(a, "/").await.unwrap().inode.nlink, 2);

    // Paging through a large directory.
    k.ns.mkdir(a, "/big", 0o755, false).await.unwrap();
    for i in 0..250 {
        k.ns.create(a, &format!("/big/f{i:04}"), EntryKind::File, 0o644, true)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (page, more) = k.ns.list(a, "/big", &after, 64).await.unwrap();
        after = page.last().map(|e| e.name.clone()).unwrap_or_default();
        seen.extend(page.into_iter().map(|e| e.name));
        if !more {
            break;
        }
    }
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    k.consistent("/").await;
}

#[tokio::test]
async fn rename_semantics() {
    let k = kernel().await;
    let a = &k.admin;
    k.ns.mkdir(a, "/a/b/c", 0o755, true).await.unwrap();
    k.ns.mkdir(a, "/z", 0o755, false).await.unwrap();
    k.ns.create(a, "/a/f1", EntryKind::File, 0o644, true)
        .await
        .unwrap();
    k.ns.create(a, "/a/f2", EntryKind::File, 0o644, true)
        .await
        .unwrap();
    // File over file replaces it.
    let f1 = k.ns.stat(a, "/a/f1").await.unwrap().ino;
    k.ns.rename(a, "/a/f1", "/a/f2", false).await.unwrap();
    assert_eq!(k.ns.stat(a, "/a/f2").await.unwrap().ino, f1);
    assert_eq!(code(k.ns.stat(a, "/a/f1").await), Code::NotFound);
    // No-replace.
    k.ns.create(a, "/a/f3", EntryKind::File, 0o644, true)
        .await
        .unwrap();
    assert_eq!(
        code(k.ns.rename(a, "/a/f3", "/a/f2", true).await),
        Code::Exists
    );
    // Kinds must match.
    assert_eq!(
        code(k.ns.rename(a, "/a/b", "/a/f2", false).await),
        Code::NotDir
    );
    assert_eq!(
        code(k.ns.rename(a, "/a/f2", "/z", false).await),
        Code::IsDir
    );
    // Directory over a non-empty directory.
    k.ns.mkdir(a, "/z/full", 0o755, false).await.unwrap();
    assert_eq!(
        code(k.ns.rename(a, "/a/b", "/z", false).await),
        Code::NotEmpty
    );
    // Into its own subtree.
    assert_eq!(
        code(k.ns.rename(a, "/a", "/a/b/c/a", false).await),
        Code::Invalid
    );
    // Directory move across parents fixes link counts.
    let a_nlink = k.ns.stat(a, "/a").await.unwrap().inode.nlink;
    let z_nlink = k.ns.stat(a, "/z").await.unwrap().inode.nlink;
    k.ns.rename(a, "/a/b", "/z/b", false).await.unwrap();
    assert_eq!(k.ns.stat(a, "/a").await.unwrap().inode.nlink, a_nlink - 1);
    assert_eq!(k.ns.stat(a, "/z").await.unwrap().inode.nlink, z_nlink + 1);
    assert_eq!(k.ns.stat(a, "/z/b/c").await.unwrap().path, "/z/b/c");
    // Empty directory over an empty directory.
    k.ns.mkdir(a, "/e1", 0o755, false).await.unwrap();
    k.ns.mkdir(a, "/e2", 0o755, false).await.unwrap();
    let root = k.ns.stat(a, "/").await.unwrap().inode.nlink;
    k.ns.rename(a, "/e1", "/e2", false).await.unwrap();
    assert_eq!(k.ns.stat(a, "/").await.unwrap().inode.nlink, root - 1);
    // Same name: nothing happens.
    k.ns.rename(a, "/e2", "/e2", false).await.unwrap();
    k.consistent("/").await;
}

#[tokio::test]
async fn concurrent_creates_in_one_directory_all_land() {
    let k = kernel().await;
    k.ns.mkdir(&k.admin, "/c", 0o755, false).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let ns = k.ns.clone();
        let a = k.admin.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                ns.mkdir(&a, &format!("/c/t{t}-{i}"), 0o755, false)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(k.names(&k.admin, "/c").await.len(), 200);
    assert_eq!(k.ns.stat(&k.admin, "/c").await.unwrap().inode.nlink, 202);
    k.consistent("/").await;
}

#[tokio::test]
async fn permissions_modes_and_acls() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &["dev"]).await;
    let bob = k.user("bob", &[]).await;
    // / is 0755 root: nobody else creates there.
    assert_eq!(
        code(k.ns.mkdir(&alice, "/x", 0o755, false).await),
        Code::Access
    );
    k.ns.mkdir(a, "/home", 0o777, false).await.unwrap();
    let e =
        k.ns.mkdir(&alice, "/home/alice", 0o700, false)
            .await
            .unwrap();
    assert_eq!(e.inode.uid, alice.uid);
    assert_eq!(
        code(k.ns.list(&bob, "/home/alice", "", 0).await),
        Code::Access
    );
    assert_eq!(code(k.ns.stat(&bob, "/home/alice/x").await), Code::Access); // no search
                                                                            // chmod only by the owner; chown only by admin.
    let chmod = SetAttr {
        mode: Some(0o755),
        ..Default::default()
    };
    assert_eq!(
        code(k.ns.set_attr(&bob, "/home/alice", &chmod).await),
        Code::Perm
    );
    k.ns.set_attr(&alice, "/home/alice", &chmod).await.unwrap();
    k.ns.list(&bob, "/home/alice", "", 0).await.unwrap();
    let chown = SetAttr {
        uid: Some(bob.uid),
        ..Default::default()
    };
    assert_eq!(
        code(k.ns.set_attr(&alice, "/home/alice", &chown).await),
        Code::Perm
    );
    k.ns.set_attr(a, "/home/alice", &chown).await.unwrap();
    // Entry ACE narrows what mode bits allow.
    k.ns.mkdir(a, "/shared", 0o777, false).await.unwrap();
    let acl = EntryAcl {
        write: Some("g:dev".into()),
        ..Default::default()
    };
    k.ns.set_acl(a, "/shared", &acl, false).await.unwrap();
    k.ns.mkdir(&alice, "/shared/a", 0o755, false).await.unwrap();
    assert_eq!(
        code(k.ns.mkdir(&bob, "/shared/b", 0o755, false).await),
        Code::Access
    );
    assert_eq!(
        code(
            k.ns.set_acl(
                a,
                "/shared",
                &EntryAcl {
                    read: Some("u:alice &".into()),
                    ..Default::default()
                },
                false
            )
            .await
        ),
        Code::Invalid
    );
    // Ticket scope narrows even the admin.
    let (t, _) = k
        .meta
        .sign_for(
            "admin",
            Some(berth_security::scope::Scope::parse("/shared:r").unwrap()),
            60,
        )
        .unwrap();
    let scoped = k.meta.authenticate(&t).unwrap();
    k.ns.list(&scoped, "/shared", "", 0).await.unwrap();
    assert_eq!(
        code(k.ns.mkdir(&scoped, "/shared/s", 0o755, false).await),
        Code::Access
    );
    assert_eq!(code(k.ns.list(&scoped, "/home", "", 0).await), Code::Access);
}

#[tokio::test]
async fn volumes_mount_and_isolate() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &["dev"]).await;
    let spec = |path: &str| VolumeSpec {
        path: path.into(),
        replication: 3,
        quota_bytes: 1 << 30,
        read_ace: None,
        write_ace: Some("g:dev".into()),
        chunk_size: 0,
        leader_preference: None,
    };
    assert_eq!(
        code(k.ns.volume_create(&alice, &spec("/v")).await),
        Code::Perm
    );
    let v = k.ns.volume_create(a, &spec("/v")).await.unwrap();
    assert_eq!(v.effective_replication, 1);
    assert_eq!(code(k.ns.volume_create(a, &spec("/v")).await), Code::Exists);
    assert_eq!(
        code(k.ns.volume_create(a, &spec("/nope/v")).await),
        Code::NotFound
    );
    let root = k.ns.stat(a, "/v").await.unwrap();
    assert!(root.volume_root);
    assert_eq!(root.volume_id, v.record.id);
    k.ns.mkdir(a, "/v/d", 0o777, false).await.unwrap();
    assert_eq!(k.ns.stat(a, "/v/d").await.unwrap().volume_path, "/v");
    // Cross-volume rename is EXDEV; the mount point cannot be renamed or rm'd.
    k.ns.mkdir(a, "/outside", 0o755, false).await.unwrap();
    assert_eq!(
        code(k.ns.rename(a, "/v/d", "/outside/d", false).await),
        Code::CrossVolume
    );
    assert_eq!(code(k.ns.rename(a, "/v", "/w", false).await), Code::Busy);
    assert_eq!(code(k.ns.remove(a, "/v", true).await), Code::Busy);
    // The volume's write ACE applies inside it.
    let bob = k.user("bob", &[]).await;
    k.ns.mkdir(&alice, "/v/d/alice", 0o755, false)
        .await
        .unwrap();
    assert_eq!(
        code(k.ns.mkdir(&bob, "/v/d/bob", 0o755, false).await),
        Code::Access
    );
    // Nested volumes block removal of the outer one.
    k.ns.volume_create(a, &spec("/v/inner")).await.unwrap();
    assert_eq!(code(k.ns.volume_remove(a, "/v", true).await), Code::Busy);
    k.ns.volume_remove(a, "/v/inner", false).await.unwrap();
    assert_eq!(
        code(k.ns.volume_remove(a, "/v", false).await),
        Code::NotEmpty
    );
    k.ns.volume_remove(a, "/v", true).await.unwrap();
    assert_eq!(code(k.ns.stat(a, "/v").await), Code::NotFound);
    assert_eq!(k.ns.volume_list(a).await.unwrap().len(), 1);
    // The path is free again.
    k.ns.mkdir(a, "/v", 0o755, false).await.unwrap();
    k.consistent("/").await;
}

#[tokio::test]
async fn the_check_finds_damage() {
    use berth_fs::records::{dirent_key, encode_dirent, Dirent};
    let k = kernel().await;
    let a = &k.admin;
    k.ns.mkdir(a, "/d", 0o755, false).await.unwrap();
    k.consistent("/").await;
    let d = k.ns.stat(a, "/d").await.unwrap();
    let shard = berth_meta::map::ROOT_SHARD;
    // A dangling entry and an unreachable directory, written behind the
    // service's back.
    let mut tx = k.meta.router().begin(shard).await.unwrap();
    tx.put(
        dirent_key(1, d.ino, "ghost"),
        encode_dirent(&Dirent {
            ino: 999_999,
            kind: EntryKind::File,
            mount: None,
        }),
    );
    tx.delete(dirent_key(1, berth_meta::ROOT_INODE, "d"));
    tx.commit().await.unwrap();
    let r = k.ns.volume_check(a, "/").await.unwrap();
    let text = r.problems.join("\n");
    assert!(text.contains("missing inode 999999"), "{text}");
    assert!(
        text.contains(&format!("inode {} (directory) is not reachable", d.ino)),
        "{text}"
    );
    assert!(
        text.contains("should have 2"),
        "root nlink now wrong: {text}"
    );
    assert_eq!(code(k.ns.volume_check(a, "/nope").await), Code::NotFound);
}

#[tokio::test]
async fn the_router_finds_leaders_through_the_cluster_map() {
    let k = kernel().await;
    k.meta.report_leaders().await.unwrap();
    let map = k.meta.map();
    assert!(
        map.shards.iter().all(|s| s.leader_hint == 1),
        "{:?}",
        map.shards
    );
    // A shard this node does not host: routed by its recorded leader hint.
    let router = k.meta.router();
    let mut shards = router.shards();
    let mut remote = ShardRecord::for_volume(99, 99, vec![3]);
    remote.leader_hint = 3;
    shards.push(remote);
    router.set_shards(shards);
    assert_eq!(router.leader_of(99), Some(3));
    assert_eq!(router.leader_of(META_SHARD), Some(1));
    let key = berth_store::keys::Key::new(99, berth_store::keys::Kind::Inode, 1).build();
    assert_eq!(router.shard_for(&key).unwrap().id, 99);
    let err = router.begin(99).await.err().expect("not served here");
    assert_eq!(err.code, Code::Again);
    assert!(err.message.contains("node 3"), "{}", err.message);
}

fn open_spec(path: &str, write: bool, create: bool) -> berth_fs::OpenSpec {
    berth_fs::OpenSpec {
        path: path.into(),
        read: true,
        write,
        create,
        mode: 0o644,
        ..Default::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn file_data_write_read_sparse_truncate() {
    let k = kernel().await;
    let a = &k.admin;
    let (h, e) = k.ns.open(a, &open_spec("/f", true, true)).await.unwrap();
    assert_eq!(e.inode.size, 0);
    // 2.5 chunks in one write, read back in odd-sized pieces.
    let data = pattern(5 << 19, 7);
    assert_eq!(
        k.ns.write(a, &h, 0, &data).await.unwrap(),
        data.len() as u64
    );
    let mut back = Vec::new();
    let mut off = 0u64;
    loop {
        let (chunk, size) = k.ns.read(a, &h, off, 777_777).await.unwrap();
        assert_eq!(size, data.len() as u64);
        if chunk.is_empty() {
            break;
        }
        off += chunk.len() as u64;
        back.extend(chunk);
    }
    assert_eq!(back, data);
    assert_eq!(
        k.ns.stat(a, "/f").await.unwrap().inode.size,
        data.len() as u64
    );
    // Sparse: a write far beyond the end leaves a hole of zeros.
    let far = 10u64 << 20;
    k.ns.write(a, &h, far, b"tail").await.unwrap();
    let (hole, size) = k.ns.read(a, &h, far - 8, 12).await.unwrap();
    assert_eq!(size, far + 4);
    assert_eq!(hole, b"\0\0\0\0\0\0\0\0tail");
    // Truncate down into the middle of a chunk, then extend: zeros again.
    let st =
        k.ns.set_attr(
            a,
            "/f",
            &SetAttr {
                size: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(st.inode.size, 1000);
    k.ns.set_attr(
        a,
        "/f",
        &SetAttr {
            size: Some(3000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (all, _) = k.ns.read(a, &h, 0, 4000).await.unwrap();
    assert_eq!(all.len(), 3000);
    assert_eq!(&all[..1000], &data[..1000]);
    assert!(
        all[1000..].iter().all(|b| *b == 0),
        "bytes past a truncation read as zeros"
    );
    // Usage counts stored bytes; removing the file frees them.
    let used = k.ns.volume_info(a, "/").await.unwrap().used_bytes;
    assert_eq!(used, 1000);
    k.ns.remove(a, "/f", false).await.unwrap();
    assert_eq!(k.ns.volume_info(a, "/").await.unwrap().used_bytes, 0);
    assert_eq!(code(k.ns.read(a, &h, 0, 10).await), Code::NotFound);
    k.consistent("/").await;
}

#[tokio::test]
async fn open_semantics_and_handles() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &[]).await;
    let bob = k.user("bob", &[]).await;
    assert_eq!(
        code(k.ns.open(a, &open_spec("/nope", false, false)).await),
        Code::NotFound
    );
    k.ns.mkdir(a, "/d", 0o777, false).await.unwrap();
    assert_eq!(
        code(k.ns.open(a, &open_spec("/d", false, false)).await),
        Code::IsDir
    );
    // The creator may write a file created read-only through its handle.
    let mut spec = open_spec("/d/ro", true, true);
    spec.mode = 0o444;
    let (h, e) = k.ns.open(&alice, &spec).await.unwrap();
    assert_eq!(e.inode.mode, 0o444);
    k.ns.write(&alice, &h, 0, b"hello").await.unwrap();
    // ...but a later open for writing is refused by the mode bits.
    assert_eq!(
        code(k.ns.open(&alice, &open_spec("/d/ro", true, false)).await),
        Code::Access
    );
    // Handles are bound to their principal and to their rights.
    assert_eq!(code(k.ns.read(&bob, &h, 0, 5).await), Code::Access);
    let (rh, _) =
        k.ns.open(&bob, &open_spec("/d/ro", false, false))
            .await
            .unwrap();
    assert_eq!(k.ns.read(&bob, &rh, 0, 5).await.unwrap().0, b"hello");
    assert_eq!(code(k.ns.write(&bob, &rh, 0, b"x").await), Code::Access);
    let mut forged = rh.clone();
    let n = forged.len();
    forged[n - 1] ^= 1;
    assert_eq!(code(k.ns.read(&bob, &forged, 0, 5).await), Code::Access);
    // O_EXCL and O_TRUNC.
    let mut excl = open_spec("/d/ro", true, true);
    excl.exclusive = true;
    assert_eq!(code(k.ns.open(&alice, &excl).await), Code::Exists);
    let mut trunc = open_spec("/d/t", true, true);
    let (th, _) = k.ns.open(a, &trunc).await.unwrap();
    k.ns.write(a, &th, 0, b"0123456789").await.unwrap();
    trunc.create = false;
    trunc.truncate = true;
    let (_, te) = k.ns.open(a, &trunc).await.unwrap();
    assert_eq!(te.inode.size, 0);
    assert_eq!(k.ns.stat(a, "/d/t").await.unwrap().inode.size, 0);
}

#[tokio::test]
async fn concurrent_writers_and_quota() {
    let k = kernel().await;
    let a = &k.admin;
    k.ns.volume_create(
        a,
        &VolumeSpec {
            path: "/q".into(),
            quota_bytes: 3 << 20,
            chunk_size: 64 << 10,
            leader_preference: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Eight writers fill disjoint parts of one file at once: no lost bytes.
    let (h, _) =
        k.ns.open(a, &open_spec("/q/shared", true, true))
            .await
            .unwrap();
    let piece = 100_000usize;
    let mut tasks = Vec::new();
    for w in 0..8u8 {
        let ns = k.ns.clone();
        let a = a.clone();
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            ns.write(&a, &h, w as u64 * piece as u64, &pattern(piece, w))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (all, size) = k.ns.read(a, &h, 0, 8 * piece).await.unwrap();
    assert_eq!(size, 8 * piece as u64);
    for w in 0..8u8 {
        assert_eq!(
            &all[w as usize * piece..(w as usize + 1) * piece],
            pattern(piece, w).as_slice(),
            "writer {w}"
        );
    }
    assert_eq!(k.ns.volume_info(a, "/q").await.unwrap().used_bytes, 800_000);
    // The quota stops growth with EDQUOT; overwriting in place still works.
    let big = vec![1u8; (3 << 20) + 1];
    assert_eq!(code(k.ns.write(a, &h, 0, &big).await), Code::Quota);
    k.ns.write(a, &h, 0, &[9u8; 1000]).await.unwrap();
    k.consistent("/q").await;
}

#[tokio::test]
async fn hard_links_and_xattrs() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &[]).await;
    k.ns.mkdir(a, "/d", 0o777, false).await.unwrap();
    let (h, _) =
        k.ns.open(&alice, &open_spec("/d/f", true, true))
            .await
            .unwrap();
    k.ns.write(&alice, &h, 0, b"linked").await.unwrap();
    let e = k.ns.link(&alice, "/d/f", "/d/g").await.unwrap();
    assert_eq!(e.inode.nlink, 2);
    assert_eq!(e.inode.size, 6);
    assert_eq!(code(k.ns.link(&alice, "/d/f", "/d/g").await), Code::Exists);
    assert_eq!(code(k.ns.link(a, "/d", "/d2").await), Code::Perm);
    // Removing one name keeps the data; removing the last frees it.
    k.ns.remove(&alice, "/d/f", false).await.unwrap();
    assert_eq!(k.ns.stat(a, "/d/g").await.unwrap().inode.nlink, 1);
    let (rh, _) =
        k.ns.open(&alice, &open_spec("/d/g", false, false))
            .await
            .unwrap();
    assert_eq!(k.ns.read(&alice, &rh, 0, 10).await.unwrap().0, b"linked");
    k.ns.link(&alice, "/d/g", "/d/h").await.unwrap();
    // Rename over another name of the same file does nothing (rename(2)).
    k.ns.rename(&alice, "/d/g", "/d/h", false).await.unwrap();
    assert_eq!(k.ns.stat(a, "/d/g").await.unwrap().inode.nlink, 2);
    k.consistent("/").await;

    // Extended attributes.
    k.ns.set_xattr(&alice, "/d/g", "user.color", Some(b"blue"), false, false)
        .await
        .unwrap();
    assert_eq!(
        k.ns.get_xattr(&alice, "/d/h", "user.color").await.unwrap(),
        b"blue"
    );
    assert_eq!(
        code(k.ns.get_xattr(&alice, "/d/g", "user.none").await),
        Code::NoData
    );
    assert_eq!(
        code(
            k.ns.set_xattr(&alice, "/d/g", "user.color", Some(b"x"), true, false)
                .await
        ),
        Code::Exists
    );
    assert_eq!(
        code(
            k.ns.set_xattr(&alice, "/d/g", "user.new", Some(b"x"), false, true)
                .await
        ),
        Code::NoData
    );
    assert_eq!(
        code(
            k.ns.set_xattr(&alice, "/d/g", "trusted.x", Some(b"x"), false, false)
                .await
        ),
        Code::Perm
    );
    k.ns.set_xattr(a, "/d/g", "trusted.x", Some(b"root"), false, false)
        .await
        .unwrap();
    assert_eq!(
        k.ns.list_xattr(&alice, "/d/g").await.unwrap(),
        ["user.color"]
    );
    assert_eq!(
        k.ns.list_xattr(a, "/d/g").await.unwrap(),
        ["trusted.x", "user.color"]
    );
    let big = vec![0u8; (64 << 10) + 1];
    assert_eq!(
        code(
            k.ns.set_xattr(&alice, "/d/g", "user.big", Some(&big), false, false)
                .await
        ),
        Code::TooBig
    );
    k.ns.set_xattr(&alice, "/d/g", "user.color", None, false, false)
        .await
        .unwrap();
    assert_eq!(
        code(k.ns.get_xattr(&alice, "/d/g", "user.color").await),
        Code::NoData
    );
    // The last link takes its attributes along.
    k.ns.remove(a, "/d/g", false).await.unwrap();
    k.ns.remove(a, "/d/h", false).await.unwrap();
    k.ns.create(a, "/d/g", EntryKind::File, 0o644, true)
        .await
        .unwrap();
    assert_eq!(
        k.ns.list_xattr(a, "/d/g").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(k.ns.volume_info(a, "/").await.unwrap().used_bytes, 0);
    k.consistent("/").await;
}
