//! `table …`: create, show, list, change, check and remove tables (their
//! documents go through the MongoDB listener).

use anyhow::{bail, Result};
use berth_api::v1::tables_client::TablesClient;
use berth_api::v1::{
    Entry, PathRequest, TableCdc, TableCdcAddRequest, TableCdcRemoveRequest, TableCheck,
    TableCreateRequest, TableEditRequest, TableInfo, TableListRequest,
};
use berth_client::{Client, ClientError, Transport};
use serde_json::{json, Value};

use crate::cli::{CdcCmd, TableCmd};
use crate::ctx::{abs, at_path, Ctx};
use crate::output::{
    entry_json, format_size, format_time_ns, print_fields, print_json, Align, Table,
};

/// Where `table list` looks without a DIR: the MongoDB listener's default
/// root (`--mongo-root`), whose directories are the databases.
const LIST_DIR_DEFAULT: &str = "/tables";
/// Tables asked for per `table list` call.
const LIST_PAGE_LIMIT: u32 = 1000;
/// `table list` calls, at most (a server that keeps saying "more" must not
/// keep the CLI forever).
const LIST_PAGES_MAX: usize = 10_000;

fn ace_text(ace: Option<&str>) -> String {
    match ace {
        None => "(the owner only)".into(),
        Some("") => "'' (nobody)".into(),
        Some(a) => a.to_string(),
    }
}

fn table_json(t: &TableInfo) -> Value {
    json!({
        "path": t.path,
        "entry": t.entry.as_ref().map(entry_json),
        "volume": t.volume,
        "documents": t.documents,
        "bytes": t.bytes,
        "read_ace": t.read_ace,
        "write_ace": t.write_ace,
        "admin_ace": t.admin_ace,
        "format": t.format,
        "key_format": t.key_format,
    })
}

fn print_table(t: &TableInfo) {
    let owner = t
        .entry
        .as_ref()
        .map(|e| format!("uid {} gid {}", e.uid, e.gid))
        .unwrap_or_default();
    let hidden = || "(not visible: needs the read right)".to_string();
    print_fields(&[
        ("path", t.path.clone()),
        ("volume", t.volume.clone()),
        ("owner", owner),
        (
            "documents",
            t.documents.map(|n| n.to_string()).unwrap_or_else(hidden),
        ),
        ("size", t.bytes.map(format_size).unwrap_or_else(hidden)),
        ("read ace", ace_text(t.read_ace.as_deref())),
        ("write ace", ace_text(t.write_ace.as_deref())),
        ("admin ace", ace_text(t.admin_ace.as_deref())),
        (
            "format",
            format!("settings {}, keys {}", t.format, t.key_format),
        ),
    ]);
}

pub async fn table(ctx: &Ctx, cmd: TableCmd) -> Result<()> {
    let client = ctx.client().await?;
    let mut tables = client.tables();
    match cmd {
        TableCmd::Create {
            path,
            parents,
            aces,
        } => {
            let path = abs(&path);
            let req = TableCreateRequest {
                path: path.clone(),
                parents,
                read_ace: aces.read_ace,
                write_ace: aces.write_ace,
                admin_ace: aces.admin_ace,
            };
            let t = tables
                .create(req)
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&table_json(&t));
            } else {
                println!("created table {} in volume {}", t.path, t.volume);
            }
        }
        TableCmd::Info { path } => {
            let path = abs(&path);
            let t = tables
                .info(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&table_json(&t));
            } else {
                print_table(&t);
            }
        }
        TableCmd::List { dir, recursive } => {
            let list = match &dir {
                Some(d) => list_all(&client, &abs(d), recursive).await?,
                // A cluster without MongoDB databases yet has no /tables:
                // nothing to list, not an error.
                None => match list_all(&client, LIST_DIR_DEFAULT, recursive).await {
                    Err(e) if is_code(&e, "ENOENT") => Vec::new(),
                    r => r?,
                },
            };
            if ctx.json() {
                print_json(&Value::Array(list.iter().map(entry_json).collect()));
                return Ok(());
            }
            let mut t = Table::new(&[
                ("PATH", Align::Left),
                ("UID", Align::Right),
                ("GID", Align::Right),
                ("MODIFIED", Align::Left),
            ]);
            for e in &list {
                t.row(vec![
                    e.path.clone(),
                    e.uid.to_string(),
                    e.gid.to_string(),
                    format_time_ns(e.mtime_ns),
                ]);
            }
            t.print();
        }
        TableCmd::Delete { path } => {
            let path = abs(&path);
            tables
                .delete(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?;
        }
        TableCmd::Cdc(cmd) => cdc(ctx, &mut tables, cmd).await?,
        TableCmd::Check { path } => {
            let path = abs(&path);
            let r = tables
                .check(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&check_json(&r));
            } else {
                print_check(&r);
            }
            if r.problem_count > 0 {
                bail!(
                    "table {path} is inconsistent ({} problems)",
                    r.problem_count
                );
            }
        }
        TableCmd::Edit {
            path,
            aces,
            clear_ace,
        } => {
            let path = abs(&path);
            let req = TableEditRequest {
                path: path.clone(),
                read_ace: aces.read_ace,
                write_ace: aces.write_ace,
                admin_ace: aces.admin_ace,
                clear_aces: clear_ace,
            };
            let t = tables
                .edit(req)
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&table_json(&t));
            } else {
                print_table(&t);
            }
        }
    }
    Ok(())
}

