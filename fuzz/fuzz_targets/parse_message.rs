//! Fuzz the AS2 request parser: input = a capture (headers, blank line, body).
#![no_main]
use as2box::as2::certs::ValidityPolicy;
use as2box::as2::message::{parse_message, split_http_capture, ReceiveContext};
use libfuzzer_sys::fuzz_target;

#[path = "keys.rs"]
mod keys;

fuzz_target!(|data: &[u8]| {
    let kp = keys::keypair();
    let station = [kp.clone()];
    let certs = [kp.cert.clone()];
    if let Ok((h, body)) = split_http_capture(data) {
        let mut ctx = ReceiveContext::new(&station, &certs, ValidityPolicy::accept_expired(1_700_000_000));
        ctx.max_decompressed_size = 16 << 20;
        let _ = parse_message(&h, &body, &ctx);
    }
});
