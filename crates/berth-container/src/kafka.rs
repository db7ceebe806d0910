//! The Kafka connection settings `container-run` hands the application, in
//! the forms clients read: a librdkafka-style properties file (the only
//! place the SASL password, i.e. the ticket, is written) and environment
//! variables for the settings that are not secret, one of them naming the
//! file.
//!
//! Bootstrap servers are the Kafka advertised addresses of the cluster's
//! nodes (Cluster/Status); when no node has one, the hosts of
//! `BERTH_SERVERS` with Kafka's usual port. The login is SASL PLAIN with
//! the container's ticket as the password (username: the ticket's
//! principal), so the ticket's scope bounds what the application reaches
//! through Kafka as it does through the mount.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use berth_api::v1::Node;

/// Name of the properties file in the run directory.
pub const PROPERTIES_FILE: &str = "kafka.properties";
/// Port assumed when the cluster map knows no Kafka address.
pub const FALLBACK_PORT: u16 = 9092;
/// The SASL mechanism used: the ticket is the password.
pub const SASL_MECHANISM: &str = "PLAIN";

/// What a Kafka client needs to reach the cluster as the container's
/// principal.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `HOST:PORT` list.
    pub bootstrap: Vec<String>,
    /// TLS to the Kafka listener (false only for a server started with
    /// --insecure, whose listeners are all plain text).
    pub tls: bool,
    /// The ticket's principal.
    pub username: String,
    /// The ticket (a secret: never in the environment, never printed).
    pub password: String,
    /// The cluster CA (PEM); `None`: the client's default trust store.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap", &self.bootstrap)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl KafkaSettings {
    /// Kafka's `security.protocol`.
    pub fn security_protocol(&self) -> &'static str {
        if self.tls {
            "SASL_SSL"
        } else {
            "SASL_PLAINTEXT"
        }
    }

    /// The properties as `(key, value)` in librdkafka's names, the password
    /// included.
    fn entries(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("bootstrap.servers", self.bootstrap.join(",")),
            ("security.protocol", self.security_protocol().to_string()),
            ("sasl.mechanisms", SASL_MECHANISM.to_string()),
            ("sasl.username", self.username.clone()),
            ("sasl.password", self.password.clone()),
        ];
        if let Some(ca) = &self.ca_file {
            v.push(("ssl.ca.location", ca.display().to_string()));
        }
        v
    }

    /// The properties file: `key=value` lines (librdkafka's names; kcat's
    /// `-F`/`KCAT_CONFIG` format, also read by most clients' property
    /// loaders). Fails, naming the property, when a value would break the
    /// line format.
    pub fn properties(&self) -> Result<String, String> {
        let mut out = String::from(
            "# Kafka settings of this Berth container (written by `berth container-run`).\n\
             # sasl.password is the container's ticket: keep this file private.\n",
        );
        for (k, v) in self.entries() {
            if v.contains(['\n', '\r', '\0']) {
                return Err(format!("the Kafka setting {k} holds a line break"));
            }
            out.push_str(k);
            out.push('=');
            out.push_str(&v);
            out.push('\n');
        }
        Ok(out)
    }

    /// The environment variables for the application: every setting but
    /// the password, and (when it was written) the properties file's path
    /// as `KAFKA_CONFIG_FILE` and `KCAT_CONFIG`.
    pub fn env(&self, properties_file: Option<&Path>) -> Vec<(String, OsString)> {
        let mut v: Vec<(String, OsString)> = vec![
            (
                "KAFKA_BOOTSTRAP_SERVERS".into(),
                self.bootstrap.join(",").into(),
            ),
            (
                "KAFKA_SECURITY_PROTOCOL".into(),
                self.security_protocol().into(),
            ),
            ("KAFKA_SASL_MECHANISM".into(), SASL_MECHANISM.into()),
            ("KAFKA_SASL_USERNAME".into(), self.username.clone().into()),
        ];
        if let Some(ca) = &self.ca_file {
            v.push(("KAFKA_SSL_CA_LOCATION".into(), ca.clone().into()));
        }
        if let Some(f) = properties_file {
            v.push(("KAFKA_CONFIG_FILE".into(), f.into()));
            v.push(("KCAT_CONFIG".into(), f.into()));
        }
        v
    }
}

/// Every variable [`KafkaSettings::env`] may set (removed from what the
/// container was started with, so the application never sees a mix).
pub const ENV_NAMES: [&str; 7] = [
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_CONFIG_FILE",
    "KCAT_CONFIG",
];

