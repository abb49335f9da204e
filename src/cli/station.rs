//! `as2box station`

use anyhow::Context;
use clap::Subcommand;

use super::{print_json, user::find, Global};
use crate::keys;
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
    /// Change a station: inbox layout, or the key pair it signs and decrypts with.
    #[command(
        after_help = "Examples:\n  as2box station set ACME-AS2 --inbox-layout plain\n  as2box station set ACME-AS2 --pickup rename       # only a rename from x.part sends\n  as2box station set ACME-AS2 --key /etc/as2box/acme.key.pem --cert /etc/as2box/acme.cert.pem\n  as2box station set ACME-AS2 --generate-cert      # prints the certificate to give to partners"
    )]
    Set {
        /// The AS2 id.
        id: String,
        /// New inbox layout.
        #[arg(long, value_enum)]
        inbox_layout: Option<InboxLayout>,
        /// Private key file (PEM or DER, unencrypted).
        #[arg(long, requires = "cert", conflicts_with = "generate_cert")]
        key: Option<std::path::PathBuf>,
        /// Certificate file (PEM or DER) matching --key.
        #[arg(long, requires = "key")]
        cert: Option<std::path::PathBuf>,
        /// Generate a self-signed RSA-2048 pair (3 years) in <state>/keys/ and print the certificate.
        #[arg(long)]
        generate_cert: bool,
        /// What commits an upload in the station's outboxes: `close` (default: closing a
        /// file with a normal name sends it; a cancelled `put` closes normally too, and is
        /// sent truncated) or `rename` (only a rename from a temporary name such as
        /// `x.part`, or of a `.ready` folder, sends; a plain close holds the file).
        #[arg(long, value_enum)]
        pickup: Option<crate::store::PickupMode>,
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
    /// Set when the certificate is unreadable or expires within 30 days.
    warning: Option<String>,
}

fn view(store: &Store, s: Station) -> anyhow::Result<StationView> {
    let user = store
        .user_by_id(s.user_id)?
        .map(|u| u.name)
        .unwrap_or_default();
    let warning = s.cert_path.as_deref().and_then(keys::expiry_warning);
    if let Some(w) = &warning {
        tracing::warn!(station = %s.as2_id, "{w}");
    }
    Ok(StationView {
        station: s,
        user,
        warning,
    })
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
            println!(
                "{:<24} {:<16} {:<12} CERTIFICATE",
                "STATION", "USER", "INBOX"
            );
            for v in list {
                let cert = v
                    .station
                    .cert_path
                    .as_ref()
                    .map(|p| p.display().to_string());
                println!(
                    "{:<24} {:<16} {:<12} {}{}",
                    v.station.as2_id,
                    v.user,
                    v.station.inbox_layout.as_str(),
                    cert.as_deref().unwrap_or("-"),
                    v.warning
                        .map(|w| format!("  WARNING: {w}"))
                        .unwrap_or_default()
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
            println!("pickup:       on {}", v.station.pickup.as_str());
            let path = |p: &Option<std::path::PathBuf>| {
                p.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "-".into())
            };
            println!("key:          {}", path(&v.station.key_path));
            println!("certificate:  {}", path(&v.station.cert_path));
            if let Some(w) = v.warning {
                println!("WARNING:      {w}");
            }
            Ok(())
        }
        StationCommand::Set {
            id,
            inbox_layout,
            key,
            cert,
            generate_cert,
            pickup,
        } => {
            let s = get(&store, &id)?;
            if inbox_layout.is_none() && key.is_none() && !generate_cert && pickup.is_none() {
                anyhow::bail!(
                    "nothing to change: give --inbox-layout, --pickup, --key and --cert, or --generate-cert"
                );
            }
            if let Some(mode) = pickup {
                store.set_station_pickup(s.id, mode)?;
                println!("station {id}: uploads commit on {}", mode.as_str());
            }
            if let Some(layout) = inbox_layout {
                store.set_station_layout(s.id, layout)?;
                println!("station {id}: inbox layout {}", layout.as_str());
            }
            if let (Some(key), Some(cert)) = (&key, &cert) {
                let key = std::path::absolute(key)?;
                let cert = std::path::absolute(cert)?;
                keys::check_pair(&key, &cert)?;
                store.set_station_keys(s.id, &key, &cert)?;
                println!(
                    "station {id}: key {} certificate {}",
                    key.display(),
                    cert.display()
                );
                if let Some(w) = keys::expiry_warning(&cert) {
                    eprintln!("warning: {w}");
                }
            }
            if generate_cert {
                let dir = g.state_dir.join("keys");
                std::fs::create_dir_all(&dir)?;
                let file = id.replace(
                    |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                    "_",
                );
                let key = dir.join(format!("{file}.key.pem"));
                let cert = dir.join(format!("{file}.cert.pem"));
                let pem = keys::generate_self_signed(&id, &key, &cert)?;
                store.set_station_keys(s.id, &key, &cert)?;
                eprintln!(
                    "station {id}: new key {} and certificate {}; give partners this certificate:",
                    key.display(),
                    cert.display()
                );
                print!("{pem}");
            }
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
