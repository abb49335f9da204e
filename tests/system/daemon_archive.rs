//! The non-repudiation archive through the real daemon against pyas2lib, both directions:
//! `as2box messages export` writes the raw request and MDN, the certificates and a
//! manifest, and an auditor re-verifies them with the `openssl` CLI alone (decrypt with the
//! key it was encrypted to, verify the signature with the signer's certificate, recompute
//! the MIC and compare it with the MIC the MDN returned). The archive goes when the message
//! record goes (`retention.messages_days`).
//!
//! Needs root and /dev/fuse (tests/common), the interop venv with pyas2lib
//! (`scripts/setup-interop`) and the `openssl` command.

use crate::common;
use crate::common::as2 as as2_common;
use crate::common::daemon as daemon_common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use as2_common::{sha256_hex, Peer};
use as2box::as2::certs::KeyPair;
use common::*;
use daemon_common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn pem_files(fx: &Fixture, name: &str, kp: &KeyPair) -> (PathBuf, PathBuf) {
    let dir = fx.dir.join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (
        dir.join(format!("{name}.key.pem")),
        dir.join(format!("{name}.cert.pem")),
    );
    std::fs::write(&key, kp.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(&cert, kp.cert.to_pem().unwrap()).unwrap();
    (key, cert)
}

/// A user with a station holding the test key pair, a partner `pyas2peer` (the peer's
/// certificate, signature and encryption required as by default), the daemon and the
/// peer. Returns (user, station, station key file, peer key file, daemon, peer).
struct Setup {
    user: User,
    station: String,
    station_key: PathBuf,
    peer_key: PathBuf,
    daemon: Daemon,
    peer: Peer,
}

fn setup(fx: &Fixture, py: &Path, extra_serve: &str) -> Setup {
    let (ours, theirs) = as2_common::test_keys();
    let (station_key, station_cert) = pem_files(fx, "station", ours);
    let (peer_key, peer_cert) = pem_files(fx, "peer", theirs);
    let user = fx.add_user(None);
    let station = fx.add_station(&user, Some("per-message"));
    fx.cli_ok(&[
        "station",
        "set",
        &station,
        "--key",
        &station_key.display().to_string(),
        "--cert",
        &station_cert.display().to_string(),
    ]);
    let daemon = start_daemon_with(fx, None, extra_serve);
    let peer = Peer::start(py, theirs, &ours.cert);
    fx.cli_ok(&["partner", "add", "--user", &user.name, "pyas2peer"]);
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &user.name,
        "pyas2peer",
        "--url",
        &format!("http://127.0.0.1:{}/as2", peer.port),
        "--cert",
        &peer_cert.display().to_string(),
    ]);
    Setup {
        user,
        station,
        station_key,
        peer_key,
        daemon,
        peer,
    }
}

fn openssl<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Output {
    let mut cmd = command("openssl");
    cmd.current_dir(dir).args(args);
    run_with_timeout(cmd, Duration::from_secs(60), "openssl")
}

