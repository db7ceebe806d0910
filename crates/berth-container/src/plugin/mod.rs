//! `berth docker-plugin`: the Docker VolumeDriver protocol on a unix
//! socket (`/run/docker/plugins/berth.sock`, where Docker finds plugins by
//! name). `docker volume create -d berth -o path=/apps/x vol` defines a
//! volume; each container using it gets the cluster path through one FUSE
//! mount (a `berth mount` child) shared by every container on this host.
//! Containers of any uid may use it (`docker run --user 1000:1000`): the
//! mount lets every local uid in, the kernel checks each process's own
//! uid/gids against the mode bits, and what a process creates is its own
//! when the volume's ticket may give entries away (an administrator's).
//! A non-root container therefore needs a directory it may write, e.g.
//! after `berth chown 1000:1000 /apps/x`.
//!
//! Restarts: volume definitions live in `<state-dir>/volumes.json`; mounts
//! do not survive the plugin. On start, FUSE mounts left under the mount
//! root are detached lazily (a container still using one keeps it until it
//! stops) and nothing is counted as mounted; Docker mounts again what
//! containers it starts need. On SIGTERM/SIGINT the plugin detaches its
//! mounts the same way and exits.

mod driver;
mod http;
mod state;

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use berth_api::v1::{EntryType, MkdirRequest, PathRequest};
use berth_client::{Client, ClientError};
use tokio::net::UnixListener;

use crate::child::{is_fuse_mounted, MountChild, MountSpec};
use crate::conn::Connection;

pub use driver::{Backend, Defaults, Driver};
pub use state::Store;

/// Where Docker looks for a plugin named `berth`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/berth.sock";
/// Where volume definitions are kept.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth-plugin";

/// `berth docker-plugin`: serve Docker's volume plugin protocol.
#[derive(Debug, Clone, clap::Args)]
pub struct DockerPluginArgs {
    /// Unix socket to serve on; Docker finds the plugin by the file name
    /// (`berth.sock` → `docker volume create -d berth`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for the volume definitions (mode 0700: they may hold tickets).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Directory under which volumes are mounted [default: <state-dir>/mounts].
    #[arg(long)]
    pub mount_root: Option<PathBuf>,
}

/// Mounts made with `berth mount` children, paths created through the
/// native API.
pub struct BerthBackend;

impl Backend for BerthBackend {
    type Mount = MountChild;

    async fn ensure_dir(&self, conn: &Connection, path: &str) -> Result<(), String> {
        let cfg = conn.client_config().map_err(|e| e.to_string())?;
        let client = Client::connect(cfg).await.map_err(|e| e.to_string())?;
        client
            .namespace()
            .mkdir(MkdirRequest {
                path: path.to_string(),
                mode: None,
                parents: true,
            })
            .await
            .map_err(|s| format!("mkdir -p {path}: {}", ClientError::from_status(s)))?;
        let entry = client
            .namespace()
            .stat(PathRequest {
                path: path.to_string(),
            })
            .await
            .map_err(|s| format!("stat {path}: {}", ClientError::from_status(s)))?
            .into_inner();
        if entry.r#type != EntryType::Directory as i32 {
            return Err(format!("{path} exists and is not a directory"));
        }
        Ok(())
    }

    async fn mount(
        &self,
        conn: &Connection,
        path: &str,
        read_only: bool,
        at: &Path,
    ) -> Result<MountChild, String> {
        let mount_point = at
            .canonicalize()
            .map_err(|e| format!("{}: {e}", at.display()))?;
        let label = mount_point.display().to_string();
        MountChild::start(MountSpec {
            mount_point,
            path: path.to_string(),
            read_only,
            // Containers run as any uid: each is checked as itself.
            allow_other: true,
            env: conn.env(),
            run_as: None,
            log: Arc::new(move |line| tracing::warn!(mount = label.as_str(), "{line}")),
        })
        .await
        .map_err(|e| e.to_string())
    }

    fn is_alive(&self, m: &mut MountChild) -> bool {
        m.is_running() && is_fuse_mounted(m.mount_point())
    }

    async fn unmount(&self, m: MountChild) -> Result<(), String> {
        m.stop().await.map_err(|e| e.to_string())
    }

    fn detach(&self, m: MountChild) {
        if let Err(e) = berth_fuse::lazy_unmount(m.mount_point()) {
            tracing::warn!(mount = %m.mount_point().display(), "detaching: {e}");
        }
        // The mount process ends by itself once the last user is gone.
        drop(m);
    }
}

