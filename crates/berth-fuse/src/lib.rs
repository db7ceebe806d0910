//! The FUSE client of Berth: serves the namespace (or one subtree of it) as
//! a local POSIX file system through the native gRPC API, authenticated with
//! the caller's ticket. It owns the mount lifecycle (mount, serve, unmount),
//! the FUSE inode numbering and what it knows of each inode (`inodes`), the
//! write-behind of open files (`writes`), files unlinked while open
//! (`orphans`), the errno table (`errors`) and the mount table (`mounts`:
//! the one `/proc/self/mountinfo` parser, behind `berth umount` and
//! `berth-container`).
//!
//! Invariants:
//! - *Calls by inode, as the kernel asks*: every request is made with the
//!   entry's (volume, inode) and one name (`berth.v1.Inodes`), never a
//!   path, so no path the application did not spell out is ever limited:
//!   only names (255 bytes) are, and the kernel checks PATH_MAX on what the
//!   caller passed. The server authorizes each call as the walk of the
//!   entry's path would be.
//! - *Close-to-open consistency, never stale across it*: `open` always asks
//!   the server, tells the kernel when the attributes changed and lets it
//!   drop the file's cached pages; between opens, attributes and entries
//!   are cached for at most one second (`inodes::TTL`). This mount always
//!   sees its own writes: reads, attribute reads and truncation of an inode
//!   first wait for its writes in flight.
//! - *Durable on fsync and close*: a write is answered once queued (bounded
//!   per handle); `fsync` and `flush` wait for the handle's writes in flight,
//!   each durable once `Files.Write` returns, and report the first failure.
//! - *Calls stay on the thread that waits*: each FUSE session thread has
//!   its own current-thread runtime and connection (`local`); only
//!   write-behind, the lock session and orphan renewals use the shared
//!   runtime.
//! - *One errno table*: every API failure becomes a POSIX errno in
//!   [`classify`] and nowhere else.
//! - *Never hang forever*: every call has a per-attempt timeout and bounded
//!   retries of transient failures, then EIO; every wait (for writes in
//!   flight, for the session to end) is bounded by those or by its own limit.
//! - Authorization is the server's: it checks every call against the
//!   ticket's principal. Without `allow_other` only the mounting user (and
//!   root) get in, acting as that principal; `access(2)` answers from mode
//!   bits only. With `allow_other` the kernel also checks each process's own
//!   uid/gids against the mode bits (`default_permissions`), so another local
//!   uid never borrows the ticket's rights: both must allow. What a process
//!   creates then belongs to its uid/gid when the ticket may give entries
//!   away (an administrator's), set by the server in the creating call.
//!
//! FIFOs, UNIX sockets and device nodes are entries of their own types
//! (mknod, mkfifo, bind): the server keeps their attributes and device
//! number, the kernel their I/O (it never sends it here); the mount is
//! always `nodev,nosuid`.
//! Hard links and extended attributes (`user.*`; `trusted.*`/`security.*`
//! for administrators) go to the server, and so do advisory locks (fcntl
//! and flock, through one lock session per mount: `locks`); rename handles
//! RENAME_NOREPLACE and RENAME_EXCHANGE; setattr of a symbolic link changes
//! the link itself. A file unlinked (or renamed over) while open in this
//! mount is kept by the server for this mount's handles, with no name and
//! a link count of 0, until its last close here (`orphans`); unlinked from
//! another mount or client, its open handles here fail with ENOENT.
//! Known limits: the ticket is read once at mount (when it expires, calls
//! fail with EACCES) and a file handle lives 24 h; `O_APPEND` writes at the
//! size this mount last saw.

mod errors;
mod fs;
mod inodes;
mod local;
mod locks;
mod mounts;
mod orphans;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_api::v1::{Empty, EntryType, InodeRef, NodeRequest, PathRequest};
use berth_client::{Client, ClientError};
use fuser::{Config, MountOption, SessionACL};

pub use errors::{classify, Outcome};
pub use inodes::fuse_ino;
pub use mounts::{
    absolute, berth_mount_at, fuse_mount_at, fuse_mounts_under, lazy_unmount, mounts, unmount,
    MountEntry, FS_NAME,
};

/// Threads serving kernel requests.
pub const FUSE_THREADS: usize = 4;
/// How long `Mounted::unmount` waits for the session to end.
pub const SESSION_END_WAIT_MS: u64 = 10_000;

