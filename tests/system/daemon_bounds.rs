//! Bounded work per request, end to end: a real `as2box serve` on 127.0.0.1 taking
//! hostile messages from a configured partner whose profile accepts plain AS2 (no
//! signature or encryption required: the worst case, where everything a stranger sends
//! reaches the parser; docs/SECURITY.md "Resource exhaustion").
//!
//! - compression bombs (CMS compressed-data that inflates to 1 GiB from about 1 MiB),
//!   one and 20 at once: refused, nothing stored, and the daemon's peak RSS (`VmHWM`)
//!   stays within 128 MiB plus a fixed allowance (inflating streams to spool files; the
//!   retired `max_body_memory_bytes` is still set, to show an old setting still loads);
//! - a message of 100,000 MIME parts: refused, nothing stored, the daemon still answers;
//! - a compressed message within the bounds is delivered (the bounds refuse bombs, not
//!   compression), one over its bound (the 16 MiB floor) is refused.
//!
//! Needs root and /dev/fuse like the other system tests (see tests/system/common).

use crate::common;
use crate::common::as2 as as2_common;
use crate::common::daemon as daemon_common;

use std::io::Write;
use std::time::{Duration, Instant};

use as2box::as2::der;
use as2box::as2::headers::Headers;
use common::*;
use daemon_common::*;

const MIB: u64 = 1 << 20;
/// `[serve]` for these tests: small budgets, so that the bound is tight enough to measure.
const MAX_BODY: u64 = 8 * MIB;
const BUDGET: u64 = 128 * MIB;
/// What the daemon may take beyond its budget: code, thread stacks, allocator slack, the
/// uncounted working copies of requests in flight (headers, the HTTP read buffers).
const ALLOWANCE: u64 = 32 * MIB;

fn serve_settings() -> String {
    format!("max_body_bytes = {MAX_BODY}\nmax_body_memory_bytes = {BUDGET}\n")
}

/// RFC 3274 CompressedData around a zlib stream of `inflated` zero bytes (made in pieces:
/// the test never holds the inflated content either).
fn zero_bomb(inflated: u64) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"zeros.bin\"\r\n\r\n")
        .unwrap();
    let chunk = vec![0u8; MIB as usize];
    for _ in 0..inflated / MIB {
        enc.write_all(&chunk).unwrap();
    }
    let z = enc.finish().unwrap();
    compressed_data(&z)
}

fn compressed_data(z: &[u8]) -> Vec<u8> {
    let alg = der::encode_tlv(0x30, &der::encode_oid("1.2.840.113549.1.9.16.3.8"));
    let mut encap = der::encode_oid("1.2.840.113549.1.7.1");
    encap.extend(der::encode_tlv(0xa0, &der::encode_tlv(0x04, z)));
    let mut cd = der::encode_tlv(0x02, &[0]);
    cd.extend(alg);
    cd.extend(der::encode_tlv(0x30, &encap));
    let mut ci = der::encode_oid("1.2.840.113549.1.9.16.1.9");
    ci.extend(der::encode_tlv(0xa0, &der::encode_tlv(0x30, &cd)));
    der::encode_tlv(0x30, &ci)
}

/// The AS2 headers of an unsigned, unencrypted message from `mb`'s partner to its station,
/// asking for an unsigned sync MDN.
fn as2_headers(mb: &Mailbox, content_type: &str) -> Headers {
    let mut h = Headers::new();
    h.push("AS2-Version", "1.2");
    h.push("AS2-From", mb.partner.as_str());
    h.push("AS2-To", mb.station.as_str());
    h.push("Message-ID", format!("<bounds-{}@test>", random_hex(8)));
    h.push("MIME-Version", "1.0");
    h.push("Content-Type", content_type);
    h.push("Content-Transfer-Encoding", "binary");
    h.push("Disposition-Notification-To", "test@example.com");
    h
}

fn post(daemon: &Daemon, h: &Headers, body: &[u8]) -> (u16, String) {
    let r = as2_common::http_post(&daemon.url("/as2"), h, body);
    (r.status(), String::from_utf8_lossy(&r.body).into_owned())
}

/// A refusal: a negative MDN, an HTTP error, or 503 (the budget is taken: retry later).
fn assert_refused(what: &str, status: u16, body: &str) {
    let negative_mdn = status == 200 && body.contains("processed/error");
    assert!(
        negative_mdn || (400..600).contains(&status),
        "{what}: expected a refusal, got {status}:\n{body}"
    );
}

/// The messages stored (a refused request is recorded too, with no files).
fn stored(fx: &Fixture) -> Vec<Message> {
    fx.messages()
        .into_iter()
        .filter(|m| m.state != "refused")
        .collect()
}

fn blob_count(fx: &Fixture) -> usize {
    files_in(&fx.state_dir.join("blobs")).len()
}

