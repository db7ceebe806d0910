//! `berth server`: flags, environment and an optional TOML file become one
//! `berth_server::Config` (flags and environment beat the file, the file
//! beats the defaults), then the node runs until it is stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

/// Largest config file read, in bytes.
const CONFIG_SIZE_MAX_BYTES: u64 = 1024 * 1024;

const DEFAULT_DATA_DIR: &str = "./berth-data";
const DEFAULT_NATIVE_ADDR: &str = "0.0.0.0:5660";
const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:8443";
const DEFAULT_CLUSTER: &str = "berth";
const DEFAULT_KAFKA_ADDR: &str = "0.0.0.0:9092";
const DEFAULT_MONGO_ADDR: &str = "0.0.0.0:27017";
/// Where MongoDB databases are, by default.
pub const DEFAULT_MONGO_ROOT: &str = "/tables";

#[derive(Debug, Clone, Default, Args)]
pub struct ServerArgs {
    /// TOML file with the same keys as the long flags (`native_addr = "…"`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./berth-data].
    #[arg(long, env = "BERTH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Native API (gRPC) listen address [default: 0.0.0.0:5660].
    #[arg(long, value_name = "ADDR")]
    pub native_addr: Option<SocketAddr>,
    /// Admin HTTP listen address [default: 0.0.0.0:8443].
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Host name or IP for the node certificate and cluster map, repeatable
    /// [default: this machine's host name].
    #[arg(long, value_name = "HOST")]
    pub advertise: Vec<String>,
    /// Cluster name, used on first start only [default: berth].
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Listen without TLS: set from the global `--insecure` flag, which
    /// `berth server --insecure` also reaches.
    #[arg(skip)]
    pub insecure: bool,
    /// Lease of advisory-lock sessions, and of files a mount keeps open
    /// after unlinking them, in ms [default: 30000]. Meant for tests: a
    /// shorter lease releases a dead client's locks and files sooner.
    #[arg(long, env = "BERTH_LOCK_LEASE_MS", value_name = "MS")]
    pub lock_lease_ms: Option<u64>,
    /// Interval of the stream retention and compaction sweep in ms
    /// [default: 60000]. Meant for tests.
    #[arg(long, value_name = "MS")]
    pub stream_sweep_ms: Option<u64>,
    /// Interval of the sweep that deletes the documents TTL indexes say
    /// have expired, in ms [default: 60000]. Meant for tests.
    #[arg(long, value_name = "MS", hide = true)]
    pub ttl_sweep_ms: Option<u64>,
    /// Kafka listen address, or `off` [default: 0.0.0.0:9092].
    #[arg(long, value_name = "ADDR|off")]
    pub kafka_addr: Option<String>,
    /// Stream that plain Kafka topic names (without `/stream:`) live in
    /// [default: /streams/default].
    #[arg(long, value_name = "PATH")]
    pub kafka_default_stream: Option<String>,
    /// PRINCIPAL=PATH: plain Kafka topic and group names of this principal
    /// live in stream PATH instead (repeatable).
    #[arg(long, value_name = "PRINCIPAL=PATH")]
    pub kafka_principal_stream: Vec<String>,
    /// HOST:PORT Kafka clients are told to connect to, when not this node's
    /// first --advertise name and the Kafka port (NAT, port mapping, proxy).
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_advertise: Option<String>,
    /// MongoDB wire-protocol listen address, or `off` [default: 0.0.0.0:27017].
    #[arg(long, value_name = "ADDR|off")]
    pub mongo_addr: Option<String>,
    /// HOST:PORT MongoDB drivers are told to connect to (`berth
    /// container-run`'s MONGODB_URI), when not this node's first --advertise
    /// name and the MongoDB port (NAT, port mapping, proxy).
    #[arg(long, value_name = "HOST:PORT")]
    pub mongo_advertise: Option<String>,
    /// Directory holding MongoDB databases: database `db`, collection
    /// `coll` is the table `ROOT/db/coll` [default: /tables].
    #[arg(long, value_name = "PATH")]
    pub mongo_root: Option<String>,
    /// How long committed table changes stay in the change log that
    /// change streams resume from [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_ttl)]
    pub change_retention: Option<std::time::Duration>,
    /// KEY=VALUE topology label of this node, e.g. zone=a (repeatable):
    /// replicas spread across the values of `zone` before nodes.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// A node silent this long is down: the placement driver re-creates its
    /// replicas elsewhere [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_ttl)]
    pub node_down_timeout: Option<std::time::Duration>,
    /// Rate of Raft snapshot data this node sends to the others, per
    /// second, all together [default: 32MiB].
    #[arg(long, value_name = "SIZE", value_parser = crate::output::parse_size)]
    pub snapshot_rate: Option<u64>,
    /// HOST:PORT of a node of an existing cluster to join on the first
    /// start (with --join-token; ignored once the node has joined).
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// Join token from `berth node token create` (a secret: prefer the
    /// environment variable or the config file to the command line).
    #[arg(
        long,
        env = "BERTH_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
}

