//! The sending side: payload entity, compression, signature and encryption, in the order
//! the profile asks for, and the MICs the receiver may return.

use std::io::{Read, Seek, Write};

use openssl::x509::X509;

use super::super::algorithms::{DigestAlgorithm, EncryptionAlgorithm};
use super::super::certs::KeyPair;
use super::super::cms::{self, SignOptions};
use super::super::cms_stream;
use super::super::encoding::{base64_encode_lines, hex_lower};
use super::super::error::{As2Error, Result};
use super::super::headers::{normalize_message_id, quote_as2_name, Headers};
use super::super::mic::Mic;
use super::super::mime::{is_text_type, make_boundary};
use super::super::stream::{self, MemorySpool, Region, Spool, SpoolFiles};
use super::{MicRule, AS2_VERSION, AS2_VERSION_1_3, EDIINT_FEATURES};

/// One file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// File name for `Content-Disposition` (`None`: no disposition header).
    pub filename: Option<String>,
    /// MIME type, e.g. `application/edi-x12` or `application/octet-stream`.
    pub content_type: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Where compression goes relative to signing (RFC 5402 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionOrder {
    /// Compress the payload, then sign the compressed entity.
    BeforeSigning,
    /// Sign, then compress the multipart/signed entity.
    AfterSigning,
}

/// Whether and how an MDN is requested (RFC 4130 §7.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdnMode {
    /// No MDN requested.
    None,
    /// Synchronous MDN in the HTTP response.
    Sync,
    /// Asynchronous MDN POSTed to this URL (`Receipt-Delivery-Option`).
    Async(String),
}

/// A trading partner profile as far as building a message is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendProfile {
    /// Our AS2 name (`AS2-From`).
    pub as2_from: String,
    /// The partner's AS2 name (`AS2-To`).
    pub as2_to: String,
    /// `Subject`.
    pub subject: String,
    /// Sign with this digest.
    pub sign: Option<DigestAlgorithm>,
    /// Encrypt with this cipher.
    pub encrypt: Option<EncryptionAlgorithm>,
    /// Compress, and where.
    pub compress: Option<CompressionOrder>,
    /// MDN request.
    pub mdn: MdnMode,
    /// MIC algorithms to ask for a *signed* MDN with; empty asks for an
    /// unsigned MDN (no `Disposition-Notification-Options`).
    pub signed_mdn_micalgs: Vec<DigestAlgorithm>,
    /// `Disposition-Notification-To` value (an address; AS2 ignores it).
    pub disposition_notification_to: String,
    /// Domain part of generated Message-IDs.
    pub message_id_domain: String,
    /// Include SMIMECapabilities in signatures (Sterling: off).
    pub smime_capabilities: bool,
    /// Include the RFC 6211 CMSAlgorithmProtection attribute (Sterling: off).
    pub algorithm_protection: bool,
    /// Treat every payload as binary: never CRLF-canonicalize text (Sterling).
    pub binary_canonicalization: bool,
    /// Use RSAES-OAEP key transport instead of RSA PKCS#1 v1.5 (pyas2lib
    /// cannot decrypt it; OpenSSL and most commercial peers can).
    pub rsa_oaep: bool,
    /// Spell the MIC algorithms asked for without a dash (`sha256`, not `sha-256`).
    pub micalg_compact: bool,
    /// More header fields, checked by [`check_extra_header`].
    pub extra_headers: Vec<(String, String)>,
    /// Speak AS2 1.3: `AS2-Version: 1.3`, `AS2-Product` with this value, and no SHA-1 or
    /// 3DES. `None`: AS2 1.2.
    pub as2_1_3_product: Option<String>,
}

/// The header fields [`build_message`] sets itself, and HTTP's framing: an extra header
/// may not replace any of them.
const RESERVED_HEADERS: &[&str] = &[
    "AS2-From",
    "AS2-To",
    "AS2-Version",
    "AS2-Product",
    "EDIINT-Features",
    "Message-ID",
    "Subject",
    "Date",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "Content-Length",
    "Transfer-Encoding",
    "Host",
    "Connection",
    "Authorization",
    "Disposition-Notification-To",
    "Disposition-Notification-Options",
    "Receipt-Delivery-Option",
];

