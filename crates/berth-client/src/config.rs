//! Where the client finds its servers, ticket and CA: flags, then the
//! environment, then defaults that work for one node with the default data
//! directory. Several servers are a comma-separated list (`BERTH_SERVERS=
//! a:5660,b:5660`), tried in order.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::ClientError;

/// Port of the native API when a server is named without one.
pub const DEFAULT_NATIVE_PORT: u16 = 5660;
/// Data directory of a server started with no flags.
pub const DEFAULT_DATA_DIR: &str = "./berth-data";
/// Largest ticket or CA file the client reads, in bytes.
const FILE_SIZE_MAX_BYTES: u64 = 1024 * 1024;

/// How to reach and authenticate to a cluster.
#[derive(Clone, Default)]
pub struct ClientConfig {
    /// Native API addresses, `host:port`, tried in order.
    pub servers: Vec<String>,
    /// The ticket text (never logged, never printed by `Debug`).
    pub ticket: Option<String>,
    /// PEM of the cluster CA certificate.
    pub ca_pem: Option<String>,
    /// Plain HTTP/2 without TLS (development only).
    pub insecure: bool,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("servers", &self.servers)
            .field("ticket", &self.ticket.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Values given explicitly (command-line flags); each beats the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `host:port` list.
    pub servers: Option<Vec<String>>,
    /// Ticket text.
    pub ticket: Option<String>,
    /// File holding the ticket.
    pub ticket_file: Option<PathBuf>,
    /// File holding the CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Disable TLS.
    pub insecure: bool,
}

impl ClientConfig {
    /// Builds a configuration from `overrides`, the process environment
    /// (`BERTH_SERVERS`, `BERTH_TICKET`, `BERTH_TICKET_FILE`, `BERTH_CA_FILE`,
    /// `BERTH_INSECURE`, `BERTH_DATA_DIR`, `HOME`) and defaults.
    pub fn discover(overrides: Overrides) -> Result<ClientConfig, ClientError> {
        discover_with(overrides, &|k| std::env::var(k).ok())
    }

