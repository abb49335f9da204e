//! The AS2 daemon's failure paths and crash safety, end to end: a real `as2box serve`, the
//! real mount, real HTTP on 127.0.0.1, and as the partner either the pyas2lib peer
//! (`tests/peers/pyas2_peer.py`) or a second station of the same gateway.
//!
//! Failure paths: a signature that does not match the pinned certificate, a payload
//! tampered with in transit, unknown station or partner, a partner that is down and comes
//! up, one that never comes up, an HTTP refusal, a negative MDN, an MDN that does not verify
//! (sync and async), an async MDN that never comes, resent (duplicate) messages, also
//! concurrent ones.
//!
//! Crash safety: the daemon killed (SIGKILL) after a delivery but before its answer and
//! after the partner answered but before the outcome was recorded (both with the test-only
//! failpoints of `src/daemon/failpoint.rs`, `AS2BOX_FAILPOINT`), and with `kill -9` while the
//! partner stalls; the mount killed with queued messages.
//!
//! Every failure into `failed/` is checked for a one-sentence `<name>.reason.txt`, and every
//! message for the full list of state changes in `as2box messages show`.
//!
//! Needs root, /dev/fuse and the interop venv (`scripts/setup-interop`) like the other system
//! tests (see tests/system/common and common/as2.rs).

use crate::common;
use crate::common::as2 as as2_common;
use crate::common::daemon as daemon_common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use as2box::as2::headers::Headers;
use common::*;
use daemon_common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------
// The pyas2lib peer
// ---------------------------------------------------------------------------------------

/// The pyas2lib trading partner (tests/peers/pyas2_peer.py), killed when dropped.
struct PyPeer {
    peer: as2_common::Peer,
    port: u16,
}

/// Keys and names shared by a station and the pyas2lib peer.
struct PeerSide {
    /// The user's box towards the peer.
    mb: Mailbox,
    /// Our station's certificate (the peer verifies and encrypts with it).
    station_cert: PathBuf,
    /// The peer's key and certificate (PEM), and its certificate alone.
    peer_key: PathBuf,
    peer_cert: PathBuf,
}

impl PyPeer {
    fn start(python: &Path, side: &PeerSide, port: u16, flags: &[&str]) -> PyPeer {
        let mut cmd = command(python);
        cmd.arg(as2_common::Peer::script())
            .arg("serve")
            .arg("--key")
            .arg(&side.peer_key)
            .arg("--partner-cert")
            .arg(&side.station_cert)
            .args([
                "--name",
                &side.mb.partner,
                "--partner-name",
                &side.mb.station,
            ])
            .args(["--port", &port.to_string()])
            .args(flags);
        let peer = as2_common::Peer::spawn(cmd, None);
        PyPeer {
            port: peer.port,
            peer,
        }
    }

    /// Waits for an event matching `pred`; others are kept. Peer errors fail the test.
    fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.peer.wait_event_within(what, WAIT, pred)
    }

    /// Every event so far (without waiting) that matches `pred`.
    fn drain(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.peer.drain(pred)
    }

    fn command(&mut self, cmd: Value) {
        self.peer.command(&cmd);
    }

    /// A send command's answer.
    fn send(&mut self, mut cmd: Value) -> Value {
        let id = random_hex(4);
        cmd["cmd"] = json!("send");
        cmd["id"] = json!(id);
        self.command(cmd);
        self.wait_event("the peer's send to finish", |v| {
            v["event"] == "sent" && v["id"] == id
        })
    }

    /// Resends the last request `times` times; the results.
    fn resend(&mut self, times: usize, concurrent: bool) -> Vec<Value> {
        let id = random_hex(4);
        self.command(json!({"cmd": "resend", "id": id, "times": times, "concurrent": concurrent}));
        let ev = self.wait_event("the peer's resend to finish", |v| {
            v["event"] == "resent" && v["id"] == id
        });
        ev["results"].as_array().cloned().unwrap_or_default()
    }
}

fn python() -> Option<PathBuf> {
    as2_common::python()
}

/// A user with a station (with a key pair) and the pyas2lib peer as partner (production).
fn peer_side(fx: &Fixture) -> PeerSide {
    let user = fx.add_user(None);
    let station = fx.add_station(&user, None);
    fx.cli_ok(&["station", "set", &station, "--generate-cert"]);
    let partner = format!("PY{}", random_hex(3).to_uppercase());
    fx.add_partner_id(&user, &partner, false);
    let kp = as2_common::make_keypair("pyas2 peer");
    let peer_key = fx.dir.join("peer.pem");
    let mut pem = kp.key.private_key_to_pem_pkcs8().unwrap();
    pem.extend(kp.cert.to_pem().unwrap());
    std::fs::write(&peer_key, pem).unwrap();
    let peer_cert = fx.dir.join("peer.cert.pem");
    std::fs::write(&peer_cert, kp.cert.to_pem().unwrap()).unwrap();
    PeerSide {
        station_cert: station_cert(fx, &station),
        mb: fx.mailbox_of(&user, &station, &partner, false),
        peer_key,
        peer_cert,
    }
}

/// `partner set` with the partner's URL on `port`, its certificate and `profile` flags
/// (default: signed sha256, aes256-cbc, signed sync MDN).
fn set_partner(fx: &Fixture, mb: &Mailbox, port: u16, cert: &Path, profile: &[&str]) {
    let url = format!("http://127.0.0.1:{port}/as2");
    let cert = cert.to_string_lossy();
    let mut args = vec![
        "partner",
        "set",
        "--user",
        &mb.user.name,
        &mb.partner,
        "--url",
        &url,
        "--cert",
        &cert,
    ];
    args.extend_from_slice(profile);
    fx.cli_ok(&args);
}

// ---------------------------------------------------------------------------------------
// Looking at the results
// ---------------------------------------------------------------------------------------

/// Files in a box, read as its user: (path relative to the box, content).
fn box_files(fx: &Fixture, user: &User, dir: &Path) -> Vec<(String, Vec<u8>)> {
    fx.as_user(user, || {
        files_in(dir)
            .into_iter()
            .map(|p| {
                let data = ok(ops::read(&p), "read");
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                (rel, data)
            })
            .collect()
    })
}

/// Received messages of a user.
/// The user's received messages that were stored (refused requests are recorded too).
fn received(fx: &Fixture, user: &User) -> Vec<Message> {
    fx.messages()
        .into_iter()
        .filter(|m| m.direction == "in" && m.user == user.name && m.state != "refused")
        .collect()
}

