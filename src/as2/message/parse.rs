//! The receiving side: the AS2 envelope of a request, then its body layer by layer
//! (decrypt, verify, decompress, split attachments) with every layer bounded, and the MIC
//! to return.

use bytes::Bytes;
use openssl::x509::X509;

use super::super::algorithms::{DigestAlgorithm, EncryptionAlgorithm};
use super::super::certs::{KeyPair, ValidityPolicy};
use super::super::cms::{self, CmsKind, SignatureInfo};
use super::super::error::{As2Error, Result};
use super::super::headers::{
    find_header_end, normalize_message_id, unquote_as2_name, Headers, NotificationOptions,
};
use super::super::mic::Mic;
use super::super::mime::{
    canonicalize_crlf, canonicalize_headers, has_bare_lf, is_text_type, Entity,
};
use super::MicRule;

/// What the sender of an incoming message asked for in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnRequest {
    /// `Disposition-Notification-To` as sent.
    pub notification_to: String,
    /// `Receipt-Delivery-Option`: async MDN URL; `None` means sync.
    pub async_url: Option<String>,
    /// `Disposition-Notification-Options`, parsed.
    pub options: NotificationOptions,
}

impl MdnRequest {
    /// The first requested MIC algorithm we support.
    pub fn preferred_micalg(&self) -> Option<DigestAlgorithm> {
        self.options
            .micalgs
            .iter()
            .find_map(|a| DigestAlgorithm::parse(a).ok())
    }
}

/// The envelope of an incoming request: who, which message, which MDN.
/// Parse it first so that a negative MDN can be built even when the body
/// cannot be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// Message-ID without angle brackets.
    pub message_id: String,
    /// Sender's AS2 name, unquoted.
    pub as2_from: String,
    /// Our AS2 name as the sender wrote it, unquoted.
    pub as2_to: String,
    /// `Subject`, if any.
    pub subject: Option<String>,
    /// `AS2-Version`, if any.
    pub as2_version: Option<String>,
    /// The MDN request, if an MDN is wanted.
    pub mdn: Option<MdnRequest>,
}

impl RequestInfo {
    /// Reads the AS2 header fields (RFC 4130 §6). `AS2-From`, `AS2-To` and
    /// `Message-ID` are required.
    pub fn from_headers(h: &Headers) -> Result<Self> {
        let as2_from = unquote_as2_name(
            h.get("as2-from")
                .ok_or(As2Error::MissingHeader("AS2-From"))?,
        );
        let as2_to = unquote_as2_name(h.get("as2-to").ok_or(As2Error::MissingHeader("AS2-To"))?);
        let message_id = normalize_message_id(
            h.get("message-id")
                .ok_or(As2Error::MissingHeader("Message-ID"))?,
        );
        if message_id.is_empty() {
            return Err(As2Error::MissingHeader("Message-ID"));
        }
        let mdn = h.get("disposition-notification-to").map(|to| MdnRequest {
            notification_to: to.to_string(),
            async_url: h.get("receipt-delivery-option").map(str::to_string),
            // Duplicated fields are separate attribute lists: join with ';'.
            options: NotificationOptions::parse(
                &h.0.iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("disposition-notification-options"))
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        });
        Ok(Self {
            message_id,
            as2_from,
            as2_to,
            subject: h.get("subject").map(str::to_string),
            as2_version: h.get("as2-version").map(str::to_string),
            mdn,
        })
    }
}

/// How deep MIME and CMS layers may nest in a message (encryption, signature,
/// compression, each possibly twice, and the payload); deeper is refused.
pub const MAX_NESTING: usize = 8;

/// Most attachments in one message (the parts of its payload multipart). Each becomes a
/// file with its own blob; see also [`super::super::mime::MAX_PARTS`].
pub const MAX_ATTACHMENTS: usize = 1000;

/// The default [`ReceiveContext::max_decompressed_size`] when no body size is known: the
/// daemon sets it per request from its `[serve]` settings (see
/// [`decompressed_size_limit`]).
pub const DEFAULT_MAX_DECOMPRESSED: usize = 1 << 30;

