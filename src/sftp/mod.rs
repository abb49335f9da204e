//! The OpenSSH side: the sshd configuration we render for the dedicated instance (and the
//! drop-in shipped as `sshd_config.d/as2box.conf`), user key pairs, and ending a user's
//! live sessions.
//!
//! We write no SSH server: stock `sshd` with `internal-sftp` serves the FUSE mount,
//! chrooted to `<mount>/<user>`. sshd reads each user's keys from the mount itself
//! (`AuthorizedKeysFile <mount>/%u/.ssh/authorized_keys`), with the user's own uid, so no
//! code of ours runs inside sshd and no account but the user's own can read the keys;
//! docs/SFTP.md explains that choice.

pub mod keys;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use keys::{check_public_key, describe, generate, CheckedKey, GeneratedKey, KeyType};

/// Errors of the SFTP side.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    /// A key could not be generated, parsed or encoded.
    #[error("key: {0}")]
    Key(String),
    /// The passphrase is unusable.
    #[error("passphrase: {0}")]
    Passphrase(String),
    /// A path cannot go into sshd_config.
    #[error("{0}")]
    Path(String),
    /// A file could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the rendered sshd configuration depends on.
#[derive(Debug, Clone)]
pub struct SshdParams {
    /// Port (9193 by default).
    pub port: u16,
    /// Addresses to listen on; empty means every address (IPv4 and IPv6).
    pub listen: Vec<String>,
    /// The mount point of `as2box mount`.
    pub mount: PathBuf,
    /// The system group of mailbox accounts.
    pub group: String,
    /// Host key files.
    pub host_keys: Vec<PathBuf>,
    /// The instance's pid file.
    pub pid_file: PathBuf,
    /// sshd's `PerSourceMaxStartups`: unauthenticated connections per source address.
    pub per_source_max_startups: u32,
}

/// Host keys of the dedicated instance by default: the system's, so that partners see
/// the same host key on port 22 and 9193 (`--host-key` chooses others).
pub const DEFAULT_HOST_KEYS: &[&str] = &[
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_rsa_key",
];

/// The pid file of the dedicated instance by default.
pub const DEFAULT_PID_FILE: &str = "/run/as2box-sshd.pid";

/// The folder every SFTP session starts in: the top of the chroot, where the user sees
/// `.ssh` and `as2gateway`, so that the guide's relative paths
/// (`put FILE as2gateway/<station>/<partner>/outbox/`) work as written.
pub const START_DIR: &str = "/";

impl SshdParams {
    /// Defaults for a mount point and group.
    pub fn new(mount: PathBuf, group: String, port: u16) -> SshdParams {
        SshdParams {
            port,
            listen: Vec::new(),
            mount,
            group,
            host_keys: DEFAULT_HOST_KEYS.iter().map(PathBuf::from).collect(),
            pid_file: PathBuf::from(DEFAULT_PID_FILE),
            per_source_max_startups: 20,
        }
    }
}

