//! The store: SQLite (WAL) for configuration, the mailbox tree and messages; blob files for
//! contents. This is the only code that touches the database. Its interface is narrow and
//! speaks in mailbox terms (no SQL leaves this module), so that a PostgreSQL + S3 backend can
//! be a second implementation later.
//!
//! Two processes use it at once (the mount and the AS2 daemon): every change is one
//! transaction, readers never block writers (WAL), and writers wait for each other
//! (`wait_for_the_other_writer`, 30 s).
//!
//! Two database files, so that the daemon's account cannot grant itself a login (see
//! `perms` and docs/SECURITY.md): `config.db` (users, user_keys, stations, partners) is
//! written by root alone and only read by the daemon; `data/as2box.db` (entries, messages
//! and their files and events) is written by both. Each connection sees both: root's has
//! `config.db` as `main` and attaches the other as `ops`, so an unqualified name resolves
//! to root's file first and a table the daemon creates in its file cannot shadow it; the
//! daemon's has `data/as2box.db` as `main` and attaches `config.db` read-only as `config`.

mod archive;
mod blobs;
mod contents;
mod doorbell;
mod entries;
mod inspect;
mod model;
mod mount_status;
mod outgoing;
mod perms;
mod rows;
mod safefs;
mod split;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

pub use archive::{ArchiveItem, ArchiveKind, ArchivedBlob};
pub use blobs::{fsync_dir, hex, is_blob_name, sha256_hex, BlobGuard, BlobStore, Role, SpoolName};
pub use contents::INLINE_MAX;
pub use entries::{InboundOrigin, NewFile, PickupFile, Placement, RenamePickup, SweepReport};
pub use inspect::{InboundRequirements, PartnerFiles, ReadOnlyStore, StationFiles};
pub use model::*;
pub use mount_status::{read_mount_status, write_mount_status, MOUNT_STATUS};
pub use outgoing::{Claimed, Event, OwedMdn, ReceivedRecord, SentRecord, Transmission};
pub use perms::share_state_dir;
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
    /// The daemon found a database root has not upgraded yet (it cannot do it itself).
    #[error("the database has schema version {0}, older than this as2box ({1}): run `as2box init` as root (or start the mount) to upgrade it, then start `as2box serve` again")]
    NeedsUpgrade(i64, i64),
    /// The database names a blob that is not a content hash (the daemon's account can
    /// write that table; root never opens such a name).
    #[error("the database names the blob {0:?}, which is not a content hash (64 lowercase hex digits); refused (was the database tampered with?)")]
    BadBlobName(String),
    /// Something in the state folder is not what as2box made there (a symlink, a hard
    /// link, a foreign owner); root does not use it.
    #[error("unsafe state folder: {0}")]
    Unsafe(String),
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

const SCHEMA_VERSION: i64 = 9;

