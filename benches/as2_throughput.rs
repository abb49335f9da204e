//! Throughput of build+parse for signed (sha256) + AES-256-CBC messages,
//! next to the `openssl cms` command doing the same cryptographic work and to
//! pyas2lib, measured in the same run. Prints a table; never fails on timing.
//! Run through `scripts/bench-as2`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use as2box::as2::certs::{KeyPair, ValidityPolicy};
use as2box::as2::message::{build_message, parse_message, Attachment, ReceiveContext, SendProfile};
use as2box::as2::{DigestAlgorithm, EncryptionAlgorithm};
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};

const NOW: i64 = 1_795_824_000;

fn keypair(cn: &str) -> KeyPair {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    let n = n.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(7)
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&n).unwrap();
    b.set_issuer_name(&n).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(1_577_836_800).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(2_208_988_800).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    KeyPair {
        key,
        cert: b.build(),
        chain: vec![],
    }
}

fn mib_s(size: usize, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!(
        "{:8.1} MiB/s ({:7.1} ms)",
        size as f64 / 1048576.0 / secs,
        secs * 1000.0
    )
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let a = keypair("bench sender");
    let b = keypair("bench receiver");
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, data: &[u8]| -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    };
    let pem = |k: &KeyPair| {
        let mut v = k.key.private_key_to_pem_pkcs8().unwrap();
        v.extend(k.cert.to_pem().unwrap());
        v
    };
    let a_pem = w("a.pem", &pem(&a));
    let b_pem = w("b.pem", &pem(&b));
    let a_crt = w("a.crt", &a.cert.to_pem().unwrap());
    let b_crt = w("b.crt", &b.cert.to_pem().unwrap());
    let python: Option<PathBuf> = std::env::var_os("AS2BOX_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-interop/bin/python");
            p.exists().then_some(p)
        });

    println!("build+parse, signed sha256 + AES-256-CBC, binary payload, 2 cores");
    println!(
        "{:>7} | {:>28} | {:>28} | {:>28}",
        "size", "as2box (in-process)", "openssl cms CLI (4 runs)", "pyas2lib (in-process)"
    );
    for size in [1usize << 20, 10 << 20] {
        let data: Vec<u8> = (0..size)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let iters = if size <= 1 << 20 { 10 } else { 3 };

        // as2box: build (canonical entity, sign, encrypt) + parse (decrypt, verify, split, MIC).
        let mut p = SendProfile::new("a", "b");
        p.sign = Some(DigestAlgorithm::Sha256);
        p.encrypt = Some(EncryptionAlgorithm::Aes256Cbc);
        let keys = [b.clone()];
        let certs = [a.cert.clone()];
        let ctx = ReceiveContext::new(&keys, &certs, ValidityPolicy::at(NOW));
        let att = [Attachment {
            filename: Some("f.bin".into()),
            content_type: "application/octet-stream".into(),
            data: data.clone(),
        }];
        let t = Instant::now();
        for _ in 0..iters {
            let m = build_message(&att, &p, Some(&a), Some(&b.cert), NOW, None).unwrap();
            let r = parse_message(&m.headers, &m.body, &ctx).unwrap();
            assert_eq!(r.attachments[0].data.len(), size);
        }
        let ours = t.elapsed().as_secs_f64() / iters as f64;

        // openssl cms: sign, encrypt, decrypt, verify (same crypto, 4 processes).
        let input = w("in.bin", &data);
        let run = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(ok, "openssl {args:?}");
        };
        let sig = dir.path().join("sig.der").display().to_string();
        let env = dir.path().join("env.der").display().to_string();
        let dec = dir.path().join("dec.bin").display().to_string();
        let cli = if Command::new("openssl").arg("version").output().is_ok() {
            let t = Instant::now();
            for _ in 0..iters {
                run(&[
                    "cms", "-sign", "-binary", "-md", "sha256", "-in", &input, "-signer", &a_pem,
                    "-outform", "DER", "-out", &sig,
                ]);
                run(&[
                    "cms", "-encrypt", "-binary", "-aes256", "-in", &input, "-outform", "DER",
                    "-out", &env, &b_crt,
                ]);
                run(&[
                    "cms", "-decrypt", "-binary", "-inform", "DER", "-in", &env, "-inkey", &b_pem,
                    "-out", &dec,
                ]);
                run(&[
                    "cms",
                    "-verify",
                    "-binary",
                    "-inform",
                    "DER",
                    "-in",
                    &sig,
                    "-content",
                    &dec,
                    "-CAfile",
                    &a_crt,
                    "-purpose",
                    "any",
                    "-out",
                    "/dev/null",
                ]);
            }
            t.elapsed().as_secs_f64() / iters as f64
        } else {
            0.0
        };

        let py = python.as_ref().and_then(|py| {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pyas2_peer.py");
            let out = Command::new(py)
                .arg(script)
                .arg("bench-roundtrip")
                .args([&a_pem, &b_pem, &size.to_string(), &iters.to_string()])
                .output()
                .ok()?;
            if !out.status.success() {
                eprintln!(
                    "pyas2lib bench failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return None;
            }
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        });
        println!(
            "{:>4} MiB | {:>28} | {:>28} | {:>28}",
            size >> 20,
            mib_s(size, ours),
            mib_s(size, cli),
            py.map(|s| mib_s(size, s))
                .unwrap_or_else(|| "n/a (no .venv-interop)".into())
        );
    }
}
