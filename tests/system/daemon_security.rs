//! The threats of docs/SECURITY.md, sent as an attacker would: raw HTTP from this test to
//! a real `as2box serve` over the real mount, messages built with the library's own AS2
//! core (so they are well-formed) but signed, encrypted and addressed as the attack needs.
//! Each test is named after its threat and asserts what was answered and that nothing was
//! stored; a control case next to each refusal shows the same path accepting the genuine
//! message, so a refusal for the wrong reason fails.
//!
//! Setup: two stations on one gateway, A and B, each the other's partner. The attacker
//! knows both AS2 ids and B's public certificate (it is public), but not A's key.

use crate::common;
use crate::common::as2 as as2_common;
use crate::common::daemon as daemon_common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use as2box::as2::algorithms::{DigestAlgorithm, EncryptionAlgorithm};
use as2box::as2::certs::{KeyPair, ValidityPolicy};
use as2box::as2::headers::Headers;
use as2box::as2::mdn::{build_mdn, parse_mdn, Disposition, MdnParams};
use as2box::as2::message::{
    build_message, parse_message, Attachment, MdnMode, OutgoingMessage, ReceiveContext,
    RequestInfo, SendProfile,
};
use as2box::as2::DispositionModifier;
use common::*;
use daemon_common::*;

const WAIT: Duration = Duration::from_secs(40);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn station_key(fx: &Fixture, station: &str) -> KeyPair {
    let dir = fx.state_dir.join("keys");
    KeyPair::from_separate(
        &std::fs::read(dir.join(format!("{station}.key.pem"))).unwrap(),
        &std::fs::read(dir.join(format!("{station}.cert.pem"))).unwrap(),
        None,
    )
    .unwrap()
}

fn write_cert(fx: &Fixture, name: &str, kp: &KeyPair) -> PathBuf {
    let p = fx.dir.join(format!("{name}.cert.pem"));
    std::fs::write(&p, kp.cert.to_pem().unwrap()).unwrap();
    p
}

/// A gateway with stations A and B, B's partner A configured with `cert` (None: no
/// certificate) and `flags`, and a running daemon.
struct Gateway {
    fx: Fixture,
    a: Mailbox,
    b: Mailbox,
    daemon: Daemon,
    port: u16,
}

/// Which certificate B holds for its partner A.
enum PartnerCert {
    /// A's real station certificate.
    StationA,
    /// Another file (an expired certificate, say).
    File(PathBuf),
    /// None at all.
    Missing,
}

impl Gateway {
    fn new(fx: Fixture, cert: PartnerCert, flags: &[&str]) -> Gateway {
        let (a, b) = pair(&fx);
        let port = free_port();
        serve_config(&fx, port, "");
        let url = format!("http://127.0.0.1:{port}/as2");
        let mut args = vec![
            "partner".to_string(),
            "set".into(),
            "--user".into(),
            b.user.name.clone(),
            b.partner.clone(),
            "--url".into(),
            url,
        ];
        let cert = match cert {
            PartnerCert::StationA => Some(station_cert(&fx, &a.station)),
            PartnerCert::File(p) => Some(p),
            PartnerCert::Missing => None,
        };
        if let Some(c) = cert {
            args.extend(["--cert".into(), c.display().to_string()]);
        }
        args.extend(flags.iter().map(|s| s.to_string()));
        fx.cli_ok(&args);
        let daemon = Daemon::start(&fx, port, None);
        Gateway {
            fx,
            a,
            b,
            daemon,
            port,
        }
    }

    /// B's partner A with A's real certificate and the default (secure) profile.
    fn secure(fx: Fixture) -> Gateway {
        Gateway::new(fx, PartnerCert::StationA, &[])
    }

    /// A message "from A to B" as built by whoever holds `signer`.
    fn forge(
        &self,
        signer: Option<&KeyPair>,
        encrypt: bool,
        mdn: MdnMode,
        data: &[u8],
        content_type: &str,
    ) -> OutgoingMessage {
        let mut p = SendProfile::new(&self.a.station, &self.b.station);
        p.sign = signer.map(|_| DigestAlgorithm::Sha256);
        p.encrypt = encrypt.then_some(EncryptionAlgorithm::Aes256Cbc);
        p.mdn = mdn;
        p.signed_mdn_micalgs = vec![DigestAlgorithm::Sha256];
        let b_cert = as2box::as2::certs::load_certificates(
            &std::fs::read(station_cert(&self.fx, &self.b.station)).unwrap(),
        )
        .unwrap()
        .remove(0);
        build_message(
            &[Attachment {
                filename: Some("po.edi".into()),
                content_type: content_type.into(),
                data: data.to_vec(),
            }],
            &p,
            signer,
            encrypt.then_some(&b_cert),
            now(),
            None,
        )
        .unwrap()
    }

