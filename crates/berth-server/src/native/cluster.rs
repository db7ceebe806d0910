//! `berth.v1.Cluster`.

use std::sync::Arc;

use berth_api::v1::cluster_server::Cluster as ClusterApi;
use berth_api::v1::*;
use tonic::{Request, Response, Status};

use super::Native;

/// The cluster service; `ca_sha256` is the cluster CA certificate's
/// SHA-256, which join tokens carry.
pub struct ClusterService(pub Arc<Native>, pub [u8; 32]);

fn token_info(r: berth_meta::map::JoinTokenRecord) -> JoinTokenInfo {
    JoinTokenInfo {
        id: r.id,
        created_by: r.created_by,
        created_at: r.created_at as i64,
        expires_at: r.expires_at as i64,
        uses_left: r.uses_left,
        revoked: r.revoked,
    }
}

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn create_join_token(
        &self,
        req: Request<JoinTokenCreateRequest>,
    ) -> Result<Response<JoinToken>, Status> {
        let n = &self.0;
        let ca = self.1;
        n.call("Cluster/CreateJoinToken", req, |p, r| async move {
            let servers = n
                .meta
                .map()
                .nodes
                .iter()
                .map(|x| x.native_addr.clone())
                .collect();
            let (token, rec) = n
                .meta
                .create_join_token(&p, r.ttl_secs, r.uses.max(1), ca, servers)
                .await?;
            Ok(JoinToken {
                token,
                info: Some(token_info(rec)),
                ca_fingerprint: berth_security::join::fingerprint_text(&ca),
            })
        })
        .await
    }

    async fn list_join_tokens(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<JoinTokenList>, Status> {
        let n = &self.0;
        n.call("Cluster/ListJoinTokens", req, |p, _| async move {
            let mut tokens = n.meta.join_tokens(&p).await?;
            tokens.sort_by_key(|t| t.created_at);
            Ok(JoinTokenList {
                tokens: tokens.into_iter().map(token_info).collect(),
            })
        })
        .await
    }

    async fn revoke_join_token(
        &self,
        req: Request<JoinTokenRevokeRequest>,
    ) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Cluster/RevokeJoinToken", req, |p, r| async move {
            n.meta.revoke_join_token(&p, &r.id).await.map(|_| Empty {})
        })
        .await
    }

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
