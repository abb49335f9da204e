//! One 1 GiB message through the real `as2box serve`, with its peak memory checked
//! (issue 12: bodies stream to spool files, never whole into memory).
//!
//! - received: a signed (sha256, detached) and encrypted (aes256-cbc) message of a 1 GiB
//!   random payload, built once by the `openssl cms` CLI streaming (BER, indefinite
//!   lengths) and POSTed from its file: a positive MDN, the payload stored byte-exact
//!   (its sha256 is a blob), and the daemon's peak RSS (`VmHWM`) at most 128 MiB;
//! - sent: a 1 GiB file put into an outbox through the mount goes out signed (sha256) and
//!   encrypted (aes256-cbc) to a loopback listener that captures the body; the `openssl
//!   cms` CLI decrypts and verifies the capture, the payload is byte-exact (sha256), and
//!   the daemon's peak RSS is at most 128 MiB.
//!
//! Runs alone (`gate::enter_alone`): gigabytes of disk traffic and seconds of crypto on a
//! shared machine would skew the other tests' timing. Its files are under the fixture's
//! folder, never /tmp.

use crate::common;
use crate::common::as2 as as2_common;
use crate::common::daemon as daemon_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use as2box::as2::headers::Headers;
use common::*;
use daemon_common::*;

const MIB: u64 = 1 << 20;
const PAYLOAD_BYTES: u64 = 1 << 30;
/// The peak resident memory `serve` may reach with a 1 GiB message (issue 12).
const PEAK_LIMIT: u64 = 128 * MIB;

/// `VmHWM` (peak resident memory) of `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/<pid>/status")
        * 1024
}

fn sha256_of_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish().iter().map(|b| format!("{b:02x}")).collect()
}

