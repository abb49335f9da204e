//! Harness for the SFTP system tests: a state folder, the real `as2box mount`, a real
//! `/usr/sbin/sshd` with the config that `as2box sshd-config` renders, system accounts made
//! by `as2box user add`, and the OpenSSH and paramiko clients. Everything is torn down in
//! `Drop` (also on panic): sshd and the mount are killed, the mount detached, the accounts
//! removed, the folder deleted.
//!
//! Runs as root with /dev/fuse and sshd when `AS2BOX_SYSTEM_TESTS=1` (skip.rs); then a
//! missing piece is a failure.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_as2box");
pub const SSHD: &str = "/usr/sbin/sshd";
/// Passphrase of every generated user key in the tests.
pub const PASSPHRASE: &str = "test passphrase 123";
/// Where test trees live: root-owned 0755 (OpenSSH's chroot rule; never /tmp).
pub const TEST_ROOT: &str = "/srv/as2box-test";

/// Why the system tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    if !Path::new(SSHD).exists() {
        return Some(format!("no {SSHD} (run scripts/setup-sftp-tests)"));
    }
    for tool in ["/usr/bin/sftp", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
        if !Path::new(tool).exists() {
            return Some(format!("no {tool} (run scripts/setup-sftp-tests)"));
        }
    }
    None
}

/// True when the test runs (the rule in skip.rs); then a missing prerequisite of the SFTP
/// tests fails it.
pub fn ready(test: &str) -> bool {
    if !crate::common::skip::system_tests_on(test) {
        return false;
    }
    if let Some(why) = missing() {
        panic!("AS2BOX_SYSTEM_TESTS is set but {test} cannot run: {why}");
    }
    true
}

/// The Python that has paramiko (AS2BOX_SFTP_PYTHON, default `<repo>/.venv-sftp`).
pub fn python() -> PathBuf {
    let p = std::env::var_os("AS2BOX_SFTP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-sftp/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import paramiko"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} cannot import paramiko: run scripts/setup-sftp-tests (or set AS2BOX_SFTP_PYTHON)",
        p.display()
    );
    p
}

/// Polls `f` until it returns Some or `secs` pass.
pub fn wait_for<T>(secs: f64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mix = (std::process::id() as u64)
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(t as u64)
        .wrapping_add(N.fetch_add(1, Ordering::Relaxed) as u64 * 0x85eb_ca6b);
    format!("{prefix}{:06x}", mix & 0xff_ffff)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_mounted(path: &Path) -> bool {
    let want = path.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want))
}

/// Output as text, for assertions.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A mailbox user with a key the clients can use.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// The encrypted private key as `as2box user add --private-key-out` wrote it.
    pub encrypted_key: PathBuf,
    /// The same key without passphrase (made with ssh-keygen -p), for batch clients.
    pub key: PathBuf,
}

/// Python run before every paramiko script: `connect()` returns a connected SFTPClient
/// for `USER` with `KEY` (and `PASS`) on `PORT`.
const PARAMIKO_PRELUDE: &str = r#"
import os, sys, time, paramiko
def connect():
    pk = paramiko.Ed25519Key.from_private_key_file(os.environ["KEY"], password=os.environ.get("PASS") or None)
    t = paramiko.Transport(("127.0.0.1", int(os.environ["PORT"])))
    t.connect(username=os.environ["USER"], pkey=pk)
    return paramiko.SFTPClient.from_transport(t)
"#;

/// One test's world: state, mount, sshd, users.
pub struct Env {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub mnt: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub sshd_config: PathBuf,
    pub sshd_log: PathBuf,
    pub mount_log: PathBuf,
    mount: Option<Child>,
    sshd: Option<Child>,
    users: Vec<String>,
    /// This harness forks sshd and the clients directly: keeps the mount tests out while it
    /// runs. The last field, so that it is released after the teardown in `Drop`.
    _gate: crate::common::gate::Pass,
}

impl Env {
    /// State, config, mount and sshd, all running.
    pub fn start() -> Env {
        Env::start_with("")
    }

