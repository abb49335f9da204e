//! `as2box sshd-config`: the configuration of the dedicated sshd instance.

use std::path::PathBuf;

use super::Global;
use crate::sftp::{self, SshdParams};

/// `as2box sshd-config`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example, the dedicated instance on port 9193 (the system sshd is untouched):\n  as2box sshd-config > /etc/as2box/sshd_config\n  /usr/sbin/sshd -t -f /etc/as2box/sshd_config && /usr/sbin/sshd -D -f /etc/as2box/sshd_config\n\nThe drop-in for the system sshd instead (see docs/SFTP.md for what it changes):\n  as2box sshd-config --dropin > /etc/ssh/sshd_config.d/as2box.conf"
)]
pub struct SshdConfigArgs {
    /// Port to listen on (default: sftp.port from the config file, 9193).
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on (repeat for several; default: every IPv4 and IPv6 address).
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Host key file (repeat for several; default: the system's /etc/ssh/ssh_host_*_key).
    #[arg(long = "host-key", value_name = "FILE")]
    host_keys: Vec<PathBuf>,
    /// The instance's pid file.
    #[arg(long, default_value = sftp::DEFAULT_PID_FILE)]
    pid_file: PathBuf,
    /// Mount point (default: mount.path from the config file).
    #[arg(long)]
    mount: Option<PathBuf>,
    /// sshd's PerSourceMaxStartups: unauthenticated connections at once per source address.
    #[arg(long, default_value_t = 20)]
    per_source_max_startups: u32,
    /// Print the drop-in for the system's /etc/ssh/sshd_config.d/ instead.
    #[arg(long)]
    dropin: bool,
}

pub fn run(g: &Global, a: SshdConfigArgs) -> anyhow::Result<()> {
    let config = g.load_config()?;
    let mount = a.mount.unwrap_or_else(|| config.mount.path.clone());
    if a.dropin {
        print!("{}", sftp::render_dropin(&mount, &config.sftp.group)?);
        return Ok(());
    }
    let mut p = SshdParams::new(
        mount,
        config.sftp.group.clone(),
        a.port.unwrap_or(config.sftp.port),
    );
    p.listen = a.listen;
    if !a.host_keys.is_empty() {
        p.host_keys = a.host_keys;
    }
    p.pid_file = a.pid_file;
    p.per_source_max_startups = a.per_source_max_startups;
    print!("{}", sftp::render_sshd_config(&p)?);
    Ok(())
}
