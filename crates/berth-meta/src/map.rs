//! The cluster map: the records the meta shard holds and where they live.
//!
//! Layout (all keys in meta volume 0, kind `Meta`, see `berth_store::keys`):
//!
//! | object (table)   | sub-key      | value            |
//! |------------------|--------------|------------------|
//! | 1 cluster        | –            | [`ClusterRecord`]|
//! | 2 nodes          | u64 node id  | [`NodeRecord`]   |
//! | 3 volumes        | u64 volume id| [`VolumeRecord`] |
//! | 4 volume paths   | str path     | u64 volume id (8 bytes BE) |
//! | 5 shards         | u64 shard id | [`ShardRecord`]  |
//! | 6 users          | str name     | [`UserRecord`]   |
//! | 7 groups         | str name     | [`GroupRecord`]  |
//! | 8 signing keys   | u64 key id   | [`KeyRecord`]    |
//! | 9 counters       | str name     | u64 (8 bytes BE) |
//! | 10 SCRAM         | str name     | [`ScramRecord`]  |
//! | 11 Kafka names   | str name     | [`KafkaNameRecord`] |
//! | 12 setup steps   | str step     | empty: done      |
//! | 13 join tokens   | str id       | [`JoinTokenRecord`] |
//! | 14 cluster CA    | u64 CA id    | [`CaRecord`]     |
//! | 15 admissions    | SHA-256 of the join request | [`AdmissionRecord`] |
//!
//! Values are encoded with [`crate::codec`] (version byte + postcard).

use berth_raft::{NodeId, ShardId};
use berth_security::principal::PrincipalKind;
use berth_security::scram;
use berth_store::keys::{self, Key, Kind};
use serde::{Deserialize, Serialize};

/// The meta volume: holds the cluster map.
pub const META_VOLUME: u64 = 0;
/// The meta shard's id.
pub const META_SHARD: ShardId = 1;
/// The root volume `/`, created on first start.
pub const ROOT_VOLUME: u64 = 1;
/// The root volume's shard.
pub const ROOT_SHARD: ShardId = 2;

pub const T_CLUSTER: u64 = 1;
pub const T_NODE: u64 = 2;
pub const T_VOLUME: u64 = 3;
pub const T_VOLUME_PATH: u64 = 4;
pub const T_SHARD: u64 = 5;
pub const T_USER: u64 = 6;
pub const T_GROUP: u64 = 7;
pub const T_KEY: u64 = 8;
pub const T_COUNTER: u64 = 9;
pub const T_SCRAM: u64 = 10;
pub const T_KAFKA_NAME: u64 = 11;
pub const T_SETUP: u64 = 12;
pub const T_JOIN_TOKEN: u64 = 13;
pub const T_CA: u64 = 14;
pub const T_ADMISSION: u64 = 15;

/// Counter names.
pub const C_VOLUME_ID: &str = "volume_id";
pub const C_SHARD_ID: &str = "shard_id";
pub const C_UID: &str = "uid";
pub const C_GID: &str = "gid";
pub const C_KEY_ID: &str = "key_id";
/// The next node id a join is given (node 1 is the bootstrap node; ids are
/// never reused).
pub const C_NODE_ID: &str = "node_id";

/// First uid/gid handed out to users and groups created without one.
pub const FIRST_ID: u32 = 1000;

