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
    Entry, EntryType, LinkRequest, ListRequest, MkdirRequest, OpenRequest, PathRequest,
    ReadRequest, RemoveRequest, RenameRequest, SetAttrRequest, SetXattrRequest, SymlinkRequest,
    XattrRequest,
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
use crate::inodes::{join, parent_of, Inodes, ROOT_INO, TTL};
use crate::local::Local;
use crate::locks::{Kind, LockClient, Want};
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

/// One open directory: its entries, fetched page by page as it is read.
struct DirStream {
    path: String,
    ino: u64,
    parent: u64,
    entries: Vec<(u64, FileType, String)>,
    after: String,
    more: bool,
}

pub struct BerthFs {
    /// The shared runtime: write-behind and lock-session work.
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
    /// Files unlinked while open here: FUSE inode → the hidden name they were
    /// renamed to, removed on the last close (as NFS clients do), so open
    /// handles keep working as POSIX promises.
    doomed: Mutex<HashMap<u64, String>>,
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

/// The (uid, gid) a new entry is given on a multi-user mount, if any.
type Owner = Option<(u32, u32)>;

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
        nlink: e.nlink.max(1),
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

impl BerthFs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rt: Handle,
        client: Client,
        read_only: bool,
        multi_user: bool,
        root_path: &str,
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
            inodes: Mutex::new(Inodes::new(root_path, root_real, root)),
            files: Mutex::new(HashMap::new()),
            doomed: Mutex::new(HashMap::new()),
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

