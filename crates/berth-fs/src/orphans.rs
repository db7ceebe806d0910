//! Files kept without a name for the client that holds them open.
//!
//! POSIX lets a process keep using a file after its last name is gone
//! (unlink(2), or rename(2) over it): the inode lives, with a link count of
//! 0, until the last descriptor closes. File handles are capabilities the
//! server does not track, so the client says so: a removal (or a rename
//! replacing a file) that names, in `Keep`, the file it holds open and its
//! own holder id keeps that file's inode and data — link count 0, no
//! entry — under an orphan record in the same command. The client renews
//! the record's lease while the file stays open ([`Namespace::keep_orphans`])
//! and releases it at the last close ([`Namespace::release_orphan`]); a
//! client that goes away stops renewing, and the leader of the volume's
//! shard deletes the file once the lease lapsed ([`Namespace::reap_orphans`]).
//!
//! The record lives in the volume's range, so it is replicated like the
//! file: an orphan outlives a restart or a change of leader, and its client
//! just goes on renewing. Only the client that removed the name keeps the
//! file alive; another client's open handles of it fail (ENOENT) once it
//! is gone, as they would on NFS.
//!
//! | key                                         | value            |
//! |---------------------------------------------|------------------|
//! | `vol · Meta · 0 · "orphan" · u64 ino`       | [`OrphanRecord`] |
//!
//! Leases are compared with the wall clock of the node that reaps, so
//! nodes' clocks should agree to well within a lease.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use berth_meta::codec::{decode, encode};
use berth_meta::map::{VolumeRecord, VolumeState};
use berth_meta::router::{backoff, too_much_contention, Commit, Tx, TX_RETRIES_MAX};
use berth_meta::{Code, Error};
use berth_security::principal::Principal;
use berth_store::keys::{prefix_end, Key, KeyReader, Kind};
use serde::{Deserialize, Serialize};

use crate::namespace::{now_ns, Namespace};
use crate::records::*;

/// Lease of an orphan when the server is not told otherwise.
pub const ORPHAN_LEASE_MS_DEFAULT: u64 = 30_000;
/// Shortest lease accepted (tests shorten it).
pub const ORPHAN_LEASE_MS_MIN: u64 = 300;
/// Orphans one renewal names at most.
pub const ORPHANS_PER_CALL_MAX: usize = 1024;
/// Orphans one reaping round reads per volume.
const REAP_BATCH: usize = 256;

/// "Keep the file for my open handles": the inode the caller holds open
/// and the caller's holder id (random, nonzero, one per client instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub holder: u64,
    pub ino: u64,
}

impl Keep {
    /// Whether this keeps file `ino` (`inode`): only regular files are.
    pub(crate) fn keeps(&self, ino: u64, inode: &Inode) -> bool {
        self.holder != 0 && self.ino == ino && inode.kind == EntryKind::File
    }
}

/// How a removal goes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Removal {
    /// A non-empty directory goes with everything in it (paths only).
    pub recursive: bool,
    /// `Some(true)`: only a directory (rmdir); `Some(false)`: never one.
    pub expect_dir: Option<bool>,
    pub keep: Option<Keep>,
}

/// An orphan: a file with no name, kept for a client's open handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanRecord {
    pub holder: u64,
    /// The principal that kept it: only it renews and releases it.
    pub principal: String,
    /// When the lease lapses (wall clock, ns since the epoch).
    pub expires_ns: i64,
}

pub fn orphan_key(vol: u64, ino: u64) -> Vec<u8> {
    Key::new(vol, Kind::Meta, 0).str("orphan").u64(ino).build()
}

/// Every orphan record of a volume.
pub fn orphans_range(vol: u64) -> (Vec<u8>, Vec<u8>) {
    let start = Key::new(vol, Kind::Meta, 0).str("orphan").build();
    let end = prefix_end(&start);
    (start, end)
}

