//! The AS2 daemon end to end on one gateway: two stations of two users are each other's
//! partners; a file put into one outbox through the real mount is signed, encrypted, POSTed
//! over real HTTP by `as2box serve`, received by the same daemon, delivered into the other
//! user's inbox, and confirmed by a signed MDN. The failure path: a partner certificate that
//! does not match makes the receiver answer a negative MDN, and the sender's files land in
//! `failed/` with the reason.
//!
//! Needs root and /dev/fuse like the other system tests (see tests/common).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

/// A running `as2box serve`, killed when dropped.
struct Daemon {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_daemon(fx: &Fixture) -> Daemon {
    let port = free_port();
    let mut config = std::fs::read_to_string(&fx.config).unwrap();
    config += &format!(
        "\n[serve]\nhttp_listen = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nretry_base_secs = 0.2\nmax_attempts = 3\n"
    );
    std::fs::write(&fx.config, config).unwrap();
    let log = fx.dir.join("serve.log");
    let child = command(bin())
        .arg("--state-dir")
        .arg(&fx.state_dir)
        .arg("--config")
        .arg(&fx.config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start as2box serve");
    let d = Daemon { child, port, log };
    wait_until("the daemon to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    d
}

/// Two users whose stations are each other's partners; returns (A's box towards B, B's box
/// towards A) and the stations' certificate files.
fn pair(fx: &Fixture) -> (Mailbox, Mailbox, String, String) {
    let (ua, ub) = (fx.add_user(None), fx.add_user(None));
    let (sa, sb) = (fx.add_station(&ua, None), fx.add_station(&ub, None));
    for s in [&sa, &sb] {
        fx.cli_ok(&["station", "set", s, "--generate-cert"]);
    }
    fx.add_partner_id(&ua, &sb, false);
    fx.add_partner_id(&ub, &sa, false);
    let cert = |s: &str| {
        fx.state_dir
            .join("keys")
            .join(format!("{s}.cert.pem"))
            .display()
            .to_string()
    };
    (
        fx.mailbox_of(&ua, &sa, &sb, false),
        fx.mailbox_of(&ub, &sb, &sa, false),
        cert(&sa),
        cert(&sb),
    )
}

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

fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_outbox_file_reaches_the_partners_inbox_over_as2_with_a_signed_mdn() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b, cert_a, cert_b) = pair(&fx);
    let daemon = start_daemon(&fx);
    set_partner(&fx, &a.user, &b.station, daemon.port, &cert_b);
    set_partner(&fx, &b.user, &a.station, daemon.port, &cert_a);
    // Binary content with bare LFs and CRs: it must arrive byte for byte.
    let mut data = random_bytes(100_000);
    data.extend_from_slice(b"UNB+UNOC:3\nline\r\nend\n");
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("order.edi"), &data), "put")
    });
    let inbox_b = b.inbox();
    let delivered = wait_for("the file in B's inbox", Duration::from_secs(30), || {
        fx.as_user(&b.user, || {
            files_in(&inbox_b)
                .into_iter()
                .find(|p| p.ends_with("order.edi"))
        })
    });
    let got = fx.as_user(&b.user, || ok(ops::read(&delivered), "read delivered"));
    assert!(
        got == data,
        "delivered content differs (len {} vs {})",
        got.len(),
        data.len()
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
    let (a, b, cert_a, cert_b) = pair(&fx);
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
