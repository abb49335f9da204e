//! `as2box serve`

use std::sync::Arc;

use super::Global;

/// `as2box serve`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  as2box serve\n  as2box serve --listen 127.0.0.1:4080\n\nRuns in the foreground until SIGTERM/SIGINT, as an unprivileged account that can read\nand write the state folder. Partners POST to http://HOST:4080/as2 (test partners to\n/as2/test); async MDNs come back to <serve.public_url>/as2/mdn. GET /health and\nGET /metrics (Prometheus) are for operations. Settings: [serve] in the config file."
)]
pub struct ServeArgs {
    /// Listen address for HTTP (overrides serve.http_listen).
    #[arg(long)]
    listen: Option<String>,
}

pub fn run(g: &Global, a: ServeArgs) -> anyhow::Result<()> {
    let mut config = g.load_config()?;
    if let Some(l) = a.listen {
        config.serve.http_listen = l;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        tracing::warn!("running as root: the AS2 daemon reads network input and needs no privileges; run it as the service account (as2box init --service-user, packaging/systemd/as2box-serve.service)");
    }
    let store = Arc::new(crate::store::Store::open_service(&g.state_dir)?);
    crate::daemon::serve(store, config, g.config.clone())?;
    Ok(())
}