/// The user's refused inbound requests, as `messages list` shows them.
fn refused(fx: &Fixture, user: &User) -> Vec<Message> {
    fx.messages()
        .into_iter()
        .filter(|m| m.direction == "in" && m.user == user.name && m.state == "refused")
        .collect()
}

/// Waits for the user's outgoing message to reach `state`.
#[track_caller]
fn wait_out_state(fx: &Fixture, user: &User, state: &str) -> Message {
    wait_for(
        &format!("an outgoing message of {} in state {state}", user.name),
        WAIT,
        || fx.out_messages(user).into_iter().find(|m| m.state == state),
    )
}

/// One state change from `messages show --json`.
#[derive(Debug, Clone)]
struct Ev {
    state: String,
    detail: String,
    /// Milliseconds since midnight UTC (the tests never run across midnight).
    ms: i64,
}

fn events(fx: &Fixture, id: i64) -> Vec<Ev> {
    let v = fx.cli_json(&["messages", "show", &id.to_string(), "--json"]);
    v["events"]
        .as_array()
        .expect("events in messages show --json")
        .iter()
        .map(|e| {
            let at = e["at"].as_str().unwrap();
            let t = &at[11..23]; // HH:MM:SS.mmm
            let ms = t[0..2].parse::<i64>().unwrap() * 3_600_000
                + t[3..5].parse::<i64>().unwrap() * 60_000
                + t[6..8].parse::<i64>().unwrap() * 1000
                + t[9..12].parse::<i64>().unwrap();
            Ev {
                state: e["state"].as_str().unwrap().to_string(),
                detail: e["detail"].as_str().unwrap_or("").to_string(),
                ms,
            }
        })
        .collect()
}

fn states(evs: &[Ev]) -> Vec<&str> {
    evs.iter().map(|e| e.state.as_str()).collect()
}

/// The plain `messages show` lists every state change with its detail.
#[track_caller]
fn assert_show_lists(fx: &Fixture, id: i64, evs: &[Ev]) {
    let text = fx.cli_ok(&["messages", "show", &id.to_string()]);
    // The indented lines under "history:", up to the next section.
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "history:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(
        lines.len(),
        evs.len(),
        "messages show:\n{text}\nevents: {evs:#?}"
    );
    for (l, e) in lines.iter().zip(evs) {
        assert!(
            l.contains(&e.state) && l.contains(&e.detail),
            "line {l:?} does not show {e:?}"
        );
    }
}

/// Waits for `failed/<name>.reason.txt` and returns its text.
fn reason_of(fx: &Fixture, mb: &Mailbox, name: &str) -> String {
    let path = mb.failed().join(format!("{name}.reason.txt"));
    let data = wait_for(&format!("{}", path.display()), WAIT, || {
        fx.as_user(&mb.user, || ops::read(&path).ok())
    });
    String::from_utf8(data).unwrap()
}

/// A reason file is one clear sentence: one line, a capital first, a full stop last, no
/// sentence boundary inside.
#[track_caller]
fn assert_one_sentence(reason: &str) {
    let line = reason
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("reason does not end with a newline: {reason:?}"));
    assert!(!line.contains('\n'), "reason spans lines: {reason:?}");
    assert!(
        line.starts_with(|c: char| c.is_ascii_uppercase()),
        "reason does not start a sentence: {reason:?}"
    );
    assert!(
        line.ends_with('.'),
        "reason does not end with a full stop: {reason:?}"
    );
    let inner = &line[..line.len() - 1];
    let boundary = inner
        .match_indices(". ")
        .any(|(i, _)| inner[i + 2..].starts_with(|c: char| c.is_ascii_uppercase()));
    assert!(!boundary, "reason is more than one sentence: {reason:?}");
}

/// A minimal AS2-looking POST.
fn raw_post(port: u16, path: &str, from: &str, to: &str, mid: &str) -> (u16, String) {
    let mut h = Headers::new();
    h.push("AS2-Version", "1.2");
    h.push("AS2-From", from);
    h.push("AS2-To", to);
    h.push("Message-ID", format!("<{mid}>"));
    h.push(
        "Content-Type",
        "application/pkcs7-mime; smime-type=enveloped-data",
    );
    h.push("Disposition-Notification-To", "test@example.com");
    let r = as2_common::http_post(
        &format!("http://127.0.0.1:{port}{path}"),
        &h,
        b"not really encrypted",
    );
    (r.status(), String::from_utf8_lossy(&r.body).into_owned())
}

fn blob_count(fx: &Fixture) -> usize {
    files_in(&fx.state_dir.join("blobs")).len()
}

// ---------------------------------------------------------------------------------------
// Stand-ins in the path: a tampering proxy and a stalling partner
// ---------------------------------------------------------------------------------------

/// Accepts connections on a port of its own and hands each to `serve` in its thread until
/// dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(port: u16, serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static) -> Server {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let serve = Arc::new(serve);
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for c in l.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let (serve, s3) = (serve.clone(), s2.clone());
                conns.push(std::thread::spawn(move || serve(c, &s3)));
            }
            drop(l);
            for c in conns {
                let _ = c.join();
            }
        });
        Server {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Failure paths
// ---------------------------------------------------------------------------------------

/// The peer signs with its own key, but the certificate we pinned for it is another one:
/// we answer a signed negative MDN `authentication-failed`, log it, and deliver nothing.
#[test]
fn a_signature_by_a_key_other_than_the_pinned_certificate_gets_a_negative_mdn_and_nothing_is_delivered(
) {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let daemon = Daemon::start(&fx, port, None);
    let mut peer = PyPeer::start(&py, &side, 0, &[]);
    // Pin a certificate that is not the peer's.
    let other = as2_common::make_keypair("not the peer");
    let other_cert = fx.dir.join("other.cert.pem");
    std::fs::write(&other_cert, other.cert.to_pem().unwrap()).unwrap();
    set_partner(&fx, &side.mb, peer.port, &other_cert, &[]);
    let blobs = blob_count(&fx);
    let sent = peer.send(json!({
        "url": format!("http://127.0.0.1:{port}/as2"),
        "data_b64": "T1JERVJTIDQy", "filename": "po.edi",
        "sign": "sha256", "encrypt": "aes_256_cbc", "mdn": "sync", "mdn_digest": "sha256",
    }));
    assert!(sent["error"].is_null(), "{sent}");
    assert_eq!(
        sent["mdn_status"].as_str().map(str::to_ascii_lowercase),
        Some("processed/error".into()),
        "{sent}"
    );
    assert_eq!(sent["mdn_detail"], "authentication-failed", "{sent}");
    assert_eq!(sent["mdn_signed"], true, "{sent}");
    let mid = sent["message_id"].as_str().unwrap();
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("negative MDN") && l.contains(mid)),
        "no log line for the refusal of {mid}:\n{log}"
    );
    assert!(received(&fx, &side.mb.user).is_empty());
    let refusals = refused(&fx, &side.mb.user);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("signature does not verify"),
        "{refusals:?}"
    );
    assert!(box_files(&fx, &side.mb.user, &side.mb.inbox()).is_empty());
    assert_eq!(blob_count(&fx), blobs, "a blob was stored");
}

