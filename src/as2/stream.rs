//! Streaming over large messages: the daemon hands the core spool files (`impl Read +
//! Write + Seek`), and the core reads and writes them in bounded chunks, so that memory
//! does not grow with the size of a message. No file is opened here: a [`Spool`] makes
//! them (files on disk in the daemon, in-memory cursors in tests and for small callers).
//!
//! What is here: regions of a spool ([`Region`]), the header block of an entity read with
//! a bound, transfer decodings as readers (base64, quoted-printable), multipart splitting
//! over a reader (RFC 2046 §5.1.1), line-end canonicalization as a stream, and digests
//! of a reader.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

use super::algorithms::DigestAlgorithm;
use super::error::{As2Error, Result};
use super::headers::{find_header_end, Headers};
use super::mic::Mic;
use super::mime::{MAX_HEADER_BYTES, MAX_PARTS};

/// Bytes read or written at a time.
pub const CHUNK: usize = 64 * 1024;

/// Most transport padding (white space) after a multipart delimiter on its line.
const MAX_DELIMITER_PADDING: usize = 1024;

/// Where the core puts what it makes from a message (decrypted, inflated, decoded bytes).
pub trait Spool {
    /// A spool file being written and read back.
    type File: Read + Write + Seek;
    /// A finished spool file handed back to the caller (an attachment).
    type Sealed;
    /// A new, empty file.
    fn create(&mut self) -> io::Result<Self::File>;
    /// Hands a finished file (positioned anywhere) to the caller.
    fn seal(&mut self, file: Self::File) -> io::Result<Self::Sealed>;
}

/// A [`Spool`] in memory: for tests and for small messages of the CLI.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemorySpool;

impl Spool for MemorySpool {
    type File = io::Cursor<Vec<u8>>;
    type Sealed = Vec<u8>;
    fn create(&mut self) -> io::Result<Self::File> {
        Ok(io::Cursor::new(Vec::new()))
    }
    fn seal(&mut self, file: Self::File) -> io::Result<Vec<u8>> {
        Ok(file.into_inner())
    }
}

/// An I/O error of a spool, as the core reports it.
pub fn io_error(what: &str) -> impl Fn(io::Error) -> As2Error + '_ {
    move |e| As2Error::Io(format!("{what}: {e}"))
}

/// A byte range of a spool file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Index of the file among the message's spool files.
    pub file: usize,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Region {
    /// Its length.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part `range` of it (relative offsets, clamped).
    pub fn sub(&self, range: Range<u64>) -> Region {
        let start = self.start.saturating_add(range.start).min(self.end);
        let end = self.start.saturating_add(range.end).clamp(start, self.end);
        Region {
            file: self.file,
            start,
            end,
        }
    }
}

/// The spool files of one message (received: the body, then one per layer opened; sent:
/// one per layer built), addressed by [`Region`]s.
#[derive(Debug)]
pub struct SpoolFiles<F> {
    files: Vec<F>,
}

impl<F> Default for SpoolFiles<F> {
    fn default() -> Self {
        Self { files: Vec::new() }
    }
}

impl<F: Read + Write + Seek> SpoolFiles<F> {
    /// Adds a file written to its end; returns the region of all of it.
    pub fn add(&mut self, mut file: F) -> Result<Region> {
        let end = file
            .seek(SeekFrom::End(0))
            .map_err(io_error("seek in a spool file"))?;
        self.files.push(file);
        Ok(Region {
            file: self.files.len() - 1,
            start: 0,
            end,
        })
    }

    /// A reader of exactly the bytes of `region`.
    pub fn open(&mut self, region: Region) -> Result<io::Take<&mut F>> {
        let file = self
            .files
            .get_mut(region.file)
            .ok_or_else(|| As2Error::Io("no such spool file".into()))?;
        open_region(file, region)
    }

    /// Takes the file of `region` back, if it is the last one added.
    pub fn take_last(&mut self, region: Region) -> Option<F> {
        if region.file + 1 == self.files.len() {
            self.files.pop()
        } else {
            None
        }
    }
}

/// Positions `file` at `region` and gives a reader of exactly its bytes.
pub fn open_region<F: Read + Seek>(file: &mut F, region: Region) -> Result<io::Take<&mut F>> {
    file.seek(SeekFrom::Start(region.start))
        .map_err(io_error("seek in a spool file"))?;
    Ok(file.take(region.len()))
}

