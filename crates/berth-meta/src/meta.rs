//! The meta service: reads and changes the cluster map held by the meta shard,
//! keeps a node-local cache of it, and authenticates tickets against it.
//!
//! Every change is an optimistic [`Tx`](crate::router::Tx) on the meta shard;
//! every node refreshes its cache when the meta shard applies an entry, so a
//! ticket is verified locally, without a round trip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_raft::{NodeId, ShardId};
use berth_security::principal::{Principal, PrincipalKind};
use berth_security::scope::Scope;
use berth_security::ticket::{KeyRing, TicketBody, TicketSigner};
use parking_lot::RwLock;
use sha2::Digest as _;

use crate::codec::{decode, encode};
use crate::map::*;
use crate::router::{backoff, too_much_contention, Commit, Router, Tx, TX_RETRIES_MAX};
use crate::{Code, Error};

/// Join token lifetime when none is given.
pub const JOIN_TOKEN_TTL_DEFAULT_SECS: u64 = 3600;
/// Longest join token lifetime.
pub const JOIN_TOKEN_TTL_MAX_SECS: u64 = 7 * 24 * 3600;

/// Default ticket lifetime.
pub const TICKET_TTL_DEFAULT_SECS: u64 = 24 * 3600;
/// Longest ticket lifetime we sign; also how long a rotated-out key keeps
/// verifying the tickets it signed.
pub const TICKET_TTL_MAX_SECS: u64 = 365 * 24 * 3600;

/// A consistent copy of the cluster map, rebuilt whenever the meta shard
/// applies an entry.
#[derive(Default)]
pub struct MapCache {
    pub cluster: Option<ClusterRecord>,
    pub nodes: Vec<NodeRecord>,
    pub volumes: Vec<VolumeRecord>,
    pub shards: Vec<ShardRecord>,
    pub users: BTreeMap<String, UserRecord>,
    pub groups: BTreeMap<String, GroupRecord>,
    pub keys: Vec<KeyRecord>,
    pub keyring: KeyRing,
    /// SCRAM credentials by user name (see [`ScramRecord`]).
    pub scram: BTreeMap<String, ScramRecord>,
    /// Streams' Kafka names: name → the stream's path (see
    /// [`KafkaNameRecord`]).
    pub kafka_names: BTreeMap<String, String>,
}

/// A user's SCRAM credential for one mechanism, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramLookup {
    Found(berth_security::scram::Credential),
    UnknownUser,
    /// A principal without a password (a service, or the bootstrap admin).
    NoPassword,
    /// The password was set before SCRAM credentials were stored (or by a
    /// node that stores none): setting the password again derives them.
    Missing,
}

impl MapCache {
    pub fn cluster_name(&self) -> &str {
        self.cluster.as_ref().map(|c| c.name.as_str()).unwrap_or("")
    }
    pub fn volume(&self, id: u64) -> Option<&VolumeRecord> {
        self.volumes.iter().find(|v| v.id == id)
    }
    pub fn volume_at(&self, path: &str) -> Option<&VolumeRecord> {
        self.volumes.iter().find(|v| v.path == path)
    }
    pub fn shard(&self, id: ShardId) -> Option<&ShardRecord> {
        self.shards.iter().find(|s| s.id == id)
    }
    /// The key new tickets and handles are signed with.
    pub fn active_key(&self) -> Result<&KeyRecord, Error> {
        self.keys
            .iter()
            .find(|k| k.active)
            .ok_or_else(|| Error::new(Code::Io, "no active signing key in the cluster map"))
    }

    pub fn gid_of(&self, group: &str) -> Option<u32> {
        self.groups.get(group).map(|g| g.gid)
    }

    /// The SCRAM credential of `user` for mechanism `m`: only one derived
    /// from the user's current password counts (see [`ScramRecord`]).
    pub fn scram_credential(&self, user: &str, m: berth_security::scram::Mechanism) -> ScramLookup {
        let Some(u) = self.users.get(user) else {
            return ScramLookup::UnknownUser;
        };
        let Some(hash) = u.password_hash.as_deref() else {
            return ScramLookup::NoPassword;
        };
        self.scram
            .get(user)
            .filter(|r| r.is_for(hash))
            .and_then(|r| r.credential(m))
            .map_or(ScramLookup::Missing, ScramLookup::Found)
    }
}

/// What the first start of a cluster writes.
pub struct Bootstrap {
    pub cluster_name: String,
    pub cluster_id: String,
    pub node: NodeRecord,
    /// The cluster CA, which the first node created (table 14).
    pub ca: berth_security::tls::CaMaterial,
    pub now_secs: u64,
    pub now_ns: i64,
}

/// What a joining node asks for (see [`Meta::admit_node`]).
#[derive(Debug, Clone, Default)]
pub struct Applicant {
    /// PKCS#10 request (PEM) for the key the node made.
    pub csr_pem: String,
    /// Host names and IPs it is reached by: its certificate's names.
    pub advertise: Vec<String>,
    pub native_addr: String,
    pub admin_addr: String,
    /// Empty when the node runs no Kafka listener.
    pub kafka_addr: String,
    pub labels: BTreeMap<String, String>,
    /// Empty when the node runs no MongoDB listener.
    pub mongo_addr: String,
}

/// What a join gives the new node.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Its record, as written (state `Joining`).
    pub node: NodeRecord,
    pub cluster: ClusterRecord,
    pub ca_cert_pem: String,
    pub node_cert_pem: String,
    /// Every node of the cluster map, the new one included.
    pub nodes: Vec<NodeRecord>,
}

/// Longest address a joining node may give.
const ADDR_LEN_MAX: usize = 300;
/// How often a node holding no meta replica reads the cluster map from one that does.
const REMOTE_MAP_REFRESH: Duration = Duration::from_secs(1);

pub struct Meta {
    router: Arc<Router>,
    cache: RwLock<Arc<MapCache>>,
    /// Tickets whose signature checked out under the current map.
    verified: parking_lot::Mutex<Verified>,
}

/// Verified tickets: an Ed25519 check per call costs ~0.2 ms of CPU, and a
/// client presents the same ticket on every call. Valid only for the map
/// it was checked under (a new map — key rotation, a removed user — clears
/// it); each hit still checks expiry and that the principal exists.
#[derive(Default)]
struct Verified {
    /// Bumped with every new map; an entry checked under an older map is
    /// not inserted.
    generation: u64,
    tickets: std::collections::HashMap<String, (Principal, u64)>,
    /// File handles whose signature checked out (a read or write of 4 KiB
    /// would otherwise spend more CPU on Ed25519 than on the data).
    handles: std::collections::HashMap<Vec<u8>, berth_security::handle::HandleBody>,
}

/// Verified tickets (and handles) kept at most (then that cache starts over).
const VERIFIED_MAX: usize = 4096;

