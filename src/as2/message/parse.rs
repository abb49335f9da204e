//! The receiving side: the AS2 envelope of a request, then its body layer by layer
//! (decrypt, verify, decompress, split attachments) with every layer bounded, and the MIC
//! to return.

use std::io::{Read, Seek, Write};

use openssl::x509::X509;

use super::super::algorithms::{DigestAlgorithm, EncryptionAlgorithm};
use super::super::certs::{KeyPair, ValidityPolicy};
use super::super::cms::{
    SignatureInfo, OID_AUTH_ENVELOPED_DATA, OID_COMPRESSED_DATA, OID_ENVELOPED_DATA,
    OID_SIGNED_DATA,
};
use super::super::cms_stream::{open_content_info, verify_detached_reader, Reopen};
use super::super::error::{As2Error, Result};
use super::super::headers::{
    normalize_message_id, unquote_as2_name, Headers, NotificationOptions, ParamValue,
};
use super::super::mic::Mic;
use super::super::mime::{is_text_type, Entity};
use super::super::stream::{self, MemorySpool, Region, Spool, SpoolFiles};
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
/// compress well too), but never more than `cap` (or `floor`, if larger). Inflated bytes
/// go to disk, and compression sits under the signature, so a sender nobody has verified
/// yet chooses how much: without the cap, one largest body could fill `ratio` times its
/// size of disk.
pub fn decompressed_size_limit(body_len: usize, ratio: usize, floor: usize, cap: usize) -> usize {
    body_len.saturating_mul(ratio).min(cap).max(floor)
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
    /// stops as soon as it is passed (the inflated bytes go to the spool, not to memory).
    pub max_decompressed_size: usize,
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
        }
    }
}

/// A file recovered from an incoming message; its content is `D`: bytes in memory, or a
/// sealed spool file of the caller's [`Spool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedAttachment<D = Vec<u8>> {
    /// File name from `Content-Disposition` / `Content-Type; name=`, sanitized.
    pub filename: Option<String>,
    /// The part's `Content-Type` value.
    pub content_type: String,
    /// The decoded bytes.
    pub data: D,
}

/// A successfully processed incoming message.
#[derive(Debug, Clone)]
pub struct ReceivedMessage<D = Vec<u8>> {
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
    pub attachments: Vec<ReceivedAttachment<D>>,
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

/// Like [`parse_message`] with an already parsed [`RequestInfo`], over a body in memory
/// (the same path as [`parse_body_streaming`], on in-memory spool files).
pub fn parse_body(
    info: RequestInfo,
    headers: &Headers,
    body: &[u8],
    ctx: &ReceiveContext<'_>,
) -> Result<ReceivedMessage> {
    parse_body_streaming(
        info,
        headers,
        std::io::Cursor::new(body.to_vec()),
        &mut MemorySpool,
        ctx,
    )
}

/// The MIME entity being opened: its header fields, its header block as sent (empty for
/// the HTTP layer) and where its body is.
struct Layer {
    headers: Headers,
    head: Vec<u8>,
    /// Whether a blank line separated the header block from the body.
    body: Region,
}

impl Layer {
    fn content_type(&self) -> ParamValue {
        match self.headers.get("content-type") {
            Some(v) => ParamValue::parse(v),
            None => ParamValue::parse("text/plain"),
        }
    }

    fn media_type(&self) -> String {
        self.content_type().value_lower()
    }

    fn transfer_encoding(&self) -> String {
        self.headers
            .get("content-transfer-encoding")
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "7bit".into())
    }

    fn filename(&self) -> Option<String> {
        Entity::from_parts(self.headers.clone(), &[]).filename()
    }
}

type Files<F> = SpoolFiles<F>;

