//! `cp [-r] SRC... DST`: copies between the local disk and the cluster, in
//! either direction. Cluster paths are written `berth:/path` (as scp writes
//! `host:path`); everything else is a local path.
//!
//! Large files move as many 1 MiB reads or writes in flight at once, so a
//! copy keeps the cluster busy instead of waiting for one round trip at a
//! time. A progress bar (bytes, rate, ETA) shows on a terminal, never when
//! stderr is piped.

use std::io::IsTerminal;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use berth_api::v1::{
    EntryType, ListRequest, MkdirRequest, OpenRequest, PathRequest, ReadRequest, WriteRequest,
};
use berth_client::{Client, ClientError};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::ctx::{at_path, Ctx};

/// Bytes per read or write call.
const IO_BYTES: u64 = 1 << 20;
/// Calls in flight per file.
const IN_FLIGHT_MAX: usize = 8;
/// Prefix naming a cluster path.
pub const CLUSTER_PREFIX: &str = "berth:";

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Local(PathBuf),
    Cluster(String),
}

fn place(arg: &str) -> Place {
    match arg.strip_prefix(CLUSTER_PREFIX) {
        Some(p) if p.starts_with('/') => Place::Cluster(p.to_string()),
        Some(p) => Place::Cluster(format!("/{p}")),
        None => Place::Local(PathBuf::from(arg)),
    }
}

fn join_cluster(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes:10} [{bar:30}] {binary_bytes_per_sec:>12} ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

pub async fn cp(ctx: &Ctx, recursive: bool, args: &[String]) -> Result<()> {
    if args.len() < 2 {
        bail!("cp needs a source and a destination (cluster paths are written berth:/path)");
    }
    let (dst, srcs) = args.split_last().expect("two or more arguments");
    let dst = place(dst);
    let srcs: Vec<Place> = srcs.iter().map(|s| place(s)).collect();
    for s in &srcs {
        match (s, &dst) {
            (Place::Local(_), Place::Local(_)) => {
                bail!("both sides are local: name the cluster side as berth:/path")
            }
            (Place::Cluster(_), Place::Cluster(_)) => {
                bail!("copies inside the cluster are not supported yet: copy to local disk and back, or use `berth mv`")
            }
            _ => {}
        }
    }
    let client = Arc::new(ctx.client().await?);
    let bar = progress(0);
    let many = srcs.len() > 1;
    for src in srcs {
        match (src, &dst) {
            (Place::Local(src), Place::Cluster(dst)) => {
                let meta = std::fs::metadata(&src).with_context(|| format!("{}", src.display()))?;
                let into_dir = many || cluster_is_dir(&client, dst).await?;
                let name = src
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target = if into_dir {
                    join_cluster(dst, &name)
                } else {
                    dst.clone()
                };
                if meta.is_dir() {
                    if !recursive {
                        bail!("{} is a directory: use cp -r", src.display());
                    }
                    upload_tree(&client, &src, &target, &bar).await?;
                } else {
                    upload_file(&client, &src, &target, &bar).await?;
                }
            }
            (Place::Cluster(src), Place::Local(dst)) => {
                let e = stat(&client, &src).await?;
                let into_dir = many || dst.is_dir();
                let target = if into_dir {
                    dst.join(base_name(&src))
                } else {
                    dst.clone()
                };
                if e.r#type == EntryType::Directory as i32 {
                    if !recursive {
                        bail!("{src} is a directory: use cp -r");
                    }
                    download_tree(&client, &src, &target, &bar).await?;
                } else {
                    download_file(&client, &src, &target, &bar).await?;
                }
            }
            _ => unreachable!("checked above"),
        }
    }
    bar.finish_and_clear();
    Ok(())
}

async fn stat(client: &Client, path: &str) -> Result<berth_api::v1::Entry> {
    Ok(client
        .namespace()
        .stat(PathRequest {
            path: path.to_string(),
        })
        .await
        .map_err(|s| at_path(ClientError::from_status(s), path))?
        .into_inner())
}

async fn cluster_is_dir(client: &Client, path: &str) -> Result<bool> {
    match client
        .namespace()
        .stat(PathRequest {
            path: path.to_string(),
        })
        .await
    {
        Ok(e) => Ok(e.into_inner().r#type == EntryType::Directory as i32),
        Err(s) => {
            let e = ClientError::from_status(s);
            if e.is("ENOENT") {
                Ok(false)
            } else {
                Err(at_path(e, path))
            }
        }
    }
}

fn upload_tree<'a>(
    client: &'a Arc<Client>,
    src: &'a Path,
    dst: &'a str,
    bar: &'a ProgressBar,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>> {
    Box::pin(async move {
        let mode = std::fs::metadata(src)?.permissions().mode() & 0o7777;
        client
            .namespace()
            .mkdir(MkdirRequest {
                path: dst.to_string(),
                mode: Some(mode),
                parents: true,
            })
            .await
            .map_err(|s| at_path(ClientError::from_status(s), dst))?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let target = join_cluster(dst, &name);
            let ft = e.file_type()?;
            if ft.is_dir() {
                upload_tree(client, &path, &target, bar).await?;
            } else if ft.is_file() {
                upload_file(client, &path, &target, bar).await?;
            } else {
                eprintln!(
                    "skipping {}: not a regular file or directory",
                    path.display()
                );
            }
        }
        Ok(())
    })
}