fn openssl_ok(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `bytes` random bytes to a new file `path` (OpenSSL's RNG through AES-CTR: fast,
/// incompressible) and returns their sha256.
fn random_file(path: &Path, bytes: u64) -> String {
    let mut key = [0u8; 16];
    openssl::rand::rand_bytes(&mut key).unwrap();
    let mut c = openssl::symm::Crypter::new(
        openssl::symm::Cipher::aes_128_ctr(),
        openssl::symm::Mode::Encrypt,
        &key,
        Some(&[0u8; 16]),
    )
    .unwrap();
    let zeros = vec![0u8; MIB as usize];
    let mut out = vec![0u8; MIB as usize + 16];
    let mut h = openssl::sha::Sha256::new();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..bytes / MIB {
        let n = c.update(&zeros, &mut out).unwrap();
        h.update(&out[..n]);
        f.write_all(&out[..n]).unwrap();
    }
    f.flush().unwrap();
    h.finish().iter().map(|b| format!("{b:02x}")).collect()
}

/// POSTs `headers` and the file `body` (streamed, with its length) to `url` on loopback;
/// returns the status and the response body.
fn post_file(url: &str, headers: &Headers, body: &Path) -> (u16, String) {
    let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
    let i = rest.find('/').unwrap();
    let (port, path) = (&rest[..i], &rest[i..]);
    let len = std::fs::metadata(body).unwrap().len();
    let mut s = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers.iter() {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    ));
    s.write_all(head.as_bytes()).unwrap();
    std::io::copy(&mut std::fs::File::open(body).unwrap(), &mut s).unwrap();
    let r = as2_common::read_http(&mut s).unwrap();
    (r.status(), String::from_utf8_lossy(&r.body).into_owned())
}

struct Keys {
    key: PathBuf,
    cert: PathBuf,
}

fn write_keys(dir: &Path, name: &str, kp: &as2box::as2::certs::KeyPair) -> Keys {
    let key = dir.join(format!("{name}.key.pem"));
    let cert = dir.join(format!("{name}.cert.pem"));
    std::fs::write(&key, kp.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(&cert, kp.cert.to_pem().unwrap()).unwrap();
    Keys { key, cert }
}

/// A user with a station (the test station key) and a partner `LARGE-PEER` (the test
/// partner key, not yet set up), and a work folder under the fixture's.
struct Setup {
    work: PathBuf,
    station_keys: Keys,
    peer_keys: Keys,
    user: User,
    station: String,
    peer: &'static str,
}

fn setup(fx: &Fixture) -> Setup {
    let work = fx.dir.join("large");
    std::fs::create_dir_all(&work).unwrap();
    let (ours, theirs) = as2_common::test_keys();
    let station_keys = write_keys(&work, "station", ours);
    let peer_keys = write_keys(&work, "peer", theirs);
    let user = fx.add_user(None);
    let station = fx.add_station(&user, None);
    fx.cli_ok(&[
        "station",
        "set",
        &station,
        "--key",
        &station_keys.key.display().to_string(),
        "--cert",
        &station_keys.cert.display().to_string(),
    ]);
    let peer = "LARGE-PEER";
    fx.add_partner_id(&user, peer, false);
    Setup {
        work,
        station_keys,
        peer_keys,
        user,
        station,
        peer,
    }
}

#[test]
fn large_a_1_gib_signed_encrypted_message_is_received_byte_exact_within_128_mib() {
    let _alone = common::gate::enter_alone(common::gate::Kind::MountDescriptors);
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let Setup {
        work,
        station_keys,
        peer_keys,
        user,
        station,
        peer,
    } = setup(&fx);
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &user.name,
        peer,
        "--url",
        "http://127.0.0.1:9/as2",
        "--cert",
        &peer_keys.cert.display().to_string(),
    ]);

    // The message, built by OpenSSL's CLI, streaming: entity, multipart/signed, envelope.
    let payload = work.join("payload.bin");
    random_file(&payload, PAYLOAD_BYTES);
    let payload_sha = sha256_of_file(&payload);
    let entity = work.join("entity.mime");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&entity).unwrap());
        f.write_all(
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\
              Content-Disposition: attachment; filename=\"large.bin\"\r\n\r\n",
        )
        .unwrap();
        std::io::copy(&mut std::fs::File::open(&payload).unwrap(), &mut f).unwrap();
        f.flush().unwrap();
    }
    std::fs::remove_file(&payload).unwrap();
    let signed = work.join("signed.mime");
    let p = |p: &Path| p.display().to_string();
    openssl_ok(&[
        "cms",
        "-sign",
        "-binary",
        "-stream",
        "-crlfeol",
        "-md",
        "sha256",
        "-in",
        &p(&entity),
        "-signer",
        &p(&peer_keys.cert),
        "-inkey",
        &p(&peer_keys.key),
        "-outform",
        "SMIME",
        "-out",
        &p(&signed),
    ]);
    std::fs::remove_file(&entity).unwrap();
    let enveloped = work.join("enveloped.der");
    openssl_ok(&[
        "cms",
        "-encrypt",
        "-binary",
        "-stream",
        "-aes-256-cbc",
        "-in",
        &p(&signed),
        "-outform",
        "DER",
        "-out",
        &p(&enveloped),
        &p(&station_keys.cert),
    ]);
    std::fs::remove_file(&signed).unwrap();

    let daemon = start_daemon(&fx);
    let mut h = Headers::new();
    h.push("AS2-Version", "1.2");
    h.push("AS2-From", peer);
    h.push("AS2-To", station.as_str());
    h.push("Message-ID", format!("<large-{}@test>", random_hex(8)));
    h.push("MIME-Version", "1.0");
    h.push(
        "Content-Type",
        "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
    );
    h.push("Content-Transfer-Encoding", "binary");
    h.push("Disposition-Notification-To", "test@example.com");
    let started = std::time::Instant::now();
    let (status, mdn) = post_file(&daemon.url("/as2"), &h, &enveloped);
    let took = started.elapsed();
    let peak = peak_rss(daemon.pid());
    eprintln!(
        "1 GiB received (signed sha256 + aes256-cbc) in {took:?}; serve VmHWM {} MiB",
        peak / MIB
    );
    assert_eq!(status, 200, "{mdn}");
    assert!(
        mdn.contains("processed") && !mdn.contains("processed/error"),
        "expected a positive MDN:\n{mdn}"
    );
    let blob = fx
        .state_dir
        .join("blobs")
        .join(&payload_sha[..2])
        .join(&payload_sha);
    assert!(
        blob.exists(),
        "the payload (sha256 {payload_sha}) is not among the stored blobs"
    );
    assert_eq!(sha256_of_file(&blob), payload_sha);
    assert!(
        peak <= PEAK_LIMIT,
        "serve's peak RSS {} MiB is over {} MiB",
        peak / MIB,
        PEAK_LIMIT / MIB
    );
}

/// Accepts one POST on `listener`, streams its body (Content-Length or chunked) into
/// `path` and answers 200 with an empty body; returns the request's header lines.
fn capture_one_post(
    listener: std::net::TcpListener,
    path: PathBuf,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let (s, _) = listener.accept().unwrap();
        let mut r = std::io::BufReader::with_capacity(1 << 20, s.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let lower = head.to_ascii_lowercase();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        if let Some(len) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<u64>().unwrap())
        {
            std::io::copy(&mut (&mut r).take(len), &mut out).unwrap();
        } else {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let n = u64::from_str_radix(size.trim(), 16).unwrap();
                if n == 0 {
                    break;
                }
                std::io::copy(&mut (&mut r).take(n), &mut out).unwrap();
                let mut crlf = String::new();
                r.read_line(&mut crlf).unwrap();
            }
        }
        out.flush().unwrap();
        let mut s = s;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        head
    })
}

