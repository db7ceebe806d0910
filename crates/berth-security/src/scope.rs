//! Ticket scopes: a list of path prefixes with rights that narrow what the
//! holder of a ticket may do.
//!
//! Paths are absolute and normalised (`/` is the root, no trailing `/`, no
//! empty, `.` or `..` components). Prefixes match whole components, so
//! `/apps/a` covers `/apps/a` and `/apps/a/x` but not `/apps/ab`. A path that
//! is not normalised is never allowed (fail closed), so `/apps/a/../b` cannot
//! sneak past a `/apps/a` scope.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest path prefix accepted in a scope entry.
pub const SCOPE_PATH_LEN_MAX_BYTES: usize = 4096;
/// Most entries accepted in one scope.
pub const SCOPE_ENTRIES_MAX: usize = 256;

/// What a scope entry grants under its prefix. Ordered: `Read < ReadWrite < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rights {
    Read,
    ReadWrite,
    Admin,
}

impl Rights {
    /// The short form used in `PATH:RIGHTS`: `r`, `rw` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rights::Read => "r",
            Rights::ReadWrite => "rw",
            Rights::Admin => "admin",
        }
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of operation a scope is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Look up a name / walk through a directory.
    Traverse,
    Read,
    Write,
    /// Change ACEs, ownership, volume settings.
    Admin,
}

/// A scope entry could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("the scope is empty: give at least one PATH:r, PATH:rw or PATH:admin entry")]
    Empty,
    #[error("scope entry {entry:?} has no rights: write it as PATH:r, PATH:rw or PATH:admin")]
    MissingRights { entry: String },
    #[error("unknown rights {rights:?} in scope entry {entry:?}: use r, rw or admin")]
    UnknownRights { entry: String, rights: String },
    #[error(
        "scope path {path:?} is not an absolute normalised path ({reason}): \
         write it like /apps/a"
    )]
    BadPath { path: String, reason: &'static str },
    #[error("a scope may have at most {SCOPE_ENTRIES_MAX} entries, this one has {count}: merge entries under a common prefix")]
    TooManyEntries { count: usize },
}

/// Why `path` is not an absolute normalised path of at most
/// [`SCOPE_PATH_LEN_MAX_BYTES`] (what a scope entry's prefix may be), or
/// `Ok` if it is.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.len() > SCOPE_PATH_LEN_MAX_BYTES {
        return Err("longer than 4096 bytes");
    }
    check_form(path)
}

/// Why `path` is not an absolute normalised path, whatever its length.
fn check_form(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("it must start with '/'");
    };
    if rest.is_empty() {
        return Ok(());
    }
    if path.contains('\0') {
        return Err("it contains a NUL byte");
    }
    for component in rest.split('/') {
        match component {
            "" => return Err("it has an empty component or a trailing '/'"),
            "." | ".." => return Err("it has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `path` is absolute and normalised (see the module docs), and
/// short enough to be a scope entry's prefix.
pub fn is_normalized_path(path: &str) -> bool {
    check_path(path).is_ok()
}

/// Whether the normalised `prefix` covers the normalised `path`, comparing
/// whole components.
fn covers(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// One `PATH:RIGHTS` grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScopeEntry {
    pub prefix: String,
    pub rights: Rights,
}

impl ScopeEntry {
    /// Parses `PATH:r`, `PATH:rw` or `PATH:admin` (surrounding whitespace is
    /// ignored). The path must be absolute and normalised and may not contain
    /// `,` (the separator of [`Scope::parse`]).
    pub fn parse(text: &str) -> Result<ScopeEntry, ScopeError> {
        let entry = text.trim();
        let Some((path, rights)) = entry.rsplit_once(':') else {
            return Err(ScopeError::MissingRights {
                entry: entry.into(),
            });
        };
        let rights = match rights {
            "r" => Rights::Read,
            "rw" => Rights::ReadWrite,
            "admin" => Rights::Admin,
            other => {
                return Err(ScopeError::UnknownRights {
                    entry: entry.into(),
                    rights: other.into(),
                })
            }
        };
        let e = ScopeEntry {
            prefix: path.into(),
            rights,
        };
        e.validate()?;
        Ok(e)
    }

    /// Checks the prefix (used for entries decoded from a ticket too).
    pub fn validate(&self) -> Result<(), ScopeError> {
        let bad = |reason| ScopeError::BadPath {
            path: self.prefix.clone(),
            reason,
        };
        check_path(&self.prefix).map_err(bad)?;
        if self.prefix.contains(',') {
            return Err(bad(
                "',' separates scope entries and cannot appear in a path",
            ));
        }
        Ok(())
    }

    /// Whether this entry grants `access` on the normalised `path`.
    fn grants(&self, path: &str, access: Access) -> bool {
        let needed = match access {
            Access::Traverse => {
                // Walking down to the scoped subtree is allowed, and anything
                // inside it may be traversed with any rights.
                return covers(&self.prefix, path) || covers(path, &self.prefix);
            }
            Access::Read => Rights::Read,
            Access::Write => Rights::ReadWrite,
            Access::Admin => Rights::Admin,
        };
        self.rights >= needed && covers(&self.prefix, path)
    }
}

impl fmt::Display for ScopeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.prefix, self.rights)
    }
}