pub fn cluster_key() -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_CLUSTER).build()
}
pub fn node_key(id: NodeId) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_NODE).u64(id).build()
}
pub fn volume_key(id: u64) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_VOLUME).u64(id).build()
}
pub fn volume_path_key(path: &str) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_VOLUME_PATH)
        .str(path)
        .build()
}
pub fn shard_key(id: ShardId) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_SHARD).u64(id).build()
}
pub fn user_key(name: &str) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_USER).str(name).build()
}
pub fn group_key(name: &str) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_GROUP).str(name).build()
}
pub fn signing_key_key(id: u32) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_KEY)
        .u64(u64::from(id))
        .build()
}
pub fn counter_key(name: &str) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_COUNTER)
        .str(name)
        .build()
}
pub fn scram_key(name: &str) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_SCRAM).str(name).build()
}
pub fn kafka_name_key(name: &str) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_KAFKA_NAME)
        .str(name)
        .build()
}
pub fn join_token_key(id: &str) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_JOIN_TOKEN)
        .str(id)
        .build()
}
pub fn ca_key(id: u32) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_CA)
        .u64(u64::from(id))
        .build()
}
/// Keyed by the SHA-256 of a join request (the PEM of the certificate request the node
/// made with its key).
pub fn admission_key(request_sha256: &[u8; 32]) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_ADMISSION)
        .bytes(request_sha256)
        .build()
}
pub fn setup_key(step: &str) -> Vec<u8> {
    Key::new(META_VOLUME, Kind::Meta, T_SETUP).str(step).build()
}
/// The key range of one meta table.
pub fn table_range(table: u64) -> (Vec<u8>, Vec<u8>) {
    keys::object_range(META_VOLUME, Kind::Meta, table)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    /// Random identifier, fixed at first start.
    pub id: String,
    pub created_at: u64,
}

/// Where a node is in its life in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Admitted by a join; holds no replica yet.
    Joining,
    /// A member serving its replicas.
    Up,
    /// Its replicas are being moved away (`berth node decommission`).
    Draining,
    /// Holds nothing and takes no part; its id is never reused.
    Decommissioned,
}

impl NodeState {
    /// The word `berth status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Up => "up",
            NodeState::Draining => "draining",
            NodeState::Decommissioned => "decommissioned",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub native_addr: String,
    pub admin_addr: String,
    pub advertise: Vec<String>,
    pub started_at: u64,
    /// `HOST:PORT` Kafka clients are told to connect to (the Kafka
    /// listener's advertised address); empty when the listener is off.
    pub kafka_addr: String,
    /// Topology labels (`--label zone=a`): the placement driver spreads
    /// replicas across the values of one of them before nodes.
    // Fields are added last: a record stored before one existed fails to
    // decode as this layout (it ends early) and is read as an older layout
    // by [`decode_node`]; older nodes ignore the trailing bytes.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Records stored before it existed are of nodes that were serving:
    /// [`NodeState::Up`].
    pub state: NodeState,
    /// `HOST:PORT` MongoDB drivers are told to connect to (the MongoDB
    /// listener's advertised address); empty when the listener is off, or
    /// for records stored before the field.
    pub mongo_addr: String,
}

/// [`NodeRecord`] as stored before `mongo_addr` existed.
#[derive(Deserialize)]
struct NodeRecordV4 {
    id: NodeId,
    native_addr: String,
    admin_addr: String,
    advertise: Vec<String>,
    started_at: u64,
    kafka_addr: String,
    labels: std::collections::BTreeMap<String, String>,
    state: NodeState,
}

/// [`NodeRecord`] as stored before `state` existed.
#[derive(Deserialize)]
struct NodeRecordV3 {
    id: NodeId,
    native_addr: String,
    admin_addr: String,
    advertise: Vec<String>,
    started_at: u64,
    kafka_addr: String,
    labels: std::collections::BTreeMap<String, String>,
}

/// [`NodeRecord`] as stored before `labels` existed.
#[derive(Deserialize)]
struct NodeRecordV2 {
    id: NodeId,
    native_addr: String,
    admin_addr: String,
    advertise: Vec<String>,
    started_at: u64,
    kafka_addr: String,
}

/// [`NodeRecord`] as stored before `kafka_addr` existed.
#[derive(Deserialize)]
struct NodeRecordV1 {
    id: NodeId,
    native_addr: String,
    admin_addr: String,
    advertise: Vec<String>,
    started_at: u64,
}

