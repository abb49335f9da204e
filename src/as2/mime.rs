//! MIME entities: header/body split, multipart, transfer encodings,
//! canonicalization, attachment file names.
//!
//! * Entities and multipart bodies: RFC 2045 and RFC 2046 §5.1 (delimiters
//!   are `CRLF--boundary`; the CRLF before a delimiter belongs to it).
//! * Transfer encodings: RFC 2045 §6 (`base64`, `quoted-printable`, `7bit`,
//!   `8bit`, `binary`, or absent meaning `7bit`).
//! * Canonical text form (CRLF line ends) before signing: RFC 5751 §3.1.1;
//!   binary content is never touched (RFC 5751 §3.1.2, RFC 4130 §5.2).
//! * File names: RFC 2183 `Content-Disposition` plus RFC 2231 / RFC 2047.

use bytes::Bytes;

use super::encoding::{base64_decode, hex_lower, quoted_printable_decode};
use super::error::{As2Error, Result};
use super::headers::{decode_rfc2047, find_header_end, Headers, ParamValue};

/// Most bytes in the header block of one MIME entity (a body part, or a decrypted or
/// decompressed entity). Real header blocks are a few hundred bytes; the bound keeps a
/// hostile part from making us parse megabytes of header lines.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Most body parts in one multipart body. AS2 messages have one to a few (RFC 6362
/// multiple attachments); every part becomes a file with its own blob.
pub const MAX_PARTS: usize = 1000;

/// A MIME entity: its parsed header fields and the raw bytes it came from.
///
/// The bytes are shared (`Bytes`): an entity made from a part of another, or from a
/// decrypted or decompressed buffer handed over whole, copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Parsed header fields.
    pub headers: Headers,
    /// The entity exactly as received: header block, blank line, body.
    raw: Bytes,
    /// Offset of the body in `raw`.
    body_start: usize,
}

impl Entity {
    /// Parses an entity (header block, blank line, body). CRLF and bare LF
    /// are both accepted. Copies `raw`; [`Entity::parse_shared`] does not.
    pub fn parse(raw: &[u8]) -> Result<Self> {
        Self::parse_shared(Bytes::copy_from_slice(raw))
    }

    /// [`Entity::parse`] of bytes already owned (a decrypted or decompressed buffer, a
    /// part of a shared body): nothing is copied. A header block over
    /// [`MAX_HEADER_BYTES`] is an error.
    pub fn parse_shared(raw: Bytes) -> Result<Self> {
        let (hlen, body_start) = find_header_end(&raw);
        if hlen > MAX_HEADER_BYTES {
            return Err(As2Error::MalformedMime(format!(
                "a MIME header block is longer than the limit of {MAX_HEADER_BYTES} bytes \
                 (or the blank line after the header fields is missing)"
            )));
        }
        let headers = Headers::parse_block(raw.get(..hlen).unwrap_or(&[]))?;
        Ok(Self {
            headers,
            raw,
            body_start,
        })
    }

    /// An entity from separately transported headers (HTTP) and body; `raw`
    /// is then the body alone (`body_start == 0`). Copies `body`;
    /// [`Entity::from_parts_shared`] does not.
    pub fn from_parts(headers: Headers, body: &[u8]) -> Self {
        Self::from_parts_shared(headers, Bytes::copy_from_slice(body))
    }

    /// [`Entity::from_parts`] without a copy.
    pub fn from_parts_shared(headers: Headers, body: Bytes) -> Self {
        Self {
            headers,
            raw: body,
            body_start: 0,
        }
    }

    /// The entity's bytes: header block, blank line, body (only the body for
    /// [`Entity::from_parts`]).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The body bytes, still transfer-encoded.
    pub fn body(&self) -> &[u8] {
        self.raw.get(self.body_start..).unwrap_or(&[])
    }

    /// The body bytes, still transfer-encoded, sharing the entity's buffer.
    pub fn body_shared(&self) -> Bytes {
        self.raw.slice(self.body_start.min(self.raw.len())..)
    }

    /// The body parts of a multipart entity split at `boundary` (see
    /// [`split_multipart`]), each sharing this entity's buffer. At most
    /// [`MAX_PARTS`].
    pub fn parts(&self, boundary: &str) -> Result<Vec<Bytes>> {
        let body = self.body_shared();
        Ok(split_multipart_ranges(&body, boundary)?
            .into_iter()
            .map(|r| body.slice(r))
            .collect())
    }