/// The decompressed bytes a message of `body_len` bytes may inflate to, all
/// layers together: `ratio` times the body, and never less than `floor` (small messages
/// compress well too).
pub fn decompressed_size_limit(body_len: usize, ratio: usize, floor: usize) -> usize {
    body_len.saturating_mul(ratio).max(floor)
}

/// Asked before the parser holds more decompressed bytes of one message: the argument is
/// the total it would then hold, all layers together; `false` refuses (the message then
/// fails with `decompression-failed`). Lets a server count that memory against a budget
/// shared by all requests.
#[derive(Clone, Copy)]
pub struct MemoryGrant<'a>(pub &'a (dyn Fn(usize) -> bool + Sync));

impl std::fmt::Debug for MemoryGrant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryGrant")
    }
}

/// Keys, certificates and policy for receiving.
#[derive(Debug, Clone)]
pub struct ReceiveContext<'a> {
    /// Our station key(s) for decryption (several during a key rollover).
    pub station_keys: &'a [KeyPair],
    /// The partner's signing certificate(s), pinned.
    pub partner_certs: &'a [X509],
    /// Verification time / expired-certificate policy.
    pub validity: ValidityPolicy,
    /// Reject unsigned messages (`insufficient-message-security`).
    pub require_signature: bool,
    /// Reject unencrypted messages (`insufficient-message-security`).
    pub require_encryption: bool,
    /// AS2 1.3: reject messages signed with SHA-1 or MD5, or encrypted with 3DES, RC2 or a
    /// cipher we cannot name (`insufficient-message-security`).
    pub refuse_weak_algorithms: bool,
    /// Largest decompressed size accepted, all compression layers together; inflating
    /// stops as soon as it is passed.
    pub max_decompressed_size: usize,
    /// Asked before decompressed output grows (see [`MemoryGrant`]); `None`: only
    /// `max_decompressed_size` applies.
    pub memory: Option<MemoryGrant<'a>>,
}

impl<'a> ReceiveContext<'a> {
    /// A context with no security requirements and a 1 GiB decompression cap.
    pub fn new(
        station_keys: &'a [KeyPair],
        partner_certs: &'a [X509],
        validity: ValidityPolicy,
    ) -> Self {
        Self {
            station_keys,
            partner_certs,
            validity,
            require_signature: false,
            require_encryption: false,
            refuse_weak_algorithms: false,
            max_decompressed_size: DEFAULT_MAX_DECOMPRESSED,
            memory: None,
        }
    }
}

/// A file recovered from an incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedAttachment {
    /// File name from `Content-Disposition` / `Content-Type; name=`, sanitized.
    pub filename: Option<String>,
    /// The part's `Content-Type` value.
    pub content_type: String,
    /// The decoded bytes.
    pub data: Vec<u8>,
}

/// A successfully processed incoming message.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The AS2 envelope.
    pub info: RequestInfo,
    /// The cipher, when the message was encrypted (`Some(None)`: unknown cipher).
    pub encryption: Option<Option<EncryptionAlgorithm>>,
    /// The signature check, when the message was signed.
    pub signature: Option<SignatureInfo>,
    /// Whether it was compressed.
    pub compressed: bool,
    /// Whether compression was inside the signature (before signing).
    pub compressed_before_signing: bool,
    /// The files.
    pub attachments: Vec<ReceivedAttachment>,
    /// The MIC to return in the MDN.
    pub mic: Mic,
    /// The rule the MIC was computed by.
    pub mic_rule: MicRule,
    /// Other MICs a sender may expect (log them on a mismatch).
    pub mic_alternatives: Vec<(MicRule, Mic)>,
}

fn is_pkcs7_mime(media: &str) -> bool {
    media == "application/pkcs7-mime" || media == "application/x-pkcs7-mime"
}

fn is_pkcs7_signature(media: &str) -> bool {
    media == "application/pkcs7-signature" || media == "application/x-pkcs7-signature"
}

