//! Our builder and our parser agree on every option combination; the MDN
//! loop closes; negative cases give the right typed error and disposition.

use crate::common::as2 as as2_common;

use as2_common::{test_keys, NOW};
use as2box::as2::certs::ValidityPolicy;
use as2box::as2::cms;
use as2box::as2::headers::Headers;
use as2box::as2::mdn::{build_mdn, parse_mdn, Disposition, MdnParams, MicCheck};
use as2box::as2::message::{
    build_message, parse_message, Attachment, CompressionOrder, MdnMode, MicRule, OutgoingMessage,
    ReceiveContext, RequestInfo, SendProfile,
};
use as2box::as2::{As2Error, DigestAlgorithm, DispositionModifier, EncryptionAlgorithm};

fn att(name: &str, ct: &str, data: &[u8]) -> Attachment {
    Attachment {
        filename: Some(name.into()),
        content_type: ct.into(),
        data: data.to_vec(),
    }
}

fn send(
    atts: &[Attachment],
    sign: Option<DigestAlgorithm>,
    enc: Option<EncryptionAlgorithm>,
    compress: Option<CompressionOrder>,
) -> OutgoingMessage {
    let (ours, partner) = test_keys();
    let mut p = SendProfile::new("as2box A", "partner\"B");
    p.sign = sign;
    p.encrypt = enc;
    p.compress = compress;
    p.signed_mdn_micalgs = vec![DigestAlgorithm::Sha256];
    build_message(atts, &p, Some(ours), Some(&partner.cert), NOW, None).unwrap()
}

fn receive(m: &OutgoingMessage) -> Result<as2box::as2::message::ReceivedMessage, As2Error> {
    let (ours, partner) = test_keys();
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
    parse_message(&m.headers, &m.body, &ctx)
}