/// Reads the header block at the start of `reader` (at most [`MAX_HEADER_BYTES`]) and
/// returns the fields, the header bytes as sent (for canonical forms and MICs), and the
/// offset of the body. A longer block, or one without its blank line before that bound, is
/// an error.
pub fn read_header_block(reader: &mut impl Read) -> Result<(Headers, Vec<u8>, u64)> {
    let mut prefix = Vec::new();
    reader
        .take(MAX_HEADER_BYTES as u64 + 3)
        .read_to_end(&mut prefix)
        .map_err(io_error("read a MIME header block"))?;
    let (hlen, body_start) = find_header_end(&prefix);
    if hlen > MAX_HEADER_BYTES {
        return Err(As2Error::MalformedMime(format!(
            "a MIME header block is longer than the limit of {MAX_HEADER_BYTES} bytes \
             (or the blank line after the header fields is missing)"
        )));
    }
    let head = prefix.get(..hlen).unwrap_or(&[]).to_vec();
    let headers = Headers::parse_block(&head)?;
    Ok((headers, head, body_start as u64))
}

/// Copies all of `reader` into `writer`; returns the bytes copied.
pub fn copy_all<R: Read + ?Sized, W: Write + ?Sized>(
    reader: &mut R,
    writer: &mut W,
) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = read_some(reader, &mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        writer
            .write_all(&buf[..n])
            .map_err(io_error("write a spool file"))?;
        total += n as u64;
    }
}

/// One read, retried on interruption.
pub fn read_some<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> Result<usize> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(As2Error::Io(format!("read a message: {e}"))),
        }
    }
}

/// The digest of everything `reader` gives, as a MIC.
pub fn mic_of_reader(reader: &mut impl Read, alg: DigestAlgorithm) -> Result<Mic> {
    mic_of_prefix_and_reader(&[], reader, alg)
}

/// The digest of `prefix` followed by everything `reader` gives.
pub fn mic_of_prefix_and_reader(
    prefix: &[u8],
    reader: &mut impl Read,
    alg: DigestAlgorithm,
) -> Result<Mic> {
    let err = |e: openssl::error::ErrorStack| As2Error::Crypto(format!("digest: {e}"));
    let mut h = openssl::hash::Hasher::new(alg.message_digest()).map_err(err)?;
    h.update(prefix).map_err(err)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_some(reader, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]).map_err(err)?;
    }
    let d = h.finish().map_err(err)?;
    Ok(Mic {
        digest_b64: super::encoding::base64_encode(&d),
        algorithm: alg,
    })
}

/// The MIC of the entity `reader` gives, with its header lines in canonical (CRLF) form
/// and its body as it is (RFC 4130 §7.3.1, encrypted unsigned), without a canonical copy.
/// A header block longer than [`MAX_HEADER_BYTES`] (or without a blank line within it) is
/// all canonicalized, as a block without a blank line is.
pub fn mic_with_crlf_headers(reader: &mut impl Read, alg: DigestAlgorithm) -> Result<Mic> {
    let mut prefix = Vec::new();
    reader
        .take(MAX_HEADER_BYTES as u64 + 3)
        .read_to_end(&mut prefix)
        .map_err(read_error)?;
    let (hlen, body_start) = find_header_end(&prefix);
    let mut canonical = Vec::with_capacity(hlen + 2);
    let mut canon = CrlfCanonicalizer::default();
    if hlen > MAX_HEADER_BYTES {
        let mut whole = CanonicalReader::new(io::Cursor::new(prefix).chain(reader));
        return mic_of_reader(&mut whole, alg);
    }
    canon.push(prefix.get(..hlen).unwrap_or(&[]), &mut canonical);
    if body_start > hlen || hlen == 0 {
        canonical.extend_from_slice(b"\r\n");
    }
    canonical.extend_from_slice(prefix.get(body_start..).unwrap_or(&[]));
    mic_of_prefix_and_reader(&canonical, reader, alg)
}

/// A reader giving the canonical form (see [`CrlfCanonicalizer`]) of another.
pub struct CanonicalReader<R> {
    inner: R,
    canon: CrlfCanonicalizer,
    out: Vec<u8>,
    out_pos: usize,
}

