//! POSIX permission-bit checks (owner / group / other), as Linux does them.

use crate::principal::Principal;

/// The kind of access asked for. Check combined accesses (e.g. read-write
/// open) by asking for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Want {
    Read,
    Write,
    /// Execute a file, or search (look up names in) a directory.
    Exec,
}

impl Want {
    /// The permission bit within one `rwx` class.
    fn bit(self) -> u32 {
        match self {
            Want::Read => 0o4,
            Want::Write => 0o2,
            Want::Exec => 0o1,
        }
    }
}

/// Whether `p` may `want` on an entry with permission `mode` (file-type and
/// set-id bits are ignored), owned by `owner_uid:owner_gid`.
///
/// Exactly one class applies: owner if `p.uid == owner_uid`, else group if
/// `owner_gid` is one of `p.gids`, else other — so an owner whose bits deny is
/// denied even if the other bits would allow.
///
/// The superuser (uid 0, or [`Principal::is_admin`]) may always read and
/// write; it may search any directory, but execute a file only if some `x`
/// bit is set. Ticket scopes are not checked here: see [`Principal::may`].
pub fn mode_allows(
    mode: u32,
    owner_uid: u32,
    owner_gid: u32,
    p: &Principal,
    want: Want,
    is_dir: bool,
) -> bool {
    let mode = mode & 0o777;
    if p.uid == 0 || p.is_admin() {
        return match want {
            Want::Read | Want::Write => true,
            Want::Exec => is_dir || mode & 0o111 != 0,
        };
    }
    let class = if p.uid == owner_uid {
        mode >> 6
    } else if p.gids.contains(&owner_gid) {
        mode >> 3
    } else {
        mode
    };
    class & want.bit() != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::PrincipalKind;

    fn who(uid: u32, gids: &[u32], groups: &[&str]) -> Principal {
        Principal {
            name: format!("user{uid}"),
            kind: PrincipalKind::User,
            uid,
            gids: gids.to_vec(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scope: None,
        }
    }

    const OWNER: u32 = 1000;
    const GROUP: u32 = 100;

    fn allows(mode: u32, p: &Principal, want: Want) -> bool {
        mode_allows(mode, OWNER, GROUP, p, want, false)
    }

    #[test]
    fn owner_group_other() {
        let owner = who(OWNER, &[1000], &[]);
        let member = who(2000, &[2000, GROUP], &[]);
        let other = who(3000, &[3000], &[]);
        let mode = 0o754;
        for (p, r, w, x) in [
            (&owner, true, true, true),
            (&member, true, false, true),
            (&other, true, false, false),
        ] {
            assert_eq!(allows(mode, p, Want::Read), r, "{} read", p.name);
            assert_eq!(allows(mode, p, Want::Write), w, "{} write", p.name);
            assert_eq!(allows(mode, p, Want::Exec), x, "{} exec", p.name);
        }
    }

    #[test]
    fn only_one_class_applies() {
        // The owner is denied by its own bits even though "other" may read.
        let owner = who(OWNER, &[GROUP], &[]);
        assert!(!allows(0o044, &owner, Want::Read));
        // A group member is denied by the group bits even though "other" may.
        let member = who(2000, &[GROUP], &[]);
        assert!(!allows(0o604, &member, Want::Read));
        assert!(allows(0o604, &who(3000, &[], &[]), Want::Read));
    }

    #[test]
    fn group_match_uses_gids_not_names() {
        let by_name_only = who(2000, &[2000], &["users"]);
        assert!(!allows(0o070, &by_name_only, Want::Read));
        let by_gid = who(2000, &[7, GROUP], &[]);
        assert!(allows(0o070, &by_gid, Want::Read));
    }

    #[test]
    fn file_type_and_setid_bits_are_ignored() {
        let other = who(3000, &[], &[]);
        assert!(allows(0o100_644, &other, Want::Read));
        assert!(!allows(0o104_644, &other, Want::Exec));
        assert!(!allows(0o040_750, &other, Want::Read));
    }

    #[test]
    fn superuser() {
        let root = who(0, &[0], &[]);
        let admin = who(5000, &[5000], &["admin"]);
        for su in [&root, &admin] {
            assert!(allows(0o000, su, Want::Read));
            assert!(allows(0o000, su, Want::Write));
            // Files: exec only if some x bit is set.
            assert!(!allows(0o666, su, Want::Exec));
            assert!(allows(0o001, su, Want::Exec));
            assert!(allows(0o100, su, Want::Exec));
            // Directories: search always.
            assert!(mode_allows(0o000, OWNER, GROUP, su, Want::Exec, true));
        }
    }

    #[test]
    fn directories_use_the_same_bits_for_others() {
        let other = who(3000, &[], &[]);
        assert!(mode_allows(0o755, OWNER, GROUP, &other, Want::Exec, true));
        assert!(!mode_allows(0o750, OWNER, GROUP, &other, Want::Exec, true));
        assert!(!mode_allows(0o755, OWNER, GROUP, &other, Want::Write, true));
    }
}
