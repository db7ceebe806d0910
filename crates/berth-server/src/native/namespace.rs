//! `berth.v1.Namespace`.

use std::sync::Arc;

use berth_api::v1::namespace_server::Namespace as NamespaceApi;
use berth_api::v1::*;
use berth_fs::records::View;
use berth_fs::{EntryAcl, EntryInfo, EntryKind, SetAttr};
use berth_meta::Error;
use tonic::{Request, Response, Status};

use super::Native;

pub struct NamespaceService(pub Arc<Native>);

pub fn entry_type(k: EntryKind) -> EntryType {
    match k {
        EntryKind::Dir => EntryType::Directory,
        EntryKind::File => EntryType::File,
        EntryKind::Symlink => EntryType::Symlink,
        EntryKind::Table => EntryType::Table,
        EntryKind::Stream => EntryType::Stream,
        EntryKind::Fifo => EntryType::Fifo,
        EntryKind::Socket => EntryType::Socket,
        EntryKind::CharDevice => EntryType::CharDevice,
        EntryKind::BlockDevice => EntryType::BlockDevice,
    }
}

pub fn to_entry(e: EntryInfo) -> Entry {
    let i = e.inode;
    Entry {
        path: e.path,
        name: e.name,
        r#type: entry_type(i.kind) as i32,
        volume_id: e.volume_id,
        inode: e.ino,
        mode: i.mode,
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        nlink: i.nlink,
        atime_ns: i.atime_ns,
        mtime_ns: i.mtime_ns,
        ctime_ns: i.ctime_ns,
        symlink_target: i.target.unwrap_or_default(),
        volume_root: e.volume_root,
        volume_path: e.volume_path,
        view: match e.view {
            View::Live => 0,
            View::SnapshotDir => u64::MAX,
            View::Snapshot(id) => id.saturating_add(1),
        },
        rdev: i.rdev,
    }
}

fn to_acl(path: String, a: EntryAcl) -> Acl {
    Acl {
        path,
        read_ace: a.read,
        write_ace: a.write,
        admin_ace: a.admin,
    }
}

