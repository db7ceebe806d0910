//! `berth container-run -- CMD...`: the entrypoint of the `berth-client`
//! image. Reads the settings from the environment, verifies the ticket and
//! the server certificate (Security/WhoAmI), mounts the cluster path with a
//! `berth mount` child running as the application's uid, runs CMD as that
//! non-root uid in its own process group (owning the terminal, if any),
//! forwards signals to it, reaps every orphan (it is PID 1), exits with
//! CMD's status and unmounts. CMD also gets the Kafka connection settings
//! (`kafka`: environment variables and a properties file) and MongoDB's
//! (`mongo`: `MONGODB_URI`).
//!
//! Exit codes: CMD's own (128+N when killed by signal N); 2 for
//! configuration errors (one `error:` line naming the variable); 1 when the
//! cluster cannot be reached or the mount fails; 126/127 when CMD cannot be
//! run / is not found.

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use berth_api::v1::{Empty, EntryType, PathRequest, WhoAmIResponse};
use berth_client::{Client, ClientConfig, ClientError, Overrides};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::child::{self, Identity, MountChild, MountSpec};
use crate::config::{self, ConfigError, Current, RunConfig, TicketSource};
use crate::conn::Connection;
use crate::kafka::{self, KafkaSettings};
use crate::mongo::{self, MongoSettings};

/// Where the entrypoint puts the application's copy of the ticket and CA.
pub const DEFAULT_RUN_DIR: &str = "/run/berth";
/// Attempts to reach the cluster before giving up (servers may still be
/// starting when the container starts).
const CONNECT_ATTEMPTS_MAX: u32 = 5;
/// Pause between connection attempts.
const CONNECT_RETRY_MS: u64 = 1_000;
/// Largest ticket or CA file read, in bytes.
const FILE_SIZE_MAX_BYTES: u64 = 1024 * 1024;
/// The FUSE device node.
const FUSE_DEVICE: &str = "/dev/fuse";
/// Capability number of CAP_SYS_ADMIN.
const CAP_SYS_ADMIN: u32 = 21;
/// Interval of the reaping sweep that backs up SIGCHLD.
const REAP_SWEEP_MS: u64 = 1_000;