    /// Like `start`, with extra TOML appended to the settings file.
    pub fn start_with(extra_toml: &str) -> Env {
        let gate = crate::common::gate::enter(crate::common::gate::Kind::DirectChildren);
        let root = Path::new(TEST_ROOT);
        std::fs::create_dir_all(root).unwrap();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = root.join(unique("sftp-"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.join("as2box.toml");
        std::fs::write(
            &config,
            format!(
                "[mount]\npath = \"{}\"\n{}{extra_toml}\n",
                mnt.display(),
                crate::common::passthrough_override()
            ),
        )
        .unwrap();
        let mut env = Env {
            state: dir.join("state"),
            sshd_config: dir.join("sshd_config"),
            sshd_log: dir.join("sshd.log"),
            mount_log: dir.join("mount.log"),
            port: free_port(),
            dir,
            mnt,
            config,
            mount: None,
            sshd: None,
            users: Vec::new(),
            _gate: gate,
        };
        env.ok(&["init"]);
        env.start_mount();
        // Host key and sshd config, rendered by as2box for this test's paths.
        let host_key = env.dir.join("ssh_host_ed25519_key");
        let o = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let rendered = env.ok(&[
            "sshd-config",
            "--port",
            &env.port.to_string(),
            "--listen",
            "127.0.0.1",
            "--host-key",
            host_key.to_str().unwrap(),
            "--pid-file",
            env.dir.join("sshd.pid").to_str().unwrap(),
        ]);
        std::fs::write(&env.sshd_config, rendered).unwrap();
        env.start_sshd();
        env
    }

    /// Runs `as2box ARGS` with this env's state and config.
    pub fn as2box(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `as2box ARGS`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.as2box(args);
        assert!(o.status.success(), "as2box {args:?} failed: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn start_mount(&mut self) {
        let log = std::fs::File::create(&self.mount_log).unwrap();
        let child = Command::new(BIN)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .arg("mount")
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.mount = Some(child);
        let mnt = self.mnt.clone();
        wait_for(20.0, "the mount", || is_mounted(&mnt).then_some(()));
    }

    /// Kills the mount process with SIGKILL (no clean unmount), and waits for it.
    pub fn kill_mount(&mut self) {
        if let Some(mut c) = self.mount.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the mount with SIGKILL, detaches the dead mount and starts a new one (what a
    /// crash and `as2box mount` again do).
    pub fn kill_and_restart_mount(&mut self) {
        self.kill_mount();
        detach(&self.mnt);
        self.start_mount();
    }

    /// Kills the mount with SIGKILL under a live session of `u` and restarts it in the same
    /// sshd, checking on the way what clients see:
    /// - the live session (paramiko, connected before the kill, with a file open for reading
    ///   and an upload half written) gets an error for every operation, promptly (no
    ///   hang), while the mount is dead, once its remains are detached, and after the
    ///   restart: its root stays the dead mount, so nothing becomes reachable through it;
    /// - new logins fail while the mount is dead and while the mount point is an empty
    ///   folder (sshd finds no keys and no chroot);
    /// - nothing of `hidden` (other users' names and data) shows in any of it;
    /// - after the restart `u` logs in again and the half-written upload does not exist.
    pub fn crash_and_restart_mount(&mut self, u: &User, hidden: &[&str]) {
        let pd = partner_dir(&u.name);
        self.deliver(
            u,
            false,
            "before-crash.edi",
            b"delivered before the crash\n",
        );
        let mut live = LiveSession::start(self, u);
        // Under FUSE passthrough the kernel writes an open upload into its spool file
        // without the mount, so those writes go on succeeding (into a file the restart
        // discards; the upload's close fails): docs/SEMANTICS.md "Durability".
        live.passthrough = std::fs::read_to_string(self.state.join("mount.status"))
            .is_ok_and(|s| s.contains("data_path = passthrough"));
        self.kill_mount();
        let dead = live.attempt("with the mount dead");
        let login = |env: &Env, when: &str| {
            let o = env.sftp(&u.name, &u.key, "ls -1a /\nls -1a /..\n");
            let t = text(&o);
            assert!(!o.status.success(), "login {when} must fail: {t}");
            for h in hidden {
                assert!(!t.contains(h), "{h} shows in a login {when}: {t}");
            }
        };
        login(self, "with the mount dead");
        // The first thing a restart does: detach the dead mount. Until the new one is up
        // the mount point is an empty root-owned folder, with no chroot inside.
        assert!(is_mounted(&self.mnt), "the dead mount is still attached");
        detach(&self.mnt);
        assert!(!is_mounted(&self.mnt));
        let empty = std::fs::read_dir(&self.mnt).unwrap().count();
        assert_eq!(empty, 0, "the folder under the mount point is empty");
        login(self, "with the mount point empty");
        let detached = live.attempt("with the dead mount detached");
        self.start_mount();
        wait_for(20.0, "logins after the restart", || {
            self.sftp(&u.name, &u.key, "ls -1 /\n")
                .status
                .success()
                .then_some(())
        });
        let restarted = live.attempt("after the restart");
        live.finish();
        for (when, out) in [
            ("with the mount dead", &dead),
            ("detached", &detached),
            ("after the restart", &restarted),
        ] {
            for h in hidden {
                assert!(
                    !out.contains(h),
                    "{h} shows in the live session {when}: {out}"
                );
            }
        }
        // The half-written upload died with the mount; the delivered file is intact.
        let out = self.sftp_ok(u, &format!("ls -1a {pd}/outbox\nls -1 {pd}/inbox/*\n"));
        assert!(!out.contains("half-written"), "{out}");
        assert!(out.contains("before-crash.edi"), "{out}");
        assert!(
            self.messages(&u.name)
                .iter()
                .all(|m| m["direction"] != "out"),
            "nothing was sent by the crashed session"
        );
    }

    fn start_sshd(&mut self) {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let o = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&self.sshd_config)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "sshd -t refused the rendered config: {}",
            text(&o)
        );
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&self.sshd_config)
            .arg("-E")
            .arg(&self.sshd_log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.sshd = Some(child);
        let port = self.port;
        wait_for(20.0, "sshd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
    }

    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(&self.sshd_log).unwrap_or_default()
    }

    /// A user with a generated key (encrypted with [`PASSPHRASE`]), one station and one
    /// production + test partner: `as2gateway/<name>-ST/<name>-P/`.
    pub fn user(&mut self) -> User {
        let name = unique("sf");
        let pass = self.dir.join("passphrase");
        std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
        let encrypted_key = self.dir.join(format!("{name}.key"));
        self.users.push(name.clone());
        self.ok(&[
            "user",
            "add",
            &name,
            "--private-key-out",
            encrypted_key.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ]);
        let key = self.decrypted_copy(&encrypted_key, PASSPHRASE);
        self.ok(&["station", "add", "--user", &name, &station(&name)]);
        self.ok(&[
            "partner",
            "add",
            "--user",
            &name,
            &partner(&name),
            "--url",
            "http://127.0.0.1:9/as2",
        ]);
        self.ok(&["partner", "add", "--user", &name, &partner(&name), "--test"]);
        User {
            name,
            encrypted_key,
            key,
        }
    }

    /// Copies an encrypted private key and removes the passphrase from the copy with
    /// OpenSSH's ssh-keygen (which also proves ssh-keygen reads what we wrote).
    pub fn decrypted_copy(&self, key: &Path, passphrase: &str) -> PathBuf {
        let copy = self.dir.join(format!(
            "{}.{}.plain",
            key.file_name().unwrap().to_str().unwrap(),
            unique("")
        ));
        std::fs::copy(key, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = Command::new("ssh-keygen")
            .args(["-q", "-p", "-P", passphrase, "-N", "", "-f"])
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ssh-keygen could not decrypt {}: {}",
            key.display(),
            text(&o)
        );
        copy
    }

    /// A fresh unencrypted key pair made by ssh-keygen: (private, public).
    pub fn own_key(&self, kind: &str) -> (PathBuf, PathBuf) {
        let p = self.dir.join(unique("own-"));
        let o = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-C", "partner-own", "-f"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let public = p.with_extension("pub");
        let with_pub = PathBuf::from(format!("{}.pub", p.display()));
        std::fs::rename(&with_pub, &public).unwrap();
        (p, public)
    }

    fn ssh_opts(&self, key: &Path) -> Vec<String> {
        vec![
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "ConnectTimeout=20".into(),
            "-o".into(),
            format!("IdentityFile={}", key.display()),
            "-F".into(),
            "/dev/null".into(),
        ]
    }

    /// Runs the OpenSSH `sftp` client in batch mode with `commands` (one per line). With
    /// batch mode, a failing command (not prefixed with `-`) ends the batch with status 1.
    pub fn sftp(&self, user: &str, key: &Path, commands: &str) -> Output {
        self.sftp_spawn(user, key, commands)
            .wait_with_output()
            .unwrap()
    }

    /// [`Env::sftp`] started, not waited for (output piped).
    pub fn sftp_spawn(&self, user: &str, key: &Path, commands: &str) -> std::process::Child {
        let batch = self.dir.join(unique("batch-"));
        std::fs::write(&batch, commands).unwrap();
        Command::new("sftp")
            .args(self.ssh_opts(key))
            .arg("-P")
            .arg(self.port.to_string())
            .arg("-b")
            .arg(&batch)
            .arg(format!("{user}@127.0.0.1"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `sftp` batch that must succeed; returns stdout.
    pub fn sftp_ok(&self, u: &User, commands: &str) -> String {
        let o = self.sftp(&u.name, &u.key, commands);
        assert!(
            o.status.success(),
            "sftp batch failed:\n{commands}\n{}\nsshd log:\n{}",
            text(&o),
            self.sshd_log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ssh` with extra arguments (before the destination) and a remote command.
    pub fn ssh(&self, user: &str, key: &Path, extra: &[&str], remote: &[&str]) -> Output {
        Command::new("ssh")
            .args(self.ssh_opts(key))
            .arg("-p")
            .arg(self.port.to_string())
            .args(extra)
            .arg(format!("{user}@127.0.0.1"))
            .args(remote)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a Python script with paramiko; `HOST`, `PORT`, `USER`, `KEY`, `PASS` are in
    /// its environment, and the script gets a connected `sftp` (paramiko SFTPClient) when
    /// it calls `connect()` from the prelude.
    pub fn paramiko(&self, u: &User, key: &Path, pass: Option<&str>, script: &str) -> Output {
        self.paramiko_spawn(u, key, pass, script)
            .wait_with_output()
            .unwrap()
    }

    /// [`Env::paramiko`] started, not waited for (output piped).
    pub fn paramiko_spawn(
        &self,
        u: &User,
        key: &Path,
        pass: Option<&str>,
        script: &str,
    ) -> std::process::Child {
        Command::new(python())
            .arg("-c")
            .arg(format!("{PARAMIKO_PRELUDE}\n{script}"))
            .env("PORT", self.port.to_string())
            .env("USER", &u.name)
            .env("KEY", key)
            .env("PASS", pass.unwrap_or(""))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The messages of a user (`as2box messages list --json`).
    pub fn messages(&self, user: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["messages", "list", "--user", user, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Delivers a file into the user's inbox (or test inbox) as if the partner had sent it.
    pub fn deliver(&self, u: &User, test: bool, name: &str, content: &[u8]) {
        let f = self.dir.join(unique("deliver-"));
        std::fs::write(&f, content).unwrap();
        let (st, pa) = (station(&u.name), partner(&u.name));
        let mut args = vec![
            "deliver",
            "--station",
            &st,
            "--partner",
            &pa,
            "--name",
            name,
        ];
        if test {
            args.push("--test");
        }
        args.push(f.to_str().unwrap());
        self.ok(&args);
    }

    /// A local file in the test folder with `content`.
    pub fn local(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// The paths in the user's chroot (for reading as root through the mount).
    pub fn tree(&self, u: &User) -> PathBuf {
        self.mnt.join(&u.name)
    }

    /// Number of processes running as the system account `name`.
    pub fn processes_of(&self, name: &str) -> usize {
        let Some(uid) = uid_of(name) else { return 0 };
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|s| s.parse::<u32>().is_ok())
            })
            .filter(|e| {
                std::fs::read_to_string(e.path().join("status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .is_some_and(|l| l.split_whitespace().next() == Some(&uid.to_string()))
            })
            .count()
    }
}

/// Detaches a mount (what `as2box mount` does first to a dead mount it finds).
fn detach(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: plain syscall with a valid C string.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// A paramiko session that stays connected while the test kills and restarts the mount.
/// Before the kill it has listed its inbox, opened a delivered file for reading and started
/// an upload; on each [`LiveSession::attempt`] it tries a set of operations, each of which
/// must fail with an error within a few seconds.
struct LiveSession {
    child: Child,
    /// Closed by `finish` (EOF ends the script).
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// The mount used FUSE passthrough (writes to an open upload bypass it).
    passthrough: bool,
}

/// Longest a single operation of the live session may take before it counts as hanging.
const LIVE_OP_SECS: f64 = 5.0;

impl LiveSession {
    const SCRIPT: &'static str = r#"
import io, json, socket
s = connect()
s.get_channel().settimeout(20)
pd = os.environ["PD"]
inbox = pd + "/inbox"
msg = [m for m in s.listdir(inbox) if "before-crash.edi" in s.listdir(inbox + "/" + m)][0]
reader = s.open(inbox + "/" + msg + "/before-crash.edi", "rb")
assert reader.read(9) == b"delivered"
writer = s.open(pd + "/outbox/half-written.edi", "wb")
writer.write(b"first half\n")
writer.flush()
print("READY " + json.dumps(s.listdir("/")), flush=True)
def attempt(name, f):
    t0 = time.time()
    try:
        r = f()
        res = ["ok", repr(r)[:300]]
    except Exception as e:
        res = ["error", type(e).__name__ + ": " + str(e)[:200]]
    return [name] + res + [round(time.time() - t0, 2)]
def chunk(f):
    f.write(b"second half\n")
    f.flush()
for line in sys.stdin:
    out = [
        attempt("listdir /", lambda: s.listdir("/")),
        attempt("listdir /..", lambda: s.listdir("/..")),
        attempt("stat inbox", lambda: s.stat(inbox)),
        attempt("read open file", lambda: (reader.seek(0), reader.read(100))),
        attempt("open inbox file", lambda: s.open(inbox + "/" + msg + "/before-crash.edi").read()),
        attempt("write open upload", lambda: chunk(writer)),
        attempt("new upload", lambda: s.putfo(io.BytesIO(b"new\n"), pd + "/outbox/new.edi")),
        attempt("mkdir", lambda: s.mkdir(pd + "/outbox/folder")),
    ]
    print(json.dumps(out), flush=True)
"#;

    fn start(env: &Env, u: &User) -> LiveSession {
        let mut child = Command::new(python())
            .arg("-c")
            .arg(format!("{}\n{}", PARAMIKO_PRELUDE, Self::SCRIPT))
            .env("PORT", env.port.to_string())
            .env("USER", &u.name)
            .env("KEY", &u.key)
            .env("PASS", "")
            .env("PD", partner_dir(&u.name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut live = LiveSession {
            child,
            stdin: Some(stdin),
            lines,
            passthrough: false,
        };
        let ready = live.line("the live session to connect", 30.0);
        assert!(ready.starts_with("READY "), "live session: {ready}");
        live
    }

    fn line(&mut self, what: &str, secs: f64) -> String {
        match self.lines.recv_timeout(Duration::from_secs_f64(secs)) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                panic!("no answer from {what} within {secs} s ({e})");
            }
        }
    }

    /// Runs the operations until all fail, and returns the last answers. Each round must
    /// answer promptly (no hang). The kernel may answer from what it cached before the
    /// kill, about the user's own tree only: attributes for up to the 1 s cache time (so
    /// rounds repeat for a few seconds), and the pages of a file the session holds open
    /// (that read may go on returning the file's own content).
    fn attempt(&mut self, when: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (out, all_failed) = self.round(when);
            if all_failed {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "operations of the live session still succeed {when}: {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One round of operations: (the answers, whether all failed).
    fn round(&mut self, when: &str) -> (String, bool) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
        let ops = 8.0;
        let out = self.line(
            &format!("the live session {when}"),
            ops * LIVE_OP_SECS + 10.0,
        );
        let answers: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(answers.len(), 8, "{out}");
        let mut all_failed = true;
        for a in &answers {
            let secs = a[3].as_f64().unwrap();
            assert!(secs < LIVE_OP_SECS, "{} took {secs} s {when}: {out}", a[0]);
            if a[1] == "ok" {
                if a[0] == "read open file" {
                    let got = a[2].as_str().unwrap();
                    assert!(got.contains("delivered before the crash"), "{when}: {out}");
                } else if a[0] == "write open upload" && self.passthrough {
                    // Into the spool file, which the restart discards.
                } else {
                    all_failed = false;
                }
            }
        }
        (out, all_failed)
    }

    fn finish(mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        // On a failed assertion: never leave the client behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The uid of a system account.
pub fn uid_of(name: &str) -> Option<u32> {
    let o = Command::new("id").args(["-u", name]).output().ok()?;
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// The station id `Env::user` gives a user.
pub fn station(user: &str) -> String {
    format!("{}-ST", user.to_uppercase())
}

/// The partner id `Env::user` gives a user.
pub fn partner(user: &str) -> String {
    format!("{}-P", user.to_uppercase())
}

/// `as2gateway/<station>/<partner>` for a user, as seen inside the chroot.
pub fn partner_dir(user: &str) -> String {
    format!("/as2gateway/{}/{}", station(user), partner(user))
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for name in std::mem::take(&mut self.users) {
            let o = self.as2box(&["user", "remove", "--force", &name]);
            if !o.status.success() {
                eprintln!("cleanup: as2box user remove {name}: {}", text(&o));
                // The account must not outlive the test even if the store is broken.
                if uid_of(&name).is_some() {
                    let _ = Command::new("pkill").args(["-KILL", "-u", &name]).status();
                    let _ = Command::new("userdel").arg(&name).status();
                }
            }
        }
        if let Some(mut c) = self.mount.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            detach(&self.mnt);
        }
        // Never walk into a mount.
        if !is_mounted(&self.mnt) && std::env::var_os("AS2BOX_KEEP_TEST_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Parses `ls -l`-style lines of the sftp client into name -> line.
pub fn listing(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter(|l| !l.starts_with("sftp>"))
        .filter_map(|l| {
            let name = l.split_whitespace().last()?;
            Some((name.rsplit('/').next().unwrap().to_owned(), l.to_owned()))
        })
        .collect()
}
