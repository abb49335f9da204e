//! User key pairs: generation (private key encrypted with the admin's passphrase, OpenSSH
//! format), parsing and checking public keys that admins bring, fingerprints.
//!
//! Key material comes from OpenSSL (the same library the AS2 core uses); the OpenSSH file
//! format and its passphrase encryption (bcrypt-pbkdf + aes256-ctr, what `ssh-keygen`
//! writes) come from the `ssh-key` crate. Only the public key is ever stored.

use ssh_key::private::{Ed25519Keypair, Ed25519PrivateKey, KeypairData, RsaKeypair, RsaPrivateKey};
use ssh_key::public::{Ed25519PublicKey, KeyData, RsaPublicKey};
use ssh_key::rand_core::{CryptoRng, RngCore};
use ssh_key::{Algorithm, HashAlg, LineEnding, Mpint, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::SftpError;

/// The kind of key pair `as2box user add` generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// Ed25519: every current client loads it; the default.
    Ed25519,
    /// RSA 3072 (signatures rsa-sha2-256/512), for old clients.
    Rsa,
}

/// Bits of a generated RSA key.
pub const RSA_BITS: u32 = 3072;

/// Shortest passphrase we accept for a generated private key.
pub const MIN_PASSPHRASE: usize = 8;

/// A freshly generated key pair.
pub struct GeneratedKey {
    /// The private key, encrypted with the passphrase, in OpenSSH format (what
    /// `ssh-keygen` writes): to be written once to the admin's file, never stored.
    pub private_openssh: Zeroizing<String>,
    /// The public key as an `authorized_keys` line.
    pub public_line: String,
    /// `SHA256:...` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// OpenSSL's random generator for the few random bytes the key file encryption needs
/// (salt and check bytes).
struct OsslRng;

impl RngCore for OsslRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        openssl::rand::rand_bytes(dest).expect("OpenSSL random generator failed");
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), ssh_key::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for OsslRng {}

fn key_err(e: impl std::fmt::Display) -> SftpError {
    SftpError::Key(e.to_string())
}

fn mpint(n: &openssl::bn::BigNumRef) -> Result<Mpint, SftpError> {
    Mpint::from_positive_bytes(&n.to_vec()).map_err(key_err)
}

fn generate_keypair(kind: KeyType) -> Result<KeypairData, SftpError> {
    match kind {
        KeyType::Ed25519 => {
            let k = openssl::pkey::PKey::generate_ed25519().map_err(key_err)?;
            let seed = Zeroizing::new(k.raw_private_key().map_err(key_err)?);
            let public = k.raw_public_key().map_err(key_err)?;
            let seed: &[u8; 32] = seed.as_slice().try_into().map_err(key_err)?;
            let public: [u8; 32] = public.as_slice().try_into().map_err(key_err)?;
            Ok(KeypairData::Ed25519(Ed25519Keypair {
                public: Ed25519PublicKey(public),
                private: Ed25519PrivateKey::from_bytes(seed),
            }))
        }
        KeyType::Rsa => {
            let r = openssl::rsa::Rsa::generate(RSA_BITS).map_err(key_err)?;
            let (p, q, iqmp) = match (r.p(), r.q(), r.iqmp()) {
                (Some(p), Some(q), Some(iqmp)) => (p, q, iqmp),
                _ => {
                    return Err(SftpError::Key(
                        "OpenSSL returned an incomplete RSA key".into(),
                    ))
                }
            };
            Ok(KeypairData::Rsa(RsaKeypair {
                public: RsaPublicKey {
                    e: mpint(r.e())?,
                    n: mpint(r.n())?,
                },
                private: RsaPrivateKey {
                    d: mpint(r.d())?,
                    iqmp: mpint(iqmp)?,
                    p: mpint(p)?,
                    q: mpint(q)?,
                },
            }))
        }
    }
}

/// Generates a key pair whose private key is encrypted with `passphrase`.
pub fn generate(
    kind: KeyType,
    passphrase: &[u8],
    comment: &str,
) -> Result<GeneratedKey, SftpError> {
    if passphrase.len() < MIN_PASSPHRASE {
        return Err(SftpError::Passphrase(format!(
            "the passphrase must have at least {MIN_PASSPHRASE} characters"
        )));
    }
    let key = PrivateKey::new(generate_keypair(kind)?, comment).map_err(key_err)?;
    let encrypted = key.encrypt(&mut OsslRng, passphrase).map_err(key_err)?;
    let private_openssh = encrypted.to_openssh(LineEnding::LF).map_err(key_err)?;
    let public = key.public_key();
    Ok(GeneratedKey {
        private_openssh,
        public_line: public.to_openssh().map_err(key_err)?,
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
    })
}

