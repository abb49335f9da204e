//! CMS over streams, for messages of any size in bounded memory: OpenSSL's CMS reads a
//! whole structure into memory (`d2i_CMS_bio`), so the large parts are done here.
//!
//! * EnvelopedData / AuthEnvelopedData (RFC 5652 §6, RFC 5083): the small parts (recipient
//!   infos, algorithm) are read with a bound, the content-encryption key is decrypted by
//!   OpenSSL (RSA PKCS#1 v1.5 or RSAES-OAEP key transport), and the content is decrypted
//!   over OpenSSL's EVP as its octets stream by (primitive, or constructed segments with
//!   definite or indefinite lengths, as Java peers send).
//! * CompressedData (RFC 3274): inflated as it streams, with a bound on the output.
//! * SignedData: a detached signature is verified by OpenSSL's `CMS_verify`, which reads the
//!   content through a BIO over a reader (OpenSSL computes the digest and compares it with
//!   the signed messageDigest attribute); the content of an encapsulating SignedData is
//!   streamed out first and the rest verified the same way.
//!
//! Every small element has a size bound, nesting has a depth bound, and a truncated or
//! malformed structure is an error, never a panic.

use std::io::{Read, Write};
use std::ptr;

use foreign_types::ForeignType;
use openssl::cms::CmsContentInfo;
use openssl::stack::Stack;
use openssl::symm::{Cipher, Crypter, Mode};
use openssl::x509::X509;
use openssl_sys as ffi;

use super::algorithms::{DigestAlgorithm, EncryptionAlgorithm};
use super::certs::{check_validity, subject_of, KeyPair, ValidityPolicy};
use super::cms::{
    SignatureInfo, OID_AUTH_ENVELOPED_DATA, OID_COMPRESSED_DATA, OID_ENVELOPED_DATA,
    OID_SIGNED_DATA, OID_ZLIB,
};
use super::der;
use super::error::{As2Error, Result};
use super::stream::{read_some, CHUNK};

/// Largest small element read whole (recipient infos, certificates, signer infos).
const MAX_SMALL_ELEMENT: usize = 4 << 20;

/// Deepest nesting of constructed segments of an OCTET STRING, or of a small element.
const MAX_DEPTH: usize = 32;

const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_RSAES_OAEP: &str = "1.2.840.113549.1.1.7";
const OID_MGF1: &str = "1.2.840.113549.1.1.8";

fn bad(msg: impl std::fmt::Display) -> As2Error {
    As2Error::MalformedMime(format!("bad ASN.1: {msg}"))
}

/// The identifier and length of one BER element.
#[derive(Debug, Clone)]
struct Header {
    tag: u8,
    /// `None`: indefinite length.
    len: Option<u64>,
    /// The identifier and length octets as read.
    raw: Vec<u8>,
    /// Offset of the first content byte.
    content_start: u64,
}

impl Header {
    fn constructed(&self) -> bool {
        self.tag & 0x20 != 0
    }

    fn is_end_of_contents(&self) -> bool {
        self.tag == 0 && self.len == Some(0)
    }

    /// Offset just past the content (definite length only).
    fn end(&self) -> Option<u64> {
        self.len.map(|l| self.content_start.saturating_add(l))
    }
}

/// A BER reader over a stream, with one element of look-ahead.
struct Ber<R> {
    inner: R,
    pos: u64,
    peeked: Option<(u64, Header)>,
}