/// Steps from each older schema version to the next: `MIGRATIONS[v - 1]` takes a version `v`
/// database to `v + 1`. A fresh database gets the schemas and the current version directly.
///
/// Migrations run on root's connection (see the module comment): a configuration table in
/// `main`, an operational table in `ops`. ALTER TABLE finds either; a CREATE names its
/// schema (`CREATE INDEX ops.name ON messages (...)`).
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
     CREATE INDEX IF NOT EXISTS ops.messages_by_as2_id ON messages (partner_id, as2_message_id);",
    // 2 -> 3: the content type our files are labelled with towards a partner.
    "ALTER TABLE partners ADD COLUMN content_type TEXT NOT NULL DEFAULT 'application/octet-stream';",
    // 3 -> 4: async MDNs we owe partners, kept until delivered (a restart must not lose one).
    "ALTER TABLE messages ADD COLUMN mdn_url TEXT;
     ALTER TABLE messages ADD COLUMN mdn_headers TEXT;
     ALTER TABLE messages ADD COLUMN mdn_body BLOB;
     ALTER TABLE messages ADD COLUMN mdn_attempts INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE messages ADD COLUMN mdn_due_ms INTEGER;
     CREATE INDEX IF NOT EXISTS ops.messages_mdn_due ON messages (mdn_due_ms) WHERE mdn_due_ms IS NOT NULL;",
    // 4 -> 5: several certificates per partner; what a partner must prove inbound (secure
    // by default: signature and encryption required, also for partners added before);
    // where the async MDNs we owe it may go.
    "ALTER TABLE partners ADD COLUMN certs TEXT NOT NULL DEFAULT '';
     UPDATE partners SET certs = COALESCE(cert_path, '');
     ALTER TABLE partners DROP COLUMN cert_path;
     ALTER TABLE partners ADD COLUMN require_signature INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE partners ADD COLUMN require_encryption INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE partners ADD COLUMN mdn_url_allow TEXT NOT NULL DEFAULT '';",
    // 5 -> 6: what commits an upload in a station's outboxes.
    "ALTER TABLE stations ADD COLUMN pickup TEXT NOT NULL DEFAULT 'close';",
    // 6 -> 7: the non-repudiation archive (raw requests and MDNs per message).
    archive::ARCHIVE_SCHEMA,
    // 7 -> 8: the per-partner switches partners' software needs (issue 13).
    "ALTER TABLE partners ADD COLUMN binary_canonicalization INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE partners ADD COLUMN micalg_spelling TEXT NOT NULL DEFAULT 'sha-256';
     ALTER TABLE partners ADD COLUMN chunked INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE partners ADD COLUMN extra_headers TEXT NOT NULL DEFAULT '';
     ALTER TABLE partners ADD COLUMN subject_template TEXT;
     ALTER TABLE partners ADD COLUMN as2_version TEXT NOT NULL DEFAULT '1.2';
     ALTER TABLE partners ADD COLUMN basic_auth_out_user TEXT;
     ALTER TABLE partners ADD COLUMN basic_auth_out_password TEXT;
     ALTER TABLE partners ADD COLUMN basic_auth_in_user TEXT;
     ALTER TABLE partners ADD COLUMN basic_auth_in_hash TEXT;
     ALTER TABLE partners ADD COLUMN tls_client_cert TEXT;
     ALTER TABLE partners ADD COLUMN tls_client_key TEXT;",
    // 8 -> 9: small contents stored inside the database (issue 12).
    contents::INLINE_SCHEMA,
];

/// Brings both databases to [`SCHEMA_VERSION`] on root's connection, each step in its own
/// transaction; then makes any table an old version lacked.
fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA main.user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew(version, SCHEMA_VERSION));
    }
    let set_version =
        |v: i64| format!("PRAGMA main.user_version={v}; PRAGMA ops.user_version={v};");
    if version == 0 {
        let tx = conn.transaction()?;
        tx.execute_batch(CONFIG_SCHEMA)?;
        tx.execute_batch(OPS_SCHEMA)?;
        tx.execute_batch(archive::ARCHIVE_SCHEMA)?;
        tx.execute_batch(contents::INLINE_SCHEMA)?;
        tx.execute_batch(&set_version(SCHEMA_VERSION))?;
        return Ok(tx.commit()?);
    }
    for v in version..SCHEMA_VERSION {
        let tx = conn.transaction()?;
        tx.execute_batch(MIGRATIONS[(v - 1) as usize])?;
        tx.execute_batch(&set_version(v + 1))?;
        tx.commit()?;
    }
    conn.execute_batch(CONFIG_SCHEMA)?;
    conn.execute_batch(OPS_SCHEMA)?;
    conn.execute_batch(archive::ARCHIVE_SCHEMA)?;
    conn.execute_batch(contents::INLINE_SCHEMA)?;
    Ok(())
}

/// The configuration tables (`config.db`, written by root alone).
const CONFIG_SCHEMA: &str = r#"
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
    pickup TEXT NOT NULL DEFAULT 'close',
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
    binary_canonicalization INTEGER NOT NULL DEFAULT 0,
    micalg_spelling TEXT NOT NULL DEFAULT 'sha-256',
    chunked INTEGER NOT NULL DEFAULT 0,
    extra_headers TEXT NOT NULL DEFAULT '',
    subject_template TEXT,
    as2_version TEXT NOT NULL DEFAULT '1.2',
    basic_auth_out_user TEXT,
    basic_auth_out_password TEXT,
    basic_auth_in_user TEXT,
    basic_auth_in_hash TEXT,
    tls_client_cert TEXT,
    tls_client_key TEXT,
    created_ms INTEGER NOT NULL,
    UNIQUE (user_id, as2_id, test)
);
"#;

