//! Loading keys and certificates (PEM, DER, PKCS#12) and checking a
//! certificate's validity period against a time passed in.
//!
//! There is no clock here: callers pass the verification time, or an explicit
//! policy that accepts expired certificates (IBM Sterling's test certificate
//! expired in 2020). An expired certificate is never passed silently: the
//! result says so.

use openssl::asn1::Asn1Time;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

use super::error::{As2Error, Result};

/// A private key with its certificate (and any chain that came with it).
#[derive(Clone)]
pub struct KeyPair {
    /// The private key.
    pub key: PKey<Private>,
    /// The certificate of the key.
    pub cert: X509,
    /// Further certificates found next to it (CA chain), possibly empty.
    pub chain: Vec<X509>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("subject", &subject_of(&self.cert))
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn cred_err(what: &str, e: impl std::fmt::Display) -> As2Error {
    As2Error::Credentials(format!("{what}: {e}"))
}

/// Loads OpenSSL's legacy provider once (PKCS#12 files made by older tools
/// use RC2-40, which OpenSSL 3 only has there). Keeps the default provider.
fn ensure_legacy_provider() {
    static LEGACY: std::sync::OnceLock<Option<openssl::provider::Provider>> =
        std::sync::OnceLock::new();
    LEGACY.get_or_init(|| openssl::provider::Provider::try_load(None, "legacy", true).ok());
}

impl KeyPair {
    /// Loads a key and certificate from one blob: PKCS#12 (DER), or PEM that
    /// holds both the (possibly encrypted) private key and the certificate.
    pub fn load(data: &[u8], password: Option<&str>) -> Result<Self> {
        if looks_like_pem(data) {
            let key = load_private_key(data, password)?;
            let certs = load_certificates(data)?;
            return Self::from_key_and_certs(key, certs);
        }
        Self::from_pkcs12(data, password.unwrap_or(""))
    }

    /// Loads a key file and a separate certificate file (each PEM or DER).
    pub fn from_separate(key: &[u8], cert: &[u8], password: Option<&str>) -> Result<Self> {
        let key = load_private_key(key, password)?;
        let certs = load_certificates(cert)?;
        Self::from_key_and_certs(key, certs)
    }

    /// Loads a PKCS#12 archive.
    pub fn from_pkcs12(der: &[u8], password: &str) -> Result<Self> {
        ensure_legacy_provider();
        let p12 = Pkcs12::from_der(der).map_err(|e| cred_err("not PKCS#12 or PEM", e))?;
        let parsed = p12
            .parse2(password)
            .map_err(|e| cred_err("PKCS#12 (wrong password?)", e))?;
        let key = parsed
            .pkey
            .ok_or_else(|| cred_err("PKCS#12", "no private key"))?;
        let mut certs: Vec<X509> = parsed.cert.into_iter().collect();
        if let Some(ca) = parsed.ca {
            certs.extend(ca);
        }
        Self::from_key_and_certs(key, certs)
    }

    fn from_key_and_certs(key: PKey<Private>, certs: Vec<X509>) -> Result<Self> {
        let idx = certs
            .iter()
            .position(|c| c.public_key().map(|p| p.public_eq(&key)).unwrap_or(false))
            .ok_or_else(|| cred_err("key pair", "no certificate matches the private key"))?;
        let mut certs = certs;
        let cert = certs.remove(idx);
        Ok(Self {
            key,
            cert,
            chain: certs,
        })
    }
}

fn looks_like_pem(data: &[u8]) -> bool {
    data.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Loads a private key from PEM (plain, PKCS#8, encrypted PKCS#8, legacy
/// encrypted) or DER (PKCS#8, encrypted PKCS#8, traditional).
pub fn load_private_key(data: &[u8], password: Option<&str>) -> Result<PKey<Private>> {
    let pass = password.unwrap_or("").as_bytes();
    if looks_like_pem(data) {
        return PKey::private_key_from_pem_passphrase(data, pass)
            .map_err(|e| cred_err("private key (PEM; wrong password?)", e));
    }
    if let Ok(k) = PKey::private_key_from_der(data) {
        return Ok(k);
    }
    PKey::private_key_from_pkcs8_passphrase(data, pass)
        .map_err(|e| cred_err("private key (DER; wrong password?)", e))
}

/// Loads every certificate from PEM (any number) or one DER certificate.
pub fn load_certificates(data: &[u8]) -> Result<Vec<X509>> {
    if looks_like_pem(data) {
        let certs = X509::stack_from_pem(data).map_err(|e| cred_err("certificate (PEM)", e))?;
        if certs.is_empty() {
            return Err(cred_err("certificate (PEM)", "no certificate found"));
        }
        return Ok(certs);
    }
    X509::from_der(data)
        .map(|c| vec![c])
        .map_err(|e| cred_err("certificate (DER)", e))
}

/// When a partner certificate is checked for validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidityPolicy {
    /// The verification time, unix seconds (the caller's clock).
    pub at_unix: i64,
    /// Accept a certificate that is expired or not yet valid at `at_unix`;
    /// the result still reports it.
    pub accept_expired: bool,
}

impl ValidityPolicy {
    /// Strict checking at the given time.
    pub fn at(unix: i64) -> Self {
        Self {
            at_unix: unix,
            accept_expired: false,
        }
    }

    /// Checking at the given time that lets expired certificates through,
    /// reported as such.
    pub fn accept_expired(unix: i64) -> Self {
        Self {
            at_unix: unix,
            accept_expired: true,
        }
    }
}

/// Checks `cert` against `policy`. Returns `Ok(true)` when the certificate is
/// valid, `Ok(false)` when it is outside its validity but the policy accepts
/// that, and an error otherwise.
pub fn check_validity(cert: &X509, policy: ValidityPolicy) -> Result<bool> {
    let now = Asn1Time::from_unix(policy.at_unix)
        .map_err(|e| As2Error::Crypto(format!("bad verification time: {e}")))?;
    let not_before_ok = cert.not_before() <= now;
    let not_after_ok = cert.not_after() >= now;
    if not_before_ok && not_after_ok {
        return Ok(true);
    }
    if policy.accept_expired {
        return Ok(false);
    }
    Err(As2Error::CertificateNotValid(format!(
        "{} valid {} .. {}",
        subject_of(cert),
        cert.not_before(),
        cert.not_after()
    )))
}

/// The certificate to encrypt to among a partner's: the one valid at `at_unix` that became
/// valid last (during a rollover the partner's new key), or `None` when none is valid.
pub fn newest_valid(certs: &[X509], at_unix: i64) -> Option<&X509> {
    certs
        .iter()
        .filter(|c| matches!(check_validity(c, ValidityPolicy::at(at_unix)), Ok(true)))
        .max_by(|a, b| {
            a.not_before()
                .compare(b.not_before())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
}

/// A one-line subject of a certificate (`CN=..., O=...`).
pub fn subject_of(cert: &X509) -> String {
    name_line(cert.subject_name())
}

/// The SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` prints it
/// (`AB:CD:...`).
pub fn sha256_fingerprint(cert: &X509) -> String {
    cert.digest(openssl::hash::MessageDigest::sha256())
        .map(|d| {
            d.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        })
        .unwrap_or_default()
}

/// A one-line X.509 name (`CN=..., O=...`): a subject or an issuer.
pub fn name_line(name: &openssl::x509::X509NameRef) -> String {
    name.entries()
        .map(|e| {
            format!(
                "{}={}",
                e.object().nid().short_name().unwrap_or("?"),
                String::from_utf8_lossy(e.data().as_slice())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
