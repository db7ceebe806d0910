//! The volume driver's logic, independent of HTTP and of how mounts are
//! made: volume definitions (persisted on every change), and mounts
//! reference-counted by Docker's mount IDs. The cluster and the FUSE
//! mounts are behind [`Backend`], so tests drive the logic with a fake.
//!
//! One lock serialises requests: a mount may take up to 30 s to come up,
//! and Docker does not expect volume calls to be fast.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use crate::config::TicketSource;
use crate::conn::Connection;

use super::state::{check_name, parse_opts, StateError, Store, VolumeDef};

/// Most Docker mount IDs tracked for one volume.
const IDS_MAX: usize = 4096;

/// What the driver needs from the outside world.
pub trait Backend: Send + Sync + 'static {
    /// A live mount.
    type Mount: Send + 'static;
    /// Makes sure `path` exists as a directory (mkdir -p).
    fn ensure_dir(
        &self,
        conn: &Connection,
        path: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Mounts `path` at `at` (an existing directory).
    fn mount(
        &self,
        conn: &Connection,
        path: &str,
        read_only: bool,
        at: &Path,
    ) -> impl Future<Output = Result<Self::Mount, String>> + Send;
    /// False once the mount has died.
    fn is_alive(&self, m: &mut Self::Mount) -> bool;
    /// Unmounts and waits for the mount to end.
    fn unmount(&self, m: Self::Mount) -> impl Future<Output = Result<(), String>> + Send;
    /// Detaches the mount lazily and leaves it to end once unused.
    fn detach(&self, m: Self::Mount);
}

/// Settings from the plugin's own environment, used when a volume does not
/// set its own.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    pub servers: Vec<String>,
    pub ticket: Option<TicketSource>,
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
}

impl std::fmt::Debug for Defaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Defaults")
            .field("servers", &self.servers)
            .field("ticket", &self.ticket)
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Defaults {
    /// From `BERTH_SERVERS`, `BERTH_TICKET_FILE` / `BERTH_TICKET`,
    /// `BERTH_CA_FILE`, `BERTH_INSECURE`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Defaults {
        let env = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Defaults {
            servers: env("BERTH_SERVERS")
                .map(|s| {
                    s.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            ticket: env("BERTH_TICKET_FILE")
                .map(|f| TicketSource::File(f.into()))
                .or_else(|| env("BERTH_TICKET").map(TicketSource::Text)),
            ca_file: env("BERTH_CA_FILE").map(PathBuf::from),
            insecure: env("BERTH_INSECURE").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }),
        }
    }

    /// The connection of a volume: its own settings, else these.
    pub fn connection(&self, def: &VolumeDef) -> Result<Connection, DriverError> {
        let servers = def.servers.clone().unwrap_or_else(|| self.servers.clone());
        if servers.is_empty() {
            return Err(DriverError::Config(
                "no servers: start the plugin with BERTH_SERVERS=host:port or create the volume \
                 with -o servers=host:port"
                    .into(),
            ));
        }
        let ticket = match (&def.ticket, &def.ticket_file, &self.ticket) {
            (Some(t), _, _) => TicketSource::Text(t.clone()),
            (None, Some(f), _) => TicketSource::File(f.clone()),
            (None, None, Some(t)) => t.clone(),
            (None, None, None) => {
                return Err(DriverError::Config(
                    "no ticket: create the volume with -o ticket-file=/path/on/the/host (or \
                     -o ticket=...), or start the plugin with BERTH_TICKET_FILE"
                        .into(),
                ))
            }
        };
        let ca_file = def.ca_file.clone().or_else(|| self.ca_file.clone());
        if ca_file.is_none() && !self.insecure {
            return Err(DriverError::Config(
                "no CA certificate: start the plugin with BERTH_CA_FILE (the cluster's \
                 <data-dir>/tls/ca.crt) or create the volume with -o ca-file=..."
                    .into(),
            ));
        }
        Ok(Connection {
            servers,
            ticket,
            ca_file,
            insecure: self.insecure,
        })
    }
}

