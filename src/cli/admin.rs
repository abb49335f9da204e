//! `init`, `deliver`, `gc`.

use std::path::PathBuf;

use anyhow::Context;

use super::{print_json, Global};
use crate::mailbox::{self, IncomingFile};
use crate::store::Store;

/// `as2box deliver`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example: deliver two files into ACME's inbox for partner BIGCORP:\n  as2box deliver --station ACME --partner BIGCORP order1.edi order2.edi\n\nAttachment names are cleaned as if they came from the network (paths stripped, control\ncharacters replaced, length capped); --name gives a file another attachment name."
)]
pub struct DeliverArgs {
    /// The user (optional: the station already names it; checked if given).
    #[arg(long)]
    user: Option<String>,
    /// Our station's AS2 id (the message's AS2-To).
    #[arg(long)]
    station: String,
    /// The partner's AS2 id (the message's AS2-From).
    #[arg(long)]
    partner: String,
    /// Deliver through the test partner of that id.
    #[arg(long)]
    test: bool,
    /// Attachment name for the i-th file (repeat per file).
    #[arg(long = "name")]
    names: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Files to deliver, as one message.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// `as2box gc`
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  as2box gc --json")]
pub struct GcArgs {
    /// Print what was removed as JSON.
    #[arg(long)]
    json: bool,
}

/// `as2box init`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example, as root, with the service account the AS2 daemon runs as:\n  useradd --system --user-group --no-create-home --shell /usr/sbin/nologin as2box\n  as2box init --service-user as2box\n\nThe state folder holds every user's files. Without a service account it is root's\nalone (0700) and `as2box serve` must run as root. With one, the account's group reads the\nstate folder (2750) and the configuration (config.db: users, keys, stations, partners,\n0640) and writes only what the daemon must: data/as2box.db (messages, mailbox entries),\nblobs/ and its own spool serve-spool/. It can neither grant a login nor make root follow\na link (see docs/SECURITY.md). Running init again on an existing folder upgrades it (an\nolder single as2box.db is split) and applies the permissions."
)]
pub struct InitArgs {
    /// The account `as2box serve` runs as (default: `as2box`, when that account exists).
    #[arg(long, value_name = "USER")]
    service_user: Option<String>,
}

pub fn init(g: &Global, a: InitArgs) -> anyhow::Result<()> {
    let existed = g.state_dir.join("config.db").exists() || g.state_dir.join("as2box.db").exists();
    if existed {
        Store::open(&g.state_dir)
    } else {
        Store::init(&g.state_dir)
    }
    .with_context(|| format!("initializing {}", g.state_dir.display()))?;
    let service = match &a.service_user {
        Some(u) => Some((
            u.as_str(),
            crate::sysaccount::lookup(u).with_context(|| {
                format!("no account {u:?}: create it first, e.g. useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {u}")
            })?,
        )),
        None => crate::sysaccount::lookup("as2box").map(|acct| ("as2box", acct)),
    };
    let gid = service.as_ref().map(|(_, (_, gid, _))| *gid);
    crate::store::share_state_dir(&g.state_dir, gid)
        .with_context(|| format!("setting the permissions of {}", g.state_dir.display()))?;
    println!(
        "as2box state folder {}: {}",
        if existed { "up to date" } else { "ready" },
        g.state_dir.display()
    );
    match service {
        Some((name, _)) => println!(
            "shared with the group of {name:?}: run `as2box serve` as {name} (see packaging/systemd/as2box-serve.service)"
        ),
        None => println!(
            "root only: `as2box serve` must run as root; for an unprivileged daemon create the as2box account and run `as2box init --service-user as2box`"
        ),
    }
    Ok(())
}

pub fn deliver(g: &Global, a: DeliverArgs) -> anyhow::Result<()> {
    let store = g.open_store()?;
    if let Some(user) = &a.user {
        let u = store
            .user(user)?
            .with_context(|| format!("no user {user:?}"))?;
        let s = store
            .station(&a.station)?
            .with_context(|| format!("no station {:?}", a.station))?;
        anyhow::ensure!(
            s.user_id == u.id,
            "station {:?} does not belong to user {user:?}",
            a.station
        );
    }
    anyhow::ensure!(
        a.names.len() <= a.files.len(),
        "more --name options ({}) than files ({})",
        a.names.len(),
        a.files.len()
    );
    let mut files = Vec::new();
    for (i, path) in a.files.iter().enumerate() {
        anyhow::ensure!(path.is_file(), "{} is not a readable file", path.display());
        let name = match a.names.get(i) {
            Some(n) => n.clone(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        files.push(IncomingFile::Path {
            name,
            path: path.clone(),
        });
    }
    let d = mailbox::deliver(&store, &a.station, &a.partner, a.test, files, None)?;
    if a.json {
        print_json(&d)?;
    } else {
        println!("delivered as message {}:", d.message_id);
        for p in &d.paths {
            println!("  inbox/{p}");
        }
    }
    Ok(())
}

pub fn gc(g: &Global, a: GcArgs) -> anyhow::Result<()> {
    let config = g.load_config()?;
    let store = g.open_store()?;
    let r = mailbox::sweep(&store, &config, crate::timefmt::now_ms())?;
    if a.json {
        print_json(&r)?;
    } else {
        println!(
            "removed {} expired mailbox file(s)/folder(s), {} lingering outbox entr(y/ies), {} message record(s), {} unreferenced blob(s)",
            r.expired_files, r.lingering_removed, r.messages_removed, r.blobs_removed
        );
    }
    Ok(())
}
