//! `acl get` and `acl set`: access control expressions on one entry.

use anyhow::{bail, Result};
use berth_api::v1::{Acl, PathRequest, SetAclRequest};
use berth_client::ClientError;
use serde_json::json;

use crate::cli::AclCmd;
use crate::ctx::{abs, at_path, Ctx};
use crate::output::{print_fields, print_json};

pub async fn acl(ctx: &Ctx, cmd: AclCmd) -> Result<()> {
    let client = ctx.client().await?;
    let mut ns = client.namespace();
    match cmd {
        AclCmd::Get { path } => {
            let path = abs(&path);
            let acl = ns
                .get_acl(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?;
            print_acl(ctx, &acl.into_inner());
        }
        AclCmd::Set {
            path,
            read,
            write,
            admin,
            clear,
        } => {
            if !clear && read.is_none() && write.is_none() && admin.is_none() {
                bail!("nothing to set: pass --read, --write, --admin or --clear");
            }
            let path = abs(&path);
            let req = SetAclRequest {
                path: path.clone(),
                read_ace: read,
                write_ace: write,
                admin_ace: admin,
                clear,
            };
            let acl = ns
                .set_acl(req)
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?;
            if ctx.json() {
                print_acl(ctx, &acl.into_inner());
            }
        }
    }
    Ok(())
}

fn print_acl(ctx: &Ctx, acl: &Acl) {
    if ctx.json() {
        print_json(&json!({
            "path": acl.path,
            "read": acl.read_ace,
            "write": acl.write_ace,
            "admin": acl.admin_ace,
        }));
        return;
    }
    print_fields(&[
        ("path", acl.path.clone()),
        ("read", ace_text(acl.read_ace.as_deref())),
        ("write", ace_text(acl.write_ace.as_deref())),
        ("admin", ace_text(acl.admin_ace.as_deref())),
    ]);
}

/// Unset means the mode bits decide; the empty expression means nobody.
fn ace_text(ace: Option<&str>) -> String {
    match ace {
        None => "(unset: mode bits decide)".into(),
        Some("") => "'' (nobody)".into(),
        Some(a) => a.to_string(),
    }
}
