//! Interop with pyas2lib (an independent implementation) over real HTTP on
//! 127.0.0.1: both directions, every combination pyas2lib supports, MICs
//! agreeing, MDNs verifying both ways.

use crate::common::as2 as as2_common;

use as2_common::{http_post, listen, read_http, sha256_hex, test_keys, write_http, Peer, NOW};
use as2box::as2::certs::ValidityPolicy;
use as2box::as2::headers::Headers;
use as2box::as2::mdn::{build_mdn, parse_mdn, Disposition, MdnParams, MicCheck};
use as2box::as2::message::{
    build_message, parse_message, Attachment, CompressionOrder, MdnMode, ReceiveContext,
    SendProfile,
};
use as2box::as2::mime::canonicalize_crlf;
use as2box::as2::{DigestAlgorithm, EncryptionAlgorithm};
use serde_json::json;
use std::sync::mpsc::channel;
use std::time::Duration;

const DIGESTS: [Option<DigestAlgorithm>; 6] = [
    None,
    Some(DigestAlgorithm::Sha1),
    Some(DigestAlgorithm::Sha224),
    Some(DigestAlgorithm::Sha256),
    Some(DigestAlgorithm::Sha384),
    Some(DigestAlgorithm::Sha512),
];
/// pyas2lib decrypts 3DES and AES-CBC only (no GCM).
const CIPHERS: [Option<EncryptionAlgorithm>; 5] = [
    None,
    Some(EncryptionAlgorithm::TripleDes),
    Some(EncryptionAlgorithm::Aes128Cbc),
    Some(EncryptionAlgorithm::Aes192Cbc),
    Some(EncryptionAlgorithm::Aes256Cbc),
];

fn text_payload() -> Vec<u8> {
    b"ISA*00*          *00*          *ZZ*AS2BOX\nGS*PO*A*B\nST*850*0001\n".repeat(20)
}