/// Whether `name: value` may be sent as an extra header field: `name` an RFC 7230 token
/// that is none of the fields AS2 or HTTP framing set, `value` printable on one line.
pub fn check_extra_header(name: &str, value: &str) -> Result<()> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(As2Error::InvalidInput(format!(
            "{name:?} is not a header field name (letters, digits and -, at most 64)"
        )));
    }
    if let Some(reserved) = RESERVED_HEADERS
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(As2Error::InvalidInput(format!(
            "{reserved} is set by the AS2 message itself and cannot be replaced"
        )));
    }
    check_header_value(name, value)?;
    if value.len() > 1024 || value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(As2Error::InvalidInput(format!(
            "the value of {name} must be printable text of at most 1024 bytes"
        )));
    }
    Ok(())
}

impl SendProfile {
    /// A profile with the usual defaults: no security, sync unsigned MDN.
    pub fn new(as2_from: &str, as2_to: &str) -> Self {
        Self {
            as2_from: as2_from.into(),
            as2_to: as2_to.into(),
            subject: "AS2 Message".into(),
            sign: None,
            encrypt: None,
            compress: None,
            mdn: MdnMode::Sync,
            signed_mdn_micalgs: Vec::new(),
            disposition_notification_to: "as2box@localhost".into(),
            message_id_domain: "as2box.local".into(),
            smime_capabilities: true,
            algorithm_protection: false,
            binary_canonicalization: false,
            rsa_oaep: false,
            micalg_compact: false,
            extra_headers: Vec::new(),
            as2_1_3_product: None,
        }
    }
}

/// A built message ready to POST; its body is `D`: bytes in memory, or a sealed spool
/// file of the caller's [`Spool`].
#[derive(Debug, Clone)]
pub struct OutgoingMessage<D = Vec<u8>> {
    /// Message-ID without angle brackets.
    pub message_id: String,
    /// HTTP header fields (AS2 headers and the outer entity's Content-Type etc.).
    pub headers: Headers,
    /// HTTP body.
    pub body: D,
    /// The MIC the receiver should return, if one can be predicted.
    pub mic: Option<Mic>,
    /// Other MICs a receiver may legitimately compute (see [`MicRule`]).
    pub mic_alternatives: Vec<(MicRule, Mic)>,
}

impl<D> OutgoingMessage<D> {
    /// Every acceptable MIC (primary first).
    pub fn acceptable_mics(&self) -> Vec<Mic> {
        self.mic
            .iter()
            .cloned()
            .chain(self.mic_alternatives.iter().map(|(_, m)| m.clone()))
            .collect()
    }
}

/// Generates a Message-ID (without brackets) from the time and openssl's RNG.
pub fn generate_message_id(now_unix: i64, domain: &str) -> String {
    let mut b = [0u8; 12];
    let _ = openssl::rand::rand_bytes(&mut b);
    format!("as2box-{now_unix}-{}@{domain}", hex_lower(&b))
}

fn disposition_filename(name: &str) -> String {
    let simple = name
        .chars()
        .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\');
    if simple {
        format!("attachment; filename=\"{name}\"")
    } else {
        let enc: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("attachment; filename*=UTF-8''{enc}")
    }
}

pub(super) fn entity_bytes(headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 256);
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Refuses a header value with a line break (it would start another field).
pub fn check_header_value(name: &str, v: &str) -> Result<()> {
    if v.chars().any(|c| c == '\r' || c == '\n') {
        return Err(As2Error::InvalidInput(format!(
            "{name} contains a line break"
        )));
    }
    Ok(())
}

/// Builds a `multipart/signed` entity around `inner` (signed exactly as given).
pub(crate) fn signed_entity(inner: &[u8], signer: &KeyPair, opts: &SignOptions) -> Result<Vec<u8>> {
    let sig = cms::sign_detached(inner, signer, opts)?;
    let boundary = make_boundary();
    let mut body = Vec::with_capacity(inner.len() + sig.len() * 2 + 512);
    write_signed_body(&mut body, &boundary, &mut &inner[..], &sig)?;
    Ok(entity_bytes(
        &[("Content-Type", signed_content_type(opts.digest, &boundary))],
        &body,
    ))
}

