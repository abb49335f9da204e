// Shared fixed test keys for the fuzz targets (generated once per process).
use as2box::as2::KeyPair;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};

pub fn keypair() -> &'static KeyPair {
    static K: std::sync::OnceLock<KeyPair> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut n = X509NameBuilder::new().unwrap();
        n.append_entry_by_text("CN", "fuzz").unwrap();
        let n = n.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&n).unwrap();
        b.set_issuer_name(&n).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::from_unix(4_000_000_000).unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        KeyPair { key, cert: b.build(), chain: Vec::new() }
    })
}
