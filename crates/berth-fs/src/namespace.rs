//! The namespace service: path resolution across volumes and every
//! namespace operation, each authorized for the calling [`Principal`] and
//! committed as one conditional command on the volume's shard.

use std::collections::HashMap;
use std::sync::Arc;

use berth_meta::map::{components, normalize_path, split_parent, VolumeRecord, VolumeState};
use berth_meta::router::{backoff, too_much_contention, Commit, Tx, TX_RETRIES_MAX};
use berth_meta::{Code, Error, Meta, ROOT_INODE};
use berth_raft::ShardId;
use berth_security::principal::Principal;
use berth_security::scope::Access;
use berth_store::keys::Kind;
use parking_lot::Mutex;

use crate::access::{check_entry, check_owner, check_scope, check_sticky, validate_ace, Need};
use crate::inodes::NodeRef;
use crate::orphans::{Keep, Removal};
use crate::records::*;

/// Most symbolic links followed while resolving one path.
pub const SYMLINK_HOPS_MAX: usize = 40;
/// Times a resolution starts over after reads that straddled a change (an entry whose
/// inode was gone by the time it was read), before ENOENT is believed.
const TORN_READS_MAX: usize = 8;
/// Largest page a listing returns.
pub const LIST_LIMIT_MAX: usize = 10_000;
/// Inode numbers reserved per allocation round trip.
const INODE_BLOCK: u64 = 1024;
/// gid given to entries created by a principal without groups.
pub const NOGROUP_GID: u32 = 65534;

/// One namespace entry as returned to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub path: String,
    pub name: String,
    pub volume_id: u64,
    pub volume_path: String,
    pub ino: u64,
    pub volume_root: bool,
    pub inode: Inode,
    /// Live, or which snapshot the entry is read from.
    pub view: View,
}

/// What a new entry of [`Namespace::make`] carries besides its attributes.
#[derive(Clone)]
pub(crate) enum Extra {
    None,
    /// A symbolic link's target.
    Target(String),
    /// A device node's device (0 for FIFOs and sockets).
    Rdev(u64),
}

/// Attribute changes of [`Namespace::set_attr`].
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub size: Option<u64>,
    /// The given times are "now" (utimes(NULL)): the server's clock is used
    /// and write access suffices; explicit times need the owner.
    pub times_now: bool,
}

/// A resolved entry.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub vol: VolumeRecord,
    pub ino: u64,
    pub inode: Inode,
    pub path: String,
    pub view: View,
}

impl Loc {
    /// Refuses changes to what is not live (snapshots and their directory).
    pub fn writable(&self) -> Result<(), Error> {
        match self.view {
            View::Live => Ok(()),
            _ => Err(crate::data::read_only(&self.path)),
        }
    }
}

/// Where a call creates, removes or renames an entry: a path, or a name in
/// a directory addressed by inode.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Site<'a> {
    /// A normalised path; its parent is resolved following links.
    Path(&'a str),
    /// A name in a directory addressed by inode.
    At(&'a NodeRef, &'a str),
}

impl Site<'_> {
    /// For error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Site::Path(p) => p.to_string(),
            Site::At(dir, name) => format!("{name:?} in {}", dir.describe()),
        }
    }
}

/// Which existing entry a call is about.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A path; a final symbolic link is followed when the flag is set.
    Path(&'a str, bool),
    /// An entry addressed by inode (never followed).
    Node(&'a NodeRef),
    /// A file addressed by inode and authorized by an open handle of it,
    /// which it needs when it has no name left (unlinked while open).
    Handle(&'a NodeRef, &'a [u8]),
}

impl Target<'_> {
    /// For error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Path(p, _) => p.to_string(),
            Target::Node(n) | Target::Handle(n, _) => n.describe(),
        }
    }
}

/// An entry a [`Target`] named.
pub(crate) struct Found {
    pub loc: Loc,
    /// Found through a handle: the principal to act as. The handle's open
    /// checked the ticket's scope for the file; a handle open for writing
    /// stands for that check, since the entry may have no path to check
    /// again (a scoped principal with a read-only handle keeps its scope,
    /// which then refuses changes).
    pub acting: Option<Principal>,
    /// Found through a handle open for writing.
    pub handle_write: bool,
}

pub struct Namespace {
    pub(crate) meta: Arc<Meta>,
    /// Per volume: the next free inode number and the end of the reserved block.
    ids: Mutex<HashMap<u64, (u64, u64)>>,
    /// What another service writes when an entry's name changes.
    hook: std::sync::OnceLock<Arc<dyn EntryHook>>,
    /// Lease of a file kept for its open handles (`orphans`).
    pub(crate) orphan_lease_ms: std::sync::atomic::AtomicU64,
}

/// What a service keeping state about entries (the tables' change log)
/// writes into the very transaction that removes or renames one, so that
/// its record and the change commit together, whichever API made it.
pub trait EntryHook: Send + Sync {
    /// `path`, the last name of entry `ino` (of `kind`) in volume `vol`,
    /// goes: the entry and its data are deleted by `tx`.
    fn removed(
        &self,
        tx: &mut Tx,
        vol: u64,
        ino: u64,
        kind: EntryKind,
        path: &str,
    ) -> Result<(), Error>;

    /// Entry `ino` is renamed from `from` to `to` by `tx`; for a
    /// directory, everything below it moves too. The hook may read through
    /// `tx` (making the rename conditional on what it read).
    fn renamed<'a>(
        &'a self,
        tx: &'a mut Tx,
        vol: u64,
        ino: u64,
        kind: EntryKind,
        from: &'a str,
        to: &'a str,
    ) -> HookFuture<'a>;
}

/// What [`EntryHook::renamed`] returns.
pub type HookFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + 'a>>;

/// What one step of a walk found.
pub(crate) enum Step {
    Found(Box<Loc>),
    /// The entry's reads straddled a change: walk again through a new read
    /// barrier.
    Torn,
}

/// Reads across shards with one read barrier per shard per operation.
pub(crate) struct Reader {
    pub(crate) txs: HashMap<ShardId, Tx>,
}

impl Reader {
    pub(crate) fn new() -> Reader {
        Reader {
            txs: HashMap::new(),
        }
    }
    pub(crate) async fn tx(&mut self, meta: &Meta, shard: ShardId) -> Result<&Tx, Error> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.txs.entry(shard) {
            slot.insert(meta.router().begin(shard).await?);
        }
        Ok(&self.txs[&shard])
    }
    pub(crate) async fn inode(
        &mut self,
        meta: &Meta,
        vol: &VolumeRecord,
        view: View,
        ino: u64,
    ) -> Result<Option<Inode>, Error> {
        let tx = self.tx(meta, vol.shard_id).await?;
        tx.peek(&view.key(inode_key(vol.id, ino)))
            .await?
            .map(|b| decode_inode(&b))
            .transpose()
    }
    /// Overlays a file's size and write time onto its inode.
    pub(crate) async fn overlay(
        &mut self,
        meta: &Meta,
        vol: &VolumeRecord,
        view: View,
        ino: u64,
        inode: &mut Inode,
    ) -> Result<(), Error> {
        if inode.kind != EntryKind::File {
            return Ok(());
        }
        let tx = self.tx(meta, vol.shard_id).await?;
        crate::data::overlay_file_attrs(tx, view, vol.id, ino, inode).await
    }

    pub(crate) async fn snapshots(
        &mut self,
        meta: &Meta,
        vol: &VolumeRecord,
    ) -> Result<SnapshotList, Error> {
        let tx = self.tx(meta, vol.shard_id).await?;
        decode_snapshots(tx.peek(&snapshots_key(vol.id)).await?.as_deref())
    }

    pub(crate) async fn dirent(
        &mut self,
        meta: &Meta,
        vol: &VolumeRecord,
        view: View,
        parent: u64,
        name: &str,
    ) -> Result<Option<Dirent>, Error> {
        let tx = self.tx(meta, vol.shard_id).await?;
        tx.peek(&view.key(dirent_key(vol.id, parent, name)))
            .await?
            .map(|b| decode_dirent(&b))
            .transpose()
    }
}

