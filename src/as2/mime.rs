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

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::error::{As2Error, Result};
use super::headers::{decode_rfc2047, find_header_end, Headers, ParamValue};

const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A MIME entity: its parsed header fields and the raw bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Parsed header fields.
    pub headers: Headers,
    /// The entity exactly as received: header block, blank line, body.
    pub raw: Vec<u8>,
    /// Offset of the body in `raw`.
    pub body_start: usize,
}

impl Entity {
    /// Parses an entity (header block, blank line, body). CRLF and bare LF
    /// are both accepted.
    pub fn parse(raw: &[u8]) -> Result<Self> {
        let (hlen, body_start) = find_header_end(raw);
        let headers = Headers::parse_block(raw.get(..hlen).unwrap_or(&[]))?;
        Ok(Self {
            headers,
            raw: raw.to_vec(),
            body_start,
        })
    }

    /// An entity from separately transported headers (HTTP) and body; `raw`
    /// is then the body alone (`body_start == 0`).
    pub fn from_parts(headers: Headers, body: &[u8]) -> Self {
        Self {
            headers,
            raw: body.to_vec(),
            body_start: 0,
        }
    }

    /// The body bytes, still transfer-encoded.
    pub fn body(&self) -> &[u8] {
        self.raw.get(self.body_start..).unwrap_or(&[])
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
        "quoted-printable" => Ok(qp_decode(body)),
        "7bit" | "8bit" | "binary" | "" => Ok(body.to_vec()),
        other => Err(As2Error::MalformedMime(format!(
            "unknown Content-Transfer-Encoding {other:?}"
        ))),
    }
}

/// Decodes base64, ignoring whitespace and line breaks; padding optional.
pub fn base64_decode(data: &[u8]) -> Result<Vec<u8>> {
    let clean: Vec<u8> = data
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    B64_LENIENT
        .decode(&clean)
        .map_err(|e| As2Error::MalformedMime(format!("bad base64: {e}")))
}

/// Encodes base64 in lines of 76 characters ending in CRLF (RFC 2045 §6.8).
pub fn base64_encode_lines(data: &[u8]) -> Vec<u8> {
    let enc = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(enc.len() + enc.len() / 76 * 2 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Base64 without line breaks (MIC values).
pub fn base64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn qp_decode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c == b'=' {
            let a = body.get(i + 1).copied();
            let b = body.get(i + 2).copied();
            match (a, b) {
                (Some(b'\r'), Some(b'\n')) => i += 3,
                (Some(b'\n'), _) => i += 2,
                (Some(x), Some(y)) if x.is_ascii_hexdigit() && y.is_ascii_hexdigit() => {
                    let hv = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                    out.push(hv(x) * 16 + hv(y));
                    i += 3;
                }
                _ => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Converts every bare LF (and bare CR) to CRLF: canonical text form
/// (RFC 5751 §3.1.1). Existing CRLF pairs are kept.
pub fn canonicalize_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            c => out.push(c),
        }
        i += 1;
    }
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
/// a closing delimiter is accepted only if at least one part was found before
/// the data ends *and* `allow_unclosed` is set.
pub fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>> {
    if boundary.is_empty() || boundary.len() > 200 {
        return Err(As2Error::MalformedMime("invalid multipart boundary".into()));
    }
    let delim: Vec<u8> = [b"--".as_slice(), boundary.as_bytes()].concat();
    // Positions of delimiter lines: (line_start, after_line, is_close).
    let mut delims: Vec<(usize, usize, bool)> = Vec::new();
    let mut line_start = 0usize;
    loop {
        if body
            .get(line_start..)
            .is_some_and(|rest| rest.starts_with(&delim))
        {
            let after = line_start + delim.len();
            let is_close = body.get(after..after + 2) == Some(b"--".as_slice());
            let eol = body
                .get(after..)
                .and_then(|r| r.iter().position(|&c| c == b'\n'))
                .map(|p| after + p + 1)
                .unwrap_or(body.len());
            // Only transport padding may follow the boundary on its line.
            let tail_start = if is_close { after + 2 } else { after };
            let tail = body.get(tail_start..eol).unwrap_or(&[]);
            if tail.iter().all(|c| c.is_ascii_whitespace()) {
                delims.push((line_start, eol, is_close));
                if is_close {
                    break;
                }
            }
        }
        match body
            .get(line_start..)
            .and_then(|r| r.iter().position(|&c| c == b'\n'))
        {
            Some(p) => line_start = line_start + p + 1,
            None => break,
        }
    }
    let closed = delims.last().is_some_and(|d| d.2);
    if delims.is_empty() || (delims.len() == 1 && closed) {
        return Err(As2Error::MalformedMime(format!(
            "multipart body has no parts for boundary {boundary:?}"
        )));
    }
    if !closed {
        return Err(As2Error::MalformedMime(
            "multipart body has no closing delimiter (truncated?)".into(),
        ));
    }
    let mut parts = Vec::new();
    for w in delims.windows(2) {
        let (start, end) = (w[0].1, w[1].0);
        let mut e = end;
        // The line break before a delimiter belongs to the delimiter.
        if e > start && body.get(e - 1) == Some(&b'\n') {
            e -= 1;
            if e > start && body.get(e - 1) == Some(&b'\r') {
                e -= 1;
            }
        }
        parts.push(body.get(start..e.max(start)).unwrap_or(&[]));
    }
    if parts.is_empty() {
        return Err(As2Error::MalformedMime(
            "multipart body has no parts".into(),
        ));
    }
    Ok(parts)
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
    format!("----=_as2box_{}", hex_string(&b))
}

/// Lower-case hex of bytes.
pub fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
