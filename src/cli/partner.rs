//! `as2box partner`

use anyhow::Context;
use clap::Subcommand;

use super::{print_json, user::find, Global};
use crate::store::{Partner, Store};

#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Add a trading partner to a user.
    #[command(
        after_help = "Example:\n  as2box partner add --user acme BIGCORP --url https://as2.bigcorp.example/as2\n  as2box partner add --user acme BIGCORP --test --url https://test.bigcorp.example/as2\n\nEvery station of the user gets a folder for the partner; a test partner's boxes are\nunder <partner>/test/."
    )]
    Add {
        /// Owner.
        #[arg(long)]
        user: String,
        /// The partner's AS2 id.
        id: String,
        /// A test partner.
        #[arg(long)]
        test: bool,
        /// The partner's AS2 URL.
        #[arg(long)]
        url: Option<String>,
    },
    /// List partners.
    #[command(after_help = "Example:\n  as2box partner list --user acme --json")]
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one partner.
    #[command(after_help = "Example:\n  as2box partner show --user acme BIGCORP")]
    Show {
        /// Owner.
        #[arg(long)]
        user: String,
        /// The partner's AS2 id.
        id: String,
        /// The test partner.
        #[arg(long)]
        test: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change a partner.
    #[command(
        after_help = "Example:\n  as2box partner set --user acme BIGCORP --url https://as2.bigcorp.example/as2"
    )]
    Set {
        /// Owner.
        #[arg(long)]
        user: String,
        /// The partner's AS2 id.
        id: String,
        /// The test partner.
        #[arg(long)]
        test: bool,
        /// New URL.
        #[arg(long)]
        url: String,
    },
    /// Remove a partner and its mailboxes.
    #[command(after_help = "Example:\n  as2box partner remove --user acme BIGCORP --force")]
    Remove {
        /// Owner.
        #[arg(long)]
        user: String,
        /// The partner's AS2 id.
        id: String,
        /// The test partner.
        #[arg(long)]
        test: bool,
        /// Also when its mailboxes hold files (they are deleted).
        #[arg(long)]
        force: bool,
    },
}

fn get(store: &Store, user: &str, id: &str, test: bool) -> anyhow::Result<Partner> {
    let u = find(store, user)?;
    store.partner(u.id, id, test)?.with_context(|| {
        format!(
            "user {user:?} has no {}partner {id:?} (see `as2box partner list --user {user}`)",
            if test { "test " } else { "" }
        )
    })
}

#[derive(serde::Serialize)]
struct PartnerView {
    #[serde(flatten)]
    partner: Partner,
    user: String,
}

pub fn run(g: &Global, c: PartnerCommand) -> anyhow::Result<()> {
    let store = g.open_store()?;
    match c {
        PartnerCommand::Add {
            user,
            id,
            test,
            url,
        } => {
            crate::names::check_as2_id(&id)?;
            let u = find(&store, &user)?;
            let p = store.add_partner(u.id, &id, test, url.as_deref())?;
            println!(
                "added {}partner {} for user {}",
                if p.test { "test " } else { "" },
                p.as2_id,
                u.name
            );
            Ok(())
        }
        PartnerCommand::List { user, json } => {
            let uid = user.map(|u| find(&store, &u)).transpose()?.map(|u| u.id);
            let mut list = Vec::new();
            for p in store.partners(uid)? {
                let user = store
                    .user_by_id(p.user_id)?
                    .map(|u| u.name)
                    .unwrap_or_default();
                list.push(PartnerView { partner: p, user });
            }
            if json {
                return print_json(&list);
            }
            println!("{:<24} {:<5} {:<16} URL", "PARTNER", "TEST", "USER");
            for v in list {
                println!(
                    "{:<24} {:<5} {:<16} {}",
                    v.partner.as2_id,
                    if v.partner.test { "yes" } else { "no" },
                    v.user,
                    v.partner.url.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        PartnerCommand::Show {
            user,
            id,
            test,
            json,
        } => {
            let p = get(&store, &user, &id, test)?;
            if json {
                return print_json(&PartnerView { partner: p, user });
            }
            println!(
                "partner: {}{}",
                p.as2_id,
                if p.test { " (test)" } else { "" }
            );
            println!("user:    {user}");
            println!("url:     {}", p.url.as_deref().unwrap_or("-"));
            Ok(())
        }
        PartnerCommand::Set {
            user,
            id,
            test,
            url,
        } => {
            let p = get(&store, &user, &id, test)?;
            store.set_partner_url(p.id, Some(&url))?;
            println!("partner {id}: url {url}");
            Ok(())
        }
        PartnerCommand::Remove {
            user,
            id,
            test,
            force,
        } => {
            let p = get(&store, &user, &id, test)?;
            store.remove_partner(p.id, force)?;
            println!("removed {}partner {id}", if test { "test " } else { "" });
            Ok(())
        }
    }
}
