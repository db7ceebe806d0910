//! The MongoDB connection string `container-run` hands the application as
//! `MONGODB_URI`, the variable MongoDB drivers' examples read:
//! `mongodb://USER:TICKET@HOST:PORT/?tls=true&tlsCAFile=CA&authMechanism=PLAIN&authSource=%24external`.
//!
//! The hosts are the MongoDB advertised addresses of the nodes
//! (Cluster/Status). Every node routes any request, and its listener
//! answers `hello` as a `mongos` does, so drivers treat the list as the
//! routers of a sharded cluster: they spread operations over the ones
//! that answer and carry on when one is down. The node the container
//! reaches the native API through (`BERTH_SERVERS`) comes first, then the
//! others in the map's order; when no node has an address, the first host
//! of `BERTH_SERVERS` with MongoDB's usual port. The login is
//! PLAIN with the container's ticket as the password (the gateway takes a
//! ticket whatever the user name; the ticket's principal is given), so the
//! ticket's scope bounds what the application reaches through MongoDB as
//! it does through the mount and Kafka.

use berth_api::v1::Node;

/// Port assumed when the cluster map knows no MongoDB address.
pub const FALLBACK_PORT: u16 = 27017;
/// The variable [`MongoSettings::uri`] is handed in.
pub const ENV_NAME: &str = "MONGODB_URI";

/// What a MongoDB driver needs to reach the cluster as the container's
/// principal.
#[derive(Clone, PartialEq, Eq)]
pub struct MongoSettings {
    /// `HOST:PORT[,HOST:PORT...]`: the nodes' MongoDB listeners.
    pub hosts: String,
    /// TLS to the listener (false only for a server started with --insecure).
    pub tls: bool,
    /// The ticket's principal.
    pub username: String,
    /// The ticket (a secret: never printed).
    pub password: String,
    /// The cluster CA as the application sees it; `None`: the driver's
    /// default trust store.
    pub ca_file: Option<String>,
}

impl std::fmt::Debug for MongoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoSettings")
            .field("hosts", &self.hosts)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl MongoSettings {
    /// The connection string, every value percent-encoded.
    pub fn uri(&self) -> String {
        let mut uri = format!(
            "mongodb://{}:{}@{}/?tls={}",
            encode(&self.username),
            encode(&self.password),
            self.hosts,
            self.tls
        );
        if let (true, Some(ca)) = (self.tls, &self.ca_file) {
            uri.push_str("&tlsCAFile=");
            uri.push_str(&encode_path(ca));
        }
        uri.push_str("&authMechanism=PLAIN&authSource=%24external");
        uri
    }
}

/// The MongoDB addresses the URI names, comma-separated: first the node
/// of the first of `servers` (native API addresses, in the order the
/// container tries them) that has a MongoDB listener, then every other
/// node with one in the map's order; `None` when no node has one (or the
/// servers predate the field).
pub fn hosts_from_nodes(nodes: &[Node], servers: &[String]) -> Option<String> {
    let has = |n: &&Node| !n.mongo_addr.trim().is_empty();
    let first = servers
        .iter()
        .find_map(|s| nodes.iter().filter(has).find(|n| n.native_addr == *s));
    let mut hosts: Vec<&str> = Vec::new();
    for n in first.into_iter().chain(nodes.iter().filter(has)) {
        let addr = n.mongo_addr.trim();
        if !hosts.contains(&addr) {
            hosts.push(addr);
        }
    }
    (!hosts.is_empty()).then(|| hosts.join(","))
}

/// The host of the first native API address (`host:port`, `[v6]:port`)
/// with port [`FALLBACK_PORT`].
pub fn fallback_host(servers: &[String]) -> Option<String> {
    let first = crate::kafka::fallback_bootstrap(servers)
        .into_iter()
        .next()?;
    let host = first.rsplit_once(':').map(|(h, _)| h.to_string())?;
    Some(format!("{host}:{FALLBACK_PORT}"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters: safe
/// in the user information and in query values.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// [`encode`], keeping `/` (a file path stays readable).
fn encode_path(s: &str) -> String {
    s.split('/').map(encode).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MongoSettings {
        MongoSettings {
            hosts: "m1:27017".into(),
            tls: true,
            username: "app".into(),
            password: "berth1.SECRET.sig".into(),
            ca_file: Some("/run/berth/ca.crt".into()),
        }
    }

    fn node(id: u64, mongo_addr: &str) -> Node {
        Node {
            id,
            native_addr: format!("n{id}:5660"),
            mongo_addr: mongo_addr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn uri_with_tls_the_ca_and_the_ticket() {
        assert_eq!(
            settings().uri(),
            "mongodb://app:berth1.SECRET.sig@m1:27017/?tls=true&tlsCAFile=/run/berth/ca.crt\
             &authMechanism=PLAIN&authSource=%24external"
        );
        let plain = MongoSettings {
            tls: false,
            ..settings()
        };
        assert_eq!(
            plain.uri(),
            "mongodb://app:berth1.SECRET.sig@m1:27017/?tls=false\
             &authMechanism=PLAIN&authSource=%24external"
        );
        let system_ca = MongoSettings {
            ca_file: None,
            ..settings()
        };
        assert!(!system_ca.uri().contains("tlsCAFile"));
        assert!(
            !format!("{:?}", settings()).contains("SECRET"),
            "Debug redacts"
        );
    }

    #[test]
    fn uri_encodes_what_would_break_it() {
        let odd = MongoSettings {
            username: "alice@corp:x".into(),
            password: "a+b/c=d%e:f@g".into(),
            ca_file: Some("/run/my certs/ca+1.crt".into()),
            ..settings()
        };
        assert_eq!(
            odd.uri(),
            "mongodb://alice%40corp%3Ax:a%2Bb%2Fc%3Dd%25e%3Af%40g@m1:27017/?tls=true\
             &tlsCAFile=/run/my%20certs/ca%2B1.crt&authMechanism=PLAIN&authSource=%24external"
        );
    }

    #[test]
    fn every_listener_from_the_cluster_map() {
        let nodes = [node(1, ""), node(2, " m2:27017 "), node(3, "m3:27017")];
        // Every node with a listener, in the map's order...
        assert_eq!(
            hosts_from_nodes(&nodes, &[]).as_deref(),
            Some("m2:27017,m3:27017")
        );
        // ...the one the container talks to first.
        let servers = vec!["n9:5660".to_string(), "n3:5660".to_string()];
        assert_eq!(
            hosts_from_nodes(&nodes, &servers).as_deref(),
            Some("m3:27017,m2:27017")
        );
        // A server without a listener is passed over.
        let servers = vec!["n1:5660".to_string()];
        assert_eq!(
            hosts_from_nodes(&nodes, &servers).as_deref(),
            Some("m2:27017,m3:27017")
        );
        assert_eq!(hosts_from_nodes(&[node(1, "")], &[]), None);
        assert_eq!(hosts_from_nodes(&[], &servers), None);
    }

    #[test]
    fn fallback_uses_the_first_native_host() {
        let servers: Vec<String> = ["a:5660", "b:7000"].iter().map(|s| s.to_string()).collect();
        assert_eq!(fallback_host(&servers).as_deref(), Some("a:27017"));
        let v6 = vec!["[fd00::1]:5660".to_string()];
        assert_eq!(fallback_host(&v6).as_deref(), Some("[fd00::1]:27017"));
        assert_eq!(fallback_host(&[]), None);
    }
}