    /// The `Content-Type` (RFC 2045 §5.2 default `text/plain`).
    pub fn content_type(&self) -> ParamValue {
        match self.headers.get("content-type") {
            Some(v) => ParamValue::parse(v),
            None => ParamValue::parse("text/plain"),
        }
    }

    /// The lower-cased media type without parameters.
    pub fn media_type(&self) -> String {
        self.content_type().value_lower()
    }

    /// The `Content-Transfer-Encoding`, lower-cased (absent = `7bit`).
    pub fn transfer_encoding(&self) -> String {
        self.headers
            .get("content-transfer-encoding")
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "7bit".into())
    }

    /// The body with the transfer encoding undone.
    pub fn decoded_body(&self) -> Result<Vec<u8>> {
        decode_transfer(self.body(), &self.transfer_encoding())
    }

    /// The body with the transfer encoding undone, without a copy when there is
    /// nothing to undo (`binary`, `7bit`, `8bit`).
    pub fn decoded_shared(&self) -> Result<Bytes> {
        match self.transfer_encoding().as_str() {
            "7bit" | "8bit" | "binary" | "" => Ok(self.body_shared()),
            other => decode_transfer(self.body(), other).map(Bytes::from),
        }
    }

    /// The decoded body as an owned buffer, consuming the entity: when the
    /// entity holds the only reference to its buffer and there is no transfer
    /// encoding, the buffer itself is returned (its header bytes moved out of
    /// the way), not a copy.
    pub fn into_decoded_body(self) -> Result<Vec<u8>> {
        let cte = self.transfer_encoding();
        match cte.as_str() {
            "7bit" | "8bit" | "binary" | "" => {
                let body = self.body_shared();
                drop(self);
                Ok(Vec::from(body))
            }
            other => decode_transfer(self.body(), other),
        }
    }

    /// The attachment file name: `Content-Disposition` `filename` (quoted,
    /// unquoted, RFC 2231 or RFC 2047 encoded), else `Content-Type` `name`.
    /// Path components are stripped so a name can never escape a directory.
    pub fn filename(&self) -> Option<String> {
        let from_cd = self
            .headers
            .get("content-disposition")
            .map(ParamValue::parse)
            .and_then(|p| p.param("filename").map(str::to_string));
        let name = from_cd.or_else(|| self.content_type().param("name").map(str::to_string))?;
        sanitize_filename(&decode_rfc2047(&name))
    }
}

/// Keeps the last path component, drops control characters; `None` if
/// nothing usable is left (`..`, empty).
pub fn sanitize_filename(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim().to_string();
    if clean.is_empty() || clean == "." || clean == ".." {
        None
    } else {
        Some(clean)
    }
}

/// Undoes a transfer encoding. Unknown encodings are an error.
pub fn decode_transfer(body: &[u8], cte: &str) -> Result<Vec<u8>> {
    match cte {
        "base64" => base64_decode(body),
        "quoted-printable" => Ok(quoted_printable_decode(body)),
        "7bit" | "8bit" | "binary" | "" => Ok(body.to_vec()),
        other => Err(As2Error::MalformedMime(format!(
            "unknown Content-Transfer-Encoding {other:?}"
        ))),
    }
}

/// Converts every bare LF (and bare CR) to CRLF: canonical text form
/// (RFC 5751 §3.1.1). Existing CRLF pairs are kept.
pub fn canonicalize_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    super::stream::CrlfCanonicalizer::default().push(data, &mut out);
    out
}

/// Whether the data contains a LF not preceded by CR.
pub fn has_bare_lf(data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && (i == 0 || data.get(i - 1) != Some(&b'\r')))
}

