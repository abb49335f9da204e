//! What `as2box serve` puts on the wire, read from raw bytes: every connection between two
//! stations runs through a recording TCP relay, so the tests see exactly what a partner's
//! server receives (our AS2 requests, our async MDN POSTs) and what a partner's client reads
//! (our sync MDN responses). Header names in their canonical case (issue 13, item 1) and
//! the per-partner switches of `partner set` (issue 13, item 5).
//!
//! Needs root and /dev/fuse like the other system tests (see tests/common).

use crate::common;
use crate::common::daemon as daemon_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use daemon_common::*;

/// One connection through the relay: what the client sent and what the server answered.
#[derive(Clone, Default)]
struct Exchange {
    request: Arc<Mutex<Vec<u8>>>,
    response: Arc<Mutex<Vec<u8>>>,
}

impl Exchange {
    fn request_text(&self) -> String {
        String::from_utf8_lossy(&self.request.lock().unwrap()).into_owned()
    }

    fn response_text(&self) -> String {
        String::from_utf8_lossy(&self.response.lock().unwrap()).into_owned()
    }

    /// The request's head (request line and header lines, up to the blank line).
    fn request_head(&self) -> String {
        let text = self.request_text();
        text.split("\r\n\r\n").next().unwrap_or("").to_owned() + "\r\n"
    }

    /// The response's head.
    fn response_head(&self) -> String {
        let text = self.response_text();
        text.split("\r\n\r\n").next().unwrap_or("").to_owned() + "\r\n"
    }
}

/// A TCP relay on a free port that forwards every connection to `target` and records both
/// directions.
struct Relay {
    port: u16,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

fn copy_recording(mut from: TcpStream, mut to: TcpStream, record: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Relay {
    fn to_port(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let exchanges: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let list = exchanges.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let exchange = Exchange::default();
                list.lock().unwrap().push(exchange.clone());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (req, resp) = (exchange.request.clone(), exchange.response.clone());
                std::thread::spawn(move || copy_recording(client, server, req));
                std::thread::spawn(move || copy_recording(s2, c2, resp));
            }
        });
        Relay { port, exchanges }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The first exchange whose request line starts with `request_line` and whose response
    /// has arrived in full (a head and a body as long as it says, or a chunked end).
    fn wait_exchange(&self, request_line: &str) -> Exchange {
        wait_for(
            &format!("a relayed {request_line:?} with its answer"),
            Duration::from_secs(30),
            || {
                self.exchanges
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|e| {
                        e.request_text().starts_with(request_line)
                            && e.response_text().contains("\r\n\r\n")
                    })
                    .cloned()
            },
        )
    }
}

/// Writes the `[serve]` section by hand so that `public_url` (where partners POST their
/// async MDNs) is the relay, and starts the daemon on `port`.
fn start_behind(fx: &Fixture, port: u16, relay: &Relay) -> Daemon {
    let mut config = std::fs::read_to_string(&fx.config).unwrap();
    config += &format!(
        "\n[serve]\nhttp_listen = \"127.0.0.1:{port}\"\npublic_url = \"{}\"\nretry_base_secs = 0.2\nretry_max_secs = 1.0\nmax_attempts = 3\n",
        relay.url("")
    );
    std::fs::write(&fx.config, config).unwrap();
    Daemon::start(fx, port, None)
}

/// Two stations that are each other's partners, every connection between them through one
/// relay in front of the daemon; B's entry for A has `b_settings`. Returns (A, B, relay,
/// daemon, the relay's AS2 URL).
fn relayed_pair(fx: &Fixture, b_settings: &[&str]) -> (Mailbox, Mailbox, Relay, Daemon, String) {
    let (a, b) = pair(fx);
    let port = free_port();
    let relay = Relay::to_port(port);
    let daemon = start_behind(fx, port, &relay);
    let as2_url = relay.url("/as2");
    link(fx, &b, &a, &as2_url, b_settings);
    (a, b, relay, daemon, as2_url)
}

