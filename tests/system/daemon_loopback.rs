//! The AS2 daemon end to end on one gateway: two stations of two users are each other's
//! partners; a file put into one outbox through the real mount is signed, encrypted, POSTed
//! over real HTTP by `as2box serve`, received by the same daemon, delivered into the other
//! user's inbox, and confirmed by a signed MDN. The failure path: a partner certificate that
//! does not match makes the receiver answer a negative MDN, and the sender's files land in
//! `failed/` with the reason.
//!
//! Needs root and /dev/fuse like the other system tests (see tests/system/common).

use crate::common;
use crate::common::daemon as daemon_common;

use std::time::Duration;

use common::*;
use daemon_common::*;

fn set_partner(fx: &Fixture, user: &User, partner: &str, port: u16, cert: &str) {
    let url = format!("http://127.0.0.1:{port}/as2");
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &user.name,
        partner,
        "--url",
        &url,
        "--cert",
        cert,
        "--sign",
        "sha256",
        "--encrypt",
        "aes256-cbc",
        "--mdn",
        "sync",
        "--mdn-signed",
        "yes",
    ]);
}

/// Two users' stations as each other's partners through one daemon; `data` put into A's
/// outbox as `name` must arrive in B's inbox byte for byte. Returns the pair and the daemon.
fn send_through_the_loopback(
    fx: &Fixture,
    name: &str,
    data: &[u8],
) -> ((Mailbox, Mailbox), Daemon) {
    let (a, b) = pair(fx);
    let cert_a = station_cert(fx, &a.station).display().to_string();
    let cert_b = station_cert(fx, &b.station).display().to_string();
    let daemon = start_daemon(fx);
    set_partner(fx, &a.user, &b.station, daemon.port, &cert_b);
    set_partner(fx, &b.user, &a.station, daemon.port, &cert_a);
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join(name), data), "put")
    });
    let inbox_b = b.inbox();
    let delivered = wait_for("the file in B's inbox", Duration::from_secs(30), || {
        fx.as_user(&b.user, || {
            files_in(&inbox_b).into_iter().find(|p| p.ends_with(name))
        })
    });
    let got = fx.as_user(&b.user, || ok(ops::read(&delivered), "read delivered"));
    assert!(
        got == data,
        "delivered content differs (len {} vs {})",
        got.len(),
        data.len()
    );
    ((a, b), daemon)
}

#[test]
fn an_outbox_file_reaches_the_partners_inbox_over_as2_with_a_signed_mdn() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    // Binary content with bare LFs and CRs: it must arrive byte for byte.
    let mut data = random_bytes(100_000);
    data.extend_from_slice(b"UNB+UNOC:3\nline\r\nend\n");
    let ((a, b), daemon) = send_through_the_loopback(&fx, "order.edi", &data);
    let out = wait_for(
        "the sent message to be delivered",
        Duration::from_secs(30),
        || {
            fx.out_messages(&a.user)
                .into_iter()
                .find(|m| m.state == "delivered")
        },
    );
    assert_eq!(out.files[0].sha256, sha256_hex(&data));
    let received: Vec<Message> = fx
        .messages()
        .into_iter()
        .filter(|m| m.direction == "in" && m.user == b.user.name)
        .collect();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(received[0].files[0].sha256, sha256_hex(&data));
    let show = fx.cli_ok(&["messages", "show", &out.id.to_string()]);
    for state in ["queued", "sending", "delivered"] {
        assert!(show.contains(state), "history lacks {state}: {show}");
    }
    let metrics = daemon.get("/metrics");
    assert!(
        metrics.contains("as2box_sent_total{outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("as2box_received_total{outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(daemon.get("/health").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_signature_the_receiver_cannot_verify_fails_the_message_into_failed_with_the_reason() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let cert_a = station_cert(&fx, &a.station).display().to_string();
    let cert_b = station_cert(&fx, &b.station).display().to_string();
    let daemon = start_daemon(&fx);
    set_partner(&fx, &a.user, &b.station, daemon.port, &cert_b);
    // B pins the wrong certificate for A: A's signature cannot verify.
    set_partner(&fx, &b.user, &a.station, daemon.port, &cert_b);
    let _ = cert_a;
    let data = b"ORDERS 42".to_vec();
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("po.edi"), &data), "put")
    });
    let failed = a.failed();
    let reason_file = wait_for(
        "po.edi.reason.txt in A's failed/",
        Duration::from_secs(30),
        || {
            fx.as_user(&a.user, || {
                files_in(&failed)
                    .into_iter()
                    .find(|p| p.to_string_lossy().ends_with("po.edi.reason.txt"))
            })
        },
    );
    let reason =
        String::from_utf8(fx.as_user(&a.user, || ok(ops::read(&reason_file), "read reason")))
            .unwrap();
    assert!(
        reason.contains("authentication-failed"),
        "reason: {reason}\n{}",
        daemon.log()
    );
    let back = fx.as_user(&a.user, || {
        ok(ops::read(&failed.join("po.edi")), "read failed file")
    });
    assert_eq!(back, data);
    let m = wait_for("the message to be failed", Duration::from_secs(10), || {
        fx.out_messages(&a.user)
            .into_iter()
            .find(|m| m.state == "failed")
    });
    assert!(m
        .detail
        .unwrap_or_default()
        .contains("authentication-failed"));
    // Nothing was delivered to B.
    let inbox_b = b.inbox();
    assert!(fx.as_user(&b.user, || files_in(&inbox_b)).is_empty());
}

#[test]
fn a_small_file_stored_inside_the_database_is_sent_and_received_byte_for_byte() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    // At most INLINE_MAX: stored in the database by the mount, read from there by the
    // daemon to send it, stored in the database again by the receiving delivery.
    let mut data = random_bytes(3000);
    data.extend_from_slice(b"UNB+UNOC:3\nline\r\nend\n");
    assert!(data.len() as u64 <= as2box::store::INLINE_MAX);
    let ((a, _), _daemon) = send_through_the_loopback(&fx, "small.edi", &data);
    let sha = sha256_hex(&data);
    let store = as2box::store::Store::open(&fx.state_dir).unwrap();
    assert!(store.is_inline(&sha).unwrap(), "stored inside the database");
    assert!(
        !fx.state_dir
            .join("blobs")
            .join(&sha[..2])
            .join(&sha)
            .exists(),
        "no blob file for a small content"
    );
    let out = wait_for(
        "the sent message to be delivered",
        Duration::from_secs(30),
        || {
            fx.out_messages(&a.user)
                .into_iter()
                .find(|m| m.state == "delivered")
        },
    );
    assert_eq!(out.files[0].sha256, sha);
}
