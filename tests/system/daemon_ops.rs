//! Operating `as2box serve`: sending over HTTPS with a pinned CA, the HTTPS certificate and
//! the config file changed under the running daemon (picked up without a restart),
//! `messages resend`, and the latency figures in `/metrics`.
//!
//! Needs root and /dev/fuse like the other system tests (see tests/system/common).

use crate::common;
use crate::common::daemon as daemon_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use daemon_common::*;

fn wait_for_state(fx: &Fixture, user: &User, id: Option<i64>, state: &str) -> Message {
    wait_for(
        &format!("a sent message in state {state}"),
        Duration::from_secs(30),
        || {
            fx.out_messages(user)
                .into_iter()
                .find(|m| m.state == state && id.is_none_or(|id| m.id == id))
        },
    )
}

/// The SHA-256 fingerprint of the certificate the server at `port` presents.
fn served_cert_sha256(port: u16) -> Option<Vec<u8>> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).ok()?;
    b.set_verify(SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let s = b.build().connect("127.0.0.1", tcp).ok()?;
    let cert = s.ssl().peer_certificate()?;
    Some(
        cert.digest(openssl::hash::MessageDigest::sha256())
            .ok()?
            .to_vec(),
    )
}

fn cert_sha256(pem: &Path) -> Vec<u8> {
    openssl::x509::X509::from_pem(&std::fs::read(pem).unwrap())
        .unwrap()
        .digest(openssl::hash::MessageDigest::sha256())
        .unwrap()
        .to_vec()
}

#[test]
fn https_sends_verify_the_partner_server_against_the_pinned_ca_and_a_renewed_certificate_is_served_without_restart(
) {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (tls_cert, tls_key) = tls_pair(&fx.dir, "tls1");
    let (a, b) = pair(&fx);
    let daemon = start_daemon_with(&fx, Some((&tls_cert, &tls_key)), "");
    let https_url = format!("https://127.0.0.1:{}/as2", daemon.https_port.unwrap());
    let http_url = format!("http://127.0.0.1:{}/as2", daemon.port);
    // A sends over HTTPS without trusting our self-signed server certificate: refused by
    // certificate verification, so it is retried and finally fails with that reason.
    link(&fx, &a, &b, &https_url, &[]);
    link(&fx, &b, &a, &http_url, &[]);
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("untrusted.edi"), b"X"), "put")
    });
    let failed = wait_for_state(&fx, &a.user, None, "failed");
    let detail = failed.detail.unwrap_or_default();
    assert!(
        detail.contains("certificate verify failed") || detail.contains("TLS"),
        "{detail}"
    );
    // With the server's certificate pinned it goes through.
    link(
        &fx,
        &a,
        &b,
        &https_url,
        &["--trust-ca", tls_cert.to_str().unwrap()],
    );
    let data = random_bytes(50_000);
    assert_eq!(
        send_through(&fx, &a, &b, "over-tls.edi", &data),
        data,
        "{}",
        daemon.log()
    );

    // Renewal: new files in place (by rename, as certbot and editors do) are served to the
    // next connection, without a restart.
    let port = daemon.https_port.unwrap();
    assert_eq!(served_cert_sha256(port), Some(cert_sha256(&tls_cert)));
    let (new_cert, new_key) = tls_pair(&fx.dir, "tls2");
    std::fs::rename(&new_key, &tls_key).unwrap();
    std::fs::rename(&new_cert, &tls_cert).unwrap();
    let want = cert_sha256(&tls_cert);
    wait_until(
        "the renewed certificate to be served",
        Duration::from_secs(20),
        || served_cert_sha256(port).as_ref() == Some(&want),
    );
    assert!(
        daemon.log().contains("settings reloaded"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_changed_config_file_applies_without_restart_and_a_broken_one_changes_nothing() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let daemon = start_daemon_with(&fx, None, "max_body_bytes = 1000000\n");
    let post = |n: usize| {
        daemon.request(
            &format!(
                "POST /as2 HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
            ),
            &vec![b'x'; n],
        )
    };
    // 5000 bytes are within the limit: refused for what they are (not AS2), not for size.
    assert!(post(5000).starts_with("HTTP/1.1 400"), "{}", post(5000));
    let text = std::fs::read_to_string(&fx.config).unwrap();
    let smaller = text.replace("max_body_bytes = 1000000", "max_body_bytes = 4000");
    assert_ne!(text, smaller);
    // Written to a temporary file and renamed into place, as editors and config managers do.
    let tmp = fx.dir.join("as2box.toml.new");
    std::fs::write(&tmp, &smaller).unwrap();
    std::fs::rename(&tmp, &fx.config).unwrap();
    wait_until(
        "the smaller body limit to apply",
        Duration::from_secs(20),
        || post(5000).starts_with("HTTP/1.1 413"),
    );
    // A broken file is refused with a log line; the daemon keeps the last good settings.
    std::fs::write(
        &fx.config,
        smaller.replace("max_body_bytes = 4000", "max_body_bytes = \"big\""),
    )
    .unwrap();
    wait_until(
        "the daemon to refuse the broken config file",
        Duration::from_secs(20),
        || {
            daemon
                .log()
                .contains("not valid; keeping the previous settings")
        },
    );
    assert!(post(5000).starts_with("HTTP/1.1 413"));
    assert!(daemon.get("/health").starts_with("HTTP/1.1 200"));
}

#[test]
fn resend_sends_the_same_files_again_as_a_new_message_and_metrics_show_the_latency() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let daemon = start_daemon(&fx);
    let url = format!("http://127.0.0.1:{}/as2", daemon.port);
    link(&fx, &a, &b, &url, &[]);
    link(&fx, &b, &a, &url, &[]);
    let data = b"UNA:+.? 'UNB+UNOC:3+A+B'".to_vec();
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("invoice.edi"), &data), "put")
    });
    let first = wait_for_state(&fx, &a.user, None, "delivered");
    let show = fx.cli_ok(&["messages", "show", &first.id.to_string()]);
    for part in [
        "as2 id:",
        "mic check: match",
        "request headers:",
        "AS2-From:",
        "mdn:",
        "history:",
    ] {
        assert!(
            show.contains(part),
            "`messages show` lacks {part:?}:\n{show}"
        );
    }
    let out = fx.cli_ok(&["messages", "resend", &first.id.to_string()]);
    let new_id: i64 = out
        .split_whitespace()
        .nth(3)
        .and_then(|w| w.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("no message id in {out:?}"));
    assert_ne!(new_id, first.id);
    wait_for_state(&fx, &a.user, Some(new_id), "delivered");
    // Two deliveries: the resend is a new message (new Message-ID), not a duplicate.
    let inbox_b = b.inbox();
    let copies = wait_for("two copies in B's inbox", Duration::from_secs(30), || {
        let found: Vec<PathBuf> = fx.as_user(&b.user, || {
            files_in(&inbox_b)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("invoice"))
                .collect()
        });
        (found.len() == 2).then_some(found)
    });
    for c in copies {
        assert_eq!(fx.as_user(&b.user, || ok(ops::read(&c), "read")), data);
    }
    // A received message cannot be resent.
    let received = fx
        .messages()
        .into_iter()
        .find(|m| m.direction == "in")
        .unwrap();
    let refused = fx.cli(&["messages", "resend", &received.id.to_string()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only sent messages"));

    let metrics = daemon.get("/metrics");
    for line in [
        "as2box_pickup_to_post_seconds_count 2",
        "as2box_receive_seconds_count 2",
        "# TYPE as2box_pickup_to_post_seconds histogram",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}:\n{metrics}");
    }
}

