//! A read-only look at a state folder, for `as2box doctor`: the integrity of the databases,
//! the blobs they name, and the key and certificate files of stations and partners.
//!
//! [`super::Store::open`] upgrades an older layout or schema, which is a change; doctor must
//! change nothing, so this opens the database files read-only and never migrates. It reads
//! every layout `Store::open` can upgrade: the split one (`config.db`, `data/as2box.db`) and
//! the older single `as2box.db`, and a partners table before schema 5 (one certificate, no
//! inbound requirements).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::perms::{CONFIG_DB, DATA, LEGACY_DB, OPS_DB};
use super::{harden, Result, Role, StoreError};

/// The key and certificate files of one station.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationFiles {
    /// The station's AS2 id.
    pub as2_id: String,
    /// Its private key, when it has one.
    pub key_path: Option<PathBuf>,
    /// Its certificate, when it has one.
    pub cert_path: Option<PathBuf>,
}

/// What a partner must prove on inbound messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundRequirements {
    /// A signature is required.
    pub signature: bool,
    /// Encryption is required.
    pub encryption: bool,
}

/// The certificate files and inbound requirements of one partner of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerFiles {
    /// The user the partner belongs to.
    pub user: String,
    /// The partner's AS2 id.
    pub as2_id: String,
    /// The test partner of that id (`<partner>/test/`).
    pub test: bool,
    /// Its certificates, in the order they were added.
    pub certs: Vec<PathBuf>,
    /// None in a database older than schema 5, which did not record them.
    pub inbound: Option<InboundRequirements>,
}

/// A state folder's databases, opened read-only.
#[derive(Debug)]
pub struct ReadOnlyStore {
    config_db: PathBuf,
    ops_db: PathBuf,
    /// `config.db` (users, stations, partners).
    config: Connection,
    /// `data/as2box.db` (entries, messages); the same file as `config` in the older layout.
    ops: Connection,
}

impl super::Store {
    /// Opens the databases of `state_dir` read-only, without upgrading anything (see the
    /// module comment). `NotInitialized` when the folder holds no as2box database.
    pub fn open_read_only(state_dir: &Path) -> Result<ReadOnlyStore> {
        let split_config = state_dir.join(CONFIG_DB);
        let (config_db, ops_db) = if split_config.exists() {
            (split_config, state_dir.join(DATA).join(OPS_DB))
        } else {
            let legacy = state_dir.join(LEGACY_DB);
            (legacy.clone(), legacy)
        };
        if !config_db.exists() || !ops_db.exists() {
            return Err(StoreError::NotInitialized(state_dir.to_owned()));
        }
        Ok(ReadOnlyStore {
            ops: open_read_only_connection(&ops_db)?,
            config: open_read_only_connection(&config_db)?,
            config_db,
            ops_db,
        })
    }
}

/// Read-only and hardened like root's connections: the operational database is writable
/// by the daemon's account, so no trigger or view in it runs with root's rights.
fn open_read_only_connection(db: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    harden(&conn, Role::Admin)?;
    Ok(conn)
}

impl ReadOnlyStore {
    /// The database files read (one when the folder has the older layout).
    pub fn database_files(&self) -> Vec<&Path> {
        if self.config_db == self.ops_db {
            vec![&self.config_db]
        } else {
            vec![&self.config_db, &self.ops_db]
        }
    }