/// Splits a captured HTTP request/response (header lines, blank line, body)
/// into header fields and body. A status or request line is skipped.
pub fn split_http_capture(raw: &[u8]) -> Result<(Headers, Vec<u8>)> {
    let mut raw = raw;
    if let Some(first) = raw.split(|&c| c == b'\n').next() {
        let f = String::from_utf8_lossy(first);
        if f.starts_with("HTTP/") || f.starts_with("POST ") || f.starts_with("PUT ") {
            raw = raw.get(first.len() + 1..).unwrap_or(&[]);
        }
    }
    let e = Entity::parse(raw)?;
    Ok((e.headers.clone(), e.body().to_vec()))
}

/// Parses an incoming AS2 request: decrypts, verifies, decompresses, splits
/// attachments and computes the MIC. Errors map to MDN dispositions via
/// [`As2Error::disposition_modifier`]; use [`RequestInfo::from_headers`]
/// first so a negative MDN can be addressed.
pub fn parse_message(
    headers: &Headers,
    body: &[u8],
    ctx: &ReceiveContext<'_>,
) -> Result<ReceivedMessage> {
    let info = RequestInfo::from_headers(headers)?;
    parse_body(info, headers, body, ctx)
}

/// Like [`parse_message`] with an already parsed [`RequestInfo`]. Copies `body` once;
/// [`parse_body_shared`] does not.
pub fn parse_body(
    info: RequestInfo,
    headers: &Headers,
    body: &[u8],
    ctx: &ReceiveContext<'_>,
) -> Result<ReceivedMessage> {
    parse_body_shared(info, headers, Bytes::copy_from_slice(body), ctx)
}

