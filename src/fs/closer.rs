//! Who is closing an upload, and how: the facts `flush` needs from `/proc` to tell an
//! explicit close from the kernel closing the files of a dying process, and the last close
//! from one of several descriptors (`dup`, shells' redirections).
//!
//! Reading another process's `/proc/<pid>/stat` can block while that process is inside
//! `execve` (which holds its `exec_update_lock` while it closes close-on-exec descriptors
//! and waits for our answer to that very flush): the reads run on a helper thread and are
//! given up after [`PROBE_TIMEOUT`], which is then treated as "not the last close".
//!
//! The helper is one long-lived thread fed through a channel, not a thread per probe (two
//! probes per upload, one at open and one at close, made thread creation a visible part of
//! the time of small uploads). A helper that did not answer in time is abandoned (it may be
//! blocked for as long as that `execve` takes) and the next probe starts a fresh one, so a
//! stuck read never delays the probes after it.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

/// How long `flush` waits for `/proc` before deferring the decision to `release`.
///
/// A deferred decision makes that close return before its commit (the commit comes with
/// `release`), so a mount killed in between loses an upload whose close succeeded: the
/// timeout must only ever fire for a read that is truly blocked (the `execve` case above),
/// never for a probe that merely waited for a core. 300 ms did fire under the load of a
/// 2-core machine running tests in parallel (a lost file in `fs_durability`); a program
/// exec'd while it holds an upload open now waits this long once.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/proc` says about the closing task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closer {
    /// Its process (thread group) id.
    pub tgid: Option<u32>,
    /// The task is exiting (`PF_EXITING`): its files are being closed by the kernel.
    pub exiting: bool,
    /// The task's process still has another descriptor on the same file.
    pub other_descriptor: bool,
}

type Job = Box<dyn FnOnce() + Send>;

/// The helper thread's queue; `None` until the first probe or after a helper was abandoned.
static HELPER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

fn start_helper() -> Option<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("as2box-proc".into())
        .spawn(move || {
            // Ends when its sender is dropped (abandoned, or the process ends).
            for job in rx {
                job();
            }
        })
        .ok()?;
    Some(tx)
}

/// Runs `f` on the helper thread and waits at most [`PROBE_TIMEOUT`] for its answer.
/// Probes from several FUSE threads queue behind each other (each is a few small reads of
/// `/proc`); one that times out takes its helper out of service.
fn with_timeout<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (answer_tx, answer_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = answer_tx.send(f());
    });
    {
        let mut helper = HELPER.lock().unwrap_or_else(|e| e.into_inner());
        if helper.is_none() {
            *helper = start_helper();
        }
        let sent = helper.as_ref().map(|h| h.send(job));
        match sent {
            Some(Ok(())) => {}
            // The helper is gone (it cannot be, short of a panic in a probe): start anew.
            Some(Err(mpsc::SendError(job))) => {
                *helper = start_helper();
                helper.as_ref()?.send(job).ok()?;
            }
            None => return None,
        }
    }
    match answer_rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(v) => Some(v),
        Err(_) => {
            // Blocked in /proc: abandon this helper; the next probe starts another. (If a
            // probe queued behind the stuck one, it times out too and does the same.)
            *HELPER.lock().unwrap_or_else(|e| e.into_inner()) = None;
            None
        }
    }
}

/// Inspects task `pid` closing a file with inode `ino` on mount `mnt_id` (if known); `None`
/// when `/proc` did not answer in time.
pub fn probe(pid: u32, ino: u64, mnt_id: Option<u64>) -> Option<Closer> {
    if pid == 0 {
        return None;
    }
    with_timeout(move || Closer {
        tgid: read_tgid(pid),
        exiting: exiting(pid),
        other_descriptor: has_descriptor(pid, ino, mnt_id),
    })
}

/// The process id of task `pid` (FUSE requests carry thread ids).
pub fn tgid(pid: u32) -> Option<u32> {
    if pid == 0 {
        return None;
    }
    with_timeout(move || read_tgid(pid)).flatten()
}

fn read_tgid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `PF_EXITING` (0x4) in the task flags, field 9 of `/proc/<pid>/stat`. A task already
/// gone counts as exiting.
fn exiting(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    // After ')': state(3) ppid(4) pgrp(5) session(6) tty(7) tpgid(8) flags(9).
    rest.split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0)
}

/// Whether any descriptor of `pid`'s process refers to inode `ino` (on mount `mnt_id`):
/// `/proc/<pid>/fdinfo/<fd>` carries `ino:` and `mnt_id:` without touching the file.
/// The descriptor being closed is already gone from the table when `flush` runs.
fn has_descriptor(pid: u32, ino: u64, mnt_id: Option<u64>) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("ino:") == Some(ino) && (mnt_id.is_none() || field("mnt_id:") == mnt_id) {
            return true;
        }
    }
    false
}

/// The mount id of the mount at `mountpoint`, from `/proc/self/mountinfo`.
pub fn mount_id(mountpoint: &std::path::Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = mountpoint.to_str()?;
    info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let id = f.next()?.parse().ok()?;
        let point = f.nth(3)?;
        (point == target).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_open_file_is_seen_and_we_are_not_exiting() {
        use std::os::unix::fs::MetadataExt;
        let f = tempfile::tempfile().unwrap();
        let ino = f.metadata().unwrap().ino();
        let me = std::process::id();
        let c = probe(me, ino, None).unwrap();
        assert_eq!(
            c,
            Closer {
                tgid: Some(me),
                exiting: false,
                other_descriptor: true
            }
        );
        assert_eq!(tgid(me), Some(me));
        // A file that exists but is open nowhere. (Not `f` after dropping it: its inode
        // number is free then, and a test running beside this one may get it at once.)
        let closed = tempfile::NamedTempFile::new().unwrap();
        let closed_ino = closed.as_file().metadata().unwrap().ino();
        let kept = closed.into_temp_path();
        assert!(!probe(me, closed_ino, None).unwrap().other_descriptor);
        drop(kept);
    }

    #[test]
    fn probes_reuse_one_helper_thread() {
        let helpers = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "as2box-proc")
                })
                .count()
        };
        let me = std::process::id();
        for _ in 0..50 {
            assert_eq!(tgid(me), Some(me));
        }
        // One helper (a test beside this one may have abandoned another that is ending).
        let n = helpers();
        assert!((1..=2).contains(&n), "{n} helper threads after 50 probes");
    }

    #[test]
    fn a_vanished_task_counts_as_exiting() {
        // Pid numbers wrap far below this on Linux (pid_max is at most 2^22).
        assert!(exiting(u32::MAX - 7));
    }
}