/// Station A sends signed (not encrypted) to station B through a proxy that flips bytes of
/// the payload: B answers `integrity-check-failed`, A's file lands in its `failed/` with a
/// one-sentence reason quoting that, B's inbox stays empty.
#[test]
fn a_payload_tampered_with_in_transit_is_refused_and_lands_in_the_senders_failed() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let daemon = Daemon::start(&fx, port, None);
    let tampered = Arc::new(AtomicUsize::new(0));
    let t2 = tampered.clone();
    let proxy = Server::start(0, move |mut c, _| {
        let Ok(req) = as2_common::read_http(&mut c) else {
            return;
        };
        let mut body = req.body.clone();
        if let Some(i) = body.windows(10).position(|w| w == b"TAMPER-ME:") {
            body[i + 10] ^= 0x20;
            t2.fetch_add(1, Ordering::SeqCst);
        }
        let mut up = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let path = req.start.split_whitespace().nth(1).unwrap_or("/as2");
        as2_common::write_http(
            &mut up,
            &format!("POST {path} HTTP/1.1"),
            &req.headers,
            &body,
        )
        .unwrap();
        let resp = as2_common::read_http(&mut up).unwrap();
        let _ = as2_common::write_http(&mut c, &resp.start, &resp.headers, &resp.body);
    });
    set_partner(
        &fx,
        &a,
        proxy.port,
        &station_cert(&fx, &b.station),
        &[
            "--sign",
            "sha256",
            "--encrypt",
            "none",
            "--mdn",
            "sync",
            "--mdn-signed",
            "yes",
        ],
    );
    // B takes A's messages signed, not encrypted (so the proxy can reach the payload).
    set_partner(
        &fx,
        &b,
        port,
        &station_cert(&fx, &a.station),
        &["--require-encryption", "no"],
    );
    let data = b"UNH+1+ORDERS TAMPER-ME: quantity 100\n".to_vec();
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("po.edi"), &data), "put")
    });
    let reason = reason_of(&fx, &a, "po.edi");
    assert_eq!(
        tampered.load(Ordering::SeqCst),
        1,
        "the proxy tampered once"
    );
    assert!(reason.contains("integrity-check-failed"), "{reason:?}");
    assert_one_sentence(&reason);
    let back = fx.as_user(&a.user, || {
        ok(ops::read(&a.failed().join("po.edi")), "read")
    });
    assert_eq!(back, data);
    let m = wait_out_state(&fx, &a.user, "failed");
    let evs = events(&fx, m.id);
    assert_eq!(states(&evs), ["queued", "sending", "failed"], "{evs:#?}");
    assert_eq!(evs[2].detail, reason.trim_end());
    assert_show_lists(&fx, m.id, &evs);
    assert!(received(&fx, &b.user).is_empty());
    assert!(box_files(&fx, &b.user, &b.inbox()).is_empty());
    assert!(daemon.log().contains("integrity"), "{}", daemon.log());
}

/// Requests for a station we do not have, from a partner the station does not have, or from
/// a production partner posting to the test URL: a clear HTTP error, a log line naming the
/// Message-ID, nothing stored.
#[test]
fn unknown_station_or_partner_gets_a_clear_http_error_and_nothing_is_stored() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let daemon = Daemon::start(&fx, port, None);
    let blobs = blob_count(&fx);
    let cases = [
        (
            "/as2",
            side.mb.partner.as_str(),
            "NOSUCHSTATION",
            404,
            "unknown AS2-To \"NOSUCHSTATION\"",
        ),
        (
            "/as2",
            "NOSUCHPARTNER",
            side.mb.station.as_str(),
            403,
            "AS2-From \"NOSUCHPARTNER\" is not a partner",
        ),
        (
            "/as2/test",
            side.mb.partner.as_str(),
            side.mb.station.as_str(),
            403,
            "is not a test partner",
        ),
    ];
    for (path, from, to, status, text) in cases {
        let mid = format!("unknown-{}@test", random_hex(4));
        let (got, body) = raw_post(port, path, from, to, &mid);
        assert_eq!(got, status, "{path} {from} -> {to}: {body}");
        assert!(body.contains(text), "{path} {from} -> {to}: {body:?}");
        let log = daemon.log();
        assert!(
            log.lines().any(|l| l.contains(&mid) && l.contains(text)),
            "no log line for {mid}:\n{log}"
        );
    }
    assert!(fx.messages().is_empty(), "{:#?}", fx.messages());
    assert_eq!(blob_count(&fx), blobs);
    assert!(box_files(&fx, &side.mb.user, &side.mb.inbox()).is_empty());
}