/// The config file: every key optional, unknown keys rejected so a typo
/// does not go unnoticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    native_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    advertise: Option<Vec<String>>,
    cluster: Option<String>,
    insecure: Option<bool>,
    lock_lease_ms: Option<u64>,
    stream_sweep_ms: Option<u64>,
    ttl_sweep_ms: Option<u64>,
    kafka_addr: Option<String>,
    kafka_default_stream: Option<String>,
    /// `{ alice = "/apps/alice/events" }`
    kafka_principal_streams: Option<std::collections::HashMap<String, String>>,
    kafka_advertise: Option<String>,
    mongo_addr: Option<String>,
    mongo_advertise: Option<String>,
    mongo_root: Option<String>,
    /// `"24h"`
    change_retention: Option<String>,
    /// `{ zone = "a" }`
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// `"5m"`
    node_down_timeout: Option<String>,
    /// `"32MiB"`
    snapshot_rate: Option<String>,
    join: Option<String>,
    join_token: Option<String>,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let config = resolve(args)?;
    if config.insecure {
        eprintln!(
            "warning: --insecure: every listener speaks plain text and tickets travel \
             unencrypted; use this for local development only"
        );
    }
    init_logging();
    berth_server::run(config).await
}

/// Merges flags, file and defaults.
fn resolve(args: ServerArgs) -> Result<berth_server::Config> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => FileConfig::default(),
    };
    let addr = |s: &str| -> SocketAddr { s.parse().expect("default address parses") };
    let advertise = if !args.advertise.is_empty() {
        args.advertise
    } else if let Some(a) = file.advertise.filter(|a| !a.is_empty()) {
        a
    } else {
        vec![hostname()]
    };
    Ok(berth_server::Config {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        native_addr: args
            .native_addr
            .or(file.native_addr)
            .unwrap_or_else(|| addr(DEFAULT_NATIVE_ADDR)),
        admin_addr: args
            .admin_addr
            .or(file.admin_addr)
            .unwrap_or_else(|| addr(DEFAULT_ADMIN_ADDR)),
        advertise,
        cluster_name: args
            .cluster
            .or(file.cluster)
            .unwrap_or_else(|| DEFAULT_CLUSTER.into()),
        insecure: args.insecure || file.insecure.unwrap_or(false),
        lock_lease_ms: args.lock_lease_ms.or(file.lock_lease_ms).unwrap_or(0),
        stream_sweep_ms: args.stream_sweep_ms.or(file.stream_sweep_ms).unwrap_or(0),
        ttl_sweep_ms: args.ttl_sweep_ms.or(file.ttl_sweep_ms).unwrap_or(0),
        kafka_addr: match args.kafka_addr.or(file.kafka_addr).as_deref() {
            Some("off") => None,
            Some(a) => Some(a.parse().with_context(|| {
                format!("--kafka-addr {a:?}: an address like 0.0.0.0:9092, or off")
            })?),
            None => Some(addr(DEFAULT_KAFKA_ADDR)),
        },
        kafka_default_stream: args
            .kafka_default_stream
            .or(file.kafka_default_stream)
            .unwrap_or_else(|| berth_server::kafka::DEFAULT_STREAM.into()),
        kafka_principal_streams: {
            let mut m = file.kafka_principal_streams.unwrap_or_default();
            for kv in &args.kafka_principal_stream {
                let (who, path) = kv
                    .split_once('=')
                    .filter(|(w, p)| !w.is_empty() && p.starts_with('/'))
                    .with_context(|| {
                        format!("--kafka-principal-stream {kv:?}: PRINCIPAL=/path/to/stream")
                    })?;
                m.insert(who.to_string(), path.to_string());
            }
            m
        },
        kafka_advertise: args.kafka_advertise.or(file.kafka_advertise),
        mongo_addr: match args.mongo_addr.or(file.mongo_addr).as_deref() {
            Some("off") => None,
            Some(a) => Some(a.parse().with_context(|| {
                format!("--mongo-addr {a:?}: an address like 0.0.0.0:27017, or off")
            })?),
            None => Some(addr(DEFAULT_MONGO_ADDR)),
        },
        mongo_advertise: args.mongo_advertise.or(file.mongo_advertise),
        mongo_root: {
            let root = args
                .mongo_root
                .or(file.mongo_root)
                .unwrap_or_else(|| DEFAULT_MONGO_ROOT.into());
            anyhow::ensure!(
                root.starts_with('/'),
                "--mongo-root {root:?}: an absolute namespace path, like /tables"
            );
            root
        },
        labels: {
            let mut m = file.labels.unwrap_or_default();
            for kv in &args.label {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--label {kv:?}: KEY=VALUE, e.g. zone=a"))?;
                m.insert(k.to_string(), v.to_string());
            }
            for (k, v) in &m {
                berth_server::validate_label(k, v).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            }
            m
        },
        change_retention: match (args.change_retention, file.change_retention) {
            (Some(d), _) => d,
            (None, Some(s)) => crate::cli::parse_ttl(&s)
                .map_err(|e| anyhow::anyhow!("change_retention {s:?}: {e}"))?,
            (None, None) => berth_server::CHANGE_RETENTION_DEFAULT,
        },
        node_down_timeout: match (args.node_down_timeout, file.node_down_timeout) {
            (Some(d), _) => d,
            (None, Some(s)) => crate::cli::parse_ttl(&s)
                .map_err(|e| anyhow::anyhow!("node_down_timeout {s:?}: {e}"))?,
            (None, None) => berth_server::NODE_DOWN_TIMEOUT_DEFAULT,
        },
        snapshot_rate: match (args.snapshot_rate, file.snapshot_rate) {
            (Some(r), _) => r,
            (None, Some(s)) => crate::output::parse_size(&s)
                .map_err(|e| anyhow::anyhow!("snapshot_rate {s:?}: {e}"))?,
            (None, None) => berth_server::native::SNAPSHOT_RATE_DEFAULT,
        }
        .max(1),
        join: match (
            args.join.or(file.join),
            args.join_token
                .or(file.join_token)
                .filter(|t| !t.trim().is_empty()),
        ) {
            (Some(addr), Some(token)) => {
                anyhow::ensure!(
                    addr.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                    "--join {addr:?}: HOST:PORT of a node of the cluster, e.g. node1:5660"
                );
                Some(berth_server::join::JoinConfig {
                    addr,
                    token: token.trim().to_string(),
                })
            }
            (Some(_), None) => {
                anyhow::bail!("--join needs --join-token (or BERTH_JOIN_TOKEN, or join_token in the config file)")
            }
            (None, Some(_)) => {
                anyhow::bail!("--join-token needs --join HOST:PORT (a node of the cluster to join)")
            }
            (None, None) => None,
        },
    })
}