impl<R: Read> Ber<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            peeked: None,
        }
    }

    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("truncated")
            } else {
                super::stream::read_error(e)
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Where the next element starts.
    fn position(&self) -> u64 {
        self.peeked.as_ref().map_or(self.pos, |(at, _)| *at)
    }

    fn peek(&mut self) -> Result<&Header> {
        if self.peeked.is_none() {
            let at = self.pos;
            let h = self.read_header()?;
            self.peeked = Some((at, h));
        }
        match &self.peeked {
            Some((_, h)) => Ok(h),
            None => Err(bad("no element")),
        }
    }

    fn header(&mut self) -> Result<Header> {
        match self.peeked.take() {
            Some((_, h)) => Ok(h),
            None => self.read_header(),
        }
    }

    fn read_header(&mut self) -> Result<Header> {
        let tag = self.byte()?;
        let mut raw = vec![tag];
        if tag & 0x1f == 0x1f {
            // High tag numbers do not occur in CMS; read them to stay in step, bounded.
            for _ in 0..4 {
                let b = self.byte()?;
                raw.push(b);
                if b & 0x80 == 0 {
                    break;
                }
            }
            if raw.last().is_some_and(|b| b & 0x80 != 0) {
                return Err(bad("tag number too large"));
            }
        }
        let l0 = self.byte()?;
        raw.push(l0);
        let len = if l0 == 0x80 {
            if tag & 0x20 == 0 {
                return Err(bad("indefinite length on primitive"));
            }
            None
        } else if l0 & 0x80 == 0 {
            Some(u64::from(l0))
        } else {
            let n = usize::from(l0 & 0x7f);
            if n > 8 {
                return Err(bad("length too long"));
            }
            let mut len = 0u64;
            for _ in 0..n {
                let b = self.byte()?;
                raw.push(b);
                len = len.checked_mul(256).ok_or_else(|| bad("length overflow"))? | u64::from(b);
            }
            Some(len)
        };
        Ok(Header {
            tag,
            len,
            raw,
            content_start: self.pos,
        })
    }

    /// Reads the rest of the element `h` (at most `max` bytes in all) and returns the
    /// whole element as sent.
    fn rest(&mut self, h: &Header, max: usize, depth: usize) -> Result<Vec<u8>> {
        if depth > MAX_DEPTH {
            return Err(bad("nesting too deep"));
        }
        let mut out = h.raw.clone();
        match h.len {
            Some(len) => {
                let len = usize::try_from(len).map_err(|_| bad("element too large"))?;
                if len > max.saturating_sub(out.len()) {
                    return Err(bad(format!(
                        "an element of {len} bytes, more than the limit of {max}"
                    )));
                }
                let start = out.len();
                out.resize(start + len, 0);
                self.exact(&mut out[start..])?;
            }
            None => loop {
                let child = self.header()?;
                if child.is_end_of_contents() {
                    out.extend_from_slice(&child.raw);
                    break;
                }
                let left = max.saturating_sub(out.len());
                let bytes = self.rest(&child, left, depth + 1)?;
                out.extend_from_slice(&bytes);
            },
        }
        Ok(out)
    }

    /// The next element whole, if its tag is `tag`.
    fn element(&mut self, tag: u8, max: usize) -> Result<Vec<u8>> {
        let h = self.header()?;
        if h.tag != tag {
            return Err(bad(format!(
                "expected tag {tag:#04x}, found {:#04x}",
                h.tag
            )));
        }
        self.rest(&h, max, 0)
    }

    /// Opens a constructed element with tag `tag`.
    fn open(&mut self, tag: u8) -> Result<Header> {
        let h = self.header()?;
        if h.tag != tag {
            return Err(bad(format!(
                "expected tag {tag:#04x}, found {:#04x}",
                h.tag
            )));
        }
        Ok(h)
    }

    /// Whether the constructed element `h` has no more children (consuming its
    /// end-of-contents when it has an indefinite length).
    fn at_end(&mut self, h: &Header) -> Result<bool> {
        match h.end() {
            Some(end) => Ok(self.position() >= end),
            None => {
                if self.peek()?.is_end_of_contents() {
                    self.header()?;
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// Skips what is left of the constructed element `h` (small elements only).
    fn close(&mut self, h: &Header) -> Result<()> {
        while !self.at_end(h)? {
            let child = self.header()?;
            self.rest(&child, MAX_SMALL_ELEMENT, 1)?;
        }
        if let Some(end) = h.end() {
            if self.position() != end {
                return Err(bad("an element overruns its container"));
            }
        }
        Ok(())
    }

    /// Streams the content octets of the OCTET STRING `h` (tag `0x04`/`0x24`, or an
    /// implicit tag of either form) into `sink`.
    fn octets(
        &mut self,
        h: &Header,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(bad("nesting too deep"));
        }
        if !h.constructed() {
            let mut left = h.len.ok_or_else(|| bad("indefinite primitive"))?;
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                self.exact(&mut buf[..want])?;
                sink(&buf[..want])?;
                left -= want as u64;
            }
            return Ok(());
        }
        while !self.at_end(h)? {
            let seg = self.header()?;
            if seg.tag & 0x1f != 0x04 || seg.tag & 0xc0 != 0 {
                return Err(bad("a segment of an OCTET STRING is not an OCTET STRING"));
            }
            self.octets(&seg, sink, depth + 1)?;
        }
        if let Some(end) = h.end() {
            if self.position() != end {
                return Err(bad("an OCTET STRING segment overruns its string"));
            }
        }
        Ok(())
    }
}

fn oid_of(element: &[u8]) -> Result<String> {
    let (t, _) = der::read_tlv(element)?;
    if t.tag != 0x06 {
        return Err(bad("expected an OID"));
    }
    der::oid_to_string(t.content)
}

/// The first OID of an AlgorithmIdentifier and its parameters (raw element), if any.
fn algorithm(element: &[u8]) -> Result<(String, Option<Vec<u8>>)> {
    let (t, _) = der::read_tlv(element)?;
    let kids = der::children(t.content)?;
    let oid = kids
        .first()
        .filter(|k| k.tag == 0x06)
        .ok_or_else(|| bad("algorithm without OID"))?;
    Ok((
        der::oid_to_string(oid.content)?,
        kids.get(1).map(|p| p.raw.to_vec()),
    ))
}

/// An opened ContentInfo: its content type and the reader positioned at its content.
pub struct ContentInfoReader<R> {
    ber: Ber<R>,
    outer: Header,
    explicit: Header,
    /// The content type (dotted OID).
    pub content_type: String,
}

/// Reads the start of a ContentInfo (RFC 5652 §3) from `reader`.
pub fn open_content_info<R: Read>(reader: R) -> Result<ContentInfoReader<R>> {
    let mut ber = Ber::new(reader);
    let outer = ber.open(0x30)?;
    let oid = ber.element(0x06, 256)?;
    let content_type = oid_of(&oid)?;
    let explicit = ber.open(0xa0)?;
    Ok(ContentInfoReader {
        ber,
        outer,
        explicit,
        content_type,
    })
}

impl<R: Read> ContentInfoReader<R> {
    fn finish(mut self) -> Result<()> {
        let (explicit, outer) = (self.explicit.clone(), self.outer.clone());
        self.ber.close(&explicit)?;
        self.ber.close(&outer)
    }

    /// Decrypts an EnvelopedData or AuthEnvelopedData into `out` with the first of `keys`
    /// whose certificate is a recipient; returns the cipher and the index of the key used.
    /// Every failure after the structure was read (no key, wrong key, bad padding, bad
    /// authentication tag) is the same error, so that none of them tells a sender more
    /// than the others (RFC 3218 §2.3).
    pub fn decrypt_into(
        self,
        keys: &[KeyPair],
        out: &mut dyn Write,
    ) -> Result<(Option<EncryptionAlgorithm>, usize)> {
        let fail = |m: String| As2Error::DecryptionFailed(m);
        let authenticated = match self.content_type.as_str() {
            OID_ENVELOPED_DATA => false,
            OID_AUTH_ENVELOPED_DATA => true,
            other => return Err(fail(format!("expected enveloped data, found {other}"))),
        };
        if keys.is_empty() {
            return Err(fail("no station key configured".into()));
        }
        self.decrypt_inner(keys, out, authenticated)
            .map_err(|e| match e {
                As2Error::DecryptionFailed(m) => As2Error::DecryptionFailed(m),
                As2Error::Io(m) => As2Error::Io(m),
                other => As2Error::DecryptionFailed(format!("not a CMS envelope: {other}")),
            })
    }

    fn decrypt_inner(
        mut self,
        keys: &[KeyPair],
        out: &mut dyn Write,
        authenticated: bool,
    ) -> Result<(Option<EncryptionAlgorithm>, usize)> {
        let ber = &mut self.ber;
        let env = ber.open(0x30)?;
        ber.element(0x02, 16)?;
        if ber.peek()?.tag == 0xa0 {
            let h = ber.header()?;
            ber.rest(&h, MAX_SMALL_ELEMENT, 0)?;
        }
        let recipients = ber.element(0x31, MAX_SMALL_ELEMENT)?;
        let eci = ber.open(0x30)?;
        ber.element(0x06, 256)?;
        let alg_element = ber.element(0x30, 4096)?;
        let (alg_oid, params) = algorithm(&alg_element)?;
        let alg = EncryptionAlgorithm::from_oid(&alg_oid);
        let cipher = match alg {
            Some(a) if a.is_gcm() == authenticated => a.cipher(),
            _ => {
                return Err(As2Error::DecryptionFailed(format!(
                    "the content is encrypted with {alg_oid}, a cipher this gateway does not \
                     decrypt (AES-CBC, AES-GCM and 3DES are supported)"
                )))
            }
        };
        let (iv, tag_len) = cipher_parameters(params.as_deref(), authenticated)?;
        let (key, key_index) = content_key(&recipients, keys, cipher)?;
        let content = ber.header()?;
        if content.tag & 0xdf != 0x80 {
            return Err(bad("encrypted content absent"));
        }
        let mut crypter = Crypter::new(cipher, Mode::Decrypt, &key, Some(&iv))
            .map_err(|e| As2Error::Crypto(format!("cipher: {e}")))?;
        crypter.pad(!authenticated);
        let mut plain = vec![0u8; CHUNK + cipher.block_size() + 16];
        let opaque = || {
            As2Error::DecryptionFailed(
                "no configured key opens the envelope (wrong key, or corrupt content)".into(),
            )
        };
        ber.octets(
            &content,
            &mut |c: &[u8]| {
                for piece in c.chunks(CHUNK) {
                    let n = crypter.update(piece, &mut plain).map_err(|_| opaque())?;
                    out.write_all(&plain[..n])
                        .map_err(super::stream::io_error("write decrypted content"))?;
                }
                Ok(())
            },
            0,
        )?;
        ber.close(&eci)?;
        if authenticated {
            if ber.peek()?.tag == 0xa1 {
                return Err(As2Error::UnsupportedAlgorithm(
                    "AuthEnvelopedData with authenticated attributes".into(),
                ));
            }
            let mac = ber.element(0x04, 64)?;
            let (mac, _) = der::read_tlv(&mac)?;
            if mac.content.len() != tag_len {
                return Err(opaque());
            }
            crypter.set_tag(mac.content).map_err(|_| opaque())?;
        }
        let n = crypter.finalize(&mut plain).map_err(|_| opaque())?;
        out.write_all(&plain[..n])
            .map_err(super::stream::io_error("write decrypted content"))?;
        ber.close(&env)?;
        self.finish()?;
        Ok((alg, key_index))
    }

    /// Inflates a CompressedData (zlib) into `out`; more than `max_len` bytes of output is
    /// an error (compression bombs). Returns the bytes written.
    pub fn decompress_into(self, out: &mut dyn Write, max_len: u64) -> Result<u64> {
        let fail = |m: String| As2Error::DecompressionFailed(m);
        if self.content_type != OID_COMPRESSED_DATA {
            return Err(fail(format!(
                "not compressed-data but {}",
                self.content_type
            )));
        }
        self.decompress_inner(out, max_len).map_err(|e| match e {
            As2Error::DecompressionFailed(m) => As2Error::DecompressionFailed(m),
            As2Error::Io(m) => As2Error::Io(m),
            other => As2Error::DecompressionFailed(other.to_string()),
        })
    }

    fn decompress_inner(mut self, out: &mut dyn Write, max_len: u64) -> Result<u64> {
        use flate2::{Decompress, FlushDecompress, Status};
        let fail = |m: String| As2Error::DecompressionFailed(m);
        let ber = &mut self.ber;
        let cd = ber.open(0x30)?;
        ber.element(0x02, 16)?;
        let (alg_oid, _) = algorithm(&ber.element(0x30, 4096)?)?;
        if alg_oid != OID_ZLIB {
            return Err(fail(format!("unsupported compression algorithm {alg_oid}")));
        }
        let encap = ber.open(0x30)?;
        ber.element(0x06, 256)?;
        if ber.at_end(&encap)? {
            return Err(fail("compressed content absent".into()));
        }
        let explicit = ber.open(0xa0)?;
        let octets = ber.header()?;
        if octets.tag & 0xdf != 0x04 {
            return Err(fail("compressed content is not an OCTET STRING".into()));
        }
        let mut z = Decompress::new(true);
        let mut inflated = vec![0u8; CHUNK];
        let mut total = 0u64;
        let mut ended = false;
        let too_big = || {
            fail(format!(
                "the decompressed content is larger than the limit of {max_len} bytes for \
                 this message (a compression bomb, or a message to send in smaller pieces)"
            ))
        };
        ber.octets(
            &octets,
            &mut |mut input: &[u8]| {
                while !input.is_empty() && !ended {
                    let (in0, out0) = (z.total_in(), z.total_out());
                    let status = z
                        .decompress(input, &mut inflated, FlushDecompress::None)
                        .map_err(|e| fail(format!("zlib: {e}")))?;
                    let used = (z.total_in() - in0) as usize;
                    let made = (z.total_out() - out0) as usize;
                    input = input.get(used..).unwrap_or(&[]);
                    total += made as u64;
                    if total > max_len {
                        return Err(too_big());
                    }
                    out.write_all(&inflated[..made])
                        .map_err(super::stream::io_error("write decompressed content"))?;
                    match status {
                        Status::StreamEnd => ended = true,
                        Status::Ok | Status::BufError if used == 0 && made == 0 => {
                            return Err(fail("zlib: the stream makes no progress".into()))
                        }
                        _ => {}
                    }
                }
                Ok(())
            },
            0,
        )?;
        // The input is all in; what zlib still holds comes out now.
        while !ended {
            let out0 = z.total_out();
            let status = z
                .decompress(&[], &mut inflated, FlushDecompress::Finish)
                .map_err(|e| fail(format!("zlib: {e}")))?;
            let made = (z.total_out() - out0) as usize;
            total += made as u64;
            if total > max_len {
                return Err(too_big());
            }
            out.write_all(&inflated[..made])
                .map_err(super::stream::io_error("write decompressed content"))?;
            match status {
                Status::StreamEnd => ended = true,
                _ if made == 0 => {
                    return Err(fail("zlib: the compressed data is truncated".into()))
                }
                _ => {}
            }
        }
        ber.close(&explicit)?;
        ber.close(&encap)?;
        ber.close(&cd)?;
        self.finish()?;
        Ok(total)
    }

    /// Streams the content of an encapsulating SignedData into `out` and returns the same
    /// SignedData without it (detached, DER of a ContentInfo), to verify over what was
    /// written with [`verify_detached_reader`].
    pub fn detach_signed_content(mut self, out: &mut dyn Write) -> Result<Vec<u8>> {
        if self.content_type != OID_SIGNED_DATA {
            return Err(As2Error::AuthenticationFailed(format!(
                "expected signed data, found {}",
                self.content_type
            )));
        }
        let ber = &mut self.ber;
        let sd = ber.open(0x30)?;
        let mut detached = ber.element(0x02, 16)?;
        detached.extend(ber.element(0x31, 64 * 1024)?);
        let encap = ber.open(0x30)?;
        let econtent_type = ber.element(0x06, 256)?;
        if !ber.at_end(&encap)? {
            let explicit = ber.open(0xa0)?;
            let octets = ber.header()?;
            if octets.tag & 0xdf != 0x04 {
                return Err(bad("signed content is not an OCTET STRING"));
            }
            ber.octets(
                &octets,
                &mut |c: &[u8]| {
                    out.write_all(c)
                        .map_err(super::stream::io_error("write signed content"))
                },
                0,
            )?;
            ber.close(&explicit)?;
            ber.close(&encap)?;
        }
        detached.extend(der::encode_tlv(0x30, &econtent_type));
        let mut left = MAX_SMALL_ELEMENT;
        while !ber.at_end(&sd)? {
            let h = ber.header()?;
            let e = ber.rest(&h, left, 0)?;
            left = left.saturating_sub(e.len());
            detached.extend(e);
        }
        self.finish()?;
        let mut ci = der::encode_oid(OID_SIGNED_DATA);
        ci.extend(der::encode_tlv(0xa0, &der::encode_tlv(0x30, &detached)));
        Ok(der::encode_tlv(0x30, &ci))
    }
}

/// The IV and (for GCM) the tag length from the algorithm's parameters.
fn cipher_parameters(params: Option<&[u8]>, authenticated: bool) -> Result<(Vec<u8>, usize)> {
    let params = params.ok_or_else(|| bad("cipher without parameters"))?;
    let (t, _) = der::read_tlv(params)?;
    if !authenticated {
        if t.tag != 0x04 {
            return Err(bad("CBC parameters are not an IV"));
        }
        return Ok((t.content.to_vec(), 0));
    }
    // GCMParameters ::= SEQUENCE { aes-nonce OCTET STRING, aes-ICVlen INTEGER DEFAULT 12 }
    let kids = der::children(t.content)?;
    let nonce = kids
        .first()
        .filter(|k| k.tag == 0x04)
        .ok_or_else(|| bad("GCM parameters without nonce"))?;
    let tag_len = match kids.get(1) {
        Some(k) if k.tag == 0x02 && k.content.len() == 1 => usize::from(k.content[0]),
        Some(_) => return Err(bad("GCM tag length")),
        None => 12,
    };
    if !(12..=16).contains(&tag_len) || nonce.content.is_empty() || nonce.content.len() > 64 {
        return Err(bad("GCM parameters out of range"));
    }
    Ok((nonce.content.to_vec(), tag_len))
}

/// The content-encryption key: the first key transport recipient info addressed to one of
/// `keys`, decrypted with that key. When no recipient info opens, a random key is returned
/// instead, so that the content then fails to decrypt like any corrupt content
/// (the countermeasure OpenSSL's `CMS_decrypt` takes against padding oracles).
fn content_key(recipients: &[u8], keys: &[KeyPair], cipher: Cipher) -> Result<(Vec<u8>, usize)> {
    let (set, _) = der::read_tlv(recipients)?;
    let infos = der::children(set.content)?;
    for (index, kp) in keys.iter().enumerate() {
        for ri in infos.iter().filter(|r| r.tag == 0x30) {
            let Ok(fields) = der::children(ri.content) else {
                continue;
            };
            // KeyTransRecipientInfo ::= SEQUENCE { version, rid, keyEncryptionAlgorithm,
            //   encryptedKey OCTET STRING }
            let [_, rid, alg, enc] = fields.as_slice() else {
                continue;
            };
            if !recipient_is(rid, &kp.cert) || enc.tag != 0x04 {
                continue;
            }
            if let Ok(key) = rsa_decrypt_key(alg.raw, enc.content, kp) {
                if key.len() == cipher.key_len() {
                    return Ok((key, index));
                }
            }
        }
    }
    let mut random = vec![0u8; cipher.key_len()];
    openssl::rand::rand_bytes(&mut random).map_err(|e| As2Error::Crypto(format!("rand: {e}")))?;
    Ok((random, 0))
}

/// Whether a RecipientIdentifier names `cert` (issuer and serial number, or subject key
/// identifier).
fn recipient_is(rid: &der::Tlv<'_>, cert: &X509) -> bool {
    match rid.tag {
        0x30 => {
            let Ok(kids) = der::children(rid.content) else {
                return false;
            };
            let (Some(issuer), Some(serial)) = (kids.first(), kids.get(1)) else {
                return false;
            };
            let ours_issuer = cert.issuer_name().to_der().unwrap_or_default();
            let ours_serial = cert
                .serial_number()
                .to_bn()
                .and_then(|b| b.to_vec_padded(b.num_bytes()))
                .unwrap_or_default();
            let theirs: &[u8] = serial.content;
            let theirs = match theirs.iter().position(|&b| b != 0) {
                Some(p) => &theirs[p..],
                None => &theirs[theirs.len().saturating_sub(1)..],
            };
            issuer.raw == ours_issuer.as_slice() && theirs == ours_serial.as_slice()
        }
        0x80 => cert
            .subject_key_id()
            .is_some_and(|ski| ski.as_slice() == rid.content),
        _ => false,
    }
}

/// RSA key transport: PKCS#1 v1.5, or RSAES-OAEP with the hash its parameters name.
fn rsa_decrypt_key(alg: &[u8], encrypted: &[u8], kp: &KeyPair) -> Result<Vec<u8>> {
    use openssl::pkey_ctx::PkeyCtx;
    use openssl::rsa::Padding;
    let err = |e: openssl::error::ErrorStack| As2Error::DecryptionFailed(e.to_string());
    let (oid, params) = algorithm(alg)?;
    let mut ctx = PkeyCtx::new(&kp.key).map_err(err)?;
    ctx.decrypt_init().map_err(err)?;
    match oid.as_str() {
        OID_RSA_ENCRYPTION => ctx.set_rsa_padding(Padding::PKCS1).map_err(err)?,
        OID_RSAES_OAEP => {
            let (hash, mgf_hash) = oaep_hashes(params.as_deref())?;
            ctx.set_rsa_padding(Padding::PKCS1_OAEP).map_err(err)?;
            ctx.set_rsa_oaep_md(hash.md()).map_err(err)?;
            ctx.set_rsa_mgf1_md(mgf_hash.md()).map_err(err)?;
        }
        other => {
            return Err(As2Error::DecryptionFailed(format!(
                "key transport {other} is not supported"
            )))
        }
    }
    let mut key = Vec::new();
    ctx.decrypt_to_vec(encrypted, &mut key).map_err(err)?;
    Ok(key)
}

/// The hash and MGF1 hash of RSAES-OAEP-params (RFC 4055 §4.1; SHA-1 when absent).
fn oaep_hashes(params: Option<&[u8]>) -> Result<(DigestAlgorithm, DigestAlgorithm)> {
    let mut hash = DigestAlgorithm::Sha1;
    let mut mgf = DigestAlgorithm::Sha1;
    let Some(params) = params else {
        return Ok((hash, mgf));
    };
    let (t, _) = der::read_tlv(params)?;
    if t.tag == 0x05 {
        return Ok((hash, mgf));
    }
    for field in der::children(t.content)? {
        let inner = der::children(field.content)?;
        let Some(first) = inner.first() else { continue };
        match field.tag {
            0xa0 => {
                let (oid, _) = algorithm(first.raw)?;
                hash = DigestAlgorithm::from_oid(&oid)
                    .ok_or_else(|| As2Error::UnsupportedAlgorithm(format!("OAEP hash {oid}")))?;
            }
            0xa1 => {
                let (oid, p) = algorithm(first.raw)?;
                if oid != OID_MGF1 {
                    return Err(As2Error::UnsupportedAlgorithm(format!("OAEP mask {oid}")));
                }
                let (h, _) = algorithm(&p.ok_or_else(|| bad("MGF1 without hash"))?)?;
                mgf = DigestAlgorithm::from_oid(&h)
                    .ok_or_else(|| As2Error::UnsupportedAlgorithm(format!("MGF1 hash {h}")))?;
            }
            _ => return Err(As2Error::UnsupportedAlgorithm("OAEP with a label".into())),
        }
    }
    Ok((hash, mgf))
}

#[allow(non_snake_case)]
extern "C" {
    fn BIO_meth_set_read(
        biom: *mut ffi::BIO_METHOD,
        read: unsafe extern "C" fn(
            *mut ffi::BIO,
            *mut std::os::raw::c_char,
            std::os::raw::c_int,
        ) -> std::os::raw::c_int,
    ) -> std::os::raw::c_int;
    fn BIO_meth_set_ctrl(
        biom: *mut ffi::BIO_METHOD,
        ctrl: unsafe extern "C" fn(
            *mut ffi::BIO,
            std::os::raw::c_int,
            std::os::raw::c_long,
            *mut std::ffi::c_void,
        ) -> std::os::raw::c_long,
    ) -> std::os::raw::c_int;
}

/// What a reader BIO reads from: the reader, and the error it gave if any.
struct BioSource<'a> {
    reader: &'a mut dyn Read,
    error: Option<As2Error>,
}

unsafe extern "C" fn bio_read(
    bio: *mut ffi::BIO,
    buf: *mut std::os::raw::c_char,
    len: std::os::raw::c_int,
) -> std::os::raw::c_int {
    let source = ffi::BIO_get_data(bio) as *mut BioSource<'_>;
    if source.is_null() || buf.is_null() || len <= 0 {
        return 0;
    }
    // SAFETY: the data pointer is the BioSource that outlives the BIO (set in
    // `with_reader_bio`), and OpenSSL gives a buffer of `len` bytes.
    let source = &mut *source;
    let out = std::slice::from_raw_parts_mut(buf as *mut u8, len as usize);
    match read_some(&mut source.reader, out) {
        Ok(n) => n as std::os::raw::c_int,
        Err(e) => {
            source.error = Some(e);
            -1
        }
    }
}

unsafe extern "C" fn bio_ctrl(
    _bio: *mut ffi::BIO,
    cmd: std::os::raw::c_int,
    _num: std::os::raw::c_long,
    _ptr: *mut std::ffi::c_void,
) -> std::os::raw::c_long {
    // BIO_CTRL_FLUSH: nothing buffered. Everything else is not supported.
    if cmd == 11 {
        1
    } else {
        0
    }
}

/// Runs `f` with a read-only BIO over `reader`; gives back what `f` returned and the
/// reader's error, if it had one.
fn with_reader_bio<T>(
    reader: &mut dyn Read,
    f: impl FnOnce(*mut ffi::BIO) -> T,
) -> Result<(T, Option<As2Error>)> {
    let mut source = BioSource {
        reader,
        error: None,
    };
    let data = &mut source as *mut BioSource<'_> as *mut std::ffi::c_void;
    // SAFETY: `source` outlives the BIO (freed inside `with_bio`); `bio_read` uses the data
    // pointer as a `BioSource`.
    let out = unsafe { with_bio(|m| BIO_meth_set_read(m, bio_read) == 1, data, f) }?;
    Ok((out, source.error))
}

/// Runs `f` with a BIO whose method `set` completes (its read or write callback) and whose
/// data is `data`; frees both after.
///
/// # Safety
/// `data` must stay valid until this returns and be what the callbacks `set` installs
/// expect.
unsafe fn with_bio<T>(
    set: impl FnOnce(*mut ffi::BIO_METHOD) -> bool,
    data: *mut std::ffi::c_void,
    f: impl FnOnce(*mut ffi::BIO) -> T,
) -> Result<T> {
    let name = c"as2box stream";
    let method = ffi::BIO_meth_new(0x0400 | 0x80, name.as_ptr());
    if method.is_null() {
        return Err(As2Error::Crypto("BIO_meth_new".into()));
    }
    if !set(method) || BIO_meth_set_ctrl(method, bio_ctrl) != 1 {
        ffi::BIO_meth_free(method);
        return Err(As2Error::Crypto("BIO_meth_set".into()));
    }
    let bio = ffi::BIO_new(method);
    if bio.is_null() {
        ffi::BIO_meth_free(method);
        return Err(As2Error::Crypto("BIO_new".into()));
    }
    ffi::BIO_set_data(bio, data);
    ffi::BIO_set_init(bio, 1);
    let out = f(bio);
    ffi::BIO_free_all(bio);
    ffi::BIO_meth_free(method);
    Ok(out)
}

/// Content that can be read from its start again (once per partner certificate tried).
pub trait Reopen {
    /// A reader from the start of the content.
    fn reopen(&mut self) -> Result<Box<dyn Read + '_>>;
}

impl Reopen for &[u8] {
    fn reopen(&mut self) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(*self))
    }
}

