//! The authenticated identity behind a request.
//!
//! A [`Principal`] is what a verified ticket proves. Services never build one
//! from request data: they get it from [`crate::ticket::KeyRing::verify`] (or
//! construct their own internal system identity).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::scope::{Access, Scope};

/// The name of the superuser and of the superuser group.
pub const ADMIN: &str = "admin";

/// What kind of party a principal is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrincipalKind {
    /// A person; logs in with a password.
    User,
    /// A program (container, job); holds tickets only.
    Service,
    /// A cluster node talking to another node.
    Node,
}

impl PrincipalKind {
    /// The lower-case name used in CLI output: `user`, `service` or `node`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Service => "service",
            PrincipalKind::Node => "node",
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    pub kind: PrincipalKind,
    pub uid: u32,
    /// Numeric groups, used for POSIX mode-bit checks.
    pub gids: Vec<u32>,
    /// Group names, used for ACEs (`g:NAME`) and the administrator rule.
    pub groups: Vec<String>,
    /// When set, the principal may only act inside these paths, whatever its
    /// groups, ACEs and mode bits say.
    pub scope: Option<Scope>,
}

impl Principal {
    /// The superuser: named `admin` or a member of the group `admin`.
    ///
    /// An administrator bypasses ACEs and mode bits, but never the scope of
    /// its own ticket: callers check [`Principal::may`] first for everyone.
    pub fn is_admin(&self) -> bool {
        self.name == ADMIN || self.in_group(ADMIN)
    }

    /// Whether the principal belongs to the group named `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether the ticket scope lets the principal perform `access` on the
    /// absolute, normalised `path`. No scope means no restriction.
    pub fn may(&self, path: &str, access: Access) -> bool {
        match &self.scope {
            None => true,
            Some(scope) => scope.allows(path, access),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeEntry;

    fn user(name: &str, groups: &[&str]) -> Principal {
        Principal {
            name: name.into(),
            kind: PrincipalKind::User,
            uid: 1000,
            gids: vec![1000],
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scope: None,
        }
    }

    #[test]
    fn admin_by_name_or_group() {
        assert!(user("admin", &[]).is_admin());
        assert!(user("alice", &["staff", "admin"]).is_admin());
        assert!(!user("alice", &["staff", "administrators"]).is_admin());
        assert!(!user("Admin", &[]).is_admin());
    }

    #[test]
    fn in_group_is_exact() {
        let p = user("alice", &["ops"]);
        assert!(p.in_group("ops"));
        assert!(!p.in_group("op"));
        assert!(!p.in_group("OPS"));
    }

    #[test]
    fn may_without_scope_allows_everything() {
        let p = user("alice", &[]);
        assert!(p.may("/", Access::Admin));
        assert!(p.may("/x/y", Access::Write));
    }

    #[test]
    fn scope_binds_even_the_admin() {
        let mut p = user("admin", &[]);
        p.scope = Some(Scope(vec![ScopeEntry::parse("/apps/a:r").unwrap()]));
        assert!(p.is_admin());
        assert!(p.may("/apps/a/x", Access::Read));
        assert!(!p.may("/apps/a/x", Access::Write));
        assert!(!p.may("/apps/b", Access::Read));
    }

    #[test]
    fn kind_names() {
        assert_eq!(PrincipalKind::User.to_string(), "user");
        assert_eq!(PrincipalKind::Service.to_string(), "service");
        assert_eq!(PrincipalKind::Node.to_string(), "node");
    }
}