/// Detaches every FUSE mount left under `root` by an earlier run.
pub fn clean_stale_mounts(root: &Path) -> anyhow::Result<usize> {
    let stale = berth_fuse::fuse_mounts_under(root).context("reading /proc/self/mountinfo")?;
    for mp in &stale {
        match berth_fuse::lazy_unmount(mp) {
            Ok(()) => tracing::info!(mount = %mp.display(), "detached a stale mount"),
            Err(e) => tracing::warn!(mount = %mp.display(), "cannot detach a stale mount: {e}"),
        }
    }
    Ok(stale.len())
}

/// Binds the plugin socket (mode 0600), replacing a stale socket file but
/// never one a live process serves.
pub fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is served by another process (a plugin already running?)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Serves the protocol on `listener` until `shutdown` resolves.
pub async fn serve<B: Backend>(
    listener: UnixListener,
    driver: Arc<Driver<B>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http::router(driver))
        .with_graceful_shutdown(shutdown)
        .await
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the plugin until SIGTERM or SIGINT. Server settings default to the
/// plugin's environment: `BERTH_SERVERS`, `BERTH_CA_FILE` (or
/// `BERTH_INSECURE=1`), and `BERTH_TICKET_FILE` / `BERTH_TICKET` for volumes
/// created without a ticket of their own.
pub async fn docker_plugin(args: DockerPluginArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // A long-running server: a peer that hangs up must be an error on that
    // connection, not the death of the plugin.
    // SAFETY: SIG_IGN is a valid disposition; children get SIG_DFL back
    // from std::process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    init_logging();
    let defaults = Defaults::from_env(&|k| std::env::var(k).ok());
    let store = Store::open(&args.state_dir)?;
    let mount_root = args
        .mount_root
        .clone()
        .unwrap_or_else(|| args.state_dir.join("mounts"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&mount_root)
        .with_context(|| format!("creating the mount root {}", mount_root.display()))?;
    let mount_root = mount_root
        .canonicalize()
        .with_context(|| format!("resolving {}", mount_root.display()))?;
    clean_stale_mounts(&mount_root)?;
    let driver = Arc::new(Driver::new(
        BerthBackend,
        store,
        mount_root.clone(),
        defaults.clone(),
    )?);
    let listener = bind_socket(&args.socket)?;
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    if defaults.servers.is_empty() {
        tracing::warn!("BERTH_SERVERS is not set: every volume needs -o servers=host:port");
    }
    tracing::info!(
        socket = %args.socket.display(),
        state = %args.state_dir.display(),
        mounts = %mount_root.display(),
        "serving the Docker volume plugin"
    );
    let served = serve(listener, driver.clone(), async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
    .await;
    driver.shutdown().await;
    let _ = std::fs::remove_file(&args.socket);
    served.with_context(|| format!("serving {}", args.socket.display()))?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::driver::fake::Fake;
    use super::*;
    use crate::config::TicketSource;
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 request over the unix socket; returns status, content
    /// type and the JSON body.
    async fn call(sock: &Path, path: &str, body: &str) -> (u16, String, Value) {
        let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
             Content-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer within 10 s")
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let ctype = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
        };
        (status, ctype, json)
    }

    struct Plugin {
        dir: tempfile::TempDir,
        sock: PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
        fake: Arc<Fake>,
    }

    impl Plugin {
        async fn start() -> Plugin {
            let dir = tempfile::tempdir().unwrap();
            Self::start_in(dir).await
        }

        async fn start_in(dir: tempfile::TempDir) -> Plugin {
            let fake = Arc::new(Fake::default());
            let driver = Arc::new(
                Driver::new(
                    fake.clone(),
                    Store::open(&dir.path().join("state")).unwrap(),
                    dir.path().join("mounts"),
                    Defaults {
                        servers: vec!["s:1".into()],
                        ticket: Some(TicketSource::Text("T".into())),
                        ca_file: Some("/ca".into()),
                        insecure: false,
                    },
                )
                .unwrap(),
            );
            let sock = dir.path().join("plugins").join("berth-test.sock");
            let listener = bind_socket(&sock).unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(serve(listener, driver, async move {
                let _ = rx.await;
            }));
            Plugin {
                dir,
                sock,
                stop: Some(tx),
                task,
                fake,
            }
        }

        async fn stop(mut self) -> tempfile::TempDir {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            self.task.await.unwrap().unwrap();
            self.dir
        }
    }

    #[tokio::test]
    async fn protocol() {
        let p = Plugin::start().await;
        let s = &p.sock;
        let mode = std::fs::metadata(s).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let (status, ctype, v) = call(s, "/Plugin.Activate", "").await;
        assert_eq!(status, 200);
        assert_eq!(ctype, http::CONTENT_TYPE);
        assert_eq!(v, json!({"Implements": ["VolumeDriver"]}));

        let (_, _, v) = call(s, "/VolumeDriver.Capabilities", "null").await;
        assert_eq!(v, json!({"Capabilities": {"Scope": "global"}}));

        let (_, _, v) = call(s, "/VolumeDriver.List", "{}").await;
        assert_eq!(v, json!({"Volumes": [], "Err": ""}));

        let create = json!({"Name": "vol1", "Opts": {"path": "/apps/x", "readonly": "false"}});
        let (status, _, v) = call(s, "/VolumeDriver.Create", &create.to_string()).await;
        assert_eq!((status, v), (200, json!({"Err": ""})));
        // Docker may create again without options (docker run -v vol1:/d).
        let (_, _, v) = call(s, "/VolumeDriver.Create", r#"{"Name":"vol1","Opts":null}"#).await;
        assert_eq!(v, json!({"Err": ""}));

        let (_, _, v) = call(s, "/VolumeDriver.Get", r#"{"Name":"vol1"}"#).await;
        assert_eq!(v["Err"], "");
        assert_eq!(v["Volume"]["Name"], "vol1");
        assert_eq!(v["Volume"]["Mountpoint"], "");
        assert_eq!(v["Volume"]["Status"]["path"], "/apps/x");

        let (_, _, v) = call(s, "/VolumeDriver.List", "").await;
        assert_eq!(v["Volumes"], json!([{"Name": "vol1", "Mountpoint": ""}]));

        let (_, _, v) = call(s, "/VolumeDriver.Mount", r#"{"Name":"vol1","ID":"c1"}"#).await;
        let mp = p.dir.path().join("mounts").join("vol1");
        assert_eq!(
            v,
            json!({"Mountpoint": mp.display().to_string(), "Err": ""})
        );
        let (_, _, v) = call(s, "/VolumeDriver.Path", r#"{"Name":"vol1"}"#).await;
        assert_eq!(v["Mountpoint"], mp.display().to_string());
        let (_, _, v) = call(s, "/VolumeDriver.Remove", r#"{"Name":"vol1"}"#).await;
        assert!(v["Err"].as_str().unwrap().contains("in use"), "{v}");
        let (_, _, v) = call(s, "/VolumeDriver.Unmount", r#"{"Name":"vol1","ID":"c1"}"#).await;
        assert_eq!(v, json!({"Err": ""}));
        let (_, _, v) = call(s, "/VolumeDriver.Path", r#"{"Name":"vol1"}"#).await;
        assert_eq!(v, json!({"Mountpoint": "", "Err": ""}));

        let (_, _, v) = call(s, "/VolumeDriver.Remove", r#"{"Name":"vol1"}"#).await;
        assert_eq!(v, json!({"Err": ""}));
        let (_, _, v) = call(s, "/VolumeDriver.Get", r#"{"Name":"vol1"}"#).await;
        assert_eq!(v, json!({"Err": "no such volume: vol1"}));
        assert_eq!(
            p.fake.calls.lock().unwrap().clone(),
            vec![
                "ensure_dir /apps/x via s:1",
                "mount /apps/x ro=false",
                "unmount"
            ]
        );
        p.stop().await;
    }

    #[tokio::test]
    async fn errors_are_json_with_status_200() {
        let p = Plugin::start().await;
        let s = &p.sock;
        for (path, body, want) in [
            ("/VolumeDriver.Create", "{not json", "bad request body"),
            (
                "/VolumeDriver.Create",
                r#"{"Name":"a/b"}"#,
                "invalid volume name",
            ),
            (
                "/VolumeDriver.Create",
                r#"{"Name":"v","Opts":{"color":"red"}}"#,
                "unknown option \"color\"",
            ),
            (
                "/VolumeDriver.Create",
                r#"{"Name":"v","Opts":{"path":"x"}}"#,
                "absolute",
            ),
            (
                "/VolumeDriver.Remove",
                r#"{"Name":"nope"}"#,
                "no such volume: nope",
            ),
            (
                "/VolumeDriver.Mount",
                r#"{"Name":"nope","ID":"i"}"#,
                "no such volume",
            ),
            (
                "/VolumeDriver.Unmount",
                r#"{"Name":"nope","ID":"i"}"#,
                "no such volume",
            ),
            ("/VolumeDriver.Path", "{}", "names no volume"),
            ("/VolumeDriver.Get", r#"{"Name":""}"#, "names no volume"),
        ] {
            let (status, ctype, v) = call(s, path, body).await;
            assert_eq!(status, 200, "{path} {body}");
            assert_eq!(ctype, http::CONTENT_TYPE);
            let err = v["Err"].as_str().unwrap_or_default();
            assert!(err.contains(want), "{path} {body}: {v}");
        }
        // A failure of the cluster side reaches Docker as Err, and nothing
        // is created.
        *p.fake.fail_dirs.lock().unwrap() = Some("EACCES: scope".into());
        let (_, _, v) = call(s, "/VolumeDriver.Create", r#"{"Name":"w"}"#).await;
        assert!(v["Err"].as_str().unwrap().contains("EACCES"), "{v}");
        let (_, _, v) = call(s, "/VolumeDriver.List", "").await;
        assert_eq!(v["Volumes"], json!([]));
        // Unknown endpoints are 404 (Docker treats them as unsupported).
        let (status, _, _) = call(s, "/VolumeDriver.Nope", "{}").await;
        assert_eq!(status, 404);
        p.stop().await;
    }

    #[tokio::test]
    async fn restart_keeps_volumes_and_replaces_the_socket() {
        let p = Plugin::start().await;
        let (_, _, v) = call(&p.sock, "/VolumeDriver.Create", r#"{"Name":"keep"}"#).await;
        assert_eq!(v["Err"], "");
        let sock = p.sock.clone();
        // A second plugin on a live socket is refused.
        let e = bind_socket(&sock).unwrap_err();
        assert!(e.to_string().contains("another process"), "{e}");
        let dir = p.stop().await;
        // The socket file is left behind (as after a crash) and replaced.
        let p = Plugin::start_in(dir).await;
        let (_, _, v) = call(&p.sock, "/VolumeDriver.List", "").await;
        assert_eq!(v["Volumes"], json!([{"Name": "keep", "Mountpoint": ""}]));
        p.stop().await;
    }
}