#[tonic::async_trait]
impl NamespaceApi for NamespaceService {
    async fn stat(&self, req: Request<PathRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Namespace/Stat", req, |p, r| async move {
            n.ns.stat(&p, &r.path).await.map(to_entry)
        })
        .await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let n = &self.0;
        n.call("Namespace/List", req, |p, r| async move {
            let (entries, more) =
                n.ns.list(&p, &r.path, &r.start_after, r.limit as usize)
                    .await?;
            Ok(ListResponse {
                entries: entries.into_iter().map(to_entry).collect(),
                more,
            })
        })
        .await
    }

    async fn mkdir(&self, req: Request<MkdirRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Namespace/Mkdir", req, |p, r| async move {
            n.ns.mkdir(&p, &r.path, r.mode.unwrap_or(0o755), r.parents)
                .await
                .map(to_entry)
        })
        .await
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Namespace/Create", req, |p, r| async move {
            let mode = r.mode.unwrap_or(0o644);
            let special = match EntryType::try_from(r.r#type) {
                Ok(EntryType::Fifo) => Some(EntryKind::Fifo),
                Ok(EntryType::Socket) => Some(EntryKind::Socket),
                Ok(EntryType::CharDevice) => Some(EntryKind::CharDevice),
                Ok(EntryType::BlockDevice) => Some(EntryKind::BlockDevice),
                _ => None,
            };
            if let Some(kind) = special {
                return n.ns.mknod(&p, &r.path, kind, mode, r.rdev).await.map(to_entry);
            }
            let kind = match EntryType::try_from(r.r#type) {
                Ok(EntryType::File) | Ok(EntryType::Unspecified) => EntryKind::File,
                Ok(EntryType::Table) => EntryKind::Table,
                Ok(EntryType::Stream) => EntryKind::Stream,
                _ => {
                    return Err(Error::invalid(
                        "create makes FILE, TABLE, STREAM, FIFO, SOCKET, CHAR_DEVICE or BLOCK_DEVICE entries",
                    ))
                }
            };
            if r.rdev != 0 {
                return Err(Error::invalid(format!(
                    "a {} has no device number",
                    kind.name()
                )));
            }
            n.ns.create(&p, &r.path, kind, mode, r.exclusive)
                .await
                .map(to_entry)
        })
        .await
    }

    async fn symlink(&self, req: Request<SymlinkRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Namespace/Symlink", req, |p, r| async move {
            n.ns.symlink(&p, &r.path, &r.target).await.map(to_entry)
        })
        .await
    }

    async fn readlink(
        &self,
        req: Request<PathRequest>,
    ) -> Result<Response<ReadlinkResponse>, Status> {
        let n = &self.0;
        n.call("Namespace/Readlink", req, |p, r| async move {
            n.ns.readlink(&p, &r.path)
                .await
                .map(|target| ReadlinkResponse { target })
        })
        .await
    }

    async fn remove(&self, req: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Namespace/Remove", req, |p, r| async move {
            n.ns.remove(&p, &r.path, r.recursive)
                .await
                .map(|_| Empty {})
        })
        .await
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Namespace/Rename", req, |p, r| async move {
            if r.exchange {
                if r.no_replace {
                    return Err(Error::invalid(
                        "exchange and no_replace exclude each other (as RENAME_EXCHANGE and RENAME_NOREPLACE do)",
                    ));
                }
                return n.ns.exchange(&p, &r.from, &r.to).await.map(|_| Empty {});
            }
            n.ns.rename(&p, &r.from, &r.to, r.no_replace)
                .await
                .map(|_| Empty {})
        })
        .await
    }

    async fn set_attr(&self, req: Request<SetAttrRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Namespace/SetAttr", req, |p, r| async move {
            let a = SetAttr {
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                atime_ns: r.atime_ns,
                mtime_ns: r.mtime_ns,
                size: r.size,
                times_now: r.times_now,
            };
            n.ns.set_attr(&p, &r.path, &a).await.map(to_entry)
        })
        .await
    }

    async fn get_acl(&self, req: Request<PathRequest>) -> Result<Response<Acl>, Status> {
        let n = &self.0;
        n.call("Namespace/GetAcl", req, |p, r| async move {
            n.ns.get_acl(&p, &r.path)
                .await
                .map(|(path, a)| to_acl(path, a))
        })
        .await
    }

    async fn set_acl(&self, req: Request<SetAclRequest>) -> Result<Response<Acl>, Status> {
        let n = &self.0;
        n.call("Namespace/SetAcl", req, |p, r| async move {
            let acl = EntryAcl {
                read: r.read_ace,
                write: r.write_ace,
                admin: r.admin_ace,
            };
            n.ns.set_acl(&p, &r.path, &acl, r.clear)
                .await
                .map(|(path, a)| to_acl(path, a))
        })
        .await
    }

    async fn link(&self, req: Request<LinkRequest>) -> Result<Response<Entry>, Status> {
        let n = &self.0;
        n.call("Namespace/Link", req, |p, r| async move {
            n.ns.link(&p, &r.existing, &r.path).await.map(to_entry)
        })
        .await
    }

    async fn get_xattr(&self, req: Request<XattrRequest>) -> Result<Response<XattrValue>, Status> {
        let n = &self.0;
        n.call("Namespace/GetXattr", req, |p, r| async move {
            n.ns.get_xattr(&p, &r.path, &r.name)
                .await
                .map(|value| XattrValue { value })
        })
        .await
    }

    async fn set_xattr(&self, req: Request<SetXattrRequest>) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Namespace/SetXattr", req, |p, r| async move {
            n.ns.set_xattr(&p, &r.path, &r.name, Some(&r.value), r.create, r.replace)
                .await
                .map(|_| Empty {})
        })
        .await
    }

    async fn list_xattr(&self, req: Request<PathRequest>) -> Result<Response<XattrNames>, Status> {
        let n = &self.0;
        n.call("Namespace/ListXattr", req, |p, r| async move {
            n.ns.list_xattr(&p, &r.path)
                .await
                .map(|names| XattrNames { names })
        })
        .await
    }

    async fn remove_xattr(&self, req: Request<XattrRequest>) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Namespace/RemoveXattr", req, |p, r| async move {
            n.ns.set_xattr(&p, &r.path, &r.name, None, false, false)
                .await
                .map(|_| Empty {})
        })
        .await
    }
}
