//! `berth.v1.Inodes`: the namespace addressed by inode (`berth_fs::inodes`,
//! where the authorization is). This file only translates.

use std::sync::Arc;

use berth_api::v1::inodes_server::Inodes as InodesApi;
use berth_api::v1::*;
use berth_fs::records::View;
use berth_fs::{EntryInfo, EntryKind, Keep as FsKeep, NewEntry, NodeRef, Rights, SetAttr};
use berth_meta::Error;
use tonic::{Request, Response, Status};

use super::namespace::to_entry;
use super::Native;

pub struct InodesService(pub Arc<Native>);

/// `Entry.view` as the service's view.
pub fn view_of(v: u64) -> View {
    match v {
        0 => View::Live,
        u64::MAX => View::SnapshotDir,
        id => View::Snapshot(id - 1),
    }
}

fn node(n: Option<InodeRef>, what: &str) -> Result<NodeRef, Error> {
    let n = n.ok_or_else(|| Error::invalid(format!("the request names no {what}")))?;
    Ok(NodeRef {
        volume: n.volume_id,
        ino: n.inode,
        view: view_of(n.view),
        link: (!n.name.is_empty()).then_some((n.parent, n.name)),
    })
}

/// An entry as inode calls answer it: without its path.
fn entry(e: EntryInfo) -> Entry {
    Entry {
        path: String::new(),
        ..to_entry(e)
    }
}

fn keep(k: Option<Keep>) -> Option<FsKeep> {
    k.filter(|k| k.holder != 0).map(|k| FsKeep {
        holder: k.holder,
        ino: k.inode,
    })
}

fn owner(o: Option<Owner>) -> Option<(u32, u32)> {
    o.map(|o| (o.uid, o.gid))
}

fn handle(h: &[u8]) -> Option<&[u8]> {
    (!h.is_empty()).then_some(h)
}

fn kind(t: i32) -> Result<EntryKind, Error> {
    match EntryType::try_from(t) {
        Ok(EntryType::Directory) => Ok(EntryKind::Dir),
        Ok(EntryType::File) | Ok(EntryType::Unspecified) => Ok(EntryKind::File),
        Ok(EntryType::Symlink) => Ok(EntryKind::Symlink),
        Ok(EntryType::Fifo) => Ok(EntryKind::Fifo),
        Ok(EntryType::Socket) => Ok(EntryKind::Socket),
        Ok(EntryType::CharDevice) => Ok(EntryKind::CharDevice),
        Ok(EntryType::BlockDevice) => Ok(EntryKind::BlockDevice),
        _ => Err(Error::invalid(
            "make takes DIRECTORY, FILE, SYMLINK, FIFO, SOCKET, CHAR_DEVICE or BLOCK_DEVICE",
        )),
    }
}