/// Verifies a detached signature over `content`, with the partner's configured certificate(s) only
/// (certificates inside the message are not trusted: `CMS_NOINTERN`; the partner
/// certificate is pinned, so no chain building). OpenSSL reads the content through a BIO,
/// digests it and compares the digest with the signed one. Content mismatch →
/// [`As2Error::IntegrityCheckFailed`]; any other failure →
/// [`As2Error::AuthenticationFailed`]; a failing reader → its own error.
pub fn verify_detached_reader(
    signature_der: &[u8],
    content: &mut dyn Reopen,
    partner_certs: &[X509],
    policy: ValidityPolicy,
) -> Result<SignatureInfo> {
    let digest = match super::cms::inspect(signature_der) {
        Ok(super::cms::CmsKind::Signed { digests }) => digests.first().copied(),
        Ok(_) => {
            return Err(As2Error::AuthenticationFailed(
                "signature part is not CMS SignedData".into(),
            ))
        }
        Err(e) => {
            return Err(As2Error::AuthenticationFailed(format!(
                "signature part is not CMS: {e}"
            )))
        }
    };
    if partner_certs.is_empty() {
        return Err(As2Error::AuthenticationFailed(
            "no partner certificate configured to verify with".into(),
        ));
    }
    let mut last_err = None;
    for cert in partner_certs {
        let cms = CmsContentInfo::from_der(signature_der)
            .map_err(|e| As2Error::AuthenticationFailed(format!("signature is not CMS: {e}")))?;
        let mut stack = Stack::<X509>::new().map_err(|e| As2Error::Crypto(e.to_string()))?;
        stack
            .push(cert.clone())
            .map_err(|e| As2Error::Crypto(e.to_string()))?;
        let flags = ffi::CMS_BINARY | ffi::CMS_NOINTERN | ffi::CMS_NO_SIGNER_CERT_VERIFY;
        let mut reader = content.reopen()?;
        // SAFETY: `cms` and `stack` are live wrappers; the BIO is valid inside the closure;
        // `out` NULL makes OpenSSL discard the content after digesting it.
        let (ok, read_error) = with_reader_bio(&mut *reader, |bio| unsafe {
            ffi::CMS_verify(
                cms.as_ptr(),
                stack.as_ptr(),
                ptr::null_mut(),
                bio,
                ptr::null_mut(),
                flags,
            )
        })?;
        drop(reader);
        if let Some(e) = read_error {
            // Clear what OpenSSL queued about the failed read.
            let _ = openssl::error::ErrorStack::get();
            return Err(e);
        }
        if ok == 1 {
            let valid = check_validity(cert, policy)?;
            return Ok(SignatureInfo {
                digest,
                signer: subject_of(cert),
                certificate_valid: valid,
            });
        }
        let text = openssl::error::ErrorStack::get().to_string();
        let err = if text.contains("content verify error")
            || text.contains("digest")
            || text.contains("CONTENT_VERIFY")
        {
            As2Error::IntegrityCheckFailed(text)
        } else if text.contains("signer certificate not found") {
            As2Error::AuthenticationFailed(format!(
                "not signed by the partner certificate {}",
                subject_of(cert)
            ))
        } else {
            As2Error::AuthenticationFailed(text)
        };
        // Prefer the most specific error across candidate certificates.
        last_err = match (last_err, err) {
            (Some(As2Error::IntegrityCheckFailed(t)), _) => Some(As2Error::IntegrityCheckFailed(t)),
            (_, e) => Some(e),
        };
    }
    Err(last_err.unwrap_or_else(|| As2Error::AuthenticationFailed("no certificate".into())))
}

