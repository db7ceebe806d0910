//! The container entrypoint's settings: read from the environment (passed in
//! as a lookup function, so tests never touch the process environment),
//! validated, and resolved against the image's `/etc/passwd` and
//! `/etc/group` (passed in as text). Every failure is one line that names
//! the variable and says how to fix it.

use std::path::{Path, PathBuf};

/// uid and gid the application runs as when nothing else is configured.
pub const DEFAULT_APP_ID: u32 = 1000;
/// Mount point inside the container when `BERTH_MOUNT` is unset.
pub const DEFAULT_MOUNT: &str = "/berth";
/// Cluster path mounted when `BERTH_PATH` is unset.
pub const DEFAULT_PATH: &str = "/";
/// Longest value accepted for a path-like variable, in bytes.
const PATH_LEN_MAX_BYTES: usize = 4096;
/// Most supplementary groups given to the application.
const GROUPS_MAX: usize = 64;

/// A configuration problem: one line, naming the variable and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(text: impl Into<String>) -> ConfigError {
    ConfigError(text.into())
}

/// Where the ticket comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TicketSource {
    /// `BERTH_TICKET_FILE`: a file holding the ticket.
    File(PathBuf),
    /// `BERTH_TICKET`: the ticket text itself (never printed).
    Text(String),
}

impl std::fmt::Debug for TicketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TicketSource::File(p) => f.debug_tuple("File").field(p).finish(),
            TicketSource::Text(_) => f.write_str("Text(<redacted>)"),
        }
    }
}

/// The identity the application runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUser {
    /// Name from `/etc/passwd`, when the uid has an entry there.
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from `/etc/group`), the primary gid first.
    pub groups: Vec<u32>,
    /// Home directory from `/etc/passwd`, else `/`.
    pub home: PathBuf,
}

/// Everything `berth container-run` needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// `BERTH_CLUSTER`: the cluster name the servers must report.
    pub cluster: Option<String>,
    /// `BERTH_SERVERS`: `host[:port]` list, as given (trimmed, non-empty).
    pub servers: Vec<String>,
    pub ticket: TicketSource,
    /// `BERTH_CA_FILE`; `None` only with `insecure`.
    pub ca_file: Option<PathBuf>,
    /// `BERTH_INSECURE=1`: plain text to a server started with --insecure.
    pub insecure: bool,
    /// `BERTH_MOUNT`: absolute mount point in the container.
    pub mount: PathBuf,
    /// `BERTH_PATH`: absolute cluster path shown at the mount point.
    pub path: String,
    /// `BERTH_READ_ONLY=1`: mount read-only.
    pub read_only: bool,
    pub user: AppUser,
}

/// What the entrypoint knows about the process it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub uid: u32,
    pub gid: u32,
}

/// Parses a boolean variable the way `BERTH_INSECURE` is parsed elsewhere.
fn boolean(name: &str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(err(format!(
            "{name}={other:?} is not a boolean: set {name}=1 to enable or leave it unset"
        ))),
    }
}

/// An absolute path without `.`/`..` components, normalised (no trailing or
/// doubled slashes).
fn absolute(name: &str, value: &str, example: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        err(format!(
            "{name}={value:?} {why}: set an absolute path such as {name}={example}"
        ))
    };
    if value.len() > PATH_LEN_MAX_BYTES {
        return Err(bad("is too long"));
    }
    if !value.starts_with('/') {
        return Err(bad("is not absolute"));
    }
    if value.contains('\0') {
        return Err(bad("holds a NUL byte"));
    }
    let parts: Vec<&str> = value.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(bad("holds . or .."));
    }
    Ok(format!("/{}", parts.join("/")))
}

fn id(name: &str, value: &str) -> Result<u32, ConfigError> {
    value.parse::<u32>().map_err(|_| {
        err(format!(
            "{name}={value:?} is not a number: set {name} to a numeric id such as {name}=1000"
        ))
    })
}

