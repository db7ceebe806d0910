//! rename with RENAME_EXCHANGE: atomic swaps, their refusals and
//! permissions, and a consistent namespace afterwards.

use berth_fs::{EntryKind, VolumeSpec};
use berth_meta::Code;

use super::{code, kernel};

#[tokio::test]
async fn exchange_swaps_entries() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &[]).await;
    k.ns.mkdir(a, "/p/d/sub", 0o777, true).await.unwrap();
    k.ns.mkdir(a, "/q", 0o777, false).await.unwrap();
    let f =
        k.ns.create(a, "/q/f", EntryKind::File, 0o644, true)
            .await
            .unwrap();
    let d = k.ns.stat(a, "/p/d").await.unwrap();

    // A directory and a file in different directories swap.
    k.ns.exchange(a, "/p/d", "/q/f").await.unwrap();
    assert_eq!(k.ns.stat(a, "/p/d").await.unwrap().ino, f.ino);
    assert_eq!(k.ns.stat(a, "/q/f").await.unwrap().ino, d.ino);
    assert_eq!(k.names(a, "/q/f").await, ["sub"]);
    // Link counts follow the subdirectories each parent holds.
    assert_eq!(k.ns.stat(a, "/p").await.unwrap().inode.nlink, 2);
    assert_eq!(k.ns.stat(a, "/q").await.unwrap().inode.nlink, 3);
    k.consistent("/").await;

    // Refusals.
    assert_eq!(
        code(k.ns.exchange(a, "/p/d", "/q/none").await),
        Code::NotFound
    );
    assert_eq!(
        code(k.ns.exchange(a, "/q", "/q/f/sub").await),
        Code::Invalid
    );
    assert_eq!(
        code(k.ns.exchange(a, "/q/f/sub", "/q").await),
        Code::Invalid
    );
    assert_eq!(code(k.ns.exchange(a, "/", "/q").await), Code::Busy);
    // A directory may not move below itself through a symlink either.
    k.ns.symlink(a, "/p/to-sub", "/q/f/sub").await.unwrap();
    k.ns.mkdir(a, "/q/f/sub/deep", 0o777, false).await.unwrap();
    assert_eq!(
        code(k.ns.exchange(a, "/q/f", "/p/to-sub/deep").await),
        Code::Invalid
    );

    // Permissions: write on both parents, and on a directory that moves.
    k.ns.mkdir(a, "/locked", 0o755, false).await.unwrap();
    k.ns.create(a, "/locked/x", EntryKind::File, 0o666, true)
        .await
        .unwrap();
    k.ns.create(&alice, "/q/mine", EntryKind::File, 0o644, true)
        .await
        .unwrap();
    assert_eq!(
        code(k.ns.exchange(&alice, "/q/mine", "/locked/x").await),
        Code::Access
    );
    k.ns.mkdir(a, "/q/admins", 0o755, false).await.unwrap();
    k.ns.mkdir(&alice, "/p/hers", 0o755, false).await.unwrap();
    // /q/admins would get a new `..`, and alice may not write it.
    assert_eq!(
        code(k.ns.exchange(&alice, "/q/admins", "/p/hers").await),
        Code::Access
    );
    // Within one directory no `..` changes.
    k.ns.exchange(&alice, "/q/mine", "/q/admins").await.unwrap();
    assert_eq!(
        k.ns.stat(a, "/q/mine").await.unwrap().inode.kind,
        EntryKind::Dir
    );

    // Two links of one file: nothing happens.
    k.ns.link(a, "/q/admins", "/q/again").await.unwrap();
    k.ns.exchange(a, "/q/admins", "/q/again").await.unwrap();

    // Across volumes: EXDEV; a volume mount point does not move.
    let spec = VolumeSpec {
        path: "/v".into(),
        replication: 1,
        quota_bytes: 0,
        read_ace: None,
        write_ace: None,
        chunk_size: 0,
        leader_preference: None,
    };
    k.ns.volume_create(a, &spec).await.unwrap();
    k.ns.create(a, "/v/y", EntryKind::File, 0o644, true)
        .await
        .unwrap();
    assert_eq!(
        code(k.ns.exchange(a, "/q/again", "/v/y").await),
        Code::CrossVolume
    );
    assert_eq!(code(k.ns.exchange(a, "/q/again", "/v").await), Code::Busy);
    k.consistent("/").await;
    k.consistent("/v").await;
}
