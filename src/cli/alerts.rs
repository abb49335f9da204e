//! `as2box alerts`

use clap::Subcommand;

use super::Global;

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Send one test alert to the webhook and/or command of `[alerts]` in as2box.toml.
    ///
    /// The alert is a JSON object with "kind": "test"; the webhook gets it as a POST
    /// (one attempt, `timeout_secs`), the command on stdin. Says for each whether it was
    /// delivered, and exits 1 if one was not (or none is configured).
    #[command(
        after_help = "Example:\n  as2box alerts test\n\nas2box.toml:\n  [alerts]\n  webhook_url = \"http://127.0.0.1:9000/as2box\"\n  command = [\"/usr/bin/logger\", \"-t\", \"as2box\"]"
    )]
    Test,
}

pub fn run(g: &Global, c: AlertsCommand) -> anyhow::Result<()> {
    match c {
        AlertsCommand::Test => {
            let config = g.load_config()?;
            let delivery = crate::daemon::alerts::send_test(&config.alerts)?;
            if delivery.all_delivered() {
                println!("test alert: {delivery}");
                Ok(())
            } else {
                anyhow::bail!("test alert: {delivery}")
            }
        }
    }
}
