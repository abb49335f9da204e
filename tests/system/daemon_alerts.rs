//! Alerts through the real daemon: a webhook receiver on loopback gets each kind (a message
//! that failed, an inbound message refused, an MDN that did not come in time, a station
//! certificate that expires within 30 days), a command alert writes them to a file,
//! `/metrics` counts them, `as2box alerts test` says whether its alert was delivered, and
//! the queue stays bounded (oldest dropped, counted) while the receiver is down, without
//! holding up the daemon.
//!
//! Needs root and /dev/fuse (tests/common).

use crate::common;
use crate::common::as2 as as2_common;
use crate::common::daemon as daemon_common;

use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use as2box::as2::Headers;
use common::*;
use daemon_common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Answers every request on `listener` with 200 and hands each body on (as JSON when it
/// is JSON, else `null`).
fn receiver(listener: TcpListener) -> Receiver<Value> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Ok(req) = as2_common::read_http(&mut stream) else {
                continue;
            };
            let _ = as2_common::write_http(&mut stream, "HTTP/1.1 200 OK", &Headers::new(), b"ok");
            if tx
                .send(serde_json::from_slice(&req.body).unwrap_or(Value::Null))
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Collects what `rx` receives until `done` says it is enough.
fn collect(rx: &Receiver<Value>, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => got.push(v),
            Err(_) => panic!("{what}: only received {got:#?}"),
        }
    }
    got
}

fn kinds(alerts: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = alerts
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or("").to_string())
        .collect();
    k.sort();
    k.dedup();
    k
}

/// An unsigned, unencrypted AS2 request "from" `partner`.
fn unsigned(partner: &str, station: &str, n: usize) -> (Headers, Vec<u8>) {
    let mut h = Headers::new();
    h.push("AS2-Version", "1.2");
    h.push("AS2-From", partner);
    h.push("AS2-To", station);
    h.push("Message-ID", format!("<forged-{n}@alerts.test>"));
    h.push("MIME-Version", "1.0");
    h.push("Content-Type", "application/edi-x12");
    (h, b"ISA*00*forged~".to_vec())
}

fn append_config(fx: &Fixture, text: &str) {
    let mut config = std::fs::read_to_string(&fx.config).unwrap();
    config += text;
    std::fs::write(&fx.config, config).unwrap();
}

fn metric(daemon: &Daemon, line_start: &str) -> u64 {
    let m = daemon.get("/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{m}"))
}

#[test]
fn each_kind_of_alert_reaches_the_webhook_and_the_command() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (hook, hook_port) = as2_common::listen();
    let alerts = receiver(hook);
    let (sink, sink_port) = as2_common::listen();
    let _sink = receiver(sink);
    let written = fx.dir.join("alerts.jsonl");
    append_config(
        &fx,
        &format!(
            "\n[alerts]\nwebhook_url = \"http://127.0.0.1:{hook_port}/hook\"\ncommand = [\"/usr/bin/tee\", \"-a\", {:?}]\nretry_base_secs = 0.1\n[alerts.webhook_headers]\nAuthorization = \"Bearer test\"\n",
            written.display().to_string()
        ),
    );

    let user = fx.add_user(None);
    let station = fx.add_station(&user, None);
    // A station certificate that expires in 10 days.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expiring = as2_common::make_keypair_valid("EXPIRING", now - 86_400, now + 10 * 86_400);
    let (key, cert) = (fx.dir.join("expiring.key"), fx.dir.join("expiring.pem"));
    std::fs::write(&key, expiring.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(&cert, expiring.cert.to_pem().unwrap()).unwrap();
    let expiring_station = fx.add_station(&user, None);
    fx.cli_ok(&[
        "station",
        "set",
        &expiring_station,
        "--key",
        &key.display().to_string(),
        "--cert",
        &cert.display().to_string(),
    ]);
    // A partner without a URL (sending fails at once), one that never sends its async
    // MDN, one without a certificate (what it sends is refused).
    fx.add_partner_id(&user, "NOURL", false);
    fx.add_partner_id(&user, "SILENT", false);
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &user.name,
        "SILENT",
        "--url",
        &format!("http://127.0.0.1:{sink_port}/as2"),
        "--sign",
        "none",
        "--encrypt",
        "none",
        "--mdn",
        "async",
        "--mdn-signed",
        "no",
    ]);
    fx.add_partner_id(&user, "FORGER", false);
    let daemon = start_daemon_with(&fx, None, "async_mdn_timeout_secs = 1\n");

    for partner in ["NOURL", "SILENT"] {
        let mb = fx.mailbox_of(&user, &station, partner, false);
        fx.as_user(&user, || {
            ok(ops::put(&mb.outbox().join("order.edi"), b"ISA*00~"), "put")
        });
    }
    let (h, body) = unsigned("FORGER", &station, 1);
    let answer = as2_common::http_post(&daemon.url("/as2"), &h, &body);
    assert_ne!(answer.status(), 0);

    let want = [
        "certificate-expiring",
        "inbound-refused",
        "mdn-timeout",
        "message-failed",
    ];
    let got = collect(&alerts, "the four kinds of alerts", |a| kinds(a) == want);
    let by_kind = |k: &str| got.iter().find(|a| a["kind"] == k).unwrap().clone();
    let cert_alert = by_kind("certificate-expiring");
    assert_eq!(
        cert_alert["certificate"]["owner"]["as2_id"],
        expiring_station.as_str(),
        "{cert_alert:#}"
    );
    assert!(
        (9..=10).contains(&cert_alert["certificate"]["days_left"].as_i64().unwrap()),
        "{cert_alert:#}"
    );
    let refused = by_kind("inbound-refused");
    assert_eq!(refused["message"]["partner"], "FORGER");
    assert_eq!(refused["message"]["as2_message_id"], "forged-1@alerts.test");
    let failed = by_kind("message-failed");
    assert_eq!(failed["message"]["partner"], "NOURL", "{failed:#}");
    assert_eq!(failed["message"]["name"], "order.edi", "{failed:#}");
    assert!(
        failed["reason"].as_str().unwrap().starts_with("Not sent"),
        "{failed:#}"
    );
    assert_eq!(by_kind("mdn-timeout")["message"]["partner"], "SILENT");
    assert!(by_kind("mdn-timeout")["reason"]
        .as_str()
        .unwrap()
        .contains("No receipt"));

    // The command got the same, one JSON object each on stdin.
    let from_command = wait_for("the command's file holds the four kinds", WAIT, || {
        let data = std::fs::read(&written).ok()?;
        let objects: Vec<Value> = serde_json::Deserializer::from_slice(&data)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .ok()?;
        (kinds(&objects) == want).then_some(objects)
    });
    assert_eq!(from_command.len(), got.len(), "{from_command:#?}");

    for k in want {
        assert_eq!(
            metric(&daemon, &format!("as2box_alerts_total{{kind=\"{k}\"}}")),
            1,
            "{k}"
        );
    }
    assert_eq!(metric(&daemon, "as2box_alerts_dropped_total"), 0);

    // `as2box alerts test`: delivered to both, and says so.
    let out = fx.cli_ok(&["alerts", "test"]);
    assert!(
        out.contains("webhook delivered") && out.contains("command delivered"),
        "{out}"
    );
    let test = collect(&alerts, "the test alert", |a| !a.is_empty());
    assert_eq!(test[0]["kind"], "test");
}

