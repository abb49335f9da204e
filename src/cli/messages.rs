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
    /// Show one message with its files and every state change.
    #[command(after_help = "Example:\n  as2box messages show 42 --json")]
    Show {
        /// Message id (from `messages list`).
        id: i64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(serde::Serialize)]
struct MessageView {
    #[serde(flatten)]
    message: crate::store::Message,
    events: Vec<crate::store::Event>,
}

pub fn run(g: &Global, c: MessagesCommand) -> anyhow::Result<()> {
    let store = g.open_store()?;
    match c {
        MessagesCommand::Show { id, json } => {
            let message = store
                .message(id)?
                .ok_or_else(|| anyhow::anyhow!("no message {id} (see `as2box messages list`)"))?;
            let v = MessageView {
                events: store.message_events(id)?,
                message,
            };
            if json {
                return print_json(&v);
            }
            let m = &v.message;
            println!(
                "message {} ({}) {} -> {}",
                m.id, m.direction, m.station, m.partner
            );
            println!(
                "user:    {}{}",
                m.user,
                if m.test { " (test partner)" } else { "" }
            );
            println!("name:    {}", m.name);
            println!(
                "state:   {}{}",
                m.state,
                m.detail
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
            for f in &m.files {
                println!(
                    "file:    {} ({} bytes, sha256 {})",
                    f.name, f.size, f.sha256
                );
            }
            for e in &v.events {
                println!(
                    "  {}  {}{}",
                    e.at,
                    e.state,
                    e.detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
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