/// Reads and validates the settings. `env` looks a variable up (empty
/// values count as unset); `passwd` and `group` are the texts of the
/// image's `/etc/passwd` and `/etc/group` (empty when absent).
pub fn parse(
    env: &dyn Fn(&str) -> Option<String>,
    passwd: &str,
    group: &str,
    current: Current,
) -> Result<RunConfig, ConfigError> {
    let env = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };

    let servers: Vec<String> = env("BERTH_SERVERS")
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if servers.is_empty() {
        return Err(err(
            "BERTH_SERVERS is not set: set it to the cluster's native API address(es), \
             e.g. -e BERTH_SERVERS=berth1.example.com:5660,berth2.example.com:5660",
        ));
    }

    let ticket = match (env("BERTH_TICKET_FILE"), env("BERTH_TICKET")) {
        (Some(_), Some(_)) => {
            return Err(err(
                "both BERTH_TICKET_FILE and BERTH_TICKET are set: keep one \
                 (prefer BERTH_TICKET_FILE with the ticket mounted read-only)",
            ))
        }
        (Some(f), None) => TicketSource::File(PathBuf::from(absolute(
            "BERTH_TICKET_FILE",
            &f,
            "/run/secrets/berth.ticket",
        )?)),
        (None, Some(t)) => TicketSource::Text(t),
        (None, None) => {
            return Err(err(
                "no ticket: set BERTH_TICKET_FILE to a mounted ticket file (create one with \
                 `berth ticket issue --principal APP --out app.ticket`, then \
                 -v $PWD/app.ticket:/run/secrets/berth.ticket:ro \
                 -e BERTH_TICKET_FILE=/run/secrets/berth.ticket), or set BERTH_TICKET",
            ))
        }
    };

    let insecure = boolean("BERTH_INSECURE", env("BERTH_INSECURE"))?;
    let ca_file = match env("BERTH_CA_FILE") {
        Some(f) => Some(PathBuf::from(absolute(
            "BERTH_CA_FILE",
            &f,
            "/run/secrets/berth-ca.crt",
        )?)),
        None if insecure => None,
        None => {
            return Err(err(
                "BERTH_CA_FILE is not set: mount the cluster CA certificate (a server's \
                 <data-dir>/tls/ca.crt), e.g. -v $PWD/ca.crt:/run/secrets/berth-ca.crt:ro \
                 -e BERTH_CA_FILE=/run/secrets/berth-ca.crt, or set BERTH_INSECURE=1 for a \
                 server started with --insecure",
            ))
        }
    };

    let mount = absolute(
        "BERTH_MOUNT",
        &env("BERTH_MOUNT").unwrap_or_else(|| DEFAULT_MOUNT.into()),
        DEFAULT_MOUNT,
    )?;
    if mount == "/" {
        return Err(err(
            "BERTH_MOUNT=/ would hide the whole image: set a directory such as BERTH_MOUNT=/berth",
        ));
    }
    let path = absolute(
        "BERTH_PATH",
        &env("BERTH_PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        "/apps/myapp",
    )?;
    let read_only = boolean("BERTH_READ_ONLY", env("BERTH_READ_ONLY"))?;
    let cluster = env("BERTH_CLUSTER");

    let user = resolve_user(
        env("BERTH_USER"),
        env("BERTH_UID"),
        env("BERTH_GID"),
        passwd,
        group,
        current,
    )?;

    Ok(RunConfig {
        cluster,
        servers,
        ticket,
        ca_file,
        insecure,
        mount: PathBuf::from(mount),
        path,
        read_only,
        user,
    })
}

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Parses `/etc/passwd` text; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// The gids of the `/etc/group` entries that list `user` as a member.
pub fn member_groups(text: &str, user: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let gid: u32 = f[2].parse().ok()?;
            f[3].split(',').any(|m| m.trim() == user).then_some(gid)
        })
        .collect()
}

