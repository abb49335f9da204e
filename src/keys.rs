//! Key and certificate files of stations and partners: reading them, checking that a key
//! fits its certificate, telling how long a certificate has left, and generating a
//! self-signed pair for a station.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509NameBuilder, X509};

/// Certificates that expire within this many days are warned about.
pub const WARN_DAYS: i32 = 30;

/// What can go wrong with key and certificate files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a certificate or key we can read.
    #[error("{path} is not a readable {what} (PEM or DER; PKCS#12 needs its password): {detail}")]
    Format {
        /// The file.
        path: String,
        /// "certificate" or "private key".
        what: &'static str,
        /// What openssl said.
        detail: String,
    },
    /// The key does not belong to the certificate.
    #[error("the private key {key} does not belong to the certificate {cert}")]
    Mismatch {
        /// Key file.
        key: String,
        /// Certificate file.
        cert: String,
    },
    /// openssl failed while generating.
    #[error("generating a key pair failed: {0}")]
    Generate(#[from] openssl::error::ErrorStack),
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads the first certificate of a PEM or DER file.
pub fn read_cert(path: &Path) -> Result<X509, KeyError> {
    let data = read(path)?;
    X509::from_pem(&data)
        .or_else(|_| X509::from_der(&data))
        .map_err(|e| KeyError::Format {
            path: path.display().to_string(),
            what: "certificate",
            detail: e.to_string(),
        })
}

/// Reads an unencrypted PEM or DER private key.
pub fn read_key(path: &Path) -> Result<PKey<Private>, KeyError> {
    let data = read(path)?;
    PKey::private_key_from_pem(&data)
        .or_else(|_| PKey::private_key_from_der(&data))
        .map_err(|e| KeyError::Format {
            path: path.display().to_string(),
            what: "private key",
            detail: e.to_string(),
        })
}

/// Checks that `key` is the private key of `cert`.
pub fn check_pair(key: &Path, cert: &Path) -> Result<(), KeyError> {
    let k = read_key(key)?;
    let c = read_cert(cert)?;
    let public = c.public_key()?;
    if k.public_eq(&public) {
        Ok(())
    } else {
        Err(KeyError::Mismatch {
            key: key.display().to_string(),
            cert: cert.display().to_string(),
        })
    }
}

/// Whole days until the certificate expires (negative once expired).
pub fn days_left(cert: &X509) -> Result<i32, KeyError> {
    let now = Asn1Time::days_from_now(0)?;
    Ok(now.diff(cert.not_after())?.days)
}

/// A warning for a certificate file that is unreadable or expires within [`WARN_DAYS`].
pub fn expiry_warning(path: &Path) -> Option<String> {
    match read_cert(path).and_then(|c| days_left(&c)) {
        Ok(d) if d < 0 => Some(format!(
            "certificate {} EXPIRED {} day(s) ago",
            path.display(),
            -d
        )),
        Ok(d) if d < WARN_DAYS => Some(format!(
            "certificate {} expires in {d} day(s)",
            path.display()
        )),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// The readable certificate of a partner's that lasts longest: the one its expiry is
/// judged by (during a rollover the old one running out is expected).
pub fn longest_lasting(paths: &[std::path::PathBuf]) -> Option<&std::path::PathBuf> {
    paths
        .iter()
        .filter_map(|p| read_cert(p).ok().map(|c| (p, c)))
        .max_by(|(_, a), (_, b)| {
            a.not_after()
                .compare(b.not_after())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(p, _)| p)
}

/// A warning for a partner's set of certificates: none configured, or the one that lasts
/// longest expires within [`WARN_DAYS`] (during a rollover the old certificate running
/// out is expected, as long as a newer one is there).
pub fn partner_expiry_warning(paths: &[std::path::PathBuf]) -> Option<String> {
    if paths.is_empty() {
        return Some("no certificate: its signatures cannot be verified and nothing can be encrypted to it (`as2box partner cert add`)".into());
    }
    match longest_lasting(paths) {
        Some(path) => expiry_warning(path),
        None => Some(format!(
            "none of its certificates can be read ({})",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Generates an RSA-2048 key and a self-signed SHA-256 certificate valid for three years
/// with `common_name`; writes the key (mode 0600) and the certificate; returns the
/// certificate PEM to hand to partners.
pub fn generate_self_signed(
    common_name: &str,
    key_out: &Path,
    cert_out: &Path,
) -> Result<String, KeyError> {
    // RSA rather than EC: every AS2 implementation, pyas2lib and IBM Sterling included,
    // accepts RSA key transport; EC support is patchy.
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", common_name)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let (from, until) = (
        Asn1Time::days_from_now(0)?,
        Asn1Time::days_from_now(3 * 365)?,
    );
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = b.build();
    let cert_pem = String::from_utf8_lossy(&cert.to_pem()?).into_owned();
    write_new(key_out, &key.private_key_to_pem_pkcs8()?)?;
    write_new(cert_out, cert_pem.as_bytes())?;
    Ok(cert_pem)
}

/// Writes `data` as `path`, replacing what is there. The content goes into a new file
/// created with `O_EXCL|O_NOFOLLOW` next to it (a symlink or file planted under that name
/// makes the write fail instead of redirecting it), then renamed over `path` (a rename
/// replaces a symlink, never follows it). Mode 0640: the AS2 daemon's service group reads
/// station keys in the state folder, which keeps everyone else out (`store::perms`).
fn write_new(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut random = [0u8; 8];
    openssl::rand::rand_bytes(&mut random)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.tmp",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_fits_and_lasts_three_years() {
        let dir = tempfile::tempdir().unwrap();
        let (k, c) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        let pem = generate_self_signed("ACME", &k, &c).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        check_pair(&k, &c).unwrap();
        let days = days_left(&read_cert(&c).unwrap()).unwrap();
        assert!((1090..=1095).contains(&days), "{days}");
        assert_eq!(expiry_warning(&c), None);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o640,
            "the service group reads it; the state folder keeps others out"
        );
    }

    #[test]
    fn a_foreign_key_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        generate_self_signed("A", &p("k1"), &p("c1")).unwrap();
        generate_self_signed("B", &p("k2"), &p("c2")).unwrap();
        // A symlink planted under the key's name is replaced, its target untouched.
        std::fs::write(p("target"), b"root's file").unwrap();
        std::os::unix::fs::symlink(p("target"), p("k1")).unwrap_or_else(|_| {
            std::fs::remove_file(p("k1")).unwrap();
            std::os::unix::fs::symlink(p("target"), p("k1")).unwrap();
        });
        generate_self_signed("A", &p("k1"), &p("c1")).unwrap();
        assert_eq!(std::fs::read(p("target")).unwrap(), b"root's file");
        assert!(!std::fs::symlink_metadata(p("k1")).unwrap().is_symlink());
        assert!(matches!(
            check_pair(&p("k1"), &p("c2")),
            Err(KeyError::Mismatch { .. })
        ));
    }

    #[test]
    fn expired_certificates_are_warned_about() {
        let vectors = std::env::var("AS2BOX_VECTORS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/as2-vectors")
            });
        let sb2bi = vectors.join("cert_sb2bi_public.pem");
        if !sb2bi.exists() {
            assert!(
                std::env::var_os("AS2BOX_SYSTEM_TESTS").is_none(),
                "AS2 vectors missing at {}",
                vectors.display()
            );
            eprintln!("skipping: AS2 vectors not found at {}", vectors.display());
            return;
        }
        let w = expiry_warning(&sb2bi).unwrap();
        assert!(w.contains("EXPIRED"), "{w}");
    }
}
