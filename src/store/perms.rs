//! Who may use the state folder: root alone, or root (the mount, the CLI) and the AS2
//! daemon's unprivileged service account through that account's group.
//!
//! Shared, every folder is `2770` (setgid: what is created inside gets the group) and
//! every file is readable by the group (`0640`); the database and the sweep lock are
//! writable by it (`0660`). The audit log stays root's. Without a service account the
//! folder is `0700` and the modes inside do not matter.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Result, StoreError};

/// Mode of the folders the store creates below the state folder (masked by no umask).
pub const SHARED_DIR_MODE: u32 = 0o2770;

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

/// Creates `dir` (and its parents) if missing, as a shared folder: `umask` would otherwise
/// leave the group without write access.
pub fn create_shared_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    chmod(dir, SHARED_DIR_MODE)
}

/// Gives the state folder to root alone (`gid` None) or shares it with group `gid`, walking
/// everything inside (for a folder initialized before the service account existed).
pub fn share_state_dir(dir: &Path, gid: Option<u32>) -> Result<()> {
    let Some(gid) = gid else {
        return chmod(dir, 0o700);
    };
    share(dir, gid)
}

fn share(path: &Path, gid: u32) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(io(format!("stat {}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, None, Some(gid))
        .map_err(io(format!("chgrp {}", path.display())))?;
    if meta.is_dir() {
        chmod(path, SHARED_DIR_MODE)?;
        for entry in std::fs::read_dir(path).map_err(io(format!("read {}", path.display())))? {
            let entry = entry.map_err(io(format!("read {}", path.display())))?;
            share(&entry.path(), gid)?;
        }
        return Ok(());
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mode = if name.starts_with("as2box.db") || name == ".sweep.lock" {
        0o660
    } else if name == "audit.log" {
        0o600
    } else {
        0o640
    };
    chmod(path, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sharing_sets_group_and_modes_throughout_and_root_only_closes_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("blobs/ab")).unwrap();
        std::fs::write(state.join("blobs/ab/abcd"), b"x").unwrap();
        std::fs::write(state.join("as2box.db"), b"").unwrap();
        std::fs::write(state.join("audit.log"), b"").unwrap();
        // Our own group: changing a file's group to it needs no privilege.
        let gid = unsafe { libc::getegid() };
        share_state_dir(&state, Some(gid)).unwrap();
        let mode = |p: &str| std::fs::metadata(state.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode(""), 0o2770);
        assert_eq!(mode("blobs/ab"), 0o2770);
        assert_eq!(mode("blobs/ab/abcd"), 0o640);
        assert_eq!(mode("as2box.db"), 0o660);
        assert_eq!(mode("audit.log"), 0o600);
        assert_eq!(
            std::fs::metadata(state.join("blobs/ab/abcd"))
                .unwrap()
                .gid(),
            gid
        );
        share_state_dir(&state, None).unwrap();
        assert_eq!(mode(""), 0o700);
        create_shared_dir(&state.join("blobs/cd")).unwrap();
        assert_eq!(mode("blobs/cd"), 0o2770);
    }
}
