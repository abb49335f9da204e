//! Fuzz the small parsers: header blocks, parameters, RFC 2047/2231,
//! multipart splitting, transfer encodings, the BER reader, CMS inspection,
//! decompression.
#![no_main]
use as2box::as2::{cms, der, encoding, headers, mime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = headers::Headers::parse_block(data);
    let _ = headers::ParamValue::parse(&s);
    let _ = headers::decode_rfc2047(&s);
    let _ = headers::NotificationOptions::parse(&s);
    let _ = as2box::as2::mic::Mic::parse(&s);
    let _ = as2box::as2::mdn::Disposition::parse(&s);
    if let Ok(e) = mime::Entity::parse(data) {
        let _ = e.filename();
        let _ = e.decoded_body();
        if let Some(b) = e.content_type().param("boundary") {
            let _ = mime::split_multipart(e.body(), b);
        }
    }
    let _ = mime::split_multipart(data, "b");
    let _ = encoding::base64_decode(data);
    let _ = encoding::percent_decode(&s);
    let _ = encoding::q_word_decode(data);
    let _ = mime::decode_transfer(data, "quoted-printable");
    let _ = der::read_tlv(data);
    let _ = cms::inspect(data);
    let _ = cms::decompress(data, 1 << 20);
    let _ = cms::embedded_certificates(data);
});
