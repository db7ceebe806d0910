//! How a mount process (and the application) reach the cluster: one value
//! that becomes both a client configuration (for the checks made here) and
//! the environment handed to children.

use std::ffi::OsString;
use std::path::PathBuf;

use berth_client::{ClientConfig, ClientError, Overrides};

use crate::config::TicketSource;

/// Servers, ticket and trust anchor of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `host[:port]` list, tried in order.
    pub servers: Vec<String>,
    pub ticket: TicketSource,
    /// The cluster CA certificate (PEM); `None` only with `insecure`.
    pub ca_file: Option<PathBuf>,
    /// Plain text to a server started with --insecure.
    pub insecure: bool,
}

impl Connection {
    /// `BERTH_SERVERS`, `BERTH_TICKET_FILE` or `BERTH_TICKET`,
    /// `BERTH_CA_FILE` or `BERTH_INSECURE=1`.
    pub fn env(&self) -> Vec<(String, OsString)> {
        let mut v = vec![("BERTH_SERVERS".to_string(), self.servers.join(",").into())];
        match &self.ticket {
            TicketSource::File(f) => v.push(("BERTH_TICKET_FILE".into(), f.clone().into())),
            TicketSource::Text(t) => v.push(("BERTH_TICKET".into(), t.into())),
        }
        if let Some(f) = &self.ca_file {
            v.push(("BERTH_CA_FILE".into(), f.clone().into()));
        }
        if self.insecure {
            v.push(("BERTH_INSECURE".into(), "1".into()));
        }
        v
    }

    /// A client configuration (reads the ticket and CA files; normalises
    /// the server addresses).
    pub fn client_config(&self) -> Result<ClientConfig, ClientError> {
        let (ticket, ticket_file) = match &self.ticket {
            TicketSource::Text(t) => (Some(t.clone()), None),
            TicketSource::File(f) => (None, Some(f.clone())),
        };
        ClientConfig::discover(Overrides {
            servers: Some(self.servers.clone()),
            ticket,
            ticket_file,
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_every_setting() {
        let c = Connection {
            servers: vec!["a:1".into(), "b:2".into()],
            ticket: TicketSource::File("/run/berth/ticket".into()),
            ca_file: Some("/ca.crt".into()),
            insecure: false,
        };
        let env = c.env();
        assert_eq!(
            env,
            vec![
                ("BERTH_SERVERS".to_string(), OsString::from("a:1,b:2")),
                ("BERTH_TICKET_FILE".to_string(), "/run/berth/ticket".into()),
                ("BERTH_CA_FILE".to_string(), "/ca.crt".into()),
            ]
        );
        let c = Connection {
            ticket: TicketSource::Text("t".into()),
            ca_file: None,
            insecure: true,
            ..c
        };
        let env = c.env();
        assert!(env.contains(&("BERTH_TICKET".into(), "t".into())));
        assert!(env.contains(&("BERTH_INSECURE".into(), "1".into())));
    }

    #[test]
    fn client_config_reads_the_ticket_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::write(&t, "tick\n").unwrap();
        let c = Connection {
            servers: vec!["h".into()],
            ticket: TicketSource::File(t),
            ca_file: None,
            insecure: true,
        };
        let cfg = c.client_config().unwrap();
        assert_eq!(cfg.servers, vec!["h:5660"]);
        assert_eq!(cfg.ticket.as_deref(), Some("tick"));
        assert!(cfg.insecure);
    }
}