/// Nothing listens on the partner's URL: the message is retried with growing delays (each
/// failure visible in `messages show`); then the partner starts on that port and gets it.
#[test]
fn a_partner_down_then_up_gets_the_message_after_retries_with_backoff() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    let peer_port = free_port();
    serve_config(
        &fx,
        port,
        "retry_base_secs = 0.3\nretry_max_secs = 1.2\nmax_attempts = 40",
    );
    let _daemon = Daemon::start(&fx, port, None);
    set_partner(&fx, &side.mb, peer_port, &side.peer_cert, &[]);
    let data = random_bytes(20_000);
    fx.as_user(&side.mb.user, || {
        ok(ops::put(&side.mb.outbox().join("inv.bin"), &data), "put")
    });
    let m = wait_out_state(&fx, &side.mb.user, "queued");
    // Four failed attempts.
    wait_until("four failed attempts", WAIT, || {
        events(&fx, m.id)
            .iter()
            .filter(|e| e.state == "queued" && e.detail.contains("cannot connect"))
            .count()
            >= 4
    });
    let mut peer = PyPeer::start(&py, &side, peer_port, &[]);
    let got = peer.wait_event("the message at the peer", |v| v["event"] == "received");
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(got["payloads"][0]["sha256"], sha256_hex(&data));
    let m = wait_out_state(&fx, &side.mb.user, "delivered");
    let evs = events(&fx, m.id);
    let st = states(&evs);
    // queued, then (sending, queued)* for each failure, then sending, delivered.
    assert_eq!(st[0], "queued");
    assert_eq!(&st[st.len() - 2..], ["sending", "delivered"], "{evs:#?}");
    let middle = &evs[1..evs.len() - 2];
    assert!(middle.len() >= 8 && middle.len() % 2 == 0, "{evs:#?}");
    for pair in middle.chunks(2) {
        assert_eq!(pair[0].state, "sending", "{evs:#?}");
        assert!(pair[0].detail.starts_with("attempt "), "{evs:#?}");
        assert_eq!(pair[1].state, "queued", "{evs:#?}");
        assert!(
            pair[1].detail.contains(&format!("127.0.0.1:{peer_port}")),
            "{evs:#?}"
        );
    }
    // The wait after failed attempt k is 0.3 s * 2^(k-1), at most 1.2 s (50 ms slack).
    for (k, pair) in middle.chunks(2).enumerate().take(3) {
        let failed_at = pair[1].ms;
        let next_sending = evs[1 + 2 * (k + 1)].ms;
        let want = (300i64 << k).min(1200);
        assert!(
            next_sending - failed_at >= want - 50,
            "retry {} came after {} ms, expected >= {want} ms: {evs:#?}",
            k + 1,
            next_sending - failed_at
        );
    }
    assert_show_lists(&fx, m.id, &evs);
    // Exactly one delivery at the peer.
    assert_eq!(peer.drain(|v| v["event"] == "received").len(), 0);
}

/// No partner ever answers: after `max_attempts` the file lands in `failed/` with a
/// one-sentence reason naming the count and the last error.
#[test]
fn a_partner_that_never_answers_fails_the_message_after_max_attempts() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let side = peer_side(&fx);
    let port = free_port();
    let dead = free_port();
    serve_config(&fx, port, "max_attempts = 3");
    let _daemon = Daemon::start(&fx, port, None);
    set_partner(&fx, &side.mb, dead, &side.peer_cert, &[]);
    fx.as_user(&side.mb.user, || {
        ok(ops::put(&side.mb.outbox().join("x.edi"), b"x"), "put")
    });
    let reason = reason_of(&fx, &side.mb, "x.edi");
    assert_one_sentence(&reason);
    assert!(
        reason.contains("3 attempts") && reason.contains(&format!("127.0.0.1:{dead}")),
        "{reason:?}"
    );
    let m = wait_out_state(&fx, &side.mb.user, "failed");
    let evs = events(&fx, m.id);
    assert_eq!(
        states(&evs),
        ["queued", "sending", "queued", "sending", "queued", "sending", "failed"],
        "{evs:#?}"
    );
    assert_show_lists(&fx, m.id, &evs);
}

/// The peer answers every message with a negative MDN: the file lands in `failed/` with a
/// one-sentence reason quoting the disposition.
#[test]
fn a_negative_mdn_from_the_partner_puts_the_file_in_failed_quoting_the_disposition() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let _daemon = Daemon::start(&fx, port, None);
    let mut peer = PyPeer::start(&py, &side, 0, &["--negative-mdn", "decryption-failed"]);
    set_partner(&fx, &side.mb, peer.port, &side.peer_cert, &[]);
    let data = b"ORDERS 7".to_vec();
    fx.as_user(&side.mb.user, || {
        ok(ops::put(&side.mb.outbox().join("neg.edi"), &data), "put")
    });
    peer.wait_event("the message at the peer", |v| v["event"] == "received");
    let reason = reason_of(&fx, &side.mb, "neg.edi");
    assert!(
        reason
            .to_ascii_lowercase()
            .contains("processed/error: decryption-failed"),
        "{reason:?}"
    );
    assert_one_sentence(&reason);
    let back = fx.as_user(&side.mb.user, || {
        ok(ops::read(&side.mb.failed().join("neg.edi")), "read")
    });
    assert_eq!(back, data);
    let m = wait_out_state(&fx, &side.mb.user, "failed");
    let evs = events(&fx, m.id);
    assert_eq!(states(&evs), ["queued", "sending", "failed"], "{evs:#?}");
    assert_show_lists(&fx, m.id, &evs);
}

/// `chattr +i` on a folder (even root cannot create files in it) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn new(dir: &Path) -> Immutable {
        let args: Vec<String> = vec!["chattr".into(), "+i".into(), dir.display().to_string()];
        let out = run(&args, &[], None, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "chattr +i {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        run_quiet(&["chattr", "-i", &self.0.to_string_lossy()]);
    }
}

/// Station B cannot store what it receives (the blob folder and its subfolders are made
/// immutable: the daemon's spool stays writable, as sending streams through it too): it
/// answers HTTP 503 so that the sender tries again later, not a negative MDN that would
/// end the message; A retries, and once storage works again the message is delivered once.
#[test]
fn a_receiver_that_cannot_store_answers_503_and_the_sender_retries() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let port = free_port();
    serve_config(
        &fx,
        port,
        "retry_base_secs = 0.3\nretry_max_secs = 0.6\nmax_attempts = 100",
    );
    set_partner(&fx, &a, port, &station_cert(&fx, &b.station), &[]);
    set_partner(&fx, &b, port, &station_cert(&fx, &a.station), &[]);
    let data = random_bytes(8_000);
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("full.bin"), &data), "put")
    });
    let blobs = fx.state_dir.join("blobs");
    let mut frozen: Vec<Immutable> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| Immutable::new(&e.unwrap().path()))
        .collect();
    frozen.push(Immutable::new(&blobs));
    let daemon = Daemon::start(&fx, port, None);
    let m = fx.out_messages(&a.user).remove(0);
    wait_until("two refused attempts", WAIT, || {
        let evs = events(&fx, m.id);
        if let Some(f) = evs.iter().find(|e| e.state == "failed") {
            panic!("failed instead of retried: {}", f.detail);
        }
        evs.iter()
            .filter(|e| e.state == "queued" && e.detail.contains("HTTP 503"))
            .count()
            >= 2
    });
    assert!(received(&fx, &b.user).is_empty());
    assert!(daemon.log().contains("could not store"), "{}", daemon.log());
    drop(frozen);
    let m = wait_out_state(&fx, &a.user, "delivered");
    let evs = events(&fx, m.id);
    let refused = evs
        .iter()
        .find(|e| e.detail.contains("HTTP 503"))
        .expect("a 503 in the history");
    assert!(
        refused.detail.contains("resend it later"),
        "the partner's explanation is not quoted: {evs:#?}"
    );
    assert_eq!(states(&evs).last(), Some(&"delivered"));
    assert_show_lists(&fx, m.id, &evs);
    assert_eq!(received(&fx, &b.user).len(), 1);
    let files = box_files(&fx, &b.user, &b.inbox());
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1, data);
}