/// A path for sshd_config: absolute, and without characters that sshd's tokenizer would
/// split or expand (whitespace, quotes, `#`, `%`).
fn config_path(p: &Path) -> Result<String, SftpError> {
    let s = p
        .to_str()
        .ok_or_else(|| SftpError::Path(format!("{} is not UTF-8", p.display())))?;
    if !p.is_absolute() {
        return Err(SftpError::Path(format!("{s} must be an absolute path")));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'#%\\".contains(c))
    {
        return Err(SftpError::Path(format!(
            "{s}: sshd_config paths must not contain spaces, quotes, '#', '%' or '\\'"
        )));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// The `Match Group` block: everything that applies to mailbox users. Shared by the
/// dedicated instance's config and the drop-in for the system sshd.
pub fn render_match_block(mount: &Path, group: &str) -> Result<String, SftpError> {
    let mount = config_path(mount)?;
    if group.is_empty()
        || !group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(SftpError::Path(format!("bad group name {group:?}")));
    }
    let mut s = String::new();
    let _ = writeln!(s, "Match Group {group}");
    let _ = writeln!(
        s,
        "\t# Keys come from the mailbox mount, read by sshd with the user's own uid."
    );
    let _ = writeln!(s, "\tAuthorizedKeysFile {mount}/%u/.ssh/authorized_keys");
    let _ = writeln!(s, "\tAuthorizedKeysCommand none");
    let _ = writeln!(s, "\tAuthenticationMethods publickey");
    let _ = writeln!(s, "\tPubkeyAuthentication yes");
    let _ = writeln!(s, "\tPasswordAuthentication no");
    let _ = writeln!(s, "\tKbdInteractiveAuthentication no");
    let _ = writeln!(s, "\tHostbasedAuthentication no");
    let _ = writeln!(s, "\tMaxAuthTries 3");
    let _ = writeln!(
        s,
        "\t# Every component of this path is root-owned and not group/other-writable."
    );
    let _ = writeln!(s, "\tChrootDirectory {mount}/%u");
    let _ = writeln!(
        s,
        "\t# No -l: internal-sftp cannot log inside a chroot without /dev/log (as2box audits instead)."
    );
    // No -d: a session starts at the top of the chroot (START_DIR).
    let _ = writeln!(s, "\tForceCommand internal-sftp");
    let _ = writeln!(s, "\tPermitTTY no");
    let _ = writeln!(s, "\tDisableForwarding yes");
    let _ = writeln!(s, "\tAllowTcpForwarding no");
    let _ = writeln!(s, "\tAllowStreamLocalForwarding no");
    let _ = writeln!(s, "\tAllowAgentForwarding no");
    let _ = writeln!(s, "\tX11Forwarding no");
    let _ = writeln!(s, "\tPermitTunnel no");
    let _ = writeln!(s, "\tPermitListen none");
    let _ = writeln!(s, "\tPermitOpen none");
    let _ = writeln!(s, "\tPermitUserRC no");
    let _ = writeln!(s, "\tClientAliveInterval 60");
    let _ = writeln!(s, "\tClientAliveCountMax 3");
    Ok(s)
}

/// The drop-in for the system's `/etc/ssh/sshd_config.d/` (the repo's
/// `sshd_config.d/as2box.conf` is this, rendered for the defaults).
pub fn render_dropin(mount: &Path, group: &str) -> Result<String, SftpError> {
    let mut s = String::new();
    s.push_str(
        "# as2box: SFTP mailbox users in the system's sshd (an alternative to the dedicated\n",
    );
    s.push_str(
        "# instance that `as2box sshd-config` renders; see docs/SFTP.md before using it).\n",
    );
    s.push_str("# Rendered for the default mount point; `as2box sshd-config --dropin` renders it for yours.\n");
    s.push_str(
        "# It only adds a Match block: the port, LoginGraceTime and PerSourceMaxStartups are\n",
    );
    s.push_str(
        "# global settings of the system sshd, and stay the admin's. No Subsystem line: the\n",
    );
    s.push_str("# system config defines one already (a second is fatal), and ForceCommand overrides it.\n\n");
    s.push_str(&render_match_block(mount, group)?);
    Ok(s)
}

/// A complete sshd configuration for the dedicated instance:
/// `/usr/sbin/sshd -D -f FILE` runs with it as it is.
pub fn render_sshd_config(p: &SshdParams) -> Result<String, SftpError> {
    let mut s = String::new();
    s.push_str("# as2box: the dedicated sshd instance that serves the SFTP mailboxes.\n");
    s.push_str("# Rendered by `as2box sshd-config`; render it again rather than editing it.\n");
    s.push_str(
        "# Run: /usr/sbin/sshd -D -f THIS_FILE   (stock OpenSSH; the system sshd is untouched)\n\n",
    );
    let _ = writeln!(s, "Port {}", p.port);
    if p.listen.is_empty() {
        s.push_str("AddressFamily any\n");
    }
    for a in &p.listen {
        if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c == '#') {
            return Err(SftpError::Path(format!("bad listen address {a:?}")));
        }
        let _ = writeln!(s, "ListenAddress {a}");
    }
    for k in &p.host_keys {
        let _ = writeln!(s, "HostKey {}", config_path(k)?);
    }
    let _ = writeln!(s, "PidFile {}", config_path(&p.pid_file)?);
    s.push_str(
        "\n# Mailbox users only, public keys only.\n\
         AllowGroups ",
    );
    s.push_str(&p.group);
    s.push_str(
        "\n\
         PermitRootLogin no\n\
         UsePAM no\n\
         StrictModes yes\n\
         AuthenticationMethods publickey\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         HostbasedAuthentication no\n\
         PermitEmptyPasswords no\n\
         IgnoreRhosts yes\n\
         PermitUserEnvironment no\n\
         AuthorizedPrincipalsFile none\n\
         \n\
         # Connection limits (the nftables table in packaging/nftables limits new connections).\n\
         LoginGraceTime 30\n\
         MaxAuthTries 3\n\
         MaxSessions 4\n\
         # Per source, PerSourceMaxStartups refuses the connection over its limit; the global\n\
         # limit must not drop below it (a client opening 20 sessions at once gets them all),\n\
         # so random early drop starts only at 5 sources' worth.\n\
         MaxStartups 100:30:300\n",
    );
    let _ = writeln!(s, "PerSourceMaxStartups {}", p.per_source_max_startups);
    s.push_str(
        "PerSourceNetBlockSize 32:128\n\
         \n\
         # Nothing but SFTP.\n\
         DisableForwarding yes\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         AllowStreamLocalForwarding no\n\
         X11Forwarding no\n\
         PermitTunnel no\n\
         GatewayPorts no\n\
         PermitTTY no\n\
         PermitUserRC no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         Banner none\n\
         Compression no\n\
         TCPKeepAlive yes\n\
         UseDNS no\n\
         LogLevel VERBOSE\n\
         Subsystem sftp internal-sftp\n\n",
    );
    s.push_str(&render_match_block(&p.mount, &p.group)?);
    Ok(s)
}

/// Ends every process that runs as `uid` (a mailbox account has no shell: these are its
/// sshd sessions; their privileged monitors exit with them). Returns how many were
/// signalled.
pub fn end_sessions(uid: u32) -> usize {
    if uid == 0 {
        return 0;
    }
    let mut n = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let runs_as = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|l| {
                l.split_whitespace()
                    .any(|u| u.parse::<u32>().ok() == Some(uid))
            })
            .unwrap_or(false);
        // SAFETY: kill(2) on a pid read from /proc.
        if runs_as && unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            n += 1;
        }
    }
    n
}

