//! Property tests: build → parse round trips over every option combination
//! and random payloads (binary, empty, CRLF/LF mixtures, 10 MiB); the parsers
//! never panic on arbitrary input.

use crate::common::as2 as as2_common;

use as2_common::{test_keys, NOW};
use as2box::as2::certs::ValidityPolicy;
use as2box::as2::headers::Headers;
use as2box::as2::mdn::{build_mdn, parse_mdn, Disposition, MdnParams, MicCheck};
use as2box::as2::message::{
    build_message, parse_message, Attachment, CompressionOrder, ReceiveContext, SendProfile,
};
use as2box::as2::mime::canonicalize_crlf;
use as2box::as2::{DigestAlgorithm, EncryptionAlgorithm};
use proptest::prelude::*;

fn digest() -> impl Strategy<Value = Option<DigestAlgorithm>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(DigestAlgorithm::SIGNING.to_vec()).prop_map(Some)
    ]
}

fn cipher() -> impl Strategy<Value = Option<EncryptionAlgorithm>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(EncryptionAlgorithm::ALL.to_vec()).prop_map(Some)
    ]
}

fn compression() -> impl Strategy<Value = Option<CompressionOrder>> {
    prop_oneof![
        Just(None),
        Just(Some(CompressionOrder::BeforeSigning)),
        Just(Some(CompressionOrder::AfterSigning))
    ]
}

/// Payload bytes: arbitrary binary, or text lines joined by a mix of CRLF/LF/CR.
fn payload() -> impl Strategy<Value = (bool, Vec<u8>)> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..3000).prop_map(|v| (false, v)),
        proptest::collection::vec(
            (
                "[ -~]{0,40}",
                prop_oneof![Just("\r\n"), Just("\n"), Just("\r"), Just("")]
            ),
            0..60
        )
        .prop_map(|lines| (
            true,
            lines
                .into_iter()
                .flat_map(|(l, e)| [l.into_bytes(), e.as_bytes().to_vec()])
                .flatten()
                .collect()
        )),
    ]
}

fn round_trip(
    atts: &[Attachment],
    d: Option<DigestAlgorithm>,
    c: Option<EncryptionAlgorithm>,
    z: Option<CompressionOrder>,
    binary_canon: bool,
) -> Result<(), TestCaseError> {
    let (ours, theirs) = test_keys();
    let mut p = SendProfile::new("A", "B");
    p.sign = d;
    p.encrypt = c;
    p.compress = z;
    p.binary_canonicalization = binary_canon;
    p.signed_mdn_micalgs = vec![DigestAlgorithm::Sha256];
    let m = build_message(atts, &p, Some(ours), Some(&theirs.cert), NOW, None).unwrap();
    let keys = [theirs.clone()];
    let certs = [ours.cert.clone()];
    let r = parse_message(
        &m.headers,
        &m.body,
        &ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW)),
    )
    .unwrap();
    prop_assert_eq!(r.attachments.len(), atts.len());
    for (got, sent) in r.attachments.iter().zip(atts) {
        let want = if !binary_canon && sent.content_type.starts_with("text/") {
            canonicalize_crlf(&sent.data)
        } else {
            sent.data.clone()
        };
        prop_assert!(
            got.data == want,
            "payload differs ({} vs {} bytes)",
            got.data.len(),
            want.len()
        );
        prop_assert_eq!(&got.filename, &sent.filename);
    }
    prop_assert!(m.mic.as_ref().unwrap().matches(&r.mic));
    // Close the loop with a signed MDN.
    let mdn = build_mdn(&MdnParams {
        request: &r.info,
        disposition: Disposition::Processed,
        mic: Some(&r.mic),
        reporting_ua: "p",
        text: "ok",
        signer: Some(theirs),
        smime_capabilities: true,
        algorithm_protection: false,
        now_unix: NOW,
        message_id_domain: "x",
    })
    .unwrap();
    let got = parse_mdn(
        &mdn.headers,
        &mdn.body,
        std::slice::from_ref(&theirs.cert),
        ValidityPolicy::at(NOW),
        true,
    )
    .unwrap();
    prop_assert_eq!(got.check_mic(&m.acceptable_mics()), MicCheck::Match);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_random_payloads_and_options(
        d in digest(), c in cipher(), z in compression(), binary_canon in any::<bool>(),
        payloads in proptest::collection::vec(payload(), 1..4),
        names in proptest::collection::vec("[a-zA-Z0-9äöü €._-]{1,20}", 3),
    ) {
        let atts: Vec<Attachment> = payloads.into_iter().zip(names).map(|((text, data), name)| Attachment {
            filename: Some(name.trim().to_string()).filter(|n| !n.is_empty() && n != "." && n != ".."),
            content_type: if text { "text/plain".into() } else { "application/octet-stream".into() },
            data,
        }).collect();
        round_trip(&atts, d, c, z, binary_canon)?;
    }

    #[test]
    fn parser_never_panics_on_arbitrary_bodies(
        body in proptest::collection::vec(any::<u8>(), 0..2000),
        ct in prop_oneof![
            Just("multipart/signed; boundary=b; micalg=sha-256"),
            Just("application/pkcs7-mime; smime-type=enveloped-data"),
            Just("application/pkcs7-mime; smime-type=compressed-data"),
            Just("application/pkcs7-mime; smime-type=signed-data"),
            Just("multipart/related; boundary=b"),
            Just("multipart/report; report-type=disposition-notification; boundary=b"),
            Just("application/edi-x12"),
        ],
        cte in prop_oneof![Just("binary"), Just("base64"), Just("quoted-printable"), Just("x-weird")],
    ) {
        let (ours, theirs) = test_keys();
        let keys = [theirs.clone()];
        let certs = [ours.cert.clone()];
        let h = Headers::from_pairs([("AS2-From", "a"), ("AS2-To", "b"), ("Message-ID", "<m@x>"), ("Content-Type", ct), ("Content-Transfer-Encoding", cte)]);
        let _ = parse_message(&h, &body, &ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW)));
        let _ = parse_mdn(&h, &body, &certs, ValidityPolicy::at(NOW), false);
        let _ = as2box::as2::message::split_http_capture(&body);
    }

    #[test]
    fn mutated_messages_never_panic(
        d in digest(), c in cipher(), z in compression(),
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        truncate in any::<Option<prop::sample::Index>>(),
    ) {
        let (ours, theirs) = test_keys();
        let mut p = SendProfile::new("A", "B");
        p.sign = d; p.encrypt = c; p.compress = z;
        let m = build_message(&[Attachment { filename: Some("f".into()), content_type: "text/plain".into(), data: b"hello\nworld\n".repeat(20) }], &p, Some(ours), Some(&theirs.cert), NOW, None).unwrap();
        let mut body = m.body.clone();
        for (i, b) in cuts { let i = i.index(body.len()); body[i] = b; }
        if let Some(t) = truncate { body.truncate(t.index(body.len())); }
        let keys = [theirs.clone()];
        let certs = [ours.cert.clone()];
        let _ = parse_message(&m.headers, &body, &ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW)));
    }
}