/// The partner refuses the request with an HTTP error (here: station B has no test partner
/// A, and A posts to B's test URL): the file lands in `failed/` at once (no retry) with a
/// one-sentence reason giving the status and the partner's explanation.
#[test]
fn an_http_refusal_puts_the_file_in_failed_with_the_partners_explanation() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let _daemon = Daemon::start(&fx, port, None);
    set_partner(&fx, &a, port, &station_cert(&fx, &b.station), &[]);
    let url = format!("http://127.0.0.1:{port}/as2/test");
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &a.user.name,
        &b.station,
        "--url",
        &url,
    ]);
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("r.edi"), b"refused"), "put")
    });
    let reason = reason_of(&fx, &a, "r.edi");
    assert_one_sentence(&reason);
    assert!(reason.contains("HTTP 403"), "{reason:?}");
    assert!(reason.contains("is not a test partner"), "{reason:?}");
    let m = wait_out_state(&fx, &a.user, "failed");
    let evs = events(&fx, m.id);
    assert_eq!(states(&evs), ["queued", "sending", "failed"], "{evs:#?}");
    assert_show_lists(&fx, m.id, &evs);
    assert!(received(&fx, &b.user).is_empty());
}

/// The partner's signed MDN (sync or async) does not verify with the certificate we have
/// for it (we pinned another one and send unencrypted, so the partner can still read the
/// message). Sync: the message is failed with a one-sentence reason, not called delivered.
/// Async (SECURITY.md, "Forged receipt"): the MDN is answered with an HTTP error and
/// settles nothing; the message keeps waiting and fails only when no valid MDN came in
/// time.
fn unverifiable_mdn(mdn: &str) {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "async_mdn_timeout_secs = 4");
    let daemon = Daemon::start(&fx, port, None);
    let mut peer = PyPeer::start(&py, &side, 0, &[]);
    let other = as2_common::make_keypair("not the peer");
    let other_cert = fx.dir.join("other.cert.pem");
    std::fs::write(&other_cert, other.cert.to_pem().unwrap()).unwrap();
    set_partner(
        &fx,
        &side.mb,
        peer.port,
        &other_cert,
        &["--encrypt", "none", "--mdn", mdn],
    );
    fx.as_user(&side.mb.user, || {
        ok(ops::put(&side.mb.outbox().join("v.edi"), b"verify"), "put")
    });
    let got = peer.wait_event("the message at the peer", |v| v["event"] == "received");
    assert_eq!(got["status"], "processed", "{got}");
    let (want_reason, want_states): (&str, &[&str]) = if mdn == "async" {
        wait_until("the rejected async MDN in the log", WAIT, || {
            daemon.log().contains("async MDN rejected")
        });
        (
            "No receipt (MDN) arrived",
            &["queued", "sending", "awaiting-mdn", "failed"],
        )
    } else {
        ("could not be verified", &["queued", "sending", "failed"])
    };
    let reason = reason_of(&fx, &side.mb, "v.edi");
    assert!(reason.contains(want_reason), "{reason:?}");
    assert_one_sentence(&reason);
    let m = wait_out_state(&fx, &side.mb.user, "failed");
    let evs = events(&fx, m.id);
    assert_eq!(states(&evs), want_states, "{evs:#?}");
    assert_show_lists(&fx, m.id, &evs);
}

#[test]
fn a_sync_mdn_whose_signature_does_not_verify_fails_the_message() {
    unverifiable_mdn("sync");
}

#[test]
fn an_async_mdn_whose_signature_does_not_verify_changes_nothing_and_the_message_times_out() {
    unverifiable_mdn("async");
}

/// The peer takes a message that asks for an async MDN and never sends one: after
/// `serve.async_mdn_timeout_secs` the file lands in `failed/` with the reason.
#[test]
fn an_async_mdn_that_never_arrives_fails_the_message_after_the_timeout() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "async_mdn_timeout_secs = 1");
    let _daemon = Daemon::start(&fx, port, None);
    let mut peer = PyPeer::start(&py, &side, 0, &["--no-async-mdn"]);
    set_partner(
        &fx,
        &side.mb,
        peer.port,
        &side.peer_cert,
        &["--mdn", "async"],
    );
    fx.as_user(&side.mb.user, || {
        ok(ops::put(&side.mb.outbox().join("late.edi"), b"late"), "put")
    });
    let got = peer.wait_event("the message at the peer", |v| v["event"] == "received");
    assert_eq!(got["status"], "processed");
    wait_out_state(&fx, &side.mb.user, "awaiting-mdn");
    let reason = reason_of(&fx, &side.mb, "late.edi");
    assert!(reason.contains("No receipt (MDN) arrived"), "{reason:?}");
    assert_one_sentence(&reason);
    let m = wait_out_state(&fx, &side.mb.user, "failed");
    let evs = events(&fx, m.id);
    assert_eq!(
        states(&evs),
        ["queued", "sending", "awaiting-mdn", "failed"],
        "{evs:#?}"
    );
    assert_show_lists(&fx, m.id, &evs);
}

/// The peer POSTs the same message (same Message-ID, same bytes) again, first one after the
/// other, then several at once: one delivered copy each time, and every answer is the same
/// positive MDN (disposition and MIC).
#[test]
fn a_resent_message_is_delivered_once_and_answered_with_the_same_positive_mdn() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let daemon = Daemon::start(&fx, port, None);
    let mut peer = PyPeer::start(&py, &side, 0, &[]);
    set_partner(&fx, &side.mb, peer.port, &side.peer_cert, &[]);
    let url = format!("http://127.0.0.1:{port}/as2");
    let send = |peer: &mut PyPeer, name: &str, post: bool| {
        peer.send(json!({
            "url": url, "data_b64": "UkVTRU5EIE1F", "filename": name, "post": post,
            "sign": "sha256", "encrypt": "aes_256_cbc", "mdn": "sync", "mdn_digest": "sha256",
        }))
    };
    // One after the other.
    let first = send(&mut peer, "one.edi", true);
    assert_eq!(first["mdn_status"], "processed", "{first}");
    let again = peer.resend(2, false);
    let mic = first["mic"].as_str().unwrap();
    for r in &again {
        assert_eq!(r["http_status"], 200, "{r}");
        assert_eq!(r["mdn_status"], "processed", "{r}");
        assert!(
            r["mic"].as_str().unwrap_or("").starts_with(mic),
            "MIC {} instead of {mic}",
            r["mic"]
        );
        assert!(
            r["disposition"].as_str().unwrap().ends_with("; processed"),
            "{r}"
        );
    }
    assert_eq!(received(&fx, &side.mb.user).len(), 1);
    // At once, without an earlier delivery.
    let built = send(&mut peer, "two.edi", false);
    let mic2 = built["mic"].as_str().unwrap();
    let results = peer.resend(4, true);
    for r in &results {
        assert_eq!(r["http_status"], 200, "{r}");
        assert_eq!(r["mdn_status"], "processed", "{r}");
        assert!(r["mic"].as_str().unwrap_or("").starts_with(mic2), "{r}");
    }
    let got = received(&fx, &side.mb.user);
    assert_eq!(got.len(), 2, "{got:#?}");
    let files = box_files(&fx, &side.mb.user, &side.mb.inbox());
    let names: Vec<&str> = files
        .iter()
        .map(|(p, _)| p.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "one.edi").count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "two.edi").count(),
        1,
        "{names:?}"
    );
    assert!(files.iter().all(|(_, d)| d == b"RESEND ME"));
    assert!(daemon.log().contains("duplicate"), "{}", daemon.log());
}