/// The operational tables (`data/as2box.db`, `ops` on root's connection).
const OPS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS ops.entries (
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
CREATE UNIQUE INDEX IF NOT EXISTS ops.entries_by_name ON entries (station_id, partner_id, box, parent, name);
CREATE INDEX IF NOT EXISTS ops.entries_by_user ON entries (user_id);
CREATE INDEX IF NOT EXISTS ops.entries_by_blob ON entries (blob);
CREATE TABLE IF NOT EXISTS ops.messages (
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
CREATE INDEX IF NOT EXISTS ops.messages_by_state ON messages (state);
CREATE INDEX IF NOT EXISTS ops.messages_mdn_due ON messages (mdn_due_ms) WHERE mdn_due_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS ops.messages_by_as2_id ON messages (partner_id, as2_message_id);
CREATE TABLE IF NOT EXISTS ops.message_files (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    blob TEXT NOT NULL,
    PRIMARY KEY (message_id, seq)
);
CREATE INDEX IF NOT EXISTS ops.message_files_by_blob ON message_files (blob);
CREATE TABLE IF NOT EXISTS ops.message_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS ops.message_events_by_message ON message_events (message_id);
"#;

/// The store of one state folder.
#[derive(Debug)]
pub struct Store {
    state_dir: PathBuf,
    role: Role,
    pool: Mutex<Vec<Connection>>,
    /// Held by this process's writer: SQLite admits one writer, and a second one of ours
    /// would only poll for the lock in the busy handler's sleeps; waiting here hands the
    /// lock over at once. Writers of the other process meet `wait_for_the_other_writer`.
    writer: Mutex<()>,
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

/// `file:` URI of `path` (percent-encoded) with `mode`, for ATTACH.
fn uri(path: &Path, mode: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s + "?mode=" + mode
}

fn flags() -> OpenFlags {
    // No CREATE: root's `perms::prepare` makes the files with their owner and mode first.
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
        | OpenFlags::SQLITE_OPEN_URI
}

/// SQLite's busy handler: the other process (mount or daemon) holds the write lock. Asked
/// again after every pause, for 30 s in all, then the write fails (SQLITE_BUSY). SQLite's
/// own `busy_timeout` pauses 1, 2, 5, ... up to 100 ms, so a lock held for 3 ms was often
/// seen free only tens of milliseconds later, and a commit of the mount's (a close) waited
/// that long behind each write of the daemon's; short pauses first see it at once.
fn wait_for_the_other_writer(calls_before: i32) -> bool {
    // 0.25 ms for the first second, then 5 ms: 1 s + 29 s.
    const SHORT: u64 = 4_000;
    const LONG: u64 = 5_800;
    let n = calls_before.max(0) as u64;
    let pause = match n {
        _ if n < SHORT => std::time::Duration::from_micros(250),
        _ if n < SHORT + LONG => std::time::Duration::from_millis(5),
        _ => return false,
    };
    std::thread::sleep(pause);
    true
}

/// Settings of every connection. The daemon's account can write the operational database,
/// schema included: nothing in a schema may run a function with side effects, and root
/// runs no trigger or view from it at all.
fn harden(conn: &Connection, role: Role) -> Result<()> {
    use rusqlite::config::DbConfig;
    conn.busy_handler(Some(wait_for_the_other_writer))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    if role == Role::Admin {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)?;
    }
    Ok(())
}

/// Keeps the operational database's `-wal` and `-shm` at close: the daemon cannot create
/// them again in `data/` (root's), so root must never delete them.
fn persist_wal(conn: &Connection, schema: &std::ffi::CStr) -> Result<()> {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: a file control on an open connection; the argument is the int it expects.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            schema.as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::ffi::c_int).cast(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            Some("setting SQLITE_FCNTL_PERSIST_WAL".into()),
        )));
    }
    Ok(())
}

fn config_path(state: &Path) -> PathBuf {
    state.join(perms::CONFIG_DB)
}

fn ops_path(state: &Path) -> PathBuf {
    state.join(perms::DATA).join(perms::OPS_DB)
}

