//! The one error type of the AS2 core and its mapping to MDN dispositions.
//!
//! RFC 4130 §7.4.3 (and RFC 3798 §3.2.6) name the disposition modifiers a
//! receiver reports; RFC 5402 §4 adds `decompression-failed`.

use thiserror::Error;

/// The disposition modifier a receiver puts after `processed/error:` in an MDN
/// (RFC 4130 §7.4.3, RFC 5402 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DispositionModifier {
    /// The message could not be decrypted (wrong key, corrupt envelope).
    DecryptionFailed,
    /// The signature did not verify against the partner's certificate.
    AuthenticationFailed,
    /// The signed content does not match its signature's digest.
    IntegrityCheckFailed,
    /// The message was not as secure as the partner profile requires.
    InsufficientMessageSecurity,
    /// Compressed data could not be decompressed (RFC 5402 §4).
    DecompressionFailed,
    /// Any other failure while processing the message.
    UnexpectedProcessingError,
}

impl DispositionModifier {
    /// The modifier as written in the `Disposition:` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DecryptionFailed => "decryption-failed",
            Self::AuthenticationFailed => "authentication-failed",
            Self::IntegrityCheckFailed => "integrity-check-failed",
            Self::InsufficientMessageSecurity => "insufficient-message-security",
            Self::DecompressionFailed => "decompression-failed",
            Self::UnexpectedProcessingError => "unexpected-processing-error",
        }
    }

    /// Parses a modifier (case-insensitive); unknown words give `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        Some(match s.as_str() {
            "decryption-failed" => Self::DecryptionFailed,
            "authentication-failed" => Self::AuthenticationFailed,
            "integrity-check-failed" => Self::IntegrityCheckFailed,
            "insufficient-message-security" => Self::InsufficientMessageSecurity,
            "decompression-failed" => Self::DecompressionFailed,
            "unexpected-processing-error" => Self::UnexpectedProcessingError,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DispositionModifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in the AS2 core. Each variant maps to the MDN
/// disposition modifier the RFC prescribes via [`As2Error::disposition_modifier`].
#[derive(Debug, Error)]
pub enum As2Error {
    /// A header the protocol requires is absent (e.g. `AS2-From`, `Message-ID`).
    #[error("missing header: {0}")]
    MissingHeader(&'static str),
    /// A header is present but its value cannot be used.
    #[error("invalid header {name}: {reason}")]
    InvalidHeader {
        /// The header name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The MIME structure is broken (no boundary, no header end, bad base64, ...).
    #[error("malformed MIME: {0}")]
    MalformedMime(String),
    /// A digest, cipher or CMS content type we do not implement.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// The envelope could not be opened with any of the station's keys.
    #[error("decryption failed: {0}")]
    DecryptionFailed(String),
    /// The CMS signature is invalid, or was made by a certificate other than
    /// the partner's configured one.
    #[error("signature verification failed: {0}")]
    AuthenticationFailed(String),
    /// The partner's certificate is outside its validity period at the
    /// verification time and the policy does not accept expired certificates.
    #[error("partner certificate not valid at verification time: {0}")]
    CertificateNotValid(String),
    /// The signed content's digest does not match the signature (tampered or
    /// truncated body).
    #[error("content does not match its signature: {0}")]
    IntegrityCheckFailed(String),
    /// The compressed-data could not be decompressed.
    #[error("decompression failed: {0}")]
    DecompressionFailed(String),
    /// The partner profile requires signing/encryption the message lacks.
    #[error("insufficient message security: {0}")]
    InsufficientSecurity(String),
    /// A key or certificate could not be loaded.
    #[error("cannot load key or certificate: {0}")]
    Credentials(String),
    /// The message is not an MDN (no multipart/report with a
    /// message/disposition-notification part).
    #[error("not an MDN: {0}")]
    NotAnMdn(String),
    /// An OpenSSL call failed where none of the above applies.
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
    /// Invalid arguments to a builder (no attachments, empty AS2 name, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Reading or writing a spool file failed (disk full, I/O error): the receiver's fault,
    /// not the message's.
    #[error("spool I/O failed: {0}")]
    Io(String),
}

impl As2Error {
    /// The MDN disposition modifier for this error (RFC 4130 §7.4.3).
    pub fn disposition_modifier(&self) -> DispositionModifier {
        use DispositionModifier as D;
        match self {
            Self::DecryptionFailed(_) => D::DecryptionFailed,
            Self::AuthenticationFailed(_) | Self::CertificateNotValid(_) => D::AuthenticationFailed,
            Self::IntegrityCheckFailed(_) => D::IntegrityCheckFailed,
            Self::DecompressionFailed(_) => D::DecompressionFailed,
            Self::InsufficientSecurity(_) => D::InsufficientMessageSecurity,
            Self::MissingHeader(_)
            | Self::InvalidHeader { .. }
            | Self::MalformedMime(_)
            | Self::UnsupportedAlgorithm(_)
            | Self::Credentials(_)
            | Self::NotAnMdn(_)
            | Self::Crypto(_)
            | Self::InvalidInput(_)
            | Self::Io(_) => D::UnexpectedProcessingError,
        }
    }
}

/// Result alias of the AS2 core.
pub type Result<T> = std::result::Result<T, As2Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modifiers_round_trip() {
        for m in [
            DispositionModifier::DecryptionFailed,
            DispositionModifier::AuthenticationFailed,
            DispositionModifier::IntegrityCheckFailed,
            DispositionModifier::InsufficientMessageSecurity,
            DispositionModifier::DecompressionFailed,
            DispositionModifier::UnexpectedProcessingError,
        ] {
            assert_eq!(DispositionModifier::parse(m.as_str()), Some(m));
        }
        assert_eq!(DispositionModifier::parse("nonsense"), None);
    }

    #[test]
    fn errors_map_to_rfc_modifiers() {
        assert_eq!(
            As2Error::DecryptionFailed("x".into()).disposition_modifier(),
            DispositionModifier::DecryptionFailed
        );
        assert_eq!(
            As2Error::CertificateNotValid("x".into()).disposition_modifier(),
            DispositionModifier::AuthenticationFailed
        );
        assert_eq!(
            As2Error::MalformedMime("x".into()).disposition_modifier(),
            DispositionModifier::UnexpectedProcessingError
        );
    }
}