    fn post(&self, headers: &Headers, body: &[u8]) -> as2_common::HttpMessage {
        as2_common::http_post(
            &format!("http://127.0.0.1:{}/as2", self.port),
            headers,
            body,
        )
    }

    /// The MDN in a response, its signature checked against B's certificate.
    fn mdn_of(&self, r: &as2_common::HttpMessage) -> as2box::as2::mdn::ReceivedMdn {
        assert_eq!(r.status(), 200, "{r:?}\n{}", self.daemon.log());
        let b_cert = as2box::as2::certs::load_certificates(
            &std::fs::read(station_cert(&self.fx, &self.b.station)).unwrap(),
        )
        .unwrap();
        let mut headers = r.headers.clone();
        // The HTTP layer's own fields are not part of the MDN entity.
        headers.0.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("date")
        });
        parse_mdn(&headers, &r.body, &b_cert, ValidityPolicy::at(now()), true)
            .unwrap_or_else(|e| panic!("not a signed MDN from B: {e}\n{r:?}"))
    }

    fn blobs(&self) -> usize {
        files_in(&self.fx.state_dir.join("blobs")).len()
    }

    fn inbox(&self) -> Vec<PathBuf> {
        self.fx.as_user(&self.b.user, || files_in(&self.b.inbox()))
    }

    fn stored_inbound(&self) -> Vec<Message> {
        self.fx
            .messages()
            .into_iter()
            .filter(|m| m.direction == "in" && m.state != "refused")
            .collect()
    }

    fn refused(&self) -> Vec<Message> {
        self.fx
            .messages()
            .into_iter()
            .filter(|m| m.direction == "in" && m.state == "refused")
            .collect()
    }

    fn metric(&self, name: &str) -> u64 {
        let text = self.daemon.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends `msg` and asserts it was refused with `modifier`, nothing stored, the refusal
    /// recorded and counted.
    #[track_caller]
    fn assert_refused(&self, msg: &OutgoingMessage, modifier: DispositionModifier) {
        let blobs = self.blobs();
        let refused_before = self.refused().len();
        let r = self.post(&msg.headers, &msg.body);
        let mdn = self.mdn_of(&r);
        assert_eq!(
            mdn.disposition,
            Disposition::Error(modifier),
            "{}\n{}",
            mdn.text,
            self.daemon.log()
        );
        assert_eq!(mdn.original_message_id, msg.message_id);
        assert!(self.inbox().is_empty(), "{:?}", self.inbox());
        assert!(self.stored_inbound().is_empty());
        assert_eq!(self.blobs(), blobs, "a blob was stored");
        let refused = self.refused();
        assert_eq!(refused.len(), refused_before + 1, "{refused:?}");
        assert!(
            refused.last().unwrap().detail.is_some(),
            "the refusal says why: {refused:?}"
        );
        assert!(
            self.metric("as2box_received_total{outcome=\"refused\"}") >= 1,
            "{}",
            self.daemon.get("/metrics")
        );
    }

    /// Sends `msg` and asserts it was delivered (the control case).
    #[track_caller]
    fn assert_delivered(&self, msg: &OutgoingMessage) {
        let r = self.post(&msg.headers, &msg.body);
        let mdn = self.mdn_of(&r);
        assert_eq!(
            mdn.disposition,
            Disposition::Processed,
            "{}\n{}",
            mdn.text,
            self.daemon.log()
        );
        wait_until("the delivery in B's inbox", WAIT, || {
            !self.inbox().is_empty()
        });
    }
}

// ---------------------------------------------------------------------------------------
// Forged sender
// ---------------------------------------------------------------------------------------

/// An unsigned, unencrypted message "from A" to B (whose profile for A is the default):
/// `insufficient-message-security`, nothing stored. The genuine, signed and encrypted
/// message is delivered.
#[test]
fn forged_sender_unsigned_message_is_refused() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let gw = Gateway::secure(fx);
    let forged = gw.forge(
        None,
        false,
        MdnMode::Sync,
        b"UNH+1+ORDERS",
        "application/edifact",
    );
    gw.assert_refused(&forged, DispositionModifier::InsufficientMessageSecurity);
    // Encrypted to B (B's certificate is public) but unsigned: still refused.
    let forged = gw.forge(
        None,
        true,
        MdnMode::Sync,
        b"UNH+1+ORDERS",
        "application/edifact",
    );
    gw.assert_refused(&forged, DispositionModifier::InsufficientMessageSecurity);
    let a_key = station_key(&gw.fx, &gw.a.station);
    let genuine = gw.forge(
        Some(&a_key),
        true,
        MdnMode::Sync,
        b"UNH+1+ORDERS",
        "application/edifact",
    );
    gw.assert_delivered(&genuine);
    assert!(
        gw.daemon.log().contains("--require-signature no"),
        "the log says what to change: {}",
        gw.daemon.log()
    );
}

