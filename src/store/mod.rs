//! The store: SQLite (WAL) for configuration, the mailbox tree and messages; blob files for
//! contents. This is the only code that touches the database. Its interface is narrow and
//! speaks in mailbox terms (no SQL leaves this module), so that a PostgreSQL + S3 backend can
//! be a second implementation later.
//!
//! Two processes use it at once (the mount and the AS2 daemon): every change is one
//! transaction, readers never block writers (WAL), and writers wait for each other
//! (`busy_timeout`).

mod blobs;
mod entries;
mod model;
mod outgoing;
mod perms;
mod rows;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

pub use blobs::{fsync_dir, hex, sha256_hex, BlobGuard, BlobStore};
pub use entries::{InboundOrigin, NewFile, PickupFile, Placement, RenamePickup, SweepReport};
pub use model::*;
pub use outgoing::{Claimed, Event, OwedMdn, ReceivedRecord, SentRecord, Transmission};
pub use perms::{create_shared_dir, share_state_dir};
pub use rows::UserKey;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state folder has no database.
    #[error("no as2box database in {0}: run `as2box init` first (or pass --state-dir)")]
    NotInitialized(PathBuf),
    /// A database error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file system error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A named thing exists already.
    #[error("{0} already exists")]
    Exists(String),
    /// Removing it would delete files; the caller must force.
    #[error("{0}")]
    NotEmpty(String),
    /// The request does not apply to this thing (e.g. resending a received message).
    #[error("{0}")]
    NotApplicable(String),
    /// A received message with this sender's Message-ID is stored already (a resend that
    /// raced the first delivery); nothing new was stored.
    #[error("message {message_id} has the same Message-ID and was delivered already")]
    AlreadyReceived {
        /// The earlier message.
        message_id: i64,
    },
    /// The database was written by a newer as2box.
    #[error("the database has schema version {0}, newer than this as2box understands ({1}); upgrade as2box")]
    TooNew(i64, i64),
}