/// Canonicalizes only the header block of an entity to CRLF, leaving the body
/// untouched (binary content must never change).
pub fn canonicalize_headers(raw: &[u8]) -> Vec<u8> {
    let (hlen, body_start) = find_header_end(raw);
    let mut out = canonicalize_crlf(raw.get(..hlen).unwrap_or(&[]));
    if body_start > hlen || hlen == 0 {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(raw.get(body_start..).unwrap_or(&[]));
    out
}

/// Splits a multipart body at `boundary` (RFC 2046 §5.1.1). Returns the raw
/// bytes of each body part (headers + body), without the line break that
/// precedes each delimiter. Preamble and epilogue are dropped. A body without
/// a closing delimiter is an error, and so is one with more than [`MAX_PARTS`]
/// parts (found before the rest is looked at).
pub fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>> {
    Ok(split_multipart_ranges(body, boundary)?
        .into_iter()
        .map(|r| body.get(r).unwrap_or(&[]))
        .collect())
}

/// [`split_multipart`] as ranges of `body`.
pub fn split_multipart_ranges(body: &[u8], boundary: &str) -> Result<Vec<std::ops::Range<usize>>> {
    Ok(super::stream::multipart_ranges(&mut &body[..], boundary)?
        .into_iter()
        .map(|r| r.start as usize..r.end as usize)
        .collect())
}

/// Makes a fresh boundary from openssl's RNG (`----=_as2box_<hex>`).
pub fn make_boundary() -> String {
    let mut b = [0u8; 16];
    // openssl's RNG; on the (practically impossible) failure fall back to a
    // boundary that is still unique enough per process.
    if openssl::rand::rand_bytes(&mut b).is_err() {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&n.to_le_bytes());
    }
    format!("----=_as2box_{}", hex_lower(&b))
}