/// Signed by A but not encrypted, where B's profile for A requires encryption: refused.
#[test]
fn forged_sender_unencrypted_where_encryption_is_required_is_refused() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let gw = Gateway::secure(fx);
    let a_key = station_key(&gw.fx, &gw.a.station);
    let plain = gw.forge(
        Some(&a_key),
        false,
        MdnMode::Sync,
        b"x",
        "application/edi-x12",
    );
    gw.assert_refused(&plain, DispositionModifier::InsufficientMessageSecurity);
}

/// Signed by a key that is not A's (the certificate inside the message is the attacker's
/// own, which must not count): `authentication-failed`.
#[test]
fn forged_sender_signed_by_another_key_is_refused() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let gw = Gateway::secure(fx);
    let attacker = as2_common::make_keypair("attacker");
    let forged = gw.forge(
        Some(&attacker),
        true,
        MdnMode::Sync,
        b"x",
        "application/edi-x12",
    );
    gw.assert_refused(&forged, DispositionModifier::AuthenticationFailed);
}

/// A's only configured certificate expired: a message signed with its key is refused;
/// after a rollover (`partner cert add` of the new certificate) the new key is accepted
/// while the expired one still is not, and `partner show` lists both with validity.
#[test]
fn forged_sender_with_an_expired_certificate_is_refused_and_a_rollover_is_accepted() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let expired = as2_common::make_keypair_valid("A 2020", 1_577_836_800, now() - 86_400);
    let expired_cert = write_cert(&fx, "expired", &expired);
    let gw = Gateway::new(fx, PartnerCert::File(expired_cert), &[]);
    let old = gw.forge(
        Some(&expired),
        true,
        MdnMode::Sync,
        b"x",
        "application/edi-x12",
    );
    gw.assert_refused(&old, DispositionModifier::AuthenticationFailed);

    let current = as2_common::make_keypair_valid("A 2026", now() - 3600, now() + 365 * 86_400);
    let current_cert = write_cert(&gw.fx, "current", &current);
    gw.fx.cli_ok(&[
        "partner",
        "cert",
        "add",
        "--user",
        &gw.b.user.name,
        &gw.b.partner,
        &current_cert.display().to_string(),
    ]);
    let shown = gw
        .fx
        .cli_ok(&["partner", "show", "--user", &gw.b.user.name, &gw.b.partner]);
    assert_eq!(shown.matches("certificate: ").count(), 2, "{shown}");
    assert!(shown.contains("signature required: yes"), "{shown}");
    let old = gw.forge(
        Some(&expired),
        true,
        MdnMode::Sync,
        b"y",
        "application/edi-x12",
    );
    gw.assert_refused(&old, DispositionModifier::AuthenticationFailed);
    let new = gw.forge(
        Some(&current),
        true,
        MdnMode::Sync,
        b"z",
        "application/edi-x12",
    );
    gw.assert_delivered(&new);
}

/// B's partner A has no certificate: a signature is required and cannot be checked, so
/// even A's genuine message is refused (fail closed), and the log says what to fix.
#[test]
fn forged_sender_partner_without_a_certificate_fails_closed() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let gw = Gateway::new(fx, PartnerCert::Missing, &[]);
    let a_key = station_key(&gw.fx, &gw.a.station);
    let genuine = gw.forge(
        Some(&a_key),
        true,
        MdnMode::Sync,
        b"x",
        "application/edi-x12",
    );
    gw.assert_refused(&genuine, DispositionModifier::AuthenticationFailed);
    assert!(
        gw.daemon.log().contains("partner cert add"),
        "{}",
        gw.daemon.log()
    );
}

// ---------------------------------------------------------------------------------------
// Tampered payload
// ---------------------------------------------------------------------------------------

