//! The `openssl cms` command line verifies our signatures and decrypts our
//! envelopes, and produces inputs that we parse.

use crate::common::as2 as as2_common;

use as2_common::{test_keys, NOW};
use as2box::as2::certs::ValidityPolicy;
use as2box::as2::headers::Headers;
use as2box::as2::message::{build_message, parse_message, Attachment, ReceiveContext, SendProfile};
use as2box::as2::mime::Entity;
use as2box::as2::{DigestAlgorithm, DispositionModifier, EncryptionAlgorithm};
use std::path::Path;
use std::process::Command;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let (ours, theirs) = test_keys();
        let dir = tempfile::tempdir().unwrap();
        for (name, kp) in [("ours", ours), ("theirs", theirs)] {
            std::fs::write(
                dir.path().join(format!("{name}.key")),
                kp.key.private_key_to_pem_pkcs8().unwrap(),
            )
            .unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.crt")),
                kp.cert.to_pem().unwrap(),
            )
            .unwrap();
        }
        Files { dir }
    }
    fn p(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
    fn write(&self, f: &str, data: &[u8]) -> String {
        std::fs::write(self.dir.path().join(f), data).unwrap();
        self.p(f)
    }
}

fn openssl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn att(data: &[u8]) -> Attachment {
    Attachment {
        filename: Some("f.edi".into()),
        content_type: "application/edi-x12".into(),
        data: data.to_vec(),
    }
}