fn binary_payload() -> Vec<u8> {
    (0..7000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn we_send_pyas2lib_receives_every_combination() {
    let Some(py) = as2_common::python() else {
        return;
    };
    let (ours, theirs) = test_keys();
    let mut peer = Peer::start(&py, theirs, &ours.cert);
    let url = format!("http://127.0.0.1:{}/as2", peer.port);
    let (async_listener, async_port) = listen();
    let async_url = format!("http://127.0.0.1:{async_port}/mdn");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for s in async_listener.incoming() {
            let Ok(mut s) = s else { break };
            let req = read_http(&mut s).expect("read async MDN");
            write_http(&mut s, "HTTP/1.1 200 OK", &Headers::new(), b"").ok();
            if tx.send(req).is_err() {
                break;
            }
        }
    });
    let mut n = 0;
    let mut mdn_kinds = std::collections::HashSet::new();
    for (i, digest) in DIGESTS.iter().enumerate() {
        for (j, cipher) in CIPHERS.iter().enumerate() {
            for compress in [
                None,
                Some(CompressionOrder::BeforeSigning),
                Some(CompressionOrder::AfterSigning),
            ] {
                if compress == Some(CompressionOrder::AfterSigning) && digest.is_none() {
                    continue; // same as BeforeSigning without a signature
                }
                for signed_mdn in [false, true] {
                    n += 1;
                    let asynchronous = (i + j + n) % 4 == 0;
                    let binary = n % 2 == 0;
                    mdn_kinds.insert((signed_mdn, asynchronous));
                    let (ct, data) = if binary {
                        ("application/octet-stream", binary_payload())
                    } else {
                        ("application/edi-x12", text_payload())
                    };
                    let mut p = SendProfile::new("as2box", "pyas2peer");
                    p.sign = *digest;
                    p.encrypt = *cipher;
                    p.compress = compress;
                    p.signed_mdn_micalgs = if signed_mdn {
                        vec![DigestAlgorithm::Sha256]
                    } else {
                        vec![]
                    };
                    p.mdn = if asynchronous {
                        MdnMode::Async(async_url.clone())
                    } else {
                        MdnMode::Sync
                    };
                    let att = Attachment {
                        filename: Some(format!("file{n}.dat")),
                        content_type: ct.into(),
                        data: data.clone(),
                    };
                    let m = build_message(&[att], &p, Some(ours), Some(&theirs.cert), NOW, None)
                        .unwrap();
                    as2_common::save_seed("parse_message", &m.headers, &m.body);
                    let label = format!("{digest:?} {cipher:?} {compress:?} signed_mdn={signed_mdn} async={asynchronous} binary={binary}");
                    let resp = http_post(&url, &m.headers, &m.body);
                    assert_eq!(resp.status(), 200, "{label}");
                    let mdn_msg = if asynchronous {
                        assert!(
                            resp.body.is_empty(),
                            "{label}: async MDN must not come in the response"
                        );
                        rx.recv_timeout(Duration::from_secs(120))
                            .expect("async MDN")
                    } else {
                        resp
                    };
                    as2_common::save_seed("parse_mdn", &mdn_msg.headers, &mdn_msg.body);
                    let mdn = parse_mdn(
                        &mdn_msg.headers,
                        &mdn_msg.body,
                        std::slice::from_ref(&theirs.cert),
                        ValidityPolicy::at(NOW),
                        signed_mdn,
                    )
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                    assert_eq!(mdn.signed, signed_mdn, "{label}");
                    assert_eq!(mdn.original_message_id, m.message_id, "{label}");
                    assert_eq!(
                        mdn.disposition,
                        Disposition::Processed,
                        "{label}: {}",
                        mdn.text
                    );
                    // pyas2lib returns a MIC for signed messages only.
                    let want = if digest.is_some() {
                        MicCheck::Match
                    } else {
                        MicCheck::NotReturned
                    };
                    assert_eq!(mdn.check_mic(&m.acceptable_mics()), want, "{label}");

                    let mid = m.message_id.clone();
                    let ev = peer.wait_event(|v| {
                        v["event"] == "received" && v["message_id"] == mid.as_str()
                    });
                    assert_eq!(ev["status"], "processed", "{label}: {ev}");
                    assert_eq!(ev["signed"], digest.is_some(), "{label}");
                    assert_eq!(ev["encrypted"], cipher.is_some(), "{label}");
                    assert_eq!(ev["compressed"], compress.is_some(), "{label}");
                    if let Some(d) = digest {
                        assert_eq!(
                            ev["mic"],
                            m.mic.as_ref().unwrap().digest_b64.as_str(),
                            "{label}"
                        );
                        assert_eq!(ev["digest_alg"], d.compact_name(), "{label}");
                    }
                    let sent = if binary {
                        data.clone()
                    } else {
                        canonicalize_crlf(&data)
                    };
                    assert_eq!(ev["payloads"][0]["sha256"], sha256_hex(&sent), "{label}");
                    assert_eq!(
                        ev["payloads"][0]["filename"],
                        format!("file{n}.dat"),
                        "{label}"
                    );
                }
            }
        }
    }
    assert!(n >= 100, "{n} combinations");
    assert_eq!(
        mdn_kinds.len(),
        4,
        "sync/async × signed/unsigned MDNs all exercised"
    );
}

