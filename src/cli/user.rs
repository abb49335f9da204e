//! `as2box user`

use anyhow::{bail, Context};
use clap::Subcommand;

use super::{print_json, Global};
use crate::store::{Store, User};
use crate::sysaccount;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a mailbox user and the system account that backs it.
    #[command(
        after_help = "Example:\n  as2box user add acme --quota 10737418240\n\nNames: latin letters, digits, '-' and '_', not starting with '-', at most 32.\nThe system account gets no shell and no home and joins the SFTP group."
    )]
    Add {
        /// User name (also the system account's name).
        name: String,
        /// Most bytes the user may store in all mailboxes together.
        #[arg(long)]
        quota: Option<u64>,
    },
    /// List users.
    #[command(after_help = "Example:\n  as2box user list --json")]
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one user with usage.
    #[command(after_help = "Example:\n  as2box user show acme")]
    Show {
        /// User name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change a user's settings.
    #[command(
        after_help = "Example:\n  as2box user set acme --quota 1073741824\n  as2box user set acme --no-quota"
    )]
    Set {
        /// User name.
        name: String,
        /// New quota in bytes.
        #[arg(long, conflicts_with = "no_quota")]
        quota: Option<u64>,
        /// Remove the quota.
        #[arg(long)]
        no_quota: bool,
    },
    /// Remove a user, their mailboxes and their system account.
    #[command(after_help = "Example:\n  as2box user remove acme --force")]
    Remove {
        /// User name.
        name: String,
        /// Also when files remain in the mailboxes (they are deleted).
        #[arg(long)]
        force: bool,
    },
}

/// The user called `name`, or a clear error.
pub(crate) fn find(store: &Store, name: &str) -> anyhow::Result<User> {
    store
        .user(name)?
        .with_context(|| format!("no user {name:?} (see `as2box user list`)"))
}

#[derive(serde::Serialize)]
struct UserView {
    #[serde(flatten)]
    user: User,
    used_bytes: u64,
    files: u64,
    stations: Vec<String>,
}

fn view(store: &Store, user: User) -> anyhow::Result<UserView> {
    Ok(UserView {
        used_bytes: store.usage(user.id)?,
        files: store.file_count(user.id)?,
        stations: store
            .stations(Some(user.id))?
            .into_iter()
            .map(|s| s.as2_id)
            .collect(),
        user,
    })
}

pub fn run(g: &Global, c: UserCommand) -> anyhow::Result<()> {
    match c {
        UserCommand::Add { name, quota } => {
            crate::names::check_user_name(&name)?;
            let config = g.load_config()?;
            let store = g.open_store()?;
            if store.user(&name)?.is_some() {
                bail!("user {name:?} already exists");
            }
            let account = sysaccount::ensure(&name, &config.sftp.group)?;
            let user = store.add_user(&name, account.uid, account.gid, quota)?;
            println!(
                "added user {} (system account uid {} gid {})",
                user.name, user.uid, user.gid
            );
            Ok(())
        }
        UserCommand::List { json } => {
            let store = g.open_store()?;
            let views = store
                .users()?
                .into_iter()
                .map(|u| view(&store, u))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if json {
                return print_json(&views);
            }
            println!(
                "{:<20} {:>7} {:>14} {:>14}  STATIONS",
                "NAME", "UID", "USED", "QUOTA"
            );
            for v in views {
                println!(
                    "{:<20} {:>7} {:>14} {:>14}  {}",
                    v.user.name,
                    v.user.uid,
                    v.used_bytes,
                    v.user
                        .quota
                        .map(|q| q.to_string())
                        .unwrap_or_else(|| "-".into()),
                    v.stations.join(", ")
                );
            }
            Ok(())
        }
        UserCommand::Show { name, json } => {
            let store = g.open_store()?;
            let v = view(&store, find(&store, &name)?)?;
            if json {
                return print_json(&v);
            }
            println!("user:      {}", v.user.name);
            println!("account:   uid {} gid {}", v.user.uid, v.user.gid);
            println!(
                "quota:     {}",
                v.user
                    .quota
                    .map(|q| format!("{q} bytes"))
                    .unwrap_or_else(|| "none".into())
            );
            println!("used:      {} bytes in {} file(s)", v.used_bytes, v.files);
            println!("stations:  {}", v.stations.join(", "));
            Ok(())
        }
        UserCommand::Set {
            name,
            quota,
            no_quota,
        } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            if quota.is_none() && !no_quota {
                bail!("nothing to change: give --quota BYTES or --no-quota");
            }
            store.set_quota(user.id, quota)?;
            println!(
                "user {name}: quota {}",
                quota
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| "none".into())
            );
            Ok(())
        }
        UserCommand::Remove { name, force } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            store.remove_user(user.id, force)?;
            sysaccount::remove(&name)?;
            println!("removed user {name}");
            Ok(())
        }
    }
}
