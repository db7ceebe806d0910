//! Volumes: create, list, inspect and remove the subtrees that carry policy
//! (replication factor, quota, ACEs), and finish half-done volume changes
//! after a crash.
//!
//! Creating a volume touches three shards (meta, the new volume's, the parent
//! volume's) and so is not one atomic command. It is a sequence of idempotent
//! steps, driven by the volume's state in the cluster map:
//! `Creating` (records written) → shard and root directory exist → mount
//! point written in the parent → `Ready`. Removal runs `Removing` → mount
//! point gone → data deleted → records deleted. [`Namespace::reconcile`]
//! resumes either sequence at startup, so a crash mid-way never leaves a
//! volume half-visible.

use std::time::Duration;

use berth_meta::map::{
    normalize_path, split_parent, NodeState, ShardRecord, VolumeRecord, VolumeState,
    CHUNK_SIZE_DEFAULT, CHUNK_SIZE_MAX, CHUNK_SIZE_MIN, C_SHARD_ID, C_VOLUME_ID,
};
use berth_meta::meta::require_admin;
use berth_meta::router::{backoff, too_much_contention, Commit, TX_RETRIES_MAX};
use berth_meta::{Code, Error, ROOT_INODE};
use berth_security::principal::Principal;
use berth_security::scope::Access;
use berth_store::keys;

use crate::access::{check_scope, validate_ace};
use crate::namespace::{now_ns, Namespace};
use crate::records::*;

/// Default replication factor of a new volume (capped at the node count).
pub const REPLICATION_DEFAULT: u32 = 3;
/// Largest replication factor accepted.
pub const REPLICATION_MAX: u32 = 7;
/// Longest wait for a new shard to elect its leader.
const SHARD_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A new volume's settings.
#[derive(Debug, Clone, Default)]
pub struct VolumeSpec {
    pub path: String,
    pub replication: u32,
    pub quota_bytes: u64,
    pub read_ace: Option<String>,
    pub write_ace: Option<String>,
    /// Bytes per file chunk (0 = 1 MiB); a power of two from 64 KiB to 16 MiB.
    pub chunk_size: u32,
    /// `KEY=VALUE`: keep the volume's leader on a node with this label.
    pub leader_preference: Option<String>,
}

/// Changes to a volume's settings (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct VolumeChange {
    /// A new replication factor (1 to [`REPLICATION_MAX`]); the placement
    /// driver adds or removes replicas to match.
    pub replication: Option<u32>,
    /// A new quota (0: unlimited). Lowering it below the bytes used only
    /// refuses further growth.
    pub quota_bytes: Option<u64>,
    /// `Some(None)` drops the leader preference.
    pub leader_preference: Option<Option<String>>,
}

/// A replication factor given explicitly: 1 to [`REPLICATION_MAX`].
fn check_replication(r: u32) -> Result<u32, Error> {
    if (1..=REPLICATION_MAX).contains(&r) {
        Ok(r)
    } else {
        Err(Error::invalid(format!(
            "replication {r}: must be from 1 to {REPLICATION_MAX}"
        )))
    }
}

/// What `volume info` reports.
#[derive(Debug, Clone)]
pub struct VolumeStatus {
    pub record: VolumeRecord,
    pub replicas: Vec<u64>,
    pub effective_replication: u32,
    pub leader: Option<u64>,
    pub entries: u64,
    pub used_bytes: u64,
}

