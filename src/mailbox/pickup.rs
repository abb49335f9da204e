//! Outbox pickup: the one place that decides when an upload becomes a message and what
//! happens when it cannot be one. Each entry point checks the outbox limits first, then
//! queues the message or moves the files to `failed/` with a one-sentence reason, and
//! reports what it did as a [`Settled`]. The filesystem calls these with its own locks
//! held (it knows which uploads are still open); nothing here knows about the kernel.

use crate::config::Config;
use crate::store::{
    Entry, EntryState, NewFile, PickupFile, PickupMode, RenamePickup, Store, StoreError,
};

use super::{batch_name, batch_ready, check_limits, interrupted_reason, on_close, CloseOutcome};

/// What became of an upload, a rename or a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Queued as message `message`; the files linger read-only, then vanish.
    Queued {
        /// The message record.
        message: i64,
    },
    /// Moved to `failed/` with `reason` (also recorded on message `message`).
    Failed {
        /// The failed message record.
        message: i64,
        /// The sentence in `failed/<name>.reason.txt`.
        reason: String,
    },
    /// Stays in the outbox, writable (a temporary name, a file in a folder, rename mode).
    Held,
    /// The writer died before finishing: stays, waiting to be completed.
    Interrupted,
}

impl Settled {
    /// One word for the audit trail.
    pub fn audit_word(&self) -> String {
        match self {
            Settled::Queued { .. } => "picked-up".into(),
            Settled::Failed { reason, .. } => format!("failed: {reason}"),
            Settled::Held => "held".into(),
            Settled::Interrupted => "interrupted".into(),
        }
    }
}

/// An upload whose content is durable in the blob store, ready to become an entry.
#[derive(Debug, Clone)]
pub struct ClosedUpload {
    /// The entry it becomes.
    pub file: NewFile,
    /// The closing process was exiting (its connection dropped).
    pub writer_exiting: bool,
    /// How the station's uploads commit.
    pub mode: PickupMode,
}

/// Message `message` was queued (its transaction committed): the daemon is woken to send
/// it now rather than at its next poll.
fn queued(store: &Store, message: i64) -> Settled {
    store.ring_doorbell();
    Settled::Queued { message }
}

/// When entries picked up at `now_ms` stop being shown.
pub fn linger_until(config: &Config, now_ms: i64) -> i64 {
    now_ms + (config.outbox.linger_secs * 1000.0) as i64
}

/// The files of a pickup or failure as the store takes them.
pub fn pickup_list(files: &[Entry]) -> Vec<(i64, PickupFile)> {
    files
        .iter()
        .map(|f| {
            (
                f.id,
                PickupFile {
                    name: f.name.clone(),
                    blob: f.blob.clone().unwrap_or_default(),
                    size: f.size,
                    content: None,
                },
            )
        })
        .collect()
}

/// Moves `top` (a file, or a folder holding `files`) to `failed/` with `reason`.
fn move_to_failed(
    store: &Store,
    top: &Entry,
    files: &[Entry],
    reason: String,
) -> Result<Settled, StoreError> {
    let message = store.fail_entries(top, &pickup_list(files), &reason)?;
    Ok(Settled::Failed { message, reason })
}

fn stored_entry(store: &Store, id: i64) -> Result<Entry, StoreError> {
    store
        .entry(id)?
        .ok_or_else(|| StoreError::NotFound(format!("entry {id} vanished during its pickup")))
}

/// Records a closed upload; returns its entry id and what became of it.
pub fn commit_upload(
    store: &Store,
    config: &Config,
    upload: &ClosedUpload,
    now_ms: i64,
) -> Result<(i64, Settled), StoreError> {
    let f = &upload.file;
    let outcome = on_close(&f.name, f.parent != 0, upload.writer_exiting, upload.mode);
    let limits = (outcome == CloseOutcome::Pickup).then(|| check_limits(&[f.size], config));
    let new = NewFile {
        state: if outcome == CloseOutcome::Interrupted {
            EntryState::Interrupted
        } else {
            EntryState::Held
        },
        ..f.clone()
    };
    let pickup_until = matches!(limits, Some(Ok(()))).then(|| linger_until(config, now_ms));
    let (id, message) = store.commit_file(&new, pickup_until)?;
    let settled = match (limits, message) {
        (Some(Err(reason)), _) => {
            let e = stored_entry(store, id)?;
            move_to_failed(store, &e, std::slice::from_ref(&e), reason)?
        }
        (_, Some(message)) => queued(store, message),
        _ if outcome == CloseOutcome::Interrupted => Settled::Interrupted,
        _ => Settled::Held,
    };
    Ok((id, settled))
}