#[test]
fn a_partner_content_type_labels_the_files_and_text_types_travel_in_canonical_form() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let daemon = start_daemon(&fx);
    let url = format!("http://127.0.0.1:{}/as2", daemon.port);
    link(
        &fx,
        &a,
        &b,
        &url,
        &["--content-type", "application/EDI-X12"],
    );
    link(&fx, &b, &a, &url, &[]);
    let shown = fx.cli_ok(&["partner", "show", "--user", &a.user.name, &a.partner]);
    assert!(
        shown.contains("content type: application/edi-x12"),
        "{shown}"
    );
    let bad = fx.cli(&[
        "partner",
        "set",
        "--user",
        &a.user.name,
        &a.partner,
        "--content-type",
        "edi",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a MIME type"));
    assert_eq!(
        send_through(&fx, &a, &b, "x12.edi", b"ISA*00\nGS*PO\n"),
        b"ISA*00\r\nGS*PO\r\n",
        "an EDI text type is sent with CRLF line ends"
    );
}

#[test]
fn sends_in_flight_are_bounded_by_max_parallel_sends() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    // A partner that accepts connections and never answers: every send stays in flight.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/as2", sink.local_addr().unwrap().port());
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held = accepted.clone();
    std::thread::spawn(move || {
        for c in sink.incoming().flatten() {
            held.lock().unwrap().push(c);
        }
    });
    let _daemon = start_daemon_with(
        &fx,
        None,
        "max_parallel_sends = 2\nsend_timeout_secs = 600\n",
    );
    link(&fx, &a, &b, &url, &["--mdn", "none"]);
    for i in 0..5 {
        fx.as_user(&a.user, || {
            ok(ops::put(&a.outbox().join(format!("f{i}.edi")), b"x"), "put")
        });
    }
    let states = || -> Vec<String> {
        fx.out_messages(&a.user)
            .into_iter()
            .map(|m| m.state)
            .collect()
    };
    wait_until("two sends in flight", Duration::from_secs(20), || {
        accepted.lock().unwrap().len() == 2
            && states().iter().filter(|s| *s == "sending").count() == 2
    });
    // Still two a moment later: the other three wait in the queue.
    let settle = std::time::Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        assert!(accepted.lock().unwrap().len() <= 2);
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = states();
    assert_eq!(s.iter().filter(|s| *s == "queued").count(), 3, "{s:?}");
    // Hanging up on the two (a transport error: they go back to the queue to be retried)
    // frees their slots, and the next two connect.
    accepted.lock().unwrap().clear();
    wait_until(
        "the next two sends to connect",
        Duration::from_secs(20),
        || accepted.lock().unwrap().len() == 2,
    );
}

