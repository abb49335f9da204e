//! Digest and cipher algorithms and their many spellings.
//!
//! `micalg` names follow RFC 5751 §3.4.3.2 (`sha-256`); real peers also send
//! `sha256`, `SHA256`, `sha_256` (pyas2lib, IBM Sterling), which we accept.

use openssl::hash::MessageDigest;
use openssl::symm::Cipher;

use super::error::{As2Error, Result};

/// A digest algorithm for signatures and MICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// MD5 (parse only; never used to sign).
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// All algorithms we sign with, strongest last.
    pub const SIGNING: [DigestAlgorithm; 5] = [
        Self::Sha1,
        Self::Sha224,
        Self::Sha256,
        Self::Sha384,
        Self::Sha512,
    ];

    /// Parses any spelling seen in the wild: `sha-256`, `sha256`, `SHA256`,
    /// `sha_256`, `sha2-256`, `rsa-sha256`... Unknown names give an error.
    pub fn parse(name: &str) -> Result<Self> {
        let n: String = name
            .trim()
            .trim_matches('"')
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        let n = n.strip_prefix("rsa").unwrap_or(&n);
        Ok(match n {
            "md5" => Self::Md5,
            "sha1" | "sha" => Self::Sha1,
            "sha224" | "sha2224" => Self::Sha224,
            "sha256" | "sha2256" => Self::Sha256,
            "sha384" | "sha2384" => Self::Sha384,
            "sha512" | "sha2512" => Self::Sha512,
            _ => return Err(As2Error::UnsupportedAlgorithm(format!("digest {name:?}"))),
        })
    }

    /// The RFC 5751 `micalg` spelling (`sha-256`).
    pub fn micalg(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha-1",
            Self::Sha224 => "sha-224",
            Self::Sha256 => "sha-256",
            Self::Sha384 => "sha-384",
            Self::Sha512 => "sha-512",
        }
    }

    /// The spelling without a dash (`sha256`) that pyas2lib and many others use.
    pub fn compact_name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha224 => "sha224",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// The OpenSSL digest.
    /// The digest for OpenSSL's key contexts (RSA-OAEP).
    pub fn md(self) -> &'static openssl::md::MdRef {
        openssl::md::Md::from_nid(self.message_digest().type_()).unwrap_or(openssl::md::Md::sha1())
    }

    pub fn message_digest(self) -> MessageDigest {
        match self {
            Self::Md5 => MessageDigest::md5(),
            Self::Sha1 => MessageDigest::sha1(),
            Self::Sha224 => MessageDigest::sha224(),
            Self::Sha256 => MessageDigest::sha256(),
            Self::Sha384 => MessageDigest::sha384(),
            Self::Sha512 => MessageDigest::sha512(),
        }
    }

    /// Maps a digest algorithm OID (dotted) to the algorithm.
    pub fn from_oid(oid: &str) -> Option<Self> {
        Some(match oid {
            "1.2.840.113549.2.5" => Self::Md5,
            "1.3.14.3.2.26" => Self::Sha1,
            "2.16.840.1.101.3.4.2.4" => Self::Sha224,
            "2.16.840.1.101.3.4.2.1" => Self::Sha256,
            "2.16.840.1.101.3.4.2.2" => Self::Sha384,
            "2.16.840.1.101.3.4.2.3" => Self::Sha512,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.micalg())
    }
}

/// A content-encryption algorithm for enveloped data (RFC 5652 §6, RFC 5083 for GCM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptionAlgorithm {
    /// DES-EDE3-CBC (`tripledes_192_cbc` in pyas2lib).
    TripleDes,
    /// AES-128-CBC.
    Aes128Cbc,
    /// AES-192-CBC.
    Aes192Cbc,
    /// AES-256-CBC.
    Aes256Cbc,
    /// AES-128-GCM (AuthEnvelopedData, RFC 5083/5084); only where the peer allows it.
    Aes128Gcm,
    /// AES-256-GCM (AuthEnvelopedData, RFC 5083/5084); only where the peer allows it.
    Aes256Gcm,
}

impl EncryptionAlgorithm {
    /// Every algorithm we implement.
    pub const ALL: [EncryptionAlgorithm; 6] = [
        Self::TripleDes,
        Self::Aes128Cbc,
        Self::Aes192Cbc,
        Self::Aes256Cbc,
        Self::Aes128Gcm,
        Self::Aes256Gcm,
    ];