/// The `Content-Type` of a `multipart/signed` entity (RFC 5751 §3.5).
fn signed_content_type(digest: DigestAlgorithm, boundary: &str) -> String {
    format!(
        "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg={}; boundary=\"{boundary}\"",
        digest.micalg()
    )
}

/// Writes the body of a `multipart/signed` entity: the signed entity `inner` as it is,
/// then the detached signature `sig` (base64).
fn write_signed_body(
    out: &mut dyn Write,
    boundary: &str,
    inner: &mut dyn Read,
    sig: &[u8],
) -> Result<()> {
    let io = stream::io_error("write a spool file");
    out.write_all(format!("--{boundary}\r\n").as_bytes())
        .map_err(&io)?;
    stream::copy_all(inner, out)?;
    out.write_all(format!("\r\n--{boundary}\r\n").as_bytes())
        .map_err(&io)?;
    out.write_all(&entity_bytes(
        &[
            (
                "Content-Type",
                "application/pkcs7-signature; name=\"smime.p7s\"; smime-type=signed-data".into(),
            ),
            ("Content-Transfer-Encoding", "base64".into()),
            (
                "Content-Disposition",
                "attachment; filename=\"smime.p7s\"".into(),
            ),
        ],
        &base64_encode_lines(sig),
    ))
    .map_err(&io)?;
    out.write_all(format!("\r\n--{boundary}--\r\n").as_bytes())
        .map_err(&io)
}

/// Builds an outgoing message in memory. `signer` is our key (needed when the profile
/// signs), `recipient` the partner's encryption certificate (needed when it encrypts).
/// `now_unix` feeds `Date` and the signing time; `message_id` (without brackets)
/// overrides the generated one. The same path as [`build_message_streaming`], on
/// in-memory spool files.
pub fn build_message(
    attachments: &[Attachment],
    profile: &SendProfile,
    signer: Option<&KeyPair>,
    recipient: Option<&X509>,
    now_unix: i64,
    message_id: Option<&str>,
) -> Result<OutgoingMessage> {
    let sources = attachments
        .iter()
        .map(|a| AttachmentSource {
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            data: Box::new(&a.data[..]),
        })
        .collect();
    build_message_streaming(
        sources,
        profile,
        signer,
        recipient,
        now_unix,
        message_id,
        &mut MemorySpool,
    )
}

/// What [`build_message_streaming`] checks of a profile before any work.
fn check_profile(profile: &SendProfile) -> Result<()> {
    for (n, v) in [
        ("AS2-From", &profile.as2_from),
        ("AS2-To", &profile.as2_to),
        ("Subject", &profile.subject),
        (
            "Disposition-Notification-To",
            &profile.disposition_notification_to,
        ),
        ("Message-ID domain", &profile.message_id_domain),
    ] {
        check_header_value(n, v)?;
    }
    if let Some(product) = &profile.as2_1_3_product {
        check_header_value("AS2-Product", product)?;
        if matches!(
            profile.sign,
            Some(DigestAlgorithm::Sha1 | DigestAlgorithm::Md5)
        ) {
            return Err(As2Error::InvalidInput(
                "AS2 1.3 does not allow SHA-1 signatures: sign with sha256 or stronger".into(),
            ));
        }
        if profile.encrypt == Some(EncryptionAlgorithm::TripleDes) {
            return Err(As2Error::InvalidInput(
                "AS2 1.3 does not allow 3DES: encrypt with AES".into(),
            ));
        }
    }
    for (name, value) in &profile.extra_headers {
        check_extra_header(name, value)?;
    }
    if profile.as2_from.is_empty() || profile.as2_to.is_empty() {
        return Err(As2Error::InvalidInput("empty AS2 name".into()));
    }
    if profile.as2_from.len() > 128 || profile.as2_to.len() > 128 {
        return Err(As2Error::InvalidInput(
            "AS2 name longer than 128 characters".into(),
        ));
    }
    Ok(())
}

