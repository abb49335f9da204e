//! The filesystem core: the tree, open files and uploads in progress, in our own types.
//! The FUSE adapter (`fuse.rs`) only translates kernel requests into these calls and
//! results into replies; every decision is taken here or in `crate::mailbox`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use openssl::sha::Sha256;
use tracing::{debug, info, warn};

use super::closer;
use super::inodes::{Inodes, Key, ROOT_INO};
use super::running_hash::RunningHash;
use crate::config::Config;
use crate::mailbox::{self, CloseOutcome, NodeClass};
use crate::names;
use crate::store::{
    hex, BoxKind, BoxRef, Entry, EntryState, NewFile, PickupFile, RenamePickup, Store, StoreError,
};
use crate::timefmt::now_ms;

/// An errno to answer the kernel with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<StoreError> for Errno {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound(_) => Errno(libc::ENOENT),
            StoreError::Exists(_) => Errno(libc::EEXIST),
            StoreError::NotEmpty(_) => Errno(libc::ENOTEMPTY),
            _ => {
                let errno = match e.raw_os_error() {
                    Some(n @ (libc::ENOSPC | libc::EDQUOT)) => n,
                    _ => libc::EIO,
                };
                warn!(error = %e, "store error answered with errno {errno}");
                Errno(errno)
            }
        }
    }
}

type Result<T, E = Errno> = std::result::Result<T, E>;

const ENOENT: Errno = Errno(libc::ENOENT);
const EACCES: Errno = Errno(libc::EACCES);
const EPERM: Errno = Errno(libc::EPERM);

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

/// Large uploads are handed to the kernel's writeback every this many bytes.
const WRITEBACK_STEP: u64 = 16 << 20;

/// Block size reported by `statfs`.
pub const BLOCK: u64 = 4096;

/// An upload in progress: content in a spool file until the writer closes it.
struct Draft {
    ino: u64,
    user: i64,
    inner: Mutex<DraftInner>,
}

struct DraftInner {
    b: BoxRef,
    parent: i64,
    name: String,
    file: Arc<File>,
    spool: crate::store::SpoolName,
    size: u64,
    /// The content's sha256 as far as the writes tell it.
    hash: RunningHash,
    /// Bytes already handed to the kernel's writeback (`sync_file_range`).
    flushed: u64,
    mtime_ms: i64,
    replaces: Option<i64>,
    writers: usize,
    /// A sticky error (the quota): the draft is discarded at close and close fails.
    error: Option<Errno>,
    unlinked: bool,
    done: bool,
}

/// Where an upload starts from.
enum Origin<'a> {
    /// A new file.
    New {
        b: BoxRef,
        parent: i64,
        name: &'a str,
    },
    /// An existing held upload, resumed (its content kept) or rewritten (`truncate`).
    Rewrite { entry: &'a Entry, truncate: bool },
}

enum Handle {
    Blob(Arc<File>),
    Bytes(Arc<Vec<u8>>),
    /// `opener`: the process that opened it; only its close can be the explicit last close.
    Draft {
        draft: Arc<Draft>,
        write: bool,
        opener: Option<u32>,
    },
    Dir(Arc<Vec<DirItem>>),
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    quota: Option<u64>,
}

/// The mounted mailbox tree.
pub struct MailboxFs {
    store: Arc<Store>,
    config: Config,
    started_ms: i64,
    inodes: Mutex<Inodes>,
    drafts: Mutex<HashMap<u64, Arc<Draft>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    next_draft: AtomicU64,
    owners: Mutex<HashMap<i64, (Owner, Instant)>>,
    usage: Mutex<HashMap<i64, (u64, Instant)>>,
    /// Serializes batch pickup against uploads into outbox folders.
    batch_lock: Mutex<()>,
    last_sweep: Mutex<Option<Instant>>,
    audit: crate::audit::AuditLog,
    /// Our mount's id in `/proc/<pid>/fdinfo` (set once mounted).
    mount_id: Mutex<Option<u64>>,
    /// Tells the kernel to drop its cached attributes of an inode (set once mounted).
    invalidate: OnceLock<Invalidator>,
}