/// Whether a media type is text that must be CRLF-canonicalized before
/// signing (RFC 5751 §3.1.1): `text/*` and the EDI types (RFC 1767), XML.
/// `application/octet-stream` and everything else is binary.
pub fn is_text_type(media_type: &str) -> bool {
    let m = media_type.to_ascii_lowercase();
    m.starts_with("text/")
        || m == "application/edi-x12"
        || m == "application/edifact"
        || m == "application/edi-consent"
        || m == "application/xml"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_parse_crlf_and_lf() {
        let e = Entity::parse(b"Content-Type: text/plain\r\n\r\nhello\r\n").unwrap();
        assert_eq!(e.body(), b"hello\r\n");
        assert_eq!(e.media_type(), "text/plain");
        let e = Entity::parse(b"Content-Type: Application/EDI-X12\n\nhi").unwrap();
        assert_eq!(e.body(), b"hi");
        assert_eq!(e.media_type(), "application/edi-x12");
        assert_eq!(e.transfer_encoding(), "7bit");
    }

    #[test]
    fn transfer_encodings() {
        assert_eq!(
            decode_transfer(b"aGVs\r\nbG8=\r\n", "base64").unwrap(),
            b"hello"
        );
        assert_eq!(decode_transfer(b"aGVsbG8", "base64").unwrap(), b"hello");
        assert_eq!(
            decode_transfer(b"a=3Db=\r\nc", "quoted-printable").unwrap(),
            b"a=bc"
        );
        assert_eq!(decode_transfer(b"\x00\xff", "binary").unwrap(), b"\x00\xff");
        assert!(decode_transfer(b"x", "x-uuencode").is_err());
        assert!(decode_transfer(b"!!!!", "base64").is_err());
    }

    #[test]
    fn canonicalization() {
        assert_eq!(canonicalize_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert!(has_bare_lf(b"a\nb"));
        assert!(!has_bare_lf(b"a\r\nb"));
        assert_eq!(canonicalize_headers(b"A: b\n\nx\ny"), b"A: b\r\n\r\nx\ny");
    }

    #[test]
    fn multipart_split() {
        let body = b"preamble\r\n--XX\r\nA: 1\r\n\r\none\r\n--XX\r\nA: 2\r\n\r\ntwo\r\n\r\n--XX--\r\nepilogue";
        let parts = split_multipart(body, "XX").unwrap();
        assert_eq!(
            parts,
            vec![&b"A: 1\r\n\r\none"[..], &b"A: 2\r\n\r\ntwo\r\n"[..]]
        );
        let lf = b"--XX\nA: 1\n\none\n--XX--\n";
        assert_eq!(
            split_multipart(lf, "XX").unwrap(),
            vec![&b"A: 1\n\none"[..]]
        );
        // A line that merely starts with the delimiter text is not a delimiter.
        let tricky = b"--XX\r\n\r\n--XXY\r\n--XX--";
        assert_eq!(
            split_multipart(tricky, "XX").unwrap(),
            vec![&b"\r\n--XXY"[..]]
        );
        assert!(split_multipart(b"--XX\r\nA: 1\r\n\r\none", "XX").is_err());
        assert!(split_multipart(b"nothing here", "XX").is_err());
        assert!(split_multipart(b"x", "").is_err());
    }

    #[test]
    fn parts_are_capped_before_the_rest_is_read() {
        let mut body = Vec::new();
        for _ in 0..MAX_PARTS {
            body.extend_from_slice(b"--B\r\n\r\nx\r\n");
        }
        let mut ok = body.clone();
        ok.extend_from_slice(b"--B--\r\n");
        assert_eq!(split_multipart(&ok, "B").unwrap().len(), MAX_PARTS);
        // One more part, and then 100,000 more: refused, whatever follows.
        body.extend_from_slice(b"--B\r\n\r\nx\r\n");
        for _ in 0..100_000 {
            body.extend_from_slice(b"--B\r\n\r\nx\r\n");
        }
        body.extend_from_slice(b"--B--\r\n");
        let err = split_multipart(&body, "B").unwrap_err();
        assert!(err.to_string().contains("more than 1000 parts"), "{err}");
        assert_eq!(
            err.disposition_modifier(),
            crate::as2::error::DispositionModifier::UnexpectedProcessingError
        );
    }

    #[test]
    fn header_blocks_are_capped() {
        let mut raw = b"Content-Type: text/plain\r\n".to_vec();
        while raw.len() <= MAX_HEADER_BYTES {
            raw.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        raw.extend_from_slice(b"\r\nbody");
        let err = Entity::parse(&raw).unwrap_err();
        assert!(err.to_string().contains("header block is longer"), "{err}");
        // No blank line at all: the whole entity would be headers.
        let err = Entity::parse(&vec![b'a'; MAX_HEADER_BYTES + 1]).unwrap_err();
        assert!(matches!(err, As2Error::MalformedMime(_)), "{err}");
        // Just under the limit is fine.
        let mut raw = b"A: ".to_vec();
        raw.resize(MAX_HEADER_BYTES - 2, b'c');
        raw.extend_from_slice(b"\r\n\r\nbody");
        assert_eq!(Entity::parse(&raw).unwrap().body(), b"body");
    }

    #[test]
    fn shared_entities_copy_nothing() {
        let buf = Bytes::from_static(b"--B\r\nContent-Type: a/b\r\n\r\none\r\n--B--\r\n");
        let e = Entity::from_parts_shared(
            Headers::from_pairs([("Content-Type", "multipart/mixed; boundary=B")]),
            buf.clone(),
        );
        let parts = e.parts("B").unwrap();
        assert_eq!(parts.len(), 1);
        let part = Entity::parse_shared(parts[0].clone()).unwrap();
        assert_eq!(part.body(), b"one");
        // The part's body points into the original buffer.
        let inside = buf.as_ptr_range();
        assert!(inside.contains(&part.body().as_ptr()));
        assert_eq!(part.decoded_shared().unwrap(), &b"one"[..]);
        // An entity over an owned buffer gives the buffer back as its body.
        let owned = b"A: b\r\n\r\npayload".to_vec();
        let at = owned.as_ptr();
        let e = Entity::parse_shared(Bytes::from(owned)).unwrap();
        let body = e.into_decoded_body().unwrap();
        assert_eq!(body, b"payload");
        assert_eq!(body.as_ptr(), at, "the same allocation, not a copy");
    }

    #[test]
    fn filenames() {
        let e = Entity::parse(
            b"Content-Disposition: attachment; filename=\"../../etc/passwd\"\r\n\r\n",
        )
        .unwrap();
        assert_eq!(e.filename().as_deref(), Some("passwd"));
        let e =
            Entity::parse(b"Content-Type: application/edi-x12; name=order.x12\r\n\r\n").unwrap();
        assert_eq!(e.filename().as_deref(), Some("order.x12"));
        let e = Entity::parse(
            b"Content-Disposition: attachment; filename=\"=?utf-8?B?w6TDtsO8LnR4dA==?=\"\r\n\r\n",
        )
        .unwrap();
        assert_eq!(e.filename().as_deref(), Some("äöü.txt"));
        let e = Entity::parse(b"Content-Disposition: attachment; filename=..\r\n\r\n").unwrap();
        assert_eq!(e.filename(), None);
    }
}