/// A stored node record, in the current layout or an earlier one (what it
/// lacks is empty; a node stored without a state was `Up`). An earlier
/// layout must explain every byte, so a newer record this build cannot
/// read (a state it does not know) is an error, not a guess.
pub fn decode_node(b: &[u8]) -> Result<NodeRecord, crate::Error> {
    use crate::codec::{decode, decode_exact};
    decode::<NodeRecord>(b, "node").or_else(|e| {
        if let Ok(v4) = decode_exact::<NodeRecordV4>(b, "node") {
            return Ok(NodeRecord {
                id: v4.id,
                native_addr: v4.native_addr,
                admin_addr: v4.admin_addr,
                advertise: v4.advertise,
                started_at: v4.started_at,
                kafka_addr: v4.kafka_addr,
                labels: v4.labels,
                state: v4.state,
                mongo_addr: String::new(),
            });
        }
        if let Ok(v3) = decode_exact::<NodeRecordV3>(b, "node") {
            return Ok(NodeRecord {
                id: v3.id,
                native_addr: v3.native_addr,
                admin_addr: v3.admin_addr,
                advertise: v3.advertise,
                started_at: v3.started_at,
                kafka_addr: v3.kafka_addr,
                labels: v3.labels,
                state: NodeState::Up,
                mongo_addr: String::new(),
            });
        }
        if let Ok(v2) = decode_exact::<NodeRecordV2>(b, "node") {
            return Ok(NodeRecord {
                id: v2.id,
                native_addr: v2.native_addr,
                admin_addr: v2.admin_addr,
                advertise: v2.advertise,
                started_at: v2.started_at,
                kafka_addr: v2.kafka_addr,
                labels: Default::default(),
                state: NodeState::Up,
                mongo_addr: String::new(),
            });
        }
        let Ok(v1) = decode_exact::<NodeRecordV1>(b, "node") else {
            return Err(e);
        };
        Ok(NodeRecord {
            id: v1.id,
            native_addr: v1.native_addr,
            admin_addr: v1.admin_addr,
            advertise: v1.advertise,
            started_at: v1.started_at,
            kafka_addr: String::new(),
            labels: Default::default(),
            state: NodeState::Up,
            mongo_addr: String::new(),
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeState {
    /// Records written; shard, root directory or mount point may be missing.
    Creating,
    Ready,
    /// Being removed; the mount point is gone or going.
    Removing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: u64,
    /// Absolute, normalised mount path.
    pub path: String,
    /// Requested replication factor.
    pub replication: u32,
    /// 0 = unlimited.
    pub quota_bytes: u64,
    /// None = not restricted by the volume (mode bits and entry ACEs decide).
    pub read_ace: Option<String>,
    pub write_ace: Option<String>,
    pub shard_id: ShardId,
    pub root_inode: u64,
    pub created_ns: i64,
    pub state: VolumeState,
    /// The volume holding the mount point (0 for the root volume).
    pub parent_volume: u64,
    /// Bytes per file chunk, fixed at creation.
    pub chunk_size: u32,
    /// `KEY=VALUE`: the shard's leader is kept on a node with this label
    /// when one of its voters has it (None: wherever balance puts it).
    pub leader_preference: Option<String>,
}

/// A volume record as stored before `leader_preference`.
#[derive(Deserialize)]
struct VolumeRecordV1 {
    id: u64,
    path: String,
    replication: u32,
    quota_bytes: u64,
    read_ace: Option<String>,
    write_ace: Option<String>,
    shard_id: ShardId,
    root_inode: u64,
    created_ns: i64,
    state: VolumeState,
    parent_volume: u64,
    chunk_size: u32,
}

/// Decodes a volume record of any layout this build has written.
pub fn decode_volume(b: &[u8]) -> Result<VolumeRecord, crate::Error> {
    use crate::codec::{decode, decode_exact};
    decode_exact::<VolumeRecord>(b, "volume").or_else(|e| {
        let Ok(v) = decode::<VolumeRecordV1>(b, "volume") else {
            return Err(e);
        };
        Ok(VolumeRecord {
            id: v.id,
            path: v.path,
            replication: v.replication,
            quota_bytes: v.quota_bytes,
            read_ace: v.read_ace,
            write_ace: v.write_ace,
            shard_id: v.shard_id,
            root_inode: v.root_inode,
            created_ns: v.created_ns,
            state: v.state,
            parent_volume: v.parent_volume,
            chunk_size: v.chunk_size,
            leader_preference: None,
        })
    })
}

/// A `KEY=VALUE` label preference, checked.
pub fn parse_label_pair(s: &str) -> Result<(String, String), crate::Error> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| crate::Error::invalid(format!("{s:?}: KEY=VALUE, e.g. zone=a")))?;
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Default chunk size of a volume's files.
pub const CHUNK_SIZE_DEFAULT: u32 = 1 << 20;
/// Allowed chunk sizes: powers of two in this range.
pub const CHUNK_SIZE_MIN: u32 = 64 << 10;
pub const CHUNK_SIZE_MAX: u32 = 16 << 20;

/// A shard: a Raft group owning the key range `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub id: ShardId,
    pub volume_id: u64,
    pub start: Vec<u8>,
    /// Exclusive; empty = unbounded.
    pub end: Vec<u8>,
    pub replicas: Vec<NodeId>,
    /// The node that last reported leading this shard (0 = unknown). A hint:
    /// the Raft group itself is the authority.
    pub leader_hint: NodeId,
}

impl ShardRecord {
    /// The meta shard: all of volume 0.
    pub fn meta(replicas: Vec<NodeId>) -> ShardRecord {
        let (start, end) = keys::volume_range(META_VOLUME);
        ShardRecord {
            id: META_SHARD,
            volume_id: META_VOLUME,
            start,
            end,
            replicas,
            leader_hint: 0,
        }
    }

    /// The shard covering a whole volume.
    pub fn for_volume(id: ShardId, volume: u64, replicas: Vec<NodeId>) -> ShardRecord {
        let (start, end) = keys::volume_range(volume);
        ShardRecord {
            id,
            volume_id: volume,
            start,
            end,
            replicas,
            leader_hint: 0,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    pub fn desc(&self) -> berth_raft::ShardDesc {
        berth_raft::ShardDesc {
            id: self.id,
            start: self.start.clone(),
            end: self.end.clone(),
            voters: self.replicas.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub uid: u32,
    pub kind: PrincipalKind,
    /// argon2id PHC string; None for service principals (tickets only).
    pub password_hash: Option<String>,
    pub groups: Vec<String>,
}

/// A user's SCRAM credentials (Kafka's SASL SCRAM-SHA-256 and -512),
/// derived from the password whenever it is set; never the password.
///
/// Kept under a key of its own (table 10), not as a field of
/// [`UserRecord`]: records are a version byte and postcard, which has no
/// optional trailing fields, so a new field would make every stored user
/// record undecodable (and a newer node's records undecodable for an older
/// one). A separate table is simply unknown to older code; users whose
/// password was set before it existed have no record, and SCRAM fails for
/// them until the password is set again.
///
/// `password_hash_sha256` ties the record to the password it was derived
/// from: the SHA-256 of the user's `password_hash` (the PHC string, whose
/// salt is fresh for every password set). A password changed by a node
/// that writes no SCRAM records (an older one, during a rolling upgrade)
/// leaves a record that no longer matches, and it is ignored instead of
/// still letting the old password in.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramRecord {
    pub name: String,
    pub password_hash_sha256: Vec<u8>,
    pub credentials: Vec<ScramCredentialRecord>,
}

/// One mechanism's credential (RFC 5802: salt, iterations, StoredKey,
/// ServerKey). The keys are secrets: not shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredentialRecord {
    /// The SASL mechanism name: `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramRecord {
    /// Credentials of every SCRAM mechanism for `password`, whose argon2
    /// hash (as stored in the user record) is `password_hash`.
    pub fn derive(
        name: &str,
        password: &str,
        password_hash: &str,
    ) -> Result<ScramRecord, berth_security::PasswordError> {
        let credentials = scram::Mechanism::ALL
            .into_iter()
            .map(|m| {
                let c = scram::credential(password, m)?;
                Ok(ScramCredentialRecord {
                    mechanism: m.name().to_string(),
                    salt: c.salt,
                    iterations: c.iterations,
                    stored_key: c.stored_key,
                    server_key: c.server_key,
                })
            })
            .collect::<Result<_, berth_security::PasswordError>>()?;
        Ok(ScramRecord {
            name: name.to_string(),
            password_hash_sha256: binding(password_hash),
            credentials,
        })
    }

    /// Whether this record was derived from the password `password_hash`
    /// is the hash of.
    pub fn is_for(&self, password_hash: &str) -> bool {
        self.password_hash_sha256 == binding(password_hash)
    }

    /// The credential of mechanism `m`, if the record has one.
    pub fn credential(&self, m: scram::Mechanism) -> Option<scram::Credential> {
        let c = self.credentials.iter().find(|c| c.mechanism == m.name())?;
        Some(scram::Credential {
            salt: c.salt.clone(),
            iterations: c.iterations,
            stored_key: c.stored_key.clone(),
            server_key: c.server_key.clone(),
        })
    }
}

fn binding(password_hash: &str) -> Vec<u8> {
    scram::Mechanism::Sha256.hash(password_hash.as_bytes())
}

impl std::fmt::Debug for ScramRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramRecord")
            .field("name", &self.name)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ScramCredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredentialRecord")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    pub gid: u32,
}

/// An Ed25519 ticket-signing key. The secret lives only in the meta shard,
/// which is replicated between cluster nodes over TLS and never served.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: u32,
    pub secret: [u8; 32],
    pub public: [u8; 32],
    pub created_at: u64,
    /// The one key new tickets are signed with.
    pub active: bool,
    /// Verification with this key stops after this time (0 = never).
    pub retire_after: u64,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("active", &self.active)
            .field("retire_after", &self.retire_after)
            .finish_non_exhaustive()
    }
}

/// Validates and normalises an absolute namespace path: no empty, `.` or
/// `..` components, no trailing slash, names at most 255 bytes, path at most
/// 4096 bytes.
pub fn normalize_path(path: &str) -> Result<String, crate::Error> {
    use crate::{Code, Error};
    if !path.starts_with('/') {
        return Err(Error::invalid(format!(
            "path must be absolute (start with '/'): {path:?}"
        )));
    }
    if path.len() > 4096 {
        return Err(Error::new(Code::NameTooLong, "path longer than 4096 bytes"));
    }
    let mut out = String::with_capacity(path.len());
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return Err(Error::invalid(format!(
                "path may not contain '.' or '..' components: {path:?}"
            )));
        }
        if comp.len() > 255 {
            return Err(Error::new(
                Code::NameTooLong,
                format!("name longer than 255 bytes in {path:?}"),
            ));
        }
        if comp.contains('\0') {
            return Err(Error::invalid("path contains a NUL byte"));
        }
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Splits a normalised path into its components.
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// Splits a normalised non-root path into (parent, name).
pub fn split_parent(path: &str) -> Option<(&str, &str)> {
    if path == "/" {
        return None;
    }
    let i = path.rfind('/')?;
    let parent = if i == 0 { "/" } else { &path[..i] };
    Some((parent, &path[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//a//b/").unwrap(), "/a/b");
        assert!(normalize_path("a").is_err());
        assert!(normalize_path("/a/../b").is_err());
        assert_eq!(
            normalize_path(&format!("/{}", "x".repeat(256)))
                .unwrap_err()
                .code,
            crate::Code::NameTooLong
        );
    }

    #[test]
    fn split() {
        assert_eq!(split_parent("/a"), Some(("/", "a")));
        assert_eq!(split_parent("/a/b"), Some(("/a", "b")));
        assert_eq!(split_parent("/"), None);
    }

    #[test]
    fn node_records_of_every_layout_decode() {
        #[derive(Serialize)]
        struct Old<'a> {
            id: NodeId,
            native_addr: &'a str,
            admin_addr: &'a str,
            advertise: Vec<&'a str>,
            started_at: u64,
        }
        let old = crate::codec::encode(&Old {
            id: 3,
            native_addr: "h:5660",
            admin_addr: "h:8443",
            advertise: vec!["h"],
            started_at: 9,
        });
        let want = NodeRecord {
            id: 3,
            native_addr: "h:5660".into(),
            admin_addr: "h:8443".into(),
            advertise: vec!["h".into()],
            started_at: 9,
            kafka_addr: String::new(),
            labels: Default::default(),
            state: NodeState::Up,
            mongo_addr: String::new(),
        };
        assert_eq!(decode_node(&old).unwrap(), want);
        // The layout with a Kafka address and no labels.
        #[derive(Serialize)]
        struct V2<'a> {
            old: Old<'a>,
            kafka_addr: &'a str,
        }
        let v2 = crate::codec::encode(&V2 {
            old: Old {
                id: 3,
                native_addr: "h:5660",
                admin_addr: "h:8443",
                advertise: vec!["h"],
                started_at: 9,
            },
            kafka_addr: "h:9092",
        });
        let with_kafka = NodeRecord {
            kafka_addr: "h:9092".into(),
            ..want.clone()
        };
        assert_eq!(decode_node(&v2).unwrap(), with_kafka);
        // The layout with labels and no state: a node that was serving.
        #[derive(Serialize)]
        struct V3<'a> {
            v2: V2<'a>,
            labels: std::collections::BTreeMap<String, String>,
        }
        let labels: std::collections::BTreeMap<String, String> =
            [("zone".to_string(), "a".to_string())].into();
        let v3 = crate::codec::encode(&V3 {
            v2: V2 {
                old: Old {
                    id: 3,
                    native_addr: "h:5660",
                    admin_addr: "h:8443",
                    advertise: vec!["h"],
                    started_at: 9,
                },
                kafka_addr: "h:9092",
            },
            labels: labels.clone(),
        });
        let with_labels = NodeRecord {
            labels,
            ..with_kafka
        };
        assert_eq!(decode_node(&v3).unwrap(), with_labels);
        // The layout with a state and no MongoDB address.
        #[derive(Serialize)]
        struct V4<'a> {
            v3: V3<'a>,
            state: NodeState,
        }
        let labels4 = with_labels.labels.clone();
        let v4 = |state| {
            crate::codec::encode(&V4 {
                v3: V3 {
                    v2: V2 {
                        old: Old {
                            id: 3,
                            native_addr: "h:5660",
                            admin_addr: "h:8443",
                            advertise: vec!["h"],
                            started_at: 9,
                        },
                        kafka_addr: "h:9092",
                    },
                    labels: labels4.clone(),
                },
                state,
            })
        };
        for state in [
            NodeState::Joining,
            NodeState::Up,
            NodeState::Draining,
            NodeState::Decommissioned,
        ] {
            let old = NodeRecord {
                state,
                ..with_labels.clone()
            };
            assert_eq!(decode_node(&v4(state)).unwrap(), old);
            let new = NodeRecord {
                mongo_addr: "h:27017".into(),
                ..old
            };
            let bytes = crate::codec::encode(&new);
            assert_eq!(decode_node(&bytes).unwrap(), new);
        }
        let new = NodeRecord {
            state: NodeState::Joining,
            mongo_addr: "h:27017".into(),
            ..with_labels
        };
        let bytes = crate::codec::encode(&new);
        // Nodes built before the fields read a new record too.
        let v1: NodeRecordV1 = crate::codec::decode(&bytes, "node").unwrap();
        assert_eq!((v1.id, v1.started_at), (3, 9));
        let v2: NodeRecordV2 = crate::codec::decode(&bytes, "node").unwrap();
        assert_eq!(v2.kafka_addr, "h:9092");
        let v3: NodeRecordV3 = crate::codec::decode(&bytes, "node").unwrap();
        assert_eq!(v3.labels.len(), 1);
        let v4_read: NodeRecordV4 = crate::codec::decode(&bytes, "node").unwrap();
        assert_eq!(v4_read.state, NodeState::Joining);
        assert!(decode_node(&old[..old.len() - 1]).is_err());
        // A state this build does not know is an error, not a guess (in
        // either layout that has one).
        let mut unknown = v4(NodeState::Up);
        *unknown.last_mut().unwrap() = 9;
        assert!(decode_node(&unknown).is_err());
        let mut unknown = crate::codec::encode(&NodeRecord {
            mongo_addr: String::new(),
            ..new
        });
        let at = unknown.len() - 2; // the state, then the empty address's length
        unknown[at] = 9;
        assert!(decode_node(&unknown).is_err());
    }

    #[test]
    fn meta_shard_covers_meta_keys_only() {
        let m = ShardRecord::meta(vec![1]);
        assert!(m.contains(&user_key("admin")));
        assert!(m.contains(&counter_key("x")));
        let v = ShardRecord::for_volume(2, ROOT_VOLUME, vec![1]);
        assert!(!m.contains(&Key::new(ROOT_VOLUME, Kind::Inode, 1).build()));
        assert!(v.contains(&Key::new(ROOT_VOLUME, Kind::Inode, 1).build()));
        assert!(!v.contains(&user_key("admin")));
    }
}

