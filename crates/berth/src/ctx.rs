//! What every client command needs: the connection built from the global
//! flags, path normalisation, password input, and writing secret files.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_client::{Client, ClientConfig, ClientError, Overrides};

use crate::cli::Global;

/// Longest password read from stdin, in bytes.
const PASSWORD_LEN_MAX_BYTES: usize = 4096;

/// The global flags plus helpers to act on them.
pub struct Ctx {
    pub global: Global,
}

impl Ctx {
    pub fn json(&self) -> bool {
        self.global.json
    }

    pub fn config(&self) -> Result<ClientConfig, ClientError> {
        let g = &self.global;
        ClientConfig::discover(Overrides {
            servers: Some(g.servers.clone()).filter(|s| !s.is_empty()),
            ticket: None,
            ticket_file: g.ticket_file.clone(),
            ca_file: g.ca_file.clone(),
            insecure: g.insecure,
        })
    }

    /// A client that sends the ticket with every call.
    pub async fn client(&self) -> Result<Client, ClientError> {
        Client::connect(self.config()?).await
    }

    /// A client without a ticket (for `login`).
    pub async fn client_without_ticket(&self) -> Result<Client, ClientError> {
        Client::connect_without_ticket(self.config()?).await
    }
}

/// Namespace paths are absolute; `a/b` means `/a/b`.
pub fn abs(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Adds the path to an error whose text does not already name it.
pub fn at_path(e: ClientError, path: &str) -> anyhow::Error {
    if e.to_string().contains(path) {
        anyhow::Error::new(e)
    } else {
        anyhow::Error::new(e).context(path.to_string())
    }
}

/// Reads a password: from the first line of stdin when `from_stdin` or when
/// stdin is not a terminal (and `allow_pipe`), else with a hidden prompt.
/// `confirm` asks twice on a terminal.
pub fn read_password(from_stdin: bool, allow_pipe: bool, confirm: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let password = if from_stdin || (allow_pipe && !stdin.is_terminal()) {
        let mut line = String::new();
        stdin
            .lock()
            .take(PASSWORD_LEN_MAX_BYTES as u64 + 1)
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        if line.len() > PASSWORD_LEN_MAX_BYTES {
            bail!("password longer than {PASSWORD_LEN_MAX_BYTES} bytes");
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    } else if stdin.is_terminal() {
        let p = rpassword::prompt_password("Password: ").context("reading the password")?;
        if confirm {
            let again =
                rpassword::prompt_password("Password (again): ").context("reading the password")?;
            if again != p {
                bail!("the passwords do not match");
            }
        }
        p
    } else {
        bail!("no password: pass --password-stdin and write it to stdin");
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

/// Writes `text` plus a newline to `path` with mode 0600, creating the
/// parent directory (mode 0700) when missing. The file is replaced through
/// a temporary file so that a reader never sees half a ticket.
pub fn write_secret_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // An existing temporary file keeps its mode: force 0600.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    })
}

/// `~/.berth/ticket`.
pub fn default_ticket_path() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set: pass --out FILE")?;
    Ok(PathBuf::from(home).join(".berth").join("ticket"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_file_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("ticket");
        write_secret_file(&p, "abc").unwrap();
        write_secret_file(&p, "def").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "def\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn paths() {
        assert_eq!(abs("a/b"), "/a/b");
        assert_eq!(abs("/a"), "/a");
    }
}
