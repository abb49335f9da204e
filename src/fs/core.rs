//! The filesystem core: the tree, open files and uploads in progress, in our own types.
//! The FUSE adapter (`fuse.rs`) only translates kernel requests into these calls and
//! results into replies. This file holds the shared state, identities and handles; the
//! work is split by section: `tree` resolves names and lists folders, `drafts` runs
//! uploads from open to commit, `outbox` changes the tree (rename, delete, folders,
//! background pickup), `paths` names things for the audit trail and logs. Every outbox
//! decision (when an upload becomes a message, the limits, the reasons) is taken in
//! `crate::mailbox`.
//!
//! Locking: no lock that another user's request needs is held across file I/O, hashing
//! or a SQLite commit. Pickup is serialized per outbox (`MailboxFs::outbox_lock`), which
//! only requests into that same outbox take; the shared maps (inodes, drafts, handles)
//! are held only to look up or insert.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::drafts::Draft;
use super::inodes::{Inodes, Key, ROOT_INO};
use crate::config::Config;
use crate::store::{BoxRef, Store, StoreError};
use crate::timefmt::now_ms;

/// An errno to answer the kernel with, and what caused it (logged once, by the adapter,
/// for errors that are ours rather than the caller's).
#[derive(Debug, Clone)]
pub struct Errno {
    /// The errno value.
    pub code: i32,
    /// The underlying error, for the log.
    pub cause: Option<Arc<str>>,
}

impl Errno {
    /// A plain errno (the caller's mistake or a refusal: nothing to log).
    pub const fn new(code: i32) -> Errno {
        Errno { code, cause: None }
    }

    /// EIO (or the I/O error's own ENOSPC/EDQUOT/EFBIG), keeping the cause for the log.
    pub fn io(e: std::io::Error) -> Errno {
        let code = match e.raw_os_error() {
            Some(n @ (libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) => n,
            _ => libc::EIO,
        };
        Errno {
            code,
            cause: Some(e.to_string().into()),
        }
    }

    /// Whether the errno is `code`.
    pub fn is(&self, code: i32) -> bool {
        self.code == code
    }
}

impl PartialEq for Errno {
    fn eq(&self, other: &Errno) -> bool {
        self.code == other.code
    }
}

impl From<StoreError> for Errno {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NotFound(_) => return Errno::new(libc::ENOENT),
            StoreError::Exists(_) => return Errno::new(libc::EEXIST),
            StoreError::NotEmpty(_) => return Errno::new(libc::ENOTEMPTY),
            _ => match e.raw_os_error() {
                Some(n @ (libc::ENOSPC | libc::EDQUOT)) => n,
                _ => libc::EIO,
            },
        };
        Errno {
            code,
            cause: Some(e.to_string().into()),
        }
    }
}

pub(super) type Result<T, E = Errno> = std::result::Result<T, E>;

pub(super) const ENOENT: Errno = Errno::new(libc::ENOENT);
pub(super) const EACCES: Errno = Errno::new(libc::EACCES);
pub(super) const EPERM: Errno = Errno::new(libc::EPERM);

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The calling process's uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Its pid (the task that made the request).
    pub pid: u32,
}

/// File or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A folder.
    Dir,
    /// A regular file.
    File,
}

/// What `stat` shows.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File or folder.
    pub kind: Kind,
    /// Bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (ms since the epoch).
    pub mtime_ms: i64,
    /// Whether the kernel may cache it. User folders must not be cached: the kernel shares
    /// its caches between all callers, and only the owner may see them.
    pub cacheable: bool,
}

/// One directory entry of a listing.
#[derive(Debug, Clone)]
pub struct DirItem {
    /// Name.
    pub name: String,
    /// Attributes (with the inode).
    pub attr: Attr,
}

/// Requested attribute changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// chown uid.
    pub uid: Option<u32>,
    /// chown gid.
    pub gid: Option<u32>,
    /// truncate.
    pub size: Option<u64>,
    /// utimes (ms).
    pub mtime_ms: Option<i64>,
}

/// How `rename` may treat an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// POSIX: replace.
    Replace,
    /// `RENAME_NOREPLACE`.
    NoReplace,
}

