//! The `fuser::Filesystem` of a Berth mount: every kernel request becomes
//! native API calls, run on the tokio runtime from one of the session's
//! threads.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_api::v1::{
    Entry, EntryType, InodeRef, Keep, LookupRequest, MakeRequest, NodeCreateRequest,
    NodeLinkRequest, NodeListRequest, NodeOpenRequest, NodeRemoveRequest, NodeRenameRequest,
    NodeRequest, NodeSetAttrRequest, NodeSetXattrRequest, NodeXattrRequest, Owner, PathRequest,
    ReadRequest, RemoveKind, RemovedResponse,
};
use berth_client::Client;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::errors::call;
use crate::inodes::{Inodes, ROOT_INO, TTL};
use crate::local::Local;
use crate::locks::{Kind, LockClient, Want};
use crate::orphans::Orphans;
use crate::writes::{OpenFile, Writes};

/// Largest read or write the kernel is asked to send (one chunk).
pub const IO_BYTES_MAX: u32 = 1 << 20;
/// Largest read the API accepts in one call.
const API_IO_BYTES_MAX: u32 = 4 << 20;
/// Block size reported by statfs.
const STATFS_BLOCK_BYTES: u64 = 4096;
/// Blocks reported by statfs for a volume without a quota (4 PiB).
const UNLIMITED_BLOCKS: u64 = (4u64 << 50) / STATFS_BLOCK_BYTES;
/// Inodes reported by statfs (the API has no inode limit).
const STATFS_FILES: u64 = 1 << 32;
/// Longest name, as the server enforces it.
const NAME_BYTES_MAX: u32 = 255;
/// Entries one open directory may hold in memory while it is read.
const DIR_ENTRIES_MAX: usize = 1_000_000;

/// Who the ticket proves, for `access(2)` answers.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub uid: u32,
    pub gids: Vec<u32>,
    pub admin: bool,
}

/// An extended attribute answer and when it was fetched.
type CachedXattr = (Result<Vec<u8>, Errno>, Instant);

/// Cached extended attribute answers kept at most (then all are dropped).
const XATTR_CACHE_MAX: usize = 10_000;

/// Converts nanoseconds since the epoch.
fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Nanoseconds since the epoch (saturating).
fn nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn kind(e: &Entry) -> FileType {
    match EntryType::try_from(e.r#type) {
        Ok(EntryType::Directory) => FileType::Directory,
        Ok(EntryType::Symlink) => FileType::Symlink,
        Ok(EntryType::Fifo) => FileType::NamedPipe,
        Ok(EntryType::Socket) => FileType::Socket,
        Ok(EntryType::CharDevice) => FileType::CharDevice,
        Ok(EntryType::BlockDevice) => FileType::BlockDevice,
        // Files, and tables and streams shown as files.
        _ => FileType::RegularFile,
    }
}

/// The special file `mknod(2)` asks for with `mode`'s type bits, as the
/// API names it; `None` for a regular file, `Err` for what is no file type.
fn special_type(mode: u32) -> Result<Option<EntryType>, Errno> {
    match mode & libc::S_IFMT {
        // mknod(2): a zero type makes a regular file.
        0 | libc::S_IFREG => Ok(None),
        libc::S_IFIFO => Ok(Some(EntryType::Fifo)),
        libc::S_IFSOCK => Ok(Some(EntryType::Socket)),
        libc::S_IFCHR => Ok(Some(EntryType::CharDevice)),
        libc::S_IFBLK => Ok(Some(EntryType::BlockDevice)),
        // Directories have mkdir, symbolic links symlink.
        _ => Err(Errno::EINVAL),
    }
}