/// Renames outbox entry `e` to `new_name` in folder `new_parent` (0: the outbox itself),
/// replacing entry `replaces`; a file renamed to a final name at the top is picked up.
/// A renamed folder is then tried with [`try_folder`] by the caller, which knows its
/// open uploads.
pub fn rename(
    store: &Store,
    config: &Config,
    e: &Entry,
    new_parent: i64,
    new_name: &str,
    replaces: Option<i64>,
    now_ms: i64,
) -> Result<Settled, StoreError> {
    if e.is_dir || !super::rename_picks_up(new_name, new_parent != 0) {
        store.rename_entry(e.id, new_parent, new_name, replaces, None)?;
        return Ok(Settled::Held);
    }
    let sizes = [e.size];
    if let Err(reason) = check_limits(&sizes, config) {
        store.rename_entry(e.id, new_parent, new_name, replaces, None)?;
        let moved = stored_entry(store, e.id)?;
        return move_to_failed(store, &moved, std::slice::from_ref(&moved), reason);
    }
    let files = [(
        e.id,
        PickupFile {
            name: new_name.to_owned(),
            blob: e.blob.clone().unwrap_or_default(),
            size: e.size,
            content: None,
        },
    )];
    let message = store.rename_entry(
        e.id,
        new_parent,
        new_name,
        replaces,
        Some(RenamePickup {
            until_ms: linger_until(config, now_ms),
            message_name: new_name,
            files: &files,
        }),
    )?;
    Ok(match message {
        Some(message) => queued(store, message),
        None => Settled::Held,
    })
}

