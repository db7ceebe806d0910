//! The FUSE mount as a child process: this same binary, run as `berth mount
//! MOUNTPOINT --path P --foreground [--read-only] [--allow-other]` with the
//! connection settings in its environment. Started and awaited (bounded)
//! until the kernel lists a FUSE file system at the mount point; stopped
//! with SIGTERM (the child unmounts cleanly), then SIGKILL and a lazy
//! unmount if it does not end in time.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a mount may take to appear.
pub const MOUNT_WAIT_MS: u64 = 30_000;
/// How long a stopped mount process may take to unmount and exit (it waits
/// up to 10 s itself for the FUSE session to end).
pub const STOP_WAIT_MS: u64 = 15_000;
/// Interval between checks while waiting.
const POLL_MS: u64 = 50;
/// Bytes of the child's stderr kept for an error message.
const CAPTURE_MAX_BYTES: usize = 4096;
/// Longest stderr line forwarded, in bytes (longer lines are cut).
const LINE_MAX_BYTES: usize = 4096;
/// `PATH` for the child when the parent has none (fusermount3 is looked up
/// through it).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A non-root identity to run a child as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary gid included).
    pub groups: Vec<u32>,
}

/// Drops to `id`: setgroups, setgid, setuid, in that order, then checks
/// that root cannot be regained. Runs between fork and exec, so it only
/// makes system calls (async-signal-safe) and allocates nothing.
pub fn drop_privileges(id: &Identity) -> std::io::Result<()> {
    let groups: &[libc::gid_t] = &id.groups;
    // SAFETY: plain system calls; `groups` outlives the call.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setgid(id.gid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setuid(id.uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if id.uid != 0 && (libc::setuid(0) == 0 || libc::geteuid() == 0) {
            return Err(std::io::Error::other("could not drop root privileges"));
        }
    }
    Ok(())
}

/// What to mount where, and how the child reaches the cluster.
pub struct MountSpec {
    /// Absolute, canonical, existing directory.
    pub mount_point: PathBuf,
    /// Cluster path shown at the mount point.
    pub path: String,
    pub read_only: bool,
    /// Let every local uid in (`berth mount --allow-other`): the kernel then
    /// checks each process's own uid/gids against the mode bits, and what a
    /// process creates is its own. For mounts shared by processes of
    /// several uids (Docker volumes); with it off only the mounting uid and
    /// root get in.
    pub allow_other: bool,
    /// Connection settings (`BERTH_SERVERS`, `BERTH_TICKET_FILE` or
    /// `BERTH_TICKET`, `BERTH_CA_FILE` or `BERTH_INSECURE`); the child gets
    /// these and `PATH`/`RUST_LOG`, nothing else of ours.
    pub env: Vec<(String, OsString)>,
    /// Run the mount process as this identity (root when `None`).
    pub run_as: Option<Identity>,
    /// Receives each line the child writes to stderr once it is mounted.
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
}

/// A mount that failed to start or stop.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{} is already mounted (FUSE): unmount it first", .0.display())]
    AlreadyMounted(PathBuf),
    #[error("cannot start the mount process ({exe}): {source}")]
    Spawn {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {path} at {}: {detail}", mount_point.display())]
    Failed {
        path: String,
        mount_point: PathBuf,
        detail: String,
    },
    #[error(
        "mounting {path} at {}: no FUSE mount after {} s{detail}",
        mount_point.display(),
        MOUNT_WAIT_MS / 1000
    )]
    Timeout {
        path: String,
        mount_point: PathBuf,
        detail: String,
    },
    #[error("unmounting {}: {detail}", mount_point.display())]
    Unmount {
        mount_point: PathBuf,
        detail: String,
    },
}

#[derive(Default)]
struct Stderr {
    /// Once mounted, lines go to the log instead of `captured`.
    forwarding: bool,
    captured: String,
}

/// A running `berth mount --foreground`.
pub struct MountChild {
    child: Child,
    mount_point: PathBuf,
    path: String,
    stderr: Arc<Mutex<Stderr>>,
    /// Set when the process has been reaped (here or by a caller's reaper).
    exited: Option<Option<ExitStatus>>,
}

