//! `as2box serve` against independent AS2 implementations, over real HTTP on 127.0.0.1:
//!
//! - we send, pyas2lib receives: files put into outboxes through the real mount (as the
//!   mailbox user) go out with a covering set of partner profiles (every signing digest,
//!   cipher, compression order, MDN mode and signed/unsigned MDN at least once, plus the
//!   default profile), and a folder goes out as one multi-attachment message;
//! - pyas2lib sends, we receive: every signing, encryption and compression option it has,
//!   sync/async and signed/unsigned MDNs, into each inbox layout and through a test
//!   partner (`/as2/test`);
//! - real captures: Mendelson AS2 and IBM Sterling B2B Integrator messages (and MDNs) from
//!   `$AS2BOX_VECTORS`, POSTed as captured.
//!
//! Needs root and /dev/fuse (tests/system/common), the interop venv with pyas2lib
//! (`scripts/setup-interop`) and the vector folder; with `AS2BOX_SYSTEM_TESTS` set a missing
//! prerequisite is a failure.

use crate::common;
use crate::common::as2 as as2_common;
use crate::common::daemon as daemon_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use as2_common::Peer;
use as2box::as2::certs::{KeyPair, ValidityPolicy};
use as2box::as2::mdn::{parse_mdn, Disposition, MicCheck};
use as2box::as2::message::{parse_message, split_http_capture, ReceiveContext, RequestInfo};
use as2box::as2::mime::canonicalize_crlf;
use as2box::as2::{As2Error, DispositionModifier};
use common::*;
use daemon_common::*;
use serde_json::json;

/// How long one message may take end to end (two cores shared with other test runs).
const WAIT: Duration = Duration::from_secs(60);

/// The station key pair as files: every station of these tests signs and decrypts with
/// the same pair, so one pyas2lib peer (which knows one partner certificate) talks to all.
struct KeyFiles {
    key: PathBuf,
    cert: PathBuf,
}