    fn path(&self, ino: u64) -> Result<String, Errno> {
        let m = self.inodes.lock();
        match m.node(ino) {
            Some(n) => n.path.clone().ok_or(Errno::ESTALE),
            None => Err(Errno::ENOENT),
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<(String, String), Errno> {
        let name = name_str(name)?;
        let dir = self.path(parent)?;
        let path = join(&dir, name);
        Ok((dir, path))
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    async fn stat(&self, path: &str) -> Result<Entry, Errno> {
        call("stat", path, || {
            let mut c = self.local.client().namespace();
            let req = PathRequest {
                path: path.to_string(),
            };
            async move { c.stat(req).await }
        })
        .await
    }

    /// The entry at `path`, from the cache when fresh.
    async fn stat_cached(&self, path: &str) -> Result<Entry, Errno> {
        let cached = self.inodes.lock().cached(path).cloned();
        if let Some(e) = cached {
            return Ok(e);
        }
        let e = self.stat(path).await?;
        self.inodes.lock().cache(path, &e);
        Ok(e)
    }

    /// Records a new kernel reference to the entry at `path` and returns its
    /// attributes.
    fn reference(&self, path: &str, e: &Entry) -> Result<FileAttr, Errno> {
        let mut m = self.inodes.lock();
        let ino = m.ino_of(e).ok_or_else(|| {
            tracing::warn!(
                path,
                volume = e.volume_id,
                inode = e.inode,
                "inode number out of range"
            );
            Errno::EOVERFLOW
        })?;
        m.remember(ino, path, e);
        m.cache(path, e);
        if let Some(n) = m.node_mut(ino) {
            n.told = Some((e.size, e.mtime_ns));
        }
        Ok(attr(ino, e))
    }

    /// Fresh attributes of `ino` (already referenced) for a reply.
    fn told(&self, ino: u64, path: Option<&str>, e: &Entry) -> FileAttr {
        let mut m = self.inodes.lock();
        if let Some(p) = path {
            m.cache(p, e);
        }
        if let Some(n) = m.node_mut(ino) {
            n.entry = Some(e.clone());
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

    fn invalidate_parent(&self, path: &str) {
        if let Some(p) = parent_of(path) {
            self.inodes.lock().invalidate(p);
        }
    }

    fn do_getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.local.block_on(async {
            self.settle(ino).await;
            let path = self.inodes.lock().path(ino).map(str::to_string);
            if let Some(path) = path {
                let e = self.stat_cached(&path).await;
                let same = match &e {
                    Ok(e) => self.inodes.lock().ino_of(e) == Some(ino),
                    Err(_) => false,
                };
                match e {
                    Ok(e) if same => return Ok(self.told(ino, Some(&path), &e)),
                    // The path names another object now: this one was
                    // replaced behind our back.
                    Ok(_) => self.inodes.lock().unlinked(&path),
                    Err(e) if e == Errno::ENOENT => self.inodes.lock().unlinked(&path),
                    Err(e) => return Err(e),
                }
            }
            let m = self.inodes.lock();
            match m.node(ino).and_then(|n| n.entry.as_ref()) {
                Some(e) => Ok(attr(ino, e)),
                None => Err(Errno::ENOENT),
            }
        })
    }

    /// `req` holds the changes; its path is filled in here.
    fn do_setattr(&self, ino: u64, mut req: SetAttrRequest) -> Result<FileAttr, Errno> {
        self.writable()?;
        let path = self.path(ino)?;
        let is_link = self
            .inodes
            .lock()
            .node(ino)
            .and_then(|n| n.entry.as_ref())
            .is_some_and(|e| kind(e) == FileType::Symlink);
        if is_link {
            // SetAttr follows symbolic links; changing the target instead of
            // the link would be wrong.
            return Err(Errno::EOPNOTSUPP);
        }
        req.path = path.clone();
        // Writes in flight come first: they would undo a truncation, or
        // move an explicit mtime (futimens after write) to their own time.
        let after_writes = req.size.is_some() || req.mtime_ns.is_some();
        self.local.block_on(async {
            if after_writes {
                self.settle(ino).await;
            }
            let e = call("setattr", &path, || {
                let mut c = self.local.client().namespace();
                let req = req.clone();
                async move { c.set_attr(req).await }
            })
            .await?;
            Ok(self.told(ino, Some(&path), &e))
        })
    }

    fn do_unlink(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        self.writable()?;
        let (_, path) = self.child(parent, name)?;
        self.local.block_on(async {
            // The API removes either kind: check it as unlink(2)/rmdir(2) do.
            let e = self.stat_cached(&path).await?;
            match (dir, kind(&e) == FileType::Directory) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
            let ino = self.inodes.lock().ino_of(&e);
            let open_here = ino.is_some_and(|i| self.files.lock().values().any(|f| f.ino == i));
            if let (false, true, Some(ino)) = (dir, open_here, ino) {
                // Keep the data for the open handles: hide the name instead.
                let hidden = join(
                    parent_of(&path).unwrap_or("/"),
                    &format!(".berth-unlinked-{ino:x}-{}", self.fh()),
                );
                self.rename_on_server(&path, &hidden, true, false).await?;
                self.inodes.lock().renamed(&path, &hidden);
                self.doomed.lock().insert(ino, hidden);
                self.invalidate_parent(&path);
                return Ok(());
            }
            self.remove_path(&path).await?;
            let mut m = self.inodes.lock();
            m.unlinked(&path);
            // Other names of the same file now show one link fewer: drop
            // their cached entries, and keep the inode's last-known entry
            // right for getattr until a lookup names it again.
            m.invalidate_file(e.volume_id, e.inode);
            if let Some(n) = ino.filter(|_| e.nlink > 1).and_then(|i| m.node_mut(i)) {
                let mut left = e.clone();
                left.nlink -= 1;
                n.entry = Some(left);
            }
            drop(m);
            self.invalidate_parent(&path);
            Ok(())
        })
    }

    async fn remove_path(&self, path: &str) -> Result<(), Errno> {
        call("remove", path, || {
            let mut c = self.local.client().namespace();
            let req = RemoveRequest {
                path: path.to_string(),
                recursive: false,
            };
            async move { c.remove(req).await }
        })
        .await
        .map(|_| ())
    }

    fn do_open(
        &self,
        ino: u64,
        flags: i32,
        create: Option<(u32, bool)>,
        path: &str,
    ) -> Result<(Arc<OpenFile>, Entry), Errno> {
        let (read, write, truncate) = open_rights(flags);
        if write || truncate || create.is_some() {
            self.writable()?;
        }
        let (create_flag, exclusive, mode) = match create {
            Some((mode, excl)) => (true, excl, mode),
            None => (false, false, 0),
        };
        let resp = self.local.block_on(call("open", path, || {
            let mut c = self.local.client().files();
            let req = OpenRequest {
                path: path.to_string(),
                read,
                write,
                create: create_flag,
                exclusive,
                truncate,
                mode: Some(mode),
            };
            async move { c.open(req).await }
        }))?;
        let e = resp.entry.ok_or(Errno::EIO)?;
        let ino = if create.is_some() {
            self.inodes.lock().ino_of(&e).ok_or(Errno::EOVERFLOW)?
        } else {
            ino
        };
        let file = Arc::new(OpenFile {
            ino,
            path: path.to_string(),
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
        let resp = call("list", &d.path, || {
            let mut c = self.local.client().namespace();
            let req = ListRequest {
                path: d.path.clone(),
                start_after: d.after.clone(),
                limit: 0,
            };
            async move { c.list(req).await }
        })
        .await?;
        let mut m = self.inodes.lock();
        for e in &resp.entries {
            let Some(ino) = m.ino_of(e) else {
                tracing::warn!(path = e.path, "inode number out of range; entry skipped");
                continue;
            };
            let path = join(&d.path, &e.name);
            m.cache(&path, e);
            d.entries.push((ino, kind(e), e.name.clone()));
        }
        if let Some(last) = resp.entries.last() {
            d.after = last.name.clone();
        }
        // An empty page that claims more would loop forever: stop instead.
        d.more = resp.more && !resp.entries.is_empty();
        if d.entries.len() >= DIR_ENTRIES_MAX {
            tracing::warn!(
                path = d.path,
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

    /// Who must own what `req` creates in directory `dir`: on a multi-user
    /// mount whose ticket may give entries away (an administrator's), the
    /// requesting process, with the directory's group when the directory is
    /// setgid (as the server chose already). `None`: the server's choice
    /// (the ticket's uid) stands.
    /// What every creating call needs first: a writable mount, the new
    /// path, the mode after the umask, and the owner to give the entry.
    fn new_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<(String, u32, Owner), Errno> {
        self.writable()?;
        let (dir, path) = self.child(parent.0, name)?;
        let owner = self.owner_for(req, &dir)?;
        Ok((path, mode & !umask & 0o7777, owner))
    }

    fn owner_for(&self, req: &Request, dir: &str) -> Result<Owner, Errno> {
        if !self.multi_user || !self.caller.admin {
            return Ok(None);
        }
        let d = self.local.block_on(self.stat_cached(dir))?;
        let gid = if d.mode & 0o2000 != 0 {
            d.gid
        } else {
            req.gid()
        };
        Ok(Some((req.uid(), gid)))
    }

    /// Replies for a created entry. `fresh`: the call certainly created it
    /// (not an existing entry opened); only then is its `owner` (from
    /// [`BerthFs::owner_for`]) made right.
    fn created(
        &self,
        path: &str,
        e: Entry,
        fresh: bool,
        owner: Option<(u32, u32)>,
    ) -> Result<FileAttr, Errno> {
        self.invalidate_parent(path);
        let mut fix = SetAttrRequest {
            path: path.to_string(),
            ..Default::default()
        };
        if fresh {
            if let Some((uid, gid)) = owner {
                fix.uid = (e.uid != uid).then_some(uid);
                fix.gid = (e.gid != gid).then_some(gid);
            }
        }
        if fix.uid.is_none() && fix.gid.is_none() {
            return self.reference(path, &e);
        }
        let fixed = self.local.block_on(call("setattr", path, || {
            let mut c = self.local.client().namespace();
            let req = fix.clone();
            async move { c.set_attr(req).await }
        }));
        match fixed {
            Ok(e) => self.reference(path, &e),
            Err(err) => {
                // Fail whole: leave no entry with the wrong owner or mode.
                if let Err(rm) = self.local.block_on(self.remove_path(path)) {
                    tracing::warn!(path, errno = ?rm, "could not remove a new entry whose owner or mode could not be set");
                }
                Err(err)
            }
        }
    }

    /// The server's rename: `no_replace` is RENAME_NOREPLACE, `exchange`
    /// RENAME_EXCHANGE.
    async fn rename_on_server(
        &self,
        from: &str,
        to: &str,
        no_replace: bool,
        exchange: bool,
    ) -> Result<(), Errno> {
        call("rename", from, || {
            let mut c = self.local.client().namespace();
            let req = RenameRequest {
                from: from.to_string(),
                to: to.to_string(),
                no_replace,
                exchange,
            };
            async move { c.rename(req).await }
        })
        .await
        .map(|_| ())
    }

    /// RENAME_EXCHANGE: the server swaps the two entries atomically; here
    /// the two paths (and everything below them) swap in the inode map, and
    /// the cached entries of both files and both parents go.
    fn exchange(&self, a: &str, b: &str) -> Result<(), Errno> {
        self.local
            .block_on(self.rename_on_server(a, b, false, true))?;
        let mut m = self.inodes.lock();
        // Both entries' ctime changed: other names of the same files too.
        let files: Vec<(u64, u64)> = [a, b]
            .into_iter()
            .filter_map(|p| m.ino_at(p))
            .filter_map(|i| m.node(i).and_then(|n| n.entry.as_ref()))
            .map(|e| (e.volume_id, e.inode))
            .collect();
        m.exchanged(a, b);
        for (vol, ino) in files {
            m.invalidate_file(vol, ino);
        }
        for p in [parent_of(a), parent_of(b)].into_iter().flatten() {
            m.invalidate(p);
        }
        Ok(())
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

    /// Unmount: the mount's locks go with its lock session.
    fn destroy(&mut self) {
        self.rt.block_on(self.locks.close());
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let (_, path) = self.child(parent.0, name)?;
            let e = self.local.block_on(self.stat_cached(&path))?;
            self.reference(&path, &e)
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
        _fh: Option<FileHandle>,
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
        let req = SetAttrRequest {
            path: String::new(),
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
        match self.do_setattr(ino.0, req) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = (|| {
            let path = self.path(ino.0)?;
            let e = self.local.block_on(self.stat_cached(&path))?;
            if kind(&e) != FileType::Symlink {
                return Err(Errno::EINVAL);
            }
            Ok(e.symlink_target)
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
        let r = (|| {
            let special = special_type(mode)?;
            let (path, mode, owner) = self.new_entry(req, parent, name, mode, umask)?;
            let (r#type, rdev) = match special {
                None => (EntryType::File, 0),
                Some(t @ (EntryType::CharDevice | EntryType::BlockDevice)) => {
                    (t, dev_from_kernel(rdev))
                }
                Some(t) => (t, 0),
            };
            let e = self.local.block_on(call("create", &path, || {
                let mut c = self.local.client().namespace();
                let req = berth_api::v1::CreateRequest {
                    path: path.clone(),
                    r#type: r#type as i32,
                    mode: Some(mode),
                    exclusive: true,
                    rdev,
                };
                async move { c.create(req).await }
            }))?;
            self.created(&path, e, true, owner)
        })();
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
        let r = (|| {
            let (path, mode, owner) = self.new_entry(req, parent, name, mode, umask)?;
            let e = self.local.block_on(call("mkdir", &path, || {
                let mut c = self.local.client().namespace();
                let req = MkdirRequest {
                    path: path.clone(),
                    mode: Some(mode),
                    parents: false,
                };
                async move { c.mkdir(req).await }
            }))?;
            self.created(&path, e, true, owner)
        })();
        match r {
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
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            self.writable()?;
            let (_, path) = self.child(parent.0, link_name)?;
            let target = target.to_str().ok_or(Errno::EILSEQ)?.to_string();
            let e = self.local.block_on(call("symlink", &path, || {
                let mut c = self.local.client().namespace();
                let req = SymlinkRequest {
                    path: path.clone(),
                    target: target.clone(),
                };
                async move { c.symlink(req).await }
            }))?;
            self.invalidate_parent(&path);
            self.reference(&path, &e)
        })();
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
            let (_, from) = self.child(parent.0, name)?;
            let (_, to) = self.child(newparent.0, newname)?;
            let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                if no_replace {
                    return Err(Errno::EINVAL);
                }
                return self.exchange(&from, &to);
            }
            // A replaced target may have other names: note it to fix their
            // link counts below.
            let replaced = self.local.block_on(self.stat_cached(&to)).ok();
            self.local
                .block_on(self.rename_on_server(&from, &to, no_replace, false))?;
            let mut m = self.inodes.lock();
            let replaced_ino = replaced.as_ref().and_then(|e| m.ino_of(e));
            m.renamed(&from, &to);
            if let (Some(e), Some(ino)) = (&replaced, replaced_ino) {
                m.invalidate_file(e.volume_id, e.inode);
                if let Some(n) = m.node_mut(ino).filter(|_| e.nlink > 1) {
                    let mut left = e.clone();
                    left.nlink -= 1;
                    n.entry = Some(left);
                }
            }
            for p in [parent_of(&from), parent_of(&to)].into_iter().flatten() {
                m.invalidate(p);
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
            let existing = self.path(ino.0)?;
            let (_, path) = self.child(newparent.0, newname)?;
            let e = self.local.block_on(call("link", &path, || {
                let mut c = self.local.client().namespace();
                let req = LinkRequest {
                    existing: existing.clone(),
                    path: path.clone(),
                };
                async move { c.link(req).await }
            }))?;
            self.invalidate_parent(&path);
            self.inodes.lock().invalidate_file(e.volume_id, e.inode);
            self.reference(&path, &e)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let path = self.path(ino.0)?;
            let (file, e) = self.do_open(ino.0, flags.0, None, &path)?;
            // Close-to-open: the path may name another object now.
            let same = self.inodes.lock().ino_of(&e) == Some(ino.0);
            if !same {
                self.inodes.lock().unlinked(&path);
                return Err(Errno::ESTALE);
            }
            self.notify_changed(ino.0, &e);
            self.told(ino.0, Some(&path), &e);
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
            let (path, mode, owner) = self.new_entry(req, parent, name, mode, umask)?;
            let excl = flags & libc::O_EXCL != 0;
            // Exclusively first, to know whether this call made the file
            // (only then are its mode and owner set); without O_EXCL an
            // existing file is then opened. The kernel asks to create after
            // a negative lookup, so the second call is rare.
            let (file, e, fresh) = match self.do_open(0, flags, Some((mode, true)), &path) {
                Ok((file, e)) => (file, e, true),
                Err(err) if err == Errno::EEXIST && !excl => {
                    let (file, e) = self.do_open(0, flags, Some((mode, false)), &path)?;
                    (file, e, false)
                }
                Err(err) => return Err(err),
            };
            let a = self.created(&path, e, fresh, owner)?;
            let fh = self.fh();
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
            let mut m = self.inodes.lock();
            if let Some(p) = m.path(f.ino).map(str::to_string) {
                m.invalidate(&p);
            }
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
                    tracing::warn!(path = %f.path, errno = ?e, "could not release a flock lock; it goes with the mount's lock session");
                }
            }
            // And the open file description's own (F_OFD_*) locks.
            if let Err(e) = self.rt.block_on(self.locks.file_closed(fh.0, &f.handle)) {
                tracing::warn!(path = %f.path, errno = ?e, "could not release an OFD lock; it goes with the mount's lock session");
            }
            // Errors were reported by flush; the data must still be out
            // before the handle is forgotten.
            self.local.block_on(f.writes.drain());
            // The last close of a file unlinked while open removes it now.
            let last = !self.files.lock().values().any(|o| o.ino == f.ino);
            let hidden = if last {
                self.doomed.lock().remove(&f.ino)
            } else {
                None
            };
            if let Some(hidden) = hidden {
                if let Err(e) = self.local.block_on(self.remove_path(&hidden)) {
                    tracing::warn!(path = %hidden, errno = ?e, "could not remove a file unlinked while open");
                }
                self.inodes.lock().unlinked(&hidden);
                self.invalidate_parent(&hidden);
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
            let path = self.path(ino.0)?;
            let parent = match parent_of(&path) {
                _ if ino.0 == ROOT_INO => ROOT_INO,
                Some(p) => self.inodes.lock().ino_at(p).unwrap_or(ROOT_INO),
                None => ROOT_INO,
            };
            let fh = self.fh();
            let ds = DirStream {
                path,
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
            let path = self.path(ino.0)?;
            let name = name_str(name)?.to_string();
            let key = (ino.0, name.clone());
            if let Some((r, at)) = self.xattrs.lock().get(&key) {
                if at.elapsed() < TTL {
                    return r.clone();
                }
            }
            let r = self
                .rt
                .block_on(call("getxattr", &path, || {
                    let mut c = self.local.client().namespace();
                    let req = XattrRequest {
                        path: path.clone(),
                        name: name.clone(),
                    };
                    async move { c.get_xattr(req).await }
                }))
                .map(|v| v.value);
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
        let r = (|| {
            let path = self.path(ino.0)?;
            self.local.block_on(call("listxattr", &path, || {
                let mut c = self.local.client().namespace();
                let req = PathRequest { path: path.clone() };
                async move { c.list_xattr(req).await }
            }))
        })();
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
            let path = self.path(ino.0)?;
            let name = name_str(name)?.to_string();
            let (create, replace) = (
                flags & libc::XATTR_CREATE != 0,
                flags & libc::XATTR_REPLACE != 0,
            );
            self.local.block_on(call("setxattr", &path, || {
                let mut c = self.local.client().namespace();
                let req = SetXattrRequest {
                    path: path.clone(),
                    name: name.clone(),
                    value: value.to_vec(),
                    create,
                    replace,
                };
                async move { c.set_xattr(req).await }
            }))?;
            Ok(())
        })();
        self.forget_xattrs(ino.0);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            self.writable()?;
            let path = self.path(ino.0)?;
            let name = name_str(name)?.to_string();
            self.local.block_on(call("removexattr", &path, || {
                let mut c = self.local.client().namespace();
                let req = XattrRequest {
                    path: path.clone(),
                    name: name.clone(),
                };
                async move { c.remove_xattr(req).await }
            }))?;
            Ok(())
        })();
        self.forget_xattrs(ino.0);
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
            let path = self.path(ino.0)?;
            let e = self.local.block_on(self.stat_cached(&path))?;
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