#[test]
fn pyas2lib_sends_we_receive_every_combination() {
    let Some(py) = as2_common::python() else {
        return;
    };
    let (ours, theirs) = test_keys();
    let mut peer = Peer::start(&py, theirs, &ours.cert);
    let (listener, port) = listen();
    let (tx, rx) = channel();
    let station = ours.clone();
    let partner_cert = theirs.cert.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let req = read_http(&mut s).expect("read request");
            as2_common::save_seed("parse_message", &req.headers, &req.body);
            let keys = [station.clone()];
            let certs = [partner_cert.clone()];
            let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
            let result = parse_message(&req.headers, &req.body, &ctx);
            let info =
                as2box::as2::message::RequestInfo::from_headers(&req.headers).expect("AS2 headers");
            let (disp, mic) = match &result {
                Ok(r) => (Disposition::Processed, Some(r.mic.clone())),
                Err(e) => (Disposition::from_error(e), None),
            };
            let mdn = info.mdn.as_ref().map(|_| {
                build_mdn(&MdnParams {
                    request: &info,
                    disposition: disp,
                    mic: mic.as_ref(),
                    reporting_ua: "as2box interop test",
                    text: "MDN from as2box",
                    signer: Some(&station),
                    smime_capabilities: true,
                    algorithm_protection: false,
                    now_unix: NOW,
                    message_id_domain: "as2box.test",
                })
                .expect("build MDN")
            });
            match &mdn {
                Some(m) if m.async_url.is_none() => {
                    write_http(&mut s, "HTTP/1.1 200 OK", &m.headers, &m.body).ok();
                }
                _ => {
                    write_http(&mut s, "HTTP/1.1 200 OK", &Headers::new(), b"").ok();
                }
            }
            drop(s);
            if let Some(m) = &mdn {
                if let Some(url) = &m.async_url {
                    let r = http_post(url, &m.headers, &m.body);
                    assert_eq!(r.status(), 200);
                }
            }
            if tx
                .send((info.message_id.clone(), result.map_err(|e| e.to_string())))
                .is_err()
            {
                break;
            }
        }
    });
    let url = format!("http://127.0.0.1:{port}/as2");
    let digests = [
        None,
        Some("sha1"),
        Some("sha224"),
        Some("sha256"),
        Some("sha384"),
        Some("sha512"),
    ];
    let ciphers = [
        None,
        Some("tripledes_192_cbc"),
        Some("aes_128_cbc"),
        Some("aes_192_cbc"),
        Some("aes_256_cbc"),
    ];
    let mut n = 0;
    for d in digests {
        for c in ciphers {
            for compress in [false, true] {
                for (mdn, mdn_digest) in [
                    ("sync", None),
                    ("sync", Some("sha256")),
                    ("async", Some("sha512")),
                    ("async", None),
                    ("none", None),
                ] {
                    n += 1;
                    let binary = n % 2 == 0;
                    let (ct, data) = if binary {
                        ("application/octet-stream", binary_payload())
                    } else {
                        ("application/edi-x12", text_payload())
                    };
                    let id = format!("job{n}");
                    let label = format!(
                        "{d:?} {c:?} compress={compress} mdn={mdn} {mdn_digest:?} binary={binary}"
                    );
                    peer.command(&json!({
                        "cmd": "send", "id": id, "url": url,
                        "data_b64": base64_std(&data), "filename": format!("in{n}.dat"), "content_type": ct,
                        "sign": d, "encrypt": c, "compress": compress, "mdn": mdn, "mdn_digest": mdn_digest,
                    }));
                    let (mid, result) = rx
                        .recv_timeout(Duration::from_secs(120))
                        .expect("message arrives");
                    let r = result.unwrap_or_else(|e| panic!("{label}: {e}"));
                    let ev = peer.wait_event(|v| v["event"] == "sent" && v["id"] == id.as_str());
                    assert!(ev.get("error").is_none(), "{label}: {ev}");
                    assert_eq!(ev["message_id"], mid.as_str(), "{label}");
                    assert_eq!(r.signature.is_some(), d.is_some(), "{label}");
                    assert_eq!(r.encryption.is_some(), c.is_some(), "{label}");
                    assert_eq!(r.compressed, compress, "{label}");
                    // pyas2lib canonicalizes text (LF → CRLF) when it signs,
                    // encrypts or compresses, and leaves octet-stream alone.
                    let secured = d.is_some() || c.is_some() || compress;
                    let want = if binary || !secured {
                        data.clone()
                    } else {
                        canonicalize_crlf(&data)
                    };
                    assert_eq!(r.attachments.len(), 1, "{label}");
                    assert_eq!(
                        sha256_hex(&r.attachments[0].data),
                        sha256_hex(&want),
                        "{label}"
                    );
                    assert_eq!(
                        r.attachments[0].filename.as_deref(),
                        Some(format!("in{n}.dat").as_str()),
                        "{label}"
                    );
                    if d.is_some() {
                        assert_eq!(ev["mic"], r.mic.digest_b64.as_str(), "{label}: MICs agree");
                    }
                    if mdn != "none" {
                        // pyas2lib verified our (signed or unsigned) MDN and
                        // found the MIC equal ("processed/warning" otherwise).
                        assert_eq!(ev["mdn_status"], "processed", "{label}: {ev}");
                        assert_eq!(ev["mdn_signed"], mdn_digest.is_some(), "{label}");
                    }
                }
            }
        }
    }
    assert_eq!(n, 6 * 5 * 2 * 5);

    // RSAES-OAEP key transport from pyas2lib decrypts. pyas2lib's RSASSA-PSS
    // signatures carry no PSS parameters (RFC 4056 §3 requires them in CMS);
    // OpenSSL, including `openssl cms -verify`, rejects them: we answer
    // authentication-failed, which is the right MDN for an unverifiable signature.
    for (k, (sign_alg, key_enc_alg, ok)) in [
        ("rsassa_pkcs1v15", "rsaes_oaep", true),
        ("rsassa_pss", "rsaes_pkcs1v15", false),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("alg{k}");
        let data = text_payload();
        peer.command(&json!({
            "cmd": "send", "id": id, "url": url, "data_b64": base64_std(&data), "filename": "alg.edi",
            "content_type": "application/edi-x12", "sign": "sha256", "encrypt": "aes_256_cbc", "compress": false,
            "mdn": "sync", "mdn_digest": "sha256", "sign_alg": sign_alg, "key_enc_alg": key_enc_alg,
        }));
        let (_, result) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("message arrives");
        let ev = peer.wait_event(|v| v["event"] == "sent" && v["id"] == id.as_str());
        if ok {
            let r = result.unwrap_or_else(|e| panic!("{sign_alg} {key_enc_alg}: {e}"));
            assert_eq!(
                r.attachments[0].data,
                canonicalize_crlf(&data),
                "{key_enc_alg}"
            );
            assert_eq!(ev["mic"], r.mic.digest_b64.as_str(), "{key_enc_alg}");
            assert_eq!(ev["mdn_status"], "processed", "{key_enc_alg}: {ev}");
        } else {
            assert!(
                result
                    .unwrap_err()
                    .contains("signature verification failed"),
                "{sign_alg}"
            );
            assert_eq!(
                ev["mdn_detail"], "authentication-failed",
                "{sign_alg}: {ev}"
            );
        }
    }
}

