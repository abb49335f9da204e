//! `as2box mount`

use std::path::PathBuf;
use std::sync::Arc;

use super::Global;

/// `as2box mount`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  as2box mount /srv/as2box/mnt\n\nRuns in the foreground until SIGTERM/SIGINT or `umount`. The mount point must be a\nroot-owned folder whose parents are root-owned and not group/other-writable (OpenSSH's\nchroot rule); it cannot be under /tmp."
)]
pub struct MountArgs {
    /// Where to mount (default: mount.path from the config file, /srv/as2box/mnt).
    mountpoint: Option<PathBuf>,
}

pub fn run(g: &Global, a: MountArgs) -> anyhow::Result<()> {
    let config = g.load_config()?;
    let store = Arc::new(g.open_store()?);
    let path = a.mountpoint.unwrap_or_else(|| config.mount.path.clone());
    crate::fs::mount(store, config, &path)?;
    Ok(())
}
