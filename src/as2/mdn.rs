//! Message Disposition Notifications for AS2 (RFC 4130 §7, RFC 3798).
//!
//! An MDN is `multipart/report; report-type=disposition-notification`
//! (RFC 6522) with a human-readable `text/plain` part and a
//! `message/disposition-notification` part carrying `Reporting-UA`,
//! `Original-Recipient`, `Final-Recipient`, `Original-Message-ID`,
//! `Disposition` and `Received-Content-MIC` (RFC 4130 §7.4.3). It is signed
//! (`multipart/signed`) when the sender asked for it with
//! `signed-receipt-protocol=...pkcs7-signature` and we have a key; the
//! digest is the first `signed-receipt-micalg` we support (RFC 4130 §7.3).

use openssl::x509::X509;

use super::algorithms::DigestAlgorithm;
use super::certs::{KeyPair, ValidityPolicy};
use super::cms::{self, SignOptions, SignatureInfo};
use super::error::{As2Error, DispositionModifier, Result};
use super::headers::{normalize_message_id, quote_as2_name, unquote_as2_name, Headers};
use super::message::{
    generate_message_id, signed_entity, RequestInfo, AS2_VERSION, EDIINT_FEATURES,
};
use super::mic::Mic;
use super::mime::{canonicalize_crlf, has_bare_lf, make_boundary, split_multipart, Entity};

/// The disposition reported in an MDN (RFC 3798 §3.2.6, RFC 4130 §7.4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// `processed`: the message was received and processed.
    Processed,
    /// `processed/error: <modifier>` with a modifier we know.
    Error(DispositionModifier),
    /// `processed/error: <text>` with another modifier.
    OtherError(String),
    /// `processed/warning: <text>`.
    Warning(String),
    /// `failed/failure: <text>` (e.g. `unsupported format`).
    Failed(String),
}

impl Disposition {
    /// The negative disposition for an error of this module.
    pub fn from_error(e: &As2Error) -> Self {
        Self::Error(e.disposition_modifier())
    }

    /// The `Disposition:` field value (automatic action, sent automatically).
    pub fn to_field(&self) -> String {
        let tail = match self {
            Self::Processed => "processed".to_string(),
            Self::Error(m) => format!("processed/error: {m}"),
            Self::OtherError(t) => format!("processed/error: {t}"),
            Self::Warning(t) => format!("processed/warning: {t}"),
            Self::Failed(t) => format!("failed/failure: {t}"),
        };
        format!("automatic-action/MDN-sent-automatically; {tail}")
    }

    /// Parses a `Disposition:` field value (case-insensitive; tolerant of
    /// missing action modes and spacing).
    pub fn parse(field: &str) -> Result<Self> {
        let d = field.rsplit(';').next().unwrap_or("").trim();
        let (ty, modifier) = match d.find('/') {
            Some(i) => (d[..i].trim(), Some(d[i + 1..].trim())),
            None => (d, None),
        };
        let ty_l = ty.to_ascii_lowercase();
        let text_after_colon = |m: &str| {
            m.split_once(':')
                .map(|(_, t)| t.trim().to_string())
                .unwrap_or_default()
        };
        match (ty_l.as_str(), modifier) {
            ("processed", None) => Ok(Self::Processed),
            ("processed", Some(m)) => {
                let ml = m.to_ascii_lowercase();
                let text = text_after_colon(m);
                if ml.starts_with("error") {
                    Ok(DispositionModifier::parse(&text)
                        .map(Self::Error)
                        .unwrap_or(Self::OtherError(text)))
                } else if ml.starts_with("warning") {
                    Ok(Self::Warning(text))
                } else {
                    Ok(Self::OtherError(m.to_string()))
                }
            }
            ("failed", m) => Ok(Self::Failed(m.map(text_after_colon).unwrap_or_default())),
            _ => Err(As2Error::InvalidHeader {
                name: "Disposition",
                reason: format!("unknown disposition {d:?}"),
            }),
        }
    }