/// Keeps `value` under `key` if no new map replaced the one it was checked
/// under (`generation`); a full cache starts over.
fn remember<K: std::hash::Hash + Eq, V>(
    current: u64,
    generation: u64,
    cache: &mut std::collections::HashMap<K, V>,
    key: K,
    value: V,
) {
    if current != generation {
        return;
    }
    if cache.len() >= VERIFIED_MAX {
        cache.clear();
    }
    cache.insert(key, value);
}

impl Meta {
    pub fn new(router: Arc<Router>) -> Arc<Meta> {
        Arc::new(Meta {
            router,
            cache: RwLock::new(Arc::new(MapCache::default())),
            verified: parking_lot::Mutex::new(Verified::default()),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The current cached cluster map.
    pub fn map(&self) -> Arc<MapCache> {
        self.cache.read().clone()
    }

    /// Rebuilds the cache from the meta shard (linearizable read), updates the
    /// router's shard table, and creates local replicas of shards this node
    /// is assigned but does not host yet.
    pub async fn refresh(&self) -> Result<(), Error> {
        let tx = self.router.begin(META_SHARD).await?;
        self.load_map(tx).await
    }

    /// Loads the map from this node's meta replica as far as it applied,
    /// without the read barrier: possibly stale, but available before this
    /// node can reach any other (a restarted follower learns its peers'
    /// addresses from it, which its first barrier needs).
    pub async fn refresh_local(&self) -> Result<(), Error> {
        let tx = self.router.begin_optimistic(META_SHARD)?;
        self.load_map(tx).await
    }

    async fn load_map(&self, tx: crate::router::Tx) -> Result<(), Error> {
        let mut map = MapCache::default();
        if let Some(v) = tx.peek(&cluster_key()).await? {
            map.cluster = Some(decode(&v, "cluster")?);
        }
        let (start, end) = table_range(T_NODE);
        map.nodes = tx
            .peek_range(&start, &end, usize::MAX)
            .await?
            .iter()
            .map(|(_, v)| decode_node(v))
            .collect::<Result<_, _>>()?;
        let (start, end) = table_range(T_VOLUME);
        map.volumes = tx
            .peek_range(&start, &end, usize::MAX)
            .await?
            .iter()
            .map(|(_, v)| decode_volume(v))
            .collect::<Result<_, _>>()?;
        map.shards = scan_table(&tx, T_SHARD, "shard").await?;
        for u in scan_table::<UserRecord>(&tx, T_USER, "user").await? {
            map.users.insert(u.name.clone(), u);
        }
        for g in scan_table::<GroupRecord>(&tx, T_GROUP, "group").await? {
            map.groups.insert(g.name.clone(), g);
        }
        map.keys = scan_table(&tx, T_KEY, "signing key").await?;
        // Only Kafka SCRAM logins depend on these: a record this build
        // cannot decode costs that user SCRAM, not the whole map.
        let (start, end) = table_range(T_SCRAM);
        for (_, v) in tx.peek_range(&start, &end, usize::MAX).await? {
            match decode::<ScramRecord>(&v, "SCRAM credentials") {
                Ok(r) => {
                    map.scram.insert(r.name.clone(), r);
                }
                Err(e) => tracing::warn!(error = %e, "skipping a SCRAM record"),
            }
        }
        for r in scan_table::<KafkaNameRecord>(&tx, T_KAFKA_NAME, "Kafka name").await? {
            map.kafka_names.insert(r.name, r.path);
        }
        let now = berth_security::now_secs();
        for k in &map.keys {
            if k.retire_after == 0 || k.retire_after > now {
                map.keyring.insert(k.id, k.public);
            }
        }
        self.router.set_shards(map.shards.clone());
        let me = self.router.node_id();
        let hosted: Vec<ShardId> = self.router.raft().shards().iter().map(|d| d.id).collect();
        for s in &map.shards {
            // Only a shard that never had a leader is created from its record (all its
            // first replicas start from the same configuration). A replica added later is
            // created empty by the placement driver before it joins the group, and one that
            // was removed must not come back from a record not yet updated.
            if s.replicas.contains(&me)
                && !hosted.contains(&s.id)
                && s.leader_hint == 0
                && !self.router.raft().was_removed(s.id)?
            {
                self.router.raft().create_shard(s.desc())?;
            }
        }
        *self.cache.write() = Arc::new(map);
        // A new map may revoke what the old one verified.
        let mut v = self.verified.lock();
        v.generation += 1;
        v.tickets.clear();
        v.handles.clear();
        Ok(())
    }

    /// Keeps the cache fresh: refreshes after every applied meta entry (and
    /// every few seconds, so retired keys drop out of the key ring). A node
    /// holding no meta replica (a cluster larger than the meta shard's
    /// replication, or a replica moved away) reads the map from one that
    /// does, every [`REMOTE_MAP_REFRESH`], and follows its own replica again
    /// once it has one.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let meta = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut watch = None;
            loop {
                let Some(m) = meta.upgrade() else { return };
                if watch.is_none() {
                    watch = m.router.raft().applied_watch(META_SHARD);
                }
                drop(m);
                match watch.as_mut() {
                    Some(w) => {
                        let changed =
                            tokio::time::timeout(Duration::from_secs(5), w.changed()).await;
                        if let Ok(Err(_)) = changed {
                            // The replica was destroyed (or the node stopped).
                            watch = None;
                            tokio::time::sleep(REMOTE_MAP_REFRESH).await;
                        }
                    }
                    None => tokio::time::sleep(REMOTE_MAP_REFRESH).await,
                }
                let Some(m) = meta.upgrade() else { return };
                if m.router.raft().is_stopped() {
                    return;
                }
                if let Err(e) = m.refresh().await {
                    tracing::debug!(error = %e, "cluster map refresh failed; will retry");
                }
            }
        });
    }

    /// Records the replicas of a shard (voters first) after a membership change, so routing
    /// and operators see where it lives. The Raft group stays the authority.
    pub async fn set_shard_replicas(
        &self,
        shard: ShardId,
        replicas: Vec<NodeId>,
    ) -> Result<(), Error> {
        let current = self.map().shards.iter().find(|s| s.id == shard).cloned();
        if current.is_none_or(|s| s.replicas == replicas) {
            return Ok(());
        }
        self.update(&shard_key(shard), "shard replicas", |cur| {
            // (`None` would delete the record: a shard removed meanwhile stays removed.)
            let Some(cur) = cur else { return Ok(None) };
            let mut s: ShardRecord = decode(&cur, "shard")?;
            s.replicas = replicas.clone();
            Ok(Some(encode(&s)))
        })
        .await
    }