/// A Message-ID seen before with different content is a sender's bug, not a resend: it is
/// refused with a negative MDN and nothing is delivered (a positive answer would confirm
/// content we never stored).
#[test]
fn different_content_under_a_used_message_id_is_refused_and_not_delivered() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let _daemon = Daemon::start(&fx, port, None);
    let mut peer = PyPeer::start(&py, &side, 0, &[]);
    set_partner(&fx, &side.mb, peer.port, &side.peer_cert, &[]);
    let url = format!("http://127.0.0.1:{port}/as2");
    let mut send = |data: &[u8]| {
        peer.send(json!({
            "url": url, "data_b64": openssl::base64::encode_block(data), "filename": "po.edi",
            "message_id": "reused-id-1", "sign": "sha256", "encrypt": "aes_256_cbc",
            "mdn": "sync", "mdn_digest": "sha256",
        }))
    };
    let first = send(b"ORDER 1");
    assert_eq!(first["mdn_status"], "processed", "{first}");
    let resend = send(b"ORDER 1");
    assert_eq!(resend["mdn_status"], "processed", "a true resend: {resend}");
    let other = send(b"ORDER 2, different");
    assert_ne!(other["mdn_status"], "processed", "{other}");
    assert!(
        other["mdn_detail"]
            .as_str()
            .unwrap_or("")
            .contains("unexpected-processing-error"),
        "{other}"
    );
    assert_eq!(received(&fx, &side.mb.user).len(), 1);
    let files = box_files(&fx, &side.mb.user, &side.mb.inbox());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].1, b"ORDER 1");
}

// ---------------------------------------------------------------------------------------
// Crash safety
// ---------------------------------------------------------------------------------------

/// The daemon dies (SIGKILL, failpoint) after it delivered a message but before it answered;
/// the sender's resend of the same request is answered with a positive MDN carrying the MIC
/// of the original, and the inbox holds exactly one copy.
#[test]
fn killed_after_delivery_before_the_answer_the_resend_is_delivered_once() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let daemon = Daemon::start(&fx, port, Some("receive-before-answer"));
    let mut peer = PyPeer::start(&py, &side, 0, &[]);
    set_partner(&fx, &side.mb, peer.port, &side.peer_cert, &[]);
    let data = random_bytes(50_000);
    let sent = peer.send(json!({
        "url": format!("http://127.0.0.1:{port}/as2"),
        "data_b64": openssl::base64::encode_block(&data), "filename": "crash.bin",
        "content_type": "application/octet-stream",
        "sign": "sha256", "encrypt": "aes_256_cbc", "mdn": "sync", "mdn_digest": "sha256",
    }));
    assert!(!sent["error"].is_null(), "the sender got an answer: {sent}");
    daemon.expect_failpoint("receive-before-answer", WAIT);
    assert_eq!(
        received(&fx, &side.mb.user).len(),
        1,
        "delivered before the crash"
    );
    drop(daemon);
    let daemon = Daemon::start(&fx, port, None);
    let results = peer.resend(1, false);
    let r = &results[0];
    // pyas2lib compares the returned MIC with its own: a mismatch would be
    // "processed/warning".
    assert_eq!(r["mdn_status"], "processed", "{r}");
    assert!(!r["mic"].as_str().unwrap_or("").is_empty(), "no MIC: {r}");
    let got = received(&fx, &side.mb.user);
    assert_eq!(got.len(), 1, "{got:#?}");
    let files = box_files(&fx, &side.mb.user, &side.mb.inbox());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].0.ends_with("crash.bin") && files[0].1 == data);
    assert!(daemon.log().contains("duplicate"), "{}", daemon.log());
}