impl StoreError {
    /// The OS error number, when this wraps one (ENOSPC, EDQUOT, EIO, ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            StoreError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const SCHEMA_VERSION: i64 = 5;

/// Steps from each older schema version to the next: `MIGRATIONS[v - 1]` takes a version `v`
/// database to `v + 1`. A fresh database gets `SCHEMA` and the current version directly.
const MIGRATIONS: &[&str] = &[
    // 1 -> 2: AS2 settings of stations and partners; the sender's bookkeeping.
    "ALTER TABLE stations ADD COLUMN key_path TEXT;
     ALTER TABLE stations ADD COLUMN cert_path TEXT;
     ALTER TABLE partners ADD COLUMN cert_path TEXT;
     ALTER TABLE partners ADD COLUMN trust_path TEXT;
     ALTER TABLE partners ADD COLUMN sign TEXT NOT NULL DEFAULT 'sha256';
     ALTER TABLE partners ADD COLUMN encrypt TEXT NOT NULL DEFAULT 'aes256-cbc';
     ALTER TABLE partners ADD COLUMN compress TEXT NOT NULL DEFAULT 'none';
     ALTER TABLE partners ADD COLUMN mdn TEXT NOT NULL DEFAULT 'sync';
     ALTER TABLE partners ADD COLUMN mdn_signed INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE messages ADD COLUMN as2_message_id TEXT;
     ALTER TABLE messages ADD COLUMN mic TEXT;
     ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE messages ADD COLUMN next_attempt_ms INTEGER;
     ALTER TABLE messages ADD COLUMN request_headers TEXT;
     ALTER TABLE messages ADD COLUMN mdn TEXT;
     CREATE INDEX IF NOT EXISTS messages_by_as2_id ON messages (partner_id, as2_message_id);",
    // 2 -> 3: the content type our files are labelled with towards a partner.
    "ALTER TABLE partners ADD COLUMN content_type TEXT NOT NULL DEFAULT 'application/octet-stream';",
    // 3 -> 4: async MDNs we owe partners, kept until delivered (a restart must not lose one).
    "ALTER TABLE messages ADD COLUMN mdn_url TEXT;
     ALTER TABLE messages ADD COLUMN mdn_headers TEXT;
     ALTER TABLE messages ADD COLUMN mdn_body BLOB;
     ALTER TABLE messages ADD COLUMN mdn_attempts INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE messages ADD COLUMN mdn_due_ms INTEGER;
     CREATE INDEX IF NOT EXISTS messages_mdn_due ON messages (mdn_due_ms) WHERE mdn_due_ms IS NOT NULL;",
    // 4 -> 5: several certificates per partner; what a partner must prove inbound (secure
    // by default: signature and encryption required, also for partners added before);
    // where the async MDNs we owe it may go.
    "ALTER TABLE partners ADD COLUMN certs TEXT NOT NULL DEFAULT '';
     UPDATE partners SET certs = COALESCE(cert_path, '');
     ALTER TABLE partners DROP COLUMN cert_path;
     ALTER TABLE partners ADD COLUMN require_signature INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE partners ADD COLUMN require_encryption INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE partners ADD COLUMN mdn_url_allow TEXT NOT NULL DEFAULT '';",
];

/// Brings the database to [`SCHEMA_VERSION`], each step in its own transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew(version, SCHEMA_VERSION));
    }
    if version == 0 {
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}"))?;
        return Ok(tx.commit()?);
    }
    for v in version..SCHEMA_VERSION {
        let tx = conn.transaction()?;
        tx.execute_batch(MIGRATIONS[(v - 1) as usize])?;
        tx.execute_batch(&format!("PRAGMA user_version={}", v + 1))?;
        tx.commit()?;
    }
    Ok(())
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    quota INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id),
    as2_id TEXT NOT NULL UNIQUE,
    inbox_layout TEXT NOT NULL,
    key_path TEXT,
    cert_path TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partners (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id),
    as2_id TEXT NOT NULL,
    test INTEGER NOT NULL,
    url TEXT,
    certs TEXT NOT NULL DEFAULT '',
    trust_path TEXT,
    sign TEXT NOT NULL DEFAULT 'sha256',
    encrypt TEXT NOT NULL DEFAULT 'aes256-cbc',
    compress TEXT NOT NULL DEFAULT 'none',
    mdn TEXT NOT NULL DEFAULT 'sync',
    mdn_signed INTEGER NOT NULL DEFAULT 1,
    content_type TEXT NOT NULL DEFAULT 'application/octet-stream',
    require_signature INTEGER NOT NULL DEFAULT 1,
    require_encryption INTEGER NOT NULL DEFAULT 1,
    mdn_url_allow TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    UNIQUE (user_id, as2_id, test)
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    station_id INTEGER NOT NULL,
    partner_id INTEGER NOT NULL,
    box INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    state INTEGER NOT NULL,
    blob TEXT,
    size INTEGER NOT NULL,
    mtime_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    until_ms INTEGER,
    message_id INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_name ON entries (station_id, partner_id, box, parent, name);
CREATE INDEX IF NOT EXISTS entries_by_user ON entries (user_id);
CREATE INDEX IF NOT EXISTS entries_by_blob ON entries (blob);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    direction TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    station_id INTEGER NOT NULL,
    partner_id INTEGER NOT NULL,
    user_name TEXT NOT NULL,
    station TEXT NOT NULL,
    partner TEXT NOT NULL,
    test INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    as2_message_id TEXT,
    mic TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    request_headers TEXT,
    mdn TEXT,
    mdn_url TEXT,
    mdn_headers TEXT,
    mdn_body BLOB,
    mdn_attempts INTEGER NOT NULL DEFAULT 0,
    mdn_due_ms INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (state);
CREATE INDEX IF NOT EXISTS messages_mdn_due ON messages (mdn_due_ms) WHERE mdn_due_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_as2_id ON messages (partner_id, as2_message_id);
CREATE TABLE IF NOT EXISTS message_files (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    blob TEXT NOT NULL,
    PRIMARY KEY (message_id, seq)
);
CREATE INDEX IF NOT EXISTS message_files_by_blob ON message_files (blob);
CREATE TABLE IF NOT EXISTS message_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS message_events_by_message ON message_events (message_id);
"#;

