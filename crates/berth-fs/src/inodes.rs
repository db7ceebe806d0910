//! The namespace addressed by inode: what a FUSE mount (or any client that
//! holds entries as the kernel does) calls with a directory's inode and one
//! name — lookup, create, remove, rename, link — or with an entry's inode —
//! attributes, listing, link targets, extended attributes, open.
//!
//! **Authorization is the path-based calls', evaluated afresh on every
//! call.** A client names an entry by `(volume, inode, view)`; nothing it
//! sends proves that it may reach the entry, so the server rebuilds the
//! entry's path itself and authorizes as if that path had been resolved:
//! - a directory stores its own name beside its parent pointer
//!   ([`Inode::name`]), so its path is its parent chain up to the volume
//!   root, then the volume's mount path (the cluster map), then for a
//!   snapshot `.snapshot/<name>`; every directory of that path above the
//!   entry must be searchable by the caller (volume ACE, mode bits; the
//!   ticket scope's traverse right), exactly as a walk down would check;
//! - an entry of any other kind has no parent pointer (hard links give it
//!   several): the client adds the directory and name it reached the entry
//!   by ([`NodeRef::link`]); the server checks that the name still leads
//!   to that inode (ESTALE otherwise) and authorizes through that
//!   directory;
//! - the ticket scope, volume and entry ACEs and mode bits of the entry
//!   itself are then checked by each operation as for a path.
//!
//! So a client cannot reach an inode it could not reach by path: a forged
//! or guessed inode number leads to the same checks, on the entry's real
//! path, as the path would. Directories stored before names were find
//! theirs among their parent's entries (once: the name is then stored).
//!
//! A file with no name left — unlinked while the caller holds it open,
//! kept by `orphans` — is addressed with an open file handle instead,
//! which proves that the caller opened it.
//!
//! A path's length matters only where POSIX says so: a name over 255 bytes
//! is ENAMETOOLONG; the rebuilt path of an entry may be longer than
//! PATH_MAX (no caller ever spells it out).

use berth_meta::map::{VolumeRecord, VolumeState};
use berth_meta::router::{backoff, too_much_contention, TX_RETRIES_MAX};
use berth_meta::{Code, Error};
use berth_security::principal::Principal;
use berth_security::scope::Access;

use crate::access::{check_entry, check_scope, Need};
use crate::data::{read_only, Rights};
use crate::namespace::{
    join, not_dir, snapshot_dir_inode, EntryInfo, Extra, Found, Loc, Made, Namespace, Reader,
    SetAttr, Site, Step, Target,
};
use crate::orphans::{Keep, Removal};
use crate::records::*;

/// Longest name in a directory (as Linux's NAME_MAX).
pub const NAME_BYTES_MAX: usize = 255;
/// Deepest directory chain walked up from an entry (a longer one is a
/// loop, as rename's cycle check counts).
pub const DEPTH_MAX: usize = 4096;
/// Entries of a directory read at most to find the name of a
/// subdirectory stored before directories kept theirs.
const NAME_SCAN_ENTRIES_MAX: usize = 10_000_000;
/// Entries read per page while doing so.
const NAME_SCAN_PAGE: usize = 1024;
/// Times a lookup starts over after reads that straddled a change.
const TORN_READS_MAX: usize = 8;

/// An entry addressed by inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub volume: u64,
    pub ino: u64,
    /// Live, a volume root's `.snapshot` directory, or a snapshot.
    pub view: View,
    /// For entries other than directories: a directory (inode, same volume
    /// and view) and the name in it by which the entry was reached.
    pub link: Option<(u64, String)>,
}

impl NodeRef {
    /// A directory, or another entry without its name (only a handle may
    /// then authorize it).
    pub fn new(volume: u64, ino: u64, view: View) -> NodeRef {
        NodeRef {
            volume,
            ino,
            view,
            link: None,
        }
    }

    /// For error messages.
    pub fn describe(&self) -> String {
        let view = match self.view {
            View::Live => String::new(),
            View::SnapshotDir => " (.snapshot)".to_string(),
            View::Snapshot(id) => format!(" (snapshot {id})"),
        };
        format!("inode {} of volume {}{view}", self.ino, self.volume)
    }
}