fn assert_spelled(head: &str, names: &[&str]) {
    for name in names {
        assert!(
            head.contains(&format!("\r\n{name}: ")),
            "{name:?} is not spelled so in:\n{head}"
        );
    }
}

#[test]
fn header_names_go_out_in_canonical_case_on_requests_sync_mdns_and_async_mdns() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b, relay, daemon, as2_url) = relayed_pair(&fx, &[]);
    link(&fx, &a, &b, &as2_url, &["--mdn", "sync"]);
    let data = random_bytes(2_000);
    assert_eq!(
        send_through(&fx, &a, &b, "case-sync.edi", &data),
        data,
        "{}",
        daemon.log()
    );
    let sent = relay.wait_exchange("POST /as2 ");
    let request = sent.request_head();
    assert_spelled(
        &request,
        &[
            "AS2-From",
            "AS2-To",
            "AS2-Version",
            "Message-ID",
            "Disposition-Notification-To",
            "Disposition-Notification-Options",
            "Content-Type",
            "MIME-Version",
            "EDIINT-Features",
            "Subject",
            "Date",
        ],
    );
    assert!(!request.contains("\r\nas2-from:"), "{request}");
    // The sync MDN as the sender's client read it.
    let answer = sent.response_head();
    assert_spelled(
        &answer,
        &[
            "AS2-From",
            "AS2-To",
            "AS2-Version",
            "Message-ID",
            "Content-Type",
            "MIME-Version",
            "EDIINT-Features",
            "Subject",
        ],
    );
    assert!(!answer.contains("\r\nmessage-id:"), "{answer}");

    // Async: the request names where the MDN goes, and the MDN is POSTed there, through
    // the relay, with the same spellings. B may POST to the relay (an internal address)
    // because its partner entry for A lists it.
    link(&fx, &a, &b, &as2_url, &["--mdn", "async"]);
    link(&fx, &b, &a, &as2_url, &["--mdn-url-allow", &relay.url("/")]);
    assert_eq!(
        send_through(&fx, &a, &b, "case-async.edi", &data),
        data,
        "{}",
        daemon.log()
    );
    let requests: Vec<String> = relay
        .exchanges
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.request_head())
        .collect();
    let async_request = requests
        .iter()
        .find(|h| h.contains("case-async.edi") || h.contains("Receipt-Delivery-Option"))
        .unwrap_or_else(|| panic!("no request asked for an async MDN: {requests:#?}"));
    assert_spelled(async_request, &["Receipt-Delivery-Option", "AS2-From"]);
    let mdn_post = relay.wait_exchange("POST /as2/mdn ").request_head();
    assert_spelled(
        &mdn_post,
        &[
            "AS2-From",
            "AS2-To",
            "AS2-Version",
            "Message-ID",
            "Content-Type",
            "MIME-Version",
            "Subject",
        ],
    );
    assert!(!mdn_post.contains("\r\nas2-to:"), "{mdn_post}");
}

/// Puts `data` as `name` into `from`'s outbox and waits until the message is `state`.
fn send_until(fx: &Fixture, from: &Mailbox, name: &str, data: &[u8], state: &str) -> Message {
    fx.as_user(&from.user, || {
        ok(ops::put(&from.outbox().join(name), data), "put")
    });
    wait_for(
        &format!("{name} to be {state}"),
        Duration::from_secs(30),
        || {
            fx.out_messages(&from.user)
                .into_iter()
                .find(|m| m.name == name && m.state == state)
        },
    )
}

/// The heads of every relayed AS2 request (not MDNs), oldest first.
fn request_heads(relay: &Relay) -> Vec<String> {
    relay
        .exchanges
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.request_text().starts_with("POST /as2 "))
        .map(|e| e.request_head())
        .collect()
}