/// The partner accepts the connection, reads the request and never answers; the daemon is
/// stopped meanwhile (`kill -9`, or SIGTERM: then it exits at once, cleanly, without
/// waiting for the answer). After the restart the message is sent again with the same
/// Message-ID (the partner never answered) and delivered once.
fn stopped_while_the_partner_stalls(signal: i32) {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let daemon = Daemon::start(&fx, port, None);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    let stall = Server::start(0, move |mut c, stop| {
        if let Ok(req) = as2_common::read_http(&mut c) {
            let mid = req.headers.get("message-id").unwrap_or("").to_string();
            seen2.lock().unwrap().push(mid);
        }
        // Hold the connection without answering until the test is done with it.
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let stall_port = stall.port;
    set_partner(&fx, &side.mb, stall_port, &side.peer_cert, &[]);
    let data = random_bytes(30_000);
    fx.as_user(&side.mb.user, || {
        ok(ops::put(&side.mb.outbox().join("stall.bin"), &data), "put")
    });
    let first_mid = wait_for("the request at the stalling partner", WAIT, || {
        seen.lock().unwrap().first().cloned()
    });
    assert_eq!(
        wait_out_state(&fx, &side.mb.user, "sending").state,
        "sending"
    );
    if signal == libc::SIGKILL {
        daemon.kill9();
    } else {
        let status = daemon.stop(signal, Duration::from_secs(5));
        assert!(status.success(), "{status:?}:\n{}", daemon.log());
    }
    drop(daemon);
    drop(stall);
    let mut peer = PyPeer::start(&py, &side, stall_port, &[]);
    let _daemon = Daemon::start(&fx, port, None);
    let got = peer.wait_event("the message at the peer", |v| v["event"] == "received");
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(
        got["message_id"].as_str().unwrap(),
        first_mid.trim_matches(['<', '>']),
        "the resend has a new Message-ID"
    );
    assert_eq!(got["payloads"][0]["sha256"], sha256_hex(&data));
    let m = wait_out_state(&fx, &side.mb.user, "delivered");
    let evs = events(&fx, m.id);
    assert_eq!(
        states(&evs),
        ["queued", "sending", "queued", "sending", "delivered"],
        "{evs:#?}"
    );
    assert!(evs[2].detail.contains("requeued"), "{evs:#?}");
    assert_show_lists(&fx, m.id, &evs);
    assert_eq!(
        peer.drain(|v| v["event"] == "received").len(),
        0,
        "sent twice"
    );
}

#[test]
fn killed_while_the_partner_stalls_the_message_is_sent_again_with_the_same_message_id() {
    stopped_while_the_partner_stalls(libc::SIGKILL);
}

#[test]
fn stopped_while_the_partner_stalls_the_message_is_sent_again_with_the_same_message_id() {
    stopped_while_the_partner_stalls(libc::SIGTERM);
}

/// With `max_attempts = 1` the daemon is killed during the only allowed attempt (the
/// partner stalls): at the restart the message is not sent again but failed, its file in
/// `failed/` with a one-sentence reason (a message the daemon keeps dying on is not tried
/// forever).
#[test]
fn killed_during_the_last_allowed_attempt_the_message_fails_at_the_restart() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let side = peer_side(&fx);
    let port = free_port();
    serve_config(&fx, port, "max_attempts = 1");
    let daemon = Daemon::start(&fx, port, None);
    let requests = Arc::new(AtomicUsize::new(0));
    let r2 = requests.clone();
    let stall = Server::start(0, move |mut c, stop| {
        if as2_common::read_http(&mut c).is_ok() {
            r2.fetch_add(1, Ordering::SeqCst);
        }
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    set_partner(&fx, &side.mb, stall.port, &side.peer_cert, &[]);
    fx.as_user(&side.mb.user, || {
        ok(ops::put(&side.mb.outbox().join("last.edi"), b"last"), "put")
    });
    wait_until("the request at the stalling partner", WAIT, || {
        requests.load(Ordering::SeqCst) == 1
    });
    daemon.kill9();
    drop(daemon);
    let daemon = Daemon::start(&fx, port, None);
    let reason = reason_of(&fx, &side.mb, "last.edi");
    assert_one_sentence(&reason);
    assert!(reason.contains("the last one allowed"), "{reason:?}");
    let m = wait_out_state(&fx, &side.mb.user, "failed");
    let evs = events(&fx, m.id);
    assert_eq!(states(&evs), ["queued", "sending", "failed"], "{evs:#?}");
    assert_show_lists(&fx, m.id, &evs);
    assert_eq!(requests.load(Ordering::SeqCst), 1, "sent again");
    drop(daemon);
}

/// Both stations on one gateway: waits for the daemon to die at `failpoint` after B took
/// A's message and before A recorded the outcome, restarts it and returns it with A's
/// message, asserted delivered.
fn restart_after_the_crash(
    fx: &Fixture,
    port: u16,
    daemon: Daemon,
    failpoint: &str,
    a: &Mailbox,
    b: &Mailbox,
) -> (Daemon, Message) {
    daemon.expect_failpoint(failpoint, WAIT);
    assert_eq!(received(fx, &b.user).len(), 1, "B took it before the crash");
    assert_eq!(fx.out_messages(&a.user)[0].state, "sending");
    drop(daemon);
    let daemon = Daemon::start(fx, port, None);
    let m = wait_for("A's message to be delivered or failed", WAIT, || {
        fx.out_messages(&a.user)
            .into_iter()
            .find(|m| m.state == "delivered" || m.state == "failed")
    });
    assert_eq!(m.state, "delivered", "{m:#?}");
    (daemon, m)
}

/// The daemon dies (SIGKILL, failpoint) after the partner — station B of the same gateway —
/// took a two-file message and answered, before A recorded the outcome. After the restart A
/// sends it again with the same Message-ID; B recognises the resend and answers the same
/// positive MDN: A's message is delivered, B holds one copy.
#[test]
fn killed_after_the_partner_answered_the_resend_is_recognised_and_delivered_once() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let daemon = Daemon::start(&fx, port, Some("send-after-post"));
    set_partner(&fx, &a, port, &station_cert(&fx, &b.station), &[]);
    set_partner(&fx, &b, port, &station_cert(&fx, &a.station), &[]);
    // Two files: the resend is a multipart/related entity with a new MIME boundary.
    let (d1, d2) = (random_bytes(10_000), b"second file\n".to_vec());
    fx.as_user(&a.user, || {
        let dir = a.outbox().join("batch");
        ok(ops::mkdir(&dir), "mkdir");
        ok(ops::put(&dir.join("one.bin"), &d1), "put one");
        ok(ops::put(&dir.join("two.txt"), &d2), "put two");
        ok(ops::rename(&dir, &a.outbox().join("batch.ready")), "rename");
    });
    let (daemon, m) = restart_after_the_crash(&fx, port, daemon, "send-after-post", &a, &b);
    let evs = events(&fx, m.id);
    assert_eq!(
        states(&evs),
        ["queued", "sending", "queued", "sending", "delivered"],
        "{evs:#?}"
    );
    assert_show_lists(&fx, m.id, &evs);
    assert_eq!(received(&fx, &b.user).len(), 1);
    let files = box_files(&fx, &b.user, &b.inbox());
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(daemon.log().contains("duplicate"), "{}", daemon.log());
}

/// Both sides on one gateway, A asking for an async MDN: the daemon dies (SIGKILL, failpoint)
/// after B's delivery, before B answered. After the restart A's interrupted send is resent
/// with the same Message-ID, B recognises it and POSTs the async MDN, A's message is
/// delivered; B holds one copy.
#[test]
fn killed_before_answering_an_async_mdn_request_the_resend_gets_the_mdn_and_one_copy() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let port = free_port();
    serve_config(&fx, port, "");
    let daemon = Daemon::start(&fx, port, Some("receive-before-answer"));
    set_partner(
        &fx,
        &a,
        port,
        &station_cert(&fx, &b.station),
        &["--mdn", "async"],
    );
    // A's MDN URL is on loopback: B posts there only because it is listed.
    let allow = format!("http://127.0.0.1:{port}/");
    set_partner(
        &fx,
        &b,
        port,
        &station_cert(&fx, &a.station),
        &["--mdn-url-allow", &allow],
    );
    let data = random_bytes(12_000);
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("async.bin"), &data), "put")
    });
    let (daemon, m) = restart_after_the_crash(&fx, port, daemon, "receive-before-answer", &a, &b);
    let evs = events(&fx, m.id);
    // B POSTs the MDN as it answers A's POST: it may arrive before A recorded the answer
    // (no `awaiting-mdn` then).
    let st = states(&evs);
    assert!(
        st == [
            "queued",
            "sending",
            "queued",
            "sending",
            "awaiting-mdn",
            "delivered"
        ] || st == ["queued", "sending", "queued", "sending", "delivered"],
        "{evs:#?}"
    );
    assert_show_lists(&fx, m.id, &evs);
    assert_eq!(received(&fx, &b.user).len(), 1);
    let files = box_files(&fx, &b.user, &b.inbox());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].1, data);
    assert!(daemon.log().contains("duplicate"), "{}", daemon.log());
}

