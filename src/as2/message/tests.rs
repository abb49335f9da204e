use super::build::entity_bytes;
use super::parse::mic_with_crlf_headers;
use super::*;
use crate::as2::algorithms::DigestAlgorithm;
use crate::as2::certs::ValidityPolicy;
use crate::as2::cms;
use crate::as2::error::DispositionModifier;
use crate::as2::error::Result;
use crate::as2::headers::Headers;
use crate::as2::mic::Mic;
use crate::as2::mime::MAX_PARTS;
use crate::as2::mime::{canonicalize_headers, Entity};

fn info() -> RequestInfo {
    RequestInfo::from_headers(&Headers::from_pairs([
        ("AS2-From", "a"),
        ("AS2-To", "b"),
        ("Message-ID", "<m@x>"),
    ]))
    .unwrap()
}

fn parse(content_type: &str, body: &[u8], ctx: &ReceiveContext<'_>) -> Result<ReceivedMessage> {
    let h = Headers::from_pairs([("Content-Type", content_type)]);
    parse_body(info(), &h, body, ctx)
}

const P7Z: &str = "application/pkcs7-mime; smime-type=compressed-data";

#[test]
fn nesting_is_capped() {
    let mut entity = b"Content-Type: text/plain\r\n\r\nhi".to_vec();
    for _ in 0..MAX_NESTING {
        let der = cms::compress(&entity).unwrap();
        entity = entity_bytes(&[("Content-Type", P7Z.into())], &der);
    }
    let ctx = ReceiveContext::new(&[], &[], ValidityPolicy::at(0));
    // MAX_NESTING layers of compression around the payload: one too many.
    let top = Entity::parse(&entity).unwrap();
    let err = parse(P7Z, top.body(), &ctx).unwrap_err();
    assert!(err.to_string().contains("nesting deeper than 8"), "{err}");
    // One layer fewer is fine.
    let inner = cms::decompress(top.body(), 1 << 20).unwrap();
    let inner = Entity::parse(&inner).unwrap();
    let m = parse(P7Z, inner.body(), &ctx).unwrap();
    assert_eq!(m.attachments[0].data, b"hi");
}

#[test]
fn parts_and_attachments_are_capped() {
    let body = |n: usize| {
        let mut b = Vec::new();
        for i in 0..n {
            b.extend_from_slice(
                format!("--B\r\nContent-Type: text/plain\r\n\r\n{i}\r\n").as_bytes(),
            );
        }
        b.extend_from_slice(b"--B--\r\n");
        b
    };
    let ctx = ReceiveContext::new(&[], &[], ValidityPolicy::at(0));
    let ct = "multipart/related; boundary=B";
    assert_eq!(
        parse(ct, &body(MAX_PARTS), &ctx).unwrap().attachments.len(),
        MAX_PARTS
    );
    for n in [MAX_PARTS + 1, 100_000] {
        let err = parse(ct, &body(n), &ctx).unwrap_err();
        assert!(err.to_string().contains("more than 1000 parts"), "{err}");
        assert_eq!(
            err.disposition_modifier(),
            DispositionModifier::UnexpectedProcessingError
        );
    }
    const { assert!(MAX_ATTACHMENTS <= MAX_PARTS) };
}

#[test]
fn decompression_is_bounded_by_the_context_and_asks_for_memory() {
    let mut entity = b"Content-Type: application/octet-stream\r\n\r\n".to_vec();
    entity.resize(entity.len() + (3 << 20), b'z');
    let der = cms::compress(&entity).unwrap();
    let mut ctx = ReceiveContext::new(&[], &[], ValidityPolicy::at(0));
    ctx.max_decompressed_size = 2 << 20;
    let err = parse(P7Z, &der, &ctx).unwrap_err();
    assert_eq!(
        err.disposition_modifier(),
        DispositionModifier::DecompressionFailed
    );
    assert!(
        err.to_string().contains("larger than the limit of 2097152"),
        "{err}"
    );

    // Within the limit: inflated to the spool.
    ctx.max_decompressed_size = 4 << 20;
    let m = parse(P7Z, &der, &ctx).unwrap();
    assert_eq!(m.attachments[0].data.len(), 3 << 20);
    assert!(m.compressed);
    assert_eq!(
        decompressed_size_limit(1 << 20, 100, 16 << 20, 1 << 30),
        100 << 20
    );
    assert_eq!(
        decompressed_size_limit(1 << 10, 100, 16 << 20, 1 << 30),
        16 << 20
    );
    assert_eq!(
        decompressed_size_limit(usize::MAX, 100, 0, usize::MAX),
        usize::MAX
    );
    // The cap bounds what a large body may inflate to, but never below the floor.
    assert_eq!(
        decompressed_size_limit(1 << 30, 100, 16 << 20, 4 << 30),
        4 << 30
    );
    assert_eq!(
        decompressed_size_limit(1 << 20, 100, 16 << 20, 1 << 20),
        16 << 20
    );
}

#[test]
fn the_encrypted_entity_mic_is_the_canonical_headers_mic() {
    for raw in [
        &b"Content-Type: text/plain\nX: y\n\nbody\nwith LF"[..],
        b"Content-Type: text/plain\r\n\r\nbody\r\n",
        b"A: b\rC: d\r\n\nx",
        b"no blank line at all\n",
        b"",
        b"\r\nonly body",
    ] {
        for alg in [DigestAlgorithm::Sha1, DigestAlgorithm::Sha256] {
            assert_eq!(
                mic_with_crlf_headers(raw, alg).unwrap(),
                Mic::compute(&canonicalize_headers(raw), alg).unwrap(),
                "{raw:?}"
            );
        }
    }
}

#[test]
fn as2_1_3_weak_algorithms_are_named_and_strong_ones_pass() {
    use crate::as2::algorithms::EncryptionAlgorithm;
    use crate::as2::cms::SignatureInfo;
    let signed = |d| SignatureInfo {
        digest: Some(d),
        signer: "CN=x".into(),
        certificate_valid: true,
    };
    assert!(
        weak_algorithm(Some(Some(EncryptionAlgorithm::TripleDes)), None)
            .unwrap()
            .contains("3DES")
    );
    assert!(weak_algorithm(Some(None), None).unwrap().contains("RC2"));
    assert!(weak_algorithm(None, Some(&signed(DigestAlgorithm::Sha1)))
        .unwrap()
        .contains("sha-1"));
    assert_eq!(
        weak_algorithm(
            Some(Some(EncryptionAlgorithm::Aes256Cbc)),
            Some(&signed(DigestAlgorithm::Sha256))
        ),
        None
    );
}
