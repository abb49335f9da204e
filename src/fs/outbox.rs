//! Changing the tree: folders, deletions and renames in the boxes, and the background work
//! (folder pickups, interrupted uploads that expired, the retention sweep). What a change
//! means for a message is `crate::mailbox::pickup`'s decision; this file checks what the
//! kernel asked against the tree, takes the outbox's lock, and calls it.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::core::{lock, Attr, Caller, Errno, MailboxFs, RenameMode, Result};
use super::core::{EACCES, ENOENT, EPERM};
use super::inodes::Key;
use crate::mailbox::pickup::{self, Settled};
use crate::mailbox::{self, NodeClass};
use crate::store::{BoxKind, BoxRef, Entry, EntryState};
use crate::timefmt::now_ms;

impl MailboxFs {
    fn exists_in(&self, b: BoxRef, folder: i64, name: &str) -> Result<bool> {
        Ok(self.find_draft(b, folder, name).is_some()
            || self
                .store
                .entry_by_name(b, folder, name)?
                .is_some_and(|e| mailbox::visible(&e, now_ms())))
    }

    /// `mkdir`: only at the top of an outbox (a multi-attachment message).
    pub(super) fn mkdir_inner(&self, c: &Caller, parent: u64, name: &str) -> Result<Attr> {
        let key = self.key(parent)?;
        self.check_access(c, &key)?;
        if let Some((b, folder, _)) = self.box_dir(&key)? {
            if b.kind == BoxKind::Outbox && folder != 0 {
                return Err(EPERM);
            }
        }
        let (key, o, b, _) = self.creatable(c, parent)?;
        Self::check_name(name)?;
        let outbox = self.outbox_lock(b);
        let guard = lock(&outbox);
        if self.exists_in(b, 0, name)? {
            return Err(Errno::new(libc::EEXIST));
        }
        let user = key.user().unwrap_or(0);
        let id = self.store.create_folder(user, b, name)?;
        drop(guard);
        info!(user, name, "outbox folder created");
        let ino = self.ino(Key::Entry { user, id });
        let e = self.entry(id)?;
        Ok(self.entry_attr(ino, &e, &o))
    }

    /// `unlink`.
    pub(super) fn unlink_inner(&self, c: &Caller, parent: u64, name: &str) -> Result<()> {
        let pkey = self.key(parent)?;
        self.check_access(c, &pkey)?;
        let Some((b, folder, _)) = self.box_dir(&pkey)? else {
            return Err(EACCES);
        };
        let outbox = self.outbox_lock(b);
        let _guard = lock(&outbox);
        if let Some(d) = self.find_draft(b, folder, name) {
            if let Some(old) = self.unlink_draft(&d) {
                self.store.remove_entry(old)?;
            }
            info!(user = d.user, name, "upload deleted");
            return Ok(());
        }
        let e = self.store.entry_by_name(b, folder, name)?.ok_or(ENOENT)?;
        if !mailbox::visible(&e, now_ms()) {
            return Err(ENOENT);
        }
        if e.is_dir {
            return Err(Errno::new(libc::EISDIR));
        }
        self.store.remove_entry(e.id)?;
        lock(&self.usage).remove(&e.user_id);
        info!(user = e.user_id, name, box_ = b.kind.name(), "deleted");
        Ok(())
    }