/// Writes `text` to a new file readable by its owner only; refuses to overwrite, and
/// refuses a symlink under that name (`O_EXCL|O_NOFOLLOW`) rather than writing through it.
pub fn write_secret_file(path: &Path, text: &str) -> Result<(), SftpError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SftpError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_dropin_is_the_rendering_for_the_defaults() {
        let shipped = include_str!("../../sshd_config.d/as2box.conf");
        let rendered = render_dropin(Path::new("/srv/as2box/mnt"), "as2box-sftp").unwrap();
        assert_eq!(
            shipped, rendered,
            "run `as2box sshd-config --dropin > sshd_config.d/as2box.conf`"
        );
    }

    #[test]
    fn config_has_the_chroot_and_keys_of_the_mount() {
        let p = SshdParams::new("/srv/x/mnt/".into(), "g".into(), 2222);
        let c = render_sshd_config(&p).unwrap();
        assert!(c.contains("\tChrootDirectory /srv/x/mnt/%u\n"), "{c}");
        assert!(c.contains("\tAuthorizedKeysFile /srv/x/mnt/%u/.ssh/authorized_keys\n"));
        assert!(c.contains("Port 2222\n"));
        assert!(c.contains("PerSourceMaxStartups 20\n"));
        // internal-sftp drops words beyond about nine: keep the command short.
        let fc = c.lines().find(|l| l.contains("ForceCommand")).unwrap();
        assert!(fc.split_whitespace().count() <= 5, "{fc}");
    }

    #[test]
    fn paths_sshd_would_split_are_refused() {
        let p = SshdParams::new("/srv/my mnt".into(), "g".into(), 1);
        assert!(render_sshd_config(&p).is_err());
        let p = SshdParams::new("relative".into(), "g".into(), 1);
        assert!(render_sshd_config(&p).is_err());
    }
}