/// The inode of an orphan record's key.
pub fn orphan_ino(key: &[u8]) -> Result<u64, Error> {
    KeyReader::new(key)
        .and_then(|mut r| {
            r.next_str()?;
            r.next_u64()
        })
        .map_err(|e| Error::corrupt(format!("orphan key: {e}")))
}

pub fn decode_orphan(b: &[u8]) -> Result<OrphanRecord, Error> {
    decode(b, "orphan record")
}

impl Namespace {
    /// Sets the lease of orphans (at least [`ORPHAN_LEASE_MS_MIN`]).
    pub fn set_orphan_lease_ms(&self, ms: u64) {
        self.orphan_lease_ms
            .store(ms.max(ORPHAN_LEASE_MS_MIN), Ordering::Relaxed);
    }

    pub fn orphan_lease_ms(&self) -> u64 {
        self.orphan_lease_ms.load(Ordering::Relaxed)
    }

    fn lease_ns(&self) -> i64 {
        (self.orphan_lease_ms() as i64).saturating_mul(1_000_000)
    }

    /// In `tx`: file `ino`'s last name goes (the caller deletes it) but
    /// the inode stays, with link count 0 and its data, kept for `keep`.
    pub(crate) fn orphan(
        &self,
        tx: &mut Tx,
        p: &Principal,
        vol: &VolumeRecord,
        ino: u64,
        inode: &mut Inode,
        keep: &Keep,
    ) {
        let now = now_ns();
        inode.nlink = 0;
        inode.ctime_ns = now;
        tx.put(inode_key(vol.id, ino), encode_inode(inode));
        let record = OrphanRecord {
            holder: keep.holder,
            principal: p.name.clone(),
            expires_ns: now.saturating_add(self.lease_ns()),
        };
        tx.put(orphan_key(vol.id, ino), encode(&record));
    }

    fn orphan_volume(&self, id: u64) -> Result<VolumeRecord, Error> {
        match self.meta.map().volume(id) {
            Some(v) if v.state == VolumeState::Ready => Ok(v.clone()),
            _ => Err(Error::new(Code::Stale, format!("volume {id} is gone"))),
        }
    }