/// The `name` field's value in a head.
fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[test]
fn the_micalg_spelling_binary_canonicalization_and_chunking_follow_the_partner_settings() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b, relay, daemon, as2_url) = relayed_pair(&fx, &[]);
    // Defaults: `sha-256`, text canonicalized to CRLF, a Content-Length.
    link(
        &fx,
        &a,
        &b,
        &as2_url,
        &["--content-type", "application/edi-x12"],
    );
    let lf_text = b"ISA*00*\nGS*PO*\nST*850*0001\n".to_vec();
    let crlf_text = b"ISA*00*\r\nGS*PO*\r\nST*850*0001\r\n".to_vec();
    assert_eq!(
        send_through(&fx, &a, &b, "default.x12", &lf_text),
        crlf_text,
        "{}",
        daemon.log()
    );
    let head = request_heads(&relay).pop().unwrap();
    let options = field(&head, "Disposition-Notification-Options").unwrap();
    assert!(
        options.ends_with("signed-receipt-micalg=optional, sha-256"),
        "{head}"
    );
    assert!(field(&head, "Content-Length").is_some(), "{head}");
    assert!(field(&head, "Transfer-Encoding").is_none(), "{head}");

    // Switched: `sha256`, signed as uploaded (the receiver verifies the signature over the
    // LF bytes and delivers them unchanged), chunked.
    link(
        &fx,
        &a,
        &b,
        &as2_url,
        &[
            "--micalg-spelling",
            "sha256",
            "--binary-canonicalization",
            "yes",
            "--chunked",
            "yes",
        ],
    );
    let shown = fx.cli_ok(&["partner", "show", "--user", &a.user.name, &a.partner]);
    assert!(
        shown.contains("micalg spelled sha256, binary canonicalization yes, chunked yes"),
        "{shown}"
    );
    assert_eq!(
        send_through(&fx, &a, &b, "binary.x12", &lf_text),
        lf_text,
        "{}",
        daemon.log()
    );
    let head = request_heads(&relay).pop().unwrap();
    let options = field(&head, "Disposition-Notification-Options").unwrap();
    assert!(
        options.ends_with("signed-receipt-micalg=optional, sha256"),
        "{head}"
    );
    assert_eq!(field(&head, "Transfer-Encoding"), Some("chunked"), "{head}");
    assert!(field(&head, "Content-Length").is_none(), "{head}");
}

#[test]
fn extra_headers_and_the_subject_template_are_sent_and_as2_headers_cannot_be_replaced() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b, relay, daemon, as2_url) = relayed_pair(&fx, &[]);
    link(
        &fx,
        &a,
        &b,
        &as2_url,
        &[
            "--header",
            "X-Partner-Route: EDI-7",
            "--header",
            "X-Sender-Ref:  abc 123 ",
            "--subject",
            "Order {name} for {partner} from {station}",
        ],
    );
    let data = random_bytes(500);
    assert_eq!(
        send_through(&fx, &a, &b, "po-42.edi", &data),
        data,
        "{}",
        daemon.log()
    );
    let head = request_heads(&relay).pop().unwrap();
    assert_eq!(field(&head, "X-Partner-Route"), Some("EDI-7"), "{head}");
    assert_eq!(field(&head, "X-Sender-Ref"), Some("abc 123"), "{head}");
    let subject = format!("Order po-42.edi for {} from {}", a.partner, a.station);
    assert_eq!(field(&head, "Subject"), Some(subject.as_str()), "{head}");

    for bad in [
        "AS2-From: someone-else",
        "message-id: <x@y>",
        "Content-Length: 5",
        "X-Split: a\r\nAS2-To: evil",
        "No Colon",
        "Bad Name: x",
    ] {
        let out = fx.cli(&[
            "partner",
            "set",
            "--user",
            &a.user.name,
            &a.partner,
            "--header",
            bad,
        ]);
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
    let out = fx.cli(&[
        "partner",
        "set",
        "--user",
        &a.user.name,
        &a.partner,
        "--subject",
        "two\r\nlines",
    ]);
    assert!(
        !out.status.success(),
        "a subject with a line break was accepted"
    );
    let shown = fx.cli_ok(&["partner", "show", "--user", &a.user.name, &a.partner]);
    assert!(
        shown.contains("header:      X-Partner-Route: EDI-7"),
        "{shown}"
    );
}