    /// `rmdir`: message folders in inbox/failed, and outbox folders.
    pub(super) fn rmdir_inner(&self, c: &Caller, parent: u64, name: &str) -> Result<()> {
        let pkey = self.key(parent)?;
        self.check_access(c, &pkey)?;
        let Some((b, 0, _)) = self.box_dir(&pkey)? else {
            return Err(EACCES);
        };
        let outbox = self.outbox_lock(b);
        let _guard = lock(&outbox);
        let e = self.store.entry_by_name(b, 0, name)?.ok_or(ENOENT)?;
        if !e.is_dir {
            return Err(Errno::new(libc::ENOTDIR));
        }
        if !self.drafts_in(b, e.id).is_empty() {
            return Err(Errno::new(libc::ENOTEMPTY));
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
    pub(super) fn rename_inner(
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
            return Err(Errno::new(libc::EXDEV));
        }
        if nfentry.is_some_and(|f| !mailbox::accepts_uploads(&f)) {
            return Err(EACCES);
        }
        Self::check_name(new_name)?;
        let outbox = self.outbox_lock(b);
        let guard = lock(&outbox);
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
            return Err(Errno::new(libc::EEXIST));
        }
        if let Some(d) = self.find_draft(b, folder, name) {
            // An upload still open: it takes the new name and is committed there at close.
            if let Some(t) = &target_entry {
                if t.is_dir {
                    return Err(Errno::new(libc::EISDIR));
                }
                if mailbox::entry_class(t) != NodeClass::WritableFile {
                    return Err(EACCES);
                }
                self.store.remove_entry(t.id)?;
            }
            if let Some(t) = target_draft {
                let replaced = self.unlink_draft(&t);
                if replaced.is_some() && replaced != target_entry.as_ref().map(|e| e.id) {
                    self.store.remove_entry(replaced.unwrap_or_default())?;
                }
            }
            self.move_draft(&d, nfolder, new_name);
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
            (_, Some(_)) => return Err(Errno::new(libc::EBUSY)),
            (Some(t), None) => {
                if t.is_dir != e.is_dir {
                    let code = if t.is_dir {
                        libc::EISDIR
                    } else {
                        libc::ENOTDIR
                    };
                    return Err(Errno::new(code));
                }
                if t.is_dir {
                    return Err(Errno::new(libc::ENOTEMPTY));
                }
                if mailbox::entry_class(t) != NodeClass::WritableFile {
                    return Err(EACCES);
                }
                Some(t.id)
            }
            (None, None) => None,
        };
        let settled = pickup::rename(
            &self.store,
            &self.config,
            &e,
            nfolder,
            new_name,
            replaces,
            now_ms(),
        )?;
        self.log_settled(e.user_id, new_name, &settled, "after rename");
        drop(guard);
        if e.is_dir {
            // A folder renamed to `*.ready` goes at once, if nothing in it is open.
            let moved = self.entry(e.id)?;
            self.try_batch(&moved)?;
        }
        Ok(())
    }

    // ---- background work -------------------------------------------------------------------

    /// Picks up an outbox folder if it is ready; returns whether it did.
    fn try_batch(&self, folder: &Entry) -> Result<bool> {
        let outbox = self.outbox_lock(folder.boxref);
        let _guard = lock(&outbox);
        // The folder as it is now, under the lock (a rename or deletion may have won).
        let Some(folder) = self.store.entry(folder.id)? else {
            return Ok(false);
        };
        if !mailbox::accepts_uploads(&folder) {
            return Ok(false);
        }
        let open = self.drafts_in(folder.boxref, folder.id).len();
        let Some((settled, files)) =
            pickup::try_folder(&self.store, &self.config, &folder, open, now_ms())?
        else {
            return Ok(false);
        };
        self.log_settled(folder.user_id, &folder.name, &settled, "folder");
        self.invalidate_entries(&files);
        Ok(true)
    }

    /// Periodic work: batch pickups (every call) and the retention sweep (every
    /// `retention.sweep_secs`). Called by the mount's background thread.
    pub fn tick(&self) {
        match self.store.pending_outbox_folders() {
            Ok(folders) => {
                for f in folders {
                    if let Err(e) = self.try_batch(&f) {
                        warn!(folder = %f.name, errno = e.code, cause = e.cause.as_deref().unwrap_or(""), "batch pickup failed");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list outbox folders"),
        }
        self.expire_interrupted();
        self.trim_heap_if_shrank();
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
            let outbox = self.outbox_lock(e.boxref);
            let _guard = lock(&outbox);
            let key = Key::Entry {
                user: e.user_id,
                id: e.id,
            };
            let resumed = lock(&self.inodes)
                .find(&key)
                .is_some_and(|ino| self.draft(ino).is_some());
            if resumed {
                continue;
            }
            let busy = |f: &Entry| !self.drafts_in(f.boxref, f.id).is_empty();
            match pickup::expire_interrupted(&self.store, &self.config, &e, busy) {
                Ok(Some((settled, files))) => {
                    self.log_settled(e.user_id, &e.name, &settled, "interrupted upload");
                    self.invalidate_entries(&files);
                }
                Ok(None) => {}
                Err(err) => {
                    warn!(name = %e.name, error = %err, "cannot move an interrupted upload to failed/")
                }
            }
        }
    }

    fn log_settled(&self, user: i64, name: &str, settled: &Settled, what: &str) {
        match settled {
            Settled::Queued { message } => info!(user, name, message, "picked up ({what})"),
            Settled::Failed { message, reason } => {
                info!(user, name, message, %reason, "moved to failed/ ({what})")
            }
            Settled::Held | Settled::Interrupted => {}
        }
    }
}