unsafe extern "C" fn bio_write(
    bio: *mut ffi::BIO,
    buf: *const std::os::raw::c_char,
    len: std::os::raw::c_int,
) -> std::os::raw::c_int {
    let sink = ffi::BIO_get_data(bio) as *mut BioSink<'_>;
    if sink.is_null() || buf.is_null() || len < 0 {
        return -1;
    }
    // SAFETY: the data pointer is the BioSink that outlives the BIO (set in
    // `with_writer_bio`), and OpenSSL gives `len` bytes.
    let sink = &mut *sink;
    let data = std::slice::from_raw_parts(buf as *const u8, len as usize);
    match sink.writer.write_all(data) {
        Ok(()) => len,
        Err(e) => {
            sink.error = Some(As2Error::Io(format!("write a spool file: {e}")));
            -1
        }
    }
}

/// What a writer BIO writes to: the writer, and the error it gave if any.
struct BioSink<'a> {
    writer: &'a mut dyn Write,
    error: Option<As2Error>,
}

#[allow(non_snake_case)]
extern "C" {
    fn BIO_meth_set_write(
        biom: *mut ffi::BIO_METHOD,
        write: unsafe extern "C" fn(
            *mut ffi::BIO,
            *const std::os::raw::c_char,
            std::os::raw::c_int,
        ) -> std::os::raw::c_int,
    ) -> std::os::raw::c_int;
    fn i2d_CMS_bio_stream(
        out: *mut ffi::BIO,
        cms: *mut ffi::CMS_ContentInfo,
        input: *mut ffi::BIO,
        flags: std::os::raw::c_int,
    ) -> std::os::raw::c_int;
}