fn check_json(r: &TableCheck) -> Value {
    json!({
        "path": r.path,
        "ok": r.problem_count == 0,
        "documents": r.documents,
        "bad_documents": r.bad_documents,
        "unindexable": r.unindexable,
        "orphan_entries": r.orphan_entries,
        "indexes": r.indexes.iter().map(|i| json!({
            "id": i.id,
            "name": i.name,
            "unique": i.unique,
            "ready": i.ready,
            "entries": i.entries,
            "missing": i.missing,
            "dangling": i.dangling,
            "stale": i.stale,
            "duplicates": i.duplicates,
            "malformed": i.malformed,
        })).collect::<Vec<_>>(),
        "problem_count": r.problem_count,
        "problems": r.problems.iter().map(|p| json!({
            "kind": p.kind,
            "index": (!p.index.is_empty()).then_some(&p.index),
            "id": p.id,
            "detail": p.detail,
        })).collect::<Vec<_>>(),
    })
}

fn print_check(r: &TableCheck) {
    println!(
        "table {}: {} documents, {} indexes, {} problems",
        r.path,
        r.documents,
        r.indexes.len(),
        r.problem_count
    );
    if r.bad_documents + r.unindexable + r.orphan_entries > 0 {
        println!(
            "  {} bad documents, {} unindexable documents, {} entries of no index",
            r.bad_documents, r.unindexable, r.orphan_entries
        );
    }
    if !r.indexes.is_empty() {
        let mut t = Table::new(&[
            ("INDEX", Align::Left),
            ("ENTRIES", Align::Right),
            ("MISSING", Align::Right),
            ("DANGLING", Align::Right),
            ("STALE", Align::Right),
            ("DUPLICATE", Align::Right),
            ("MALFORMED", Align::Right),
        ]);
        for i in &r.indexes {
            let mut name = i.name.clone();
            if i.unique {
                name.push_str(" (unique)");
            }
            if !i.ready {
                name.push_str(" (building: not checked for missing entries)");
            }
            t.row(vec![
                name,
                i.entries.to_string(),
                i.missing.to_string(),
                i.dangling.to_string(),
                i.stale.to_string(),
                i.duplicates.to_string(),
                i.malformed.to_string(),
            ]);
        }
        t.print();
    }
    for p in &r.problems {
        let index = match p.index.as_str() {
            "" => String::new(),
            i => format!(" index {i}"),
        };
        println!("  {}{index} _id {}: {}", p.kind, p.id, p.detail);
    }
    if r.problem_count > r.problems.len() as u64 {
        println!(
            "  ... and {} more",
            r.problem_count - r.problems.len() as u64
        );
    }
}

fn cdc_json(c: &TableCdc) -> Value {
    json!({
        "id": c.id,
        "table": c.table,
        "stream": c.stream,
        "topic": c.topic,
        "start": c.start,
        "published": c.published,
        "owner": c.owner,
    })
}

/// `STREAM:TOPIC` (the topic after the last colon).
fn split_target(to: &str) -> Result<(String, String)> {
    match to.rsplit_once(':') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() => Ok((abs(s), t.to_string())),
        _ => bail!("--to {to:?}: STREAM:TOPIC, e.g. /apps/events:users-cdc"),
    }
}

