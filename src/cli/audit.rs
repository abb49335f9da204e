//! `as2box audit`

use anyhow::Context;

use super::{print_json, Global};
use crate::audit::{parse_age, AuditLog};

/// `as2box audit`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  as2box audit --user acme --since 1h\n  as2box audit --since 2d --json\n\nEvery operation done through the mount is recorded: put (with bytes, sha256 and whether it\nwas picked up, held or interrupted), get, rm, rmdir, mkdir, rename, setstat, and refusals\nwith their errno."
)]
pub struct AuditArgs {
    /// Only this user's operations.
    #[arg(long)]
    user: Option<String>,
    /// How far back: 90s, 30m, 1h, 2d.
    #[arg(long, default_value = "1d")]
    since: String,
    /// JSON output (an array of objects).
    #[arg(long)]
    json: bool,
}

pub fn run(g: &Global, a: AuditArgs) -> anyhow::Result<()> {
    let age = parse_age(&a.since).with_context(|| {
        format!(
            "--since {:?}: use a number with s, m, h or d, e.g. 1h",
            a.since
        )
    })?;
    let log = AuditLog::new(&g.state_dir);
    let records = log
        .query(a.user.as_deref(), crate::timefmt::now_ms() - age)
        .context("reading the audit log")?;
    if a.json {
        return print_json(&records);
    }
    for r in records {
        let bytes = r.bytes.map(|b| format!(" {b} bytes")).unwrap_or_default();
        let sha = r.sha256.map(|s| format!(" sha256 {s}")).unwrap_or_default();
        println!(
            "{} {} (uid {}) {} {}{}{} -> {}",
            r.at, r.user, r.uid, r.op, r.path, bytes, sha, r.result
        );
    }
    Ok(())
}
