//! Which FUSE file systems are mounted where (`/proc/self/mountinfo`), and
//! detaching one that is left over.

use std::path::{Path, PathBuf};

/// One mount: where, and the file system type (`fuse`, `fuse.berth`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

impl Mount {
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type.starts_with("fuse.")
    }
}

/// Undoes the octal escapes of mount tables (`\040` is a space).
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fs_type = right.split(' ').next()?;
            Some(Mount {
                mount_point: unescape(mount_point),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

fn read() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// True when the top-most mount at `mount_point` (absolute, canonical) is
/// a FUSE file system.
pub fn is_fuse_mounted(mount_point: &Path) -> std::io::Result<bool> {
    Ok(read()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount_point)
        .is_some_and(|m| m.is_fuse()))
}

/// FUSE mounts strictly below `root`, deepest first (so children are
/// detached before their parents).
pub fn fuse_mounts_under(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = read()?
        .into_iter()
        .filter(|m| m.is_fuse() && m.mount_point != root && m.mount_point.starts_with(root))
        .map(|m| m.mount_point)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

/// Detaches whatever is mounted at `mount_point` (lazy unmount: open files
/// keep working until closed): umount2(MNT_DETACH) as root, else
/// `fusermount3 -u -z`.
pub fn lazy_unmount(mount_point: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c = std::ffi::CString::new(mount_point.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("mount point holds a NUL byte"))?;
        // SAFETY: `c` is a valid NUL-terminated path for the whole call.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            // Not a mount point (any more): nothing to detach.
            return Ok(());
        }
        return Err(e);
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(mount_point)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u -z {}: {}",
            mount_point.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:44 / /var/lib/p/mounts/v1 rw,nosuid,nodev shared:20 - fuse.berth berth:/apps/x rw,user_id=0
41 22 0:45 / /var/lib/p/mounts/with\\040space rw - fuse berth:/ rw
42 40 0:46 / /var/lib/p/mounts/v1/inner rw - fuse.berth berth:/ rw
43 22 0:47 / /berth rw - fuse.fuse-overlayfs fuse-overlayfs rw
garbage
";

    #[test]
    fn parses_mountinfo() {
        let m = parse(TEXT);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].mount_point, PathBuf::from("/var/lib/p/mounts/v1"));
        assert!(m[1].is_fuse() && !m[0].is_fuse());
        assert_eq!(
            m[2].mount_point,
            PathBuf::from("/var/lib/p/mounts/with space")
        );
        assert!(m[4].is_fuse(), "fuse.<subtype> counts as FUSE");
    }

    #[test]
    fn not_mounted_here() {
        assert!(!is_fuse_mounted(Path::new("/nonexistent/berth-mount")).unwrap());
        assert!(fuse_mounts_under(Path::new("/nonexistent/root"))
            .unwrap()
            .is_empty());
    }
}