/// A man in the middle rewrites CRLF to LF inside A's signed binary payload (B takes A's
/// messages unencrypted here, so the payload is reachable): `integrity-check-failed`,
/// although canonicalizing the line ends back would verify.
#[test]
fn tampered_payload_line_ends_rewritten_in_a_signed_binary_payload_are_refused() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let gw = Gateway::new(fx, PartnerCert::StationA, &["--require-encryption", "no"]);
    let a_key = station_key(&gw.fx, &gw.a.station);
    let payload = b"\x00\x01rec\r\nrec\r\n\xfe";
    let msg = gw.forge(
        Some(&a_key),
        false,
        MdnMode::Sync,
        payload,
        "application/octet-stream",
    );
    let rewritten: Vec<u8> = msg.body.iter().copied().filter(|&c| c != b'\r').collect();
    gw.assert_refused(
        &OutgoingMessage {
            body: rewritten,
            ..msg.clone()
        },
        DispositionModifier::IntegrityCheckFailed,
    );
    gw.assert_delivered(&msg);
    let got = gw.fx.as_user(&gw.b.user, || {
        ok(ops::read(&files_in(&gw.b.inbox())[0]), "read")
    });
    assert_eq!(got, payload, "the bytes delivered are the bytes signed");
}

// ---------------------------------------------------------------------------------------
// MDN open proxy
// ---------------------------------------------------------------------------------------

/// Whether `l` gets a connection within `patience` (an absence can only be waited for).
fn connected(l: &TcpListener, patience: Duration) -> bool {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + patience;
    while Instant::now() < end {
        if let Ok((mut c, _)) = l.accept() {
            // Answer, so that an allowed delivery completes.
            let mut buf = [0u8; 65536];
            c.set_nonblocking(false).ok();
            c.set_read_timeout(Some(Duration::from_millis(500))).ok();
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// An unauthenticated request names a loopback URL for its async MDN: no connection is
/// ever made (the negative MDN comes back in the response). An authenticated request
/// naming a URL its partner's profile does not allow: no connection either, the MDN comes
/// back in the response and the message is delivered. Once the admin lists the URL, the
/// MDN is POSTed there.
#[test]
fn mdn_open_proxy_async_mdn_urls_are_not_followed_unless_allowed() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let gw = Gateway::secure(fx);
    let (listener, lport) = as2_common::listen();
    let target = format!("http://127.0.0.1:{lport}/internal-admin");

    let forged = gw.forge(
        None,
        false,
        MdnMode::Async(target.clone()),
        b"x",
        "text/plain",
    );
    gw.assert_refused(&forged, DispositionModifier::InsufficientMessageSecurity);
    assert!(
        !connected(&listener, Duration::from_secs(2)),
        "an unauthenticated request made the daemon connect"
    );

    let a_key = station_key(&gw.fx, &gw.a.station);
    let genuine = gw.forge(
        Some(&a_key),
        true,
        MdnMode::Async(target.clone()),
        b"y",
        "text/plain",
    );
    let r = gw.post(&genuine.headers, &genuine.body);
    assert_eq!(gw.mdn_of(&r).disposition, Disposition::Processed);
    assert!(
        !connected(&listener, Duration::from_secs(2)),
        "a URL not allowed was POSTed to"
    );
    assert!(
        gw.daemon.log().contains("--mdn-url-allow"),
        "{}",
        gw.daemon.log()
    );
    assert!(gw.metric("as2box_async_mdn_url_refused_total") >= 1);

    gw.fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &gw.b.user.name,
        &gw.b.partner,
        "--mdn-url-allow",
        &format!("http://127.0.0.1:{lport}/"),
    ]);
    let allowed = gw.forge(
        Some(&a_key),
        true,
        MdnMode::Async(target),
        b"z",
        "text/plain",
    );
    let r = gw.post(&allowed.headers, &allowed.body);
    assert_eq!(r.status(), 200);
    assert!(
        connected(&listener, WAIT),
        "the allowed async MDN never came"
    );
}

// ---------------------------------------------------------------------------------------
// Forged receipt
// ---------------------------------------------------------------------------------------

