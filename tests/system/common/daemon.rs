//! Shared helpers for the tests of `as2box serve` (`tests/system/daemon_*.rs`): a running daemon
//! (killed when dropped, restartable, with the test-only failpoints), its `[serve]`
//! settings, a pair of stations that are each other's partners, and recursive listings.
//! `common::daemon`, used beside `common`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;

/// A running `as2box serve` (spawned through the harness's helper, which closes the
/// descriptors of other tests), killed when dropped.
pub struct Daemon {
    pid: u32,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its HTTPS port on 127.0.0.1, when started with TLS.
    pub https_port: Option<u16>,
    log: PathBuf,
    exited: AtomicBool,
}

static DAEMON_COUNT: AtomicUsize = AtomicUsize::new(0);

/// How to start a daemon beyond the fixture's config.
#[derive(Default, Clone, Copy)]
pub struct Launch<'a> {
    /// `AS2BOX_FAILPOINT`.
    pub failpoint: Option<&'a str>,
    /// Run as this uid/gid (the unprivileged service account).
    pub ids: Option<(u32, u32)>,
    /// Also wait for this HTTPS port.
    pub https_port: Option<u16>,
}

impl Daemon {
    /// Starts the daemon of `fx` (its config has the `[serve]` section from
    /// [`serve_config`]) with `failpoint` armed, and waits until it listens on `port`.
    pub fn start(fx: &Fixture, port: u16, failpoint: Option<&str>) -> Daemon {
        Daemon::launch(
            fx,
            port,
            Launch {
                failpoint,
                ..Launch::default()
            },
        )
    }

