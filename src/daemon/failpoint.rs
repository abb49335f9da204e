//! Test-only crash points: `AS2BOX_FAILPOINT=<name>` in the environment of `as2box serve`
//! makes the daemon kill itself with SIGKILL (as `kill -9` would) the first time it reaches
//! the point of that name. The crash-safety tests (`tests/daemon_failures.rs`) use them to
//! stop the daemon in a window that no outside signal can hit reliably.
//!
//! The variable is read once, when the daemon starts; unset (the normal case) every point
//! is one load of an empty cell. Points:
//!
//! - `receive-before-answer`: a received message is delivered (its files and the
//!   sender's Message-ID committed) but the MDN is not built or answered yet.
//! - `send-after-post`: the partner answered our POST, but the outcome (delivered,
//!   failed, retry) is not recorded yet.

use std::sync::OnceLock;

/// Every point the daemon has; an unknown name in the variable is refused with a warning.
const POINTS: &[&str] = &["receive-before-answer", "send-after-post"];

static ARMED: OnceLock<Option<&'static str>> = OnceLock::new();

/// Reads `AS2BOX_FAILPOINT` (call once at start).
pub fn arm_from_env() {
    let wanted = std::env::var("AS2BOX_FAILPOINT").unwrap_or_default();
    let armed = POINTS.iter().copied().find(|p| *p == wanted);
    match armed {
        Some(p) => tracing::warn!(
            failpoint = p,
            "AS2BOX_FAILPOINT is set: the daemon will kill itself there (for tests only)"
        ),
        None if !wanted.is_empty() => {
            tracing::warn!(failpoint = %wanted, known = ?POINTS, "AS2BOX_FAILPOINT names no failpoint; ignored")
        }
        None => {}
    }
    let _ = ARMED.set(armed);
}

/// Stops the process dead (SIGKILL to itself) when `name` is the armed point.
pub fn hit(name: &'static str) {
    if ARMED.get().copied().flatten() == Some(name) {
        // Written straight to stderr (unbuffered) so the test can see which point fired.
        eprintln!("failpoint {name}: killing the daemon (SIGKILL)");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        // SIGKILL cannot be caught; should it not have been delivered yet, do not go on.
        std::process::abort();
    }
}