/// Exit code for configuration errors.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code when the cluster or the mount fails.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code when CMD exists but cannot be run.
pub const EXIT_CANNOT_RUN: i32 = 126;
/// Exit code when CMD is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// `berth container-run`: the berth-client image's entrypoint.
#[derive(Debug, Clone, clap::Args)]
pub struct ContainerRunArgs {
    /// Directory for the application's copies of the ticket and CA
    /// certificate (owned by the application's uid).
    #[arg(long, env = "BERTH_RUN_DIR", default_value = DEFAULT_RUN_DIR, hide = true)]
    pub run_dir: PathBuf,
    /// The application and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD",
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

/// A failure before CMD runs: one line and an exit code.
#[derive(Debug)]
struct Failure {
    code: i32,
    text: String,
}

impl Failure {
    fn config(text: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_CONFIG,
            text: text.into(),
        }
    }
    fn runtime(text: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_FAILURE,
            text: text.into(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Failure {
        Failure::config(e.0)
    }
}

/// Runs CMD inside a mounted Berth namespace; returns the exit code for the
/// process. Errors are printed here (one line); `Err` is left for failures
/// of the process itself (no signal handlers).
pub async fn container_run(args: ContainerRunArgs) -> anyhow::Result<i32> {
    let mut signals = Signals::install()?;
    // A closed stderr must not kill the supervisor of a running
    // application, and handing the terminal to CMD's process group must not
    // stop us.
    // SAFETY: SIG_IGN is a valid disposition; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
    let setup = tokio::select! {
        r = prepare(&args) => r,
        sig = signals.recv() => return Ok(128 + sig),
    };
    let ready = match setup {
        Ok(r) => r,
        Err(f) => {
            eprintln!("error: {}", f.text);
            return Ok(f.code);
        }
    };
    let Ready {
        cfg,
        conn,
        who,
        app_env,
        notes,
    } = ready;
    eprintln!(
        "berth: {} on cluster {}, mounting {} at {}",
        who.principal,
        who.cluster,
        cfg.path,
        cfg.mount.display()
    );
    for n in notes {
        eprintln!("{n}");
    }

    // SIGCHLD before any child exists, so no exit goes unnoticed.
    let mut chld = signal(SignalKind::child())?;
    // Not raced against signals: cancelling would orphan the mount process.
    // It is bounded (30 s); a signal that arrives meanwhile stays pending
    // and reaches CMD as soon as it runs.
    let mut mount = match start_mount(&cfg, &conn).await {
        Ok(m) => m,
        Err(f) => {
            eprintln!("error: {}", f.text);
            return Ok(f.code);
        }
    };

    let code = match spawn_app(&args.command, &cfg, &conn, &who, &app_env) {
        Ok(app_pid) => supervise(app_pid, &mut mount, &mut signals, &mut chld).await,
        Err((code, text)) => {
            eprintln!("error: {text}");
            code
        }
    };
    if let Err(e) = mount.stop().await {
        eprintln!("berth: warning: {e}");
    }
    Ok(code)
}

/// Variables set for the application, in order.
type AppEnv = Vec<(String, OsString)>;

/// Settings checked against the cluster.
struct Ready {
    cfg: RunConfig,
    conn: Connection,
    who: WhoAmIResponse,
    /// The application's Kafka and MongoDB variables (see
    /// [`kafka_settings`], [`mongo_settings`]).
    app_env: AppEnv,
    /// Lines for stderr after the greeting.
    notes: Vec<String>,
}

fn current() -> Current {
    // SAFETY: no preconditions.
    unsafe {
        Current {
            uid: libc::geteuid(),
            gid: libc::getegid(),
        }
    }
}

/// Settings, files, ticket verification, the application's copies of the
/// ticket and CA, and the mount point.
async fn prepare(args: &ContainerRunArgs) -> Result<Ready, Failure> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let me = current();
    let cfg = config::parse(&|k| std::env::var(k).ok(), &passwd, &group, me)?;
    if args.command.is_empty() {
        return Err(Failure::config(
            "no command to run: put the application after the image name, e.g. \
             `docker run ... berth-client /app/server --flag` (the entrypoint is \
             `berth container-run --`)",
        ));
    }
    check_fuse_access(me)?;
    let ticket = match &cfg.ticket {
        TicketSource::Text(t) => t.clone(),
        TicketSource::File(p) => read_small(p, "BERTH_TICKET_FILE")?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    if ticket.is_empty() {
        return Err(Failure::config(
            "the ticket is empty: check BERTH_TICKET_FILE / BERTH_TICKET",
        ));
    }
    let ca_pem = match &cfg.ca_file {
        Some(p) => Some(read_small(p, "BERTH_CA_FILE")?),
        None => None,
    };

    let client_cfg = ClientConfig::discover(Overrides {
        servers: Some(cfg.servers.clone()),
        ticket: Some(ticket.clone()),
        ticket_file: None,
        ca_file: cfg.ca_file.clone(),
        insecure: cfg.insecure,
    })
    .map_err(|e| Failure::config(format!("BERTH_SERVERS/BERTH_CA_FILE: {e}")))?;
    let (client, who) = who_am_i(client_cfg.clone()).await?;
    if let Some(want) = &cfg.cluster {
        if *want != who.cluster {
            return Err(Failure::config(format!(
                "BERTH_CLUSTER={want} but the servers {} belong to cluster {:?}: fix \
                 BERTH_SERVERS or BERTH_CLUSTER",
                client_cfg.servers.join(","),
                who.cluster
            )));
        }
    }
    check_path(&client, &cfg.path).await?;

    let conn = app_files(&args.run_dir, &cfg, &ticket, ca_pem.as_deref(), me)?;
    // The nodes' Kafka and MongoDB addresses.
    let nodes = client
        .cluster()
        .status(Empty {})
        .await
        .map(|s| s.into_inner().nodes)
        .map_err(ClientError::from_status);
    let (mut app_env, mut notes) = kafka_settings(
        &nodes,
        &args.run_dir,
        &cfg,
        &conn,
        &client_cfg.servers,
        &who,
        &ticket,
        me,
    )?;
    let (uri, note) = mongo_settings(&nodes, &cfg, &conn, &client_cfg.servers, &who, &ticket);
    app_env.push((mongo::ENV_NAME.to_string(), uri.into()));
    notes.extend(note);
    let conn = Connection {
        servers: client_cfg.servers,
        ..conn
    };
    prepare_mount_point(&cfg.mount, &cfg.user, me)?;
    let cfg = RunConfig {
        mount: cfg
            .mount
            .canonicalize()
            .map_err(|e| Failure::runtime(format!("BERTH_MOUNT={}: {e}", cfg.mount.display())))?,
        ..cfg
    };
    Ok(Ready {
        cfg,
        conn,
        who,
        app_env,
        notes,
    })
}

fn read_small(path: &Path, var: &str) -> Result<String, Failure> {
    let fail = |e: String| {
        Failure::config(format!(
            "cannot read {var}={}: {e}; mount the file into the container, e.g. \
             -v /host/path:{}:ro",
            path.display(),
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > FILE_SIZE_MAX_BYTES {
        return Err(fail(format!("larger than {FILE_SIZE_MAX_BYTES} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))
}

/// Security/WhoAmI: proves the server certificate (TLS against the CA) and
/// the ticket (signature, expiry, cluster, checked by the server).
async fn who_am_i(cfg: ClientConfig) -> Result<(Client, WhoAmIResponse), Failure> {
    let servers = cfg.servers.join(",");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = async {
            let client = Client::connect(cfg.clone()).await?;
            let who = client
                .security()
                .who_am_i(Empty {})
                .await
                .map_err(ClientError::from_status)?;
            Ok::<_, ClientError>((client, who.into_inner()))
        }
        .await;
        match r {
            Ok(w) => return Ok(w),
            Err(ClientError::Connect { .. }) if attempt < CONNECT_ATTEMPTS_MAX => {
                tokio::time::sleep(Duration::from_millis(CONNECT_RETRY_MS)).await;
            }
            Err(e @ ClientError::Config(_)) => return Err(Failure::config(e.to_string())),
            Err(e @ ClientError::Connect { .. }) => {
                return Err(Failure::runtime(format!(
                    "{e} (tried {CONNECT_ATTEMPTS_MAX} times from this container)"
                )))
            }
            Err(e) => {
                let refused = [
                    "EAUTH",
                    "UNAUTHENTICATED",
                    "EACCES",
                    "EPERM",
                    "PERMISSION_DENIED",
                ]
                .iter()
                .any(|c| e.is(c));
                return Err(if refused {
                    Failure::config(format!(
                        "the cluster at {servers} refused the ticket: {e}; issue a new one \
                         (`berth ticket issue`) and update BERTH_TICKET_FILE"
                    ))
                } else {
                    Failure::runtime(format!("checking the ticket with {servers}: {e}"))
                });
            }
        }
    }
}

/// BERTH_PATH must be a directory the ticket may reach.
async fn check_path(client: &Client, path: &str) -> Result<(), Failure> {
    let entry = client
        .namespace()
        .stat(PathRequest {
            path: path.to_string(),
        })
        .await
        .map_err(ClientError::from_status);
    match entry {
        Ok(e) if e.get_ref().r#type == EntryType::Directory as i32 => Ok(()),
        Ok(_) => Err(Failure::config(format!(
            "BERTH_PATH={path} is not a directory: set BERTH_PATH to a directory"
        ))),
        Err(e) if e.is("ENOENT") => Err(Failure::config(format!(
            "BERTH_PATH={path} does not exist in the cluster: create it (berth mkdir -p \
             {path}) or fix BERTH_PATH"
        ))),
        Err(e) if e.is("EACCES") || e.is("EPERM") => Err(Failure::config(format!(
            "BERTH_PATH={path}: {e}; use a ticket whose scope covers it or fix BERTH_PATH"
        ))),
        Err(e) => Err(Failure::runtime(format!("BERTH_PATH={path}: {e}"))),
    }
}

/// Writes the application's copies of the ticket and the CA certificate
/// into `run_dir`, owned by its uid (mode 0400 / 0444), so that both the
/// mount process and the application can read them whatever the mounted
/// originals' owners. Without root (docker run --user) the originals are
/// used as they are.
fn app_files(
    run_dir: &Path,
    cfg: &RunConfig,
    ticket: &str,
    ca_pem: Option<&str>,
    me: Current,
) -> Result<Connection, Failure> {
    let mut conn = Connection {
        servers: Vec::new(),
        ticket: cfg.ticket.clone(),
        ca_file: cfg.ca_file.clone(),
        insecure: cfg.insecure,
    };
    if me.uid != 0 {
        return Ok(conn);
    }
    let fail = |what: &str, e: std::io::Error| {
        Failure::runtime(format!(
            "cannot write {what} in {}: {e}; the container needs a writable {} \
             (e.g. --tmpfs /run)",
            run_dir.display(),
            run_dir.display()
        ))
    };
    std::fs::create_dir_all(run_dir).map_err(|e| fail("the run directory", e))?;
    let (uid, gid) = (cfg.user.uid, cfg.user.gid);
    let ticket_path = run_dir.join("ticket");
    write_owned(
        &ticket_path,
        format!("{ticket}\n").as_bytes(),
        0o400,
        uid,
        gid,
    )
    .map_err(|e| fail("the ticket", e))?;
    conn.ticket = TicketSource::File(ticket_path);
    if let Some(pem) = ca_pem {
        let ca_path = run_dir.join("ca.crt");
        write_owned(&ca_path, pem.as_bytes(), 0o444, uid, gid)
            .map_err(|e| fail("the CA certificate", e))?;
        conn.ca_file = Some(ca_path);
    }
    Ok(conn)
}

/// The application's Kafka settings: bootstrap servers from the cluster
/// map (`nodes`: every node's Kafka advertised address, from
/// Cluster/Status; when none is known, the hosts of `servers` with port
/// 9092, said on stderr),
/// SASL PLAIN with the ticket as the password, the CA the application
/// got. Writes the properties file (the one place the ticket goes as a
/// Kafka password) into `run_dir`, mode 0600, owned by the application's
/// uid. Returns the environment variables and lines for stderr.
#[allow(clippy::too_many_arguments)]
fn kafka_settings(
    nodes: &Result<Vec<berth_api::v1::Node>, ClientError>,
    run_dir: &Path,
    cfg: &RunConfig,
    conn: &Connection,
    servers: &[String],
    who: &WhoAmIResponse,
    ticket: &str,
    me: Current,
) -> Result<(AppEnv, Vec<String>), Failure> {
    let mut notes = Vec::new();
    let bootstrap = match nodes.as_ref().map(|n| kafka::bootstrap_from_nodes(n)) {
        Ok(b) if !b.is_empty() => b,
        other => {
            let b = kafka::fallback_bootstrap(servers);
            let why = match other {
                Err(e) => format!("reading the cluster map (Cluster/Status) failed: {e}"),
                Ok(_) => "no node in the cluster map has a Kafka address".to_string(),
            };
            notes.push(format!(
                "berth: {why}; assuming Kafka on the hosts of BERTH_SERVERS, port {}: \
                 KAFKA_BOOTSTRAP_SERVERS={}",
                kafka::FALLBACK_PORT,
                b.join(",")
            ));
            b
        }
    };
    let settings = KafkaSettings {
        bootstrap,
        tls: !cfg.insecure,
        username: who.principal.clone(),
        password: ticket.to_string(),
        ca_file: conn.ca_file.clone(),
    };
    let text = settings.properties().map_err(Failure::config)?;
    let path = run_dir.join(kafka::PROPERTIES_FILE);
    let written = std::fs::create_dir_all(run_dir)
        .and_then(|()| write_owned(&path, text.as_bytes(), 0o600, cfg.user.uid, cfg.user.gid));
    let file = match written {
        Ok(()) => Some(path.as_path()),
        Err(e) if me.uid == 0 => {
            return Err(Failure::runtime(format!(
                "cannot write {}: {e}; the container needs a writable {} (e.g. --tmpfs /run)",
                path.display(),
                run_dir.display()
            )))
        }
        Err(e) => {
            notes.push(format!(
                "berth: cannot write {} ({e}): Kafka settings only in KAFKA_* variables \
                 (the SASL password is the ticket of BERTH_TICKET_FILE); give the container \
                 a run directory its user may write, e.g. --tmpfs /run:uid={}",
                path.display(),
                cfg.user.uid
            ));
            None
        }
    };
    Ok((settings.env(file), notes))
}

/// The application's `MONGODB_URI`: one node's MongoDB advertised address
/// from the cluster map (`nodes`; one the container reaches through
/// `servers` preferred; when none is known, the first host of `servers`
/// with port 27017, said on stderr), PLAIN with the ticket as the
/// password, the CA the application got. The URI holds the ticket, as
/// the application's copy of it (`BERTH_TICKET_FILE`) does: only the
/// application's uid reads either (`/proc/PID/environ` is the process
/// owner's). Returns it and a line for stderr, if any.
fn mongo_settings(
    nodes: &Result<Vec<berth_api::v1::Node>, ClientError>,
    cfg: &RunConfig,
    conn: &Connection,
    servers: &[String],
    who: &WhoAmIResponse,
    ticket: &str,
) -> (String, Option<String>) {
    let mut note = None;
    let hosts = match nodes.as_ref().map(|n| mongo::hosts_from_nodes(n, servers)) {
        Ok(Some(h)) => h,
        other => {
            let h = mongo::fallback_host(servers)
                .unwrap_or_else(|| format!("localhost:{}", mongo::FALLBACK_PORT));
            let why = match other {
                Err(e) => format!("reading the cluster map (Cluster/Status) failed: {e}"),
                Ok(_) => "no node in the cluster map has a MongoDB address".to_string(),
            };
            note = Some(format!(
                "berth: {why}; assuming MongoDB on {h} (the first host of BERTH_SERVERS, \
                 port {}) in MONGODB_URI",
                mongo::FALLBACK_PORT
            ));
            h
        }
    };
    let settings = MongoSettings {
        hosts,
        tls: !cfg.insecure,
        username: who.principal.clone(),
        password: ticket.to_string(),
        ca_file: conn.ca_file.as_ref().map(|p| p.display().to_string()),
    };
    (settings.uri(), note)
}

/// Replaces `path` with a new file of `mode`, owned by `uid:gid`.
fn write_owned(path: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::fchown;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    fchown(&f, Some(uid), Some(gid))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What mounting needs from `docker run`: the FUSE device and
/// CAP_SYS_ADMIN (in the bounding set, for the setuid fusermount3).
fn check_fuse_access(me: Current) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    const HINT: &str = "run the container with --device /dev/fuse --cap-add SYS_ADMIN";
    let meta = std::fs::metadata(FUSE_DEVICE)
        .map_err(|e| Failure::config(format!("{FUSE_DEVICE} is missing ({e}): {HINT}")))?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if bounding_set_lacks(&status, CAP_SYS_ADMIN) {
        return Err(Failure::config(format!(
            "the container lacks CAP_SYS_ADMIN, which mounting needs: {HINT}"
        )));
    }
    let mode = meta.permissions().mode();
    if me.uid == 0 && mode & 0o006 != 0o006 {
        // fusermount3 opens the device with the user's own rights, and
        // Docker copies the host's mode (0600 on some hosts); distributions
        // ship it 0666. The node is the container's own.
        std::fs::set_permissions(FUSE_DEVICE, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| Failure::runtime(format!("chmod 0666 {FUSE_DEVICE}: {e}")))?;
    }
    Ok(())
}

/// True when the `CapBnd:` line of a `/proc/PID/status` text exists and
/// lacks capability number `cap`.
fn bounding_set_lacks(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|set| set & (1u64 << cap) == 0)
}

/// Creates the mount point and hands it to the application's uid: the
/// mount process runs as that uid, and fusermount3 mounts only on
/// directories the user may write.
fn prepare_mount_point(mount: &Path, user: &config::AppUser, me: Current) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        Failure::runtime(format!(
            "cannot prepare the mount point BERTH_MOUNT={}: {e}",
            mount.display()
        ))
    };
    std::fs::create_dir_all(mount).map_err(fail)?;
    if me.uid == 0 {
        std::os::unix::fs::chown(mount, Some(user.uid), Some(user.gid)).map_err(fail)?;
    }
    Ok(())
}

async fn start_mount(cfg: &RunConfig, conn: &Connection) -> Result<MountChild, Failure> {
    let run_as = (current().uid == 0).then(|| Identity {
        uid: cfg.user.uid,
        gid: cfg.user.gid,
        groups: cfg.user.groups.clone(),
    });
    MountChild::start(MountSpec {
        mount_point: cfg.mount.clone(),
        path: cfg.path.clone(),
        read_only: cfg.read_only,
        // Only the application's uid (the mount's) uses this mount.
        allow_other: false,
        env: conn.env(),
        run_as,
        log: Arc::new(|line| eprintln!("berth mount: {line}")),
    })
    .await
    .map_err(|e| Failure::runtime(e.to_string()))
}

/// Starts CMD as the application user, in its own process group that owns
/// the terminal (if any). Returns its pid, or the exit code and message.
fn spawn_app(
    command: &[OsString],
    cfg: &RunConfig,
    conn: &Connection,
    who: &WhoAmIResponse,
    app_env: &[(String, OsString)],
) -> Result<libc::pid_t, (i32, String)> {
    let Some((prog, rest)) = command.split_first() else {
        return Err((EXIT_CONFIG, "no command to run".into()));
    };
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .env_remove("BERTH_TICKET")
        .env_remove("BERTH_TICKET_FILE");
    for k in kafka::ENV_NAMES.iter().chain([&mongo::ENV_NAME]) {
        cmd.env_remove(k);
    }
    for (k, v) in conn.env().into_iter().chain(app_env.iter().cloned()) {
        cmd.env(k, v);
    }
    cmd.env("BERTH_MOUNT", &cfg.mount)
        .env("BERTH_PATH", &cfg.path)
        .env("BERTH_CLUSTER", &who.cluster);
    let root = current().uid == 0;
    if root {
        let home_unset = std::env::var_os("HOME").is_none_or(|h| h.is_empty() || h == "/root");
        if home_unset {
            cmd.env("HOME", &cfg.user.home);
        }
        if let Some(name) = &cfg.user.name {
            cmd.env("USER", name).env("LOGNAME", name);
        }
    }
    let id = root.then(|| Identity {
        uid: cfg.user.uid,
        gid: cfg.user.gid,
        groups: cfg.user.groups.clone(),
    });
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            // Own process group, in the terminal's foreground (as tini
            // does): Ctrl-C reaches CMD once, directly; signals sent to us
            // are forwarded.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::isatty(0) == 1 {
                // Ignored SIGTTOU (inherited from us) lets a background
                // group take the terminal.
                libc::tcsetpgrp(0, libc::getpgrp());
            }
            libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            libc::signal(libc::SIGTTIN, libc::SIG_DFL);
            match &id {
                Some(id) => child::drop_privileges(id),
                None => Ok(()),
            }
        });
    }
    match cmd.spawn() {
        Ok(c) => libc::pid_t::try_from(c.id())
            .map_err(|_| (EXIT_FAILURE, "child pid out of range".to_string())),
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            };
            Err((
                code,
                format!("cannot run {}: {e}", Path::new(prog).display()),
            ))
        }
    }
}