impl<R: Read> CanonicalReader<R> {
    /// Canonicalizes `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            canon: CrlfCanonicalizer::default(),
            out: Vec::new(),
            out_pos: 0,
        }
    }
}

impl<R: Read> Read for CanonicalReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos >= self.out.len() {
            let mut input = vec![0u8; CHUNK];
            let n = self.inner.read(&mut input)?;
            if n == 0 {
                return Ok(0);
            }
            self.out.clear();
            self.out_pos = 0;
            self.canon.push(&input[..n], &mut self.out);
        }
        let avail = self.out.get(self.out_pos..).unwrap_or(&[]);
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// Line-end canonicalization (RFC 5751 §3.1.1: every bare LF and bare CR becomes CRLF)
/// over input given in pieces.
#[derive(Debug, Default)]
pub struct CrlfCanonicalizer {
    after_cr: bool,
}

impl CrlfCanonicalizer {
    /// Appends the canonical form of `input` to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &c in input {
            match c {
                b'\r' => out.extend_from_slice(b"\r\n"),
                b'\n' if self.after_cr => {}
                b'\n' => out.extend_from_slice(b"\r\n"),
                c => out.push(c),
            }
            self.after_cr = c == b'\r';
        }
    }
}

/// Whether `reader` gives a LF not preceded by CR.
pub fn has_bare_lf_in(reader: &mut impl Read) -> Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    let mut prev = 0u8;
    loop {
        let n = read_some(reader, &mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        for &c in &buf[..n] {
            if c == b'\n' && prev != b'\r' {
                return Ok(true);
            }
            prev = c;
        }
    }
}

/// Copies `reader` to `writer` in canonical form (see [`CrlfCanonicalizer`]).
pub fn canonicalize_into<R: Read + ?Sized, W: Write + ?Sized>(
    reader: &mut R,
    writer: &mut W,
) -> Result<()> {
    copy_all(&mut CanonicalReader::new(reader), writer).map(drop)
}

/// A reader that undoes base64 (RFC 2045 §6.8) over another, skipping white space and
/// line breaks; padding optional, bad characters an error.
pub struct Base64Reader<R> {
    inner: R,
    quad: [u8; 4],
    have: usize,
    out: Vec<u8>,
    out_pos: usize,
    done: bool,
    input: Vec<u8>,
}

impl<R: Read> Base64Reader<R> {
    /// Decodes `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            quad: [0; 4],
            have: 0,
            out: Vec::new(),
            out_pos: 0,
            done: false,
            input: vec![0u8; CHUNK],
        }
    }

    fn value(c: u8) -> Option<u8> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    }

    fn flush_quad(&mut self) {
        let q = self.quad;
        let n = self.have;
        if n >= 2 {
            self.out.push((q[0] << 2) | (q[1] >> 4));
        }
        if n >= 3 {
            self.out.push((q[1] << 4) | (q[2] >> 2));
        }
        if n == 4 {
            self.out.push((q[2] << 6) | q[3]);
        }
        self.have = 0;
    }

    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.out_pos = 0;
        while self.out.is_empty() && !self.done {
            let n = loop {
                match self.inner.read(&mut self.input) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.done = true;
                if self.have == 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad base64: a lone character at the end",
                    ));
                }
                self.flush_quad();
                break;
            }
            for i in 0..n {
                let c = self.input[i];
                if c.is_ascii_whitespace() || c == b'=' {
                    continue;
                }
                let v = Self::value(c).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad base64: invalid byte {c:#04x}"),
                    )
                })?;
                self.quad[self.have] = v;
                self.have += 1;
                if self.have == 4 {
                    self.flush_quad();
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Base64Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.out_pos >= self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.refill()?;
        }
        let avail = self.out.get(self.out_pos..).unwrap_or(&[]);
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// A reader that undoes quoted-printable (RFC 2045 §6.7) over another: the input is
/// decoded a line at a time (soft line breaks end with a line break too), so a piece never
/// ends inside an `=XX` escape; a line longer than [`CHUNK`] is cut where no escape is open.
pub struct QuotedPrintableReader<R> {
    inner: R,
    pending: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    done: bool,
}