/// Runs `f` with a write-only BIO over `writer`; gives back what `f` returned and the
/// writer's error, if it had one.
fn with_writer_bio<T>(
    writer: &mut dyn Write,
    f: impl FnOnce(*mut ffi::BIO) -> T,
) -> Result<(T, Option<As2Error>)> {
    let mut sink = BioSink {
        writer,
        error: None,
    };
    let data = &mut sink as *mut BioSink<'_> as *mut std::ffi::c_void;
    // SAFETY: `sink` outlives the BIO (freed inside `with_bio`); `bio_write` uses the data
    // pointer as a `BioSink`.
    let out = unsafe { with_bio(|m| BIO_meth_set_write(m, bio_write) == 1, data, f) }?;
    Ok((out, sink.error))
}

/// Completes a CMS structure made with `CMS_PARTIAL` over the content `content` gives,
/// read through a BIO (OpenSSL digests it as it streams by), and returns its DER.
///
/// # Safety
/// `cms` must be a live structure made with `CMS_PARTIAL` and `flags`.
pub(super) unsafe fn finish_partial_reader(
    cms: &CmsContentInfo,
    content: &mut dyn Read,
    flags: std::os::raw::c_uint,
) -> Result<Vec<u8>> {
    #[allow(non_snake_case)]
    extern "C" {
        fn CMS_final(
            cms: *mut ffi::CMS_ContentInfo,
            data: *mut ffi::BIO,
            dcont: *mut ffi::BIO,
            flags: std::os::raw::c_uint,
        ) -> std::os::raw::c_int;
    }
    let (ok, read_error) = with_reader_bio(content, |bio| {
        CMS_final(cms.as_ptr(), bio, ptr::null_mut(), flags)
    })?;
    if let Some(e) = read_error {
        let _ = openssl::error::ErrorStack::get();
        return Err(e);
    }
    if ok != 1 {
        return Err(As2Error::Crypto(format!(
            "CMS_final: {}",
            openssl::error::ErrorStack::get()
        )));
    }
    cms.to_der()
        .map_err(|e| As2Error::Crypto(format!("i2d CMS: {e}")))
}

