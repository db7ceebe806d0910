//! `berth.v1.Cluster`: status, join tokens, and the server side of the
//! join exchange (`Cluster/Join`, the one call here without a ticket).

use std::sync::Arc;
use std::time::Instant;

use berth_api::v1::cluster_server::Cluster as ClusterApi;
use berth_api::v1::*;
use berth_meta::map::{NodeRecord, NodeState, META_SHARD};
use berth_meta::{Code, Error};
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

/// A node of the cluster map as the API shows it; `me` answers, and knows
/// the nodes it heard from within the Raft peer timeout (`alive`).
pub fn node_info(x: &NodeRecord, me: u64, alive: &std::collections::BTreeSet<u64>) -> Node {
    Node {
        id: x.id,
        native_addr: x.native_addr.clone(),
        admin_addr: x.admin_addr.clone(),
        alive: x.id == me || alive.contains(&x.id),
        started_at: x.started_at as i64,
        kafka_addr: x.kafka_addr.clone(),
        labels: x.labels.clone().into_iter().collect(),
        state: x.state.as_str().to_string(),
        mongo_addr: x.mongo_addr.clone(),
    }
}

impl ClusterService {
    /// Why this node does not admit joins itself: it does not lead the meta
    /// shard. The status names the leader's native address when the map
    /// knows it (`x-berth-leader`), so the joining node retries there.
    fn not_the_leader(&self) -> Status {
        let n = &self.0;
        let map = n.meta.map();
        let leader = n
            .meta
            .router()
            .leader_of(META_SHARD)
            .filter(|l| *l != n.node_id)
            .and_then(|l| map.nodes.iter().find(|x| x.id == l))
            .map(|x| (x.id, x.native_addr.clone()));
        let e = match &leader {
            Some((id, addr)) => Error::elsewhere(
                *id,
                format!("node {id} admits joins (it leads the cluster map): retry at {addr}"),
            ),
            None if n.raft.shards().iter().any(|d| d.id == META_SHARD) => {
                Error::new(Code::Again, "the cluster map has no leader yet; retry")
            }
            None => Error::new(
                Code::Again,
                "this node holds no replica of the cluster map: join through another node",
            ),
        };
        n.status_of(&e)
    }
}

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        const METHOD: &str = "Cluster/Join";
        let n = &self.0;
        let started = Instant::now();
        let from = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        if n.raft.leader(META_SHARD) != Some(n.node_id) {
            n.metrics
                .record(METHOD, Code::Again.symbol(), started.elapsed());
            return Err(self.not_the_leader());
        }
        if let Err(e) = n.wait_ready().await {
            return n.finish(METHOD, started, Err(e));
        }
        let r = req.into_inner();
        let applicant = berth_meta::Applicant {
            csr_pem: r.csr_pem,
            advertise: r.advertise,
            native_addr: r.native_addr,
            admin_addr: r.admin_addr,
            kafka_addr: r.kafka_addr,
            labels: r.labels.into_iter().collect(),
            mongo_addr: r.mongo_addr,
        };
        // Admissions are audited where they are decided (berth-meta).
        let result = n.meta.admit_node(&r.token, &applicant).await;
        if let Err(e) = &result {
            tracing::info!(target: "audit", method = METHOD, from, reason = %e.message, "join refused");
        }
        let result = result.map(|a| JoinResponse {
            node_id: a.node.id,
            cluster_id: a.cluster.id,
            cluster_name: a.cluster.name,
            ca_cert_pem: a.ca_cert_pem,
            node_cert_pem: a.node_cert_pem,
            servers: a.nodes.iter().map(|x| x.native_addr.clone()).collect(),
            nodes: a
                .nodes
                .iter()
                .map(|x| node_info(x, n.node_id, &n.raft.alive_peers()))
                .collect(),
        });
        // A leader that lost the meta shard meanwhile: send the node on.
        match result {
            Err(e) if e.code == Code::Again && n.raft.leader(META_SHARD) != Some(n.node_id) => {
                n.metrics
                    .record(METHOD, Code::Again.symbol(), started.elapsed());
                Err(self.not_the_leader())
            }
            result => n.finish(METHOD, started, result),
        }
    }

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
                nodes: {
                    let alive = n.raft.alive_peers();
                    map.nodes
                        .iter()
                        .map(|x| node_info(x, n.node_id, &alive))
                        .collect()
                },
                shards,
                version: env!("CARGO_PKG_VERSION").into(),
            })
        })
        .await
    }

    async fn placement(&self, req: Request<Empty>) -> Result<Response<PlacementStatus>, Status> {
        let n = &self.0;
        n.call("Cluster/Placement", req, |_p, _| async move {
            n.placement.status().await
        })
        .await
    }

    async fn decommission(
        &self,
        req: Request<NodeIdRequest>,
    ) -> Result<Response<NodeDetail>, Status> {
        let n = &self.0;
        n.call("Cluster/Decommission", req, |p, r| async move {
            berth_meta::meta::require_admin(&p)?;
            let map = n.meta.map();
            let rec = node_record(&map, r.id)?;
            if rec.state == NodeState::Decommissioned {
                return node_detail(n, r.id).await;
            }
            berth_meta::pd::can_drain(&map, r.id)?;
            if rec.state != NodeState::Draining {
                n.meta.set_node_state(r.id, NodeState::Draining).await?;
                tracing::info!(target: "audit", principal = %p.name, node = r.id, "node decommission started");
            }
            node_detail(n, r.id).await
        })
        .await
    }

    async fn recommission(
        &self,
        req: Request<NodeIdRequest>,
    ) -> Result<Response<NodeDetail>, Status> {
        let n = &self.0;
        n.call("Cluster/Recommission", req, |p, r| async move {
            berth_meta::meta::require_admin(&p)?;
            let map = n.meta.map();
            let rec = node_record(&map, r.id)?;
            if matches!(rec.state, NodeState::Draining | NodeState::Decommissioned) {
                n.meta.set_node_state(r.id, NodeState::Up).await?;
                tracing::info!(target: "audit", principal = %p.name, node = r.id, "node recommissioned");
            }
            node_detail(n, r.id).await
        })
        .await
    }

    async fn remove_node(&self, req: Request<NodeIdRequest>) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Cluster/RemoveNode", req, |p, r| async move {
            berth_meta::meta::require_admin(&p)?;
            if r.id == n.node_id {
                return Err(Error::new(
                    Code::Busy,
                    "a node cannot remove itself: ask another node",
                ));
            }
            let d = n.placement.status().await?;
            let node = d
                .nodes
                .iter()
                .find(|x| x.node.as_ref().is_some_and(|m| m.id == r.id))
                .ok_or_else(|| Error::not_found(format!("node {}", r.id)))?;
            let empty = node.replicas == 0 && node.learners == 0;
            let dead = node.health == "down";
            let listed = n.meta.map().shards.iter().any(|s| s.replicas.contains(&r.id));
            if !(dead || empty && !listed) {
                return Err(Error::new(
                    Code::Busy,
                    format!(
                        "node {} still holds {} replica(s) and {} learner(s) and is {}: \
                         decommission it first (berth node decommission {}), or remove it once \
                         it is down",
                        r.id, node.replicas, node.learners, node.health, r.id
                    ),
                ));
            }
            n.meta.remove_node(r.id).await?;
            tracing::info!(target: "audit", principal = %p.name, node = r.id, "node removed from the cluster");
            Ok(Empty {})
        })
        .await
    }
}

/// The cluster map's record of node `id`.
fn node_record(map: &berth_meta::MapCache, id: u64) -> Result<&NodeRecord, Error> {
    map.nodes
        .iter()
        .find(|x| x.id == id)
        .ok_or_else(|| Error::not_found(format!("node {id}")))
}

/// One node as the placement driver sees it.
async fn node_detail(n: &Native, id: u64) -> Result<NodeDetail, Error> {
    let st = n.placement.status().await?;
    st.nodes
        .into_iter()
        .find(|x| x.node.as_ref().is_some_and(|m| m.id == id))
        .ok_or_else(|| Error::not_found(format!("node {id}")))
}