async fn cdc(ctx: &Ctx, tables: &mut TablesClient<Transport>, cmd: CdcCmd) -> Result<()> {
    match cmd {
        CdcCmd::Add { path, to } => {
            let path = abs(&path);
            let (stream, topic) = split_target(&to)?;
            let c = tables
                .cdc_add(TableCdcAddRequest {
                    path: path.clone(),
                    stream,
                    topic,
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&cdc_json(&c));
            } else {
                println!(
                    "{} publishes its changes into {}:{} (target {})",
                    c.table, c.stream, c.topic, c.id
                );
            }
        }
        CdcCmd::List { path } => {
            let path = abs(&path);
            let list = tables
                .cdc_list(PathRequest { path: path.clone() })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?
                .into_inner();
            if ctx.json() {
                print_json(&Value::Array(list.targets.iter().map(cdc_json).collect()));
                return Ok(());
            }
            let mut t = Table::new(&[
                ("ID", Align::Right),
                ("STREAM", Align::Left),
                ("TOPIC", Align::Left),
                ("PUBLISHED", Align::Left),
                ("OWNER", Align::Left),
            ]);
            for c in &list.targets {
                t.row(vec![
                    c.id.to_string(),
                    c.stream.clone(),
                    c.topic.clone(),
                    c.published.clone(),
                    c.owner.clone(),
                ]);
            }
            t.print();
        }
        CdcCmd::Remove { path, id } => {
            let path = abs(&path);
            tables
                .cdc_remove(TableCdcRemoveRequest {
                    path: path.clone(),
                    id,
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), &path))?;
        }
    }
    Ok(())
}

/// Whether `e` is a client API error with `code`.
fn is_code(e: &anyhow::Error, code: &str) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<ClientError>().is_some_and(|c| c.is(code)))
}

/// Every table in `dir` (and below it when `recursive`), following `more`
/// page by page. Subdirectories the caller may not list are skipped, each
/// named in a warning on stderr.
async fn list_all(client: &Client, dir: &str, recursive: bool) -> Result<Vec<Entry>> {
    let mut tables = client.tables();
    let mut out = Vec::new();
    let mut start_after = String::new();
    for _ in 0..LIST_PAGES_MAX {
        let page = tables
            .list(TableListRequest {
                path: dir.to_string(),
                recursive,
                start_after: start_after.clone(),
                limit: LIST_PAGE_LIMIT,
            })
            .await
            .map_err(|s| at_path(ClientError::from_status(s), dir))?
            .into_inner();
        for d in &page.unreadable {
            eprintln!("warning: {d}: not listed (permission denied)");
        }
        out.extend(page.tables);
        if !page.more {
            return Ok(out);
        }
        // A server that says "more" but does not advance would loop forever.
        // (Depth-first order is not the order of the paths as strings, so
        // only a repeat is caught here; the page bound catches the rest.)
        if page.next_start_after.is_empty() || page.next_start_after == start_after {
            bail!("listing tables in {dir}: the server returned a page that does not advance");
        }
        start_after = page.next_start_after;
    }
    bail!("listing tables in {dir}: more than {LIST_PAGES_MAX} pages")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(ace_text(None), "(the owner only)");
        assert_eq!(ace_text(Some("")), "'' (nobody)");
        assert_eq!(ace_text(Some("u:a")), "u:a");
    }

    #[test]
    fn json_has_every_field() {
        let t = TableInfo {
            path: "/tables/db/c".into(),
            volume: "/".into(),
            documents: Some(2),
            bytes: Some(40),
            read_ace: Some("p".into()),
            format: 1,
            ..Default::default()
        };
        let v = table_json(&t);
        assert_eq!(v["path"], "/tables/db/c");
        assert_eq!(v["documents"], 2);
        assert_eq!(v["bytes"], 40);
        assert_eq!(v["read_ace"], "p");
        assert_eq!(v["write_ace"], Value::Null);
        assert_eq!(v["entry"], Value::Null);
        assert_eq!(v["format"], 1);
        let hidden = table_json(&TableInfo::default());
        assert_eq!(hidden["documents"], Value::Null);
    }

    #[test]
    fn api_codes_are_found_in_context() {
        let e = at_path(
            ClientError::Api {
                code: "ENOENT".into(),
                message: "x".into(),
            },
            "/tables",
        );
        assert!(is_code(&e, "ENOENT"));
        assert!(!is_code(&e, "EACCES"));
        assert!(!is_code(&anyhow::anyhow!("ENOENT"), "ENOENT"));
    }
}