/// Where [`Namespace::create_in`] creates an entry
/// ([`Namespace::create_site`]).
#[derive(Debug, Clone)]
pub struct CreateSite {
    /// The deepest existing ancestor directory.
    parent: Loc,
    /// The names to create below it, the entry's own last.
    missing: Vec<String>,
    path: String,
}

impl CreateSite {
    /// The volume the entry is created in.
    pub fn volume(&self) -> &VolumeRecord {
        &self.parent.vol
    }

    /// The entry's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn entry(&self, path: String, name: &str, ino: u64, inode: Inode) -> EntryInfo {
        EntryInfo {
            path,
            name: name.to_string(),
            volume_id: self.parent.vol.id,
            volume_path: self.parent.vol.path.clone(),
            ino,
            volume_root: false,
            inode,
            view: View::Live,
        }
    }
}

/// What [`Namespace::make_at_site`] makes.
#[derive(Clone)]
pub(crate) struct Made {
    pub kind: EntryKind,
    pub mode: u32,
    pub extra: Extra,
    /// The owner to give the new entry instead of the caller (uid, gid), as
    /// far as the caller could give it away with a chown (EPERM otherwise).
    pub owner: Option<(u32, u32)>,
}

/// Checks that `p` may give an entry of `path` that it would own as
/// `(uid, gid)` to `to` instead, as chown(2) would let it: another uid
/// needs an administrator, another group an administrator or the owner in
/// that group.
pub(crate) fn check_give(
    p: &Principal,
    path: &str,
    (uid, gid): (u32, u32),
    to: (u32, u32),
) -> Result<(), Error> {
    if p.is_admin() {
        return Ok(());
    }
    if to.0 != uid {
        return Err(Error::new(
            Code::Perm,
            format!(
                "operation not permitted: only an administrator may give {path} to uid {}",
                to.0
            ),
        ));
    }
    if to.1 != gid && !(to.0 == p.uid && p.gids.contains(&to.1)) {
        return Err(Error::new(
            Code::Perm,
            format!(
                "operation not permitted: the owner may only give {path} to one of their groups, not {}",
                to.1
            ),
        ));
    }
    Ok(())
}

/// Writes, in `tx`, a new entry `name` (inode `ino`) in the directory
/// `(volume, ino, inode)`, owned by `p` (or `made.owner`, if `p` may give
/// it away), with the group and setgid bit a setgid directory passes on;
/// updates the directory (its link count for a new subdirectory, its
/// times). Returns the new inode.
fn add_child(
    tx: &mut Tx,
    p: &Principal,
    (vol, parent_ino, pinode): (u64, u64, &mut Inode),
    (name, ino): (&str, u64),
    made: &Made,
    path: &str,
) -> Result<Inode, Error> {
    let kind = made.kind;
    let (target, rdev) = match &made.extra {
        Extra::None => (None, 0),
        Extra::Target(t) => (Some(t.clone()), 0),
        Extra::Rdev(r) => (None, *r),
    };
    let now = now_ns();
    let mut uid = p.uid;
    let mut gid = if pinode.mode & 0o2000 != 0 {
        pinode.gid
    } else {
        p.gids.first().copied().unwrap_or(NOGROUP_GID)
    };
    if let Some(to) = made.owner {
        check_give(p, path, (uid, gid), to)?;
        (uid, gid) = to;
    }
    let mut mode = made.mode & 0o7777;
    if kind == EntryKind::Dir && pinode.mode & 0o2000 != 0 {
        mode |= 0o2000; // setgid directories propagate
    }
    let inode = Inode {
        kind,
        mode,
        uid,
        gid,
        size: target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
        nlink: if kind == EntryKind::Dir { 2 } else { 1 },
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
        parent: if kind == EntryKind::Dir {
            parent_ino
        } else {
            0
        },
        target,
        acl: EntryAcl::default(),
        rdev,
        name: if kind == EntryKind::Dir {
            name.to_string()
        } else {
            String::new()
        },
    };
    if kind == EntryKind::Dir {
        pinode.nlink += 1;
    }
    pinode.mtime_ns = now;
    pinode.ctime_ns = now;
    tx.put(inode_key(vol, ino), encode_inode(&inode));
    tx.put(
        dirent_key(vol, parent_ino, name),
        encode_dirent(&Dirent {
            ino,
            kind,
            mount: None,
        }),
    );
    tx.put(inode_key(vol, parent_ino), encode_inode(pinode));
    Ok(inode)
}

/// Refuses a symbolic link target that is empty, longer than 4096 bytes
/// or holds a NUL.
pub(crate) fn check_target(target: &str) -> Result<(), Error> {
    if target.is_empty() || target.len() > 4096 || target.contains('\0') {
        return Err(Error::invalid(
            "symlink target must be 1-4096 bytes without NUL",
        ));
    }
    Ok(())
}

/// What mknod(2) checks: a special kind; device nodes only by a superuser
/// (uid 0 or an administrator, as mknod(2) needs CAP_MKNOD: EPERM), and no
/// device number for the others.
pub(crate) fn check_mknod(
    p: &Principal,
    kind: EntryKind,
    rdev: u64,
    path: &str,
) -> Result<(), Error> {
    if !kind.is_special() {
        return Err(Error::invalid(format!(
            "mknod makes FIFOs, sockets and device nodes, not a {}",
            kind.name()
        )));
    }
    if kind.is_device() {
        if p.uid != 0 && !p.is_admin() {
            return Err(Error::new(
                Code::Perm,
                format!(
                    "operation not permitted: only a superuser may make a {} ({path})",
                    kind.name()
                ),
            ));
        }
    } else if rdev != 0 {
        return Err(Error::invalid(format!(
            "a {} has no device number (rdev {rdev:#x})",
            kind.name()
        )));
    }
    Ok(())
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Resolves `.` and `..` in `target` relative to directory `base`, lexically
/// (as a symlink target is interpreted). `..` at the root stays at the root.
fn lexical(base: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        components(base).collect()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        "/".to_string()
    } else {
        parts.iter().fold(String::new(), |mut s, c| {
            s.push('/');
            s.push_str(c);
            s
        })
    }
}

/// The virtual `.snapshot` directory of a volume root: read-only, owned
/// like the root.
pub(crate) fn snapshot_dir_inode(root: &Inode, root_ino: u64) -> Inode {
    Inode {
        kind: EntryKind::Dir,
        mode: 0o555,
        nlink: 2,
        size: 0,
        parent: root_ino,
        target: None,
        ..root.clone()
    }
}

