//! A minimal BER/DER reader and DER writer, enough to look inside CMS
//! structures (content type, algorithms) and to build/parse RFC 3274
//! compressed-data, which OpenSSL builds without zlib cannot do.
//!
//! The reader accepts BER: indefinite lengths and constructed OCTET STRINGs
//! (Java peers such as Mendelson stream their CMS). Depth is bounded, lengths
//! are checked, so no input can make it panic or recurse without end.

use super::error::{As2Error, Result};

const MAX_DEPTH: usize = 48;

/// One BER element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The identifier octet (class, constructed bit, low tag number); high tag
    /// numbers are folded into `tag_number`.
    pub tag: u8,
    /// The tag number (low 5 bits, or the multi-byte number).
    pub tag_number: u32,
    /// The content octets (for indefinite length: without the end-of-contents).
    pub content: &'a [u8],
    /// Whether the constructed bit is set.
    pub constructed: bool,
    /// The whole element (identifier, length, content, end-of-contents).
    pub raw: &'a [u8],
}

fn bad(msg: &str) -> As2Error {
    As2Error::MalformedMime(format!("bad ASN.1: {msg}"))
}

/// Reads one element from the start of `data`; returns it and the number of
/// bytes it occupies.
pub fn read_tlv(data: &[u8]) -> Result<(Tlv<'_>, usize)> {
    read_tlv_depth(data, 0)
}

fn read_tlv_depth(data: &[u8], depth: usize) -> Result<(Tlv<'_>, usize)> {
    if depth > MAX_DEPTH {
        return Err(bad("nesting too deep"));
    }
    let tag = *data.first().ok_or_else(|| bad("truncated tag"))?;
    let mut pos = 1usize;
    let mut tag_number = u32::from(tag & 0x1f);
    if tag_number == 0x1f {
        tag_number = 0;
        loop {
            let b = *data.get(pos).ok_or_else(|| bad("truncated tag"))?;
            pos += 1;
            if tag_number > (u32::MAX >> 7) {
                return Err(bad("tag number too large"));
            }
            tag_number = (tag_number << 7) | u32::from(b & 0x7f);
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let constructed = tag & 0x20 != 0;
    // The element whose content is `data[content]` and which ends at `data[end]`.
    let element = |content: std::ops::Range<usize>, end: usize| -> Result<(Tlv<'_>, usize)> {
        let tlv = Tlv {
            tag,
            tag_number,
            content: data.get(content).ok_or_else(|| bad("truncated content"))?,
            constructed,
            raw: data.get(..end).ok_or_else(|| bad("truncated content"))?,
        };
        Ok((tlv, end))
    };
    let l0 = *data.get(pos).ok_or_else(|| bad("truncated length"))?;
    pos += 1;
    if l0 == 0x80 {
        if !constructed {
            return Err(bad("indefinite length on primitive"));
        }
        // Indefinite: children until 00 00.
        let start = pos;
        loop {
            let rest = data.get(pos..).ok_or_else(|| bad("truncated"))?;
            if rest.len() < 2 {
                return Err(bad("missing end-of-contents"));
            }
            if rest[0] == 0 && rest[1] == 0 {
                return element(start..pos, pos + 2);
            }
            let (_, used) = read_tlv_depth(rest, depth + 1)?;
            pos += used;
        }
    }
    let len = if l0 & 0x80 == 0 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n > 8 {
            return Err(bad("length too long"));
        }
        let mut len = 0usize;
        for _ in 0..n {
            let b = *data.get(pos).ok_or_else(|| bad("truncated length"))?;
            pos += 1;
            len = len.checked_mul(256).ok_or_else(|| bad("length overflow"))? | usize::from(b);
        }
        len
    };
    let end = pos.checked_add(len).ok_or_else(|| bad("length overflow"))?;
    element(pos..end, end)
}

/// Most children [`children`] lists. CMS structures have a handful (the segments of a
/// constructed OCTET STRING, which can be many, are read without listing them); the bound
/// keeps a body of two-byte elements from becoming a list 24 times its size.
pub const MAX_CHILDREN: usize = 4096;

/// The children of a constructed element (at most [`MAX_CHILDREN`]).
pub fn children(content: &[u8]) -> Result<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        if out.len() == MAX_CHILDREN {
            return Err(bad("more than 4096 elements in one structure"));
        }
        let (t, used) = read_tlv(rest)?;
        out.push(t);
        rest = rest.get(used..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The bytes of an OCTET STRING, joining the segments of a constructed one.
pub fn octet_string_bytes(t: &Tlv<'_>) -> Result<Vec<u8>> {
    octet_string(t).map(std::borrow::Cow::into_owned)
}

/// [`octet_string_bytes`] without a copy for a primitive OCTET STRING (what DER
/// senders write): only a constructed one's segments are joined into a new buffer.
pub fn octet_string<'a>(t: &Tlv<'a>) -> Result<std::borrow::Cow<'a, [u8]>> {
    if !t.constructed {
        return Ok(std::borrow::Cow::Borrowed(t.content));
    }
    let mut out = Vec::new();
    collect_octets(t, &mut out, 0)?;
    Ok(std::borrow::Cow::Owned(out))
}

fn collect_octets(t: &Tlv<'_>, out: &mut Vec<u8>, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(bad("nesting too deep"));
    }
    if t.constructed {
        // Segment by segment, without listing them: streamed BER has many.
        let mut rest = t.content;
        while !rest.is_empty() {
            let (c, used) = read_tlv(rest)?;
            collect_octets(&c, out, depth + 1)?;
            rest = rest.get(used..).unwrap_or(&[]);
        }
    } else {
        out.extend_from_slice(t.content);
    }
    Ok(())
}