    /// [`Daemon::start`] with every option.
    pub fn launch(fx: &Fixture, port: u16, how: Launch<'_>) -> Daemon {
        let n = DAEMON_COUNT.fetch_add(1, Ordering::SeqCst);
        let log = fx.dir.join(format!("serve{n}.log"));
        let program = match how.ids {
            None => bin().to_string(),
            Some(_) => {
                // The build tree may be where the account cannot reach (e.g. under /root).
                use std::os::unix::fs::PermissionsExt;
                let copy = fx.dir.join("as2box-serve-bin");
                if !copy.exists() {
                    std::fs::copy(bin(), &copy).unwrap();
                    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                        .unwrap();
                }
                copy.to_string_lossy().into_owned()
            }
        };
        let args = vec![
            program,
            "--state-dir".into(),
            fx.state_dir.to_string_lossy().into_owned(),
            "--config".into(),
            fx.config.to_string_lossy().into_owned(),
            "serve".into(),
        ];
        let mut env = vec![("RUST_LOG".to_string(), "info".to_string())];
        if let Some(f) = how.failpoint {
            env.push(("AS2BOX_FAILPOINT".into(), f.into()));
        }
        let pid = spawner::call(spawner::Request::Spawn {
            args,
            env,
            ids: how.ids,
            log: log.to_string_lossy().into_owned(),
        })
        .pid;
        let d = Daemon {
            pid,
            port,
            https_port: how.https_port,
            log,
            exited: AtomicBool::new(false),
        };
        for p in std::iter::once(port).chain(how.https_port) {
            wait_until("the daemon to listen", Duration::from_secs(20), || {
                if let Some(status) = d.exit_status(Duration::ZERO) {
                    panic!("as2box serve exited ({status:?}) at start:\n{}", d.log());
                }
                std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
            });
        }
        d
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
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

    /// The exit status once the process ended within `timeout`.
    pub fn exit_status(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if self.exited.load(Ordering::SeqCst) {
            return None;
        }
        let w = wait_pid(self.pid, timeout);
        w.exited.then(|| {
            self.exited.store(true, Ordering::SeqCst);
            w.status()
        })
    }

    /// `kill -9` and wait for the exit.
    pub fn kill9(&self) {
        assert!(
            !self.exited.load(Ordering::SeqCst),
            "the daemon already exited"
        );
        // SAFETY: a signal to the process this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let status = self
            .exit_status(Duration::from_secs(20))
            .expect("the daemon to exit after SIGKILL");
        assert_eq!(signalled(&status), Some(libc::SIGKILL));
    }

    /// Sends `signal` and waits up to `timeout` for the exit.
    pub fn stop(&self, signal: i32, timeout: Duration) -> std::process::ExitStatus {
        // SAFETY: a signal to the process this test started.
        unsafe { libc::kill(self.pid as i32, signal) };
        self.exit_status(timeout).unwrap_or_else(|| {
            panic!(
                "the daemon did not exit within {timeout:?} of signal {signal}:\n{}",
                self.log()
            )
        })
    }

    /// Waits (up to `timeout`) for the daemon to kill itself at `failpoint`.
    pub fn expect_failpoint(&self, failpoint: &str, timeout: Duration) {
        let status = self
            .exit_status(timeout)
            .unwrap_or_else(|| panic!("the daemon did not stop at {failpoint}:\n{}", self.log()));
        assert_eq!(
            signalled(&status),
            Some(libc::SIGKILL),
            "exit {status:?}:\n{}",
            self.log()
        );
        assert!(
            self.log()
                .contains(&format!("failpoint {failpoint}: killing")),
            "{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.exited.load(Ordering::SeqCst) {
            // SAFETY: a signal to the process this test started.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            wait_pid(self.pid, Duration::from_secs(20));
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log {}:\n{}", self.log.display(), self.log());
        }
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

/// Appends the `[serve]` section (listening on `port`, `extra` lines) to the fixture's
/// config. Retries are fast unless `extra` says otherwise.
pub fn serve_config(fx: &Fixture, port: u16, extra: &str) {
    let mut config = std::fs::read_to_string(&fx.config).unwrap();
    config += &format!(
        "\n[serve]\nhttp_listen = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n{extra}\n"
    );
    if !extra.contains("retry_base_secs") {
        config += "retry_base_secs = 0.2\nretry_max_secs = 1.0\n";
    }
    std::fs::write(&fx.config, config).unwrap();
}

/// Writes a `[serve]` section for a free port (quick retries, 3 attempts) and starts
/// `as2box serve`; returns once it accepts connections.
pub fn start_daemon(fx: &Fixture) -> Daemon {
    start_daemon_with(fx, None, "")
}

/// [`start_daemon`] with an HTTPS listener (certificate and key files) and more `[serve]`
/// settings (TOML lines).
pub fn start_daemon_with(fx: &Fixture, https: Option<(&Path, &Path)>, extra: &str) -> Daemon {
    configure_and_launch(fx, https, extra, None)
}

/// [`start_daemon`] as the account `uid`/`gid` (the unprivileged service account).
pub fn start_daemon_as(fx: &Fixture, uid: u32, gid: u32) -> Daemon {
    configure_and_launch(fx, None, "", Some((uid, gid)))
}

fn configure_and_launch(
    fx: &Fixture,
    https: Option<(&Path, &Path)>,
    extra: &str,
    ids: Option<(u32, u32)>,
) -> Daemon {
    let port = free_port();
    let mut serve = String::from(extra);
    if !extra.contains("max_attempts") {
        serve += "max_attempts = 3\n";
    }
    let https_port = https.map(|(cert, key)| {
        let p = free_port();
        serve += &format!(
            "https_listen = \"127.0.0.1:{p}\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        p
    });
    serve_config(fx, port, &serve);
    Daemon::launch(
        fx,
        port,
        Launch {
            failpoint: None,
            ids,
            https_port,
        },
    )
}

/// A station's generated certificate file.
pub fn station_cert(fx: &Fixture, station: &str) -> PathBuf {
    fx.state_dir
        .join("keys")
        .join(format!("{station}.cert.pem"))
}

/// Two users whose stations (with generated keys) are each other's partners: (A's box
/// towards B, B's box towards A). Certificates: [`station_cert`].
pub fn pair(fx: &Fixture) -> (Mailbox, Mailbox) {
    let (ua, ub) = (fx.add_user(None), fx.add_user(None));
    let (sa, sb) = (fx.add_station(&ua, None), fx.add_station(&ub, None));
    for s in [&sa, &sb] {
        fx.cli_ok(&["station", "set", s, "--generate-cert"]);
    }
    fx.add_partner_id(&ua, &sb, false);
    fx.add_partner_id(&ub, &sa, false);
    (
        fx.mailbox_of(&ua, &sa, &sb, false),
        fx.mailbox_of(&ub, &sb, &sa, false),
    )
}

/// Every file under `dir`, recursively and sorted (as the caller's credentials allow).
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
    out.sort();
    out
}

/// Puts `data` as `name` into `from`'s outbox (as its user), waits for it in `to`'s inbox
/// and for the sent message to be delivered; returns what arrived.
pub fn send_through(
    fx: &Fixture,
    from: &Mailbox,
    to: &Mailbox,
    name: &str,
    data: &[u8],
) -> Vec<u8> {
    fx.as_user(&from.user, || {
        ok(ops::put(&from.outbox().join(name), data), "put")
    });
    let inbox = to.inbox();
    let got = wait_for(
        &format!("{name} in the partner's inbox"),
        Duration::from_secs(30),
        || {
            fx.as_user(&to.user, || {
                files_in(&inbox).into_iter().find(|p| p.ends_with(name))
            })
        },
    );
    let arrived = fx.as_user(&to.user, || ok(ops::read(&got), "read delivered"));
    wait_for(
        "the sent message to be delivered",
        Duration::from_secs(30),
        || {
            fx.out_messages(&from.user)
                .into_iter()
                .find(|m| m.state == "delivered" && m.name == name)
        },
    );
    arrived
}

/// Runs a command (through the harness's spawn helper) and asserts that it succeeded.
pub fn run_ok(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = run(&args, &[], None, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed TLS certificate for 127.0.0.1: (cert, key) under `dir` named `name`.
pub fn tls_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    run_ok(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// Points `from`'s partner entry at `to`'s station behind `url`.
pub fn link(fx: &Fixture, from: &Mailbox, to: &Mailbox, url: &str, extra: &[&str]) {
    let cert = station_cert(fx, &to.station).display().to_string();
    let mut args = vec![
        "partner",
        "set",
        "--user",
        &from.user.name,
        &from.partner,
        "--url",
        url,
        "--cert",
        &cert,
    ];
    args.extend_from_slice(extra);
    fx.cli_ok(&args);
}