#[test]
fn every_combination_round_trips_with_matching_mic() {
    let text = b"UNB+UNOA:2+X\nUNH+1\r\nline three\n".to_vec();
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let digests = [
        None,
        Some(DigestAlgorithm::Sha1),
        Some(DigestAlgorithm::Sha224),
        Some(DigestAlgorithm::Sha256),
        Some(DigestAlgorithm::Sha384),
        Some(DigestAlgorithm::Sha512),
    ];
    let ciphers = [
        None,
        Some(EncryptionAlgorithm::TripleDes),
        Some(EncryptionAlgorithm::Aes128Cbc),
        Some(EncryptionAlgorithm::Aes192Cbc),
        Some(EncryptionAlgorithm::Aes256Cbc),
        Some(EncryptionAlgorithm::Aes128Gcm),
        Some(EncryptionAlgorithm::Aes256Gcm),
    ];
    let comps = [
        None,
        Some(CompressionOrder::BeforeSigning),
        Some(CompressionOrder::AfterSigning),
    ];
    let mut n = 0;
    for d in digests {
        for c in ciphers {
            for z in comps {
                let atts = [
                    att("a.edi", "application/edi-consent", &text),
                    att("b.bin", "application/octet-stream", &binary),
                ];
                let sets: [&[Attachment]; 2] = [&atts[..1], &atts[..]];
                for set in sets {
                    let m = send(set, d, c, z);
                    let r = receive(&m).unwrap_or_else(|e| panic!("{d:?} {c:?} {z:?}: {e}"));
                    assert_eq!(r.attachments.len(), set.len());
                    // Text was CRLF-canonicalized; binary is untouched.
                    assert_eq!(
                        r.attachments[0].data,
                        b"UNB+UNOA:2+X\r\nUNH+1\r\nline three\r\n"
                    );
                    assert_eq!(r.attachments[0].filename.as_deref(), Some("a.edi"));
                    if set.len() == 2 {
                        assert_eq!(r.attachments[1].data, binary);
                    }
                    assert_eq!(r.signature.is_some(), d.is_some());
                    assert_eq!(r.encryption, c.map(Some));
                    assert_eq!(r.compressed, z.is_some());
                    assert_eq!(r.info.as2_from, "as2box A");
                    assert_eq!(r.info.as2_to, "partner\"B");
                    let expected = m.mic.clone().expect("a MIC is always predicted");
                    assert!(
                        expected.matches(&r.mic),
                        "{d:?} {c:?} {z:?}: {:?} vs {:?} ({:?})",
                        expected,
                        r.mic,
                        r.mic_rule
                    );
                    if let Some(d) = d {
                        assert_eq!(r.mic_rule, MicRule::Signed);
                        assert_eq!(r.mic.algorithm, d);
                    } else if z.is_some() {
                        assert_eq!(r.mic_rule, MicRule::CompressedEntity);
                        // The RFC 4130 alternative agrees too.
                        assert!(m.mic_alternatives[0].1.matches(&r.mic_alternatives[0].1));
                    }
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 6 * 7 * 3 * 2);
}

#[test]
fn headers_are_complete() {
    let m = send(
        &[att("x.txt", "text/plain", b"x")],
        Some(DigestAlgorithm::Sha256),
        Some(EncryptionAlgorithm::Aes256Cbc),
        None,
    );
    let h = &m.headers;
    assert_eq!(h.get("AS2-Version"), Some("1.2"));
    assert_eq!(h.get("AS2-From"), Some("\"as2box A\""));
    assert_eq!(h.get("AS2-To"), Some("\"partner\\\"B\""));
    assert_eq!(
        h.get("Message-ID"),
        Some(format!("<{}>", m.message_id).as_str())
    );
    assert_eq!(h.get("Date"), Some("Sat, 28 Nov 2026 00:00:00 +0000"));
    assert_eq!(h.get("MIME-Version"), Some("1.0"));
    assert!(h
        .get("Content-Type")
        .unwrap()
        .starts_with("application/pkcs7-mime; smime-type=enveloped-data"));
    assert_eq!(
        h.get("Disposition-Notification-To"),
        Some("as2box@localhost")
    );
    assert!(h
        .get("Disposition-Notification-Options")
        .unwrap()
        .contains("signed-receipt-micalg=optional, sha-256"));
    assert_eq!(h.get("EDIINT-Features"), Some("multiple-attachments"));
    assert!(h.get("Receipt-Delivery-Option").is_none());
    let (ours, _) = test_keys();
    let mut p = SendProfile::new("a", "b");
    p.mdn = MdnMode::Async("http://127.0.0.1:1/mdn".into());
    let m = build_message(
        &[att("x", "text/plain", b"x")],
        &p,
        Some(ours),
        None,
        NOW,
        Some("<given@id>"),
    )
    .unwrap();
    assert_eq!(
        m.headers.get("Receipt-Delivery-Option"),
        Some("http://127.0.0.1:1/mdn")
    );
    assert_eq!(m.message_id, "given@id");
    p.mdn = MdnMode::None;
    let m = build_message(&[att("x", "text/plain", b"x")], &p, None, None, NOW, None).unwrap();
    assert!(m.headers.get("Disposition-Notification-To").is_none());
}

#[test]
fn mdn_round_trip_signed_and_unsigned() {
    let (ours, partner) = test_keys();
    for signed in [false, true] {
        for sync in [true, false] {
            let mut p = SendProfile::new("A", "B");
            p.sign = Some(DigestAlgorithm::Sha384);
            p.signed_mdn_micalgs = if signed {
                vec![DigestAlgorithm::Sha512, DigestAlgorithm::Sha256]
            } else {
                vec![]
            };
            p.mdn = if sync {
                MdnMode::Sync
            } else {
                MdnMode::Async("http://127.0.0.1:9/x".into())
            };
            let m = build_message(
                &[att("f", "text/plain", b"hello")],
                &p,
                Some(ours),
                None,
                NOW,
                None,
            )
            .unwrap();
            let keys = [partner.clone()];
            let certs = [ours.cert.clone()];
            let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
            let r = parse_message(&m.headers, &m.body, &ctx).unwrap();
            let mdn = build_mdn(&MdnParams {
                request: &r.info,
                disposition: Disposition::Processed,
                mic: Some(&r.mic),
                reporting_ua: "as2box test",
                text: "ok\n",
                signer: Some(partner),
                smime_capabilities: true,
                algorithm_protection: true,
                now_unix: NOW,
                message_id_domain: "b.example",
            })
            .unwrap();
            assert_eq!(mdn.signed, signed);
            assert_eq!(mdn.async_url.is_none(), sync);
            assert_eq!(mdn.headers.get("AS2-From"), Some("B"));
            assert_eq!(mdn.headers.get("AS2-To"), Some("A"));
            let got = parse_mdn(
                &mdn.headers,
                &mdn.body,
                std::slice::from_ref(&partner.cert),
                ValidityPolicy::at(NOW),
                signed,
            )
            .unwrap();
            assert_eq!(got.signed, signed);
            assert_eq!(got.signature.is_some(), signed);
            assert_eq!(got.original_message_id, m.message_id);
            assert_eq!(got.disposition, Disposition::Processed);
            assert_eq!(got.check_mic(&m.acceptable_mics()), MicCheck::Match);
            assert_eq!(got.reporting_ua.as_deref(), Some("as2box test"));
            assert_eq!(got.original_recipient.as_deref(), Some("B"));
            if signed {
                // A signed MDN verified with the wrong certificate fails.
                let err = parse_mdn(
                    &mdn.headers,
                    &mdn.body,
                    std::slice::from_ref(&ours.cert),
                    ValidityPolicy::at(NOW),
                    true,
                )
                .unwrap_err();
                assert_eq!(
                    err.disposition_modifier(),
                    DispositionModifier::AuthenticationFailed
                );
            }
        }
    }
}

#[test]
fn negative_mdn_carries_the_modifier() {
    let (_, partner) = test_keys();
    let h = Headers::from_pairs([
        ("AS2-From", "A"),
        ("AS2-To", "B"),
        ("Message-ID", "no-brackets@x"),
        ("Disposition-Notification-To", "a@b"),
    ]);
    let info = RequestInfo::from_headers(&h).unwrap();
    assert_eq!(info.message_id, "no-brackets@x");
    let err = As2Error::DecryptionFailed("x".into());
    let mdn = build_mdn(&MdnParams {
        request: &info,
        disposition: Disposition::from_error(&err),
        mic: None,
        reporting_ua: "as2box",
        text: "failed",
        signer: Some(partner),
        smime_capabilities: true,
        algorithm_protection: false,
        now_unix: NOW,
        message_id_domain: "x",
    })
    .unwrap();
    assert!(!mdn.signed, "no signed receipt was requested");
    let got = parse_mdn(&mdn.headers, &mdn.body, &[], ValidityPolicy::at(NOW), false).unwrap();
    assert_eq!(
        got.disposition,
        Disposition::Error(DispositionModifier::DecryptionFailed)
    );
    assert_eq!(got.check_mic(&[]), MicCheck::NotReturned);
}

fn modifier_of(
    r: Result<as2box::as2::message::ReceivedMessage, As2Error>,
) -> (String, DispositionModifier) {
    let e = r.expect_err("must fail");
    (format!("{e:?}"), e.disposition_modifier())
}

#[test]
fn wrong_certificate_is_authentication_failed() {
    let (ours, partner) = test_keys();
    let m = send(
        &[att("f", "text/plain", b"x")],
        Some(DigestAlgorithm::Sha256),
        None,
        None,
    );
    let keys = [partner.clone()];
    let wrong = [partner.cert.clone()];
    let ctx = ReceiveContext::new(&keys, &wrong, ValidityPolicy::at(NOW));
    let (e, m_) = modifier_of(parse_message(&m.headers, &m.body, &ctx));
    assert_eq!(m_, DispositionModifier::AuthenticationFailed, "{e}");
    let _ = ours;
}

#[test]
fn wrong_key_is_decryption_failed() {
    let (ours, _) = test_keys();
    let m = send(
        &[att("f", "text/plain", b"x")],
        None,
        Some(EncryptionAlgorithm::Aes128Cbc),
        None,
    );
    let keys = [ours.clone()];
    let ctx = ReceiveContext::new(&keys, &[], ValidityPolicy::at(NOW));
    let (e, m_) = modifier_of(parse_message(&m.headers, &m.body, &ctx));
    assert_eq!(m_, DispositionModifier::DecryptionFailed, "{e}");
}

#[test]
fn tampered_body_is_integrity_check_failed() {
    let m = send(
        &[att("f", "text/plain", b"pay 100 EUR")],
        Some(DigestAlgorithm::Sha256),
        None,
        None,
    );
    let mut t = m.clone();
    // Search the payload's own words: "100" alone may also occur in the random boundary.
    let pos = t.body.windows(7).position(|w| w == b"pay 100").unwrap() + 4;
    t.body[pos] = b'9';
    let (e, m_) = modifier_of(receive(&t));
    assert_eq!(m_, DispositionModifier::IntegrityCheckFailed, "{e}");
}

#[test]
fn truncated_body_fails_typed() {
    for (sign, enc) in [
        (Some(DigestAlgorithm::Sha256), None),
        (None, Some(EncryptionAlgorithm::Aes256Cbc)),
    ] {
        let m = send(&[att("f", "text/plain", &[b'x'; 2000])], sign, enc, None);
        let mut t = m.clone();
        t.body.truncate(t.body.len() / 2);
        let (e, m_) = modifier_of(receive(&t));
        let want = if sign.is_some() {
            DispositionModifier::UnexpectedProcessingError
        } else {
            DispositionModifier::DecryptionFailed
        };
        assert_eq!(m_, want, "{e}");
    }
}

#[test]
fn wrong_mic_is_a_mismatch() {
    let (ours, partner) = test_keys();
    let m = send(
        &[att("f", "text/plain", b"x")],
        Some(DigestAlgorithm::Sha256),
        None,
        None,
    );
    let other = send(
        &[att("f", "text/plain", b"y")],
        Some(DigestAlgorithm::Sha256),
        None,
        None,
    );
    let r = receive(&other).unwrap();
    let info = RequestInfo::from_headers(&m.headers).unwrap();
    let mdn = build_mdn(&MdnParams {
        request: &info,
        disposition: Disposition::Processed,
        mic: Some(&r.mic),
        reporting_ua: "x",
        text: "x",
        signer: Some(partner),
        smime_capabilities: false,
        algorithm_protection: false,
        now_unix: NOW,
        message_id_domain: "x",
    })
    .unwrap();
    let got = parse_mdn(
        &mdn.headers,
        &mdn.body,
        std::slice::from_ref(&partner.cert),
        ValidityPolicy::at(NOW),
        false,
    )
    .unwrap();
    assert_eq!(got.check_mic(&m.acceptable_mics()), MicCheck::Mismatch);
    let _ = ours;
}

#[test]
fn unknown_algorithm_is_typed() {
    let m = send(
        &[att("f", "text/plain", b"x")],
        Some(DigestAlgorithm::Sha256),
        None,
        None,
    );
    let mut h = m.headers.clone();
    // An unknown micalg in the MDN request is ignored for the MIC (signature digest wins) ...
    h.push("Disposition-Notification-Options", "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, whirlpool");
    let (ours, partner) = test_keys();
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
    assert!(parse_message(&h, &m.body, &ctx).is_ok());
    // ... and an unknown CMS content type or parsing name is an error.
    assert!(matches!(
        DigestAlgorithm::parse("whirlpool"),
        Err(As2Error::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        EncryptionAlgorithm::parse("rc2-40"),
        Err(As2Error::UnsupportedAlgorithm(_))
    ));
    let mut h2 = Headers::from_pairs([
        ("AS2-From", "a"),
        ("AS2-To", "b"),
        ("Message-ID", "<x@y>"),
        (
            "Content-Type",
            "application/pkcs7-mime; smime-type=enveloped-data",
        ),
    ]);
    // id-data ContentInfo: a CMS type we do not accept at top level.
    let body = as2box::as2::der::encode_tlv(
        0x30,
        &[
            as2box::as2::der::encode_oid("1.2.840.113549.1.7.1"),
            as2box::as2::der::encode_tlv(0xa0, &as2box::as2::der::encode_tlv(0x04, b"x")),
        ]
        .concat(),
    );
    let err = parse_message(&h2, &body, &ctx).unwrap_err();
    assert!(matches!(err, As2Error::UnsupportedAlgorithm(_)), "{err:?}");
    h2.0.retain(|(k, _)| k != "Content-Type");
}

#[test]
fn garbage_and_missing_headers() {
    let (ours, partner) = test_keys();
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
    let base = [("AS2-From", "a"), ("AS2-To", "b"), ("Message-ID", "<x@y>")];
    for missing in ["AS2-From", "AS2-To", "Message-ID"] {
        let h = Headers::from_pairs(
            base.iter()
                .filter(|(k, _)| *k != missing)
                .copied()
                .chain([("Content-Type", "text/plain")]),
        );
        match parse_message(&h, b"x", &ctx) {
            Err(As2Error::MissingHeader(n)) => assert_eq!(n, missing),
            other => panic!("{missing}: {other:?}"),
        }
    }
    let h = Headers::from_pairs(base);
    assert!(matches!(
        parse_message(&h, b"x", &ctx),
        Err(As2Error::MissingHeader("Content-Type"))
    ));
    for (ct, body) in [
        (
            "multipart/signed; boundary=zz",
            &b"garbage without delimiters"[..],
        ),
        ("multipart/signed", &b"--zz\r\n\r\n--zz--"[..]),
        (
            "application/pkcs7-mime; smime-type=enveloped-data",
            &b"\x30\x82\xff\xff garbage"[..],
        ),
        (
            "application/pkcs7-mime; smime-type=compressed-data",
            &b"not der"[..],
        ),
        (
            "multipart/related; boundary=q",
            &b"--q\r\nno colon line\r\n\r\nx\r\n--q--"[..],
        ),
    ] {
        let h = Headers::from_pairs(base.iter().copied().chain([("Content-Type", ct)]));
        let e = parse_message(&h, body, &ctx).expect_err(ct);
        let want = if ct.contains("enveloped") {
            DispositionModifier::DecryptionFailed
        } else if ct.contains("compressed") {
            DispositionModifier::DecompressionFailed
        } else {
            DispositionModifier::UnexpectedProcessingError
        };
        assert_eq!(e.disposition_modifier(), want, "{ct}: {e:?}");
    }
}

#[test]
fn insufficient_security_is_reported() {
    let (ours, partner) = test_keys();
    let m = send(&[att("f", "text/plain", b"x")], None, None, None);
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let mut ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
    ctx.require_signature = true;
    assert_eq!(
        parse_message(&m.headers, &m.body, &ctx)
            .unwrap_err()
            .disposition_modifier(),
        DispositionModifier::InsufficientMessageSecurity
    );
    ctx.require_signature = false;
    ctx.require_encryption = true;
    assert_eq!(
        parse_message(&m.headers, &m.body, &ctx)
            .unwrap_err()
            .disposition_modifier(),
        DispositionModifier::InsufficientMessageSecurity
    );
}

#[test]
fn expired_partner_certificate_needs_explicit_policy() {
    let (ours, partner) = test_keys();
    let m = send(
        &[att("f", "text/plain", b"x")],
        Some(DigestAlgorithm::Sha256),
        None,
        None,
    );
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let later = 2_300_000_000; // after the test certificate's notAfter (2040)
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(later));
    let e = parse_message(&m.headers, &m.body, &ctx).unwrap_err();
    assert!(matches!(e, As2Error::CertificateNotValid(_)), "{e:?}");
    assert_eq!(
        e.disposition_modifier(),
        DispositionModifier::AuthenticationFailed
    );
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::accept_expired(later));
    let r = parse_message(&m.headers, &m.body, &ctx).unwrap();
    assert!(!r.signature.unwrap().certificate_valid);
}

#[test]
fn sterling_switches_and_binary_canonicalization() {
    let (ours, partner) = test_keys();
    let mut p = SendProfile::new("A", "B");
    p.sign = Some(DigestAlgorithm::Sha1);
    p.smime_capabilities = false;
    p.algorithm_protection = false;
    p.binary_canonicalization = true;
    let m = build_message(
        &[att("f.txt", "text/plain", b"a\nb\n")],
        &p,
        Some(ours),
        None,
        NOW,
        None,
    )
    .unwrap();
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let r = parse_message(
        &m.headers,
        &m.body,
        &ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW)),
    )
    .unwrap();
    assert_eq!(
        r.attachments[0].data, b"a\nb\n",
        "binary canonicalization keeps LF"
    );
    // The signature has no SMIMECapabilities (OID 1.2.840.113549.1.9.15)
    // and no CMSAlgorithmProtection (1.2.840.113549.1.9.52).
    let sig = signature_of(&m);
    assert!(!contains(
        &sig,
        &as2box::as2::der::encode_oid("1.2.840.113549.1.9.15")
    ));
    assert!(!contains(
        &sig,
        &as2box::as2::der::encode_oid("1.2.840.113549.1.9.52")
    ));
    p.smime_capabilities = true;
    p.algorithm_protection = true;
    let m = build_message(
        &[att("f.txt", "text/plain", b"a\nb\n")],
        &p,
        Some(ours),
        None,
        NOW,
        None,
    )
    .unwrap();
    let sig = signature_of(&m);
    assert!(contains(
        &sig,
        &as2box::as2::der::encode_oid("1.2.840.113549.1.9.15")
    ));
    assert!(contains(
        &sig,
        &as2box::as2::der::encode_oid("1.2.840.113549.1.9.52")
    ));
    assert!(parse_message(
        &m.headers,
        &m.body,
        &ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW))
    )
    .is_ok());
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