    /// Records this node as leader hint of every shard it leads whose hint
    /// says otherwise, so any node can route a key to its leader.
    pub async fn report_leaders(&self) -> Result<(), Error> {
        let me = self.router.node_id();
        let stale: Vec<ShardId> = self
            .map()
            .shards
            .iter()
            .filter(|s| s.leader_hint != me && self.router.raft().leader(s.id) == Some(me))
            .map(|s| s.id)
            .collect();
        for id in stale {
            self.update(&shard_key(id), "leader hint", |cur| {
                let Some(cur) = cur else { return Ok(None) };
                let mut s: ShardRecord = decode(&cur, "shard")?;
                s.leader_hint = me;
                Ok(Some(encode(&s)))
            })
            .await?;
        }
        Ok(())
    }

    /// Keeps the leader hints of the shards this node leads current.
    pub fn spawn_leader_reporter(self: &Arc<Self>, every: Duration) {
        let meta = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(meta) = meta.upgrade() else { return };
                if let Err(e) = meta.report_leaders().await {
                    tracing::debug!(error = %e, "reporting shard leaders failed; will retry");
                }
            }
        });
    }

    /// Writes the initial cluster map. Idempotent: does nothing when the
    /// cluster record already exists. Returns the admin ticket.
    pub async fn bootstrap(&self, b: &Bootstrap) -> Result<(), Error> {
        let signer = TicketSigner::generate(1);
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if tx.get(&cluster_key()).await?.is_some() {
                return Ok(());
            }
            tx.put(
                cluster_key(),
                encode(&ClusterRecord {
                    name: b.cluster_name.clone(),
                    id: b.cluster_id.clone(),
                    created_at: b.now_secs,
                }),
            );
            tx.put(node_key(b.node.id), encode(&b.node));
            tx.put(
                ca_key(1),
                encode(&CaRecord {
                    id: 1,
                    cert_pem: b.ca.cert_pem.clone(),
                    key_pem: b.ca.key_pem.clone(),
                    created_at: b.now_secs,
                }),
            );
            tx.put(
                signing_key_key(1),
                encode(&KeyRecord {
                    id: 1,
                    secret: signer.secret_bytes(),
                    public: signer.verifying_key_bytes(),
                    created_at: b.now_secs,
                    active: true,
                    retire_after: 0,
                }),
            );
            tx.put(
                group_key("admin"),
                encode(&GroupRecord {
                    name: "admin".into(),
                    gid: 0,
                }),
            );
            tx.put(
                user_key("admin"),
                encode(&UserRecord {
                    name: "admin".into(),
                    uid: 0,
                    kind: PrincipalKind::User,
                    password_hash: None,
                    groups: vec!["admin".into()],
                }),
            );
            tx.put(
                shard_key(META_SHARD),
                encode(&ShardRecord::meta(vec![b.node.id])),
            );
            let shard = ShardRecord::for_volume(ROOT_SHARD, ROOT_VOLUME, vec![b.node.id]);
            tx.put(shard_key(ROOT_SHARD), encode(&shard));
            tx.put(
                volume_key(ROOT_VOLUME),
                encode(&VolumeRecord {
                    id: ROOT_VOLUME,
                    path: "/".into(),
                    replication: 3,
                    quota_bytes: 0,
                    read_ace: None,
                    write_ace: None,
                    shard_id: ROOT_SHARD,
                    root_inode: crate::ROOT_INODE,
                    created_ns: b.now_ns,
                    state: VolumeState::Creating,
                    parent_volume: 0,
                    chunk_size: CHUNK_SIZE_DEFAULT,
                    leader_preference: None,
                }),
            );
            tx.put(volume_path_key("/"), ROOT_VOLUME.to_be_bytes().to_vec());
            for (name, next) in [
                (C_VOLUME_ID, ROOT_VOLUME + 1),
                (C_SHARD_ID, ROOT_SHARD + 1),
                (C_UID, u64::from(FIRST_ID)),
                (C_GID, u64::from(FIRST_ID)),
                (C_KEY_ID, 2),
                (C_NODE_ID, b.node.id + 1),
            ] {
                tx.put(counter_key(name), next.to_be_bytes().to_vec());
            }
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention("bootstrap"))
    }

    /// Records the cluster CA `ca` in the cluster map (table 14) unless the
    /// map holds one: what a cluster bootstrapped before the table existed
    /// needs once, from its first node's `ca.key`. The check and the write
    /// are one transaction, so it is idempotent and needs no setup step.
    /// Returns whether it wrote.
    pub async fn ensure_ca_record(
        &self,
        ca: &berth_security::tls::CaMaterial,
    ) -> Result<bool, Error> {
        let (start, end) = table_range(T_CA);
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if !tx.is_range_empty(&start, &end).await? {
                let held: Vec<CaRecord> = scan_table(&tx, T_CA, "cluster CA").await?;
                if !held.iter().any(|r| r.cert_pem.trim() == ca.cert_pem.trim()) {
                    tracing::warn!("the cluster map holds another CA than this node's tls/ca.crt: joining nodes get the map's");
                }
                return Ok(false);
            }
            tx.put(
                ca_key(1),
                encode(&CaRecord {
                    id: 1,
                    cert_pem: ca.cert_pem.clone(),
                    key_pem: ca.key_pem.clone(),
                    created_at: berth_security::now_secs(),
                }),
            );
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(true);
            }
        }
        Err(too_much_contention("recording the cluster CA"))
    }

    /// The recorded state of the one-time setup step `step` (first-start
    /// work outside the meta shard, such as the default Kafka stream, that
    /// must be resumed after a crash and not redone after it finished).
    /// `None`: never started.
    pub async fn setup_step(&self, step: &str) -> Result<Option<Vec<u8>>, Error> {
        let tx = self.router.begin(META_SHARD).await?;
        tx.peek(&setup_key(step)).await
    }

    /// Records the state of the setup step `step` (see [`Meta::setup_step`]).
    pub async fn set_setup_step(&self, step: &str, state: &[u8]) -> Result<(), Error> {
        self.update(&setup_key(step), "setup step", |_| Ok(Some(state.to_vec())))
            .await
    }

    /// Runs a first-start setup step once per cluster: nothing once it is
    /// done; done at once when `exists` finds what it makes already there at
    /// the first try (the operator made it); else `make`, again after an
    /// attempt that was interrupted. A step done is never redone, so what
    /// the operator changes or removes afterwards stays so.
    pub async fn setup_once<E, M>(&self, step: &str, exists: E, make: M) -> Result<(), Error>
    where
        E: std::future::Future<Output = Result<bool, Error>>,
        M: std::future::Future<Output = Result<(), Error>>,
    {
        const STARTED: &[u8] = b"started";
        const DONE: &[u8] = b"done";
        match self.setup_step(step).await?.as_deref() {
            Some(DONE) => return Ok(()),
            Some(_) => {}
            None => {
                if exists.await? {
                    return self.set_setup_step(step, DONE).await;
                }
                self.set_setup_step(step, STARTED).await?;
            }
        }
        make.await?;
        self.set_setup_step(step, DONE).await
    }

    /// Claims the Kafka name `name` for the stream at `path`. A claim by
    /// another path is `Exists` unless that path is `stale_holder` (the
    /// caller found that its stream no longer carries the name); the check
    /// and the write are one transaction.
    pub async fn claim_kafka_name(
        &self,
        name: &str,
        path: &str,
        stale_holder: Option<&str>,
    ) -> Result<(), Error> {
        self.update(&kafka_name_key(name), "Kafka name", |cur| {
            if let Some(cur) = cur {
                let r: KafkaNameRecord = decode(&cur, "Kafka name")?;
                if r.path != path && Some(r.path.as_str()) != stale_holder {
                    return Err(Error::new(
                        Code::Exists,
                        format!("the Kafka name {name:?} belongs to the stream {}", r.path),
                    ));
                }
            }
            Ok(Some(encode(&KafkaNameRecord {
                name: name.to_string(),
                path: path.to_string(),
            })))
        })
        .await
    }

    /// Drops the Kafka name `name` if it is recorded for `path`.
    pub async fn release_kafka_name(&self, name: &str, path: &str) -> Result<(), Error> {
        self.update(&kafka_name_key(name), "Kafka name", |cur| {
            let Some(cur) = cur else { return Ok(None) };
            let r: KafkaNameRecord = decode(&cur, "Kafka name")?;
            Ok(if r.path == path { None } else { Some(cur) })
        })
        .await
    }

    // ------------------------------------------------------------ join tokens

    /// Issues a join token (cluster administrators only): valid for
    /// `ttl_secs` (1 hour when 0, at most [`JOIN_TOKEN_TTL_MAX_SECS`]) and
    /// `uses` joins (at least 1), carrying the CA's fingerprint and the
    /// servers a new node should contact.
    pub async fn create_join_token(
        &self,
        by: &Principal,
        ttl_secs: u64,
        uses: u32,
        ca_sha256: [u8; 32],
        servers: Vec<String>,
    ) -> Result<(String, JoinTokenRecord), Error> {
        require_admin(by)?;
        let ttl = match ttl_secs {
            0 => JOIN_TOKEN_TTL_DEFAULT_SECS,
            t if t > JOIN_TOKEN_TTL_MAX_SECS => {
                return Err(Error::invalid(format!(
                    "join token lifetime {t}s exceeds the maximum of {JOIN_TOKEN_TTL_MAX_SECS}s"
                )))
            }
            t => t,
        };
        if uses == 0 {
            return Err(Error::invalid("a join token admits at least 1 node"));
        }
        let map = self.map();
        let cluster_id = map
            .cluster
            .as_ref()
            .map(|c| c.id.clone())
            .ok_or_else(|| Error::new(Code::Again, "the cluster map is not loaded yet"))?;
        let key = map.active_key()?;
        let now = berth_security::now_secs();
        let id: String = (0..8)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let record = JoinTokenRecord {
            id: id.clone(),
            created_by: by.name.clone(),
            created_at: now,
            expires_at: now + ttl,
            uses_left: uses,
            revoked: false,
        };
        let body = berth_security::join::JoinTokenBody {
            version: 1,
            key_id: key.id,
            cluster_id,
            id: id.clone(),
            ca_sha256,
            expires_at: record.expires_at,
            servers,
        };
        let signer = TicketSigner::from_bytes(key.id, &key.secret);
        let token = berth_security::join::sign(&signer, &body);
        let rec = record.clone();
        self.update(&join_token_key(&id), "join token", |cur| match cur {
            Some(_) => Err(Error::exists(format!("join token {id}"))),
            None => Ok(Some(encode(&rec))),
        })
        .await?;
        tracing::info!(target: "audit", by = %by.name, token = %id, uses, expires_at = record.expires_at, "join token issued");
        Ok((token, record))
    }

    /// Every join token issued (cluster administrators only).
    pub async fn join_tokens(&self, by: &Principal) -> Result<Vec<JoinTokenRecord>, Error> {
        require_admin(by)?;
        let tx = self.router.begin(META_SHARD).await?;
        scan_table(&tx, T_JOIN_TOKEN, "join token").await
    }

    /// Ends a join token early (cluster administrators only); revoking it
    /// again is not an error.
    pub async fn revoke_join_token(&self, by: &Principal, id: &str) -> Result<(), Error> {
        require_admin(by)?;
        self.update(&join_token_key(id), "join token", |cur| {
            let cur = cur.ok_or_else(|| Error::not_found(format!("join token {id}")))?;
            let mut r: JoinTokenRecord = decode(&cur, "join token")?;
            r.revoked = true;
            Ok(Some(encode(&r)))
        })
        .await?;
        tracing::info!(target: "audit", by = %by.name, token = %id, "join token revoked");
        Ok(())
    }

    /// Admits one join with `token`: checks its signature, cluster and
    /// expiry, then takes one use in the same transaction that checks it was
    /// not revoked or used up. Errors say which (a joining node prints them).
    pub async fn redeem_join_token(
        &self,
        token: &str,
    ) -> Result<berth_security::join::JoinTokenBody, Error> {
        let body = self.verify_join_token(token)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            take_join_token_use(&mut tx, &body.id).await?;
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(body);
            }
        }
        Err(too_much_contention("join token"))
    }

    /// A join token's signature, cluster and expiry, against the cached
    /// key ring.
    fn verify_join_token(&self, token: &str) -> Result<berth_security::join::JoinTokenBody, Error> {
        use berth_security::join::JoinError;
        let map = self.map();
        let cluster_id = map.cluster.as_ref().map(|c| c.id.as_str()).unwrap_or("");
        let now = berth_security::now_secs();
        berth_security::join::verify(token, &map.keyring, cluster_id, now).map_err(|e| match e {
            JoinError::Expired => Error::new(Code::Auth, "the join token expired"),
            e => Error::new(Code::Auth, e.to_string()),
        })
    }

    /// Admits a new node with a join token, in one transaction: takes one
    /// use of the token, gives the node the next node id (never one used
    /// before), signs its certificate request with the cluster CA (table
    /// 14) and writes its record in state `Joining`. A request refused for
    /// its certificate request or its addresses costs no use of the token.
    pub async fn admit_node(&self, token: &str, a: &Applicant) -> Result<Admission, Error> {
        check_applicant(a)?;
        let body = self.verify_join_token(token)?;
        let request: [u8; 32] = sha2::Sha256::digest(a.csr_pem.as_bytes()).into();
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if let Some(v) = tx.get(&admission_key(&request)).await? {
                let rec: AdmissionRecord = decode(&v, "admission")?;
                return self.admitted_again(&tx, a, &body.id, rec).await;
            }
            take_join_token_use(&mut tx, &body.id).await?;
            let (cluster, ca, nodes) = join_context(&tx).await?;
            // Ids are never reused: the counter only grows, and a cluster
            // bootstrapped before it existed starts it above every node.
            let counted = match tx.get(&counter_key(C_NODE_ID)).await? {
                Some(v) => u64::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| Error::corrupt(format!("counter {C_NODE_ID}")))?,
                ),
                None => 2,
            };
            let above = nodes.iter().map(|n| n.id + 1).max().unwrap_or(2);
            let id = counted.max(above).max(2);
            tx.put(counter_key(C_NODE_ID), (id + 1).to_be_bytes().to_vec());
            if tx.get(&node_key(id)).await?.is_some() {
                return Err(Error::corrupt(format!(
                    "node {id} already has a record although the id counter gave it out"
                )));
            }
            let node_cert_pem = sign_node(&ca, &a.csr_pem, id, &a.advertise)?;
            let node = NodeRecord {
                id,
                native_addr: a.native_addr.clone(),
                admin_addr: a.admin_addr.clone(),
                advertise: a.advertise.clone(),
                started_at: berth_security::now_secs(),
                kafka_addr: a.kafka_addr.clone(),
                labels: a.labels.clone(),
                state: NodeState::Joining,
                mongo_addr: a.mongo_addr.clone(),
            };
            tx.put(node_key(id), encode(&node));
            tx.put(
                admission_key(&request),
                encode(&AdmissionRecord {
                    node: id,
                    token_id: body.id.clone(),
                }),
            );
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                tracing::info!(target: "audit", node = id, token = %body.id, native_addr = %node.native_addr, "node admitted by a join token");
                let mut all = nodes;
                all.push(node.clone());
                return Ok(Admission {
                    node,
                    cluster,
                    ca_cert_pem: ca.cert_pem,
                    node_cert_pem,
                    nodes: all,
                });
            }
        }
        Err(too_much_contention("join"))
    }

    /// The answer to a join request admitted before (its first answer was lost on the way):
    /// the same node id, a certificate for the same key, no other use of the token. Only
    /// while that node is still `joining` and through the token that admitted it.
    async fn admitted_again(
        &self,
        tx: &Tx,
        a: &Applicant,
        token_id: &str,
        rec: AdmissionRecord,
    ) -> Result<Admission, Error> {
        let id = rec.node;
        if rec.token_id != token_id {
            return Err(Error::new(
                Code::Auth,
                format!("this join request admitted node {id} with another join token"),
            ));
        }
        let node = match tx.peek(&node_key(id)).await? {
            Some(v) => decode_node(&v)?,
            None => {
                return Err(Error::new(
                    Code::Exists,
                    format!(
                    "this join request admitted node {id}, removed since: start the node afresh"
                ),
                ))
            }
        };
        if node.state != NodeState::Joining {
            return Err(Error::new(
                Code::Exists,
                format!("this join request admitted node {id}, which has joined since"),
            ));
        }
        let (cluster, ca, nodes) = join_context(tx).await?;
        let node_cert_pem = sign_node(&ca, &a.csr_pem, id, &node.advertise)?;
        tracing::info!(target: "audit", node = id, token = %token_id, "a join request answered again (its first answer was lost)");
        Ok(Admission {
            node,
            cluster,
            ca_cert_pem: ca.cert_pem,
            node_cert_pem,
            nodes,
        })
    }

    /// Records (or updates) this node's addresses in the cluster map. Its
    /// state is the cluster's to change ([`Meta::set_node_state`]): a
    /// stored one is kept.
    pub async fn register_node(&self, node: &NodeRecord) -> Result<(), Error> {
        self.update(&node_key(node.id), "register node", |cur| {
            let mut rec = node.clone();
            if let Some(Ok(stored)) = cur.map(|c| decode_node(&c)) {
                rec.state = stored.state;
            }
            Ok(Some(encode(&rec)))
        })
        .await
    }

    /// Moves node `id` to `state` (the placement runtime's step once a
    /// joining node holds replicas, or a drain's).
    /// Forgets a node: its record goes (its id is never reused; the counter
    /// stays above it) and its certificate no longer admits it.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), Error> {
        self.update(&node_key(id), "remove node", |cur| {
            cur.ok_or_else(|| Error::not_found(format!("node {id}")))?;
            Ok(None)
        })
        .await
    }

    pub async fn set_node_state(&self, id: NodeId, state: NodeState) -> Result<(), Error> {
        self.update(&node_key(id), "node state", |cur| {
            let cur = cur.ok_or_else(|| Error::not_found(format!("node {id}")))?;
            let mut rec = decode_node(&cur)?;
            rec.state = state;
            Ok(Some(encode(&rec)))
        })
        .await
    }

    // ------------------------------------------------------------ tickets

    /// Verifies a ticket locally against the cached key ring and returns the
    /// principal it proves. A ticket of a removed user or service is refused.
    pub fn authenticate(&self, ticket: &str) -> Result<Principal, Error> {
        // Generation before map: a map replaced in between makes the
        // insert below a no-op.
        let generation = self.verified.lock().generation;
        let map = self.map();
        if map.cluster.is_none() {
            return Err(Error::new(
                Code::Again,
                "this node is still loading the cluster map; retry",
            ));
        }
        let now = berth_security::now_secs();
        let cached = {
            let v = self.verified.lock();
            v.tickets
                .get(ticket)
                .filter(|(_, expires_at)| v.generation == generation && now < *expires_at)
                .map(|(p, _)| p.clone())
        };
        let principal = match cached {
            Some(p) => p,
            None => {
                let body = map
                    .keyring
                    .verify_body(ticket, map.cluster_name(), now)
                    .map_err(|e| Error::new(Code::Auth, format!("invalid ticket: {e}")))?;
                let p = body.to_principal();
                let v = &mut *self.verified.lock();
                let entry = (p.clone(), body.expires_at);
                remember(
                    v.generation,
                    generation,
                    &mut v.tickets,
                    ticket.to_string(),
                    entry,
                );
                p
            }
        };
        match principal.kind {
            PrincipalKind::Node => Ok(principal),
            PrincipalKind::User | PrincipalKind::Service => match map.users.get(&principal.name) {
                Some(u) if u.uid == principal.uid => Ok(principal),
                _ => Err(Error::new(
                    Code::Auth,
                    format!(
                        "ticket of {:?} is no longer valid: the principal was removed",
                        principal.name
                    ),
                )),
            },
        }
    }

    /// Signs a ticket for `user` (which must exist) with the active key.
    pub fn sign_for(
        &self,
        user: &str,
        scope: Option<Scope>,
        ttl_secs: u64,
    ) -> Result<(String, TicketBody), Error> {
        let map = self.map();
        let u = map
            .users
            .get(user)
            .ok_or_else(|| Error::not_found(format!("principal {user:?}")))?;
        let key = map.active_key()?;
        let ttl = match ttl_secs {
            0 => TICKET_TTL_DEFAULT_SECS,
            t if t > TICKET_TTL_MAX_SECS => {
                return Err(Error::invalid(format!(
                    "ticket lifetime {t}s exceeds the maximum of {TICKET_TTL_MAX_SECS}s"
                )))
            }
            t => t,
        };
        let now = berth_security::now_secs();
        let gids = u.groups.iter().filter_map(|g| map.gid_of(g)).collect();
        let body = TicketBody {
            version: 1,
            key_id: key.id,
            cluster: map.cluster_name().to_string(),
            principal: u.name.clone(),
            kind: u.kind.clone(),
            uid: u.uid,
            gids,
            groups: u.groups.clone(),
            issued_at: now,
            expires_at: now + ttl,
            scope,
        };
        let signer = TicketSigner::from_bytes(key.id, &key.secret);
        Ok((signer.sign(&body), body))
    }

    /// Signs a ticket for a node of this cluster (node-to-node traffic).
    pub fn sign_node_ticket(&self, node: NodeId) -> Result<String, Error> {
        let map = self.map();
        let key = map.active_key()?;
        let now = berth_security::now_secs();
        let body = TicketBody {
            version: 1,
            key_id: key.id,
            cluster: map.cluster_name().to_string(),
            principal: format!("node:{node}"),
            kind: PrincipalKind::Node,
            uid: 0,
            gids: vec![0],
            groups: vec![],
            issued_at: now,
            expires_at: now + TICKET_TTL_DEFAULT_SECS,
            scope: None,
        };
        Ok(TicketSigner::from_bytes(key.id, &key.secret).sign(&body))
    }

    /// Signs a file handle with the active key.
    pub fn seal_handle(&self, body: &berth_security::handle::HandleBody) -> Result<Vec<u8>, Error> {
        let map = self.map();
        let key = map.active_key()?;
        let signer = TicketSigner::from_bytes(key.id, &key.secret);
        Ok(berth_security::handle::seal(body, &signer))
    }

    /// Verifies a file handle presented by `principal`.
    pub fn open_handle(
        &self,
        handle: &[u8],
        principal: &str,
    ) -> Result<berth_security::handle::HandleBody, Error> {
        use berth_security::handle::HandleError;
        let denied = |e: HandleError| Error::new(Code::Access, e.to_string());
        // Generation before map, as in `authenticate`.
        let generation = self.verified.lock().generation;
        let now = berth_security::now_secs();
        let cached = {
            let v = self.verified.lock();
            v.handles
                .get(handle)
                .filter(|_| v.generation == generation)
                .cloned()
        };
        if let Some(body) = cached {
            // What `handle::open` checks beyond the signature and cluster.
            if now >= body.expires_at {
                return Err(denied(HandleError::Expired));
            }
            if body.principal != principal {
                return Err(denied(HandleError::WrongPrincipal {
                    issued_to: body.principal,
                }));
            }
            return Ok(body);
        }
        let map = self.map();
        let body =
            berth_security::handle::open(handle, &map.keyring, map.cluster_name(), principal, now)
                .map_err(denied)?;
        let v = &mut *self.verified.lock();
        remember(
            v.generation,
            generation,
            &mut v.handles,
            handle.to_vec(),
            body.clone(),
        );
        Ok(body)
    }

    /// Exchanges a user's password for a ticket.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        ttl_secs: u64,
    ) -> Result<(String, TicketBody), Error> {
        // Read through the barrier so a just-changed password counts.
        self.refresh().await?;
        let map = self.map();
        let denied = || Error::new(Code::Auth, "login failed: unknown user or wrong password");
        let u = map.users.get(user).ok_or_else(denied)?;
        let hash = u.password_hash.as_deref().ok_or_else(denied)?;
        if !berth_security::password::verify_password(password, hash) {
            return Err(denied());
        }
        self.sign_for(user, None, ttl_secs)
    }

    /// Issues a ticket. Administrators may issue for anyone; any principal may
    /// issue for itself, narrowed to a scope within its own.
    pub fn issue_ticket(
        &self,
        by: &Principal,
        principal: &str,
        scope: Option<Scope>,
        ttl_secs: u64,
    ) -> Result<(String, TicketBody), Error> {
        if by.is_admin() && by.scope.is_none() {
            return self.sign_for(principal, scope, ttl_secs);
        }
        if by.name != principal {
            return Err(Error::new(
                Code::Perm,
                "only an administrator may issue tickets for another principal",
            ));
        }
        let scope = match (&by.scope, scope) {
            (None, s) => s,
            (Some(own), None) => Some(own.clone()),
            (Some(own), Some(s)) => {
                for e in &s.0 {
                    let want = match e.rights {
                        berth_security::scope::Rights::Read => berth_security::scope::Access::Read,
                        berth_security::scope::Rights::ReadWrite => {
                            berth_security::scope::Access::Write
                        }
                        berth_security::scope::Rights::Admin => {
                            berth_security::scope::Access::Admin
                        }
                    };
                    if !own.allows(&e.prefix, want) {
                        return Err(Error::access(format!(
                            "scope {e} is wider than the caller's own ticket scope"
                        )));
                    }
                }
                Some(s)
            }
        };
        self.sign_for(principal, scope, ttl_secs)
    }

    // ------------------------------------------------------------ principals

    pub async fn user_add(
        &self,
        by: &Principal,
        name: &str,
        password: Option<&str>,
        uid: Option<u32>,
        groups: Vec<String>,
        service: bool,
    ) -> Result<UserRecord, Error> {
        require_admin(by)?;
        validate_name(name)?;
        if !service && password.map(str::is_empty).unwrap_or(true) {
            return Err(Error::invalid(
                "a user needs a password (or add a service principal with --service)",
            ));
        }
        let password_hash = match password {
            Some(p) if !p.is_empty() => Some(
                berth_security::password::hash_password(p)
                    .map_err(|e| Error::new(Code::Io, format!("hashing password: {e}")))?,
            ),
            _ => None,
        };
        let scram = match (password, &password_hash) {
            (Some(p), Some(hash)) => Some(derive_scram(name, p, hash)?),
            _ => None,
        };
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if tx.get(&user_key(name)).await?.is_some() {
                return Err(Error::exists(format!("principal {name:?}")));
            }
            for g in &groups {
                if tx.get(&group_key(g)).await?.is_none() {
                    return Err(Error::not_found(format!(
                        "group {g:?} (create it with `berth group add {g}`)"
                    )));
                }
            }
            let uid = match uid {
                Some(u) => u,
                None => next_counter(&mut tx, C_UID).await? as u32,
            };
            let users: Vec<UserRecord> = scan_table(&tx, T_USER, "user").await?;
            if let Some(other) = users.iter().find(|u| u.uid == uid) {
                return Err(Error::exists(format!(
                    "uid {uid} already belongs to {:?}",
                    other.name
                )));
            }
            let rec = UserRecord {
                name: name.to_string(),
                uid,
                kind: if service {
                    PrincipalKind::Service
                } else {
                    PrincipalKind::User
                },
                password_hash: password_hash.clone(),
                groups: groups.clone(),
            };
            tx.put(user_key(name), encode(&rec));
            match &scram {
                Some(r) => tx.put(scram_key(name), encode(r)),
                None => tx.delete(scram_key(name)),
            }
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(rec);
            }
        }
        Err(too_much_contention("user add"))
    }

    pub async fn user_remove(&self, by: &Principal, name: &str) -> Result<(), Error> {
        require_admin(by)?;
        if name == "admin" {
            return Err(Error::new(
                Code::Perm,
                "the admin principal cannot be removed",
            ));
        }
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if tx.get(&user_key(name)).await?.is_none() {
                return Err(Error::not_found(format!("principal {name:?}")));
            }
            tx.delete(user_key(name));
            tx.delete(scram_key(name));
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention("user remove"))
    }

    pub async fn user_password(
        &self,
        by: &Principal,
        name: &str,
        password: &str,
    ) -> Result<(), Error> {
        if !(by.is_admin() && by.scope.is_none()) && by.name != name {
            return Err(Error::new(
                Code::Perm,
                "only an administrator may change another principal's password",
            ));
        }
        if password.is_empty() {
            return Err(Error::invalid("the password may not be empty"));
        }
        let hash = berth_security::password::hash_password(password)
            .map_err(|e| Error::new(Code::Io, format!("hashing password: {e}")))?;
        // The SCRAM credentials change with the password, in the same
        // transaction.
        let scram = derive_scram(name, password, &hash)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            let cur = tx
                .get(&user_key(name))
                .await?
                .ok_or_else(|| Error::not_found(format!("principal {name:?}")))?;
            let mut u: UserRecord = decode(&cur, "user")?;
            u.password_hash = Some(hash.clone());
            tx.put(user_key(name), encode(&u));
            tx.put(scram_key(name), encode(&scram));
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention("user password"))
    }

    pub async fn group_add(
        &self,
        by: &Principal,
        name: &str,
        gid: Option<u32>,
    ) -> Result<GroupRecord, Error> {
        require_admin(by)?;
        validate_name(name)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if tx.get(&group_key(name)).await?.is_some() {
                return Err(Error::exists(format!("group {name:?}")));
            }
            let gid = match gid {
                Some(g) => g,
                None => next_counter(&mut tx, C_GID).await? as u32,
            };
            let groups: Vec<GroupRecord> = scan_table(&tx, T_GROUP, "group").await?;
            if let Some(other) = groups.iter().find(|g| g.gid == gid) {
                return Err(Error::exists(format!(
                    "gid {gid} already belongs to group {:?}",
                    other.name
                )));
            }
            let rec = GroupRecord {
                name: name.to_string(),
                gid,
            };
            tx.put(group_key(name), encode(&rec));
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(rec);
            }
        }
        Err(too_much_contention("group add"))
    }

    pub async fn group_remove(&self, by: &Principal, name: &str) -> Result<(), Error> {
        require_admin(by)?;
        if name == "admin" {
            return Err(Error::new(Code::Perm, "the admin group cannot be removed"));
        }
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if tx.get(&group_key(name)).await?.is_none() {
                return Err(Error::not_found(format!("group {name:?}")));
            }
            tx.delete(group_key(name));
            // Drop the membership from every user in the same command.
            for mut u in scan_table::<UserRecord>(&tx, T_USER, "user").await? {
                if u.groups.iter().any(|g| g == name) {
                    let key = user_key(&u.name);
                    tx.get(&key).await?;
                    u.groups.retain(|g| g != name);
                    tx.put(key, encode(&u));
                }
            }
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention("group remove"))
    }

    /// Adds (`add = true`) or removes a user from a group.
    pub async fn group_member(
        &self,
        by: &Principal,
        group: &str,
        user: &str,
        add: bool,
    ) -> Result<(), Error> {
        require_admin(by)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if tx.get(&group_key(group)).await?.is_none() {
                return Err(Error::not_found(format!("group {group:?}")));
            }
            let key = user_key(user);
            let mut u: UserRecord = decode(
                &tx.get(&key)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("principal {user:?}")))?,
                "user",
            )?;
            let member = u.groups.iter().any(|g| g == group);
            match (add, member) {
                (true, true) | (false, false) => return Ok(()),
                (true, false) => u.groups.push(group.to_string()),
                (false, true) => u.groups.retain(|g| g != group),
            }
            tx.put(key, encode(&u));
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention("group membership"))
    }

    /// Members of a group, from the cache.
    pub fn group_members(&self, group: &str) -> Vec<String> {
        self.map()
            .users
            .values()
            .filter(|u| u.groups.iter().any(|g| g == group))
            .map(|u| u.name.clone())
            .collect()
    }

    // ------------------------------------------------------------ keys

    /// Makes a new signing key active. The old active key keeps verifying the
    /// tickets it signed until they can have expired.
    pub async fn rotate_key(&self, by: &Principal) -> Result<(), Error> {
        require_admin(by)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            let id = next_counter(&mut tx, C_KEY_ID).await? as u32;
            let now = berth_security::now_secs();
            for mut k in scan_table::<KeyRecord>(&tx, T_KEY, "signing key").await? {
                if k.active {
                    let key = signing_key_key(k.id);
                    tx.get(&key).await?;
                    k.active = false;
                    k.retire_after = now + TICKET_TTL_MAX_SECS;
                    tx.put(key, encode(&k));
                }
            }
            let signer = TicketSigner::generate(id);
            tx.put(
                signing_key_key(id),
                encode(&KeyRecord {
                    id,
                    secret: signer.secret_bytes(),
                    public: signer.verifying_key_bytes(),
                    created_at: now,
                    active: true,
                    retire_after: 0,
                }),
            );
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention("key rotation"))
    }

    // ------------------------------------------------------------ volumes

    /// Allocates the next value of a counter in its own transaction.
    pub async fn allocate(&self, counter: &str) -> Result<u64, Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            let v = next_counter(&mut tx, counter).await?;
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(v);
            }
        }
        Err(too_much_contention("id allocation"))
    }

    /// Writes a new volume and its shard, state `Creating`. Fails with EEXIST
    /// when a volume is already mounted at the path.
    pub async fn create_volume_record(
        &self,
        vol: &VolumeRecord,
        shard: &ShardRecord,
    ) -> Result<(), Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            if tx.get(&volume_path_key(&vol.path)).await?.is_some() {
                return Err(Error::exists(format!("volume at {}", vol.path)));
            }
            tx.put(volume_key(vol.id), encode(vol));
            tx.put(volume_path_key(&vol.path), vol.id.to_be_bytes().to_vec());
            tx.put(shard_key(shard.id), encode(shard));
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention("volume create"))
    }

    /// Changes a volume record with `f` (read-modify-write).
    pub async fn update_volume(
        &self,
        id: u64,
        f: impl Fn(&mut VolumeRecord) -> Result<(), Error>,
    ) -> Result<VolumeRecord, Error> {
        let mut out = None;
        self.update(&volume_key(id), "volume update", |cur| {
            let mut v =
                decode_volume(&cur.ok_or_else(|| Error::not_found(format!("volume {id}")))?)?;
            f(&mut v)?;
            let bytes = encode(&v);
            out = Some(v);
            Ok(Some(bytes))
        })
        .await?;
        self.refresh().await?;
        out.ok_or_else(|| Error::new(Code::Io, "volume update produced no record"))
    }

    /// Deletes a volume's records (volume, path index, shard).
    pub async fn delete_volume_record(&self, vol: &VolumeRecord) -> Result<(), Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            tx.get(&volume_key(vol.id)).await?;
            tx.delete(volume_key(vol.id));
            tx.delete(volume_path_key(&vol.path));
            tx.delete(shard_key(vol.shard_id));
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention("volume remove"))
    }

    /// Read-modify-write of one key: `f` gets the current value and returns
    /// the new one (None deletes).
    async fn update(
        &self,
        key: &[u8],
        what: &str,
        mut f: impl FnMut(Option<Vec<u8>>) -> Result<Option<Vec<u8>>, Error>,
    ) -> Result<(), Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.router.begin(META_SHARD).await?;
            let cur = tx.get(key).await?;
            match f(cur)? {
                Some(v) => tx.put(key.to_vec(), v),
                None => tx.delete(key.to_vec()),
            }
            if let Commit::Done(_) = tx.commit().await? {
                self.refresh().await?;
                return Ok(());
            }
        }
        Err(too_much_contention(what))
    }
}