impl Namespace {
    /// Creates the root directory of a volume in its (new) shard; idempotent.
    pub async fn init_volume_root(
        &self,
        vol: &VolumeRecord,
        owner_uid: u32,
        owner_gid: u32,
        mode: u32,
    ) -> Result<(), Error> {
        self.wait_shard_leader(vol.shard_id).await?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            let key = inode_key(vol.id, vol.root_inode);
            if tx.get(&key).await?.is_some() {
                return Ok(());
            }
            let now = now_ns();
            tx.put(
                key,
                encode_inode(&Inode {
                    kind: EntryKind::Dir,
                    mode,
                    uid: owner_uid,
                    gid: owner_gid,
                    size: 0,
                    nlink: 2,
                    atime_ns: now,
                    mtime_ns: now,
                    ctime_ns: now,
                    parent: 0,
                    target: None,
                    acl: EntryAcl::default(),
                    rdev: 0,
                    name: String::new(),
                }),
            );
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(());
            }
        }
        Err(too_much_contention("volume root"))
    }

    async fn wait_shard_leader(&self, shard: u64) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + SHARD_READY_TIMEOUT;
        loop {
            if self.meta.router().raft().leader(shard).is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::new(
                    Code::Again,
                    format!("shard {shard} elected no leader in time; retry"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates a volume mounted at `spec.path` (which must not exist; its
    /// parent must be a directory). Cluster administrators only.
    pub async fn volume_create(
        &self,
        p: &Principal,
        spec: &VolumeSpec,
    ) -> Result<VolumeStatus, Error> {
        require_admin(p)?;
        let path = normalize_path(&spec.path)?;
        check_scope(p, &path, Access::Admin)?;
        if path == "/" {
            return Err(Error::exists("volume at /"));
        }
        for (what, e) in [("read", &spec.read_ace), ("write", &spec.write_ace)] {
            if let Some(e) = e {
                validate_ace(what, e)?;
            }
        }
        let replication = match spec.replication {
            0 => REPLICATION_DEFAULT,
            r => check_replication(r)?,
        };
        let chunk_size = match spec.chunk_size {
            0 => CHUNK_SIZE_DEFAULT,
            c if c.is_power_of_two() && (CHUNK_SIZE_MIN..=CHUNK_SIZE_MAX).contains(&c) => c,
            c => {
                return Err(Error::invalid(format!(
                    "chunk size {c} must be a power of two from {CHUNK_SIZE_MIN} to {CHUNK_SIZE_MAX} bytes"
                )))
            }
        };
        if let Some(l) = &spec.leader_preference {
            berth_meta::map::parse_label_pair(l)?;
        }
        // Fail early (before allocating anything) when the path is taken.
        let (parent_path, _) = split_parent(&path).ok_or_else(|| Error::exists("/"))?;
        let parent = self.resolve_mut(p, parent_path, true).await?;
        if parent.inode.kind != EntryKind::Dir {
            return Err(Error::new(
                Code::NotDir,
                format!("not a directory: {parent_path}"),
            ));
        }
        match self.stat(p, &path).await {
            Ok(_) => return Err(Error::exists(&path)),
            Err(e) if e.code == Code::NotFound => {}
            Err(e) => return Err(e),
        }
        let id = self.meta.allocate(C_VOLUME_ID).await?;
        let shard_id = self.meta.allocate(C_SHARD_ID).await?;
        let map = self.meta.map();
        // Nodes being drained or gone hold no new replicas.
        let mut nodes: Vec<u64> = map
            .nodes
            .iter()
            .filter(|n| matches!(n.state, NodeState::Up | NodeState::Joining))
            .map(|n| n.id)
            .collect();
        nodes.sort_unstable();
        let me = self.meta.router().node_id();
        // Placement: this node first, then the others in id order. The
        // placement driver (scale-out) rebalances later.
        nodes.retain(|n| *n != me);
        nodes.insert(0, me);
        nodes.truncate(replication as usize);
        let vol = VolumeRecord {
            id,
            path: path.clone(),
            replication,
            quota_bytes: spec.quota_bytes,
            read_ace: spec.read_ace.clone(),
            write_ace: spec.write_ace.clone(),
            shard_id,
            root_inode: ROOT_INODE,
            created_ns: now_ns(),
            state: VolumeState::Creating,
            parent_volume: parent.vol.id,
            chunk_size,
            leader_preference: spec.leader_preference.clone(),
        };
        let shard = ShardRecord::for_volume(shard_id, id, nodes);
        self.meta.create_volume_record(&vol, &shard).await?;
        match self
            .finish_create(&vol, p.uid, p.gids.first().copied().unwrap_or(0))
            .await
        {
            Ok(()) => self.volume_info(p, &path).await,
            Err(e) => {
                if e.code == Code::Exists || e.code == Code::NotFound || e.code == Code::NotDir {
                    // Lost a race for the path: undo the records.
                    let _ = self.finish_remove(&vol).await;
                }
                Err(e)
            }
        }
    }

    /// Steps 2–4 of volume creation; idempotent.
    async fn finish_create(&self, vol: &VolumeRecord, uid: u32, gid: u32) -> Result<(), Error> {
        self.init_volume_root(vol, uid, gid, 0o755).await?;
        let (parent_path, name) =
            split_parent(&vol.path).ok_or_else(|| Error::invalid("volume at /"))?;
        let system = system_principal();
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let parent = self.resolve(&system, parent_path, true).await?;
            if parent.inode.kind != EntryKind::Dir {
                return Err(Error::new(
                    Code::NotDir,
                    format!("not a directory: {parent_path}"),
                ));
            }
            let pv = parent.vol.clone();
            let mut tx = self.meta.router().begin(pv.shard_id).await?;
            let pkey = inode_key(pv.id, parent.ino);
            let mut pinode = decode_inode(
                &tx.get(&pkey)
                    .await?
                    .ok_or_else(|| Error::not_found(parent_path))?,
            )?;
            let dkey = dirent_key(pv.id, parent.ino, name);
            match tx.get(&dkey).await? {
                Some(b) => {
                    let d = decode_dirent(&b)?;
                    if d.mount == Some(vol.id) {
                        break; // mount point already written
                    }
                    return Err(Error::exists(&vol.path));
                }
                None => {
                    let now = now_ns();
                    pinode.nlink += 1;
                    pinode.mtime_ns = now;
                    pinode.ctime_ns = now;
                    tx.put(pkey, encode_inode(&pinode));
                    tx.put(
                        dkey,
                        encode_dirent(&Dirent {
                            ino: vol.root_inode,
                            kind: EntryKind::Dir,
                            mount: Some(vol.id),
                        }),
                    );
                    if let Commit::Done(_) = tx.commit().await? {
                        break;
                    }
                }
            }
        }
        self.meta
            .update_volume(vol.id, |v| {
                v.state = VolumeState::Ready;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Removes the volume mounted exactly at `path` with all its data. A
    /// volume holding entries needs `force`; a volume with volumes mounted
    /// inside it is refused. Cluster administrators only.
    pub async fn volume_remove(&self, p: &Principal, path: &str, force: bool) -> Result<(), Error> {
        require_admin(p)?;
        let path = normalize_path(path)?;
        check_scope(p, &path, Access::Admin)?;
        if path == "/" {
            return Err(Error::new(Code::Busy, "the root volume cannot be removed"));
        }
        let map = self.meta.map();
        let vol = map
            .volume_at(&path)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("volume at {path}")))?;
        if let Some(child) = map.volumes.iter().find(|v| v.parent_volume == vol.id) {
            return Err(Error::new(
                Code::Busy,
                format!(
                    "volume {} is mounted inside {path}; remove it first",
                    child.path
                ),
            ));
        }
        if !force && vol.state == VolumeState::Ready {
            let (cs, ce) = children_range(vol.id, vol.root_inode);
            let rows = self.meta.router().scan(vol.shard_id, &cs, &ce, 1).await?;
            if !rows.is_empty() {
                return Err(Error::new(
                    Code::NotEmpty,
                    format!("volume {path} is not empty; use --force to remove it with its data"),
                ));
            }
        }
        self.meta
            .update_volume(vol.id, |v| {
                v.state = VolumeState::Removing;
                Ok(())
            })
            .await?;
        self.finish_remove(&vol).await
    }

    /// Removal steps after `Removing` is recorded; idempotent.
    async fn finish_remove(&self, vol: &VolumeRecord) -> Result<(), Error> {
        // 1. Mount point in the parent volume.
        if let (Some((parent_path, name)), Some(pv)) = (
            split_parent(&vol.path),
            self.meta.map().volume(vol.parent_volume).cloned(),
        ) {
            let system = system_principal();
            match self.resolve(&system, parent_path, true).await {
                Ok(parent) if parent.vol.id == pv.id => {
                    self.unlink_mount(&pv, parent.ino, name, vol.id).await?;
                }
                Ok(_) | Err(_) => {} // parent gone: nothing mounts the volume any more
            }
        }
        // 2. The volume's data.
        if self.meta.router().raft().leader(vol.shard_id).is_some() {
            let (start, end) = keys::volume_range(vol.id);
            let mut tx = self.meta.router().begin(vol.shard_id).await?;
            tx.delete_range(start, end);
            tx.commit().await?;
        }
        // 3. The records. The shard's Raft group stays on its nodes, empty and
        //    idle, until replica removal arrives with the placement driver.
        self.meta.delete_volume_record(vol).await
    }

    async fn unlink_mount(
        &self,
        pv: &VolumeRecord,
        parent_ino: u64,
        name: &str,
        vol_id: u64,
    ) -> Result<(), Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.meta.router().begin(pv.shard_id).await?;
            let dkey = dirent_key(pv.id, parent_ino, name);
            let Some(b) = tx.get(&dkey).await? else {
                return Ok(());
            };
            if decode_dirent(&b)?.mount != Some(vol_id) {
                return Ok(());
            }
            let pkey = inode_key(pv.id, parent_ino);
            if let Some(pb) = tx.get(&pkey).await? {
                let mut pi = decode_inode(&pb)?;
                let now = now_ns();
                pi.nlink = pi.nlink.saturating_sub(1);
                pi.mtime_ns = now;
                pi.ctime_ns = now;
                tx.put(pkey, encode_inode(&pi));
            }
            tx.delete(dkey);
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(());
            }
        }
        Err(too_much_contention("volume unmount"))
    }

    /// Every volume, in path order.
    pub async fn volume_list(&self, p: &Principal) -> Result<Vec<VolumeStatus>, Error> {
        let map = self.meta.map();
        let mut out = Vec::new();
        let mut vols: Vec<VolumeRecord> = map
            .volumes
            .iter()
            .filter(|v| v.state == VolumeState::Ready && p.may(&v.path, Access::Traverse))
            .cloned()
            .collect();
        vols.sort_by(|a, b| a.path.cmp(&b.path));
        for v in vols {
            out.push(self.status_of(v, true).await?);
        }
        Ok(out)
    }

    /// Changes the settings of the volume mounted at `path`. Cluster
    /// administrators only.
    pub async fn volume_set(
        &self,
        p: &Principal,
        path: &str,
        change: &VolumeChange,
    ) -> Result<VolumeStatus, Error> {
        require_admin(p)?;
        let path = normalize_path(path)?;
        check_scope(p, &path, Access::Admin)?;
        let replication = change.replication.map(check_replication).transpose()?;
        if let Some(Some(l)) = &change.leader_preference {
            berth_meta::map::parse_label_pair(l)?;
        }
        let v = self.meta.map().volume_at(&path).cloned().ok_or_else(|| {
            Error::not_found(format!("volume at {path} (see `berth volume list`)"))
        })?;
        let record = self
            .meta
            .update_volume(v.id, |r| {
                if r.state != VolumeState::Ready {
                    return Err(Error::new(
                        Code::Busy,
                        format!("volume at {path} is being created or removed"),
                    ));
                }
                if let Some(n) = replication {
                    r.replication = n;
                }
                if let Some(q) = change.quota_bytes {
                    r.quota_bytes = q;
                }
                if let Some(l) = &change.leader_preference {
                    r.leader_preference = l.clone();
                }
                Ok(())
            })
            .await?;
        self.status_of(record, true).await
    }

    /// The volume mounted exactly at `path`.
    pub async fn volume_info(&self, p: &Principal, path: &str) -> Result<VolumeStatus, Error> {
        let path = normalize_path(path)?;
        check_scope(p, &path, Access::Traverse)?;
        let v = self.meta.map().volume_at(&path).cloned().ok_or_else(|| {
            Error::not_found(format!("volume at {path} (see `berth volume list`)"))
        })?;
        self.status_of(v, true).await
    }

    async fn status_of(&self, record: VolumeRecord, count: bool) -> Result<VolumeStatus, Error> {
        let map = self.meta.map();
        let replicas = map
            .shard(record.shard_id)
            .map(|s| s.replicas.clone())
            .unwrap_or_default();
        let effective = (record.replication as usize).min(map.nodes.len().max(1)) as u32;
        let leader = self.meta.router().leader_of(record.shard_id);
        let mut entries = 0;
        if count && leader.is_some() {
            // Inodes other than the root and the allocation counter.
            let (s, e) = inodes_range(record.id);
            const COUNT_MAX: usize = 1_000_000;
            let rows = self
                .meta
                .router()
                .scan(record.shard_id, &s, &e, COUNT_MAX)
                .await?;
            entries = rows.len().saturating_sub(2) as u64;
        }
        let used_bytes = match leader {
            Some(_) => read_usage(
                self.meta
                    .router()
                    .get(record.shard_id, &usage_key(record.id))
                    .await?,
            ),
            None => 0,
        };
        Ok(VolumeStatus {
            effective_replication: effective,
            replicas,
            leader,
            entries,
            used_bytes,
            record,
        })
    }

    /// Finishes volume creations and removals interrupted by a crash.
    pub async fn reconcile(&self) -> Result<(), Error> {
        let map = self.meta.map();
        for v in map.volumes.iter() {
            let r = match v.state {
                VolumeState::Ready => Ok(()),
                VolumeState::Creating if v.id == berth_meta::map::ROOT_VOLUME => {
                    self.init_volume_root(v, 0, 0, 0o755).await?;
                    self.meta
                        .update_volume(v.id, |v| {
                            v.state = VolumeState::Ready;
                            Ok(())
                        })
                        .await
                        .map(|_| ())
                }
                VolumeState::Creating => match self.finish_create(v, 0, 0).await {
                    Err(e) if matches!(e.code, Code::Exists | Code::NotFound | Code::NotDir) => {
                        self.finish_remove(v).await
                    }
                    r => r,
                },
                VolumeState::Removing => self.finish_remove(v).await,
            };
            if let Err(e) = r {
                tracing::warn!(volume = %v.path, error = %e, "could not finish an interrupted volume change; will retry at next start");
            }
        }
        Ok(())
    }
}

/// The identity the server uses for its own bookkeeping (finishing volume
/// changes that an administrator started, first-start setup). Never
/// derived from a request.
pub fn system_principal() -> Principal {
    Principal {
        name: "admin".into(),
        kind: berth_security::principal::PrincipalKind::Node,
        uid: 0,
        gids: vec![0],
        groups: vec!["admin".into()],
        scope: None,
    }
}