/// A stream's Kafka name: a name of Kafka's legal characters
/// (`[A-Za-z0-9_-]`, no dot) under which clients that validate topic names
/// reach the stream's topics as `NAME.topic`. Unique in the cluster. The
/// stream's own config carries the name too: a record whose stream no
/// longer carries it (renamed, removed, or a crash between the two writes)
/// is stale, resolves to nothing, and may be claimed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaNameRecord {
    pub name: String,
    /// The stream's path when the name was set.
    pub path: String,
}

/// A join token's state (the token itself is signed and carries its
/// expiry; see `berth_security::join`). Records stay after expiry so that
/// `berth node token list` shows what was issued; `revoke` ends one early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub id: String,
    pub created_by: String,
    pub created_at: u64,
    pub expires_at: u64,
    /// Joins it may still admit.
    pub uses_left: u32,
    pub revoked: bool,
}

/// A join admitted (table 15): which node a join request made, so that the same request
/// sent again (its answer lost on the way) gets the same answer instead of spending
/// another use of the token, or leaving a node record `joining` that no process holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionRecord {
    pub node: NodeId,
    /// The join token it used.
    pub token_id: String,
}

/// The cluster CA (table 14): its certificate and private key, so any node
/// holding the meta shard can sign the certificate of a joining node. Like
/// the ticket keys (table 8) the key never leaves the meta shard, which is
/// replicated between cluster nodes over mutual TLS and never served; the
/// first node keeps its copy in `<data>/tls/ca.key` as well. Keyed by a CA
/// id (1 today) so a CA can one day be rotated without a new table.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub id: u32,
    pub cert_pem: String,
    pub key_pem: String,
    pub created_at: u64,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl CaRecord {
    pub fn material(&self) -> berth_security::tls::CaMaterial {
        berth_security::tls::CaMaterial {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

/// Longest topology label key or value.
pub const LABEL_LEN_MAX: usize = 63;
/// Most topology labels one node may carry.
pub const LABELS_MAX: usize = 16;

/// A topology label's key and value: 1 to 63 of `[A-Za-z0-9._-]`.
pub fn validate_label(k: &str, v: &str) -> Result<(), crate::Error> {
    for (what, s) in [("key", k), ("value", v)] {
        let ok = !s.is_empty()
            && s.len() <= LABEL_LEN_MAX
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(crate::Error::invalid(format!(
                "label {k}={v}: the {what} must be 1 to {LABEL_LEN_MAX} letters, digits, '.', '_' or '-'"
            )));
        }
    }
    Ok(())
}