/// Encrypts what `content` gives for `recipient` into `out` (BER, streaming: OpenSSL reads
/// the content through a BIO and writes the envelope as it goes, indefinite lengths).
/// RSA PKCS#1 v1.5 key transport, or RSAES-OAEP with `oaep`; AES-GCM gives
/// AuthEnvelopedData, the others EnvelopedData.
pub fn encrypt_stream(
    content: &mut dyn Read,
    out: &mut dyn Write,
    recipient: &X509,
    alg: EncryptionAlgorithm,
    oaep: bool,
) -> Result<()> {
    #[allow(non_snake_case)]
    extern "C" {
        fn CMS_add1_recipient_cert(
            cms: *mut ffi::CMS_ContentInfo,
            recip: *mut ffi::X509,
            flags: std::os::raw::c_uint,
        ) -> *mut std::ffi::c_void;
        fn CMS_RecipientInfo_get0_pkey_ctx(ri: *mut std::ffi::c_void) -> *mut ffi::EVP_PKEY_CTX;
    }
    let ossl =
        |what: &str| As2Error::Crypto(format!("{what}: {}", openssl::error::ErrorStack::get()));
    let flags = ffi::CMS_BINARY | ffi::CMS_PARTIAL | ffi::CMS_STREAM | ffi::CMS_KEY_PARAM;
    // SAFETY: the CMS object is wrapped at once (freed on every path); the recipient
    // certificate outlives the calls; the BIOs live inside the closures; the key context
    // belongs to the recipient info inside `cms`.
    unsafe {
        let raw = ffi::CMS_encrypt(
            ptr::null_mut(),
            ptr::null_mut(),
            alg.cipher().as_ptr(),
            flags,
        );
        if raw.is_null() {
            return Err(ossl("CMS_encrypt"));
        }
        let cms = CmsContentInfo::from_ptr(raw);
        let ri = CMS_add1_recipient_cert(cms.as_ptr(), recipient.as_ptr(), flags);
        if ri.is_null() {
            return Err(ossl("CMS_add1_recipient_cert"));
        }
        if oaep {
            let pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
            if pctx.is_null()
                || ffi::EVP_PKEY_CTX_set_rsa_padding(pctx, ffi::RSA_PKCS1_OAEP_PADDING) <= 0
            {
                return Err(ossl("RSA-OAEP padding"));
            }
        }
        let (result, write_error) = with_writer_bio(out, |out_bio| {
            with_reader_bio(content, |in_bio| {
                i2d_CMS_bio_stream(out_bio, cms.as_ptr(), in_bio, flags as std::os::raw::c_int)
            })
        })?;
        let (ok, read_error) = result?;
        if let Some(e) = read_error.or(write_error) {
            let _ = openssl::error::ErrorStack::get();
            return Err(e);
        }
        if ok != 1 {
            return Err(ossl("i2d_CMS_bio_stream"));
        }
        Ok(())
    }
}

