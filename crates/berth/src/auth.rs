//! `login`, `whoami` and `ticket …`: getting, showing and minting tickets.
//! A ticket is printed only into a 0600 file, never to the terminal.

use anyhow::{Context, Result};
use berth_api::v1::{Empty, IssueTicketRequest, LoginRequest, SigningKeyList};
use berth_client::ClientError;
use serde_json::{json, Value};

use crate::cli::{LoginArgs, TicketCmd};
use crate::ctx::{default_ticket_path, read_password, write_secret_file, Ctx};
use crate::output::{format_time_secs, print_fields, print_json, Align, Table};

pub async fn login(ctx: &Ctx, args: LoginArgs) -> Result<()> {
    let user = match args.user {
        Some(u) => u,
        None => std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .context("no user: pass --user NAME")?,
    };
    let out = match args.out {
        Some(p) => p,
        None => default_ticket_path()?,
    };
    let password = read_password(args.password_stdin, true, false)?;
    let client = ctx.client_without_ticket().await?;
    let resp = client
        .security()
        .login(LoginRequest {
            user,
            password,
            ttl_secs: args.ttl.as_secs(),
        })
        .await
        .map_err(ClientError::from_status)?
        .into_inner();
    write_secret_file(&out, &resp.ticket)?;
    if ctx.json() {
        print_json(&json!({
            "principal": resp.principal,
            "expires_at": resp.expires_at,
            "expires": format_time_secs(resp.expires_at),
            "file": out.display().to_string(),
        }));
    } else {
        println!(
            "logged in as {}; ticket written to {} (expires {})",
            resp.principal,
            out.display(),
            format_time_secs(resp.expires_at)
        );
    }
    Ok(())
}

pub async fn whoami(ctx: &Ctx) -> Result<()> {
    let client = ctx.client().await?;
    let w = client
        .security()
        .who_am_i(Empty {})
        .await
        .map_err(ClientError::from_status)?
        .into_inner();
    if ctx.json() {
        print_json(&json!({
            "principal": w.principal,
            "kind": w.kind,
            "uid": w.uid,
            "gids": w.gids,
            "groups": w.groups,
            "scope": w.scope,
            "expires_at": w.expires_at,
            "expires": format_time_secs(w.expires_at),
            "cluster": w.cluster,
        }));
        return Ok(());
    }
    let scope = if w.scope.is_empty() {
        "(whole namespace)".to_string()
    } else {
        w.scope.join(", ")
    };
    print_fields(&[
        ("principal", w.principal),
        ("kind", w.kind),
        ("uid", w.uid.to_string()),
        ("gids", join(&w.gids)),
        ("groups", w.groups.join(", ")),
        ("scope", scope),
        ("expires", format_time_secs(w.expires_at)),
        ("cluster", w.cluster),
    ]);
    Ok(())
}

pub async fn ticket(ctx: &Ctx, cmd: TicketCmd) -> Result<()> {
    match cmd {
        TicketCmd::Issue {
            principal,
            scope,
            ttl,
            out,
        } => {
            let client = ctx.client().await?;
            let resp = client
                .security()
                .issue_ticket(IssueTicketRequest {
                    principal,
                    scope,
                    ttl_secs: ttl.as_secs(),
                })
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            write_secret_file(&out, &resp.ticket)?;
            if ctx.json() {
                print_json(&json!({
                    "principal": resp.principal,
                    "expires_at": resp.expires_at,
                    "expires": format_time_secs(resp.expires_at),
                    "file": out.display().to_string(),
                }));
            } else {
                println!(
                    "ticket for {} written to {} (expires {})",
                    resp.principal,
                    out.display(),
                    format_time_secs(resp.expires_at)
                );
            }
        }
        TicketCmd::Print { file } => print_ticket(ctx, &file)?,
        TicketCmd::RotateKey => {
            let client = ctx.client().await?;
            let keys = client
                .security()
                .key_rotate(Empty {})
                .await
                .map_err(ClientError::from_status)?;
            print_keys(ctx, &keys.into_inner());
        }
        TicketCmd::Keys => {
            let client = ctx.client().await?;
            let keys = client
                .security()
                .key_list(Empty {})
                .await
                .map_err(ClientError::from_status)?;
            print_keys(ctx, &keys.into_inner());
        }
    }
    Ok(())
}

/// Decodes a ticket file without verifying its signature: this shows what a
/// ticket claims, not that it is valid.
fn print_ticket(ctx: &Ctx, file: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let text = text.lines().next().unwrap_or("").trim();
    let b = berth_security::ticket::decode_unverified(text)
        .map_err(|e| anyhow::anyhow!("{} is not a Berth ticket: {e}", file.display()))?;
    let secs = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
    let now = berth_security::now_secs();
    let expired = b.expires_at <= now;
    let scope = b.scope.as_ref().map(|s| s.to_string());
    if ctx.json() {
        print_json(&json!({
            "version": b.version,
            "key_id": b.key_id,
            "cluster": b.cluster,
            "principal": b.principal,
            "kind": b.kind.to_string(),
            "uid": b.uid,
            "gids": b.gids,
            "groups": b.groups,
            "issued_at": b.issued_at,
            "issued": format_time_secs(secs(b.issued_at)),
            "expires_at": b.expires_at,
            "expires": format_time_secs(secs(b.expires_at)),
            "expired": expired,
            "scope": scope,
            "verified": false,
        }));
        return Ok(());
    }
    let mut expires = format_time_secs(secs(b.expires_at));
    if expired {
        expires.push_str(" (expired)");
    }
    print_fields(&[
        ("principal", b.principal.clone()),
        ("kind", b.kind.to_string()),
        ("cluster", b.cluster.clone()),
        ("uid", b.uid.to_string()),
        ("gids", join(&b.gids)),
        ("groups", b.groups.join(", ")),
        ("issued", format_time_secs(secs(b.issued_at))),
        ("expires", expires),
        ("scope", scope.unwrap_or_else(|| "(whole namespace)".into())),
        (
            "format",
            format!("version {}, signing key {}", b.version, b.key_id),
        ),
        ("signature", "not verified (decoded locally)".into()),
    ]);
    Ok(())
}

fn print_keys(ctx: &Ctx, list: &SigningKeyList) {
    if ctx.json() {
        let keys: Vec<Value> = list
            .keys
            .iter()
            .map(|k| {
                json!({
                    "id": k.id,
                    "active": k.active,
                    "created_at": k.created_at,
                    "created": format_time_secs(k.created_at),
                    "retire_after": k.retire_after,
                })
            })
            .collect();
        print_json(&json!(keys));
        return;
    }
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("ACTIVE", Align::Left),
        ("CREATED", Align::Left),
        ("RETIRE AFTER", Align::Left),
    ]);
    for k in &list.keys {
        t.row(vec![
            k.id.to_string(),
            if k.active { "yes".into() } else { "no".into() },
            format_time_secs(k.created_at),
            format_time_secs(k.retire_after),
        ]);
    }
    t.print();
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
