//! The mount table: `/proc/self/mountinfo` parsing (the one parser in the
//! workspace; `berth-container` uses it too), finding FUSE and Berth
//! mounts, and unmounting (umount(2) as root, `fusermount3 -u` otherwise).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::MountError;

/// File system name of every Berth mount (the "source" column of mount
/// tables), followed by `:` and the namespace path mounted.
pub const FS_NAME: &str = "berth";

/// One line of `/proc/self/mountinfo` that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// `fuse`, `fuse.berth`, `ext4`, ...
    pub fs_type: String,
    pub source: String,
    /// `major:minor` of the mounted file system (its backing device info
    /// is `/sys/class/bdi/<device>`).
    pub device: String,
}

impl MountEntry {
    /// Any FUSE file system (`fuse` or `fuse.<subtype>`).
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type.starts_with("fuse.")
    }

    /// A FUSE mount made by `berth mount`.
    pub fn is_berth(&self) -> bool {
        self.is_fuse()
            && (self.source == FS_NAME || self.source.starts_with(&format!("{FS_NAME}:")))
    }
}

/// Undoes the octal escapes (`\040` for a space) of mount tables, byte for
/// byte (paths need not be UTF-8).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses the text of `/proc/self/mountinfo`; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let (Some(device), Some(mount_point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let mut r = right.split(' ');
        let (Some(fs_type), Some(source)) = (r.next(), r.next()) else {
            continue;
        };
        out.push(MountEntry {
            mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
            fs_type: fs_type.to_string(),
            source: String::from_utf8_lossy(&unescape(source)).into_owned(),
            device: device.to_string(),
        });
    }
    out
}

/// The mount table of this process.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The FUSE mount at `mount_point` (an absolute, canonical path), if any.
/// The last matching line wins: it is the one on top.
pub fn fuse_mount_at(mount_point: &Path) -> std::io::Result<Option<MountEntry>> {
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount_point)
        .filter(MountEntry::is_fuse))
}

/// The Berth mount at `mount_point` (an absolute, canonical path), if any.
pub fn berth_mount_at(mount_point: &Path) -> std::io::Result<Option<MountEntry>> {
    Ok(fuse_mount_at(mount_point)?.filter(MountEntry::is_berth))
}

/// FUSE mounts strictly below `root`, deepest first (so children are
/// detached before their parents).
pub fn fuse_mounts_under(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(fuse_under(mounts()?, root))
}