    /// Whether the partner processed the message without error.
    pub fn is_processed(&self) -> bool {
        matches!(self, Self::Processed | Self::Warning(_))
    }
}

/// Inputs for building an MDN.
#[derive(Debug, Clone)]
pub struct MdnParams<'a> {
    /// The envelope of the message being answered.
    pub request: &'a RequestInfo,
    /// What happened.
    pub disposition: Disposition,
    /// The MIC of the received message (when it was processed).
    pub mic: Option<&'a Mic>,
    /// `Reporting-UA`.
    pub reporting_ua: &'a str,
    /// Human-readable text for the first part.
    pub text: &'a str,
    /// Our key; used when the sender asked for a signed MDN.
    pub signer: Option<&'a KeyPair>,
    /// Include SMIMECapabilities in the signature.
    pub smime_capabilities: bool,
    /// Include the RFC 6211 attribute in the signature.
    pub algorithm_protection: bool,
    /// The time (for `Date` and the signing time), unix seconds.
    pub now_unix: i64,
    /// Domain for the MDN's own Message-ID.
    pub message_id_domain: &'a str,
}

/// A built MDN: the HTTP response (sync) or the request to POST (async).
#[derive(Debug, Clone)]
pub struct OutgoingMdn {
    /// The MDN's own Message-ID (no brackets).
    pub message_id: String,
    /// Header fields (AS2 headers and Content-Type).
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
    /// Whether it is signed.
    pub signed: bool,
    /// Where to POST it when the sender asked for an async MDN.
    pub async_url: Option<String>,
}

/// Builds an MDN answering `p.request`.
pub fn build_mdn(p: &MdnParams<'_>) -> Result<OutgoingMdn> {
    for v in [p.reporting_ua, p.message_id_domain] {
        if v.contains(['\r', '\n']) {
            return Err(As2Error::InvalidInput("line break in MDN field".into()));
        }
    }
    let req = p.request;
    let mut report = String::new();
    report.push_str(&format!("Reporting-UA: {}\r\n", p.reporting_ua));
    report.push_str(&format!("Original-Recipient: rfc822; {}\r\n", req.as2_to));
    report.push_str(&format!("Final-Recipient: rfc822; {}\r\n", req.as2_to));
    report.push_str(&format!("Original-Message-ID: <{}>\r\n", req.message_id));
    report.push_str(&format!("Disposition: {}\r\n", p.disposition.to_field()));
    if let Some(m) = p.mic {
        report.push_str(&format!(
            "Received-Content-MIC: {}\r\n",
            m.to_header_value()
        ));
    }
    let text = canonicalize_crlf(p.text.as_bytes());
    let boundary = make_boundary();
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&text);
    body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: message/disposition-notification\r\nContent-Transfer-Encoding: 7bit\r\n\r\n").as_bytes());
    body.extend_from_slice(report.as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut entity = format!(
        "Content-Type: multipart/report; report-type=disposition-notification; boundary=\"{boundary}\"\r\n\r\n"
    )
    .into_bytes();
    entity.extend(body);

    let mdn_req = req.mdn.as_ref();
    let sign_alg = mdn_req
        .filter(|m| m.options.wants_signed())
        .map(|m| m.preferred_micalg().unwrap_or(DigestAlgorithm::Sha256));
    let mut signed = false;
    if let (Some(alg), Some(key)) = (sign_alg, p.signer) {
        let alg = if alg == DigestAlgorithm::Md5 {
            DigestAlgorithm::Sha256
        } else {
            alg
        };
        entity = signed_entity(
            &entity,
            key,
            &SignOptions {
                digest: alg,
                smime_capabilities: p.smime_capabilities,
                algorithm_protection: p.algorithm_protection,
                signing_time: p.now_unix,
            },
        )?;
        signed = true;
    }
    let top = Entity::parse(&entity)?;
    let message_id = generate_message_id(p.now_unix, p.message_id_domain);
    let mut h = Headers::new();
    h.push("AS2-Version", AS2_VERSION);
    h.push("EDIINT-Features", EDIINT_FEATURES);
    h.push("Message-ID", format!("<{message_id}>"));
    h.push("AS2-From", quote_as2_name(&req.as2_to));
    h.push("AS2-To", quote_as2_name(&req.as2_from));
    h.push("Subject", "Message Disposition Notification");
    h.push("Date", crate::timefmt::rfc5322(p.now_unix));
    h.push("MIME-Version", "1.0");
    for (k, v) in top.headers.iter() {
        h.push(k, v);
    }
    Ok(OutgoingMdn {
        message_id,
        headers: h,
        body: top.body().to_vec(),
        signed,
        async_url: mdn_req.and_then(|m| m.async_url.clone()),
    })
}

