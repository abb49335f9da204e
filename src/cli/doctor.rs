//! `as2box doctor`: is this gateway able to work? Each check says what it found and, when
//! it fails or warns, the one command (or step) that fixes it.
//!
//! Doctor never changes anything: the database is opened read-only, external programs are
//! only asked (`sshd -t`, `nft list`), and the expected modes of the state folder are
//! worked out on a scratch copy of its shape (see [`check_state_perms`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use super::Global;
use crate::config::Config;

/// `as2box doctor`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example (monitoring runs it and alerts on exit status 1):\n  as2box doctor\n  as2box doctor --json\n\nChecks /dev/fuse and fuse3, the mount (alive, mount point root-owned and not\ngroup/other-writable), the sshd config (`sshd -t`), the SFTP port, `as2box serve`'s\n/health, the store (integrity, blobs, modes and owners), certificates (expired: fail;\nwithin 30 days: warn), free disk space, the accounts and the nftables table.\nExit status 0 when nothing fails (warnings allowed), 1 otherwise. Changes nothing."
)]
pub struct DoctorArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// The rendered configuration of the dedicated sshd instance.
    #[arg(long, value_name = "FILE", default_value = "/etc/as2box/sshd_config")]
    sshd_config: PathBuf,
    /// The account `as2box serve` runs as.
    #[arg(long, value_name = "USER", default_value = "as2box")]
    service_user: String,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but will not for long or is not as designed.
    Warn,
    /// Broken: something does not work.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Which check (stable, for monitoring): `fuse`, `mount`, `mount-point`, ...
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (for warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Warn,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    failed: usize,
    warnings: usize,
    checks: &'a [Check],
}

pub fn run(g: &Global, a: DoctorArgs) -> anyhow::Result<()> {
    let config = match g.load_config() {
        Ok(c) => c,
        Err(e) => {
            // Without settings most checks cannot know where to look: report and stop.
            let checks = vec![fail(
                "config",
                format!("{e:#}"),
                format!(
                    "correct {} (every setting and its default: /usr/share/doc/as2box/as2box.toml)",
                    g.config.display()
                ),
            )];
            return finish(&checks, a.json);
        }
    };
    let checks = run_checks(g, &a, &config);
    finish(&checks, a.json)
}

fn finish(checks: &[Check], json: bool) -> anyhow::Result<()> {
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warnings = checks.iter().filter(|c| c.status == Status::Warn).count();
    if json {
        super::print_json(&Report {
            ok: failed == 0,
            failed,
            warnings,
            checks,
        })?;
    } else {
        for c in checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{tag}  {:<13} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("      {:<13} fix: {fix}", "");
            }
        }
        println!(
            "doctor: {failed} failed, {warnings} warning(s), {} ok",
            checks.len() - failed - warnings
        );
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} check(s) failed; each says how to fix it"
    );
    Ok(())
}

/// Every check, in the order an admin would fix things.
pub fn run_checks(g: &Global, a: &DoctorArgs, config: &Config) -> Vec<Check> {
    let mut checks = vec![ok("config", config_source(&g.config))];
    checks.push(check_fuse());
    checks.extend(check_mount(&config.mount.path));
    checks.extend(check_mount_point(&config.mount.path));
    checks.push(check_sshd_config(&a.sshd_config));
    checks.push(check_port(config.sftp.port));
    checks.push(check_serve(&config.serve.http_listen));
    let service = crate::sysaccount::lookup(&a.service_user);
    checks.extend(check_accounts(
        &a.service_user,
        service.is_some(),
        &config.sftp.group,
    ));
    let store = check_store(&g.state_dir);
    let svc_gid = service.as_ref().map(|(_, gid, _)| *gid);
    checks.extend(store.checks);
    checks.extend(check_state_perms(&g.state_dir, svc_gid));
    if let Some(facts) = &store.facts {
        checks.extend(check_certificates(
            facts,
            service.as_ref().map(|(u, g, _)| (*u, *g)),
        ));
    }
    checks.push(check_disk(&g.state_dir));
    checks.push(check_nftables());
    checks
}

fn config_source(path: &Path) -> String {
    if path.exists() {
        format!("settings {}", path.display())
    } else {
        format!("no settings file {}: all defaults", path.display())
    }
}

// ---------------------------------------------------------------------------------------
// FUSE and the mount
// ---------------------------------------------------------------------------------------

fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn check_fuse() -> Check {
    let dev = std::fs::metadata("/dev/fuse");
    let is_char = dev
        .as_ref()
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false);
    if !is_char {
        return fail(
            "fuse",
            "/dev/fuse is missing",
            "modprobe fuse (in a container: give it /dev/fuse, e.g. --device /dev/fuse)",
        );
    }
    match find_program("fusermount3") {
        Some(p) => ok("fuse", format!("/dev/fuse present, {}", p.display())),
        None => fail(
            "fuse",
            "fusermount3 not found (the fuse3 package)",
            "apt install fuse3 (or dnf install fuse3)",
        ),
    }
}

/// The fstype of the mount at `path`, from /proc/self/mountinfo.
fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy().trim_end_matches('/').to_string();
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let point = fields.get(4).map(|p| unescape_mountinfo(p));
        if point.as_deref() == Some(want.as_str()) {
            // The last one listed is the one on top.
            found = fields.get(sep + 1).map(|s| s.to_string());
        }
    }
    found
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `f` on another thread and gives up after `timeout` (a hung FUSE mount blocks the
/// calling thread; the thread is left behind and the process exits anyway).
fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).ok()
}

fn check_mount(mnt: &Path) -> Vec<Check> {
    let shown = mnt.display().to_string();
    let Some(fstype) = mount_type(mnt) else {
        return vec![fail(
            "mount",
            format!("{shown} is not mounted"),
            format!("systemctl start as2box-mount (or: as2box mount {shown})"),
        )];
    };
    if !fstype.starts_with("fuse") {
        return vec![fail(
            "mount",
            format!("{shown} is a {fstype} mount, not the as2box FUSE mount"),
            format!("umount {shown}, then systemctl start as2box-mount"),
        )];
    }
    let path = mnt.to_owned();
    match with_timeout(Duration::from_secs(5), move || std::fs::read_dir(&path).map(|_| ())) {
        Some(Ok(())) => vec![ok("mount", format!("{shown} mounted and answering"))],
        Some(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => vec![fail(
            "mount",
            format!("{shown}: transport endpoint is not connected (the mount process died)"),
            format!("umount -l {shown} && systemctl restart as2box-mount"),
        )],
        Some(Err(e)) => vec![fail(
            "mount",
            format!("{shown}: {e}"),
            format!("journalctl -u as2box-mount; then umount -l {shown} && systemctl restart as2box-mount"),
        )],
        None => vec![fail(
            "mount",
            format!("{shown} does not answer within 5 s (the mount is hung)"),
            format!("systemctl restart as2box-mount (or: umount -l {shown})"),
        )],
    }
}

/// OpenSSH's chroot rule: every component of `<mount>/<user>` root-owned and not
/// group/other-writable. The mount itself answers for `<user>`; we check the path to it.
fn check_mount_point(mnt: &Path) -> Vec<Check> {
    let mut bad = Vec::new();
    let mut path = PathBuf::from("/");
    let mut components = vec![path.clone()];
    for c in mnt.components().skip(1) {
        path.push(c);
        components.push(path.clone());
    }
    for p in components {
        let q = p.clone();
        let meta = with_timeout(Duration::from_secs(5), move || std::fs::metadata(&q));
        match meta {
            Some(Ok(m)) => {
                if m.uid() != 0 || m.mode() & 0o022 != 0 {
                    bad.push((p, m.uid(), m.mode() & 0o7777));
                }
            }
            // A dead or hung mount: the mount check reports it; its parents are checked.
            Some(Err(e)) if p == mnt && e.raw_os_error() == Some(libc::ENOTCONN) => {}
            None if p == mnt => {}
            Some(Err(e)) => {
                return vec![fail(
                    "mount-point",
                    format!("{}: {e}", p.display()),
                    format!("mkdir -p {} && chmod 0755 {}", mnt.display(), mnt.display()),
                )]
            }
            None => {
                return vec![fail(
                    "mount-point",
                    format!("{}: no answer within 5 s", p.display()),
                    "check the file system holding it",
                )]
            }
        }
    }
    if bad.is_empty() {
        return vec![ok(
            "mount-point",
            format!(
                "{} and every folder above it root-owned, not group/other-writable",
                mnt.display()
            ),
        )];
    }
    bad.into_iter()
        .map(|(p, uid, mode)| {
            fail(
                "mount-point",
                format!(
                    "{} is owned by uid {uid} with mode {mode:04o}: sshd refuses to chroot below it",
                    p.display()
                ),
                format!("chown root:root {} && chmod go-w {}", p.display(), p.display()),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// sshd, the SFTP port, serve
// ---------------------------------------------------------------------------------------

/// Runs a program with a timeout; (exit success, stdout, stderr). None if it cannot run.
fn run_program(program: &str, args: &[&str], timeout: Duration) -> Option<(bool, String, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let mut err = child.stderr.take()?;
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (o, e) = (
        t_out.join().unwrap_or_default(),
        t_err.join().unwrap_or_default(),
    );
    Some((status.map(|s| s.success()).unwrap_or(false), o, e))
}

fn check_sshd_config(file: &Path) -> Check {
    let shown = file.display().to_string();
    if !file.exists() {
        return fail(
            "sshd-config",
            format!("{shown} is missing"),
            format!("as2box sshd-config > {shown}"),
        );
    }
    let Some(sshd) = find_program("sshd") else {
        return fail(
            "sshd-config",
            "sshd not found (the openssh-server package)",
            "apt install openssh-server (or dnf install openssh-server)",
        );
    };
    let sshd = sshd.to_string_lossy().into_owned();
    match run_program(&sshd, &["-t", "-f", &shown], Duration::from_secs(15)) {
        Some((true, _, _)) => ok("sshd-config", format!("{shown} accepted by {sshd} -t")),
        Some((false, _, err)) => {
            let first = err
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .to_string();
            let fix = if first.contains("privilege separation directory") {
                "mkdir -p /run/sshd (the as2box-sshd unit's RuntimeDirectory= does it)".to_string()
            } else {
                format!("as2box sshd-config > {shown} (render it again rather than editing it)")
            };
            fail(
                "sshd-config",
                format!("{sshd} -t -f {shown} refuses it: {first}"),
                fix,
            )
        }
        None => fail(
            "sshd-config",
            format!("{sshd} -t could not run"),
            "check the openssh-server installation",
        ),
    }
}

/// Ports in LISTEN state, from /proc/net/tcp and tcp6.
fn listening_ports() -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&"0A") {
                continue;
            }
            if let Some(port) = fields
                .get(1)
                .and_then(|l| l.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

fn check_port(port: u16) -> Check {
    if listening_ports().contains(&port) {
        ok("sftp-port", format!("port {port} is listening"))
    } else {
        fail(
            "sftp-port",
            format!("nothing listens on the SFTP port {port}"),
            "systemctl start as2box-sshd (journalctl -u as2box-sshd says why it stopped)",
        )
    }
}

/// Where to reach a listen address from this host: a wildcard means loopback.
fn local_addr(listen: &str) -> Option<std::net::SocketAddr> {
    let addr: std::net::SocketAddr = listen.parse().ok()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Some(std::net::SocketAddr::new(ip, addr.port()))
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let t = Duration::from_secs(3);
    let mut s = std::net::TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(4096).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn check_serve(listen: &str) -> Check {
    let Some(addr) = local_addr(listen) else {
        return fail(
            "serve",
            format!("serve.http_listen {listen:?} is not an address:port"),
            "set serve.http_listen like \"0.0.0.0:4080\"",
        );
    };
    let fix = "systemctl start as2box-serve (journalctl -u as2box-serve says why it stopped)";
    match http_get(addr, "/health") {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {
            ok("serve", format!("http://{addr}/health answers 200"))
        }
        Ok(r) => fail(
            "serve",
            format!(
                "http://{addr}/health answers {:?}",
                r.lines().next().unwrap_or("")
            ),
            fix,
        ),
        Err(e) => fail(
            "serve",
            format!("as2box serve does not answer on http://{addr}/health: {e}"),
            fix,
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------

fn group_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 65536];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into grp/buf, both owned here.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    rc == 0 && !result.is_null()
}

fn check_accounts(service_user: &str, service_exists: bool, sftp_group: &str) -> Vec<Check> {
    let sysusers = "systemd-sysusers /usr/lib/sysusers.d/as2box.conf";
    let mut checks = Vec::new();
    checks.push(if service_exists {
        ok("accounts", format!("service account {service_user} exists"))
    } else {
        fail(
            "accounts",
            format!("no service account {service_user} (as2box serve runs as it)"),
            format!("{sysusers} (or: useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {service_user}), then as2box init --service-user {service_user}"),
        )
    });
    checks.push(if group_exists(sftp_group) {
        ok("accounts", format!("SFTP group {sftp_group} exists"))
    } else {
        fail(
            "accounts",
            format!("no group {sftp_group} (sshd lets only its members in)"),
            format!("{sysusers} (or: groupadd --system {sftp_group})"),
        )
    });
    checks
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

type PartnerFacts = (String, String, bool, Vec<PathBuf>, Option<(bool, bool)>);

/// What doctor reads from the database.
struct StoreFacts {
    /// (station AS2 id, key file, certificate file)
    stations: Vec<(String, Option<PathBuf>, Option<PathBuf>)>,
    /// (user name, partner AS2 id, test, certificate files, what it must prove inbound:
    /// signature, encryption; None before schema 5)
    partners: Vec<PartnerFacts>,
}

struct StoreResult {
    checks: Vec<Check>,
    facts: Option<StoreFacts>,
}

/// The database, read-only. `Store::open` migrates an old schema (a change), so doctor
/// opens its own read-only connection; this is the only SQL outside `store/`, and it only
/// reads (integrity check, referenced blobs, key and certificate paths).
fn read_store(
    config_db: &Path,
    ops_db: &Path,
) -> Result<(String, BTreeSet<String>, StoreFacts), rusqlite::Error> {
    use rusqlite::{Connection, OpenFlags};
    let open = |db: &Path| -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(conn)
    };
    let ops = open(ops_db)?;
    let conn = open(config_db)?;
    let mut quick = Vec::new();
    for (db, c) in [(config_db, &conn), (ops_db, &ops)] {
        let r: Vec<String> = c
            .prepare("PRAGMA quick_check")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if r != ["ok"] {
            quick.push(format!("{}: {}", db.display(), r.join("; ")));
        }
        if config_db == ops_db {
            break;
        }
    }
    let blobs: BTreeSet<String> = ops
        .prepare(
            "SELECT blob FROM entries WHERE blob IS NOT NULL UNION SELECT blob FROM message_files",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let stations = conn
        .prepare("SELECT as2_id, key_path, cert_path FROM stations ORDER BY as2_id")?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?.map(PathBuf::from),
                r.get::<_, Option<String>>(2)?.map(PathBuf::from),
            ))
        })?
        .collect::<Result<_, _>>()?;
    // Schema 5 keeps several certificates per partner (`certs`, one path a line); a
    // database not migrated yet has one (`cert_path`).
    let columns: BTreeSet<String> = conn
        .prepare("SELECT name FROM pragma_table_info('partners')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let (certs, inbound) = if columns.contains("certs") {
        ("p.certs", "p.require_signature, p.require_encryption")
    } else {
        ("p.cert_path", "NULL, NULL")
    };
    let partners = conn
        .prepare(&format!(
            "SELECT u.name, p.as2_id, p.test, {certs}, {inbound} FROM partners p JOIN users u ON u.id = p.user_id ORDER BY u.name, p.as2_id, p.test"
        ))?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Option<String>>(3)?
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(PathBuf::from)
                    .collect(),
                match (r.get::<_, Option<bool>>(4)?, r.get::<_, Option<bool>>(5)?) {
                    (Some(sig), Some(enc)) => Some((sig, enc)),
                    _ => None,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    let quick = if quick.is_empty() {
        "ok".to_string()
    } else {
        quick.join("; ")
    };
    Ok((quick, blobs, StoreFacts { stations, partners }))
}

fn check_store(state_dir: &Path) -> StoreResult {
    let shown = state_dir.display();
    // The layout of store::perms: config.db (users, stations, partners) and data/as2box.db
    // (entries, messages); a folder an older as2box made has one as2box.db, until the
    // mount or the daemon migrates it.
    let (config_db, ops_db) = if state_dir.join("config.db").exists() {
        (
            state_dir.join("config.db"),
            state_dir.join("data/as2box.db"),
        )
    } else {
        (state_dir.join("as2box.db"), state_dir.join("as2box.db"))
    };
    let db = config_db.clone();
    if !db.exists() || !ops_db.exists() {
        return StoreResult {
            checks: vec![fail(
                "store",
                format!("{shown} holds no as2box database"),
                "as2box init --service-user as2box",
            )],
            facts: None,
        };
    }
    let (quick, blobs, facts) = match read_store(&config_db, &ops_db) {
        Ok(r) => r,
        Err(e) => {
            return StoreResult {
                checks: vec![fail(
                    "store",
                    format!("cannot read {}: {e}", db.display()),
                    "stop as2box-mount and as2box-serve, then restore the state folder from backup",
                )],
                facts: None,
            }
        }
    };
    let mut checks = Vec::new();
    checks.push(if quick == "ok" {
        ok(
            "store",
            format!("{}: PRAGMA quick_check ok", state_dir.display()),
        )
    } else {
        fail(
            "store",
            format!("PRAGMA quick_check: {quick}"),
            "stop as2box-mount and as2box-serve, then restore the state folder from backup (or sqlite3 .recover)",
        )
    });
    // Blob files are named by their hash: every referenced name must be a file under blobs/.
    let mut present = BTreeSet::new();
    collect_file_names(&state_dir.join("blobs"), &mut present);
    let missing: Vec<&String> = blobs.iter().filter(|b| !present.contains(*b)).collect();
    checks.push(if missing.is_empty() {
        ok("blobs", format!("all {} referenced blob(s) present", blobs.len()))
    } else {
        fail(
            "blobs",
            format!(
                "{} of {} referenced blob(s) missing (first: {})",
                missing.len(),
                blobs.len(),
                missing[0]
            ),
            "restore the state folder's blobs/ from backup; files whose content is lost cannot be served",
        )
    });
    StoreResult {
        checks,
        facts: Some(facts),
    }
}

fn collect_file_names(dir: &Path, names: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_file_names(&entry.path(), names),
            Ok(t) if t.is_file() => {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
            _ => {}
        }
    }
}

/// The modes and groups of the state folder against what `store::perms` gives it.
///
/// The expectations are not repeated here: doctor builds a scratch copy of the state
/// folder's shape (same folders; one empty file per kind of name in each folder) with
/// sentinel modes, lets [`crate::store::share_state_dir`] set it up as `as2box init` would,
/// and reads back what it set. So when the store's layout or its permission rules change,
/// this check follows without an edit. Only what `share_state_dir` sets is compared.
pub fn check_state_perms(state_dir: &Path, service_gid: Option<u32>) -> Vec<Check> {
    let name = "state-perms";
    let shown = state_dir.display().to_string();
    let top = match std::fs::metadata(state_dir) {
        Ok(m) => m,
        Err(e) => {
            return vec![fail(
                name,
                format!("{shown}: {e}"),
                "as2box init --service-user as2box",
            )]
        }
    };
    // Shared (setgid, a group other than root's) or root's alone.
    let shared_gid = (top.mode() & 0o2000 != 0 && top.gid() != 0).then_some(top.gid());
    let mut checks = Vec::new();
    if top.uid() != 0 {
        checks.push(fail(
            name,
            format!("{shown} is owned by uid {}, not root", top.uid()),
            format!("chown root {shown}"),
        ));
    }
    match (shared_gid, service_gid) {
        (None, Some(_)) => checks.push(fail(
            name,
            format!(
                "{shown} is root's alone: as2box serve (the service account) cannot open the store"
            ),
            "as2box init --service-user as2box",
        )),
        (Some(g), Some(s)) if g != s => checks.push(fail(
            name,
            format!("{shown} is shared with gid {g}, not the service account's group (gid {s})"),
            "as2box init --service-user as2box",
        )),
        _ => {}
    }
    match expected_perms(state_dir, shared_gid) {
        Ok(expect) => {
            let mut wrong = Vec::new();
            let mut seen = 0usize;
            compare_tree(state_dir, Path::new(""), &expect, &mut wrong, &mut seen);
            if wrong.is_empty() {
                checks.push(ok(
                    name,
                    format!(
                        "{shown}: {seen} entries with the modes and group of {}",
                        match shared_gid {
                            Some(g) => format!("a folder shared with gid {g}"),
                            None => "a root-only folder".into(),
                        }
                    ),
                ));
            } else {
                let n = wrong.len();
                let mut detail = wrong.into_iter().take(3).collect::<Vec<_>>().join("; ");
                if n > 3 {
                    detail += &format!("; and {} more", n - 3);
                }
                checks.push(fail(
                    name,
                    detail,
                    "as2box init --service-user as2box (applies the modes and group again)",
                ));
            }
        }
        Err(e) => checks.push(warn(
            name,
            format!("could not work out the expected modes: {e}"),
            "run doctor as root",
        )),
    }
    checks
}

/// Files are grouped by the shape of their name (digits and hex letters alike), so that a
/// folder of 100 000 blobs is one file in the scratch copy.
fn name_shape(name: &str) -> String {
    if name.len() >= 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return "<hex>".into();
    }
    name.chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect()
}

const SENTINEL_DIR: u32 = 0o701;
const SENTINEL_FILE: u32 = 0o001;

/// Expected (mode, gid) by relative path (folders) or relative folder + name shape (files);
/// None where `share_state_dir` sets nothing.
type Expect = BTreeMap<(PathBuf, String), (Option<u32>, Option<u32>)>;

fn expected_perms(state_dir: &Path, gid: Option<u32>) -> std::io::Result<Expect> {
    let scratch = std::env::temp_dir().join(format!("as2box-doctor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch)?;
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700))?;
    let shadow = scratch.join("state");
    let result = (|| {
        let mut made = Vec::new();
        mirror(state_dir, &shadow, Path::new(""), &mut made)?;
        let before: Vec<_> = made
            .iter()
            .map(|(k, p)| std::fs::symlink_metadata(p).map(|m| (k.clone(), p.clone(), m.gid())))
            .collect::<Result<_, _>>()?;
        crate::store::share_state_dir(&shadow, gid)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut expect = Expect::new();
        for (key, path, gid_before) in before {
            let m = std::fs::symlink_metadata(&path)?;
            let mode = m.mode() & 0o7777;
            let sentinel = if m.is_dir() {
                SENTINEL_DIR
            } else {
                SENTINEL_FILE
            };
            expect.insert(
                key,
                (
                    (mode != sentinel).then_some(mode),
                    (m.gid() != gid_before).then_some(m.gid()),
                ),
            );
        }
        Ok(expect)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn mirror(
    real: &Path,
    shadow: &Path,
    rel: &Path,
    made: &mut Vec<((PathBuf, String), PathBuf)>,
) -> std::io::Result<()> {
    std::fs::create_dir(shadow)?;
    std::fs::set_permissions(shadow, std::fs::Permissions::from_mode(SENTINEL_DIR))?;
    made.push(((rel.to_owned(), String::new()), shadow.to_owned()));
    let mut shapes = BTreeSet::new();
    for entry in std::fs::read_dir(real)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ft.is_dir() {
            mirror(&entry.path(), &shadow.join(&name), &rel.join(&name), made)?;
        } else if ft.is_file() {
            let shape = name_shape(&name);
            if shapes.insert(shape.clone()) {
                let p = shadow.join(&name);
                std::fs::write(&p, b"")?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(SENTINEL_FILE))?;
                made.push(((rel.to_owned(), shape), p));
            }
        }
    }
    Ok(())
}

fn compare_tree(
    dir: &Path,
    rel: &Path,
    expect: &Expect,
    wrong: &mut Vec<String>,
    seen: &mut usize,
) {
    let check = |path: &Path, key: (PathBuf, String), wrong: &mut Vec<String>| {
        let Ok(m) = std::fs::symlink_metadata(path) else {
            return;
        };
        let Some((mode, gid)) = expect.get(&key) else {
            return;
        };
        if let Some(want) = mode {
            let have = m.mode() & 0o7777;
            if have != *want {
                wrong.push(format!(
                    "{} has mode {have:04o}, expected {want:04o}",
                    path.display()
                ));
            }
        }
        if let Some(want) = gid {
            if m.gid() != *want {
                wrong.push(format!(
                    "{} has group {}, expected gid {want}",
                    path.display(),
                    m.gid()
                ));
            }
        }
    };
    *seen += 1;
    check(dir, (rel.to_owned(), String::new()), wrong);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if ft.is_dir() {
            compare_tree(&entry.path(), &rel.join(&name), expect, wrong, seen);
        } else if ft.is_file() {
            *seen += 1;
            check(&entry.path(), (rel.to_owned(), name_shape(&name)), wrong);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

fn check_cert(name: &'static str, what: &str, path: &Path, fix: &str) -> Check {
    match crate::keys::read_cert(path).and_then(|c| crate::keys::days_left(&c)) {
        Ok(d) if d < 0 => fail(
            name,
            format!(
                "{what}: certificate {} EXPIRED {} day(s) ago",
                path.display(),
                -d
            ),
            fix,
        ),
        Ok(d) if d < crate::keys::WARN_DAYS => warn(
            name,
            format!(
                "{what}: certificate {} expires in {d} day(s)",
                path.display()
            ),
            fix,
        ),
        Ok(d) => ok(
            name,
            format!("{what}: certificate valid for {d} more day(s)"),
        ),
        Err(e) => fail(name, format!("{what}: {e}"), fix),
    }
}

/// Can the service account (uid, gid) read `path`? (Root reads everything.)
fn readable_by(m: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = m.mode();
    (m.uid() == uid && mode & 0o400 != 0)
        || (m.gid() == gid && mode & 0o040 != 0)
        || mode & 0o004 != 0
}

fn check_certificates(facts: &StoreFacts, service: Option<(u32, u32)>) -> Vec<Check> {
    let mut checks = Vec::new();
    for (station, key, cert) in &facts.stations {
        let what = format!("station {station}");
        let fix = format!("as2box station set {station} --generate-cert (or --key K.pem --cert C.pem), then give partners the new certificate");
        match cert {
            Some(cert) => checks.push(check_cert("certificates", &what, cert, &fix)),
            None => checks.push(warn(
                "certificates",
                format!("{what} has no key and certificate: it cannot sign or decrypt"),
                fix.clone(),
            )),
        }
        if let Some(key) = key {
            match std::fs::metadata(key) {
                Err(e) => checks.push(fail(
                    "keys",
                    format!("{what}: key {}: {e}", key.display()),
                    fix,
                )),
                Ok(m) if m.mode() & 0o007 != 0 => checks.push(fail(
                    "keys",
                    format!(
                        "{what}: private key {} is readable by everyone (mode {:04o})",
                        key.display(),
                        m.mode() & 0o7777
                    ),
                    format!(
                        "chmod 0640 {} && chgrp as2box {}",
                        key.display(),
                        key.display()
                    ),
                )),
                Ok(m) => match service {
                    Some((uid, gid)) if !readable_by(&m, uid, gid) => checks.push(fail(
                        "keys",
                        format!(
                            "{what}: the service account cannot read the private key {}",
                            key.display()
                        ),
                        format!(
                            "chgrp as2box {} && chmod 0640 {}",
                            key.display(),
                            key.display()
                        ),
                    )),
                    _ => checks.push(ok(
                        "keys",
                        format!(
                            "{what}: private key {} readable by the daemon only",
                            key.display()
                        ),
                    )),
                },
            }
        }
    }
    for (user, partner, test, certs, inbound) in &facts.partners {
        let what = format!(
            "partner {partner}{} of {user}",
            if *test { " (test)" } else { "" }
        );
        let fix = format!(
            "ask {partner} for its new certificate, then: as2box partner cert add --user {user} {partner}{} NEW.pem",
            if *test { " --test" } else { "" }
        );
        // An unreadable certificate is judged only when none can be read.
        let longest = crate::keys::longest_lasting(certs).or(certs.first());
        if let Some(cert) = longest {
            checks.push(check_cert("certificates", &what, cert, &fix));
        }
        if let Some((sig, enc)) = inbound {
            if !sig || !enc {
                let off = match (sig, enc) {
                    (false, false) => "unsigned and unencrypted",
                    (false, true) => "unsigned",
                    _ => "unencrypted",
                };
                checks.push(warn(
                    "inbound",
                    format!("{what} may send {off} messages: anyone who knows the two AS2 ids can"),
                    format!(
                        "unless {partner} really trades plain AS2: as2box partner set --user {user} {partner}{} --require-signature yes --require-encryption yes",
                        if *test { " --test" } else { "" }
                    ),
                ));
            }
        }
    }
    if checks.is_empty() {
        checks.push(ok(
            "certificates",
            "no stations or partner certificates yet",
        ));
    }
    checks
}

// ---------------------------------------------------------------------------------------
// Disk, nftables
// ---------------------------------------------------------------------------------------

fn check_disk(state_dir: &Path) -> Check {
    let name = "disk";
    let Ok(c) = std::ffi::CString::new(state_dir.as_os_str().as_encoded_bytes()) else {
        return fail(name, "bad state folder path", "use another --state-dir");
    };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into s, owned here.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return fail(
            name,
            format!(
                "statvfs {}: {}",
                state_dir.display(),
                std::io::Error::last_os_error()
            ),
            "as2box init --service-user as2box",
        );
    }
    let frsize = s.f_frsize as u64;
    let avail = s.f_bavail as u64 * frsize;
    let total = (s.f_blocks as u64 * frsize).max(1);
    let pct = avail as f64 * 100.0 / total as f64;
    let gib = avail as f64 / (1u64 << 30) as f64;
    let detail = format!(
        "{gib:.1} GiB ({pct:.0}%) free under {}",
        state_dir.display()
    );
    let fix = "free space on that file system (as2box gc removes expired files now; lower retention.files_hours)";
    let inodes_low = s.f_files > 0 && (s.f_favail as u64) < 1000;
    if avail < 256 << 20 || pct < 1.0 || inodes_low {
        fail(
            name,
            format!(
                "{detail}{}",
                if inodes_low {
                    ", almost no inodes left"
                } else {
                    ""
                }
            ),
            fix,
        )
    } else if avail < 2 << 30 || pct < 10.0 {
        warn(name, detail, fix)
    } else {
        ok(name, detail)
    }
}

fn check_nftables() -> Check {
    let name = "nftables";
    let fix = "nft -f /etc/as2box/as2box.nft (per-source limits on the SFTP port)";
    let Some(nft) = find_program("nft") else {
        return warn(
            name,
            "nft not found: no per-source connection limits on the SFTP port",
            format!("apt install nftables, then {fix}"),
        );
    };
    match run_program(
        &nft.to_string_lossy(),
        &["list", "table", "inet", "as2box"],
        Duration::from_secs(10),
    ) {
        Some((true, _, _)) => ok(name, "table inet as2box loaded"),
        _ => warn(
            name,
            "table inet as2box is not loaded: no per-source connection limits on the SFTP port",
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/srv/a\\040b"), "/srv/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn name_shapes_group_blobs_and_numbered_names() {
        assert_eq!(name_shape(&"ab".repeat(32)), "<hex>");
        assert_eq!(name_shape("as2box.db-wal"), "as0box.db-wal");
        assert_ne!(name_shape("as2box.db"), name_shape("audit.log"));
        assert_eq!(name_shape("spool-12"), "spool-00");
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            local_addr("0.0.0.0:4080").unwrap().to_string(),
            "127.0.0.1:4080"
        );
        assert_eq!(local_addr("[::]:4080").unwrap().to_string(), "[::1]:4080");
        assert!(local_addr("nonsense").is_none());
    }

    #[test]
    fn state_perms_follow_store_perms() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let blob = state.join("blobs/ab/".to_string() + &"ab".repeat(32));
        std::fs::create_dir_all(state.join("blobs/ab")).unwrap();
        std::fs::write(&blob, b"x").unwrap();
        std::fs::write(state.join("as2box.db"), b"").unwrap();
        // A group that is not root's: root may give files any group, others their own.
        // SAFETY: no preconditions.
        let gid = if unsafe { libc::geteuid() } == 0 {
            65534
        } else {
            unsafe { libc::getegid() }
        };
        if gid == 0 {
            return;
        }
        crate::store::share_state_dir(&state, Some(gid)).unwrap();
        let mode_failures = |checks: &[Check]| {
            checks
                .iter()
                .filter(|c| c.status == Status::Fail && c.detail.contains("mode"))
                .map(|c| c.detail.clone())
                .collect::<Vec<_>>()
        };
        // As `as2box init` left it: no complaint.
        let checks = check_state_perms(&state, Some(gid));
        assert!(mode_failures(&checks).is_empty(), "{checks:?}");
        // A blob made world-readable and a folder without its setgid bit are found.
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(
            state.join("blobs/ab"),
            std::fs::Permissions::from_mode(0o770),
        )
        .unwrap();
        let checks = check_state_perms(&state, Some(gid));
        let failures = mode_failures(&checks).join("\n");
        assert!(failures.contains("mode 0644, expected 0640"), "{failures}");
        assert!(failures.contains("mode 0770, expected 2770"), "{failures}");
    }
}