/// Reads the parent directory of `path` as a condition of `tx` and checks
/// that `p` may change its entries; returns its key and inode.
pub(crate) async fn writable_parent(
    tx: &mut Tx,
    p: &Principal,
    parent: &Loc,
    path: &str,
) -> Result<(Vec<u8>, Inode), Error> {
    let pkey = inode_key(parent.vol.id, parent.ino);
    let pinode = decode_inode(
        &tx.get(&pkey)
            .await?
            .ok_or_else(|| Error::not_found(&parent.path))?,
    )?;
    // Changing a directory's entries takes searching it too (Linux:
    // MAY_WRITE | MAY_EXEC).
    check_entry(p, &parent.path, &parent.vol, &pinode, Need::Search)?;
    check_entry(p, &parent.path, &parent.vol, &pinode, Need::Write)?;
    check_scope(p, path, Access::Write)?;
    Ok((pkey, pinode))
}

pub(crate) fn not_dir(path: &str) -> Error {
    Error::new(Code::NotDir, format!("not a directory: {path}"))
}

impl Namespace {
    pub fn new(meta: Arc<Meta>) -> Arc<Namespace> {
        Arc::new(Namespace {
            meta,
            ids: Mutex::new(HashMap::new()),
            hook: std::sync::OnceLock::new(),
            orphan_lease_ms: std::sync::atomic::AtomicU64::new(
                crate::orphans::ORPHAN_LEASE_MS_DEFAULT,
            ),
        })
    }

    /// Sets the hook every removal and rename calls (the first set stays).
    pub fn set_hook(&self, hook: Arc<dyn EntryHook>) {
        let _ = self.hook.set(hook);
    }

    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    pub(crate) fn volume(&self, id: u64) -> Result<VolumeRecord, Error> {
        self.meta.map().volume(id).cloned().ok_or_else(|| {
            Error::new(
                Code::Again,
                format!("volume {id} is not in the cluster map yet; retry"),
            )
        })
    }

    /// Resolves `path`. Symbolic links in the middle are followed; the last
    /// component is followed only when `follow` is set. Every directory
    /// passed through must be searchable by `p`.
    pub(crate) async fn resolve(
        &self,
        p: &Principal,
        path: &str,
        follow: bool,
    ) -> Result<Loc, Error> {
        self.resolve_in(&mut Reader::new(), p, path, follow).await
    }

    /// The namespace root directory.
    pub(crate) async fn root_loc(&self, reader: &mut Reader) -> Result<Loc, Error> {
        let vol = self.volume(berth_meta::map::ROOT_VOLUME)?;
        let inode = reader
            .inode(&self.meta, &vol, View::Live, ROOT_INODE)
            .await?
            .ok_or_else(|| Error::new(Code::Again, "root directory not initialised yet; retry"))?;
        Ok(Loc {
            vol,
            ino: ROOT_INODE,
            inode,
            path: "/".to_string(),
            view: View::Live,
        })
    }

    /// One step of a walk: the entry `name` in directory `dir`, which `p`
    /// must be allowed to search. Crosses into a volume mounted there, into
    /// a volume root's `.snapshot` directory and into a snapshot. The
    /// entry's attributes are its inode's (no file size overlaid).
    pub(crate) async fn step(
        &self,
        reader: &mut Reader,
        p: &Principal,
        dir: &Loc,
        name: &str,
    ) -> Result<Step, Error> {
        if dir.inode.kind != EntryKind::Dir {
            return Err(not_dir(&dir.path));
        }
        check_entry(p, &dir.path, &dir.vol, &dir.inode, Need::Search)?;
        let path = join(&dir.path, name);
        if dir.view == View::Live && dir.ino == dir.vol.root_inode && name == SNAPSHOT_DIR {
            return Ok(Step::Found(Box::new(Loc {
                vol: dir.vol.clone(),
                ino: dir.ino,
                inode: snapshot_dir_inode(&dir.inode, dir.ino),
                path,
                view: View::SnapshotDir,
            })));
        }
        if dir.view == View::SnapshotDir {
            let snaps = reader.snapshots(&self.meta, &dir.vol).await?;
            let s = snaps.find(name).ok_or_else(|| Error::not_found(&path))?;
            let view = View::Snapshot(s.id);
            let inode = reader
                .inode(&self.meta, &dir.vol, view, dir.ino)
                .await?
                .ok_or_else(|| Error::not_found(&path))?;
            return Ok(Step::Found(Box::new(Loc {
                vol: dir.vol.clone(),
                ino: dir.ino,
                inode,
                path,
                view,
            })));
        }
        let d = reader
            .dirent(&self.meta, &dir.vol, dir.view, dir.ino, name)
            .await?
            .ok_or_else(|| Error::not_found(&path))?;
        let (vol, ino) = match d.mount {
            // A snapshot holds one volume; volumes mounted in it are not
            // part of it.
            Some(_) if !dir.view.is_live() => return Err(Error::not_found(&path)),
            Some(m) => {
                let v = self.volume(m)?;
                if v.state != VolumeState::Ready {
                    return Err(Error::not_found(&path));
                }
                let root = v.root_inode;
                (v, root)
            }
            None => (dir.vol.clone(), d.ino),
        };
        match reader.inode(&self.meta, &vol, dir.view, ino).await? {
            Some(inode) => Ok(Step::Found(Box::new(Loc {
                vol,
                ino,
                inode,
                path,
                view: dir.view,
            }))),
            // An entry names an inode that is gone: its reads straddled a
            // change (a rename over it, an unlink), since every committed
            // state has an inode for each entry.
            None if d.mount.is_none() && dir.view.is_live() => Ok(Step::Torn),
            None => Err(Error::not_found(&path)),
        }
    }