/// Decodes an OBJECT IDENTIFIER's content octets to dotted form.
pub fn oid_to_string(content: &[u8]) -> Result<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for &b in content {
        if v > (u64::MAX >> 8) {
            return Err(bad("OID arc too large"));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (v / 40).min(2);
                arcs.push(first);
                arcs.push(v - first * 40);
            } else {
                arcs.push(v);
            }
            v = 0;
        }
    }
    if arcs.is_empty() {
        return Err(bad("empty OID"));
    }
    Ok(arcs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("."))
}

/// Encodes a dotted OID as a full DER element.
pub fn encode_oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted.split('.').filter_map(|a| a.parse().ok()).collect();
    let mut content = Vec::new();
    if arcs.len() >= 2 {
        encode_base128(
            arcs[0].saturating_mul(40).saturating_add(arcs[1]),
            &mut content,
        );
        for a in &arcs[2..] {
            encode_base128(*a, &mut content);
        }
    }
    encode_tlv(0x06, &content)
}

fn encode_base128(mut v: u64, out: &mut Vec<u8>) {
    let mut tmp = vec![(v & 0x7f) as u8];
    v >>= 7;
    while v > 0 {
        tmp.push(((v & 0x7f) as u8) | 0x80);
        v >>= 7;
    }
    tmp.reverse();
    out.extend(tmp);
}

/// Encodes one DER element with a definite length.
pub fn encode_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = header(tag, content.len() as u64);
    out.extend_from_slice(content);
    out
}

/// The identifier and (definite, DER) length octets of an element of `len` content bytes.
pub fn header(tag: u8, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out
}

/// The outer ContentInfo of a CMS blob: its content type OID and the
/// `[0] EXPLICIT` content element.
pub fn content_info(der: &[u8]) -> Result<(String, Tlv<'_>)> {
    let (ci, _) = read_tlv(der)?;
    if ci.tag != 0x30 {
        return Err(bad("ContentInfo is not a SEQUENCE"));
    }
    let kids = children(ci.content)?;
    let oid = kids
        .first()
        .filter(|t| t.tag == 0x06)
        .ok_or_else(|| bad("no contentType"))?;
    let oid = oid_to_string(oid.content)?;
    let explicit = kids
        .get(1)
        .filter(|t| t.tag == 0xa0)
        .ok_or_else(|| bad("no content"))?;
    let inner = children(explicit.content)?;
    let inner = *inner.first().ok_or_else(|| bad("empty content"))?;
    Ok((oid, inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_round_trip() {
        for o in [
            "1.2.840.113549.1.9.16.1.9",
            "2.16.840.1.101.3.4.1.42",
            "1.3.14.3.2.26",
        ] {
            let enc = encode_oid(o);
            let (t, used) = read_tlv(&enc).unwrap();
            assert_eq!(used, enc.len());
            assert_eq!(oid_to_string(t.content).unwrap(), o);
        }
    }

    #[test]
    fn definite_and_indefinite() {
        let long = vec![7u8; 300];
        let enc = encode_tlv(0x04, &long);
        let (t, used) = read_tlv(&enc).unwrap();
        assert_eq!((t.content.len(), used), (300, enc.len()));
        // Constructed OCTET STRING, indefinite length, two segments.
        let ber = [
            0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00,
        ];
        let (t, used) = read_tlv(&ber).unwrap();
        assert_eq!(used, ber.len());
        assert_eq!(octet_string_bytes(&t).unwrap(), b"abc");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for g in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x89, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            &[0x04, 0x80, 0, 0],
            &[0x30, 0x80, 0x30, 0x80],
            &[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00],
        ] {
            assert!(read_tlv(g).is_err(), "{g:?}");
        }
        // Deep nesting is bounded.
        let mut deep = Vec::new();
        for _ in 0..200 {
            deep.extend_from_slice(&[0x30, 0x80]);
        }
        assert!(read_tlv(&deep).is_err());
        assert!(content_info(b"\x30\x00").is_err());
    }

    #[test]
    fn many_elements_are_bounded_but_many_segments_are_fine() {
        // A SEQUENCE of 5,000 empty OCTET STRINGs: not listed.
        let many = encode_tlv(0x30, &[0x04, 0x00].repeat(MAX_CHILDREN + 1));
        let (t, _) = read_tlv(&many).unwrap();
        assert!(children(t.content).is_err());
        let ok = encode_tlv(0x30, &[0x04, 0x00].repeat(MAX_CHILDREN));
        let (t, _) = read_tlv(&ok).unwrap();
        assert_eq!(children(t.content).unwrap().len(), MAX_CHILDREN);
        // A constructed OCTET STRING of 100,000 one-byte segments is joined.
        let mut seg = Vec::new();
        for _ in 0..100_000 {
            seg.extend_from_slice(&[0x04, 0x01, b'x']);
        }
        let mut ber = vec![0x24, 0x80];
        ber.extend_from_slice(&seg);
        ber.extend_from_slice(&[0, 0]);
        let (t, _) = read_tlv(&ber).unwrap();
        assert_eq!(octet_string_bytes(&t).unwrap().len(), 100_000);
        // A primitive one is borrowed.
        let prim = encode_tlv(0x04, b"abc");
        let (t, _) = read_tlv(&prim).unwrap();
        assert!(matches!(
            octet_string(&t).unwrap(),
            std::borrow::Cow::Borrowed(b"abc")
        ));
    }
}
