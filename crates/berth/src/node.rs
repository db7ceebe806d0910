//! `node` and `cluster`: the cluster's nodes as the placement driver sees
//! them, decommissioning, and the join tokens that admit new ones.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use berth_api::v1::{
    Empty, JoinTokenCreateRequest, JoinTokenInfo, JoinTokenRevokeRequest, NodeDetail,
    NodeIdRequest, PlacementStatus,
};
use berth_client::ClientError;
use serde_json::{json, Value};

use crate::cli::{ClusterCmd, NodeCmd, NodeTokenCmd};
use crate::ctx::Ctx;
use crate::output::{format_size, format_time_secs, print_fields, print_json, Align, Table};

/// How often `node decommission` looks at the drain's progress.
const DRAIN_POLL: Duration = Duration::from_secs(1);

fn node_json(d: &NodeDetail) -> Value {
    let n = d.node.clone().unwrap_or_default();
    json!({
        "id": n.id,
        "native_addr": n.native_addr,
        "admin_addr": n.admin_addr,
        "kafka_addr": n.kafka_addr,
        "mongo_addr": n.mongo_addr,
        "labels": n.labels,
        "state": d.health,
        "replicas": d.replicas,
        "learners": d.learners,
        "leaders": d.leaders,
        "bytes": d.bytes,
        "data_bytes": d.data_bytes,
        "last_heartbeat_ms_ago": (d.heartbeat_ago_ms >= 0).then_some(d.heartbeat_ago_ms),
    })
}

fn heartbeat_text(ms: i64) -> String {
    match ms {
        ..0 => "never".into(),
        0..1000 => format!("{ms}ms ago"),
        _ => format!("{:.1}s ago", ms as f64 / 1000.0),
    }
}

fn labels_text(n: &berth_api::v1::Node) -> String {
    let mut l: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    l.join(",")
}

fn nodes_table(st: &PlacementStatus) -> Table {
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("NATIVE", Align::Left),
        ("STATE", Align::Left),
        ("REPLICAS", Align::Right),
        ("LEADERS", Align::Right),
        ("DATA", Align::Right),
        ("STORE", Align::Right),
        ("HEARTBEAT", Align::Left),
        ("LABELS", Align::Left),
    ]);
    for d in &st.nodes {
        let n = d.node.clone().unwrap_or_default();
        t.row(vec![
            n.id.to_string(),
            n.native_addr.clone(),
            d.health.clone(),
            if d.learners > 0 {
                format!("{}+{}L", d.replicas, d.learners)
            } else {
                d.replicas.to_string()
            },
            d.leaders.to_string(),
            format_size(d.data_bytes),
            format_size(d.bytes),
            heartbeat_text(d.heartbeat_ago_ms),
            labels_text(&n),
        ]);
    }
    t
}

async fn placement(ctx: &Ctx) -> Result<PlacementStatus> {
    let client = ctx.client().await?;
    Ok(client
        .cluster()
        .placement(Empty {})
        .await
        .map_err(ClientError::from_status)?
        .into_inner())
}

fn find(st: &PlacementStatus, id: u64) -> Option<&NodeDetail> {
    st.nodes
        .iter()
        .find(|d| d.node.as_ref().is_some_and(|n| n.id == id))
}