/// The store of one state folder.
#[derive(Debug)]
pub struct Store {
    db_path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    blobs: BlobStore,
}

/// A pooled connection; goes back to the pool when dropped.
struct Pooled<'a> {
    store: &'a Store,
    conn: Option<Connection>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut pool)) = (self.conn.take(), self.store.pool.lock()) {
            pool.push(conn);
        }
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // FULL: a commit is on disk when it returns, which is what a successful close() and a
    // positive MDN promise.
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
    )?;
    Ok(conn)
}

impl Store {
    /// Creates the state folder, database and blob folders (idempotent).
    pub fn init(state_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Io {
            context: format!("create {}", state_dir.display()),
            source,
        })?;
        let mut conn = open_connection(&state_dir.join("as2box.db"))?;
        migrate(&mut conn)?;
        drop(conn);
        Store::open(state_dir)
    }

    /// Opens an initialized state folder (migrating an older schema).
    pub fn open(state_dir: &Path) -> Result<Store> {
        let db_path = state_dir.join("as2box.db");
        if !db_path.exists() {
            return Err(StoreError::NotInitialized(state_dir.to_owned()));
        }
        let mut conn = open_connection(&db_path)?;
        migrate(&mut conn)?;
        Ok(Store {
            db_path,
            pool: Mutex::new(vec![conn]),
            blobs: BlobStore::open(state_dir)?,
        })
    }

    /// The blob files.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The folder that holds the database (for `statfs`).
    pub fn state_dir(&self) -> &Path {
        self.db_path.parent().unwrap_or(Path::new("/"))
    }

    fn conn(&self) -> Result<Pooled<'_>> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.db_path)?,
        };
        Ok(Pooled {
            store: self,
            conn: Some(conn),
        })
    }

    /// Runs `f` in one immediate (write-locking) transaction.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` with a read snapshot.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn()?;
        f(&conn)
    }
}

