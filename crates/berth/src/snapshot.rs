//! `snapshot …`: take, list and remove volume snapshots.

use anyhow::Result;
use berth_api::v1::{PathRequest, Snapshot, SnapshotRequest};
use berth_client::ClientError;
use serde_json::{json, Value};

use crate::cli::SnapshotCmd;
use crate::ctx::{abs, at_path, Ctx};
use crate::output::{format_time_ns, print_json, Align, Table};

fn snapshot_json(s: &Snapshot) -> Value {
    json!({
        "volume": s.volume,
        "name": s.name,
        "id": s.id,
        "created_ns": s.created_ns,
        "path": s.path,
    })
}

pub async fn snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> Result<()> {
    let client = ctx.client().await?;
    let mut vols = client.volumes();
    match cmd {
        SnapshotCmd::Create { volume, name } => {
            let volume = abs(&volume);
            let s = vols
                .snapshot_create(SnapshotRequest {
                    volume: volume.clone(),
                    name,
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &volume))?
                .into_inner();
            if ctx.json() {
                print_json(&snapshot_json(&s));
            } else {
                println!("created snapshot {} of {} at {}", s.name, s.volume, s.path);
            }
        }
        SnapshotCmd::List { volume } => {
            let volume = abs(&volume);
            let list = vols
                .snapshot_list(PathRequest {
                    path: volume.clone(),
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &volume))?
                .into_inner();
            if ctx.json() {
                print_json(&Value::Array(
                    list.snapshots.iter().map(snapshot_json).collect(),
                ));
                return Ok(());
            }
            let mut t = Table::new(&[
                ("NAME", Align::Left),
                ("CREATED", Align::Left),
                ("PATH", Align::Left),
            ]);
            for s in &list.snapshots {
                t.row(vec![
                    s.name.clone(),
                    format_time_ns(s.created_ns),
                    s.path.clone(),
                ]);
            }
            t.print();
        }
        SnapshotCmd::Remove { volume, name } => {
            let volume = abs(&volume);
            vols.snapshot_remove(SnapshotRequest {
                volume: volume.clone(),
                name,
            })
            .await
            .map_err(|s| at_path(ClientError::from_status(s), &volume))?;
        }
    }
    Ok(())
}