impl MountChild {
    /// Starts the mount process and waits (at most [`MOUNT_WAIT_MS`]) until
    /// the mount point is a FUSE mount.
    pub async fn start(spec: MountSpec) -> Result<MountChild, MountError> {
        if is_fuse_mounted(&spec.mount_point) {
            return Err(MountError::AlreadyMounted(spec.mount_point));
        }
        let exe = std::env::current_exe().map_err(|e| MountError::Spawn {
            exe: "berth".into(),
            source: e,
        })?;
        let mut cmd = Command::new(&exe);
        cmd.arg("mount")
            .arg(&spec.mount_point)
            .arg("--path")
            .arg(&spec.path)
            .arg("--foreground");
        if spec.read_only {
            cmd.arg("--read-only");
        }
        if spec.allow_other {
            cmd.arg("--allow-other");
        }
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            )
            .envs(
                ["RUST_LOG", "FUSERMOUNT_PATH"]
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_os_str())))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let run_as = spec.run_as.clone();
        // SAFETY: the closure only makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session: a terminal's Ctrl-C must not unmount
                // under the application.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                match &run_as {
                    Some(id) => drop_privileges(id),
                    None => Ok(()),
                }
            });
        }
        let mut child = cmd.spawn().map_err(|e| MountError::Spawn {
            exe: exe.display().to_string(),
            source: e,
        })?;
        let stderr = Arc::new(Mutex::new(Stderr::default()));
        if let Some(pipe) = child.stderr.take() {
            let (state, log) = (stderr.clone(), spec.log.clone());
            let _ = std::thread::Builder::new()
                .name("berth-mount-stderr".into())
                .spawn(move || pump_stderr(pipe, &state, &*log));
        }
        let mut me = MountChild {
            child,
            mount_point: spec.mount_point,
            path: spec.path,
            stderr,
            exited: None,
        };
        let deadline = Instant::now() + Duration::from_millis(MOUNT_WAIT_MS);
        loop {
            if let Some(status) = me.poll_exit() {
                // Give the stderr reader a moment to collect the last words.
                tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
                let text = me.captured();
                let detail = if text.is_empty() {
                    format!("the mount process exited ({})", describe(status))
                } else {
                    text
                };
                return Err(MountError::Failed {
                    path: me.path,
                    mount_point: me.mount_point,
                    detail,
                });
            }
            if is_fuse_mounted(&me.mount_point) {
                me.stderr
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forwarding = true;
                return Ok(me);
            }
            if Instant::now() > deadline {
                let text = me.captured();
                me.kill_and_detach().await;
                return Err(MountError::Timeout {
                    path: me.path.clone(),
                    mount_point: me.mount_point.clone(),
                    detail: if text.is_empty() {
                        String::new()
                    } else {
                        format!(": {text}")
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Records that a reaper elsewhere (the entrypoint's, as PID 1) has
    /// collected this process, so it is neither signalled nor waited for.
    pub fn reaped(&mut self, status: Option<ExitStatus>) {
        self.exited = Some(status);
    }

    /// True while the mount process runs.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// `Some` once the process has exited (status unknown when reaped
    /// elsewhere).
    fn poll_exit(&mut self) -> Option<Option<ExitStatus>> {
        if self.exited.is_none() {
            match self.child.try_wait() {
                Ok(Some(s)) => self.exited = Some(Some(s)),
                Ok(None) => {}
                // ECHILD: someone else reaped it.
                Err(_) => self.exited = Some(None),
            }
        }
        self.exited
    }

    fn captured(&self) -> String {
        let s = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        s.captured.trim().to_string()
    }

    fn signal(&mut self, sig: libc::c_int) {
        if self.poll_exit().is_none() {
            let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
                return;
            };
            // SAFETY: the pid is our unreaped child, so it cannot have been
            // reused.
            unsafe { libc::kill(pid, sig) };
        }
    }

    async fn wait_exit(&mut self, within_ms: u64) -> bool {
        let deadline = Instant::now() + Duration::from_millis(within_ms);
        loop {
            if self.poll_exit().is_some() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    async fn kill_and_detach(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(STOP_WAIT_MS).await;
        if is_fuse_mounted(&self.mount_point) {
            let _ = berth_fuse::lazy_unmount(&self.mount_point);
        }
    }

    /// Unmounts: SIGTERM, wait up to [`STOP_WAIT_MS`], then SIGKILL and a
    /// lazy unmount. Whatever happens, nothing stays mounted here.
    pub async fn stop(mut self) -> Result<(), MountError> {
        self.signal(libc::SIGTERM);
        let clean = self.wait_exit(STOP_WAIT_MS).await;
        if !clean {
            self.kill_and_detach().await;
        }
        let still = is_fuse_mounted(&self.mount_point);
        if still {
            berth_fuse::lazy_unmount(&self.mount_point).map_err(|e| MountError::Unmount {
                mount_point: self.mount_point.clone(),
                detail: e.to_string(),
            })?;
        }
        match self.exited {
            _ if !clean => Err(MountError::Unmount {
                mount_point: self.mount_point,
                detail: format!(
                    "the mount process did not exit within {} s of SIGTERM; killed it and \
                     detached the mount",
                    STOP_WAIT_MS / 1000
                ),
            }),
            Some(Some(s)) if !s.success() => Err(MountError::Unmount {
                mount_point: self.mount_point,
                detail: format!("the mount process exited ({})", describe(Some(s))),
            }),
            _ => Ok(()),
        }
    }
}

/// True when the top-most mount at `mount_point` (absolute, canonical) is a
/// FUSE file system; false also when the mount table cannot be read.
pub fn is_fuse_mounted(mount_point: &Path) -> bool {
    matches!(berth_fuse::fuse_mount_at(mount_point), Ok(Some(_)))
}

/// `exit status 3`, `killed by signal 9`, or `unknown status`.
pub fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        None => "unknown status".into(),
    }
}

/// Reads the child's stderr line by line: kept for an error message until
/// the mount is up, forwarded to `log` after. The banner of a foreground
/// mount (`mounted berth:...`) is dropped; `error: ` prefixes are removed
/// from what is kept, since the caller words the error.
fn pump_stderr(pipe: impl Read, state: &Mutex<Stderr>, log: &(dyn Fn(&str) + Send + Sync)) {
    let mut r = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r
            .by_ref()
            .take(LINE_MAX_BYTES as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if line.is_empty() || line.starts_with("mounted berth:") {
            continue;
        }
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if s.forwarding {
            drop(s);
            log(line);
        } else if s.captured.len() < CAPTURE_MAX_BYTES {
            if !s.captured.is_empty() {
                s.captured.push_str("; ");
            }
            let line = line.strip_prefix("error: ").unwrap_or(line);
            let room = CAPTURE_MAX_BYTES - s.captured.len();
            let mut cut = line.len().min(room);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            s.captured.push_str(&line[..cut]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_captured_then_forwarded() {
        let state = Mutex::new(Stderr::default());
        let seen = Mutex::new(Vec::<String>::new());
        let log = |l: &str| seen.lock().unwrap().push(l.to_string());
        pump_stderr(
            &b"error: cannot mount /b: EPERM\nmounted berth:/ on /b; Ctrl-C\nsecond\n"[..],
            &state,
            &log,
        );
        assert_eq!(
            state.lock().unwrap().captured,
            "cannot mount /b: EPERM; second"
        );
        assert!(seen.lock().unwrap().is_empty());

        state.lock().unwrap().forwarding = true;
        pump_stderr(&b"warn: slow server\n"[..], &state, &log);
        assert_eq!(*seen.lock().unwrap(), vec!["warn: slow server"]);
    }

    #[test]
    fn exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe(Some(ExitStatus::from_raw(3 << 8))),
            "exit status 3"
        );
        assert_eq!(
            describe(Some(ExitStatus::from_raw(9))),
            "killed by signal 9"
        );
        assert_eq!(describe(None), "unknown status");
    }
}
