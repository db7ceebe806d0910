//! Namespace commands with the feel of coreutils: `ls`, `mkdir`, `rm`,
//! `stat`, `mv`, `touch`, `ln -s`, `chmod`, `chown`. Commands that take
//! several paths go on after a failure, report each one, and exit 1.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use berth_api::v1::{
    CreateRequest, Empty, Entry, EntryType, ListRequest, MkdirRequest, PathRequest, RemoveRequest,
    RenameRequest, SetAttrRequest, SymlinkRequest,
};
use berth_client::{Client, ClientError};
use serde_json::Value;

use crate::cli::{
    ChmodArgs, ChownArgs, LnArgs, LsArgs, MkdirArgs, MvArgs, PathArg, PathsArg, RmArgs,
};
use crate::ctx::{abs, at_path, Ctx};
use crate::output::{
    entry_json, format_device, format_mode, format_size, format_time_ns, is_device, print_fields,
    print_json, type_name, Align, Table,
};
use crate::Reported;

/// Entries asked for per List call.
const LIST_PAGE_LIMIT: u32 = 1000;
/// Pages followed for one directory before giving up (10 M entries).
const LIST_PAGES_MAX: usize = 10_000;

/// Runs `op` on every path; reports each failure on stderr; fails at the end
/// if any did.
async fn for_each_path<F, Fut>(paths: &[String], mut op: F) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failed = false;
    for p in paths {
        if let Err(e) = op(abs(p)).await {
            crate::report(&e);
            failed = true;
        }
    }
    if failed {
        bail!(Reported);
    }
    Ok(())
}

fn api(path: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |s| at_path(ClientError::from_status(s), path)
}

/// Every entry of a directory, following `more` page by page.
pub async fn list_all(client: &Client, path: &str) -> Result<Vec<Entry>> {
    let mut ns = client.namespace();
    let mut out = Vec::new();
    let mut start_after = String::new();
    for _ in 0..LIST_PAGES_MAX {
        let req = ListRequest {
            path: path.to_string(),
            start_after: start_after.clone(),
            limit: LIST_PAGE_LIMIT,
        };
        let page = ns.list(req).await.map_err(api(path))?.into_inner();
        let last = page.entries.last().map(|e| e.name.clone());
        out.extend(page.entries);
        match (page.more, last) {
            (false, _) => return Ok(out),
            (true, Some(name)) if name > start_after => start_after = name,
            // A server that says "more" but does not advance would loop forever.
            (true, _) => bail!("listing {path}: the server returned a page that does not advance"),
        }
    }
    bail!(
        "listing {path}: more than {} entries",
        LIST_PAGES_MAX * LIST_PAGE_LIMIT as usize
    )
}

pub async fn ls(ctx: &Ctx, args: LsArgs) -> Result<()> {
    let client = ctx.client().await?;
    let paths = if args.paths.is_empty() {
        vec!["/".to_string()]
    } else {
        args.paths
    };
    let many = paths.len() > 1;
    let mut json_entries = Vec::new();
    let mut failed = false;
    let mut first = true;
    for p in &paths {
        let path = abs(p);
        let (is_dir, entries) = match ls_one(&client, &path).await {
            Ok(x) => x,
            Err(e) => {
                crate::report(&e);
                failed = true;
                continue;
            }
        };
        if ctx.json() {
            json_entries.extend(entries.iter().map(entry_json));
            continue;
        }
        if many && is_dir {
            if !first {
                println!();
            }
            println!("{path}:");
        }
        first = false;
        print_entries(&entries, args.long, !is_dir);
    }
    if ctx.json() {
        print_json(&Value::Array(json_entries));
    }
    if failed {
        bail!(Reported);
    }
    Ok(())
}

/// A directory's entries, or the entry itself when it is not a directory.
async fn ls_one(client: &Client, path: &str) -> Result<(bool, Vec<Entry>)> {
    let entry = client
        .namespace()
        .stat(PathRequest {
            path: path.to_string(),
        })
        .await
        .map_err(api(path))?;
    let entry = entry.into_inner();
    if entry.r#type() == EntryType::Directory {
        Ok((true, list_all(client, path).await?))
    } else {
        Ok((false, vec![entry]))
    }
}

