//! berth-fs: the namespace service — directories, files (metadata and data
//! in chunks), symlinks, FIFOs, sockets and device nodes (attributes only:
//! their I/O is the kernel's), typed entries for tables and streams — and volumes,
//! the subtrees that carry policy (replication, quota, ACEs) — and the
//! advisory locks of the cluster (`locks`, in memory, not replicated).
//!
//! Entries are named by path or, as a FUSE mount holds them, by inode and
//! one name (`inodes`); files unlinked while open are kept for their
//! holder (`orphans`).
//!
//! Invariants:
//! - Every operation takes the caller's `Principal` and authorizes it (ticket
//!   scope, volume ACE, entry ACE, mode bits) before changing anything; an
//!   entry named by inode is authorized as the walk of its path, which the
//!   service rebuilds itself: no inode number grants access by itself.
//! - State changes only through the shard router's conditional commands; a
//!   volume's namespace lives in one shard, so each change within a volume
//!   (rename included) is atomic.
//! - This crate knows nothing about gRPC, FUSE or any protocol.

pub mod access;
pub mod check;
pub mod data;
mod exchange;
pub mod inodes;
pub mod locks;
pub mod namespace;
pub mod orphans;
pub mod records;
pub mod snapshots;
pub mod volumes;
pub mod xattr;

pub use check::CheckReport;
pub use data::{OpenSpec, Rights};
pub use inodes::{NewEntry, NodeRef};
pub use namespace::{EntryHook, EntryInfo, HookFuture, Namespace, SetAttr};
pub use orphans::Keep;
pub use records::{EntryAcl, EntryKind, Inode};
pub use volumes::{VolumeChange, VolumeSpec, VolumeStatus};
