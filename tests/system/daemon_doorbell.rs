//! The doorbell (docs/ARCHITECTURE.md, "Doorbell"): the mount and the CLI wake the daemon
//! when they queue a message, so it is POSTed at once and not at the daemon's next read of
//! the queue; and a close never waits for, or fails on, a daemon that is not there.
//!
//! The daemon's queue poll is set to an hour here: a message that reaches the partner
//! within the bounds below was sent because the doorbell rang, not because of the poll.

use crate::common;
use crate::common::daemon as daemon_common;

use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::as2::{listen, read_http, write_http};
use common::*;
use daemon_common::*;

/// Far longer than any bound below: only the doorbell can make these sends prompt.
const NO_POLL: &str = "queue_poll_secs = 3600\n";

/// Answers every POST with 200 and reports the path of each, when it was read.
fn sink(listener: TcpListener) -> Receiver<(Instant, String)> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Ok(req) = read_http(&mut stream) else {
                continue;
            };
            let _ = write_http(
                &mut stream,
                "HTTP/1.1 200 OK",
                &as2box::as2::headers::Headers::new(),
                b"",
            );
            if tx.send((Instant::now(), req.start)).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn a_queued_file_and_a_resend_are_posted_at_once_without_the_queue_poll() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let daemon = start_daemon_with(&fx, None, NO_POLL);
    wait_for("the doorbell to be armed", Duration::from_secs(20), || {
        daemon.log().contains("doorbell armed").then_some(())
    });
    let (listener, port) = listen();
    let posts = sink(listener);
    link(
        &fx,
        &a,
        &b,
        &format!("http://127.0.0.1:{port}/as2"),
        &["--mdn", "none"],
    );
    let closed = Instant::now();
    fx.as_user(&a.user, || {
        ok(
            ops::put(&a.outbox().join("rung.edi"), &random_bytes(4096)),
            "put",
        )
    });
    let (arrived, start) = posts
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "no POST within 20 s of the close (the queue poll is an hour): the doorbell did not wake the daemon\n{}",
                daemon.log()
            )
        });
    assert!(start.starts_with("POST /as2 "), "{start}");
    eprintln!(
        "close to POST: {:.1} ms",
        (arrived - closed).as_secs_f64() * 1000.0
    );
    let sent = wait_for(
        "the message to be delivered",
        Duration::from_secs(20),
        || {
            fx.out_messages(&a.user)
                .into_iter()
                .find(|m| m.name == "rung.edi" && m.state == "delivered")
        },
    );
    // The CLI queues too: `messages resend` rings the same doorbell.
    fx.cli_ok(&["messages", "resend", &sent.id.to_string()]);
    posts
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "no POST within 20 s of `messages resend` (the queue poll is an hour)\n{}",
                daemon.log()
            )
        });
}

#[test]
fn a_close_into_an_outbox_succeeds_at_once_when_the_daemon_is_not_running() {
    use std::os::unix::fs::PermissionsExt;
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, _b) = pair(&fx);
    // No daemon listens. A doorbell that is a FIFO without a reader (root's folder, so
    // only a careless admin could leave one) would block an opener that waits for a
    // reader: the ring must not.
    let doorbell = fx.state_dir.join("doorbell");
    assert!(doorbell.is_file(), "the mount made the doorbell");
    std::fs::remove_file(&doorbell).unwrap();
    let fifo = std::ffi::CString::new(doorbell.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    let started = Instant::now();
    fx.as_user(&a.user, || {
        ok(
            ops::put(&a.outbox().join("nobody-home.edi"), b"UNB+UNOC:3\n"),
            "put",
        )
    });
    let took = started.elapsed();
    // The CLI refuses a state folder with anything but plain files in its layout: put the
    // doorbell back before asking it.
    std::fs::remove_file(&doorbell).unwrap();
    std::fs::write(&doorbell, b"").unwrap();
    std::fs::set_permissions(&doorbell, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        took < Duration::from_secs(10),
        "the close took {took:?} with nobody at the doorbell"
    );
    let queued = fx
        .out_messages(&a.user)
        .into_iter()
        .find(|m| m.name == "nobody-home.edi")
        .expect("the message is recorded");
    assert_eq!(queued.state, "queued", "{queued:?}");
}