/// What can go wrong mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A bad argument; the text says which and why.
    #[error("{0}")]
    Usage(String),
    /// The cluster refused or failed a call.
    #[error("{path}: {source}")]
    Api {
        path: String,
        #[source]
        source: ClientError,
    },
    #[error("{} is not a Berth mount", .0.display())]
    NotMounted(PathBuf),
    #[error("{} is already a Berth mount: unmount it first (berth umount)", .0.display())]
    AlreadyMounted(PathBuf),
    #[error("{} is busy (files are open under it): close them, or unmount with --lazy", .0.display())]
    Busy(PathBuf),
    #[error("cannot run fusermount3 ({0}): install fuse3, or unmount as root")]
    NoFusermount(String),
    /// The kernel or fusermount3 refused the mount.
    #[error(
        "cannot mount {}: {source}; is /dev/fuse there (containers need --device /dev/fuse \
         --cap-add SYS_ADMIN) and fusermount3 installed (Debian: fuse3)?",
        mount_point.display()
    )]
    Mount {
        mount_point: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What to mount where.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Local directory to mount on.
    pub mount_point: PathBuf,
    /// Namespace directory shown at the mount point (`/` for everything).
    pub path: String,
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Let every local user in, each checked by the kernel as itself against
    /// the mode bits besides the server's check of the ticket (see the crate
    /// documentation); by default only the mounting user and root may enter.
    pub allow_other: bool,
    /// Threads serving kernel requests (at least 1).
    pub threads: usize,
}

/// A live mount. Ends when unmounted from outside (`berth umount`), or by
/// [`Mounted::unmount`].
pub struct Mounted {
    mount_point: PathBuf,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    ended: tokio::sync::watch::Receiver<bool>,
}

/// Normalises a namespace path: absolute, no trailing slash, no `.`/`..`.
fn normalize(path: &str) -> Result<String, MountError> {
    if !path.starts_with('/') {
        return Err(MountError::Usage(format!(
            "--path {path:?} must be absolute (start with /)"
        )));
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(MountError::Usage(format!(
            "--path {path:?} must not hold . or .. components"
        )));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Mounts `cfg.path` of the cluster at `cfg.mount_point` and starts serving
/// it. Must be called inside a tokio runtime, which then serves every call.
pub async fn mount(client: Client, cfg: MountConfig) -> Result<Mounted, MountError> {
    let path = normalize(&cfg.path)?;
    let mount_point = absolute(&cfg.mount_point).map_err(|e| MountError::Io {
        what: format!("mount point {}", cfg.mount_point.display()),
        source: e,
    })?;
    if let Ok(Some(_)) = berth_mount_at(&mount_point) {
        return Err(MountError::AlreadyMounted(mount_point));
    }
    match std::fs::metadata(&mount_point) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(MountError::Usage(format!(
                "mount point {} is not a directory",
                mount_point.display()
            )))
        }
        Err(e) => {
            return Err(MountError::Io {
                what: format!("mount point {}", mount_point.display()),
                source: e,
            })
        }
    }
    let api = |path: &str| {
        let path = path.to_string();
        move |s: tonic::Status| MountError::Api {
            path,
            source: ClientError::from_status(s),
        }
    };
    let root = client
        .namespace()
        .stat(PathRequest { path: path.clone() })
        .await
        .map_err(api(&path))?
        .into_inner();
    if root.r#type != EntryType::Directory as i32 {
        return Err(MountError::Usage(format!("{path} is not a directory")));
    }
    // Every call of the mount is by inode: a server too old to serve them
    // would fail each one, so say it now.
    let by_inode = client
        .inodes()
        .get_attr(NodeRequest {
            node: Some(InodeRef {
                volume_id: root.volume_id,
                inode: root.inode,
                view: root.view,
                parent: 0,
                name: String::new(),
            }),
            handle: Vec::new(),
        })
        .await;
    if let Err(s) = by_inode {
        if s.code() == tonic::Code::Unimplemented {
            return Err(MountError::Usage(
                "the server does not serve calls by inode (berth.v1.Inodes): it is older \
                 than this client; upgrade the servers before mounting with it"
                    .to_string(),
            ));
        }
        return Err(api(&path)(s));
    }
    let root_real = fuse_ino(root.volume_id, root.inode).ok_or_else(|| {
        MountError::Usage(format!(
            "{path}: inode {}/{} does not fit a FUSE inode number",
            root.volume_id, root.inode
        ))
    })?;
    let me = client
        .security()
        .who_am_i(Empty {})
        .await
        .map_err(api(&path))?
        .into_inner();
    let caller = fs::Caller {
        uid: me.uid,
        gids: me.gids.clone(),
        admin: me.principal == "admin" || me.groups.iter().any(|g| g == "admin"),
    };
    let notifier = Arc::new(OnceLock::new());
    let rt = tokio::runtime::Handle::current();
    let make_fs = {
        let (client, notifier) = (client.clone(), notifier.clone());
        let (read_only, multi_user) = (cfg.read_only, cfg.allow_other);
        move || {
            fs::BerthFs::new(
                rt.clone(),
                client.clone(),
                read_only,
                multi_user,
                root_real,
                root.clone(),
                caller.clone(),
                notifier.clone(),
            )
        }
    };
    let mut options = vec![
        MountOption::FSName(format!("{FS_NAME}:{path}")),
        MountOption::Subtype(FS_NAME.to_string()),
        // Device nodes and setuid bits are kept, never honoured: a node or
        // a setuid binary made through one host's mount must not open
        // devices or grant privileges on every host that mounts the
        // volume (ARCHITECTURE.md, berth-fuse, "nodev").
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if cfg.read_only {
        options.push(MountOption::RO);
    }
    if cfg.allow_other {
        // Other local uids must not act with the ticket's rights unchecked.
        options.push(MountOption::DefaultPermissions);
    }
    let threads = cfg.threads.max(1);
    let allow_other = cfg.allow_other;
    let acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::RootAndOwner
    };
    let mp = mount_point.clone();
    let session = tokio::task::spawn_blocking(move || {
        // First with auto-unmount (fusermount3 unmounts if this process
        // dies; it needs allow_other, which fuser narrows to root and the
        // owner unless every user is let in), then without it (e.g. no
        // fusermount3, as root).
        let mut auto = Config::default();
        auto.mount_options = options.clone();
        auto.mount_options.push(MountOption::AutoUnmount);
        auto.acl = acl;
        auto.n_threads = Some(threads);
        match fuser::Session::new(make_fs(), &mp, &auto) {
            Ok(s) => Ok(s),
            Err(e) => {
                tracing::debug!("mount with auto-unmount failed ({e}); mounting without it");
                let mut plain = Config::default();
                plain.mount_options = options;
                plain.acl = if allow_other {
                    SessionACL::All
                } else {
                    SessionACL::Owner
                };
                plain.n_threads = Some(threads);
                fuser::Session::new(make_fs(), &mp, &plain)
            }
        }
    })
    .await
    .map_err(|e| MountError::Io {
        what: "mount thread".into(),
        source: std::io::Error::other(e.to_string()),
    })?
    .map_err(|e| MountError::Mount {
        mount_point: mount_point.clone(),
        source: e,
    })?;
    let _ = notifier.set(session.notifier());
    let (tx, ended) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("berth-fuse".into())
        .spawn(move || {
            let r = session.run();
            let _ = tx.send(true);
            r
        })
        .map_err(|e| MountError::Io {
            what: "starting the FUSE session thread".into(),
            source: e,
        })?;
    widen_readahead(&mount_point);
    Ok(Mounted {
        mount_point,
        thread: Some(thread),
        ended,
    })
}