/// A new entry of [`Namespace::make_node`].
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Dir, File, Symlink, Fifo, Socket, CharDevice or BlockDevice.
    pub kind: EntryKind,
    /// Permission bits (07777).
    pub mode: u32,
    /// Device nodes: the device (`Inode::rdev`); 0 for the others.
    pub rdev: u64,
    /// Symbolic links: the target.
    pub target: Option<String>,
    /// Give the entry to this (uid, gid) instead of the caller, as a chown
    /// by the caller would be allowed (EPERM otherwise).
    pub owner: Option<(u32, u32)>,
}

/// Refuses what is no name of an entry: empty, `.`, `..`, a `/` or NUL in
/// it (EINVAL), or longer than [`NAME_BYTES_MAX`] bytes (ENAMETOOLONG).
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::invalid(format!(
            "{name:?} is not a name: names are not empty, not . or .., without '/' or NUL"
        )));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(Error::new(
            Code::NameTooLong,
            format!(
                "file name too long: {} bytes (at most {NAME_BYTES_MAX})",
                name.len()
            ),
        ));
    }
    Ok(())
}

fn stale(what: impl std::fmt::Display) -> Error {
    Error::new(
        Code::Stale,
        format!("stale file handle: {what} is no longer where it was reached; look it up again"),
    )
}

impl Namespace {
    /// The volume of an inode address: ESTALE when it is gone.
    fn node_volume(&self, id: u64) -> Result<VolumeRecord, Error> {
        match self.meta.map().volume(id) {
            Some(v) if v.state == VolumeState::Ready => Ok(v.clone()),
            _ => Err(stale(format_args!("volume {id}"))),
        }
    }

    /// Finds the entry `n` addresses and authorizes reaching it: its path
    /// rebuilt, and every directory above it searchable by `p` (see the
    /// module docs). The entry's own permissions are the caller's to check.
    pub(crate) async fn locate_in(
        &self,
        reader: &mut Reader,
        p: &Principal,
        n: &NodeRef,
    ) -> Result<Loc, Error> {
        let vol = self.node_volume(n.volume)?;
        if n.view == View::SnapshotDir {
            if n.ino != vol.root_inode {
                return Err(stale(n.describe()));
            }
            let root = self.live_root(reader, &vol).await?;
            let path = self
                .chain(reader, p, &vol, View::Live, vol.root_inode, &root)
                .await?;
            check_entry(p, &path, &vol, &root, Need::Search)?;
            return Ok(Loc {
                inode: snapshot_dir_inode(&root, vol.root_inode),
                path: join(&path, SNAPSHOT_DIR),
                ino: vol.root_inode,
                vol,
                view: View::SnapshotDir,
            });
        }
        let inode = reader
            .inode(&self.meta, &vol, n.view, n.ino)
            .await?
            .ok_or_else(|| stale(n.describe()))?;
        let mut loc = if inode.kind == EntryKind::Dir {
            let path = self.chain(reader, p, &vol, n.view, n.ino, &inode).await?;
            Loc {
                vol,
                ino: n.ino,
                inode,
                path,
                view: n.view,
            }
        } else {
            let (parent, name) = n.link.as_ref().ok_or_else(|| {
                Error::invalid(format!(
                    "{} is a {}: address it with the directory and name it was reached by",
                    n.describe(),
                    inode.kind.name()
                ))
            })?;
            check_name(name)?;
            match reader
                .dirent(&self.meta, &vol, n.view, *parent, name)
                .await?
            {
                Some(d) if d.ino == n.ino && d.mount.is_none() => {}
                _ => return Err(stale(format_args!("{name:?} ({})", n.describe()))),
            }
            let pinode = reader
                .inode(&self.meta, &vol, n.view, *parent)
                .await?
                .filter(|i| i.kind == EntryKind::Dir)
                .ok_or_else(|| stale(format_args!("the directory of {name:?}")))?;
            let dir = self
                .chain(reader, p, &vol, n.view, *parent, &pinode)
                .await?;
            check_entry(p, &dir, &vol, &pinode, Need::Search)?;
            Loc {
                vol,
                ino: n.ino,
                inode,
                path: join(&dir, name),
                view: n.view,
            }
        };
        reader
            .overlay(&self.meta, &loc.vol, loc.view, loc.ino, &mut loc.inode)
            .await?;
        Ok(loc)
    }

