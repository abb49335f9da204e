//! Upgrades a state folder of an older as2box, where every table lived in one database
//! (`as2box.db` at the top, writable by the daemon's group), to the split layout: the
//! configuration tables into `config.db` (root's), the rest into `data/as2box.db`.
//!
//! Runs as root at `as2box init`, at the mount's start and with any CLI command, after the
//! top of the state folder was closed to the daemon's group (`perms::close_top`), so
//! nothing can be planted while it works. Crash-safe: both new files are complete copies
//! (`VACUUM INTO`) renamed into place, `config.db` last; the old file goes only after that,
//! and a run that finds `config.db` next to the old file just removes the old one.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::perms::{CONFIG_DB, DATA, LEGACY_DB, OPS_COMPANIONS, OPS_DB};
use super::safefs::Dir;
use super::{Result, StoreError};

/// The tables that decide who logs in and what they own.
pub(super) const CONFIG_TABLES: [&str; 4] = ["user_keys", "stations", "partners", "users"];

const LEGACY_COMPANIONS: [&str; 3] = ["as2box.db-wal", "as2box.db-shm", "as2box.db-journal"];
const SPLIT_SUFFIX: &str = ".split";

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

fn exists(dir: &Dir, name: &str) -> bool {
    dir.stat_at(name).ok().flatten().is_some()
}

fn remove(dir: &Dir, name: &str) -> Result<()> {
    match dir.unlink(name) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(StoreError::Io {
            context: format!("remove {name}"),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_legacy(state: &Dir) -> Result<()> {
    for name in std::iter::once(LEGACY_DB).chain(LEGACY_COMPANIONS) {
        remove(state, name)?;
    }
    state.sync().map_err(io("fsync the state folder"))
}

/// Splits the old single database, if there is one (see the module comment).
pub(super) fn upgrade(state: &Dir, state_path: &Path) -> Result<()> {
    if !exists(state, LEGACY_DB) {
        return Ok(());
    }
    if exists(state, CONFIG_DB) {
        // A split that finished but for removing the old file.
        return remove_legacy(state);
    }
    // The old layout let the daemon's account create files here: use only plain files.
    for name in std::iter::once(LEGACY_DB).chain(LEGACY_COMPANIONS) {
        if exists(state, name) {
            state.file(name, libc::O_RDONLY, 0).map_err(|e| {
                StoreError::Unsafe(format!(
                    "{name} in the state folder is not a plain file ({e}); it cannot be upgraded safely: check it and move it away"
                ))
            })?;
        }
    }
    let legacy = Connection::open_with_flags(
        state_path.join(LEGACY_DB),
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    legacy.busy_timeout(std::time::Duration::from_secs(30))?;
    let version: i64 = legacy.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        // Never initialized: nothing to keep.
        drop(legacy);
        return remove_legacy(state);
    }
    let (data, _) = state.make_dir(DATA, 0o700).map_err(|e| {
        StoreError::Unsafe(format!(
            "data in the state folder is not a folder ({e}): move it away and run `as2box init`"
        ))
    })?;
    let ops_tmp = format!("{OPS_DB}{SPLIT_SUFFIX}");
    let config_tmp = format!("{CONFIG_DB}{SPLIT_SUFFIX}");
    // What an interrupted run left; a stale -wal would be replayed into the new file.
    for name in [ops_tmp.as_str(), OPS_DB].into_iter().chain(OPS_COMPANIONS) {
        remove(&data, name)?;
    }
    remove(state, &config_tmp)?;
    let ops_path = state_path.join(DATA).join(&ops_tmp);
    let config_path = state_path.join(&config_tmp);
    for path in [&ops_path, &config_path] {
        legacy.execute("VACUUM INTO ?1", [path.to_string_lossy()])?;
    }
    drop(legacy);
    keep_only(&config_path, Keep::Config)?;
    keep_only(&ops_path, Keep::Operational)?;
    for path in [&ops_path, &config_path] {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("fsync {}", path.display())))?;
    }
    data.rename(&ops_tmp, &data, OPS_DB)
        .map_err(io("move the operational database into place"))?;
    data.sync().map_err(io("fsync data/"))?;
    state
        .rename(&config_tmp, state, CONFIG_DB)
        .map_err(io("move the configuration database into place"))?;
    state.sync().map_err(io("fsync the state folder"))?;
    tracing::info!(
        "upgraded the state folder: configuration in {CONFIG_DB} (root's), the rest in {DATA}/{OPS_DB}"
    );
    remove_legacy(state)
}

enum Keep {
    Config,
    Operational,
}

/// Drops from a copy of the old database the tables that belong to the other file.
fn keep_only(path: &Path, keep: Keep) -> Result<()> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    conn.execute_batch("PRAGMA foreign_keys=OFF;")?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let has_sequence: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_sequence'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    let tx = conn.unchecked_transaction()?;
    for t in tables {
        let is_config = CONFIG_TABLES.contains(&t.as_str());
        // Unknown tables (of a newer version) stay with the operational data: a table in
        // both files would be read from root's copy and written to the daemon's.
        let drop = match keep {
            Keep::Config => !is_config,
            Keep::Operational => is_config,
        };
        if drop {
            tx.execute_batch(&format!("DROP TABLE \"{}\";", t.replace('"', "\"\"")))?;
            if has_sequence {
                tx.execute("DELETE FROM sqlite_sequence WHERE name = ?1", [&t])?;
            }
        }
    }
    tx.commit()?;
    let mode = match keep {
        // Readers of a rollback-journal database need only read access: the daemon.
        Keep::Config => "DELETE",
        Keep::Operational => "WAL",
    };
    conn.query_row(&format!("PRAGMA journal_mode={mode}"), [], |_| Ok(()))?;
    if matches!(keep, Keep::Operational) {
        // Leaves no -wal behind: root's `prepare` makes the companions with their modes.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    drop(conn);
    Ok(())
}
