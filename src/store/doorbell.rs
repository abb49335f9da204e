//! The doorbell: root's processes (the mount, the CLI) ring it after committing a message
//! to send, so that the daemon claims it at once instead of at its next poll of the queue.
//!
//! Ringing opens `doorbell` at the top of the state folder for writing and closes it; the
//! daemon watches the file with inotify and wakes on that. Nothing is written and nothing
//! is read: the file carries no data, so the daemon's account (which cannot write the top
//! of the state folder, nor this file) has nothing to forge, and root opens only a name in
//! its own folder, never following a link. A ring never blocks and never fails the commit
//! it follows: when the daemon is not running, or the file is missing, the ring is lost
//! and the daemon's poll finds the message.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{perms, Role, Store};

impl Store {
    /// The file the daemon watches for rings.
    pub fn doorbell_path(&self) -> PathBuf {
        self.state_dir.join(perms::DOORBELL)
    }

    /// Tells a running daemon that a message was queued (best effort; see the module docs).
    /// Call it after the transaction that queued the message has committed.
    pub fn ring_doorbell(&self) {
        // The daemon's own queue changes wake it in-process; it cannot open the file anyway.
        if self.role != Role::Admin {
            return;
        }
        let Ok(path) = CString::new(self.doorbell_path().as_os_str().as_bytes()) else {
            return;
        };
        // No O_CREAT: `perms::prepare` made the file; a missing one only loses the ring.
        // SAFETY: a plain open of a NUL-terminated path; the descriptor is closed below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | libc::O_NOCTTY
                    | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just opened and is ours. Its close is the ring.
            unsafe { libc::close(fd) };
        }
    }
}
