//! Shared helpers for the AS2 integration tests: where the vectors and the
//! interop Python are, and the skip-or-fail rule for system tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Whether system tests are mandatory (CI sets `AS2BOX_SYSTEM_TESTS`).
pub fn system_tests_required() -> bool {
    std::env::var_os("AS2BOX_SYSTEM_TESTS").is_some_and(|v| !v.is_empty())
}

/// Skips (returns `None` after printing why) or, when system tests are
/// required, fails.
pub fn skip_or_fail<T>(reason: &str) -> Option<T> {
    if system_tests_required() {
        panic!("AS2BOX_SYSTEM_TESTS is set but {reason}");
    }
    eprintln!("SKIPPED: {reason} (set AS2BOX_SYSTEM_TESTS=1 to make this a failure)");
    None
}

/// The test vector folder (`AS2BOX_VECTORS`, default `<repo>/../shared/as2-vectors`).
pub fn vectors_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AS2BOX_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/as2-vectors"));
    if dir.join("README.md").is_file() && dir.join("cert_test.p12").is_file() {
        Some(dir)
    } else {
        skip_or_fail(&format!("AS2 vector folder {} is missing", dir.display()))
    }
}

/// Reads a vector file.
pub fn vector(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("reading vector {name}: {e}"))
}

/// The interop Python (`AS2BOX_PYTHON`, default `<repo>/.venv-interop/bin/python`)
/// with pyas2lib importable.
pub fn python() -> Option<PathBuf> {
    let py = std::env::var_os("AS2BOX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-interop/bin/python"));
    if !py.exists() {
        return skip_or_fail(&format!(
            "interop python {} is missing (run scripts/setup-interop)",
            py.display()
        ));
    }
    let ok = std::process::Command::new(&py)
        .args(["-c", "import pyas2lib"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return skip_or_fail(&format!("{} cannot import pyas2lib (run scripts/setup-interop)", py.display()));
    }
    Some(py)
}

/// The `openssl` command, if present.
pub fn openssl_cli() -> Option<PathBuf> {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(PathBuf::from("openssl"))
    } else {
        skip_or_fail("the openssl command is missing")
    }
}

use as2box::as2::certs::KeyPair;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};

/// A fresh self-signed RSA-2048 key pair valid from 2020 to 2040.
pub fn make_keypair(cn: &str) -> KeyPair {
    let rsa = Rsa::generate(2048).unwrap();
    let key = PKey::from_rsa(rsa).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(0x1234).unwrap().to_asn1_integer().unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(1_577_836_800).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::from_unix(2_208_988_800).unwrap()).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    KeyPair { key, cert: b.build(), chain: Vec::new() }
}

/// Two key pairs shared by a test binary: (ours, partner's).
pub fn test_keys() -> &'static (KeyPair, KeyPair) {
    static K: std::sync::OnceLock<(KeyPair, KeyPair)> = std::sync::OnceLock::new();
    K.get_or_init(|| (make_keypair("as2box test station"), make_keypair("as2box test partner")))
}

/// 2026-11-28, a fixed "now" for tests.
pub const NOW: i64 = 1_795_824_000;
