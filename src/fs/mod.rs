//! The mailbox filesystem: `core` holds the tree and uploads in our own types (with
//! `tree`, `drafts`, `outbox` and `paths` for its sections), `fuse` is the thin `fuser`
//! adapter, `inodes` maps kernel inode numbers to tree nodes. `mount` runs it.

mod closer;
mod core;
mod drafts;
mod fuse;
mod inodes;
#[cfg(test)]
mod model_tests;
mod outbox;
mod paths;
mod running_hash;
mod tree;

pub use self::core::{Attr, Caller, DataPath, Errno, Kind, MailboxFs};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::store::Store;

/// Why the mount could not run.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point is missing or not a folder.
    #[error("mount point {0} does not exist or is not a folder: create it (root-owned, mode 0755) first")]
    BadMountPoint(String),
    /// The kernel refused the mount.
    #[error("cannot mount at {path}: {source} (is /dev/fuse there, and are we root?)")]
    Mount {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Detaches a mount left behind by a mount process that died ("Transport endpoint is not
/// connected"), so that a restart needs no manual `umount`.
fn clear_dead_mount(path: &Path) {
    if let Err(e) = std::fs::metadata(path) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            warn!(path = %path.display(), "found a dead mount (its process was killed); detaching it");
            if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
                // SAFETY: plain syscall with a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts) so that
/// [`wait_for_stop`] can take them synchronously.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask on the current thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits up to `timeout` for SIGINT/SIGTERM; true if one came.
fn wait_for_stop(set: &libc::sigset_t, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the set was initialized by block_stop_signals.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    sig > 0
}

/// Mounts the tree at `mountpoint` and serves it until SIGINT/SIGTERM or an external
/// unmount.
pub fn mount(store: Arc<Store>, config: Config, mountpoint: &Path) -> Result<(), MountError> {
    clear_dead_mount(mountpoint);
    if !mountpoint.is_dir() {
        return Err(MountError::BadMountPoint(mountpoint.display().to_string()));
    }
    let cleared = store.blobs().clear_spool()?;
    if cleared > 0 {
        info!(
            files = cleared,
            "removed partial uploads left by an earlier run"
        );
    }
    let signals = block_stop_signals();
    let core = Arc::new(MailboxFs::new(store, config.clone()));
    let mut options = fuser::Config::default();
    options.mount_options = vec![
        fuser::MountOption::FSName("as2box".into()),
        fuser::MountOption::Subtype("as2box".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoExec,
        fuser::MountOption::NoAtime,
        // The kernel checks the mode bits we report on every path walk, so a user can never
        // reach into another user's tree through names the kernel has cached; the core
        // checks every request again on top.
        fuser::MountOption::DefaultPermissions,
    ];
    // sshd drops to the user's groups before it chroots, so other users must reach the
    // mount; the core enforces who sees what.
    options.acl = fuser::SessionACL::All;
    options.n_threads = Some(config.mount.threads);
    options.clone_fd = true;
    let session = fuser::spawn_mount(fuse::FuseAdapter::new(core.clone()), mountpoint, &options)
        .map_err(|source| MountError::Mount {
            path: mountpoint.display().to_string(),
            source,
        })?;
    info!(path = %mountpoint.display(), "mounted");
    core.set_mount_id(closer::mount_id(mountpoint));
    let notifier = session.notifier();
    core.set_invalidator(Box::new(move |ino| {
        // Offset -1: attributes only, no page-cache work (safe inside a request handler).
        // ENOENT just means the kernel has forgotten the inode already.
        let _ = notifier.inval_inode(fuser::INodeNo(ino), -1, 0);
    }));

    let stop = Arc::new(AtomicBool::new(false));
    // Uploads written by the kernel (passthrough) are handed to the disk's writeback
    // while they arrive, as `write` does for the uploads it sees.
    let writeback = {
        let stop = stop.clone();
        let core = core.clone();
        std::thread::Builder::new()
            .name("as2box-writeback".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    core.start_writeback();
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .ok()
    };
    let ticker = {
        let stop = stop.clone();
        let core = core.clone();
        let period = Duration::from_millis(200);
        std::thread::Builder::new()
            .name("as2box-tick".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    core.tick();
                    std::thread::sleep(period);
                }
            })
            .ok()
    };
    loop {
        if wait_for_stop(&signals, Duration::from_millis(500)) {
            info!("stop signal received; unmounting");
            break;
        }
        if session.guard.is_finished() {
            info!("unmounted from outside");
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in [ticker, writeback].into_iter().flatten() {
        let _ = t.join();
    }
    if !session.guard.is_finished() {
        if let Err(e) = session.umount_and_join() {
            warn!(error = %e, "unmount");
        }
    }
    Ok(())
}