/// Why a request failed; the text goes back to Docker as `Err`.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Config(String),
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    #[error("volume {0} exists with different options; remove it first (docker volume rm)")]
    Exists(String),
    #[error("volume {name} is in use by {count} container(s)")]
    InUse { name: String, count: usize },
    #[error("volume {name}: {detail}")]
    Backend { name: String, detail: String },
    #[error("saving the volume list: {0}")]
    State(#[from] StateError),
    #[error("volume {name}: mount point {}: {source}", path.display())]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `Get` and `List` report about one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// Empty while not mounted.
    pub mountpoint: String,
    pub path: String,
    pub read_only: bool,
    /// Docker mount IDs using it.
    pub users: usize,
}

struct Active<M> {
    ids: BTreeSet<String>,
    mount: M,
}

struct Inner<M> {
    volumes: BTreeMap<String, VolumeDef>,
    active: HashMap<String, Active<M>>,
}

/// The volume driver.
pub struct Driver<B: Backend> {
    backend: B,
    store: Store,
    mount_root: PathBuf,
    defaults: Defaults,
    inner: Mutex<Inner<B::Mount>>,
}

impl<B: Backend> Driver<B> {
    /// Loads the saved volumes; nothing is mounted yet (Docker mounts again
    /// what running containers use).
    pub fn new(
        backend: B,
        store: Store,
        mount_root: PathBuf,
        defaults: Defaults,
    ) -> Result<Driver<B>, StateError> {
        let volumes = store.load()?;
        Ok(Driver {
            backend,
            store,
            mount_root,
            defaults,
            inner: Mutex::new(Inner {
                volumes,
                active: HashMap::new(),
            }),
        })
    }

    pub fn mount_point(&self, name: &str) -> PathBuf {
        self.mount_root.join(name)
    }