/// `statfs` numbers, in 4 KiB blocks.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub free: u64,
    /// Total inodes (files).
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
}

/// Block size reported by `statfs`.
pub const BLOCK: u64 = 4096;

pub(super) enum Handle {
    Blob(Arc<std::fs::File>),
    Bytes(Arc<Vec<u8>>),
    /// `opener`: the process that opened it; only its close can be the explicit last close.
    Draft {
        draft: Arc<Draft>,
        write: bool,
        opener: Option<u32>,
    },
    /// A listing taken at `opendir`; its inodes stay known until the handle is released.
    Dir(Arc<Vec<DirItem>>),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) quota: Option<u64>,
}

/// The mounted mailbox tree.
pub struct MailboxFs {
    pub(super) store: Arc<Store>,
    pub(super) config: Config,
    pub(super) started_ms: i64,
    pub(super) inodes: Mutex<Inodes>,
    pub(super) drafts: Mutex<HashMap<u64, Arc<Draft>>>,
    pub(super) handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    pub(super) next_draft: AtomicU64,
    owners: Mutex<HashMap<i64, (Owner, Instant)>>,
    pub(super) usage: Mutex<HashMap<i64, (u64, Instant)>>,
    /// One lock per outbox: serializes its pickups against uploads, renames and deletions
    /// in it. Only requests into that outbox take it.
    outbox_locks: Mutex<HashMap<BoxRef, Arc<Mutex<()>>>>,
    pub(super) last_sweep: Mutex<Option<Instant>>,
    pub(super) audit: crate::audit::AuditLog,
    /// Our mount's id in `/proc/<pid>/fdinfo` (set once mounted).
    pub(super) mount_id: Mutex<Option<u64>>,
    /// Tells the kernel to drop its cached attributes of an inode (set once mounted).
    invalidate: OnceLock<Invalidator>,
    /// Much memory was freed since the last tick (see `trim_heap_if_shrank`).
    heap_shrank: AtomicBool,
    /// The FUSE connection was set up for passthrough (see `set_data_path`).
    passthrough_connection: AtomicBool,
    /// Passthrough is in use: negotiated, and no backing file was refused since.
    passthrough_active: AtomicBool,
}

/// How file data travels between the kernel and the spool and blob files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// Kernel FUSE passthrough: the kernel reads and writes the files itself.
    Passthrough,
    /// Every byte goes through the mount process (`read`/`write` requests).
    Mount,
}

impl DataPath {
    /// How `mount.status` and the log name it.
    pub fn name(self) -> &'static str {
        match self {
            DataPath::Passthrough => "passthrough",
            DataPath::Mount => "mount",
        }
    }
}

/// A listing of at least this many items frees enough to return to the system.
const BIG_LISTING: usize = 10_000;