fn print_entries(entries: &[Entry], long: bool, show_path: bool) {
    let name = |e: &Entry| {
        if show_path {
            e.path.clone()
        } else {
            e.name.clone()
        }
    };
    if !long {
        for e in entries {
            println!("{}", name(e));
        }
        return;
    }
    let mut t = Table::headless(&[
        Align::Left,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Left,
        Align::Left,
    ]);
    for e in entries {
        let mut n = name(e);
        if e.r#type() == EntryType::Symlink {
            n = format!("{n} -> {}", e.symlink_target);
        }
        t.row(vec![
            format_mode(e.r#type(), e.mode),
            e.nlink.to_string(),
            e.uid.to_string(),
            e.gid.to_string(),
            // Device nodes show their device where others show a size.
            if is_device(e.r#type()) {
                format_device(e.rdev)
            } else {
                format_size(e.size)
            },
            format_time_ns(e.mtime_ns),
            n,
        ]);
    }
    t.print();
}

pub async fn mkdir(ctx: &Ctx, args: MkdirArgs) -> Result<()> {
    let client = ctx.client().await?;
    let (mode, parents) = (args.mode, args.parents);
    for_each_path(&args.paths, |path| {
        let mut ns = client.namespace();
        async move {
            let req = MkdirRequest {
                path: path.clone(),
                mode,
                parents,
            };
            ns.mkdir(req).await.map_err(api(&path))?;
            Ok(())
        }
    })
    .await
}

pub async fn rm(ctx: &Ctx, args: RmArgs) -> Result<()> {
    let client = ctx.client().await?;
    let (recursive, force) = (args.recursive, args.force);
    for_each_path(&args.paths, |path| {
        let mut ns = client.namespace();
        async move {
            if path == "/" {
                bail!("refusing to remove /");
            }
            match ns
                .remove(RemoveRequest {
                    path: path.clone(),
                    recursive,
                })
                .await
            {
                Ok(_) => Ok(()),
                Err(s) => {
                    let e = ClientError::from_status(s);
                    if force && e.is("ENOENT") {
                        Ok(())
                    } else {
                        Err(at_path(e, &path))
                    }
                }
            }
        }
    })
    .await
}