/// The nodes' Kafka advertised addresses, in the map's order, without
/// duplicates; empty when no node has a Kafka listener (or the servers
/// predate the field).
pub fn bootstrap_from_nodes(nodes: &[Node]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in nodes {
        let a = n.kafka_addr.trim();
        if !a.is_empty() && !out.iter().any(|x| x == a) {
            out.push(a.to_string());
        }
    }
    out
}

/// The hosts of the native API addresses (`host:port`, `[v6]:port`) with
/// port [`FALLBACK_PORT`], without duplicates.
pub fn fallback_bootstrap(servers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in servers {
        let host = match s.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((h, _)) => format!("[{h}]"),
                None => format!("[{rest}]"),
            },
            None => match s.rsplit_once(':') {
                Some((h, _)) if !h.contains(':') => h.to_string(),
                Some(_) => format!("[{s}]"),
                None => s.clone(),
            },
        };
        let a = format!("{host}:{FALLBACK_PORT}");
        if !host.is_empty() && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KafkaSettings {
        KafkaSettings {
            bootstrap: vec!["k1:9093".into(), "k2:9093".into()],
            tls: true,
            username: "app".into(),
            password: "berth1.SECRET.sig".into(),
            ca_file: Some("/run/berth/ca.crt".into()),
        }
    }

    fn node(id: u64, kafka_addr: &str) -> Node {
        Node {
            id,
            native_addr: format!("n{id}:5660"),
            kafka_addr: kafka_addr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn properties_file() {
        let p = settings().properties().unwrap();
        let lines: Vec<&str> = p.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            vec![
                "bootstrap.servers=k1:9093,k2:9093",
                "security.protocol=SASL_SSL",
                "sasl.mechanisms=PLAIN",
                "sasl.username=app",
                "sasl.password=berth1.SECRET.sig",
                "ssl.ca.location=/run/berth/ca.crt",
            ]
        );
        assert!(p.ends_with('\n'));

        let plain = KafkaSettings {
            tls: false,
            ca_file: None,
            ..settings()
        };
        let p = plain.properties().unwrap();
        assert!(p.contains("\nsecurity.protocol=SASL_PLAINTEXT\n"), "{p}");
        assert!(!p.contains("ssl.ca.location"), "{p}");

        let bad = KafkaSettings {
            username: "a\nsasl.password=x".into(),
            ..settings()
        };
        assert_eq!(
            bad.properties().unwrap_err(),
            "the Kafka setting sasl.username holds a line break"
        );
    }

    #[test]
    fn environment_holds_no_secret() {
        let s = settings();
        let file = Path::new("/run/berth/kafka.properties");
        let env = s.env(Some(file));
        let want: Vec<(String, OsString)> = [
            ("KAFKA_BOOTSTRAP_SERVERS", "k1:9093,k2:9093"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "app"),
            ("KAFKA_SSL_CA_LOCATION", "/run/berth/ca.crt"),
            ("KAFKA_CONFIG_FILE", "/run/berth/kafka.properties"),
            ("KCAT_CONFIG", "/run/berth/kafka.properties"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
        assert_eq!(env, want);
        assert!(env.iter().all(
            |(k, v)| ENV_NAMES.contains(&k.as_str()) && !v.to_string_lossy().contains("SECRET")
        ));
        assert!(!format!("{s:?}").contains("SECRET"), "Debug redacts");

        // No file written, no CA: neither is named.
        let env = KafkaSettings { ca_file: None, ..s }.env(None);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "KAFKA_BOOTSTRAP_SERVERS",
                "KAFKA_SECURITY_PROTOCOL",
                "KAFKA_SASL_MECHANISM",
                "KAFKA_SASL_USERNAME",
            ]
        );
    }

    #[test]
    fn bootstrap_from_the_cluster_map() {
        let nodes = [
            node(1, "k1:9092"),
            node(2, ""),
            node(3, " k3:9092 "),
            node(4, "k1:9092"),
        ];
        assert_eq!(bootstrap_from_nodes(&nodes), vec!["k1:9092", "k3:9092"]);
        assert!(bootstrap_from_nodes(&[node(1, ""), node(2, "")]).is_empty());
        assert!(bootstrap_from_nodes(&[]).is_empty());
    }

    #[test]
    fn fallback_uses_the_native_hosts() {
        let servers: Vec<String> = ["a:5660", "b:7000", "a:5661", "[fd00::1]:5660", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            fallback_bootstrap(&servers),
            vec!["a:9092", "b:9092", "[fd00::1]:9092", "c:9092"]
        );
    }
}