/// Drops the kernel's cached attributes of an inode.
pub type Invalidator = Box<dyn Fn(u64) + Send + Sync>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one FUSE thread must not take the whole mount down with poisoned locks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MailboxFs {
    /// A core over `store` with `config`.
    pub fn new(store: Arc<Store>, config: Config) -> MailboxFs {
        let store_dir = &store.state_dir().to_owned();
        MailboxFs {
            store,
            config,
            started_ms: now_ms(),
            inodes: Mutex::new(Inodes::default()),
            drafts: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_draft: AtomicU64::new(1),
            owners: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            outbox_locks: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(None),
            audit: crate::audit::AuditLog::new(store_dir),
            mount_id: Mutex::new(None),
            invalidate: OnceLock::new(),
            heap_shrank: AtomicBool::new(false),
            passthrough_connection: AtomicBool::new(false),
            passthrough_active: AtomicBool::new(false),
        }
    }

    // ---- the data path --------------------------------------------------------------------

    /// Whether the configuration allows FUSE passthrough (asked once, at `init`).
    pub fn passthrough_allowed(&self) -> bool {
        self.config.mount.passthrough == crate::config::PassthroughMode::Auto
    }

    /// Records the data path the kernel agreed to at `init` (`why`: a few words on the
    /// choice), logs it once and writes it to `mount.status` for `as2box doctor`.
    pub fn set_data_path(&self, path: DataPath, why: &str) {
        let on = path == DataPath::Passthrough;
        self.passthrough_connection.store(on, Ordering::Release);
        self.passthrough_active.store(on, Ordering::Release);
        tracing::info!(data_path = path.name(), why, "FUSE data path chosen");
        self.write_status(path, why);
    }

    /// A backing file was refused by the kernel (no CAP_SYS_ADMIN, say): from now on the
    /// mount serves every byte itself, for good.
    pub fn passthrough_failed(&self, e: &std::io::Error) {
        if self.passthrough_active.swap(false, Ordering::AcqRel) {
            let why = format!("the kernel refused a backing file ({e}); the mount copies the data");
            tracing::warn!(error = %e, "FUSE passthrough refused by the kernel: the mount serves file data itself from now on");
            self.write_status(DataPath::Mount, &why);
        }
    }

    fn write_status(&self, path: DataPath, why: &str) {
        let lines = [
            ("pid", std::process::id().to_string()),
            ("data_path", path.name().to_owned()),
            ("why", why.replace('\n', " ")),
        ];
        if let Err(e) = crate::store::write_mount_status(self.store.state_dir(), &lines) {
            tracing::warn!(error = %e, "cannot write mount.status (as2box doctor will not show the data path)");
        }
    }

    /// Whether the connection runs without the write-back cache (passthrough was
    /// negotiated): handles not passed through must then use direct I/O, as the kernel
    /// refuses cached and passthrough opens of one inode at the same time.
    pub fn passthrough_connection(&self) -> bool {
        self.passthrough_connection.load(Ordering::Acquire)
    }

    /// The file the kernel may read and write directly for handle `fh`, if passthrough is
    /// in use and the handle may bypass the mount: stored files, and the uploads of users
    /// without a quota (a quota is checked on every write, so those writes must reach us).
    /// An upload handed out this way is from then on sized and hashed from its spool file.
    pub fn passthrough_file(&self, fh: u64) -> Option<Arc<std::fs::File>> {
        if !self.passthrough_active.load(Ordering::Acquire) {
            return None;
        }
        let draft = match lock(&self.handles).get(&fh) {
            Some(Handle::Blob(f)) => return Some(f.clone()),
            Some(Handle::Draft { draft, .. }) => draft.clone(),
            _ => return None,
        };
        if self.owner(draft.user).map_or(true, |o| o.quota.is_some()) {
            return None;
        }
        self.draft_passes_through(&draft)
    }

    // ---- identity and permissions -------------------------------------------------------

    pub(super) fn owner(&self, user: i64) -> Result<Owner> {
        if let Some((o, at)) = lock(&self.owners).get(&user) {
            if at.elapsed() < Duration::from_secs(1) {
                return Ok(*o);
            }
        }
        let u = self.store.user_by_id(user)?.ok_or(ENOENT)?;
        let o = Owner {
            uid: u.uid,
            gid: u.gid,
            quota: u.quota,
        };
        lock(&self.owners).insert(user, (o, Instant::now()));
        Ok(o)
    }

    /// Only the owning user and root see inside a user's tree.
    pub(super) fn check_access(&self, c: &Caller, key: &Key) -> Result<Owner> {
        let Some(user) = key.user() else {
            return Ok(Owner {
                uid: 0,
                gid: 0,
                quota: None,
            });
        };
        let o = self.owner(user)?;
        if c.uid == 0 || c.uid == o.uid {
            Ok(o)
        } else {
            Err(EACCES)
        }
    }

    /// The lock that serializes changes in outbox `b` (see the module's notes on locking).
    pub(super) fn outbox_lock(&self, b: BoxRef) -> Arc<Mutex<()>> {
        lock(&self.outbox_locks).entry(b).or_default().clone()
    }

    // ---- inodes and handles ---------------------------------------------------------------

    /// The node of `ino`. An inode we no longer know (a discarded upload, one the kernel
    /// forgot) answers ESTALE: the kernel then walks the path again instead of failing on
    /// a name it cached (re-creating a name right after a failed upload, for one).
    pub(super) fn key(&self, ino: u64) -> Result<Key> {
        lock(&self.inodes).key(ino).ok_or(Errno::new(libc::ESTALE))
    }

    pub(super) fn ino(&self, key: Key) -> u64 {
        lock(&self.inodes).ino(key)
    }

    /// The kernel now holds one more reference to `ino` (an entry reply it accepted).
    /// False when `ino` was forgotten meanwhile (see `Inodes::remember`).
    pub fn remember(&self, ino: u64) -> bool {
        lock(&self.inodes).remember(ino)
    }

    /// The kernel dropped `n` references to `ino`; an inode nobody refers to any more is
    /// forgotten (its number is not used again).
    pub fn forget(&self, ino: u64, n: u64) {
        let busy = lock(&self.drafts).contains_key(&ino);
        let mut inodes = lock(&self.inodes);
        inodes.forget(ino, n, busy);
        if inodes.take_shrunk() {
            self.heap_shrank.store(true, Ordering::Relaxed);
        }
    }

    /// Returns freed heap memory to the system after a huge listing or a mass `forget`
    /// (the allocator keeps it otherwise, and the mount's RSS would stay at its peak).
    /// Called from the background tick, never inside a request.
    pub(super) fn trim_heap_if_shrank(&self) {
        if self.heap_shrank.swap(false, Ordering::Relaxed) {
            // SAFETY: malloc_trim only releases free memory of the allocator.
            unsafe { libc::malloc_trim(0) };
            // Rare (after a mass forget), and what an admin wondering about the mount's
            // memory wants to see.
            let known_inodes = lock(&self.inodes).len();
            tracing::info!(
                known_inodes,
                "inode table shrank; freed memory returned to the system"
            );
        }
    }

    pub(super) fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    /// Opens a folder for listing: the listing is taken now, so that paging through a large
    /// folder is consistent and costs one query.
    pub fn opendir(&self, c: &Caller, ino: u64) -> Result<u64> {
        let key = self.key(ino)?;
        let o = self.check_access(c, &key)?;
        let items = self.list(ino, &key, &o)?;
        Ok(self.new_fh(Handle::Dir(Arc::new(items))))
    }

    /// The listing taken by `opendir`.
    pub fn dir_items(&self, fh: u64) -> Result<Arc<Vec<DirItem>>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Dir(items)) => Ok(items.clone()),
            _ => Err(Errno::new(libc::EBADF)),
        }
    }

    /// Drops a handle of any kind; for writers this is the kernel's last word, so an upload
    /// that was never flushed is finished here.
    pub fn release(&self, c: &Caller, fh: u64) {
        let h = lock(&self.handles).remove(&fh);
        match h {
            Some(Handle::Draft { draft, write, .. }) if write => self.release_writer(c, &draft),
            Some(Handle::Dir(items)) => {
                // Inodes handed out only in this listing (never looked up by the kernel)
                // are not needed any more.
                let mut inodes = lock(&self.inodes);
                for item in items.iter() {
                    inodes.unlist(item.attr.ino);
                }
                if items.len() >= BIG_LISTING {
                    self.heap_shrank.store(true, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    // ---- whole-tree calls -----------------------------------------------------------------

    /// `access(2)`: the mode bits `stat` shows, applied as the kernel would.
    pub fn access(&self, c: &Caller, ino: u64, mask: i32) -> Result<()> {
        let a = self.getattr(c, ino)?;
        if c.uid == 0 {
            return Ok(());
        }
        let mode = u32::from(a.mode);
        let bits = if c.uid == a.uid {
            (mode >> 6) & 7
        } else if c.gid == a.gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        if (mask as u32) & 7 & !bits != 0 {
            return Err(EACCES);
        }
        Ok(())
    }

    /// `statfs`: the user's quota if one is set, else the disk of the state folder.
    pub fn statfs(&self, c: &Caller, ino: u64) -> Result<FsStats> {
        let key = self.key(ino)?;
        let o = self.check_access(c, &key)?;
        if let (Some(user), Some(quota)) = (key.user(), o.quota) {
            let used = self.user_usage(user)? + self.drafts_bytes(user);
            let blocks = quota.div_ceil(BLOCK);
            let used_blocks = used.div_ceil(BLOCK).min(blocks);
            return Ok(FsStats {
                blocks,
                free: blocks - used_blocks,
                files: 1 << 20,
                files_free: 1 << 20,
            });
        }
        let path = std::ffi::CString::new(self.store.state_dir().as_os_str().as_encoded_bytes())
            .map_err(|_| Errno::new(libc::EIO))?;
        // SAFETY: statvfs writes into the zeroed struct we pass.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return Err(Errno::io(std::io::Error::last_os_error()));
        }
        let frsize = s.f_frsize.max(1);
        Ok(FsStats {
            blocks: s.f_blocks * frsize / BLOCK,
            free: s.f_bavail * frsize / BLOCK,
            files: s.f_files,
            files_free: s.f_favail,
        })
    }

    /// Bytes the user stores (cached briefly: every growing write asks).
    pub(super) fn user_usage(&self, user: i64) -> Result<u64> {
        if let Some((n, at)) = lock(&self.usage).get(&user) {
            if at.elapsed() < Duration::from_millis(500) {
                return Ok(*n);
            }
        }
        let n = self.store.usage(user)?;
        lock(&self.usage).insert(user, (n, Instant::now()));
        Ok(n)
    }

    /// Whether this handle must bypass the kernel's page cache (asked for handles not
    /// passed through):
    /// - every handle, on a passthrough connection (see `passthrough_connection`);
    /// - generated content (`authorized_keys`), whose size can change between opens;
    /// - uploads of a user with a quota: the kernel's write-back cache would accept writes
    ///   past the quota and report the failure only at close, and a write past the quota
    ///   must fail itself (SEMANTICS.md "Quota").
    pub fn direct_io(&self, fh: u64) -> bool {
        if self.passthrough_connection() {
            return true;
        }
        let user = match lock(&self.handles).get(&fh) {
            Some(Handle::Bytes(_)) => return true,
            Some(Handle::Draft {
                draft, write: true, ..
            }) => draft.user,
            _ => return false,
        };
        // Unknown owner: the safe side (every write reaches us and is checked).
        self.owner(user).map_or(true, |o| o.quota.is_some())
    }

    /// Whether the kernel may keep what it cached of the file across opens: stored files
    /// (immutable; a held file rewritten through the mount changes the kernel's cache
    /// itself), so that reading a file again, or right after uploading it, costs no reads.
    pub fn keep_cache(&self, fh: u64) -> bool {
        matches!(lock(&self.handles).get(&fh), Some(Handle::Blob(_)))
    }

    // ---- the kernel's caches ----------------------------------------------------------------

    /// Sets how to drop the kernel's cached attributes of an inode, once mounted.
    ///
    /// With the write-back cache the kernel keeps a regular file's attributes until their
    /// cache time ends even across a rename (it refreshes only the change time, which it
    /// then keeps itself); a file whose mode changed here must be invalidated explicitly.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidate.set(f);
    }

    /// Drops the kernel's cached attributes of `ino` (its mode or state changed).
    pub(super) fn invalidate(&self, ino: u64) {
        if let Some(f) = self.invalidate.get() {
            f(ino);
        }
    }

    /// Drops the kernel's cached attributes of entries whose state a pickup changed.
    pub(super) fn invalidate_entries(&self, files: &[crate::store::Entry]) {
        for f in files {
            let key = Key::Entry {
                user: f.user_id,
                id: f.id,
            };
            let known = lock(&self.inodes).find(&key);
            if let Some(ino) = known {
                self.invalidate(ino);
            }
        }
    }

    /// Records the mount id once the mount exists (for recognising our files in other
    /// processes' descriptor tables).
    pub fn set_mount_id(&self, id: Option<u64>) {
        *lock(&self.mount_id) = id;
    }

    /// The root inode (for tests and the adapter).
    pub fn root(&self) -> u64 {
        ROOT_INO
    }
}