pub async fn stat(ctx: &Ctx, args: PathArg) -> Result<()> {
    let client = ctx.client().await?;
    let path = abs(&args.path);
    let e = client
        .namespace()
        .stat(PathRequest { path: path.clone() })
        .await
        .map_err(api(&path))?;
    let e = e.into_inner();
    if ctx.json() {
        print_json(&entry_json(&e));
        return Ok(());
    }
    let mut fields = vec![
        ("path", e.path.clone()),
        ("type", type_name(e.r#type()).to_string()),
        (
            "mode",
            format!("{:04o} ({})", e.mode, format_mode(e.r#type(), e.mode)),
        ),
        ("uid", e.uid.to_string()),
        ("gid", e.gid.to_string()),
        (
            "size",
            format!("{} ({} bytes)", format_size(e.size), e.size),
        ),
        ("links", e.nlink.to_string()),
        ("inode", e.inode.to_string()),
        ("volume", format!("{} (id {})", e.volume_path, e.volume_id)),
    ];
    if e.volume_root {
        fields.push(("volume root", "yes".into()));
    }
    if e.r#type() == EntryType::Symlink {
        fields.push(("target", e.symlink_target.clone()));
    }
    if is_device(e.r#type()) {
        fields.push(("device", format_device(e.rdev)));
    }
    fields.push(("access", format_time_ns(e.atime_ns)));
    fields.push(("modify", format_time_ns(e.mtime_ns)));
    fields.push(("change", format_time_ns(e.ctime_ns)));
    print_fields(&fields);
    Ok(())
}

pub async fn mv(ctx: &Ctx, args: MvArgs) -> Result<()> {
    let client = ctx.client().await?;
    let (from, to) = (abs(&args.src), abs(&args.dst));
    let req = RenameRequest {
        from: from.clone(),
        to,
        no_replace: false,
        exchange: false,
    };
    client.namespace().rename(req).await.map_err(api(&from))?;
    Ok(())
}

/// Creates a file entry, or sets the access and modification times of an
/// existing entry to now.
pub async fn touch(ctx: &Ctx, args: PathsArg) -> Result<()> {
    let client = ctx.client().await?;
    for_each_path(&args.paths, |path| {
        let mut ns = client.namespace();
        async move {
            let req = CreateRequest {
                path: path.clone(),
                r#type: EntryType::File as i32,
                mode: None,
                exclusive: true,
                rdev: 0,
            };
            match ns.create(req).await {
                Ok(_) => Ok(()),
                Err(s) => {
                    let e = ClientError::from_status(s);
                    if !e.is("EEXIST") {
                        return Err(at_path(e, &path));
                    }
                    let now = now_ns();
                    let req = SetAttrRequest {
                        path: path.clone(),
                        atime_ns: Some(now),
                        mtime_ns: Some(now),
                        times_now: true,
                        ..Default::default()
                    };
                    ns.set_attr(req).await.map_err(api(&path))?;
                    Ok(())
                }
            }
        }
    })
    .await
}

pub async fn ln(ctx: &Ctx, args: LnArgs) -> Result<()> {
    debug_assert!(args.symbolic, "clap requires -s");
    let client = ctx.client().await?;
    let path = abs(&args.path);
    let req = SymlinkRequest {
        path: path.clone(),
        target: args.target,
    };
    client.namespace().symlink(req).await.map_err(api(&path))?;
    Ok(())
}

pub async fn chmod(ctx: &Ctx, args: ChmodArgs) -> Result<()> {
    let client = ctx.client().await?;
    let mode = args.mode;
    for_each_path(&args.paths, |path| {
        let mut ns = client.namespace();
        async move {
            let req = SetAttrRequest {
                path: path.clone(),
                mode: Some(mode),
                ..Default::default()
            };
            ns.set_attr(req).await.map_err(api(&path))?;
            Ok(())
        }
    })
    .await
}

pub async fn chown(ctx: &Ctx, args: ChownArgs) -> Result<()> {
    let client = ctx.client().await?;
    let (uid, gid) = resolve_owner(&client, &args.owner).await?;
    for_each_path(&args.paths, |path| {
        let mut ns = client.namespace();
        async move {
            let req = SetAttrRequest {
                path: path.clone(),
                uid,
                gid,
                ..Default::default()
            };
            ns.set_attr(req).await.map_err(api(&path))?;
            Ok(())
        }
    })
    .await
}

/// `UID[:GID]` (also `:GID`), numbers or principal and group names.
async fn resolve_owner(client: &Client, spec: &str) -> Result<(Option<u32>, Option<u32>)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid = match user {
        "" => None,
        u => Some(match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let users = client
                    .security()
                    .user_list(Empty {})
                    .await
                    .map_err(ClientError::from_status)?;
                match users.into_inner().users.iter().find(|x| x.name == u) {
                    Some(x) => x.uid,
                    None => bail!("no such user: {u}"),
                }
            }
        }),
    };
    let gid = match group {
        None | Some("") => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = client
                    .security()
                    .group_list(Empty {})
                    .await
                    .map_err(ClientError::from_status)?;
                match groups.into_inner().groups.iter().find(|x| x.name == g) {
                    Some(x) => x.gid,
                    None => bail!("no such group: {g}"),
                }
            }
        }),
    };
    if uid.is_none() && gid.is_none() {
        bail!("bad owner {spec:?}: expected UID[:GID], e.g. 1000:1000 or alice:ops");
    }
    Ok((uid, gid))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