/// The HTTP header fields of a message whose outermost entity has `fields`; returns the
/// Message-ID (without brackets) too.
fn http_headers(
    profile: &SendProfile,
    fields: &[(String, String)],
    now_unix: i64,
    message_id: Option<&str>,
) -> Result<(String, Headers)> {
    let message_id = match message_id {
        Some(m) => normalize_message_id(m),
        None => generate_message_id(now_unix, &profile.message_id_domain),
    };
    check_header_value("Message-ID", &message_id)?;
    let mut h = Headers::new();
    match &profile.as2_1_3_product {
        Some(product) => {
            h.push("AS2-Version", AS2_VERSION_1_3);
            h.push("AS2-Product", product.clone());
        }
        None => h.push("AS2-Version", AS2_VERSION),
    }
    h.push("EDIINT-Features", EDIINT_FEATURES);
    h.push("Message-ID", format!("<{message_id}>"));
    h.push("AS2-From", quote_as2_name(&profile.as2_from));
    h.push("AS2-To", quote_as2_name(&profile.as2_to));
    h.push("Subject", profile.subject.clone());
    h.push("Date", crate::timefmt::rfc5322(now_unix));
    h.push("MIME-Version", "1.0");
    for (k, v) in fields {
        h.push(k.clone(), v.clone());
    }
    match &profile.mdn {
        MdnMode::None => {}
        mode => {
            h.push(
                "Disposition-Notification-To",
                profile.disposition_notification_to.clone(),
            );
            if !profile.signed_mdn_micalgs.is_empty() {
                let algs: Vec<&str> = profile
                    .signed_mdn_micalgs
                    .iter()
                    .map(|a| {
                        if profile.micalg_compact {
                            a.compact_name()
                        } else {
                            a.micalg()
                        }
                    })
                    .collect();
                h.push(
                    "Disposition-Notification-Options",
                    format!(
                        "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, {}",
                        algs.join(", ")
                    ),
                );
            }
            if let MdnMode::Async(url) = mode {
                check_header_value("Receipt-Delivery-Option", url)?;
                h.push("Receipt-Delivery-Option", url.clone());
            }
        }
    }
    for (name, value) in &profile.extra_headers {
        h.push(name.clone(), value.clone());
    }
    Ok((message_id, h))
}

/// One file to send, read from a stream (see [`build_message_streaming`]).
pub struct AttachmentSource<'a> {
    /// File name for `Content-Disposition` (`None`: no disposition header).
    pub filename: Option<String>,
    /// MIME type.
    pub content_type: String,
    /// The bytes.
    pub data: Box<dyn Read + 'a>,
}

/// A MIME entity being built: its header block (fields, then the blank line) in memory,
/// its body in a spool file.
struct Built {
    /// Header fields, in order.
    fields: Vec<(String, String)>,
    body: Region,
}

