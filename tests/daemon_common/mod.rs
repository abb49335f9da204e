//! Shared helpers for the tests of `as2box serve` (`tests/daemon_*.rs`): a running daemon
//! that is killed when dropped, a pair of stations that are each other's partners, and
//! recursive listings. Test files include it after `mod common;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::*;

/// A running `as2box serve`, killed when dropped.
pub struct Daemon {
    child: Child,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its HTTPS port on 127.0.0.1, when started with TLS.
    pub https_port: Option<u16>,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only the process this test started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A GET of `path`; the whole response as text.
    pub fn get(&self, path: &str) -> String {
        self.request(
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    }

    /// One raw request over plain HTTP (`head` ends with the blank line); the whole
    /// response as text.
    pub fn request(&self, head: &str, body: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        // The server may answer (413) before taking the whole body.
        let _ = s.write_all(body);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Appends a `[serve]` section for a free port on 127.0.0.1 (also the `public_url`) with
/// quick retries to the fixture's config and starts `as2box serve`; returns once it
/// accepts connections.
pub fn start_daemon(fx: &Fixture) -> Daemon {
    start_daemon_with(fx, None, "")
}

/// [`start_daemon`] with an HTTPS listener (certificate and key files) and more `[serve]`
/// settings (TOML lines).
pub fn start_daemon_with(fx: &Fixture, https: Option<(&Path, &Path)>, extra: &str) -> Daemon {
    spawn_daemon(fx, https, extra, None)
}

/// [`start_daemon`] as the account `uid`/`gid` (the unprivileged service account).
pub fn start_daemon_as(fx: &Fixture, uid: u32, gid: u32) -> Daemon {
    spawn_daemon(fx, None, "", Some((uid, gid)))
}

fn spawn_daemon(
    fx: &Fixture,
    https: Option<(&Path, &Path)>,
    extra: &str,
    ids: Option<(u32, u32)>,
) -> Daemon {
    let port = free_port();
    let mut serve = format!(
        "\n[serve]\nhttp_listen = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nretry_base_secs = 0.2\nmax_attempts = 3\n{extra}"
    );
    let https_port = https.map(|(cert, key)| {
        let p = free_port();
        serve += &format!(
            "https_listen = \"127.0.0.1:{p}\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        p
    });
    let config = std::fs::read_to_string(&fx.config).unwrap() + &serve;
    std::fs::write(&fx.config, config).unwrap();
    let log = fx.dir.join("serve.log");
    let mut cmd = match ids {
        None => command(bin()),
        Some((uid, gid)) => {
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            // The build tree may be where the account cannot reach (e.g. under /root).
            let copy = fx.dir.join("as2box-serve-bin");
            std::fs::copy(bin(), &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut c = command(&copy);
            c.uid(uid).gid(gid);
            c
        }
    };
    let child = cmd
        .arg("--state-dir")
        .arg(&fx.state_dir)
        .arg("--config")
        .arg(&fx.config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start as2box serve");
    let d = Daemon {
        child,
        port,
        https_port,
        log,
    };
    for p in std::iter::once(port).chain(https_port) {
        wait_until("the daemon to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
        });
    }
    d
}

/// Two users whose stations are each other's partners; returns (A's box towards B, B's box
/// towards A) and the stations' certificate files.
pub fn pair(fx: &Fixture) -> (Mailbox, Mailbox, String, String) {
    let (ua, ub) = (fx.add_user(None), fx.add_user(None));
    let (sa, sb) = (fx.add_station(&ua, None), fx.add_station(&ub, None));
    for s in [&sa, &sb] {
        fx.cli_ok(&["station", "set", s, "--generate-cert"]);
    }
    fx.add_partner_id(&ua, &sb, false);
    fx.add_partner_id(&ub, &sa, false);
    let cert = |s: &str| {
        fx.state_dir
            .join("keys")
            .join(format!("{s}.cert.pem"))
            .display()
            .to_string()
    };
    (
        fx.mailbox_of(&ua, &sa, &sb, false),
        fx.mailbox_of(&ub, &sb, &sa, false),
        cert(&sa),
        cert(&sb),
    )
}

/// Every file under `dir`, recursively (as the caller's credentials allow).
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p);
        }
    }
    out
}