#[test]
fn alerts_test_says_when_nothing_took_the_alert() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let out = fx.cli(&["alerts", "test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("no webhook_url or command"), "{err}");
    let closed = free_port();
    append_config(
        &fx,
        &format!("\n[alerts]\nwebhook_url = \"http://127.0.0.1:{closed}/hook\"\ncommand = [\"/bin/false\"]\n"),
    );
    let out = fx.cli(&["alerts", "test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("webhook NOT delivered") && err.contains("command NOT delivered"),
        "{err}"
    );
}

#[test]
fn the_alert_queue_stays_bounded_while_the_receiver_is_down() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    // Nothing listens there yet.
    let hook_port = free_port();
    append_config(
        &fx,
        &format!("\n[alerts]\nwebhook_url = \"http://127.0.0.1:{hook_port}/hook\"\nqueue_size = 3\nmax_attempts = 1000\nretry_base_secs = 0.1\n"),
    );
    let user = fx.add_user(None);
    let station = fx.add_station(&user, None);
    fx.add_partner_id(&user, "FORGER", false);
    let daemon = start_daemon(&fx);
    // Each refusal raises an alert; the daemon answers each at once all the same.
    for n in 1..=20 {
        let (h, body) = unsigned("FORGER", &station, n);
        let started = Instant::now();
        let answer = as2_common::http_post(&daemon.url("/as2"), &h, &body);
        assert_ne!(answer.status(), 0);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusal #{n} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        metric(&daemon, "as2box_alerts_total{kind=\"inbound-refused\"}"),
        20
    );
    // One is being retried, three wait, the rest were dropped (oldest first).
    let dropped = metric(&daemon, "as2box_alerts_dropped_total");
    assert!((16..=17).contains(&dropped), "dropped {dropped}");

    // The receiver comes back: it gets what was kept, the newest refusals among them.
    let listener = TcpListener::bind(("127.0.0.1", hook_port)).unwrap();
    let alerts = receiver(listener);
    let got = collect(&alerts, "the kept alerts", |a| {
        a.iter()
            .any(|v| v["message"]["as2_message_id"] == "forged-20@alerts.test")
    });
    assert!(got.len() <= 4, "{got:#?}");
    let ids: Vec<&str> = got
        .iter()
        .filter_map(|a| a["message"]["as2_message_id"].as_str())
        .collect();
    for n in [18, 19, 20] {
        let id = format!("forged-{n}@alerts.test");
        assert!(ids.contains(&id.as_str()), "{ids:?}");
    }
    assert!(
        !ids.contains(&"forged-10@alerts.test"),
        "an old alert was dropped: {ids:?}"
    );
}
