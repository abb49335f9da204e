//! FUSE and the mount: /dev/fuse and fusermount3, the mount alive and answering, and the
//! chroot rule for the folders above it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{fail, find_program, ok, warn, Check};

pub(super) fn check_fuse() -> Check {
    let dev = std::fs::metadata("/dev/fuse");
    let is_char = dev
        .as_ref()
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false);
    if !is_char {
        return fail(
            "fuse",
            "/dev/fuse is missing",
            "modprobe fuse (in a container: give it /dev/fuse, e.g. --device /dev/fuse)",
        );
    }
    match find_program("fusermount3") {
        Some(p) => ok("fuse", format!("/dev/fuse present, {}", p.display())),
        None => fail(
            "fuse",
            "fusermount3 not found (the fuse3 package)",
            "apt install fuse3 (or dnf install fuse3)",
        ),
    }
}

/// The fstype of the mount at `path`, from /proc/self/mountinfo.
fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy().trim_end_matches('/').to_string();
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let point = fields.get(4).map(|p| unescape_mountinfo(p));
        if point.as_deref() == Some(want.as_str()) {
            // The last one listed is the one on top.
            found = fields.get(sep + 1).map(|s| s.to_string());
        }
    }
    found
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `f` on another thread and gives up after `timeout` (a hung FUSE mount blocks the
/// calling thread; the thread is left behind and the process exits anyway).
fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).ok()
}

pub(super) fn check_mount(mnt: &Path) -> Vec<Check> {
    let shown = mnt.display().to_string();
    let Some(fstype) = mount_type(mnt) else {
        return vec![fail(
            "mount",
            format!("{shown} is not mounted"),
            format!("systemctl start as2box-mount (or: as2box mount {shown})"),
        )];
    };
    if !fstype.starts_with("fuse") {
        return vec![fail(
            "mount",
            format!("{shown} is a {fstype} mount, not the as2box FUSE mount"),
            format!("umount {shown}, then systemctl start as2box-mount"),
        )];
    }
    let path = mnt.to_owned();
    match with_timeout(Duration::from_secs(5), move || std::fs::read_dir(&path).map(|_| ())) {
        Some(Ok(())) => vec![ok("mount", format!("{shown} mounted and answering"))],
        Some(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => vec![fail(
            "mount",
            format!("{shown}: transport endpoint is not connected (the mount process died)"),
            format!("umount -l {shown} && systemctl restart as2box-mount"),
        )],
        Some(Err(e)) => vec![fail(
            "mount",
            format!("{shown}: {e}"),
            format!("journalctl -u as2box-mount; then umount -l {shown} && systemctl restart as2box-mount"),
        )],
        None => vec![fail(
            "mount",
            format!("{shown} does not answer within 5 s (the mount is hung)"),
            format!("systemctl restart as2box-mount (or: umount -l {shown})"),
        )],
    }
}

/// OpenSSH's chroot rule: every component of `<mount>/<user>` root-owned and not
/// group/other-writable. The mount itself answers for `<user>`; we check the path to it.
pub(super) fn check_mount_point(mnt: &Path) -> Vec<Check> {
    let mut bad = Vec::new();
    let mut path = PathBuf::from("/");
    let mut components = vec![path.clone()];
    for c in mnt.components().skip(1) {
        path.push(c);
        components.push(path.clone());
    }
    for p in components {
        let q = p.clone();
        let meta = with_timeout(Duration::from_secs(5), move || std::fs::metadata(&q));
        match meta {
            Some(Ok(m)) => {
                if m.uid() != 0 || m.mode() & 0o022 != 0 {
                    bad.push((p, m.uid(), m.mode() & 0o7777));
                }
            }
            // A dead or hung mount: the mount check reports it; its parents are checked.
            Some(Err(e)) if p == mnt && e.raw_os_error() == Some(libc::ENOTCONN) => {}
            None if p == mnt => {}
            Some(Err(e)) => {
                return vec![fail(
                    "mount-point",
                    format!("{}: {e}", p.display()),
                    format!("mkdir -p {} && chmod 0755 {}", mnt.display(), mnt.display()),
                )]
            }
            None => {
                return vec![fail(
                    "mount-point",
                    format!("{}: no answer within 5 s", p.display()),
                    "check the file system holding it",
                )]
            }
        }
    }
    if bad.is_empty() {
        return vec![ok(
            "mount-point",
            format!(
                "{} and every folder above it root-owned, not group/other-writable",
                mnt.display()
            ),
        )];
    }
    bad.into_iter()
        .map(|(p, uid, mode)| {
            fail(
                "mount-point",
                format!(
                    "{} is owned by uid {uid} with mode {mode:04o}: sshd refuses to chroot below it",
                    p.display()
                ),
                format!("chown root:root {} && chmod go-w {}", p.display(), p.display()),
            )
        })
        .collect()
}

/// Which FUSE data path the running mount uses (what it wrote to `mount.status` when the
/// kernel answered its `init`): passthrough, or every byte through the mount process.
pub(super) fn check_data_path(state_dir: &Path) -> Check {
    let name = "fuse-data-path";
    let Some(status) = crate::store::read_mount_status(state_dir) else {
        return warn(
            name,
            format!(
                "{} has no {}: no mount has started with this version",
                state_dir.display(),
                crate::store::MOUNT_STATUS
            ),
            "systemctl restart as2box-mount",
        );
    };
    let get = |key: &str| {
        status
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let (pid, path, why) = (get("pid"), get("data_path"), get("why"));
    let alive = pid
        .parse::<u32>()
        .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
    if !alive {
        return warn(
            name,
            format!(
                "the mount that wrote {} (pid {pid}) is not running; it used {path} ({why})",
                crate::store::MOUNT_STATUS
            ),
            "systemctl start as2box-mount",
        );
    }
    match path {
        "passthrough" => ok(
            name,
            format!("passthrough: the kernel reads and writes file data itself (pid {pid}; {why})"),
        ),
        _ if why.contains("passthrough = \"off\"") => ok(
            name,
            format!("through the mount process (pid {pid}; {why})"),
        ),
        _ => warn(
            name,
            format!("through the mount process (pid {pid}): {why}; large uploads cost the mount CPU"),
            "Linux 6.9 or later with CONFIG_FUSE_PASSTHROUGH gives the kernel's passthrough (as2box mount needs CAP_SYS_ADMIN for it)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/srv/a\\040b"), "/srv/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