fn openssl_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(dir: &Path, args: &[S]) -> String {
    let out = openssl(dir, args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn b64(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// The MIC of a signed MIME part as `openssl cms -verify -binary -out` wrote it: sha256
/// over its bytes, in base64 (RFC 4130 section 7.3.1).
fn mic_of(path: &Path) -> String {
    format!(
        "{}, sha-256",
        b64(&openssl::sha::sha256(&std::fs::read(path).unwrap()))
    )
}

/// The `Received-Content-MIC` of an MDN report as `openssl cms -verify` wrote it.
fn received_mic(report: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(report).unwrap()).into_owned();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("Received-Content-MIC")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Received-Content-MIC in the MDN report:\n{text}"))
}

/// A MIC as (base64 value, algorithm without dashes or case): `sha-256` and `sha256` are
/// the same algorithm, base64 is case-sensitive.
fn same_mic(v: &str) -> (String, String) {
    let (value, alg) = v.split_once(',').unwrap_or((v, ""));
    (
        value.trim().to_string(),
        alg.trim().replace('-', "").to_ascii_lowercase(),
    )
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// Verifying `<prefix>-signature.p7s` over `<prefix>-signed-content.mime` against `ca`.
fn detached(prefix: &str, ca: &str) -> Vec<String> {
    words(&format!("cms -verify -binary -inform DER -in {prefix}-signature.p7s -content {prefix}-signed-content.mime -CAfile {ca} -partial_chain -purpose any -out /dev/null"))
}

/// The signed part (byte for byte) and the signature (DER) of a multipart/signed entity.
fn split_signed(raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use as2box::as2::mime::{split_multipart, Entity};
    let e = Entity::parse(raw).unwrap();
    assert_eq!(e.media_type(), "multipart/signed");
    let boundary = e.content_type().param("boundary").unwrap().to_string();
    let parts = split_multipart(e.body(), &boundary).unwrap();
    let signature = Entity::parse(parts[1]).unwrap().decoded_body().unwrap();
    (parts[0].to_vec(), signature)
}

fn export(fx: &Fixture, id: i64, dir: &Path) -> Value {
    fx.cli_ok(&[
        "messages",
        "export",
        &id.to_string(),
        &dir.display().to_string(),
    ]);
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn sha256sum_check(dir: &Path) {
    let mut cmd = command("sha256sum");
    cmd.current_dir(dir).args(["-c", "SHA256SUMS"]);
    let out = run_with_timeout(cmd, Duration::from_secs(30), "sha256sum");
    assert!(
        out.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Sends one signed, encrypted message with a signed sync MDN from pyas2lib; returns the
/// message record once it is stored.
fn receive_one(fx: &Fixture, s: &mut Setup, id: &str, data: &[u8]) -> Message {
    s.peer.command(&json!({
        "cmd": "send", "id": id, "url": s.daemon.url("/as2"), "as2_to": s.station,
        "data_b64": b64(data), "filename": format!("{id}.edi"), "content_type": "application/octet-stream",
        "sign": "sha256", "encrypt": "aes_256_cbc", "compress": false,
        "mdn": "sync", "mdn_digest": "sha256",
    }));
    let ev = s.peer.wait_event(|v| v["event"] == "sent" && v["id"] == id);
    assert_eq!(ev["mdn_status"], "processed", "{ev}\n{}", s.daemon.log());
    wait_for("the received message", WAIT, || {
        fx.messages()
            .into_iter()
            .find(|m| m.direction == "in" && m.files.iter().any(|f| f.name == format!("{id}.edi")))
    })
}

#[test]
fn a_received_message_is_exported_and_an_auditor_reverifies_it_with_openssl() {
    let Some(py) = as2_common::python() else {
        return;
    };
    if as2_common::openssl_cli().is_none() {
        return;
    }
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mut s = setup(&fx, &py, "");
    let data = random_bytes(30_000);
    let m = receive_one(&fx, &mut s, "po1", &data);
    let dir = fx.dir.join("export-in");
    let manifest = export(&fx, m.id, &dir);

    sha256sum_check(&dir);
    let raw = std::fs::read(dir.join("request.raw")).unwrap();
    assert_eq!(
        manifest["captures"]["request"]["sha256"],
        sha256_hex(&raw),
        "{manifest:#}"
    );
    // Still encrypted: the payload is not in the archived request.
    assert!(!raw.windows(64).any(|w| data.windows(64).next() == Some(w)));

    // Decrypt with the station key, verify with the partner's certificate, MIC by hand.
    let key = s.station_key.display().to_string();
    openssl_ok(&dir, &words(&format!("cms -decrypt -binary -inform SMIME -in request.smime -inkey {key} -recip station.pem -out decrypted.mime")));
    let decrypted = std::fs::read(dir.join("decrypted.mime")).unwrap();
    assert_eq!(
        decrypted,
        std::fs::read(dir.join("request-decrypted.mime")).unwrap()
    );
    let signed = std::fs::read(dir.join("request-signed-content.mime")).unwrap();
    assert!(
        decrypted
            .windows(signed.len())
            .any(|w| w == signed.as_slice()),
        "the signed part is a part of what the auditor decrypted"
    );
    let verified = openssl_ok(&dir, &detached("request", "partner.pem"));
    assert!(verified.contains("Verification successful"), "{verified}");
    let ours = mic_of(&dir.join("request-signed-content.mime"));
    assert_eq!(
        manifest["mic"]["computed"][0],
        ours.as_str(),
        "{manifest:#}"
    );
    // A changed byte in the signed content no longer verifies.
    let mut tampered = signed.clone();
    let at = tampered.len() - 100;
    tampered[at] ^= 0x01;
    std::fs::write(dir.join("request-signed-content.mime"), tampered).unwrap();
    let out = openssl(&dir, &detached("request", "partner.pem"));
    assert!(!out.status.success(), "a tampered copy must not verify");
    std::fs::write(dir.join("request-signed-content.mime"), &signed).unwrap();

    // The MDN we answered: signed by the station, returning that MIC.
    let verified = openssl_ok(&dir, &words("cms -verify -inform SMIME -in mdn.smime -CAfile station.pem -partial_chain -purpose any -out mdn-report.txt"));
    assert!(verified.contains("Verification successful"), "{verified}");
    assert_eq!(received_mic(&dir.join("mdn-report.txt")), ours);
    assert_eq!(manifest["mic"]["in_mdn"], ours.as_str());
    assert_eq!(manifest["mic"]["match"], true, "{manifest:#}");

    // Which certificate verified what, as the auditor can check against the PEM files.
    let (ours_kp, theirs_kp) = as2_common::test_keys();
    let fp = |kp: &KeyPair| {
        kp.cert
            .digest(openssl::hash::MessageDigest::sha256())
            .unwrap()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let request = &manifest["captures"]["request"]["check"];
    assert_eq!(
        request["signature"]["verified_with"]["sha256_fingerprint"],
        fp(theirs_kp).as_str(),
        "{manifest:#}"
    );
    assert_eq!(request["attachments"][0]["sha256"], sha256_hex(&data));
    assert_eq!(
        manifest["captures"]["mdn"]["check"]["signature"]["verified_with"]["sha256_fingerprint"],
        fp(ours_kp).as_str(),
        "{manifest:#}"
    );

    // The folder is not empty now: refused without --force, replaced with it.
    let out = fx.cli(&[
        "messages",
        "export",
        &m.id.to_string(),
        &dir.display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.cli_ok(&[
        "messages",
        "export",
        &m.id.to_string(),
        &dir.display().to_string(),
        "--force",
    ]);
    sha256sum_check(&dir);
}

#[test]
fn a_sent_message_is_exported_and_an_auditor_reverifies_it_with_openssl() {
    let Some(py) = as2_common::python() else {
        return;
    };
    if as2_common::openssl_cli().is_none() {
        return;
    }
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let s = setup(&fx, &py, "");
    let data = random_bytes(25_000);
    let mb = fx.mailbox_of(&s.user, &s.station, "pyas2peer", false);
    fx.as_user(&s.user, || {
        ok(ops::put(&mb.outbox().join("invoice.bin"), &data), "put")
    });
    let m = wait_for("the sent message delivered", WAIT, || {
        fx.out_messages(&s.user)
            .into_iter()
            .find(|m| m.name == "invoice.bin" && m.state == "delivered")
    });
    let dir = fx.dir.join("export-out");
    let manifest = export(&fx, m.id, &dir);
    sha256sum_check(&dir);

    // The partner's MDN: verifies with its certificate and returns the MIC we computed.
    let verified = openssl_ok(&dir, &words("cms -verify -inform SMIME -in mdn.smime -CAfile partner.pem -partial_chain -purpose any -out mdn-report.txt"));
    assert!(verified.contains("Verification successful"), "{verified}");
    let returned = received_mic(&dir.join("mdn-report.txt"));
    assert_eq!(
        same_mic(manifest["mic"]["in_mdn"].as_str().unwrap_or("")),
        same_mic(&returned),
        "{manifest:#}"
    );
    assert_eq!(manifest["mic"]["match"], true, "{manifest:#}");
    // The request as we POSTed it: the partner's key opens it, our certificate verifies it,
    // and what we signed has the MIC the partner returned. The auditor splits the
    // multipart/signed with any MIME tool (OpenSSL's S/MIME reader rewrites line ends in a
    // binary part) and verifies the detached signature.
    let key = s.peer_key.display().to_string();
    openssl_ok(
        &dir,
        &words(&format!(
            "cms -decrypt -binary -inform SMIME -in request.smime -inkey {key} -out decrypted.mime"
        )),
    );
    let decrypted = std::fs::read(dir.join("decrypted.mime")).unwrap();
    let (signed, signature) = split_signed(&decrypted);
    std::fs::write(dir.join("mine-signed-content.mime"), &signed).unwrap();
    std::fs::write(dir.join("mine-signature.p7s"), &signature).unwrap();
    let verified = openssl_ok(&dir, &detached("mine", "station.pem"));
    assert!(verified.contains("Verification successful"), "{verified}");
    assert!(
        signed.windows(data.len()).any(|w| w == data.as_slice()),
        "the signed content holds the payload"
    );
    let mic = mic_of(&dir.join("mine-signed-content.mime"));
    assert_eq!(same_mic(&returned), same_mic(&mic));
    assert_eq!(
        same_mic(manifest["mic"]["computed"][0].as_str().unwrap_or("")),
        same_mic(&mic),
        "{manifest:#}"
    );
}

#[test]
fn the_archive_goes_when_the_message_record_goes() {
    let Some(py) = as2_common::python() else {
        return;
    };
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mut s = setup(&fx, &py, "");
    let m = receive_one(&fx, &mut s, "old1", &random_bytes(10_000));
    let dir = fx.dir.join("export-retention");
    let manifest = export(&fx, m.id, &dir);
    let blobs: Vec<PathBuf> = ["request", "mdn"]
        .iter()
        .map(|k| {
            let sha = manifest["captures"][k]["sha256"]
                .as_str()
                .unwrap()
                .to_string();
            fx.state_dir.join("blobs").join(&sha[..2]).join(&sha)
        })
        .collect();
    for b in &blobs {
        assert!(b.exists(), "{} archived", b.display());
    }
    // Old enough for the blob sweep (which spares blobs younger than 10 minutes) ...
    let old = (std::time::SystemTime::now() - Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for b in &blobs {
        let mut cmd = command("touch");
        cmd.args(["-d", &format!("@{old}")]).arg(b);
        assert!(run_with_timeout(cmd, Duration::from_secs(10), "touch")
            .status
            .success());
    }
    // ... but referenced by the record: the sweep (and the 48 h file retention) keeps them.
    let out = fx.cli_ok(&["gc"]);
    assert!(out.contains("0 message record(s)"), "{out}");
    assert!(blobs.iter().all(|b| b.exists()));
    // ... and a record older than retention.messages_days.
    let mut config = std::fs::read_to_string(&fx.config).unwrap();
    config += "\n[retention]\nmessages_days = 0.00001\n";
    std::fs::write(&fx.config, config).unwrap();
    wait_for("the record swept", WAIT, || {
        fx.cli_ok(&["gc"]);
        (!fx.messages().iter().any(|x| x.id == m.id)).then_some(())
    });
    for b in &blobs {
        assert!(!b.exists(), "{} removed with the record", b.display());
    }
    let out = fx.cli(&[
        "messages",
        "export",
        &m.id.to_string(),
        &fx.dir.join("export-gone").display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no message"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn async_mdns_are_archived_both_ways() {
    let Some(py) = as2_common::python() else {
        return;
    };
    if as2_common::openssl_cli().is_none() {
        return;
    }
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mut s = setup(&fx, &py, "");
    let (_, peer_cert) = pem_files(&fx, "peer", &as2_common::test_keys().1);
    // We send, the partner's MDN comes later in its own POST.
    fx.add_partner_id(&s.user, "PYASYNC", false);
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &s.user.name,
        "PYASYNC",
        "--url",
        &format!("http://127.0.0.1:{}/as2", s.peer.port),
        "--cert",
        &peer_cert.display().to_string(),
        "--mdn",
        "async",
    ]);
    let mb = fx.mailbox_of(&s.user, &s.station, "PYASYNC", false);
    fx.as_user(&s.user, || {
        ok(
            ops::put(&mb.outbox().join("late.bin"), &random_bytes(5000)),
            "put",
        )
    });
    let sent = wait_for("the async MDN settles the message", WAIT, || {
        fx.out_messages(&s.user)
            .into_iter()
            .find(|m| m.name == "late.bin" && m.state == "delivered")
    });
    let dir = fx.dir.join("export-async-out");
    let manifest = export(&fx, sent.id, &dir);
    assert_eq!(manifest["mic"]["match"], true, "{manifest:#}");
    let verified = openssl_ok(&dir, &words("cms -verify -inform SMIME -in mdn.smime -CAfile partner.pem -partial_chain -purpose any -out mdn-report.txt"));
    assert!(verified.contains("Verification successful"), "{verified}");

    // The partner sends and asks for its MDN at its own (loopback) address.
    let allow = format!("http://127.0.0.1:{}/", s.peer.mdn_port);
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &s.user.name,
        "pyas2peer",
        "--mdn-url-allow",
        &allow,
    ]);
    s.peer.command(&json!({
        "cmd": "send", "id": "asyncin", "url": s.daemon.url("/as2"), "as2_to": s.station,
        "data_b64": b64(b"ISA*00*async~"), "filename": "asyncin.edi",
        "content_type": "application/edi-x12", "sign": "sha256", "encrypt": "aes_256_cbc",
        "compress": false, "mdn": "async", "mdn_digest": "sha256",
    }));
    let ev = s
        .peer
        .wait_event(|v| v["event"] == "sent" && v["id"] == "asyncin");
    assert_eq!(ev["mdn_status"], "processed", "{ev}\n{}", s.daemon.log());
    let received = wait_for("the received message", WAIT, || {
        fx.messages()
            .into_iter()
            .find(|m| m.direction == "in" && m.files.iter().any(|f| f.name == "asyncin.edi"))
    });
    let dir = fx.dir.join("export-async-in");
    let manifest = export(&fx, received.id, &dir);
    assert_eq!(manifest["mic"]["match"], true, "{manifest:#}");
    let verified = openssl_ok(&dir, &words("cms -verify -inform SMIME -in mdn.smime -CAfile station.pem -partial_chain -purpose any -out mdn-report.txt"));
    assert!(verified.contains("Verification successful"), "{verified}");
    assert_eq!(
        received_mic(&dir.join("mdn-report.txt")),
        manifest["mic"]["computed"][0].as_str().unwrap()
    );
}