proptest! {
    /// The streaming readers of CMS (envelope, compressed data) fail closed: a structure
    /// cut anywhere is an error, never a success with part of the content, nor a panic.
    #[test]
    fn truncated_envelopes_and_compressed_data_are_errors(
        c in proptest::sample::select(EncryptionAlgorithm::ALL.to_vec()),
        oaep in any::<bool>(),
        data in proptest::collection::vec(any::<u8>(), 0..5000),
        cut in any::<prop::sample::Index>(),
    ) {
        let (_, theirs) = test_keys();
        let env = if oaep {
            as2box::as2::cms::encrypt_oaep(&data, &theirs.cert, c).unwrap()
        } else {
            as2box::as2::cms::encrypt(&data, &theirs.cert, c).unwrap()
        };
        let keys = [theirs.clone()];
        prop_assert_eq!(&as2box::as2::cms::decrypt(&env, &keys).unwrap().0, &data);
        let at = cut.index(env.len());
        let err = as2box::as2::cms::decrypt(&env[..at], &keys).unwrap_err();
        prop_assert!(matches!(err, as2box::as2::As2Error::DecryptionFailed(_)), "{}", err);
        let z = as2box::as2::cms::compress(&data).unwrap();
        let at = cut.index(z.len());
        prop_assert!(as2box::as2::cms::decompress(&z[..at], 1 << 20).is_err());
        prop_assert_eq!(as2box::as2::cms::decompress(&z, 1 << 20).unwrap(), data);
    }
}

proptest! {
    // Few cases: each moves 10 MiB through compression, signing and encryption.
    #![proptest_config(ProptestConfig { cases: 2, ..ProptestConfig::default() })]

    #[test]
    fn ten_mib_payloads(seed in any::<u64>(), text in any::<bool>(), z in compression()) {
        let mut x = seed | 1;
        let data: Vec<u8> = (0..10 * 1024 * 1024).map(|i| {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if text { if i % 80 == 79 { b'\n' } else { b'a' + (x % 26) as u8 } } else { x as u8 }
        }).collect();
        let ct = if text { "text/plain" } else { "application/octet-stream" };
        round_trip(&[Attachment { filename: Some("big.dat".into()), content_type: ct.into(), data }], Some(DigestAlgorithm::Sha256), Some(EncryptionAlgorithm::Aes256Cbc), z, false)?;
    }
}

#[test]
fn empty_file_round_trips() {
    for c in [None, Some(EncryptionAlgorithm::Aes128Cbc)] {
        round_trip(
            &[Attachment {
                filename: Some("empty".into()),
                content_type: "application/octet-stream".into(),
                data: vec![],
            }],
            Some(DigestAlgorithm::Sha256),
            c,
            Some(CompressionOrder::BeforeSigning),
            false,
        )
        .unwrap();
    }
}