/// A received MDN, parsed (and verified when signed and certificates given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMdn {
    /// The MDN's own Message-ID, if present.
    pub message_id: Option<String>,
    /// `AS2-From` of the MDN (the partner), if present.
    pub as2_from: Option<String>,
    /// `Original-Message-ID`, no brackets.
    pub original_message_id: String,
    /// The disposition.
    pub disposition: Disposition,
    /// `Received-Content-MIC`, if present.
    pub mic: Option<Mic>,
    /// Whether the MDN was signed.
    pub signed: bool,
    /// The signature check (signed MDNs).
    pub signature: Option<SignatureInfo>,
    /// `Reporting-UA`.
    pub reporting_ua: Option<String>,
    /// `Original-Recipient` (address part).
    pub original_recipient: Option<String>,
    /// `Final-Recipient` (address part).
    pub final_recipient: Option<String>,
    /// The human-readable text.
    pub text: String,
}

/// Outcome of comparing a returned MIC with what we expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicCheck {
    /// The MDN returned a MIC equal to one we expected.
    Match,
    /// It returned a different MIC.
    Mismatch,
    /// It returned none (negative MDNs usually don't).
    NotReturned,
}

impl ReceivedMdn {
    /// Compares the returned MIC with the acceptable ones (e.g.
    /// [`super::message::OutgoingMessage::acceptable_mics`]).
    pub fn check_mic(&self, expected: &[Mic]) -> MicCheck {
        match &self.mic {
            None => MicCheck::NotReturned,
            Some(m) if expected.iter().any(|e| e.matches(m)) => MicCheck::Match,
            Some(_) => MicCheck::Mismatch,
        }
    }
}

fn recipient_address(v: &str) -> String {
    match v.split_once(';') {
        Some((_, a)) => unquote_as2_name(a.trim()),
        None => unquote_as2_name(v.trim()),
    }
}

