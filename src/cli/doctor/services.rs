//! What runs beside the store: the dedicated sshd (its config and port), `as2box serve`'s
//! /health, the accounts, free disk space and the nftables table.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{fail, find_program, ok, warn, Check};

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

pub(super) fn check_sshd_config(file: &Path) -> Check {
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

pub(super) fn check_port(port: u16) -> Check {
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

pub(super) fn check_serve(listen: &str) -> Check {
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

pub(super) fn check_accounts(
    service_user: &str,
    service_exists: bool,
    sftp_group: &str,
) -> Vec<Check> {
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
    checks.push(if crate::sysaccount::group_exists(sftp_group) {
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
// Disk, nftables
// ---------------------------------------------------------------------------------------

pub(super) fn check_disk(state_dir: &Path) -> Check {
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

pub(super) fn check_nftables() -> Check {
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
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            local_addr("0.0.0.0:4080").unwrap().to_string(),
            "127.0.0.1:4080"
        );
        assert_eq!(local_addr("[::]:4080").unwrap().to_string(), "[::1]:4080");
        assert!(local_addr("nonsense").is_none());
    }
}
