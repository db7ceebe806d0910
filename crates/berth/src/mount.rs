//! `berth mount MOUNTPOINT` and `berth umount MOUNTPOINT`: the FUSE client
//! (`berth-fuse`) behind two commands.
//!
//! `berth mount` returns once the file system is mounted, served by a
//! background copy of itself (started with the hidden `--daemon-child`, in
//! its own session so the terminal's signals do not reach it); with
//! `--foreground` it serves in place. Either way the serving process runs
//! until SIGTERM, SIGINT or SIGHUP, or until `berth umount`, then unmounts
//! and exits 0. The background copy reports readiness by closing its stderr:
//! what it wrote there before is the error to show.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_fuse::{MountConfig, FUSE_THREADS};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{MountArgs, UmountArgs};
use crate::ctx::Ctx;
use crate::Reported;

/// How long `berth mount` waits for its background copy to mount.
const READY_TIMEOUT_S: u64 = 60;
/// How long a failed background copy may take to exit.
const EXIT_WAIT_MS: u64 = 5_000;
/// Bytes of the background copy's stderr shown on failure.
const CHILD_STDERR_MAX_BYTES: u64 = 64 * 1024;

pub async fn mount(ctx: &Ctx, args: MountArgs) -> Result<()> {
    if !args.foreground && !args.daemon_child {
        return spawn_background(&args);
    }
    init_logging();
    let client = ctx.client().await?;
    let mut mounted = berth_fuse::mount(
        client,
        MountConfig {
            mount_point: args.mountpoint.clone(),
            path: args.path.clone(),
            read_only: args.read_only,
            allow_other: args.allow_other,
            threads: FUSE_THREADS,
        },
    )
    .await?;
    let mp = mounted.mount_point().display().to_string();
    if args.daemon_child {
        // Closing stderr tells the parent the mount is up.
        detach_stderr()?;
    } else {
        eprintln!(
            "mounted berth:{} on {mp}; Ctrl-C or `berth umount {mp}` unmounts",
            args.path
        );
    }
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    tokio::select! {
        _ = mounted.ended() => return Ok(()),
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
    mounted.unmount().await?;
    Ok(())
}

pub async fn umount(args: UmountArgs) -> Result<()> {
    let mp = args.mountpoint.clone();
    tokio::task::spawn_blocking(move || berth_fuse::unmount(&mp, args.lazy))
        .await
        .context("unmount thread")??;
    Ok(())
}

/// Warnings of the FUSE client go to stderr (filtered by `RUST_LOG`).
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Points fd 2 at /dev/null.
fn detach_stderr() -> Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    // SAFETY: both descriptors are open; dup2 atomically replaces fd 2.
    if unsafe { libc::dup2(null.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error()).context("redirecting stderr");
    }
    Ok(())
}

/// Starts `berth ... mount ... --daemon-child` in its own session and waits
/// (bounded) until it has mounted or failed.
fn spawn_background(args: &MountArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the berth binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--daemon-child")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("starting the background mount process")?;
    let stderr = child.stderr.take().context("child stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr
            .take(CHILD_STDERR_MAX_BYTES)
            .read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let text = match rx.recv_timeout(Duration::from_secs(READY_TIMEOUT_S)) {
        Ok(t) => t,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the mount did not come up in {READY_TIMEOUT_S} s; try --foreground to see why");
        }
    };
    let mp = berth_fuse::absolute(&args.mountpoint).unwrap_or_else(|_| args.mountpoint.clone());
    let deadline = Instant::now() + Duration::from_millis(EXIT_WAIT_MS);
    loop {
        if let Some(status) = child.try_wait()? {
            if !text.is_empty() {
                eprint!("{text}");
                bail!(Reported);
            }
            bail!("the background mount process exited ({status})");
        }
        if mounted(&mp) {
            println!(
                "mounted berth:{} on {} (pid {}); `berth umount {}` unmounts",
                args.path,
                mp.display(),
                child.id(),
                mp.display()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            eprint!("{text}");
            bail!("the background mount process stopped talking without mounting");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mounted(mp: &Path) -> bool {
    matches!(berth_fuse::berth_mount_at(mp), Ok(Some(_)))
}