    /// The ticket, or a [`ClientError::Config`] that says how to get one.
    pub fn require_ticket(&self) -> Result<&str, ClientError> {
        self.ticket.as_deref().ok_or_else(|| {
            ClientError::Config(
                "no ticket: set BERTH_TICKET_FILE, pass --ticket-file, or run `berth login`".into(),
            )
        })
    }
}

/// [`ClientConfig::discover`] with the environment passed in, so tests do
/// not touch the process environment.
pub(crate) fn discover_with(
    o: Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ClientConfig, ClientError> {
    let env = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let data_dir = PathBuf::from(env("BERTH_DATA_DIR").unwrap_or_else(|| DEFAULT_DATA_DIR.into()));

    let servers = match (o.servers, env("BERTH_SERVERS")) {
        (Some(list), _) if !list.is_empty() => list,
        (_, Some(text)) => text.split(',').map(str::to_string).collect(),
        _ => vec![format!("localhost:{DEFAULT_NATIVE_PORT}")],
    };
    let servers = parse_servers(&servers)?;
    if servers.is_empty() {
        return Err(ClientError::Config(
            "no servers: set BERTH_SERVERS=host:port or pass --servers".into(),
        ));
    }

    let ticket = if let Some(t) = o.ticket {
        Some(t.trim().to_string())
    } else if let Some(f) = o.ticket_file {
        Some(read_ticket_file(&f)?)
    } else if let Some(t) = env("BERTH_TICKET") {
        Some(t)
    } else if let Some(f) = env("BERTH_TICKET_FILE") {
        Some(read_ticket_file(Path::new(&f))?)
    } else {
        let mut candidates = vec![data_dir.join("admin.ticket")];
        if let Some(home) = env("HOME") {
            candidates.push(Path::new(&home).join(".berth").join("ticket"));
        }
        match candidates.into_iter().find(|p| p.is_file()) {
            Some(p) => Some(read_ticket_file(&p)?),
            None => None,
        }
    };
    if ticket.as_deref() == Some("") {
        return Err(ClientError::Config(
            "the ticket is empty: check BERTH_TICKET / the ticket file, or run `berth login`"
                .into(),
        ));
    }

    let ca_file = o
        .ca_file
        .or_else(|| env("BERTH_CA_FILE").map(PathBuf::from))
        .or_else(|| Some(data_dir.join("tls").join("ca.crt")).filter(|p| p.is_file()));
    let ca_pem = match ca_file {
        Some(p) => Some(read_small_file(
            &p,
            "CA file",
            "BERTH_CA_FILE or --ca-file",
        )?),
        None => None,
    };

    let insecure = o.insecure
        || env("BERTH_INSECURE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);

    Ok(ClientConfig {
        servers,
        ticket,
        ca_pem,
        insecure,
    })
}

/// Normalises a list of server addresses (`host:port`, `host`, `[v6]:port`;
/// blanks skipped, duplicates dropped, order kept).
pub(crate) fn parse_servers<S: AsRef<str>>(list: &[S]) -> Result<Vec<String>, ClientError> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for s in list
        .iter()
        .map(|s| s.as_ref().trim())
        .filter(|s| !s.is_empty())
    {
        let s = normalize_server(s)?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// Accepts `host:port`, `host` (default port) and `[v6]:port`.
pub(crate) fn normalize_server(s: &str) -> Result<String, ClientError> {
    let bad = || {
        ClientError::Config(format!(
            "bad server address {s:?}: expected host:port, e.g. localhost:{DEFAULT_NATIVE_PORT}"
        ))
    };
    if s.contains("://") || s.contains('/') || s.contains(char::is_whitespace) {
        return Err(bad());
    }
    let (host, port) = split_host_port(s);
    if host.is_empty() {
        return Err(bad());
    }
    match port {
        Some(p) => {
            p.parse::<u16>().map_err(|_| bad())?;
            Ok(s.to_string())
        }
        None if s.starts_with('[') => Ok(format!("{s}:{DEFAULT_NATIVE_PORT}")),
        None if host.contains(':') => Ok(format!("[{host}]:{DEFAULT_NATIVE_PORT}")),
        None => Ok(format!("{host}:{DEFAULT_NATIVE_PORT}")),
    }
}

/// Splits `host:port`, `[v6]:port`, `host`, `[v6]`, bare v6 (no port).
pub(crate) fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
        return (rest, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

fn read_ticket_file(path: &Path) -> Result<String, ClientError> {
    let text = read_small_file(path, "ticket file", "BERTH_TICKET_FILE or --ticket-file")?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

fn read_small_file(path: &Path, what: &str, knob: &str) -> Result<String, ClientError> {
    let err = |e: String| {
        ClientError::Config(format!(
            "cannot read {what} {}: {e} (set {knob})",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > FILE_SIZE_MAX_BYTES {
        return Err(err(format!("larger than {FILE_SIZE_MAX_BYTES} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Env {
        vars: HashMap<String, String>,
        dir: tempfile::TempDir,
    }

    impl Env {
        /// An environment whose data dir and HOME point into a fresh tempdir,
        /// so the real `./berth-data` and `~/.berth` never leak in.
        fn new() -> Env {
            let dir = tempfile::tempdir().unwrap();
            let mut vars = HashMap::new();
            vars.insert(
                "BERTH_DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            );
            vars.insert("HOME".into(), dir.path().join("home").display().to_string());
            Env { vars, dir }
        }
        fn set(&mut self, k: &str, v: &str) {
            self.vars.insert(k.into(), v.into());
        }
        fn file(&self, rel: &str, content: &str) -> PathBuf {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            p
        }
        fn discover(&self, o: Overrides) -> Result<ClientConfig, ClientError> {
            discover_with(o, &|k| self.vars.get(k).cloned())
        }
    }

    #[test]
    fn defaults_with_nothing_configured() {
        let env = Env::new();
        let c = env.discover(Overrides::default()).unwrap();
        assert_eq!(c.servers, vec!["localhost:5660"]);
        assert!(c.ticket.is_none());
        assert!(c.ca_pem.is_none());
        assert!(!c.insecure);
        assert!(
            matches!(c.require_ticket(), Err(ClientError::Config(m)) if m.contains("berth login"))
        );
    }

    #[test]
    fn defaults_pick_up_the_data_dir() {
        let env = Env::new();
        env.file("data/admin.ticket", "  admin-ticket \n");
        env.file("home/.berth/ticket", "home-ticket\n");
        env.file("data/tls/ca.crt", "PEM");
        let c = env.discover(Overrides::default()).unwrap();
        assert_eq!(c.ticket.as_deref(), Some("admin-ticket"));
        assert_eq!(c.ca_pem.as_deref(), Some("PEM"));
    }

    #[test]
    fn home_ticket_when_no_admin_ticket() {
        let env = Env::new();
        env.file("home/.berth/ticket", "home-ticket\n");
        let c = env.discover(Overrides::default()).unwrap();
        assert_eq!(c.ticket.as_deref(), Some("home-ticket"));
    }

    #[test]
    fn env_beats_defaults() {
        let mut env = Env::new();
        env.file("data/admin.ticket", "admin-ticket");
        env.file("data/tls/ca.crt", "DEFAULT-PEM");
        let t = env.file("t1", "env-file-ticket\n");
        let ca = env.file("ca.pem", "ENV-PEM");
        env.set("BERTH_SERVERS", "a:1, b:2 ,a:1");
        env.set("BERTH_TICKET_FILE", t.to_str().unwrap());
        env.set("BERTH_CA_FILE", ca.to_str().unwrap());
        env.set("BERTH_INSECURE", "1");
        let c = env.discover(Overrides::default()).unwrap();
        assert_eq!(c.servers, vec!["a:1", "b:2"]);
        assert_eq!(c.ticket.as_deref(), Some("env-file-ticket"));
        assert_eq!(c.ca_pem.as_deref(), Some("ENV-PEM"));
        assert!(c.insecure);

        // The ticket text beats the ticket file within the environment.
        env.set("BERTH_TICKET", "env-text-ticket");
        let c = env.discover(Overrides::default()).unwrap();
        assert_eq!(c.ticket.as_deref(), Some("env-text-ticket"));
    }

    #[test]
    fn flags_beat_env() {
        let mut env = Env::new();
        let t = env.file("flag-ticket", "flag-ticket\nsecond line ignored\n");
        let ca = env.file("flag-ca", "FLAG-PEM");
        env.set("BERTH_SERVERS", "env:1");
        env.set("BERTH_TICKET", "env-ticket");
        env.set("BERTH_CA_FILE", "/nonexistent/ca.crt");
        env.set("BERTH_INSECURE", "0");
        let c = env
            .discover(Overrides {
                servers: Some(vec!["flag:9".into(), "other".into()]),
                ticket_file: Some(t),
                ca_file: Some(ca),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c.servers, vec!["flag:9", "other:5660"]);
        assert_eq!(c.ticket.as_deref(), Some("flag-ticket"));
        assert_eq!(c.ca_pem.as_deref(), Some("FLAG-PEM"));
        assert!(!c.insecure);

        env.vars.remove("BERTH_CA_FILE");
        let c = env
            .discover(Overrides {
                ticket: Some(" text ".into()),
                insecure: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c.ticket.as_deref(), Some("text"));
        assert!(c.insecure);
    }

    #[test]
    fn explicit_missing_files_are_errors() {
        let mut env = Env::new();
        let e = env
            .discover(Overrides {
                ticket_file: Some("/nonexistent/t".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("--ticket-file"), "{e}");
        env.set("BERTH_CA_FILE", "/nonexistent/ca.crt");
        let e = env.discover(Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("BERTH_CA_FILE"), "{e}");
    }

    #[test]
    fn several_servers_in_order_without_duplicates() {
        let list = parse_servers(&["b:1", " a ", "", "b:1", "a:5660", "[::1]:7"]).unwrap();
        assert_eq!(list, vec!["b:1", "a:5660", "[::1]:7"]);
        assert!(parse_servers(&["a:1", "http://b:2"]).is_err());
        assert!(parse_servers::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn server_addresses() {
        assert_eq!(normalize_server("h:1").unwrap(), "h:1");
        assert_eq!(normalize_server("h").unwrap(), "h:5660");
        assert_eq!(normalize_server("[::1]:7").unwrap(), "[::1]:7");
        assert_eq!(normalize_server("[::1]").unwrap(), "[::1]:5660");
        assert_eq!(normalize_server("::1").unwrap(), "[::1]:5660");
        assert!(normalize_server("h:port").is_err());
        assert!(normalize_server("https://h:1").is_err());
        assert!(normalize_server(":1").is_err());
        assert_eq!(split_host_port("[::1]:7"), ("::1", Some("7")));
    }

    #[test]
    fn debug_never_shows_the_ticket() {
        let c = ClientConfig {
            ticket: Some("SECRET".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