impl<R: Read> QuotedPrintableReader<R> {
    /// Decodes `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            done: false,
        }
    }
}

impl<R: Read> Read for QuotedPrintableReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos >= self.out.len() {
            if self.done && self.pending.is_empty() {
                return Ok(0);
            }
            let mut input = vec![0u8; CHUNK];
            let n = if self.done {
                0
            } else {
                loop {
                    match self.inner.read(&mut input) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            };
            if n == 0 {
                self.done = true;
            }
            self.pending.extend_from_slice(&input[..n]);
            // Decode up to the last line break; at the end, or when a line is very long,
            // up to where no escape can be cut.
            let cut = match self.pending.iter().rposition(|&c| c == b'\n') {
                Some(p) => p + 1,
                None if self.done => self.pending.len(),
                None if self.pending.len() > CHUNK => {
                    let tail = self.pending.len().saturating_sub(2);
                    match self.pending[tail..].iter().position(|&c| c == b'=') {
                        Some(p) => tail + p,
                        None => self.pending.len(),
                    }
                }
                None => 0,
            };
            let rest = self.pending.split_off(cut);
            let line = std::mem::replace(&mut self.pending, rest);
            self.out = super::encoding::quoted_printable_decode(&line);
            self.out_pos = 0;
        }
        let avail = self.out.get(self.out_pos..).unwrap_or(&[]);
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// The body of an entity with its transfer encoding undone, as a reader.
pub fn decoding_reader<'a>(body: impl Read + 'a, cte: &str) -> Result<Box<dyn Read + 'a>> {
    Ok(match cte {
        "base64" => Box::new(Base64Reader::new(body)),
        "quoted-printable" => Box::new(QuotedPrintableReader::new(body)),
        "7bit" | "8bit" | "binary" | "" => Box::new(body),
        other => {
            return Err(As2Error::MalformedMime(format!(
                "unknown Content-Transfer-Encoding {other:?}"
            )))
        }
    })
}

/// Maps an I/O error of a decoding reader to the core's error (bad base64 is malformed
/// MIME, not an I/O failure).
pub fn read_error(e: io::Error) -> As2Error {
    if e.kind() == io::ErrorKind::InvalidData {
        As2Error::MalformedMime(e.to_string())
    } else {
        As2Error::Io(format!("read a message: {e}"))
    }
}

