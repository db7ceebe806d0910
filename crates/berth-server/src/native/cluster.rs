//! `berth.v1.Cluster`.

use std::sync::Arc;

use berth_api::v1::cluster_server::Cluster as ClusterApi;
use berth_api::v1::*;
use tonic::{Request, Response, Status};

use super::Native;

pub struct ClusterService(pub Arc<Native>);

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn status(&self, req: Request<Empty>) -> Result<Response<ClusterStatus>, Status> {
        let n = &self.0;
        n.call("Cluster/Status", req, |_p, _| async move {
            let map = n.meta.map();
            let local = n.raft.status();
            let shards = map
                .shards
                .iter()
                .map(|s| {
                    let st = local.iter().find(|l| l.id == s.id);
                    Shard {
                        id: s.id,
                        volume_id: s.volume_id,
                        start: s.start.clone(),
                        end: s.end.clone(),
                        replicas: s.replicas.clone(),
                        leader: n.meta.router().leader_of(s.id).unwrap_or(0),
                        term: st.map(|x| x.term).unwrap_or(0),
                        commit_index: st.map(|x| x.commit).unwrap_or(0),
                        applied_index: st.map(|x| x.applied).unwrap_or(0),
                        role: st
                            .map(|x| format!("{:?}", x.role))
                            .unwrap_or_else(|| "none".into()),
                        hibernating: st.map(|x| x.hibernating).unwrap_or(false),
                    }
                })
                .collect();
            Ok(ClusterStatus {
                cluster: map.cluster_name().to_string(),
                node_id: n.node_id,
                nodes: map
                    .nodes
                    .iter()
                    .map(|x| Node {
                        id: x.id,
                        native_addr: x.native_addr.clone(),
                        admin_addr: x.admin_addr.clone(),
                        // Liveness tracking arrives with the placement driver;
                        // the answering node is alive by definition.
                        alive: x.id == n.node_id,
                        started_at: x.started_at as i64,
                        kafka_addr: x.kafka_addr.clone(),
                        labels: x.labels.clone().into_iter().collect(),
                    })
                    .collect(),
                shards,
                version: env!("CARGO_PKG_VERSION").into(),
            })
        })
        .await
    }
}
