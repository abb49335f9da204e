//! Byte encodings, each written once: base64 (RFC 2045 §6.8, also in RFC 2047 "B" words
//! and MIC values), quoted-printable (RFC 2045 §6.7, and its RFC 2047 "Q" variant), RFC 2231
//! percent-encoding, and lowercase hex. No other module of `as2` decodes these by hand.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::error::{As2Error, Result};

const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

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

/// The value of one hex digit, either case.
pub fn hex_digit_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The byte that the two hex digits at `b[i..i + 2]` spell, if they do.
fn hex_pair_at(b: &[u8], i: usize) -> Option<u8> {
    let high = hex_digit_value(*b.get(i)?)?;
    let low = hex_digit_value(*b.get(i + 1)?)?;
    Some(high * 16 + low)
}

/// Lowercase hex of `bytes`.
pub fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Decodes quoted-printable (RFC 2045 §6.7): `=XX` escapes and soft line breaks (`=` at
/// the end of a line, CRLF or bare LF). A `=` that starts neither is kept as it is.
pub fn quoted_printable_decode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'=' {
            out.push(c);
            i += 1;
            continue;
        }
        match (body.get(i + 1), body.get(i + 2)) {
            (Some(b'\r'), Some(b'\n')) => i += 3,
            (Some(b'\n'), _) => i += 2,
            _ => match hex_pair_at(body, i + 1) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            },
        }
    }
    out
}

/// Decodes the text of an RFC 2047 "Q" encoded word (§4.2): quoted-printable where `_`
/// stands for a space. A literal `_` is sent as `=5F`, so replacing first is exact.
pub fn q_word_decode(text: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = text
        .iter()
        .map(|&c| if c == b'_' { b' ' } else { c })
        .collect();
    quoted_printable_decode(&spaced)
}

/// Decodes RFC 2231 percent-encoding (`%XX`); a `%` not followed by two hex digits is kept.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(byte) = hex_pair_at(b, i + 1) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_lenient_in_strict_out() {
        assert_eq!(base64_decode(b"aGVs\r\nbG8=\r\n").unwrap(), b"hello");
        assert_eq!(base64_decode(b"aGVsbG8").unwrap(), b"hello");
        assert!(base64_decode(b"!!!!").is_err());
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        let long = base64_encode_lines(&[7u8; 100]);
        assert!(long.split(|&c| c == b'\n').all(|l| l.len() <= 77));
        assert!(long.ends_with(b"\r\n"));
    }

    #[test]
    fn quoted_printable_soft_breaks_escapes_and_stray_equals() {
        assert_eq!(quoted_printable_decode(b"a=3Db=\r\nc"), b"a=bc");
        assert_eq!(quoted_printable_decode(b"a=\nb"), b"ab");
        assert_eq!(quoted_printable_decode(b"x=zz="), b"x=zz=");
        assert_eq!(quoted_printable_decode(b"=c3=A9"), "é".as_bytes());
    }

    #[test]
    fn q_words_and_percent_encoding() {
        assert_eq!(q_word_decode(b"a_b=5Fc=3D"), b"a b_c=");
        assert_eq!(percent_decode("caf%C3%A9%zz%4"), b"caf\xc3\xa9%zz%4");
    }

    #[test]
    fn hex_both_ways() {
        assert_eq!(hex_lower(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(hex_digit_value(b'F'), Some(15));
        assert_eq!(hex_digit_value(b'g'), None);
    }
}