fn signature_of(m: &OutgoingMessage) -> Vec<u8> {
    use as2box::as2::mime::{split_multipart, Entity};
    let e = Entity::from_parts(m.headers.clone(), &m.body);
    let b = e.content_type().param("boundary").unwrap().to_string();
    let parts = split_multipart(e.body(), &b).unwrap();
    Entity::parse(parts[1]).unwrap().decoded_body().unwrap()
}

#[test]
fn lf_only_peer_and_transfer_encodings() {
    // A peer that sends its multipart/signed with bare LF although it signed
    // the canonical CRLF form; and a base64-encoded, a 7bit and a CTE-less part.
    let (ours, partner) = test_keys();
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
    let mut p = SendProfile::new("A", "B");
    p.sign = Some(DigestAlgorithm::Sha256);
    let m = build_message(
        &[att("f.txt", "text/plain", b"l1\nl2\n")],
        &p,
        Some(ours),
        None,
        NOW,
        None,
    )
    .unwrap();
    let lf: Vec<u8> = m.body.iter().copied().filter(|&c| c != b'\r').collect();
    let r = parse_message(&m.headers, &lf, &ctx).unwrap();
    // What is delivered is what the signature covers: the canonical form.
    assert_eq!(r.attachments[0].data, b"l1\r\nl2\r\n");
    assert!(
        m.mic.as_ref().unwrap().matches(&r.mic),
        "MIC over the canonical form"
    );

    let base = [("AS2-From", "a"), ("AS2-To", "b"), ("Message-ID", "x@y")];
    for (cte, body, want) in [
        (Some("base64"), &b"aGVs\r\nbG8=\r\n"[..], &b"hello"[..]),
        (Some("7bit"), &b"hello"[..], &b"hello"[..]),
        (None, &b"hello"[..], &b"hello"[..]),
        (Some("binary"), &b"\x00\xff"[..], &b"\x00\xff"[..]),
    ] {
        let mut h = Headers::from_pairs(base.iter().copied().chain([
            ("Content-Type", "application/edi-x12"),
            ("Content-Disposition", "attachment; filename=order.x12"),
        ]));
        if let Some(c) = cte {
            h.push("Content-Transfer-Encoding", c);
        }
        let r = parse_message(&h, body, &ctx).unwrap();
        assert_eq!(r.attachments[0].data, want);
        assert_eq!(r.attachments[0].filename.as_deref(), Some("order.x12"));
        assert_eq!(r.mic_rule, MicRule::PlainContent);
    }
}

