//! Authorization of namespace operations: ticket scope, volume ACEs, entry
//! ACEs and POSIX mode bits, all of which must allow a request.
//!
//! Order of checks and what wins:
//! 1. the ticket's scope (narrows even an administrator);
//! 2. administrators (group `admin`) may do everything else;
//! 3. the volume's read/write ACE, when set, must allow;
//! 4. the entry's read/write ACE, when set, must allow;
//! 5. the POSIX mode bits must allow.

use berth_meta::map::VolumeRecord;
use berth_meta::{Code, Error};
use berth_security::ace::Ace;
use berth_security::posix::{mode_allows, Want};
use berth_security::principal::Principal;
use berth_security::scope::Access;

use crate::records::{EntryKind, Inode};

/// What an operation needs from one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Search a directory (lookup through it).
    Search,
    /// Read an entry's content (list a directory, read a symlink).
    Read,
    /// Change a directory's entries or a file's content.
    Write,
}

/// Checks the ticket scope for `path`.
pub fn check_scope(p: &Principal, path: &str, access: Access) -> Result<(), Error> {
    if p.may(path, access) {
        Ok(())
    } else {
        Err(Error::access(format!(
            "permission denied: the ticket's scope does not allow {} on {path}",
            access_name(access)
        )))
    }
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Traverse => "lookup",
        Access::Read => "read",
        Access::Write => "write",
        Access::Admin => "administration",
    }
}

/// Checks volume ACE, entry ACE and mode bits for `need` on `inode`.
pub fn check_entry(
    p: &Principal,
    path: &str,
    vol: &VolumeRecord,
    inode: &Inode,
    need: Need,
) -> Result<(), Error> {
    let scope_access = match need {
        Need::Search => Access::Traverse,
        Need::Read => Access::Read,
        Need::Write => Access::Write,
    };
    check_scope(p, path, scope_access)?;
    if p.is_admin() {
        return Ok(());
    }
    let vol_ace = match need {
        Need::Search | Need::Read => vol.read_ace.as_deref(),
        Need::Write => vol.write_ace.as_deref(),
    };
    if let Some(expr) = vol_ace {
        if !ace_allows(expr, p) {
            return Err(Error::access(format!(
                "permission denied: volume {} {} ACE does not allow {}",
                vol.path,
                if need == Need::Write { "write" } else { "read" },
                p.name
            )));
        }
    }
    let entry_ace = match need {
        Need::Search => None,
        Need::Read => inode.acl.read.as_deref(),
        Need::Write => inode.acl.write.as_deref(),
    };
    if let Some(expr) = entry_ace {
        if !ace_allows(expr, p) {
            return Err(Error::access(format!(
                "permission denied: the {} ACE of {path} does not allow {}",
                if need == Need::Write { "write" } else { "read" },
                p.name
            )));
        }
    }
    let want = match need {
        Need::Search => Want::Exec,
        Need::Read => Want::Read,
        Need::Write => Want::Write,
    };
    if mode_allows(
        inode.mode,
        inode.uid,
        inode.gid,
        p,
        want,
        inode.kind == EntryKind::Dir,
    ) {
        Ok(())
    } else {
        Err(Error::access(format!(
            "permission denied: {} may not {} {path} (mode {:04o}, owner {}:{})",
            p.name,
            match need {
                Need::Search => "search",
                Need::Read => "read",
                Need::Write => "write to",
            },
            inode.mode,
            inode.uid,
            inode.gid
        )))
    }
}

/// Removing or renaming `victim` out of directory `dir`: in a sticky (01000)
/// directory only the entry's owner, the directory's owner or a superuser
/// may, as on Linux (EPERM otherwise).
pub fn check_sticky(p: &Principal, path: &str, dir: &Inode, victim: &Inode) -> Result<(), Error> {
    if dir.mode & 0o1000 == 0
        || p.uid == 0
        || p.is_admin()
        || p.uid == dir.uid
        || p.uid == victim.uid
    {
        return Ok(());
    }
    Err(Error::new(
        Code::Perm,
        format!(
            "operation not permitted: {path} is in a sticky directory and belongs to uid {}",
            victim.uid
        ),
    ))
}

/// Owner-or-administrator operations (chmod, utimes, ACL changes); an entry's
/// admin ACE, when set, also grants them.
pub fn check_owner(p: &Principal, path: &str, inode: &Inode, what: &str) -> Result<(), Error> {
    check_scope(p, path, Access::Write)?;
    if p.is_admin() || p.uid == inode.uid {
        return Ok(());
    }
    if let Some(expr) = inode.acl.admin.as_deref() {
        if ace_allows(expr, p) {
            return Ok(());
        }
    }
    Err(Error::new(
        Code::Perm,
        format!("operation not permitted: only the owner or an administrator may {what} {path}"),
    ))
}

/// Evaluates a stored ACE. A stored expression that no longer parses denies
/// (fail closed) and is logged.
pub fn ace_allows(expr: &str, p: &Principal) -> bool {
    match Ace::parse(expr) {
        Ok(ace) => ace.allows(p),
        Err(e) => {
            tracing::error!(expr, error = %e, "stored ACE does not parse; denying");
            false
        }
    }
}

/// Validates an ACE given by a user, with the parser's precise message.
pub fn validate_ace(what: &str, expr: &str) -> Result<(), Error> {
    Ace::parse(expr)
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("invalid {what} ACE {expr:?}: {e}")))
}