/// The SCRAM credentials of a password being set (`hash`: its argon2 hash).
fn derive_scram(name: &str, password: &str, hash: &str) -> Result<ScramRecord, Error> {
    ScramRecord::derive(name, password, hash)
        .map_err(|e| Error::new(Code::Io, format!("deriving SCRAM credentials: {e}")))
}

async fn scan_table<T: serde::de::DeserializeOwned>(
    tx: &Tx,
    table: u64,
    what: &str,
) -> Result<Vec<T>, Error> {
    let (start, end) = table_range(table);
    tx.peek_range(&start, &end, usize::MAX)
        .await?
        .iter()
        .map(|(_, v)| decode(v, what))
        .collect()
}

/// Takes one use of join token `id` inside `tx`, refusing a token that is
/// unknown, revoked or used up (each with its own message).
async fn take_join_token_use(tx: &mut Tx, id: &str) -> Result<(), Error> {
    let key = join_token_key(id);
    let cur = tx
        .get(&key)
        .await?
        .ok_or_else(|| Error::new(Code::Auth, "the join token is not known to this cluster"))?;
    let mut r: JoinTokenRecord = decode(&cur, "join token")?;
    if r.revoked {
        return Err(Error::new(Code::Auth, "the join token was revoked"));
    }
    if r.uses_left == 0 {
        return Err(Error::new(Code::Auth, "the join token is used up"));
    }
    r.uses_left -= 1;
    tx.put(key, encode(&r));
    Ok(())
}

