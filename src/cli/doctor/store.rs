//! The store: both databases sound (`PRAGMA quick_check`) and every blob they name present.
//! Read through `Store::open_read_only`, which never migrates.

use std::collections::BTreeSet;
use std::path::Path;

use super::{fail, ok, Check};
use crate::store::{PartnerFiles, StationFiles, Store, StoreError};

/// What the certificate checks need from the database.
pub(super) struct StoreFacts {
    pub stations: Vec<StationFiles>,
    pub partners: Vec<PartnerFiles>,
}

pub(super) struct StoreResult {
    pub checks: Vec<Check>,
    /// None when the database cannot be read.
    pub facts: Option<StoreFacts>,
}

const RESTORE: &str =
    "stop as2box-mount and as2box-serve, then restore the state folder from backup";

pub(super) fn check_store(state_dir: &Path) -> StoreResult {
    let unreadable = |e: StoreError| StoreResult {
        checks: vec![fail(
            "store",
            format!("cannot read the database in {}: {e}", state_dir.display()),
            RESTORE,
        )],
        facts: None,
    };
    let store = match Store::open_read_only(state_dir) {
        Ok(store) => store,
        Err(StoreError::NotInitialized(_)) => {
            return StoreResult {
                checks: vec![fail(
                    "store",
                    format!("{} holds no as2box database", state_dir.display()),
                    "as2box init --service-user as2box",
                )],
                facts: None,
            }
        }
        Err(e) => return unreadable(e),
    };
    let read = || -> Result<_, StoreError> {
        let facts = StoreFacts {
            stations: store.station_files()?,
            partners: store.partner_files()?,
        };
        Ok((
            store.integrity_problems()?,
            store.referenced_blobs()?,
            facts,
        ))
    };
    let (problems, blobs, facts) = match read() {
        Ok(r) => r,
        Err(e) => return unreadable(e),
    };
    let mut checks = Vec::new();
    checks.push(if problems.is_empty() {
        ok(
            "store",
            format!("{}: PRAGMA quick_check ok", state_dir.display()),
        )
    } else {
        fail(
            "store",
            format!("PRAGMA quick_check: {}", problems.join("; ")),
            format!("{RESTORE} (or sqlite3 .recover)"),
        )
    });
    // Blob files are named by their hash: every referenced name must be a file under blobs/.
    let mut present = BTreeSet::new();
    collect_file_names(&state_dir.join("blobs"), &mut present);
    let missing: Vec<&String> = blobs.iter().filter(|b| !present.contains(*b)).collect();
    checks.push(if missing.is_empty() {
        ok("blobs", format!("all {} referenced blob(s) present", blobs.len()))
    } else {
        fail(
            "blobs",
            format!(
                "{} of {} referenced blob(s) missing (first: {})",
                missing.len(),
                blobs.len(),
                missing[0]
            ),
            "restore the state folder's blobs/ from backup; files whose content is lost cannot be served",
        )
    });
    StoreResult {
        checks,
        facts: Some(facts),
    }
}

fn collect_file_names(dir: &Path, names: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_file_names(&entry.path(), names),
            Ok(t) if t.is_file() => {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
            _ => {}
        }
    }
}
