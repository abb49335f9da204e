//! Shared helpers for the AS2 integration tests: where the vectors and the
//! interop Python are.
#![allow(dead_code)]

use std::path::PathBuf;

use crate::common::skip::skip_or_fail;

/// The test vector folder (`AS2BOX_VECTORS`, default `<repo>/../shared/as2-vectors`).
pub fn vectors_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AS2BOX_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/as2-vectors"));
    if dir.join("README.md").is_file() && dir.join("cert_test.p12").is_file() {
        Some(dir)
    } else {
        skip_or_fail(&format!("AS2 vector folder {} is missing", dir.display()))
    }
}

/// Reads a vector file.
pub fn vector(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("reading vector {name}: {e}"))
}

/// The interop Python (`AS2BOX_PYTHON`, default `<repo>/.venv-interop/bin/python`)
/// with pyas2lib importable.
pub fn python() -> Option<PathBuf> {
    let py = std::env::var_os("AS2BOX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-interop/bin/python")
        });
    if !py.exists() {
        return skip_or_fail(&format!(
            "interop python {} is missing (run scripts/setup-interop)",
            py.display()
        ));
    }
    let ok = std::process::Command::new(&py)
        .args(["-c", "import pyas2lib"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return skip_or_fail(&format!(
            "{} cannot import pyas2lib (run scripts/setup-interop)",
            py.display()
        ));
    }
    Some(py)
}

/// The `openssl` command, if present.
pub fn openssl_cli() -> Option<PathBuf> {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(PathBuf::from("openssl"))
    } else {
        skip_or_fail("the openssl command is missing")
    }
}

use as2box::as2::certs::KeyPair;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};

/// A fresh self-signed RSA-2048 key pair valid from 2020 to 2040.
pub fn make_keypair(cn: &str) -> KeyPair {
    make_keypair_valid(cn, 1_577_836_800, 2_208_988_800)
}

/// A fresh self-signed RSA-2048 key pair valid from `not_before` to `not_after` (unix
/// seconds).
pub fn make_keypair_valid(cn: &str, not_before: i64, not_after: i64) -> KeyPair {
    let rsa = Rsa::generate(2048).unwrap();
    let key = PKey::from_rsa(rsa).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(0x1234).unwrap().to_asn1_integer().unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(not_after).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    KeyPair {
        key,
        cert: b.build(),
        chain: Vec::new(),
    }
}

/// Two key pairs shared by a test binary: (ours, partner's).
pub fn test_keys() -> &'static (KeyPair, KeyPair) {
    static K: std::sync::OnceLock<(KeyPair, KeyPair)> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        (
            make_keypair("as2box test station"),
            make_keypair("as2box test partner"),
        )
    })
}

/// 2026-11-28, a fixed "now" for tests.
pub const NOW: i64 = 1_795_824_000;

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 over std::net for the interop tests (127.0.0.1 only).

use as2box::as2::headers::Headers;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// An HTTP message as read off the wire.
#[derive(Debug)]
pub struct HttpMessage {
    /// Request line or status line.
    pub start: String,
    /// Header fields.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpMessage {
    /// The status code of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads one HTTP message (start line, headers, Content-Length body; or to
/// EOF without Content-Length).
pub fn read_http(stream: &mut TcpStream) -> std::io::Result<HttpMessage> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut r = BufReader::new(stream);
    let mut start = String::new();
    r.read_line(&mut start)?;
    let mut headers = Headers::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push(k.trim(), v.trim());
        }
    }
    let mut body = Vec::new();
    match headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(HttpMessage {
        start: start.trim_end().to_string(),
        headers,
        body,
    })
}

/// Writes a request or response with the given start line.
pub fn write_http(
    stream: &mut TcpStream,
    start: &str,
    headers: &Headers,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 1024);
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers.iter() {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()
}

/// POSTs to `url` (`http://127.0.0.1:PORT/path` only) and returns the response.
pub fn http_post(url: &str, headers: &Headers, body: &[u8]) -> HttpMessage {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .expect("loopback URLs only");
    let (port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let port: u16 = port.parse().expect("port");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut h = headers.clone();
    h.push("Host", format!("127.0.0.1:{port}"));
    write_http(&mut s, &format!("POST {path} HTTP/1.1"), &h, body).expect("write request");
    read_http(&mut s).expect("read response")
}

/// A loopback listener on a free port.
pub fn listen() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().unwrap().port();
    (l, port)
}

