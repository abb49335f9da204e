//! `as2box messages`

use clap::Subcommand;

use super::{print_json, Global};

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// List messages, newest first.
    #[command(after_help = "Example:\n  as2box messages list --user acme --json")]
    List {
        /// Only this user's messages.
        #[arg(long)]
        user: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// JSON output (an array of objects).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(g: &Global, c: MessagesCommand) -> anyhow::Result<()> {
    let store = g.open_store()?;
    match c {
        MessagesCommand::List { user, limit, json } => {
            let user_id = match user {
                Some(name) => Some(super::user::find(&store, &name)?.id),
                None => None,
            };
            let list = store.messages(user_id, limit)?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:>6}  {:<3}  {:<12} {:<16} {:<16} {:<13} {:>5}  {:<24}  NAME",
                "ID", "DIR", "USER", "STATION", "PARTNER", "STATE", "FILES", "CREATED"
            );
            for m in list {
                let partner = if m.test {
                    format!("{} (test)", m.partner)
                } else {
                    m.partner.clone()
                };
                println!(
                    "{:>6}  {:<3}  {:<12} {:<16} {:<16} {:<13} {:>5}  {:<24}  {}",
                    m.id,
                    m.direction,
                    m.user,
                    m.station,
                    partner,
                    m.state,
                    m.files.len(),
                    m.created_at,
                    m.name
                );
                if let Some(d) = m.detail {
                    println!("        {d}");
                }
            }
            Ok(())
        }
    }
}