/// Picks up outbox folder `folder` if it is ready (`open_uploads` of its files are still
/// being written); `None` when it is not.
pub fn try_folder(
    store: &Store,
    config: &Config,
    folder: &Entry,
    open_uploads: usize,
    now_ms: i64,
) -> Result<Option<(Settled, Vec<Entry>)>, StoreError> {
    let files = store.entries(folder.boxref, folder.id)?;
    let quiet = config.outbox.batch_quiet_secs;
    if !batch_ready(folder, &files, open_uploads, now_ms, quiet) {
        return Ok(None);
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    let settled = match check_limits(&sizes, config) {
        Ok(()) => {
            let name = batch_name(&folder.name);
            let until = linger_until(config, now_ms);
            let message = store.pickup_folder(folder, name, &pickup_list(&files), until)?;
            queued(store, message)
        }
        Err(reason) => move_to_failed(store, folder, &files, reason)?,
    };
    Ok(Some((settled, files)))
}

/// Moves interrupted upload `e`, which nobody completed in time, to `failed/`; in a folder
/// message the whole folder fails with it (sending the rest would send the message with a
/// file missing). `folder_busy` says whether a folder still has uploads open, in which
/// case nothing happens yet. Returns the entries whose state changed.
pub fn expire_interrupted(
    store: &Store,
    config: &Config,
    e: &Entry,
    folder_busy: impl Fn(&Entry) -> bool,
) -> Result<Option<(Settled, Vec<Entry>)>, StoreError> {
    let folder = match e.parent {
        0 => None,
        id => store.entry(id)?.filter(|f| f.is_dir),
    };
    let timeout = config.outbox.incomplete_timeout_secs;
    let reason = interrupted_reason(&e.name, folder.as_ref().map(|f| f.name.as_str()), timeout);
    let (top, files) = match folder {
        Some(f) if folder_busy(&f) => return Ok(None),
        Some(f) => {
            let files = store.entries(f.boxref, f.id)?;
            (f, files)
        }
        None => (e.clone(), vec![e.clone()]),
    };
    let settled = move_to_failed(store, &top, &files, reason)?;
    Ok(Some((settled, files)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BoxKind, BoxRef, InboxLayout};

    struct TestStore {
        _dir: tempfile::TempDir,
        store: Store,
        outbox: BoxRef,
        user: i64,
    }

    fn test_store() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path()).unwrap();
        let u = store.add_user("pickupuser", 4243, 4243, None).unwrap();
        let s = store
            .add_station(u.id, "ST", InboxLayout::PerMessage)
            .unwrap();
        let p = store.add_partner(u.id, "PA", false, None).unwrap();
        let outbox = BoxRef {
            station_id: s.id,
            partner_id: p.id,
            kind: BoxKind::Outbox,
        };
        TestStore {
            _dir: dir,
            store,
            outbox,
            user: u.id,
        }
    }

    fn upload(t: &TestStore, parent: i64, name: &str, bytes: &[u8]) -> ClosedUpload {
        let blob = t.store.blobs().put_bytes(bytes).unwrap();
        ClosedUpload {
            file: NewFile {
                user_id: t.user,
                boxref: t.outbox,
                parent,
                name: name.into(),
                blob,
                size: bytes.len() as u64,
                mtime_ms: 0,
                state: EntryState::Held,
                replaces: None,
                content: None,
            },
            writer_exiting: false,
            mode: PickupMode::Close,
        }
    }

    fn small_limits() -> Config {
        let mut c = Config::default();
        c.outbox.max_bytes = 10;
        c.outbox.max_files = 2;
        c
    }

    #[test]
    fn a_closed_file_is_queued_held_interrupted_or_failed() {
        let t = test_store();
        let c = small_limits();
        let (_, s) = commit_upload(&t.store, &c, &upload(&t, 0, "a.edi", b"12345"), 0).unwrap();
        assert!(matches!(s, Settled::Queued { .. }), "{s:?}");
        let (_, s) = commit_upload(&t.store, &c, &upload(&t, 0, "b.part", b"1"), 0).unwrap();
        assert_eq!(s, Settled::Held);
        let mut dying = upload(&t, 0, "c.edi", b"1");
        dying.writer_exiting = true;
        assert_eq!(
            commit_upload(&t.store, &c, &dying, 0).unwrap().1,
            Settled::Interrupted
        );
        let (_, s) = commit_upload(&t.store, &c, &upload(&t, 0, "big.edi", &[7; 11]), 0).unwrap();
        let Settled::Failed { reason, .. } = s else {
            panic!("{s:?}")
        };
        assert!(reason.contains("outbox.max_bytes"), "{reason}");
        let failed = BoxRef {
            kind: BoxKind::Failed,
            ..t.outbox
        };
        assert!(t
            .store
            .entry_by_name(failed, 0, "big.edi")
            .unwrap()
            .is_some());
        assert!(t
            .store
            .entry_by_name(failed, 0, "big.edi.reason.txt")
            .unwrap()
            .is_some());
    }

    #[test]
    fn rename_to_a_final_name_picks_up_within_the_limits() {
        let t = test_store();
        let c = small_limits();
        let (id, _) = commit_upload(&t.store, &c, &upload(&t, 0, "a.part", b"1"), 0).unwrap();
        let e = t.store.entry(id).unwrap().unwrap();
        let s = rename(&t.store, &c, &e, 0, "a.tmp", None, 0).unwrap();
        assert_eq!(s, Settled::Held, "a temporary name stays held");
        let e = t.store.entry(id).unwrap().unwrap();
        let s = rename(&t.store, &c, &e, 0, "a.edi", None, 0).unwrap();
        assert!(matches!(s, Settled::Queued { .. }), "{s:?}");
        let (id, _) = commit_upload(&t.store, &c, &upload(&t, 0, "b.part", &[1; 11]), 0).unwrap();
        let e = t.store.entry(id).unwrap().unwrap();
        let s = rename(&t.store, &c, &e, 0, "b.edi", None, 0).unwrap();
        assert!(matches!(s, Settled::Failed { .. }), "{s:?}");
    }

    #[test]
    fn a_folder_waits_for_its_uploads_then_goes_whole() {
        let t = test_store();
        let c = small_limits();
        let folder_id = t
            .store
            .create_folder(t.user, t.outbox, "batch.ready")
            .unwrap();
        let folder = t.store.entry(folder_id).unwrap().unwrap();
        assert!(
            try_folder(&t.store, &c, &folder, 0, 0).unwrap().is_none(),
            "empty"
        );
        commit_upload(&t.store, &c, &upload(&t, folder_id, "a", b"1"), 0).unwrap();
        assert!(
            try_folder(&t.store, &c, &folder, 1, 0).unwrap().is_none(),
            "an upload still open"
        );
        let (s, files) = try_folder(&t.store, &c, &folder, 0, 0).unwrap().unwrap();
        assert!(matches!(s, Settled::Queued { .. }), "{s:?}");
        assert_eq!(files.len(), 1);
        assert_eq!(
            t.store.entry(folder_id).unwrap().unwrap().state,
            EntryState::Lingering
        );
    }

    #[test]
    fn too_many_files_fail_the_folder_whole() {
        let t = test_store();
        let c = small_limits();
        let folder_id = t
            .store
            .create_folder(t.user, t.outbox, "many.ready")
            .unwrap();
        for n in ["a", "b", "c"] {
            commit_upload(&t.store, &c, &upload(&t, folder_id, n, b"1"), 0).unwrap();
        }
        let folder = t.store.entry(folder_id).unwrap().unwrap();
        let (s, _) = try_folder(&t.store, &c, &folder, 0, 0).unwrap().unwrap();
        let Settled::Failed { reason, .. } = s else {
            panic!("{s:?}")
        };
        assert!(reason.contains("3 files"), "{reason}");
    }

    #[test]
    fn an_expired_interruption_fails_its_folder_once_nothing_is_open() {
        let t = test_store();
        let c = small_limits();
        let folder_id = t.store.create_folder(t.user, t.outbox, "f").unwrap();
        commit_upload(&t.store, &c, &upload(&t, folder_id, "ok", b"1"), 0).unwrap();
        let mut dying = upload(&t, folder_id, "cut", b"1");
        dying.writer_exiting = true;
        let (id, _) = commit_upload(&t.store, &c, &dying, 0).unwrap();
        let e = t.store.entry(id).unwrap().unwrap();
        assert!(expire_interrupted(&t.store, &c, &e, |_| true)
            .unwrap()
            .is_none());
        let (s, files) = expire_interrupted(&t.store, &c, &e, |_| false)
            .unwrap()
            .unwrap();
        let Settled::Failed { reason, .. } = s else {
            panic!("{s:?}")
        };
        assert!(
            reason.contains("\"cut\"") && reason.contains("\"f\""),
            "{reason}"
        );
        assert_eq!(files.len(), 2, "the whole folder");
    }
}