/// Drops the kernel's cached attributes of an inode.
pub type Invalidator = Box<dyn Fn(u64) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
            batch_lock: Mutex::new(()),
            last_sweep: Mutex::new(None),
            audit: crate::audit::AuditLog::new(store_dir),
            mount_id: Mutex::new(None),
            invalidate: OnceLock::new(),
        }
    }

    // ---- identity and permissions -------------------------------------------------------

    fn owner(&self, user: i64) -> Result<Owner> {
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
    fn check_access(&self, c: &Caller, key: &Key) -> Result<Owner> {
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

    fn key(&self, ino: u64) -> Result<Key> {
        lock(&self.inodes).key(ino).ok_or(ENOENT)
    }

    fn ino(&self, key: Key) -> u64 {
        lock(&self.inodes).ino(key)
    }

    fn draft(&self, ino: u64) -> Option<Arc<Draft>> {
        lock(&self.drafts).get(&ino).cloned()
    }

    /// A snapshot of the uploads in progress. The map's lock is released before any
    /// draft's own lock is taken (finishing a draft takes them in the other order).
    fn all_drafts(&self) -> Vec<Arc<Draft>> {
        lock(&self.drafts).values().cloned().collect()
    }

    fn find_draft(&self, b: BoxRef, parent: i64, name: &str) -> Option<Arc<Draft>> {
        self.all_drafts().into_iter().find(|d| {
            let i = lock(&d.inner);
            !i.unlinked && !i.done && i.b == b && i.parent == parent && i.name == name
        })
    }

    fn drafts_in(&self, b: BoxRef, parent: i64) -> Vec<Arc<Draft>> {
        self.all_drafts()
            .into_iter()
            .filter(|d| {
                let i = lock(&d.inner);
                !i.unlinked && !i.done && i.b == b && i.parent == parent
            })
            .collect()
    }

    // ---- resolving the tree -------------------------------------------------------------

    fn entry(&self, id: i64) -> Result<Entry> {
        let e = self.store.entry(id)?.ok_or(ENOENT)?;
        if mailbox::visible(&e, now_ms()) {
            Ok(e)
        } else {
            Err(ENOENT)
        }
    }

    /// The box and folder a directory key stands for, if it is a box or a folder in one.
    fn box_dir(&self, key: &Key) -> Result<Option<(BoxRef, i64, Option<Entry>)>> {
        Ok(match key {
            Key::Box { b, .. } => Some((*b, 0, None)),
            Key::Entry { id, .. } => {
                let e = self.entry(*id)?;
                if !e.is_dir {
                    return Err(Errno(libc::ENOTDIR));
                }
                Some((e.boxref, e.id, Some(e)))
            }
            _ => None,
        })
    }

    fn partner_ids(&self, user: i64, as2: &str) -> Result<(Option<i64>, Option<i64>)> {
        let prod = self.store.partner(user, as2, false)?.map(|p| p.id);
        let test = self.store.partner(user, as2, true)?.map(|p| p.id);
        Ok((prod, test))
    }

    fn station_of(&self, user: i64, station: i64) -> Result<crate::store::Station> {
        self.store
            .station_by_id(station)?
            .filter(|s| s.user_id == user)
            .ok_or(ENOENT)
    }

    fn child_key(&self, parent: &Key, name: &str) -> Result<Key> {
        match parent {
            Key::Root => {
                let u = self.store.user(name)?.ok_or(ENOENT)?;
                Ok(Key::Home(u.id))
            }
            Key::Home(u) => match name {
                ".ssh" => Ok(Key::Ssh(*u)),
                "as2gateway" => Ok(Key::Gateway(*u)),
                _ => Err(ENOENT),
            },
            Key::Ssh(u) if name == "authorized_keys" => Ok(Key::Keys(*u)),
            Key::Ssh(_) => Err(ENOENT),
            Key::Gateway(u) => {
                let s = self.store.station(name)?.filter(|s| s.user_id == *u);
                Ok(Key::Station {
                    user: *u,
                    station: s.ok_or(ENOENT)?.id,
                })
            }
            Key::Station { user, station } => {
                self.station_of(*user, *station)?;
                match self.partner_ids(*user, name)? {
                    (None, None) => Err(ENOENT),
                    _ => Ok(Key::Partner {
                        user: *user,
                        station: *station,
                        as2: name.to_owned(),
                    }),
                }
            }
            Key::Partner { user, station, as2 } | Key::Test { user, station, as2 } => {
                let (prod, test) = self.partner_ids(*user, as2)?;
                let in_test = matches!(parent, Key::Test { .. });
                if !in_test && name == "test" && test.is_some() {
                    return Ok(Key::Test {
                        user: *user,
                        station: *station,
                        as2: as2.clone(),
                    });
                }
                let partner = if in_test { test } else { prod };
                match (partner, BoxKind::from_name(name)) {
                    (Some(p), Some(kind)) => Ok(Key::Box {
                        user: *user,
                        b: BoxRef {
                            station_id: *station,
                            partner_id: p,
                            kind,
                        },
                    }),
                    _ => Err(ENOENT),
                }
            }
            Key::Box { .. } | Key::Entry { .. } => {
                let (b, folder, _) = self.box_dir(parent)?.ok_or(ENOENT)?;
                let user = parent.user().unwrap_or(0);
                if let Some(d) = self.find_draft(b, folder, name) {
                    return Ok(lock(&self.inodes)
                        .key(d.ino)
                        .unwrap_or(Key::Draft { user, id: 0 }));
                }
                let e = self.store.entry_by_name(b, folder, name)?.ok_or(ENOENT)?;
                if !mailbox::visible(&e, now_ms()) {
                    return Err(ENOENT);
                }
                Ok(Key::Entry { user, id: e.id })
            }
            _ => Err(Errno(libc::ENOTDIR)),
        }
    }

    fn dir_attr(&self, ino: u64, class: NodeClass, o: &Owner, mtime_ms: i64) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            mode: class.mode(),
            uid: if class.user_owned() { o.uid } else { 0 },
            gid: o.gid,
            mtime_ms,
            cacheable: true,
        }
    }

    fn draft_attr(&self, d: &Draft, o: &Owner) -> Attr {
        let i = lock(&d.inner);
        Attr {
            ino: d.ino,
            kind: Kind::File,
            size: i.size,
            mode: NodeClass::WritableFile.mode(),
            uid: o.uid,
            gid: o.gid,
            mtime_ms: i.mtime_ms,
            cacheable: true,
        }
    }

    fn entry_attr(&self, ino: u64, e: &Entry, o: &Owner) -> Attr {
        let class = mailbox::entry_class(e);
        Attr {
            ino,
            kind: if e.is_dir { Kind::Dir } else { Kind::File },
            size: e.size,
            mode: class.mode(),
            uid: o.uid,
            gid: o.gid,
            mtime_ms: e.mtime_ms,
            cacheable: true,
        }
    }

    /// Attributes of a node, checking that it still exists.
    fn attr_of(&self, ino: u64, key: &Key, o: &Owner) -> Result<Attr> {
        if let Some(d) = self.draft(ino) {
            return Ok(self.draft_attr(&d, o));
        }
        let t = self.started_ms;
        match key {
            Key::Root => Ok(self.dir_attr(ino, NodeClass::Root, o, t)),
            Key::Home(u) | Key::Ssh(u) | Key::Gateway(u) => {
                let user = self.store.user_by_id(*u)?.ok_or(ENOENT)?;
                let class = if matches!(key, Key::Home(_)) {
                    NodeClass::UserHome
                } else {
                    NodeClass::Structure
                };
                Ok(self.dir_attr(ino, class, o, user.created_ms))
            }
            Key::Keys(u) => {
                let text = self.keys_text(*u)?;
                // Not cached: sshd must see a key the moment it is added.
                Ok(Attr {
                    ino,
                    kind: Kind::File,
                    size: text.len() as u64,
                    mode: NodeClass::KeysFile.mode(),
                    uid: 0,
                    gid: o.gid,
                    mtime_ms: t,
                    cacheable: false,
                })
            }
            Key::Station { user, station } => {
                let s = self.station_of(*user, *station)?;
                Ok(self.dir_attr(ino, NodeClass::Structure, o, s.created_ms))
            }
            Key::Partner { user, station, as2 } | Key::Test { user, station, as2 } => {
                self.station_of(*user, *station)?;
                let (prod, test) = self.partner_ids(*user, as2)?;
                let exists = match key {
                    Key::Test { .. } => test.is_some(),
                    _ => prod.is_some() || test.is_some(),
                };
                if !exists {
                    return Err(ENOENT);
                }
                Ok(self.dir_attr(ino, NodeClass::Structure, o, t))
            }
            Key::Box { user, b } => {
                self.station_of(*user, b.station_id)?;
                let p = self.store.partner_by_id(b.partner_id)?.ok_or(ENOENT)?;
                Ok(self.dir_attr(ino, NodeClass::Box(b.kind), o, p.created_ms))
            }
            Key::Entry { id, .. } => {
                let e = self.entry(*id).map_err(stale)?;
                Ok(self.entry_attr(ino, &e, o))
            }
            Key::Draft { .. } => Err(ENOENT),
        }
    }

    fn keys_text(&self, user: i64) -> Result<Vec<u8>> {
        let mut text = String::new();
        for k in self.store.public_keys(user)? {
            text.push_str(k.trim_end());
            text.push('\n');
        }
        Ok(text.into_bytes())
    }

    /// Looks up `name` in folder `parent`.
    pub fn lookup(&self, c: &Caller, parent: u64, name: &str) -> Result<Attr> {
        let pkey = self.key(parent)?;
        let o = self.check_access(c, &pkey)?;
        let key = self.child_key(&pkey, name)?;
        // A user folder itself shows its owner and mode to everybody, as /home/<user> does
        // (the kernel then refuses everything inside it to other users by those bits).
        let o = match (&pkey, &key) {
            (Key::Root, Key::Home(u)) => self.owner(*u)?,
            _ => o,
        };
        let ino = self.ino(key.clone());
        self.attr_of(ino, &key, &o)
    }

    /// `stat` of an inode.
    pub fn getattr(&self, c: &Caller, ino: u64) -> Result<Attr> {
        let key = self.key(ino)?;
        let o = match key {
            Key::Home(u) => self.owner(u)?,
            _ => self.check_access(c, &key)?,
        };
        self.attr_of(ino, &key, &o)
    }

    // ---- listing -------------------------------------------------------------------------

    fn list(&self, ino: u64, key: &Key, o: &Owner) -> Result<Vec<DirItem>> {
        let mut names: Vec<Key> = Vec::new();
        let mut items = Vec::new();
        let parent_attr = self.attr_of(ino, key, o)?;
        if parent_attr.kind != Kind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        items.push(DirItem {
            name: ".".into(),
            attr: parent_attr,
        });
        items.push(DirItem {
            name: "..".into(),
            attr: parent_attr,
        });
        match key {
            Key::Root => {
                for u in self.store.users()? {
                    let uo = Owner {
                        uid: u.uid,
                        gid: u.gid,
                        quota: u.quota,
                    };
                    let ino = self.ino(Key::Home(u.id));
                    items.push(DirItem {
                        name: u.name.clone(),
                        attr: self.dir_attr(ino, NodeClass::UserHome, &uo, u.created_ms),
                    });
                }
                return Ok(items);
            }
            Key::Home(u) => {
                names.push(Key::Ssh(*u));
                names.push(Key::Gateway(*u));
            }
            Key::Ssh(u) => names.push(Key::Keys(*u)),
            Key::Gateway(u) => {
                for s in self.store.stations(Some(*u))? {
                    names.push(Key::Station {
                        user: *u,
                        station: s.id,
                    });
                }
            }
            Key::Station { user, station } => {
                let mut seen = std::collections::BTreeSet::new();
                for p in self.store.partners(Some(*user))? {
                    if seen.insert(p.as2_id.clone()) {
                        names.push(Key::Partner {
                            user: *user,
                            station: *station,
                            as2: p.as2_id,
                        });
                    }
                }
            }
            Key::Partner { user, station, as2 } | Key::Test { user, station, as2 } => {
                let (prod, test) = self.partner_ids(*user, as2)?;
                let in_test = matches!(key, Key::Test { .. });
                let partner = if in_test { test } else { prod };
                if let Some(p) = partner {
                    for kind in BoxKind::ALL {
                        names.push(Key::Box {
                            user: *user,
                            b: BoxRef {
                                station_id: *station,
                                partner_id: p,
                                kind,
                            },
                        });
                    }
                }
                if !in_test && test.is_some() {
                    names.push(Key::Test {
                        user: *user,
                        station: *station,
                        as2: as2.clone(),
                    });
                }
            }
            Key::Box { .. } | Key::Entry { .. } => {
                let (b, folder, _) = self.box_dir(key)?.ok_or(ENOENT)?;
                let user = key.user().unwrap_or(0);
                let drafts = self.drafts_in(b, folder);
                let now = now_ms();
                let shadowed: std::collections::HashSet<u64> =
                    drafts.iter().map(|d| d.ino).collect();
                for e in self.store.entries(b, folder)? {
                    if !mailbox::visible(&e, now) {
                        continue;
                    }
                    let ino = self.ino(Key::Entry { user, id: e.id });
                    if shadowed.contains(&ino) {
                        continue;
                    }
                    items.push(DirItem {
                        name: e.name.clone(),
                        attr: self.entry_attr(ino, &e, o),
                    });
                }
                for d in drafts {
                    let name = lock(&d.inner).name.clone();
                    items.push(DirItem {
                        name,
                        attr: self.draft_attr(&d, o),
                    });
                }
                return Ok(items);
            }
            _ => return Err(Errno(libc::ENOTDIR)),
        }
        for k in names {
            let name = self.key_name(&k)?;
            let ino = self.ino(k.clone());
            if let Ok(attr) = self.attr_of(ino, &k, o) {
                items.push(DirItem { name, attr });
            }
        }
        Ok(items)
    }

    fn key_name(&self, key: &Key) -> Result<String> {
        Ok(match key {
            Key::Ssh(_) => ".ssh".into(),
            Key::Keys(_) => "authorized_keys".into(),
            Key::Gateway(_) => "as2gateway".into(),
            Key::Station { station, .. } => {
                self.store.station_by_id(*station)?.ok_or(ENOENT)?.as2_id
            }
            Key::Partner { as2, .. } => as2.clone(),
            Key::Test { .. } => "test".into(),
            Key::Box { b, .. } => b.kind.name().into(),
            _ => return Err(ENOENT),
        })
    }

    fn new_fh(&self, h: Handle) -> u64 {
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
            _ => Err(Errno(libc::EBADF)),
        }
    }

    /// Drops a handle of any kind; for writers this is the kernel's last word, so an upload
    /// that was never flushed is finished here.
    pub fn release(&self, c: &Caller, fh: u64) {
        let h = lock(&self.handles).remove(&fh);
        if let Some(Handle::Draft { draft, write, .. }) = h {
            if write {
                let (last, pending) = {
                    let mut i = lock(&draft.inner);
                    i.writers = i.writers.saturating_sub(1);
                    (i.writers == 0, !i.done)
                };
                if last && pending {
                    // The last descriptor is gone; who closed it is unknown here (release
                    // may come from a kernel thread), so it counts as a normal close.
                    if let Err(e) = self.finish_draft(&draft, c, false) {
                        warn!(errno = e.0, "upload finished at release failed");
                    }
                }
            }
        }
    }

    // ---- changing the tree ---------------------------------------------------------------

    /// Where new things may be created in folder `parent`: the box and folder, if the
    /// user may create there.
    fn creatable(&self, c: &Caller, parent: u64) -> Result<(Key, Owner, BoxRef, i64)> {
        let key = self.key(parent)?;
        let o = self.check_access(c, &key)?;
        match self.box_dir(&key)? {
            Some((b, folder, fentry)) if b.kind == BoxKind::Outbox => {
                if let Some(f) = fentry {
                    if f.state != EntryState::Held {
                        // A folder already picked up is read-only.
                        return Err(EACCES);
                    }
                }
                Ok((key, o, b, folder))
            }
            _ => Err(EACCES),
        }
    }

    fn check_name(name: &str) -> Result<()> {
        names::check_fs_name(name.as_bytes()).map_err(|e| match e {
            names::NameError::TooLong => Errno(libc::ENAMETOOLONG),
            _ => Errno(libc::EINVAL),
        })
    }

    fn exists_in(&self, b: BoxRef, folder: i64, name: &str) -> Result<bool> {
        Ok(self.find_draft(b, folder, name).is_some()
            || self
                .store
                .entry_by_name(b, folder, name)?
                .is_some_and(|e| mailbox::visible(&e, now_ms())))
    }

    /// `mkdir`: only at the top of an outbox (a multi-attachment message).
    fn mkdir_inner(&self, c: &Caller, parent: u64, name: &str) -> Result<Attr> {
        let key = self.key(parent)?;
        self.check_access(c, &key)?;
        if let Some((b, folder, _)) = self.box_dir(&key)? {
            if b.kind == BoxKind::Outbox && folder != 0 {
                return Err(EPERM);
            }
        }
        let (key, o, b, _) = self.creatable(c, parent)?;
        Self::check_name(name)?;
        if self.exists_in(b, 0, name)? {
            return Err(Errno(libc::EEXIST));
        }
        let user = key.user().unwrap_or(0);
        let id = self.store.create_folder(user, b, name)?;
        info!(user, name, "outbox folder created");
        let ino = self.ino(Key::Entry { user, id });
        let e = self.entry(id)?;
        Ok(self.entry_attr(ino, &e, &o))
    }

    /// `create`: a new upload in an outbox or an outbox folder.
    fn create_inner(
        &self,
        c: &Caller,
        parent: u64,
        name: &str,
        truncate: bool,
    ) -> Result<(Attr, u64)> {
        let (key, o, b, folder) = self.creatable(c, parent)?;
        Self::check_name(name)?;
        let _batch = lock(&self.batch_lock);
        if let Some(d) = self.find_draft(b, folder, name) {
            // O_CREAT without O_EXCL on a name that appeared meanwhile: open it.
            drop(_batch);
            let fh = self.open_draft(c, &d, true, truncate)?;
            return Ok((self.draft_attr(&d, &o), fh));
        }
        let user = key.user().unwrap_or(0);
        let existing = self.store.entry_by_name(b, folder, name)?;
        let replaces = match existing {
            Some(e) if mailbox::visible(&e, now_ms()) => {
                if e.is_dir {
                    return Err(Errno(libc::EISDIR));
                }
                if mailbox::entry_class(&e) != NodeClass::WritableFile {
                    return Err(EACCES);
                }
                Some(e)
            }
            _ => None,
        };
        let ino = match &replaces {
            Some(e) => self.ino(Key::Entry { user, id: e.id }),
            None => self.ino(Key::Draft {
                user,
                id: self.next_draft.fetch_add(1, Ordering::Relaxed),
            }),
        };
        let origin = match &replaces {
            Some(entry) => Origin::Rewrite { entry, truncate },
            None => Origin::New {
                b,
                parent: folder,
                name,
            },
        };
        let draft = self.new_draft(ino, user, origin)?;
        let fh = self.open_draft(c, &draft, true, false)?;
        debug!(user, name, "upload started");
        Ok((self.draft_attr(&draft, &o), fh))
    }

    fn new_draft(&self, ino: u64, user: i64, origin: Origin<'_>) -> Result<Arc<Draft>> {
        let (b, parent, name, replaces, truncate) = match origin {
            Origin::New { b, parent, name } => (b, parent, name, None, true),
            Origin::Rewrite { entry, truncate } => (
                entry.boxref,
                entry.parent,
                entry.name.as_str(),
                Some(entry),
                truncate,
            ),
        };
        let (spool, file) = self.store.blobs().spool_file()?;
        let mut size = 0;
        let mut hash = RunningHash::new();
        let mut mtime_ms = now_ms();
        if let (Some(e), false) = (replaces, truncate) {
            // Resuming or rewriting a held upload: start from its current content.
            if let Some(blob) = &e.blob {
                let mut src = self.store.blobs().open_blob(blob)?;
                let mut dst = &file;
                std::io::copy(&mut src, &mut dst).map_err(|_| Errno(libc::EIO))?;
                size = e.size;
                hash = RunningHash::unknown();
            }
            mtime_ms = e.mtime_ms;
        }
        let draft = Arc::new(Draft {
            ino,
            user,
            inner: Mutex::new(DraftInner {
                b,
                parent,
                name: name.to_owned(),
                file: Arc::new(file),
                spool,
                size,
                hash,
                flushed: 0,
                mtime_ms,
                replaces: replaces.map(|e| e.id),
                writers: 0,
                error: None,
                unlinked: false,
                done: false,
            }),
        });
        lock(&self.drafts).insert(ino, draft.clone());
        Ok(draft)
    }

    fn open_draft(&self, c: &Caller, d: &Arc<Draft>, write: bool, truncate: bool) -> Result<u64> {
        if write {
            let mut i = lock(&d.inner);
            if i.done {
                return Err(ENOENT);
            }
            i.writers += 1;
            if truncate {
                i.file.set_len(0).map_err(|_| Errno(libc::EIO))?;
                i.size = 0;
                i.hash = RunningHash::new();
            }
        }
        Ok(self.new_fh(Handle::Draft {
            draft: d.clone(),
            write,
            opener: if write { closer::tgid(c.pid) } else { None },
        }))
    }

    /// `open` of an existing file.
    fn open_inner(&self, c: &Caller, ino: u64, write: bool, truncate: bool) -> Result<u64> {
        let key = self.key(ino)?;
        self.check_access(c, &key)?;
        if let Some(d) = self.draft(ino) {
            return self.open_draft(c, &d, write, truncate);
        }
        match &key {
            Key::Keys(u) => {
                if write {
                    return Err(EACCES);
                }
                Ok(self.new_fh(Handle::Bytes(Arc::new(self.keys_text(*u)?))))
            }
            Key::Entry { user, id } => {
                let e = self.entry(*id).map_err(stale)?;
                if e.is_dir {
                    return Err(Errno(libc::EISDIR));
                }
                if write {
                    if mailbox::entry_class(&e) != NodeClass::WritableFile {
                        return Err(EACCES);
                    }
                    let _batch = lock(&self.batch_lock);
                    if let Some(fe) = (e.parent != 0).then(|| self.entry(e.parent)).transpose()? {
                        if fe.state != EntryState::Held {
                            return Err(EACCES);
                        }
                    }
                    let d = self.new_draft(
                        ino,
                        *user,
                        Origin::Rewrite {
                            entry: &e,
                            truncate,
                        },
                    )?;
                    return self.open_draft(c, &d, true, false);
                }
                let blob = e.blob.as_deref().ok_or(Errno(libc::EIO))?;
                let file = self.store.blobs().open_blob(blob)?;
                let path = self.key_path(&key);
                self.audit_user(
                    c,
                    *user,
                    "get",
                    path,
                    Detail {
                        bytes: Some(e.size),
                        sha256: None,
                        result: "ok".into(),
                    },
                );
                Ok(self.new_fh(Handle::Blob(Arc::new(file))))
            }
            _ => Err(Errno(libc::EISDIR)),
        }
    }

    /// Reads from an open file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file = match lock(&self.handles).get(&fh) {
            Some(Handle::Blob(f)) => f.clone(),
            Some(Handle::Draft { draft, .. }) => lock(&draft.inner).file.clone(),
            Some(Handle::Bytes(b)) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                return Ok(b[start..end].to_vec());
            }
            _ => return Err(Errno(libc::EBADF)),
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Errno(libc::EIO)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn user_usage(&self, user: i64) -> Result<u64> {
        if let Some((n, at)) = lock(&self.usage).get(&user) {
            if at.elapsed() < Duration::from_millis(500) {
                return Ok(*n);
            }
        }
        let n = self.store.usage(user)?;
        lock(&self.usage).insert(user, (n, Instant::now()));
        Ok(n)
    }

    fn drafts_bytes(&self, user: i64) -> u64 {
        self.all_drafts()
            .iter()
            .filter(|d| d.user == user)
            .map(|d| {
                let i = lock(&d.inner);
                if i.done || i.unlinked {
                    0
                } else {
                    i.size
                }
            })
            .sum()
    }

    /// Writes to an upload in progress.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let draft = match lock(&self.handles).get(&fh) {
            Some(Handle::Draft {
                draft, write: true, ..
            }) => draft.clone(),
            _ => return Err(Errno(libc::EBADF)),
        };
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Errno(libc::EFBIG))?;
        let grow = end.saturating_sub(lock(&draft.inner).size);
        if grow > 0 {
            let o = self.owner(draft.user)?;
            if let Some(quota) = o.quota {
                let used = self.user_usage(draft.user)? + self.drafts_bytes(draft.user);
                if used + grow > quota {
                    lock(&draft.inner).error = Some(Errno(libc::EDQUOT));
                    info!(user = draft.user, quota, "write refused: over quota");
                    return Err(Errno(libc::EDQUOT));
                }
            }
        }
        let mut i = lock(&draft.inner);
        if i.done {
            return Err(Errno(libc::EBADF));
        }
        // A write that repeats the end of what is hashed (the kernel writing a page again):
        // keep the bytes it replaces, so that the hash can tell they did not change.
        let before = i.hash.repeats(offset, data.len()).and_then(|(at, len)| {
            let mut old = vec![0u8; len];
            i.file.read_exact_at(&mut old, at).ok().map(|()| old)
        });
        if let Err(e) = i.file.write_all_at(data, offset) {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            i.error = Some(Errno(errno));
            return Err(Errno(errno));
        }
        i.hash.write(offset, data, before.as_deref());
        i.size = i.size.max(end);
        i.mtime_ms = now_ms();
        if i.size >= i.flushed + WRITEBACK_STEP {
            // Start writing large uploads to disk while they arrive, so that the fsync at
            // close (the durability promise) has little left to wait for.
            use std::os::fd::AsRawFd;
            // SAFETY: a valid descriptor; SYNC_FILE_RANGE_WRITE only starts writeback.
            unsafe {
                libc::sync_file_range(
                    i.file.as_raw_fd(),
                    i.flushed as libc::off64_t,
                    (i.size - i.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            i.flushed = i.size;
        }
        Ok(data.len() as u32)
    }

    /// `close()` of a descriptor. The close that completes an upload — durably, before it
    /// returns — is the opener's close of its last descriptor on the file; a close by another
    /// process (a child that inherited the descriptor) or of one of several descriptors
    /// (`dup`) only syncs, and the release of the last descriptor completes the upload.
    pub fn flush(&self, c: &Caller, fh: u64) -> Result<()> {
        let (draft, opener) = match lock(&self.handles).get(&fh) {
            Some(Handle::Draft {
                draft,
                write: true,
                opener,
            }) => (draft.clone(), *opener),
            _ => return Ok(()),
        };
        let (done, writers, file) = {
            let i = lock(&draft.inner);
            (i.done, i.writers, i.file.clone())
        };
        if done {
            return Ok(());
        }
        let closer = if writers <= 1 && opener.is_some() {
            closer::probe(c.pid, draft.ino, *lock(&self.mount_id))
        } else {
            None
        };
        match closer {
            Some(cl) if cl.tgid == opener && !cl.other_descriptor => {
                self.finish_draft(&draft, c, cl.exiting)
            }
            _ => file.sync_data().map_err(|_| Errno(libc::EIO)),
        }
    }

    /// `fsync` of an open file: drafts are synced; stored files are already durable.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        if let Some(Handle::Draft { draft, .. }) = lock(&self.handles).get(&fh) {
            let file = lock(&draft.inner).file.clone();
            file.sync_data().map_err(|_| Errno(libc::EIO))?;
        }
        Ok(())
    }

    fn discard_draft(&self, d: &Draft, i: &mut DraftInner) {
        i.done = true;
        self.store.blobs().discard_spool(&i.spool);
        lock(&self.drafts).remove(&d.ino);
        if i.replaces.is_none() {
            let key = lock(&self.inodes).key(d.ino);
            if let Some(key @ Key::Draft { .. }) = key {
                lock(&self.inodes).remove_key(&key);
            }
        }
    }

    /// Turns a closed upload into a stored entry: picked up, held or interrupted.
    fn finish_draft(&self, d: &Arc<Draft>, c: &Caller, writer_exiting: bool) -> Result<()> {
        let _batch = lock(&self.batch_lock);
        let mut i = lock(&d.inner);
        if i.done {
            return Ok(());
        }
        if i.unlinked {
            self.discard_draft(d, &mut i);
            return Ok(());
        }
        let path = join(&self.folder_path(i.b, i.parent), &i.name);
        let result = match i.error {
            Some(err) => {
                info!(user = d.user, name = %i.name, errno = err.0, "upload discarded");
                Err(err)
            }
            None => self.commit_draft(d, &mut i, writer_exiting),
        };
        if result.is_err() {
            self.discard_draft(d, &mut i);
        }
        let (sha256, what) = match &result {
            Ok((sha, what)) => (Some(sha.clone()), what.clone()),
            Err(e) => (None, errno_name(e.0)),
        };
        let detail = Detail {
            bytes: Some(i.size),
            sha256,
            result: what,
        };
        self.audit_user(c, d.user, "put", path, detail);
        result.map(|_| ())
    }

    /// Returns the content hash and what became of the upload (for the audit trail).
    fn commit_draft(
        &self,
        d: &Draft,
        i: &mut DraftInner,
        writer_exiting: bool,
    ) -> Result<(String, String)> {
        let io = |_| Errno(libc::EIO);
        // Where the time of a close goes (debug log): the spool's fsync, the hash if it
        // must be computed now, the blob's rename and folder fsync, the SQLite commit.
        let started = Instant::now();
        i.file.sync_all().map_err(io)?;
        let synced = started.elapsed();
        let sha = match std::mem::replace(&mut i.hash, RunningHash::unknown()).finish(i.size) {
            Some(h) => hex(&h),
            None => {
                debug!(user = d.user, name = %i.name, size = i.size, "hashing at close");
                hash_file(&i.file).map_err(io)?
            }
        };
        let outcome = mailbox::on_close(&i.name, i.parent != 0, writer_exiting);
        let hashed = started.elapsed();
        self.store.blobs().commit_spool(&i.spool, &sha)?;
        let stored = started.elapsed();
        let mut pickup_until = None;
        let mut reason = None;
        if outcome == CloseOutcome::Pickup {
            match mailbox::check_limits(&[i.size], &self.config) {
                Ok(()) => pickup_until = Some(self.linger_until()),
                Err(r) => reason = Some(r),
            }
        }
        let new = NewFile {
            user_id: d.user,
            boxref: i.b,
            parent: i.parent,
            name: i.name.clone(),
            blob: sha.clone(),
            size: i.size,
            mtime_ms: i.mtime_ms,
            state: if outcome == CloseOutcome::Interrupted {
                EntryState::Interrupted
            } else {
                EntryState::Held
            },
            replaces: i.replaces,
        };
        let (id, message) = self.store.commit_file(&new, pickup_until)?;
        debug!(
            name = %i.name,
            size = i.size,
            fsync_ms = synced.as_millis() as u64,
            hash_ms = (hashed - synced).as_millis() as u64,
            blob_ms = (stored - hashed).as_millis() as u64,
            commit_ms = (started.elapsed() - stored).as_millis() as u64,
            "upload committed"
        );
        i.done = true;
        lock(&self.drafts).remove(&d.ino);
        lock(&self.inodes).rekey(d.ino, Key::Entry { user: d.user, id });
        lock(&self.usage).remove(&d.user);
        self.invalidate(d.ino);
        match (outcome, message) {
            (_, Some(m)) => {
                info!(user = d.user, name = %i.name, size = i.size, sha256 = %sha, message = m, "picked up")
            }
            (CloseOutcome::Interrupted, _) => {
                info!(user = d.user, name = %i.name, size = i.size, "upload interrupted: held until completed")
            }
            _ => debug!(user = d.user, name = %i.name, size = i.size, "held"),
        }
        let what = match (outcome, message) {
            (_, Some(_)) => "picked-up",
            (CloseOutcome::Interrupted, _) => "interrupted",
            _ => "held",
        };
        if let Some(reason) = reason {
            let e = self.entry(id)?;
            let file = PickupFile {
                name: e.name.clone(),
                blob: sha.clone(),
                size: e.size,
            };
            let m = self.store.fail_entries(&e, &[(id, file)], &reason)?;
            info!(user = d.user, name = %e.name, message = m, %reason, "moved to failed/");
            return Ok((sha, format!("failed: {reason}")));
        }
        Ok((sha, what.to_owned()))
    }

    fn linger_until(&self) -> i64 {
        now_ms() + (self.config.outbox.linger_secs * 1000.0) as i64
    }

    /// `setattr`: times on the user's own files, truncation of uploads, chmod ignored.
    pub fn setattr(&self, c: &Caller, ino: u64, s: SetAttr) -> Result<Attr> {
        let key = self.key(ino)?;
        let o = self.check_access(c, &key)?;
        let attr = self.getattr(c, ino)?;
        let user_owned = attr.uid == o.uid && o.uid != 0;
        if !user_owned {
            return Err(EPERM);
        }
        if s.uid.is_some_and(|u| u != attr.uid) || s.gid.is_some_and(|g| g != attr.gid) {
            return Err(EPERM);
        }
        if let Some(size) = s.size {
            self.truncate(c, ino, size)?;
        }
        if let Some(mtime) = s.mtime_ms {
            if let Some(d) = self.draft(ino) {
                lock(&d.inner).mtime_ms = mtime;
            } else if let Key::Entry { id, user } = key {
                self.store.set_mtime(id, mtime)?;
                let path = self.key_path(&key);
                self.audit_user(
                    c,
                    user,
                    "setstat",
                    path,
                    Detail {
                        bytes: None,
                        sha256: None,
                        result: "ok".into(),
                    },
                );
            }
        }
        self.getattr(c, ino)
    }

    fn truncate(&self, c: &Caller, ino: u64, size: u64) -> Result<()> {
        if let Some(d) = self.draft(ino) {
            return self.truncate_draft(&d, size);
        }
        // truncate(2) of a closed, held upload: rewrite it in one step.
        let fh = self.open(c, ino, true, size == 0)?;
        let d = self.draft(ino).ok_or(Errno(libc::EIO))?;
        let result = self
            .truncate_draft(&d, size)
            .and_then(|_| self.flush(c, fh));
        self.release(c, fh);
        result
    }

    fn truncate_draft(&self, d: &Draft, size: u64) -> Result<()> {
        let mut i = lock(&d.inner);
        i.file.set_len(size).map_err(|_| Errno(libc::EIO))?;
        i.hash.truncate(size);
        i.size = size;
        i.mtime_ms = now_ms();
        Ok(())
    }

    /// `unlink`.
    fn unlink_inner(&self, c: &Caller, parent: u64, name: &str) -> Result<()> {
        let pkey = self.key(parent)?;
        self.check_access(c, &pkey)?;
        let Some((b, folder, _)) = self.box_dir(&pkey)? else {
            return Err(EACCES);
        };
        if let Some(d) = self.find_draft(b, folder, name) {
            let mut i = lock(&d.inner);
            i.unlinked = true;
            if let Some(old) = i.replaces {
                self.store.remove_entry(old)?;
            }
            if i.writers == 0 {
                self.discard_draft(&d, &mut i);
            }
            info!(user = d.user, name, "upload deleted");
            return Ok(());
        }
        let e = self.store.entry_by_name(b, folder, name)?.ok_or(ENOENT)?;
        if !mailbox::visible(&e, now_ms()) {
            return Err(ENOENT);
        }
        if e.is_dir {
            return Err(Errno(libc::EISDIR));
        }
        self.store.remove_entry(e.id)?;
        lock(&self.usage).remove(&e.user_id);
        info!(user = e.user_id, name, box_ = b.kind.name(), "deleted");
        Ok(())
    }

    /// `rmdir`: message folders in inbox/failed, and outbox folders.
    fn rmdir_inner(&self, c: &Caller, parent: u64, name: &str) -> Result<()> {
        let pkey = self.key(parent)?;
        self.check_access(c, &pkey)?;
        let Some((b, 0, _)) = self.box_dir(&pkey)? else {
            return Err(EACCES);
        };
        let e = self.store.entry_by_name(b, 0, name)?.ok_or(ENOENT)?;
        if !e.is_dir {
            return Err(Errno(libc::ENOTDIR));
        }
        if !self.drafts_in(b, e.id).is_empty() {
            return Err(Errno(libc::ENOTEMPTY));
        }
        self.store.remove_entry(e.id)?;
        info!(
            user = e.user_id,
            name,
            box_ = b.kind.name(),
            "folder removed"
        );
        Ok(())
    }

    /// `rename`, within one outbox.
    fn rename_inner(
        &self,
        c: &Caller,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        mode: RenameMode,
    ) -> Result<()> {
        let pkey = self.key(parent)?;
        let npkey = self.key(new_parent)?;
        self.check_access(c, &pkey)?;
        self.check_access(c, &npkey)?;
        let (Some((b, folder, _)), Some((nb, nfolder, nfentry))) =
            (self.box_dir(&pkey)?, self.box_dir(&npkey)?)
        else {
            return Err(EACCES);
        };
        if b.kind != BoxKind::Outbox {
            return Err(EACCES);
        }
        if nb != b {
            return Err(Errno(libc::EXDEV));
        }
        if nfentry
            .as_ref()
            .is_some_and(|f| f.state != EntryState::Held)
        {
            return Err(EACCES);
        }
        Self::check_name(new_name)?;
        let _batch = lock(&self.batch_lock);
        // The target, if any.
        let target_draft = self.find_draft(nb, nfolder, new_name);
        let target_entry = self
            .store
            .entry_by_name(nb, nfolder, new_name)?
            .filter(|e| mailbox::visible(e, now_ms()));
        if folder == nfolder && name == new_name {
            return if target_draft.is_some() || target_entry.is_some() {
                Ok(())
            } else {
                Err(ENOENT)
            };
        }
        if mode == RenameMode::NoReplace && (target_draft.is_some() || target_entry.is_some()) {
            return Err(Errno(libc::EEXIST));
        }
        if let Some(d) = self.find_draft(b, folder, name) {
            if let Some(t) = &target_entry {
                if t.is_dir {
                    return Err(Errno(libc::EISDIR));
                }
                if mailbox::entry_class(t) != NodeClass::WritableFile {
                    return Err(EACCES);
                }
                self.store.remove_entry(t.id)?;
            }
            if let Some(t) = target_draft {
                let mut ti = lock(&t.inner);
                ti.unlinked = true;
                if ti.writers == 0 {
                    self.discard_draft(&t, &mut ti);
                }
            }
            let mut i = lock(&d.inner);
            i.parent = nfolder;
            i.name = new_name.to_owned();
            return Ok(());
        }
        let e = self.store.entry_by_name(b, folder, name)?.ok_or(ENOENT)?;
        if !mailbox::visible(&e, now_ms()) {
            return Err(ENOENT);
        }
        if e.state == EntryState::Lingering {
            return Err(EACCES);
        }
        if e.is_dir && nfolder != 0 {
            return Err(EPERM);
        }
        let replaces = match (&target_entry, target_draft) {
            (_, Some(_)) => return Err(Errno(libc::EBUSY)),
            (Some(t), None) => {
                if t.is_dir != e.is_dir {
                    return Err(Errno(if t.is_dir {
                        libc::EISDIR
                    } else {
                        libc::ENOTDIR
                    }));
                }
                if t.is_dir || mailbox::entry_class(t) != NodeClass::WritableFile {
                    return Err(if t.is_dir {
                        Errno(libc::ENOTEMPTY)
                    } else {
                        EACCES
                    });
                }
                Some(t.id)
            }
            (None, None) => None,
        };
        if !e.is_dir && mailbox::rename_picks_up(new_name, nfolder != 0) {
            let blob = e.blob.clone().ok_or(Errno(libc::EIO))?;
            let file = PickupFile {
                name: new_name.to_owned(),
                blob,
                size: e.size,
            };
            if let Err(reason) = mailbox::check_limits(&[e.size], &self.config) {
                self.store
                    .rename_entry(e.id, nfolder, new_name, replaces, None)?;
                let moved = self.entry(e.id)?;
                self.store.fail_entries(&moved, &[(e.id, file)], &reason)?;
                info!(user = e.user_id, name = new_name, %reason, "moved to failed/");
                return Ok(());
            }
            let files = [(e.id, file)];
            let m = self.store.rename_entry(
                e.id,
                nfolder,
                new_name,
                replaces,
                Some(RenamePickup {
                    until_ms: self.linger_until(),
                    message_name: new_name,
                    files: &files,
                }),
            )?;
            info!(user = e.user_id, name = new_name, size = e.size, message = ?m, "picked up after rename");
            return Ok(());
        }
        self.store
            .rename_entry(e.id, nfolder, new_name, replaces, None)?;
        if e.is_dir && new_name.ends_with(names::READY_SUFFIX) {
            drop(_batch);
            let moved = self.entry(e.id)?;
            self.try_batch(&moved)?;
        }
        Ok(())
    }

    // ---- background work -------------------------------------------------------------------

    /// Picks up an outbox folder if it is ready; returns whether it did.
    fn try_batch(&self, folder: &Entry) -> Result<bool> {
        let _batch = lock(&self.batch_lock);
        let files = self.store.entries(folder.boxref, folder.id)?;
        let open = self.drafts_in(folder.boxref, folder.id).len();
        let now = now_ms();
        if !mailbox::batch_ready(
            folder,
            &files,
            open,
            now,
            self.config.outbox.batch_quiet_secs,
        ) {
            return Ok(false);
        }
        let list: Vec<(i64, PickupFile)> = files
            .iter()
            .map(|f| {
                (
                    f.id,
                    PickupFile {
                        name: f.name.clone(),
                        blob: f.blob.clone().unwrap_or_default(),
                        size: f.size,
                    },
                )
            })
            .collect();
        let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
        let name = mailbox::batch_name(&folder.name);
        match mailbox::check_limits(&sizes, &self.config) {
            Ok(()) => {
                let m = self
                    .store
                    .pickup_folder(folder, name, &list, self.linger_until())?;
                info!(
                    user = folder.user_id,
                    name,
                    files = files.len(),
                    message = m,
                    "folder picked up"
                );
            }
            Err(reason) => {
                let m = self.store.fail_entries(folder, &list, &reason)?;
                info!(user = folder.user_id, name, message = m, %reason, "folder moved to failed/");
            }
        }
        for f in &files {
            let key = Key::Entry {
                user: f.user_id,
                id: f.id,
            };
            if let Some(ino) = lock(&self.inodes).find(&key) {
                self.invalidate(ino);
            }
        }
        Ok(true)
    }

    /// Periodic work: batch pickups (every call) and the retention sweep (every
    /// `retention.sweep_secs`). Called by the mount's background thread.
    pub fn tick(&self) {
        match self.store.pending_outbox_folders() {
            Ok(folders) => {
                for f in folders {
                    if let Err(e) = self.try_batch(&f) {
                        warn!(folder = %f.name, errno = e.0, "batch pickup failed");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list outbox folders"),
        }
        self.expire_interrupted();
        let due = {
            let mut last = lock(&self.last_sweep);
            let period = Duration::from_secs_f64(self.config.retention.sweep_secs);
            if last.is_none_or(|t| t.elapsed() >= period) {
                *last = Some(Instant::now());
                true
            } else {
                false
            }
        };
        if due {
            match mailbox::sweep(&self.store, &self.config, now_ms()) {
                Ok(r) => debug!(?r, "retention sweep"),
                Err(e) => warn!(error = %e, "retention sweep failed"),
            }
        }
    }

    /// Interrupted uploads that nobody completed in time move to `failed/`.
    fn expire_interrupted(&self) {
        let timeout_ms = (self.config.outbox.incomplete_timeout_secs * 1000.0) as i64;
        let stale = match self.store.interrupted_before(now_ms() - timeout_ms) {
            Ok(list) => list,
            Err(e) => return warn!(error = %e, "cannot list interrupted uploads"),
        };
        for e in stale {
            let _batch = lock(&self.batch_lock);
            let ino = self.ino(Key::Entry {
                user: e.user_id,
                id: e.id,
            });
            if self.draft(ino).is_some() {
                // Being resumed right now.
                continue;
            }
            let reason = format!(
                "Not sent: the upload of {:?} was interrupted (the connection dropped before it finished) and was not completed within {} seconds; upload the file again.",
                e.name, self.config.outbox.incomplete_timeout_secs
            );
            let file = PickupFile {
                name: e.name.clone(),
                blob: e.blob.clone().unwrap_or_default(),
                size: e.size,
            };
            match self.store.fail_entries(&e, &[(e.id, file)], &reason) {
                Ok(m) => {
                    info!(user = e.user_id, name = %e.name, message = m, "interrupted upload moved to failed/")
                }
                Err(err) => {
                    warn!(name = %e.name, error = %err, "cannot move interrupted upload to failed/")
                }
            }
        }
    }

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
            .map_err(|_| Errno(libc::EIO))?;
        // SAFETY: statvfs writes into the zeroed struct we pass.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return Err(Errno(libc::EIO));
        }
        let frsize = s.f_frsize.max(1);
        Ok(FsStats {
            blocks: s.f_blocks * frsize / BLOCK,
            free: s.f_bavail * frsize / BLOCK,
            files: s.f_files,
            files_free: s.f_favail,
        })
    }

    // ---- audited entry points --------------------------------------------------------------

    /// `mkdir`: only at the top of an outbox (a multi-attachment message).
    pub fn mkdir(&self, c: &Caller, parent: u64, name: &str) -> Result<Attr> {
        let r = self.mkdir_inner(c, parent, name);
        self.audit_at(c, parent, name, "mkdir", outcome(&r));
        r
    }

    /// `unlink`.
    pub fn unlink(&self, c: &Caller, parent: u64, name: &str) -> Result<()> {
        let r = self.unlink_inner(c, parent, name);
        self.audit_at(c, parent, name, "rm", outcome(&r));
        r
    }

    /// `rmdir`: message folders in inbox/failed, and outbox folders.
    pub fn rmdir(&self, c: &Caller, parent: u64, name: &str) -> Result<()> {
        let r = self.rmdir_inner(c, parent, name);
        self.audit_at(c, parent, name, "rmdir", outcome(&r));
        r
    }

    /// `rename`, within one outbox.
    pub fn rename(
        &self,
        c: &Caller,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        mode: RenameMode,
    ) -> Result<()> {
        // The file's inode stays; its mode may change (a pickup makes it read-only).
        let moved = self.lookup(c, parent, name).map(|a| a.ino);
        let r = self.rename_inner(c, parent, name, new_parent, new_name, mode);
        if let (Ok(()), Ok(ino)) = (&r, moved) {
            self.invalidate(ino);
        }
        let target = self.path_in(new_parent, new_name);
        self.audit_at(
            c,
            parent,
            &format!("{name} -> {target}"),
            "rename",
            outcome(&r),
        );
        r
    }

    /// `create`: a new upload in an outbox or an outbox folder. Refusals are audited; the
    /// upload itself is audited when it is closed.
    pub fn create(
        &self,
        c: &Caller,
        parent: u64,
        name: &str,
        truncate: bool,
    ) -> Result<(Attr, u64)> {
        let r = self.create_inner(c, parent, name, truncate);
        if r.is_err() {
            self.audit_at(c, parent, name, "create", outcome(&r));
        }
        r
    }

    /// `open` of an existing file. Reads are audited as `get`; refusals as `open`.
    pub fn open(&self, c: &Caller, ino: u64, write: bool, truncate: bool) -> Result<u64> {
        let r = self.open_inner(c, ino, write, truncate);
        if r.is_err() {
            if let Ok(key) = self.key(ino) {
                if let Some(user) = key.user() {
                    let d = Detail {
                        bytes: None,
                        sha256: None,
                        result: outcome(&r),
                    };
                    self.audit_user(c, user, "open", self.key_path(&key), d);
                }
            }
        }
        r
    }

    /// Whether this handle must bypass the kernel's page cache:
    /// - generated content (`authorized_keys`), whose size can change between opens;
    /// - uploads of a user with a quota: the kernel's write-back cache would accept writes
    ///   past the quota and report the failure only at close, and a write past the quota
    ///   must fail itself (SEMANTICS.md "Quota").
    pub fn direct_io(&self, fh: u64) -> bool {
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

    /// The path of `name` in folder `parent`, inside its user's tree.
    fn path_in(&self, parent: u64, name: &str) -> String {
        match self.key(parent) {
            Ok(k) => join(&self.key_path(&k), name),
            Err(_) => name.to_owned(),
        }
    }

    fn audit_at(&self, c: &Caller, parent: u64, name: &str, op: &str, result: String) {
        let Ok(key) = self.key(parent) else { return };
        let Some(user) = key.user() else { return };
        let path = if op == "rename" {
            join(&self.key_path(&key), name)
        } else {
            self.path_in(parent, name)
        };
        let d = Detail {
            bytes: None,
            sha256: None,
            result,
        };
        self.audit_user(c, user, op, path, d);
    }

    fn audit_user(&self, c: &Caller, user: i64, op: &str, path: String, d: Detail) {
        let user = match self.store.user_by_id(user) {
            Ok(Some(u)) => u.name,
            _ => format!("#{user}"),
        };
        let at_ms = now_ms();
        self.audit.record(&crate::audit::Record {
            at: crate::timefmt::rfc3339(at_ms),
            at_ms,
            user,
            uid: c.uid,
            op: op.to_owned(),
            path,
            bytes: d.bytes,
            sha256: d.sha256,
            result: d.result,
        });
    }

    fn box_path(&self, b: BoxRef) -> String {
        let station = self
            .store
            .station_by_id(b.station_id)
            .ok()
            .flatten()
            .map(|s| s.as2_id)
            .unwrap_or_else(|| "?".into());
        let partner = self.store.partner_by_id(b.partner_id).ok().flatten();
        let (as2, test) = partner
            .map(|p| (p.as2_id, p.test))
            .unwrap_or(("?".into(), false));
        let test = if test { "/test" } else { "" };
        format!("as2gateway/{station}/{as2}{test}/{}", b.kind.name())
    }

    fn folder_path(&self, b: BoxRef, folder: i64) -> String {
        let base = self.box_path(b);
        match (folder != 0)
            .then(|| self.store.entry(folder).ok().flatten())
            .flatten()
        {
            Some(f) => join(&base, &f.name),
            None => base,
        }
    }

    fn key_path(&self, key: &Key) -> String {
        match key {
            Key::Root | Key::Home(_) => String::new(),
            Key::Ssh(_) => ".ssh".into(),
            Key::Keys(_) => ".ssh/authorized_keys".into(),
            Key::Gateway(_) => "as2gateway".into(),
            Key::Station { station, .. } => {
                let name = self.key_name(key).unwrap_or_else(|_| format!("#{station}"));
                format!("as2gateway/{name}")
            }
            Key::Partner { station, as2, .. } | Key::Test { station, as2, .. } => {
                let st = self
                    .key_name(&Key::Station {
                        user: 0,
                        station: *station,
                    })
                    .unwrap_or_default();
                let test = if matches!(key, Key::Test { .. }) {
                    "/test"
                } else {
                    ""
                };
                format!("as2gateway/{st}/{as2}{test}")
            }
            Key::Box { b, .. } => self.box_path(*b),
            Key::Entry { id, .. } => match self.store.entry(*id).ok().flatten() {
                Some(e) => join(&self.folder_path(e.boxref, e.parent), &e.name),
                None => format!("#{id}"),
            },
            Key::Draft { .. } => String::new(),
        }
    }

    /// Sets how to drop the kernel's cached attributes of an inode, once mounted.
    ///
    /// With the write-back cache the kernel keeps a regular file's attributes until their
    /// cache time ends even across a rename (it refreshes only the change time, which it
    /// then keeps itself); a file whose mode changed here must be invalidated explicitly.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidate.set(f);
    }

    /// Drops the kernel's cached attributes of `ino` (its mode or state changed).
    fn invalidate(&self, ino: u64) {
        if let Some(f) = self.invalidate.get() {
            f(ino);
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

/// What an audit record says beyond who, what and where.
struct Detail {
    bytes: Option<u64>,
    sha256: Option<String>,
    result: String,
}

/// An inode whose entry is gone (deleted, expired, or moved to `failed/` under a new id)
/// answers ESTALE: the kernel then looks its name up again rather than failing the call.
fn stale(e: Errno) -> Errno {
    if e == ENOENT {
        Errno(libc::ESTALE)
    } else {
        e
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The audit result of an operation: `ok` or the errno's name.
fn outcome<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.0),
    }
}

fn errno_name(n: i32) -> String {
    match n {
        libc::EACCES => "EACCES".into(),
        libc::EPERM => "EPERM".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EEXIST => "EEXIST".into(),
        libc::ENOTEMPTY => "ENOTEMPTY".into(),
        libc::EDQUOT => "EDQUOT".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::EXDEV => "EXDEV".into(),
        libc::EISDIR => "EISDIR".into(),
        libc::ENOTDIR => "ENOTDIR".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EIO => "EIO".into(),
        n => format!("errno {n}"),
    }
}

fn hash_file(file: &File) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    loop {
        let n = file.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hex(&h.finish()))
}
