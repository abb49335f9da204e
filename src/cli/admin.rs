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

pub fn init(g: &Global) -> anyhow::Result<()> {
    Store::init(&g.state_dir).with_context(|| format!("initializing {}", g.state_dir.display()))?;
    restrict_state_dir(&g.state_dir)?;
    println!("as2box state folder ready: {}", g.state_dir.display());
    Ok(())
}

/// The database and blobs hold every user's files: root only.
fn restrict_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
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