#[tonic::async_trait]
impl InodesApi for InodesService {
    async fn lookup(&self, req: Request<LookupRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Inodes/Lookup", req, |p, r| async move {
            let dir = node(r.dir, "directory")?;
            n.ns.lookup(&p, &dir, &r.name).await.map(entry)
        })
        .await
    }

    async fn get_attr(&self, req: Request<NodeRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Inodes/GetAttr", req, |p, r| async move {
            let node = node(r.node, "entry")?;
            n.ns.getattr(&p, &node, handle(&r.handle)).await.map(entry)
        })
        .await
    }

    async fn set_attr(&self, req: Request<NodeSetAttrRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Inodes/SetAttr", req, |p, r| async move {
            let node = node(r.node, "entry")?;
            let a = SetAttr {
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                atime_ns: r.atime_ns,
                mtime_ns: r.mtime_ns,
                size: r.size,
                times_now: r.times_now,
            };
            n.ns.set_attr_node(&p, &node, handle(&r.handle), &a)
                .await
                .map(entry)
        })
        .await
    }

    async fn list(&self, req: Request<NodeListRequest>) -> Result<Response<ListResponse>, Status> {
        let n = &self.0;
        n.call("Inodes/List", req, |p, r| async move {
            let dir = node(r.dir, "directory")?;
            let (entries, more) =
                n.ns.list_node(&p, &dir, &r.start_after, r.limit as usize)
                    .await?;
            Ok(ListResponse {
                entries: entries.into_iter().map(entry).collect(),
                more,
            })
        })
        .await
    }

    async fn readlink(
        &self,
        req: Request<NodeRequest>,
    ) -> Result<Response<ReadlinkResponse>, Status> {
        let n = &self.0;
        n.call("Inodes/Readlink", req, |p, r| async move {
            let node = node(r.node, "entry")?;
            n.ns.readlink_node(&p, &node)
                .await
                .map(|target| ReadlinkResponse { target })
        })
        .await
    }

    async fn make(&self, req: Request<MakeRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Inodes/Make", req, |p, r| async move {
            let dir = node(r.dir, "directory")?;
            let kind = kind(r.r#type)?;
            let e = NewEntry {
                kind,
                mode: r
                    .mode
                    .unwrap_or(if kind == EntryKind::Dir { 0o755 } else { 0o644 }),
                rdev: r.rdev,
                target: (kind == EntryKind::Symlink).then_some(r.target),
                owner: owner(r.owner),
            };
            n.ns.make_node(&p, &dir, &r.name, &e).await.map(entry)
        })
        .await
    }

    async fn link(&self, req: Request<NodeLinkRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Inodes/Link", req, |p, r| async move {
            let file = node(r.node, "entry")?;
            let dir = node(r.dir, "directory")?;
            n.ns.link_node(&p, &file, &dir, &r.name).await.map(entry)
        })
        .await
    }

    async fn remove(
        &self,
        req: Request<NodeRemoveRequest>,
    ) -> Result<Response<RemovedResponse>, Status> {
        let n = &self.0;
        n.call("Inodes/Remove", req, |p, r| async move {
            let dir = node(r.dir, "directory")?;
            let expect_dir = match RemoveKind::try_from(r.kind) {
                Ok(RemoveKind::Any) => None,
                Ok(RemoveKind::Unlink) => Some(false),
                Ok(RemoveKind::Rmdir) => Some(true),
                Err(_) => return Err(Error::invalid(format!("unknown removal kind {}", r.kind))),
            };
            let kept =
                n.ns.remove_node(&p, &dir, &r.name, expect_dir, keep(r.keep))
                    .await?;
            Ok(RemovedResponse {
                kept,
                lease_ms: n.ns.orphan_lease_ms(),
            })
        })
        .await
    }

    async fn rename(
        &self,
        req: Request<NodeRenameRequest>,
    ) -> Result<Response<RemovedResponse>, Status> {
        let n = &self.0;
        n.call("Inodes/Rename", req, |p, r| async move {
            let from = node(r.from_dir, "source directory")?;
            let to = node(r.to_dir, "target directory")?;
            let kept =
                n.ns.rename_node(
                    &p,
                    (&from, &r.from_name),
                    (&to, &r.to_name),
                    r.no_replace,
                    r.exchange,
                    keep(r.keep),
                )
                .await?;
            Ok(RemovedResponse {
                kept,
                lease_ms: n.ns.orphan_lease_ms(),
            })
        })
        .await
    }

    async fn open(&self, req: Request<NodeOpenRequest>) -> Result<Response<OpenResponse>, Status> {
        let n = &self.0;
        n.call("Inodes/Open", req, |p, r| async move {
            let node = node(r.node, "file")?;
            let rights = Rights {
                read: r.read,
                write: r.write,
                truncate: r.truncate,
            };
            let (handle, e) = n.ns.open_node(&p, &node, rights).await?;
            Ok(OpenResponse {
                handle,
                entry: Some(entry(e)),
            })
        })
        .await
    }

    async fn create(
        &self,
        req: Request<NodeCreateRequest>,
    ) -> Result<Response<NodeCreateResponse>, Status> {
        let n = &self.0;
        n.call("Inodes/Create", req, |p, r| async move {
            let dir = node(r.dir, "directory")?;
            let rights = Rights {
                read: r.read,
                write: r.write,
                truncate: r.truncate,
            };
            let (handle, e, created) =
                n.ns.create_node(
                    &p,
                    &dir,
                    &r.name,
                    rights,
                    r.exclusive,
                    r.mode.unwrap_or(0o644),
                    owner(r.owner),
                )
                .await?;
            Ok(NodeCreateResponse {
                handle,
                entry: Some(entry(e)),
                created,
            })
        })
        .await
    }

    async fn get_xattr(
        &self,
        req: Request<NodeXattrRequest>,
    ) -> Result<Response<XattrValue>, Status> {
        let n = &self.0;
        n.call("Inodes/GetXattr", req, |p, r| async move {
            let node = node(r.node, "entry")?;
            n.ns.get_xattr_node(&p, &node, &r.name)
                .await
                .map(|value| XattrValue { value })
        })
        .await
    }

    async fn set_xattr(
        &self,
        req: Request<NodeSetXattrRequest>,
    ) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Inodes/SetXattr", req, |p, r| async move {
            let node = node(r.node, "entry")?;
            n.ns.set_xattr_node(&p, &node, &r.name, Some(&r.value), r.create, r.replace)
                .await
                .map(|_| Empty {})
        })
        .await
    }

    async fn list_xattr(&self, req: Request<NodeRequest>) -> Result<Response<XattrNames>, Status> {
        let n = &self.0;
        n.call("Inodes/ListXattr", req, |p, r| async move {
            let node = node(r.node, "entry")?;
            n.ns.list_xattr_node(&p, &node)
                .await
                .map(|names| XattrNames { names })
        })
        .await
    }

    async fn remove_xattr(
        &self,
        req: Request<NodeXattrRequest>,
    ) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Inodes/RemoveXattr", req, |p, r| async move {
            let node = node(r.node, "entry")?;
            n.ns.set_xattr_node(&p, &node, &r.name, None, false, false)
                .await
                .map(|_| Empty {})
        })
        .await
    }

    async fn keep_orphans(
        &self,
        req: Request<KeepOrphansRequest>,
    ) -> Result<Response<KeepOrphansResponse>, Status> {
        let n = &self.0;
        n.call("Inodes/KeepOrphans", req, |p, r| async move {
            let gone =
                n.ns.keep_orphans(&p, r.volume_id, r.holder, &r.inodes)
                    .await?;
            Ok(KeepOrphansResponse {
                lease_ms: n.ns.orphan_lease_ms(),
                gone,
            })
        })
        .await
    }

    async fn release_orphan(
        &self,
        req: Request<ReleaseOrphanRequest>,
    ) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Inodes/ReleaseOrphan", req, |p, r| async move {
            n.ns.release_orphan(&p, r.volume_id, r.holder, r.inode)
                .await
                .map(|_| Empty {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_and_nodes() {
        assert_eq!(view_of(0), View::Live);
        assert_eq!(view_of(u64::MAX), View::SnapshotDir);
        assert_eq!(view_of(5), View::Snapshot(4));
        let dir = node(
            Some(InodeRef {
                volume_id: 2,
                inode: 9,
                view: 0,
                parent: 0,
                name: String::new(),
            }),
            "directory",
        )
        .unwrap();
        assert_eq!(dir, NodeRef::new(2, 9, View::Live));
        let file = node(
            Some(InodeRef {
                volume_id: 2,
                inode: 10,
                view: 3,
                parent: 9,
                name: "f".into(),
            }),
            "entry",
        )
        .unwrap();
        assert_eq!(file.link, Some((9, "f".to_string())));
        assert_eq!(file.view, View::Snapshot(2));
        assert!(node(None, "entry").is_err());
        assert_eq!(
            keep(Some(Keep {
                holder: 0,
                inode: 3
            })),
            None
        );
        assert_eq!(
            keep(Some(Keep {
                holder: 1,
                inode: 3
            })),
            Some(FsKeep { holder: 1, ino: 3 })
        );
        assert_eq!(
            kind(EntryType::Table as i32).unwrap_err().code,
            berth_meta::Code::Invalid
        );
    }
}