/// Writes RFC 3274 CompressedData (zlib, definite lengths) of what `content` gives to
/// `out`, using `scratch` for the compressed stream (its length goes before it).
pub fn compress_stream<F: Read + Write + std::io::Seek>(
    content: &mut dyn Read,
    out: &mut dyn Write,
    mut scratch: F,
) -> Result<()> {
    use super::stream::{copy_all, io_error};
    let mut z = flate2::write::ZlibEncoder::new(&mut scratch, flate2::Compression::default());
    copy_all(content, &mut z)?;
    z.finish().map_err(io_error("compress"))?;
    let z_len = scratch
        .stream_position()
        .map_err(io_error("seek in a spool file"))?;
    scratch
        .seek(std::io::SeekFrom::Start(0))
        .map_err(io_error("seek in a spool file"))?;
    // ContentInfo { compressedData, [0] CompressedData { 0, zlib, { data, [0] OCTETS } } }
    let octets = der::header(0x04, z_len);
    let explicit = der::header(0xa0, octets.len() as u64 + z_len);
    let data_oid = der::encode_oid(super::cms::OID_DATA);
    let encap_len = data_oid.len() as u64 + explicit.len() as u64 + octets.len() as u64 + z_len;
    let encap = der::header(0x30, encap_len);
    let version = der::encode_tlv(0x02, &[0]);
    let alg = der::encode_tlv(0x30, &der::encode_oid(OID_ZLIB));
    let cd_len = (version.len() + alg.len() + encap.len()) as u64 + encap_len;
    let cd = der::header(0x30, cd_len);
    let ci_explicit = der::header(0xa0, cd.len() as u64 + cd_len);
    let type_oid = der::encode_oid(OID_COMPRESSED_DATA);
    let ci_len = (type_oid.len() + ci_explicit.len() + cd.len()) as u64 + cd_len;
    let mut head = der::header(0x30, ci_len);
    for part in [
        type_oid,
        ci_explicit,
        cd,
        version,
        alg,
        encap,
        data_oid,
        explicit,
        octets,
    ] {
        head.extend(part);
    }
    out.write_all(&head)
        .map_err(io_error("write a spool file"))?;
    copy_all(&mut (&mut scratch).take(z_len), out)?;
    Ok(())
}