/// Parses a received MDN. A signed MDN is verified against `partner_certs`
/// (an error if that fails); with `require_signed` an unsigned MDN is an
/// [`As2Error::InsufficientSecurity`] error. With no certificates a signed
/// MDN is reported as signed but not verified (`signature: None`).
pub fn parse_mdn(
    headers: &Headers,
    body: &[u8],
    partner_certs: &[X509],
    validity: ValidityPolicy,
    require_signed: bool,
) -> Result<ReceivedMdn> {
    if headers.get("content-type").is_none() {
        return Err(As2Error::MissingHeader("Content-Type"));
    }
    let mut entity = Entity::from_parts(headers.clone(), body);
    let mut signed = false;
    let mut signature = None;
    if entity.media_type() == "multipart/signed" {
        signed = true;
        let boundary = entity
            .content_type()
            .param("boundary")
            .ok_or_else(|| As2Error::MalformedMime("multipart/signed without boundary".into()))?
            .to_string();
        let parts = split_multipart(entity.body(), &boundary)?;
        let (content, sig) = match parts.as_slice() {
            [c, s] => (*c, Entity::parse(s)?),
            _ => {
                return Err(As2Error::MalformedMime(
                    "multipart/signed needs 2 parts".into(),
                ))
            }
        };
        // Without a certificate a required signature cannot be checked: refused, never
        // taken as verified.
        if require_signed && partner_certs.is_empty() {
            return Err(As2Error::AuthenticationFailed(
                "a signed MDN is required but no certificate of the partner is configured to verify it".into(),
            ));
        }
        if !partner_certs.is_empty() {
            let der = sig.decoded_body()?;
            let r = cms::verify_detached(&der, content, partner_certs, validity);
            let r = match r {
                Err(As2Error::IntegrityCheckFailed(_)) if has_bare_lf(content) => {
                    cms::verify_detached(&der, &canonicalize_crlf(content), partner_certs, validity)
                }
                other => other,
            };
            signature = Some(r?);
        }
        entity = Entity::parse(content)?;
    } else if require_signed {
        return Err(As2Error::InsufficientSecurity("MDN is not signed".into()));
    }
    if entity.media_type() != "multipart/report" {
        return Err(As2Error::NotAnMdn(format!(
            "content type {}",
            entity.media_type()
        )));
    }
    let boundary = entity
        .content_type()
        .param("boundary")
        .ok_or_else(|| As2Error::MalformedMime("multipart/report without boundary".into()))?
        .to_string();
    let mut text = String::new();
    let mut fields: Option<Headers> = None;
    for p in split_multipart(entity.body(), &boundary)? {
        let e = Entity::parse(p)?;
        let media = e.media_type();
        if media == "message/disposition-notification" {
            let b = e.decoded_body()?;
            // Lenient: keep lines that look like fields, unfold continuations.
            let mut h = Headers::new();
            for line in String::from_utf8_lossy(&b).lines() {
                if line.starts_with([' ', '\t']) {
                    if let Some((_, v)) = h.0.last_mut() {
                        v.push(' ');
                        v.push_str(line.trim());
                    }
                } else if let Some((k, v)) = line.split_once(':') {
                    if !k.trim().is_empty() && !k.contains(' ') {
                        h.push(k.trim(), v.trim());
                    }
                }
            }
            fields = Some(h);
        } else if media.starts_with("text/") && text.is_empty() {
            text = String::from_utf8_lossy(&e.decoded_body()?).into_owned();
        }
    }
    let f = fields
        .ok_or_else(|| As2Error::NotAnMdn("no message/disposition-notification part".into()))?;
    let original_message_id = normalize_message_id(
        f.get("original-message-id")
            .ok_or(As2Error::MissingHeader("Original-Message-ID"))?,
    );
    let disposition = Disposition::parse(
        f.get("disposition")
            .ok_or(As2Error::MissingHeader("Disposition"))?,
    )?;
    let mic = match f.get("received-content-mic") {
        Some(v) => Some(Mic::parse(v)?),
        None => None,
    };
    Ok(ReceivedMdn {
        message_id: headers.get("message-id").map(normalize_message_id),
        as2_from: headers.get("as2-from").map(unquote_as2_name),
        original_message_id,
        disposition,
        mic,
        signed,
        signature,
        reporting_ua: f.get("reporting-ua").map(str::to_string),
        original_recipient: f.get("original-recipient").map(recipient_address),
        final_recipient: f.get("final-recipient").map(recipient_address),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_fields() {
        for d in [
            Disposition::Processed,
            Disposition::Error(DispositionModifier::DecryptionFailed),
            Disposition::Error(DispositionModifier::AuthenticationFailed),
            Disposition::OtherError("something-else".into()),
            Disposition::Warning("duplicate-document".into()),
            Disposition::Failed("unsupported format".into()),
        ] {
            assert_eq!(Disposition::parse(&d.to_field()).unwrap(), d);
        }
        assert_eq!(
            Disposition::parse(
                "automatic-action/MDN-sent-automatically; Processed/Error: Authentication-Failed"
            )
            .unwrap(),
            Disposition::Error(DispositionModifier::AuthenticationFailed)
        );
        assert_eq!(
            Disposition::parse("processed").unwrap(),
            Disposition::Processed
        );
        assert!(Disposition::parse("exploded").is_err());
        assert!(Disposition::Processed.is_processed());
        assert!(!Disposition::Error(DispositionModifier::DecryptionFailed).is_processed());
    }
}
