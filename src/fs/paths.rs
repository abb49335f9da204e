//! Names for people: the user-visible path of every node (audit trail and logs), the
//! audit records, and the audited entry points that record what each user did.

use super::core::{Attr, Caller, Errno, MailboxFs, RenameMode, Result, ENOENT};
use super::inodes::Key;
use crate::mailbox::tree_names::{GATEWAY_DIR, KEYS_FILE, SSH_DIR, TEST_DIR};
use crate::store::BoxRef;
use crate::timefmt::now_ms;

impl MailboxFs {
    // ---- audited entry points ----------------------------------------------------------

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

    // ---- paths and the audit trail -----------------------------------------------------

    /// The user-visible path of inode `ino` (or of `name` in it), for logs.
    pub fn describe(&self, ino: u64, name: Option<&str>) -> String {
        match (name, self.key(ino)) {
            (Some(n), _) => self.path_in(ino, n),
            (None, Ok(key)) => self.key_path(&key),
            (None, Err(_)) => format!("inode {ino}"),
        }
    }

    /// The path of `name` in folder `parent`, inside its user's tree.
    pub(super) fn path_in(&self, parent: u64, name: &str) -> String {
        match self.key(parent) {
            Ok(k) => join(&self.key_path(&k), name),
            Err(_) => name.to_owned(),
        }
    }

    pub(super) fn audit_at(&self, c: &Caller, parent: u64, name: &str, op: &str, result: String) {
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

    pub(super) fn audit_user(&self, c: &Caller, user: i64, op: &str, path: String, d: Detail) {
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

    pub(super) fn box_path(&self, b: BoxRef) -> String {
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
        let test = if test {
            format!("/{TEST_DIR}")
        } else {
            String::new()
        };
        format!("{GATEWAY_DIR}/{station}/{as2}{test}/{}", b.kind.name())
    }

    pub(super) fn folder_path(&self, b: BoxRef, folder: i64) -> String {
        let base = self.box_path(b);
        match (folder != 0)
            .then(|| self.store.entry(folder).ok().flatten())
            .flatten()
        {
            Some(f) => join(&base, &f.name),
            None => base,
        }
    }

    pub(super) fn key_path(&self, key: &Key) -> String {
        match key {
            Key::Root | Key::Home(_) => String::new(),
            Key::Ssh(_) => SSH_DIR.into(),
            Key::Keys(_) => format!("{SSH_DIR}/{KEYS_FILE}"),
            Key::Gateway(_) => GATEWAY_DIR.into(),
            Key::Station { station, .. } => {
                let name = self.key_name(key).unwrap_or_else(|_| format!("#{station}"));
                format!("{GATEWAY_DIR}/{name}")
            }
            Key::Partner { station, as2, .. } | Key::Test { station, as2, .. } => {
                let st = self
                    .key_name(&Key::Station {
                        user: 0,
                        station: *station,
                    })
                    .unwrap_or_default();
                let test = if matches!(key, Key::Test { .. }) {
                    format!("/{TEST_DIR}")
                } else {
                    String::new()
                };
                format!("{GATEWAY_DIR}/{st}/{as2}{test}")
            }
            Key::Box { b, .. } => self.box_path(*b),
            Key::Entry { id, .. } => match self.store.entry(*id).ok().flatten() {
                Some(e) => join(&self.folder_path(e.boxref, e.parent), &e.name),
                None => format!("#{id}"),
            },
            Key::Draft { .. } => String::new(),
        }
    }
}

/// What an audit record says beyond who, what and where.
pub(super) struct Detail {
    pub(super) bytes: Option<u64>,
    pub(super) sha256: Option<String>,
    pub(super) result: String,
}

impl Detail {
    /// A record of `bytes` moved, with `result`.
    pub(super) fn bytes(bytes: u64, result: String) -> Detail {
        Detail {
            bytes: Some(bytes),
            sha256: None,
            result,
        }
    }

    /// A record of only a result.
    pub(super) fn result(result: String) -> Detail {
        Detail {
            bytes: None,
            sha256: None,
            result,
        }
    }
}

/// An inode whose entry is gone (deleted, expired, or moved to `failed/` under a new id)
/// answers ESTALE: the kernel then looks its name up again rather than failing the call.
pub(super) fn stale(e: Errno) -> Errno {
    if e == ENOENT {
        Errno::new(libc::ESTALE)
    } else {
        e
    }
}

pub(super) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The audit result of an operation: `ok` or the errno's name.
pub(super) fn outcome<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.code),
    }
}

pub(super) fn errno_name(n: i32) -> String {
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
        libc::EFBIG => "EFBIG".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::ESTALE => "ESTALE".into(),
        n => format!("errno {n}"),
    }
}