#[test]
fn basic_auth_is_required_inbound_before_parsing_and_sent_outbound_without_being_stored() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let dir = fx.dir.clone();
    let password_file = dir.join("partner-password");
    std::fs::write(&password_file, "correct horse:battery\n").unwrap();
    let wrong_file = dir.join("wrong-password");
    std::fs::write(&wrong_file, "incorrect\n").unwrap();
    let pw = password_file.to_str().unwrap();
    // B requires A to authenticate; A sends no credentials at first.
    let (a, b, relay, daemon, as2_url) = relayed_pair(
        &fx,
        &[
            "--inbound-basic-auth-user",
            "station-a",
            "--inbound-basic-auth-password-file",
            pw,
        ],
    );
    link(&fx, &a, &b, &as2_url, &[]);
    let refused = send_until(&fx, &a, "no-creds.edi", b"x", "failed");
    assert!(
        refused.detail.as_deref().unwrap_or("").contains("HTTP 401"),
        "{refused:?}"
    );
    let answer = relay.wait_exchange("POST /as2 ").response_head();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(field(&answer, "WWW-Authenticate").is_some(), "{answer}");
    assert!(
        !daemon.log().contains("refused a message"),
        "the unauthenticated request was looked at:\n{}",
        daemon.log()
    );
    // Wrong password: refused as well.
    link(
        &fx,
        &a,
        &b,
        &as2_url,
        &[
            "--basic-auth-user",
            "station-a",
            "--basic-auth-password-file",
            wrong_file.to_str().unwrap(),
        ],
    );
    let wrong = send_until(&fx, &a, "wrong-creds.edi", b"x", "failed");
    assert!(
        wrong.detail.as_deref().unwrap_or("").contains("HTTP 401"),
        "{wrong:?}"
    );
    // The right ones: delivered, sent as a Basic header that is not in what is recorded.
    link(
        &fx,
        &a,
        &b,
        &as2_url,
        &[
            "--basic-auth-user",
            "station-a",
            "--basic-auth-password-file",
            pw,
        ],
    );
    let data = random_bytes(300);
    assert_eq!(
        send_through(&fx, &a, &b, "with-creds.edi", &data),
        data,
        "{}",
        daemon.log()
    );
    let head = request_heads(&relay).pop().unwrap();
    let expected = format!("Basic {}", base64_of(b"station-a:correct horse:battery"));
    assert_eq!(
        field(&head, "Authorization"),
        Some(expected.as_str()),
        "{head}"
    );
    let sent = fx
        .out_messages(&a.user)
        .into_iter()
        .find(|m| m.name == "with-creds.edi")
        .unwrap();
    let shown = fx.cli_ok(&["messages", "show", &sent.id.to_string()]);
    assert!(!shown.contains("correct horse"), "{shown}");
    assert!(
        !shown.to_ascii_lowercase().contains("authorization"),
        "{shown}"
    );
    let partner = fx.cli_ok(&[
        "partner",
        "show",
        "--user",
        &a.user.name,
        &a.partner,
        "--json",
    ]);
    assert!(!partner.contains("correct horse"), "{partner}");
}

fn base64_of(data: &[u8]) -> String {
    as2box::as2::encoding::base64_encode(data)
}

#[test]
fn as2_1_3_sends_as2_product_and_refuses_sha1_and_3des_both_ways() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b, relay, daemon, as2_url) = relayed_pair(&fx, &["--as2-version", "1.3"]);
    link(&fx, &a, &b, &as2_url, &["--as2-version", "1.3"]);
    let data = random_bytes(400);
    assert_eq!(
        send_through(&fx, &a, &b, "modern.edi", &data),
        data,
        "{}",
        daemon.log()
    );
    let head = request_heads(&relay).pop().unwrap();
    assert_eq!(field(&head, "AS2-Version"), Some("1.3"), "{head}");
    assert!(
        field(&head, "AS2-Product").is_some_and(|p| p.starts_with("as2box/")),
        "{head}"
    );
    // We do not send SHA-1 or 3DES to a 1.3 partner.
    for (settings, name) in [
        (["--sign", "sha1", "--encrypt", "aes256-cbc"], "sha1.edi"),
        (["--sign", "sha256", "--encrypt", "3des"], "3des.edi"),
    ] {
        let mut args = vec!["--as2-version", "1.3"];
        args.extend(settings);
        link(&fx, &a, &b, &as2_url, &args);
        let failed = send_until(&fx, &a, name, b"x", "failed");
        assert!(
            failed
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("AS2 1.3 does not allow"),
            "{failed:?}"
        );
    }
    // And refuse what a 1.2 sender signs with SHA-1: a negative MDN.
    link(
        &fx,
        &a,
        &b,
        &as2_url,
        &[
            "--as2-version",
            "1.2",
            "--sign",
            "sha1",
            "--encrypt",
            "aes256-cbc",
        ],
    );
    let refused = send_until(&fx, &a, "old.edi", b"x", "failed");
    assert!(
        refused
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("insufficient-message-security"),
        "{refused:?}\n{}",
        daemon.log()
    );
}

