//! `berth` as the mount helper of its FUSE type: mount(8) hands a Berth
//! mount (type `fuse.berth`) to `mount.fuse3`, which runs the program named
//! after the subtype as `berth SOURCE MOUNTPOINT -o OPTIONS`. Berth answers
//! a remount (`mount -o remount,ro /mnt`, and back with `rw`), which the
//! kernel does for a FUSE mount as for any other: the superblock's flags
//! change, the mount process keeps serving, and the kernel refuses writes
//! with EROFS meanwhile. A new mount through mount(8) or fstab is refused
//! with a pointer to `berth mount`, which needs a server and a ticket that
//! mount's options do not carry.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

/// The mount(2) flags of a remount with `options` (mount(8)'s `-o` list).
/// Berth mounts stay `nodev,nosuid` whatever is asked (a device node made
/// through one host must not open devices on another). Options that are
/// not flags (FUSE's `allow_other`, `user_id=`, `fsname=` …, which the
/// kernel keeps from the mount) are left out.
pub fn remount_flags(options: &str) -> Result<libc::c_ulong, String> {
    let mut flags = libc::MS_REMOUNT | libc::MS_NODEV | libc::MS_NOSUID;
    let mut remount = false;
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "remount" => remount = true,
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "async" => flags &= !libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "noatime" => flags |= libc::MS_NOATIME,
            "atime" => flags &= !libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "diratime" => flags &= !libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "norelatime" => flags &= !libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "lazytime" => flags |= libc::MS_LAZYTIME,
            "nolazytime" => flags &= !libc::MS_LAZYTIME,
            // Always on, as the mount was made.
            "nodev" | "nosuid" | "dev" | "suid" => {}
            _ => {}
        }
    }
    if !remount {
        return Err(
            "a Berth file system is mounted with `berth mount MOUNTPOINT` (it needs a server and \
             a ticket: BERTH_SERVERS, BERTH_TICKET_FILE); through mount(8), only a remount \
             (`mount -o remount,ro|rw MOUNTPOINT`) is supported"
                .to_string(),
        );
    }
    Ok(flags)
}

/// Whether the command line is mount.fuse's call of its helper: `berth
/// SOURCE MOUNTPOINT [-o OPTIONS]`, SOURCE being a Berth mount's source
/// (`berth:/path`, the `fsname` every Berth mount gets).
pub fn is_helper_call(args: &[OsString]) -> bool {
    args.get(1)
        .map(|a| {
            a.as_bytes()
                .strip_prefix(berth_fuse::FS_NAME.as_bytes())
                .is_some_and(|rest| rest.starts_with(b":"))
        })
        .unwrap_or(false)
        && args.len() >= 3
}

/// Runs mount.fuse's call of `berth SOURCE MOUNTPOINT -o OPTIONS`.
pub fn run(args: &[OsString]) -> ExitCode {
    match remount(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::from(32) // mount(8)'s "mount failure"
        }
    }
}

/// How long a remount read-only waits for files being closed.
const BUSY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

fn remount(args: &[OsString]) -> Result<(), String> {
    let target = &args[2];
    let mut options = String::new();
    let mut rest = args[3..].iter();
    while let Some(a) = rest.next() {
        let a = a.to_string_lossy();
        if a == "-o" {
            let o = rest.next().ok_or("-o needs a list of options")?;
            if !options.is_empty() {
                options.push(',');
            }
            options.push_str(&o.to_string_lossy());
        } else if let Some(o) = a.strip_prefix("-o") {
            if !options.is_empty() {
                options.push(',');
            }
            options.push_str(o);
        }
        // Other arguments mount.fuse passes (none today) are not options.
    }
    let flags = remount_flags(&options)?;
    let c_target = CString::new(target.as_bytes())
        .map_err(|_| "the mount point holds a NUL byte".to_string())?;
    let mut waited = std::time::Duration::ZERO;
    let r = loop {
        // SAFETY: c_target is a valid NUL-terminated string that outlives
        // the call; a remount takes no source, type or data (null pointers).
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                c_target.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        // Read-only is refused (EBUSY) while a file is open for writing or
        // an unlinked inode is still held; files just closed are released
        // by the kernel asynchronously, so that passes in a moment.
        let busy = r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY);
        if !busy || waited >= BUSY_WAIT_MAX {
            break r;
        }
        std::thread::sleep(BUSY_RETRY);
        waited += BUSY_RETRY;
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) => " (a remount needs root)",
            Some(libc::EINVAL) => " (is it a mount point?)",
            Some(libc::EBUSY) => " (a file is open for writing there)",
            _ => "",
        };
        return Err(format!(
            "remounting {} ({options}) failed: {e}{hint}",
            target.to_string_lossy()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remount_flags_follow_the_options_and_keep_nodev_nosuid() {
        let ro = remount_flags("remount,ro,dev,suid,user_id=0,allow_other").unwrap();
        assert_eq!(
            ro,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID
        );
        let rw = remount_flags("ro,remount,rw,noatime").unwrap();
        assert_eq!(
            rw,
            libc::MS_REMOUNT | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOATIME
        );
    }

    #[test]
    fn only_remounts_are_taken() {
        let e = remount_flags("ro,allow_other").unwrap_err();
        assert!(e.contains("berth mount"), "{e}");
    }

    #[test]
    fn helper_calls_are_told_from_subcommands() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_helper_call(&args(&[
            "berth",
            "berth:/apps",
            "/mnt",
            "-o",
            "remount,ro"
        ])));
        assert!(is_helper_call(&args(&["berth", "berth:/", "/mnt"])));
        assert!(!is_helper_call(&args(&["berth", "mount", "/mnt"])));
        assert!(!is_helper_call(&args(&["berth", "berthx:/", "/mnt"])));
        assert!(!is_helper_call(&args(&["berth", "berth:/"])));
    }
}