    /// [`Namespace::resolve`] through `reader`'s transactions (one read barrier per
    /// shard crossed), which the caller may go on reading with.
    pub(crate) async fn resolve_in(
        &self,
        reader: &mut Reader,
        p: &Principal,
        path: &str,
        follow: bool,
    ) -> Result<Loc, Error> {
        let original = normalize_path(path)?;
        let mut path = original.clone();
        let mut hops = 0;
        let mut torn = 0;
        'restart: loop {
            let mut at = self.root_loc(reader).await?;
            let comps: Vec<String> = components(&path).map(str::to_string).collect();
            for (i, comp) in comps.iter().enumerate() {
                let next = match self.step(reader, p, &at, comp).await? {
                    Step::Found(next) => *next,
                    // Resolve again from the start, through a new read
                    // barrier, instead of answering ENOENT for a name that
                    // existed all along.
                    Step::Torn if torn < TORN_READS_MAX => {
                        torn += 1;
                        *reader = Reader::new();
                        path = original.clone();
                        hops = 0;
                        continue 'restart;
                    }
                    Step::Torn => return Err(Error::not_found(join(&at.path, comp))),
                };
                let last = i + 1 == comps.len();
                if next.inode.kind == EntryKind::Symlink && (!last || follow) {
                    hops += 1;
                    if hops > SYMLINK_HOPS_MAX {
                        return Err(Error::new(
                            Code::Loop,
                            format!("too many levels of symbolic links: {path}"),
                        ));
                    }
                    let target = next.inode.target.clone().unwrap_or_default();
                    let mut rest = lexical(&at.path, &target);
                    for c in &comps[i + 1..] {
                        rest = join(&rest, c);
                    }
                    path = rest;
                    continue 'restart;
                }
                at = next;
            }
            reader
                .overlay(&self.meta, &at.vol, at.view, at.ino, &mut at.inode)
                .await?;
            return Ok(at);
        }
    }

    /// Resolves the parent directory of `path` (following links) and
    /// returns it with the last name.
    pub(crate) async fn resolve_parent(
        &self,
        p: &Principal,
        path: &str,
    ) -> Result<(Loc, String), Error> {
        let (parent, name) = split_parent(path).ok_or_else(|| {
            Error::new(Code::Busy, "the root directory cannot be changed this way")
        })?;
        let loc = self.resolve(p, parent, true).await?;
        if loc.inode.kind != EntryKind::Dir {
            return Err(not_dir(parent));
        }
        loc.writable()?;
        if loc.ino == loc.vol.root_inode && name == SNAPSHOT_DIR {
            return Err(crate::data::read_only(path));
        }
        Ok((loc, name.to_string()))
    }

    /// Resolves an entry that is about to change: refuses snapshots.
    pub(crate) async fn resolve_mut(
        &self,
        p: &Principal,
        path: &str,
        follow: bool,
    ) -> Result<Loc, Error> {
        let loc = self.resolve(p, path, follow).await?;
        loc.writable()?;
        Ok(loc)
    }

    pub(crate) fn info(loc: &Loc) -> EntryInfo {
        let name = split_parent(&loc.path)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| "/".to_string());
        EntryInfo {
            path: loc.path.clone(),
            name,
            volume_id: loc.vol.id,
            volume_path: loc.vol.path.clone(),
            ino: loc.ino,
            volume_root: loc.ino == loc.vol.root_inode && loc.view != View::SnapshotDir,
            inode: loc.inode.clone(),
            view: loc.view,
        }
    }

    /// Reserves an inode number in `vol`.
    async fn alloc_ino(&self, vol: &VolumeRecord) -> Result<u64, Error> {
        {
            let mut ids = self.ids.lock();
            if let Some((next, end)) = ids.get_mut(&vol.id) {
                if *next < *end {
                    *next += 1;
                    return Ok(*next - 1);
                }
            }
        }
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let key = counter_key(vol.id);
            let start = match tx.get(&key).await? {
                Some(b) => u64::from_be_bytes(
                    b.as_slice()
                        .try_into()
                        .map_err(|_| Error::corrupt("inode counter"))?,
                ),
                None => ROOT_INODE + 1,
            };
            tx.put(key, (start + INODE_BLOCK).to_be_bytes().to_vec());
            if let Commit::Done(_) = tx.commit().await? {
                let mut ids = self.ids.lock();
                ids.insert(vol.id, (start + 1, start + INODE_BLOCK));
                return Ok(start);
            }
        }
        Err(too_much_contention("inode allocation"))
    }

    // ------------------------------------------------------------ reads

    /// Attributes of `path` (a final symlink is not followed).
    pub async fn stat(&self, p: &Principal, path: &str) -> Result<EntryInfo, Error> {
        let loc = self.resolve(p, path, false).await?;
        check_scope(p, &loc.path, Access::Traverse)?;
        Ok(Self::info(&loc))
    }

    /// One page of a directory's entries, in name order, strictly after
    /// `start_after`. Returns the entries and whether more follow.
    pub async fn list(
        &self,
        p: &Principal,
        path: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<(Vec<EntryInfo>, bool), Error> {
        let loc = self.resolve(p, path, true).await?;
        self.list_loc(p, &loc, start_after, limit).await
    }

    /// One page of the entries of directory `loc` (see [`Namespace::list`]).
    pub(crate) async fn list_loc(
        &self,
        p: &Principal,
        loc: &Loc,
        start_after: &str,
        limit: usize,
    ) -> Result<(Vec<EntryInfo>, bool), Error> {
        if loc.inode.kind != EntryKind::Dir {
            return Err(not_dir(&loc.path));
        }
        check_entry(p, &loc.path, &loc.vol, &loc.inode, Need::Read)?;
        let limit = match limit {
            0 => 1000,
            l => l.min(LIST_LIMIT_MAX),
        };
        if loc.view == View::SnapshotDir {
            return self.list_snapshots(loc, start_after, limit).await;
        }
        let view = loc.view;
        let (mut start, end) = children_range(loc.vol.id, loc.ino);
        if !start_after.is_empty() {
            start = dirent_key(loc.vol.id, loc.ino, start_after);
            start.push(0);
        }
        let mut reader = Reader::new();
        let rows = reader
            .tx(&self.meta, loc.vol.shard_id)
            .await?
            .peek_range(&view.key(start), &view.key(end), limit + 1)
            .await?;
        let more = rows.len() > limit;
        let mut out = Vec::with_capacity(rows.len().min(limit));
        for (k, v) in rows.into_iter().take(limit) {
            let name = dirent_name(&view.unkey(k))?;
            let d = decode_dirent(&v)?;
            let (vol, ino) = match d.mount {
                Some(_) if !view.is_live() => continue,
                Some(m) => {
                    let v = self.volume(m)?;
                    if v.state != VolumeState::Ready {
                        continue;
                    }
                    let root = v.root_inode;
                    (v, root)
                }
                None => (loc.vol.clone(), d.ino),
            };
            let view = if d.mount.is_some() { View::Live } else { view };
            // An entry removed between the two reads is skipped.
            let Some(mut inode) = reader.inode(&self.meta, &vol, view, ino).await? else {
                continue;
            };
            reader
                .overlay(&self.meta, &vol, view, ino, &mut inode)
                .await?;
            out.push(EntryInfo {
                path: join(&loc.path, &name),
                name,
                volume_id: vol.id,
                volume_path: vol.path.clone(),
                ino,
                volume_root: d.mount.is_some(),
                inode,
                view,
            });
        }
        Ok((out, more))
    }

    /// The entries of a volume's `.snapshot` directory: one root per snapshot.
    async fn list_snapshots(
        &self,
        loc: &Loc,
        start_after: &str,
        limit: usize,
    ) -> Result<(Vec<EntryInfo>, bool), Error> {
        let mut reader = Reader::new();
        let mut snaps = reader.snapshots(&self.meta, &loc.vol).await?.snapshots;
        snaps.sort_by(|a, b| a.name.cmp(&b.name));
        snaps.retain(|s| s.name.as_str() > start_after);
        let more = snaps.len() > limit;
        let mut out = Vec::new();
        for s in snaps.into_iter().take(limit) {
            let view = View::Snapshot(s.id);
            let ino = loc.vol.root_inode;
            let Some(inode) = reader.inode(&self.meta, &loc.vol, view, ino).await? else {
                continue;
            };
            out.push(EntryInfo {
                path: join(&loc.path, &s.name),
                name: s.name,
                volume_id: loc.vol.id,
                volume_path: loc.vol.path.clone(),
                ino,
                volume_root: true,
                inode,
                view,
            });
        }
        Ok((out, more))
    }

    /// Attributes of `path`, following a final symlink (as stat(2) does).
    pub async fn stat_following(&self, p: &Principal, path: &str) -> Result<EntryInfo, Error> {
        let loc = self.resolve(p, path, true).await?;
        check_scope(p, &loc.path, Access::Traverse)?;
        Ok(Self::info(&loc))
    }

    /// [`Namespace::stat_following`], with a transaction on the entry's shard whose
    /// reads are behind the read barrier the resolution took: a caller reading more of
    /// that shard (a stream's settings and topic) waits for no other barrier.
    pub async fn stat_following_tx(
        &self,
        p: &Principal,
        path: &str,
    ) -> Result<(EntryInfo, Tx), Error> {
        let mut reader = Reader::new();
        let loc = self.resolve_in(&mut reader, p, path, true).await?;
        check_scope(p, &loc.path, Access::Traverse)?;
        let tx = match reader.txs.remove(&loc.vol.shard_id) {
            Some(tx) => tx,
            None => self.meta.router().begin(loc.vol.shard_id).await?,
        };
        Ok((Self::info(&loc), tx))
    }

    pub async fn readlink(&self, p: &Principal, path: &str) -> Result<String, Error> {
        self.readlink_of(p, &Target::Path(path, false)).await
    }

    pub(crate) async fn readlink_of(
        &self,
        p: &Principal,
        target: &Target<'_>,
    ) -> Result<String, Error> {
        let loc = self.target_loc(p, target).await?.loc;
        check_scope(p, &loc.path, Access::Read)?;
        match (&loc.inode.kind, &loc.inode.target) {
            (EntryKind::Symlink, Some(t)) => Ok(t.clone()),
            _ => Err(Error::invalid(format!("not a symbolic link: {}", loc.path))),
        }
    }

    pub async fn get_acl(&self, p: &Principal, path: &str) -> Result<(String, EntryAcl), Error> {
        let loc = self.resolve(p, path, true).await?;
        check_scope(p, &loc.path, Access::Read)?;
        Ok((loc.path, loc.inode.acl))
    }

    // ------------------------------------------------------------ changes

    /// Creates a directory; with `parents`, also its missing ancestors, and
    /// an existing directory is not an error.
    pub async fn mkdir(
        &self,
        p: &Principal,
        path: &str,
        mode: u32,
        parents: bool,
    ) -> Result<EntryInfo, Error> {
        let path = normalize_path(path)?;
        if !parents {
            return self
                .make(p, &path, EntryKind::Dir, mode, Extra::None, true)
                .await;
        }
        let mut cur = String::from("/");
        let mut last = None;
        for c in components(&path) {
            cur = join(&cur, c);
            last = Some(
                self.make(p, &cur, EntryKind::Dir, mode, Extra::None, false)
                    .await?,
            );
        }
        match last {
            Some(e) => Ok(e),
            None => self.stat(p, "/").await,
        }
    }

    /// Creates a file, table or stream entry. Without `exclusive`, an
    /// existing entry of the same kind is returned unchanged.
    pub async fn create(
        &self,
        p: &Principal,
        path: &str,
        kind: EntryKind,
        mode: u32,
        exclusive: bool,
    ) -> Result<EntryInfo, Error> {
        if kind == EntryKind::Dir || kind == EntryKind::Symlink || kind.is_special() {
            return Err(Error::invalid(
                "create makes files, tables and streams; use mkdir, symlink or mknod",
            ));
        }
        let path = normalize_path(path)?;
        self.make(p, &path, kind, mode, Extra::None, exclusive)
            .await
    }

    /// Creates a FIFO, a socket's name or a device node (mknod(2)): an
    /// entry with attributes only, whose I/O is the kernel's. `rdev` (a
    /// Linux `dev_t`) names the device of a device node and must be 0 for
    /// the others. Device nodes need a superuser (uid 0 or an
    /// administrator), as mknod(2) needs CAP_MKNOD: EPERM otherwise.
    pub async fn mknod(
        &self,
        p: &Principal,
        path: &str,
        kind: EntryKind,
        mode: u32,
        rdev: u64,
    ) -> Result<EntryInfo, Error> {
        check_mknod(p, kind, rdev, path)?;
        let path = normalize_path(path)?;
        self.make(p, &path, kind, mode, Extra::Rdev(rdev), true)
            .await
    }

    pub async fn symlink(
        &self,
        p: &Principal,
        path: &str,
        target: &str,
    ) -> Result<EntryInfo, Error> {
        check_target(target)?;
        let path = normalize_path(path)?;
        self.make(
            p,
            &path,
            EntryKind::Symlink,
            0o777,
            Extra::Target(target.to_string()),
            true,
        )
        .await
    }

    async fn make(
        &self,
        p: &Principal,
        path: &str,
        kind: EntryKind,
        mode: u32,
        extra: Extra,
        exclusive: bool,
    ) -> Result<EntryInfo, Error> {
        let made = Made {
            kind,
            mode,
            extra,
            owner: None,
        };
        self.make_at_site(p, &Site::Path(path), &made, exclusive)
            .await
    }

    /// Makes the entry `made` at `site`. Without `exclusive`, an existing
    /// entry of the same kind is returned unchanged.
    pub(crate) async fn make_at_site(
        &self,
        p: &Principal,
        site: &Site<'_>,
        made: &Made,
        exclusive: bool,
    ) -> Result<EntryInfo, Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let (parent, name, path) = self.site_parent(p, site).await?;
            let vol = parent.vol.clone();
            let ino = self.alloc_ino(&vol).await?;
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let pkey = inode_key(vol.id, parent.ino);
            let mut pinode = decode_inode(
                &tx.get(&pkey)
                    .await?
                    .ok_or_else(|| Error::not_found(&parent.path))?,
            )?;
            let dkey = dirent_key(vol.id, parent.ino, &name);
            if let Some(existing) = tx.peek(&dkey).await? {
                let d = decode_dirent(&existing)?;
                if !exclusive && d.kind == made.kind {
                    return self.entry_at_site(p, site).await;
                }
                return Err(Error::exists(&path));
            }
            tx.get(&dkey).await?; // condition: still absent
            check_entry(p, &parent.path, &vol, &pinode, Need::Search)?;
            check_entry(p, &parent.path, &vol, &pinode, Need::Write)?;
            check_scope(p, &path, Access::Write)?;
            let inode = add_child(
                &mut tx,
                p,
                (vol.id, parent.ino, &mut pinode),
                (&name, ino),
                made,
                &path,
            )?;
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(EntryInfo {
                    path,
                    name,
                    volume_id: vol.id,
                    volume_path: vol.path.clone(),
                    ino,
                    volume_root: false,
                    inode,
                    view: View::Live,
                });
            }
        }
        Err(too_much_contention(&site.describe()))
    }

    /// Where [`Namespace::create_in`] would create `path`: its deepest
    /// existing ancestor directory (resolved now, following links, and
    /// searchable and writable by `p`) and the names still missing below
    /// it, the entry's own last.
    pub async fn create_site(&self, p: &Principal, path: &str) -> Result<CreateSite, Error> {
        let path = normalize_path(path)?;
        let mut missing = Vec::new();
        let mut at = path.clone();
        let parent = loop {
            let (loc, name) = match self.resolve_parent(p, &at).await {
                Ok(r) => r,
                Err(e) if e.code == Code::NotFound => {
                    let (up, name) = split_parent(&at).ok_or(e)?;
                    missing.push(name.to_string());
                    at = up.to_string();
                    continue;
                }
                Err(e) => return Err(e),
            };
            missing.push(name);
            break loc;
        };
        missing.reverse();
        check_entry(p, &parent.path, &parent.vol, &parent.inode, Need::Search)?;
        check_entry(p, &parent.path, &parent.vol, &parent.inode, Need::Write)?;
        Ok(CreateSite {
            parent,
            missing,
            path,
        })
    }

    /// Creates, in `tx` (a transaction of `site`'s volume's shard, which
    /// the caller commits), the entry `site` names with its missing parent
    /// directories (mode `dir_mode`), as [`Namespace::create`] and
    /// [`Namespace::mkdir`] would: the entry and every directory made are
    /// there when `tx` commits and nowhere if it does not. Names that `tx`
    /// already holds (made by an earlier call in it) are used, and an
    /// existing entry of the same kind is returned (another kind is
    /// `Exists`). The commit
    /// fails as a conflict when another writer made or removed any of
    /// these names meanwhile.
    pub async fn create_in(
        &self,
        tx: &mut Tx,
        p: &Principal,
        site: &CreateSite,
        kind: EntryKind,
        mode: u32,
        dir_mode: u32,
    ) -> Result<EntryInfo, Error> {
        if matches!(kind, EntryKind::Dir | EntryKind::Symlink) {
            return Err(Error::invalid(
                "create makes files, tables and streams; use mkdir or symlink",
            ));
        }
        let vol = &site.parent.vol;
        let mut dir = (site.parent.ino, site.parent.path.clone());
        for (i, name) in site.missing.iter().enumerate() {
            let last = i + 1 == site.missing.len();
            let path = join(&dir.1, name);
            let pkey = inode_key(vol.id, dir.0);
            let mut pinode = decode_inode(
                &tx.get(&pkey)
                    .await?
                    .ok_or_else(|| Error::not_found(&dir.1))?,
            )?;
            let dkey = dirent_key(vol.id, dir.0, name);
            if let Some(b) = tx.get(&dkey).await? {
                let d = decode_dirent(&b)?;
                if d.mount.is_some() {
                    return Err(Error::new(
                        Code::Again,
                        format!("{path} became a volume's mount point; retry"),
                    ));
                }
                if !last {
                    if d.kind != EntryKind::Dir {
                        return Err(not_dir(&path));
                    }
                    dir = (d.ino, path);
                    continue;
                }
                if d.kind != kind {
                    return Err(Error::exists(&path));
                }
                let inode = decode_inode(
                    &tx.get(&inode_key(vol.id, d.ino))
                        .await?
                        .ok_or_else(|| Error::not_found(&path))?,
                )?;
                return Ok(site.entry(path, name, d.ino, inode));
            }
            check_entry(p, &dir.1, vol, &pinode, Need::Search)?;
            check_entry(p, &dir.1, vol, &pinode, Need::Write)?;
            check_scope(p, &path, Access::Write)?;
            let ino = self.alloc_ino(vol).await?;
            let (k, m) = match last {
                true => (kind, mode),
                false => (EntryKind::Dir, dir_mode),
            };
            let made = Made {
                kind: k,
                mode: m,
                extra: Extra::None,
                owner: None,
            };
            let inode = add_child(
                tx,
                p,
                (vol.id, dir.0, &mut pinode),
                (name, ino),
                &made,
                &path,
            )?;
            if last {
                return Ok(site.entry(path, name, ino, inode));
            }
            dir = (ino, path);
        }
        Err(Error::invalid(format!(
            "nothing to create at {}",
            site.path
        )))
    }

    /// Removes an entry; a non-empty directory only with `recursive`.
    pub async fn remove(&self, p: &Principal, path: &str, recursive: bool) -> Result<(), Error> {
        let path = normalize_path(path)?;
        if path == "/" {
            return Err(Error::new(
                Code::Busy,
                "the root directory cannot be removed",
            ));
        }
        let how = Removal {
            recursive,
            ..Removal::default()
        };
        self.remove_at_site(p, &Site::Path(&path), &how)
            .await
            .map(|_| ())
    }

    /// Removes the entry at `site` as `how` says; returns whether its inode
    /// was kept for the caller's open handles (`how.keep`).
    pub(crate) async fn remove_at_site(
        &self,
        p: &Principal,
        site: &Site<'_>,
        how: &Removal,
    ) -> Result<bool, Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let (parent, name, path) = self.site_parent(p, site).await?;
            let vol = parent.vol.clone();
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let (pkey, mut pinode) = writable_parent(&mut tx, p, &parent, &path).await?;
            let dkey = dirent_key(vol.id, parent.ino, &name);
            let d = decode_dirent(
                &tx.get(&dkey)
                    .await?
                    .ok_or_else(|| Error::not_found(&path))?,
            )?;
            if let Some(m) = d.mount {
                return Err(Error::new(
                    Code::Busy,
                    format!("{path} is the mount point of volume {m}; remove it with `berth volume remove {path}`"),
                ));
            }
            let ikey = inode_key(vol.id, d.ino);
            let mut inode = decode_inode(
                &tx.get(&ikey)
                    .await?
                    .ok_or_else(|| Error::not_found(&path))?,
            )?;
            check_sticky(p, &path, &pinode, &inode)?;
            // As unlink(2) and rmdir(2), after the permission checks.
            match (how.expect_dir, inode.kind == EntryKind::Dir) {
                (Some(true), false) => return Err(not_dir(&path)),
                (Some(false), true) => {
                    return Err(Error::new(Code::IsDir, format!("is a directory: {path}")))
                }
                _ => {}
            }
            let now = now_ns();
            let mut kept = false;
            if inode.kind == EntryKind::Dir {
                let (cs, ce) = children_range(vol.id, d.ino);
                if !tx.is_range_empty(&cs, &ce).await? {
                    let Site::Path(dir) = site else {
                        return Err(Error::new(
                            Code::NotEmpty,
                            format!("directory not empty: {path}"),
                        ));
                    };
                    if !how.recursive {
                        return Err(Error::new(
                            Code::NotEmpty,
                            format!("directory not empty: {path}"),
                        ));
                    }
                    drop(tx);
                    Box::pin(self.remove_children(p, dir)).await?;
                    continue;
                }
                pinode.nlink = pinode.nlink.saturating_sub(1);
                let (xs, xe) = crate::xattr::xattr_range(vol.id, d.ino);
                tx.delete_range(xs, xe);
                tx.delete(ikey);
            } else if inode.nlink > 1 {
                inode.nlink -= 1;
                inode.ctime_ns = now;
                tx.put(ikey, encode_inode(&inode));
            } else if let Some(keep) = how.keep.as_ref().filter(|k| k.keeps(d.ino, &inode)) {
                self.orphan(&mut tx, p, &vol, d.ino, &mut inode, keep);
                kept = true;
            } else {
                self.last_name_goes(&mut tx, &vol, d.ino, inode.kind, &path)?;
                tx.delete(ikey);
            }
            tx.delete(dkey);
            pinode.mtime_ns = now;
            pinode.ctime_ns = now;
            tx.put(pkey, encode_inode(&pinode));
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(kept);
            }
        }
        Err(too_much_contention(&site.describe()))
    }

    /// Deletes, in `tx`, what entry `ino` holds once its last name `path`
    /// goes: a file's data, a table's documents and indexes, a stream's
    /// topics and logs, its extended attributes; and lets the hook record
    /// the removal in the same transaction.
    pub(crate) fn last_name_goes(
        &self,
        tx: &mut Tx,
        vol: &VolumeRecord,
        ino: u64,
        kind: EntryKind,
        path: &str,
    ) -> Result<(), Error> {
        match kind {
            EntryKind::File => crate::data::delete_data_ops(tx, vol, ino),
            EntryKind::Table => delete_table_ops(tx, vol.id, ino),
            EntryKind::Stream => {
                for k in [Kind::StreamLog, Kind::StreamState] {
                    let (s, e) = berth_store::keys::object_range(vol.id, k, ino);
                    tx.delete_range(s, e);
                }
            }
            _ => {}
        }
        let (xs, xe) = crate::xattr::xattr_range(vol.id, ino);
        tx.delete_range(xs, xe);
        if let Some(h) = self.hook.get() {
            h.removed(tx, vol.id, ino, kind, path)?;
        }
        Ok(())
    }

    async fn remove_children(&self, p: &Principal, dir: &str) -> Result<(), Error> {
        loop {
            let (page, _) = self.list(p, dir, "", 1000).await?;
            if page.is_empty() {
                return Ok(());
            }
            for e in page {
                match self.remove(p, &e.path, true).await {
                    Ok(()) => {}
                    Err(err) if err.code == Code::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }

    /// Atomically renames `from` to `to` within one volume, replacing an
    /// existing `to` as rename(2) does unless `no_replace`.
    pub async fn rename(
        &self,
        p: &Principal,
        from: &str,
        to: &str,
        no_replace: bool,
    ) -> Result<(), Error> {
        let from = normalize_path(from)?;
        let to = normalize_path(to)?;
        if from == "/" || to == "/" {
            return Err(Error::new(
                Code::Busy,
                "the root directory cannot be renamed",
            ));
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Error::invalid(format!(
                "cannot move {from} into its own subdirectory {to}"
            )));
        }
        self.rename_sites(p, &Site::Path(&from), &Site::Path(&to), no_replace, None)
            .await
            .map(|_| ())
    }

    /// Renames the entry at `from_site` to `to_site` (one volume), replacing
    /// what is there unless `no_replace`. A replaced file whose last name
    /// goes is kept for the caller's open handles when `keep` names it;
    /// returns whether it was.
    pub(crate) async fn rename_sites(
        &self,
        p: &Principal,
        from_site: &Site<'_>,
        to_site: &Site<'_>,
        no_replace: bool,
        keep: Option<&Keep>,
    ) -> Result<bool, Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let (fp, fname, from) = self.site_parent(p, from_site).await?;
            let (tp, tname, to) = self.site_parent(p, to_site).await?;
            if fp.vol.id != tp.vol.id {
                return Err(Error::new(
                    Code::CrossVolume,
                    format!(
                        "cannot rename across volumes ({} → {}); copy instead",
                        fp.vol.path, tp.vol.path
                    ),
                ));
            }
            let vol = fp.vol.clone();
            let same_parent = fp.ino == tp.ino;
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let fpkey = inode_key(vol.id, fp.ino);
            let tpkey = inode_key(vol.id, tp.ino);
            let mut fpi = decode_inode(
                &tx.get(&fpkey)
                    .await?
                    .ok_or_else(|| Error::not_found(&fp.path))?,
            )?;
            let mut tpi = if same_parent {
                fpi.clone()
            } else {
                decode_inode(
                    &tx.get(&tpkey)
                        .await?
                        .ok_or_else(|| Error::not_found(&tp.path))?,
                )?
            };
            for (dir, inode) in [(&fp.path, &fpi), (&tp.path, &tpi)] {
                check_entry(p, dir, &vol, inode, Need::Search)?;
                check_entry(p, dir, &vol, inode, Need::Write)?;
            }
            check_scope(p, &from, Access::Write)?;
            check_scope(p, &to, Access::Write)?;
            let fdkey = dirent_key(vol.id, fp.ino, &fname);
            let tdkey = dirent_key(vol.id, tp.ino, &tname);
            let fd = decode_dirent(
                &tx.get(&fdkey)
                    .await?
                    .ok_or_else(|| Error::not_found(&from))?,
            )?;
            if fd.mount.is_some() {
                return Err(Error::new(
                    Code::Busy,
                    format!("{from} is a volume mount point and cannot be renamed"),
                ));
            }
            if same_parent && fname == tname {
                return Ok(false);
            }
            let fikey = inode_key(vol.id, fd.ino);
            let mut fi = decode_inode(
                &tx.get(&fikey)
                    .await?
                    .ok_or_else(|| Error::not_found(&from))?,
            )?;
            check_sticky(p, &from, &fpi, &fi)?;
            let moving_dir = fi.kind == EntryKind::Dir;
            let now = now_ns();
            let mut kept = false;
            if let Some(tdb) = tx.get(&tdkey).await? {
                let td = decode_dirent(&tdb)?;
                if no_replace {
                    return Err(Error::exists(&to));
                }
                if td.mount.is_some() {
                    return Err(Error::new(
                        Code::Busy,
                        format!("{to} is a volume mount point"),
                    ));
                }
                if td.ino == fd.ino {
                    return Ok(false); // both names link the same inode: rename(2) does nothing
                }
                let tikey = inode_key(vol.id, td.ino);
                let mut ti =
                    decode_inode(&tx.get(&tikey).await?.ok_or_else(|| Error::not_found(&to))?)?;
                check_sticky(p, &to, &tpi, &ti)?;
                match (moving_dir, ti.kind == EntryKind::Dir) {
                    (true, false) => return Err(not_dir(&to)),
                    (false, true) => {
                        return Err(Error::new(Code::IsDir, format!("is a directory: {to}")))
                    }
                    (true, true) => {
                        let (cs, ce) = children_range(vol.id, td.ino);
                        if !tx.is_range_empty(&cs, &ce).await? {
                            return Err(Error::new(
                                Code::NotEmpty,
                                format!("directory not empty: {to}"),
                            ));
                        }
                        tpi.nlink = tpi.nlink.saturating_sub(1);
                        let (xs, xe) = crate::xattr::xattr_range(vol.id, td.ino);
                        tx.delete_range(xs, xe);
                        tx.delete(tikey);
                    }
                    (false, false) => {
                        if ti.nlink > 1 {
                            ti.nlink -= 1;
                            ti.ctime_ns = now;
                            tx.put(tikey, encode_inode(&ti));
                        } else if let Some(k) = keep.filter(|k| k.keeps(td.ino, &ti)) {
                            self.orphan(&mut tx, p, &vol, td.ino, &mut ti, k);
                            kept = true;
                        } else {
                            self.last_name_goes(&mut tx, &vol, td.ino, ti.kind, &to)?;
                            tx.delete(tikey);
                        }
                    }
                }
            }
            if moving_dir && !same_parent {
                // Moving a directory rewrites its `..`: needs write on it too.
                check_entry(p, &from, &vol, &fi, Need::Write)?;
                // Refuse cycles: the destination may not lie below the source.
                // Each ancestor read becomes a condition, so a concurrent
                // rename that would create a cycle conflicts with this one.
                let mut cur = tp.ino;
                let mut steps = 0;
                while cur != 0 && cur != vol.root_inode {
                    if cur == fd.ino {
                        return Err(Error::invalid(format!(
                            "cannot move {from} into its own subdirectory {to}"
                        )));
                    }
                    steps += 1;
                    if steps > 4096 {
                        return Err(Error::new(
                            Code::Loop,
                            "directory tree deeper than 4096 levels",
                        ));
                    }
                    let a = decode_inode(&tx.get(&inode_key(vol.id, cur)).await?.ok_or_else(
                        || Error::new(Code::Again, "directory moved concurrently; retry"),
                    )?)?;
                    cur = a.parent;
                }
                fi.parent = tp.ino;
                fpi.nlink = fpi.nlink.saturating_sub(1);
                tpi.nlink += 1;
            }
            fi.ctime_ns = now;
            if moving_dir {
                // A directory keeps its own name (its path is rebuilt from it).
                fi.name = tname.clone();
            }
            if let Some(h) = self.hook.get() {
                h.renamed(&mut tx, vol.id, fd.ino, fi.kind, &from, &to)
                    .await?;
            }
            tx.put(fikey, encode_inode(&fi));
            tx.delete(fdkey);
            tx.put(
                tdkey,
                encode_dirent(&Dirent {
                    ino: fd.ino,
                    kind: fd.kind,
                    mount: None,
                }),
            );
            if same_parent {
                // fpi and tpi are the same directory: merge the link count change.
                let mut pi = tpi;
                pi.mtime_ns = now;
                pi.ctime_ns = now;
                tx.put(fpkey, encode_inode(&pi));
            } else {
                for (key, mut pi) in [(fpkey, fpi), (tpkey, tpi)] {
                    pi.mtime_ns = now;
                    pi.ctime_ns = now;
                    tx.put(key, encode_inode(&pi));
                }
            }
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(kept);
            }
        }
        Err(too_much_contention(&from_site.describe()))
    }

    /// chmod, chown, utimes and truncate (the size is metadata only until
    /// file data exists).
    pub async fn set_attr(
        &self,
        p: &Principal,
        path: &str,
        a: &SetAttr,
    ) -> Result<EntryInfo, Error> {
        self.set_attr_of(p, &Target::Path(path, true), a).await
    }

    /// [`Namespace::set_attr`] of the entry `target` names (a symbolic link
    /// addressed by inode is changed itself, as lchown(2) and
    /// utimensat(AT_SYMLINK_NOFOLLOW) do).
    pub(crate) async fn set_attr_of(
        &self,
        p: &Principal,
        target: &Target<'_>,
        a: &SetAttr,
    ) -> Result<EntryInfo, Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let found = self.target_loc(p, target).await?;
            found.loc.writable()?;
            let p = found.acting.as_ref().unwrap_or(p);
            let loc = found.loc;
            let vol = loc.vol.clone();
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let key = inode_key(vol.id, loc.ino);
            let mut i = decode_inode(
                &tx.get(&key)
                    .await?
                    .ok_or_else(|| Error::not_found(&loc.path))?,
            )?;
            if let Some(mode) = a.mode {
                check_owner(p, &loc.path, &i, "change the mode of")?;
                let mut mode = mode & 0o7777;
                if !p.is_admin() && mode & 0o2000 != 0 && !p.gids.contains(&i.gid) {
                    mode &= !0o2000; // as Linux: setgid needs group membership
                }
                i.mode = mode;
            }
            if let Some(uid) = a.uid {
                if uid != i.uid && !p.is_admin() {
                    return Err(Error::new(
                        Code::Perm,
                        format!("operation not permitted: only an administrator may change the owner of {}", loc.path),
                    ));
                }
                check_scope(p, &loc.path, Access::Write)?;
                i.uid = uid;
            }
            if let Some(gid) = a.gid {
                if gid != i.gid && !p.is_admin() && !(p.uid == i.uid && p.gids.contains(&gid)) {
                    return Err(Error::new(
                        Code::Perm,
                        format!("operation not permitted: the owner may only change the group of {} to one of their groups", loc.path),
                    ));
                }
                check_scope(p, &loc.path, Access::Write)?;
                i.gid = gid;
            }
            if a.atime_ns.is_some() || a.mtime_ns.is_some() {
                if !a.times_now {
                    check_owner(p, &loc.path, &i, "set explicit times on")?;
                } else if check_owner(p, &loc.path, &i, "set the times of").is_err() {
                    check_entry(p, &loc.path, &vol, &i, Need::Write)?;
                }
                let now = now_ns();
                if let Some(t) = a.atime_ns {
                    i.atime_ns = if a.times_now { now } else { t };
                }
                if let Some(t) = a.mtime_ns {
                    i.mtime_ns = if a.times_now { now } else { t };
                    if i.kind == EntryKind::File {
                        // The time kept beside the data (the latest write)
                        // would win over the time set; an explicit time
                        // replaces it (touch -d, cp -p, tar, rsync -t).
                        tx.delete(file_mtime_key(vol.id, loc.ino));
                    }
                }
            }
            if let Some(size) = a.size {
                match i.kind {
                    EntryKind::File => {}
                    EntryKind::Dir => {
                        return Err(Error::new(
                            Code::IsDir,
                            format!("is a directory: {}", loc.path),
                        ))
                    }
                    _ => {
                        return Err(Error::invalid(format!(
                            "only files can be truncated: {}",
                            loc.path
                        )))
                    }
                }
                // ftruncate(2) through a handle open for writing needs no
                // more; truncate(2) needs write permission.
                if !found.handle_write {
                    check_entry(p, &loc.path, &vol, &i, Need::Write)?;
                }
                crate::data::truncate_ops(&mut tx, &vol, loc.ino, size, now_ns());
                i.size = size;
                i.mtime_ns = now_ns();
            }
            i.ctime_ns = now_ns();
            tx.put(key, encode_inode(&i));
            if let Commit::Done(_) = tx.commit().await? {
                // Re-read so a file's size and times come from its data keys.
                return match target {
                    Target::Path(..) => self.stat_following(p, &loc.path).await,
                    _ => self.entry_of(p, target).await,
                };
            }
        }
        Err(too_much_contention(&target.describe()))
    }

    /// Sets (or with `clear`, removes) an entry's access control expressions.
    pub async fn set_acl(
        &self,
        p: &Principal,
        path: &str,
        acl: &EntryAcl,
        clear: bool,
    ) -> Result<(String, EntryAcl), Error> {
        for (what, e) in [
            ("read", &acl.read),
            ("write", &acl.write),
            ("admin", &acl.admin),
        ] {
            if let Some(e) = e {
                validate_ace(what, e)?;
            }
        }
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let loc = self.resolve_mut(p, path, true).await?;
            let mut tx = self.meta.router().begin(loc.vol.shard_id).await?;
            let key = inode_key(loc.vol.id, loc.ino);
            let mut i = decode_inode(
                &tx.get(&key)
                    .await?
                    .ok_or_else(|| Error::not_found(&loc.path))?,
            )?;
            check_owner(p, &loc.path, &i, "change the ACL of")?;
            if clear {
                i.acl = EntryAcl::default();
            }
            if acl.read.is_some() {
                i.acl.read = acl.read.clone();
            }
            if acl.write.is_some() {
                i.acl.write = acl.write.clone();
            }
            if acl.admin.is_some() {
                i.acl.admin = acl.admin.clone();
            }
            i.ctime_ns = now_ns();
            tx.put(key, encode_inode(&i));
            if let Commit::Done(_) = tx.commit().await? {
                return Ok((loc.path, i.acl));
            }
        }
        Err(too_much_contention(path))
    }
}

