//! `status`: the cluster map as one node sees it.

use anyhow::Result;
use berth_api::v1::{ClusterStatus, Empty};
use berth_client::ClientError;
use serde_json::{json, Value};

use crate::ctx::Ctx;
use crate::output::{format_time_secs, print_json, Align, Table};

pub async fn status(ctx: &Ctx) -> Result<()> {
    let client = ctx.client().await?;
    let s = client
        .cluster()
        .status(Empty {})
        .await
        .map_err(ClientError::from_status)?
        .into_inner();
    if ctx.json() {
        print_json(&status_json(&s));
        return Ok(());
    }
    println!(
        "cluster {} (version {}), answered by node {} at {}",
        s.cluster,
        s.version,
        s.node_id,
        client.server()
    );
    println!();
    let mut nodes = Table::new(&[
        ("NODE", Align::Right),
        ("NATIVE", Align::Left),
        ("ADMIN", Align::Left),
        ("ALIVE", Align::Left),
        ("STARTED", Align::Left),
        ("STATE", Align::Left),
        ("LABELS", Align::Left),
    ]);
    for n in &s.nodes {
        let mut labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        nodes.row(vec![
            n.id.to_string(),
            n.native_addr.clone(),
            n.admin_addr.clone(),
            if n.alive { "yes".into() } else { "NO".into() },
            format_time_secs(n.started_at),
            if n.state.is_empty() {
                "-".into()
            } else {
                n.state.clone()
            },
            labels.join(","),
        ]);
    }
    nodes.print();
    println!();
    let mut shards = Table::new(&[
        ("SHARD", Align::Right),
        ("VOLUME", Align::Right),
        ("REPLICAS", Align::Left),
        ("LEADER", Align::Right),
        ("TERM", Align::Right),
        ("COMMIT", Align::Right),
        ("APPLIED", Align::Right),
        ("ROLE", Align::Left),
        ("STATE", Align::Left),
    ]);
    for sh in &s.shards {
        shards.row(vec![
            sh.id.to_string(),
            if sh.volume_id == 0 {
                "meta".into()
            } else {
                sh.volume_id.to_string()
            },
            sh.replicas
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            if sh.leader == 0 {
                "-".into()
            } else {
                sh.leader.to_string()
            },
            sh.term.to_string(),
            sh.commit_index.to_string(),
            sh.applied_index.to_string(),
            sh.role.clone(),
            if sh.hibernating {
                "hibernating".into()
            } else {
                "active".into()
            },
        ]);
    }
    shards.print();
    Ok(())
}

fn status_json(s: &ClusterStatus) -> Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    json!({
        "cluster": s.cluster,
        "node_id": s.node_id,
        "version": s.version,
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id,
            "native_addr": n.native_addr,
            "admin_addr": n.admin_addr,
            "alive": n.alive,
            "started_at": n.started_at,
            "kafka_addr": n.kafka_addr,
            "mongo_addr": n.mongo_addr,
            "labels": n.labels,
            "state": n.state,
        })).collect::<Vec<_>>(),
        "shards": s.shards.iter().map(|sh| json!({
            "id": sh.id,
            "volume_id": sh.volume_id,
            "start": hex(&sh.start),
            "end": hex(&sh.end),
            "replicas": sh.replicas,
            "leader": sh.leader,
            "term": sh.term,
            "commit_index": sh.commit_index,
            "applied_index": sh.applied_index,
            "role": sh.role,
            "hibernating": sh.hibernating,
        })).collect::<Vec<_>>(),
    })
}