/// SECURITY.md, "verified bytes are the delivered bytes": a man in the middle rewrites the
/// CRLF line ends inside a signed binary payload to LF. Canonicalizing them back would
/// verify, but would deliver bytes the signer did not send: refused.
#[test]
fn line_ends_rewritten_inside_a_signed_binary_payload_are_refused() {
    let (ours, partner) = test_keys();
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
    let mut p = SendProfile::new("A", "B");
    p.sign = Some(DigestAlgorithm::Sha256);
    let payload = b"\x00\x01binary\r\nrecord\r\n\xff";
    let m = build_message(
        &[att("f.bin", "application/octet-stream", payload)],
        &p,
        Some(ours),
        None,
        NOW,
        None,
    )
    .unwrap();
    let untouched = parse_message(&m.headers, &m.body, &ctx).unwrap();
    assert_eq!(untouched.attachments[0].data, payload);
    let rewritten: Vec<u8> = m.body.iter().copied().filter(|&c| c != b'\r').collect();
    let e = parse_message(&m.headers, &rewritten, &ctx).unwrap_err();
    assert_eq!(
        e.disposition_modifier(),
        as2box::as2::DispositionModifier::IntegrityCheckFailed,
        "{e}"
    );
}

#[test]
fn folded_duplicated_headers_and_quoted_names() {
    let (ours, partner) = test_keys();
    let keys = [partner.clone()];
    let certs = [ours.cert.clone()];
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
    let raw = b"AS2-From: \"my partner\"\r\nAS2-To: us\r\nMessage-ID: plain-id@x\r\nContent-Type: application/edi-x12;\r\n\tname=\"f.x12\"\r\nDisposition-Notification-To: x\r\nDisposition-Notification-Options: signed-receipt-protocol=optional, pkcs7-signature\r\nDisposition-Notification-Options: signed-receipt-micalg=optional, SHA_256\r\n\r\nISA*00*";
    let (h, body) = as2box::as2::message::split_http_capture(raw).unwrap();
    let r = parse_message(&h, &body, &ctx).unwrap();
    assert_eq!(r.info.as2_from, "my partner");
    assert_eq!(r.info.message_id, "plain-id@x");
    assert_eq!(r.attachments[0].filename.as_deref(), Some("f.x12"));
    let mdn = r.info.mdn.as_ref().unwrap();
    assert!(mdn.options.wants_signed());
    assert_eq!(mdn.preferred_micalg(), Some(DigestAlgorithm::Sha256));
    assert_eq!(r.mic.algorithm, DigestAlgorithm::Sha256);
}

