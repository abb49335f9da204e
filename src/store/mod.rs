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
mod rows;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

pub use blobs::{fsync_dir, hex, sha256_hex, BlobGuard, BlobStore};
pub use entries::{NewFile, PickupFile, SweepReport};
pub use model::*;
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

const SCHEMA_VERSION: i64 = 1;

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
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partners (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id),
    as2_id TEXT NOT NULL,
    test INTEGER NOT NULL,
    url TEXT,
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
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (state);
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
        let db_path = state_dir.join("as2box.db");
        let conn = open_connection(&db_path)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew(version, SCHEMA_VERSION));
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}"))?;
        drop(conn);
        Store::open(state_dir)
    }

    /// Opens an initialized state folder.
    pub fn open(state_dir: &Path) -> Result<Store> {
        let db_path = state_dir.join("as2box.db");
        if !db_path.exists() {
            return Err(StoreError::NotInitialized(state_dir.to_owned()));
        }
        let conn = open_connection(&db_path)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew(version, SCHEMA_VERSION));
        }
        if version < SCHEMA_VERSION {
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}"))?;
        }
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
