//! `as2box decode` on the real captures, through the built binary.

use crate::common::as2 as as2_common;

use serde_json::Value;
use std::process::Command;

fn decode(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_as2box"))
        .arg("decode")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run as2box");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = if args.contains(&"--json") {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
    } else {
        Value::Null
    };
    (out.status.success(), v, stdout)
}

fn p(dir: &std::path::Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

#[test]
fn decodes_mendelson_message_and_extracts() {
    let Some(dir) = as2_common::vectors_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let (ok, v, _) = decode(&[
        &p(&dir, "mecas2_compressed_signed_encrypted.as2"),
        "--key",
        &p(&dir, "cert_test.p12"),
        "--key-pass",
        "test",
        "--cert",
        &p(&dir, "cert_mecas2_public.pem"),
        "--at",
        "1641304626",
        "--json",
        "--extract",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{v}");
    assert_eq!(v["kind"], "message");
    assert_eq!(v["ok"], true);
    assert_eq!(v["encrypted"]["cipher"], "des-ede3-cbc");
    assert_eq!(v["signed"]["digest"], "sha-256");
    assert_eq!(v["signed"]["verified"], true);
    assert_eq!(v["compressed"]["before_signing"], true);
    assert_eq!(v["mic"]["algorithm"], "sha-256");
    assert_eq!(v["mic"]["rule"], "rfc4130-signed");
    assert_eq!(v["attachments"][0]["filename"], "payload.txt");
    let payload = as2_common::vector(&dir, "payload.txt");
    let extracted = std::fs::read(out_dir.join("payload.txt")).unwrap();
    assert_eq!(v["attachments"][0]["size"], extracted.len());
    assert_eq!(
        v["attachments"][0]["sha256"],
        as2_common::sha256_hex(&extracted)
    );
    let norm = |b: &[u8]| {
        b.iter()
            .copied()
            .filter(|&c| c != b'\r')
            .collect::<Vec<u8>>()
    };
    assert_eq!(norm(&extracted), norm(&payload));
    // Extract never overwrites.
    let (ok, _, _) = decode(&[
        &p(&dir, "mecas2_compressed_signed_encrypted.as2"),
        "--key",
        &p(&dir, "cert_test.p12"),
        "--key-pass",
        "test",
        "--cert",
        &p(&dir, "cert_mecas2_public.pem"),
        "--at",
        "1641304626",
        "--extract",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!ok);
}

#[test]
fn pem_key_and_text_output() {
    let Some(dir) = as2_common::vectors_dir() else {
        return;
    };
    let (ok, _, text) = decode(&[
        &p(&dir, "mecas2_encrypted.as2"),
        "--key",
        &p(&dir, "cert_test.pem"),
        "--key-pass",
        "test",
        "--cert",
        &p(&dir, "cert_mecas2_public.pem"),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("cipher: des-ede3-cbc"), "{text}");
    assert!(
        text.contains("filename: payload.txt") || text.contains("size: "),
        "{text}"
    );
}

#[test]
fn wrong_certificate_reports_authentication_failed() {
    let Some(dir) = as2_common::vectors_dir() else {
        return;
    };
    let (ok, v, _) = decode(&[
        &p(&dir, "mecas2_signed.as2"),
        "--key",
        &p(&dir, "cert_test.p12"),
        "--key-pass",
        "test",
        "--cert",
        &p(&dir, "cert_test_public.pem"),
        "--json",
    ]);
    assert!(!ok);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["disposition_modifier"], "authentication-failed");
    assert_eq!(v["as2_from"], "mecas2");
}

#[test]
fn decodes_mdns() {
    let Some(dir) = as2_common::vectors_dir() else {
        return;
    };
    let (ok, v, _) = decode(&[&p(&dir, "mecas2_unsigned.mdn"), "--json"]);
    assert!(ok, "{v}");
    assert_eq!(v["kind"], "mdn");
    assert_eq!(v["disposition"], "processed/error: authentication-failed");
    assert_eq!(v["signed"], false);

    // Sterling's certificate expired in 2020: refused unless accepted explicitly.
    let args = [
        p(&dir, "sb2bi_signed.mdn"),
        "--cert".into(),
        p(&dir, "cert_sb2bi_public.pem"),
        "--json".into(),
    ];
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, v, _) = decode(&a);
    assert!(!ok);
    assert_eq!(v["error"]["disposition_modifier"], "authentication-failed");
    let mut a2 = a.clone();
    a2.push("--accept-expired");
    let (ok, v, _) = decode(&a2);
    assert!(ok, "{v}");
    assert_eq!(v["disposition"], "processed");
    assert_eq!(v["signature"]["verified"], true);
    assert_eq!(v["signature"]["certificate_valid"], false);
    assert_eq!(
        v["original_message_id"],
        "151694007918.24690.7052273208458909245@ip-172-31-14-209.ec2.internal"
    );
    assert!(v["mic"]["value"].is_string());
}

#[test]
fn every_capture_decodes_through_the_cli() {
    let Some(dir) = as2_common::vectors_dir() else {
        return;
    };
    let payload = as2_common::vector(&dir, "payload.txt");
    let want_sha = as2_common::sha256_hex(&payload);
    let want_sha_crlf = as2_common::sha256_hex(&as2box::as2::mime::canonicalize_crlf(&payload));
    for (file, enc, signed, compressed) in [
        ("mecas2_signed.as2", false, true, false),
        ("mecas2_encrypted.as2", true, false, false),
        ("mecas2_signed_encrypted.as2", true, true, false),
        // The "compressed" capture is also signed (multipart/signed around compressed-data).
        ("mecas2_compressed.as2", false, true, true),
        ("mecas2_compressed_signed_encrypted.as2", true, true, true),
    ] {
        let (ok, v, _) = decode(&[
            &p(&dir, file),
            "--key",
            &p(&dir, "cert_test.p12"),
            "--key-pass",
            "test",
            "--cert",
            &p(&dir, "cert_mecas2_public.pem"),
            "--at",
            "1641304626",
            "--json",
        ]);
        assert!(ok, "{file}: {v}");
        assert_eq!(v["encrypted"].is_object(), enc, "{file}");
        assert_eq!(v["signed"].is_object(), signed, "{file}");
        assert_eq!(v["compressed"].is_object(), compressed, "{file}");
        if enc {
            assert_eq!(v["encrypted"]["cipher"], "des-ede3-cbc", "{file}");
        }
        if signed {
            assert_eq!(v["signed"]["digest"], "sha-256", "{file}");
        }
        let sha = v["attachments"][0]["sha256"].as_str().unwrap().to_string();
        assert!(
            sha == want_sha || sha == want_sha_crlf,
            "{file}: content equals payload.txt"
        );
    }
    let (ok, v, _) = decode(&[
        &p(&dir, "sb2bi_signed_cmp.msg"),
        "--cert",
        &p(&dir, "cert_sb2bi_public.pem"),
        "--accept-expired",
        "--json",
    ]);
    assert!(ok, "{v}");
    assert_eq!(v["signed"]["digest"], "sha-1");
    assert_eq!(v["signed"]["certificate_valid"], false);
    assert_eq!(v["compressed"]["before_signing"], true);
    assert_eq!(v["mic"]["algorithm"], "sha-1");
}