/// [`parse_body`] of a body the caller already holds as [`Bytes`]. Work and memory are
/// bounded whatever the sender does: layers ([`MAX_NESTING`]), parts and header blocks
/// ([`super::super::mime::MAX_PARTS`], [`super::super::mime::MAX_HEADER_BYTES`]), attachments
/// ([`MAX_ATTACHMENTS`]) and decompressed bytes (`ctx.max_decompressed_size`,
/// `ctx.memory`). The payload is not copied on the way to the attachments when it was
/// encrypted or compressed (the decrypted or inflated buffer becomes the attachment), and
/// copied once otherwise.
pub fn parse_body_shared(
    info: RequestInfo,
    headers: &Headers,
    body: Bytes,
    ctx: &ReceiveContext<'_>,
) -> Result<ReceivedMessage> {
    if headers.get("content-type").is_none() {
        return Err(As2Error::MissingHeader("Content-Type"));
    }
    let requested = info.mdn.as_ref().and_then(MdnRequest::preferred_micalg);
    let unsigned_alg = requested.unwrap_or(DigestAlgorithm::Sha1);
    let mut entity = Entity::from_parts_shared(headers.clone(), body);
    let mut encryption = None;
    let mut signature: Option<SignatureInfo> = None;
    let mut compressed = false;
    let mut compressed_before_signing = false;
    // Each MIC is computed as soon as its bytes are at hand, so that no copy of them is
    // kept until the end.
    let mut signed_mic: Option<Mic> = None;
    let mut decrypted_mic: Option<Mic> = None;
    let mut uncompressed_mic: Option<Mic> = None;
    let mut outer_content_mic: Option<Mic> = None;
    let mut decompressed_total = 0usize;

    for _depth in 0..MAX_NESTING {
        let media = entity.media_type();
        // Checked before any work on the layer (decompression, splitting): a partner that
        // must encrypt gets nothing of ours spent on what it sent in clear.
        if ctx.require_encryption && encryption.is_none() && !is_pkcs7_mime(&media) {
            return Err(As2Error::InsufficientSecurity(
                "message is not encrypted".into(),
            ));
        }
        if is_pkcs7_mime(&media) {
            let mut der = entity.decoded_shared()?;
            // Some peers send base64 without saying so (no transfer encoding).
            if der.first() != Some(&0x30) {
                if let Ok(d) = super::super::encoding::base64_decode(&der) {
                    if d.first() == Some(&0x30) {
                        der = Bytes::from(d);
                    }
                }
            }
            let first_layer = encryption.is_none() && signature.is_none() && !compressed;
            let kind = cms::inspect(&der).map_err(|e| {
                match entity
                    .content_type()
                    .param("smime-type")
                    .map(|s| s.to_ascii_lowercase())
                    .as_deref()
                {
                    Some("enveloped-data") => As2Error::DecryptionFailed(e.to_string()),
                    Some("compressed-data") => As2Error::DecompressionFailed(e.to_string()),
                    _ => e,
                }
            })?;
            if ctx.require_encryption
                && encryption.is_none()
                && !matches!(kind, CmsKind::Enveloped { .. })
            {
                return Err(As2Error::InsufficientSecurity(
                    "message is not encrypted".into(),
                ));
            }
            match kind {
                CmsKind::Enveloped { .. } => {
                    let (plain, cipher, _) = cms::decrypt(&der, ctx.station_keys)?;
                    encryption = Some(cipher);
                    if decrypted_mic.is_none() && signature.is_none() {
                        decrypted_mic = Some(mic_with_crlf_headers(&plain, unsigned_alg)?);
                    }
                    entity = parse_inner_or_raw(plain);
                }
                CmsKind::Compressed => {
                    if first_layer {
                        outer_content_mic = Some(Mic::compute(&der, unsigned_alg)?);
                    }
                    let limit = ctx.max_decompressed_size.saturating_sub(decompressed_total);
                    let plain = match ctx.memory {
                        Some(MemoryGrant(grow)) => {
                            let before = decompressed_total;
                            cms::decompress_within(&der, limit, &|t| {
                                grow(before.saturating_add(t))
                            })?
                        }
                        None => cms::decompress(&der, limit)?,
                    };
                    decompressed_total = decompressed_total.saturating_add(plain.len());
                    compressed = true;
                    if signature.is_some() {
                        // Compression inside the signature happens before signing.
                        compressed_before_signing = true;
                    }
                    if uncompressed_mic.is_none() && signature.is_none() {
                        uncompressed_mic = Some(Mic::compute(&plain, unsigned_alg)?);
                    }
                    drop(der);
                    entity = Entity::parse_shared(Bytes::from(plain))
                        .map_err(|e| As2Error::DecompressionFailed(format!("not MIME: {e}")))?;
                }
                CmsKind::Signed { .. } => {
                    let (sig, content) =
                        cms::verify_attached(&der, ctx.partner_certs, ctx.validity)?;
                    if signature.is_none() {
                        let alg = sig.digest.or(requested).unwrap_or(DigestAlgorithm::Sha1);
                        signed_mic = Some(Mic::compute(&content, alg)?);
                        signature = Some(sig);
                    }
                    drop(der);
                    entity = Entity::parse_shared(Bytes::from(content))?;
                }
                CmsKind::Other(oid) => {
                    return Err(As2Error::UnsupportedAlgorithm(format!(
                        "CMS content type {oid}"
                    )))
                }
            }
            continue;
        }
        if media == "multipart/signed" {
            let ct = entity.content_type();
            let boundary = ct
                .param("boundary")
                .ok_or_else(|| As2Error::MalformedMime("multipart/signed without boundary".into()))?
                .to_string();
            let mut parts = entity.parts(&boundary)?;
            if parts.len() != 2 {
                return Err(As2Error::MalformedMime(format!(
                    "multipart/signed with {} parts",
                    parts.len()
                )));
            }
            let sig_part = Entity::parse_shared(parts.pop().unwrap_or_default())?;
            let content = parts.pop().unwrap_or_default();
            if !is_pkcs7_signature(&sig_part.media_type()) {
                return Err(As2Error::MalformedMime(format!(
                    "second part of multipart/signed is {}",
                    sig_part.media_type()
                )));
            }
            let sig_der = sig_part.decoded_body()?;
            let (info_sig, canonical) = verify_with_fallbacks(&sig_der, &content, ctx)?;
            // What is delivered is what verified, never the bytes around it: the content as
            // received (no copy), or the canonical form that verified instead.
            let verified = match canonical {
                Some(c) => bytes::Bytes::from(c),
                None => content,
            };
            let micalg = info_sig.digest.or_else(|| {
                ct.param("micalg")
                    .and_then(|m| DigestAlgorithm::parse(m).ok())
            });
            if signature.is_none() {
                let alg = micalg.or(requested).unwrap_or(DigestAlgorithm::Sha1);
                signed_mic = Some(Mic::compute(&verified, alg)?);
                signature = Some(info_sig);
            }
            entity = Entity::parse_shared(verified)?;
            continue;
        }
        // Leaf or multipart of attachments. The MIC first: the attachments then take the
        // entity's bytes over.
        let is_multipart = media.starts_with("multipart/");
        let (mic, mic_rule, alternatives) = if let Some(m) = signed_mic {
            (m, MicRule::Signed, Vec::new())
        } else {
            let rfc4130 = match decrypted_mic {
                Some(m) => (MicRule::EncryptedEntity, m),
                None => {
                    let m = match outer_content_mic {
                        Some(m) => m,
                        None if is_multipart => Mic::compute(entity.body(), unsigned_alg)?,
                        None => Mic::compute(&entity.decoded_shared()?, unsigned_alg)?,
                    };
                    (MicRule::PlainContent, m)
                }
            };
            match uncompressed_mic {
                Some(u) => (u, MicRule::CompressedEntity, vec![rfc4130]),
                None => (rfc4130.1, rfc4130.0, Vec::new()),
            }
        };
        let attachments = if is_multipart {
            let boundary = entity
                .content_type()
                .param("boundary")
                .ok_or_else(|| As2Error::MalformedMime(format!("{media} without boundary")))?
                .to_string();
            let parts = entity.parts(&boundary)?;
            if parts.len() > MAX_ATTACHMENTS {
                return Err(As2Error::MalformedMime(format!(
                    "the message has {} attachments, more than the limit of \
                     {MAX_ATTACHMENTS}; send them in several messages",
                    parts.len()
                )));
            }
            drop(entity);
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                let e = Entity::parse_shared(p)?;
                out.push(ReceivedAttachment {
                    filename: e.filename(),
                    content_type: e
                        .headers
                        .get("content-type")
                        .unwrap_or("text/plain")
                        .to_string(),
                    data: e.into_decoded_body()?,
                });
            }
            out
        } else {
            vec![ReceivedAttachment {
                filename: entity.filename(),
                content_type: entity
                    .headers
                    .get("content-type")
                    .unwrap_or("text/plain")
                    .to_string(),
                data: entity.into_decoded_body()?,
            }]
        };
        if ctx.require_signature && signature.is_none() {
            return Err(As2Error::InsufficientSecurity(
                "message is not signed".into(),
            ));
        }
        if ctx.require_encryption && encryption.is_none() {
            return Err(As2Error::InsufficientSecurity(
                "message is not encrypted".into(),
            ));
        }
        if let Some((rule, alt)) = alternatives.first() {
            tracing::debug!(
                message_id = %info.message_id,
                mic = %mic,
                alternative = %alt,
                alternative_rule = rule.name(),
                "compressed unsigned message: returning the RFC 5402 MIC; RFC 4130 would give the alternative"
            );
        }
        if ctx.refuse_weak_algorithms {
            if let Some(why) = weak_algorithm(encryption, signature.as_ref()) {
                return Err(As2Error::InsufficientSecurity(why));
            }
        }
        return Ok(ReceivedMessage {
            info,
            encryption,
            signature,
            compressed,
            compressed_before_signing,
            attachments,
            mic,
            mic_rule,
            mic_alternatives: alternatives,
        });
    }
    Err(As2Error::MalformedMime(format!(
        "MIME nesting deeper than {MAX_NESTING} layers"
    )))
}