/// Reads what the server sends until it closes (or `limit` passes).
fn read_all(s: &mut std::net::TcpStream, limit: Duration) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn oversized_headers_slow_bodies_and_too_many_connections_get_clear_refusals() {
    use std::io::Write;
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let daemon = start_daemon_with(&fx, None, "max_connections = 3\nrequest_timeout_secs = 1\n");
    let connect = || std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    // A header block over 64 KiB: 431, connection closed.
    let mut s = connect();
    let _ = write!(
        s,
        "POST /as2 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let answer = read_all(&mut s, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // A body that stops coming: 408 once request_timeout_secs has passed.
    let mut s = connect();
    write!(
        s,
        "POST /as2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly this much"
    )
    .unwrap();
    let answer = read_all(&mut s, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // Three idle connections fill the pool; a fourth is closed without an answer and
    // counted.
    let idle: Vec<_> = (0..3).map(|_| connect()).collect();
    wait_until(
        "the fourth connection to be refused",
        Duration::from_secs(10),
        || {
            let mut extra = connect();
            read_all(&mut extra, Duration::from_secs(2)).is_empty()
        },
    );
    drop(idle);
    let metrics = wait_for("a connection for /metrics", Duration::from_secs(30), || {
        let m = daemon.get("/metrics");
        (!m.is_empty()).then_some(m)
    });
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("as2box_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused >= 1, "{metrics}");
}

/// A system account for this test only (like the packaged `as2box` service account),
/// removed when dropped.
struct ServiceAccount {
    name: String,
    uid: u32,
    gid: u32,
}

impl ServiceAccount {
    fn create() -> ServiceAccount {
        let name = format!("as2svc{}", random_hex(3));
        run_ok(&[
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]);
        let (uid, gid) = passwd_ids(&name).expect("the new account");
        ServiceAccount { name, uid, gid }
    }
}

impl Drop for ServiceAccount {
    fn drop(&mut self) {
        run_quiet(&["userdel", &self.name]);
        run_quiet(&["groupdel", &self.name]);
    }
}

#[test]
fn the_daemon_runs_unprivileged_as_the_service_account_sharing_the_store_with_the_mount() {
    use std::os::unix::fs::MetadataExt;
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let svc = ServiceAccount::create();
    let (a, b) = pair(&fx);
    // Stations (and their generated keys) exist before: init applies the permissions to
    // what is there, and what is created later inherits the group.
    let out = fx.cli_ok(&["init", "--service-user", &svc.name]);
    assert!(out.contains("shared with the group"), "{out}");
    let md = std::fs::metadata(&fx.state_dir).unwrap();
    // The daemon reads the top of the state folder but cannot write it (docs/SECURITY.md).
    assert_eq!((md.mode() & 0o7777, md.gid()), (0o2750, svc.gid));
    let daemon = start_daemon_as(&fx, svc.uid, svc.gid);
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == svc.uid.to_string()),
        "{uid_line}"
    );
    let url = format!("http://127.0.0.1:{}/as2", daemon.port);
    link(&fx, &a, &b, &url, &[]);
    link(&fx, &b, &a, &url, &[]);
    // The mount (root) queues; the daemon (unprivileged) reads the blob and the station
    // key, sends, receives, stores the received blob and updates the database; the mount
    // then serves what the daemon stored.
    let data = random_bytes(70_000);
    assert_eq!(
        send_through(&fx, &a, &b, "unpriv.edi", &data),
        data,
        "{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("running as root"),
        "{}",
        daemon.log()
    );
}