fn read_config(path: &Path) -> Result<FileConfig> {
    let ctx = || format!("reading config file {}", path.display());
    let len = std::fs::metadata(path).with_context(ctx)?.len();
    anyhow::ensure!(
        len <= CONFIG_SIZE_MAX_BYTES,
        "config file {} is larger than 1 MiB",
        path.display()
    );
    let text = std::fs::read_to_string(path).with_context(ctx)?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// This machine's host name, or `localhost` when it has none.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}

/// Logs go to stderr, filtered by `RUST_LOG`; the default keeps Berth's own
/// `info` lines and only warnings from the chatty Raft and LSM libraries.
/// Colours only on a terminal. A no-op when a subscriber is already installed.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    const DEFAULT_FILTER: &str = "info,raft=warn,fjall=warn,lsm_tree=warn";
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = resolve(ServerArgs::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./berth-data"));
        assert_eq!(c.native_addr.to_string(), "0.0.0.0:5660");
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:8443");
        assert_eq!(c.cluster_name, "berth");
        assert_eq!(c.advertise.len(), 1);
        assert!(!c.insecure);
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("berth.toml");
        std::fs::write(
            &p,
            "native_addr = \"127.0.0.1:7000\"\nadmin_addr = \"127.0.0.1:7001\"\n\
             cluster = \"filecl\"\nadvertise = [\"a\", \"b\"]\ninsecure = true\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(p),
            native_addr: Some("127.0.0.1:9000".parse().unwrap()),
            ..Default::default()
        };
        let c = resolve(args).unwrap();
        assert_eq!(c.native_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:7001");
        assert_eq!(c.cluster_name, "filecl");
        assert_eq!(c.advertise, vec!["a", "b"]);
        assert!(c.insecure);
    }

    #[test]
    fn kafka_settings() {
        let c = resolve(ServerArgs::default()).unwrap();
        assert_eq!(c.kafka_addr.unwrap().to_string(), "0.0.0.0:9092");
        assert_eq!(c.kafka_default_stream, "/streams/default");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("berth.toml");
        std::fs::write(
            &p,
            "kafka_addr = \"off\"\n[kafka_principal_streams]\nalice = \"/a/s\"\nbob = \"/b/s\"\n",
        )
        .unwrap();
        let c = resolve(ServerArgs {
            config: Some(p),
            kafka_principal_stream: vec!["bob=/b/other".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(c.kafka_addr.is_none());
        assert_eq!(c.kafka_principal_streams["alice"], "/a/s");
        assert_eq!(c.kafka_principal_streams["bob"], "/b/other");
        for bad in ["bob", "=/x", "bob=relative"] {
            assert!(resolve(ServerArgs {
                kafka_principal_stream: vec![bad.into()],
                ..Default::default()
            })
            .is_err());
        }
        assert!(resolve(ServerArgs {
            kafka_addr: Some("nope".into()),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn labels_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("berth.toml");
        std::fs::write(&p, "[labels]\nzone = \"a\"\nrack = \"r1\"\n").unwrap();
        let c = resolve(ServerArgs {
            config: Some(p),
            label: vec!["zone=b".into(), "disk=ssd".into()],
            ..Default::default()
        })
        .unwrap();
        let want: Vec<(&str, &str)> = vec![("disk", "ssd"), ("rack", "r1"), ("zone", "b")];
        let got: Vec<(&str, &str)> = c
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want);
        for bad in ["zone", "=a", "zone=", "zone=a b", "zo/ne=a"] {
            assert!(
                resolve(ServerArgs {
                    label: vec![bad.into()],
                    ..Default::default()
                })
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn join_settings() {
        assert!(resolve(ServerArgs::default()).unwrap().join.is_none());
        let c = resolve(ServerArgs {
            join: Some("node1:5660".into()),
            join_token: Some(" berthjoin1.a.b \n".into()),
            ..Default::default()
        })
        .unwrap();
        let j = c.join.unwrap();
        assert_eq!(
            (j.addr.as_str(), j.token.as_str()),
            ("node1:5660", "berthjoin1.a.b")
        );
        assert!(!format!("{j:?}").contains("berthjoin1"), "{j:?}");
        // From the file, the flag winning.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("berth.toml");
        std::fs::write(&p, "join = \"a:1\"\njoin_token = \"berthjoin1.f.f\"\n").unwrap();
        let c = resolve(ServerArgs {
            config: Some(p.clone()),
            join: Some("b:2".into()),
            ..Default::default()
        })
        .unwrap();
        let j = c.join.unwrap();
        assert_eq!(
            (j.addr.as_str(), j.token.as_str()),
            ("b:2", "berthjoin1.f.f")
        );
        for (join, token) in [
            (Some("a:1"), None),
            (None, Some("berthjoin1.a.b")),
            (Some("no-port"), Some("berthjoin1.a.b")),
            (Some(":5660"), Some("berthjoin1.a.b")),
        ] {
            assert!(
                resolve(ServerArgs {
                    join: join.map(Into::into),
                    join_token: token.map(Into::into),
                    ..Default::default()
                })
                .is_err(),
                "{join:?} {token:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("berth.toml");
        std::fs::write(&p, "native-addr = \"127.0.0.1:7000\"\n").unwrap();
        let Err(e) = resolve(ServerArgs {
            config: Some(p),
            ..Default::default()
        }) else {
            panic!("a misspelt key must be rejected");
        };
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
    }
}