// FULL: a commit is on disk when it returns, which is what a successful close() and a
// positive MDN promise.
fn open_connection(state: &Path, role: Role) -> Result<Connection> {
    match role {
        Role::Admin => {
            let conn = Connection::open_with_flags(config_path(state), flags())?;
            harden(&conn, role)?;
            conn.execute("ATTACH DATABASE ?1 AS ops", [uri(&ops_path(state), "rw")])?;
            conn.execute_batch(
                "PRAGMA main.synchronous=FULL; PRAGMA ops.journal_mode=WAL; PRAGMA ops.synchronous=FULL; PRAGMA foreign_keys=ON;",
            )?;
            persist_wal(&conn, c"ops")?;
            Ok(conn)
        }
        Role::Service => {
            let conn = Connection::open_with_flags(ops_path(state), flags())?;
            harden(&conn, role)?;
            conn.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
            )?;
            persist_wal(&conn, c"main")?;
            conn.execute(
                "ATTACH DATABASE ?1 AS config",
                [uri(&config_path(state), "ro")],
            )?;
            Ok(conn)
        }
    }
}

impl Store {
    /// Creates the state folder, databases and blob folders (idempotent), as root.
    pub fn init(state_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Io {
            context: format!("create {}", state_dir.display()),
            source,
        })?;
        Store::open_admin(state_dir, true)
    }

    /// Opens an initialized state folder as root (the mount, the CLI), upgrading an older
    /// layout or schema.
    pub fn open(state_dir: &Path) -> Result<Store> {
        Store::open_admin(state_dir, false)
    }

    fn open_admin(state_dir: &Path, create: bool) -> Result<Store> {
        let state = safefs::Dir::open(state_dir).map_err(|source| StoreError::Io {
            context: format!("open the state folder {}", state_dir.display()),
            source,
        })?;
        let has = |name: &str| state.stat_at(name).ok().flatten().is_some();
        if !create && !has(perms::CONFIG_DB) && !has(perms::LEGACY_DB) {
            return Err(StoreError::NotInitialized(state_dir.to_owned()));
        }
        perms::close_top(&state)?;
        split::upgrade(&state, state_dir)?;
        perms::prepare(&state)?;
        let mut conn = open_connection(state_dir, Role::Admin)?;
        migrate(&mut conn)?;
        Ok(Store {
            state_dir: state_dir.to_owned(),
            role: Role::Admin,
            pool: Mutex::new(vec![conn]),
            writer: Mutex::new(()),
            blobs: BlobStore::open(&state, Role::Admin)?,
        })
    }

    /// Opens the state folder for the AS2 daemon (`as2box serve`): the configuration
    /// read-only, its own spool (cleared: what is there was never completed). Root must
    /// have initialized and upgraded the folder; the daemon never migrates.
    pub fn open_service(state_dir: &Path) -> Result<Store> {
        let state = safefs::Dir::open(state_dir).map_err(|source| StoreError::Io {
            context: format!("open the state folder {}", state_dir.display()),
            source,
        })?;
        let initialized = state.stat_at(perms::CONFIG_DB).ok().flatten().is_some()
            && state
                .dir(perms::DATA)
                .and_then(|d| d.stat_at(perms::OPS_DB))
                .ok()
                .flatten()
                .is_some();
        if !initialized {
            return Err(StoreError::NotInitialized(state_dir.to_owned()));
        }
        let conn = open_connection(state_dir, Role::Service)?;
        let version: i64 = conn.query_row("PRAGMA config.user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew(version, SCHEMA_VERSION));
        }
        if version < SCHEMA_VERSION {
            return Err(StoreError::NeedsUpgrade(version, SCHEMA_VERSION));
        }
        let blobs = BlobStore::open(&state, Role::Service)?;
        blobs.clear_spool()?;
        Ok(Store {
            state_dir: state_dir.to_owned(),
            role: Role::Service,
            pool: Mutex::new(vec![conn]),
            writer: Mutex::new(()),
            blobs,
        })
    }

    /// The blob files.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The state folder (for `statfs` and the audit log).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn conn(&self) -> Result<Pooled<'_>> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.state_dir, self.role)?,
        };
        Ok(Pooled {
            store: self,
            conn: Some(conn),
        })
    }

    /// Runs `f` in one immediate (write-locking) transaction, durable when it returns.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        self.write_with(true, f)
    }

    /// [`Store::write`] for a change a crash may lose: its commit does not wait for the
    /// disk (`synchronous=NORMAL` for this one commit; WAL keeps the database consistent
    /// either way). It becomes durable with the next commit of either process, as an
    /// `fsync` of the WAL covers every frame before it. Only for changes whose loss merely
    /// repeats work (a claim: the message is claimed again).
    fn write_unsynced<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write_with(false, f)
    }

    fn write_with<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn()?;
        // A writer that panicked left no transaction open (it rolled back on drop).
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let in_transaction = |conn: &mut Connection| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        if durable {
            return in_transaction(&mut conn);
        }
        let ops = match self.role {
            Role::Admin => "ops",
            Role::Service => "main",
        };
        conn.execute_batch(&format!("PRAGMA {ops}.synchronous=NORMAL"))?;
        let result = in_transaction(&mut conn);
        if conn
            .execute_batch(&format!("PRAGMA {ops}.synchronous=FULL"))
            .is_err()
        {
            // Never pooled again: every other commit must wait for the disk.
            drop(conn.conn.take());
        }
        result
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
pub(crate) mod tests {
    use super::*;