fn fuse_under(table: Vec<MountEntry>, root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = table
        .into_iter()
        .filter(|m| m.is_fuse() && m.mount_point != root && m.mount_point.starts_with(root))
        .map(|m| m.mount_point)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// `mount_point` made absolute without touching the file system below it
/// (a dead FUSE mount fails `canonicalize` with ENOTCONN).
pub fn absolute(mount_point: &Path) -> std::io::Result<PathBuf> {
    match mount_point.canonicalize() {
        Ok(p) => Ok(p),
        Err(_) => {
            let abs = std::path::absolute(mount_point)?;
            // Resolve the parent only; the last component may be the dead mount.
            match (abs.parent(), abs.file_name()) {
                (Some(parent), Some(name)) => Ok(parent
                    .canonicalize()
                    .unwrap_or_else(|_| parent.to_path_buf())
                    .join(name)),
                _ => Ok(abs),
            }
        }
    }
}

/// Unmounts the Berth mount at `mount_point`. `lazy` detaches it even while
/// files are open (they keep working until closed). Refuses mounts that are
/// not Berth's.
pub fn unmount(mount_point: &Path, lazy: bool) -> Result<(), MountError> {
    let abs = absolute(mount_point).map_err(|e| MountError::Io {
        what: format!("resolving {}", mount_point.display()),
        source: e,
    })?;
    let found = berth_mount_at(&abs).map_err(|e| MountError::Io {
        what: "reading /proc/self/mountinfo".into(),
        source: e,
    })?;
    if found.is_none() {
        return Err(MountError::NotMounted(abs));
    }
    unmount_path(&abs, lazy)
}

/// Detaches whatever is mounted at `abs` (absolute), Berth's or not, even
/// while files are open (they keep working until closed). Nothing mounted
/// there is not an error.
pub fn lazy_unmount(abs: &Path) -> Result<(), MountError> {
    match unmount_path(abs, true) {
        Err(MountError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            Ok(()) // not a mount point (any more)
        }
        r => r,
    }
}

/// Unmounts whatever is at `abs` (checked by the caller).
pub(crate) fn unmount_path(abs: &Path, lazy: bool) -> Result<(), MountError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(abs.as_os_str().as_bytes())
            .map_err(|_| MountError::Usage("the mount point holds a NUL byte".into()))?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: `c` is a valid NUL-terminated path for the whole call.
        if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            return Err(MountError::Busy(abs.to_path_buf()));
        }
        return Err(MountError::Io {
            what: format!("umount {}", abs.display()),
            source: e,
        });
    }
    let mut last = None;
    for bin in ["fusermount3", "fusermount"] {
        let mut cmd = Command::new(bin);
        cmd.arg("-u").arg("-q");
        if lazy {
            cmd.arg("-z");
        }
        cmd.arg("--")
            .arg(abs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match cmd.output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
                if text.contains("busy") {
                    return Err(MountError::Busy(abs.to_path_buf()));
                }
                return Err(MountError::Io {
                    what: format!("{bin} -u {}", abs.display()),
                    source: std::io::Error::other(text),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(MountError::NoFusermount(
        last.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
61 22 0:52 / /tmp/berth\\040mnt rw,nosuid,nodev,relatime shared:30 - fuse.berth berth:/apps rw,user_id=0,group_id=0
62 22 0:53 / /mnt/other rw,nosuid,nodev - fuse.sshfs host:/x rw
63 22 0:54 / /mnt/plain rw,nosuid,nodev - fuse berth:/ rw
";

    #[test]
    fn parses_and_recognises_berth_mounts() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp/berth mnt"));
        assert_eq!(m[1].source, "berth:/apps");
        assert_eq!(m[1].device, "0:52");
        assert!(m[1].is_berth());
        assert!(!m[0].is_berth());
        assert!(!m[2].is_berth());
        assert!(m[3].is_berth());
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape("a\\040b\\011c"), b"a b\tc");
        assert_eq!(unescape("plain"), b"plain");
        assert_eq!(unescape("end\\04"), b"end\\04");
        assert_eq!(
            unescape("\\377x"),
            b"\xffx",
            "not UTF-8, kept byte for byte"
        );
    }

    const OTHERS: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:44 / /var/lib/p/mounts/v1 rw,nosuid,nodev shared:20 - fuse.berth berth:/apps/x rw,user_id=0
41 22 0:45 / /var/lib/p/mounts/with\\040space rw - fuse berth:/ rw
42 40 0:46 / /var/lib/p/mounts/v1/inner rw - fuse.berth berth:/ rw
43 22 0:47 / /berth rw - fuse.fuse-overlayfs fuse-overlayfs rw
44 22 0:48 / /var/lib/p/mounts/blk rw - fuseblk /dev/sdb1 rw
garbage
";

    #[test]
    fn recognises_fuse_mounts_of_every_kind() {
        let m = parse_mountinfo(OTHERS);
        assert_eq!(m.len(), 6, "the garbage line is skipped");
        assert_eq!(m[1].mount_point, PathBuf::from("/var/lib/p/mounts/v1"));
        assert!(m[1].is_fuse() && !m[0].is_fuse());
        assert_eq!(
            m[2].mount_point,
            PathBuf::from("/var/lib/p/mounts/with space")
        );
        assert!(m[4].is_fuse(), "fuse.<subtype> counts as FUSE");
        assert!(!m[4].is_berth(), "but is not Berth's");
        assert!(
            !m[5].is_fuse(),
            "fuseblk is not counted (never a berth mount)"
        );
        assert_eq!(
            fuse_under(m, Path::new("/var/lib/p/mounts")),
            [
                PathBuf::from("/var/lib/p/mounts/v1/inner"),
                PathBuf::from("/var/lib/p/mounts/v1"),
                PathBuf::from("/var/lib/p/mounts/with space"),
            ],
            "deepest first; the root itself and other trees left out"
        );
    }

    #[test]
    fn nothing_mounted_here() {
        let p = Path::new("/nonexistent/berth-mount");
        assert!(fuse_mount_at(p).unwrap().is_none());
        assert!(berth_mount_at(p).unwrap().is_none());
        assert!(fuse_mounts_under(Path::new("/nonexistent/root"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn not_mounted_is_refused() {
        let dir = std::env::temp_dir();
        match unmount(&dir, false) {
            Err(MountError::NotMounted(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