/// The whole HTTP message as an S/MIME mail (Content-Type header + body).
fn as_smime(headers: &Headers, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "MIME-Version: 1.0\r\nContent-Type: {}\r\n\r\n",
        headers.get("content-type").unwrap()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[test]
fn openssl_verifies_our_signatures() {
    if as2_common::openssl_cli().is_none() {
        return;
    }
    let f = Files::new();
    let (ours, _) = test_keys();
    for d in DigestAlgorithm::SIGNING {
        for (caps, prot) in [(true, true), (false, false)] {
            let mut p = SendProfile::new("a", "b");
            p.sign = Some(d);
            p.smime_capabilities = caps;
            p.algorithm_protection = prot;
            let m =
                build_message(&[att(b"line1\nline2\n")], &p, Some(ours), None, NOW, None).unwrap();
            // openssl reads the whole multipart/signed S/MIME message (its
            // -binary reader mishandles the CRLF before the delimiter, so the
            // S/MIME check runs in its canonical text mode; our text content is
            // already canonical) ...
            let mail = f.write("signed.eml", &as_smime(&m.headers, &m.body));
            let (ok, content, err) = openssl(&[
                "cms",
                "-verify",
                "-in",
                &mail,
                "-CAfile",
                &f.p("ours.crt"),
                "-purpose",
                "any",
            ]);
            assert!(ok, "{d:?}: {err}");
            assert!(
                content.ends_with(b"\r\n\r\nline1\r\nline2\r\n"),
                "{d:?}: canonical content"
            );
            // ... and verifies the detached signature over the exact first part
            // in binary mode; its digest is our MIC.
            let (part1, sig) = split_signed(&m.headers, &m.body);
            let part1_path = f.write("part1", &part1);
            let sig_path = f.write("sig.der", &sig);
            let (ok, _, err) = openssl(&[
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-in",
                &sig_path,
                "-content",
                &part1_path,
                "-CAfile",
                &f.p("ours.crt"),
                "-purpose",
                "any",
            ]);
            assert!(ok, "{d:?}: {err}");
            let mic = as2box::as2::mic::Mic::compute(&part1, d).unwrap();
            assert!(mic.matches(m.mic.as_ref().unwrap()), "{d:?}");
            // And openssl rejects a tampered copy.
            let mut bad = m.body.clone();
            let i = bad.windows(5).position(|w| w == b"line2").unwrap();
            bad[i] = b'L';
            let mail = f.write("bad.eml", &as_smime(&m.headers, &bad));
            let (ok, _, _) = openssl(&[
                "cms",
                "-verify",
                "-in",
                &mail,
                "-CAfile",
                &f.p("ours.crt"),
                "-purpose",
                "any",
            ]);
            assert!(!ok, "{d:?}: tampered content must not verify");
        }
    }
    // Binary content (never canonicalized) verifies over the exact bytes.
    let data: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut p = SendProfile::new("a", "b");
    p.sign = Some(DigestAlgorithm::Sha256);
    let m = build_message(
        &[Attachment {
            filename: None,
            content_type: "application/octet-stream".into(),
            data: data.clone(),
        }],
        &p,
        Some(ours),
        None,
        NOW,
        None,
    )
    .unwrap();
    let (part1, sig) = split_signed(&m.headers, &m.body);
    assert!(part1.ends_with(&data), "binary payload untouched");
    let part1_path = f.write("part1", &part1);
    let sig_path = f.write("sig.der", &sig);
    let (ok, _, err) = openssl(&[
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        &sig_path,
        "-content",
        &part1_path,
        "-CAfile",
        &f.p("ours.crt"),
        "-purpose",
        "any",
    ]);
    assert!(ok, "{err}");
}

fn split_signed(headers: &Headers, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let e = Entity::from_parts(headers.clone(), body);
    let b = e.content_type().param("boundary").unwrap().to_string();
    let parts = as2box::as2::mime::split_multipart(e.body(), &b).unwrap();
    (
        parts[0].to_vec(),
        Entity::parse(parts[1]).unwrap().decoded_body().unwrap(),
    )
}

#[test]
fn openssl_decrypts_our_envelopes() {
    if as2_common::openssl_cli().is_none() {
        return;
    }
    let f = Files::new();
    let (_, theirs) = test_keys();
    for c in EncryptionAlgorithm::ALL {
        let mut p = SendProfile::new("a", "b");
        p.encrypt = Some(c);
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let m = build_message(
            &[Attachment {
                filename: None,
                content_type: "application/octet-stream".into(),
                data: data.clone(),
            }],
            &p,
            None,
            Some(&theirs.cert),
            NOW,
            None,
        )
        .unwrap();
        let der = f.write("env.der", &m.body);
        let (ok, out, err) = openssl(&[
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            &der,
            "-recip",
            &f.p("theirs.crt"),
            "-inkey",
            &f.p("theirs.key"),
        ]);
        assert!(ok, "{c:?}: {err}");
        let e = Entity::parse(&out).unwrap();
        assert_eq!(e.media_type(), "application/octet-stream", "{c:?}");
        assert_eq!(e.body(), &data[..], "{c:?}");
        let (ok, info, _) = openssl(&["cms", "-cmsout", "-print", "-inform", "DER", "-in", &der]);
        assert!(ok);
        let info = String::from_utf8_lossy(&info).to_lowercase();
        let want = match c {
            EncryptionAlgorithm::TripleDes => "des-ede3-cbc",
            EncryptionAlgorithm::Aes128Cbc => "aes-128-cbc",
            EncryptionAlgorithm::Aes192Cbc => "aes-192-cbc",
            EncryptionAlgorithm::Aes256Cbc => "aes-256-cbc",
            EncryptionAlgorithm::Aes128Gcm => "aes-128-gcm",
            EncryptionAlgorithm::Aes256Gcm => "aes-256-gcm",
        };
        assert!(info.contains(want), "{c:?}: {info}");
        // RSAES-OAEP key transport: openssl opens it, and so do we.
        p.rsa_oaep = true;
        let m2 = build_message(
            &[Attachment {
                filename: None,
                content_type: "application/octet-stream".into(),
                data: data.clone(),
            }],
            &p,
            None,
            Some(&theirs.cert),
            NOW,
            None,
        )
        .unwrap();
        let der2 = f.write("env-oaep.der", &m2.body);
        let (ok, info2, _) = openssl(&["cms", "-cmsout", "-print", "-inform", "DER", "-in", &der2]);
        assert!(
            ok && String::from_utf8_lossy(&info2).contains("rsaesOaep"),
            "{c:?}: OAEP"
        );
        let (ok, out, err) = openssl(&[
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            &der2,
            "-recip",
            &f.p("theirs.crt"),
            "-inkey",
            &f.p("theirs.key"),
        ]);
        assert!(ok, "{c:?} OAEP: {err}");
        assert_eq!(Entity::parse(&out).unwrap().body(), &data[..], "{c:?} OAEP");
        let keys = [theirs.clone()];
        let r = parse_message(
            &m2.headers,
            &m2.body,
            &ReceiveContext::new(&keys, &[], ValidityPolicy::at(NOW)),
        )
        .unwrap();
        assert_eq!(r.attachments[0].data, data, "{c:?} OAEP");
        // The wrong key does not open it.
        let (ok, _, _) = openssl(&[
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            &der,
            "-recip",
            &f.p("ours.crt"),
            "-inkey",
            &f.p("ours.key"),
        ]);
        assert!(!ok);
    }
}

fn as2_headers(ct: &str) -> Headers {
    Headers::from_pairs([
        ("AS2-From", "openssl"),
        ("AS2-To", "as2box"),
        ("Message-ID", "<openssl@test>"),
        ("Content-Type", ct),
    ])
}

#[test]
fn we_parse_what_openssl_produces() {
    if as2_common::openssl_cli().is_none() {
        return;
    }
    let f = Files::new();
    let (ours, theirs) = test_keys();
    // openssl signs as the partner ("theirs") and encrypts for us ("ours").
    let keys = [ours.clone()];
    let certs = [theirs.cert.clone()];
    let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
    let entity = b"Content-Type: application/edi-x12\r\nContent-Disposition: attachment; filename=\"po.x12\"\r\n\r\nISA*00*~\r\nGS*PO~\r\n";
    let ent = f.write("entity.txt", entity);

    for md in ["sha1", "sha256", "sha512"] {
        // Detached multipart/signed S/MIME.
        let (ok, mail, err) = openssl(&[
            "cms",
            "-sign",
            "-binary",
            "-in",
            &ent,
            "-signer",
            &f.p("theirs.crt"),
            "-inkey",
            &f.p("theirs.key"),
            "-md",
            md,
        ]);
        assert!(ok, "{err}");
        let e = Entity::parse(&mail).unwrap();
        let h = as2_headers(e.headers.get("content-type").unwrap());
        let r = parse_message(&h, e.body(), &ctx).unwrap_or_else(|e| panic!("{md}: {e}"));
        assert_eq!(r.attachments[0].data, b"ISA*00*~\r\nGS*PO~\r\n");
        assert_eq!(r.attachments[0].filename.as_deref(), Some("po.x12"));
        assert_eq!(
            r.signature.unwrap().digest.unwrap(),
            DigestAlgorithm::parse(md).unwrap()
        );
        // MIC = digest of the signed entity.
        assert!(r.mic.matches(
            &as2box::as2::mic::Mic::compute(entity, DigestAlgorithm::parse(md).unwrap()).unwrap()
        ));
    }

    // Opaque signed-data (application/pkcs7-mime; smime-type=signed-data).
    let (ok, der, err) = openssl(&[
        "cms",
        "-sign",
        "-nodetach",
        "-binary",
        "-in",
        &ent,
        "-signer",
        &f.p("theirs.crt"),
        "-inkey",
        &f.p("theirs.key"),
        "-outform",
        "DER",
    ]);
    assert!(ok, "{err}");
    let r = parse_message(
        &as2_headers("application/pkcs7-mime; smime-type=signed-data"),
        &der,
        &ctx,
    )
    .unwrap();
    assert_eq!(r.attachments[0].data, b"ISA*00*~\r\nGS*PO~\r\n");
    assert!(r.signature.is_some());

    // Envelopes for every cipher openssl offers us.
    for cipher in [
        "-des3",
        "-aes128",
        "-aes192",
        "-aes256",
        "-aes-128-gcm",
        "-aes-256-gcm",
    ] {
        let (ok, der, err) = openssl(&[
            "cms",
            "-encrypt",
            "-binary",
            cipher,
            "-in",
            &ent,
            "-outform",
            "DER",
            &f.p("ours.crt"),
        ]);
        assert!(ok, "{cipher}: {err}");
        let r = parse_message(
            &as2_headers("application/pkcs7-mime; smime-type=enveloped-data"),
            &der,
            &ctx,
        )
        .unwrap_or_else(|e| panic!("{cipher}: {e}"));
        assert_eq!(r.attachments[0].data, b"ISA*00*~\r\nGS*PO~\r\n", "{cipher}");
        assert!(r.encryption.unwrap().is_some(), "{cipher}");
        // Encrypted for someone else: decryption-failed.
        let (ok, der, _) = openssl(&[
            "cms",
            "-encrypt",
            "-binary",
            cipher,
            "-in",
            &ent,
            "-outform",
            "DER",
            &f.p("theirs.crt"),
        ]);
        assert!(ok);
        let e = parse_message(
            &as2_headers("application/pkcs7-mime; smime-type=enveloped-data"),
            &der,
            &ctx,
        )
        .unwrap_err();
        assert_eq!(
            e.disposition_modifier(),
            DispositionModifier::DecryptionFailed
        );
    }

    // Signed then encrypted, as a real AS2 sender does.
    let (ok, mail, _) = openssl(&[
        "cms",
        "-sign",
        "-binary",
        "-in",
        &ent,
        "-signer",
        &f.p("theirs.crt"),
        "-inkey",
        &f.p("theirs.key"),
    ]);
    assert!(ok);
    let mail_path = f.write("signed.eml", &mail);
    let (ok, der, err) = openssl(&[
        "cms",
        "-encrypt",
        "-binary",
        "-aes256",
        "-in",
        &mail_path,
        "-outform",
        "DER",
        &f.p("ours.crt"),
    ]);
    assert!(ok, "{err}");
    let r = parse_message(
        &as2_headers("application/pkcs7-mime; smime-type=enveloped-data"),
        &der,
        &ctx,
    )
    .unwrap();
    assert!(r.signature.is_some() && r.encryption.is_some());
    assert_eq!(r.attachments[0].data, b"ISA*00*~\r\nGS*PO~\r\n");
    let _ = Path::new("");
}
