//! Keeps two kinds of system tests apart that share this one test process.
//!
//! A process forked from the test binary gets a copy of every descriptor that other test
//! threads hold open on their mounts at that moment, and closing them in the child (at
//! `execve`, by close-on-exec) sends each mount a FUSE flush from a foreign pid: to the
//! mount, a close of the file by another process, which can pick up a file that a test is
//! still writing (see spawner.rs). The mount tests therefore start every process through
//! the spawn helper. The SFTP tests cannot: they drive sshd, `sftp`, `ssh` and paramiko
//! through pipes and fork them directly, many times per test. Before the tests shared one
//! binary the two kinds never ran at the same time; this gate keeps it that way while
//! letting tests of the same kind run in parallel with each other.
//!
//! A test holds a [`Pass`] for its whole life: [`crate::common::Fixture`] holds one of
//! [`Kind::MountDescriptors`], [`crate::common::sshd::Env`] and the network-namespace
//! fixture of `sftp_throttle` one of [`Kind::DirectChildren`].
//!
//! A test whose figures depend on the machine being quiet (20 logins at once, connections
//! counted against a rate per minute) takes [`enter_alone`] first: it waits until no other
//! test runs and keeps every other test out until it ends.

use std::cell::RefCell;
use std::sync::{Condvar, Mutex};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// The test opens files on its mount from this process and starts every other process
    /// through the spawn helper.
    MountDescriptors,
    /// The test forks processes directly from this process.
    DirectChildren,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::MountDescriptors => 0,
            Kind::DirectChildren => 1,
        }
    }

    fn other(self) -> Kind {
        match self {
            Kind::MountDescriptors => Kind::DirectChildren,
            Kind::DirectChildren => Kind::MountDescriptors,
        }
    }
}

struct State {
    /// The kind that holds the gate, while `holders > 0`.
    active: Option<Kind>,
    holders: usize,
    /// Threads waiting to enter, per kind: while the other kind waits, no new test of the
    /// active kind enters, so neither kind starves the other.
    waiting: [usize; 2],
    /// The holder runs alone: nobody joins.
    alone: bool,
    /// Threads waiting to run alone: nobody new joins the holders meanwhile.
    waiting_alone: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    active: None,
    holders: 0,
    waiting: [0, 0],
    alone: false,
    waiting_alone: 0,
});
static CHANGED: Condvar = Condvar::new();

thread_local! {
    /// Passes this thread holds, so that a test holding two fixtures of one kind does not
    /// wait for itself.
    static HELD: RefCell<Vec<Kind>> = const { RefCell::new(Vec::new()) };
}

/// Held for the life of a test; dropping it lets the other kind in once no test of this
/// kind is left.
#[must_use]
pub struct Pass {
    kind: Kind,
}

/// Waits until no test of the other kind runs, then enters as `kind`.
pub fn enter(kind: Kind) -> Pass {
    let held_here = HELD.with(|h| h.borrow().clone());
    assert!(
        !held_here.contains(&kind.other()),
        "a test cannot be both {kind:?} and {:?}: it would wait for itself (see \
         tests/system/common/gate.rs)",
        kind.other()
    );
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if !held_here.contains(&kind) {
        state.waiting[kind.index()] += 1;
        loop {
            let free = state.holders == 0;
            let joinable = state.active == Some(kind)
                && !state.alone
                && state.waiting_alone == 0
                && state.waiting[kind.other().index()] == 0;
            if free || joinable {
                break;
            }
            state = CHANGED.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.waiting[kind.index()] -= 1;
    }
    state.active = Some(kind);
    state.holders += 1;
    HELD.with(|h| h.borrow_mut().push(kind));
    Pass { kind }
}

/// Waits until no other test runs, then enters as `kind` and keeps every other test out
/// until the pass is dropped. The test's own fixtures of `kind` enter through it.
pub fn enter_alone(kind: Kind) -> Pass {
    let held_here = HELD.with(|h| h.borrow().clone());
    assert!(
        held_here.is_empty(),
        "take the gate alone before any fixture: this test already holds {held_here:?}"
    );
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    state.waiting_alone += 1;
    while state.holders != 0 {
        state = CHANGED.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    state.waiting_alone -= 1;
    state.active = Some(kind);
    state.alone = true;
    state.holders += 1;
    HELD.with(|h| h.borrow_mut().push(kind));
    Pass { kind }
}

impl Drop for Pass {
    fn drop(&mut self) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(at) = h.iter().position(|k| *k == self.kind) {
                h.remove(at);
            }
        });
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        state.holders -= 1;
        if state.holders == 0 {
            state.active = None;
            state.alone = false;
        }
        CHANGED.notify_all();
    }
}