    /// Parses a configuration name: `3des`, `des-ede3-cbc`, `tripledes_192_cbc`,
    /// `aes128-cbc`, `aes_256_cbc`, `aes-256-gcm`...
    pub fn parse(name: &str) -> Result<Self> {
        let n: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match n.as_str() {
            "3des" | "desede3cbc" | "tripledes192cbc" | "tripledes" | "desede3" => Self::TripleDes,
            "aes128cbc" | "aes128" => Self::Aes128Cbc,
            "aes192cbc" | "aes192" => Self::Aes192Cbc,
            "aes256cbc" | "aes256" => Self::Aes256Cbc,
            "aes128gcm" => Self::Aes128Gcm,
            "aes256gcm" => Self::Aes256Gcm,
            _ => return Err(As2Error::UnsupportedAlgorithm(format!("cipher {name:?}"))),
        })
    }

    /// A stable name (`aes-256-cbc`, `des-ede3-cbc`).
    pub fn name(self) -> &'static str {
        match self {
            Self::TripleDes => "des-ede3-cbc",
            Self::Aes128Cbc => "aes-128-cbc",
            Self::Aes192Cbc => "aes-192-cbc",
            Self::Aes256Cbc => "aes-256-cbc",
            Self::Aes128Gcm => "aes-128-gcm",
            Self::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The OpenSSL cipher.
    /// Whether it is AES-GCM (AuthEnvelopedData, RFC 5083).
    pub fn is_gcm(self) -> bool {
        matches!(self, Self::Aes128Gcm | Self::Aes256Gcm)
    }

    pub fn cipher(self) -> Cipher {
        match self {
            Self::TripleDes => Cipher::des_ede3_cbc(),
            Self::Aes128Cbc => Cipher::aes_128_cbc(),
            Self::Aes192Cbc => Cipher::aes_192_cbc(),
            Self::Aes256Cbc => Cipher::aes_256_cbc(),
            Self::Aes128Gcm => Cipher::aes_128_gcm(),
            Self::Aes256Gcm => Cipher::aes_256_gcm(),
        }
    }

    /// Maps a content-encryption algorithm OID (dotted) to the algorithm.
    pub fn from_oid(oid: &str) -> Option<Self> {
        Some(match oid {
            "1.2.840.113549.3.7" => Self::TripleDes,
            "2.16.840.1.101.3.4.1.2" => Self::Aes128Cbc,
            "2.16.840.1.101.3.4.1.22" => Self::Aes192Cbc,
            "2.16.840.1.101.3.4.1.42" => Self::Aes256Cbc,
            "2.16.840.1.101.3.4.1.6" => Self::Aes128Gcm,
            "2.16.840.1.101.3.4.1.46" => Self::Aes256Gcm,
            _ => return None,
        })
    }
}

impl std::fmt::Display for EncryptionAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_spellings_seen_in_the_wild() {
        for s in [
            "sha-256",
            "sha256",
            "SHA256",
            "sha_256",
            "SHA-256",
            " sha-256 ",
            "rsa-sha256",
        ] {
            assert_eq!(
                DigestAlgorithm::parse(s).unwrap(),
                DigestAlgorithm::Sha256,
                "{s}"
            );
        }
        assert_eq!(
            DigestAlgorithm::parse("SHA1").unwrap(),
            DigestAlgorithm::Sha1
        );
        assert_eq!(
            DigestAlgorithm::parse("sha-1").unwrap(),
            DigestAlgorithm::Sha1
        );
        assert_eq!(
            DigestAlgorithm::parse("sha-512").unwrap(),
            DigestAlgorithm::Sha512
        );
        assert!(matches!(
            DigestAlgorithm::parse("whirlpool"),
            Err(As2Error::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn cipher_names() {
        for c in EncryptionAlgorithm::ALL {
            assert_eq!(EncryptionAlgorithm::parse(c.name()).unwrap(), c);
        }
        assert_eq!(
            EncryptionAlgorithm::parse("tripledes_192_cbc").unwrap(),
            EncryptionAlgorithm::TripleDes
        );
        assert!(EncryptionAlgorithm::parse("rc2").is_err());
    }
}
