//! What `as2box serve` puts on the wire, read from raw bytes: every connection between two
//! stations runs through a recording TCP relay, so the tests see exactly what a partner's
//! server receives (our AS2 requests, our async MDN POSTs) and what a partner's client reads
//! (our sync MDN responses). Header names in their canonical case (issue 13, item 1) and
//! the per-partner switches of `partner set` (issue 13, item 5).
//!
//! Needs root and /dev/fuse like the other system tests (see tests/common).

mod common;
mod daemon_common;

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

/// `from`'s partner entry: `to`'s station behind `url`, with `extra` settings.
fn link(fx: &Fixture, from: &Mailbox, to: &Mailbox, url: &str, extra: &[&str]) {
    let cert = station_cert(fx, &to.station).display().to_string();
    let mut args = vec![
        "partner",
        "set",
        "--user",
        &from.user.name,
        &from.partner,
        "--url",
        url,
        "--cert",
        &cert,
    ];
    args.extend_from_slice(extra);
    fx.cli_ok(&args);
}

/// Two stations that are each other's partners, every connection between them through one
/// relay in front of the daemon: (A, B, relay, daemon).
fn relayed_pair(fx: &Fixture) -> (Mailbox, Mailbox, Relay, Daemon) {
    let (a, b) = pair(fx);
    let port = free_port();
    let relay = Relay::to_port(port);
    let daemon = start_behind(fx, port, &relay);
    (a, b, relay, daemon)
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
    let (a, b, relay, daemon) = relayed_pair(&fx);
    let as2_url = relay.url("/as2");
    link(&fx, &a, &b, &as2_url, &["--mdn", "sync"]);
    link(&fx, &b, &a, &as2_url, &[]);
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