    async fn live_root(&self, reader: &mut Reader, vol: &VolumeRecord) -> Result<Inode, Error> {
        reader
            .inode(&self.meta, vol, View::Live, vol.root_inode)
            .await?
            .ok_or_else(|| {
                Error::new(
                    Code::Again,
                    format!("volume {} has no root directory yet; retry", vol.path),
                )
            })
    }

    /// The path of directory `ino` (`inode`) of `vol` in `view`, walking up
    /// its parent chain; checks that `p` may search every directory above
    /// it, top down, as a walk down that path would.
    async fn chain(
        &self,
        reader: &mut Reader,
        p: &Principal,
        vol: &VolumeRecord,
        view: View,
        ino: u64,
        inode: &Inode,
    ) -> Result<String, Error> {
        // names[i] is an entry of above[i]; from `ino` up to the root.
        let mut names: Vec<String> = Vec::new();
        let mut above: Vec<Inode> = Vec::new();
        let (mut cur, mut cur_inode) = (ino, inode.clone());
        while cur != vol.root_inode {
            if names.len() >= DEPTH_MAX {
                return Err(Error::new(
                    Code::Loop,
                    format!("directory tree deeper than {DEPTH_MAX} levels"),
                ));
            }
            let parent = cur_inode.parent;
            if cur_inode.kind != EntryKind::Dir || parent == 0 {
                // Removed meanwhile (or read across a rename): not in the
                // volume's tree any more.
                return Err(stale(format_args!("directory inode {cur}")));
            }
            let name = if cur_inode.name.is_empty() {
                self.find_name(reader, vol, view, parent, cur).await?
            } else {
                cur_inode.name.clone()
            };
            let pinode = reader
                .inode(&self.meta, vol, view, parent)
                .await?
                .ok_or_else(|| stale(format_args!("directory inode {parent}")))?;
            names.push(name);
            above.push(pinode.clone());
            (cur, cur_inode) = (parent, pinode);
        }
        let mut path = self.root_path(reader, p, vol, view).await?;
        for (name, dir) in names.iter().rev().zip(above.iter().rev()) {
            check_entry(p, &path, vol, dir, Need::Search)?;
            path = join(&path, name);
        }
        Ok(path)
    }