/// Readahead the mount asks the kernel for (also its largest read).
const READAHEAD_KB: u32 = (fs::IO_BYTES_MAX / 1024) * 4;

/// FUSE caps readahead at the backing device's default (128 KiB), so a
/// sequential reader would wait for one 128 KiB round trip at a time.
/// Root may raise it; others keep the default (logged at debug level).
fn widen_readahead(mount_point: &Path) {
    let Ok(Some(m)) = mounts::fuse_mount_at(mount_point) else {
        return;
    };
    let path = format!("/sys/class/bdi/{}/read_ahead_kb", m.device);
    if let Err(e) = std::fs::write(&path, READAHEAD_KB.to_string()) {
        tracing::debug!(path, error = %e, "could not widen readahead");
    }
}

impl Mounted {
    /// The absolute mount point.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Resolves when the session has ended (unmounted from outside).
    pub async fn ended(&mut self) {
        // An error means the session thread is gone: ended too.
        let _ = self.ended.wait_for(|v| *v).await;
    }

    /// Unmounts (lazily when files are still open) and waits, bounded, for
    /// the session to end.
    pub async fn unmount(self) -> Result<(), MountError> {
        let Mounted {
            mount_point,
            thread,
            mut ended,
        } = self;
        if !*ended.borrow() {
            // Not fuser's unmount: with auto-unmount it only hangs up on
            // fusermount3, which unmounts nothing while this process answers.
            let mp = mount_point.clone();
            tokio::task::spawn_blocking(move || -> Result<(), MountError> {
                if !matches!(berth_mount_at(&mp), Ok(Some(_))) {
                    return Ok(()); // already unmounted from outside
                }
                match mounts::unmount_path(&mp, false) {
                    Err(MountError::Busy(_)) => {
                        tracing::warn!(
                            "{} is busy: detaching it; open files keep working until closed",
                            mp.display()
                        );
                        mounts::unmount_path(&mp, true)
                    }
                    r => r,
                }
            })
            .await
            .map_err(|e| MountError::Io {
                what: "unmount thread".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        }
        let wait = tokio::time::timeout(
            Duration::from_millis(SESSION_END_WAIT_MS),
            ended.wait_for(|v| *v),
        )
        .await;
        match (wait, thread) {
            (Ok(_), Some(t)) => match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("FUSE session ended with: {e}"),
                Err(_) => tracing::warn!("FUSE session thread panicked"),
            },
            (Err(_), _) => tracing::warn!(
                "FUSE session still busy after {SESSION_END_WAIT_MS} ms; exiting ends it"
            ),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a//b/").unwrap(), "/a/b");
        assert!(normalize("a").is_err());
        assert!(normalize("/a/../b").is_err());
    }
}
