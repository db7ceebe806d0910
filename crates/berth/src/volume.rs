//! `volume …`: create, list, show and remove volumes.

use anyhow::Result;
use berth_api::v1::{
    Empty, PathRequest, Volume, VolumeCreateRequest, VolumeRemoveRequest, VolumeUpdateRequest,
};
use berth_client::ClientError;
use serde_json::Value;

use crate::cli::VolumeCmd;
use crate::ctx::{abs, at_path, Ctx};
use crate::output::{
    format_size, format_time_ns, print_fields, print_json, volume_json, Align, Table,
};

pub async fn volume(ctx: &Ctx, cmd: VolumeCmd) -> Result<()> {
    let client = ctx.client().await?;
    let mut vols = client.volumes();
    match cmd {
        VolumeCmd::Create {
            path,
            replication,
            quota,
            read_ace,
            write_ace,
            chunk_size,
            prefer_leader,
        } => {
            let path = abs(&path);
            let chunk_size = match chunk_size {
                None => 0,
                Some(c) => u32::try_from(c)
                    .map_err(|_| anyhow::anyhow!("chunk size {c} is too large (at most 16MiB)"))?,
            };
            let req = VolumeCreateRequest {
                path: path.clone(),
                replication: replication.unwrap_or(0),
                quota_bytes: quota.unwrap_or(0),
                read_ace,
                write_ace,
                chunk_size,
                prefer_leader: prefer_leader.unwrap_or_default(),
            };
            let v = vols
                .create(req)
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?;
            let v = v.into_inner();
            if ctx.json() {
                print_json(&volume_json(&v));
            } else {
                println!(
                    "created volume {} (id {}, replication {}, quota {})",
                    v.path,
                    v.id,
                    replication_text(&v),
                    quota_text(v.quota_bytes)
                );
            }
        }
        VolumeCmd::Set {
            path,
            replication,
            quota,
            prefer_leader,
        } => {
            let path = abs(&path);
            if replication.is_none() && quota.is_none() && prefer_leader.is_none() {
                anyhow::bail!(
                    "berth volume set: nothing to change (--replication, --quota or --prefer-leader)"
                );
            }
            let req = VolumeUpdateRequest {
                path: path.clone(),
                replication,
                quota_bytes: quota,
                prefer_leader: prefer_leader.map(|l| if l == "none" { String::new() } else { l }),
            };
            let v = vols
                .update(req)
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&volume_json(&v));
            } else {
                println!(
                    "volume {}: replication {}, quota {}, leader preference {}",
                    v.path,
                    replication_text(&v),
                    quota_text(v.quota_bytes),
                    if v.prefer_leader.is_empty() {
                        "none"
                    } else {
                        &v.prefer_leader
                    }
                );
            }
        }
        VolumeCmd::List => {
            let list = vols
                .list(Empty {})
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            if ctx.json() {
                print_json(&Value::Array(
                    list.volumes.iter().map(volume_json).collect(),
                ));
                return Ok(());
            }
            let mut t = Table::new(&[
                ("PATH", Align::Left),
                ("ID", Align::Right),
                ("REPLICATION", Align::Right),
                ("QUOTA", Align::Right),
                ("USED", Align::Right),
                ("ENTRIES", Align::Right),
                ("SHARD", Align::Right),
                ("LEADER", Align::Right),
            ]);
            for v in &list.volumes {
                t.row(vec![
                    v.path.clone(),
                    v.id.to_string(),
                    replication_text(v),
                    quota_text(v.quota_bytes),
                    format_size(v.used_bytes),
                    v.entries.to_string(),
                    v.shard_id.to_string(),
                    node_text(v.leader),
                ]);
            }
            t.print();
        }
        VolumeCmd::Info { path } => {
            let path = abs(&path);
            let v = vols
                .info(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&volume_json(&v));
                return Ok(());
            }
            print_fields(&[
                ("path", v.path.clone()),
                ("id", v.id.to_string()),
                ("replication", replication_text(&v)),
                ("quota", quota_text(v.quota_bytes)),
                (
                    "used",
                    format!("{} ({} bytes)", format_size(v.used_bytes), v.used_bytes),
                ),
                ("entries", v.entries.to_string()),
                ("read ace", ace_text(&v.read_ace)),
                ("write ace", ace_text(&v.write_ace)),
                ("shard", v.shard_id.to_string()),
                (
                    "replicas",
                    v.replicas
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                ("leader", node_text(v.leader)),
                (
                    "preferred leader",
                    if v.prefer_leader.is_empty() {
                        "anywhere".into()
                    } else {
                        format!("a node with {}", v.prefer_leader)
                    },
                ),
                ("root inode", v.root_inode.to_string()),
                ("created", format_time_ns(v.created_ns)),
            ]);
        }
        VolumeCmd::Remove { path, force } => {
            let path = abs(&path);
            vols.remove(VolumeRemoveRequest {
                path: path.clone(),
                force,
            })
            .await
            .map_err(|s| at_path(ClientError::from_status(s), &path))?;
        }
        VolumeCmd::Check { path } => {
            let path = abs(&path);
            let r = vols
                .check(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&serde_json::json!({
                    "path": r.path,
                    "inodes": r.inodes,
                    "entries": r.entries,
                    "problems": r.problems,
                }));
            } else {
                println!(
                    "volume {}: {} inodes, {} entries, {} problems",
                    r.path,
                    r.inodes,
                    r.entries,
                    r.problems.len()
                );
                for p in &r.problems {
                    println!("  {p}");
                }
            }
            if !r.problems.is_empty() {
                anyhow::bail!(
                    "volume {path} is inconsistent ({} problems)",
                    r.problems.len()
                );
            }
        }
    }
    Ok(())
}

/// `3`, or `3 (effective 1)` when the cluster has fewer nodes.
fn replication_text(v: &Volume) -> String {
    if v.effective_replication != 0 && v.effective_replication != v.replication {
        format!("{} (effective {})", v.replication, v.effective_replication)
    } else {
        v.replication.to_string()
    }
}

fn quota_text(bytes: u64) -> String {
    if bytes == 0 {
        "unlimited".into()
    } else {
        format_size(bytes)
    }
}

fn node_text(id: u64) -> String {
    if id == 0 {
        "-".into()
    } else {
        id.to_string()
    }
}

fn ace_text(ace: &str) -> String {
    if ace.is_empty() {
        "(none)".into()
    } else {
        ace.to_string()
    }
}