impl<F: Read + Write + Seek> SpoolFiles<F> {
    /// The entity (header block, blank line, body) stored at `region`.
    fn entity(&mut self, region: Region) -> Result<Layer> {
        let (headers, head, body_start) = stream::read_header_block(&mut self.open(region)?)?;
        Ok(Layer {
            headers,
            head,
            body: region.sub(body_start..region.len()),
        })
    }

    /// The body of `layer` with its transfer encoding undone.
    fn decoded(&mut self, layer: &Layer) -> Result<Box<dyn Read + '_>> {
        let cte = layer.transfer_encoding();
        stream::decoding_reader(self.open(layer.body)?, &cte)
    }

    fn mic(&mut self, region: Region, alg: DigestAlgorithm) -> Result<Mic> {
        stream::mic_of_reader(&mut self.open(region)?, alg).map_err(reader_error)
    }
}

/// A region of a message's spool files, to read from its start as often as needed.
struct FileRegion<'a, F>(&'a mut Files<F>, Region);

impl<F: Read + Write + Seek> Reopen for FileRegion<'_, F> {
    fn reopen(&mut self) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.0.open(self.1)?))
    }
}

/// Bad base64 met while reading is malformed MIME, not an I/O failure.
fn reader_error(e: As2Error) -> As2Error {
    match e {
        As2Error::Io(m) if m.contains("bad base64") => As2Error::MalformedMime(m),
        e => e,
    }
}

/// Most bytes of the signature part of a `multipart/signed` (a SignedData with its
/// certificates), read into memory.
pub const MAX_SIGNATURE_BYTES: u64 = 4 << 20;