/// What a join's answer carries besides the node: the cluster, the CA that signs node
/// certificates (the newest), and every node recorded.
async fn join_context(tx: &Tx) -> Result<(ClusterRecord, CaRecord, Vec<NodeRecord>), Error> {
    let cluster: ClusterRecord = decode(
        &tx.peek(&cluster_key())
            .await?
            .ok_or_else(|| Error::new(Code::Again, "the cluster map is not written yet"))?,
        "cluster",
    )?;
    let ca = scan_table::<CaRecord>(tx, T_CA, "cluster CA")
        .await?
        .into_iter()
        .max_by_key(|c| c.id)
        .ok_or_else(|| {
            Error::new(
                Code::Again,
                "the cluster map holds no CA yet (the first node records it when it starts); retry",
            )
        })?;
    let (start, end) = table_range(T_NODE);
    let nodes = tx
        .peek_range(&start, &end, usize::MAX)
        .await?
        .iter()
        .map(|(_, v)| decode_node(v))
        .collect::<Result<_, _>>()?;
    Ok((cluster, ca, nodes))
}

/// A node certificate for `csr_pem`, signed by `ca`.
fn sign_node(ca: &CaRecord, csr_pem: &str, id: NodeId, names: &[String]) -> Result<String, Error> {
    berth_security::pki::sign_node_request(&ca.material(), csr_pem, id, names).map_err(
        |e| match e {
            berth_security::pki::CsrError::Ca(_) => Error::new(Code::Io, e.to_string()),
            e => Error::invalid(e.to_string()),
        },
    )
}