fn write_keypair(fx: &Fixture, name: &str, kp: &KeyPair) -> KeyFiles {
    let dir = fx.dir.join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join(format!("{name}.key.pem"));
    let cert = dir.join(format!("{name}.cert.pem"));
    std::fs::write(&key, kp.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(&cert, kp.cert.to_pem().unwrap()).unwrap();
    KeyFiles { key, cert }
}

/// A station of `user` with `layout` that uses `keys`.
fn station(fx: &Fixture, user: &User, id: Option<&str>, layout: &str, keys: &KeyFiles) -> String {
    let id = match id {
        Some(id) => {
            fx.cli_ok(&[
                "station",
                "add",
                "--user",
                &user.name,
                id,
                "--inbox-layout",
                layout,
            ]);
            id.to_string()
        }
        None => fx.add_station(user, Some(layout)),
    };
    fx.cli_ok(&[
        "station",
        "set",
        &id,
        "--key",
        &keys.key.display().to_string(),
        "--cert",
        &keys.cert.display().to_string(),
    ]);
    id
}

/// `partner set` with URL, certificate and the given extra options.
fn set_partner(
    fx: &Fixture,
    user: &User,
    id: &str,
    test: bool,
    url: &str,
    cert: &Path,
    opts: &[&str],
) {
    let cert = cert.display().to_string();
    let mut args = vec!["partner", "set", "--user", &user.name, id];
    if test {
        args.push("--test");
    }
    args.extend(["--url", url, "--cert", &cert]);
    args.extend(opts);
    fx.cli_ok(&args);
}

/// The pyas2lib peer with the test partner key, trusting `our` station certificate.
/// One user with a per-message station holding the test key, a running daemon, and the
/// pyas2lib peer to send to.
struct SendSide {
    user: User,
    station: String,
    peer_cert: PathBuf,
    daemon: Daemon,
    peer: Peer,
    peer_url: String,
}

fn send_side(fx: &Fixture, py: &Path) -> SendSide {
    let (ours, theirs) = as2_common::test_keys();
    let keys = write_keypair(fx, "station", ours);
    let peer_cert = write_keypair(fx, "peer", theirs).cert;
    let user = fx.add_user(None);
    let st = station(fx, &user, None, "per-message", &keys);
    let daemon = start_daemon(fx);
    let peer = start_peer(py);
    let peer_url = format!("http://127.0.0.1:{}/as2", peer.port);
    SendSide {
        user,
        station: st,
        peer_cert,
        daemon,
        peer,
        peer_url,
    }
}

fn start_peer(py: &Path) -> Peer {
    let (ours, theirs) = as2_common::test_keys();
    Peer::start(py, theirs, &ours.cert)
}

/// The events of a message (`messages show --json`): its states in order.
fn states(fx: &Fixture, id: i64) -> Vec<String> {
    let v = fx.cli_json(&["messages", "show", &id.to_string(), "--json"]);
    v["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["state"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn base64_std(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// The micalg spelling (RFC 5751) of our `--sign` values, as MICs are recorded.
fn micalg(sign: &str) -> String {
    sign.replace("sha", "sha-")
}

/// asn1crypto's names of our `--encrypt` values (the peer reads the CMS itself).
fn asn1_cipher(encrypt: &str) -> &'static str {
    match encrypt {
        "3des" => "tripledes_3key",
        "aes128-cbc" => "aes128_cbc",
        "aes192-cbc" => "aes192_cbc",
        "aes256-cbc" => "aes256_cbc",
        other => panic!("no asn1crypto name for {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// We send, pyas2lib receives
// ---------------------------------------------------------------------------------------

/// One partner profile: (sign, encrypt, compress, mdn, mdn-signed). `None` for the first:
/// the default profile of a new partner, left as it is.
type Profile = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// Each value of each option at least once; no full cross product.
const PROFILES: [Option<Profile>; 8] = [
    None, // default: sha256, aes256-cbc, no compression, sync signed MDN
    Some(("none", "none", "none", "none", "no")),
    Some(("sha1", "3des", "before-sign", "sync", "no")),
    Some(("sha384", "aes128-cbc", "after-sign", "async", "yes")),
    Some(("sha512", "aes192-cbc", "before-sign", "async", "no")),
    Some(("sha256", "none", "after-sign", "sync", "yes")),
    Some(("none", "aes256-cbc", "before-sign", "async", "yes")),
    Some(("sha512", "3des", "none", "none", "yes")),
];
const DEFAULT_PROFILE: Profile = ("sha256", "aes256-cbc", "none", "sync", "yes");

#[test]
fn we_send_pyas2lib_receives_every_profile_option_and_a_folder() {
    let Some(py) = as2_common::python() else {
        return;
    };
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let SendSide {
        user,
        station: st,
        peer_cert,
        daemon,
        mut peer,
        peer_url,
    } = send_side(&fx, &py);
    let mdn_url = daemon.url("/as2/mdn");

    // Async MDNs: PY3's is held by the peer until the message is seen awaiting it; PY4's
    // is POSTed before the peer answers the message's HTTP request (the daemon is still
    // `sending`); PY6's right after the answer, racing the daemon's processing of it.
    peer.command(&json!({"cmd": "hold_async_mdns", "as2_to": "PY3"}));
    peer.wait_event(|v| v["event"] == "holding");
    peer.command(&json!({"cmd": "async_mdn_before_answer", "as2_to": "PY4"}));
    peer.wait_event(|v| v["event"] == "mdn-first");

    // One partner per profile (pyas2lib answers whatever AS2-To says), all sent at once.
    let mut cases = Vec::new();
    for (i, p) in PROFILES.iter().enumerate() {
        let partner = format!("PY{i}");
        fx.add_partner_id(&user, &partner, false);
        let opts: Vec<&str> = match p {
            None => vec![],
            Some((s, e, c, m, ms)) => vec![
                "--sign",
                s,
                "--encrypt",
                e,
                "--compress",
                c,
                "--mdn",
                m,
                "--mdn-signed",
                ms,
            ],
        };
        set_partner(&fx, &user, &partner, false, &peer_url, &peer_cert, &opts);
        let mut data = random_bytes(20_000 + i * 1000);
        // Bare LF and CR: octet-stream must arrive byte for byte.
        data.extend_from_slice(b"UNB+UNOC:3\nline\r\nend\n");
        cases.push((partner, p.unwrap_or(DEFAULT_PROFILE), data));
    }
    // The partner folders exist once the CLI made the partners.
    for (partner, _, data) in &cases {
        let mb = fx.mailbox_of(&user, &st, partner, false);
        let name = format!("{partner}.bin");
        fx.as_user(&user, || {
            ok(ops::put(&mb.outbox().join(&name), data), "put")
        });
    }
    // A folder is one message with several attachments (multipart/related). Unsigned:
    // pyas2lib cannot verify a signed multipart/related (it walks the MIME tree and takes
    // the last part that is not the signature as the signed content, so the digest never
    // matches).
    fx.add_partner_id(&user, "PYDIR", false);
    set_partner(
        &fx,
        &user,
        "PYDIR",
        false,
        &peer_url,
        &peer_cert,
        &["--sign", "none", "--compress", "before-sign"],
    );
    let folder: Vec<(String, Vec<u8>)> = vec![
        ("first.edi".into(), random_bytes(5000)),
        (
            "second.xml".into(),
            b"<?xml version=\"1.0\"?>\n<po/>\n".to_vec(),
        ),
        ("third.bin".into(), random_bytes(12_345)),
    ];
    let dir_mb = fx.mailbox_of(&user, &st, "PYDIR", false);
    fx.as_user(&user, || {
        let batch = dir_mb.outbox().join("batch");
        ok(ops::mkdir(&batch), "mkdir batch");
        for (name, data) in &folder {
            ok(ops::put(&batch.join(name), data), "put into batch");
        }
        ok(
            ops::rename(&batch, &dir_mb.outbox().join("batch.ready")),
            "rename batch.ready",
        );
    });

    for (partner, (sign, encrypt, compress, mdn, mdn_signed), data) in &cases {
        let label = format!("{partner}: sign {sign}, encrypt {encrypt}, compress {compress}, mdn {mdn}, signed {mdn_signed}");
        let ev = peer.wait_event(|v| v["event"] == "received" && v["as2_to"] == partner.as_str());
        assert_eq!(ev["status"], "processed", "{label}: {ev}\n{}", daemon.log());
        assert_eq!(ev["as2_from"], st.as_str(), "{label}");
        assert_eq!(ev["signed"], *sign != "none", "{label}: {ev}");
        if *sign != "none" {
            assert_eq!(ev["digest_alg"], *sign, "{label}: {ev}");
        }
        assert_eq!(ev["encrypted"], *encrypt != "none", "{label}: {ev}");
        if *encrypt != "none" {
            assert_eq!(ev["cms_type"], "enveloped_data", "{label}: {ev}");
            assert_eq!(ev["cipher"], asn1_cipher(encrypt), "{label}: {ev}");
        }
        assert_eq!(ev["compressed"], *compress != "none", "{label}: {ev}");
        let payloads = ev["payloads"].as_array().unwrap();
        assert_eq!(payloads.len(), 1, "{label}: {ev}");
        assert_eq!(payloads[0]["filename"], format!("{partner}.bin"), "{label}");
        assert_eq!(payloads[0]["sha256"], sha256_hex(data), "{label}");
        let asynchronous = *mdn == "async";
        let held = partner == "PY3";
        if held {
            let mid = ev["message_id"].clone();
            peer.wait_event(|v| v["event"] == "mdn-held" && v["message_id"] == mid);
            wait_for(&format!("{label}: awaiting-mdn"), WAIT, || {
                fx.out_messages(&user)
                    .into_iter()
                    .find(|m| &m.partner == partner && m.state == "awaiting-mdn")
            });
            peer.command(&json!({"cmd": "release_async_mdns", "as2_to": partner}));
        }
        if asynchronous {
            assert_eq!(ev["mdn_url"], mdn_url.as_str(), "{label}: async MDN URL");
            let mid = ev["message_id"].clone();
            let posted = peer.wait_event(|v| v["event"] == "mdn-posted" && v["message_id"] == mid);
            assert_eq!(posted["url"], mdn_url.as_str(), "{label}");
            assert_eq!(posted["status"], 200, "{label}: {posted}");
        } else {
            assert!(ev["mdn_url"].is_null(), "{label}: {ev}");
        }
        let m = wait_for(&format!("{label}: delivered"), WAIT, || {
            fx.out_messages(&user)
                .into_iter()
                .find(|m| &m.partner == partner && m.state == "delivered")
        });
        assert_eq!(m.files.len(), 1, "{label}");
        assert_eq!(m.files[0].sha256, sha256_hex(data), "{label}");
        let detail = m.detail.clone().unwrap_or_default();
        match (*mdn, *sign) {
            ("none", _) => assert!(
                detail.contains("no receipt was requested"),
                "{label}: {detail}"
            ),
            // pyas2lib returns a MIC for signed messages only; it must be the one it computed.
            (_, "none") => assert!(detail.contains("returned no MIC"), "{label}: {detail}"),
            _ => {
                let mic = ev["mic"].as_str().expect("pyas2lib computed a MIC");
                assert!(
                    detail.contains(&format!("MIC {mic}, {}", micalg(sign)))
                        && detail.ends_with("matches ours"),
                    "{label}: {detail}"
                );
            }
        }
        if *mdn != "none" {
            let kind = if *mdn_signed == "yes" {
                "with a signed receipt"
            } else {
                "with an unsigned receipt"
            };
            assert!(detail.contains(kind), "{label}: {detail}");
        }
        let history = states(&fx, m.id);
        let want: &[&str] = if held {
            &["queued", "sending", "awaiting-mdn", "delivered"]
        } else if partner == "PY4" {
            // Settled by the MDN while sending; the late HTTP answer changes nothing.
            &["queued", "sending", "delivered"]
        } else if asynchronous {
            // Whether the daemon recorded awaiting-mdn before the MDN came is a race; the
            // MDN must count either way (it was lost before: see receive::async_mdn).
            if history.len() == 4 {
                &["queued", "sending", "awaiting-mdn", "delivered"]
            } else {
                &["queued", "sending", "delivered"]
            }
        } else {
            &["queued", "sending", "delivered"]
        };
        assert_eq!(history, want, "{label}");
    }

    // The folder: one message, three attachments with their names.
    let ev = peer.wait_event(|v| v["event"] == "received" && v["as2_to"] == "PYDIR");
    assert_eq!(ev["status"], "processed", "{ev}");
    assert!(
        ev["signed"] == false && ev["encrypted"] == true && ev["compressed"] == true,
        "{ev}"
    );
    let got: Vec<(String, String)> = ev["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["filename"].as_str().unwrap_or("").to_string(),
                p["sha256"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = folder
        .iter()
        .map(|(n, d)| (n.clone(), sha256_hex(d)))
        .collect();
    assert_eq!(
        got, want,
        "pyas2lib sees the folder's files as attachments: {ev}"
    );
    let m = wait_for("the folder message delivered", WAIT, || {
        fx.out_messages(&user)
            .into_iter()
            .find(|m| m.partner == "PYDIR" && m.state == "delivered")
    });
    assert_eq!(m.files.len(), 3);
    let detail = m.detail.unwrap_or_default();
    assert!(
        detail.contains("with a signed receipt") && detail.contains("returned no MIC"),
        "{detail}"
    );
    // Everything went out once: nine messages, all delivered.
    let out = fx.out_messages(&user);
    assert_eq!(out.len(), PROFILES.len() + 1, "{out:#?}");
    assert!(out.iter().all(|m| m.state == "delivered"), "{out:#?}");
}

#[test]
fn we_send_aes_gcm_which_pyas2lib_cannot_decrypt_and_the_message_fails_with_its_reason() {
    let Some(py) = as2_common::python() else {
        return;
    };
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let SendSide {
        user,
        station: st,
        peer_cert,
        daemon: _daemon,
        mut peer,
        peer_url,
    } = send_side(&fx, &py);
    fx.add_partner_id(&user, "PYGCM", false);
    set_partner(
        &fx,
        &user,
        "PYGCM",
        false,
        &peer_url,
        &peer_cert,
        &["--encrypt", "aes128-gcm"],
    );
    let mb = fx.mailbox_of(&user, &st, "PYGCM", false);
    let data = random_bytes(3000);
    fx.as_user(&user, || {
        ok(ops::put(&mb.outbox().join("gcm.bin"), &data), "put")
    });
    // pyas2lib decrypts EnvelopedData (CBC) only; AES-GCM comes as AuthEnvelopedData.
    let ev = peer.wait_event(|v| v["event"] == "received" && v["as2_to"] == "PYGCM");
    assert_eq!(ev["cms_type"], "authenticated_enveloped_data", "{ev}");
    assert_ne!(ev["status"], "processed", "{ev}");
    let m = wait_for("the GCM message failed", WAIT, || {
        fx.out_messages(&user)
            .into_iter()
            .find(|m| m.state == "failed")
    });
    let detail = m.detail.unwrap_or_default();
    assert!(detail.contains("decryption-failed"), "{detail}");
    let failed = mb.failed();
    let back = wait_for("gcm.bin in failed/", WAIT, || {
        fx.as_user(&user, || ops::read(&failed.join("gcm.bin")).ok())
    });
    assert_eq!(back, data);
}

// ---------------------------------------------------------------------------------------
// pyas2lib sends, we receive
// ---------------------------------------------------------------------------------------

/// One message from pyas2lib.
struct Inbound {
    sign: Option<&'static str>,
    encrypt: Option<&'static str>,
    compress: bool,
    mdn: &'static str,
    mdn_digest: Option<&'static str>,
    /// Index into the stations (per-message, prefixed, plain).
    station: usize,
    test: bool,
    text: bool,
    key_enc_alg: &'static str,
}

const fn inbound(
    sign: Option<&'static str>,
    encrypt: Option<&'static str>,
    compress: bool,
    mdn: &'static str,
    mdn_digest: Option<&'static str>,
    station: usize,
    test: bool,
) -> Inbound {
    Inbound {
        sign,
        encrypt,
        compress,
        mdn,
        mdn_digest,
        station,
        test,
        text: false,
        key_enc_alg: "rsaes_pkcs1v15",
    }
}

const LAYOUTS: [&str; 3] = ["per-message", "prefixed", "plain"];

#[test]
fn pyas2lib_sends_we_receive_into_every_layout_and_a_test_partner() {
    let Some(py) = as2_common::python() else {
        return;
    };
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (ours, theirs) = as2_common::test_keys();
    let keys = write_keypair(&fx, "station", ours);
    let peer_cert = write_keypair(&fx, "peer", theirs).cert;
    let user = fx.add_user(None);
    let stations: Vec<String> = LAYOUTS
        .iter()
        .map(|l| station(&fx, &user, None, l, &keys))
        .collect();
    let daemon = start_daemon(&fx);
    let mut peer = start_peer(&py);
    let peer_url = format!("http://127.0.0.1:{}/as2", peer.port);
    for test in [false, true] {
        let mut args = vec!["partner", "add", "--user", &user.name, "pyas2peer"];
        if test {
            args.push("--test");
        }
        fx.cli_ok(&args);
        // This partner trades every combination the matrix covers, plain AS2 included, and
        // asks for async MDNs at its own (loopback) address: its profile says so.
        let allow = format!("http://127.0.0.1:{}/", peer.mdn_port);
        let inbound = [
            "--require-signature",
            "no",
            "--require-encryption",
            "no",
            "--mdn-url-allow",
            &allow,
        ];
        set_partner(
            &fx,
            &user,
            "pyas2peer",
            test,
            &peer_url,
            &peer_cert,
            &inbound,
        );
    }
    let cases = [
        inbound(None, None, false, "sync", None, 0, false),
        Inbound {
            text: true,
            ..inbound(
                Some("sha1"),
                Some("tripledes_192_cbc"),
                true,
                "sync",
                Some("sha256"),
                1,
                false,
            )
        },
        inbound(
            Some("sha224"),
            Some("aes_128_cbc"),
            false,
            "async",
            Some("sha512"),
            2,
            false,
        ),
        inbound(
            Some("sha256"),
            Some("aes_192_cbc"),
            true,
            "async",
            None,
            0,
            true,
        ),
        inbound(
            Some("sha384"),
            Some("aes_256_cbc"),
            false,
            "none",
            None,
            1,
            true,
        ),
        inbound(Some("sha512"), None, true, "sync", Some("sha1"), 2, true),
        inbound(
            None,
            Some("aes_256_cbc"),
            true,
            "async",
            Some("sha256"),
            0,
            false,
        ),
        Inbound {
            key_enc_alg: "rsaes_oaep",
            ..inbound(
                Some("sha256"),
                Some("aes_128_cbc"),
                false,
                "sync",
                Some("sha384"),
                1,
                false,
            )
        },
    ];
    let mut delivered = 0;
    for (n, c) in cases.iter().enumerate() {
        let st = &stations[c.station];
        let (ct, data) = if c.text {
            (
                "application/edi-x12",
                b"ISA*00*          *00*\nGS*PO*A*B\nST*850*0001\n".repeat(30),
            )
        } else {
            ("application/octet-stream", random_bytes(9000 + n))
        };
        let name = format!("in{n}.dat");
        let label = format!(
            "#{n} sign {:?} encrypt {:?} compress {} mdn {} {:?} {} station {} test {}",
            c.sign,
            c.encrypt,
            c.compress,
            c.mdn,
            c.mdn_digest,
            c.key_enc_alg,
            LAYOUTS[c.station],
            c.test
        );
        let route = if c.test { "/as2/test" } else { "/as2" };
        let id = format!("job{n}");
        peer.command(&json!({
            "cmd": "send", "id": id, "url": daemon.url(route), "as2_to": st,
            "data_b64": base64_std(&data), "filename": name, "content_type": ct,
            "sign": c.sign, "encrypt": c.encrypt, "compress": c.compress,
            "mdn": c.mdn, "mdn_digest": c.mdn_digest, "key_enc_alg": c.key_enc_alg,
        }));
        let ev = peer.wait_event(|v| v["event"] == "sent" && v["id"] == id.as_str());
        assert!(ev.get("error").is_none(), "{label}: {ev}\n{}", daemon.log());
        if c.mdn != "none" {
            // pyas2lib verified our MDN (signed when asked) and found its MIC equal to the
            // one it computed ("processed/warning" otherwise).
            assert_eq!(
                ev["mdn_status"],
                "processed",
                "{label}: {ev}\n{}",
                daemon.log()
            );
            assert_eq!(ev["mdn_signed"], c.mdn_digest.is_some(), "{label}: {ev}");
            let returned = ev["mdn_mic"].as_str().expect("our MDN returns a MIC");
            // pyas2lib computes a MIC for signed messages only: ours must be that one.
            if let Some(sign) = c.sign {
                let mic = ev["mic"].as_str().unwrap();
                let want = format!("{mic}, {}", micalg(sign));
                assert_eq!(returned, want, "{label}");
            }
        }
        // pyas2lib canonicalizes text to CRLF when it signs, encrypts or compresses.
        let want = if c.text {
            canonicalize_crlf(&data)
        } else {
            data.clone()
        };
        let mb = fx.mailbox_of(&user, st, "pyas2peer", c.test);
        let inbox = mb.inbox();
        let path = wait_for(&format!("{label}: {name} in the inbox"), WAIT, || {
            fx.as_user(&user, || {
                files_in(&inbox).into_iter().find(|p| {
                    p.file_name()
                        .is_some_and(|f| f.to_string_lossy().ends_with(&name))
                })
            })
        });
        let got = fx.as_user(&user, || ok(ops::read(&path), "read delivered"));
        assert_eq!(sha256_hex(&got), sha256_hex(&want), "{label}");
        let rel: Vec<String> = path
            .strip_prefix(&inbox)
            .unwrap()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let layout_ok = match LAYOUTS[c.station] {
            "per-message" => rel.len() == 2 && stamp_like(&rel[0]) && rel[1] == name,
            "prefixed" => {
                rel.len() == 1
                    && rel[0].len() > 28
                    && stamp_like(&rel[0][..27])
                    && rel[0][27..] == format!("-{name}")
            }
            _ => rel == [name.clone()],
        };
        assert!(layout_ok, "{label}: delivered as inbox/{}", rel.join("/"));
        delivered += 1;
        let m = wait_for(&format!("{label}: recorded"), WAIT, || {
            fx.messages()
                .into_iter()
                .find(|m| m.direction == "in" && m.files.iter().any(|f| f.name == name))
        });
        assert_eq!(
            (m.station.as_str(), m.partner.as_str(), m.test),
            (st.as_str(), "pyas2peer", c.test),
            "{label}"
        );
        assert_eq!(m.user, user.name, "{label}");
        assert_eq!(m.files.len(), 1, "{label}");
        assert_eq!(m.files[0].sha256, sha256_hex(&want), "{label}");
    }

    // pyas2lib's RSASSA-PSS signatures carry no RSASSA-PSS-params (RFC 4056 §3 requires
    // them in CMS), so neither OpenSSL nor we can verify them: refused with
    // authentication-failed, nothing delivered.
    peer.command(&json!({
        "cmd": "send", "id": "pss", "url": daemon.url("/as2"), "as2_to": stations[2],
        "data_b64": base64_std(b"PSS"), "filename": "pss.dat", "content_type": "application/octet-stream",
        "sign": "sha256", "encrypt": "aes_256_cbc", "compress": false,
        "mdn": "sync", "mdn_digest": "sha256", "sign_alg": "rsassa_pss",
    }));
    let ev = peer.wait_event(|v| v["event"] == "sent" && v["id"] == "pss");
    assert_eq!(ev["mdn_detail"], "authentication-failed", "{ev}");
    let inbound: Vec<Message> = fx
        .messages()
        .into_iter()
        .filter(|m| m.direction == "in" && m.state != "refused")
        .collect();
    assert_eq!(inbound.len(), delivered, "{inbound:#?}");
    assert!(!inbound
        .iter()
        .any(|m| m.files.iter().any(|f| f.name == "pss.dat")));
}

/// pyas2lib sends four documents without a file name (no `Content-Disposition`) in quick
/// succession to a station with the `plain` inbox layout: all four are in the inbox, each
/// named after its Message-ID with an extension from its content type; none replaced
/// another.
#[test]
fn unnamed_attachments_never_replace_each_other_in_the_plain_layout() {
    let Some(py) = as2_common::python() else {
        return;
    };
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (ours, theirs) = as2_common::test_keys();
    let keys = write_keypair(&fx, "station", ours);
    let peer_cert = write_keypair(&fx, "peer", theirs).cert;
    let user = fx.add_user(None);
    let st = station(&fx, &user, None, "plain", &keys);
    let daemon = start_daemon(&fx);
    let mut peer = start_peer(&py);
    fx.cli_ok(&["partner", "add", "--user", &user.name, "pyas2peer"]);
    let peer_url = format!("http://127.0.0.1:{}/as2", peer.port);
    set_partner(&fx, &user, "pyas2peer", false, &peer_url, &peer_cert, &[]);
    let mut ids = Vec::new();
    for n in 0..4 {
        let id = format!("unnamed{n}");
        peer.command(&json!({
            "cmd": "send", "id": id, "url": daemon.url("/as2"), "as2_to": st,
            "data_b64": base64_std(format!("ISA*{n}").as_bytes()),
            "content_type": "application/edi-x12",
            "sign": "sha256", "encrypt": "aes_256_cbc", "mdn": "sync", "mdn_digest": "sha256",
        }));
        let ev = peer.wait_event(|v| v["event"] == "sent" && v["id"] == id.as_str());
        assert_eq!(ev["mdn_status"], "processed", "{ev}\n{}", daemon.log());
        ids.push(ev["message_id"].as_str().unwrap().to_owned());
    }
    let mb = fx.mailbox_of(&user, &st, "pyas2peer", false);
    let files = fx.as_user(&user, || files_in(&mb.inbox()));
    assert_eq!(files.len(), 4, "{files:?}");
    for (n, id) in ids.iter().enumerate() {
        let name = as2box::names::unnamed_attachment_name(
            id.trim_matches(['<', '>']),
            1,
            1,
            "application/edi-x12",
        );
        assert!(name.ends_with(".x12"), "{name}");
        let data = fx.as_user(&user, || ops::read(&mb.inbox().join(&name)));
        assert_eq!(
            data.ok(),
            Some(format!("ISA*{n}").into_bytes()),
            "{name} in {files:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Real captures: Mendelson AS2 and IBM Sterling B2B Integrator
// ---------------------------------------------------------------------------------------

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// POSTs a capture as captured (its header lines and body) to `url`. `Expect:
/// 100-continue` is left out: it is about the transport (this client sends the body at
/// once), as are Content-Length and Connection, which the client writes itself.
fn post_capture(url: &str, headers: &as2box::as2::Headers, body: &[u8]) -> as2_common::HttpMessage {
    let mut h = as2box::as2::Headers::new();
    for (k, v) in headers.iter() {
        if !k.eq_ignore_ascii_case("expect") && !k.eq_ignore_ascii_case("host") {
            h.push(k, v);
        }
    }
    as2_common::http_post(url, &h, body)
}

fn strip_cr(b: &[u8]) -> Vec<u8> {
    b.iter().copied().filter(|&c| c != b'\r').collect()
}

#[test]
fn mendelson_and_sterling_captures_are_accepted_or_refused_as_the_vectors_say() {
    let Some(vectors) = as2_common::vectors_dir() else {
        return;
    };
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let v = |name: &str| as2_common::vector(&vectors, name);
    // The receiver's key of the captures (AS2 id pyas2lib), as unencrypted PEM files.
    let receiver = KeyPair::load(&v("cert_test.p12"), Some("test")).expect("cert_test.p12");
    let keys = write_keypair(&fx, "pyas2lib", &receiver);
    let user = fx.add_user(None);
    station(&fx, &user, Some("pyas2lib"), "per-message", &keys);
    station(&fx, &user, Some("as2server"), "per-message", &keys);
    fx.cli_ok(&["partner", "add", "--user", &user.name, "mecas2"]);
    fx.cli_ok(&["partner", "add", "--user", &user.name, "SIAS2PRD"]);
    let nowhere = "http://127.0.0.1:9/as2";
    set_partner(
        &fx,
        &user,
        "mecas2",
        false,
        nowhere,
        &vectors.join("cert_mecas2_public.pem"),
        // The captures include an encrypted-only and a compressed-only message.
        &["--require-signature", "no", "--require-encryption", "no"],
    );
    set_partner(
        &fx,
        &user,
        "SIAS2PRD",
        false,
        nowhere,
        &vectors.join("cert_sb2bi_public.pem"),
        // Sterling's capture is signed and compressed, not encrypted.
        &["--require-encryption", "no"],
    );
    let daemon = start_daemon(&fx);
    let now = now_unix();
    let mecas2_certs = as2box::as2::certs::load_certificates(&v("cert_mecas2_public.pem")).unwrap();
    let payload = v("payload.txt");

    // Mendelson: signed, encrypted (bare payload), signed+encrypted, compressed (and
    // signed), compressed+signed+encrypted. Each asks for a sync unsigned MDN.
    let mb = fx.mailbox_of(&user, "pyas2lib", "mecas2", false);
    for (n, name) in [
        "mecas2_signed.as2",
        "mecas2_encrypted.as2",
        "mecas2_signed_encrypted.as2",
        "mecas2_compressed.as2",
        "mecas2_compressed_signed_encrypted.as2",
    ]
    .into_iter()
    .enumerate()
    {
        let (h, body) = split_http_capture(&v(name)).unwrap();
        let info = RequestInfo::from_headers(&h).unwrap();
        // What the pure core makes of it (tests/as2_vectors.rs checks that against the
        // README): the daemon must deliver the same bytes and return the same MIC.
        let ctx = ReceiveContext::new(
            std::slice::from_ref(&receiver),
            &mecas2_certs,
            ValidityPolicy::at(now),
        );
        let core = parse_message(&h, &body, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(core.attachments.len(), 1, "{name}");
        assert_eq!(
            strip_cr(&core.attachments[0].data),
            strip_cr(&payload),
            "{name}"
        );

        let resp = post_capture(&daemon.url("/as2"), &h, &body);
        assert_eq!(resp.status(), 200, "{name}: {resp:?}\n{}", daemon.log());
        let mdn = parse_mdn(
            &resp.headers,
            &resp.body,
            std::slice::from_ref(&receiver.cert),
            ValidityPolicy::at(now),
            false,
        )
        .unwrap_or_else(|e| panic!("{name}: our MDN does not parse: {e}"));
        assert!(!mdn.signed, "{name}: no signed MDN was asked for");
        assert_eq!(
            mdn.disposition,
            Disposition::Processed,
            "{name}: {}",
            mdn.text
        );
        assert_eq!(mdn.original_message_id, info.message_id, "{name}");
        assert_eq!(
            mdn.check_mic(std::slice::from_ref(&core.mic)),
            MicCheck::Match,
            "{name}: MDN MIC {:?}, core {:?}",
            mdn.mic,
            core.mic
        );
        // One more message in the inbox, with the payload.
        let inbox = mb.inbox();
        let files = wait_for(&format!("{name}: delivered"), WAIT, || {
            let f = fx.as_user(&user, || files_in(&inbox));
            (f.len() == n + 1).then_some(f)
        });
        let m = fx
            .messages()
            .into_iter()
            .filter(|m| m.direction == "in" && m.partner == "mecas2")
            .max_by_key(|m| m.id)
            .unwrap();
        assert_eq!(m.station, "pyas2lib");
        let sha = sha256_hex(&core.attachments[0].data);
        assert_eq!(m.files[0].sha256, sha, "{name}");
        let found = files.iter().any(|p| {
            fx.as_user(&user, || {
                ops::read(p).map(|d| sha256_hex(&d) == sha).unwrap_or(false)
            })
        });
        assert!(found, "{name}: payload not in the inbox: {files:?}");
    }

    // IBM Sterling: a signed, compressed message whose signer certificate expired in 2020.
    // The daemon checks certificates at the current time and has no "accept expired"
    // setting: it refuses with authentication-failed (never a silent pass), in a signed
    // MDN as asked, and delivers nothing.
    let (h, body) = split_http_capture(&v("sb2bi_signed_cmp.msg")).unwrap();
    let info = RequestInfo::from_headers(&h).unwrap();
    let sb2bi = as2box::as2::certs::load_certificates(&v("cert_sb2bi_public.pem")).unwrap();
    let strict = ReceiveContext::new(&[], &sb2bi, ValidityPolicy::at(now));
    let strict_err = parse_message(&h, &body, &strict).map(|_| ()).unwrap_err();
    assert!(
        matches!(strict_err, As2Error::CertificateNotValid(_)),
        "the refusal is about the expiry: {strict_err:?}"
    );
    let lenient = ReceiveContext::new(&[], &sb2bi, ValidityPolicy::accept_expired(now));
    parse_message(&h, &body, &lenient).expect("otherwise it verifies");
    let resp = post_capture(&daemon.url("/as2"), &h, &body);
    assert_eq!(resp.status(), 200, "{resp:?}");
    let mdn = parse_mdn(
        &resp.headers,
        &resp.body,
        std::slice::from_ref(&receiver.cert),
        ValidityPolicy::at(now),
        true,
    )
    .expect("a signed MDN that verifies");
    assert_eq!(mdn.original_message_id, info.message_id);
    assert_eq!(
        mdn.disposition,
        Disposition::Error(DispositionModifier::AuthenticationFailed),
        "{}",
        mdn.text
    );
    assert_eq!(mdn.check_mic(&[]), MicCheck::NotReturned);
    let sterling = fx.mailbox_of(&user, "as2server", "SIAS2PRD", false);
    assert!(fx.as_user(&user, || files_in(&sterling.inbox())).is_empty());
    // Nothing stored; the refusal is recorded, with its reason.
    let sterling_records: Vec<_> = fx
        .messages()
        .into_iter()
        .filter(|m| m.partner == "SIAS2PRD")
        .collect();
    assert_eq!(sterling_records.len(), 1, "{sterling_records:?}");
    assert_eq!(sterling_records[0].state, "refused", "{sterling_records:?}");

    // The captured MDNs answer messages this gateway never sent: they are read (not a
    // 400 "not a readable MDN") and answered 404, on /as2/mdn and on /as2 alike.
    for (name, path) in [
        ("mecas2_signed.mdn", "/as2/mdn"),
        ("mecas2_unsigned.mdn", "/as2"),
        ("sb2bi_signed.mdn", "/as2/mdn"),
    ] {
        let (h, body) = split_http_capture(&v(name)).unwrap();
        let unverified = parse_mdn(&h, &body, &[], ValidityPolicy::at(now), false).unwrap();
        let resp = post_capture(&daemon.url(path), &h, &body);
        let text = String::from_utf8_lossy(&resp.body);
        assert_eq!(resp.status(), 404, "{name}: {text}");
        assert!(
            text.contains(&unverified.original_message_id),
            "{name}: {text}"
        );
    }
}