/// The MIC of an entity with its header lines in canonical (CRLF) form and its body as it
/// is (RFC 4130 §7.3.1, encrypted unsigned), without making the canonical copy: the same
/// digest as over [`canonicalize_headers`]`(raw)`.
pub(super) fn mic_with_crlf_headers(raw: &[u8], alg: DigestAlgorithm) -> Result<Mic> {
    use openssl::hash::Hasher;
    let err = |e: openssl::error::ErrorStack| As2Error::Crypto(format!("digest: {e}"));
    let (hlen, body_start) = find_header_end(raw);
    let mut h = Hasher::new(alg.message_digest()).map_err(err)?;
    let head = raw.get(..hlen).unwrap_or(&[]);
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            b'\r' => {
                h.update(&head[start..i]).map_err(err)?;
                h.update(b"\r\n").map_err(err)?;
                if head.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            b'\n' => {
                h.update(&head[start..i]).map_err(err)?;
                h.update(b"\r\n").map_err(err)?;
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    h.update(head.get(start..).unwrap_or(&[])).map_err(err)?;
    if body_start > hlen || hlen == 0 {
        h.update(b"\r\n").map_err(err)?;
    }
    h.update(raw.get(body_start..).unwrap_or(&[]))
        .map_err(err)?;
    let d = h.finish().map_err(err)?;
    Ok(Mic {
        digest_b64: super::super::encoding::base64_encode(&d),
        algorithm: alg,
    })
}

/// Parses decrypted content as a MIME entity; some peers (Mendelson) encrypt
/// the bare payload without MIME headers, which is then taken as one
/// attachment of unknown type.
fn parse_inner_or_raw(plain: Vec<u8>) -> Entity {
    let plain = Bytes::from(plain);
    match Entity::parse_shared(plain.clone()) {
        Ok(e) if e.headers.get("content-type").is_some() => e,
        _ => Entity::from_parts_shared(
            Headers::from_pairs([("Content-Type", "application/octet-stream")]),
            plain,
        ),
    }
}

/// Verifies a detached signature over the content as received; if that
/// fails on content grounds, over canonical forms of it (peers that send
/// bare LF but signed canonical text). Returns the canonical form when that
/// is what verified (`None`: the content as received did), which is what the
/// caller must deliver. Line ends in the body are canonicalized only for a
/// text part: in a binary payload they are data, and a payload whose line
/// ends were rewritten in transit is refused.
fn verify_with_fallbacks(
    sig_der: &[u8],
    content: &[u8],
    ctx: &ReceiveContext<'_>,
) -> Result<(SignatureInfo, Option<Vec<u8>>)> {
    match cms::verify_detached(sig_der, content, ctx.partner_certs, ctx.validity) {
        Ok(i) => Ok((i, None)),
        Err(As2Error::IntegrityCheckFailed(first)) if has_bare_lf(content) => {
            let text_body = Entity::parse(content)
                .map(|e| is_text_type(&e.media_type()))
                .unwrap_or(false);
            let mut candidates = vec![canonicalize_headers(content)];
            if text_body {
                candidates.push(canonicalize_crlf(content));
            }
            for candidate in candidates {
                match cms::verify_detached(sig_der, &candidate, ctx.partner_certs, ctx.validity) {
                    Ok(i) => return Ok((i, Some(candidate))),
                    Err(As2Error::IntegrityCheckFailed(_)) => {}
                    // The signature matches this form, but something else is wrong (an
                    // expired certificate): that is the error, not the first form's
                    // content mismatch.
                    Err(e) => return Err(e),
                }
            }
            Err(As2Error::IntegrityCheckFailed(first))
        }
        Err(e) => Err(e),
    }
}

/// What AS2 1.3 does not allow in a message we received, if anything: a SHA-1 or MD5
/// signature, 3DES encryption, or a cipher we cannot name (RC2 and other legacy ones).
pub fn weak_algorithm(
    encryption: Option<Option<EncryptionAlgorithm>>,
    signature: Option<&SignatureInfo>,
) -> Option<String> {
    match encryption {
        Some(Some(EncryptionAlgorithm::TripleDes)) => {
            return Some("encrypted with 3DES, which AS2 1.3 does not allow".into())
        }
        Some(None) => {
            return Some(
                "encrypted with a legacy cipher (RC2 or another not allowed by AS2 1.3)".into(),
            )
        }
        _ => {}
    }
    match signature.and_then(|s| s.digest) {
        Some(d @ (DigestAlgorithm::Sha1 | DigestAlgorithm::Md5)) => Some(format!(
            "signed with {}, which AS2 1.3 does not allow",
            d.micalg()
        )),
        _ => None,
    }
}
