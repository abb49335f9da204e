//! Uploads in progress ("drafts"), from `create`/`open` for writing to the close that
//! commits them: content in a spool file, a running hash, the quota and size checks on
//! every growth, and the commit, which `crate::mailbox::pickup` turns into a held file, a
//! message or a failure.
//!
//! A draft's state is in two parts with their own locks, so that no request of another
//! user ever waits for this upload's I/O: `place` (where it is, who writes it, whether it
//! is closing: held briefly, and during the commit's SQLite transaction only by requests
//! into the same outbox) and `content` (the spool file and hash: held while writing).
//! Size and time are atomics, read by listings without any lock.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use openssl::sha::Sha256;
use tracing::{debug, info, warn};

use super::closer;
use super::core::{lock, Attr, Caller, Errno, Handle, MailboxFs, Owner, Result, SetAttr};
use super::core::{EACCES, EPERM};
use super::inodes::Key;
use super::paths::{errno_name, join, stale, Detail};
use super::running_hash::RunningHash;
use crate::mailbox::pickup::{self, ClosedUpload, Settled};
use crate::mailbox::{self, NodeClass};
use crate::names;
use crate::store::{
    hex, sha256_hex, BoxKind, BoxRef, Entry, EntryState, NewFile, SpoolName, INLINE_MAX,
};
use crate::timefmt::now_ms;

/// How long opening an upload waits for its commit by another close to end.
const CLOSING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Large uploads are handed to the kernel's writeback every this many bytes.
const WRITEBACK_STEP: u64 = 16 << 20;

/// An upload in progress: content in a spool file until the writer closes it.
pub(super) struct Draft {
    pub(super) ino: u64,
    pub(super) user: i64,
    /// The outbox: fixed for the draft's life (renames stay within one outbox), so that
    /// lookups in other outboxes never touch this draft's locks.
    pub(super) b: BoxRef,
    place: Mutex<Place>,
    /// Signalled when the stage leaves `Closing`.
    closed: Condvar,
    content: Mutex<Content>,
    size: AtomicU64,
    mtime_ms: AtomicI64,
    /// The spool file (the same as `content.file`), for reading its size and times
    /// without the content lock.
    spool_file: Arc<File>,
    /// Handed to the kernel for passthrough: its writes no longer reach us, so its size
    /// and modification time are the spool file's, and its hash is computed at close.
    passthrough: AtomicBool,
}

struct Place {
    parent: i64,
    name: String,
    /// The held entry this upload rewrites, if any.
    replaces: Option<i64>,
    writers: usize,
    unlinked: bool,
    stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Being written.
    Open,
    /// Its last close is syncing and hashing it; no new writer may join.
    Closing,
    /// Committed or discarded.
    Done,
}

struct Content {
    file: Arc<File>,
    spool: SpoolName,
    /// The content's sha256 as far as the writes tell it.
    hash: RunningHash,
    /// Bytes already handed to the kernel's writeback (`sync_file_range`).
    flushed: u64,
    /// A sticky error (the quota): the draft is discarded at close and close fails.
    error: Option<Errno>,
}

impl Draft {
    /// Its current name.
    pub(super) fn name(&self) -> String {
        lock(&self.place).name.clone()
    }

    pub(super) fn size(&self) -> u64 {
        if self.passes_through() {
            if let Ok(m) = self.spool_file.metadata() {
                return m.len();
            }
        }
        self.size.load(Ordering::Acquire)
    }

    pub(super) fn mtime_ms(&self) -> i64 {
        if self.passes_through() {
            if let Ok(t) = self.spool_file.metadata().and_then(|m| m.modified()) {
                return crate::timefmt::system_time_ms(t);
            }
        }
        self.mtime_ms.load(Ordering::Relaxed)
    }

    fn passes_through(&self) -> bool {
        self.passthrough.load(Ordering::Acquire)
    }

    /// Sets its modification time (`utimes`): on the spool file too once the kernel
    /// writes it, so that the file's own time, which later writes advance, stays the one
    /// shown.
    fn set_mtime_ms(&self, ms: i64) {
        self.mtime_ms.store(ms, Ordering::Relaxed);
        if self.passes_through() {
            let _ = self
                .spool_file
                .set_modified(crate::timefmt::ms_to_system_time(ms));
        }
    }