/// An async MDN we owe is kept in the store until the partner takes it: the partner's MDN
/// endpoint is down, the daemon is killed (`kill -9`) after a failed attempt, and after the
/// restart the MDN reaches the endpoint once it is up.
#[test]
fn an_owed_async_mdn_survives_a_killed_daemon_and_reaches_the_partner_when_it_is_up() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let port = free_port();
    // Quick retries, but not so quick that they run out before the restart.
    serve_config(
        &fx,
        port,
        "retry_base_secs = 0.3\nretry_max_secs = 1.0\nmax_attempts = 100",
    );
    let daemon = Daemon::start(&fx, port, None);
    let mut peer = PyPeer::start(&py, &side, 0, &[]);
    let mdn_port = free_port();
    let allow = format!("http://127.0.0.1:{mdn_port}/");
    set_partner(
        &fx,
        &side.mb,
        peer.port,
        &side.peer_cert,
        &["--mdn-url-allow", &allow],
    );
    let sent = peer.send(json!({
        "url": format!("http://127.0.0.1:{port}/as2"), "data_b64": "T1dFRCBNRE4=",
        "filename": "owed.edi", "sign": "sha256", "encrypt": "aes_256_cbc",
        "mdn": "async", "mdn_digest": "sha256",
        "mdn_url": format!("http://127.0.0.1:{mdn_port}/mdn"),
    }));
    let mid = sent["message_id"].as_str().unwrap().to_owned();
    wait_until("a failed attempt at the async MDN", WAIT, || {
        daemon.log().contains("async MDN not delivered")
    });
    daemon.kill9();
    // The partner's MDN endpoint comes up; then the daemon restarts.
    let (tx, rx) = channel::<String>();
    let tx = Mutex::new(tx);
    let _endpoint = Server::start(mdn_port, move |mut c, _| {
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        // Up to the end of the body (Content-Length) or a quiet connection.
        while let Ok(n) = std::io::Read::read(&mut c, &mut buf) {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = tx
            .lock()
            .unwrap()
            .send(String::from_utf8_lossy(&raw).into_owned());
    });
    let _daemon = Daemon::start(&fx, port, None);
    let got = rx
        .recv_timeout(WAIT)
        .expect("the owed MDN after the restart");
    assert!(got.starts_with("POST /mdn"), "{got}");
    assert!(got.contains(mid.trim_matches(['<', '>'])), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("disposition-notification"),
        "{got}"
    );
    assert_eq!(received(&fx, &side.mb.user).len(), 1);
}

/// Messages queued while no daemon runs survive a `kill -9` of the mount. The daemon,
/// started while the mount is still dead (it never needs the mount), sends each exactly
/// once and receives a message meanwhile; after the mount's restart that message is in the
/// inbox and the sent files have left the outbox.
#[test]
fn queued_messages_survive_a_killed_mount_and_are_sent_once() {
    let Some(fx) = fixture!(Settings {
        linger_secs: 1.0,
        ..Settings::default()
    }) else {
        return;
    };
    let Some(py) = python() else { return };
    let side = peer_side(&fx);
    let mut peer = PyPeer::start(&py, &side, 0, &[]);
    set_partner(&fx, &side.mb, peer.port, &side.peer_cert, &[]);
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("q{i}.bin"), random_bytes(5_000 + i * 1000)))
        .collect();
    fx.as_user(&side.mb.user, || {
        for (name, data) in &files {
            ok(ops::put(&side.mb.outbox().join(name), data), "put");
        }
    });
    assert_eq!(fx.out_messages(&side.mb.user).len(), 3);
    let status = fx.stop_mount(libc::SIGKILL);
    assert_eq!(signalled(&status), Some(libc::SIGKILL));
    let port = free_port();
    serve_config(&fx, port, "");
    let _daemon = Daemon::start(&fx, port, None);
    let mut got = Vec::new();
    for _ in 0..3 {
        let ev = peer.wait_event("a message at the peer", |v| v["event"] == "received");
        got.push(ev["payloads"][0]["sha256"].as_str().unwrap().to_string());
    }
    got.sort();
    let mut want: Vec<String> = files.iter().map(|(_, d)| sha256_hex(d)).collect();
    want.sort();
    assert_eq!(got, want);
    wait_until("all three delivered", WAIT, || {
        fx.out_messages(&side.mb.user)
            .iter()
            .all(|m| m.state == "delivered")
    });
    // Receiving works without the mount too.
    let sent = peer.send(json!({
        "url": format!("http://127.0.0.1:{port}/as2"),
        "data_b64": "SU5CT1VORA==", "filename": "in.edi",
        "sign": "sha256", "encrypt": "aes_256_cbc", "mdn": "sync", "mdn_digest": "sha256",
    }));
    assert_eq!(sent["mdn_status"], "processed", "{sent}");
    assert!(
        !fx.is_mounted() || std::fs::read_dir(&fx.mnt).is_err(),
        "the mount came back"
    );
    fx.mount();
    let inbox = box_files(&fx, &side.mb.user, &side.mb.inbox());
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert!(inbox[0].0.ends_with("in.edi") && inbox[0].1 == b"INBOUND");
    // The picked-up files lingered 1 s and are gone; nothing is left to send twice.
    wait_until("the outbox to be empty", WAIT, || {
        // Names only: a lingering file can vanish between listing and reading.
        let outbox = side.mb.outbox();
        fx.as_user(&side.mb.user, || files_in(&outbox)).is_empty()
    });
    assert_eq!(
        peer.drain(|v| v["event"] == "received").len(),
        0,
        "sent twice"
    );
    assert_eq!(fx.out_messages(&side.mb.user).len(), 3);
}