/// `berth cluster ...`
pub async fn cluster(ctx: &Ctx, cmd: ClusterCmd) -> Result<()> {
    let ClusterCmd::Status = cmd;
    let st = placement(ctx).await?;
    if ctx.json() {
        print_json(&json!({
            "driver_node": st.driver_node,
            "down_timeout_ms": st.down_timeout_ms,
            "under_replicated": st.under_replicated,
            "joint": st.joint,
            "in_flight": st.in_flight.iter().map(|s| json!({
                "kind": s.kind, "shard": s.shard, "node": s.node,
                "from": (s.from != 0).then_some(s.from),
                "started_ms_ago": s.started_ms_ago,
            })).collect::<Vec<_>>(),
            "nodes": st.nodes.iter().map(node_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let list = |v: &[u64]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    print_fields(&[
        ("placement driver", format!("node {}", st.driver_node)),
        (
            "node down after",
            format!("{}s of silence", st.down_timeout_ms / 1000),
        ),
        ("under-replicated shards", list(&st.under_replicated)),
        ("joint shards", list(&st.joint)),
        ("steps in flight", st.in_flight.len().to_string()),
    ]);
    if !st.in_flight.is_empty() {
        println!();
        let mut t = Table::new(&[
            ("SHARD", Align::Right),
            ("STEP", Align::Left),
            ("NODE", Align::Right),
            ("FOR", Align::Left),
        ]);
        for s in &st.in_flight {
            t.row(vec![
                s.shard.to_string(),
                if s.from == 0 {
                    s.kind.clone()
                } else {
                    format!("{} (from node {})", s.kind, s.from)
                },
                if s.node == 0 {
                    "-".into()
                } else {
                    s.node.to_string()
                },
                heartbeat_text(s.started_ms_ago).replace(" ago", ""),
            ]);
        }
        t.print();
    }
    println!();
    nodes_table(&st).print();
    Ok(())
}

/// Follows a drain until the node is decommissioned, with its progress and an estimate.
async fn follow_drain(ctx: &Ctx, id: u64) -> Result<()> {
    let started = Instant::now();
    let mut first: Option<u32> = None;
    loop {
        let st = placement(ctx).await?;
        let Some(d) = find(&st, id) else {
            bail!("node {id} is gone from the cluster map");
        };
        let left = d.replicas + d.learners;
        if d.health == "decommissioned" {
            println!(
                "node {id} is decommissioned: it holds no replica (after {:.0?})",
                started.elapsed()
            );
            return Ok(());
        }
        if d.health != "draining" {
            bail!(
                "node {id} is {} now: the drain stopped (recommissioned?)",
                d.health
            );
        }
        let total = *first.get_or_insert(left.max(1));
        let moved = total.saturating_sub(left);
        let eta = if moved == 0 {
            "estimating".to_string()
        } else {
            let per = started.elapsed().as_secs_f64() / f64::from(moved);
            format!("about {:.0}s left", per * f64::from(left))
        };
        eprintln!("draining node {id}: {moved}/{total} replicas moved, {left} left, {eta}");
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

fn token_json(t: &JoinTokenInfo) -> Value {
    json!({
        "id": t.id,
        "created_by": t.created_by,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "uses_left": t.uses_left,
        "revoked": t.revoked,
    })
}

/// What a token's state is, in a word.
fn state(t: &JoinTokenInfo, now_secs: i64) -> &'static str {
    if t.revoked {
        "revoked"
    } else if t.expires_at <= now_secs {
        "expired"
    } else if t.uses_left == 0 {
        "used up"
    } else {
        "valid"
    }
}

pub async fn node(ctx: &Ctx, cmd: NodeCmd) -> Result<()> {
    let client = ctx.client().await?;
    let mut cluster = client.cluster();
    let cmd = match cmd {
        NodeCmd::Token(cmd) => cmd,
        NodeCmd::List => {
            let st = placement(ctx).await?;
            if ctx.json() {
                print_json(&Value::Array(st.nodes.iter().map(node_json).collect()));
            } else {
                nodes_table(&st).print();
            }
            return Ok(());
        }
        NodeCmd::Info { id } => {
            let st = placement(ctx).await?;
            let Some(d) = find(&st, id) else {
                bail!("ENOENT: no node {id} in the cluster map");
            };
            if ctx.json() {
                print_json(&node_json(d));
                return Ok(());
            }
            let n = d.node.clone().unwrap_or_default();
            print_fields(&[
                ("id", n.id.to_string()),
                ("state", d.health.clone()),
                ("native", n.native_addr.clone()),
                ("admin", n.admin_addr.clone()),
                ("kafka", n.kafka_addr.clone()),
                ("mongodb", n.mongo_addr.clone()),
                ("labels", labels_text(&n)),
                ("replicas", d.replicas.to_string()),
                ("learners", d.learners.to_string()),
                ("leaders", d.leaders.to_string()),
                ("data", format_size(d.data_bytes)),
                ("store", format_size(d.bytes)),
                ("last heartbeat", heartbeat_text(d.heartbeat_ago_ms)),
            ]);
            return Ok(());
        }
        NodeCmd::Decommission { id, no_wait } => {
            let d = cluster
                .decommission(NodeIdRequest { id })
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            if ctx.json() {
                print_json(&node_json(&d));
                return Ok(());
            }
            if d.health == "decommissioned" {
                println!("node {id} is already decommissioned");
                return Ok(());
            }
            println!(
                "node {id} is draining: {} replica(s) and {} learner(s) to move",
                d.replicas, d.learners
            );
            if no_wait {
                return Ok(());
            }
            return follow_drain(ctx, id).await;
        }
        NodeCmd::Recommission { id } => {
            let d = cluster
                .recommission(NodeIdRequest { id })
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            if ctx.json() {
                print_json(&node_json(&d));
            } else {
                println!("node {id} is {}", d.health);
            }
            return Ok(());
        }
        NodeCmd::Remove { id } => {
            cluster
                .remove_node(NodeIdRequest { id })
                .await
                .map_err(ClientError::from_status)?;
            if !ctx.json() {
                println!("removed node {id} from the cluster");
            }
            return Ok(());
        }
    };
    match cmd {
        NodeTokenCmd::Create { ttl, uses } => {
            let t = cluster
                .create_join_token(JoinTokenCreateRequest {
                    ttl_secs: ttl.as_secs().max(1),
                    uses,
                })
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            if ctx.json() {
                let mut v = t.info.as_ref().map(token_json).unwrap_or(json!({}));
                v["token"] = json!(t.token);
                v["ca_fingerprint"] = json!(t.ca_fingerprint);
                print_json(&v);
            } else {
                // The token alone on stdout, so `$(berth node token create)`
                // captures it; what it is goes to stderr.
                println!("{}", t.token);
                if let Some(i) = &t.info {
                    eprintln!(
                        "join token {}: admits {} node(s) until {}; cluster CA {}",
                        i.id,
                        i.uses_left,
                        format_time_secs(i.expires_at),
                        t.ca_fingerprint
                    );
                }
            }
        }
        NodeTokenCmd::List => {
            let list = cluster
                .list_join_tokens(Empty {})
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            if ctx.json() {
                print_json(&Value::Array(list.tokens.iter().map(token_json).collect()));
                return Ok(());
            }
            let now = berth_security::now_secs() as i64;
            let mut t = Table::new(&[
                ("ID", Align::Left),
                ("STATE", Align::Left),
                ("USES LEFT", Align::Right),
                ("EXPIRES", Align::Left),
                ("BY", Align::Left),
            ]);
            for i in &list.tokens {
                t.row(vec![
                    i.id.clone(),
                    state(i, now).into(),
                    i.uses_left.to_string(),
                    format_time_secs(i.expires_at),
                    i.created_by.clone(),
                ]);
            }
            t.print();
        }
        NodeTokenCmd::Revoke { id } => {
            cluster
                .revoke_join_token(JoinTokenRevokeRequest { id: id.clone() })
                .await
                .map_err(ClientError::from_status)?;
            if !ctx.json() {
                println!("revoked join token {id}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_states() {
        let t = |revoked, expires_at, uses_left| JoinTokenInfo {
            revoked,
            expires_at,
            uses_left,
            ..Default::default()
        };
        assert_eq!(state(&t(false, 100, 1), 50), "valid");
        assert_eq!(state(&t(false, 100, 1), 100), "expired");
        assert_eq!(state(&t(false, 100, 0), 50), "used up");
        assert_eq!(state(&t(true, 100, 1), 50), "revoked");
    }
}