    /// What `PRAGMA quick_check` finds wrong in each database file, as
    /// `<file>: <problems>`; empty when both are sound.
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let mut checked = vec![(&self.config_db, &self.config)];
        if self.config_db != self.ops_db {
            checked.push((&self.ops_db, &self.ops));
        }
        for (db, conn) in checked {
            let found: Vec<String> = conn
                .prepare("PRAGMA quick_check")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if found != ["ok"] {
                problems.push(format!("{}: {}", db.display(), found.join("; ")));
            }
        }
        Ok(problems)
    }

    /// The blob files that entries and message files refer to (contents stored inside
    /// the database excluded).
    pub fn referenced_blobs(&self) -> Result<BTreeSet<String>> {
        // Contents stored inside the database have no file (a database before schema 9
        // has no such table).
        let has_inline: bool = self.ops.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'inline_blobs')",
            [],
            |r| r.get(0),
        )?;
        let inline = if has_inline {
            " EXCEPT SELECT sha256 FROM inline_blobs"
        } else {
            ""
        };
        let names = self
            .ops
            .prepare(&format!(
                "SELECT blob FROM entries WHERE blob IS NOT NULL UNION SELECT blob FROM message_files{inline}"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(names)
    }

    /// Every station's key and certificate files, by AS2 id.
    pub fn station_files(&self) -> Result<Vec<StationFiles>> {
        let stations = self
            .config
            .prepare("SELECT as2_id, key_path, cert_path FROM stations ORDER BY as2_id")?
            .query_map([], |r| {
                Ok(StationFiles {
                    as2_id: r.get(0)?,
                    key_path: r.get::<_, Option<String>>(1)?.map(PathBuf::from),
                    cert_path: r.get::<_, Option<String>>(2)?.map(PathBuf::from),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(stations)
    }

    /// Every partner's certificate files and inbound requirements, by user and AS2 id.
    pub fn partner_files(&self) -> Result<Vec<PartnerFiles>> {
        // Schema 5 keeps several certificates per partner (`certs`, one path a line) and
        // the inbound requirements; a database not migrated yet has one `cert_path`.
        let columns: BTreeSet<String> = self
            .config
            .prepare("SELECT name FROM pragma_table_info('partners')")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let (certs, inbound) = if columns.contains("certs") {
            ("p.certs", "p.require_signature, p.require_encryption")
        } else {
            ("p.cert_path", "NULL, NULL")
        };
        let partners = self
            .config
            .prepare(&format!(
                "SELECT u.name, p.as2_id, p.test, {certs}, {inbound} FROM partners p JOIN users u ON u.id = p.user_id ORDER BY u.name, p.as2_id, p.test"
            ))?
            .query_map([], |r| {
                let inbound = match (r.get::<_, Option<bool>>(4)?, r.get::<_, Option<bool>>(5)?) {
                    (Some(signature), Some(encryption)) => Some(InboundRequirements {
                        signature,
                        encryption,
                    }),
                    _ => None,
                };
                Ok(PartnerFiles {
                    user: r.get(0)?,
                    as2_id: r.get(1)?,
                    test: r.get(2)?,
                    certs: r
                        .get::<_, Option<String>>(3)?
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(PathBuf::from)
                        .collect(),
                    inbound,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(partners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn reads_a_fresh_store_without_changing_it() {
        let (dir, store, user_id, _outbox) = crate::store::test_store("alice", "ST", "PA");
        store
            .add_partner(user_id, "PB", true, None)
            .expect("second partner");
        drop(store);
        let before = std::fs::metadata(dir.path().join(CONFIG_DB))
            .unwrap()
            .modified()
            .unwrap();
        let inspected = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(inspected.database_files().len(), 2);
        assert!(inspected.integrity_problems().unwrap().is_empty());
        assert!(inspected.referenced_blobs().unwrap().is_empty());
        let stations = inspected.station_files().unwrap();
        assert_eq!(stations.len(), 1);
        assert_eq!(stations[0].as2_id, "ST");
        assert_eq!(stations[0].cert_path, None);
        let partners = inspected.partner_files().unwrap();
        let ids: Vec<(&str, bool)> = partners
            .iter()
            .map(|p| (p.as2_id.as_str(), p.test))
            .collect();
        assert_eq!(ids, [("PA", false), ("PB", true)]);
        assert!(partners.iter().all(|p| p.user == "alice"));
        // Secure by default: what a new partner must prove inbound.
        assert_eq!(
            partners[0].inbound,
            Some(InboundRequirements {
                signature: true,
                encryption: true
            })
        );
        drop(inspected);
        let after = std::fs::metadata(dir.path().join(CONFIG_DB))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after, "a read-only look changed config.db");
    }

    #[test]
    fn a_folder_without_a_database_is_not_initialized() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open_read_only(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::NotInitialized(_)), "{err}");
    }

    #[test]
    fn reads_the_older_single_database_layout_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(LEGACY_DB)).unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
             CREATE TABLE stations (id INTEGER PRIMARY KEY, as2_id TEXT, key_path TEXT, cert_path TEXT);
             CREATE TABLE partners (id INTEGER PRIMARY KEY, user_id INTEGER, as2_id TEXT, test INTEGER, cert_path TEXT);
             CREATE TABLE entries (id INTEGER PRIMARY KEY, blob TEXT);
             CREATE TABLE message_files (id INTEGER PRIMARY KEY, blob TEXT);
             INSERT INTO users VALUES (1, 'bob');
             INSERT INTO partners VALUES (1, 1, 'OLD', 0, '/etc/as2box/old.pem');
             INSERT INTO entries VALUES (1, 'aa'), (2, NULL);
             INSERT INTO message_files VALUES (1, 'bb');",
        )
        .unwrap();
        drop(conn);
        let inspected = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(inspected.database_files().len(), 1);
        assert!(inspected.integrity_problems().unwrap().is_empty());
        assert_eq!(
            inspected.referenced_blobs().unwrap(),
            BTreeSet::from(["aa".to_string(), "bb".to_string()])
        );
        assert_eq!(
            inspected.partner_files().unwrap(),
            [PartnerFiles {
                user: "bob".into(),
                as2_id: "OLD".into(),
                test: false,
                certs: vec![PathBuf::from("/etc/as2box/old.pem")],
                inbound: None,
            }]
        );
    }
}