#[test]
fn base64_envelope_without_transfer_encoding_header() {
    let m = send(
        &[att("f", "text/plain", b"x")],
        Some(DigestAlgorithm::Sha256),
        Some(EncryptionAlgorithm::Aes128Cbc),
        None,
    );
    let mut h = m.headers.clone();
    h.0.retain(|(k, _)| !k.eq_ignore_ascii_case("content-transfer-encoding"));
    let b64 = as2box::as2::encoding::base64_encode_lines(&m.body);
    let mut t = m.clone();
    t.headers = h.clone();
    t.body = b64.clone();
    let r = receive(&t).unwrap();
    assert_eq!(r.attachments[0].data, b"x");
    // Declared base64 works as well.
    h.push("Content-Transfer-Encoding", "base64");
    t.headers = h;
    assert_eq!(receive(&t).unwrap().attachments[0].data, b"x");
}

/// A wrong key, bad padding and a bad GCM tag give the same error: none tells a sender
/// more than another (no padding oracle).
#[test]
fn every_decryption_failure_says_the_same() {
    let kp = |cn: &str| as2_common::make_keypair(cn);
    let (ours, other) = (kp("ours"), kp("other"));
    for alg in [
        as2box::as2::EncryptionAlgorithm::Aes256Cbc,
        as2box::as2::EncryptionAlgorithm::Aes128Gcm,
    ] {
        let env = cms::encrypt(&[7u8; 1000], &ours.cert, alg).unwrap();
        let wrong_key = cms::decrypt(&env, std::slice::from_ref(&other))
            .unwrap_err()
            .to_string();
        // The last content byte before the end-of-contents octets (or the tag for GCM).
        let (_, inner) = as2box::as2::der::content_info(&env).unwrap();
        let kids = as2box::as2::der::children(inner.content).unwrap();
        let eci = as2box::as2::der::children(
            kids.iter()
                .find(|k| {
                    k.tag == 0x30
                        && k.constructed
                        && as2box::as2::der::children(k.content)
                            .map(|c| c.len() >= 2 && c[0].tag == 0x06)
                            .unwrap_or(false)
                })
                .unwrap()
                .content,
        )
        .unwrap();
        let content = eci.last().unwrap();
        let last_segment = as2box::as2::der::children(content.content)
            .unwrap()
            .last()
            .copied()
            .unwrap_or(*content);
        let end = last_segment.content.as_ptr() as usize - env.as_ptr() as usize
            + last_segment.content.len();
        let mut failures = 0;
        for x in 1..=255u8 {
            let mut bad = env.clone();
            bad[end - 1] ^= x;
            if let Err(e) = cms::decrypt(&bad, std::slice::from_ref(&ours)) {
                assert_eq!(e.to_string(), wrong_key, "{alg:?}");
                failures += 1;
            }
        }
        assert!(
            failures >= 250,
            "{alg:?}: only {failures} of 255 damaged envelopes failed"
        );
    }
}
