//! `as2box doctor`: is this gateway able to work? Each check says what it found and, when
//! it fails or warns, the one command (or step) that fixes it.
//!
//! Doctor never changes anything: the database is opened read-only
//! (`Store::open_read_only`, no migration), external programs are only asked (`sshd -t`,
//! `nft list`), and the expected modes of the state folder are worked out on a scratch copy
//! of its shape (see [`state_perms::check_state_perms`]).
//!
//! One file per seam: `mount` (FUSE, the mount and its mount point), `services` (sshd, the
//! SFTP port, `as2box serve`, accounts, disk, nftables), `store` (the databases and blobs),
//! `state_perms` (modes and groups of the state folder), `certificates` (keys and
//! certificates of stations and partners).

mod certificates;
mod mount;
mod services;
mod state_perms;
mod store;

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Global;
use crate::config::Config;

/// `as2box doctor`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example (monitoring runs it and alerts on exit status 1):\n  as2box doctor\n  as2box doctor --json\n\nChecks /dev/fuse and fuse3, the mount (alive, mount point root-owned and not\ngroup/other-writable), the sshd config (`sshd -t`), the SFTP port, `as2box serve`'s\n/health, the store (integrity, blobs, modes and owners), certificates (expired: fail;\nwithin 30 days: warn), free disk space, the accounts and the nftables table.\nExit status 0 when nothing fails (warnings allowed), 1 otherwise. Changes nothing."
)]
pub struct DoctorArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// The rendered configuration of the dedicated sshd instance.
    #[arg(long, value_name = "FILE", default_value = "/etc/as2box/sshd_config")]
    sshd_config: PathBuf,
    /// The account `as2box serve` runs as.
    #[arg(long, value_name = "USER", default_value = "as2box")]
    service_user: String,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but will not for long or is not as designed.
    Warn,
    /// Broken: something does not work.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Which check (stable, for monitoring): `fuse`, `mount`, `mount-point`, ...
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (for warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

pub(super) fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

pub(super) fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Warn,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub(super) fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    failed: usize,
    warnings: usize,
    checks: &'a [Check],
}

pub fn run(g: &Global, a: DoctorArgs) -> anyhow::Result<()> {
    let config = match g.load_config() {
        Ok(c) => c,
        Err(e) => {
            // Without settings most checks cannot know where to look: report and stop.
            let checks = vec![fail(
                "config",
                format!("{e:#}"),
                format!(
                    "correct {} (every setting and its default: /usr/share/doc/as2box/as2box.toml)",
                    g.config.display()
                ),
            )];
            return finish(&checks, a.json);
        }
    };
    let checks = run_checks(g, &a, &config);
    finish(&checks, a.json)
}

fn finish(checks: &[Check], json: bool) -> anyhow::Result<()> {
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warnings = checks.iter().filter(|c| c.status == Status::Warn).count();
    if json {
        super::print_json(&Report {
            ok: failed == 0,
            failed,
            warnings,
            checks,
        })?;
    } else {
        for c in checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{tag}  {:<13} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("      {:<13} fix: {fix}", "");
            }
        }
        println!(
            "doctor: {failed} failed, {warnings} warning(s), {} ok",
            checks.len() - failed - warnings
        );
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} check(s) failed; each says how to fix it"
    );
    Ok(())
}

/// Every check, in the order an admin would fix things.
pub fn run_checks(g: &Global, a: &DoctorArgs, config: &Config) -> Vec<Check> {
    let mut checks = vec![ok("config", config_source(&g.config))];
    checks.push(mount::check_fuse());
    checks.extend(mount::check_mount(&config.mount.path));
    checks.extend(mount::check_mount_point(&config.mount.path));
    checks.push(mount::check_data_path(&g.state_dir));
    checks.push(services::check_sshd_config(&a.sshd_config));
    checks.push(services::check_port(config.sftp.port));
    checks.push(services::check_serve(&config.serve.http_listen));
    let service = crate::sysaccount::lookup(&a.service_user);
    checks.extend(services::check_accounts(
        &a.service_user,
        service.is_some(),
        &config.sftp.group,
    ));
    let store = store::check_store(&g.state_dir);
    let svc_gid = service.as_ref().map(|(_, gid, _)| *gid);
    checks.extend(store.checks);
    checks.extend(state_perms::check_state_perms(&g.state_dir, svc_gid));
    if let Some(facts) = &store.facts {
        checks.extend(certificates::check_certificates(
            facts,
            service.as_ref().map(|(u, g, _)| (*u, *g)),
        ));
    }
    checks.push(services::check_disk(&g.state_dir));
    checks.push(services::check_nftables());
    checks
}

fn config_source(path: &Path) -> String {
    if path.exists() {
        format!("settings {}", path.display())
    } else {
        format!("no settings file {}: all defaults", path.display())
    }
}

/// Where a program is installed, if it is.
fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}