/// Parses an incoming AS2 request whose body is `body` (read from its start): decrypts,
/// verifies, decompresses, splits attachments and computes the MIC, each layer streaming
/// from one spool file into the next (made by `spool`), so that memory does not grow with
/// the message. The attachments are sealed spool files. Work and memory are bounded
/// whatever the sender does: layers ([`MAX_NESTING`]), parts and header blocks
/// ([`super::super::mime::MAX_PARTS`], [`super::super::mime::MAX_HEADER_BYTES`]),
/// attachments ([`MAX_ATTACHMENTS`]), the signature part ([`MAX_SIGNATURE_BYTES`]) and
/// decompressed bytes (`ctx.max_decompressed_size`).
pub fn parse_body_streaming<S: Spool>(
    info: RequestInfo,
    headers: &Headers,
    body: S::File,
    spool: &mut S,
    ctx: &ReceiveContext<'_>,
) -> Result<ReceivedMessage<S::Sealed>> {
    if headers.get("content-type").is_none() {
        return Err(As2Error::MissingHeader("Content-Type"));
    }
    let requested = info.mdn.as_ref().and_then(MdnRequest::preferred_micalg);
    let unsigned_alg = requested.unwrap_or(DigestAlgorithm::Sha1);
    let mut files = Files::default();
    let whole = files.add(body)?;
    let mut layer = Layer {
        headers: headers.clone(),
        head: Vec::new(),
        body: whole,
    };
    let new_file = |spool: &mut S| {
        spool
            .create()
            .map_err(stream::io_error("create a spool file"))
    };
    let mut encryption = None;
    let mut signature: Option<SignatureInfo> = None;
    let mut compressed = false;
    let mut compressed_before_signing = false;
    let mut signed_mic: Option<Mic> = None;
    let mut decrypted_mic: Option<Mic> = None;
    let mut uncompressed_mic: Option<Mic> = None;
    let mut outer_content_mic: Option<Mic> = None;
    let mut decompressed_total = 0u64;

    for _depth in 0..MAX_NESTING {
        let media = layer.media_type();
        // Checked before any work on the layer (decompression, splitting): a partner that
        // must encrypt gets nothing of ours spent on what it sent in clear.
        if ctx.require_encryption && encryption.is_none() && !is_pkcs7_mime(&media) {
            return Err(As2Error::InsufficientSecurity(
                "message is not encrypted".into(),
            ));
        }
        if is_pkcs7_mime(&media) {
            // Some peers send base64 without saying so (no transfer encoding).
            let mut cte = layer.transfer_encoding();
            if matches!(cte.as_str(), "7bit" | "8bit" | "binary" | "") {
                let mut first = [0u8; 1];
                let n = stream::read_some(&mut files.open(layer.body)?, &mut first)?;
                if n == 1 && first[0] != 0x30 && first[0].is_ascii_alphanumeric() {
                    cte = "base64".into();
                }
            }
            let first_layer = encryption.is_none() && signature.is_none() && !compressed;
            let smime_type = layer
                .content_type()
                .param("smime-type")
                .map(|s| s.to_ascii_lowercase());
            let mut der = stream::decoding_reader(files.open(layer.body)?, &cte)?;
            let ci = open_content_info(&mut der).map_err(|e| match smime_type.as_deref() {
                Some("enveloped-data") => As2Error::DecryptionFailed(e.to_string()),
                Some("compressed-data") => As2Error::DecompressionFailed(e.to_string()),
                _ => reader_error(e),
            })?;
            let kind = ci.content_type.clone();
            let enveloped = kind == OID_ENVELOPED_DATA || kind == OID_AUTH_ENVELOPED_DATA;
            if ctx.require_encryption && encryption.is_none() && !enveloped {
                return Err(As2Error::InsufficientSecurity(
                    "message is not encrypted".into(),
                ));
            }
            let mut out = new_file(spool)?;
            match kind.as_str() {
                _ if enveloped => {
                    let (cipher, _) = ci.decrypt_into(ctx.station_keys, &mut out)?;
                    drop(der);
                    let plain = files.add(out)?;
                    encryption = Some(cipher);
                    if decrypted_mic.is_none() && signature.is_none() {
                        decrypted_mic = Some(stream::mic_with_crlf_headers(
                            &mut files.open(plain)?,
                            unsigned_alg,
                        )?);
                    }
                    layer = match files.entity(plain) {
                        Ok(e) if e.headers.get("content-type").is_some() => e,
                        // Some peers (Mendelson) encrypt the bare payload without MIME
                        // headers: one attachment of unknown type.
                        _ => Layer {
                            headers: Headers::from_pairs([(
                                "Content-Type",
                                "application/octet-stream",
                            )]),
                            head: Vec::new(),
                            body: plain,
                        },
                    };
                }
                OID_COMPRESSED_DATA => {
                    let limit =
                        (ctx.max_decompressed_size as u64).saturating_sub(decompressed_total);
                    let n = ci.decompress_into(&mut out, limit)?;
                    drop(der);
                    if first_layer {
                        let mut der = stream::decoding_reader(files.open(layer.body)?, &cte)?;
                        outer_content_mic = Some(
                            stream::mic_of_reader(&mut der, unsigned_alg).map_err(reader_error)?,
                        );
                    }
                    decompressed_total = decompressed_total.saturating_add(n);
                    let plain = files.add(out)?;
                    compressed = true;
                    if signature.is_some() {
                        // Compression inside the signature happens before signing.
                        compressed_before_signing = true;
                    }
                    if uncompressed_mic.is_none() && signature.is_none() {
                        uncompressed_mic = Some(files.mic(plain, unsigned_alg)?);
                    }
                    layer = files
                        .entity(plain)
                        .map_err(|e| As2Error::DecompressionFailed(format!("not MIME: {e}")))?;
                }
                OID_SIGNED_DATA => {
                    let detached = ci.detach_signed_content(&mut out).map_err(|e| match e {
                        As2Error::Io(m) => As2Error::Io(m),
                        e => As2Error::AuthenticationFailed(format!("signature is not CMS: {e}")),
                    })?;
                    drop(der);
                    let content = files.add(out)?;
                    let sig = verify_detached_reader(
                        &detached,
                        &mut FileRegion(&mut files, content),
                        ctx.partner_certs,
                        ctx.validity,
                    )?;
                    if signature.is_none() {
                        let alg = sig.digest.or(requested).unwrap_or(DigestAlgorithm::Sha1);
                        signed_mic = Some(files.mic(content, alg)?);
                        signature = Some(sig);
                    }
                    layer = files.entity(content)?;
                }
                other => {
                    return Err(As2Error::UnsupportedAlgorithm(format!(
                        "CMS content type {other}"
                    )))
                }
            }
            continue;
        }
        if media == "multipart/signed" {
            let ct = layer.content_type();
            let boundary = ct
                .param("boundary")
                .ok_or_else(|| As2Error::MalformedMime("multipart/signed without boundary".into()))?
                .to_string();
            let parts = stream::multipart_ranges(&mut files.open(layer.body)?, &boundary)?;
            if parts.len() != 2 {
                return Err(As2Error::MalformedMime(format!(
                    "multipart/signed with {} parts",
                    parts.len()
                )));
            }
            let content = layer.body.sub(parts[0].clone());
            let sig_part = files.entity(layer.body.sub(parts[1].clone()))?;
            if !is_pkcs7_signature(&sig_part.media_type()) {
                return Err(As2Error::MalformedMime(format!(
                    "second part of multipart/signed is {}",
                    sig_part.media_type()
                )));
            }
            let mut sig_der = Vec::new();
            files
                .decoded(&sig_part)?
                .take(MAX_SIGNATURE_BYTES + 1)
                .read_to_end(&mut sig_der)
                .map_err(stream::read_error)?;
            if sig_der.len() as u64 > MAX_SIGNATURE_BYTES {
                return Err(As2Error::MalformedMime(format!(
                    "the signature part is larger than the limit of {MAX_SIGNATURE_BYTES} bytes"
                )));
            }
            let (info_sig, verified) =
                verify_with_fallbacks(&sig_der, content, &mut files, spool, ctx)?;
            let micalg = info_sig.digest.or_else(|| {
                ct.param("micalg")
                    .and_then(|m| DigestAlgorithm::parse(m).ok())
            });
            if signature.is_none() {
                let alg = micalg.or(requested).unwrap_or(DigestAlgorithm::Sha1);
                signed_mic = Some(files.mic(verified, alg)?);
                signature = Some(info_sig);
            }
            layer = files.entity(verified)?;
            continue;
        }
        // Leaf or multipart of attachments.
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
        if ctx.refuse_weak_algorithms {
            if let Some(why) = weak_algorithm(encryption, signature.as_ref()) {
                return Err(As2Error::InsufficientSecurity(why));
            }
        }
        let is_multipart = media.starts_with("multipart/");
        let (mic, mic_rule, alternatives) = if let Some(m) = signed_mic {
            (m, MicRule::Signed, Vec::new())
        } else {
            let rfc4130 = match decrypted_mic {
                Some(m) => (MicRule::EncryptedEntity, m),
                None => {
                    let m = match outer_content_mic {
                        Some(m) => m,
                        None if is_multipart => files.mic(layer.body, unsigned_alg)?,
                        None => stream::mic_of_reader(&mut files.decoded(&layer)?, unsigned_alg)
                            .map_err(reader_error)?,
                    };
                    (MicRule::PlainContent, m)
                }
            };
            match uncompressed_mic {
                Some(u) => (u, MicRule::CompressedEntity, vec![rfc4130]),
                None => (rfc4130.1, rfc4130.0, Vec::new()),
            }
        };
        let leaves = if is_multipart {
            let boundary = layer
                .content_type()
                .param("boundary")
                .ok_or_else(|| As2Error::MalformedMime(format!("{media} without boundary")))?
                .to_string();
            let parts = stream::multipart_ranges(&mut files.open(layer.body)?, &boundary)?;
            if parts.len() > MAX_ATTACHMENTS {
                return Err(As2Error::MalformedMime(format!(
                    "the message has {} attachments, more than the limit of \
                     {MAX_ATTACHMENTS}; send them in several messages",
                    parts.len()
                )));
            }
            let mut leaves = Vec::with_capacity(parts.len());
            for p in parts {
                leaves.push(files.entity(layer.body.sub(p))?);
            }
            leaves
        } else {
            vec![layer]
        };
        let mut attachments = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            let mut out = new_file(spool)?;
            stream::copy_all(&mut files.decoded(&leaf)?, &mut out).map_err(reader_error)?;
            attachments.push(ReceivedAttachment {
                filename: leaf.filename(),
                content_type: leaf
                    .headers
                    .get("content-type")
                    .unwrap_or("text/plain")
                    .to_string(),
                data: spool
                    .seal(out)
                    .map_err(stream::io_error("finish a spool file"))?,
            });
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
/// is (RFC 4130 §7.3.1, encrypted unsigned): see [`stream::mic_with_crlf_headers`].
#[cfg(test)]
pub(super) fn mic_with_crlf_headers(raw: &[u8], alg: DigestAlgorithm) -> Result<Mic> {
    stream::mic_with_crlf_headers(&mut &raw[..], alg)
}

/// Verifies a detached signature over the content as received; if that fails on content
/// grounds, over canonical forms of it (peers that send bare LF but signed canonical
/// text). Returns where what verified is: the content as received, or a canonical copy,
/// which is what the caller must deliver. Line ends in the body are canonicalized only for
/// a text part: in a binary payload they are data, and a payload whose line ends were
/// rewritten in transit is refused.
fn verify_with_fallbacks<S: Spool>(
    sig_der: &[u8],
    content: Region,
    files: &mut Files<S::File>,
    spool: &mut S,
    ctx: &ReceiveContext<'_>,
) -> Result<(SignatureInfo, Region)> {
    let verify = |files: &mut Files<S::File>, region: Region| {
        verify_detached_reader(
            sig_der,
            &mut FileRegion(files, region),
            ctx.partner_certs,
            ctx.validity,
        )
    };
    let first = match verify(files, content) {
        Ok(i) => return Ok((i, content)),
        Err(As2Error::IntegrityCheckFailed(first)) => first,
        Err(e) => return Err(e),
    };
    if !stream::has_bare_lf_in(&mut files.open(content)?)? {
        return Err(As2Error::IntegrityCheckFailed(first));
    }
    let entity = files.entity(content).ok();
    let text_body = entity
        .as_ref()
        .is_some_and(|e| is_text_type(&e.media_type()));
    // The header block canonical, the body as it is.
    let mut candidates = Vec::new();
    if let Some(e) = &entity {
        let mut out = spool
            .create()
            .map_err(stream::io_error("create a spool file"))?;
        let mut head = Vec::new();
        stream::CrlfCanonicalizer::default().push(&e.head, &mut head);
        if e.body.start > content.start + e.head.len() as u64 || e.head.is_empty() {
            head.extend_from_slice(b"\r\n");
        }
        out.write_all(&head)
            .map_err(stream::io_error("write a spool file"))?;
        stream::copy_all(&mut files.open(e.body)?, &mut out)?;
        candidates.push(files.add(out)?);
    }
    if text_body {
        let mut out = spool
            .create()
            .map_err(stream::io_error("create a spool file"))?;
        stream::canonicalize_into(&mut files.open(content)?, &mut out)?;
        candidates.push(files.add(out)?);
    }
    for candidate in candidates {
        match verify(files, candidate) {
            Ok(i) => return Ok((i, candidate)),
            Err(As2Error::IntegrityCheckFailed(_)) => {}
            // The signature matches this form, but something else is wrong (an expired
            // certificate): that is the error, not the first form's content mismatch.
            Err(e) => return Err(e),
        }
    }
    Err(As2Error::IntegrityCheckFailed(first))
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