fn resolve_user(
    user: Option<String>,
    uid: Option<String>,
    gid: Option<String>,
    passwd: &str,
    group: &str,
    current: Current,
) -> Result<AppUser, ConfigError> {
    let entries = parse_passwd(passwd);
    let by_name = |n: &str| entries.iter().find(|e| e.name == n);
    let by_uid = |u: u32| entries.iter().find(|e| e.uid == u);

    // BERTH_USER: a name from /etc/passwd, or a number.
    let named = match &user {
        None => None,
        Some(u) if u.chars().all(|c| c.is_ascii_digit()) => Some((id("BERTH_USER", u)?, None)),
        Some(u) => match by_name(u) {
            Some(e) => Some((e.uid, Some(e))),
            None => {
                return Err(err(format!(
                    "BERTH_USER={u:?} is not in the image's /etc/passwd: add the user to the \
                     image, or set BERTH_UID and BERTH_GID to numeric ids instead"
                )))
            }
        },
    };
    let explicit_uid = uid.as_deref().map(|u| id("BERTH_UID", u)).transpose()?;
    if let (Some((a, _)), Some(b)) = (named, explicit_uid) {
        if a != b {
            return Err(err(format!(
                "BERTH_USER={} has uid {a} but BERTH_UID={b}: set only one of them",
                user.as_deref().unwrap_or_default()
            )));
        }
    }
    let running_as_root = current.uid == 0;
    let chosen_uid = explicit_uid
        .or(named.map(|(u, _)| u))
        .unwrap_or(if running_as_root {
            DEFAULT_APP_ID
        } else {
            current.uid
        });
    if chosen_uid == 0 {
        return Err(err(
            "BERTH_UID/BERTH_USER selects root (uid 0): the application must run as a \
             non-root user; set BERTH_UID to another uid (default 1000)",
        ));
    }
    let entry = named.and_then(|(_, e)| e).or_else(|| by_uid(chosen_uid));
    let chosen_gid = match gid.as_deref() {
        Some(g) => id("BERTH_GID", g)?,
        None if !running_as_root && explicit_uid.is_none() && named.is_none() => current.gid,
        None => entry.map(|e| e.gid).unwrap_or(DEFAULT_APP_ID),
    };
    if chosen_gid == 0 {
        return Err(err(
            "BERTH_GID selects the root group (gid 0): set BERTH_GID to another gid (default 1000)",
        ));
    }
    if !running_as_root && (chosen_uid != current.uid || chosen_gid != current.gid) {
        return Err(err(format!(
            "the container runs as uid {}:{} (docker run --user) but the application should run \
             as {chosen_uid}:{chosen_gid}: drop --user (the entrypoint starts as root and \
             switches to BERTH_UID/BERTH_GID), or leave BERTH_USER/BERTH_UID/BERTH_GID unset",
            current.uid, current.gid
        )));
    }
    let mut groups = vec![chosen_gid];
    if let Some(e) = entry {
        for g in member_groups(group, &e.name) {
            if g != 0 && !groups.contains(&g) && groups.len() < GROUPS_MAX {
                groups.push(g);
            }
        }
    }
    Ok(AppUser {
        name: entry.map(|e| e.name.clone()),
        uid: chosen_uid,
        gid: chosen_gid,
        groups,
        home: entry
            .map(|e| PathBuf::from(&e.home))
            .filter(|h| h.is_absolute())
            .unwrap_or_else(|| Path::new("/").to_path_buf()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                          berth:x:1000:1000:berth:/home/berth:/sbin/nologin\n\
                          # a comment\n\
                          broken line\n\
                          web:x:1500:1600::/srv/web:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nberth:x:1000:\nshared:x:2000:berth,web\nother:x:3000:web\n";
    const ROOT: Current = Current { uid: 0, gid: 0 };

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("BERTH_SERVERS", "a:5660, b:5660 ,"),
            ("BERTH_TICKET_FILE", "/run/secrets/t"),
            ("BERTH_CA_FILE", "/run/secrets/ca.crt"),
        ])
    }

    fn run(vars: &HashMap<&str, &str>, current: Current) -> Result<RunConfig, ConfigError> {
        parse(
            &|k| vars.get(k).map(|v| v.to_string()),
            PASSWD,
            GROUP,
            current,
        )
    }

    #[test]
    fn defaults() {
        let c = run(&base(), ROOT).unwrap();
        assert_eq!(c.servers, vec!["a:5660", "b:5660"]);
        assert_eq!(c.ticket, TicketSource::File("/run/secrets/t".into()));
        assert_eq!(c.ca_file, Some("/run/secrets/ca.crt".into()));
        assert!(!c.insecure && !c.read_only);
        assert_eq!(c.mount, PathBuf::from("/berth"));
        assert_eq!(c.path, "/");
        assert_eq!(c.cluster, None);
        assert_eq!(
            c.user,
            AppUser {
                name: Some("berth".into()),
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 2000],
                home: "/home/berth".into(),
            }
        );
    }

    /// Each row: variables changed from `base()` (an empty value unsets),
    /// then a fragment the one-line error must contain.
    #[test]
    fn misconfiguration_table() {
        let rows: &[(&[(&str, &str)], &str)] = &[
            (&[("BERTH_SERVERS", "")], "BERTH_SERVERS is not set"),
            (&[("BERTH_SERVERS", " , ")], "BERTH_SERVERS is not set"),
            (
                &[("BERTH_TICKET_FILE", "")],
                "no ticket: set BERTH_TICKET_FILE",
            ),
            (
                &[("BERTH_TICKET", "t")],
                "both BERTH_TICKET_FILE and BERTH_TICKET",
            ),
            (
                &[("BERTH_TICKET_FILE", "rel/t")],
                "BERTH_TICKET_FILE=\"rel/t\" is not absolute",
            ),
            (&[("BERTH_CA_FILE", "")], "BERTH_CA_FILE is not set"),
            (
                &[("BERTH_CA_FILE", ""), ("BERTH_INSECURE", "maybe")],
                "BERTH_INSECURE=\"maybe\"",
            ),
            (
                &[("BERTH_MOUNT", "berth")],
                "BERTH_MOUNT=\"berth\" is not absolute",
            ),
            (&[("BERTH_MOUNT", "/")], "BERTH_MOUNT=/ would hide"),
            (&[("BERTH_MOUNT", "/a/../b")], "holds . or .."),
            (
                &[("BERTH_PATH", "apps")],
                "BERTH_PATH=\"apps\" is not absolute",
            ),
            (
                &[("BERTH_READ_ONLY", "2")],
                "BERTH_READ_ONLY=\"2\" is not a boolean",
            ),
            (
                &[("BERTH_USER", "nobody")],
                "BERTH_USER=\"nobody\" is not in the image's /etc/passwd",
            ),
            (&[("BERTH_USER", "root")], "non-root"),
            (&[("BERTH_UID", "0")], "non-root"),
            (&[("BERTH_UID", "x")], "BERTH_UID=\"x\" is not a number"),
            (&[("BERTH_GID", "-1")], "BERTH_GID=\"-1\" is not a number"),
            (&[("BERTH_GID", "0")], "root group"),
            (
                &[("BERTH_USER", "web"), ("BERTH_UID", "1000")],
                "set only one of them",
            ),
        ];
        for (changes, want) in rows {
            let mut vars = base();
            for (k, v) in *changes {
                vars.insert(k, v);
            }
            let e = run(&vars, ROOT).expect_err(&format!("{changes:?} should fail"));
            assert!(e.0.contains(want), "{changes:?}: {e} lacks {want:?}");
            assert!(!e.0.contains('\n'), "{changes:?}: one line: {e}");
        }
    }

    #[test]
    fn insecure_needs_no_ca() {
        let mut vars = base();
        vars.insert("BERTH_CA_FILE", "");
        vars.insert("BERTH_INSECURE", "yes");
        let c = run(&vars, ROOT).unwrap();
        assert!(c.insecure);
        assert_eq!(c.ca_file, None);
    }

    #[test]
    fn ticket_text_and_options() {
        let mut vars = base();
        vars.insert("BERTH_TICKET_FILE", "");
        vars.insert("BERTH_TICKET", "  berth1.TOPSECRET.sig ");
        vars.insert("BERTH_MOUNT", "/data//x/");
        vars.insert("BERTH_PATH", "/apps/a/");
        vars.insert("BERTH_READ_ONLY", "true");
        vars.insert("BERTH_CLUSTER", "prod");
        let c = run(&vars, ROOT).unwrap();
        assert_eq!(c.ticket, TicketSource::Text("berth1.TOPSECRET.sig".into()));
        assert!(
            !format!("{c:?}").contains("TOPSECRET"),
            "Debug redacts the ticket"
        );
        assert_eq!(c.mount, PathBuf::from("/data/x"));
        assert_eq!(c.path, "/apps/a");
        assert!(c.read_only);
        assert_eq!(c.cluster.as_deref(), Some("prod"));
    }

    #[test]
    fn user_selection() {
        let mut vars = base();
        vars.insert("BERTH_USER", "web");
        let u = run(&vars, ROOT).unwrap().user;
        assert_eq!((u.uid, u.gid), (1500, 1600));
        assert_eq!(u.groups, vec![1600, 2000, 3000]);
        assert_eq!(u.home, PathBuf::from("/srv/web"));

        // Numeric user without a passwd entry: gid defaults to 1000, home to /.
        let mut vars = base();
        vars.insert("BERTH_UID", "4242");
        let u = run(&vars, ROOT).unwrap().user;
        assert_eq!((u.name.as_deref(), u.uid, u.gid), (None, 4242, 1000));
        assert_eq!(u.home, PathBuf::from("/"));

        vars.insert("BERTH_GID", "4343");
        let u = run(&vars, ROOT).unwrap().user;
        assert_eq!((u.uid, u.gid, u.groups.clone()), (4242, 4343, vec![4343]));

        // BERTH_USER given as a number that has an entry.
        let mut vars = base();
        vars.insert("BERTH_USER", "1500");
        let u = run(&vars, ROOT).unwrap().user;
        assert_eq!((u.name.as_deref(), u.gid), (Some("web"), 1600));
    }

    #[test]
    fn not_root_keeps_its_identity() {
        let me = Current {
            uid: 1500,
            gid: 1600,
        };
        let u = run(&base(), me).unwrap().user;
        assert_eq!((u.uid, u.gid), (1500, 1600));
        let mut vars = base();
        vars.insert("BERTH_UID", "1000");
        let e = run(&vars, me).unwrap_err();
        assert!(e.0.contains("docker run --user"), "{e}");
    }

    #[test]
    fn passwd_and_group_parsing() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].home, "/srv/web");
        assert_eq!(member_groups(GROUP, "web"), vec![2000, 3000]);
        assert!(member_groups(GROUP, "nobody").is_empty());
    }
}
