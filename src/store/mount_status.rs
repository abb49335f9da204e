//! `mount.status` at the top of the state folder: what the running mount process says
//! about itself (its pid, the FUSE data path it uses), for `as2box doctor` and the bench
//! scripts. Written by root only (the top is not writable by the service account), whole
//! files replaced by rename, read without following a symlink.

use std::io::{Read, Write};
use std::path::Path;

use super::safefs;

/// The file's name in the state folder.
pub const MOUNT_STATUS: &str = "mount.status";

/// Replaces `mount.status` with `lines` (`key = value`, one per line).
pub fn write_mount_status(state_dir: &Path, lines: &[(&str, String)]) -> std::io::Result<()> {
    let dir = safefs::Dir::open(state_dir)?;
    let tmp = format!(".{MOUNT_STATUS}.{}", std::process::id());
    let _ = dir.unlink(&tmp);
    let mut file = dir.create_new(&tmp, 0o644)?;
    let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    file.write_all(text.as_bytes())?;
    dir.rename(&tmp, &dir, MOUNT_STATUS)
}

/// The `key = value` pairs of `mount.status`, if the file is there (at most 4 KiB read).
pub fn read_mount_status(state_dir: &Path) -> Option<Vec<(String, String)>> {
    let dir = safefs::Dir::open(state_dir).ok()?;
    let file = dir.file(MOUNT_STATUS, libc::O_RDONLY, 0).ok()?;
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}
