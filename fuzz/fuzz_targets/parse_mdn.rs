//! Fuzz the MDN parser: input = a capture (headers, blank line, body).
#![no_main]
use as2box::as2::certs::ValidityPolicy;
use as2box::as2::mdn::parse_mdn;
use as2box::as2::message::split_http_capture;
use libfuzzer_sys::fuzz_target;

#[path = "keys.rs"]
mod keys;

fuzz_target!(|data: &[u8]| {
    let certs = [keys::keypair().cert.clone()];
    if let Ok((h, body)) = split_http_capture(data) {
        let _ = parse_mdn(&h, &body, &certs, ValidityPolicy::at(1_700_000_000), false);
        let _ = parse_mdn(&h, &body, &[], ValidityPolicy::at(1_700_000_000), false);
    }
});
