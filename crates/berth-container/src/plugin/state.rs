//! Volume definitions of the Docker plugin: the `-o` options they are made
//! from, and their persistence in one JSON file in the state directory,
//! replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory) so a crash leaves either the old or the new file.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;
/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "volumes.json";
/// Parent of a volume's cluster path when `-o path=` is not given.
pub const DEFAULT_PARENT: &str = "/docker";
/// Largest state file read, in bytes.
const STATE_SIZE_MAX_BYTES: u64 = 64 << 20;
/// Longest volume name (Docker's own limit is lower in practice).
const NAME_LEN_MAX: usize = 255;
/// Longest option value, in bytes.
const OPT_LEN_MAX_BYTES: usize = 4096;

/// One volume, as created with `docker volume create -d berth -o ...`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDef {
    /// Cluster path mounted (absolute, normalised).
    pub path: String,
    /// `ticket=`: the ticket text (the state file is 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// `ticket-file=`: read at every mount, so the ticket can be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_file: Option<PathBuf>,
    /// `readonly=`.
    #[serde(default)]
    pub read_only: bool,
    /// `servers=`: overrides the plugin's BERTH_SERVERS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// `ca-file=`: overrides the plugin's BERTH_CA_FILE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for VolumeDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeDef")
            .field("path", &self.path)
            .field("ticket", &self.ticket.as_ref().map(|_| "<redacted>"))
            .field("ticket_file", &self.ticket_file)
            .field("read_only", &self.read_only)
            .field("servers", &self.servers)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Docker's rule for volume names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`); it also
/// keeps names safe as one path component under the mount root.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid volume name {name:?}: use letters, digits, '_', '.', '-', starting with a \
             letter or digit"
        ))
    }
}

fn normalize_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!(
            "path={p:?} must be absolute, e.g. path=/apps/myapp"
        ));
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(format!("path={p:?} must not hold . or .."));
    }
    Ok(format!("/{}", parts.join("/")))
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "{key}={v:?} is not a boolean: use {key}=true or {key}=false"
        )),
    }
}

fn absolute_file(key: &str, v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err(format!(
            "{key}={v:?} must be an absolute path on the plugin's host"
        ))
    }
}

/// Builds a definition from `-o` options. Known options: `path`,
/// `ticket`, `ticket-file`, `readonly`, `servers`, `ca-file`.
pub fn parse_opts(name: &str, opts: &BTreeMap<String, String>) -> Result<VolumeDef, String> {
    let mut def = VolumeDef {
        path: format!("{DEFAULT_PARENT}/{name}"),
        ticket: None,
        ticket_file: None,
        read_only: false,
        servers: None,
        ca_file: None,
    };
    for (k, v) in opts {
        if v.len() > OPT_LEN_MAX_BYTES {
            return Err(format!(
                "option {k} is longer than {OPT_LEN_MAX_BYTES} bytes"
            ));
        }
        let v = v.trim();
        match k.as_str() {
            "path" => def.path = normalize_path(v)?,
            "ticket" if !v.is_empty() => def.ticket = Some(v.to_string()),
            "ticket-file" => def.ticket_file = Some(absolute_file(k, v)?),
            "readonly" | "read-only" | "ro" => def.read_only = boolean(k, v)?,
            "servers" => {
                let list: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if list.is_empty() {
                    return Err("servers= is empty: give host:port[,host:port]".into());
                }
                def.servers = Some(list);
            }
            "ca-file" => def.ca_file = Some(absolute_file(k, v)?),
            "ticket" => return Err("ticket= is empty".into()),
            other => {
                return Err(format!(
                    "unknown option {other:?}: known options are path, ticket, ticket-file, \
                     readonly, servers, ca-file"
                ))
            }
        }
    }
    if def.ticket.is_some() && def.ticket_file.is_some() {
        return Err("give only one of ticket= and ticket-file=".into());
    }
    Ok(def)
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    volumes: BTreeMap<String, VolumeDef>,
}

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state file {} is not valid ({detail}); fix or move it away (the plugin does not \
         overwrite it)",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
}