impl Built {
    fn head(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.fields {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

type Out<F> = SpoolFiles<F>;

impl<F: Read + Write + Seek> SpoolFiles<F> {
    /// The whole entity (header block and body) as a reader.
    fn built(&mut self, e: &Built) -> Result<impl Read + '_> {
        let head = e.head();
        Ok(std::io::Cursor::new(head).chain(self.open(e.body)?))
    }
}

fn fields(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The header fields of an `application/pkcs7-mime` entity (RFC 5751 §3.2).
fn pkcs7_mime_fields(smime_type: &str, name: &str) -> Vec<(String, String)> {
    fields(&[
        (
            "Content-Type",
            format!("application/pkcs7-mime; smime-type={smime_type}; name=\"{name}\""),
        ),
        ("Content-Transfer-Encoding", "binary".into()),
        (
            "Content-Disposition",
            format!("attachment; filename=\"{name}\""),
        ),
    ])
}

fn part_fields(content_type: &str, filename: Option<&str>) -> Result<Vec<(String, String)>> {
    check_header_value("content type", content_type)?;
    let mut h: Vec<(&str, String)> = vec![
        ("Content-Type", content_type.to_string()),
        ("Content-Transfer-Encoding", "binary".into()),
    ];
    if let Some(name) = filename {
        check_header_value("file name", name)?;
        h.push(("Content-Disposition", disposition_filename(name)));
    }
    Ok(fields(&h))
}

/// Builds an outgoing message from attachments read as streams, each layer streaming from
/// one spool file of `spool` into the next, so that memory does not grow with the
/// message; the body to POST is a sealed spool file. Same rules as [`build_message`].
pub fn build_message_streaming<S: Spool>(
    attachments: Vec<AttachmentSource<'_>>,
    profile: &SendProfile,
    signer: Option<&KeyPair>,
    recipient: Option<&X509>,
    now_unix: i64,
    message_id: Option<&str>,
    spool: &mut S,
) -> Result<OutgoingMessage<S::Sealed>> {
    check_profile(profile)?;
    let new_file = |spool: &mut S| {
        spool
            .create()
            .map_err(stream::io_error("create a spool file"))
    };
    let write = |f: &mut S::File, bytes: &[u8]| {
        f.write_all(bytes)
            .map_err(stream::io_error("write a spool file"))
    };
    let mut out = Out::default();
    // The payload entity: one attachment, or multipart/related of several (RFC 6362).
    let canonical = |media: &str| !profile.binary_canonicalization && is_text_type(media);
    let payload = match attachments.len() {
        0 => return Err(As2Error::InvalidInput("no attachments".into())),
        1 => {
            let mut a = attachments
                .into_iter()
                .next()
                .ok_or_else(|| As2Error::InvalidInput("no attachments".into()))?;
            let f = part_fields(&a.content_type, a.filename.as_deref())?;
            let mut file = new_file(spool)?;
            write_attachment(&mut a, canonical, &mut file)?;
            Built {
                fields: f,
                body: out.add(file)?,
            }
        }
        _ => {
            let boundary = make_boundary();
            let root = attachments[0]
                .content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            check_header_value("content type", &root)?;
            let mut file = new_file(spool)?;
            for mut a in attachments {
                let part = Built {
                    fields: part_fields(&a.content_type, a.filename.as_deref())?,
                    body: Region {
                        file: 0,
                        start: 0,
                        end: 0,
                    },
                };
                write(&mut file, format!("--{boundary}\r\n").as_bytes())?;
                write(&mut file, &part.head())?;
                write_attachment(&mut a, canonical, &mut file)?;
                write(&mut file, b"\r\n")?;
            }
            write(&mut file, format!("--{boundary}--\r\n").as_bytes())?;
            Built {
                fields: fields(&[(
                    "Content-Type",
                    format!("multipart/related; boundary=\"{boundary}\"; type=\"{root}\""),
                )]),
                body: out.add(file)?,
            }
        }
    };
    let sign_opts = |digest| SignOptions {
        digest,
        smime_capabilities: profile.smime_capabilities,
        algorithm_protection: profile.algorithm_protection,
        signing_time: now_unix,
    };
    let unsigned_alg = profile
        .signed_mdn_micalgs
        .first()
        .copied()
        .unwrap_or(DigestAlgorithm::Sha1);
    let compress = |e: &Built, out: &mut Out<S::File>, spool: &mut S| -> Result<Built> {
        let mut file = new_file(spool)?;
        let scratch = new_file(spool)?;
        cms_stream::compress_stream(&mut out.built(e)?, &mut file, scratch)?;
        Ok(Built {
            fields: pkcs7_mime_fields("compressed-data", "smime.p7z"),
            body: out.add(file)?,
        })
    };
    let mut entity = Built {
        fields: payload.fields.clone(),
        body: payload.body,
    };
    let mut mic = None;
    let mut alternatives = Vec::new();
    if profile.compress == Some(CompressionOrder::BeforeSigning) {
        entity = compress(&entity, &mut out, spool)?;
    }
    if let Some(digest) = profile.sign {
        let key = signer.ok_or_else(|| As2Error::InvalidInput("signing needs our key".into()))?;
        mic = Some(stream::mic_of_reader(&mut out.built(&entity)?, digest)?);
        let sig = cms::sign_detached_reader(&mut out.built(&entity)?, key, &sign_opts(digest))?;
        let boundary = make_boundary();
        let mut file = new_file(spool)?;
        write(&mut file, format!("--{boundary}\r\n").as_bytes())?;
        stream::copy_all(&mut out.built(&entity)?, &mut file)?;
        write(&mut file, format!("\r\n--{boundary}\r\n").as_bytes())?;
        write(
            &mut file,
            &entity_bytes(
                &[
                    (
                        "Content-Type",
                        "application/pkcs7-signature; name=\"smime.p7s\"; smime-type=signed-data"
                            .into(),
                    ),
                    ("Content-Transfer-Encoding", "base64".into()),
                    (
                        "Content-Disposition",
                        "attachment; filename=\"smime.p7s\"".into(),
                    ),
                ],
                &base64_encode_lines(&sig),
            ),
        )?;
        write(&mut file, format!("\r\n--{boundary}--\r\n").as_bytes())?;
        entity = Built {
            fields: fields(&[(
                "Content-Type",
                format!(
                    "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg={}; boundary=\"{boundary}\"",
                    digest.micalg()
                ),
            )]),
            body: out.add(file)?,
        };
    }
    if profile.compress == Some(CompressionOrder::AfterSigning) {
        entity = compress(&entity, &mut out, spool)?;
    }
    if profile.sign.is_none() {
        let rfc4130 = if profile.encrypt.is_some() {
            (
                MicRule::EncryptedEntity,
                stream::mic_of_reader(&mut out.built(&entity)?, unsigned_alg)?,
            )
        } else {
            // The content without headers: the compressed entity's body when compressed,
            // else the payload's.
            let body = if profile.compress.is_some() {
                entity.body
            } else {
                payload.body
            };
            (
                MicRule::PlainContent,
                stream::mic_of_reader(&mut out.open(body)?, unsigned_alg)?,
            )
        };
        if profile.compress.is_some() {
            mic = Some(stream::mic_of_reader(
                &mut out.built(&payload)?,
                unsigned_alg,
            )?);
            alternatives.push(rfc4130);
        } else {
            mic = Some(rfc4130.1);
        }
    }
    if let Some(alg) = profile.encrypt {
        let cert = recipient.ok_or_else(|| {
            As2Error::InvalidInput("encryption needs the partner certificate".into())
        })?;
        let mut file = new_file(spool)?;
        cms_stream::encrypt_stream(
            &mut out.built(&entity)?,
            &mut file,
            cert,
            alg,
            profile.rsa_oaep,
        )?;
        entity = Built {
            fields: pkcs7_mime_fields("enveloped-data", "smime.p7m"),
            body: out.add(file)?,
        };
    }
    let body = out
        .take_last(entity.body)
        .ok_or_else(|| As2Error::Io("the message body is not the last spool file".into()))?;
    let headers = http_headers(profile, &entity.fields, now_unix, message_id)?;
    Ok(OutgoingMessage {
        message_id: headers.0,
        headers: headers.1,
        body: spool
            .seal(body)
            .map_err(stream::io_error("finish a spool file"))?,
        mic,
        mic_alternatives: alternatives,
    })
}

/// Writes an attachment's bytes, in canonical form when `canonical` says so of its media
/// type (text, RFC 5751 §3.1.1), else as they are.
fn write_attachment(
    a: &mut AttachmentSource<'_>,
    canonical: impl Fn(&str) -> bool,
    out: &mut impl Write,
) -> Result<()> {
    let media = a.content_type.split(';').next().unwrap_or("").trim();
    if canonical(media) {
        stream::canonicalize_into(&mut a.data, out).map_err(read_error)
    } else {
        stream::copy_all(&mut a.data, out)
            .map(drop)
            .map_err(read_error)
    }
}

fn read_error(e: As2Error) -> As2Error {
    match e {
        As2Error::Io(m) => As2Error::Io(format!("read a file to send: {m}")),
        e => e,
    }
}