/// The kernel's 32-bit device number (`new_encode_dev`: minor bits 0-7 and
/// 12-31, major bits 8-19) as the Linux `dev_t` the API stores.
pub fn dev_from_kernel(rdev: u32) -> u64 {
    let major = (rdev >> 8) & 0xfff;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// A stored `dev_t` in the kernel's 32-bit encoding; devices the kernel
/// cannot name (major over 12 bits, minor over 20) show as 0.
pub fn dev_to_kernel(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    if major > 0xfff || minor > 0xf_ffff {
        return 0;
    }
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Kernel attributes of an entry shown as FUSE inode `ino`.
pub fn attr(ino: u64, e: &Entry) -> FileAttr {
    let kind = kind(e);
    let size = if kind == FileType::Symlink {
        e.symlink_target.len() as u64
    } else {
        e.size
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(e.atime_ns),
        mtime: time(e.mtime_ns),
        ctime: time(e.ctime_ns),
        crtime: time(e.ctime_ns),
        kind,
        perm: (e.mode & 0o7777) as u16,
        // 0 for a file unlinked while open (kept for its handles).
        nlink: e.nlink,
        uid: e.uid,
        gid: e.gid,
        rdev: match kind {
            FileType::CharDevice | FileType::BlockDevice => dev_to_kernel(e.rdev),
            _ => 0,
        },
        blksize: IO_BYTES_MAX,
        flags: 0,
    }
}

/// What `Files.Open` is asked for, from open(2) flags.
pub fn open_rights(flags: i32) -> (bool, bool, bool) {
    let (read, write) = match OpenFlags(flags).acc_mode() {
        OpenAccMode::O_RDONLY => (true, false),
        OpenAccMode::O_WRONLY => (false, true),
        OpenAccMode::O_RDWR => (true, true),
    };
    let truncate = write && flags & libc::O_TRUNC != 0;
    (read, write, truncate)
}

/// A name from the kernel as a namespace path component.
fn name_str(name: &OsStr) -> Result<&str, Errno> {
    let s = name.to_str().ok_or(Errno::EILSEQ)?;
    if s.is_empty() || s.contains('/') || s.contains('\0') {
        return Err(Errno::EINVAL);
    }
    if s.len() > NAME_BYTES_MAX as usize {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(s)
}

/// POSIX permission check of `mask` on `e` for `who` (ACEs are left to the
/// server, which checks again at the real operation).
pub fn permits(who: &Caller, e: &Entry, mask: AccessFlags) -> bool {
    let mode = e.mode & 0o7777;
    if who.admin || who.uid == 0 {
        // Root, as the server's mode-bit check sees it: read and write
        // always, execute if anyone may.
        return !mask.contains(AccessFlags::X_OK)
            || kind(e) == FileType::Directory
            || mode & 0o111 != 0;
    }
    let bits = if who.uid == e.uid {
        (mode >> 6) & 7
    } else if who.gids.contains(&e.gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    let want = (if mask.contains(AccessFlags::R_OK) {
        4
    } else {
        0
    }) | (if mask.contains(AccessFlags::W_OK) {
        2
    } else {
        0
    }) | (if mask.contains(AccessFlags::X_OK) {
        1
    } else {
        0
    });
    bits & want == want
}

/// One open directory: its entries, fetched page by page as it is read.
struct DirStream {
    ino: u64,
    parent: u64,
    entries: Vec<(u64, FileType, String)>,
    after: String,
    more: bool,
}

pub struct BerthFs {
    /// The shared runtime: write-behind, lock-session and orphan work.
    rt: Handle,
    /// For write-behind (spawned on `rt`).
    client: Client,
    /// Every other call, made on the session thread that waits for it.
    local: Local,
    read_only: bool,
    /// Mounted with allow_other (and default_permissions): entries created
    /// belong to the requesting process when the ticket may give them away.
    multi_user: bool,
    /// Path of the volume holding the mount root (for statfs).
    volume_path: String,
    caller: Caller,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Files unlinked while open here, kept by the server for this mount.
    orphans: Arc<Orphans>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    next_fh: AtomicU64,
    notifier: Arc<OnceLock<Notifier>>,
    /// Advisory locks shared with every client of the cluster.
    locks: Arc<LockClient>,
    /// Extended attribute answers (value, or ENODATA) for the attribute
    /// TTL, like other attributes. The kernel asks for
    /// `security.capability` before every write(2); without this each
    /// write would wait for a server round trip behind the previous one.
    xattrs: Mutex<HashMap<(u64, String), CachedXattr>>,
}

/// A name for log lines.
fn label(ino: u64) -> String {
    format!("inode {ino:#x}")
}

impl BerthFs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rt: Handle,
        client: Client,
        read_only: bool,
        multi_user: bool,
        root_real: u64,
        root: Entry,
        caller: Caller,
        notifier: Arc<OnceLock<Notifier>>,
    ) -> BerthFs {
        BerthFs {
            local: Local::new(rt.clone(), client.clone()),
            rt,
            client: client.clone(),
            read_only,
            multi_user,
            volume_path: if root.volume_path.is_empty() {
                "/".to_string()
            } else {
                root.volume_path.clone()
            },
            caller,
            inodes: Mutex::new(Inodes::new(root_real, root)),
            files: Mutex::new(HashMap::new()),
            orphans: Orphans::new(client.clone()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            notifier,
            locks: LockClient::new(client),
            xattrs: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the cached extended attributes of `ino`.
    fn forget_xattrs(&self, ino: u64) {
        self.xattrs.lock().retain(|(i, _), _| *i != ino);
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// The server address of directory `ino`.
    fn dir_address(&self, ino: u64) -> Result<InodeRef, Errno> {
        self.inodes
            .lock()
            .addresses(ino)
            .and_then(|a| a.into_iter().next())
            .map(|a| a.node)
            .ok_or(Errno::ENOENT)
    }

    /// Runs `f` with the server addresses of `ino` in turn: a name that no
    /// longer leads to it (ESTALE: renamed or removed elsewhere) is dropped
    /// and the next tried. ESTALE when none is left.
    async fn by_node<T, F, Fut>(&self, ino: u64, mut f: F) -> Result<T, Errno>
    where
        F: FnMut(InodeRef) -> Fut,
        Fut: std::future::Future<Output = Result<T, Errno>>,
    {
        let addresses = self.inodes.lock().addresses(ino).ok_or(Errno::ENOENT)?;
        for a in addresses {
            match (f(a.node).await, a.name) {
                (Err(Errno::ESTALE), Some((parent, name))) => {
                    self.inodes.lock().drop_name(ino, parent, &name);
                }
                (r, _) => return r,
            }
        }
        Err(Errno::ESTALE)
    }

    /// A handle of `ino` open here, preferring one open for writing.
    fn open_handle(&self, ino: u64) -> Option<Vec<u8>> {
        let files = self.files.lock();
        let mut of = files.values().filter(|f| f.ino == ino);
        let first = of.next()?;
        if first.write {
            return Some(first.handle.clone());
        }
        Some(
            of.find(|f| f.write)
                .map_or(&first.handle, |f| &f.handle)
                .clone(),
        )
    }

    fn open_here(&self, ino: u64) -> bool {
        self.files.lock().values().any(|f| f.ino == ino)
    }

    async fn getattr_call(&self, node: InodeRef, handle: Vec<u8>) -> Result<Entry, Errno> {
        call("getattr", &node.name, || {
            let mut c = self.local.client().inodes();
            let req = NodeRequest {
                node: Some(node.clone()),
                handle: handle.clone(),
            };
            async move { c.get_attr(req).await }
        })
        .await
    }

    /// Fresh attributes of `ino` from the server: by its names, else (no
    /// name leads to it any more) through a handle open here — a file
    /// unlinked while open — else the last ones seen.
    async fn fetch(&self, ino: u64) -> Result<Entry, Errno> {
        let r = self
            .by_node(ino, |a| self.getattr_call(a, Vec::new()))
            .await;
        match r {
            Ok(e) => {
                self.inodes.lock().fetched(ino, &e);
                Ok(e)
            }
            Err(Errno::ESTALE) => {
                if let Some(h) = self.open_handle(ino) {
                    let bare = self.inodes.lock().bare_address(ino).ok_or(Errno::ENOENT)?;
                    if let Ok(e) = self.getattr_call(bare, h).await {
                        self.inodes.lock().fetched(ino, &e);
                        return Ok(e);
                    }
                }
                // Removed or replaced behind our back: what we knew last.
                let m = self.inodes.lock();
                m.node(ino).map(|n| n.entry.clone()).ok_or(Errno::ENOENT)
            }
            Err(e) => Err(e),
        }
    }

    /// The attributes of `ino`, from the cache when fresh.
    async fn entry(&self, ino: u64) -> Result<Entry, Errno> {
        let fresh = self.inodes.lock().fresh(ino).cloned();
        match fresh {
            Some(e) => Ok(e),
            None => self.fetch(ino).await,
        }
    }

    /// Records a new kernel reference to the entry `name` in `parent` and
    /// returns its attributes.
    fn reference(&self, parent: u64, name: &str, e: &Entry) -> Result<FileAttr, Errno> {
        let mut m = self.inodes.lock();
        let ino = m.ino_of(e).ok_or_else(|| {
            tracing::warn!(
                name,
                volume = e.volume_id,
                inode = e.inode,
                "inode number out of range"
            );
            Errno::EOVERFLOW
        })?;
        m.remember(ino, parent, name, e);
        if let Some(n) = m.node_mut(ino) {
            n.told = Some((e.size, e.mtime_ns));
        }
        Ok(attr(ino, e))
    }

    /// Fresh attributes of `ino` (already referenced) for a reply.
    fn told(&self, ino: u64, e: &Entry) -> FileAttr {
        let mut m = self.inodes.lock();
        m.fetched(ino, e);
        if let Some(n) = m.node_mut(ino) {
            n.told = Some((e.size, e.mtime_ns));
        }
        attr(ino, e)
    }

    /// The write-behind states of `ino` with writes in flight.
    fn busy_writes(&self, ino: u64) -> Vec<Arc<Writes>> {
        self.files
            .lock()
            .values()
            .filter(|f| f.ino == ino && f.writes.busy())
            .map(|f| f.writes.clone())
            .collect()
    }

    /// Waits for every write in flight on `ino`, whatever handle sent it.
    async fn settle(&self, ino: u64) {
        for w in self.busy_writes(ino) {
            w.drain().await;
        }
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn do_getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.local.block_on(async {
            self.settle(ino).await;
            let e = self.entry(ino).await?;
            Ok(self.told(ino, &e))
        })
    }

    /// `req` holds the changes; its address is filled in here. `fh`: the
    /// kernel's file handle, for a truncation through an open file.
    fn do_setattr(
        &self,
        ino: u64,
        fh: Option<FileHandle>,
        req: NodeSetAttrRequest,
    ) -> Result<FileAttr, Errno> {
        self.writable()?;
        // ftruncate(2) goes through the open file's handle (its rights, not
        // the mode bits, decide); everything else through the names.
        let through = match (req.size, fh) {
            (Some(_), Some(fh)) => self
                .files
                .lock()
                .get(&fh.0)
                .filter(|f| f.ino == ino && f.write)
                .map(|f| f.handle.clone()),
            _ => None,
        };
        // Writes in flight come first: they would undo a truncation, or
        // move an explicit mtime (futimens after write) to their own time.
        let after_writes = req.size.is_some() || req.mtime_ns.is_some();
        let setattr = |node: InodeRef, handle: Vec<u8>| {
            let mut req = req.clone();
            req.node = Some(node);
            req.handle = handle;
            async move {
                call("setattr", &label(ino), || {
                    let mut c = self.local.client().inodes();
                    let req = req.clone();
                    async move { c.set_attr(req).await }
                })
                .await
            }
        };
        self.local.block_on(async {
            if after_writes {
                self.settle(ino).await;
            }
            let bare = || self.inodes.lock().bare_address(ino).ok_or(Errno::ENOENT);
            let e = match through {
                Some(h) => setattr(bare()?, h).await,
                None => match self.by_node(ino, |a| setattr(a, Vec::new())).await {
                    // No name left: a file unlinked while open here.
                    Err(Errno::ESTALE) => match self.open_handle(ino) {
                        Some(h) => setattr(bare()?, h).await,
                        None => Err(Errno::ESTALE),
                    },
                    r => r,
                },
            }?;
            // The ctime changed under every name of the file.
            self.inodes.lock().invalidate_file(e.volume_id, e.inode);
            Ok(self.told(ino, &e))
        })
    }

    fn do_unlink(&self, parent: u64, name: &OsStr, rmdir: bool) -> Result<(), Errno> {
        self.writable()?;
        let name = name_str(name)?;
        let dir = self.dir_address(parent)?;
        // A file open here keeps living for its handles (see `orphans`).
        let target = self.inodes.lock().ino_named(parent, name);
        let keep = self.keep_for(target.filter(|_| !rmdir));
        let resp = self.local.block_on(call("remove", name, || {
            let mut c = self.local.client().inodes();
            let req = NodeRemoveRequest {
                dir: Some(dir.clone()),
                name: name.to_string(),
                kind: if rmdir {
                    RemoveKind::Rmdir
                } else {
                    RemoveKind::Unlink
                } as i32,
                keep,
            };
            async move { c.remove(req).await }
        }))?;
        let gone = self.inodes.lock().unlinked(parent, name);
        self.after_name_went(gone, resp);
        Ok(())
    }

    /// What `Keep` to send for inode `ino` whose last name may go: this
    /// mount's, when the file is open here.
    fn keep_for(&self, ino: Option<u64>) -> Option<Keep> {
        let ino = ino.filter(|i| self.open_here(*i))?;
        let m = self.inodes.lock();
        let n = m.node(ino).filter(|n| !n.dir)?;
        Some(Keep {
            holder: self.orphans.holder(),
            inode: n.inode,
        })
    }

    /// A name of `gone` went: the object's other names show a new link
    /// count and ctime; a file kept for this mount is renewed until its last
    /// close.
    fn after_name_went(&self, gone: Option<u64>, resp: RemovedResponse) {
        let Some(ino) = gone else {
            return;
        };
        let object = {
            let mut m = self.inodes.lock();
            let object = m.node(ino).map(|n| (n.volume, n.inode));
            if let Some((v, i)) = object {
                m.invalidate_file(v, i);
            }
            object
        };
        if let (true, Some((volume, inode))) = (resp.kept, object) {
            self.orphans
                .kept(&self.rt, ino, volume, inode, resp.lease_ms);
        }
    }

    fn do_open(&self, ino: u64, flags: i32) -> Result<(Arc<OpenFile>, Entry), Errno> {
        let (read, write, truncate) = open_rights(flags);
        if write || truncate {
            self.writable()?;
        }
        let what = label(ino);
        let resp = self.local.block_on(self.by_node(ino, |node| {
            call("open", &what, move || {
                let mut c = self.local.client().inodes();
                let req = NodeOpenRequest {
                    node: Some(node.clone()),
                    read,
                    write,
                    truncate,
                };
                async move { c.open(req).await }
            })
        }))?;
        let e = resp.entry.ok_or(Errno::EIO)?;
        let file = Arc::new(OpenFile {
            ino,
            path: label(ino),
            handle: resp.handle,
            write,
            writes: Arc::new(Writes::default()),
        });
        Ok((file, e))
    }

    fn do_readdir(
        &self,
        fh: FileHandle,
        offset: u64,
        reply: &mut ReplyDirectory,
    ) -> Result<(), Errno> {
        let ds = self.dirs.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)?;
        self.local.block_on(async {
            let mut d = ds.lock().await;
            let mut i = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
            let mut added = 0usize;
            loop {
                let (ino, kind, name) = match i {
                    0 => (d.ino, FileType::Directory, ".".to_string()),
                    1 => (d.parent, FileType::Directory, "..".to_string()),
                    _ => {
                        let k = i - 2;
                        if k >= d.entries.len() && d.more {
                            if let Err(e) = self.next_page(&mut d).await {
                                if added == 0 {
                                    return Err(e);
                                }
                                break;
                            }
                        }
                        match d.entries.get(k) {
                            Some(x) => x.clone(),
                            None => break,
                        }
                    }
                };
                if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                    break;
                }
                added += 1;
                i += 1;
            }
            Ok(())
        })
    }

    async fn next_page(&self, d: &mut DirStream) -> Result<(), Errno> {
        let dir = self.dir_address(d.ino)?;
        let resp = call("list", &label(d.ino), || {
            let mut c = self.local.client().inodes();
            let req = NodeListRequest {
                dir: Some(dir.clone()),
                start_after: d.after.clone(),
                limit: 0,
            };
            async move { c.list(req).await }
        })
        .await?;
        let mut m = self.inodes.lock();
        for e in &resp.entries {
            let Some(ino) = m.ino_of(e) else {
                tracing::warn!(name = e.name, "inode number out of range; entry skipped");
                continue;
            };
            m.cache(d.ino, &e.name, e);
            d.entries.push((ino, kind(e), e.name.clone()));
        }
        if let Some(last) = resp.entries.last() {
            d.after = last.name.clone();
        }
        // An empty page that claims more would loop forever: stop instead.
        d.more = resp.more && !resp.entries.is_empty();
        if d.entries.len() >= DIR_ENTRIES_MAX {
            tracing::warn!(
                dir = d.ino,
                "directory listing cut at {DIR_ENTRIES_MAX} entries"
            );
            d.more = false;
        }
        Ok(())
    }

    fn do_statfs(&self) -> Result<(u64, u64, u64, u64), Errno> {
        let v = self.local.block_on(call("statfs", &self.volume_path, || {
            let mut c = self.local.client().volumes();
            let req = PathRequest {
                path: self.volume_path.clone(),
            };
            async move { c.info(req).await }
        }))?;
        let blocks = if v.quota_bytes == 0 {
            UNLIMITED_BLOCKS
        } else {
            v.quota_bytes / STATFS_BLOCK_BYTES
        };
        let used = v.used_bytes.div_ceil(STATFS_BLOCK_BYTES);
        let free = blocks.saturating_sub(used);
        let ffree = STATFS_FILES.saturating_sub(v.entries);
        Ok((blocks, free, STATFS_FILES, ffree))
    }

    /// Who must own what `req` creates in directory `parent`: on a
    /// multi-user mount whose ticket may give entries away (an
    /// administrator's), the requesting process, with the directory's group
    /// when the directory is setgid. `None`: the server's choice (the
    /// ticket's uid) stands.
    fn owner_for(&self, req: &Request, parent: u64) -> Result<Option<Owner>, Errno> {
        if !self.multi_user || !self.caller.admin {
            return Ok(None);
        }
        let d = self.local.block_on(self.entry(parent))?;
        let gid = if d.mode & 0o2000 != 0 {
            d.gid
        } else {
            req.gid()
        };
        Ok(Some(Owner {
            uid: req.uid(),
            gid,
        }))
    }

    /// mkdir, mknod and symlink: `name` in `parent`, made by the server
    /// in one call (owner included).
    fn make(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        make: MakeRequest,
    ) -> Result<FileAttr, Errno> {
        self.writable()?;
        let name = name_str(name)?;
        let owner = self.owner_for(req, parent)?;
        let dir = self.dir_address(parent)?;
        let make = MakeRequest {
            dir: Some(dir),
            name: name.to_string(),
            owner,
            ..make
        };
        let e = self.local.block_on(call("make", name, || {
            let mut c = self.local.client().inodes();
            let req = make.clone();
            async move { c.make(req).await }
        }))?;
        self.inodes.lock().stale(parent);
        self.reference(parent, name, &e)
    }

    fn notify_changed(&self, ino: u64, e: &Entry) {
        let changed = {
            let m = self.inodes.lock();
            m.node(ino)
                .and_then(|n| n.told)
                .is_some_and(|t| t != (e.size, e.mtime_ns))
        };
        if changed {
            if let Some(n) = self.notifier.get() {
                // Attributes only (offset < 0): the page cache is dropped on
                // open anyway because no handle asks to keep it.
                if let Err(err) = n.inval_inode(INodeNo(ino), -1, 0) {
                    tracing::debug!(ino, "attribute invalidation failed: {err}");
                }
            }
        }
    }

    /// The server's value of extended attribute `name` of `ino`.
    async fn getxattr_call(&self, ino: u64, name: &str) -> Result<Vec<u8>, Errno> {
        self.by_node(ino, |node| {
            call("getxattr", name, move || {
                let mut c = self.local.client().inodes();
                let req = NodeXattrRequest {
                    node: Some(node.clone()),
                    name: name.to_string(),
                };
                async move { c.get_xattr(req).await }
            })
        })
        .await
        .map(|v| v.value)
    }
}

impl Filesystem for BerthFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Errors carry the nearest value the kernel accepts: use it.
        let w = config.set_max_write(IO_BYTES_MAX).unwrap_or_else(|v| v);
        let _ = config.set_max_write(w.min(IO_BYTES_MAX));
        if let Err(max) = config.set_max_readahead(IO_BYTES_MAX) {
            let _ = config.set_max_readahead(max);
        }
        // Send fcntl and flock locks here (cluster-wide) instead of keeping
        // them in this host's kernel.
        for (flag, what) in [
            (InitFlags::FUSE_POSIX_LOCKS, "fcntl"),
            (InitFlags::FUSE_FLOCK_LOCKS, "flock"),
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::warn!(
                    "the kernel cannot pass {what} locks on: they stay local to this host"
                );
            }
        }
        Ok(())
    }

    /// Unmount: the mount's locks go with its lock session, and files
    /// unlinked while open here are released.
    fn destroy(&mut self) {
        self.rt.block_on(self.locks.close());
        self.rt.block_on(self.orphans.release_all());
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let name = name_str(name)?;
            // An entry cached from a listing or an earlier lookup, unless
            // what it names changed here since (a write: its size).
            let (cached, known) = {
                let m = self.inodes.lock();
                let known = m.ino_named(parent.0, name);
                let changed = known.is_some_and(|i| m.fresh(i).is_none());
                let cached = m.cached(parent.0, name).filter(|_| !changed).cloned();
                (cached, known)
            };
            let e = match cached {
                Some(e) => e,
                None => {
                    let dir = self.dir_address(parent.0)?;
                    self.local.block_on(async {
                        // This mount sees its own writes.
                        if let Some(ino) = known {
                            self.settle(ino).await;
                        }
                        call("lookup", name, || {
                            let mut c = self.local.client().inodes();
                            let req = LookupRequest {
                                dir: Some(dir.clone()),
                                name: name.to_string(),
                            };
                            async move { c.lookup(req).await }
                        })
                        .await
                    })?
                }
            };
            self.reference(parent.0, name, &e)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.lock().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.do_getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ns = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => nanos(t),
            TimeOrNow::Now => nanos(SystemTime::now()),
        };
        let req = NodeSetAttrRequest {
            node: None,
            handle: Vec::new(),
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            atime_ns: atime.map(ns),
            mtime_ns: mtime.map(ns),
            size,
            // utimes(NULL) sends both as "now": write access suffices then.
            times_now: (atime.is_some() || mtime.is_some())
                && [atime, mtime]
                    .iter()
                    .all(|t| matches!(t, None | Some(TimeOrNow::Now))),
        };
        match self.do_setattr(ino.0, fh, req) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = (|| {
            let fresh = self.inodes.lock().fresh(ino.0).cloned();
            if let Some(e) = fresh.filter(|e| kind(e) == FileType::Symlink) {
                return Ok(e.symlink_target);
            }
            let what = label(ino.0);
            self.local
                .block_on(self.by_node(ino.0, |node| {
                    call("readlink", &what, move || {
                        let mut c = self.local.client().inodes();
                        let req = NodeRequest {
                            node: Some(node.clone()),
                            handle: Vec::new(),
                        };
                        async move { c.readlink(req).await }
                    })
                }))
                .map(|r| r.target)
        })();
        match r {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files, FIFOs, sockets (bind(2) of a UNIX socket) and
        // device nodes; the kernel keeps their I/O, and the mount is nodev.
        let r = special_type(mode).and_then(|special| {
            let (r#type, rdev) = match special {
                None => (EntryType::File, 0),
                Some(t @ (EntryType::CharDevice | EntryType::BlockDevice)) => {
                    (t, dev_from_kernel(rdev))
                }
                Some(t) => (t, 0),
            };
            let make = MakeRequest {
                r#type: r#type as i32,
                mode: Some(mode & !umask & 0o7777),
                rdev,
                ..Default::default()
            };
            self.make(req, parent.0, name, make)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let make = MakeRequest {
            r#type: EntryType::Directory as i32,
            mode: Some(mode & !umask & 0o7777),
            ..Default::default()
        };
        match self.make(req, parent.0, name, make) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = target.to_str().ok_or(Errno::EILSEQ).and_then(|target| {
            let make = MakeRequest {
                r#type: EntryType::Symlink as i32,
                target: target.to_string(),
                ..Default::default()
            };
            self.make(req, parent.0, link_name, make)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            self.writable()?;
            // Whiteouts are for overlay file systems' upper layers.
            if flags.contains(RenameFlags::RENAME_WHITEOUT) {
                return Err(Errno::EINVAL);
            }
            let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
            let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
            if exchange && no_replace {
                return Err(Errno::EINVAL);
            }
            let (name, newname) = (name_str(name)?, name_str(newname)?);
            let from = self.dir_address(parent.0)?;
            let to = self.dir_address(newparent.0)?;
            let (moving, replaced) = {
                let m = self.inodes.lock();
                (
                    m.ino_named(parent.0, name),
                    m.ino_named(newparent.0, newname),
                )
            };
            // A replaced file open here keeps living for its handles.
            let keep = if exchange {
                None
            } else {
                self.keep_for(replaced)
            };
            let resp = self.local.block_on(call("rename", name, || {
                let mut c = self.local.client().inodes();
                let req = NodeRenameRequest {
                    from_dir: Some(from.clone()),
                    from_name: name.to_string(),
                    to_dir: Some(to.clone()),
                    to_name: newname.to_string(),
                    no_replace,
                    exchange,
                    keep,
                };
                async move { c.rename(req).await }
            }))?;
            {
                let mut m = self.inodes.lock();
                if exchange {
                    m.exchanged((parent.0, name), (newparent.0, newname));
                } else {
                    m.renamed((parent.0, name), (newparent.0, newname));
                }
                // Their ctime changed, under every name.
                for ino in [moving, replaced].into_iter().flatten() {
                    if let Some((v, i)) = m.node(ino).map(|n| (n.volume, n.inode)) {
                        m.invalidate_file(v, i);
                    }
                }
            }
            if !exchange && replaced != moving {
                self.after_name_went(replaced, resp);
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            self.writable()?;
            let name = name_str(newname)?;
            let dir = self.dir_address(newparent.0)?;
            let e = self.local.block_on(self.by_node(ino.0, |node| {
                let dir = dir.clone();
                call("link", name, move || {
                    let mut c = self.local.client().inodes();
                    let req = NodeLinkRequest {
                        node: Some(node.clone()),
                        dir: Some(dir.clone()),
                        name: name.to_string(),
                    };
                    async move { c.link(req).await }
                })
            }))?;
            {
                let mut m = self.inodes.lock();
                m.invalidate_file(e.volume_id, e.inode);
                m.stale(newparent.0);
            }
            self.reference(newparent.0, name, &e)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let (file, e) = self.do_open(ino.0, flags.0)?;
            // Close-to-open: tell the kernel when the file changed.
            self.notify_changed(ino.0, &e);
            self.told(ino.0, &e);
            let fh = self.fh();
            self.files.lock().insert(fh, file);
            Ok(fh)
        })();
        match r {
            // No FOPEN_KEEP_CACHE: the kernel drops cached pages on open.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            self.writable()?;
            let name = name_str(name)?;
            let owner = self.owner_for(req, parent.0)?;
            let dir = self.dir_address(parent.0)?;
            let (read, write, truncate) = open_rights(flags);
            let create = NodeCreateRequest {
                dir: Some(dir),
                name: name.to_string(),
                read,
                write,
                truncate,
                exclusive: flags & libc::O_EXCL != 0,
                mode: Some(mode & !umask & 0o7777),
                owner,
            };
            let resp = self.local.block_on(call("create", name, || {
                let mut c = self.local.client().inodes();
                let req = create.clone();
                async move { c.create(req).await }
            }))?;
            let e = resp.entry.ok_or(Errno::EIO)?;
            self.inodes.lock().stale(parent.0);
            let a = self.reference(parent.0, name, &e)?;
            let fh = self.fh();
            let file = Arc::new(OpenFile {
                ino: a.ino.0,
                path: name.to_string(),
                handle: resp.handle,
                write,
                writes: Arc::new(Writes::default()),
            });
            self.files.lock().insert(fh, file);
            Ok((a, fh))
        })();
        match r {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = (|| {
            let f = self.file(fh)?;
            self.local.block_on(async {
                self.settle(ino.0).await;
                call("read", &f.path, || {
                    let mut c = self.local.client().files();
                    let req = ReadRequest {
                        handle: f.handle.clone(),
                        offset,
                        length: size.min(API_IO_BYTES_MAX),
                    };
                    async move { c.read(req).await }
                })
                .await
            })
        })();
        match r {
            Ok(resp) => reply.data(&resp.data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = (|| {
            self.writable()?;
            let f = self.file(fh)?;
            if !f.write {
                return Err(Errno::EBADF);
            }
            if data.len() > API_IO_BYTES_MAX as usize {
                return Err(Errno::EINVAL);
            }
            let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
            self.rt
                .block_on(f.writes.submit(&self.client, &f, offset, data.to_vec()))?;
            self.inodes.lock().stale(f.ino);
            Ok(len)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let r = self.file(fh).and_then(|f| {
            self.local.block_on(f.writes.drain());
            // A close releases the POSIX locks the closing process holds on
            // the file (whichever descriptor took them).
            let unlocked =
                self.rt.block_on(
                    self.locks
                        .release(f.ino, &f.handle, lock_owner.0, Kind::Posix),
                );
            f.writes.error().map_or(unlocked, Err)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let f = self.files.lock().remove(&fh.0);
        if let Some(f) = f {
            // The last close of an open file description releases its flock
            // lock (the kernel names the owner only then; see `setlk`).
            if let Some(owner) = lock_owner {
                let released =
                    self.rt
                        .block_on(self.locks.release(f.ino, &f.handle, owner.0, Kind::Posix));
                if let Err(e) = released {
                    tracing::warn!(file = %f.path, errno = ?e, "could not release a flock lock; it goes with the mount's lock session");
                }
            }
            // And the open file description's own (F_OFD_*) locks.
            if let Err(e) = self.rt.block_on(self.locks.file_closed(fh.0, &f.handle)) {
                tracing::warn!(file = %f.path, errno = ?e, "could not release an OFD lock; it goes with the mount's lock session");
            }
            // Errors were reported by flush; the data must still be out
            // before the handle is forgotten.
            self.local.block_on(f.writes.drain());
            // The last close of a file unlinked while open here: the server
            // may delete it now.
            if !self.open_here(f.ino) && self.orphans.is_kept(f.ino) {
                self.rt.block_on(self.orphans.release(f.ino));
            }
        }
        reply.ok();
    }

    /// Writes are durable once `Files.Write` returns, so fsync waits for
    /// this handle's writes in flight and reports their first failure.
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.file(fh).and_then(|f| {
            self.local.block_on(f.writes.drain());
            f.writes.error().map_or(Ok(()), Err)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let parent = {
                let m = self.inodes.lock();
                let n = m.node(ino.0).ok_or(Errno::ENOENT)?;
                n.names.first().map_or(ROOT_INO, |(p, _)| *p)
            };
            let fh = self.fh();
            let ds = DirStream {
                ino: ino.0,
                parent,
                entries: Vec::new(),
                after: String::new(),
                more: true,
            };
            self.dirs
                .lock()
                .insert(fh, Arc::new(tokio::sync::Mutex::new(ds)));
            Ok(fh)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.do_readdir(fh, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are durable when their call returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.do_statfs() {
            Ok((blocks, free, files, ffree)) => reply.statfs(
                blocks,
                free,
                free,
                files,
                ffree,
                STATFS_BLOCK_BYTES as u32,
                NAME_BYTES_MAX,
                STATFS_BLOCK_BYTES as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = (|| {
            let name = name_str(name)?.to_string();
            let key = (ino.0, name.clone());
            if let Some((r, at)) = self.xattrs.lock().get(&key) {
                if at.elapsed() < TTL {
                    return r.clone();
                }
            }
            let r = self.local.block_on(self.getxattr_call(ino.0, &name));
            if matches!(r, Ok(_) | Err(Errno::ENODATA)) {
                let mut cache = self.xattrs.lock();
                if cache.len() >= XATTR_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, (r.clone(), Instant::now()));
            }
            r
        })();
        match r {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let what = label(ino.0);
        let r = self.local.block_on(self.by_node(ino.0, |node| {
            call("listxattr", &what, move || {
                let mut c = self.local.client().inodes();
                let req = NodeRequest {
                    node: Some(node.clone()),
                    handle: Vec::new(),
                };
                async move { c.list_xattr(req).await }
            })
        }));
        match r {
            Ok(names) => {
                // NUL-terminated names, as listxattr(2) returns them.
                let mut buf = Vec::new();
                for n in names.names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                xattr_reply(reply, &buf, size)
            }
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            self.writable()?;
            let name = name_str(name)?.to_string();
            let (create, replace) = (
                flags & libc::XATTR_CREATE != 0,
                flags & libc::XATTR_REPLACE != 0,
            );
            let what = label(ino.0);
            self.local.block_on(self.by_node(ino.0, |node| {
                let name = name.clone();
                call("setxattr", &what, move || {
                    let mut c = self.local.client().inodes();
                    let req = NodeSetXattrRequest {
                        node: Some(node.clone()),
                        name: name.clone(),
                        value: value.to_vec(),
                        create,
                        replace,
                    };
                    async move { c.set_xattr(req).await }
                })
            }))?;
            Ok(())
        })();
        self.forget_xattrs(ino.0);
        self.inodes.lock().stale(ino.0);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            self.writable()?;
            let name = name_str(name)?.to_string();
            let what = label(ino.0);
            self.local.block_on(self.by_node(ino.0, |node| {
                let name = name.clone();
                call("removexattr", &what, move || {
                    let mut c = self.local.client().inodes();
                    let req = NodeXattrRequest {
                        node: Some(node.clone()),
                        name: name.clone(),
                    };
                    async move { c.remove_xattr(req).await }
                })
            }))?;
            Ok(())
        })();
        self.forget_xattrs(ino.0);
        self.inodes.lock().stale(ino.0);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// F_GETLK: the lock that would block this one, from the cluster.
    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let r = (|| {
            let f = self.file(fh)?;
            let want = Want::from_kernel(typ)?;
            self.rt.block_on(
                self.locks
                    .test(ino.0, &f.handle, lock_owner.0, want, (start, end)),
            )
        })();
        match r {
            Ok(Some(l)) => reply.locked(l.start, l.end, l.typ, l.pid),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(e),
        }
    }

    /// F_SETLK/F_SETLKW and flock(2). fuser does not pass the kernel's
    /// `FUSE_LK_FLOCK` flag on, so a flock lock arrives as a whole-file
    /// record lock owned by its open file description and is kept as one:
    /// flock works across clients, and — as on Linux NFS, which emulates
    /// flock the same way — it conflicts with fcntl locks on the same file.
    /// A waiting request is answered from the runtime so it does not hold a
    /// FUSE thread.
    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let kind = Kind::Posix;
        let (f, want) = match self
            .file(fh)
            .and_then(|f| Want::from_kernel(typ).map(|w| (f, w)))
        {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let locks = self.locks.clone();
        let waiter = req.pid();
        let set = async move {
            locks
                .set(
                    (f.ino, fh.0),
                    &f.handle,
                    lock_owner.0,
                    kind,
                    want,
                    (start, end),
                    pid,
                    sleep,
                    waiter,
                )
                .await
        };
        let answer = |r: Result<(), Errno>, reply: ReplyEmpty| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        };
        if sleep && want != Want::Unlock {
            self.rt.spawn(async move { answer(set.await, reply) });
        } else {
            answer(self.rt.block_on(set), reply);
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let r = (|| {
            let e = self.local.block_on(self.entry(ino.0))?;
            // A read-only mount, and anything read from a snapshot.
            if mask.contains(AccessFlags::W_OK) && (self.read_only || e.view != 0) {
                return Err(Errno::EROFS);
            }
            if permits(&self.caller, &e, mask) {
                Ok(())
            } else {
                Err(Errno::EACCES)
            }
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Answers a getxattr/listxattr: the size when asked with size 0, the bytes
/// when they fit, else ERANGE.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() <= size as usize {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32, uid: u32, gid: u32) -> Entry {
        Entry {
            r#type: EntryType::File as i32,
            mode,
            uid,
            gid,
            ..Default::default()
        }
    }

    #[test]
    fn open_flags() {
        assert_eq!(open_rights(libc::O_RDONLY), (true, false, false));
        assert_eq!(
            open_rights(libc::O_WRONLY | libc::O_TRUNC),
            (false, true, true)
        );
        assert_eq!(open_rights(libc::O_RDWR), (true, true, false));
        // O_TRUNC without write access truncates nothing.
        assert_eq!(
            open_rights(libc::O_RDONLY | libc::O_TRUNC),
            (true, false, false)
        );
    }

    #[test]
    fn attributes() {
        let mut e = file(0o640, 7, 8);
        e.size = 1000;
        e.mtime_ns = 1_500_000_000;
        e.nlink = 0;
        let a = attr(42, &e);
        // A file unlinked while open has no links.
        assert_eq!(a.nlink, 0);
        e.nlink = 1;
        let a = attr(42, &e);
        assert_eq!(a.ino, INodeNo(42));
        assert_eq!(a.kind, FileType::RegularFile);
        assert_eq!(a.perm, 0o640);
        assert_eq!(a.blocks, 2);
        assert_eq!(a.nlink, 1);
        assert_eq!(a.mtime, UNIX_EPOCH + Duration::from_millis(1500));
        let link = Entry {
            r#type: EntryType::Symlink as i32,
            symlink_target: "../x".into(),
            ..Default::default()
        };
        assert_eq!(attr(3, &link).size, 4);
        assert_eq!(time(-1_000_000_000), UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(nanos(time(-5)), -5);
    }

    #[test]
    fn special_files() {
        // mknod(2)'s type bits: regular files (also with no type), the
        // special kinds, and nothing else.
        assert_eq!(special_type(0o644), Ok(None));
        assert_eq!(special_type(libc::S_IFREG | 0o644), Ok(None));
        assert_eq!(
            special_type(libc::S_IFIFO | 0o600),
            Ok(Some(EntryType::Fifo))
        );
        assert_eq!(special_type(libc::S_IFSOCK), Ok(Some(EntryType::Socket)));
        assert_eq!(special_type(libc::S_IFCHR), Ok(Some(EntryType::CharDevice)));
        assert_eq!(
            special_type(libc::S_IFBLK),
            Ok(Some(EntryType::BlockDevice))
        );
        assert_eq!(special_type(libc::S_IFDIR | 0o755), Err(Errno::EINVAL));
        assert_eq!(special_type(libc::S_IFLNK), Err(Errno::EINVAL));
        // The kernel's 32-bit device numbers and dev_t agree both ways for
        // every device the kernel can name (12-bit major, 20-bit minor).
        for (major, minor) in [(0, 0), (1, 3), (8, 17), (259, 4097), (0xfff, 0xf_ffff)] {
            let dev = libc::makedev(major, minor);
            let kernel = dev_to_kernel(dev);
            assert_eq!(dev_from_kernel(kernel), dev, "{major}:{minor}");
            // For these the two encodings are the same number.
            assert_eq!(u64::from(kernel), dev, "{major}:{minor}");
        }
        assert_eq!(dev_to_kernel(libc::makedev(0x1000, 0)), 0);
        assert_eq!(dev_to_kernel(libc::makedev(1, 0x10_0000)), 0);
        // Attributes: the type, and the device (1:3) of device nodes only.
        for (t, kind, rdev) in [
            (EntryType::Fifo, FileType::NamedPipe, 0),
            (EntryType::Socket, FileType::Socket, 0),
            (EntryType::CharDevice, FileType::CharDevice, (1 << 8) | 3),
            (EntryType::BlockDevice, FileType::BlockDevice, (1 << 8) | 3),
        ] {
            let e = Entry {
                r#type: t as i32,
                mode: 0o640,
                rdev: libc::makedev(1, 3),
                ..Default::default()
            };
            let a = attr(9, &e);
            assert_eq!(
                (a.kind, a.perm, a.size, a.rdev),
                (kind, 0o640, 0, rdev),
                "{t:?}"
            );
        }
        let mut f = file(0o644, 1, 1);
        f.rdev = libc::makedev(1, 3);
        assert_eq!(attr(9, &f).rdev, 0, "a file has no device");
    }

    #[test]
    fn names() {
        assert_eq!(name_str(OsStr::new("a.txt")), Ok("a.txt"));
        assert_eq!(name_str(OsStr::new("a/b")), Err(Errno::EINVAL));
        assert_eq!(
            name_str(OsStr::new(&"x".repeat(256))),
            Err(Errno::ENAMETOOLONG)
        );
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(name_str(OsStr::from_bytes(b"\xff")), Err(Errno::EILSEQ));
    }

    #[test]
    fn access_bits() {
        let owner = Caller {
            uid: 7,
            gids: vec![100],
            admin: false,
        };
        let other = Caller {
            uid: 9,
            gids: vec![],
            admin: false,
        };
        let admin = Caller {
            uid: 0,
            gids: vec![],
            admin: true,
        };
        let e = file(0o640, 7, 8);
        assert!(permits(&owner, &e, AccessFlags::R_OK | AccessFlags::W_OK));
        assert!(!permits(&owner, &e, AccessFlags::X_OK));
        assert!(!permits(&other, &e, AccessFlags::R_OK));
        assert!(permits(&other, &e, AccessFlags::F_OK));
        assert!(permits(&admin, &e, AccessFlags::W_OK));
        assert!(!permits(&admin, &e, AccessFlags::X_OK));
        // uid 0 is the superuser for the server's mode-bit check, admin or not.
        let root = Caller {
            uid: 0,
            gids: vec![],
            admin: false,
        };
        assert!(permits(&root, &e, AccessFlags::R_OK | AccessFlags::W_OK));
        assert!(!permits(&root, &e, AccessFlags::X_OK));
        let group = Caller {
            uid: 9,
            gids: vec![8],
            admin: false,
        };
        assert!(permits(&group, &e, AccessFlags::R_OK));
        assert!(!permits(&group, &e, AccessFlags::W_OK));
    }
}