/// A public key an admin brought, checked.
#[derive(Debug, Clone)]
pub struct CheckedKey {
    /// Normalized `authorized_keys` line: `type base64 [comment]`.
    pub line: String,
    /// `SHA256:...`
    pub fingerprint: String,
}

/// Checks one public key in `authorized_keys` / `.pub` format. Refuses options before the
/// key type (we write the lines, and options could lift the restrictions), DSA keys
/// (OpenSSH 9 refuses them) and RSA keys under 2048 bits.
pub fn check_public_key(text: &str) -> Result<CheckedKey, SftpError> {
    if text.contains("PRIVATE KEY")
        || text.contains("PuTTY-User-Key-File")
        || text.contains("---- BEGIN SSH2")
    {
        return Err(SftpError::Key(
            "this is a private key or a PuTTY/SSH2 file: give the public key (the .pub file, one line `ssh-ed25519 AAAA...`; `ssh-keygen -y -f KEY` or `puttygen KEY -O public-openssh` prints it)".into(),
        ));
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let line = match lines.as_slice() {
        [one] => *one,
        [] => return Err(SftpError::Key("no public key found".into())),
        _ => {
            return Err(SftpError::Key(
                "more than one key: add them one at a time".into(),
            ))
        }
    };
    let key = PublicKey::from_openssh(line).map_err(|e| {
        SftpError::Key(format!(
            "not an OpenSSH public key line (`type base64 [comment]`, no options): {e}"
        ))
    })?;
    match key.key_data() {
        KeyData::Dsa(_) => {
            return Err(SftpError::Key(
                "DSA keys are refused by OpenSSH 9: use ed25519 or rsa".into(),
            ))
        }
        KeyData::Rsa(r) => {
            let bits = r.n.as_positive_bytes().map(|b| b.len() * 8).unwrap_or(0);
            if bits < 2048 {
                return Err(SftpError::Key(format!(
                    "RSA key of {bits} bits: at least 2048 are needed"
                )));
            }
        }
        _ => {}
    }
    if matches!(key.algorithm(), Algorithm::Other(_)) {
        return Err(SftpError::Key(format!(
            "unsupported key type {}",
            key.algorithm()
        )));
    }
    Ok(CheckedKey {
        line: key.to_openssh().map_err(key_err)?,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
    })
}

/// The `SHA256:...` fingerprint and type of a stored key line (`?` when it cannot be
/// parsed, which only a hand-edited database produces).
pub fn describe(line: &str) -> (String, String) {
    match PublicKey::from_openssh(line.trim()) {
        Ok(k) => (
            k.fingerprint(HashAlg::Sha256).to_string(),
            k.algorithm().to_string(),
        ),
        Err(_) => ("?".into(), "?".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ed25519_round_trips_with_passphrase() {
        let g = generate(KeyType::Ed25519, b"correct horse", "acme").unwrap();
        assert!(g
            .private_openssh
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let k = PrivateKey::from_openssh(g.private_openssh.as_bytes()).unwrap();
        assert!(k.is_encrypted());
        assert!(k.decrypt(b"wrong passphrase").is_err());
        let plain = k.decrypt(b"correct horse").unwrap();
        assert_eq!(plain.public_key().to_openssh().unwrap(), g.public_line);
        assert!(g.public_line.starts_with("ssh-ed25519 "));
        assert!(g.fingerprint.starts_with("SHA256:"));
        assert_eq!(
            check_public_key(&g.public_line).unwrap().fingerprint,
            g.fingerprint
        );
    }

    #[test]
    fn short_passphrase_refused() {
        assert!(matches!(
            generate(KeyType::Ed25519, b"short", "x"),
            Err(SftpError::Passphrase(_))
        ));
    }

    #[test]
    fn options_and_private_keys_refused() {
        let g = generate(KeyType::Ed25519, b"correct horse", "acme").unwrap();
        let with_options = format!("no-pty,command=\"/bin/sh\" {}", g.public_line);
        assert!(check_public_key(&with_options).is_err());
        assert!(check_public_key(&g.private_openssh).is_err());
        assert!(check_public_key("").is_err());
        let two = format!("{}\n{}\n", g.public_line, g.public_line);
        assert!(check_public_key(&two).is_err());
    }
}