/// The operations that delete table `ino`'s documents and index entries
/// and subtract their bytes from the volume's usage, keys and values, as
/// the table service counts them when it writes them (`berth_docs::table`,
/// "Usage"), so a table's removal takes the counter back to where it was
/// before the table. Its settings (`TableIndex · ino` itself) are not
/// counted and go uncounted.
pub(crate) fn delete_table_ops(tx: &mut Tx, vol: u64, ino: u64) {
    let (docs, docs_end) = berth_store::keys::object_range(vol, Kind::TableDoc, ino);
    tx.delete_range_counted_pairs(docs, docs_end, usage_key(vol));
    let (settings, end) = berth_store::keys::object_range(vol, Kind::TableIndex, ino);
    // The first key after the settings: every index entry follows it.
    let mut entries = settings.clone();
    entries.push(0);
    tx.delete(settings);
    tx.delete_range_counted_pairs(entries, end, usage_key(vol));
}

#[cfg(test)]
mod tests {
    use super::lexical;

    #[test]
    fn lexical_resolution() {
        assert_eq!(lexical("/a/b", "c"), "/a/b/c");
        assert_eq!(lexical("/a/b", "../c"), "/a/c");
        assert_eq!(lexical("/a/b", "/x/./y"), "/x/y");
        assert_eq!(lexical("/", "../../x"), "/x");
        assert_eq!(lexical("/a", ".."), "/");
    }
}
