//! Building outgoing AS2 messages (`build`) and parsing incoming ones (`parse`), RFC 4130.
//! What both sides share (the MIC rules, our AS2-Version and features) is here.
//!
//! Layering of an outgoing message (RFC 4130 §3, RFC 5402 §3): payload entity
//! (one attachment, or `multipart/related` for several, RFC 6362) → optional
//! compression (before or after signing) → optional `multipart/signed`
//! (RFC 5751 §3.5) → optional `application/pkcs7-mime` enveloped-data. The
//! outermost entity's header fields become HTTP header fields (RFC 4130 §5.2).
//!
//! MIC rules (RFC 4130 §7.3.1, RFC 5402 §4.1), as [`MicRule`]:
//! * signed: over the signed MIME entity (headers + content), canonical form;
//! * encrypted, unsigned: over the decrypted MIME entity (headers + content);
//! * neither: over the content without MIME headers;
//! * compressed and unsigned: RFC 5402 says over the uncompressed MIME entity
//!   including its headers, which differs from RFC 4130. We compute both and
//!   return the RFC 5402 value as primary and the RFC 4130 one as alternative.
//!
//! The MIC algorithm is the signature's digest for signed messages (what
//! pyas2lib, Mendelson and Sterling do), otherwise the first supported
//! `signed-receipt-micalg` the sender asked for, else SHA-1 (RFC 4130 §7.3.1).

mod build;
mod parse;
#[cfg(test)]
mod tests;

pub use build::*;
pub use parse::*;

/// The AS2-Version we speak (RFC 4130 §6.1: 1.2 adds compression, RFC 5402).
pub const AS2_VERSION: &str = "1.2";
/// The AS2-Version of the RFC 4130 revision, spoken with partners set to it: it adds
/// `AS2-Product` and retires SHA-1, 3DES and RC2.
pub const AS2_VERSION_1_3: &str = "1.3";
/// The EDIINT-Features we implement (RFC 6017): multiple attachments (RFC 6362).
pub const EDIINT_FEATURES: &str = "multiple-attachments";

/// Which RFC rule a MIC was computed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MicRule {
    /// RFC 4130 §7.3.1, signed message: over the signed entity.
    Signed,
    /// RFC 4130 §7.3.1, encrypted unsigned: over the decrypted entity.
    EncryptedEntity,
    /// RFC 4130 §7.3.1, plain: over the content without headers.
    PlainContent,
    /// RFC 5402 §4.1, compressed unsigned: over the uncompressed entity.
    CompressedEntity,
}

impl MicRule {
    /// A stable name for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Signed => "rfc4130-signed",
            Self::EncryptedEntity => "rfc4130-encrypted-entity",
            Self::PlainContent => "rfc4130-plain-content",
            Self::CompressedEntity => "rfc5402-uncompressed-entity",
        }
    }
}