    /// Whether it is still an upload, in folder `parent` (named `name`, if given).
    fn is_live_at(&self, parent: i64, name: Option<&str>) -> bool {
        let p = lock(&self.place);
        !p.unlinked
            && p.stage != Stage::Done
            && p.parent == parent
            && name.is_none_or(|n| p.name == n)
    }
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

impl MailboxFs {
    // ---- finding drafts ---------------------------------------------------------------------

    pub(super) fn draft(&self, ino: u64) -> Option<Arc<Draft>> {
        lock(&self.drafts).get(&ino).cloned()
    }

    /// The uploads in progress in outbox `b`. The map's lock is released before any
    /// draft's own lock is taken.
    fn drafts_of_box(&self, b: BoxRef) -> Vec<Arc<Draft>> {
        lock(&self.drafts)
            .values()
            .filter(|d| d.b == b)
            .cloned()
            .collect()
    }

    pub(super) fn find_draft(&self, b: BoxRef, parent: i64, name: &str) -> Option<Arc<Draft>> {
        self.drafts_of_box(b)
            .into_iter()
            .find(|d| d.is_live_at(parent, Some(name)))
    }

    pub(super) fn drafts_in(&self, b: BoxRef, parent: i64) -> Vec<Arc<Draft>> {
        self.drafts_of_box(b)
            .into_iter()
            .filter(|d| d.is_live_at(parent, None))
            .collect()
    }

    /// Bytes of the user's uploads in progress (they count against the quota).
    pub(super) fn drafts_bytes(&self, user: i64) -> u64 {
        lock(&self.drafts)
            .values()
            .filter(|d| d.user == user)
            .map(|d| d.size())
            .sum()
    }

    // ---- starting uploads -------------------------------------------------------------------

    /// Where new things may be created in folder `parent`: the box and folder, if the
    /// user may create there.
    pub(super) fn creatable(&self, c: &Caller, parent: u64) -> Result<(Key, Owner, BoxRef, i64)> {
        let key = self.key(parent)?;
        let o = self.check_access(c, &key)?;
        match self.box_dir(&key)? {
            Some((b, folder, fentry)) if b.kind == BoxKind::Outbox => {
                if fentry.is_some_and(|f| !mailbox::accepts_uploads(&f)) {
                    return Err(EACCES);
                }
                Ok((key, o, b, folder))
            }
            _ => Err(EACCES),
        }
    }

    pub(super) fn check_name(name: &str) -> Result<()> {
        names::check_fs_name(name.as_bytes()).map_err(|e| match e {
            names::NameError::TooLong => Errno::new(libc::ENAMETOOLONG),
            _ => Errno::new(libc::EINVAL),
        })
    }