async fn upload_file(client: &Arc<Client>, src: &Path, dst: &str, bar: &ProgressBar) -> Result<()> {
    let file = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let meta = file.metadata()?;
    let len = meta.len();
    bar.inc_length(len);
    bar.set_message(dst.to_string());
    let opened = client
        .files()
        .open(OpenRequest {
            path: dst.to_string(),
            read: false,
            write: true,
            create: true,
            exclusive: false,
            truncate: true,
            mode: Some(meta.permissions().mode() & 0o7777),
        })
        .await
        .map_err(|s| at_path(ClientError::from_status(s), dst))?
        .into_inner();
    let handle = opened.handle;
    let file = Arc::new(file);
    pipelined(len, bar, "write", move |at, n| {
        let (file, client, handle) = (file.clone(), client.clone(), handle.clone());
        async move {
            let mut buf = vec![0u8; n as usize];
            let buf =
                tokio::task::spawn_blocking(move || file.read_exact_at(&mut buf, at).map(|_| buf))
                    .await??;
            client
                .files()
                .write(WriteRequest {
                    handle,
                    offset: at,
                    data: buf.into(),
                })
                .await
                .map_err(ClientError::from_status)?;
            Ok(n)
        }
    })
    .await
}

/// Runs `op(offset, len)` over `[0, total)` in `IO_BYTES` pieces with up to
/// `IN_FLIGHT_MAX` in flight, advancing `bar` by what each piece moved.
async fn pipelined<F, Fut>(total: u64, bar: &ProgressBar, what: &str, op: F) -> Result<()>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<u64>> + Send + 'static,
{
    let mut tasks: JoinSet<Result<u64>> = JoinSet::new();
    let mut offset = 0u64;
    while offset < total || !tasks.is_empty() {
        while offset < total && tasks.len() < IN_FLIGHT_MAX {
            let n = IO_BYTES.min(total - offset);
            tasks.spawn(op(offset, n));
            offset += n;
        }
        if let Some(done) = tasks.join_next().await {
            bar.inc(done.with_context(|| format!("{what} task"))??);
        }
    }
    Ok(())
}

fn download_tree<'a>(
    client: &'a Arc<Client>,
    src: &'a str,
    dst: &'a Path,
    bar: &'a ProgressBar,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>> {
    Box::pin(async move {
        std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
        let mut after = String::new();
        loop {
            let page = client
                .namespace()
                .list(ListRequest {
                    path: src.to_string(),
                    start_after: after.clone(),
                    limit: 1000,
                })
                .await
                .map_err(|s| at_path(ClientError::from_status(s), src))?
                .into_inner();
            for e in &page.entries {
                after = e.name.clone();
                let target = dst.join(&e.name);
                if e.r#type == EntryType::Directory as i32 {
                    download_tree(client, &e.path, &target, bar).await?;
                } else if e.r#type == EntryType::File as i32 {
                    download_file(client, &e.path, &target, bar).await?;
                } else {
                    eprintln!("skipping {}: not a file or directory", e.path);
                }
            }
            if !page.more {
                return Ok(());
            }
        }
    })
}

async fn download_file(
    client: &Arc<Client>,
    src: &str,
    dst: &Path,
    bar: &ProgressBar,
) -> Result<()> {
    // A read-only open is safe to repeat, which the client's failover does
    // not assume of Files/Open (it may create or truncate): while a shard
    // has no leader (an election after a failure), it is tried again.
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    let opened = loop {
        let r = client
            .files()
            .open(OpenRequest {
                path: src.to_string(),
                read: true,
                ..Default::default()
            })
            .await
            .map_err(ClientError::from_status);
        match r {
            Err(ClientError::Api { code, .. })
                if code == "EAGAIN"
                    && start.elapsed()
                        < std::time::Duration::from_millis(
                            berth_client::failover::RETRY_BUDGET_MS,
                        ) =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            r => break r.map_err(|e| at_path(e, src))?.into_inner(),
        }
    };
    let entry = opened.entry.unwrap_or_default();
    let len = entry.size;
    bar.inc_length(len);
    bar.set_message(src.to_string());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dst)
        .with_context(|| format!("creating {}", dst.display()))?;
    file.set_len(len)?;
    let _ = file.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o777));
    let file = Arc::new(file);
    let handle = opened.handle;
    let writer = file.clone();
    pipelined(len, bar, "read", move |at, n| {
        let (file, client, handle) = (writer.clone(), client.clone(), handle.clone());
        async move {
            let data = client
                .files()
                .read(ReadRequest {
                    handle,
                    offset: at,
                    length: n as u32,
                })
                .await
                .map_err(ClientError::from_status)?
                .into_inner()
                .data;
            let got = data.len() as u64;
            tokio::task::spawn_blocking(move || file.write_all_at(&data, at)).await??;
            Ok(got)
        }
    })
    .await?;
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_all()).await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        assert_eq!(place("berth:/a/b"), Place::Cluster("/a/b".into()));
        assert_eq!(place("berth:a"), Place::Cluster("/a".into()));
        assert_eq!(place("./x"), Place::Local(PathBuf::from("./x")));
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(join_cluster("/", "x"), "/x");
        assert_eq!(join_cluster("/a", "x"), "/a/x");
    }
}