/// Waits for CMD to exit while forwarding signals to it and reaping every
/// other child (orphans re-parented to PID 1, the mount process). Returns
/// CMD's exit code, 128+N when a signal N killed it.
async fn supervise(
    app: libc::pid_t,
    mount: &mut MountChild,
    signals: &mut Signals,
    chld: &mut Signal,
) -> i32 {
    let mount_pid = libc::pid_t::try_from(mount.pid()).unwrap_or(-1);
    let mut sweep = tokio::time::interval(Duration::from_millis(REAP_SWEEP_MS));
    loop {
        // Reap everything that has exited; loop bounded by our children.
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: `status` is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let status = ExitStatus::from_raw(status);
            if pid == app {
                return exit_code(status);
            }
            if pid == mount_pid {
                mount.reaped(Some(status));
                eprintln!(
                    "berth: warning: the mount process exited ({}); {} no longer works",
                    child::describe(Some(status)),
                    mount.mount_point().display()
                );
            }
        }
        tokio::select! {
            sig = signals.recv() => {
                // SAFETY: `app` is our unreaped child: the pid is not reused.
                unsafe { libc::kill(app, sig) };
            }
            _ = chld.recv() => {}
            _ = sweep.tick() => {}
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => EXIT_FAILURE,
    }
}

/// The signals forwarded to CMD.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    quit: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The number of the next signal received.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.hup.recv() => libc::SIGHUP,
            _ = self.quit.recv() => libc::SIGQUIT,
            _ = self.usr1.recv() => libc::SIGUSR1,
            _ = self.usr2.recv() => libc::SIGUSR2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }

    #[test]
    fn capability_check() {
        let docker_default = "Name:\tx\nCapBnd:\t00000000a80425fb\n";
        let with_sys_admin = "CapBnd:\t00000000a82425fb\n";
        assert!(bounding_set_lacks(docker_default, CAP_SYS_ADMIN));
        assert!(!bounding_set_lacks(with_sys_admin, CAP_SYS_ADMIN));
        assert!(!bounding_set_lacks("no such line", CAP_SYS_ADMIN));
    }

    #[test]
    fn args_take_everything_after_the_separator() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ContainerRunArgs,
        }
        let t = T::try_parse_from(["x", "--", "/bin/app", "--flag", "-v"]).unwrap();
        assert_eq!(t.a.command, vec!["/bin/app", "--flag", "-v"]);
        let t = T::try_parse_from(["x", "app", "-x"]).unwrap();
        assert_eq!(t.a.command, vec!["app", "-x"]);
    }
}