    #[test]
    fn an_unsynced_write_leaves_its_connection_waiting_for_the_disk_again() {
        let (_dir, store, _, _) = test_store("u", "S", "P");
        let synchronous = |store: &Store| {
            store
                .read(|c| Ok(c.query_row("PRAGMA ops.synchronous", [], |r| r.get::<_, i64>(0))?))
                .unwrap()
        };
        // 2: FULL, every commit waits for the disk.
        assert_eq!(synchronous(&store), 2);
        let seen = store
            .write_unsynced(|tx| {
                Ok(tx.query_row("PRAGMA ops.synchronous", [], |r| r.get::<_, i64>(0))?)
            })
            .unwrap();
        assert_eq!(seen, 1, "NORMAL inside the unsynced write");
        assert_eq!(synchronous(&store), 2, "FULL again for the next user");
        let failed: Result<()> =
            store.write_unsynced(|_| Err(StoreError::NotFound("on purpose".into())));
        assert!(failed.is_err());
        assert_eq!(synchronous(&store), 2, "FULL again after a failed write");
    }

    /// The names at the top of box `b`, in listing order.
    pub(crate) fn names_at_top(store: &Store, b: BoxRef) -> Vec<String> {
        store
            .entries(b, 0)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

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

    /// A state folder of an older as2box: every table in `as2box.db` at the top, the WAL
    /// not checkpointed.
    fn legacy_state(dir: &Path) -> Connection {
        let conn = Connection::open(dir.join("as2box.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        conn.execute_batch(CONFIG_SCHEMA).unwrap();
        conn.execute_batch(&OPS_SCHEMA.replace(" ops.", " "))
            .unwrap();
        conn.execute_batch(&format!(
            "PRAGMA user_version={SCHEMA_VERSION};
             INSERT INTO users VALUES (1, 'old', 5, 5, NULL, 0);
             INSERT INTO user_keys VALUES (1, 1, 'ssh-ed25519 AAAAold', 0);
             INSERT INTO stations (id, user_id, as2_id, inbox_layout, created_ms) VALUES (1, 1, 'ST', 'per-message', 0);
             INSERT INTO partners (id, user_id, as2_id, test, created_ms) VALUES (1, 1, 'P', 0, 0);
             INSERT INTO entries (user_id, station_id, partner_id, box, parent, name, is_dir, state, blob, size, mtime_ms, created_ms)
                 VALUES (1, 1, 1, 1, 0, 'kept.edi', 0, 0, NULL, 0, 0, 0);
             INSERT INTO messages (direction, user_id, station_id, partner_id, user_name, station, partner, test, name, state, created_ms, updated_ms)
                 VALUES ('out', 1, 1, 1, 'old', 'ST', 'P', 0, 'kept.edi', 'delivered', 0, 0);"
        ))
        .unwrap();
        conn
    }

    #[test]
    fn an_older_single_database_is_split_without_losing_data() {
        let dir = tempfile::tempdir().unwrap();
        // Open while the upgrade runs, like a WAL another process has not checkpointed.
        let legacy = legacy_state(dir.path());
        std::fs::create_dir(dir.path().join("spool")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        drop(legacy);
        assert!(!dir.path().join("as2box.db").exists());
        let u = store.user("old").unwrap().unwrap();
        assert_eq!(store.public_keys(u.id).unwrap(), ["ssh-ed25519 AAAAold"]);
        assert_eq!(store.station("ST").unwrap().unwrap().user_id, u.id);
        assert!(store.partner(u.id, "P", false).unwrap().is_some());
        assert_eq!(store.file_count(u.id).unwrap(), 1);
        assert_eq!(store.messages(None, 10).unwrap().len(), 1);
        let tables = |path: &Path| -> Vec<String> {
            let c = Connection::open(path).unwrap();
            let mut st = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
                .unwrap();
            let names = st.query_map([], |r| r.get(0)).unwrap();
            names.collect::<rusqlite::Result<_>>().unwrap()
        };
        assert_eq!(
            tables(&dir.path().join("config.db")),
            ["partners", "stations", "user_keys", "users"]
        );
        assert_eq!(
            tables(&dir.path().join("data/as2box.db")),
            [
                "entries",
                "inline_blobs",
                "message_archive",
                "message_events",
                "message_files",
                "messages"
            ]
        );
        // Again (the mount's next start): nothing changes.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.file_count(u.id).unwrap(), 1);
    }

    #[test]
    fn an_older_folder_with_a_planted_link_is_not_upgraded_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        drop(legacy_state(&state));
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"root's file").unwrap();
        std::fs::remove_file(state.join("as2box.db-shm")).ok();
        std::os::unix::fs::symlink(&victim, state.join("as2box.db-shm")).unwrap();
        let err = Store::open(&state).unwrap_err();
        assert!(matches!(err, StoreError::Unsafe(_)), "{err}");
        assert!(err.to_string().contains("as2box.db-shm"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"root's file");
        // Once the admin removed it, the upgrade goes through.
        std::fs::remove_file(state.join("as2box.db-shm")).unwrap();
        let store = Store::open(&state).unwrap();
        assert!(store.user("old").unwrap().is_some());
    }

    #[test]
    fn the_daemon_reads_the_configuration_but_cannot_write_it_nor_shadow_it() {
        let (dir, admin, user, _) = setup();
        let daemon = Store::open_service(dir.path()).unwrap();
        assert_eq!(daemon.user("acme").unwrap().unwrap().id, user);
        let err = daemon
            .add_public_key(user, "ssh-ed25519 AAAAevil")
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        // A table of the same name in the daemon's file does not hide root's.
        daemon
            .write(|tx| {
                tx.execute_batch(
                    "CREATE TABLE main.user_keys (id INTEGER PRIMARY KEY, user_id INTEGER, public_key TEXT, created_ms INTEGER);
                     INSERT INTO main.user_keys VALUES (7, 1, 'ssh-ed25519 AAAAevil', 0);",
                )?;
                Ok(())
            })
            .unwrap();
        drop(admin);
        let admin = Store::open(dir.path()).unwrap();
        assert!(admin.public_keys(user).unwrap().is_empty());
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
            content: None,
        };
        let (id, m) = store.commit_file(&f, Some(i64::MAX)).unwrap();
        let e = store.entry(id).unwrap().unwrap();
        assert_eq!(e.state, EntryState::Lingering);
        assert_eq!(e.message_id, m);
        let msgs = store.messages(None, 10).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].state, MessageState::Queued);
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
            content: None,
        };
        let (id, _) = store.commit_file(&f, None).unwrap();
        let e = store.entry(id).unwrap().unwrap();
        let file = PickupFile {
            name: "a.edi".into(),
            blob,
            size: 1,
            content: None,
        };
        store.fail_entries(&e, &[(id, file)], "Too big.").unwrap();
        let failed = BoxRef {
            kind: BoxKind::Failed,
            ..outbox
        };
        assert_eq!(names_at_top(&store, failed), ["a.edi", "a.edi.reason.txt"]);
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
            content: None,
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