    fn def<'a>(inner: &'a Inner<B::Mount>, name: &str) -> Result<&'a VolumeDef, DriverError> {
        inner
            .volumes
            .get(name)
            .ok_or_else(|| DriverError::NoSuchVolume(name.to_string()))
    }

    /// `VolumeDriver.Create`: defines the volume and makes sure its cluster
    /// path exists. Repeating it with no options, or the same, is fine.
    pub async fn create(
        &self,
        name: &str,
        opts: &BTreeMap<String, String>,
    ) -> Result<(), DriverError> {
        check_name(name).map_err(DriverError::Invalid)?;
        let def = parse_opts(name, opts).map_err(DriverError::Invalid)?;
        let mut inner = self.inner.lock().await;
        if let Some(old) = inner.volumes.get(name) {
            return if opts.is_empty() || *old == def {
                Ok(())
            } else {
                Err(DriverError::Exists(name.to_string()))
            };
        }
        let conn = self.defaults.connection(&def)?;
        self.backend
            .ensure_dir(&conn, &def.path)
            .await
            .map_err(|detail| DriverError::Backend {
                name: name.to_string(),
                detail,
            })?;
        inner.volumes.insert(name.to_string(), def);
        if let Err(e) = self.store.save(&inner.volumes) {
            inner.volumes.remove(name);
            return Err(e.into());
        }
        tracing::info!(volume = name, "created");
        Ok(())
    }

    /// `VolumeDriver.Remove`: forgets the volume (its data stays in the
    /// cluster). Refused while mounted.
    pub async fn remove(&self, name: &str) -> Result<(), DriverError> {
        let mut inner = self.inner.lock().await;
        Self::def(&inner, name)?;
        if let Some(a) = inner.active.get(name) {
            return Err(DriverError::InUse {
                name: name.to_string(),
                count: a.ids.len(),
            });
        }
        let def = inner.volumes.remove(name);
        if let Err(e) = self.store.save(&inner.volumes) {
            if let Some(d) = def {
                inner.volumes.insert(name.to_string(), d);
            }
            return Err(e.into());
        }
        let _ = std::fs::remove_dir(self.mount_point(name));
        tracing::info!(volume = name, "removed");
        Ok(())
    }

    /// `VolumeDriver.Mount`: the first ID mounts, later ones share it.
    pub async fn mount(&self, name: &str, id: &str) -> Result<PathBuf, DriverError> {
        let mut inner = self.inner.lock().await;
        let def = Self::def(&inner, name)?.clone();
        let mp = self.mount_point(name);
        if let Some(a) = inner.active.get_mut(name) {
            if self.backend.is_alive(&mut a.mount) {
                if a.ids.len() >= IDS_MAX && !a.ids.contains(id) {
                    return Err(DriverError::Invalid(format!(
                        "volume {name} already has {IDS_MAX} users"
                    )));
                }
                a.ids.insert(id.to_string());
                return Ok(mp);
            }
            tracing::warn!(volume = name, "the mount died; mounting again");
            if let Some(dead) = inner.active.remove(name) {
                if let Err(e) = self.backend.unmount(dead.mount).await {
                    tracing::warn!(volume = name, "cleaning up the dead mount: {e}");
                }
            }
        }
        let conn = self.defaults.connection(&def)?;
        std::fs::create_dir_all(&mp).map_err(|e| DriverError::Io {
            name: name.to_string(),
            path: mp.clone(),
            source: e,
        })?;
        let mount = self
            .backend
            .mount(&conn, &def.path, def.read_only, &mp)
            .await
            .map_err(|detail| DriverError::Backend {
                name: name.to_string(),
                detail,
            })?;
        inner.active.insert(
            name.to_string(),
            Active {
                ids: BTreeSet::from([id.to_string()]),
                mount,
            },
        );
        tracing::info!(volume = name, id, path = def.path, "mounted");
        Ok(mp)
    }

    /// `VolumeDriver.Unmount`: the last ID unmounts. Unknown IDs are fine
    /// (after a restart of the plugin nothing is counted).
    pub async fn unmount(&self, name: &str, id: &str) -> Result<(), DriverError> {
        let mut inner = self.inner.lock().await;
        Self::def(&inner, name)?;
        let last = match inner.active.get_mut(name) {
            Some(a) => {
                a.ids.remove(id);
                a.ids.is_empty()
            }
            None => false,
        };
        if last {
            if let Some(a) = inner.active.remove(name) {
                if let Err(e) = self.backend.unmount(a.mount).await {
                    tracing::warn!(volume = name, "unmount: {e}");
                }
                tracing::info!(volume = name, "unmounted");
            }
        }
        Ok(())
    }

    /// `VolumeDriver.Path`: the mount point while mounted, else empty.
    pub async fn path(&self, name: &str) -> Result<String, DriverError> {
        Ok(self.get(name).await?.mountpoint)
    }

    /// `VolumeDriver.Get`.
    pub async fn get(&self, name: &str) -> Result<VolumeInfo, DriverError> {
        let inner = self.inner.lock().await;
        let def = Self::def(&inner, name)?;
        Ok(self.info(&inner, name, def))
    }

    /// `VolumeDriver.List`.
    pub async fn list(&self) -> Vec<VolumeInfo> {
        let inner = self.inner.lock().await;
        inner
            .volumes
            .iter()
            .map(|(n, d)| self.info(&inner, n, d))
            .collect()
    }

    fn info(&self, inner: &Inner<B::Mount>, name: &str, def: &VolumeDef) -> VolumeInfo {
        let users = inner.active.get(name).map_or(0, |a| a.ids.len());
        VolumeInfo {
            name: name.to_string(),
            mountpoint: if inner.active.contains_key(name) {
                self.mount_point(name).display().to_string()
            } else {
                String::new()
            },
            path: def.path.clone(),
            read_only: def.read_only,
            users,
        }
    }

    /// On the way out: detach every mount lazily. Containers still using a
    /// volume keep it until they stop; the mount process then ends itself.
    pub async fn shutdown(&self) {
        let mut inner = self.inner.lock().await;
        for (name, a) in inner.active.drain() {
            tracing::info!(volume = name, "detaching");
            self.backend.detach(a.mount);
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A backend that records calls and "mounts" by creating a marker file.

    use super::*;
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    pub struct Fake {
        pub calls: StdMutex<Vec<String>>,
        /// ensure_dir fails with this text.
        pub fail_dirs: StdMutex<Option<String>>,
    }

    pub struct FakeMount {
        pub marker: PathBuf,
    }

    impl Backend for std::sync::Arc<Fake> {
        type Mount = FakeMount;
        async fn ensure_dir(&self, conn: &Connection, path: &str) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("ensure_dir {path} via {}", conn.servers.join(",")));
            match self.fail_dirs.lock().unwrap().clone() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        async fn mount(
            &self,
            _conn: &Connection,
            path: &str,
            read_only: bool,
            at: &Path,
        ) -> Result<FakeMount, String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("mount {path} ro={read_only}"));
            let marker = at.join(".fake-mounted");
            std::fs::write(&marker, path).map_err(|e| e.to_string())?;
            Ok(FakeMount { marker })
        }
        fn is_alive(&self, m: &mut FakeMount) -> bool {
            m.marker.exists()
        }
        async fn unmount(&self, m: FakeMount) -> Result<(), String> {
            self.calls.lock().unwrap().push("unmount".into());
            let _ = std::fs::remove_file(&m.marker);
            Ok(())
        }
        fn detach(&self, m: FakeMount) {
            self.calls.lock().unwrap().push("detach".into());
            let _ = std::fs::remove_file(&m.marker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;
    use std::sync::Arc;

    fn defaults() -> Defaults {
        Defaults {
            servers: vec!["s:1".into()],
            ticket: Some(TicketSource::Text("T".into())),
            ca_file: Some("/ca".into()),
            insecure: false,
        }
    }

    fn driver(dir: &Path, fake: &Arc<Fake>) -> Driver<Arc<Fake>> {
        Driver::new(
            fake.clone(),
            Store::open(&dir.join("state")).unwrap(),
            dir.join("mounts"),
            defaults(),
        )
        .unwrap()
    }

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn refcounted_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let d = driver(dir.path(), &fake);
        d.create("v", &opts(&[("path", "/apps/v")])).await.unwrap();
        let mp = d.mount("v", "c1").await.unwrap();
        assert_eq!(mp, dir.path().join("mounts").join("v"));
        assert_eq!(d.mount("v", "c2").await.unwrap(), mp);
        assert_eq!(d.get("v").await.unwrap().users, 2);
        assert_eq!(d.path("v").await.unwrap(), mp.display().to_string());
        let e = d.remove("v").await.unwrap_err();
        assert!(e.to_string().contains("in use by 2"), "{e}");
        d.unmount("v", "c1").await.unwrap();
        d.unmount("v", "unknown").await.unwrap();
        assert!(mp.join(".fake-mounted").exists(), "still one user");
        d.unmount("v", "c2").await.unwrap();
        assert!(!mp.join(".fake-mounted").exists());
        assert_eq!(d.path("v").await.unwrap(), "");
        // Unmount with nothing mounted (e.g. after a restart) is fine.
        d.unmount("v", "c2").await.unwrap();
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                "ensure_dir /apps/v via s:1",
                "mount /apps/v ro=false",
                "unmount"
            ]
        );
        d.remove("v").await.unwrap();
        assert!(!mp.exists(), "mount point removed with the volume");
    }

    #[tokio::test]
    async fn dead_mounts_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let d = driver(dir.path(), &fake);
        d.create("v", &opts(&[])).await.unwrap();
        let mp = d.mount("v", "a").await.unwrap();
        std::fs::remove_file(mp.join(".fake-mounted")).unwrap();
        d.mount("v", "b").await.unwrap();
        assert!(mp.join(".fake-mounted").exists());
        assert_eq!(
            d.get("v").await.unwrap().users,
            1,
            "the dead mount's IDs are gone"
        );
    }

    #[tokio::test]
    async fn definitions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        {
            let d = driver(dir.path(), &fake);
            d.create("a", &opts(&[("path", "/a"), ("readonly", "1")]))
                .await
                .unwrap();
            d.create("b", &opts(&[])).await.unwrap();
            d.mount("a", "x").await.unwrap();
            d.shutdown().await;
        }
        let d = driver(dir.path(), &fake);
        let list = d.list().await;
        assert_eq!(
            list.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert!(list[0].read_only && list[0].mountpoint.is_empty());
        assert_eq!(list[1].path, "/docker/b");
        // Refcounts start from zero; Docker mounts again.
        d.mount("a", "x").await.unwrap();
        assert_eq!(d.get("a").await.unwrap().users, 1);
    }

    #[tokio::test]
    async fn create_rules() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let d = driver(dir.path(), &fake);
        d.create("v", &opts(&[("path", "/p")])).await.unwrap();
        d.create("v", &opts(&[])).await.unwrap();
        d.create("v", &opts(&[("path", "/p")])).await.unwrap();
        let e = d.create("v", &opts(&[("path", "/q")])).await.unwrap_err();
        assert!(matches!(e, DriverError::Exists(_)), "{e}");
        let e = d.create("../x", &opts(&[])).await.unwrap_err();
        assert!(e.to_string().contains("invalid volume name"), "{e}");

        *fake.fail_dirs.lock().unwrap() = Some("EACCES: scope".into());
        let e = d.create("w", &opts(&[("path", "/w")])).await.unwrap_err();
        assert!(e.to_string().contains("EACCES"), "{e}");
        assert!(matches!(
            d.get("w").await.unwrap_err(),
            DriverError::NoSuchVolume(_)
        ));
        assert!(matches!(
            d.mount("nope", "i").await.unwrap_err(),
            DriverError::NoSuchVolume(_)
        ));
    }

    #[test]
    fn connections() {
        let def = parse_opts("v", &opts(&[("ticket-file", "/t"), ("servers", "x:1")])).unwrap();
        let c = defaults().connection(&def).unwrap();
        assert_eq!(c.servers, vec!["x:1"]);
        assert_eq!(c.ticket, TicketSource::File("/t".into()));
        assert_eq!(c.ca_file, Some("/ca".into()));

        let none = Defaults::default();
        let plain = parse_opts("v", &opts(&[])).unwrap();
        let e = none.connection(&plain).unwrap_err();
        assert!(e.to_string().contains("BERTH_SERVERS"), "{e}");
        let e = Defaults {
            servers: vec!["s".into()],
            ..Default::default()
        }
        .connection(&plain)
        .unwrap_err();
        assert!(e.to_string().contains("ticket-file"), "{e}");
        let e = Defaults {
            servers: vec!["s".into()],
            ticket: Some(TicketSource::Text("t".into())),
            ..Default::default()
        }
        .connection(&plain)
        .unwrap_err();
        assert!(e.to_string().contains("BERTH_CA_FILE"), "{e}");

        let env = |k: &str| match k {
            "BERTH_SERVERS" => Some("a:1,b:2".to_string()),
            "BERTH_TICKET_FILE" => Some("/t".to_string()),
            "BERTH_INSECURE" => Some("1".to_string()),
            _ => None,
        };
        let d = Defaults::from_env(&env);
        assert_eq!(d.servers, vec!["a:1", "b:2"]);
        assert!(d.insecure);
        let c = d.connection(&plain).unwrap();
        assert!(c.insecure && c.ca_file.is_none());
    }
}