/// Bounds what a joining node asks to be recorded with.
fn check_applicant(a: &Applicant) -> Result<(), Error> {
    if a.native_addr.is_empty() || a.admin_addr.is_empty() {
        return Err(Error::invalid(
            "a joining node must give its native and admin addresses",
        ));
    }
    for addr in [&a.native_addr, &a.admin_addr, &a.kafka_addr, &a.mongo_addr] {
        if addr.len() > ADDR_LEN_MAX {
            return Err(Error::invalid(format!(
                "an address longer than {ADDR_LEN_MAX} bytes"
            )));
        }
    }
    if a.labels.len() > LABELS_MAX {
        return Err(Error::invalid(format!(
            "{} labels, at most {LABELS_MAX}",
            a.labels.len()
        )));
    }
    for (k, v) in &a.labels {
        validate_label(k, v)?;
    }
    // The names are checked where they become the certificate's.
    Ok(())
}

/// Reads and bumps a counter inside `tx`; returns the value before the bump.
async fn next_counter(tx: &mut Tx, name: &str) -> Result<u64, Error> {
    let key = counter_key(name);
    let cur = match tx.get(&key).await? {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| Error::corrupt(format!("counter {name}")))?,
        ),
        None => 1,
    };
    tx.put(key, (cur + 1).to_be_bytes().to_vec());
    Ok(cur)
}

/// Only an unscoped administrator may manage the cluster's principals.
pub fn require_admin(p: &Principal) -> Result<(), Error> {
    if p.is_admin() && p.scope.is_none() {
        Ok(())
    } else {
        Err(Error::new(
            Code::Perm,
            format!(
                "{:?} is not a cluster administrator (needs membership of group 'admin' and an unscoped ticket)",
                p.name
            ),
        ))
    }
}

/// Principal and group names: 1–64 of `[A-Za-z0-9._@-]`, not starting with `-`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid name {name:?}: use 1-64 characters of A-Z a-z 0-9 . _ @ - (not starting with -)"
        )))
    }
}
