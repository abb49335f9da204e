//! `as2box station`

use anyhow::Context;
use clap::Subcommand;

use super::{print_json, user::find, Global};
use crate::store::{InboxLayout, Station, Store};

#[derive(Debug, Subcommand)]
pub enum StationCommand {
    /// Add a station (one of our AS2 ids) to a user.
    #[command(
        after_help = "Example:\n  as2box station add --user acme ACME-AS2 --inbox-layout prefixed\n\nStation ids are unique across the gateway: incoming messages are routed by AS2-To."
    )]
    Add {
        /// Owner.
        #[arg(long)]
        user: String,
        /// The AS2 id.
        id: String,
        /// How delivered files are named in inboxes.
        #[arg(long, value_enum, default_value_t = InboxLayout::PerMessage)]
        inbox_layout: InboxLayout,
    },
    /// List stations.
    #[command(after_help = "Example:\n  as2box station list --user acme --json")]
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one station.
    #[command(after_help = "Example:\n  as2box station show ACME-AS2")]
    Show {
        /// The AS2 id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change a station.
    #[command(after_help = "Example:\n  as2box station set ACME-AS2 --inbox-layout plain")]
    Set {
        /// The AS2 id.
        id: String,
        /// New inbox layout.
        #[arg(long, value_enum)]
        inbox_layout: InboxLayout,
    },
    /// Remove a station and its mailboxes.
    #[command(after_help = "Example:\n  as2box station remove ACME-AS2 --force")]
    Remove {
        /// The AS2 id.
        id: String,
        /// Also when its mailboxes hold files (they are deleted).
        #[arg(long)]
        force: bool,
    },
}

fn get(store: &Store, id: &str) -> anyhow::Result<Station> {
    store
        .station(id)?
        .with_context(|| format!("no station {id:?} (see `as2box station list`)"))
}

#[derive(serde::Serialize)]
struct StationView {
    #[serde(flatten)]
    station: Station,
    user: String,
}

fn view(store: &Store, s: Station) -> anyhow::Result<StationView> {
    let user = store
        .user_by_id(s.user_id)?
        .map(|u| u.name)
        .unwrap_or_default();
    Ok(StationView { station: s, user })
}

pub fn run(g: &Global, c: StationCommand) -> anyhow::Result<()> {
    let store = g.open_store()?;
    match c {
        StationCommand::Add {
            user,
            id,
            inbox_layout,
        } => {
            crate::names::check_as2_id(&id)?;
            let u = find(&store, &user)?;
            let s = store.add_station(u.id, &id, inbox_layout)?;
            println!(
                "added station {} for user {} (inbox layout {})",
                s.as2_id,
                u.name,
                s.inbox_layout.as_str()
            );
            Ok(())
        }
        StationCommand::List { user, json } => {
            let uid = user.map(|u| find(&store, &u)).transpose()?.map(|u| u.id);
            let list = store
                .stations(uid)?
                .into_iter()
                .map(|s| view(&store, s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if json {
                return print_json(&list);
            }
            println!("{:<24} {:<16} INBOX LAYOUT", "STATION", "USER");
            for v in list {
                println!(
                    "{:<24} {:<16} {}",
                    v.station.as2_id,
                    v.user,
                    v.station.inbox_layout.as_str()
                );
            }
            Ok(())
        }
        StationCommand::Show { id, json } => {
            let v = view(&store, get(&store, &id)?)?;
            if json {
                return print_json(&v);
            }
            println!("station:      {}", v.station.as2_id);
            println!("user:         {}", v.user);
            println!("inbox layout: {}", v.station.inbox_layout.as_str());
            Ok(())
        }
        StationCommand::Set { id, inbox_layout } => {
            let s = get(&store, &id)?;
            store.set_station_layout(s.id, inbox_layout)?;
            println!("station {id}: inbox layout {}", inbox_layout.as_str());
            Ok(())
        }
        StationCommand::Remove { id, force } => {
            let s = get(&store, &id)?;
            store.remove_station(s.id, force)?;
            println!("removed station {id}");
            Ok(())
        }
    }
}