// ---------------------------------------------------------------------------
// The pyas2lib peer process (tests/peers/pyas2_peer.py).

use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};

/// A running pyas2lib peer.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<serde_json::Value>,
    backlog: Vec<serde_json::Value>,
    /// Port receiving AS2 messages.
    pub port: u16,
    /// Port receiving the async MDNs for what the peer sends.
    pub mdn_port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Peer {
    /// The driver script (`serve` is the peer, `bench-roundtrip` a benchmark).
    pub fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pyas2_peer.py")
    }

    /// Starts the peer with `peer_key` as its key and `our_cert` as partner.
    pub fn start(
        python: &std::path::Path,
        peer_key: &KeyPair,
        our_cert: &openssl::x509::X509,
    ) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("peer.pem");
        let mut pem = peer_key.key.private_key_to_pem_pkcs8().unwrap();
        pem.extend(peer_key.cert.to_pem().unwrap());
        std::fs::write(&key_path, pem).unwrap();
        let cert_path = dir.path().join("partner.pem");
        std::fs::write(&cert_path, our_cert.to_pem().unwrap()).unwrap();
        let mut cmd = Command::new(python);
        cmd.arg(Peer::script())
            .arg("serve")
            .arg("--key")
            .arg(&key_path)
            .arg("--partner-cert")
            .arg(&cert_path)
            .args(["--name", "pyas2peer", "--partner-name", "as2box"]);
        Peer::spawn(cmd, Some(dir))
    }

    /// Starts `cmd` (the driver's `serve` with its arguments), keeping `dir` (its key files)
    /// as long as the peer lives, and waits until it listens.
    pub fn spawn(mut cmd: Command, dir: Option<tempfile::TempDir>) -> Peer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the pyas2lib peer");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("peer: {line}"),
                }
            }
        });
        let mut p = Peer {
            child,
            stdin,
            events: rx,
            backlog: Vec::new(),
            port: 0,
            mdn_port: 0,
            _dir: dir,
        };
        let ev = p.wait_event(|v| v["event"] == "listening");
        p.port = ev["port"].as_u64().unwrap() as u16;
        p.mdn_port = ev["mdn_port"].as_u64().unwrap_or(0) as u16;
        p
    }

    /// Waits (up to 120 s) for an event matching `pred`; earlier events that
    /// do not match are kept for later calls. Peer errors fail the test.
    pub fn wait_event(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        self.wait_event_within("an event", Duration::from_secs(120), pred)
    }

    /// Like [`Peer::wait_event`], up to `timeout`, saying `what` it waited for if none came.
    pub fn wait_event_within(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no pyas2lib peer event within {timeout:?}: {what}"));
            if v["event"] == "error" {
                panic!("pyas2 peer error: {v}");
            }
            if pred(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// Every event so far (without waiting) that matches `pred`.
    pub fn drain(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        while let Ok(v) = self.events.try_recv() {
            self.backlog.push(v);
        }
        self.backlog.iter().filter(|v| pred(v)).cloned().collect()
    }

    /// Sends a command line.
    pub fn command(&mut self, cmd: &serde_json::Value) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{{\"cmd\":\"quit\"}}");
        let _ = self.stdin.flush();
        // End the process we started, by its handle (its pid).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// sha256 hex.
pub fn sha256_hex(data: &[u8]) -> String {
    openssl::sha::sha256(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// When `AS2BOX_FUZZ_CORPUS` names a directory, saves a capture (headers,
/// blank line, body) under `<dir>/<target>/` as fuzzing seed.
pub fn save_seed(target: &str, headers: &Headers, body: &[u8]) {
    let Some(dir) = std::env::var_os("AS2BOX_FUZZ_CORPUS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir).join(target);
    let _ = std::fs::create_dir_all(&dir);
    let mut data = headers.to_bytes();
    data.extend_from_slice(b"\r\n");
    data.extend_from_slice(body);
    let name = sha256_hex(&data);
    let _ = std::fs::write(dir.join(&name[..16]), data);
}
