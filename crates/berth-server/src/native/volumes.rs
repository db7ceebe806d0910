//! `berth.v1.Volumes`.

use std::sync::Arc;

use berth_api::v1::volumes_server::Volumes as VolumesApi;
use berth_api::v1::*;
use berth_fs::{VolumeChange, VolumeSpec, VolumeStatus};
use tonic::{Request, Response, Status};

use super::Native;

pub struct VolumesService(pub Arc<Native>);

fn to_volume(s: VolumeStatus) -> Volume {
    let r = s.record;
    Volume {
        id: r.id,
        path: r.path,
        replication: r.replication,
        effective_replication: s.effective_replication,
        quota_bytes: r.quota_bytes,
        used_bytes: s.used_bytes,
        read_ace: r.read_ace.unwrap_or_else(|| "p".into()),
        write_ace: r.write_ace.unwrap_or_else(|| "p".into()),
        shard_id: r.shard_id,
        replicas: s.replicas,
        leader: s.leader.unwrap_or(0),
        created_ns: r.created_ns,
        root_inode: r.root_inode,
        entries: s.entries,
        chunk_size: r.chunk_size,
        prefer_leader: r.leader_preference.unwrap_or_default(),
    }
}

fn to_snapshot(s: berth_fs::snapshots::SnapshotInfo) -> Snapshot {
    Snapshot {
        volume: s.volume_path,
        name: s.name,
        id: s.id,
        created_ns: s.created_ns,
        path: s.path,
    }
}

#[tonic::async_trait]
impl VolumesApi for VolumesService {
    async fn snapshot_create(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        let n = &self.0;
        n.call("Volumes/SnapshotCreate", req, |p, r| async move {
            n.ns.snapshot_create(&p, &r.volume, &r.name)
                .await
                .map(to_snapshot)
        })
        .await
    }

    async fn snapshot_list(
        &self,
        req: Request<PathRequest>,
    ) -> Result<Response<Snapshots>, Status> {
        let n = &self.0;
        n.call("Volumes/SnapshotList", req, |p, r| async move {
            let list = n.ns.snapshot_list(&p, &r.path).await?;
            Ok(Snapshots {
                snapshots: list.into_iter().map(to_snapshot).collect(),
            })
        })
        .await
    }

    async fn snapshot_remove(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Volumes/SnapshotRemove", req, |p, r| async move {
            n.ns.snapshot_remove(&p, &r.volume, &r.name).await?;
            Ok(Empty {})
        })
        .await
    }

    async fn create(&self, req: Request<VolumeCreateRequest>) -> Result<Response<Volume>, Status> {
        let n = &self.0;
        n.call("Volumes/Create", req, |p, r| async move {
            let spec = VolumeSpec {
                path: r.path,
                replication: r.replication,
                quota_bytes: r.quota_bytes,
                read_ace: r.read_ace,
                write_ace: r.write_ace,
                chunk_size: r.chunk_size,
                leader_preference: Some(r.prefer_leader).filter(|s| !s.is_empty()),
            };
            n.ns.volume_create(&p, &spec).await.map(to_volume)
        })
        .await
    }

    async fn update(&self, req: Request<VolumeUpdateRequest>) -> Result<Response<Volume>, Status> {
        let n = &self.0;
        n.call("Volumes/Update", req, |p, r| async move {
            let change = VolumeChange {
                replication: r.replication,
                quota_bytes: r.quota_bytes,
                leader_preference: r.prefer_leader.map(|l| Some(l).filter(|s| !s.is_empty())),
            };
            n.ns.volume_set(&p, &r.path, &change).await.map(to_volume)
        })
        .await
    }

    async fn list(&self, req: Request<Empty>) -> Result<Response<VolumeList>, Status> {
        let n = &self.0;
        n.call("Volumes/List", req, |p, _| async move {
            let vols = n.ns.volume_list(&p).await?;
            Ok(VolumeList {
                volumes: vols.into_iter().map(to_volume).collect(),
            })
        })
        .await
    }

    async fn info(&self, req: Request<PathRequest>) -> Result<Response<Volume>, Status> {
        let n = &self.0;
        n.call("Volumes/Info", req, |p, r| async move {
            n.ns.volume_info(&p, &r.path).await.map(to_volume)
        })
        .await
    }

    async fn check(&self, req: Request<PathRequest>) -> Result<Response<VolumeCheck>, Status> {
        let n = &self.0;
        n.call("Volumes/Check", req, |p, r| async move {
            let c = n.ns.volume_check(&p, &r.path).await?;
            Ok(VolumeCheck {
                path: c.path,
                inodes: c.inodes,
                entries: c.entries,
                problems: c.problems,
            })
        })
        .await
    }

    async fn remove(&self, req: Request<VolumeRemoveRequest>) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Volumes/Remove", req, |p, r| async move {
            n.ns.volume_remove(&p, &r.path, r.force)
                .await
                .map(|_| Empty {})
        })
        .await
    }
}
