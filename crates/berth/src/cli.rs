//! Command-line grammar (clap derive). Only types live here; each command
//! family has its own module that runs it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::server::ServerArgs;

/// Berth: files, tables and streams in one namespace, one security model.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Connection flags shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Native API servers, host:port, comma-separated; tried in order.
    #[arg(long, env = "BERTH_SERVERS", value_delimiter = ',', global = true)]
    pub servers: Vec<String>,
    /// File holding the ticket (default: <data-dir>/admin.ticket, then ~/.berth/ticket).
    #[arg(long, env = "BERTH_TICKET_FILE", global = true)]
    pub ticket_file: Option<PathBuf>,
    /// Cluster CA certificate, PEM (default: <data-dir>/tls/ca.crt).
    #[arg(long, env = "BERTH_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// No TLS (development only). For `server`: listen without TLS.
    #[arg(
        long,
        env = "BERTH_INSECURE",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure: bool,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Berth node.
    Server(Box<ServerArgs>),
    /// Exchange a password for a ticket and store it.
    Login(LoginArgs),
    /// Show who the current ticket proves.
    Whoami,
    /// Issue, inspect and sign tickets.
    #[command(subcommand)]
    Ticket(TicketCmd),
    /// Manage users and service principals.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Read-only point-in-time copies of a volume (at VOLUME/.snapshot/NAME).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Streams and their topics (records go through the Kafka listener).
    #[command(subcommand)]
    Stream(StreamCmd),
    /// Tables of JSON documents (documents go through the MongoDB listener).
    #[command(subcommand)]
    Table(TableCmd),
    /// List directory contents.
    Ls(LsArgs),
    /// Create directories.
    Mkdir(MkdirArgs),
    /// Remove entries.
    Rm(RmArgs),
    /// Show an entry's attributes.
    Stat(PathArg),
    /// Move or rename an entry.
    Mv(MvArgs),
    /// Copy files between the local disk and the cluster (cluster paths: berth:/path).
    Cp(CpArgs),
    /// Create a file entry, or update its times.
    Touch(PathsArg),
    /// Create a symbolic link (only -s is supported).
    Ln(LnArgs),
    /// Change permission bits.
    Chmod(ChmodArgs),
    /// Change owner and group.
    Chown(ChownArgs),
    /// Read and write access control expressions.
    #[command(subcommand)]
    Acl(AclCmd),
    /// Mount the namespace (or a subtree) as a local file system (FUSE).
    Mount(MountArgs),
    /// Unmount a `berth mount`.
    Umount(UmountArgs),
    /// Run CMD with the namespace mounted (entrypoint of the berth-client image).
    ContainerRun(berth_container::ContainerRunArgs),
    /// Serve the Docker volume plugin protocol (docker volume create -d berth).
    DockerPlugin(berth_container::DockerPluginArgs),
    /// Show nodes and shards.
    Status,
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The cluster as a whole.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Join tokens for new nodes (cluster administrators).
    #[command(subcommand)]
    Token(NodeTokenCmd),
    /// Every node: addresses, labels, state, replicas, leaders, bytes, last heartbeat.
    List,
    /// One node.
    Info { id: u64 },
    /// Move every replica off node ID, then mark it decommissioned (idempotent).
    /// Refused when the other nodes cannot hold every shard at its replication
    /// factor.
    Decommission {
        id: u64,
        /// Start the drain and return instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Take a draining or decommissioned node back.
    Recommission { id: u64 },
    /// Forget node ID: only once it holds nothing or is down.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Placement: under-replicated and joint shards, steps in flight, nodes.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum NodeTokenCmd {
    /// Print a new join token (a secret: it admits nodes to the cluster).
    Create {
        /// Lifetime, e.g. 1h (the default), 30min, 7days (the most).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// How many nodes it may admit.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
    },
    /// List the join tokens issued (not the tokens themselves).
    List,
    /// End a join token early.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name (default: $USER).
    #[arg(long, short)]
    pub user: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// Lifetime of the ticket, e.g. 24h, 30m, 7days.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
    /// Where to store the ticket (default: ~/.berth/ticket), mode 0600.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TicketCmd {
    /// Mint a ticket for a principal (admin).
    Issue {
        /// Principal the ticket proves.
        #[arg(long)]
        principal: String,
        /// Narrow the ticket to PATH:r, PATH:rw or PATH:admin (repeatable).
        #[arg(long)]
        scope: Vec<String>,
        /// Lifetime, e.g. 24h, 90d.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// File to write (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Decode a ticket file and show its contents (no signature check).
    Print {
        /// Ticket file.
        file: PathBuf,
    },
    /// Make a new signing key the active one.
    RotateKey,
    /// List signing keys.
    Keys,
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user or service principal.
    Add {
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long, conflicts_with = "password")]
        password_stdin: bool,
        /// The password (visible to other local users: prefer --password-stdin).
        #[arg(long)]
        password: Option<String>,
        /// Numeric uid (default: next free from 1000).
        #[arg(long)]
        uid: Option<u32>,
        /// Group to join (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A service principal: no password, tickets only via `ticket issue`.
        #[arg(long)]
        service: bool,
    },
    /// List principals.
    List,
    /// Remove a principal.
    Remove { name: String },
    /// Set a user's password.
    Passwd {
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Add a group.
    Add {
        name: String,
        /// Numeric gid (default: next free from 1000).
        #[arg(long)]
        gid: Option<u32>,
    },
    /// List groups.
    List,
    /// Remove a group.
    Remove { name: String },
    /// Add a user to a group.
    AddMember { group: String, user: String },
    /// Remove a user from a group.
    RemoveMember { group: String, user: String },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume mounted at PATH.
    Create {
        path: String,
        /// Replication factor (default 3, capped at the node count).
        #[arg(long)]
        replication: Option<u32>,
        /// Quota, e.g. 10G, 512MiB (default: unlimited).
        #[arg(long, value_parser = crate::output::parse_size)]
        quota: Option<u64>,
        /// Who may read, e.g. 'g:ops | u:alice' (default: mode bits decide).
        #[arg(long)]
        read_ace: Option<String>,
        /// Who may write.
        #[arg(long)]
        write_ace: Option<String>,
        /// Bytes per file chunk, a power of two from 64KiB to 16MiB (default 1MiB).
        #[arg(long, value_parser = crate::output::parse_size)]
        chunk_size: Option<u64>,
        /// KEY=VALUE: keep the volume's leader on a node with this label
        /// (e.g. zone=a, near its clients) when one of its replicas has it.
        #[arg(long, value_name = "KEY=VALUE")]
        prefer_leader: Option<String>,
    },
    /// Change a volume's settings (those not given stay as they are).
    Set {
        path: String,
        /// Replication factor, 1 to 7: replicas are added or removed to match.
        #[arg(long)]
        replication: Option<u32>,
        /// Quota, e.g. 10G; 0 for unlimited.
        #[arg(long, value_parser = crate::output::parse_size)]
        quota: Option<u64>,
        /// KEY=VALUE: keep the volume's leader on a node with this label;
        /// `none` drops the preference.
        #[arg(long, value_name = "KEY=VALUE|none")]
        prefer_leader: Option<String>,
    },
    /// List volumes.
    List,
    /// Show one volume.
    Info { path: String },
    /// Remove a volume.
    Remove {
        path: String,
        /// Remove even if it holds entries.
        #[arg(long)]
        force: bool,
    },
    /// Check a volume's namespace for consistency (exit 1 on problems).
    Check { path: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take snapshot NAME of the volume at VOLUME (O(metadata), no data copied).
    Create { volume: String, name: String },
    /// List the snapshots of the volume at VOLUME.
    List { volume: String },
    /// Remove snapshot NAME of the volume at VOLUME and free what only it kept.
    Remove { volume: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum StreamCmd {
    /// Create a stream at PATH (defaults: 1 partition, 7 days, autocreate on).
    Create {
        path: String,
        /// Partitions of a topic created without a count (default 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: Option<u32>,
        #[command(flatten)]
        settings: StreamSettings,
    },
    /// Show a stream's settings (any of its rights suffices).
    Info { path: String },
    /// List the streams directly in DIR (default: /).
    List { dir: Option<String> },
    /// Remove a stream with its topics and records (admin right).
    Delete { path: String },
    /// Change a stream's settings (admin right); what is not given stays.
    Edit {
        path: String,
        /// Partitions of a topic created without a count.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        default_partitions: Option<u32>,
        #[command(flatten)]
        settings: StreamSettings,
        /// Unset an ACE, back to "the stream's owner only" (repeatable).
        #[arg(long, value_parser = ["produce", "consume", "topic", "admin"])]
        clear_ace: Vec<String>,
    },
    /// Manage the topics of a stream.
    #[command(subcommand)]
    Topic(TopicCmd),
}

/// Settings of `stream create` and `stream edit`.
#[derive(Debug, Clone, Args)]
pub struct StreamSettings {
    /// How long records are kept, e.g. 7d, 12h, 30min, or `forever`.
    #[arg(long, value_parser = crate::stream::parse_retention)]
    pub retention: Option<i64>,
    /// Size a partition may keep, e.g. 10GiB, or `unlimited` (the default).
    #[arg(long, value_parser = crate::stream::parse_retention_bytes)]
    pub retention_bytes: Option<i64>,
    /// In compacted streams, how long a deleted key's tombstone is kept,
    /// e.g. 1d (the default), 10min, or `forever`.
    #[arg(long, value_parser = crate::stream::parse_retention)]
    pub delete_retention: Option<i64>,
    /// Keep the last record per key instead of deleting by age (--compact=false: off).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub compact: Option<bool>,
    /// Create topics on first use: true or false (default true).
    #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
    pub autocreate: Option<bool>,
    /// Who may produce, e.g. 'u:alice | g:dev' (default: the stream's owner).
    #[arg(long)]
    pub produce_ace: Option<String>,
    /// Who may consume.
    #[arg(long)]
    pub consume_ace: Option<String>,
    /// Who may create, delete and grow topics.
    #[arg(long)]
    pub topic_ace: Option<String>,
    /// Who may change the settings and delete the stream.
    #[arg(long)]
    pub admin_ace: Option<String>,
    /// A name of letters, digits, '_' and '-' (unique in the cluster) by
    /// which Kafka clients that check topic names reach the stream: topic
    /// T as NAME.T, group G as NAME.G ('' on edit: drop it).
    #[arg(long)]
    pub kafka_name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Create topic TOPIC in the stream at PATH (topic right).
    Create {
        path: String,
        topic: String,
        /// Partitions (default: the stream's default).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: Option<u32>,
    },
    /// List the topics of the stream at PATH.
    List { path: String },
    /// Show a topic and the offsets of its partitions (consume right).
    Info { path: String, topic: String },
    /// Delete a topic and its records (topic right).
    Delete { path: String, topic: String },
    /// Grow a topic to N partitions in all (topic right).
    AddPartitions {
        path: String,
        topic: String,
        /// The new total, larger than the current count.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TableCmd {
    /// Create a table at PATH (its directory must exist, unless -p).
    Create {
        path: String,
        /// Create missing parent directories, as mkdir -p does.
        #[arg(short = 'p', long)]
        parents: bool,
        #[command(flatten)]
        aces: TableAces,
    },
    /// Show a table's settings, owner and size (any of its rights suffices;
    /// the size needs the read right).
    Info { path: String },
    /// List the tables directly in DIR (default: /tables, where MongoDB
    /// databases are); -r: in every subdirectory too.
    List {
        dir: Option<String>,
        /// Also the tables in subdirectories (every database's collections).
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Remove a table with its documents (admin right).
    Delete { path: String },
    /// Change a table's ACEs (admin right); what is not given stays.
    Edit {
        path: String,
        #[command(flatten)]
        aces: TableAces,
        /// Unset an ACE, back to "the table's owner only" (repeatable).
        #[arg(long, value_parser = ["read", "write", "admin"])]
        clear_ace: Vec<String>,
    },
    /// Change data capture: publish a table's changes into a Kafka topic.
    #[command(subcommand)]
    Cdc(CdcCmd),
    /// Check a table's consistency: every document decodes, every index
    /// holds exactly the entries its documents give (admin and read rights;
    /// exit 1 on problems).
    Check { path: String },
}

/// `berth table cdc`.
#[derive(Debug, Subcommand)]
pub enum CdcCmd {
    /// Publish every change committed to PATH from now on into a stream's
    /// topic (created when missing), exactly once, in commit order per
    /// document, keyed by _id, as JSON.
    Add {
        path: String,
        /// STREAM:TOPIC, e.g. /apps/events:users-cdc.
        #[arg(long, value_name = "STREAM:TOPIC")]
        to: String,
    },
    /// The CDC targets of a table.
    List { path: String },
    /// Stop publishing target ID of a table.
    Remove { path: String, id: u64 },
}

/// ACEs of `table create` and `table edit`.
#[derive(Debug, Clone, Args)]
pub struct TableAces {
    /// Who may read documents, e.g. 'u:alice | g:dev' (default: the table's owner).
    #[arg(long)]
    pub read_ace: Option<String>,
    /// Who may insert, update and delete documents.
    #[arg(long)]
    pub write_ace: Option<String>,
    /// Who may change the ACEs and delete the table.
    #[arg(long)]
    pub admin_ace: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Long format: mode, links, owner, size, time.
    #[arg(short = 'l')]
    pub long: bool,
    /// Paths to list (default: /).
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MkdirArgs {
    /// Create missing parents; no error if the directory exists.
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// Permission bits, octal (default 755).
    #[arg(short = 'm', long, value_parser = crate::output::parse_mode)]
    pub mode: Option<u32>,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove directories and their contents.
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,
    /// Ignore entries that do not exist.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PathArg {
    pub path: String,
}

#[derive(Debug, Args)]
pub struct PathsArg {
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MvArgs {
    pub src: String,
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copy directories recursively.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Sources, then the destination; cluster paths are written berth:/path.
    #[arg(required = true, num_args = 2..)]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LnArgs {
    /// Make a symbolic link (required: hard links are not offered).
    #[arg(short = 's', long, required = true)]
    pub symbolic: bool,
    pub target: String,
    pub path: String,
}

#[derive(Debug, Args)]
pub struct ChmodArgs {
    /// Octal mode, e.g. 755 or 0640.
    #[arg(value_parser = crate::output::parse_mode)]
    pub mode: u32,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ChownArgs {
    /// UID[:GID], numbers or names.
    pub owner: String,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AclCmd {
    /// Show the expressions on an entry.
    Get { path: String },
    /// Set expressions on an entry ('' means nobody).
    Set {
        path: String,
        #[arg(long)]
        read: Option<String>,
        #[arg(long)]
        write: Option<String>,
        #[arg(long)]
        admin: Option<String>,
        /// Remove every expression (mode bits decide again).
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Local directory to mount on.
    pub mountpoint: PathBuf,
    /// Namespace directory to show at the mount point.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Let every local user in, each checked as itself against the mode
    /// bits as well as by the ticket; what one creates is its own when the
    /// ticket is an administrator's (default: only this user and root).
    #[arg(long)]
    pub allow_other: bool,
    /// Stay attached until SIGTERM/SIGINT or `berth umount` (default: return
    /// once mounted, serving from a background process).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Internal: the background process started by `berth mount`.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Mount point of a `berth mount`.
    pub mountpoint: PathBuf,
    /// Detach even while files are open (they work until closed).
    #[arg(long, short = 'l')]
    pub lazy: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Metadata operations: mkdir, create, stat.
    Meta(BenchMetaArgs),
    /// File-system operations in any directory (a Berth mount, a local disk,
    /// another file system): sequential write/read, 4 KiB random reads,
    /// small-file create/stat/unlink.
    Fs(BenchFsArgs),
}

#[derive(Debug, Args)]
pub struct BenchMetaArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Operations of each kind per client.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ops: u32,
    /// Berth directory to work under (a fresh run-* subdirectory is used and removed).
    #[arg(long, default_value = "/bench")]
    pub dir: String,
    /// Also run the same operations on this local directory, for comparison.
    #[arg(long)]
    pub local_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchFsArgs {
    /// Directory to work in (a fresh berth-bench-fs-* subdirectory is used and removed).
    #[arg(long)]
    pub dir: PathBuf,
    /// Size of the sequential file, e.g. 1GiB, 256MiB.
    #[arg(long, default_value = "1GiB", value_parser = crate::output::parse_size)]
    pub size: u64,
    /// Small files to create, stat and unlink.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub files: u32,
    /// 4 KiB random reads in the sequential file.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub random_reads: u32,
    /// Seed of the random offsets and of the file's contents.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Parses a lifetime such as `24h`, `30m`, `7d`.
pub fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 24h, 30m, 7d)"))?;
    if d.as_secs() == 0 {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_after_subcommand() {
        let cli = Cli::try_parse_from(["berth", "volume", "list", "--json"]).unwrap();
        assert!(cli.global.json);
        let cli = Cli::try_parse_from(["berth", "ls", "-l", "/a", "--servers", "h:1,g:2"]).unwrap();
        assert_eq!(cli.global.servers, vec!["h:1", "g:2"]);
    }

    #[test]
    fn ln_needs_s() {
        assert!(Cli::try_parse_from(["berth", "ln", "a", "b"]).is_err());
        assert!(Cli::try_parse_from(["berth", "ln", "-s", "a", "b"]).is_ok());
    }

    #[test]
    fn mount_grammar() {
        let cli =
            Cli::try_parse_from(["berth", "mount", "/mnt/b", "--path", "/apps", "-f"]).unwrap();
        match cli.command {
            Command::Mount(a) => {
                assert_eq!(a.path, "/apps");
                assert!(a.foreground && !a.read_only && !a.daemon_child);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["berth", "umount", "-l", "/mnt/b"]).is_ok());
        assert!(Cli::try_parse_from(["berth", "umount"]).is_err());
    }

    #[test]
    fn bench_fs_grammar() {
        let cli =
            Cli::try_parse_from(["berth", "bench", "fs", "--dir", "/mnt/x", "--json"]).unwrap();
        assert!(cli.global.json);
        match cli.command {
            Command::Bench(BenchCmd::Fs(a)) => {
                assert_eq!(a.size, 1 << 30);
                assert_eq!((a.files, a.random_reads), (10_000, 20_000));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["berth", "bench", "fs", "--dir", "d", "--size", "64MiB"]);
        assert!(cli.is_ok());
        assert!(Cli::try_parse_from(["berth", "bench", "fs"]).is_err());
        assert!(
            Cli::try_parse_from(["berth", "bench", "fs", "--dir", "d", "--files", "0"]).is_err()
        );
    }

    #[test]
    fn stream_grammar() {
        let cli = Cli::try_parse_from([
            "berth",
            "stream",
            "create",
            "/s",
            "--partitions",
            "3",
            "--retention",
            "forever",
            "--compact",
            "--autocreate",
            "false",
            "--topic-ace",
            "u:alice",
        ])
        .unwrap();
        match cli.command {
            Command::Stream(StreamCmd::Create {
                path,
                partitions,
                settings,
            }) => {
                assert_eq!((path.as_str(), partitions), ("/s", Some(3)));
                assert_eq!(settings.retention, Some(-1));
                assert_eq!(settings.compact, Some(true));
                assert_eq!(settings.autocreate, Some(false));
                assert_eq!(settings.topic_ace.as_deref(), Some("u:alice"));
                assert_eq!(settings.retention_bytes, None);
            }
            other => panic!("{other:?}"),
        }
        // `--compact` takes no separate value, so a path may follow it.
        let cli = Cli::try_parse_from(["berth", "stream", "create", "--compact", "/s"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Stream(StreamCmd::Create { ref path, .. }) if path == "/s"
        ));
        let cli = Cli::try_parse_from([
            "berth",
            "stream",
            "edit",
            "/s",
            "--compact=false",
            "--default-partitions",
            "2",
            "--clear-ace",
            "produce",
            "--retention-bytes",
            "1GiB",
        ])
        .unwrap();
        match cli.command {
            Command::Stream(StreamCmd::Edit {
                default_partitions,
                settings,
                clear_ace,
                ..
            }) => {
                assert_eq!(default_partitions, Some(2));
                assert_eq!(settings.compact, Some(false));
                assert_eq!(settings.retention_bytes, Some(1 << 30));
                assert_eq!(clear_ace, vec!["produce"]);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &["berth", "stream", "edit", "/s", "--partitions", "2"][..],
            &["berth", "stream", "edit", "/s", "--clear-ace", "write"],
            &["berth", "stream", "create", "/s", "--partitions", "0"],
            &["berth", "stream", "create", "/s", "--retention", "soon"],
            &["berth", "stream", "topic", "add-partitions", "/s", "t"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "berth",
            "stream",
            "topic",
            "add-partitions",
            "/s",
            "t",
            "--partitions",
            "4",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Stream(StreamCmd::Topic(TopicCmd::AddPartitions {
                partitions: 4,
                ..
            }))
        ));
        let cli = Cli::try_parse_from(["berth", "stream", "list"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Stream(StreamCmd::List { dir: None })
        ));
    }

    #[test]
    fn table_grammar() {
        let cli = Cli::try_parse_from([
            "berth",
            "table",
            "create",
            "-p",
            "/tables/db/c",
            "--read-ace",
            "p",
            "--admin-ace",
            "u:alice",
        ])
        .unwrap();
        match cli.command {
            Command::Table(TableCmd::Create {
                path,
                parents,
                aces,
            }) => {
                assert_eq!((path.as_str(), parents), ("/tables/db/c", true));
                assert_eq!(aces.read_ace.as_deref(), Some("p"));
                assert_eq!(aces.write_ace, None);
                assert_eq!(aces.admin_ace.as_deref(), Some("u:alice"));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "berth",
            "table",
            "edit",
            "/t",
            "--clear-ace",
            "read",
            "--clear-ace",
            "admin",
            "--write-ace",
            "",
        ])
        .unwrap();
        match cli.command {
            Command::Table(TableCmd::Edit {
                aces, clear_ace, ..
            }) => {
                assert_eq!(clear_ace, vec!["read", "admin"]);
                assert_eq!(aces.write_ace.as_deref(), Some(""));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["berth", "table", "list", "-r", "--json"]).unwrap();
        assert!(cli.global.json);
        assert!(matches!(
            cli.command,
            Command::Table(TableCmd::List {
                dir: None,
                recursive: true
            })
        ));
        let cli = Cli::try_parse_from(["berth", "table", "check", "/t", "--json"]).unwrap();
        assert!(cli.global.json);
        assert!(matches!(
            cli.command,
            Command::Table(TableCmd::Check { path }) if path == "/t"
        ));
        for bad in [
            &["berth", "table", "edit", "/t", "--clear-ace", "produce"][..],
            &["berth", "table", "create"],
            &["berth", "table", "info"],
            &["berth", "table", "check"],
            &["berth", "table", "create", "/t", "--produce-ace", "p"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("24h").unwrap().as_secs(), 86_400);
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