    /// The path of `vol`'s root in `view`, with what lies above it walked
    /// and checked as a path resolution would (the volume's mount path,
    /// then a snapshot's `.snapshot/<name>`).
    async fn root_path(
        &self,
        reader: &mut Reader,
        p: &Principal,
        vol: &VolumeRecord,
        view: View,
    ) -> Result<String, Error> {
        // An administrator without a ticket scope passes every check on the
        // way (scope, ACEs, mode bits): only the path is needed, and the
        // cluster map has it. Everyone else walks it.
        let unlimited = p.is_admin() && p.scope.is_none();
        let live = if unlimited {
            vol.path.clone()
        } else {
            let top = self.resolve_in(reader, p, &vol.path, false).await?;
            if top.vol.id != vol.id || top.ino != vol.root_inode || !top.view.is_live() {
                return Err(stale(format_args!("volume {}", vol.path)));
            }
            top.path
        };
        let View::Snapshot(id) = view else {
            return Ok(live);
        };
        let snaps = reader.snapshots(&self.meta, vol).await?;
        let snap = snaps
            .snapshots
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| stale(format_args!("snapshot {id} of {}", vol.path)))?;
        let dir = join(&live, SNAPSHOT_DIR);
        if !unlimited {
            let root = self.live_root(reader, vol).await?;
            check_entry(p, &live, vol, &root, Need::Search)?;
            let sd = snapshot_dir_inode(&root, vol.root_inode);
            check_entry(p, &dir, vol, &sd, Need::Search)?;
        }
        Ok(join(&dir, &snap.name))
    }

    /// The name of directory `ino` in `parent`, for a directory stored
    /// before directories kept their names: read from the parent's
    /// entries, and stored (live entries) so that this happens once.
    async fn find_name(
        &self,
        reader: &mut Reader,
        vol: &VolumeRecord,
        view: View,
        parent: u64,
        ino: u64,
    ) -> Result<String, Error> {
        let (mut start, end) = children_range(vol.id, parent);
        let mut seen = 0usize;
        let found = 'scan: loop {
            let rows = reader
                .tx(&self.meta, vol.shard_id)
                .await?
                .peek_range(
                    &view.key(start.clone()),
                    &view.key(end.clone()),
                    NAME_SCAN_PAGE,
                )
                .await?;
            let full = rows.len() == NAME_SCAN_PAGE;
            for (k, v) in rows {
                let k = view.unkey(k);
                let d = decode_dirent(&v)?;
                if d.ino == ino && d.mount.is_none() && d.kind == EntryKind::Dir {
                    break 'scan Some(dirent_name(&k)?);
                }
                start = k;
                start.push(0);
            }
            seen += NAME_SCAN_PAGE;
            if !full || seen >= NAME_SCAN_ENTRIES_MAX {
                break None;
            }
        };
        let name = found.ok_or_else(|| stale(format_args!("directory inode {ino}")))?;
        if view.is_live() {
            self.store_dir_name(vol, parent, ino, &name).await;
        }
        Ok(name)
    }

    /// Stores the name of a directory stored without one, if it still is
    /// that entry of `parent` (best effort: a failure only means the name is
    /// looked for again next time).
    async fn store_dir_name(&self, vol: &VolumeRecord, parent: u64, ino: u64, name: &str) {
        let stored = async {
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let key = inode_key(vol.id, ino);
            let Some(b) = tx.get(&key).await? else {
                return Ok(());
            };
            let mut inode = decode_inode(&b)?;
            let entry = tx.get(&dirent_key(vol.id, parent, name)).await?;
            let still = entry
                .map(|b| decode_dirent(&b))
                .transpose()?
                .is_some_and(|d| d.ino == ino);
            if !still || inode.parent != parent || !inode.name.is_empty() {
                return Ok(());
            }
            inode.name = name.to_string();
            tx.put(key, encode_inode(&inode));
            tx.commit().await.map(|_| ())
        };
        if let Err(e) = stored.await {
            tracing::debug!(volume = vol.id, ino, error = %e, "could not store a directory's name");
        }
    }

    /// The parent directory and name a [`Site`] names, and the entry's
    /// path: the parent searchable, live, and the name no volume root's
    /// `.snapshot`.
    pub(crate) async fn site_parent(
        &self,
        p: &Principal,
        site: &Site<'_>,
    ) -> Result<(Loc, String, String), Error> {
        match site {
            Site::Path(path) => {
                let (loc, name) = self.resolve_parent(p, path).await?;
                Ok((loc, name, path.to_string()))
            }
            Site::At(dir, name) => {
                check_name(name)?;
                let loc = self.locate_in(&mut Reader::new(), p, dir).await?;
                if loc.inode.kind != EntryKind::Dir {
                    return Err(not_dir(&loc.path));
                }
                let path = join(&loc.path, name);
                loc.writable()?;
                if loc.ino == loc.vol.root_inode && *name == SNAPSHOT_DIR {
                    return Err(read_only(&path));
                }
                Ok((loc, name.to_string(), path))
            }
        }
    }

    /// The existing entry a [`Target`] names.
    pub(crate) async fn target_loc(
        &self,
        p: &Principal,
        target: &Target<'_>,
    ) -> Result<Found, Error> {
        let loc = match target {
            Target::Path(path, follow) => self.resolve(p, path, *follow).await?,
            Target::Node(n) => self.locate_in(&mut Reader::new(), p, n).await?,
            Target::Handle(n, handle) => return self.handle_loc(p, n, handle).await,
        };
        Ok(Found {
            loc,
            acting: None,
            handle_write: false,
        })
    }

    /// The file an open handle names, which must be `n`'s.
    async fn handle_loc(&self, p: &Principal, n: &NodeRef, handle: &[u8]) -> Result<Found, Error> {
        let h = self.meta.open_handle(handle, &p.name)?;
        let view = h.snapshot.map_or(View::Live, View::Snapshot);
        if h.volume != n.volume || h.ino != n.ino || view != n.view {
            return Err(Error::invalid(format!(
                "the handle is of another file than {}",
                n.describe()
            )));
        }
        let vol = self.node_volume(n.volume)?;
        let mut reader = Reader::new();
        let mut inode = reader
            .inode(&self.meta, &vol, view, n.ino)
            .await?
            .ok_or_else(|| Error::not_found("the file was removed"))?;
        reader
            .overlay(&self.meta, &vol, view, n.ino, &mut inode)
            .await?;
        let acting = h.write.then(|| Principal {
            scope: None,
            ..p.clone()
        });
        Ok(Found {
            loc: Loc {
                vol,
                ino: n.ino,
                inode,
                path: String::new(),
                view,
            },
            acting,
            handle_write: h.write,
        })
    }

    /// The entry at `site` after a change made it.
    pub(crate) async fn entry_at_site(
        &self,
        p: &Principal,
        site: &Site<'_>,
    ) -> Result<EntryInfo, Error> {
        match site {
            Site::Path(path) => self.stat(p, path).await,
            Site::At(dir, name) => self.lookup(p, dir, name).await,
        }
    }

    /// The entry a [`Target`] names, as stat would show it.
    pub(crate) async fn entry_of(
        &self,
        p: &Principal,
        target: &Target<'_>,
    ) -> Result<EntryInfo, Error> {
        match target {
            Target::Path(path, true) => self.stat_following(p, path).await,
            Target::Path(path, false) => self.stat(p, path).await,
            Target::Node(n) => self.getattr(p, n, None).await,
            Target::Handle(n, h) => self.getattr(p, n, Some(h)).await,
        }
    }

    // ------------------------------------------------------------ reads

    /// The entry `name` in directory `dir` (lookup(3) of FUSE): `dir` must
    /// be searchable. A symbolic link is not followed.
    pub async fn lookup(
        &self,
        p: &Principal,
        dir: &NodeRef,
        name: &str,
    ) -> Result<EntryInfo, Error> {
        check_name(name)?;
        for _ in 0..=TORN_READS_MAX {
            let mut reader = Reader::new();
            let at = self.locate_in(&mut reader, p, dir).await?;
            match self.step(&mut reader, p, &at, name).await? {
                Step::Found(loc) => {
                    let mut loc = *loc;
                    reader
                        .overlay(&self.meta, &loc.vol, loc.view, loc.ino, &mut loc.inode)
                        .await?;
                    check_scope(p, &loc.path, Access::Traverse)?;
                    return Ok(Self::info(&loc));
                }
                Step::Torn => continue,
            }
        }
        Err(Error::not_found(format!("{name:?} in {}", dir.describe())))
    }

    /// The attributes of `node` (a symbolic link is not followed). With an
    /// open `handle` of the file, the handle authorizes it instead (a file
    /// unlinked while open has no name left; its link count is then 0).
    pub async fn getattr(
        &self,
        p: &Principal,
        node: &NodeRef,
        handle: Option<&[u8]>,
    ) -> Result<EntryInfo, Error> {
        if let Some(h) = handle {
            let f = self.handle_loc(p, node, h).await?;
            let mut e = Self::info(&f.loc);
            e.name = String::new();
            return Ok(e);
        }
        let loc = self.locate_in(&mut Reader::new(), p, node).await?;
        check_scope(p, &loc.path, Access::Traverse)?;
        Ok(Self::info(&loc))
    }

    /// One page of directory `dir`'s entries (see [`Namespace::list`]).
    pub async fn list_node(
        &self,
        p: &Principal,
        dir: &NodeRef,
        start_after: &str,
        limit: usize,
    ) -> Result<(Vec<EntryInfo>, bool), Error> {
        let loc = self.locate_in(&mut Reader::new(), p, dir).await?;
        self.list_loc(p, &loc, start_after, limit).await
    }

    /// The target of the symbolic link `node`.
    pub async fn readlink_node(&self, p: &Principal, node: &NodeRef) -> Result<String, Error> {
        self.readlink_of(p, &Target::Node(node)).await
    }

    pub async fn get_xattr_node(
        &self,
        p: &Principal,
        node: &NodeRef,
        name: &str,
    ) -> Result<Vec<u8>, Error> {
        self.get_xattr_of(p, &Target::Node(node), name).await
    }

    pub async fn list_xattr_node(
        &self,
        p: &Principal,
        node: &NodeRef,
    ) -> Result<Vec<String>, Error> {
        self.list_xattr_of(p, &Target::Node(node)).await
    }

    // ------------------------------------------------------------ changes

    /// chmod, chown, utimes and truncate of `node` itself (a symbolic link
    /// too). With an open `handle`, the handle authorizes the file instead:
    /// a size change then needs only a handle open for writing, as
    /// ftruncate(2).
    pub async fn set_attr_node(
        &self,
        p: &Principal,
        node: &NodeRef,
        handle: Option<&[u8]>,
        a: &SetAttr,
    ) -> Result<EntryInfo, Error> {
        match handle {
            Some(h) => self.set_attr_of(p, &Target::Handle(node, h), a).await,
            None => self.set_attr_of(p, &Target::Node(node), a).await,
        }
    }

    pub async fn set_xattr_node(
        &self,
        p: &Principal,
        node: &NodeRef,
        name: &str,
        value: Option<&[u8]>,
        create: bool,
        replace: bool,
    ) -> Result<(), Error> {
        self.set_xattr_of(p, &Target::Node(node), name, value, create, replace)
            .await
    }

    /// Makes `e` as `name` in directory `dir`: a directory, file, symbolic
    /// link, FIFO, socket or device node (mkdir(2), mknod(2), symlink(2)).
    pub async fn make_node(
        &self,
        p: &Principal,
        dir: &NodeRef,
        name: &str,
        e: &NewEntry,
    ) -> Result<EntryInfo, Error> {
        let extra = match e.kind {
            EntryKind::Dir | EntryKind::File => Extra::None,
            EntryKind::Symlink => {
                let target = e.target.as_deref().unwrap_or("");
                crate::namespace::check_target(target)?;
                Extra::Target(target.to_string())
            }
            k if k.is_special() => {
                crate::namespace::check_mknod(p, k, e.rdev, name)?;
                Extra::Rdev(e.rdev)
            }
            k => {
                return Err(Error::invalid(format!(
                    "a {} is made by its own service, not by mknod",
                    k.name()
                )))
            }
        };
        if e.kind != EntryKind::Symlink && e.target.is_some() {
            return Err(Error::invalid("only a symbolic link has a target"));
        }
        let made = Made {
            kind: e.kind,
            mode: if e.kind == EntryKind::Symlink {
                0o777
            } else {
                e.mode
            },
            extra,
            owner: e.owner,
        };
        self.make_at_site(p, &Site::At(dir, name), &made, true)
            .await
    }

    /// Makes `name` in directory `dir` a new name of the file `node`.
    pub async fn link_node(
        &self,
        p: &Principal,
        node: &NodeRef,
        dir: &NodeRef,
        name: &str,
    ) -> Result<EntryInfo, Error> {
        self.link_sites(p, &Target::Node(node), &Site::At(dir, name))
            .await
    }

    /// Removes `name` from directory `dir`: only a directory when
    /// `expect_dir` is `Some(true)` (rmdir(2): ENOTDIR otherwise), never one
    /// when `Some(false)` (unlink(2): EISDIR). A file whose last name goes is
    /// kept, with no name and its data, when `keep` names it (the caller
    /// holds it open; see `orphans`); returns whether it was.
    pub async fn remove_node(
        &self,
        p: &Principal,
        dir: &NodeRef,
        name: &str,
        expect_dir: Option<bool>,
        keep: Option<Keep>,
    ) -> Result<bool, Error> {
        let how = Removal {
            recursive: false,
            expect_dir,
            keep,
        };
        self.remove_at_site(p, &Site::At(dir, name), &how).await
    }

    /// Renames `from_name` in `from_dir` to `to_name` in `to_dir` (one
    /// volume; atomic, a directory with everything below it), replacing
    /// what is there unless `no_replace`, or swapping the two with
    /// `exchange`. A replaced file whose last name goes is kept when `keep`
    /// names it (see [`Namespace::remove_node`]); returns whether it was.
    #[allow(clippy::too_many_arguments)]
    pub async fn rename_node(
        &self,
        p: &Principal,
        (from_dir, from_name): (&NodeRef, &str),
        (to_dir, to_name): (&NodeRef, &str),
        no_replace: bool,
        exchange: bool,
        keep: Option<Keep>,
    ) -> Result<bool, Error> {
        let from = Site::At(from_dir, from_name);
        let to = Site::At(to_dir, to_name);
        if exchange {
            if no_replace {
                return Err(Error::invalid(
                    "exchange and no_replace exclude each other (as RENAME_EXCHANGE and RENAME_NOREPLACE do)",
                ));
            }
            return self.exchange_sites(p, &from, &to).await.map(|_| false);
        }
        self.rename_sites(p, &from, &to, no_replace, keep.as_ref())
            .await
    }

    /// Opens the file `node` for `rights` (open(2) without O_CREAT).
    pub async fn open_node(
        &self,
        p: &Principal,
        node: &NodeRef,
        rights: Rights,
    ) -> Result<(Vec<u8>, EntryInfo), Error> {
        let entry = self.getattr(p, node, None).await?;
        self.grant(p, entry, rights, false).await
    }

    /// open(2) with O_CREAT of `name` in directory `dir`: makes the file
    /// (mode, owner as [`NewEntry`]) unless it exists — then opens it, or
    /// with `exclusive` fails with EEXIST. Returns the handle, the entry
    /// and whether this call made it.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_node(
        &self,
        p: &Principal,
        dir: &NodeRef,
        name: &str,
        rights: Rights,
        exclusive: bool,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(Vec<u8>, EntryInfo, bool), Error> {
        let made = Made {
            kind: EntryKind::File,
            mode,
            extra: Extra::None,
            owner,
        };
        let site = Site::At(dir, name);
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            match self.lookup(p, dir, name).await {
                Ok(e) if exclusive => return Err(Error::exists(&e.path)),
                Ok(e) if e.inode.kind == EntryKind::Symlink => {
                    // The kernel follows links before it asks to create:
                    // this one appeared since.
                    return Err(Error::new(
                        Code::Loop,
                        format!("{} became a symbolic link; look it up again", e.path),
                    ));
                }
                Ok(e) => {
                    let (h, e) = self.grant(p, e, rights, false).await?;
                    return Ok((h, e, false));
                }
                Err(e) if e.code == Code::NotFound => {}
                Err(e) => return Err(e),
            }
            match self.make_at_site(p, &site, &made, true).await {
                Ok(e) => {
                    let (h, e) = self.grant(p, e, rights, true).await?;
                    return Ok((h, e, true));
                }
                // Lost a race with another creator: open theirs.
                Err(e) if e.code == Code::Exists && !exclusive => continue,
                Err(e) => return Err(e),
            }
        }
        Err(too_much_contention(&site.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"x".repeat(255)).is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert_eq!(check_name(bad).unwrap_err().code, Code::Invalid, "{bad:?}");
        }
        assert_eq!(
            check_name(&"x".repeat(256)).unwrap_err().code,
            Code::NameTooLong
        );
    }

    #[test]
    fn node_descriptions() {
        let mut n = NodeRef::new(2, 77, View::Live);
        assert_eq!(n.describe(), "inode 77 of volume 2");
        n.view = View::Snapshot(4);
        assert_eq!(n.describe(), "inode 77 of volume 2 (snapshot 4)");
        assert_eq!(stale(n.describe()).code, Code::Stale);
    }
}