/// A stands in for a partner that takes messages and answers later: A sends to B's
/// endpoint replaced by this test's listener, asking for a signed async MDN. Then:
/// a junk "signed" MDN, an unsigned MDN, an MDN from another AS2-From: each answered with
/// an HTTP error, and the message keeps waiting. B's real, signed MDN settles it.
#[test]
fn forged_receipt_async_mdns_settle_only_what_they_prove() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let port = free_port();
    serve_config(&fx, port, "async_mdn_timeout_secs = 600");
    let (listener, lport) = as2_common::listen();
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &a.user.name,
        &a.partner,
        "--url",
        &format!("http://127.0.0.1:{lport}/as2"),
        "--cert",
        &station_cert(&fx, &b.station).display().to_string(),
        "--mdn",
        "async",
    ]);
    let daemon = Daemon::start(&fx, port, None);
    fx.as_user(&a.user, || {
        ok(
            ops::put(&a.outbox().join("order.edi"), b"UNH+1+ORDERS"),
            "put",
        )
    });
    // The "partner": takes the request and answers 200.
    let (mut c, _) = listener.accept().unwrap();
    let req = as2_common::read_http(&mut c).unwrap();
    as2_common::write_http(
        &mut c,
        "HTTP/1.1 200 OK",
        &Headers::from_pairs([("Content-Type", "text/plain")]),
        b"ok",
    )
    .unwrap();
    drop(c);
    let info = RequestInfo::from_headers(&req.headers).unwrap();
    let waiting = || {
        fx.out_messages(&a.user)
            .into_iter()
            .find(|m| m.name == "order.edi")
            .map(|m| m.state)
            .unwrap_or_default()
    };
    wait_until("the message awaiting its MDN", WAIT, || {
        waiting() == "awaiting-mdn"
    });

    let b_key = station_key(&fx, &b.station);
    let a_key = station_key(&fx, &a.station);
    let received = parse_message(
        &req.headers,
        &req.body,
        &ReceiveContext::new(
            std::slice::from_ref(&b_key),
            std::slice::from_ref(&a_key.cert),
            ValidityPolicy::at(now()),
        ),
    )
    .unwrap();
    let mdn = |signer: Option<&KeyPair>| {
        build_mdn(&MdnParams {
            request: &RequestInfo {
                mdn: info.mdn.clone().map(|mut m| {
                    m.async_url = None;
                    m
                }),
                ..info.clone()
            },
            disposition: Disposition::Processed,
            mic: Some(&received.mic),
            reporting_ua: "forger",
            text: "ok",
            signer,
            smime_capabilities: false,
            algorithm_protection: false,
            now_unix: now(),
            message_id_domain: "x",
        })
        .unwrap()
    };
    let post = |headers: &Headers, body: &[u8]| {
        as2_common::http_post(&format!("http://127.0.0.1:{port}/as2/mdn"), headers, body)
    };
    let with_route = |m: &as2box::as2::mdn::OutgoingMdn, from: &str| {
        let mut h = m.headers.clone();
        h.0.retain(|(k, _)| !k.eq_ignore_ascii_case("as2-from"));
        h.push("AS2-From", from);
        h
    };

    // Junk in place of the signature.
    let attacker = as2_common::make_keypair("attacker");
    let forged = mdn(Some(&attacker));
    let r = post(&with_route(&forged, &b.station), &forged.body);
    assert_eq!(r.status(), 403, "{r:?}");
    // Unsigned, where a signed MDN was asked for.
    let unsigned = mdn(None);
    let r = post(&with_route(&unsigned, &b.station), &unsigned.body);
    assert_eq!(r.status(), 403, "{r:?}");
    // Genuinely signed by B, but posted as coming from someone else.
    let genuine = mdn(Some(&b_key));
    let r = post(&with_route(&genuine, "MALLORY"), &genuine.body);
    assert_eq!(r.status(), 403, "{r:?}");
    assert_eq!(waiting(), "awaiting-mdn", "{}", daemon.log());
    assert!(daemon
        .get("/metrics")
        .contains("as2box_mdn_received_total{outcome=\"rejected\"} 3"));

    let r = post(&with_route(&genuine, &b.station), &genuine.body);
    assert_eq!(r.status(), 200, "{r:?}\n{}", daemon.log());
    wait_until("the message delivered", WAIT, || waiting() == "delivered");
}

/// A flood of forged requests: each is refused and counted, but at most 60 a minute per
/// partner become rows in `messages` (so the flood cannot fill the disk).
#[test]
fn forged_sender_a_flood_is_counted_but_not_all_recorded() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let gw = Gateway::secure(fx);
    let n = 150;
    for i in 0..n {
        let forged = gw.forge(
            None,
            false,
            MdnMode::Sync,
            format!("{i}").as_bytes(),
            "text/plain",
        );
        let r = gw.post(&forged.headers, &forged.body);
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        gw.metric("as2box_received_total{outcome=\"refused\"}"),
        n as u64,
        "{}",
        gw.daemon.get("/metrics")
    );
    // 60 a minute; the run may straddle one minute's end.
    let recorded = gw.refused().len();
    assert!(
        (60..=120).contains(&recorded),
        "{recorded} refusals recorded"
    );
    assert!(gw.stored_inbound().is_empty());
}