/// A fresh store in a temporary folder with one user, station and partner; returns the
/// user id and the outbox (for unit tests).
#[cfg(test)]
pub(crate) fn test_store(
    user: &str,
    station: &str,
    partner: &str,
) -> (tempfile::TempDir, Store, i64, BoxRef) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let u = store.add_user(user, 1000, 1000, None).unwrap();
    let s = store
        .add_station(u.id, station, InboxLayout::PerMessage)
        .unwrap();
    let p = store.add_partner(u.id, partner, false, None).unwrap();
    let outbox = BoxRef {
        station_id: s.id,
        partner_id: p.id,
        kind: BoxKind::Outbox,
    };
    (dir, store, u.id, outbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Store, i64, BoxRef) {
        test_store("acme", "ACME", "BIG")
    }

    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("as2box.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, uid INTEGER NOT NULL, gid INTEGER NOT NULL, quota INTEGER, created_ms INTEGER NOT NULL);
                 CREATE TABLE stations (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, as2_id TEXT NOT NULL UNIQUE, inbox_layout TEXT NOT NULL, created_ms INTEGER NOT NULL);
                 CREATE TABLE partners (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, as2_id TEXT NOT NULL, test INTEGER NOT NULL, url TEXT, created_ms INTEGER NOT NULL, UNIQUE (user_id, as2_id, test));
                 CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, direction TEXT NOT NULL, user_id INTEGER NOT NULL, station_id INTEGER NOT NULL, partner_id INTEGER NOT NULL, user_name TEXT NOT NULL, station TEXT NOT NULL, partner TEXT NOT NULL, test INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, detail TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
                 INSERT INTO users VALUES (1, 'old', 5, 5, NULL, 0);
                 INSERT INTO partners VALUES (1, 1, 'P', 0, NULL, 0);
                 PRAGMA user_version=1;",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let p = store.partner(1, "P", false).unwrap().unwrap();
        assert_eq!(p.profile, PartnerProfile::default());
        assert!(store.claim_queued(0).unwrap().is_none());
    }

    #[test]
    fn open_refuses_an_uninitialized_folder() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("as2box init"), "{err}");
    }

    #[test]
    fn duplicates_are_refused_by_name() {
        let (_d, store, user, _) = setup();
        assert!(matches!(
            store.add_user("acme", 1, 1, None),
            Err(StoreError::Exists(_))
        ));
        assert!(matches!(
            store.add_station(user, "ACME", InboxLayout::Plain),
            Err(StoreError::Exists(_))
        ));
        // A test partner may share the production partner's id.
        assert!(store.add_partner(user, "BIG", true, None).is_ok());
        assert!(matches!(
            store.add_partner(user, "BIG", true, None),
            Err(StoreError::Exists(_))
        ));
    }

    #[test]
    fn pickup_commits_entry_and_queued_message_together() {
        let (_d, store, user, outbox) = setup();
        let blob = store.blobs().put_bytes(b"UNA:+.? '").unwrap();
        let f = NewFile {
            user_id: user,
            boxref: outbox,
            parent: 0,
            name: "order.edi".into(),
            blob: blob.clone(),
            size: 9,
            mtime_ms: 5,
            state: EntryState::Held,
            replaces: None,
        };
        let (id, m) = store.commit_file(&f, Some(i64::MAX)).unwrap();
        let e = store.entry(id).unwrap().unwrap();
        assert_eq!(e.state, EntryState::Lingering);
        assert_eq!(e.message_id, m);
        let msgs = store.messages(None, 10).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].state, "queued");
        assert_eq!(msgs[0].files[0].sha256, blob);
        assert_eq!(msgs[0].files[0].size, 9);
        assert_eq!(store.usage(user).unwrap(), 9);
    }

    #[test]
    fn failing_a_file_moves_it_with_a_reason() {
        let (_d, store, user, outbox) = setup();
        let blob = store.blobs().put_bytes(b"x").unwrap();
        let f = NewFile {
            user_id: user,
            boxref: outbox,
            parent: 0,
            name: "a.edi".into(),
            blob: blob.clone(),
            size: 1,
            mtime_ms: 0,
            state: EntryState::Held,
            replaces: None,
        };
        let (id, _) = store.commit_file(&f, None).unwrap();
        let e = store.entry(id).unwrap().unwrap();
        let file = PickupFile {
            name: "a.edi".into(),
            blob,
            size: 1,
        };
        store.fail_entries(&e, &[(id, file)], "Too big.").unwrap();
        let failed = BoxRef {
            kind: BoxKind::Failed,
            ..outbox
        };
        let names: Vec<String> = store
            .entries(failed, 0)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a.edi", "a.edi.reason.txt"]);
        assert!(store.entries(outbox, 0).unwrap().is_empty());
        let m = &store.messages(None, 1).unwrap()[0];
        assert_eq!(
            (m.state.as_str(), m.detail.as_deref()),
            ("failed", Some("Too big."))
        );
    }

    #[test]
    fn sweep_removes_expired_files_and_unreferenced_blobs_only_when_old() {
        let (_d, store, user, outbox) = setup();
        let inbox = BoxRef {
            kind: BoxKind::Inbox,
            ..outbox
        };
        let blob = store.blobs().put_bytes(b"in").unwrap();
        let file = PickupFile {
            name: "x".into(),
            blob,
            size: 2,
        };
        store
            .deliver(
                user,
                inbox,
                "m",
                Placement::Folder("folder"),
                &[("x".into(), file)],
                None,
            )
            .unwrap();
        let now = crate::timefmt::now_ms();
        let r = store.sweep(now, now - 60_000, now - 60_000).unwrap();
        assert_eq!(r.expired_files, 0, "young files stay");
        let r = store.sweep(now, now + 1, now - 60_000).unwrap();
        assert_eq!(r.expired_files, 2, "the file and its emptied folder");
        assert!(store.entries(inbox, 0).unwrap().is_empty());
    }
}