/// `VmHWM` (peak resident memory) and `VmRSS` of `pid`, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn assert_answers_health(daemon: &Daemon) {
    let health = daemon.get("/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

#[test]
fn resource_exhaustion_compression_bombs_are_refused_one_and_twenty_at_once_within_the_memory_budget(
) {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, _b) = pair(&fx);
    // The partner may send unsigned, unencrypted messages.
    fx.partner_set(
        &a,
        &["--require-signature", "no", "--require-encryption", "no"],
    );
    let daemon = start_daemon_with(&fx, None, &serve_settings());
    assert_answers_health(&daemon);
    let blobs = blob_count(&fx);
    let bomb = zero_bomb(1 << 30);
    assert!(
        (bomb.len() as u64) < 2 * MIB,
        "the bomb is {} bytes",
        bomb.len()
    );
    let ct = "application/pkcs7-mime; smime-type=compressed-data; name=smime.p7z";
    let (idle_peak, _) = memory_of(daemon.pid());

    // One: refused once it passes its bound (100 × its body), not after inflating 1 GiB.
    let started = Instant::now();
    let (status, body) = post(&daemon, &as2_headers(&a, ct), &bomb);
    assert_refused("one bomb", status, &body);
    assert!(
        body.contains("decompression-failed"),
        "a lone bomb is refused for its size, not for a busy budget: {status}\n{body}"
    );
    let one = started.elapsed();
    let (peak_one, _) = memory_of(daemon.pid());

    // Twenty at once.
    let started = Instant::now();
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let (daemon, a, bomb) = (&daemon, &a, &bomb);
                s.spawn(move || post(daemon, &as2_headers(a, ct), bomb))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let twenty = started.elapsed();
    for (i, (status, body)) in results.iter().enumerate() {
        assert_refused(&format!("bomb {i}"), *status, body);
    }
    let busy = results.iter().filter(|(s, _)| *s == 503).count();
    let (peak, rss) = memory_of(daemon.pid());
    eprintln!(
        "compression bombs: body {} bytes inflating to 1 GiB; one refused in {one:?}, 20 in \
         {twenty:?} ({busy} of them 503 busy); VmHWM idle {} MiB, after one {} MiB, after \
         20 {} MiB (VmRSS now {} MiB); budget {} MiB + allowance {} MiB",
        bomb.len(),
        idle_peak / MIB,
        peak_one / MIB,
        peak / MIB,
        rss / MIB,
        BUDGET / MIB,
        ALLOWANCE / MIB
    );
    assert!(
        peak <= idle_peak + BUDGET + ALLOWANCE,
        "peak RSS {} MiB is over idle {} MiB + budget {} MiB + allowance {} MiB",
        peak / MIB,
        idle_peak / MIB,
        BUDGET / MIB,
        ALLOWANCE / MIB
    );

    // Nothing stored, and the daemon is fine.
    assert!(stored(&fx).is_empty(), "{:#?}", fx.messages());
    assert_eq!(blob_count(&fx), blobs);
    assert_answers_health(&daemon);
    assert!(daemon.exit_status(Duration::ZERO).is_none());
}

#[test]
fn resource_exhaustion_a_message_of_100000_parts_is_refused_and_the_daemon_still_answers() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, _b) = pair(&fx);
    // The partner may send unsigned, unencrypted messages.
    fx.partner_set(
        &a,
        &["--require-signature", "no", "--require-encryption", "no"],
    );
    let daemon = start_daemon_with(&fx, None, &serve_settings());
    let blobs = blob_count(&fx);
    let mut body = Vec::new();
    for i in 0..100_000 {
        body.extend_from_slice(
            format!("--PARTS\r\nContent-Type: text/plain\r\n\r\n{i}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(b"--PARTS--\r\n");
    assert!((body.len() as u64) < MAX_BODY, "{} bytes", body.len());
    let started = Instant::now();
    let (status, text) = post(
        &daemon,
        &as2_headers(&a, "multipart/related; boundary=PARTS; type=\"text/plain\""),
        &body,
    );
    eprintln!(
        "100,000 parts ({} bytes): answered {status} in {:?}",
        body.len(),
        started.elapsed()
    );
    assert_refused("100,000 parts", status, &text);
    assert!(stored(&fx).is_empty(), "{:#?}", fx.messages());
    assert_eq!(blob_count(&fx), blobs);
    assert_answers_health(&daemon);
    assert!(daemon.exit_status(Duration::ZERO).is_none());
}

#[test]
fn resource_exhaustion_a_compressed_message_within_the_bounds_is_delivered_and_one_over_them_refused(
) {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let (a, _b) = pair(&fx);
    // The partner may send unsigned, unencrypted messages.
    fx.partner_set(
        &a,
        &["--require-signature", "no", "--require-encryption", "no"],
    );
    let daemon = start_daemon_with(&fx, None, &serve_settings());
    // 4 MiB of EDI-like text in far fewer bytes: under the 16 MiB floor.
    let line = b"ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       ~\r\n";
    let payload: Vec<u8> = line.iter().copied().cycle().take(4 << 20).collect();
    let mut entity =
        b"Content-Type: application/edi-x12\r\nContent-Disposition: attachment; filename=\"po.x12\"\r\n\r\n"
            .to_vec();
    entity.extend_from_slice(&payload);
    let z = {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&entity).unwrap();
        enc.finish().unwrap()
    };
    let body = compressed_data(&z);
    let ct = "application/pkcs7-mime; smime-type=compressed-data; name=smime.p7z";
    let (status, text) = post(&daemon, &as2_headers(&a, ct), &body);
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("processed/error"), "{text}");
    let msgs = fx.messages();
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(msgs[0].files.len(), 1, "{msgs:#?}");
    assert_eq!(msgs[0].files[0].name, "po.x12");
    assert_eq!(msgs[0].files[0].sha256, sha256_hex(&payload));

    // 20 MiB from some 20 KiB: over the 16 MiB floor (the ratio allows 100 × 20 KiB), and
    // well within the budget, so refused for its own size.
    let blobs = blob_count(&fx);
    let over = zero_bomb(20 * MIB);
    assert!((over.len() as u64) < 64 * 1024, "{}", over.len());
    let (status, text) = post(&daemon, &as2_headers(&a, ct), &over);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("processed/error: decompression-failed"),
        "{text}"
    );
    assert_eq!(stored(&fx).len(), 1, "{:#?}", fx.messages());
    assert_eq!(blob_count(&fx), blobs);
}
