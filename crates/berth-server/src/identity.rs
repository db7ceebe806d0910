//! Who this node is, kept in the node store's `Local` space: its node id
//! and its cluster's id (`node-identity`), and for a node that joined, the
//! cluster's nodes as the join named them (`join-peers`), so it can reach
//! its peers before it holds a replica of the cluster map.
//!
//! The identity is what makes a data directory belong to a cluster: it is
//! written last, with `Sync` durability, after everything else a first
//! start or a join puts into the data directory.
//!
//! Encodings: the identity is JSON with a `version` field (1); the first
//! builds stored only the node id, as 8 bytes big-endian, read as node id
//! with an unknown cluster id.

use berth_raft::NodeId;
use berth_store::{Durability, Space, Store};
use serde::{Deserialize, Serialize};

const IDENTITY_KEY: &[u8] = b"node-identity";
const PEERS_KEY: &[u8] = b"join-peers";
const VERSION: u8 = 1;
/// Largest identity or peer list read.
const RECORD_LEN_MAX_BYTES: usize = 1 << 20;

/// A node's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: NodeId,
    /// Empty when the identity predates the cluster id being recorded.
    pub cluster_id: String,
    /// The cluster's name, for messages (empty when not recorded).
    pub cluster_name: String,
}

#[derive(Serialize, Deserialize)]
struct IdentityV1 {
    version: u8,
    node_id: NodeId,
    cluster_id: String,
    #[serde(default)]
    cluster_name: String,
}

#[derive(Serialize, Deserialize)]
struct PeersV1 {
    version: u8,
    /// (node id, native address).
    peers: Vec<(NodeId, String)>,
}

/// The stored identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the node store failed: {0}")]
    Store(#[from] berth_store::StoreError),
    #[error(
        "the node identity in the data directory is unreadable ({0}): the directory was written \
         by a newer berth, or is damaged"
    )]
    Corrupt(String),
}

fn encode(id: &Identity) -> Vec<u8> {
    serde_json::to_vec(&IdentityV1 {
        version: VERSION,
        node_id: id.node_id,
        cluster_id: id.cluster_id.clone(),
        cluster_name: id.cluster_name.clone(),
    })
    .expect("an identity encodes")
}

fn decode(bytes: &[u8]) -> Result<Identity, IdentityError> {
    if let Ok(legacy) = <[u8; 8]>::try_from(bytes) {
        return Ok(Identity {
            node_id: u64::from_be_bytes(legacy),
            cluster_id: String::new(),
            cluster_name: String::new(),
        });
    }
    if bytes.len() > RECORD_LEN_MAX_BYTES {
        return Err(IdentityError::Corrupt("too long".into()));
    }
    let v: IdentityV1 =
        serde_json::from_slice(bytes).map_err(|e| IdentityError::Corrupt(e.to_string()))?;
    if v.version != VERSION {
        return Err(IdentityError::Corrupt(format!("version {}", v.version)));
    }
    if v.node_id == 0 {
        return Err(IdentityError::Corrupt("node id 0".into()));
    }
    Ok(Identity {
        node_id: v.node_id,
        cluster_id: v.cluster_id,
        cluster_name: v.cluster_name,
    })
}

/// The identity stored in `store`, if any.
pub fn read(store: &Store) -> Result<Option<Identity>, IdentityError> {
    store
        .get(Space::Local, IDENTITY_KEY)?
        .map(|b| decode(&b))
        .transpose()
}

/// The peers a join named (empty for the first node of a cluster).
pub fn read_peers(store: &Store) -> Result<Vec<(NodeId, String)>, IdentityError> {
    let Some(bytes) = store.get(Space::Local, PEERS_KEY)? else {
        return Ok(Vec::new());
    };
    if bytes.len() > RECORD_LEN_MAX_BYTES {
        return Err(IdentityError::Corrupt("the peer list is too long".into()));
    }
    let v: PeersV1 =
        serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt(e.to_string()))?;
    if v.version != VERSION {
        return Err(IdentityError::Corrupt(format!(
            "peer list version {}",
            v.version
        )));
    }
    Ok(v.peers)
}

/// Stores the identity (and, for a node that joined, its peers) in one
/// batch, synced before it returns.
pub fn write(
    store: &Store,
    id: &Identity,
    peers: Option<&[(NodeId, String)]>,
) -> Result<(), IdentityError> {
    assert_ne!(id.node_id, 0, "node ids start at 1");
    let mut batch = store.batch();
    if let Some(peers) = peers {
        let bytes = serde_json::to_vec(&PeersV1 {
            version: VERSION,
            peers: peers.to_vec(),
        })
        .expect("a peer list encodes");
        batch.put(Space::Local, PEERS_KEY, &bytes);
    }
    batch.put(Space::Local, IDENTITY_KEY, &encode(id));
    store.write(batch, Durability::Sync)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_of_both_layouts_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(read(&store).unwrap(), None);
        assert!(read_peers(&store).unwrap().is_empty());
        // What the first builds wrote: the node id alone.
        let mut batch = store.batch();
        batch.put(Space::Local, IDENTITY_KEY, &1u64.to_be_bytes());
        store.write(batch, Durability::Sync).unwrap();
        assert_eq!(
            read(&store).unwrap(),
            Some(Identity {
                node_id: 1,
                cluster_id: String::new(),
                cluster_name: String::new(),
            })
        );
        let id = Identity {
            node_id: 4,
            cluster_id: "c0ffee".into(),
            cluster_name: "prod".into(),
        };
        let peers = vec![
            (1, "n1:5660".to_string()),
            (2, "[fd00::2]:5660".to_string()),
        ];
        write(&store, &id, Some(&peers)).unwrap();
        assert_eq!(read(&store).unwrap(), Some(id));
        assert_eq!(read_peers(&store).unwrap(), peers);
    }

    #[test]
    fn identities_without_a_cluster_name_read() {
        let id = decode(br#"{"version":1,"node_id":3,"cluster_id":"c"}"#).unwrap();
        assert_eq!((id.node_id, id.cluster_name.as_str()), (3, ""));
    }

    #[test]
    fn damaged_identities_are_errors() {
        for bad in [
            &b"{}"[..],
            b"not json at all",
            br#"{"version":2,"node_id":3,"cluster_id":"c"}"#,
            br#"{"version":1,"node_id":0,"cluster_id":"c"}"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