    /// `create`: a new upload in an outbox or an outbox folder.
    pub(super) fn create_inner(
        &self,
        c: &Caller,
        parent: u64,
        name: &str,
        truncate: bool,
    ) -> Result<(Attr, u64)> {
        let (key, o, b, folder) = self.creatable(c, parent)?;
        Self::check_name(name)?;
        let outbox = self.outbox_lock(b);
        let mut guard = lock(&outbox);
        while let Some(d) = self.find_draft(b, folder, name) {
            // O_CREAT without O_EXCL on a name being uploaded: open it, or, if its upload
            // is being committed right now, wait for that and look again.
            drop(guard);
            match self.open_draft(c, &d, true, truncate) {
                Err(e) if e.is(libc::ESTALE) => guard = lock(&outbox),
                r => return r.map(|fh| (self.draft_attr(&d, &o), fh)),
            }
        }
        let user = key.user().unwrap_or(0);
        let existing = self.store.entry_by_name(b, folder, name)?;
        let replaces = match existing {
            Some(e) if mailbox::visible(&e, now_ms()) => {
                if e.is_dir {
                    return Err(Errno::new(libc::EISDIR));
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
        drop(guard);
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
                let mut src = self.store.open_content(blob)?;
                let mut dst = &file;
                std::io::copy(&mut src, &mut dst).map_err(Errno::io)?;
                size = e.size;
                hash = RunningHash::unknown();
            }
            mtime_ms = e.mtime_ms;
        }
        let file = Arc::new(file);
        let draft = Arc::new(Draft {
            ino,
            user,
            b,
            place: Mutex::new(Place {
                parent,
                name: name.to_owned(),
                replaces: replaces.map(|e| e.id),
                writers: 0,
                unlinked: false,
                stage: Stage::Open,
            }),
            closed: Condvar::new(),
            content: Mutex::new(Content {
                file: file.clone(),
                spool,
                hash,
                flushed: 0,
                error: None,
            }),
            size: AtomicU64::new(size),
            mtime_ms: AtomicI64::new(mtime_ms),
            spool_file: file,
            passthrough: AtomicBool::new(false),
        });
        lock(&self.drafts).insert(ino, draft.clone());
        Ok(draft)
    }

    fn open_draft(&self, c: &Caller, d: &Arc<Draft>, write: bool, truncate: bool) -> Result<u64> {
        if write {
            {
                let mut p = lock(&d.place);
                match p.stage {
                    Stage::Open => p.writers += 1,
                    // Its last writer is committing it right now: wait for that, then
                    // the caller looks again (ESTALE: the kernel walks the path again;
                    // `create` retries itself). The wait is bounded: a FUSE thread must
                    // not be held for the whole commit of a huge file (a user could
                    // occupy every thread that way); then the answer is EBUSY.
                    Stage::Closing => {
                        let deadline = Instant::now() + CLOSING_WAIT;
                        while p.stage == Stage::Closing {
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Err(Errno::new(libc::EBUSY));
                            }
                            p = d
                                .closed
                                .wait_timeout(p, left)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        return Err(Errno::new(libc::ESTALE));
                    }
                    Stage::Done => return Err(Errno::new(libc::ESTALE)),
                }
            }
            if truncate {
                let mut content = lock(&d.content);
                content.file.set_len(0).map_err(Errno::io)?;
                content.hash = RunningHash::new();
                d.size.store(0, Ordering::Release);
            }
        }
        Ok(self.new_fh(Handle::Draft {
            draft: d.clone(),
            write,
            opener: if write { closer::tgid(c.pid) } else { None },
        }))
    }

    /// `open` of an existing file.
    pub(super) fn open_inner(
        &self,
        c: &Caller,
        ino: u64,
        write: bool,
        truncate: bool,
    ) -> Result<u64> {
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
                    return Err(Errno::new(libc::EISDIR));
                }
                if write {
                    return self.reopen_held(c, ino, *user, &e, truncate);
                }
                let blob = e.blob.as_deref().ok_or(Errno::new(libc::EIO))?;
                let file = self.store.open_content(blob)?;
                let path = self.key_path(&key);
                let detail = Detail::bytes(e.size, "ok".into());
                self.audit_user(c, *user, "get", path, detail);
                Ok(self.new_fh(Handle::Blob(Arc::new(file))))
            }
            _ => Err(Errno::new(libc::EISDIR)),
        }
    }

    /// Opens a held (or interrupted) upload for writing again.
    fn reopen_held(&self, c: &Caller, ino: u64, user: i64, e: &Entry, trunc: bool) -> Result<u64> {
        if mailbox::entry_class(e) != NodeClass::WritableFile {
            return Err(EACCES);
        }
        let outbox = self.outbox_lock(e.boxref);
        let guard = lock(&outbox);
        if let Some(d) = self.draft(ino) {
            // Another opener got here first.
            drop(guard);
            return self.open_draft(c, &d, true, trunc);
        }
        if let Some(folder) = (e.parent != 0).then(|| self.entry(e.parent)).transpose()? {
            if !mailbox::accepts_uploads(&folder) {
                return Err(EACCES);
            }
        }
        let origin = Origin::Rewrite {
            entry: e,
            truncate: trunc,
        };
        let d = self.new_draft(ino, user, origin)?;
        drop(guard);
        self.open_draft(c, &d, true, false)
    }

    // ---- data -----------------------------------------------------------------------------

    /// Hands upload `d`'s spool file to the kernel for passthrough (see
    /// `MailboxFs::passthrough_file`). From the first such handle on, its size and time are
    /// read from the spool file and its hash is computed from it at close.
    pub(super) fn draft_passes_through(&self, d: &Draft) -> Option<Arc<File>> {
        if !d.passthrough.load(Ordering::Acquire) {
            let mut content = lock(&d.content);
            if !d.passthrough.load(Ordering::Acquire) {
                content.hash = RunningHash::unknown();
                // The spool file's own time is shown from now on: give it the upload's.
                let ms = d.mtime_ms.load(Ordering::Relaxed);
                let _ = d
                    .spool_file
                    .set_modified(crate::timefmt::ms_to_system_time(ms));
                d.passthrough.store(true, Ordering::Release);
            }
        }
        Some(d.spool_file.clone())
    }

    /// Starts the kernel's writeback of what the kernel wrote into passthrough uploads
    /// since the last call (what `write` does for the uploads it sees), so that the fsync
    /// at close has little left to wait for. Called a few times a second.
    pub fn start_writeback(&self) {
        let drafts: Vec<Arc<Draft>> = lock(&self.drafts)
            .values()
            .filter(|d| d.passes_through())
            .cloned()
            .collect();
        for d in drafts {
            let size = d.size();
            let mut content = lock(&d.content);
            if size >= content.flushed + WRITEBACK_STEP {
                start_writeback(&content.file, content.flushed, size);
                content.flushed = size;
            } else if size < content.flushed {
                content.flushed = size;
            }
        }
    }

    /// Reads from an open file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file = match lock(&self.handles).get(&fh) {
            Some(Handle::Blob(f)) => f.clone(),
            Some(Handle::Draft { draft, .. }) => lock(&draft.content).file.clone(),
            Some(Handle::Bytes(b)) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                return Ok(b[start..end].to_vec());
            }
            _ => return Err(Errno::new(libc::EBADF)),
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Errno::io(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    /// Checks that upload `d` may grow to `new_size`, `sparse` if the bytes between its
    /// current end and `new_size` are not being written (truncate, or a write past the
    /// end). A refusal is sticky: the upload is discarded at close.
    fn check_growth(&self, d: &Draft, new_size: u64, sparse: bool) -> Result<()> {
        let grow = new_size.saturating_sub(d.size());
        if grow == 0 {
            return Ok(());
        }
        let refusal = if sparse && !mailbox::may_extend_sparsely(new_size, &self.config) {
            info!(
                user = d.user,
                new_size, "extension refused: past outbox.max_bytes"
            );
            Some(Errno::new(libc::EFBIG))
        } else {
            let o = self.owner(d.user)?;
            let used = match o.quota {
                Some(_) => self.user_usage(d.user)? + self.drafts_bytes(d.user),
                None => 0,
            };
            (!mailbox::within_quota(o.quota, used, grow)).then(|| {
                info!(user = d.user, quota = o.quota, "growth refused: over quota");
                Errno::new(libc::EDQUOT)
            })
        };
        match refusal {
            Some(e) => {
                lock(&d.content).error = Some(e.clone());
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Writes to an upload in progress.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let draft = match lock(&self.handles).get(&fh) {
            Some(Handle::Draft {
                draft, write: true, ..
            }) => draft.clone(),
            _ => return Err(Errno::new(libc::EBADF)),
        };
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Errno::new(libc::EFBIG))?;
        self.check_growth(&draft, end, offset > draft.size())?;
        let mut content = lock(&draft.content);
        // A write that repeats the end of what is hashed (the kernel writing a page again):
        // keep the bytes it replaces, so that the hash can tell they did not change.
        let before = content
            .hash
            .repeats(offset, data.len())
            .and_then(|(at, len)| {
                let mut old = vec![0u8; len];
                content.file.read_exact_at(&mut old, at).ok().map(|()| old)
            });
        if let Err(e) = content.file.write_all_at(data, offset) {
            let errno = Errno::io(e);
            content.error = Some(errno.clone());
            return Err(errno);
        }
        content.hash.write(offset, data, before.as_deref());
        let size = draft.size.fetch_max(end, Ordering::AcqRel).max(end);
        draft.mtime_ms.store(now_ms(), Ordering::Relaxed);
        if size >= content.flushed + WRITEBACK_STEP {
            // Start writing large uploads to disk while they arrive, so that the fsync at
            // close (the durability promise) has little left to wait for.
            start_writeback(&content.file, content.flushed, size);
            content.flushed = size;
        }
        Ok(data.len() as u32)
    }

    // ---- closing --------------------------------------------------------------------------

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
        let (stage, writers) = {
            let p = lock(&draft.place);
            (p.stage, p.writers)
        };
        if stage != Stage::Open {
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
            _ => {
                // A refused write (quota, size) fails every close of the upload, even when
                // the kernel's write-back sent it after the writer's write() had returned;
                // the upload is discarded when its last descriptor goes.
                let (file, error) = {
                    let content = lock(&draft.content);
                    (content.file.clone(), content.error.clone())
                };
                if let Some(e) = error {
                    return Err(e);
                }
                file.sync_data().map_err(Errno::io)
            }
        }
    }

    /// `fsync` of an open file: drafts are synced; stored files are already durable.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        let draft = match lock(&self.handles).get(&fh) {
            Some(Handle::Draft { draft, .. }) => draft.clone(),
            _ => return Ok(()),
        };
        let file = lock(&draft.content).file.clone();
        file.sync_data().map_err(Errno::io)
    }

    /// The release of a writing handle: the last one finishes an upload nobody flushed.
    pub(super) fn release_writer(&self, c: &Caller, draft: &Arc<Draft>) {
        let (last, pending) = {
            let mut p = lock(&draft.place);
            p.writers = p.writers.saturating_sub(1);
            (p.writers == 0, p.stage == Stage::Open)
        };
        if last && pending {
            // The last descriptor is gone; who closed it is unknown here (release may come
            // from a kernel thread), so it counts as a normal close.
            if let Err(e) = self.finish_draft(draft, c, false) {
                let path = self.draft_path(draft);
                warn!(errno = %errno_name(e.code), cause = e.cause.as_deref().unwrap_or(""), %path, "upload finished at release failed");
            }
        }
    }

    /// Forgets an upload: its spool file goes, and its inode if nothing else had it.
    fn discard_draft(&self, d: &Draft, p: &mut Place) {
        p.stage = Stage::Done;
        d.closed.notify_all();
        self.store.blobs().discard_spool(&lock(&d.content).spool);
        lock(&self.drafts).remove(&d.ino);
        if p.replaces.is_none() {
            let mut inodes = lock(&self.inodes);
            if let Some(key @ Key::Draft { .. }) = inodes.key(d.ino) {
                inodes.remove_key(&key);
            }
        }
    }

    /// Discards upload `d` if it was deleted while open (`unlink` of a name still being
    /// written); true if it did.
    pub(super) fn discard_if_unlinked(&self, d: &Draft) -> bool {
        let mut p = lock(&d.place);
        if p.unlinked && p.writers == 0 && p.stage == Stage::Open {
            self.discard_draft(d, &mut p);
            return true;
        }
        false
    }

    /// Marks upload `d` deleted; it goes when its last writer closes. Returns the held
    /// entry it was rewriting, which goes with it.
    pub(super) fn unlink_draft(&self, d: &Draft) -> Option<i64> {
        let replaced = {
            let mut p = lock(&d.place);
            p.unlinked = true;
            p.replaces
        };
        self.discard_if_unlinked(d);
        replaced
    }

    /// Moves upload `d` to `name` in folder `parent` of its outbox.
    pub(super) fn move_draft(&self, d: &Draft, parent: i64, name: &str) {
        let mut p = lock(&d.place);
        p.parent = parent;
        p.name = name.to_owned();
    }

    /// Turns a closed upload into a stored entry: picked up, held or interrupted. The
    /// fsync and the hash run without any shared lock; only the commit takes the outbox's.
    pub(super) fn finish_draft(
        &self,
        d: &Arc<Draft>,
        c: &Caller,
        writer_exiting: bool,
    ) -> Result<()> {
        {
            let mut p = lock(&d.place);
            if p.stage != Stage::Open {
                return Ok(());
            }
            if p.unlinked {
                self.discard_draft(d, &mut p);
                return Ok(());
            }
            p.stage = Stage::Closing;
        }
        let path = self.draft_path(d);
        let result = self.commit_draft(d, writer_exiting);
        let (sha256, what) = match &result {
            Ok((sha, settled)) => (Some(sha.clone()), settled.audit_word()),
            Err(e) => {
                let mut p = lock(&d.place);
                if p.stage != Stage::Done {
                    self.discard_draft(d, &mut p);
                }
                info!(user = d.user, %path, errno = %errno_name(e.code), "upload discarded");
                (None, errno_name(e.code))
            }
        };
        let detail = Detail {
            bytes: Some(d.size()),
            sha256,
            result: what,
        };
        self.audit_user(c, d.user, "put", path, detail);
        result.map(|_| ())
    }

    /// Makes the content durable under its hash, then records it. Returns the content
    /// hash and what became of the upload.
    fn commit_draft(&self, d: &Draft, writer_exiting: bool) -> Result<(String, Settled)> {
        let (file, hash, spool, error) = {
            let mut content = lock(&d.content);
            let hash = std::mem::replace(&mut content.hash, RunningHash::unknown());
            // Once the kernel wrote it directly, the writes we saw (through a handle that
            // could not pass through) are not all of them, whatever the hash says after a
            // truncation: the content is hashed from the file.
            let hash = if d.passes_through() {
                RunningHash::unknown()
            } else {
                hash
            };
            let spool = SpoolName::clone(&content.spool);
            (content.file.clone(), hash, spool, content.error.clone())
        };
        if let Some(e) = error {
            return Err(e);
        }
        let size = d.size();
        if d.passes_through() && has_gap(&file, size).map_err(Errno::io)? {
            // The kernel wrote this upload without us seeing the writes, so a gap could
            // not be refused when it was made (`check_growth`): it is refused here, before
            // hashing would read every byte of it.
            if !mailbox::may_extend_sparsely(size, &self.config) {
                info!(
                    user = d.user,
                    size, "upload with a gap past outbox.max_bytes refused at close"
                );
                return Err(Errno::new(libc::EFBIG));
            }
        }
        // Where the time of a close goes (debug log): the spool's fsync and, alongside it,
        // the hash if it must be computed now (from the page cache), the blob's rename and
        // folder fsync, the SQLite commit. A small content skips the fsync and the rename:
        // it is committed inside the database transaction, whose one fsync makes it durable
        // with its entry.
        let started = Instant::now();
        let (inline, synced, sha, hashed) = if size <= INLINE_MAX {
            let mut bytes = vec![0u8; size as usize];
            file.read_exact_at(&mut bytes, 0).map_err(Errno::io)?;
            let sha = match hash.finish(size) {
                Some(h) => hex(&h),
                None => sha256_hex(&bytes),
            };
            let read = started.elapsed();
            (Some(bytes), read, sha, read)
        } else {
            match hash.finish(size) {
                Some(h) => {
                    file.sync_all().map_err(Errno::io)?;
                    let synced = started.elapsed();
                    (None, synced, hex(&h), synced)
                }
                None => {
                    debug!(user = d.user, size, "hashing at close");
                    std::thread::scope(|scope| {
                        let hasher = scope.spawn(|| {
                            let sha = hash_file(&file);
                            (sha, started.elapsed())
                        });
                        let synced = file.sync_all().map(|()| started.elapsed());
                        let (sha, hashed) = hasher.join().unwrap_or_else(|_| {
                            (
                                Err(std::io::Error::other("hash panicked")),
                                started.elapsed(),
                            )
                        });
                        Ok::<_, Errno>((
                            None,
                            synced.map_err(Errno::io)?,
                            sha.map_err(Errno::io)?,
                            hashed,
                        ))
                    })?
                }
            }
        };
        let hashed = hashed.max(synced);
        if inline.is_none() {
            self.store.blobs().commit_spool(&spool, &sha)?;
        }
        let stored = started.elapsed();
        let mode = self.station_of(d.user, d.b.station_id)?.pickup;
        let outbox = self.outbox_lock(d.b);
        let _guard = lock(&outbox);
        let mut p = lock(&d.place);
        if p.unlinked {
            // Deleted while it was being synced: nothing to record.
            self.discard_draft(d, &mut p);
            return Ok((sha, Settled::Held));
        }
        let upload = ClosedUpload {
            file: NewFile {
                user_id: d.user,
                boxref: d.b,
                parent: p.parent,
                name: p.name.clone(),
                blob: sha.clone(),
                size,
                mtime_ms: d.mtime_ms(),
                state: EntryState::Held,
                replaces: p.replaces,
                content: inline,
            },
            writer_exiting,
            mode,
        };
        let (id, settled) = pickup::commit_upload(&self.store, &self.config, &upload, now_ms())?;
        if upload.file.content.is_some() {
            // Committed inside the database: the spool file is a leftover.
            self.store.blobs().discard_spool(&spool);
        }
        p.stage = Stage::Done;
        d.closed.notify_all();
        lock(&self.drafts).remove(&d.ino);
        lock(&self.inodes).rekey(d.ino, Key::Entry { user: d.user, id });
        lock(&self.usage).remove(&d.user);
        drop(p);
        self.invalidate(d.ino);
        debug!(
            size,
            fsync_ms = synced.as_millis() as u64,
            hashed_by_ms = hashed.as_millis() as u64,
            blob_ms = (stored - hashed).as_millis() as u64,
            commit_ms = (started.elapsed() - stored).as_millis() as u64,
            "upload committed"
        );
        let name = &upload.file.name;
        match &settled {
            Settled::Queued { message } => {
                info!(user = d.user, %name, size, sha256 = %sha, message, "picked up")
            }
            Settled::Failed { message, reason } => {
                info!(user = d.user, %name, message, %reason, "moved to failed/")
            }
            Settled::Interrupted => {
                info!(user = d.user, %name, size, "upload interrupted: held until completed")
            }
            Settled::Held => debug!(user = d.user, %name, size, "held"),
        }
        Ok((sha, settled))
    }

    // ---- attributes -------------------------------------------------------------------------

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
                d.set_mtime_ms(mtime);
            } else if let Key::Entry { id, user } = key {
                self.store.set_mtime(id, mtime)?;
                let path = self.key_path(&key);
                self.audit_user(c, user, "setstat", path, Detail::result("ok".into()));
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
        let d = self.draft(ino).ok_or(Errno::new(libc::EIO))?;
        let result = self
            .truncate_draft(&d, size)
            .and_then(|_| self.flush(c, fh));
        self.release(c, fh);
        result
    }

    fn truncate_draft(&self, d: &Draft, size: u64) -> Result<()> {
        if lock(&d.place).stage != Stage::Open {
            return Err(Errno::new(libc::EBUSY));
        }
        self.check_growth(d, size, true)?;
        let mut content = lock(&d.content);
        content.file.set_len(size).map_err(Errno::io)?;
        content.hash.truncate(size);
        d.size.store(size, Ordering::Release);
        d.mtime_ms.store(now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// The user-visible path of an upload (audit and logs).
    fn draft_path(&self, d: &Draft) -> String {
        let (parent, name) = {
            let p = lock(&d.place);
            (p.parent, p.name.clone())
        };
        join(&self.folder_path(d.b, parent), &name)
    }
}

/// Starts the kernel's writeback of bytes `from..to` of `file` (without waiting for it).
fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; SYNC_FILE_RANGE_WRITE only starts writeback.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            to.saturating_sub(from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// Whether `file` (of `size` bytes) has a gap: bytes never written (a hole), seen by
/// `SEEK_HOLE` or by fewer allocated blocks than its size (filesystems without
/// `SEEK_HOLE` report the whole file as data).
fn has_gap(file: &File, size: u64) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: lseek on a valid descriptor; only pread/pwrite use it, never its offset.
    let hole = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
    if hole >= 0 && (hole as u64) < size {
        return Ok(true);
    }
    // Allocation is in blocks: a file may have up to a block per extent less than its
    // size; a missing megabyte is a gap.
    let allocated = file.metadata()?.blocks().saturating_mul(512);
    Ok(allocated.saturating_add(1 << 20) < size)
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
