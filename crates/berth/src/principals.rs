//! `user …` and `group …`: the principal registry.

use anyhow::{bail, Result};
use berth_api::v1::{
    Empty, Group, GroupAddRequest, GroupMemberRequest, NameRequest, User, UserAddRequest,
    UserPasswordRequest,
};
use berth_client::ClientError;
use serde_json::{json, Value};

use crate::cli::{GroupCmd, UserCmd};
use crate::ctx::{read_password, Ctx};
use crate::output::{print_json, Align, Table};

pub async fn user(ctx: &Ctx, cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add {
            name,
            password_stdin,
            password,
            uid,
            groups,
            service,
        } => {
            let password = if service {
                if password.is_some() || password_stdin {
                    bail!("a service principal has no password: it gets tickets from `berth ticket issue`");
                }
                String::new()
            } else if let Some(p) = password {
                p
            } else {
                read_password(password_stdin, false, true)?
            };
            let client = ctx.client().await?;
            let req = UserAddRequest {
                name,
                password,
                uid,
                groups,
                service,
            };
            let u = client
                .security()
                .user_add(req)
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            if ctx.json() {
                print_json(&user_json(&u));
            } else {
                println!("added {} {} (uid {})", u.kind, u.name, u.uid);
            }
        }
        UserCmd::List => {
            let client = ctx.client().await?;
            let users = client
                .security()
                .user_list(Empty {})
                .await
                .map_err(ClientError::from_status)?;
            let users = users.into_inner().users;
            if ctx.json() {
                print_json(&Value::Array(users.iter().map(user_json).collect()));
            } else {
                let mut t = Table::new(&[
                    ("NAME", Align::Left),
                    ("UID", Align::Right),
                    ("KIND", Align::Left),
                    ("GROUPS", Align::Left),
                ]);
                for u in &users {
                    t.row(vec![
                        u.name.clone(),
                        u.uid.to_string(),
                        u.kind.clone(),
                        u.groups.join(","),
                    ]);
                }
                t.print();
            }
        }
        UserCmd::Remove { name } => {
            let client = ctx.client().await?;
            client
                .security()
                .user_remove(NameRequest { name })
                .await
                .map_err(ClientError::from_status)?;
        }
        UserCmd::Passwd {
            name,
            password_stdin,
        } => {
            let password = read_password(password_stdin, false, true)?;
            let client = ctx.client().await?;
            client
                .security()
                .user_password(UserPasswordRequest { name, password })
                .await
                .map_err(ClientError::from_status)?;
        }
    }
    Ok(())
}

pub async fn group(ctx: &Ctx, cmd: GroupCmd) -> Result<()> {
    let client = ctx.client().await?;
    let mut sec = client.security();
    let changed = match cmd {
        GroupCmd::Add { name, gid } => Some(
            sec.group_add(GroupAddRequest { name, gid })
                .await
                .map_err(ClientError::from_status)?,
        ),
        GroupCmd::List => {
            let groups = sec
                .group_list(Empty {})
                .await
                .map_err(ClientError::from_status)?;
            let groups = groups.into_inner().groups;
            if ctx.json() {
                print_json(&Value::Array(groups.iter().map(group_json).collect()));
            } else {
                let mut t = Table::new(&[
                    ("NAME", Align::Left),
                    ("GID", Align::Right),
                    ("MEMBERS", Align::Left),
                ]);
                for g in &groups {
                    t.row(vec![g.name.clone(), g.gid.to_string(), g.members.join(",")]);
                }
                t.print();
            }
            None
        }
        GroupCmd::Remove { name } => {
            sec.group_remove(NameRequest { name })
                .await
                .map_err(ClientError::from_status)?;
            None
        }
        GroupCmd::AddMember { group, user } => Some(
            sec.group_add_member(GroupMemberRequest { group, user })
                .await
                .map_err(ClientError::from_status)?,
        ),
        GroupCmd::RemoveMember { group, user } => Some(
            sec.group_remove_member(GroupMemberRequest { group, user })
                .await
                .map_err(ClientError::from_status)?,
        ),
    };
    if let Some(g) = changed {
        let g = g.into_inner();
        if ctx.json() {
            print_json(&group_json(&g));
        } else {
            println!("group {} (gid {}): {}", g.name, g.gid, members_text(&g));
        }
    }
    Ok(())
}

fn members_text(g: &Group) -> String {
    if g.members.is_empty() {
        "no members".into()
    } else {
        format!("members {}", g.members.join(", "))
    }
}

fn user_json(u: &User) -> Value {
    json!({ "name": u.name, "uid": u.uid, "kind": u.kind, "groups": u.groups })
}

fn group_json(g: &Group) -> Value {
    json!({ "name": g.name, "gid": g.gid, "members": g.members })
}