    /// Renews the leases of the caller's orphans `inos` of `volume`;
    /// returns those it does not hold (released, reaped, never kept).
    pub async fn keep_orphans(
        &self,
        p: &Principal,
        volume: u64,
        holder: u64,
        inos: &[u64],
    ) -> Result<Vec<u64>, Error> {
        if inos.len() > ORPHANS_PER_CALL_MAX {
            return Err(Error::invalid(format!(
                "at most {ORPHANS_PER_CALL_MAX} orphans per call"
            )));
        }
        let vol = self.orphan_volume(volume)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let expires_ns = now_ns().saturating_add(self.lease_ns());
            let mut gone = Vec::new();
            for &ino in inos {
                let key = orphan_key(vol.id, ino);
                match tx.get(&key).await?.map(|b| decode_orphan(&b)).transpose()? {
                    Some(mut r) if r.holder == holder && r.principal == p.name => {
                        r.expires_ns = r.expires_ns.max(expires_ns);
                        tx.put(key, encode(&r));
                    }
                    _ => gone.push(ino),
                }
            }
            if !tx.has_writes() {
                return Ok(gone);
            }
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(gone);
            }
        }
        Err(too_much_contention("orphan leases"))
    }

    /// The caller closed its last handle of orphan `ino`: the file goes
    /// with its data. Releasing what the caller does not hold is a no-op.
    pub async fn release_orphan(
        &self,
        p: &Principal,
        volume: u64,
        holder: u64,
        ino: u64,
    ) -> Result<(), Error> {
        let vol = self.orphan_volume(volume)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let key = orphan_key(vol.id, ino);
            match tx.get(&key).await?.map(|b| decode_orphan(&b)).transpose()? {
                Some(r) if r.holder == holder && r.principal == p.name => {}
                _ => return Ok(()),
            }
            self.drop_orphan(&mut tx, &vol, ino).await?;
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(());
            }
        }
        Err(too_much_contention("orphan release"))
    }

    /// In `tx` (which read the orphan record): deletes orphan `ino` and,
    /// while it still has no name, the file with its data.
    async fn drop_orphan(&self, tx: &mut Tx, vol: &VolumeRecord, ino: u64) -> Result<(), Error> {
        tx.delete(orphan_key(vol.id, ino));
        let ikey = inode_key(vol.id, ino);
        if let Some(b) = tx.get(&ikey).await? {
            let inode = decode_inode(&b)?;
            if inode.nlink == 0 {
                self.last_name_goes(tx, vol, ino, inode.kind, "")?;
                tx.delete(ikey);
            }
        }
        Ok(())
    }

    /// Deletes the orphans whose lease lapsed, in the volumes whose shard
    /// this node leads (at most a batch per volume). Returns how many.
    pub async fn reap_orphans(&self) -> Result<usize, Error> {
        let router = self.meta.router();
        let me = router.node_id();
        let volumes: Vec<VolumeRecord> = self
            .meta
            .map()
            .volumes
            .iter()
            .filter(|v| v.state == VolumeState::Ready)
            .filter(|v| router.raft().leader(v.shard_id) == Some(me))
            .cloned()
            .collect();
        let mut reaped = 0;
        for vol in volumes {
            let (start, end) = orphans_range(vol.id);
            let tx = router.begin(vol.shard_id).await?;
            let now = now_ns();
            let mut lapsed = Vec::new();
            for (k, v) in tx.peek_range(&start, &end, REAP_BATCH).await? {
                if decode_orphan(&v)?.expires_ns < now {
                    lapsed.push(orphan_ino(&k)?);
                }
            }
            drop(tx);
            for ino in lapsed {
                let mut tx = router.begin(vol.shard_id).await?;
                let record = tx.get(&orphan_key(vol.id, ino)).await?;
                // Renewed or released meanwhile: the commit's conditions
                // catch what changes after this read.
                let lapsed = record
                    .map(|b| decode_orphan(&b))
                    .transpose()?
                    .is_some_and(|r| r.expires_ns < now_ns());
                if !lapsed {
                    continue;
                }
                self.drop_orphan(&mut tx, &vol, ino).await?;
                if let Commit::Done(_) = tx.commit().await? {
                    tracing::info!(volume = %vol.path, ino, "an unlinked file's holder stopped renewing it: deleted");
                    reaped += 1;
                }
            }
        }
        Ok(reaped)
    }

    /// Reaps lapsed orphans every half lease until `stop` turns true.
    pub async fn run_orphan_reaper(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis((self.orphan_lease_ms() / 2).clamp(100, 10_000));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = tick.tick() => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        return; // the sender is gone: the server is stopping
                    }
                    continue;
                }
            }
            if let Err(e) = self.reap_orphans().await {
                tracing::debug!(error = %e, "reaping orphans failed; next round retries");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_records() {
        let k = orphan_key(3, 77);
        let (s, e) = orphans_range(3);
        assert!(s < k && k < e);
        assert_eq!(orphan_ino(&k).unwrap(), 77);
        // Other keys of the volume's meta object are outside the range.
        assert!(!(s <= versions_key(3) && versions_key(3) < e));
        assert!(!(s <= snapshots_key(3) && snapshots_key(3) < e));
        assert!(orphan_key(4, 1) >= e);
        let r = OrphanRecord {
            holder: 9,
            principal: "alice".into(),
            expires_ns: -1,
        };
        assert_eq!(decode_orphan(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn only_the_named_file_is_kept() {
        let file = Inode {
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 1,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            parent: 0,
            target: None,
            acl: EntryAcl::default(),
            rdev: 0,
            name: String::new(),
        };
        let k = Keep { holder: 5, ino: 10 };
        assert!(k.keeps(10, &file));
        assert!(!k.keeps(11, &file));
        let fifo = Inode {
            kind: EntryKind::Fifo,
            ..file.clone()
        };
        assert!(!k.keeps(10, &fifo));
        assert!(!Keep { holder: 0, ino: 10 }.keeps(10, &file));
    }
}