fn base64_std(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(d)
}

#[test]
fn pyas2lib_negative_mdns_parse_with_the_right_modifier() {
    use as2box::as2::DispositionModifier;
    let Some(py) = as2_common::python() else {
        return;
    };
    let (ours, theirs) = test_keys();
    let mut peer = Peer::start(&py, theirs, &ours.cert);
    let url = format!("http://127.0.0.1:{}/as2", peer.port);
    let stranger = as2_common::make_keypair("stranger");
    let att = [Attachment {
        filename: Some("x.edi".into()),
        content_type: "application/edi-x12".into(),
        data: text_payload(),
    }];
    // (signer, encryption recipient, expected modifier from pyas2lib)
    let cases = [
        (&stranger, None, DispositionModifier::AuthenticationFailed),
        (
            ours,
            Some(&stranger.cert),
            DispositionModifier::DecryptionFailed,
        ),
    ];
    for (signer, recipient, want) in cases {
        let mut p = SendProfile::new("as2box", "pyas2peer");
        p.sign = Some(DigestAlgorithm::Sha256);
        p.encrypt = recipient.map(|_| EncryptionAlgorithm::Aes128Cbc);
        p.signed_mdn_micalgs = vec![DigestAlgorithm::Sha256];
        let m = build_message(&att, &p, Some(signer), recipient, NOW, None).unwrap();
        let resp = http_post(&url, &m.headers, &m.body);
        assert_eq!(resp.status(), 200);
        let mdn = parse_mdn(
            &resp.headers,
            &resp.body,
            std::slice::from_ref(&theirs.cert),
            ValidityPolicy::at(NOW),
            true,
        )
        .unwrap();
        assert_eq!(mdn.original_message_id, m.message_id);
        assert_eq!(mdn.disposition, Disposition::Error(want), "{}", mdn.text);
        assert_eq!(mdn.check_mic(&m.acceptable_mics()), MicCheck::NotReturned);
        let mid = m.message_id.clone();
        let ev = peer.wait_event(|v| v["event"] == "received" && v["message_id"] == mid.as_str());
        assert_eq!(ev["status"], "processed/Error", "{ev}");
    }
}