impl FromStr for ScopeEntry {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScopeEntry::parse(s)
    }
}

/// A ticket scope: the union of its entries. An empty scope allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope(pub Vec<ScopeEntry>);

impl Scope {
    /// Parses a comma-separated list of entries, e.g. `/apps/a:rw,/shared:r`.
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        if text.trim().is_empty() {
            return Err(ScopeError::Empty);
        }
        let count = text.split(',').count();
        if count > SCOPE_ENTRIES_MAX {
            return Err(ScopeError::TooManyEntries { count });
        }
        text.split(',')
            .map(ScopeEntry::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Scope)
    }

    /// Checks every entry and the entry count (used after decoding a ticket).
    pub fn validate(&self) -> Result<(), ScopeError> {
        if self.0.len() > SCOPE_ENTRIES_MAX {
            return Err(ScopeError::TooManyEntries {
                count: self.0.len(),
            });
        }
        self.0.iter().try_for_each(ScopeEntry::validate)
    }

    /// Whether the scope allows `access` on the absolute, normalised `path`.
    ///
    /// `Read` needs an entry with at least `r` covering the path, `Write` at
    /// least `rw`, `Admin` needs `admin`. `Traverse` is allowed on any path an
    /// entry covers and on every ancestor of an entry's prefix. A path that is
    /// not normalised is refused. Only the prefixes are bounded in length: the
    /// path asked about may be longer than PATH_MAX (an entry deep below a
    /// directory reached by inode, whose full path no caller ever spelt out).
    pub fn allows(&self, path: &str, access: Access) -> bool {
        check_form(path).is_ok() && self.0.iter().any(|e| e.grants(path, access))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> Scope {
        Scope::parse(s).unwrap()
    }

    #[test]
    fn parse_and_display_round_trip() {
        for text in ["/:r", "/apps/a:rw", "/apps/a:admin", "/a:b/c:r"] {
            let e = ScopeEntry::parse(text).unwrap();
            assert_eq!(e.to_string(), text);
            assert_eq!(ScopeEntry::parse(&e.to_string()).unwrap(), e);
        }
        let s = scope(" /apps/a:rw , /shared:r ");
        assert_eq!(s.to_string(), "/apps/a:rw,/shared:r");
        assert_eq!(scope(&s.to_string()), s);
    }

    #[test]
    fn parse_errors_say_what_to_do() {
        assert_eq!(
            ScopeEntry::parse("/apps").unwrap_err().to_string(),
            "scope entry \"/apps\" has no rights: write it as PATH:r, PATH:rw or PATH:admin"
        );
        assert_eq!(
            ScopeEntry::parse("/apps:w").unwrap_err().to_string(),
            "unknown rights \"w\" in scope entry \"/apps:w\": use r, rw or admin"
        );
        assert_eq!(
            ScopeEntry::parse("apps:r").unwrap_err().to_string(),
            "scope path \"apps\" is not an absolute normalised path (it must start with '/'): \
             write it like /apps/a"
        );
        for bad in ["/apps/:r", "/a//b:r", "/a/../b:r", "/a/./b:r", ":r"] {
            assert!(
                matches!(ScopeEntry::parse(bad), Err(ScopeError::BadPath { .. })),
                "{bad}"
            );
        }
        assert_eq!(Scope::parse("  "), Err(ScopeError::Empty));
        let many = vec!["/a:r"; SCOPE_ENTRIES_MAX + 1].join(",");
        assert!(matches!(
            Scope::parse(&many),
            Err(ScopeError::TooManyEntries { .. })
        ));
    }

    #[test]
    fn rights_are_ordered() {
        assert!(Rights::Read < Rights::ReadWrite);
        assert!(Rights::ReadWrite < Rights::Admin);
    }

    #[test]
    fn components_not_bytes() {
        let s = scope("/apps/a:rw");
        assert!(s.allows("/apps/a", Access::Read));
        assert!(s.allows("/apps/a/x/y", Access::Write));
        assert!(!s.allows("/apps/ab", Access::Read));
        assert!(!s.allows("/apps/ab", Access::Traverse));
        assert!(!s.allows("/apps", Access::Read));
    }

    #[test]
    fn rights_levels() {
        let r = scope("/d:r");
        assert!(r.allows("/d/f", Access::Read));
        assert!(!r.allows("/d/f", Access::Write));
        assert!(!r.allows("/d/f", Access::Admin));
        let rw = scope("/d:rw");
        assert!(rw.allows("/d/f", Access::Write));
        assert!(!rw.allows("/d/f", Access::Admin));
        let admin = scope("/d:admin");
        assert!(admin.allows("/d/f", Access::Admin));
        assert!(admin.allows("/d/f", Access::Write));
        assert!(admin.allows("/d/f", Access::Read));
    }

    #[test]
    fn traverse_down_to_the_subtree() {
        let s = scope("/apps/a/data:r");
        for ancestor in ["/", "/apps", "/apps/a", "/apps/a/data", "/apps/a/data/x"] {
            assert!(s.allows(ancestor, Access::Traverse), "{ancestor}");
        }
        assert!(!s.allows("/apps/b", Access::Traverse));
        assert!(!s.allows("/apps/a/other", Access::Traverse));
        assert!(!s.allows("/apps", Access::Read));
    }

    #[test]
    fn root_scope_covers_everything() {
        let s = scope("/:rw");
        assert!(s.allows("/", Access::Write));
        assert!(s.allows("/x/y", Access::Write));
        assert!(!s.allows("/x", Access::Admin));
    }

    #[test]
    fn union_of_entries() {
        let s = scope("/a:r,/a/w:rw");
        assert!(s.allows("/a/x", Access::Read));
        assert!(!s.allows("/a/x", Access::Write));
        assert!(s.allows("/a/w/x", Access::Write));
    }

    #[test]
    fn empty_scope_allows_nothing() {
        let s = Scope(vec![]);
        assert!(!s.allows("/", Access::Traverse));
        assert!(!s.allows("/a", Access::Read));
    }

    #[test]
    fn paths_longer_than_path_max_are_judged_like_others() {
        let s = scope("/apps/a:rw");
        let deep = format!("/apps/a{}", "/0123456789abcdef".repeat(300));
        assert!(deep.len() > SCOPE_PATH_LEN_MAX_BYTES);
        assert!(s.allows(&deep, Access::Write));
        assert!(s.allows(&deep, Access::Traverse));
        let outside = format!("/apps/b{}", "/0123456789abcdef".repeat(300));
        assert!(!s.allows(&outside, Access::Read));
        assert!(!s.allows(&outside, Access::Traverse));
        // A prefix that long is still refused.
        assert!(ScopeEntry::parse(&format!("{deep}:r")).is_err());
    }

    #[test]
    fn unnormalised_paths_are_refused() {
        let s = scope("/apps/a:admin");
        for p in [
            "/apps/a/../b",
            "/apps/a/",
            "apps/a",
            "/apps/a//x",
            "/apps/a/./x",
            "",
        ] {
            for access in [Access::Traverse, Access::Read, Access::Write, Access::Admin] {
                assert!(!s.allows(p, access), "{p} {access:?}");
            }
        }
    }
}