/// An HTTPS partner that insists on a client certificate issued as `client_cert` (itself,
/// self-signed): answers 200 to every request from such a client, and records the
/// client's subject; a handshake without one fails.
fn https_partner_requiring(
    server: (&std::path::Path, &std::path::Path),
    client_cert: &std::path::Path,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acceptor
        .set_private_key_file(server.1, SslFiletype::PEM)
        .unwrap();
    acceptor.set_certificate_chain_file(server.0).unwrap();
    acceptor.set_ca_file(client_cert).unwrap();
    acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    let acceptor = acceptor.build();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let clients: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = clients.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(mut tls) = acceptor.accept(tcp) else {
                continue;
            };
            let subject = tls
                .ssl()
                .peer_certificate()
                .map(|c| format!("{:?}", c.subject_name()))
                .unwrap_or_default();
            let mut got = Vec::new();
            let mut buf = [0u8; 16 << 10];
            // The head, then as many body bytes as it declares.
            let want = loop {
                let Ok(n) = tls.read(&mut buf) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = field(&text[..end + 2], "Content-Length")
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    break Some(end + 4 + len);
                }
            };
            while want.is_some_and(|w| got.len() < w) {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            seen.lock().unwrap().push(subject);
            let _ = tls.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
            let _ = tls.shutdown();
        }
    });
    (port, clients)
}

#[test]
fn a_tls_client_certificate_is_presented_to_a_partner_that_requires_one() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, b) = pair(&fx);
    let daemon = start_daemon(&fx);
    let (server_cert, server_key) = tls_pair(&fx.dir, "partner-server");
    let (client_cert, client_key) = tls_pair(&fx.dir, "our-client");
    let (port, clients) = https_partner_requiring((&server_cert, &server_key), &client_cert);
    let url = format!("https://127.0.0.1:{port}/as2");
    let trust = ["--trust-ca", server_cert.to_str().unwrap(), "--mdn", "none"];
    link(&fx, &a, &b, &url, &trust);
    // Without a client certificate the partner's server ends the handshake.
    let refused = send_until(&fx, &a, "no-client-cert.edi", b"x", "failed");
    assert!(clients.lock().unwrap().is_empty(), "{refused:?}");
    let mut with_identity = trust.to_vec();
    with_identity.extend([
        "--tls-client-cert",
        client_cert.to_str().unwrap(),
        "--tls-client-key",
        client_key.to_str().unwrap(),
    ]);
    link(&fx, &a, &b, &url, &with_identity);
    let shown = fx.cli_ok(&["partner", "show", "--user", &a.user.name, &a.partner]);
    assert!(shown.contains("tls client:  /"), "{shown}");
    send_until(&fx, &a, "with-client-cert.edi", b"x", "delivered");
    let seen = clients.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}\n{}", daemon.log());
    assert!(seen[0].contains("127.0.0.1"), "{seen:?}");
    // A key that does not belong to the certificate is refused when set.
    let out = fx.cli(&[
        "partner",
        "set",
        "--user",
        &a.user.name,
        &a.partner,
        "--tls-client-cert",
        client_cert.to_str().unwrap(),
        "--tls-client-key",
        server_key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}
