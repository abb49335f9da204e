//! The Message Integrity Check returned in `Received-Content-MIC`
//! (RFC 4130 §7.3.1): a base64 digest and the algorithm name.

use openssl::hash::hash;

use super::algorithms::DigestAlgorithm;
use super::encoding::{base64_decode, base64_encode};
use super::error::{As2Error, Result};

/// A MIC value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mic {
    /// The digest, base64 without line breaks.
    pub digest_b64: String,
    /// The digest algorithm.
    pub algorithm: DigestAlgorithm,
}

impl Mic {
    /// Digests `data` with `algorithm`.
    pub fn compute(data: &[u8], algorithm: DigestAlgorithm) -> Result<Self> {
        let d = hash(algorithm.message_digest(), data)
            .map_err(|e| As2Error::Crypto(format!("digest: {e}")))?;
        Ok(Self {
            digest_b64: base64_encode(&d),
            algorithm,
        })
    }

    /// The `Received-Content-MIC` value: `<base64>, <micalg>` (RFC 4130
    /// §7.4.3, algorithm spelled as in RFC 5751 `micalg`).
    pub fn to_header_value(&self) -> String {
        format!("{}, {}", self.digest_b64, self.algorithm.micalg())
    }

    /// Parses a `Received-Content-MIC` value; accepts every algorithm spelling.
    pub fn parse(value: &str) -> Result<Self> {
        let mut it = value.splitn(2, ',');
        let b64 = it.next().unwrap_or("").trim();
        let alg = it.next().map(str::trim).unwrap_or("");
        if b64.is_empty() {
            return Err(As2Error::InvalidHeader {
                name: "Received-Content-MIC",
                reason: "empty".into(),
            });
        }
        let algorithm = if alg.is_empty() {
            // Some peers omit the algorithm; infer it from the digest length.
            match base64_decode(b64.as_bytes()).map(|d| d.len()) {
                Ok(16) => DigestAlgorithm::Md5,
                Ok(20) => DigestAlgorithm::Sha1,
                Ok(28) => DigestAlgorithm::Sha224,
                Ok(32) => DigestAlgorithm::Sha256,
                Ok(48) => DigestAlgorithm::Sha384,
                Ok(64) => DigestAlgorithm::Sha512,
                _ => {
                    return Err(As2Error::InvalidHeader {
                        name: "Received-Content-MIC",
                        reason: "no algorithm and unrecognizable digest".into(),
                    })
                }
            }
        } else {
            DigestAlgorithm::parse(alg)?
        };
        Ok(Self {
            digest_b64: b64.to_string(),
            algorithm,
        })
    }

    /// Same algorithm and same digest bytes (base64 compared after decoding,
    /// so line breaks or padding differences do not matter).
    pub fn matches(&self, other: &Mic) -> bool {
        if self.algorithm != other.algorithm {
            return false;
        }
        match (
            base64_decode(self.digest_b64.as_bytes()),
            base64_decode(other.digest_b64.as_bytes()),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Mic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_header_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_parse_match() {
        let m = Mic::compute(b"abc", DigestAlgorithm::Sha256).unwrap();
        assert_eq!(m.digest_b64, "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
        assert_eq!(
            m.to_header_value(),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=, sha-256"
        );
        let p = Mic::parse("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=, SHA256").unwrap();
        assert!(p.matches(&m));
        let p = Mic::parse("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=").unwrap();
        assert!(p.matches(&m));
        let other = Mic::compute(b"abd", DigestAlgorithm::Sha256).unwrap();
        assert!(!other.matches(&m));
        let sha1 = Mic::compute(b"abc", DigestAlgorithm::Sha1).unwrap();
        assert!(!sha1.matches(&m));
        assert!(Mic::parse("").is_err());
        assert!(Mic::parse("abc, whirlpool").is_err());
    }
}