/// Splits a multipart body read from `reader` at `boundary` (RFC 2046 §5.1.1). Returns the
/// byte ranges of each body part (headers + body), without the line break that precedes
/// each delimiter. Preamble and epilogue are dropped. A body without a closing delimiter is
/// an error, and so is one with more than [`MAX_PARTS`] parts (found before the rest is
/// read). Memory is bounded: the body is looked at in chunks.
pub fn multipart_ranges(reader: &mut impl Read, boundary: &str) -> Result<Vec<Range<u64>>> {
    if boundary.is_empty() || boundary.len() > 200 {
        return Err(As2Error::MalformedMime("invalid multipart boundary".into()));
    }
    let delim: Vec<u8> = [b"--".as_slice(), boundary.as_bytes()].concat();
    let lookahead = delim.len() + 2 + MAX_DELIMITER_PADDING;
    // The window of the body in memory: `buf[0]` is at offset `base`; `i` is a line start.
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 2);
    let mut base = 0u64;
    let mut i = 0usize;
    let mut eof = false;
    // Delimiter lines: (line start, after the line, line-break bytes before it, closing).
    let mut delims: Vec<(u64, u64, u64, bool)> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut fill = |buf: &mut Vec<u8>, eof: &mut bool| -> Result<()> {
        let n = read_some(reader, &mut chunk).map_err(|e| match e {
            As2Error::Io(m) if m.contains("bad base64") => As2Error::MalformedMime(m),
            e => e,
        })?;
        if n == 0 {
            *eof = true;
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    loop {
        // Keep two bytes before the line start (the line break that belongs to a delimiter).
        while !eof && buf.len() - i < lookahead {
            let keep_from = i.saturating_sub(2);
            buf.drain(..keep_from);
            base += keep_from as u64;
            i -= keep_from;
            fill(&mut buf, &mut eof)?;
        }
        if i >= buf.len() {
            break;
        }
        let rest = &buf[i..];
        if rest.starts_with(&delim) {
            let after = delim.len();
            let is_close = rest.get(after..after + 2) == Some(b"--".as_slice());
            let eol = match rest
                .get(after..)
                .and_then(|r| r.iter().position(|&c| c == b'\n'))
            {
                Some(p) => Some(after + p + 1),
                None if eof => Some(rest.len()),
                None => None,
            };
            if let Some(eol) = eol {
                // Only transport padding may follow the boundary on its line.
                let tail_start = if is_close { after + 2 } else { after };
                let tail = rest.get(tail_start..eol).unwrap_or(&[]);
                if tail.iter().all(|c| c.is_ascii_whitespace()) {
                    let line_break = if i == 0 && base == 0 {
                        0
                    } else if i >= 2 && buf[i - 2] == b'\r' {
                        2
                    } else {
                        1
                    };
                    let at = base + i as u64;
                    delims.push((at, at + eol as u64, line_break, is_close));
                    if is_close {
                        break;
                    }
                    // n + 1 delimiters open n + 1 parts: one too many already.
                    if delims.len() > MAX_PARTS {
                        return Err(As2Error::MalformedMime(format!(
                            "multipart body has more than {MAX_PARTS} parts; send fewer \
                             attachments per message"
                        )));
                    }
                }
            }
        }
        // On to the next line start.
        loop {
            match buf[i..].iter().position(|&c| c == b'\n') {
                Some(p) => {
                    i += p + 1;
                    break;
                }
                None if eof => {
                    i = buf.len();
                    break;
                }
                None => {
                    let keep_from = buf.len().saturating_sub(2);
                    buf.drain(..keep_from);
                    base += keep_from as u64;
                    i = buf.len();
                    fill(&mut buf, &mut eof)?;
                }
            }
        }
        if eof && i >= buf.len() {
            break;
        }
    }
    let closed = delims.last().is_some_and(|d| d.3);
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
    let mut parts = Vec::with_capacity(delims.len() - 1);
    for w in delims.windows(2) {
        let start = w[0].1;
        // The line break before a delimiter belongs to the delimiter.
        let end = w[1].0.saturating_sub(w[1].2).max(start);
        parts.push(start..end);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_reader_matches_the_whole_buffer_decoder() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let enc = super::super::encoding::base64_encode_lines(&data);
        for cut in [1usize, 3, 77, CHUNK + 5] {
            let mut r = Base64Reader::new(ChunkedReader(&enc[..], cut));
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
        let mut r = Base64Reader::new(&b"aGVsbG8"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello");
        assert!(Base64Reader::new(&b"!!!!"[..])
            .read_to_end(&mut Vec::new())
            .is_err());
    }

    #[test]
    fn quoted_printable_reader_decodes_across_pieces() {
        let mut long = b"a=3Db=\r\nc\r\n".repeat(20_000);
        long.extend_from_slice(&[b'x'; CHUNK * 2]);
        long.extend_from_slice(b"=41");
        let mut out = Vec::new();
        QuotedPrintableReader::new(ChunkedReader(&long[..], 1000))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, super::super::encoding::quoted_printable_decode(&long));
    }

    #[test]
    fn multipart_over_a_reader_finds_delimiters_across_chunks() {
        let mut body = b"preamble\r\n--B\r\nA: 1\r\n\r\n".to_vec();
        body.extend(vec![b'x'; CHUNK * 3 + 11]);
        body.extend_from_slice(b"\r\n--B  \r\nA: 2\r\n\r\ntwo\n--B--\r\nepilogue");
        let parts = multipart_ranges(&mut ChunkedReader(&body[..], 4097), "B").unwrap();
        assert_eq!(parts.len(), 2);
        let first = &body[parts[0].start as usize..parts[0].end as usize];
        assert!(first.starts_with(b"A: 1\r\n\r\nxxx") && first.ends_with(b"x"));
        assert_eq!(
            &body[parts[1].start as usize..parts[1].end as usize],
            b"A: 2\r\n\r\ntwo"
        );
    }

    /// Gives at most `.1` bytes per read.
    struct ChunkedReader<'a>(&'a [u8], usize);
    impl Read for ChunkedReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
}