/// The state file of one plugin.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates the state directory (mode 0700: the file may hold tickets).
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StateError::Io {
                what: "creating the state directory",
                path: dir.to_path_buf(),
                source: e,
            })?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved volumes; none when there is no file yet.
    pub fn load(&self) -> Result<BTreeMap<String, VolumeDef>, StateError> {
        let path = self.path();
        let io = |what, e| StateError::Io {
            what,
            path: path.clone(),
            source: e,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(io("reading", e)),
        };
        if meta.len() > STATE_SIZE_MAX_BYTES {
            return Err(StateError::Corrupt {
                path,
                detail: format!("larger than {STATE_SIZE_MAX_BYTES} bytes"),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| io("reading", e))?;
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if file.version != STATE_VERSION {
            return Err(StateError::Corrupt {
                path,
                detail: format!(
                    "version {} (this plugin reads version {STATE_VERSION})",
                    file.version
                ),
            });
        }
        for name in file.volumes.keys() {
            check_name(name).map_err(|detail| StateError::Corrupt {
                path: path.clone(),
                detail,
            })?;
        }
        Ok(file.volumes)
    }

    /// Replaces the state file atomically and durably.
    pub fn save(&self, volumes: &BTreeMap<String, VolumeDef>) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let io = |what, e| StateError::Io {
            what,
            path: tmp.clone(),
            source: e,
        };
        let text = serde_json::to_vec_pretty(&StateFile {
            version: STATE_VERSION,
            volumes: volumes.clone(),
        })
        .map_err(|e| io("encoding", std::io::Error::other(e)))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("writing", e))?;
        f.write_all(&text).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StateError::Io {
                what: "syncing the state directory",
                path: self.dir.clone(),
                source: e,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names() {
        for ok in ["a", "vol1", "my_vol.2-x", "0"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "_a",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(256),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options() {
        let d = parse_opts("v", &opts(&[])).unwrap();
        assert_eq!(d.path, "/docker/v");
        assert!(!d.read_only && d.ticket.is_none());

        let d = parse_opts(
            "v",
            &opts(&[
                ("path", "/apps//x/"),
                ("ticket-file", "/etc/berth/x.ticket"),
                ("readonly", "true"),
                ("servers", "a:1, b:2"),
                ("ca-file", "/etc/berth/ca.crt"),
            ]),
        )
        .unwrap();
        assert_eq!(d.path, "/apps/x");
        assert_eq!(d.ticket_file, Some("/etc/berth/x.ticket".into()));
        assert!(d.read_only);
        assert_eq!(d.servers, Some(vec!["a:1".into(), "b:2".into()]));

        let d = parse_opts("v", &opts(&[("ticket", " berth1.x.y "), ("ro", "")])).unwrap();
        assert_eq!(d.ticket.as_deref(), Some("berth1.x.y"));
        assert!(d.read_only);
        assert!(!format!("{d:?}").contains("berth1.x.y"));

        let rows: &[(&[(&str, &str)], &str)] = &[
            (&[("path", "rel")], "must be absolute"),
            (&[("path", "/a/../b")], ". or .."),
            (&[("ticket", "t"), ("ticket-file", "/t")], "only one of"),
            (&[("ticket-file", "t")], "absolute path"),
            (&[("readonly", "maybe")], "not a boolean"),
            (&[("size", "1G")], "unknown option \"size\""),
            (&[("servers", " , ")], "servers= is empty"),
            (&[("ticket", "")], "ticket= is empty"),
        ];
        for (kv, want) in rows {
            let e = parse_opts("v", &opts(kv)).unwrap_err();
            assert!(e.contains(want), "{kv:?}: {e}");
        }
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        assert!(store.load().unwrap().is_empty());
        let mut vols = BTreeMap::new();
        vols.insert(
            "v1".to_string(),
            parse_opts("v1", &opts(&[("path", "/a"), ("ticket", "T")])).unwrap(),
        );
        store.save(&vols).unwrap();
        assert_eq!(store.load().unwrap(), vols);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("state").join("volumes.json.tmp").exists());

        std::fs::write(store.path(), b"{not json").unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("not valid"), "{e}");
        std::fs::write(store.path(), br#"{"version":9,"volumes":{}}"#).unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
    }
}