#[test]
fn large_a_1_gib_message_is_sent_signed_and_encrypted_within_128_mib() {
    let _alone = common::gate::enter_alone(common::gate::Kind::MountDescriptors);
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(2 << 30),
        batch_quiet_secs: 1.0,
        ..Settings::default()
    }) else {
        return;
    };
    let Setup {
        work,
        station_keys,
        peer_keys,
        user,
        station,
        peer,
    } = setup(&fx);
    let (listener, port) = as2_common::listen();
    let url = format!("http://127.0.0.1:{port}/as2");
    fx.cli_ok(&[
        "partner",
        "set",
        "--user",
        &user.name,
        peer,
        "--url",
        &url,
        "--cert",
        &peer_keys.cert.display().to_string(),
        "--sign",
        "sha256",
        "--encrypt",
        "aes256-cbc",
        "--mdn",
        "none",
    ]);
    let captured = work.join("captured.body");
    let server = capture_one_post(listener, captured.clone());
    let daemon = start_daemon(&fx);

    // 1 GiB into the outbox through the mount, as the user, hashed as it is written.
    let mailbox = fx.mailbox_of(&user, &station, peer, false);
    let target = mailbox.outbox().join("large.bin");
    let payload_sha = fx.as_user(&user, || random_file(&target, PAYLOAD_BYTES));
    let started = std::time::Instant::now();
    let head = server.join().unwrap();
    let sent = wait_for(
        "the 1 GiB message to be sent",
        std::time::Duration::from_secs(300),
        || {
            fx.out_messages(&user)
                .into_iter()
                .find(|m| m.state == "delivered" && m.name == "large.bin")
        },
    );
    let took = started.elapsed();
    let peak = peak_rss(daemon.pid());
    eprintln!(
        "1 GiB sent (signed sha256 + aes256-cbc) in {took:?} after the close; serve VmHWM {} MiB",
        peak / MIB
    );
    assert_eq!(sent.state, "delivered");
    assert!(
        head.to_ascii_lowercase()
            .contains("smime-type=enveloped-data"),
        "{head}"
    );

    // What went over the wire opens with OpenSSL's CLI: decrypt, verify, same payload.
    let p = |p: &Path| p.display().to_string();
    let signed = work.join("signed.mime");
    openssl_ok(&[
        "cms",
        "-decrypt",
        "-binary",
        "-inform",
        "DER",
        "-in",
        &p(&captured),
        "-inkey",
        &p(&peer_keys.key),
        "-recip",
        &p(&peer_keys.cert),
        "-out",
        &p(&signed),
    ]);
    std::fs::remove_file(&captured).unwrap();
    // OpenSSL's S/MIME reader rewrites line ends in a binary part (it copies the part a
    // line at a time), so the two parts are cut here and verified detached: the content
    // is the bytes between the first delimiter line and the line break before the last
    // delimiter that opens the signature part.
    let mut f = std::fs::File::open(&signed).unwrap();
    let len = f.metadata().unwrap().len();
    let mut head = vec![0u8; 4096];
    let n = f.read(&mut head).unwrap();
    head.truncate(n);
    let text = String::from_utf8_lossy(&head).into_owned();
    let boundary = text
        .split("boundary=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a multipart/signed boundary")
        .to_string();
    let first = format!("--{boundary}\r\n");
    let content_start = (text.find(&first).expect("the first delimiter") + first.len()) as u64;
    use std::io::{Seek, SeekFrom};
    let tail_len = len.min(1 << 20);
    f.seek(SeekFrom::Start(len - tail_len)).unwrap();
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail).unwrap();
    let sig_delim = format!("\r\n--{boundary}\r\n");
    let at = tail
        .windows(sig_delim.len())
        .rposition(|w| w == sig_delim.as_bytes())
        .expect("the delimiter of the signature part");
    let content_end = len - tail_len + at as u64;
    let sig_part = &tail[at + sig_delim.len()..];
    let sig_text = String::from_utf8_lossy(sig_part).into_owned();
    let sig_body = &sig_text[sig_text.find("\r\n\r\n").unwrap() + 4..];
    let sig_body = &sig_body[..sig_body.find("\r\n--").unwrap()];
    let sig = as2box::as2::encoding::base64_decode(sig_body.as_bytes()).unwrap();
    let sig_file = work.join("signature.der");
    std::fs::write(&sig_file, sig).unwrap();
    let content = work.join("content.mime");
    f.seek(SeekFrom::Start(content_start)).unwrap();
    std::io::copy(
        &mut (&mut f).take(content_end - content_start),
        &mut std::fs::File::create(&content).unwrap(),
    )
    .unwrap();
    drop(f);
    std::fs::remove_file(&signed).unwrap();
    openssl_ok(&[
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        &p(&sig_file),
        "-content",
        &p(&content),
        "-noverify",
        "-certfile",
        &p(&station_keys.cert),
        "-out",
        "/dev/null",
    ]);
    // The verified entity: header block, blank line, the payload.
    let mut f = std::fs::File::open(&content).unwrap();
    let mut prefix = vec![0u8; 4096];
    let n = f.read(&mut prefix).unwrap();
    let blank = prefix[..n]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block")
        + 4;
    f.seek(SeekFrom::Start(blank as u64)).unwrap();
    let mut h = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got: String = h.finish().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, payload_sha, "the payload that went out differs");
    assert!(
        peak <= PEAK_LIMIT,
        "serve's peak RSS {} MiB is over {} MiB",
        peak / MIB,
        PEAK_LIMIT / MIB
    );
}
